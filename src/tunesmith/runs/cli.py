"""`tunesmith runs`: the registry from the command line. A table of runs, one run in full (its data,
settings, lineage and loss curve), tags such as v10, and importing run directories trained before
the registry existed or while it was unreachable.

Plain text, one fact per line, so the output is the same in a terminal, a pipe and a test; `--json`
for scripts.

The parsers are declarations only; each handler imports its library when the command runs, so building
every parser (`tunesmith --help`) imports no torch."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from tunesmith.errors import UserError
from tunesmith.flags import add_registry
from tunesmith.registry.db import Registry, production_tag


def add_parsers(sub) -> None:
    """The parsers of `runs` and its actions (declarations only)."""
    runs = sub.add_parser(
        "runs", help="every run and where it came from: list, show, compare, tag, rm, import"
    )
    add_registry(runs)
    runs.add_argument("--status", choices=["running", "done", "failed", "interrupted"], help="only these")
    runs.add_argument("--kind", help="only this kind of run (train, eval, merge, export)")
    runs.add_argument("--name", help="only runs whose name contains this")
    runs.add_argument("--model", help="only runs of this base model")
    runs.add_argument("--tag", help="only the run with this tag")
    runs.add_argument("--data", help="only runs on a data file whose path contains this (or sha256 prefix)")
    runs.add_argument("--limit", type=int, default=None, help="at most this many, newest first")
    runs.add_argument("--json", action="store_true", help="print JSON")
    rsub = runs.add_subparsers(dest="runs_action", metavar="ACTION")
    p = rsub.add_parser("show", help="one run in full: data, settings, lineage, curves")
    p.add_argument(
        "ref", metavar="RUN", help="run id (or its first 4+ characters), tag, name or run directory"
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p = rsub.add_parser("compare", help="settings, data (example by example) and metrics of two or more runs")
    p.add_argument("refs", nargs="+", metavar="RUN")
    p.add_argument(
        "--allow-different-test",
        action="store_true",
        help="list metrics measured on different test sets or decoding (no paired tests)",
    )
    p = rsub.add_parser("tag", help="give a run a tag (v10, production); a tag names one run")
    p.add_argument("ref", metavar="RUN")
    p.add_argument("tag")
    p = rsub.add_parser("promote", help="put a training run in production (--adapter production finds it)")
    p.add_argument("ref", metavar="RUN")
    p.add_argument("--line", default="", help="one of several model lines: its tag is LINE:production")
    p = rsub.add_parser("untag", help="remove a tag")
    p.add_argument("tag")
    p = rsub.add_parser("rm", help="remove a run from the registry (its files stay unless --delete-files)")
    p.add_argument("ref", metavar="RUN")
    p.add_argument("--delete-files", action="store_true", help="also delete the run directory")
    p = rsub.add_parser("import", help="register finished run directories (trained elsewhere or earlier)")
    p.add_argument("dirs", nargs="+", metavar="RUN_DIR")
    runs.set_defaults(handler=cli_runs)


SPARKS = "▁▂▃▄▅▆▇█"


def when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t)) if t else "-"


def number(v) -> str:
    if v is None:
        return "-"
    return f"{v:.4f}" if abs(v) < 10 else f"{v:.1f}"


def headline(r: dict) -> str:
    if r.get("headline") is None:
        return "-"
    return f"{r['headline_metric']} {number(r['headline'])}"


def table(rows: list[dict]) -> str:
    """Runs as aligned columns, newest first."""
    head = ["ID", "NAME", "STATUS", "METHOD", "MODEL", "STARTED", "HEADLINE", "TAGS"]
    body = [
        [
            r["id"],
            r["name"],
            r["status"],
            r.get("method") or r["kind"],
            r.get("model") or "-",
            when(r["started"]),
            headline(r),
            ",".join(r["tags"]) or "-",
        ]
        for r in rows
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    return "\n".join(
        "  ".join(str(x).ljust(w) for x, w in zip(line, widths)).rstrip() for line in [head, *body]
    )


def sparkline(values: list[float], width: int = 40) -> str:
    """A curve in one line of block characters (sampled down to `width` points)."""
    if len(values) > width:
        values = [values[round(i * (len(values) - 1) / (width - 1))] for i in range(width)]
    lo, hi = min(values), max(values)
    span = (hi - lo) or 1.0
    return "".join(SPARKS[min(len(SPARKS) - 1, int((v - lo) / span * len(SPARKS)))] for v in values)


def curves(metrics: list[dict]) -> list[str]:
    """The training loss and each validation number, from first to last, as sparklines."""
    lines = []
    series: dict[str, list[tuple[int, float]]] = {}
    for m in metrics:
        if m["name"] == "loss" or m["name"].startswith("val_"):
            series.setdefault(m["name"], []).append((m["step"], m["value"]))
    for name, points in sorted(series.items(), key=lambda kv: kv[0] != "loss"):  # the training loss first
        values = [v for _, v in points]
        first, last = points[0], points[-1]
        lines.append(
            f"  {name:<12} {number(first[1])} {sparkline(values)} {number(last[1])}  "
            f"(step {first[0]} -> {last[0]}, {len(points)} points)"
        )
    return lines


def describe(reg: Registry, r: dict) -> str:
    cfg = r.get("config") or {}
    env = r.get("environment") or {}
    machine = env.get("machine") or {}
    result = r.get("result") or {}
    out = [
        f"run {r['id']}  {r['name']}",
        f"  status       {r['status']}" + (f" ({r['error']})" if r.get("error") else ""),
        f"  kind         {r['kind']}" + (f", method {r['method']}" if r.get("method") else ""),
        f"  model        {r.get('model') or '-'}"
        + (f" (sha256 {r['model_sha256'][:12]})" if r.get("model_sha256") else ""),
        f"  path         {r.get('path') or '-'}",
        f"  started      {when(r['started'])}, ended {when(r.get('ended'))}, attempts {r['attempts']}",
        f"  tags         {', '.join(r['tags']) or '-'}",
        f"  headline     {headline(r)}",
    ]
    for p in reg.promotions(line=None, run=r["id"]):
        now = f"until {when(p['until'])} (then {p['replaced_by']})" if p["until"] else "in production now"
        out.append(f"  promoted     {production_tag(p['line'])} {when(p['at'])}, {now}")
    if result and r["kind"] == "train":  # an eval's result is its measurements, shown under metrics
        speed = result.get("tokens_per_s")
        out.append(
            f"  result       {result.get('steps')} steps, train loss {number(result.get('train_loss'))}"
            + (f", {speed:,.0f} tokens/s" if speed else "")
            + (f", {result['wall_s']:.0f}s" if result.get("wall_s") is not None else "")
        )
    chain = reg.lineage(r["id"])
    if len(chain) > 1 or r["children"]:
        links = " -> ".join(f"{c['name'] or c['parent_path']} ({c['id']})" for c in chain)
        out.append(f"  lineage      {links}")
        for c in r["children"]:
            out.append(f"  followed by  {c['run']} ({c['relation']})")
    for p in r["parents"]:
        if p["parent"] is None:
            out.append(f"  parent       {p['relation']} {p['parent_path']} (not in the registry)")
    out.append("  data")
    for d in r["data"]:
        count = f", {d['examples']} examples" if d.get("examples") is not None else ""
        out.append(f"    {d['role']:<6} {d['path']} (sha256 {str(d['sha256'])[:12]}{count})")
    if cfg:
        keys = ("task", "method", "epochs", "lr", "batch_size", "lora_r", "lora_alpha", "max_length", "seed")
        shown = [k for k in keys if k in cfg and not (k == "task" and cfg[k] == "generate")]
        out.append("  config       " + ", ".join(f"{k} {cfg[k]}" for k in shown))
    if env:
        versions = ", ".join(f"{k} {v}" for k, v in (env.get("versions") or {}).items())
        flags = " ".join(machine.get("cpu_flags") or [])
        out.append(f"  versions     {versions}")
        out.append(
            f"  machine      {machine.get('cpu', '-')}, {machine.get('cores', '-')} cores"
            + (f" ({flags})" if flags else "")
            + (f", GPU {machine['gpu']}" if machine.get("gpu") else "")
        )
    for a in r["artefacts"]:
        out.append(
            f"  artefact     {a['kind']} {a['path']} ({a['bytes']:,} bytes, sha256 {a['sha256'][:12]})"
        )
    lines = curves(r["metrics"])
    if lines:
        out.append("  curves")
        out += lines
    return "\n".join(out)


def delete_run_files(r: dict) -> str | None:
    """The run's directory, if it is the one this registry entry describes (its run info names the id)."""
    from tunesmith.files.outputs import RUN_INFO
    from tunesmith.registry.runfolder import run_id_of

    path = Path(r.get("path") or "")
    if not path.is_dir():
        return None
    try:
        ours = run_id_of(path) == r["id"]
    except UserError:
        ours = False
    if not ours:
        raise UserError(
            f"--delete-files: {path} does not hold run {r['id']} (no {RUN_INFO} naming it); nothing was "
            "deleted"
        )
    shutil.rmtree(path)
    return str(path)


def cli_runs(args) -> int:
    from tunesmith.runs.compare import compare_runs

    reg = Registry(args.registry)
    action = getattr(args, "runs_action", None) or "list"
    if action == "list":
        rows = reg.runs(
            status=args.status,
            kind=args.kind,
            name=args.name,
            model=args.model,
            tag=args.tag,
            data=args.data,
            limit=args.limit,
        )
        if args.json:
            print(json.dumps(rows, indent=2))
        elif not rows:
            print(
                f"no runs in {reg.path}"
                + (" match" if any(vars(args).get(k) for k in ("status", "name")) else "")
            )
        else:
            print(table(rows))
        return 0
    if action == "show":
        r = reg.get(reg.find(args.ref))
        if args.json:
            print(json.dumps({**r, "lineage": reg.lineage(r["id"])}, indent=2))
        else:
            print(describe(reg, r))
        return 0
    if action == "compare":
        print(compare_runs(reg, args.refs, args.allow_different_test))
        return 0
    if action == "tag":
        run_id = reg.find(args.ref)
        before = reg.tag(run_id, args.tag)
        moved = f" (moved from {before})" if before else ""
        print(f"tagged {run_id} as {args.tag}{moved}")
        return 0
    if action == "promote":
        run_id = reg.find(args.ref)
        before = reg.promote(run_id, args.line)
        tag = production_tag(args.line)
        was = f" (was {before})" if before else ""
        print(f"{tag}: {run_id} ({reg.get(run_id)['name']}){was}; `--adapter {tag}` now means this run")
        return 0
    if action == "untag":
        if not reg.untag(args.tag):
            raise UserError(f"tag {args.tag!r}: no run has it")
        print(f"removed tag {args.tag}")
        return 0
    if action == "rm":
        r = reg.get(reg.find(args.ref))
        deleted = delete_run_files(r) if args.delete_files else None
        reg.remove(r["id"])
        kept = (
            f"; deleted {deleted}"
            if deleted
            else f"; its files stay in {r.get('path')}"
            if r.get("path")
            else ""
        )
        print(f"removed run {r['id']} ({r['name']}) from the registry{kept}")
        return 0
    if action == "import":
        for folder in args.dirs:
            run_id = reg.record_run_dir(Path(folder))
            print(f"{folder}: registered as {run_id}")
        return 0
    raise UserError(f"runs {action}: unknown action")
