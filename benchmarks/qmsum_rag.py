"""Learning from a document repository and answering from it, on one nobody on the team wrote (issue 39,
the proof): QMSum's meeting transcripts (../shared/data/qmsum, MIT) as the documents, their specific
queries as the questions, each with the span of turns it was written from.

Every step is the CLI a user runs, each in a process of its own, one after another:

1. the repository: --meetings transcripts (seeded sample of train + val), one .txt per meeting, a line
   per turn ("Speaker: words"); `docs index --embed` (BM25 + all-MiniLM-L6-v2 vectors), timed;
2. retrieval recall@k (k = 1, 3, 5) of bm25, embed and hybrid against the annotated spans, over every
   question: a hit is a passage of the right meeting whose words overlap a span's;
3. adaptation: `train --documents` (LoRA, the base model's default), a quarter of the meetings held
   out by document; `docs perplexity` base vs adapted on the held-out meetings, on meetings it trained
   on (--seen) and on general text (DialogSum dialogues, the forgetting probe);
4. a tuned run: `train --from ADAPTED` on the questions of the trained meetings, each with the passages
   the index gives it (the +docs prompt), and its answer;
5. `pick` on the questions of the held-out meetings: base, base+docs:K, adapted, adapted+docs:K,
   tuned+docs:K: ROUGE-L with intervals, each against the best, cost per answer; and closed book on
   questions of meetings the adapted run trained on (did it learn their content?).

    .venv/bin/python benchmarks/qmsum_rag.py [--meetings 40] [--questions 60] [--k 3] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

# no benchmark run enters the registry of the person who runs it (TUNESMITH_BENCH_REGISTRY=PATH keeps them)
os.environ["TUNESMITH_REGISTRY"] = os.environ.get("TUNESMITH_BENCH_REGISTRY", "off")
ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
TUNESMITH = [sys.executable, "-m", "tunesmith.cli"]
WORDS = re.compile(r"words (\d+)-(\d+)")


def run(*args: str, log: Path) -> tuple[str, float]:
    """A tunesmith command; its stdout, and its seconds. Stops the benchmark when it fails."""
    t0 = time.perf_counter()
    with open(log, "a") as err:
        err.write(f"\n$ tunesmith {' '.join(args)}\n")
        err.flush()
        p = subprocess.run([*TUNESMITH, *args], stdout=subprocess.PIPE, stderr=err, text=True)
    if p.returncode != 0:
        sys.exit(f"tunesmith {' '.join(args)} failed ({p.returncode}); see {log}")
    return p.stdout, time.perf_counter() - t0


def repository(work: Path, n: int, seed: int) -> list[dict]:
    """n meetings as .txt files in work/docs; for each, its questions with the word ranges of their spans."""
    files = sorted((SHARED / "qmsum").glob("*/*.json"))
    if not files:
        sys.exit(f"{SHARED / 'qmsum'}: not found (the benchmark reads ../shared/data/qmsum)")
    chosen = sorted(random.Random(seed).sample(files, min(n, len(files))), key=lambda f: f.stem)
    docs = work / "docs"
    docs.mkdir(parents=True, exist_ok=True)
    out = []
    for f in chosen:
        m = json.loads(f.read_text())
        lines, start = [], []
        w = 0
        for t in m["meeting_transcripts"]:
            line = f"{t['speaker']}: {t['content']}"
            start.append(w + 1)
            w += len(line.split())
            lines.append(line)
        start.append(w + 1)
        (docs / f"{f.stem}.txt").write_text("\n".join(lines) + "\n")
        qs = []
        for q in m["specific_query_list"]:
            spans = [
                (start[int(a)], start[min(int(b) + 1, len(start) - 1)] - 1)
                for a, b in q["relevant_text_span"]
            ]
            qs.append({"question": q["query"], "answer": q["answer"], "spans": spans})
        out.append({"file": f"{f.stem}.txt", "questions": qs})
    return out


def recall(index_dir: Path, meetings: list[dict], ks=(1, 3, 5)) -> dict:
    """recall@k of each retriever: the share of questions with a top-k passage on an annotated span."""
    from tunesmith.corpus.index import Index
    from tunesmith.scoring.stats import paired_test

    idx = Index(str(index_dir))
    idx.search("warm up", 1, "embed")  # the encoder loads once, outside the timing
    qs = [(m["file"], q) for m in meetings for q in m["questions"]]
    out, per = {}, {}
    for how in ("bm25", "embed", "hybrid"):
        per[how] = {k: [] for k in ks}
        t0 = time.perf_counter()
        for file, q in qs:
            top = idx.search(q["question"], max(ks), how)
            for k in ks:
                per[how][k].append(100.0 * any(on_span(p, file, q["spans"]) for _, p in top[:k]))
        out[how] = {f"recall@{k}": round(sum(per[how][k]) / len(qs), 1) for k in ks}
        out[how]["ms_per_query"] = round(1000 * (time.perf_counter() - t0) / len(qs), 1)
    # paired by question: hybrid against each alone
    out["hybrid_vs"] = {o: {f"recall@{k}": paired_test(per["hybrid"][k], per[o][k]) for k in ks}
                        for o in ("bm25", "embed")}  # fmt: skip
    out["questions"] = len(qs)
    return out


def on_span(p: dict, file: str, spans: list[tuple[int, int]]) -> bool:
    m = WORDS.search(p["where"])
    if p["file"] != file or not m:
        return False
    a, b = int(m.group(1)), int(m.group(2))
    return any(a <= hi and lo <= b for lo, hi in spans)


def chat(question: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def general_text(work: Path, n: int = 300) -> Path:
    """DialogSum dialogues (../shared/data/dialogsum, read here, never copied into the project)."""
    rows = [json.loads(x) for x in (SHARED / "dialogsum" / "test.jsonl").read_text().splitlines()[:n]]
    p = work / "general.txt"
    p.write_text("\n\n".join(r["dialogue"] for r in rows) + "\n")
    return p


def tuning_data(work: Path, index_dir: Path, meetings: list[dict], k: int) -> Path:
    """The trained meetings' questions, each with the K passages the index gives it, and its answer."""
    from tunesmith.corpus.cite import retrieve
    from tunesmith.corpus.index import Index

    idx = Index(str(index_dir))
    rows = []
    for m in meetings:
        for q in m["questions"]:
            conv, _ = retrieve(idx, [{"role": "user", "content": q["question"]}], k)
            rows.append({"messages": [*conv, {"role": "assistant", "content": q["answer"]}]})
    random.Random(0).shuffle(rows)
    d = work / "tune"
    d.mkdir(exist_ok=True)
    cut = max(1, len(rows) // 10)
    (d / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:cut]))
    (d / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[cut:]))
    return d


def brief(c: dict) -> dict:
    """A perplexity candidate without its per-document rows."""
    sets = {
        k: {x: c[k][x] for x in ("perplexity", "ci95", "tokens")} for k in ("measured", "seen", "general")
    }
    return {"name": c["name"], **sets, **{k: c[k] for k in c if k.endswith("_vs_first")}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--meetings", type=int, default=18)
    ap.add_argument("--questions", type=int, default=60, help="held-out meetings' questions asked (at most)")
    ap.add_argument("--seen", type=int, default=30, help="trained meetings' questions asked closed book")
    ap.add_argument("--k", type=int, default=3, help="passages per answer")
    ap.add_argument("--held-out", type=float, default=0.33)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--max-length", type=int, default=512, help="rows of continued pre-training")
    ap.add_argument("--ppl-max-tokens", type=int, default=4096, help="tokens of each document measured")
    ap.add_argument(
        "--precision", default="auto", help="of the two training runs (bf16 where the CPU has it)"
    )
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default="/tmp/tunesmith-qmsum-rag")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "qmsum_rag.json"))
    ap.add_argument(
        "--recall-only", action="store_true", help="recall again on --work's repository and index"
    )
    a = ap.parse_args()
    work = Path(a.work)
    if a.recall_only:
        meetings = repository(work / "again", a.meetings, a.seed)  # the same seeded sample, to get the spans
        print(json.dumps(recall(work / "idx", meetings), indent=1))
        return
    if work.exists():
        sys.exit(f"{work} exists; remove it or give --work")
    work.mkdir(parents=True)
    log = work / "log.txt"
    res: dict = {"args": vars(a)}
    meetings = repository(work, a.meetings, a.seed)
    docs, idx = work / "docs", work / "idx"
    res["documents"] = {
        "meetings": len(meetings),
        "words": sum(len(p.read_text().split()) for p in docs.glob("*.txt")),
    }
    said, s = run("docs", "index", str(docs), "--out", str(idx), "--embed", "--quiet", log=log)
    res["index"] = {"seconds": round(s, 1), "said": said.strip()}
    print(f"index: {s:.0f} s", flush=True)
    res["recall"] = recall(idx, meetings)
    print(json.dumps(res["recall"]), flush=True)
    adapted = work / "adapted"
    said, s = run("train", "--documents", str(docs), "--out", str(adapted), "--held-out", str(a.held_out),
                  "--epochs", str(a.epochs), "--max-length", str(a.max_length), "--precision", a.precision,
                  "--quiet", "--json", log=log)  # fmt: skip
    res["adapt"] = {"seconds": round(s, 1), **json.loads(said)}
    held = set(json.loads((adapted / "documents.json").read_text())["held_out"])
    print(f"adapted: {s:.0f} s; held out {sorted(held)}", flush=True)
    said, s = run("docs", "perplexity", str(docs), "smollm2-135m", str(adapted), "--seen", "5",
                  "--max-length", str(a.max_length), "--max-tokens", str(a.ppl_max_tokens), "--general",
                  str(general_text(work)), "--json", log=log)  # fmt: skip
    ppl = json.loads(said)
    res["perplexity"] = {"seconds": round(s, 1), "verdict": ppl["verdict"], "candidates": [brief(c) for c in
                         ppl["candidates"]]}  # fmt: skip
    print(ppl["verdict"], flush=True)
    trained = [m for m in meetings if m["file"] not in held]
    tune = tuning_data(work, idx, trained, a.k)
    said, s = run("train", "--from", str(adapted), "--data", str(tune), "--out", str(work / "tuned"),
                  "--epochs", "1", "--max-length", "2048", "--precision", a.precision, "--quiet", "--json",
                  log=log)  # fmt: skip
    res["tune"] = {"seconds": round(s, 1), **json.loads(said)}
    print(f"tuned: {s:.0f} s", flush=True)
    test = [chat(q["question"], q["answer"]) for m in meetings if m["file"] in held for q in m["questions"]]
    random.Random(1).shuffle(test)
    (work / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in test[: a.questions]))
    k = f"+docs:{a.k}"
    said, s = run("pick", "--data", str(work / "test.jsonl"), "--docs", str(idx), "smollm2-135m",
                  f"smollm2-135m{k}", str(adapted), f"{adapted}{k}", f"{work / 'tuned'}{k}",
                  "--max-new-tokens", str(a.max_new_tokens), "--json", log=log)  # fmt: skip
    res["pick_held_out"] = {"seconds": round(s, 1), **json.loads(said)}
    seen = [chat(q["question"], q["answer"]) for m in trained for q in m["questions"]]
    random.Random(2).shuffle(seen)
    (work / "seen.jsonl").write_text("".join(json.dumps(r) + "\n" for r in seen[: a.seen]))
    said, s = run("pick", "--data", str(work / "seen.jsonl"), "smollm2-135m", str(adapted),
                  "--max-new-tokens", str(a.max_new_tokens), "--json", log=log)  # fmt: skip
    res["pick_seen_closed_book"] = {"seconds": round(s, 1), **json.loads(said)}
    Path(a.out).write_text(json.dumps(res, indent=1) + "\n")
    for key in ("pick_held_out", "pick_seen_closed_book"):
        print(key)
        for r in res[key]["ranking"]:
            t = r["against_best"]
            print(f"  {r['name']:<40} {r['value']:.2f} {r['ci95']} vs best {t and (t['change'], t['p'])} "
                  f"{r['ms_per_answer']} ms/answer")  # fmt: skip
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
