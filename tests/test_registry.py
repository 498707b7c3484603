"""The run registry (registry/db.py) and `tunesmith runs`: what a training run records, lineage across
--from-adapter and resume, tags, import from run directories, stale runs after a SIGKILL, several
processes writing at once, and a broken registry that never fails a run."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys

import pytest

from conftest import ROOT, cli, run_cli, toy_examples, train_then_sigkill, write_jsonl
from tunesmith.errors import UserError
from tunesmith.registry import db as R


@pytest.fixture
def data(tmp_path):
    d = tmp_path / "data"
    write_jsonl(d / "train.jsonl", toy_examples(8))
    write_jsonl(d / "val.jsonl", toy_examples(2, seed=1))
    return d


def train(model, data, out, reg, *extra):
    r = cli(
        "train",
        "--model",
        str(model),
        "--data",
        str(data),
        "--out",
        str(out),
        "--registry",
        str(reg),
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--lora-r",
        "4",
        "--quiet",
        *extra,
    )
    assert r.returncode == 0, r.stderr
    return r


# ---------------------------------------------------------------- the database alone


def test_schema_is_created_versioned_and_a_newer_one_is_refused(tmp_path):
    path = tmp_path / "reg.db"
    reg = R.Registry(path)
    assert reg.db.execute("PRAGMA user_version").fetchone()[0] == R.SCHEMA == len(R.MIGRATIONS)
    assert reg.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    reg.close()
    R.Registry(path).close()  # opening again migrates nothing and keeps the data
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {R.SCHEMA + 1}")
    db.commit()
    db.close()
    with pytest.raises(
        UserError,
        match=rf"written by a newer tunesmith \(registry schema {R.SCHEMA + 1}; this one knows {R.SCHEMA}\)",
    ):
        R.Registry(path)


def test_find_by_id_prefix_tag_name_and_a_clear_error(tmp_path):
    reg = R.Registry(tmp_path / "reg.db")
    reg.begin("abcd1234", kind="train", name="notes-v1", path=str(tmp_path / "v1"))
    reg.begin("abcd9999", kind="train", name="notes-v2", path=str(tmp_path / "v2"))
    assert reg.find("abcd1234") == reg.find("abcd1") == reg.find("notes-v1") == "abcd1234"
    with pytest.raises(UserError, match="2 run ids start with it; give more of the id"):
        reg.find("abcd")
    with pytest.raises(UserError, match="no such run id"):
        reg.find("abc")  # 3 characters are too few to be a prefix
    assert reg.tag("abcd1234", "v10") is None
    assert reg.find("v10") == "abcd1234"
    assert reg.tag("abcd9999", "v10") == "abcd1234"  # a tag names one run: it moves
    assert reg.find("v10") == "abcd9999"
    with pytest.raises(UserError, match="a tag is one word"):
        reg.tag("abcd9999", "two words")
    with pytest.raises(UserError, match=r"run 'nope': no such run id, tag, name or registered run directory"):
        reg.find("nope")
    # a name is a version's: an eval written later to eval/notes-v1 does not take the name from the adapter
    reg.add(kind="eval", name="notes-v1", path=None, model=None, config={}, data=[], parents=[], result={},
            metrics=[])  # fmt: skip
    assert reg.find("notes-v1") == "abcd1234"
    reg.add(
        kind="eval", name="both", path=None, model=None, config={}, data=[], parents=[], result={}, metrics=[]
    )
    assert reg.get(reg.find("both"))["kind"] == "eval"  # no training run of that name: the eval


def test_a_running_run_whose_process_is_gone_shows_as_interrupted(tmp_path):
    reg = R.Registry(tmp_path / "reg.db")
    reg.begin("live0001", kind="train", name="live")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    reg.begin("dead0001", kind="train", name="dead")
    reg.db.execute("UPDATE runs SET pid = ? WHERE id = 'dead0001'", (dead.pid,))
    status = {r["id"]: r["status"] for r in reg.runs()}
    assert status == {"live0001": "running", "dead0001": "interrupted"}
    assert [r["id"] for r in reg.runs(status="interrupted")] == ["dead0001"]


# ---------------------------------------------------------------- what a training run records


def test_a_training_run_registers_its_data_settings_curve_and_artefacts(tiny_model_dir, data, tmp_path):
    reg_path = tmp_path / "reg.db"
    out = tmp_path / "notes"
    train(tiny_model_dir("llama"), data, out, reg_path)
    info = json.loads((out / "tunesmith-run.json").read_text())
    reg = R.Registry(reg_path)
    [row] = reg.runs()
    assert row["id"] == info["run_id"] and row["name"] == "notes" and row["status"] == "done"
    r = reg.get(row["id"])
    assert r["method"] == "lora" and r["path"] == str(out.resolve()) and r["attempts"] == 1
    assert r["config"]["lora_r"] == 4 and r["model_sha256"] == info["model_sha256"]
    assert [(d["role"], d["examples"]) for d in r["data"]] == [("train", 8), ("val", 2)]
    assert r["data"][0]["sha256"] == info["data"][0]["sha256"]
    assert [a["path"] for a in r["artefacts"]] == [str((out / "adapter_model.safetensors").resolve())]
    losses = [m["value"] for m in r["metrics"] if m["name"] == "loss"]
    assert losses == [
        json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in x
    ]
    assert r["headline_metric"] == "val_loss" and r["headline"] == pytest.approx(
        info["result"]["best"]["val_loss"]
    )
    assert set(r["environment"]["versions"]) >= {"tunesmith", "torch", "transformers", "peft"}
    shown = cli("runs", "--registry", str(reg_path), "show", "notes")
    assert shown.returncode == 0, shown.stderr
    assert f"run {row['id']}  notes\n  status       done\n  kind         train, method lora\n" in shown.stdout
    assert (
        f"    train  {data / 'train.jsonl'} (sha256 {r['data'][0]['sha256'][:12]}, 8 examples)"
        in shown.stdout
    )
    assert "  curves\n  loss " in shown.stdout and "(step 1 -> 2, 2 points)" in shown.stdout


def test_lineage_across_from_adapter_and_the_runs_table(tiny_model_dir, data, tmp_path):
    reg_path = tmp_path / "reg.db"
    m = tiny_model_dir("llama")
    train(m, data, tmp_path / "v1", reg_path)
    train(m, data, tmp_path / "v2", reg_path, "--from-adapter", str(tmp_path / "v1"))
    reg = R.Registry(reg_path)
    v1, v2 = reg.find("v1"), reg.find("v2")
    assert [c["id"] for c in reg.lineage(v2)] == [v1, v2]
    assert reg.get(v2)["parents"] == [
        {"parent": v1, "parent_path": str((tmp_path / "v1").resolve()), "relation": "from-adapter"}
    ]
    assert reg.get(v1)["children"] == [{"run": v2, "relation": "from-adapter"}]
    r = cli("runs", "--registry", str(reg_path), "tag", "v2", "v10")
    assert r.stdout == f"tagged {v2} as v10\n"
    listing = cli("runs", "--registry", str(reg_path)).stdout.splitlines()
    assert listing[0].split() == ["ID", "NAME", "STATUS", "METHOD", "MODEL", "STARTED", "HEADLINE", "TAGS"]
    assert [line.split()[:3] for line in listing[1:]] == [[v2, "v2", "done"], [v1, "v1", "done"]]
    assert listing[1].split()[-1] == "v10" and listing[2].split()[-1] == "-"
    shown = cli("runs", "--registry", str(reg_path), "show", "v10").stdout
    assert f"  lineage      v1 ({v1}) -> v2 ({v2})\n" in shown


def test_import_rebuilds_the_registry_from_run_directories(tiny_model_dir, data, tmp_path):
    first = tmp_path / "first.db"
    train(tiny_model_dir("llama"), data, tmp_path / "run", first, "--registry", "off")  # trained without one
    assert not first.exists()
    again = tmp_path / "again.db"
    r = cli("runs", "--registry", str(again), "import", str(tmp_path / "run"))
    assert r.returncode == 0, r.stderr
    run_id = json.loads((tmp_path / "run" / "tunesmith-run.json").read_text())["run_id"]
    assert r.stdout == f"{tmp_path / 'run'}: registered as {run_id}\n"
    rec = R.Registry(again).get(run_id)
    assert rec["status"] == "done" and [d["role"] for d in rec["data"]] == ["train", "val"]
    r = cli("runs", "--registry", str(again), "import", str(tmp_path / "data"))
    assert r.returncode == 2 and "not a finished tunesmith run" in r.stderr


def test_rm_keeps_files_unless_asked_and_never_deletes_a_folder_that_is_not_the_run(
    tiny_model_dir, data, tmp_path
):
    reg_path = tmp_path / "reg.db"
    train(tiny_model_dir("llama"), data, tmp_path / "run", reg_path)
    run_id = R.Registry(reg_path).find("run")
    r = cli("runs", "--registry", str(reg_path), "rm", run_id)
    assert (
        r.stdout
        == f"removed run {run_id} (run) from the registry; its files stay in {(tmp_path / 'run').resolve()}\n"
    )
    assert (tmp_path / "run" / "adapter_model.safetensors").is_file() and R.Registry(reg_path).runs() == []
    cli("runs", "--registry", str(reg_path), "import", str(tmp_path / "run"))
    reg = R.Registry(reg_path)
    reg.db.execute(
        "UPDATE runs SET path = ? WHERE id = ?", (str(data), run_id)
    )  # an entry pointing elsewhere
    r = cli("runs", "--registry", str(reg_path), "rm", run_id, "--delete-files")
    assert r.returncode == 2 and "does not hold run" in r.stderr and (data / "train.jsonl").is_file()
    reg.db.execute("UPDATE runs SET path = ? WHERE id = ?", (str((tmp_path / "run").resolve()), run_id))
    r = cli("runs", "--registry", str(reg_path), "rm", run_id, "--delete-files")
    assert r.returncode == 0 and not (tmp_path / "run").exists()


# ---------------------------------------------------------------- it never fails a run


@pytest.mark.parametrize("damage", ["corrupt", "read-only", "cannot be created"])
def test_a_broken_registry_is_skipped_and_the_run_completes(damage, tiny_model_dir, data, tmp_path):
    reg_path = tmp_path / "reg" / "registry.db"
    if damage == "cannot be created":
        reg_path.parent.write_text("a file where the registry's folder should be")
    elif damage == "corrupt":
        reg_path.parent.mkdir()
        reg_path.write_bytes(b"this is not a database" * 100)
    else:
        reg_path.parent.mkdir()
        R.Registry(reg_path).close()
        for f in reg_path.parent.iterdir():
            f.chmod(0o444)
        reg_path.parent.chmod(0o555)
    try:
        if damage == "read-only" and os.access(reg_path, os.W_OK):
            pytest.skip("running as root: a read-only file is writable anyway")
        r = train(tiny_model_dir("llama"), data, tmp_path / "run", reg_path)
    finally:
        if reg_path.parent.is_dir():
            reg_path.parent.chmod(0o755)
    assert (tmp_path / "run" / "adapter_model.safetensors").is_file()
    assert r.stderr.count(f"registry {reg_path} skipped (") == 1
    assert "the run is unaffected: add it later with `tunesmith runs import RUN_DIR`" in r.stderr


def test_killed_writer_and_concurrent_writers_leave_a_consistent_registry(tiny_model_dir, data, tmp_path):
    """Two trainings, an eval and an import write at once; a third training is SIGKILLed mid-run: the database
    opens, every finished run is there, and the killed one shows as interrupted."""
    reg_path = tmp_path / "reg.db"
    m = str(tiny_model_dir("llama"))
    common = [
        "--model",
        m,
        "--data",
        str(data),
        "--registry",
        str(reg_path),
        "--batch-size",
        "2",
        "--lora-r",
        "4",
        "--quiet",
        "--threads",
        "1",
    ]
    train(m, data, tmp_path / "seed", reg_path, "--registry", "off")  # a finished run to import meanwhile
    env = dict(os.environ)
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tunesmith.cli",
                "train",
                *common,
                "--epochs",
                "2",
                "--out",
                str(tmp_path / f"p{i}"),
            ],
            cwd=ROOT,
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    write_jsonl(tmp_path / "test.jsonl", toy_examples(3, seed=2))
    evaluate = ["eval", "--adapter", str(tmp_path / "seed"), "--data", str(tmp_path / "test.jsonl")]
    procs.append(
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tunesmith.cli",
                *evaluate,
                "--max-new-tokens",
                "4",
                "--registry",
                str(reg_path),
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
    )
    imp = run_cli("runs", "--registry", str(reg_path), "import", str(tmp_path / "seed"))
    killed = train_then_sigkill(
        [*common, "--epochs", "3", "--save-every", "1"], tmp_path / "killed", kill_at=2
    )
    errs = [p.communicate()[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], errs
    assert imp.returncode == 0 and killed == -signal.SIGKILL
    reg = R.Registry(reg_path)
    assert reg.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    status = {r["name"]: r["status"] for r in reg.runs(kind="train")}
    assert status == {"p0": "done", "p1": "done", "seed": "done", "killed": "interrupted"}
    assert [r["status"] for r in reg.runs(kind="eval")] == ["done"]
    # the killed run resumes under the same id: one entry, two attempts, done
    r = run_cli("train", "--resume", str(tmp_path / "killed"), "--quiet", "--registry", str(reg_path))
    assert r.returncode == 0, r.stderr
    [row] = [x for x in R.Registry(reg_path).runs() if x["name"] == "killed"]
    assert row["status"] == "done" and row["attempts"] == 2


def test_lineage_runs_through_merge_and_export(tiny_model_dir, data, tmp_path):
    """v1 -> v2 (from-adapter) -> merged folder -> GGUF: each step registered with its parent and output."""
    reg_path = tmp_path / "reg.db"
    m = tiny_model_dir("llama")
    train(m, data, tmp_path / "v1", reg_path)
    train(m, data, tmp_path / "v2", reg_path, "--from-adapter", "v1")  # a run name works as an adapter
    merged, gguf = tmp_path / "merged", tmp_path / "notes.gguf"
    r = cli("merge", "--adapter", "v2", "--out", str(merged), "--registry", str(reg_path))
    assert r.returncode == 0, r.stderr
    r = cli(
        "export", "--model", str(merged), "--quant", "f32", "--out", str(gguf), "--registry", str(reg_path)
    )
    assert r.returncode == 0, r.stderr
    reg = R.Registry(reg_path)
    chain = reg.lineage(reg.find("notes.gguf"))
    assert [c["name"] for c in chain] == ["v1", "v2", "merged", "notes.gguf"]
    assert [c["relation"] for c in chain] == [None, "from-adapter", "merged-from", "exported-from"]
    exported = reg.get(reg.find("notes.gguf"))
    assert exported["kind"] == "export" and exported["artefacts"][0]["kind"] == "gguf"
    assert exported["artefacts"][0]["bytes"] == gguf.stat().st_size
    shown = cli("runs", "--registry", str(reg_path), "show", "v2").stdout
    assert f"followed by  {reg.find('merged')} (merged-from)" in shown


def test_a_registry_of_the_first_schema_is_migrated_and_keeps_its_runs(tmp_path):
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    for statement in R.MIGRATIONS[0]:  # the registry as the first release wrote it
        db.execute(statement)
    db.execute(
        "INSERT INTO runs (id, name, kind, status, started) VALUES ('old00001', 'v1', 'train', 'done', 1.0)"
    )
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    reg = R.Registry(path)
    assert reg.db.execute("PRAGMA user_version").fetchone()[0] == R.SCHEMA == 3
    assert [r["id"] for r in reg.runs()] == ["old00001"] and reg.promotions() == []


def test_promote_moves_production_per_model_line_and_keeps_the_history(tmp_path):
    reg_path = tmp_path / "reg.db"
    reg = R.Registry(reg_path)
    for rid, name in (("aaaa0001", "v1"), ("aaaa0002", "v2"), ("bbbb0001", "support-v1")):
        reg.begin(rid, kind="train", name=name, path=str(tmp_path / name))
    reg.add(
        kind="eval",
        name="eval-v1",
        path=None,
        model=None,
        config={},
        data=[],
        parents=[],
        result={},
        metrics=[],
    )
    assert reg.promote("aaaa0001") is None and reg.find("production") == "aaaa0001"
    r = cli("runs", "--registry", str(reg_path), "promote", "v2")
    assert r.stdout == "production: aaaa0002 (v2) (was aaaa0001); `--adapter production` now means this run\n"
    r = cli("runs", "--registry", str(reg_path), "promote", "support-v1", "--line", "support")
    assert r.returncode == 0 and R.Registry(reg_path).find("support:production") == "bbbb0001"
    reg = R.Registry(reg_path)
    assert reg.find("production") == "aaaa0002"  # the other line's production is untouched
    assert [p["run"] for p in reg.promotions()] == ["aaaa0002", "aaaa0001"]
    r = cli("runs", "--registry", str(reg_path), "promote", "eval-v1")
    assert r.returncode == 2 and "only a training run (an adapter) can be in production" in r.stderr
    # runs show: each promotion of the run, until when and who followed, or that it is in production now
    first = cli("runs", "--registry", str(reg_path), "show", "aaaa0001").stdout
    [line] = [x for x in first.splitlines() if x.startswith("  promoted")]
    assert line.startswith("  promoted     production 20") and line.endswith(" (then aaaa0002)")
    now = cli("runs", "--registry", str(reg_path), "show", "support:production").stdout
    assert "  promoted     support:production 20" in now and now.count("in production now") == 1
    assert [(p["line"], p["until"]) for p in reg.promotions(line=None, run="bbbb0001")] == [("support", None)]


def test_without_the_flag_runs_go_to_the_default_registry(tiny_model_dir, data, tmp_path):
    """No --registry: $TUNESMITH_REGISTRY (else $TUNESMITH_HOME/registry.db), never "no registry"."""
    assert not R.is_off(None) and R.is_off("off") and R.is_off("None")
    reg_path = tmp_path / "default.db"
    env = {"TUNESMITH_REGISTRY": str(reg_path)}
    m = str(tiny_model_dir("llama"))
    flags = ["--epochs", "1", "--batch-size", "4", "--lora-r", "4", "--quiet"]
    r = cli("train", "--model", m, "--data", str(data), "--out", str(tmp_path / "v1"), *flags, env=env)
    assert r.returncode == 0, r.stderr
    test = write_jsonl(tmp_path / "test.jsonl", toy_examples(2, seed=3))
    r = cli("eval", "--adapter", "v1", "--data", str(test), "--max-new-tokens", "4", "--quiet", env=env)
    assert r.returncode == 0, r.stderr
    assert [(x["name"], x["kind"]) for x in R.Registry(reg_path).runs()] == [
        ("eval-v1", "eval"),
        ("v1", "train"),
    ]
    listed = cli("runs", env=env).stdout
    assert " v1 " in listed and "eval-v1" in listed


def test_the_registry_can_be_off_for_a_whole_process(tmp_path, monkeypatch):
    """TUNESMITH_REGISTRY=off (what the benchmarks set): nothing is registered anywhere, no file made."""
    from tunesmith.registry.recorder import Recorder

    monkeypatch.setenv("TUNESMITH_REGISTRY", "off")
    monkeypatch.chdir(tmp_path)
    rec = Recorder()
    assert rec.off and rec.add(kind="eval", name="x", path=None, model=None, config={}, data=[], parents=[],
                               result={}, metrics=[]) is None  # fmt: skip
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(UserError, match="the registry is off"):  # never a database file named "off"
        R.Registry()
    r = cli("runs")  # cli() runs in the repository's root
    assert r.returncode == 2 and "the registry is off" in r.stderr and not (ROOT / "off").exists()
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setenv("TUNESMITH_REGISTRY", str(tmp_path / "reg.db"))
    assert not Recorder().off


def test_no_benchmark_writes_into_the_users_registry():
    """Each benchmark running tunesmith turns the registry off unless TUNESMITH_BENCH_REGISTRY names one."""
    from conftest import ROOT

    line = 'os.environ["TUNESMITH_REGISTRY"] = os.environ.get("TUNESMITH_BENCH_REGISTRY", "off")'
    for script in sorted((ROOT / "benchmarks").glob("*.py")):
        text = script.read_text()
        if "tunesmith" in text and script.name not in ("loop.py", "data_check.py"):  # loop keeps its own
            assert line in text, script.name
