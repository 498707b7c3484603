"""`tunesmith data check` and `tunesmith data prepare` (`data generate`, a teacher model's drafts, is
declared in use/cli.py and hung under `data` by the entry point).

The parsers are declarations only; each handler imports its library when the command runs, so building
every parser (`tunesmith --help`) imports no torch."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tunesmith.errors import DataErrors
from tunesmith.flags import add_model, add_read_options


def add_parsers(sub) -> None:
    """The parsers of `data`, `data check` and `data prepare` (declarations only)."""
    data = sub.add_parser("data", help="check and prepare examples")
    dsub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    p = dsub.add_parser("check", help="report every problem in a data file, as file:line: field: message")
    p.add_argument("paths", nargs="+", metavar="PATH", help="JSONL/JSON file(s) or a folder of them")
    p.add_argument("--max-length", type=int, default=None, help="flag examples longer than this many tokens")
    add_model(p)
    add_read_options(p)
    p.add_argument("--json", action="store_true", help="machine-readable report")
    p.set_defaults(handler=cli_check)
    p = dsub.add_parser(
        "prepare", help="normalize, clean, dedupe and split into train/val/test with a data card"
    )
    p.add_argument(
        "sources", nargs="+", metavar="SRC", help="files, folders, or a mix file (.yaml) of several data sets"
    )
    p.add_argument(
        "--out", required=True, help="folder to write train/val/test.jsonl and card.json/card.md into"
    )
    p.add_argument(
        "--split", default="0.8,0.1,0.1", help="train,val,test as ratios (0.8,0.1,0.1) or counts (150,20,30)"
    )
    p.add_argument("--seed", type=int, default=13, help="shuffle seed for the split (default 13)")
    p.add_argument("--group-by", help="field whose examples stay together in one split (e.g. meeting)")
    p.add_argument(
        "--near-dup",
        type=float,
        default=0.8,
        help="drop examples this similar (word 5-gram Jaccard) to an earlier one (default 0.8)",
    )
    p.add_argument("--max-length", type=int, default=None, help="drop examples longer than this many tokens")
    p.add_argument(
        "--eval-set",
        action="append",
        help="a held-out set: examples that duplicate it are dropped (repeatable)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a data set tunesmith prepared in --out (only once the new one is written)",
    )
    p.add_argument("--json", action="store_true", help="print the data card as JSON")
    add_model(p)
    add_read_options(p)
    p.set_defaults(handler=cli_prepare)
    data.set_defaults(handler=None, _help=data.print_help)
    return dsub


def cli_check(args) -> int:
    from tunesmith.data.check import checked

    tokenizer = _tokenizer(args) if args.max_length else None
    opts = _read_options(args)
    c = checked(args.paths, tokenizer, args.max_length, opts)
    issues, valid = c.issues, c.valid
    errors = [i for i in issues if i.level == "error"]
    warnings = [i for i in issues if i.level == "warning"]
    if args.json:
        print(
            json.dumps(
                {
                    "examples": valid,
                    "errors": len(errors),
                    "warnings": len(warnings),
                    "issues": [i.as_dict() for i in issues],
                    **({"summary": c.summary} if c.summary else {}),
                },
                indent=2,
            )
        )
    else:
        for i in errors:
            print(i)
        for i in warnings:
            print(f"{i} (warning)")
        for line in c.summary:
            print(line)
        print(
            f"{valid} valid examples, {len(errors)} error(s), {len(warnings)} warning(s)",
            file=sys.stderr if errors else sys.stdout,
        )
    if errors:
        raise DataErrors("")
    return 0


def cli_prepare(args) -> int:
    from tunesmith.data.prepare import prepare

    tokenizer = _tokenizer(args) if args.max_length or args.model else None
    opts = _read_options(args)
    card = prepare(
        args.sources,
        Path(args.out),
        split_spec=args.split,
        seed=args.seed,
        group_by=args.group_by,
        near_dup=args.near_dup,
        max_length=args.max_length,
        tokenizer=tokenizer,
        eval_sets=args.eval_set or [],
        opts=opts,
        overwrite=args.overwrite,
    )
    if args.json:
        print(json.dumps(card, indent=2, ensure_ascii=False))
        return 0
    counts = ", ".join(f"{k} {v['examples']}" for k, v in card["splits"].items())
    print(
        f"wrote {args.out}: {counts}; dropped {len(card['dropped'])} (reasons in "
        f"{Path(args.out) / 'card.md'})"
    )
    for x in card["leak_check"]["across_splits"]:
        print(f"leak: {x}", file=sys.stderr)
    return 0


def _tokenizer(args):
    """The tokenizer alone (tokenizer.json read without torch) for the length checks of the data commands."""
    from tunesmith.models.loading import load_tokenizer
    from tunesmith.models.resolve import DEFAULT_MODEL, resolve

    model = resolve(
        args.model or DEFAULT_MODEL, trust_remote_code=args.trust_remote_code, tokenizer_only=True
    )
    return load_tokenizer(model, args.trust_remote_code, light=True)


def _read_options(args):
    from tunesmith.data.formats import ReadOptions

    fields = {k: getattr(args, f"{k}_field") for k in ("text", "label", "target", "prompt", "completion")}
    return ReadOptions(
        format=args.format,
        template=args.template or ReadOptions.template,
        system=args.system,
        fields={k: v for k, v in fields.items() if v},
        record_template=args.template,
    )
