"""`tunesmith review`: make a queue from registered evals, captures or drafts, see the judgements'
stats, and export them as the next version's training data.

The parsers are declarations only; each handler imports its library when the command runs, so building
every parser (`tunesmith --help`) imports no torch."""

from __future__ import annotations

import json
import time
from datetime import datetime

from tunesmith.errors import UserError
from tunesmith.flags import add_registry
from tunesmith.registry.db import Registry, is_off


def add_parsers(sub) -> None:
    """The parsers of `review` and its actions (declarations only)."""
    review = sub.add_parser(
        "review", help="people's judgements of outputs: queues, stats, export as training data"
    )
    add_registry(review)
    review.add_argument("--json", action="store_true", help="print JSON")
    rsub = review.add_subparsers(dest="review_action", metavar="ACTION")
    p = rsub.add_parser(
        "add", help="a review queue from registered evals on one test set, from captures, or from drafts"
    )
    p.add_argument("refs", nargs="*", metavar="EVAL", help="an eval (or a trained run: its newest eval)")
    p.add_argument(
        "--captures",
        nargs="?",
        const=True,
        metavar="FILE",
        help="what `serve --capture` kept, instead of evals; with FILE: completions a hosted API stored, "
        "exported as JSONL",
    )
    p.add_argument(
        "--metadata",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="--captures FILE: only the completions stored with this metadata (repeatable: all must match)",
    )
    p.add_argument("--drafts", metavar="FILE", help="what `data generate` drafted: accept, correct or reject")
    p.add_argument(
        "--since", metavar="DATE", help="with --captures: only those since DATE (YYYY-MM-DD[ HH:MM])"
    )
    p.add_argument("--name", help="the queue's name (default: the last eval's name)")
    p.add_argument("--pair", help="the two outputs A/B judgements compare, A,B (default: the first two)")
    rsub.add_parser("list", help="the queues, with items and judgements (the default)")
    p = rsub.add_parser("stats", help="judgements per reviewer, win rates with intervals, Cohen's kappa")
    p.add_argument("--queue", action="append", help="only this queue (repeatable)")
    p = rsub.add_parser(
        "export", help="corrected and accepted answers as chat examples (--sft), A/B choices as pairs (--dpo)"
    )
    p.add_argument(
        "--sft", metavar="FILE", help="write corrected and accepted answers here (.jsonl chat examples)"
    )
    p.add_argument(
        "--dpo", metavar="FILE", help="write preference pairs here (.jsonl prompt/chosen/rejected)"
    )
    p.add_argument("--queue", action="append", help="only this queue (repeatable; default: all)")
    p.add_argument("--train", metavar="DATA", help="the training data: examples already in it are left out")
    p.add_argument("--holdout", action="append", default=[], metavar="FILE", help="a test set to hold back")
    p = rsub.add_parser("rm", help="delete a queue with its judgements")
    p.add_argument("queue")
    p = rsub.add_parser("purge", help="delete what `serve --capture` kept before DATE (and its review items)")
    p.add_argument("--before", required=True, metavar="DATE", help="YYYY-MM-DD[ HH:MM], local time")
    review.set_defaults(handler=cli_review)


def open_registry(args) -> Registry:
    """--registry as the review commands and the ui need it: reviews live there, so `off` is refused."""
    if is_off(args.registry):
        raise UserError("--registry off: reviews live in the registry; give one (or leave the default)")
    return Registry(args.registry)


def when(text: str, flag: str) -> float:
    """A local date or date and time as a timestamp."""
    try:
        return datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        raise UserError(f"{flag} {text!r}: a date as YYYY-MM-DD or YYYY-MM-DD HH:MM") from None


def _add(reg: Registry, args) -> dict:
    from tunesmith.review import store
    from tunesmith.review.stored import parse_filters

    if args.drafts:
        if args.refs or args.pair or args.captures or args.since:
            raise UserError("review add --drafts FILE: takes no EVAL, --captures, --since or --pair")
        return store.add_drafts(reg, args.drafts, args.name)
    if isinstance(args.captures, str):
        if args.refs or args.pair or args.since:
            raise UserError("review add --captures FILE: takes no EVAL, --pair or --since")
        return store.add_stored(reg, args.captures, args.name, parse_filters(args.metadata))
    if args.metadata:
        raise UserError("--metadata goes with --captures FILE (a stored completions export)")
    if args.captures:
        if args.refs or args.pair:
            raise UserError("review add --captures: takes no EVAL and no --pair (one answer per item)")
        return store.add_captures(reg, args.name, when(args.since, "--since") if args.since else None)
    if args.since:
        raise UserError("--since goes with --captures")
    if not args.refs:
        raise UserError("review add: name an eval (or a trained run), or pass --captures or --drafts FILE")
    pair = [x.strip() for x in args.pair.split(",")] if args.pair else None
    if pair is not None and len(pair) != 2:
        raise UserError(f"--pair {args.pair}: two outputs, A,B (e.g. base,tuned)")
    return store.add_queue(reg, args.refs, args.name, pair)


def cli_review(args) -> int:
    from tunesmith.review import export, stats, store

    reg = open_registry(args)
    action = getattr(args, "review_action", None) or "list"
    if action == "add":
        q = _add(reg, args)
        if args.json:
            print(json.dumps(q, indent=2))
        else:
            same = " (one output: ratings and corrections only)" if q["a"] == q["b"] else ""
            print(
                f"queue {q['name']}: {q['items']} items, outputs {', '.join(q['labels'])}; A/B compares "
                f"{q['a']} and {q['b']}{same}. Open it with `tunesmith ui`"
            )
        return 0
    if action == "list":
        rows = store.queues(reg)
        if args.json:
            print(json.dumps(rows, indent=2))
        elif not rows:
            print(f"no review queues in {reg.path}; make one with `tunesmith review add EVAL`")
        for q in [] if args.json else rows:
            made = time.strftime("%Y-%m-%d %H:%M", time.localtime(q["created"]))
            pair = f"{q['a']} vs {q['b']}"
            print(f"{q['name']:<24} {pair:<24} {q['items']:>4} items {q['judgements']:>5} judgements  {made}")
        return 0
    if action == "stats":
        s = stats.stats(reg, args.queue)
        print(json.dumps(s, indent=2) if args.json else "\n".join(stats.lines(s)))
        return 0
    if action == "export":
        done, files = export.export(reg, args.sft, args.dpo, args.queue, args.train, args.holdout)
        if args.json:
            print(json.dumps([{**vars(e), "path": str(e.path), "skipped": dict(e.skipped)} for e in done]))
            return 0
        for e in done:
            print(e.line())
        checked = ", ".join(str(f) for f in files) or "none (give --holdout TEST.jsonl)"
        print(f"test sets held back: {checked}")
        return 0
    if action == "purge":
        n, gone = store.purge(reg, when(args.before, "--before"))
        print(
            f"deleted {n} captured requests and answers (with their feedback), {gone} review items made "
            "of them"
        )
        return 0
    if action == "rm":
        n = store.remove_queue(reg, args.queue)
        print(f"removed queue {args.queue} and its {n} judgements")
        return 0
    raise UserError(f"review {action}: unknown action")
