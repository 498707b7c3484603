"""--track mlflow: a training run and an eval logged to a local MLflow store (params, the whole
metrics curve with its steps, tags linking back to the registry), and a tracking server that is
down never fails the run."""

from __future__ import annotations

import json

import pytest

from conftest import cli, toy_examples, write_jsonl
from tunesmith.errors import UserError
from tunesmith.registry import tracking

mlflow = pytest.importorskip("mlflow", reason="the mlflow extra (mlflow-skinny) is not installed")


@pytest.fixture
def store(tmp_path):
    """A local MLflow file store (MLflow keeps it for local use behind MLFLOW_ALLOW_FILE_STORE)."""
    return {"MLFLOW_TRACKING_URI": f"file://{tmp_path / 'mlruns'}", "MLFLOW_ALLOW_FILE_STORE": "true",
            "MLFLOW_EXPERIMENT_NAME": "notes"}  # fmt: skip


def runs_in(env: dict) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name(env["MLFLOW_EXPERIMENT_NAME"])
    return client, client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])


def test_train_and_eval_are_logged_with_their_curves_params_and_links(
    tiny_model_dir, tmp_path, store, monkeypatch
):
    for k, v in store.items():
        monkeypatch.setenv(k, v)
    d = tmp_path / "data"
    write_jsonl(d / "train.jsonl", toy_examples(8))
    write_jsonl(d / "val.jsonl", toy_examples(2, seed=1))
    test = write_jsonl(tmp_path / "test.jsonl", toy_examples(4, seed=2))
    m = str(tiny_model_dir("llama"))
    r = cli("train", "--model", m, "--data", str(d), "--out", str(tmp_path / "notes"), "--epochs", "2",
                "--batch-size", "4", "--lora-r", "4", "--quiet", "--track", "mlflow")  # fmt: skip
    assert r.returncode == 0, r.stderr
    r = cli("eval", "--adapter", str(tmp_path / "notes"), "--data", str(test), "--max-new-tokens", "6",
                "--quiet", "--track", "mlflow")  # fmt: skip
    assert r.returncode == 0, r.stderr
    client, (trained, evaluated) = runs_in(store)
    info = json.loads((tmp_path / "notes" / "tunesmith-run.json").read_text())
    assert trained.info.run_name == "notes" and trained.info.status == "FINISHED"
    assert (
        trained.data.tags["tunesmith.run_id"] == info["run_id"]
        and trained.data.tags["tunesmith.method"] == "lora"
    )
    assert trained.data.params["lr"] == "0.001" and trained.data.params["lora_r"] == "4"
    curve = [(m.step, m.value) for m in client.get_metric_history(trained.info.run_id, "loss")]
    logged = [json.loads(x) for x in (tmp_path / "notes" / "metrics.jsonl").read_text().splitlines()]
    assert curve == [(x["step"], x["loss"]) for x in logged if "loss" in x]
    data_tag = trained.data.tags["tunesmith.data.0"]
    assert data_tag.startswith("train ") and info["data"][0]["sha256"] in data_tag
    assert evaluated.data.tags["tunesmith.kind"] == "eval"
    assert evaluated.data.tags["tunesmith.parent.0"] == f"evaluated {(tmp_path / 'notes').resolve()}"
    assert "tuned/rougeL" in evaluated.data.metrics


def test_a_server_that_is_down_does_not_fail_the_run(tiny_model_dir, tmp_path):
    d = tmp_path / "data"
    write_jsonl(d / "train.jsonl", toy_examples(4))
    env = {"MLFLOW_TRACKING_URI": "http://127.0.0.1:9", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
           "MLFLOW_HTTP_REQUEST_TIMEOUT": "2"}  # fmt: skip
    flags = ["--epochs", "1", "--lora-r", "4", "--quiet", "--track", "mlflow"]
    m = str(tiny_model_dir("llama"))
    r = cli(
        "train",
        "--model",
        m,
        "--data",
        str(d / "train.jsonl"),
        "--out",
        str(tmp_path / "run"),
        *flags,
        env=env,
    )
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "run" / "adapter_model.safetensors").is_file()
    assert "--track mlflow: not logged to http://127.0.0.1:9 (" in r.stderr
    assert "the run is in the registry and its folder" in r.stderr


def test_a_missing_client_is_one_line_before_any_work(monkeypatch):
    monkeypatch.setattr(tracking.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(
        UserError, match=r"--track mlflow needs the MLflow client: pip install 'tunesmith\[mlflow\]'"
    ):
        tracking.check("mlflow")
    tracking.check(None)  # no tracking asked: nothing to check
