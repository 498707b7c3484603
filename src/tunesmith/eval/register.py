"""An eval in the run registry: what was measured (the test file and its sha256), with what (the
model, the adapter run it evaluated: its parent), how (the decoding settings), and every system's
metrics, with the whole results so a later `--gate` can pair its examples with these."""

from __future__ import annotations

import time
from pathlib import Path

from tunesmith.data.formats import files_of
from tunesmith.models.weightfiles import sha256_file
from tunesmith.registry import tracking
from tunesmith.registry.recorder import Recorder

HEADLINE = "rougeL"  # the number an eval is known by in `tunesmith runs`, when it was measured


def register_eval(
    results: dict,
    runs: list[dict],
    spec,
    out: str | None,
    registry_path: str | None,
    track: str | None = None,
) -> str | None:
    """Enter the eval in the registry (skipped with one line when the registry fails), and log it to the
    tracking server when asked (--track); returns its registry id."""
    rec = Recorder(registry_path)
    if rec.off and not track:
        return None
    files = files_of(spec.data)  # the files the eval read
    n = len(results.get("examples") or [])
    entries = [
        {"role": "test", "path": str(f), "sha256": sha256_file(f), "bytes": f.stat().st_size,
         "examples": n if len(files) == 1 else None}
        for f in files
    ]  # fmt: skip
    metrics = [
        (None, None, f"{r['system']}/{k}", float(v))
        for r in runs
        for k, v in (r.get("metrics") or {}).items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    ]
    key = results.get("headline") or HEADLINE  # a --task eval names its own (eval/labels.py)
    top = (results.get("metrics") or {}).get(key)
    headline = (key, float(top)) if isinstance(top, (int, float)) else (None, None)
    if spec.adapter:
        name = f"eval-{Path(spec.adapter).resolve().name}"
    else:
        name = "eval-" + (spec.model or "base").replace("/", "-")
    config = {k: v for k, v in vars(spec).items() if k != "quiet"}
    record = dict(
        kind="eval",
        name=Path(out).resolve().name if out else name,
        path=str(Path(out).resolve()) if out else None,
        model=results.get("model"),
        config=config,
        data=entries,
        parents=[("evaluated", str(Path(spec.adapter).resolve()))] if spec.adapter else [],
        result=results,
        metrics=metrics,
        headline=headline,
    )
    run_id = None if rec.off else rec.add(**record)
    if track:
        tracking.log_run(track, {**record, "id": run_id or "-", "ended": time.time()})
    rec.close()
    return run_id
