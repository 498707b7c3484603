"""`tunesmith curve`: would more data help? The same config trained on nested seeded subsets of the
training set (25 / 50 / 100 % by default: each subset holds the smaller ones, so the points differ only
by the examples added), each evaluated on the same held-out set, the metric with its bootstrap interval
against the number of examples, and one sentence: still rising at 100 % (the last step up is
significant in a paired test on the same held-out examples) or flat."""

from __future__ import annotations

import dataclasses
import html
import random
from pathlib import Path

from tunesmith.data.formats import locate_paths
from tunesmith.errors import UserError
from tunesmith.eval.label_pairs import LOWER, PER_EXAMPLE, per_example
from tunesmith.eval.labels import evaluate_labels
from tunesmith.eval.run import EvalSpec, evaluate
from tunesmith.files.atomic import write_text
from tunesmith.scoring.stats import bootstrap_ci, paired_test
from tunesmith.sweep.report import PAD, H, W, axes, scale
from tunesmith.train.config import TrainConfig
from tunesmith.train.trainer import train


def parse_fractions(text: str) -> list[float]:
    try:
        values = sorted({float(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise UserError(f"--fractions {text!r}: numbers such as 0.25,0.5,1") from None
    if len(values) < 2 or values[0] <= 0 or values[-1] > 1:
        raise UserError(f"--fractions {text!r}: two or more fractions in (0, 1], e.g. 0.25,0.5,1")
    return values


def nested_subsets(path: Path, fractions: list[float], seed: int) -> list[list[str]]:
    """The training file's lines for each fraction: one seeded order, the first k of it, in file order."""
    if path.suffix != ".jsonl":
        raise UserError(f"--data {path}: curve takes a .jsonl training file (convert it with `data prepare`)")
    lines = [x for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
    if not lines:
        raise UserError(f"--data {path}: no examples")
    order = list(range(len(lines)))
    random.Random(seed).shuffle(order)
    out = []
    for f in fractions:
        k = max(1, round(f * len(lines)))
        out.append([lines[i] for i in sorted(order[:k])])
    return out


def curve(base: TrainConfig, out: Path, fractions: list[float], test: str | None, metric: str | None,
          max_new_tokens: int, registry: str | None, say=print) -> dict:  # fmt: skip
    """`metric` None: ROUGE-L for text, and for a --task run accuracy, exact match (several classes) or
    the absolute error (a number; `squared_error` also)."""
    metric = metric or (PER_EXAMPLE[base.task][0] if base.task != "generate" else "rougeL")
    if base.task != "generate" and metric not in PER_EXAMPLE[base.task]:  # said before any training
        raise UserError(
            f"--metric {metric}: a --task {base.task} curve draws {' or '.join(PER_EXAMPLE[base.task])}"
        )
    train_file, val = locate_paths(base.data, base.val)
    held_out = test or (str(val) if val else None)
    if not held_out:
        raise UserError(
            "curve: give --test FILE (or a val.jsonl beside the data): every point is measured on it"
        )
    points = []
    for lines in nested_subsets(train_file, fractions, base.seed):
        n = len(lines)
        subset = out / "subsets" / f"train-{n}.jsonl"
        write_text(subset, "\n".join(lines) + "\n")
        cfg = dataclasses.replace(
            base, data=str(subset), val=str(val) if val else None, out=str(out / f"n{n}")
        )
        train(cfg, quiet=True, registry_path=registry, overwrite=True)
        if base.task != "generate":  # a head: the tuned predictions on the held-out labels
            scores = per_example(evaluate_labels(cfg.out, held_out, systems="tuned"), metric)
        else:
            scores = text_scores(cfg.out, held_out, metric, max_new_tokens)
        mean = sum(scores) / len(scores)
        ci = list(bootstrap_ci(scores))
        points.append({"examples": n, "run": cfg.out, "mean": round(mean, 2), "ci": ci, "scores": scores})
        say(f"{n} examples: {metric} {mean:.3g} [{points[-1]['ci'][0]:.3g}, {points[-1]['ci'][1]:.3g}]")
    last, before = points[-1], points[-2]
    test_ = paired_test(last["scores"], before["scores"])
    lower = metric in LOWER
    if test_["significant"] and (test_["change"] < 0 if lower else test_["change"] > 0):
        sentence = (
            f"still {'falling' if lower else 'rising'} at {last['examples']} examples: {metric} "
            f"{test_['change']:+.1f} from "
            f"{before['examples']} (p {test_['p']:.3f}); more data of this kind is likely to help"
        )
    else:
        sentence = (
            f"flat from {before['examples']} to {last['examples']} examples: {metric} {test_['change']:+.1f} "
            f"(p {test_['p']:.3f}, not a significant {'fall' if lower else 'rise'}); more of the same data "
            "is unlikely to help much"
        )
    result = {
        "metric": metric,
        "held_out": held_out,
        "points": points,
        "last_step": test_,
        "sentence": sentence,
    }
    write_text(out / "report.html", render(result))
    return result


def text_scores(run: str, held_out: str, metric: str, max_new_tokens: int) -> list[float]:
    results, _ = evaluate(EvalSpec(data=held_out, adapter=run, max_new_tokens=max_new_tokens, quiet=True))
    if metric not in (results["examples"][0].get("scores") or {}):
        raise UserError(f"--metric {metric}: not one of {', '.join(results['examples'][0]['scores'])}")
    return [float((e.get("scores") or {}).get(metric, 0.0)) for e in results["examples"]]


def render(result: dict) -> str:
    """The curve as one self-contained page: a point per subset with its 95 % interval, drawn with the
    sweep report's axes and scales."""
    pts, metric = result["points"], result["metric"]
    sx = scale([0, *(p["examples"] for p in pts)], False, PAD + 8, W - 18)
    sy = scale([v for p in pts for v in p["ci"]], False, H - PAD - 8, 18)
    parts = axes(f"{metric} against training examples", "training examples", metric)
    lo, hi = min(v for p in pts for v in p["ci"]), max(v for p in pts for v in p["ci"])
    parts += [  # the metric's values at the ends of the y axis
        f'<text x="{PAD - 3}" y="{sy(v) + 4:.1f}" font-size="10" text-anchor="end">{v:.3g}</text>'
        for v in (lo, hi)
    ]
    line = " ".join(f"{sx(p['examples']):.1f},{sy(p['mean']):.1f}" for p in pts)
    parts.append(f'<polyline points="{line}" fill="none" stroke="#3a78c9"/>')
    for p in pts:
        x = sx(p["examples"])
        parts.append(
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{sy(p["ci"][0]):.1f}" y2="{sy(p["ci"][1]):.1f}" '
            'stroke="#3a78c9"/>'
        )
        said = f"{p['examples']} examples: {p['mean']} [{p['ci'][0]}, {p['ci'][1]}]"
        parts.append(
            f'<circle cx="{x:.1f}" cy="{sy(p["mean"]):.1f}" r="4" fill="#3a78c9">'
            f"<title>{said}</title></circle>"
        )
        parts.append(
            f'<text x="{x:.1f}" y="{H - PAD + 14}" font-size="10" text-anchor="middle">{p["examples"]}</text>'
        )
    parts.append("</svg>")
    return (
        f"<!doctype html><meta charset='utf-8'><title>learning curve</title><body style='font:14px system-ui,"
        f"sans-serif;margin:1.5em'><h1>Learning curve: {html.escape(metric)} on "
        f"{html.escape(result['held_out'])}</h1><p>{html.escape(result['sentence'])}</p>{''.join(parts)}</body>"
    )
