"""Batched eval generation vs `model.generate` called one example at a time, same examples.

Both are greedy with a KV cache and the same max new tokens; the one-at-a-time reference is
the plain loop people write first. Reports wall time, new tokens/s and the speed-up, and
checks the two produce the same text.

    .venv/bin/python benchmarks/eval_generation.py --n 32 --max-new-tokens 64 --batch-size 16
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

# no benchmark run enters the registry of the person who runs it (TUNESMITH_BENCH_REGISTRY=PATH keeps them)
os.environ["TUNESMITH_REGISTRY"] = os.environ.get("TUNESMITH_BENCH_REGISTRY", "off")

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--data", default=str(ROOT / "examples/meeting-notes/test.jsonl"))
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()

    import torch

    from tunesmith.data.formats import load_examples
    from tunesmith.eval.run import split_prompt
    from tunesmith.models.chat import prompt_ids, stop_token_ids
    from tunesmith.models.loading import generate, load

    loaded = load(args.model, quiet=True)
    model, tok = loaded.model, loaded.tokenizer
    examples = load_examples(args.data, "--data")
    prompts = [split_prompt(ex.messages)[0] for ex in examples]
    prompts = (prompts * (args.n // len(prompts) + 1))[: args.n]
    stops = stop_token_ids(tok)
    generate(model, tok, prompts[:2], max_new_tokens=4, batch_size=2)  # warm-up

    t0 = time.perf_counter()
    one_texts, one_tokens = [], 0
    for conv in prompts:
        ids = torch.tensor([prompt_ids(tok, conv)])
        with torch.no_grad():
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=args.max_new_tokens,
                do_sample=False,
                eos_token_id=stops,
                pad_token_id=tok.pad_token_id,
            )
        new = out[0, ids.shape[1] :].tolist()
        new = new[: next((k for k, t in enumerate(new) if t in stops), len(new))]
        one_tokens += len(new)
        one_texts.append(tok.decode(new, skip_special_tokens=True).strip())
    one_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    outs = generate(model, tok, prompts, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    batch_s = time.perf_counter() - t0
    same = sum(o.text == t for o, t in zip(outs, one_texts))
    row = {
        "model": args.model,
        "n": args.n,
        "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size,
        "mean_prompt_tokens": round(sum(len(prompt_ids(tok, c)) for c in prompts) / len(prompts)),
        "one_at_a_time_s": round(one_s, 1),
        "one_tokens_per_s": round(one_tokens / one_s, 1),
        "batched_s": round(batch_s, 1),
        "batched_tokens_per_s": round(sum(o.new_tokens for o in outs) / batch_s, 1),
        "speedup": round(one_s / batch_s, 2),
        "same_text": f"{same}/{len(outs)}",
    }
    print(json.dumps(row), file=sys.stderr)
    print(
        f"\n`benchmarks/eval_generation.py {' '.join(sys.argv[1:])}` — {platform.machine()}, "
        f"{os.cpu_count()} cores, "
        f"torch {torch.__version__}, {time.strftime('%Y-%m-%d')}\n"
    )
    print(
        f"| examples | mean prompt tokens | max new | one at a time | batched (batch {args.batch_size}) | "
        "speed-up | same text |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    print(
        f"| {args.n} | {row['mean_prompt_tokens']} | {args.max_new_tokens} | {one_s:.1f} s "
        f"({row['one_tokens_per_s']} tok/s) | "
        f"{batch_s:.1f} s ({row['batched_tokens_per_s']} tok/s) | {row['speedup']}× | {row['same_text']} |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
