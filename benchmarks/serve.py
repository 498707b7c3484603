"""Throughput and latency of `tunesmith serve` under 1, 4, 16 and 32 concurrent clients.

Starts a real server on 127.0.0.1 (loopback only), sends the same kind of request from N
client threads in a closed loop (each sends its next request when the last one is answered),
bounded by a request count and a time limit per level, and reports generated tokens/s, p50/p95
latency and errors. The 1-client level is the "one request at a time" reference: the ratio of
each level's throughput to it is what dynamic batching buys.

    .venv/bin/python benchmarks/serve.py                      # default model, example prompts
    .venv/bin/python benchmarks/serve.py --prompts short      # short chat-style prompts
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

# no benchmark run enters the registry of the person who runs it (TUNESMITH_BENCH_REGISTRY=PATH keeps them)
os.environ["TUNESMITH_REGISTRY"] = os.environ.get("TUNESMITH_BENCH_REGISTRY", "off")

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prompts(kind: str) -> list[list[dict]]:
    if kind == "short":
        topics = [
            "the budget",
            "the remote control design",
            "battery choice",
            "the marketing research",
            "the prototype",
            "the next meeting",
            "the case material",
            "user interface ideas",
        ]
        return [
            [
                {
                    "role": "user",
                    "content": f"In two sentences, what should a team keep in mind when deciding on {t}?",
                }
            ]
            for t in topics
        ]
    rows = [
        json.loads(line) for line in (ROOT / "examples/meeting-notes/test.jsonl").read_text().splitlines()
    ]
    out = []
    for r in rows:
        msgs = r["messages"]
        last = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
        out.append(msgs[:last])
    return out


def post(url: str, body: dict, timeout: float) -> tuple[int, dict]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")
    except OSError as e:
        return 0, {"error": str(e)}


def run_level(
    url: str,
    model: str,
    convs: list[list[dict]],
    clients: int,
    max_tokens: int,
    requests: int,
    seconds: float,
) -> dict:
    lock = threading.Lock()
    sent = 0
    latencies, tokens, errors = [], [], []
    stop_at = time.perf_counter() + seconds

    def client(k: int):
        nonlocal sent
        while True:
            with lock:
                if sent >= requests or time.perf_counter() > stop_at:
                    return
                i = sent
                sent += 1
            t0 = time.perf_counter()
            status, body = post(
                url,
                {"model": model, "messages": convs[i % len(convs)], "max_tokens": max_tokens},
                timeout=600,
            )
            dt = time.perf_counter() - t0
            with lock:
                if status == 200:
                    latencies.append(dt)
                    tokens.append(body["usage"]["completion_tokens"])
                else:
                    errors.append(status)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat = sorted(latencies)
    q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] if lat else float("nan")  # noqa: E731
    return {
        "clients": clients,
        "requests": len(lat),
        "errors": len(errors),
        "wall_s": round(wall, 1),
        "tokens": sum(tokens),
        "tokens_per_s": round(sum(tokens) / wall, 1),
        "p50_s": round(statistics.median(lat), 2) if lat else None,
        "p95_s": round(q(0.95), 2) if lat else None,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--prompts", choices=["example", "short"], default="example")
    ap.add_argument("--clients", default="1,4,16,32")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--requests", type=int, default=32, help="requests per level (at least 2 per client)")
    ap.add_argument("--seconds", type=float, default=240, help="time limit per level")
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--max-queue", type=int, default=64)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()

    port = free_port()
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"tunesmith-serve-bench-{port}.log"
    cmd = [
        sys.executable,
        "-m",
        "tunesmith.cli",
        "serve",
        "--model",
        args.model,
        "--no-auth",
        "--port",
        str(port),
        "--max-batch",
        str(args.max_batch),
        "--max-queue",
        str(args.max_queue),
        "--max-tokens",
        str(args.max_tokens),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log.open("w"), cwd=ROOT)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            if proc.poll() is not None:
                raise SystemExit(f"server exited: {log.read_text()}")
            try:
                with urllib.request.urlopen(base + "/health", timeout=2) as r:
                    model = json.loads(r.read())["models"][0]
                break
            except OSError:
                time.sleep(0.5)
        convs = prompts(args.prompts)
        run_level(base + "/v1/chat/completions", model, convs, 2, args.max_tokens, 2, 60)  # warm-up
        rows = []
        for c in [int(x) for x in args.clients.split(",")]:
            row = run_level(
                base + "/v1/chat/completions",
                model,
                convs,
                c,
                args.max_tokens,
                max(args.requests, 2 * c),
                args.seconds,
            )
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    finally:
        proc.terminate()
        proc.wait(30)
    ref = rows[0]["tokens_per_s"] if rows and rows[0]["clients"] == 1 else None
    print(
        f"\n`{' '.join(['benchmarks/serve.py'] + sys.argv[1:])}` — {args.model}, {args.prompts} prompts, "
        f"max_tokens {args.max_tokens}, --max-batch {args.max_batch}; "
        f"{platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}\n"
    )
    print("| clients | requests | errors | tokens/s | vs 1 client | p50 latency s | p95 latency s |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        ratio = f"{r['tokens_per_s'] / ref:.1f}×" if ref else "-"
        print(
            f"| {r['clients']} | {r['requests']} | {r['errors']} | {r['tokens_per_s']} | {ratio} | "
            f"{r['p50_s']} | {r['p95_s']} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
