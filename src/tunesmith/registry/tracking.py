"""`--track mlflow`: the records the registry keeps, logged to an MLflow tracking server too, for a
team that outgrows one SQLite file. Nothing of our own on the server side: MLflow's client
(`pip install 'tunesmith[mlflow]'`, mlflow-skinny) with its standard variables, `MLFLOW_TRACKING_URI`
(e.g. http://mlflow.internal:5000) and `MLFLOW_EXPERIMENT_NAME` (default "tunesmith").

A run becomes an MLflow run named like ours, with the config as params, the whole metrics curve
(steps kept), and tags for the tunesmith id, kind, method, base model and its checksum, parents and
data files with their sha256. Like the registry, a tracking server that is down never fails the
command: one line says why.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys

from tunesmith.errors import UserError

TRACKERS = ("mlflow",)
BATCH = 100  # params per log_batch call (MLflow's limit); metrics go 1,000 at a time


def check(track: str | None) -> None:
    """At the start of a command: the tracker asked for can be used, or one line saying what to install."""
    if not track:
        return
    if track not in TRACKERS:
        raise UserError(f"--track {track}: supported: {', '.join(TRACKERS)}")
    if importlib.util.find_spec("mlflow") is None:
        raise UserError("--track mlflow needs the MLflow client: pip install 'tunesmith[mlflow]'")


def _params(config: dict) -> list[tuple[str, str]]:
    out = []
    for k, v in sorted((config or {}).items()):
        text = v if isinstance(v, str) else json.dumps(v)
        out.append((k, text[:6000]))  # MLflow's limit on a param value
    return out


def _tags(rec: dict) -> dict[str, str]:
    tags = {"tunesmith.run_id": rec["id"], "tunesmith.kind": rec.get("kind", "train")}
    for key in ("method", "model", "model_sha256", "path"):
        if rec.get(key):
            tags[f"tunesmith.{key}"] = str(rec[key])
    for i, (relation, path) in enumerate(rec.get("parents") or []):
        tags[f"tunesmith.parent.{i}"] = f"{relation} {path}"
    for i, d in enumerate(rec.get("data") or []):
        count = f" ({d['examples']} examples)" if d.get("examples") is not None else ""
        tags[f"tunesmith.data.{i}"] = f"{d.get('role')} {d['path']} sha256 {d.get('sha256')}{count}"
    return tags


def log_run(track: str | None, rec: dict, status: str = "FINISHED") -> str | None:
    """Log one run record (runfolder.read_run_dir's shape; evals give the same keys); returns the MLflow
    run id, or None when tracking is off or failed (said in one line)."""
    if not track:
        return None
    try:
        import mlflow
        from mlflow.entities import Metric, Param
        from mlflow.tracking import MlflowClient

        client = MlflowClient()
        experiment = mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME") or "tunesmith")
        run = client.create_run(experiment.experiment_id, run_name=rec["name"], tags=_tags(rec))
        run_id = run.info.run_id
        params = [Param(k, v) for k, v in _params(rec.get("config") or {})]
        stamp = int(float(rec.get("ended") or 0) * 1000)
        metrics = [
            Metric(name, float(value), stamp, int(step or 0))
            for step, _, name, value in rec.get("metrics") or []
        ]
        for i in range(0, len(params), BATCH):
            client.log_batch(run_id, params=params[i : i + BATCH])
        for i in range(0, len(metrics), 1000):
            client.log_batch(run_id, metrics=metrics[i : i + 1000])
        client.set_terminated(run_id, status=status)
        return run_id
    except Exception as e:  # a server down or refusing: the command itself has done its work
        where = os.environ.get("MLFLOW_TRACKING_URI") or "the default MLflow store"
        why = (str(e).splitlines() or [type(e).__name__])[0][:200]
        print(
            f"--track mlflow: not logged to {where} ({why}); the run is in the registry and its folder",
            file=sys.stderr,
        )
        return None
