"""A merge or an export in the run registry: what it wrote (with sha256), from what (the adapter's
run, or a merged folder, as its parent), so `tunesmith runs show` can draw v1 -> v2 -> merged -> GGUF."""

from __future__ import annotations

from pathlib import Path

from tunesmith.registry.recorder import Recorder
from tunesmith.registry.runfolder import file_artefact

RELATION = {"merge": "merged-from", "export": "exported-from"}


def register_output(
    kind: str,
    out: Path,
    *,
    adapter: str | None,
    model: str,
    result: dict,
    config: dict,
    started: float,
    registry_path: str | None,
) -> str | None:
    """Enter a finished merge (a folder) or export (a .gguf file); a failing registry is skipped, one line."""
    rec = Recorder(registry_path)
    if rec.off:
        return None
    # an export of a merged folder comes from it
    source = adapter or (model if Path(model).is_dir() else None)
    files = sorted(out.glob("*.safetensors")) if out.is_dir() else [out]
    run_id = rec.add(
        kind=kind,
        name=out.name,
        path=str(out.resolve()),
        model=model,
        config=config,
        data=[],
        parents=[(RELATION[kind], str(Path(source).resolve()))] if source else [],
        result=result,
        metrics=[],
        artefacts=[file_artefact(f, "gguf" if f.suffix == ".gguf" else "model") for f in files],
        started=started,
    )
    rec.close()
    return run_id
