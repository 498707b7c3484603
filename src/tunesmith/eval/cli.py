"""`tunesmith eval`: the flags into an EvalSpec, `evaluate` (eval/run.py), then the files and the table."""

from __future__ import annotations

import json
from pathlib import Path

from tunesmith.errors import UserError
from tunesmith.eval import errors, gate
from tunesmith.eval.register import register_eval
from tunesmith.eval.run import EvalSpec, evaluate, write_outputs
from tunesmith.eval.tables import print_probe, print_systems_table, print_table
from tunesmith.registry import tracking


def spec_from_args(args) -> EvalSpec:
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
        style=args.style,
        limit=args.limit,
        baseline=args.baseline,
        memorization=args.memorization,
        forgetting=args.forgetting,
        embedding=args.embedding,
        judge=args.judge,
        rubric=args.rubric,
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
    spec = spec_from_args(args)
    gate_metrics = (
        [m.strip() for m in args.gate_metrics.split(",") if m.strip()] if args.gate_metrics else None
    )
    if gate_metrics and not args.gate:
        raise UserError("--gate-metrics goes with --gate REF")
    tracking.check(args.track)
    results, runs = evaluate(spec)
    passed, cannot = None, None
    if args.gate:
        try:
            reference, name = gate.reference_results(args.gate, results, args.registry)
            results["gate"] = gate.check(results, reference, name, gate_metrics)
            passed = results["gate"]["passed"]
        except UserError as e:  # the comparison cannot be made: the measurements are still written and kept
            cannot = e
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


def cli_errors(args) -> int:
    """`tunesmith errors EVAL [EVAL2]`: one eval's failure groups, or how they changed from EVAL to EVAL2."""
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
