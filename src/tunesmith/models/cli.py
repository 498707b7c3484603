"""`tunesmith models`: the aliases with their licences and what is cached; `--fetch ALIAS` now.

The parsers are declarations only; each handler imports its library when the command runs, so building
every parser (`tunesmith --help`) imports no torch."""

from __future__ import annotations

import json

from tunesmith.errors import UserError


def add_parsers(sub) -> None:
    """The parsers of `models` (declarations only)."""
    p = sub.add_parser("models", help="list model aliases and what is cached")
    p.add_argument("--fetch", metavar="ALIAS", help="download and convert an alias now")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=cli_models)


def cli_models(args) -> int:
    from tunesmith.files.home import home
    from tunesmith.models.resolve import ALIASES, cached_status, resolve

    if args.fetch:
        if args.fetch not in ALIASES:
            raise UserError(f"--fetch {args.fetch!r}: unknown alias; known: {', '.join(ALIASES)}")
        print(resolve(args.fetch))
        return 0
    rows = cached_status()
    others = (
        sorted(p.name for p in (home() / "models").glob("gguf-*")) if (home() / "models").is_dir() else []
    )
    if args.json:
        print(json.dumps({"home": str(home()), "aliases": rows, "converted_gguf": others}, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"models (cache: {home()})")
    for col in ("alias", "cached", "licence", "description"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["alias"], "yes" if r["cached"] else "no", r["licence"], r["description"])
    Console().print(t)
    for o in others:
        print(f"converted .gguf: {home() / 'models' / o}")
    return 0
