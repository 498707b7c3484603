"""Bring your own model: what `tunesmith plan` says on this machine for models of Qwen2.5-0.5B's,
Qwen2.5-1.5B's and Phi-4-mini's (3.8B) shapes, LoRA on the example data, fp32 and bf16.

None of those models can be had offline here, and the plan reads only a model's config and the size of its
weights (it builds the model on the meta device): each shape is a config.json of the real model's dimensions
beside a *sparse* safetensors file with the real tensor names and shapes (no bytes on disk), and SmolLM2's
tokenizer (the token counts of the data are SmolLM2's, not the real model's).

    .venv/bin/python benchmarks/byom.py            # prints a Markdown table for the README and RESULTS.md
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

# no benchmark run enters the registry of the person who runs it (TUNESMITH_BENCH_REGISTRY=PATH keeps them)
os.environ["TUNESMITH_REGISTRY"] = os.environ.get("TUNESMITH_BENCH_REGISTRY", "off")

SHAPES = {
    "qwen2.5-0.5b": dict(
        model_type="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
        num_attention_heads=14, num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True,
        max_position_embeddings=32768,
        rope_theta=1000000.0, rms_norm_eps=1e-6,
    ),
    "qwen2.5-1.5b": dict(
        model_type="qwen2", hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
        num_attention_heads=12, num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True,
        max_position_embeddings=32768,
        rope_theta=1000000.0, rms_norm_eps=1e-6,
    ),
    "phi-4-mini (3.8b)": dict(
        model_type="phi3", hidden_size=3072, intermediate_size=8192, num_hidden_layers=32,
        num_attention_heads=24, num_key_value_heads=8, vocab_size=200064, tie_word_embeddings=True,
        max_position_embeddings=131072,
        original_max_position_embeddings=4096, partial_rotary_factor=0.75, rope_theta=10000.0,
        rms_norm_eps=1e-5,
        rope_scaling={"rope_type": "longrope", "long_factor": [1.0] * 48, "short_factor": [1.0] * 48},
    ),
}  # fmt: skip


def sparse_model(folder: Path, name: str, shape: dict) -> Path:
    """A model directory transformers and tunesmith accept, whose weights take no disk: bf16 tensors with
    the real names and shapes, the data region a hole."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from tunesmith.models.resolve import resolve

    d = folder / name.split()[0]
    d.mkdir(parents=True)
    kw = dict(shape)
    config = AutoConfig.for_model(kw.pop("model_type"), **kw)
    config.torch_dtype = "bfloat16"
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    config.save_pretrained(d)
    header, offset = {}, 0
    for key, t in model.state_dict().items():
        if key == "lm_head.weight" and config.tie_word_embeddings:
            continue
        n = t.numel() * 2
        header[key] = {"dtype": "BF16", "shape": list(t.shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(d / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        f.truncate(8 + len(raw) + offset)
    AutoTokenizer.from_pretrained(str(resolve("smollm2-135m"))).save_pretrained(d)
    return d


def plan(model: Path, precision: str) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "tunesmith.cli",
        "plan",
        "--model",
        str(model),
        "--data",
        "examples/meeting-notes",
    ]
    done = subprocess.run([*cmd, "--precision", precision, "--json"], capture_output=True, text=True)
    if done.returncode not in (0, 4):  # 4: will not fit (still a plan)
        raise SystemExit(done.stderr)
    return json.loads(done.stdout)


def main() -> int:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, shape in SHAPES.items():
            d = sparse_model(Path(tmp), name, shape)
            for precision in ("fp32", "bf16"):
                rows.append((name, precision, plan(d, precision)))
    print(
        "| model (shape) | parameters | precision | peak memory (predicted) | fits in this RAM | tokens/s | "
        "one epoch | 3 epochs (the default) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, precision, p in rows:
        print(
            f"| {name} | {p['parameters'] / 1e9:.2f} B | {precision} | {p['peak_bytes'] / 2**30:.1f} GiB | "
            f"{'yes' if p['fits'] else 'no'} | {p['tokens_per_s']:.0f} | {p['epoch_s'] / 60:.0f} min | "
            f"{p['total_s'] / 3600:.1f} h |"
        )
        for sug in p["suggestions"]:
            print(f"  suggestion for {name} {precision}: {json.dumps(sug)[:400]}", file=sys.stderr)
    first = rows[0][2]
    print(
        f"\n{first['examples']} examples, {first['tokens']:,} tokens (SmolLM2's tokenizer); matmul peak "
        f"{rows[0][2]['matmul_gflops']:.0f} GFLOP/s fp32, {rows[1][2]['matmul_gflops']:.0f} bf16; RAM "
        f"{first['total_bytes'] / 2**30:.1f} GiB"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
