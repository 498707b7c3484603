"""The architecture half of a GGUF file: which llama.cpp architecture an HF model is, its hyperparameter keys,
its RoPE (plain, or Phi-3.5/Phi-4-mini's LongRoPE with partial rotary dimensions) and the tensor-name map
with llama's q/k permutation. The rules follow llama.cpp's convert_hf_to_gguf.py (its LlamaModel.permute,
Phi3MiniModel's rope factors and attention factor); export.py writes the tensors with them."""

from __future__ import annotations

import math
from dataclasses import dataclass

from tunesmith.errors import UserError

# HF model_type -> GGUF architecture name, and whether llama.cpp wants q/k rows permuted
# (its llama graph applies RoPE to interleaved pairs; HF rotates the two halves of a head).
ARCHS = {
    "llama": ("llama", True),
    "qwen2": ("qwen2", False),
    "qwen3": ("qwen3", False),
    "phi3": ("phi3", False),
    "gemma3_text": ("gemma3", False),
}


@dataclass
class Arch:
    hf_type: str
    gguf_arch: str
    permute_qk: bool
    n_layer: int
    n_head: int
    n_kv: int
    head_dim: int
    rope_dims: int  # the rotated dimensions of a head (all of them but for partial rotary embeddings)
    longrope: bool  # Phi-3.5/Phi-4-mini's LongRoPE: its factor tensors and attention factor are written
    llama3_rope: bool = False  # Llama 3.1/3.2's frequency scaling: written as the rope_freqs tensor
    norm_shift: float = 0.0  # added to every norm weight: Gemma's RMSNorm scales by (1 + w), llama.cpp's by w


def arch_of(config, what: str) -> Arch:
    mt = config.model_type
    if mt not in ARCHS:
        raise UserError(
            f"{what}: architecture {mt!r} cannot be exported to GGUF yet; supported: {', '.join(ARCHS)}. "
            f"`tunesmith merge` writes a Hugging Face directory for any architecture"
        )
    rope = rope_of(config)
    rope_type = rope.get("rope_type") or rope.get("type") or "default"
    if rope_type != "default" and (mt, rope_type) not in SCALED_ROPE:
        raise UserError(
            f"{what}: RoPE scaling {rope_type!r} is not supported by GGUF export of {mt} yet (plain RoPE, "
            f"LongRoPE for phi3 and llama3 for llama)"
        )
    rotary = float(rope.get("partial_rotary_factor") or getattr(config, "partial_rotary_factor", None) or 1.0)
    if rotary != 1.0 and mt != "phi3":
        raise UserError(f"{what}: partial rotary embeddings of {mt} are not supported by GGUF export yet")
    if getattr(config, "mlp_bias", False):
        raise UserError(f"{what}: MLP biases are not supported by GGUF export yet")
    if getattr(config, "use_sliding_window", False):
        raise UserError(f"{what}: sliding-window attention is not supported by GGUF export yet")
    if mt == "gemma3_text":
        _check_gemma3(config, what)
    n_head = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_head
    gguf_arch, permute = ARCHS[mt]
    arch = Arch(
        mt,
        gguf_arch,
        permute,
        config.num_hidden_layers,
        n_head,
        getattr(config, "num_key_value_heads", None) or n_head,
        head_dim,
        int(rotary * config.hidden_size) // n_head,  # as llama.cpp's converter computes it
        rope_type in LONGROPE,
        rope_type == "llama3",
        1.0 if mt == "gemma3_text" else 0.0,
    )
    if arch.longrope:
        for key in ("long_factor", "short_factor"):
            if len(rope.get(key) or ()) != arch.rope_dims // 2:
                raise UserError(
                    f"{what}: LongRoPE's {key} has {len(rope.get(key) or ())} values; "
                    f"{arch.rope_dims // 2} expected (half the rotary dimensions)"
                )
    return arch


LONGROPE = ("longrope", "su")  # Phi-3.5 and Phi-4-mini's long-context RoPE ("su" is its earlier name)
SCALED_ROPE = {("phi3", "longrope"), ("phi3", "su"), ("llama", "llama3"), ("gemma3_text", "linear")}
GEMMA3_SWA_EVERY = 6  # llama.cpp's gemma3 graph: every 6th layer global, the rest sliding-window
GEMMA3_LOCAL_THETA = 10000.0  # and the sliding layers' RoPE base, fixed there (not read from the file)


def _check_gemma3(config, what: str) -> None:
    """What llama.cpp's gemma3 graph assumes rather than reads: refuse a model that differs."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    local = (getattr(config, "rope_parameters", None) or {}).get("sliding_attention") or {}
    local_theta = float(
        local.get("rope_theta") or getattr(config, "rope_local_base_freq", GEMMA3_LOCAL_THETA)
    )
    types = getattr(config, "layer_types", None) or []
    want = [
        "full_attention" if (i + 1) % GEMMA3_SWA_EVERY == 0 else "sliding_attention"
        for i in range(len(types))
    ]
    problems = [
        f"query_pre_attn_scalar {config.query_pre_attn_scalar} is not the head size {head_dim}"
        if getattr(config, "query_pre_attn_scalar", head_dim) != head_dim
        else "",
        "logit soft-capping"
        if getattr(config, "final_logit_softcapping", None) or getattr(config, "attn_logit_softcapping", None)
        else "",
        f"a sliding-window RoPE base of {local_theta:g}, not {GEMMA3_LOCAL_THETA:g}"
        if local_theta != GEMMA3_LOCAL_THETA
        else "",
        f"global attention on other layers than every {GEMMA3_SWA_EVERY}th" if types != want else "",
    ]
    problems = [p for p in problems if p]
    if problems:
        raise UserError(
            f"{what}: this Gemma 3 has {'; '.join(problems)}, which llama.cpp's gemma3 cannot run"
        )


def rope_of(config) -> dict:
    """The RoPE settings (of the global-attention layers, for a model that has one set per layer type)."""
    rope = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    return dict(rope["full_attention"]) if isinstance(rope.get("full_attention"), dict) else rope


def rope_theta(config) -> float:
    return float(rope_of(config).get("rope_theta") or getattr(config, "rope_theta", None) or 10000.0)


def original_context(config) -> int:
    return int(
        rope_of(config).get("original_max_position_embeddings")
        or getattr(config, "original_max_position_embeddings", None)
        or config.max_position_embeddings
    )


def rope_tensors(config, arch: Arch) -> list[tuple[str, list[float]]]:
    """The frequency factors a scaled RoPE needs, as llama.cpp's graphs read them: LongRoPE's
    rope_factors_long (past the original context) and rope_factors_short (within it); Llama 3's
    rope_freqs. None for plain RoPE."""
    rope = rope_of(config)
    if arch.longrope:
        return [
            ("rope_factors_long.weight", rope["long_factor"]),
            ("rope_factors_short.weight", rope["short_factor"]),
        ]
    if arch.llama3_rope:
        return [("rope_freqs.weight", llama3_factors(config, arch))]
    return []


def llama3_factors(config, arch: Arch) -> list[float]:
    """Llama 3.1/3.2's per-frequency divisors (llama.cpp's converter, LlamaModel.generate_extra_tensors; the
    same bands as transformers' _compute_llama3_parameters): high frequencies kept, low ones divided by
    `factor`, a smooth blend between."""
    rope = rope_of(config)
    factor = float(rope.get("factor", 8.0))
    low, high = float(rope.get("low_freq_factor", 1.0)), float(rope.get("high_freq_factor", 4.0))
    old = float(rope.get("original_max_position_embeddings", 8192))
    base, dim = rope_theta(config), arch.head_dim
    out = []
    for i in range(0, dim, 2):
        wavelen = 2 * math.pi * base ** (i / dim)
        if wavelen < old / high:
            out.append(1.0)
        elif wavelen > old / low:
            out.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return out


def longrope_attn_factor(config) -> float:
    """The attention scale LongRoPE applies beyond the original context (llama.cpp's converter's formula, the
    one transformers uses): sqrt(1 + ln(scale) / ln(original context)), 1 when not extended."""
    scale = config.max_position_embeddings / original_context(config)
    return math.sqrt(1 + math.log(scale) / math.log(original_context(config))) if scale > 1.0 else 1.0


def permute(w, n_head: int):
    """llama.cpp's LlamaModel.permute: HF's rotate-half rows -> interleaved pairs (rows of a head)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def name_map(arch: Arch):
    import gguf

    archs = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}
    return gguf.get_tensor_name_map(archs[arch.gguf_arch], arch.n_layer)


def gguf_name(name_map, hf_name: str) -> str | None:
    base, _, suffix = hf_name.rpartition(".")
    mapped = name_map.get_name(base)
    return f"{mapped}.{suffix}" if mapped else None


def qk_heads(arch: Arch, hf_name: str) -> int | None:
    """Heads to permute over, for llama q/k projections; None for every other tensor."""
    if not arch.permute_qk:
        return None
    if ".q_proj." in hf_name:
        return arch.n_head
    if ".k_proj." in hf_name:
        return arch.n_kv
    return None


def add_hparams(writer, config, arch: Arch, ftype, name: str) -> None:
    import gguf

    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(arch.n_layer)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(arch.n_head)
    writer.add_head_count_kv(arch.n_kv)
    writer.add_rope_freq_base(rope_theta(config))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_key_length(arch.head_dim)
    writer.add_value_length(arch.head_dim)
    if arch.hf_type == "llama":
        writer.add_vocab_size(config.vocab_size)
        writer.add_rope_dimension_count(arch.head_dim)
    if arch.hf_type == "phi3":
        writer.add_rope_dimension_count(arch.rope_dims)
        writer.add_rope_scaling_orig_ctx_len(original_context(config))
        writer.add_sliding_window(getattr(config, "sliding_window", None) or 0)
        if arch.longrope:
            writer.add_rope_scaling_attn_factors(longrope_attn_factor(config))
    if arch.gguf_arch == "gemma3":
        writer.add_sliding_window(config.sliding_window)
        rope = rope_of(config)
        if (rope.get("rope_type") or "default") == "linear":
            writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            writer.add_rope_scaling_factor(float(rope["factor"]))
    writer.add_file_type(ftype)
    if ftype not in (gguf.LlamaFileType.ALL_F32, gguf.LlamaFileType.MOSTLY_F16):
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
