"""What `tunesmith plan` needs to know of a `train --task` run that differs from text: the model is the
base with a sequence-classification head (a few outputs, not the vocabulary, so no logits of the
vocabulary's width per token), every training text is read whole up to --max-length and is one
"answer" (the head reads one position), and a step is one pass over its batch unless
--micro-batch-size splits it (train/classify.py). The rest of the plan (weights, AdamW state,
activations per token, the measured matmul speed) is the text plan's, on this model.
"""

from __future__ import annotations

from tunesmith.data.labels import known_labels
from tunesmith.train.classify import label_space, load_labelled
from tunesmith.train.config import TrainConfig


def is_task(cfg: TrainConfig) -> bool:
    return cfg.task != "generate"


def n_outputs(cfg: TrainConfig) -> int:
    """The head's width: one per class, or one for a number (from the data, as training reads it)."""
    train, val, path, _ = load_labelled(cfg)
    space = label_space(cfg.task, train, val, path)  # one class, a constant target: their errors first
    if cfg.task == "regress":
        return 1
    known_labels(val, space["classes"], cfg.other)  # a label training never shows: its error, first too
    return len(space["classes"])


def meta_model(cfg: TrainConfig, conf, trust_remote_code: bool):
    """The model with its head, to build on the meta device (the caller holds the device context)."""
    from transformers import AutoModelForSequenceClassification

    conf.num_labels = n_outputs(cfg)  # the caller's config, read for this plan only
    return AutoModelForSequenceClassification.from_config(conf, trust_remote_code=trust_remote_code)


def text_lengths(cfg: TrainConfig, tok) -> tuple[list[int], list[int]]:
    """Tokens of each training and validation text, cut to --max-length as training cuts them."""
    train, val, _, _ = load_labelled(cfg)

    def lengths(examples):
        return [min(len(tok(e.messages[0]["content"])["input_ids"]), cfg.max_length) for e in examples]

    return lengths(train), lengths(val)


def examples_per_pass(cfg: TrainConfig) -> int:
    return min(cfg.micro_batch_size or cfg.batch_size, cfg.batch_size)


def layer_stack(inner, text):
    """The model's stack of transformer layers: a decoder's, or for an encoder (BERT's family, which a
    --task run may tune) the module list as long as the config's layer count."""
    if hasattr(inner, "get_decoder") and hasattr(inner.get_decoder(), "layers"):
        return inner.get_decoder().layers
    import torch

    n = text.num_hidden_layers
    return next(m for m in inner.modules() if isinstance(m, torch.nn.ModuleList) and len(m) == n)
