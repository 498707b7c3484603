"""`tunesmith eval` and `tunesmith errors`: the flags into an EvalSpec, `evaluate` (eval/run.py), then the
files and the table; an eval's failure groups, or how they changed between two evals (eval/errors.py).

The parsers are declarations only; each handler imports its library when the command runs, so building
every parser (`tunesmith --help`) imports no torch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from tunesmith.errors import UserError
from tunesmith.flags import add_generation, add_model, add_registry, add_track

if TYPE_CHECKING:  # annotations only: the handlers import these when they run
    from tunesmith.eval.run import EvalSpec


def add_docs_parsers(dsub) -> None:
    """`docs perplexity`, beside `docs check/index/search` (corpus/cli.py): it loads models, so eval has
    it."""
    p = dsub.add_parser(
        "perplexity",
        help="how well models or runs predict the documents (a --documents run's held-out ones), with "
        "intervals over documents, paired tests against the first, and general text for forgetting",
    )
    p.add_argument("folder", metavar="FOLDER")
    p.add_argument(
        "candidates", nargs="+", metavar="CANDIDATE", help="models or runs; the first is compared with"
    )
    p.add_argument("--all", action="store_true", help="every document, not a --documents run's held-out ones")
    p.add_argument(
        "--seen", type=int, default=10, help="also this many documents the run trained on (default 10)"
    )
    p.add_argument("--general", metavar="PATH", help="general text (folder or file): the forgetting probe")
    p.add_argument(
        "--max-length", type=int, default=1024, help="tokens per row, as in training (default 1024)"
    )
    p.add_argument(
        "--max-tokens", type=int, default=0, help="score only each document's first N tokens (0 = all)"
    )
    p.add_argument("--seed", type=int, default=42, help="which seen documents and general rows (default 42)")
    p.add_argument("--json", action="store_true", help="everything, per document too, as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--trust-remote-code", action="store_true", help="allow a model's own Python code to run")
    p.set_defaults(handler=cli_docs_perplexity)


def cli_docs_perplexity(args) -> int:
    from tunesmith.eval.perplexity import lines, perplexity

    if args.max_length < 2 or args.max_tokens < 0 or args.seen < 0:
        raise UserError("--max-length must be at least 2, --max-tokens and --seen 0 or more")
    out = perplexity(args.folder, args.candidates, all_docs=args.all, seen=args.seen, general=args.general,
                     max_length=args.max_length, max_tokens=args.max_tokens, seed=args.seed,
                     trust_remote_code=args.trust_remote_code, quiet=args.quiet or args.json)  # fmt: skip
    print(json.dumps(out, indent=2, ensure_ascii=False) if args.json else "\n".join(lines(out)))
    return 0


def add_parsers(sub) -> None:
    """The parsers of `eval` and `errors` (declarations only)."""
    p = sub.add_parser(
        "eval",
        help="generate on held-out examples, score them (ROUGE, BLEU, METEOR, house style, ...), "
        "compare systems; writes results.json and report.html",
    )
    add_model(p)
    p.add_argument("--adapter", help="run directory of a trained adapter")
    p.add_argument(
        "--data",
        required=True,
        help="JSONL of chat examples; the last assistant turn is the reference "
        '(a "references": [...] field adds more)',
    )
    p.add_argument("--style", help="house-style spec (YAML) for the format check")
    p.add_argument("--out", help="folder for results.json and report.html (default: print only)")
    p.add_argument("--baseline", help="results.json of an earlier eval: print a before/after table")
    p.add_argument("--limit", type=int, default=None, help="only the first N examples")
    p.add_argument(
        "--systems",
        help="compare several systems with the same decoding: base, prompted (your --system), "
        "few-shot:K, rag:K (K most similar training examples, BM25), tuned (--adapter); e.g. "
        "base,prompted,rag:3,tuned",
    )
    p.add_argument("--system-file", help="read the system prompt from this file")
    p.add_argument(
        "--train",
        help="training examples for few-shot, rag and --memorization (default: train.jsonl beside --data)",
    )
    p.add_argument(
        "--docs",
        metavar="INDEX",
        help="the document index (`tunesmith docs index`) of systems with +docs:K, e.g. --systems "
        "base,base+docs:3,tuned+docs:3",
    )
    p.add_argument(
        "--other",
        metavar="CLASS",
        help="a run trained with --task: read a test label the training never saw as CLASS (one of the run's "
        "classes) instead of stopping",
    )
    p.add_argument(
        "--memorization",
        action="store_true",
        help="also score a sample of the training set: warn on a large gap",
    )
    p.add_argument(
        "--forgetting",
        action="store_true",
        help="score a general-knowledge probe set before and after tuning",
    )
    p.add_argument(
        "--embedding",
        action="store_true",
        help="add embedding similarity (needs the 'eval' extra; ~1 min per 1000 texts)",
    )
    p.add_argument(
        "--judge",
        metavar="MODEL",
        help="also grade every answer 1-10 with this local model (LLM-as-judge) and --rubric",
    )
    p.add_argument("--rubric", metavar="FILE", help="--judge: what a good answer does, in words")
    p.add_argument(
        "--grader",
        action="append",
        metavar="FILE",
        help="a hosted grader JSON file (string_check, text_similarity, score_model, label_model, python, "
        "multi; one, a list, or an eval's testing_criteria): one row grader:NAME each (repeatable)",
    )
    p.add_argument(
        "--grader-judge",
        metavar="MODEL|URL",
        help="who answers score_model and label_model graders: a local model, alias or run, or an "
        "OpenAI-compatible URL (key from $OPENAI_API_KEY)",
    )
    p.add_argument(
        "--grader-judge-model",
        metavar="NAME",
        help='--grader-judge URL: the model to ask there (default: each grader\'s own "model")',
    )
    p.add_argument(
        "--trust-grader-code",
        action="store_true",
        help="allow python graders: their source runs in this process",
    )
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); above 0 samples")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold (with --temperature)")
    p.add_argument("--seed", type=int, default=None, help="seed for sampling")
    p.add_argument("--stop", action="append", help="cut each output at this string (repeatable)")
    p.add_argument("--json", action="store_true", help="print results as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    add_generation(p)
    p.add_argument(
        "--gate",
        metavar="REF",
        help="fail (exit 3) when significantly worse than REF (run id, tag, production, or a results.json) "
        "on the same test set and decoding",
    )
    p.add_argument(
        "--gate-metrics",
        metavar="M1,M2",
        help="the metrics the gate checks (default: rougeL and format_adherence, where measured)",
    )
    add_registry(p)
    add_track(p)
    p.set_defaults(handler=cli_eval)
    p = sub.add_parser(
        "errors",
        help="where and why an eval's outputs fail, as groups (style rules, stopping, length, inputs, "
        "metadata); with two evals of one test set, which groups got better or worse",
    )
    p.add_argument(
        "evals",
        nargs="+",
        metavar="EVAL",
        help="an eval (its --out folder, results.json, or id/name in the registry) or a trained run (its "
        "newest eval); a second one to compare with the first",
    )
    p.add_argument("--system", help="which system of a several-system eval (default: the last, the tuned)")
    p.add_argument("--metric", help="the per-example metric groups are measured by (default rougeL)")
    p.add_argument("--worst", type=int, default=3, help="worst examples shown per group (default 3)")
    p.add_argument("--json", action="store_true", help="everything as JSON")
    add_registry(p)
    p.set_defaults(handler=cli_errors)
    p = sub.add_parser(
        "pick",
        help="which base model or run does best on one test set, with intervals, paired tests against the "
        "best, and cost per answer (time, memory)",
    )
    p.add_argument(
        "candidates",
        nargs="+",
        metavar="CANDIDATE",
        help="a model (alias, folder, .gguf), a run that writes text, or a run trained with --task; "
        "NAME+docs:K answers with the K passages of --docs INDEX most like each question",
    )
    p.add_argument("--data", required=True, help="the test file every candidate is scored on")
    p.add_argument("--docs", metavar="INDEX", help="a document index (`docs index`) for +docs:K candidates")
    p.add_argument("--limit", type=int, help="only the first N examples")
    p.add_argument("--max-new-tokens", type=int, help="text: longest answer (eval's default otherwise)")
    p.add_argument("--batch-size", type=int, help="text: answers generated together (eval's default)")
    p.add_argument("--out", help="also write the ranking here as JSON")
    p.add_argument("--json", action="store_true", help="print the ranking as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(handler=cli_pick)


def cli_pick(args) -> int:
    """`tunesmith pick`: every candidate's eval in a process of its own, ranked (eval/pick.py)."""
    from tunesmith.eval import pick
    from tunesmith.files.atomic import write_json

    extra = [f for flag, v in (("--limit", args.limit), ("--max-new-tokens", args.max_new_tokens),
             ("--batch-size", args.batch_size)) if v is not None for f in (flag, str(v))]  # fmt: skip
    result = pick.pick(args.candidates, args.data, extra, quiet=args.quiet or args.json, index=args.docs)
    if args.out:
        write_json(Path(args.out), result)
    print(json.dumps(result, indent=2) if args.json else "\n".join(pick.lines(result)))
    return 0


def spec_from_args(args) -> EvalSpec:
    from tunesmith.eval.run import EvalSpec

    system = args.system
    if args.system_file:
        if args.system:
            raise UserError("give --system or --system-file, not both")
        try:
            system = Path(args.system_file).read_text().strip()
        except OSError:
            raise UserError(f"--system-file {args.system_file}: cannot read it") from None
    return EvalSpec(
        data=args.data,
        model=args.model,
        adapter=args.adapter,
        systems=args.systems,
        system=system,
        train=args.train,
        docs=args.docs,
        style=args.style,
        limit=args.limit,
        baseline=args.baseline,
        memorization=args.memorization,
        forgetting=args.forgetting,
        embedding=args.embedding,
        judge=args.judge,
        rubric=args.rubric,
        graders=args.grader or [],
        grader_judge=args.grader_judge,
        grader_judge_model=args.grader_judge_model,
        trust_grader_code=args.trust_grader_code,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        stop=args.stop or [],
        trust_remote_code=args.trust_remote_code,
        quiet=args.quiet,
    )


def cli_eval(args) -> int:
    from tunesmith.eval import gate
    from tunesmith.eval.register import register_eval
    from tunesmith.eval.run import evaluate, write_outputs
    from tunesmith.eval.tables import print_probe, print_systems_table, print_table
    from tunesmith.models.loading import is_task_run
    from tunesmith.registry import tracking

    if is_task_run(args.adapter):
        return _eval_labels(args)
    if args.other:
        raise UserError("--other is for the eval of a run trained with --task classify or multilabel")
    spec = spec_from_args(args)
    gate_metrics = gate.metrics_flag(args.gate_metrics, args.gate)
    tracking.check(args.track)
    results, runs = evaluate(spec)
    passed, cannot = gate.apply(results, args.gate, args.registry, gate_metrics)
    baseline = json.loads(Path(spec.baseline).read_text()) if spec.baseline else None
    if args.out:
        write_outputs(args.out, results, runs, spec.adapter, baseline)
    register_eval(results, runs, spec, args.out, args.registry, args.track)
    if cannot is not None:
        raise cannot
    if args.json:
        print(json.dumps(results, indent=2, ensure_ascii=False))
        return gate.GATE_FAILED if passed is False else 0
    if len(runs) > 1:
        print_systems_table(runs)
        if results.get("verdict"):
            print(results["verdict"]["sentence"])
    else:
        print_table(results, baseline)
    for key in ("memorization", "forgetting"):
        if key in results:
            print_probe(key, results[key])
    if args.out:
        print(f"wrote {Path(args.out) / 'results.json'} and {Path(args.out) / 'report.html'}")
    if passed is not None:
        print(gate.describe(results["gate"]))
        if not passed:
            return gate.GATE_FAILED
    return 0


def _eval_labels(args) -> int:
    """A run trained with --task: its measures against the baselines (eval/labels.py), registered."""
    from tunesmith.eval import gate, labels
    from tunesmith.eval.register import register_eval

    text_only = [f for f, v in (("--style", args.style), ("--judge", args.judge), ("--grader", args.grader),
                 ("--baseline", args.baseline), ("--memorization", args.memorization),
                 ("--forgetting", args.forgetting)) if v]  # fmt: skip
    if text_only:
        raise UserError(f"{', '.join(text_only)}: for evals of text generation, not of a --task run")
    gate_metrics = gate.metrics_flag(args.gate_metrics, args.gate)
    results = labels.evaluate_labels(
        args.adapter, args.data, args.train, args.trust_remote_code, args.systems, args.other or ""
    )
    passed, cannot = gate.apply(results, args.gate, args.registry, gate_metrics)
    if args.out:
        labels.write(results, args.out)
    spec = labels.LabelEvalSpec(args.data, args.adapter, args.train, args.systems)
    register_eval(results, results["systems"], spec, args.out, args.registry, args.track)
    if cannot is not None:
        raise cannot
    if args.json:
        print(labels.dumps(results))
    else:
        print("\n".join(labels.lines(results)))
        if args.out:
            print(f"wrote {Path(args.out) / 'results.json'} and {Path(args.out) / 'report.html'}")
        if passed is not None:
            print(gate.describe(results["gate"]))
    return gate.GATE_FAILED if passed is False else 0


def cli_errors(args) -> int:
    """`tunesmith errors EVAL [EVAL2]`: one eval's failure groups, or how they changed from EVAL to EVAL2."""
    from tunesmith.eval import errors

    first, first_name = errors.load_results(args.evals[0], args.registry)
    before = errors.system_of(first, args.system)
    if len(args.evals) == 1:
        a = errors.analyse(before, args.metric, args.worst)
        print(
            json.dumps(a, indent=2, ensure_ascii=False)
            if args.json
            else "\n".join(errors.lines(a, first_name))
        )
        return 0
    second, second_name = errors.load_results(args.evals[1], args.registry)
    c = errors.compare(before, errors.system_of(second, args.system), args.metric, args.worst)
    if args.json:
        print(json.dumps(c, indent=2, ensure_ascii=False))
    else:
        print("\n".join(errors.compare_lines(c, first_name, second_name)))
    return 0
