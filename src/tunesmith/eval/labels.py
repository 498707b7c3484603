"""`tunesmith eval --adapter RUN` for a run trained with `--task`: the tuned head against the classic
baselines a team must see beaten before paying for a tuned model, on the same test examples.

Systems: `tuned` (the run); `majority` (the commonest training class, or the training mean of a
target: labels.json keeps both); `tfidf` (TF-IDF of words and word pairs with logistic regression,
one-vs-rest for several classes, or ridge regression for a number; scikit-learn, trained on the run's
training file or `--train`). Each measure has its bootstrap interval (scoring/labelled.py) and the
tuned system a paired test against each baseline. results.json and report.html (the confusion matrix
as a table shaded by count) are written with `--out`.

Bad input: a test label the training never saw is an error naming its line and the known classes
(a model cannot predict a class it has no output for).
"""

from __future__ import annotations

import html
import importlib.util
import json
import time
from dataclasses import dataclass
from pathlib import Path

from tunesmith.data.formats import load_examples, locate_paths
from tunesmith.data.labels import class_names, known_labels
from tunesmith.errors import UserError
from tunesmith.eval.prompted_labels import predict_prompted, shots
from tunesmith.files.atomic import write_json, write_text
from tunesmith.models.heads import MEASURE, load_run, predict
from tunesmith.models.loading import base_model_of, load, load_tokenizer
from tunesmith.models.resolve import resolve
from tunesmith.scoring.labelled import HIGHER, calibration_error, paired, per_class, with_intervals

ROWS = {
    "classify": ["accuracy", "macro_f1"],
    "multilabel": ["micro_f1", "macro_f1", "exact_match"],
    "regress": ["rmse", "mae", "mse", "pearson", "spearman", "r2"],
}


@dataclass
class LabelEvalSpec:
    """What a --task eval was asked, as the registry records it (eval/register.py)."""

    data: str
    adapter: str
    train: str | None = None
    systems: str | None = None
    model: str | None = None


def _encode(space: dict, label):
    """A label as the measures take it: a class id, a 0/1 row, or the number."""
    if space["task"] == "regress":
        return float(label)
    index = {c: i for i, c in enumerate(space["classes"])}
    if space["task"] == "classify":
        return index[label]
    return [int(c in label) for c in space["classes"]]


def test_examples(path: str, space: dict, other: str = "") -> list:
    examples = load_examples(path, "--data", kind="label")
    for e in examples:
        if e.kind != space["task"]:
            raise UserError(f"{e.path}:{e.line}: a {e.kind} example; this run was trained to {space['task']}")
    return examples if space["task"] == "regress" else known_labels(examples, space["classes"], other)


def mapped_note(before: list, after: list, other: str) -> list[str]:
    n = sum(a.label != b.label for a, b in zip(before, after))
    return [f"{n} test examples had labels the training never saw, read as {other!r} (--other)"] if n else []


def training_file(run: str, train: str | None) -> Path | None:
    if train:
        return Path(train)
    cfg = Path(run) / "config.yaml"
    try:
        import yaml

        data = (yaml.safe_load(cfg.read_text()) or {}).get("data")
        return locate_paths(data, None)[0] if data else None
    except (OSError, ValueError, UserError, AttributeError):
        return None


def tfidf(space: dict, train: list, texts: list[str]):
    """The classic baseline's predictions, encoded as the measures take them."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.multiclass import OneVsRestClassifier

    vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    x = vec.fit_transform([e.messages[0]["content"] for e in train])
    xt = vec.transform(texts)
    y = [_encode(space, e.label) for e in train]
    if space["task"] == "regress":
        return [float(v) for v in Ridge(alpha=1.0).fit(x, y).predict(xt)]
    if space["task"] == "multilabel":
        return OneVsRestClassifier(LogisticRegression(max_iter=1000)).fit(x, y).predict(xt).tolist()
    return [int(v) for v in LogisticRegression(max_iter=1000).fit(x, y).predict(xt)]


def training_examples(space: dict, run: str, train_path: str | None) -> list | None:
    """The run's training examples of its task and classes (for TF-IDF and the shots), or None."""
    path = training_file(run, train_path)
    if path is None or not path.is_file():
        return None
    known = set(space.get("classes", []))
    return [
        e
        for e in load_examples(str(path), "--train", kind="label")
        if e.kind == space["task"] and all(c in known for c in class_names(e.label))  # a number names none
    ]


def parse_systems(text: str | None, task: str) -> list[str]:
    """--systems for a --task eval: majority (or mean), tfidf, zero-shot, few-shot:K, tuned."""
    first = "mean" if task == "regress" else "majority"
    names = [x.strip() for x in (text or f"{first},tfidf,tuned").split(",") if x.strip()]
    for n in names:
        ok = (
            n in (first, "tfidf", "tuned", "zero-shot")
            or n.startswith("few-shot:")
            and n[9:].isdigit()
            and int(n[9:]) > 0
        )
        if not ok:
            raise UserError(
                f"--systems {n!r}: a --task {task} eval compares {first}, tfidf, zero-shot, few-shot:K, tuned"
            )
        if task != "classify" and (n == "zero-shot" or n.startswith("few-shot")):
            raise UserError(f"--systems {n}: prompting is a baseline for --task classify, not {task}")
    if len(set(names)) != len(names):
        raise UserError(f"--systems {text}: a system is named twice")
    return names


def baseline(
    name: str,
    space: dict,
    texts: list[str],
    train: list | None,
    run: str,
    notes: list[str],
    trust: bool,
    seconds: dict,
):
    """One baseline's predictions, encoded as the measures take them; None when it cannot run (notes: why).
    A prompting baseline puts its time without the model's loading in `seconds`."""
    n = len(texts)
    if name == "mean":
        return [space["mean"]] * n
    if name == "majority":
        counts = space.get("counts")
        if not counts:
            notes.append(
                "majority baseline skipped: labels.json has no class counts (a run from an older version)"
            )
            return None
        if space["task"] == "classify":
            return [max(range(len(counts)), key=counts.__getitem__)] * n
        total = space.get("examples") or max(
            counts
        )  # every class more than half the texts have (usually none)
        return [[int(c > total / 2) for c in counts]] * n
    if train is None:
        notes.append(f"{name} baseline skipped: the run's training file is gone; give it with --train FILE")
        return None
    if name == "tfidf":
        if importlib.util.find_spec("sklearn") is None:
            notes.append(
                "tfidf baseline skipped: scikit-learn is not installed (pip install 'tunesmith[eval]')"
            )
            return None
        return tfidf(space, train, texts)
    spec = base_model_of(run, None)
    if not load_tokenizer(resolve(spec, trust_remote_code=trust), trust).chat_template:
        why = "an encoder cannot be prompted for a label; its tuned head is the measure"
        notes.append(f"{name} baseline skipped: {spec} has no chat template to ask it in ({why})")
        return None
    base = load(spec, trust_remote_code=trust, quiet=True)
    k = 0 if name == "zero-shot" else int(name[9:])
    t0 = time.perf_counter()
    ids, _ = predict_prompted(
        base.model, base.tokenizer, texts, space["classes"], shots(train, space["classes"], k)
    )
    seconds[name] = time.perf_counter() - t0
    return ids


def evaluate_labels(
    run: str,
    data: str,
    train: str | None = None,
    trust_remote_code: bool = False,
    systems: str | None = None,
    other: str = "",
) -> dict:
    model, tok, space = load_run(run, trust_remote_code)
    examples = test_examples(data, space, other)
    raw = load_examples(data, "--data", kind="label") if other else examples
    texts = [e.messages[0]["content"] for e in examples]
    task, k = space["task"], len(space.get("classes", []))
    gold = [_encode(space, e.label) for e in examples]
    t0 = time.perf_counter()
    preds = predict(model, tok, space, texts)
    seconds = {"tuned": time.perf_counter() - t0}
    if task == "regress":
        tuned = [p["value"] for p in preds]
    elif task == "classify":
        tuned = [space["classes"].index(p["label"]) for p in preds]
    else:
        tuned = [[int(c in p["labels"]) for c in space["classes"]] for p in preds]
    notes: list[str] = mapped_note(raw, examples, other)
    names = parse_systems(systems, task)
    pool = (
        training_examples(space, run, train)
        if any(x not in ("tuned", "mean", "majority") for x in names)
        else None
    )
    found = {}
    for x in names:
        t0 = time.perf_counter()
        found[x] = (
            tuned if x == "tuned" else baseline(x, space, texts, pool, run, notes, trust_remote_code, seconds)
        )
        seconds.setdefault(x, time.perf_counter() - t0)
    systems = {x: p for x, p in found.items() if p is not None}
    if "tuned" not in systems:
        systems["tuned"] = tuned
    results = {
        "task": task,
        "adapter": str(run),
        "data": str(data),
        "n": len(examples),
        "notes": notes,
        "systems": [
            {
                "system": s,
                "metrics": with_intervals(task, gold, p, k),
                "ms_per_example": per_example(seconds[s], len(texts)),
            }
            for s, p in systems.items()
        ],
        "comparisons": {s: paired(task, gold, tuned, p, k) for s, p in systems.items() if s != "tuned"},
    }
    if task == "classify":
        rows, cm = per_class(gold, tuned, space["classes"])
        probs = [[p["probabilities"][c] for c in space["classes"]] for p in preds]
        results.update(
            per_class=rows,
            confusion={"classes": space["classes"], "matrix": cm},
            calibration_error=calibration_error(gold, probs),
        )
    results["headline"] = MEASURE[task]
    results["timing"] = (
        "ms_per_example: each system's wall time over the test texts divided by their number; tfidf's "
        "includes fitting on the training examples; loading a model is not counted"
    )
    results["metrics"] = next(s["metrics"] for s in results["systems"] if s["system"] == "tuned")
    results["model"] = base_model_of(run, None)
    results["examples"] = [
        {"where": f"{e.path}:{e.line}", "text": e.messages[0]["content"][:500], "gold": e.label, **p}
        for e, p in zip(examples, preds)
    ]
    return results


def per_example(total: float, n: int) -> float:
    return round(1000 * total / max(n, 1), 3)


def lines(results: dict) -> list[str]:
    """The table the terminal shows: each measure per system, * where the tuned one differs significantly."""
    names = [s["system"] for s in results["systems"]]
    out = [
        f"{results['task']} on {results['data']} ({results['n']} examples; mean [95 % bootstrap CI]; "
        "* = tuned significantly different, paired bootstrap)",
        f"{'measure':<12}" + "".join(f"{n:>26}" for n in names),
    ]
    for m in ROWS[results["task"]]:
        cells = []
        for s in results["systems"]:
            v, ci = s["metrics"][m], s["metrics"]["ci95"][m]
            test = results["comparisons"].get(s["system"], {}).get(m)
            star = "*" if test and test["significant"] else ""
            cells.append(f"{v:.3g} [{ci[0]:.3g}, {ci[1]:.3g}]{star}")
        better = "higher" if m in HIGHER else "lower"
        out.append(f"{m:<12}" + "".join(f"{c:>26}" for c in cells) + f"   ({better} is better)")
    if all("ms_per_example" in s for s in results["systems"]):
        cells = "".join(f"{s['ms_per_example']:>26.3g}" for s in results["systems"])
        out.append(f"{'ms/example':<12}" + cells)
    if "calibration_error" in results:
        out.append(f"calibration error of the tuned probabilities: {results['calibration_error']:.1f} %")
    return out + [f"note: {n}" for n in results["notes"]]


def report(results: dict) -> str:
    e = html.escape
    rows = "".join(
        f"<tr><th>{e(line.split()[0])}</th><td><pre>{e(line)}</pre></td></tr>" for line in lines(results)[2:]
    )
    parts = [
        f"<!doctype html><meta charset=utf-8><title>tunesmith eval — {e(results['task'])}</title>",
        "<style>body{font:14px system-ui;margin:2em}td,th{padding:4px 8px;text-align:right}</style>",
        f"<h1>{e(results['task'])} on {e(Path(results['data']).name)}</h1><table>{rows}</table>",
    ]
    if "confusion" in results:
        names, cm = results["confusion"]["classes"], results["confusion"]["matrix"]
        top = max(max(r) for r in cm) or 1
        head = "".join(f"<th>{e(c)}</th>" for c in names)
        body = "".join(
            f"<tr><th>{e(c)}</th>"
            + "".join(f'<td style="background:rgba(40,90,200,{v / top:.2f})">{v}</td>' for v in row)
            + "</tr>"
            for c, row in zip(names, cm)
        )
        parts.append(
            f"<h2>Confusion matrix</h2><p>rows: the true class; columns: the tuned prediction</p>"
            f'<table id="confusion"><tr><th></th>{head}</tr>{body}</table>'
        )
        pc = "".join(
            f"<tr><th>{e(r['class'])}</th><td>{r['precision']}</td><td>{r['recall']}</td><td>{r['f1']}</td>"
            f"<td>{r['support']}</td></tr>"
            for r in results["per_class"]
        )
        parts.append(
            f"<h2>Per class</h2><table><tr><th></th><th>precision</th><th>recall</th><th>F1</th>"
            f"<th>support</th></tr>{pc}</table>"
        )
    return "".join(parts)


def write(results: dict, out: str) -> None:
    write_json(Path(out) / "results.json", results)
    write_text(Path(out) / "report.html", report(results))


def dumps(results: dict) -> str:
    return json.dumps(results, indent=2, ensure_ascii=False)
