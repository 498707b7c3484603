"""The size rules of docs/architecture.md, checked in `make lint`: no module over 500 lines, no
function over 80 lines (argparse builders excepted: a flat list of flags reads best in one place),
and no function-local import of our own modules (it would hide an import cycle from import-linter),
but in a package's cli.py: there a command's handler imports its library when the command runs, so
building every parser (`tunesmith --help`, the data commands) imports no torch. import-linter reads the
imports inside functions too (grimp), so the layers and the no-cycle contract still see them.

Our own check because neither ruff nor import-linter measures these: ruff's closest rule counts
statements (PLR0915), not lines, and flake8's function-length plugins would add a second linter.

    python scripts/check_structure.py            # exit 1 and one line per finding
    python scripts/check_structure.py --report   # also the largest module, longest function, counts
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src" / "tunesmith"
MAX_MODULE, MAX_FUNCTION = 500, 80
BUILDERS = {"build_parser", "add_parsers"}  # argparse builders: flags, one after another
LATE_IMPORTS_ALLOWED = {  # (module, imported): why it is imported where it is used
    (
        "tunesmith.train.config",
        "tunesmith.scoring.metrics",
    ): "the metric names, only when --eval-metric is given",
    ("tunesmith.serve.server", "tunesmith.serve.app"): "fastapi is the optional serve extra",
    ("tunesmith.ui.cli", "tunesmith.ui.app"): "fastapi is the optional serve extra",
}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def findings(report: dict) -> list[str]:
    out = []
    for path in sorted(SRC.rglob("*.py")):
        text = path.read_text()
        lines, rel, mod = text.count("\n"), path.relative_to(ROOT), module_name(path)
        report["modules"].append((lines, str(rel)))
        if lines > MAX_MODULE:
            out.append(f"{rel}: {lines} lines, over {MAX_MODULE}; split it by concern")
        tree = ast.parse(text)
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                report["functions"].append((n, f"{rel}:{node.lineno} {node.name}"))
                if n > MAX_FUNCTION and node.name not in BUILDERS:
                    out.append(
                        f"{rel}:{node.lineno}: {node.name} is {n} lines, over {MAX_FUNCTION}; give its parts "
                        "names"
                    )
                for sub in ast.walk(node):
                    if isinstance(sub, ast.ImportFrom) and sub.module and sub.module.startswith("tunesmith"):
                        names = [sub.module]
                    elif isinstance(sub, ast.Import):
                        names = [a.name for a in sub.names if a.name.startswith("tunesmith")]
                    else:
                        continue
                    for name in names:
                        report["late"].add((mod, name, sub.lineno))
                        if (mod, name) not in LATE_IMPORTS_ALLOWED and not mod.endswith(".cli"):
                            out.append(
                                f"{rel}:{sub.lineno}: imports {name} inside {node.name}; import it at the "
                                "top "
                                "(a cycle? move the shared part down a layer)"
                            )
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--report", action="store_true", help="print the largest module, longest functions and counts"
    )
    args = ap.parse_args()
    report: dict = {"modules": [], "functions": [], "late": set()}
    found = findings(report)
    for line in found:
        print(line)
    if args.report:
        size, where = max(report["modules"])
        print(f"largest module: {where} ({size} lines); modules: {len(report['modules'])}")
        for n, where in sorted(report["functions"], reverse=True)[:5]:
            print(f"function {where}: {n} lines")
        print(f"function-local imports of our modules: {len({(m, n, ln) for m, n, ln in report['late']})}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
