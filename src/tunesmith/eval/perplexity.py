"""`tunesmith docs perplexity FOLDER CANDIDATE ...`: what continued pre-training (`train --documents`)
taught, measured on documents, with intervals over documents (issue 39, part 3).

A document's perplexity is exp(mean next-token loss over its tokens), its tokens cut into rows exactly
as training cuts them (train/documents.py), each row scored alone. The headline is the corpus perplexity,
exp(Σ loss / Σ tokens). Its 95 % interval resamples documents, not tokens: the tokens of one meeting or
contract are not independent draws, and an interval over them would be far too narrow. A candidate is
compared with the first (the base model, say) by the paired bootstrap over documents of the change in
each document's log-perplexity.

Which documents: a `--documents` run's held-out ones (its documents.json), which it never saw; `--all`,
or no such run among the candidates, measures every readable document. Alongside, up to
`--seen N` documents the run did train on: perplexity falling much more there than on the held-out
ones says the model learned those documents themselves (their facts), not only their words and style;
falling alike says it learned the style. `--general PATH` measures the same on general text (as many
tokens as the documents measured): the forgetting probe, what the adaptation cost elsewhere.

Candidates must share one tokenizer: perplexities per token of different tokenizers do not compare.
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from pathlib import Path

import numpy as np

from tunesmith.corpus.check import walk
from tunesmith.corpus.read import Skipped
from tunesmith.errors import UserError
from tunesmith.models.loading import base_model_of, load
from tunesmith.scoring.stats import RESAMPLES, paired_test
from tunesmith.train.batching import collate
from tunesmith.train.documents import doc_tokens, general_rows, rows_of
from tunesmith.train.loss import answer_loss_sum

DOCUMENTS_FILE = "documents.json"  # what a --documents run records (train/sft.py)


def run_documents(spec: str) -> dict | None:
    p = Path(spec) / DOCUMENTS_FILE
    return json.loads(p.read_text()) if p.is_file() else None


def which_documents(folder: Path, specs: list[str], all_docs: bool, seen: int, seed: int) -> dict:
    """{"held_out"|"all": [...], "seen": [...] (maybe empty), "by": what chose them}."""
    readable = [rel for rel, p, _ in walk(folder) if p is not None]
    if not readable:
        raise UserError(f"{folder}: no files in it")
    run = next(((s, d) for s in specs if (d := run_documents(s))), None)
    if all_docs or run is None:
        return {"measured": readable, "seen": [], "by": "every document"}
    spec, d = run
    if Path(d["folder"]).resolve() != folder.resolve():
        print(f"note: {spec} was trained on {d['folder']}, not {folder}; its held-out list is used by name",
              file=sys.stderr)  # fmt: skip
    held = [r for r in d["held_out"] if r in set(readable)]
    if not held:
        raise UserError(f"{spec} held out no document of {folder}; measure every one with --all")
    trained = sorted(set(readable) - set(d["held_out"]))
    rng = random.Random(seed)
    return {"measured": held, "seen": sorted(rng.sample(trained, min(seen, len(trained)))),
            "by": f"the documents {spec} held out"}  # fmt: skip


def score_rows(model, pad_id: int, rows: list, batch: int = 4) -> tuple[float, int]:
    """Σ next-token loss over the rows' targets (labels other than IGNORE) and how many there are, in
    batches of rows of like length: a document's rows here, the forgetting probe's answers (probes.py)."""
    import torch

    total, count = 0.0, 0
    order = sorted(range(len(rows)), key=lambda i: len(rows[i].input_ids))
    with torch.no_grad():
        for s in range(0, len(order), batch):
            ids, mask, labels = collate(rows, order[s : s + batch], pad_id)
            loss, n = answer_loss_sum(model, ids, mask, labels)
            total += float(loss)
            count += n
    return total, count


def doc_rows(folder: Path, rels: list[str], tok, length: int, max_tokens: int, say=None) -> dict[str, list]:
    out = {}
    for rel in rels:
        try:
            ids = doc_tokens(tok, folder / rel)
        except Skipped as e:
            if say:
                say(f"skip  {rel}: {e}")
            continue
        out[rel] = rows_of(ids[:max_tokens] if max_tokens else ids, length)
    return out


def corpus_ci(losses: list[float], counts: list[int], seed: int = 0) -> list[float]:
    """95 % percentile interval of exp(Σ loss / Σ tokens), documents resampled."""
    x, n = np.asarray(losses), np.asarray(counts, dtype=float)
    if len(x) < 2:
        v = math.exp(x.sum() / max(n.sum(), 1))
        return [round(v, 3)] * 2
    idx = np.random.default_rng(seed).integers(0, len(x), (RESAMPLES, len(x)))
    ppl = np.exp(x[idx].sum(axis=1) / n[idx].sum(axis=1))
    lo, hi = np.quantile(ppl, [0.025, 0.975])
    return [round(float(lo), 3), round(float(hi), 3)]


def measure_set(model, tok, rows: dict[str, list]) -> dict:
    per = {rel: score_rows(model, tok.pad_token_id, r) for rel, r in rows.items() if r}
    losses, counts = [v[0] for v in per.values()], [v[1] for v in per.values()]
    return {
        "perplexity": round(math.exp(sum(losses) / max(sum(counts), 1)), 3),
        "ci95": corpus_ci(losses, counts),
        "tokens": sum(counts),
        "documents": {rel: {"log_ppl": round(l / max(c, 1), 5), "tokens": c} for rel, (l, c) in per.items()},
    }


def candidate(spec: str) -> tuple[str, str | None]:
    """(base model, adapter or None) of a model, an alias, or a run."""
    p = Path(spec)
    if (p / "adapter_config.json").is_file():
        return base_model_of(p, None), spec
    return spec, None


def versus(first: dict, other: dict) -> dict:
    """Paired bootstrap over the documents both scored: the change in log-perplexity per document."""
    both = sorted(set(first["documents"]) & set(other["documents"]))
    t = paired_test([other["documents"][r]["log_ppl"] for r in both],
                    [first["documents"][r]["log_ppl"] for r in both], digits=4)  # fmt: skip
    return {**t, "documents": len(both)}


def perplexity(folder: str, specs: list[str], *, all_docs=False, seen=10, general=None, max_length=1024,
               max_tokens=0, seed=42, trust_remote_code=False, quiet=False) -> dict:  # fmt: skip
    root = Path(folder)
    if not root.is_dir():
        raise UserError(f"{folder}: not a folder of documents")
    if not specs:
        raise UserError("docs perplexity: name one or more models or runs to measure (the base first)")
    chosen = which_documents(root, specs, all_docs, seen, seed)
    out: dict = {"folder": folder, "by": chosen["by"], "max_length": max_length, "candidates": []}
    vocab = None
    for spec in specs:
        t0 = time.perf_counter()
        model_spec, adapter = candidate(spec)
        m = load(model_spec, adapter, trust_remote_code=trust_remote_code, quiet=quiet)
        if vocab is not None and m.tokenizer.get_vocab() != vocab:
            raise UserError(
                f"{spec}: another tokenizer than {specs[0]}'s; perplexities per token do not compare"
            )
        vocab = m.tokenizer.get_vocab()
        row = {"name": spec}
        sets = {"measured": chosen["measured"], "seen": chosen["seen"]}
        say = (
            None if quiet or spec != specs[0] else (lambda s: print(s, file=sys.stderr))
        )  # once, not per model
        for key, rels in sets.items():
            if rels:
                rows = doc_rows(root, rels, m.tokenizer, max_length, max_tokens, say)
                if not any(rows.values()):
                    raise UserError(f"{folder}: none of the {len(rels)} documents to measure could be read")
                row[key] = measure_set(m.model, m.tokenizer, rows)
        if general:  # as many tokens as the documents measured (rows drawn at random, repeated when short)
            rows = general_rows(general, m.tokenizer, max_length, row["measured"]["tokens"], seed)
            row["general"] = measure_set(m.model, m.tokenizer, {f"row {i}": [r] for i, r in enumerate(rows)})
        row["seconds"] = round(time.perf_counter() - t0, 1)
        out["candidates"].append(row)
        if not quiet:
            print(f"measured {spec}: perplexity {row['measured']['perplexity']:.3f} ({row['seconds']} s)",
                  file=sys.stderr)  # fmt: skip
        del m
    first = out["candidates"][0]
    for row in out["candidates"][1:]:
        for key in ("measured", "seen", "general"):
            if key in row and key in first:
                row[f"{key}_vs_first"] = versus(first[key], row[key])
    out["verdict"] = verdict(out)
    return out


def verdict(out: dict) -> str:
    """The sentence: did the documents' perplexity fall, was it learning or only style, what did it cost."""
    first, rest = out["candidates"][0], out["candidates"][1:]
    if not rest:
        return f"{first['name']}: perplexity {first['measured']['perplexity']:.3f} on {out['by']}"
    said = []
    for row in rest:
        t = row["measured_vs_first"]
        fall = 1 - row["measured"]["perplexity"] / first["measured"]["perplexity"]
        s = f"{row['name']}: {'down' if fall > 0 else 'up'} {abs(fall):.0%} on {out['by']}"
        s += (" (significant)" if t["significant"] else f" (not significant, p {t['p']})"
              if t["p"] is not None else " (one document: no test)")  # fmt: skip
        if "seen" in row and "seen" in first:
            seen_fall = 1 - row["seen"]["perplexity"] / first["seen"]["perplexity"]
            learned = seen_fall - fall > 0.05 and row["seen_vs_first"]["significant"]
            s += f", down {seen_fall:.0%} on documents it trained on: " + (
                "it learned those documents themselves, beyond their style" if learned
                else "about the same, so it learned their words and style rather than their content"
            )  # fmt: skip
        if "general" in row and "general" in first:
            g = row["general"]["perplexity"] / first["general"]["perplexity"] - 1
            sig = row["general_vs_first"]["significant"]
            s += f"; general text {'up' if g > 0 else 'down'} {abs(g):.0%}" + (
                " (forgetting)" if g > 0 and sig else ""
            )
        said.append(s)
    return "; ".join(said)


def lines(out: dict) -> list[str]:
    first = out["candidates"][0]
    n = len(first["measured"]["documents"])
    head = [f"perplexity on {n} documents ({out['by']}), 95 % interval over documents; change against "
            f"{first['name']} paired by document"]  # fmt: skip
    cols = [k for k in ("measured", "seen", "general") if k in first]
    names = {"measured": "documents", "seen": "seen in training", "general": "general text"}
    head.append(f"{'candidate':<28}" + "".join(f"{names[k]:>34}" for k in cols))
    for row in out["candidates"]:
        cells = []
        for k in cols:
            m, t = row[k], row.get(f"{k}_vs_first")
            cell = f"{m['perplexity']:.2f} [{m['ci95'][0]:.2f}, {m['ci95'][1]:.2f}]"
            if t:
                cell += f" {math.exp(t['change']) - 1:+.0%}" + ("*" if t["significant"] else "")
            cells.append(f"{cell:>34}")
        head.append(f"{row['name'][-27:]:<28}" + "".join(cells))
    return head + [out["verdict"], "* = significantly different from the first (paired bootstrap, p < 0.05)"]
