"""Which tensor type each GGUF tensor gets for an `export --quant`, and the two quantizers behind them.

- f32, f16, q8_0, q4_0, q4_1, q5_0, q5_1: written by gguf-py (pinned in pyproject), whose block
  quantizers are numpy ports of ggml's reference ones: the default model's Q4_1 GGUF, made by
  llama.cpp, is reproduced tensor for tensor by exporting its weights at q4_1
  (tests/test_export_quant.py), so no llama.cpp is needed for these.
- The K-quants (q4_k_m above all, what Ollama and LM Studio ship): gguf-py can only read them, so the
  model is written at f16 first and handed to llama.cpp's own quantizer (`llama_model_quantize`,
  from the optional llama-cpp-python build: `pip install 'tunesmith[llama]'`), as llama.cpp's
  `llama-quantize` does. Its per-tensor mix (q4_k_m keeps some ffn_down/attn_v at q6_k) is llama.cpp's.

The type rules for gguf-py's types follow llama.cpp: 1-D tensors and norms stay F32; a row that is
not a whole number of blocks (32 values) falls back to F16; for q4_*/q5_* the output projection (or
the token embedding, when tied, which doubles as it) is kept at Q8_0 -- llama.cpp keeps it at Q6_K,
or Q8_0 when a row is not a multiple of 256 (the default model's file shows exactly that); gguf-py
cannot write Q6_K, and Q8_0 is the closer to f16 of the two.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from tunesmith.errors import UserError

# written here, by gguf-py
BY_GGUF_PY = ("f32", "f16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1")
# written by llama.cpp's quantizer from an f16 file: our name -> llama.cpp's LLAMA_FTYPE_MOSTLY_* name
BY_LLAMA_CPP = {
    "q4_k_m": "Q4_K_M",
    "q4_k_s": "Q4_K_S",
    "q5_k_m": "Q5_K_M",
    "q5_k_s": "Q5_K_S",
    "q6_k": "Q6_K",
    "q3_k_m": "Q3_K_M",
    "q2_k": "Q2_K",
}
QUANTS = BY_GGUF_PY + tuple(BY_LLAMA_CPP)
ADAPTER_QUANTS = ("f32", "f16", "q8_0")  # what llama.cpp applies as a LoRA


def check_quant(quant: str, *, adapter_only: bool) -> None:
    """Refuse an unknown or unavailable --quant before anything is loaded."""
    if quant not in QUANTS:
        raise UserError(f"--quant {quant}: expected one of {', '.join(QUANTS)}")
    if adapter_only and quant not in ADAPTER_QUANTS:
        raise UserError(
            f"--quant {quant}: a LoRA adapter GGUF is written at {', '.join(ADAPTER_QUANTS)}; "
            f"quantize the merged model instead (drop --adapter-only)"
        )
    if quant in BY_LLAMA_CPP:
        llama_cpp(f"--quant {quant}")


def llama_cpp(what: str):
    """llama-cpp-python, or a UserError saying how to get it (an optional extra: a source build)."""
    try:
        import llama_cpp
    except ImportError:
        raise UserError(
            f"{what} needs llama.cpp: pip install 'tunesmith[llama]' (builds llama-cpp-python; needs cmake "
            f"and a C++ compiler); --quant q4_0, q4_1, q5_0, q5_1 and q8_0 need nothing more"
        ) from None
    return llama_cpp


def first_pass(quant: str) -> str:
    """The type gguf-py writes: the quant itself, or f16 for llama.cpp to quantize afterwards."""
    return "f16" if quant in BY_LLAMA_CPP else quant


def file_type(quant: str):
    import gguf

    F = gguf.LlamaFileType
    return {
        "f32": F.ALL_F32,
        "f16": F.MOSTLY_F16,
        "q8_0": F.MOSTLY_Q8_0,
        "q4_0": F.MOSTLY_Q4_0,
        "q4_1": F.MOSTLY_Q4_1,
        "q5_0": F.MOSTLY_Q5_0,
        "q5_1": F.MOSTLY_Q5_1,
    }[quant]


def tensor_type(gguf_name: str, shape: tuple[int, ...], quant: str, *, output: bool = False):
    """The GGML type of one tensor in a `quant` file (gguf-py's types only); `output` marks the tensor
    that projects to the vocabulary (output.weight, or token_embd.weight when the embeddings are tied)."""
    import gguf

    T = gguf.GGMLQuantizationType
    if (
        len(shape) <= 1
        or gguf_name.endswith("_norm.weight")
        or not gguf_name.endswith((".weight", ".lora_a", ".lora_b"))
    ):
        return T.F32  # llama.cpp reads 1-D tensors and norms as F32 only
    if quant == "f32":
        return T.F32
    if quant == "f16":
        return T.F16
    want = T.Q8_0 if output or quant == "q8_0" else T[quant.upper()]
    if shape[-1] % gguf.GGML_QUANT_SIZES[want][0]:
        return T.F16  # a row that is not whole blocks (as llama.cpp's converter does for q8_0)
    return want


def nbytes(shape: tuple[int, ...], qtype) -> int:
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[qtype]
    return math.prod(shape) // block * size


def encode(data, qtype):
    import gguf
    import numpy as np

    T = gguf.GGMLQuantizationType
    data = np.ascontiguousarray(data, dtype=np.float32)
    if qtype == T.F32:
        return data
    if qtype == T.F16:
        return data.astype(np.float16)
    return gguf.quants.quantize(data, qtype)


def llama_quantize(src: Path, dst: Path, quant: str) -> None:
    """llama.cpp's quantizer, in process: `src` (an f16 GGUF) -> `dst` at `quant` (a K-quant)."""
    import ctypes

    lc = llama_cpp(f"--quant {quant}")
    params = lc.llama_model_quantize_default_params()
    params.ftype = getattr(lc, f"LLAMA_FTYPE_MOSTLY_{BY_LLAMA_CPP[quant]}")
    params.nthread = os.cpu_count() or 1
    rc = lc.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise UserError(f"--quant {quant}: llama.cpp's quantizer failed on {src} (code {rc})")
