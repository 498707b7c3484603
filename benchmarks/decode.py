"""Batched greedy decoding against the memory-bandwidth limit (issue 35, part 3).

A decoding step reads every weight once (all rows of a batch share the read) and each row's KV cache,
and does 2 FLOPs per weight per row. So a step cannot be shorter than the larger of
bytes read / memory bandwidth and FLOPs / matmul peak; this measures both on the machine (a sum over a
1 GiB tensor for the bandwidth, `machine.measure_gflops` for the peak) and sets the measured step
against them.

The step time is (time to N new tokens − time to 1 new token) / (N − 1): the prompt pass cancels out.
No row stops early (the stop token is one the model never makes). Three ways of keeping the cache:

- tunesmith: `loading.generate_ids`, the in-place cache of kvcache.py (prompts built unpadded);
- transformers' DynamicCache (`model.generate` on the left-padded batch, its default);
- transformers' StaticCache (`cache_implementation="static"`): a buffer of the full length, no
  reallocation, but every step attends over the whole buffer, masked.

    .venv/bin/python benchmarks/decode.py [--model smollm2-135m] [--batch 1,4,16] [--new 48]
        [--precision fp32,bf16] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

# no benchmark run enters the registry of the person who runs it (TUNESMITH_BENCH_REGISTRY=PATH keeps them)
os.environ["TUNESMITH_REGISTRY"] = os.environ.get("TUNESMITH_BENCH_REGISTRY", "off")

ROOT = Path(__file__).resolve().parent.parent


def bandwidth_gbs(gib: float = 1.0, repeat: int = 5) -> float:
    """Read bandwidth: the best of `repeat` sums over a `gib` GiB fp32 tensor, GB/s."""
    import torch

    x = torch.ones(int(gib * 2**30 / 4))
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - t)
    return x.numel() * 4 / best / 1e9


def weight_bytes(model) -> tuple[int, int]:
    """(bytes a step reads, multiply-accumulates per row): every weight once, tied ones once; the input
    embedding contributes only the rows looked up (nothing) unless it is the output layer too."""
    emb = model.get_input_embeddings().weight
    out = model.get_output_embeddings().weight
    seen, total, macs = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen or (p is emb and emb is not out):
            continue
        seen.add(id(p))
        total += p.numel() * p.element_size()
        macs += p.numel() if p.dim() == 2 else 0
    return total, macs


def kv_bytes_per_token(model, dtype_size: int) -> int:
    c = model.config.get_text_config()
    heads = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    return 2 * c.num_hidden_layers * heads * head_dim * dtype_size


def timed(fn, repeat: int) -> float:
    ts = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def measure(prec: str, a, bw: float) -> list[dict]:
    """The three caches at each batch size, in precision `prec`."""
    import torch

    from tunesmith.data.formats import load_examples
    from tunesmith.eval.run import split_prompt
    from tunesmith.models.chat import prompt_ids
    from tunesmith.models.loading import generate_ids, left_padded, load
    from tunesmith.train import machine

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[prec]
    peak = machine.measure_gflops(prec)
    loaded = load(a.model, dtype=dtype, quiet=True)
    model, tok = loaded.model, loaded.tokenizer
    prompts = [prompt_ids(tok, split_prompt(ex.messages)[0]) for ex in load_examples(a.data, "--data")]
    wbytes, macs = weight_bytes(model)
    kv_tok = kv_bytes_per_token(model, torch.tensor([], dtype=dtype).element_size())
    never = [len(tok) + 7]  # a stop token the model cannot make: every row runs its N tokens
    rows = []
    for b in [int(x) for x in a.batch.split(",")]:
        batch = (prompts * (b // len(prompts) + 1))[:b]
        ids, mask = left_padded(batch, tok.pad_token_id)

        def ours(n, batch=batch):
            generate_ids(model, batch, pad_id=tok.pad_token_id, stop_ids=never, max_new_tokens=n)

        def theirs(n, static=False, ids=ids, mask=mask):
            with torch.no_grad():
                model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                               do_sample=False, eos_token_id=never, pad_token_id=tok.pad_token_id,
                               **({"cache_implementation": "static"} if static else {}))  # fmt: skip

        ways = {"tunesmith": ours, "DynamicCache": theirs, "StaticCache": lambda n: theirs(n, True)}
        prompt_tokens = sum(len(p) for p in batch)
        step_bytes = wbytes + kv_tok * (prompt_tokens + b * a.new / 2)  # the cache read at the middle step
        step_flops = 2 * macs * b
        floor = max(step_bytes / bw / 1e9, step_flops / peak / 1e9)
        for name, fn in ways.items():
            fn(2)  # warm-up (and the static cache's first allocation)
            one = timed(lambda fn=fn: fn(1), a.repeat)
            full = timed(lambda fn=fn: fn(a.new), a.repeat)
            step = (full - one) / (a.new - 1)
            row = {"precision": prec, "batch": b, "cache": name, "prompt_tokens": round(prompt_tokens / b),
                   "step_ms": round(step * 1e3, 1), "tokens_per_s": round(b / step, 1),
                   "prefill_s": round(one, 2), "floor_ms": round(floor * 1e3, 1),
                   "of_limit": round(floor / step, 3), "peak_gflops": round(peak, 1),
                   "bound": "memory" if step_bytes / bw > step_flops / peak else "compute",
                   "achieved_gbs": round(step_bytes / step / 1e9, 1),
                   "achieved_gflops": round(step_flops / step / 1e9, 1)}  # fmt: skip
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--data", default=str(ROOT / "examples/meeting-notes/test.jsonl"))
    ap.add_argument("--batch", default="1,4,16")
    ap.add_argument("--new", type=int, default=48, help="new tokens per row (the step time's N)")
    ap.add_argument("--precision", default="fp32,bf16")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out")
    a = ap.parse_args()
    bw = bandwidth_gbs()
    print(f"read bandwidth {bw:.1f} GB/s", file=sys.stderr, flush=True)
    rows = [r for prec in a.precision.split(",") for r in measure(prec, a, bw)]
    print(f"\nread bandwidth {bw:.1f} GB/s (sum over 1 GiB, best of 5)\n")
    print("| precision | batch | cache | step ms | tokens/s | floor ms (bound) | of limit | GB/s | GFLOP/s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['precision']} | {r['batch']} | {r['cache']} | {r['step_ms']} | {r['tokens_per_s']} | "
              f"{r['floor_ms']} ({r['bound']}) | {r['of_limit']:.0%} | {r['achieved_gbs']} | "
              f"{r['achieved_gflops']} |")  # fmt: skip
    if a.out:
        Path(a.out).write_text(json.dumps({"bandwidth_gbs": round(bw, 1), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
