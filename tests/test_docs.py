"""The docs cannot drift from the code: the command reference lists every command and flag of the CLI's
parsers with its help and default, every page of the nav exists, the README stays a five-minute read
(at most 12 KB) whose links resolve, and the site builds with --strict (every link between pages and
every anchor checked) without a script or style from another host.

The parsers are walked here on their own rather than through scripts/cli_reference.py's walk, so a
command that walk missed would show up.
"""

from __future__ import annotations

import argparse
import html
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tunesmith.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def _script(name: str):
    """A module of scripts/ (not a package), imported from its file."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _walk(sub, (*path, name))


def _shown(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [
        a
        for a in parser._actions
        if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))
        and a.help != argparse.SUPPRESS
    ]


def _sections(page: str) -> dict[str, str]:
    parts = re.split(r"^## (tunesmith(?: [\w-]+)*)$", page, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


def _words(text: str) -> str:
    return re.sub(r"\W+", "", html.unescape(text).replace("\\", ""))


def test_the_reference_lists_every_command_and_every_flag_with_its_help_and_default():
    sections = _sections(_script("cli_reference").reference())
    commands = {" ".join(("tunesmith", *path)): parser for path, parser in _walk(build_parser())}
    assert len(commands) > 30 and {
        "tunesmith data check",
        "tunesmith runs show",
        "tunesmith review add",
    } <= set(commands)
    assert set(sections) == set(commands)
    for name, parser in commands.items():
        rows = {}
        for line in sections[name].splitlines():
            if line.startswith("| `"):
                call = line[3 : line.index("`", 3)]
                for word in re.split(r"[ ,]+", call):
                    rows.setdefault(word, line)
        for action in _shown(parser):
            names = action.option_strings or [action.metavar or action.dest]
            for flag in names:
                assert flag in rows, f"{name}: {flag} is not in the command reference"
            row = rows[names[0]]
            helptext = action.help % {**vars(action), "prog": parser.prog} if action.help else ""
            assert _words(helptext) in _words(row), f"{name} {names[0]}: its help is not in the reference"
            default = action.default
            if default not in (None, False, argparse.SUPPRESS) and not isinstance(
                action, argparse._VersionAction
            ):
                shown = ", ".join(map(str, default)) if isinstance(default, list) else str(default)
                cell = html.unescape(row.strip()[1:-1].split("|")[-1]).strip()  # raw | only between cells
                assert cell == shown, f"{name} {names[0]}: default {shown!r}, the reference says {cell!r}"


def test_the_reference_is_written_without_torch():
    """The docs build imports the CLI's parsers: they stay declarations, so the build stays quick."""
    code = (
        "import sys; sys.path.insert(0, 'scripts'); import cli_reference; cli_reference.reference(); "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)


def _nav_pages(nav) -> list[str]:
    out = []
    for item in nav:
        value = next(iter(item.values())) if isinstance(item, dict) else item
        out += _nav_pages(value) if isinstance(value, list) else [value]
    return out


def test_every_page_of_the_nav_exists_and_every_page_is_in_the_nav():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    assert config["docs_dir"] == "docs" and config["strict"] is True
    assert config["theme"]["name"] == "material" and config["theme"]["font"] is False
    pages = _nav_pages(config["nav"])
    generated = {"reference.md", "results.md"}  # made by scripts/mkdocs_hooks.py while the site builds
    assert generated <= set(pages)
    for page in set(pages) - generated:
        assert (DOCS / page).is_file(), f"mkdocs.yml names {page}, not in docs/"
    assert {p.name for p in DOCS.glob("*.md")} == set(pages) - generated
    hooks = (ROOT / "scripts" / "mkdocs_hooks.py").read_text()
    assert all(f'"{page}"' in hooks for page in generated)


def test_the_readme_is_short_says_how_to_test_and_its_links_resolve():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.encode()) <= 12_000, f"README.md is {len(readme.encode())} bytes; move detail to docs/"
    assert "make test" in readme and "make demo" in readme
    for target in re.findall(r"\]\(([^)\s]+)\)", readme):
        if re.match(r"[a-z]+://", target):
            continue
        path, _, anchor = target.partition("#")
        assert (ROOT / path).exists(), f"README links to {target}, which does not exist"
        if anchor and path.endswith(".md"):
            heads = re.findall(r"^#+ (.+)$", (ROOT / path).read_text(), flags=re.M)
            slugs = {re.sub(r"[\s-]+", "-", re.sub(r"[^\w\s-]", "", h).strip().lower()) for h in heads}
            assert anchor in slugs, f"README links to {target}: no such heading"


def test_the_site_builds_strict_and_fetches_nothing(tmp_path):
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("material") is None:
        pytest.skip(
            "mkdocs and mkdocs-material are not installed (the docs and test extras): make docs needs them"
        )
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    cmd = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    reference = (tmp_path / "site" / "reference.html").read_text()
    for path, _ in _walk(build_parser()):
        assert f'id="{"-".join(("tunesmith", *path))}"' in reference
    assert "Benchmark results" in (tmp_path / "site" / "results.html").read_text()
    for page in (tmp_path / "site").glob("*.html"):
        text = page.read_text()
        assert not re.search(r"<script[^>]+src=\"https?:", text), page.name
        assert not re.search(r"<link[^>]+rel=\"stylesheet\"[^>]+href=\"https?:", text), page.name
