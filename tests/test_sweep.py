"""`tunesmith sweep` (issue 21, first part): the search space as people write it, and a sweep on a tiny
model whose trials are registered runs, with a poor trial pruned from its validation curve."""

from __future__ import annotations

import signal

import pytest

from conftest import LOCAL, cli, run_cli, toy_examples, write_jsonl
from tunesmith.errors import UserError
from tunesmith.registry.db import Registry
from tunesmith.sweep.space import Param, parse_space

pytest.importorskip("optuna", reason="sweep needs Optuna (the 'sweep' extra)")


def test_the_space_as_people_write_it(tmp_path):
    space = parse_space("lr=1e-4..3e-3:log, lora-r=8|16|32, epochs=1..4, lora_dropout=0.0..0.1")
    assert space == [
        Param("lr", 1e-4, 3e-3, log=True),
        Param("lora_r", choices=(8, 16, 32)),
        Param("epochs", 1, 4),
        Param("lora_dropout", 0.0, 0.1),
    ]
    yaml_file = tmp_path / "space.yaml"
    yaml_file.write_text("lr: 1e-4..3e-3:log\nlora_r: [8, 16]\nscheduler: cosine|linear\n")
    assert parse_space(str(yaml_file)) == [
        Param("lr", 1e-4, 3e-3, log=True),
        Param("lora_r", choices=(8, 16)),
        Param("scheduler", choices=("cosine", "linear")),
    ]
    bad = {
        "learning_rate=1e-4..1e-3": "'learning_rate' is not a training setting a sweep can vary",
        "data=a|b": "'data' is not a training setting a sweep can vary",
        "lr=1e-3..1e-4": "LOW must be below HIGH",
        "lr=0..1e-3:log": "a log scale needs LOW > 0",
        "epochs=1.5..3": "epochs is a whole number",
        "lr=1e-3": "write a range as LOW..HIGH or a choice as a|b|c",
        "lr=1e-4..x": "'x' is not a number",
        "lr=1e-4..1e-3:sqrt": "the only scale is ':log'",
        "lr=1e-4..1e-3, lr=1e-3..1e-2": "lr is given twice",
        "lora_r 8": "is not NAME=RANGE",
        " , ": "nothing to search",
    }
    for text, said in bad.items():
        with pytest.raises(UserError, match=said.replace("(", r"\(").replace("|", r"\|")):
            parse_space(text)


def test_a_sweep_on_a_tiny_model_prunes_and_registers_every_trial(tiny_model_dir, tmp_path):
    d = toy_data(tmp_path)
    reg = str(tmp_path / "reg.db")
    r = cli(*sweep_args(tiny_model_dir("llama"), d, tmp_path / "sw", reg, "--seed", "1"))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("sweep sw: 0 trials done, 4 to run; val_loss (lower is better) over lr ")
    trials = [x for x in lines if x.startswith("trial ")]
    assert len(trials) == 4 and any(x.split("-> ")[1].startswith("pruned") for x in trials), trials
    runs = Registry(reg).runs(kind="train")
    assert sorted(x["name"] for x in runs) == ["trial-000", "trial-001", "trial-002", "trial-003"]
    assert all(x["status"] == "done" for x in runs)
    best = [x for x in lines if x.startswith("best: trial ")]
    assert len(best) == 1 and "val_loss" in best[0]
    # the report: one plot of val_loss against lr with a dot per trial (pruned ones hollow), the curves
    page = (tmp_path / "sw" / "report.html").read_text()
    assert page.count("<svg") == 2
    against_lr, during = page.split("<svg")[1:]
    assert against_lr.count("<circle") == 4 and during.count("<polyline") == 4
    assert against_lr.count('fill="none"') == sum("pruned" in x for x in trials)  # hollow: pruned
    assert "http" not in page
    assert shown_in_the_ui(reg) == [("sweep", "sw", 4, page)]
    # the best config trains as it is
    cfg = tmp_path / "sw" / "best.yaml"
    assert cfg.is_file() and "lr:" in cfg.read_text()
    again = cli("train", "--config", str(cfg), "--out", str(tmp_path / "from-best"), "--max-steps", "1",
                "--registry", "off", "--quiet")  # fmt: skip
    assert again.returncode == 0, again.stderr
    # the study is kept: running the same sweep again without --resume is refused
    r = cli("sweep", "--data", str(d), "--out", str(tmp_path / "sw"), "--space", "lr=1e-4..1e-2:log")
    assert r.returncode == 2 and "pass --resume to continue it" in r.stderr


def shown_in_the_ui(reg: str) -> list[tuple]:
    """What `tunesmith ui` lists under Sweeps (kind, folder, runs) with the report page it serves; an
    unknown key is a 404."""
    pytest.importorskip("fastapi", reason="the review app needs the 'serve' extra")
    from fastapi.testclient import TestClient

    from tunesmith.ui.app import create_app

    client = TestClient(create_app(reg), base_url=LOCAL)
    out = []
    for s in client.get("/api/studies").json():
        page = client.get(f"/studies/{s['key']}/report.html")
        assert page.status_code == 200 and "default-src 'none'" in page.headers["content-security-policy"]
        out.append((s["kind"], s["name"], s["runs"], page.text))
    assert client.get("/studies/..%2F..%2Fetc/report.html").status_code == 404
    return out


def toy_data(tmp_path, val: int = 2):
    """A tiny training set of 8 examples and a validation set, as the sweep and curve tests use them."""
    d = tmp_path / "data"
    write_jsonl(d / "train.jsonl", toy_examples(8))
    write_jsonl(d / "val.jsonl", toy_examples(val, seed=1))
    return d


def sweep_args(model, d, out, reg, *extra):
    space = ["--space", "lr=1e-5..1e-1:log", "--trials", "4"]
    train = ["--epochs", "3", "--batch-size", "4", "--lora-r", "4", "--registry", reg]
    return ["sweep", "--model", str(model), "--data", str(d), "--out", str(out), *space, *train, *extra]


def test_a_killed_sweep_resumes_without_repeating_a_finished_trial(tiny_model_dir, tmp_path):
    import optuna

    d = toy_data(tmp_path)
    reg, out = str(tmp_path / "reg.db"), tmp_path / "sw"
    args = sweep_args(tiny_model_dir("llama"), d, out, reg)
    # each trial checkpoints once per epoch (3): the 4th checkpoint is in trial 1, which dies with the sweep
    killed = run_cli(*args, env={"TUNESMITH_TEST_KILL_AT": "checkpoint.saved@4"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    first = (out / "trial-000" / "tunesmith-run.json").read_text()
    r = cli(*args, "--resume")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("sweep sw: 1 trials done, 3 to run;")
    study = optuna.load_study(study_name="sw", storage=storage_of(out))
    states = [t.state.name for t in study.trials]
    assert states[1] == "FAIL" and sum(s in ("COMPLETE", "PRUNED") for s in states) == 4, states
    assert (out / "trial-000" / "tunesmith-run.json").read_text() == first  # not trained again
    names = [x["name"] for x in Registry(reg).runs(kind="train")]
    assert names.count("trial-000") == 1 and "trial-004" in names


def test_two_workers_share_one_study(tiny_model_dir, tmp_path):
    import optuna

    d = toy_data(tmp_path)
    reg, out = str(tmp_path / "reg.db"), tmp_path / "sw"
    r = run_cli(*sweep_args(tiny_model_dir("llama"), d, out, reg, "--workers", "2"))
    assert r.returncode == 0, r.stderr
    study = optuna.load_study(study_name="sw", storage=storage_of(out))
    counted = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    # each worker checks the budget after its trial: at most one more than asked
    assert 4 <= len(counted) <= 5 and len({t.number for t in study.trials}) == len(study.trials)
    assert len({t.user_attrs["pid"] for t in study.trials}) == 2  # trials from two processes
    assert {x["name"] for x in Registry(reg).runs(kind="train")} == {
        f"trial-{t.number:03d}" for t in study.trials
    }
    assert (out / "best.yaml").is_file() and "best: trial " in r.stdout


def storage_of(out):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(str(out / "study.journal")))


def test_a_learning_curve_on_nested_subsets(tiny_model_dir, tmp_path):
    import json

    from tunesmith.sweep.curve import nested_subsets, parse_fractions

    d = toy_data(tmp_path, val=3)
    reg = str(tmp_path / "reg.db")
    r = cli("curve", "--model", str(tiny_model_dir("llama")), "--data", str(d), "--out", str(tmp_path / "c"),
            "--epochs", "1", "--batch-size", "2", "--lora-r", "4", "--max-new-tokens", "6", "--registry", reg,
            "--json")  # fmt: skip
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert [p["examples"] for p in res["points"]] == [2, 4, 8] and res["metric"] == "rougeL"
    assert all(p["ci"][0] <= p["mean"] <= p["ci"][1] for p in res["points"])
    assert res["sentence"].startswith(("still rising at 8 examples", "flat from 4 to 8 examples"))
    # nested: each subset holds the smaller ones
    subsets = [(tmp_path / "c" / "subsets" / f"train-{n}.jsonl").read_text().splitlines() for n in (2, 4, 8)]
    assert set(subsets[0]) < set(subsets[1]) < set(subsets[2])
    assert subsets == nested_subsets(d / "train.jsonl", [0.25, 0.5, 1.0], 42)
    assert sorted(x["name"] for x in Registry(reg).runs(kind="train")) == ["n2", "n4", "n8"]
    page = (tmp_path / "c" / "report.html").read_text()
    assert page.count("<circle") == 3 and res["sentence"] in page.replace("&#x27;", "'")
    ends = [min(v for q in res["points"] for v in q["ci"]), max(v for q in res["points"] for v in q["ci"])]
    assert all(f'text-anchor="end">{v:.3g}</text>' in page for v in ends)  # the y axis is labelled
    assert shown_in_the_ui(reg) == [("curve", "c", 3, page)]
    for bad in ("0.5", "0,0.5", "0.5,1.5", "a,b"):
        with pytest.raises(UserError, match="--fractions"):
            parse_fractions(bad)
