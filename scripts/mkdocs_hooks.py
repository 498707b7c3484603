"""MkDocs hooks (mkdocs.yml, `hooks:`): two pages of the docs site are made while it builds, so neither can
go stale or exist twice.

- `reference.md`, the command reference: written from the CLI's parsers (scripts/cli_reference.py).
- `results.md`: benchmarks/RESULTS.md as it is. The measurements live beside the benchmarks that make them;
  the docs link to them by anchor, and `mkdocs build --strict` checks every such link.
"""

from __future__ import annotations

from pathlib import Path

from cli_reference import reference  # this folder is on sys.path while MkDocs loads a hook
from mkdocs.structure.files import File, Files

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "RESULTS.md"
GENERATED = ("reference.md", "results.md")  # the nav's pages that are not files in docs/


def on_files(files: Files, config) -> Files:
    files.append(File.generated(config, "reference.md", content=reference()))
    files.append(File.generated(config, "results.md", abs_src_path=str(RESULTS)))
    return files
