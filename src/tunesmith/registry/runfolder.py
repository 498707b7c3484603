"""What the registry keeps of a run, read from the run itself: its directory (`read_run_dir`: the
run info, inputs and metrics a finished run wrote), the machine and versions it ran on
(`environment`), and checksums of its base model and of what it produced. Apart from registry/db.py so
that reading a run folder needs no database, and the database code no file formats."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import socket
import sys
from pathlib import Path

from tunesmith.errors import UserError
from tunesmith.files.outputs import INPUTS, RUN_INFO
from tunesmith.models.weightfiles import MANIFEST, sha256_file


def environment() -> dict:
    """Versions and machine, as a run records them."""
    import importlib.metadata as md

    versions = {}
    for pkg in ("tunesmith", "torch", "transformers", "peft"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    cpuinfo: dict[str, str] = {}  # the first processor's "key: value" lines (Linux)
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, sep, value = line.partition(":")
            if sep:
                cpuinfo.setdefault(key.strip(), value.strip())
    flags = set(cpuinfo.get("flags", "").split())
    cpu = cpuinfo.get("model name") or platform.processor() or platform.machine()
    gpu = None
    torch = sys.modules.get("torch")  # only if the run imported it: the registry never imports torch itself
    if torch is not None and torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(0)
    return {
        "versions": versions,
        "python": platform.python_version(),
        "machine": {
            "host": socket.gethostname(),
            "cpu": cpu,
            "cores": os.cpu_count(),
            "cpu_flags": sorted(flags & {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}),
            "gpu": gpu,
            "system": platform.system(),
        },
    }


def read_run_dir(folder: Path) -> dict:
    """What the registry keeps of a finished run, from the files it wrote."""
    info, inputs = _run_files(folder)
    run_id = _run_id(folder, info, inputs)
    result = info.get("result") or {}
    config = inputs.get("config") or {}
    metrics, last = [], {}
    with contextlib.suppress(OSError):
        for line in (folder / "metrics.jsonl").read_text().splitlines():
            with contextlib.suppress(ValueError):
                m = json.loads(line)
                for k, v in m.items():
                    if k not in ("step", "epoch") and isinstance(v, (int, float)) and not isinstance(v, bool):
                        metrics.append((m.get("step"), m.get("epoch"), k, float(v)))
                        last[k] = float(v)
    headline_metric, headline = _headline(result, last)
    counts = info.get("examples") or {"train": result.get("examples")}
    files = info.get("data") or inputs.get("data") or []
    roles = [d.get("role", "train") for d in files]
    data = [  # an example count is known per role: it goes to a role's file when the role has one file
        {**d, "role": role, "examples": counts.get(role) if roles.count(role) == 1 else None}
        for d, role in zip(files, roles)
    ]
    parents = (
        [("from-adapter", str(Path(config["from_adapter"]).resolve()))] if config.get("from_adapter") else []
    )
    stat = (folder / RUN_INFO).stat()
    return {
        "id": run_id,
        "name": info.get("name") or folder.resolve().name,
        "method": info.get("method"),
        "model": info.get("model"),
        "model_sha256": info.get("model_sha256"),
        "path": str(folder.resolve()),
        "host": (info.get("environment") or {}).get("machine", {}).get("host"),
        "started": info.get("started") or stat.st_mtime - float(result.get("wall_s") or 0),
        "ended": info.get("ended") or stat.st_mtime,
        "resumes": info.get("resumes") or [],
        "config": config,
        "environment": info.get("environment") or {},
        "result": result,
        "headline_metric": headline_metric,
        "headline": headline,
        "data": data,
        "parents": parents,
        "metrics": metrics,
        "artefacts": artefacts(folder),
    }


def _run_files(folder: Path) -> tuple[dict, dict]:
    """A finished run's info and inputs (an older run may have no inputs)."""
    try:
        info = json.loads((folder / RUN_INFO).read_text())
        inputs = json.loads((folder / INPUTS).read_text()) if (folder / INPUTS).is_file() else {}
    except (OSError, ValueError) as e:
        raise UserError(f"{folder}: not a finished tunesmith run ({RUN_INFO} unreadable: {e})") from None
    if not isinstance(info, dict) or not isinstance(inputs, dict):
        raise UserError(f"{folder}: not a finished tunesmith run ({RUN_INFO} is not a JSON object)")
    return info, inputs


def _run_id(folder: Path, info: dict, inputs: dict) -> str:
    """The id the run got when it started; runs written before the registry have none, and get one derived
    from their folder, stable across imports."""
    return (
        info.get("run_id")
        or inputs.get("run_id")
        or hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:8]
    )


def run_id_of(folder: Path) -> str:
    """A finished run folder's id, without reading its weights."""
    return _run_id(folder, *_run_files(folder))


def _headline(result: dict, last: dict) -> tuple[str | None, float | None]:
    """The number a run is known by: the best validation score (--eval-metric), else the best
    validation loss, else the final train loss."""
    best = result.get("best") or {}
    for k, v in best.items():
        if k.startswith("val_") and k not in ("val_loss",) and isinstance(v, (int, float)):
            return k, float(v)
    if "val_loss" in best:
        return "val_loss", float(best["val_loss"])
    if "train_loss" in result and isinstance(result["train_loss"], (int, float)):
        return "train_loss", float(result["train_loss"])
    return (None, None) if "loss" not in last else ("train_loss", last["loss"])


def model_sha256(model_dir: str | Path) -> str | None:
    """One checksum for a model folder's weights: from the checksums a cached conversion recorded
    (weightfiles.MANIFEST), else by hashing each weights file (a few seconds per GB, once per run)."""
    folder = Path(model_dir)
    digests: dict[str, str] = {}
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError, AttributeError):
        files = json.loads((folder / MANIFEST).read_text())["files"]
        digests = {name: str(entry[1]) for name, entry in files.items()}
    if not digests:
        try:
            digests = {f.name: sha256_file(f) for f in sorted(folder.glob("*.safetensors"))}
        except OSError:
            return None
    if not digests:
        return None
    return hashlib.sha256("".join(f"{n}:{d}\n" for n, d in sorted(digests.items())).encode()).hexdigest()


def file_artefact(path: Path, kind: str) -> dict:
    return {
        "kind": kind,
        "path": str(path.resolve()),
        "sha256": sha256_file(path),
        "bytes": path.stat().st_size,
    }


def artefacts(folder: Path) -> list[dict]:
    """The weights a run wrote (adapter or model files), with sizes and sha256."""
    return [
        file_artefact(f, "adapter" if f.name.startswith("adapter") else "model")
        for f in sorted(folder.glob("*.safetensors"))
    ]
