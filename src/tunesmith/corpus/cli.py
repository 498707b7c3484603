"""`tunesmith docs check FOLDER`: what a folder of documents holds, file by file (corpus/check.py).

The parsers are declarations only; each handler imports its library when the command runs, so building
every parser (`tunesmith --help`) imports no torch."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

from tunesmith.errors import UserError
from tunesmith.flags import add_model


def add_parsers(sub):
    """The parsers of `docs` and its commands (declarations only); returns the subcommands, for eval's
    `docs perplexity`."""
    docs = sub.add_parser("docs", help="a folder of documents (txt, md, html, pdf, docx) as a corpus")
    dsub = docs.add_subparsers(dest="docs_command", metavar="SUBCOMMAND")
    p = dsub.add_parser(
        "check",
        help="read every file (pages, characters, tokens, or why it is skipped); duplicates; a split by "
        "document",
    )
    p.add_argument("folder", metavar="FOLDER")
    p.add_argument("--held-out", type=float, default=0.1, help="share of documents held out (default 0.1)")
    p.add_argument("--seed", type=int, default=42, help="seed of the held-out split (default 42)")
    p.add_argument("--no-tokens", action="store_true", help="skip counting tokens (faster on a large folder)")
    p.add_argument("--json", action="store_true", help="the whole report as JSON")
    add_model(p)
    p.set_defaults(handler=cli_docs_check)
    p = dsub.add_parser(
        "index",
        help="cut the documents into passages and index them (BM25); a rebuild re-reads changed files only",
    )
    p.add_argument("folder", metavar="FOLDER")
    p.add_argument(
        "--out", required=True, metavar="INDEX", help="the index folder (updated in place when it is one)"
    )
    p.add_argument(
        "--embed",
        nargs="?",
        const="minilm-l6",
        metavar="ENCODER",
        help="also a vector per passage from a sentence-transformers encoder (default minilm-l6), for the "
        "embed and hybrid retrievers (hybrid then answers by default)",
    )
    p.add_argument("--quiet", action="store_true", help="no line per file")
    p.set_defaults(handler=cli_docs_index)
    p = dsub.add_parser(
        "search", help="the passages of an index that best answer a query, with where they are"
    )
    p.add_argument("index", metavar="INDEX")
    p.add_argument("query", metavar="QUERY")
    p.add_argument("-k", type=int, default=5, help="passages to show (default 5)")
    p.add_argument(
        "--retriever",
        choices=("bm25", "embed", "hybrid"),
        help="how to rank (default: the index's, hybrid where it has vectors, else bm25)",
    )
    p.add_argument("--json", action="store_true", help="the passages as JSON")
    p.set_defaults(handler=cli_docs_search)
    docs.set_defaults(handler=None, _help=docs.print_help)
    return dsub


def line(r) -> str:
    """One file's line: what was read, or why not."""
    if r.skipped:
        return f"skip  {r.path}: {r.skipped}"
    pages = f"{r.pages} pages, " if r.pages else ""
    notes = f"  ({'; '.join(r.notes)})" if r.notes else ""
    lang = f", {r.language}" if r.language else ""
    return f"ok    {r.path}: {r.kind}{lang}, {pages}{r.chars:,} characters, {r.tokens:,} tokens{notes}"


def cli_docs_check(args) -> int:
    from tunesmith.corpus.check import check_folder

    if not 0 < args.held_out < 1:
        raise UserError(f"--held-out {args.held_out}: a share between 0 and 1, e.g. 0.1")
    _need_readers()
    if not Path(args.folder).is_dir():
        raise UserError(f"{args.folder}: not a folder")
    tokenizer = None if args.no_tokens else _tokenizer(args)
    say = None if args.json else (lambda r: print(line(r), flush=True))
    report = check_folder(args.folder, tokenizer, args.held_out, args.seed, say=say)
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
        return 0
    print(
        f"{report['read']} documents read, {report['skipped']} skipped: "
        + (f"{report['pages']:,} PDF pages, " if report["pages"] else "")
        + f"{report['chars']:,} characters, {report['tokens']:,} tokens"
        + ("" if tokenizer else " (not counted: --no-tokens)")
    )
    if report["languages"]:
        print("languages: " + ", ".join(f"{k} {v}" for k, v in report["languages"].items()))
    for a, b in report["exact_duplicates"]:
        print(f"duplicate: {b} has the same text as {a}")
    for a, b, est in report["near_duplicates"]:
        print(f"near duplicate: {b} and {a} (about {est:.0%} of their word 5-grams shared)")
    held = report["held_out"]
    print(f"held out, by document: {len(held)} of {report['read']} (seed {args.seed}): {', '.join(held[:5])}"
          + (" ..." if len(held) > 5 else ""))  # fmt: skip
    print(
        f"{report['seconds']} s: {report['files_per_s']} files/s, {report['mb_per_s']} MB/s", file=sys.stderr
    )
    return 0


def _need_readers() -> None:
    missing = [m for m in ("pypdf", "docx", "inscriptis") if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError("docs needs the 'documents' extra (pypdf, python-docx, inscriptis): "
                        "pip install 'tunesmith[documents]'")  # fmt: skip


def cli_docs_index(args) -> int:
    from tunesmith.corpus.index import build

    _need_readers()
    done = build(
        args.folder, args.out, say=None if args.quiet else lambda s: print(s, flush=True), embed=args.embed
    )
    what = f"{done['read']} files read, {done['reused']} unchanged, {done['skipped']} skipped"
    if "embedded" in done:
        what = f"{done['embedded']:,} passages embedded ({args.embed}); " + what
    print(f"indexed {args.folder} in {args.out}: {done['passages']:,} passages; {what}, "
          f"{done['removed']} gone since the last build")  # fmt: skip
    return 0


def cli_docs_search(args) -> int:
    from tunesmith.corpus.index import Index

    if args.k < 1:
        raise UserError(f"-k {args.k}: at least 1")
    hits = Index(args.index).search(args.query, args.k, args.retriever)
    if args.json:
        print(json.dumps([{"score": s, **p} for s, p in hits], indent=2, ensure_ascii=False))
        return 0
    if not hits:
        print("no passage shares a word with the query")
    for s, p in hits:
        text = p["text"] if len(p["text"]) <= 300 else p["text"][:297] + "..."
        print(f"{s:7.2f}  {p['file']} ({p['where']})\n         {text}")
    return 0


def _tokenizer(args):
    from tunesmith.models.loading import load_tokenizer
    from tunesmith.models.resolve import DEFAULT_MODEL, resolve

    model = resolve(
        args.model or DEFAULT_MODEL, trust_remote_code=args.trust_remote_code, tokenizer_only=True
    )
    return load_tokenizer(model, args.trust_remote_code, light=True)
