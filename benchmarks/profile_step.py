"""Where a training step's time goes, by kind of op (issue 35, part 1): torch.profiler over a few LoRA steps
of the example data, the real default model, tunesmith's own step (sft.Sft, the optimizer as run.py uses
it), after two warm-up steps.

Each op's *self* time (its children's not counted, so nothing is counted twice) is put in a class:
matmuls, attention, norms, elementwise, casts and copies, the optimizer, and the rest. The FLOPs of the
matrix products come from their recorded shapes (2·m·k·n), which gives each class's achieved GFLOP/s to
set against the machine's peak. Not the profiler's own FLOP counting (`with_flops`): it halved the speed
of the profiled steps (172 against 360 tokens/s) and put its cost on the elementwise ops, whose share it
tripled. The same steps are also timed without the profiler, so the profiler's overhead is shown.

    .venv/bin/python benchmarks/profile_step.py --precision bf16 [--steps 3] [--data examples/meeting-notes]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import tempfile
import time
from collections import defaultdict

# no benchmark run enters the registry of the person who runs it (TUNESMITH_BENCH_REGISTRY=PATH keeps them)
os.environ["TUNESMITH_REGISTRY"] = os.environ.get("TUNESMITH_BENCH_REGISTRY", "off")

CLASSES = [  # (class, pattern over the op's name), first match wins
    # train/attention.py: q kᵀ + bias as one baddbmm, softmax, then @ v (its bmm is counted as a matmul)
    # train/attention.py's products are the only batched ones (bmm, baddbmm); the linears are mm
    ("attention", r"scaled_dot_product|flash_attention|_efficient_attention|softmax|bmm|^Attention"),
    ("matmul", r"^aten::(mm|addmm|matmul|linear|_mkldnn|mkldnn_)|onednn|gemm"),
    ("norm", r"rms_norm|layer_norm|rsqrt|aten::pow$|aten::mean$|native_layer_norm|^RMSNorm"),
    ("gated MLP (recomputed)", r"^Gated"),
    ("casts and copies", r"aten::(to|_to_copy|copy_|contiguous|clone)$"),
    ("optimizer", r"adam|_foreach|Optimizer|clip_grad|aten::norm$"),
    ("loss and output layer", r"logsumexp|gather|scatter|cross_entropy|nll_loss|log_softmax"),
    (
        "elementwise",
        r"aten::(mul|add|sub|div|silu|sigmoid|neg|cat|exp|where|fill_|zero_|zeros|ones|empty|"
        r"cos|sin|slice|view|reshape|t|transpose|expand|unsqueeze|index|select|sum|masked_fill|tanh|gelu)",
    ),
]


def classify(name: str) -> str:
    for cls, pat in CLASSES:
        if re.search(pat, name):
            return cls
    return "other"


def flops(name: str, shapes) -> int:
    """2·m·k·n of a matrix product from its input shapes (0 for anything else)."""
    try:
        if name in ("aten::mm", "aten::bmm"):
            a, b = shapes[0], shapes[1]
        elif name in ("aten::addmm", "aten::baddbmm", "aten::baddbmm_", "aten::addmm_"):
            a, b = shapes[1], shapes[2]
        else:
            return 0
        batch = a[0] if len(a) == 3 else 1
        return 2 * batch * a[-2] * a[-1] * b[-1]
    except (IndexError, TypeError):
        return 0


def main() -> None:
    import torch

    from tunesmith.train.config import TrainConfig
    from tunesmith.train.run import State
    from tunesmith.train.sft import Sft

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--data", default="examples/meeting-notes")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--out", help="also write the table as JSON here")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(data=a.data, out=f"{tmp}/run", precision=a.precision, epochs=1)
        cfg.validate()
        m = Sft(cfg, quiet=True)
    params = [p for p in m.model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    steps, st = m.plan(1), State()

    def one(items) -> int:
        out = m.train_step(items, st)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return out.tokens

    for items in steps[:2]:
        one(items)
    batch = steps[2 : 2 + a.steps]
    t0 = time.perf_counter()
    tokens = sum(one(items) for items in batch)  # the same steps without the profiler
    plain = time.perf_counter() - t0
    acts = [torch.profiler.ProfilerActivity.CPU]
    t0 = time.perf_counter()
    with torch.profiler.profile(activities=acts, record_shapes=True) as prof:
        for items in batch:
            one(items)
    wall = time.perf_counter() - t0
    by: dict[str, dict] = defaultdict(lambda: {"self_s": 0.0, "flops": 0})
    for e in prof.key_averages(group_by_input_shape=True):
        c = by[classify(e.key)]
        c["self_s"] += e.self_cpu_time_total / 1e6
        c["flops"] += flops(e.key, e.input_shapes) * e.count
    total = sum(c["self_s"] for c in by.values())
    rows = []
    for cls, c in sorted(by.items(), key=lambda x: -x[1]["self_s"]):
        gflops = c["flops"] / 1e9 / c["self_s"] if c["flops"] and c["self_s"] else None
        share = round(100 * c["self_s"] / total, 1)
        rows.append({"class": cls, "self_s": round(c["self_s"], 3), "share": share,
                     "gflop_per_s": round(gflops, 1) if gflops else None})  # fmt: skip
    top = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:15]
    result = {"precision": a.precision, "steps": a.steps, "tokens": tokens, "wall_s": round(wall, 2),
              "tokens_per_s": round(tokens / plain, 1), "tokens_per_s_profiled": round(tokens / wall, 1),
              "classes": rows,
              "top_ops": [{"op": e.key, "self_s": round(e.self_cpu_time_total / 1e6, 3), "calls": e.count,
                           "class": classify(e.key)} for e in top]}  # fmt: skip
    print(json.dumps(result, indent=1))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
