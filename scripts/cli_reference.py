"""The command reference of the docs site, written from the CLI's own argparse parsers.

Why generated: a hand-written reference drifts from the CLI the first time a flag is added. This walks
`tunesmith.cli.build_parser()` (every command, nested ones such as `data check` and `runs show` included)
and writes each command's help and usage and every flag with its help and default, so the page says what
`tunesmith COMMAND --help` says. The docs build calls it (scripts/mkdocs_hooks.py), tests/test_docs.py walks
the parsers on its own and checks the page lists them all. Importing tunesmith.cli imports no torch.

    .venv/bin/python scripts/cli_reference.py > /tmp/reference.md   # the page, to read without a build
"""

from __future__ import annotations

import argparse
import html
from collections.abc import Iterator

from tunesmith.cli import build_parser

WIDTH = 100  # usage lines are wrapped at a fixed width, not the terminal's, so the page is the same anywhere


def commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], str, argparse.ArgumentParser]]:
    """(path, one-line help, parser) of every command below `parser`, depth first, in declaration order."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                yield (*path, name), helps.get(name) or "", sub
                yield from commands(sub, (*path, name))


def listed(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The flags and positionals a reader is shown: not -h (every command has it), not what --help hides."""
    return [
        a
        for a in parser._actions
        if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))
        and a.help != argparse.SUPPRESS
    ]


def _cell(text: str) -> str:
    """Plain text in a Markdown table cell: no HTML, no table break, no emphasis from a `*`."""
    return html.escape(text, quote=False).replace("|", "&#124;").replace("*", r"\*").replace("\n", " ")


def _default(action: argparse.Action) -> str:
    d = action.default
    if (
        d is None
        or d is argparse.SUPPRESS
        or isinstance(action, (argparse._StoreTrueAction, argparse._VersionAction))
    ):
        return ""
    return ", ".join(map(str, d)) if isinstance(d, list) else str(d)


def _section(path: tuple[str, ...], help_: str, parser: argparse.ArgumentParser) -> list[str]:
    fmt = argparse.HelpFormatter(parser.prog, width=WIDTH)
    fmt.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups, prefix="")
    out = [f"## {parser.prog}", ""]
    if help_:
        out += [_cell(help_[0].upper() + help_[1:]) + ".", ""]
    if parser.description:
        out += [_cell(parser.description), ""]
    out += ["```text", fmt.format_help().strip(), "```", ""]
    subs = [p for p, _, _ in commands(parser) if len(p) == len(path) + 1]
    if subs:
        links = ", ".join(f"[{p[-1]}](#{'-'.join(('tunesmith', *p))})" for p in subs)
        out += [f"Subcommands: {links}.", ""]
    actions = listed(parser)
    if actions:
        out += ["| flag | what it does | default |", "| --- | --- | --- |"]
        for a in actions:
            call = fmt._format_action_invocation(a)
            say = fmt._expand_help(a) if a.help else ""
            out.append(f"| `{call}` | {_cell(say)} | {_cell(_default(a))} |")
        out.append("")
    return out


def reference() -> str:
    """The whole page, Markdown."""
    top = build_parser()
    found = list(commands(top))
    out = [
        "# Command reference",
        "",
        "Written from the CLI's own parsers each time the site is built (`scripts/cli_reference.py`), so "
        "it says what `tunesmith COMMAND --help` says. Every command also takes `-h`/`--help`. A flag "
        "whose default is blank here is off, or takes its value from elsewhere: a config file, the run it "
        "continues, or the default its description names.",
        "",
        "| command | what it does |",
        "| --- | --- |",
    ]
    out += [f"| [{' '.join(p)}](#{'-'.join(('tunesmith', *p))}) | {_cell(h)} |" for p, h, _ in found]
    out.append("")
    out += _section((), "", top)
    for path, help_, parser in found:
        out += _section(path, help_, parser)
    return "\n".join(out)


if __name__ == "__main__":
    print(reference())
