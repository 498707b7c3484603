"""What tunesmith guarantees about a person's files and about interrupted runs (docs/guarantees.md: "What
tunesmith guarantees"): it never deletes or replaces what it did not write; a run killed at any
point resumes to the same adapter, metrics and best step as an uninterrupted one, with nothing of
ours left behind; resume refuses changed data and edited configs."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, cli, make_adapter, toy_examples, write_jsonl
from tunesmith.files import atomic

OURS = re.compile(r"\.(tmp|old)-\d+|\.partial$")


def tree(p: Path) -> dict[str, str]:
    """Every file under p (or p itself) with its sha256: 'untouched' means this is unchanged."""
    files = [p] if p.is_file() else sorted(x for x in p.rglob("*") if x.is_file())
    return {str(f): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def leftovers(root: Path) -> list[str]:
    return sorted(str(p) for p in root.rglob("*") if OURS.search(p.name))


@pytest.fixture
def data(tmp_path) -> Path:
    d = tmp_path / "data"
    write_jsonl(d / "train.jsonl", toy_examples(12))
    write_jsonl(d / "val.jsonl", toy_examples(3, seed=1))
    return d


# ---------------------------------------------------------------- --out never deletes what is not ours


def test_train_out_refuses_folders_and_paths_it_did_not_write(tiny_model_dir, data, tmp_path):
    m = str(tiny_model_dir("llama"))
    precious = tmp_path / "x" / "precious"
    precious.mkdir(parents=True)
    (precious / "thesis.docx").write_text("work")
    before = {**tree(tmp_path / "x"), **tree(data)}
    base = ["train", "--model", m, "--max-steps", "1", "--quiet"]
    cases = {
        str(
            precious
        ): f"error: --out {precious}: holds files tunesmith did not write (thesis.docx); choose a new --out "
        "(tunesmith never replaces what it did not write)\n",
        str(data): f"error: --out {data}: is the --data {data} itself; write the result somewhere else\n",
        str(
            data / "run"
        ): f"error: --out {data / 'run'}: lies inside the --data folder {data}; write the result somewhere "
        "else\n",
        str(
            tmp_path
        ): f"error: --out {tmp_path}: contains the --data {data}, which replacing it would delete; "
        "write the result somewhere else\n",
    }
    for out, message in cases.items():
        for extra in ([], ["--overwrite"]):
            r = cli(*base, "--data", str(data), "--out", out, *extra)
            assert (r.returncode, r.stderr) == (2, message), (out, extra)
    r = cli(*base, "--data", str(data / "train.jsonl"), "--out", str(data / "train.jsonl"), "--overwrite")
    assert r.returncode == 2 and "is the --data" in r.stderr
    assert {**tree(tmp_path / "x"), **tree(data)} == before
    assert not any(p.name.startswith(".") for p in tmp_path.rglob("*"))


def test_prepare_merge_and_export_refuse_to_replace_their_inputs(tiny_model_dir, tmp_path):
    src = tmp_path / "src"
    write_jsonl(src / "data.jsonl", toy_examples(20))
    (src / "notes.txt").write_text("mine")
    before = tree(src)
    r = cli("data", "prepare", str(src / "data.jsonl"), "--out", str(src), "--overwrite")
    assert (r.returncode, r.stderr) == (
        2,
        f"error: --out {src}: contains the source {src / 'data.jsonl'}, which "
        "replacing it would delete; write the result somewhere else\n",
    )
    (tmp_path / "afile").write_text("x")
    r = cli("data", "prepare", str(src / "data.jsonl"), "--out", str(tmp_path / "afile"))
    assert (r.returncode, r.stderr) == (
        2,
        f"error: --out {tmp_path / 'afile'}: exists and is a file; give a folder to create\n",
    )
    ok = cli("data", "prepare", str(src / "data.jsonl"), "--out", str(tmp_path / "prepared"))
    assert ok.returncode == 0, ok.stderr
    again = cli("data", "prepare", str(src / "data.jsonl"), "--out", str(tmp_path / "prepared"))
    assert (
        again.returncode == 2
        and "already holds a prepared data set; choose a new --out, or pass --overwrite" in again.stderr
    )
    assert (
        cli(
            "data", "prepare", str(src / "data.jsonl"), "--out", str(tmp_path / "prepared"), "--overwrite"
        ).returncode
        == 0
    )
    assert tree(src) == before

    m = tiny_model_dir("llama")
    adapter = make_adapter(m, tmp_path / "adapter", seed=1)
    held = tree(adapter)
    r = cli("merge", "--model", str(m), "--adapter", str(adapter), "--out", str(adapter), "--overwrite")
    assert (r.returncode, r.stderr) == (
        2,
        f"error: --out {adapter}: is the --adapter {adapter} itself; write the result somewhere else\n",
    )
    r = cli(
        "merge", "--model", str(m), "--adapter", str(adapter), "--out", str(tmp_path / "src"), "--overwrite"
    )
    assert r.returncode == 2 and "holds files tunesmith did not write (data.jsonl, notes.txt)" in r.stderr
    foreign = tmp_path / "someone-else.gguf"
    foreign.write_bytes(b"GGUF not ours")
    r = cli("export", "--model", str(m), "--out", str(foreign), "--overwrite")
    assert (r.returncode, r.stderr) == (
        2,
        f"error: --out {foreign}: exists and is not a GGUF file tunesmith exported; "
        "choose a new --out (tunesmith never replaces what it did not write)\n",
    )
    ours = tmp_path / "ours.gguf"
    assert cli("export", "--model", str(m), "--out", str(ours)).returncode == 0
    assert cli("export", "--model", str(m), "--out", str(ours), "--overwrite").returncode == 0
    assert tree(adapter) == held and foreign.read_bytes() == b"GGUF not ours" and tree(src) == before
    assert leftovers(tmp_path) == []


# ---------------------------------------------------------------- kill at every point, resume, same result

ARGS = [
    "--data",
    "{data}",
    "--batch-size",
    "2",
    "--epochs",
    "2",
    "--max-steps",
    "10",
    "--save-every",
    "5",
    "--eval-every-steps",
    "4",
    "--lr",
    "3e-3",
    "--threads",
    "1",
    "--quiet",
]
# (point, n-th time it is reached, extra environment). The run: 6 steps an epoch, 10 steps, validations at
# steps 0, 4, 6 (epoch end), 8, 10; checkpoints at 5, 6, 10 (--save-every), 10 again (epoch end).
POINTS = [
    ("config.write", 1, {}),  # inputs.json written, config.yaml not yet: before any checkpoint
    ("checkpoint.file", 2, {}),  # inside a checkpoint: weights written, state.json not
    ("checkpoint.written", 1, {}),  # a whole temp checkpoint, not yet renamed
    # the final step's checkpoint, before the last validation (issue 17, point 2)
    ("checkpoint.saved", 3, {}),
    ("validation", 4, {}),  # during a validation
    ("swap.exchanged", 2, {}),  # a directory swapped, the old one not yet removed
    # the fallback swap, between its two renames
    ("swap.between", 2, {"TUNESMITH_TEST_NO_RENAME_EXCHANGE": "1"}),
    ("finish.before_swap", 1, {}),  # a finished run, not yet in --out
]


def _train(args: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    if "TUNESMITH_TEST_KILL_AT" not in (env or {}):
        return cli("train", *args, env=env)
    return subprocess.run(  # the process kills itself at the point: one of its own
        [sys.executable, "-m", "tunesmith.cli", "train", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=ROOT,
        timeout=600,
    )


def _outcome(run: Path) -> tuple:
    from safetensors.torch import load_file

    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    for r in recs:
        r.pop("tokens_per_s", None)
    info = json.loads((run / "tunesmith-run.json").read_text())
    weights = {k: v.tolist() for k, v in load_file(str(run / "adapter_model.safetensors")).items()}
    return recs, info["result"]["best"], info["adapter"], weights


@pytest.fixture(scope="module")
def reference(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("kill")
    write_jsonl(root / "data" / "train.jsonl", toy_examples(12))
    write_jsonl(root / "data" / "val.jsonl", toy_examples(3, seed=1))
    args = ["--model", str(tiny_model_dir("llama")), *(a.format(data=root / "data") for a in ARGS)]
    r = _train([*args, "--out", str(root / "ref")])
    assert r.returncode == 0, r.stderr
    return root, args, _outcome(root / "ref")


@pytest.mark.parametrize("point,nth,env", POINTS, ids=[p[0] for p in POINTS])
def test_a_kill_at_any_point_resumes_to_the_same_run(reference, point, nth, env, tmp_path):
    root, args, want = reference
    run = tmp_path / "run"
    killed = _train([*args, "--out", str(run)], env={"TUNESMITH_TEST_KILL_AT": f"{point}@{nth}", **env})
    assert killed.returncode == -signal.SIGKILL, f"{point} was never reached: {killed.stderr}"
    if point != "finish.before_swap":
        assert not run.exists()
    r = _train(["--resume", str(run), "--quiet"], env=env)
    assert r.returncode == 0, r.stderr
    assert _outcome(run) == want
    assert leftovers(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


# ---------------------------------------------------------------- resume refuses what changed


def test_resume_refuses_changed_data_unless_allowed_and_recorded(tiny_model_dir, data, tmp_path):
    run = tmp_path / "run"
    args = ["--model", str(tiny_model_dir("llama")), *(a.format(data=data) for a in ARGS)]
    assert (
        _train([*args, "--out", str(run)], env={"TUNESMITH_TEST_KILL_AT": "checkpoint.saved@1"}).returncode
        == -signal.SIGKILL
    )
    lines = (data / "train.jsonl").read_text().splitlines(keepends=True)
    (data / "train.jsonl").write_text("".join(lines[:6]))  # half the lines gone
    r = _train(["--resume", str(run)])
    assert (r.returncode, r.stderr) == (
        2,
        f"error: --resume {run}: the data changed since the run started: "
        f"{data / 'train.jsonl'} (changed); restore it, or pass --allow-changed-data "
        "to continue on the new data (recorded in the run)\n",
    )
    r = _train(["--resume", str(run), "--allow-changed-data", "--quiet"])
    assert r.returncode == 0, r.stderr
    info = json.loads((run / "tunesmith-run.json").read_text())
    assert info["resumes"][0]["changed_data"] == [str(data / "train.jsonl")]
    assert info["resumes"][0]["checkpoint"] == "step-0000005"
    assert [d["path"] for d in info["data"]] == [str(data / "train.jsonl"), str(data / "val.jsonl")]
    assert info["data"][0]["sha256"] == hashlib.sha256("".join(lines).encode()).hexdigest()
    r = cli("train", "--data", str(data), "--out", str(tmp_path / "other"), "--allow-changed-data")
    assert (
        r.stderr
        == "error: --allow-changed-data goes with --resume: it continues an interrupted run on data that "
        "changed\n"
    )


def test_resume_refuses_an_edited_config_and_restores_a_damaged_one(tiny_model_dir, data, tmp_path):
    run = tmp_path / "run"
    args = ["--model", str(tiny_model_dir("llama")), *(a.format(data=data) for a in ARGS)]
    assert (
        _train([*args, "--out", str(run)], env={"TUNESMITH_TEST_KILL_AT": "checkpoint.saved@1"}).returncode
        == -signal.SIGKILL
    )
    saved = tmp_path / ".run.partial" / "config.yaml"
    good = saved.read_text()
    saved.write_text(good.replace("lr: 0.003\n", "lr: 0.01\n"))
    r = _train(["--resume", str(run)])
    assert (r.returncode, r.stderr) == (
        2,
        f"error: {saved}: edited since the run started (lr 0.003 -> 0.01); a resumed run "
        "continues with the settings it started with (its optimizer and schedule are in "
        "the checkpoint): undo the edit, or start a new run\n",
    )
    saved.write_text("")  # what a kill during an in-place write used to leave
    r = _train(["--resume", str(run), "--quiet"])
    assert r.returncode == 0, r.stderr
    assert r.stderr == f"{saved}: was damaged; restored from inputs.json\n"
    assert (run / "config.yaml").read_text() == good


def test_dpo_resume_checks_data_and_config_the_same_way(tiny_model_dir, tmp_path):
    d = tmp_path / "prefs"
    rows = [
        {"prompt": f"Write the notes {i}.", "chosen": f"Meeting Summary: item {i}.", "rejected": f"no {i}"}
        for i in range(12)
    ]
    write_jsonl(d / "train.jsonl", rows[:10])
    write_jsonl(d / "val.jsonl", rows[10:])
    run = tmp_path / "run"
    args = [
        "--method",
        "dpo",
        "--allow-few-pairs",
        "--model",
        str(tiny_model_dir("llama")),
        "--data",
        str(d),
        "--epochs",
        "2",
        "--batch-size",
        "2",
        "--save-every",
        "2",
        "--threads",
        "1",
        "--quiet",
        "--out",
        str(run),
    ]
    assert _train(args, env={"TUNESMITH_TEST_KILL_AT": "checkpoint.saved@1"}).returncode == -signal.SIGKILL
    (d / "val.jsonl").write_text((d / "val.jsonl").read_text().replace("no 10", "nope 10"))
    r = _train(["--resume", str(run)])
    assert r.returncode == 2 and r.stderr.startswith(
        f"error: --resume {run}: the data changed since the run started: {d / 'val.jsonl'} (changed)"
    ), r.stderr
    r = _train(["--resume", str(run), "--allow-changed-data", "--quiet"])
    assert r.returncode == 0, r.stderr
    info = json.loads((run / "tunesmith-run.json").read_text())
    assert info["method"] == "dpo" and info["resumes"][0]["changed_data"] == [str(d / "val.jsonl")]
    assert leftovers(tmp_path) == []


# ---------------------------------------------------------------- leftovers and the swap


def test_sweep_removes_only_our_temporaries_of_dead_processes(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout.strip()
    live = str(os.getpid())
    for name in [
        f".run.tmp-{dead}-abc",
        f".best.tmp-{dead}-x",
        f".run.tmp-{live}-abc",
        ".run.tmp-abc",
        "run.tmp-1-x",
        ".notes.txt",
        f".gone.old-{dead}",
    ]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "f").write_text(name)
    (tmp_path / f".model.gguf.tmp-{dead}-q").write_text("half a GGUF")
    removed = atomic.sweep(tmp_path)
    assert sorted(p.name for p in removed) == sorted(
        [f".run.tmp-{dead}-abc", f".best.tmp-{dead}-x", f".model.gguf.tmp-{dead}-q"]
    )
    # a live process's temp, a name we would not write, and a stranger's file stay; a killed swap's old output
    # is put back
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f".run.tmp-{live}-abc", ".run.tmp-abc", "run.tmp-1-x", ".notes.txt", "gone"]
    )
    assert (tmp_path / "gone" / "f").read_text() == f".gone.old-{dead}"


def test_replace_dir_swaps_in_one_step_and_falls_back(tmp_path, monkeypatch):
    for fallback in (False, True):
        if fallback:
            monkeypatch.setenv("TUNESMITH_TEST_NO_RENAME_EXCHANGE", "1")
        final, tmp = tmp_path / f"out{fallback}", tmp_path / f"new{fallback}"
        final.mkdir()
        (final / "a").write_text("old")
        tmp.mkdir()
        (tmp / "a").write_text("new")
        atomic.replace_dir(tmp, final)
        assert (final / "a").read_text() == "new" and not tmp.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outFalse", "outTrue"]


# ---------------------------------------------------------------- disk full


@pytest.fixture
def small_disk(tmp_path):
    """A 70 MB tmpfs, where this machine lets us mount one."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to mount a small tmpfs")
    small = tmp_path / "small"
    small.mkdir()
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=70m", "tmpfs", str(small)], capture_output=True
    ).returncode:
        pytest.skip("this machine does not allow mounting a tmpfs")
    yield small
    subprocess.run(["umount", "-l", str(small)])


def fill(disk: Path, leave: int = 0) -> Path:
    ballast = disk / "ballast"
    with open(ballast, "wb", buffering=0) as f:
        try:
            f.write(b"\0" * max(0, shutil.disk_usage(disk).free - leave))
            while leave == 0:
                f.write(b"\0" * 4096)
        except OSError:
            pass
    return ballast


def test_disk_full_while_writing_a_checkpoint_names_it_and_keeps_the_last_one(tiny_model_dir, small_disk):
    import torch
    from transformers import AutoModelForCausalLM

    from tunesmith.errors import UserError
    from tunesmith.train import checkpoint

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir("llama"))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    root = small_disk / "checkpoints"
    checkpoint.save(root / "step-0000001", model, opt, sched, {"step": 1})
    first = tree(root)
    fill(small_disk)
    with pytest.raises(UserError) as e:
        checkpoint.save(root / "step-0000002", model, opt, sched, {"step": 2})
    assert re.fullmatch(
        rf"{root}: disk full while writing a checkpoint \(needs about [\d,]+ MB, 0 MB free\); the last "
        rf"good checkpoint, {root / 'step-0000001'}, is intact; free some space, then `tunesmith train "
        r"--resume`",
        str(e.value),
    ), e.value
    assert tree(root) == first and leftovers(small_disk) == []
    assert checkpoint.load(root / "step-0000001", model, opt, sched) == {"step": 1}


def test_a_run_that_fills_the_disk_stops_in_one_line_and_resumes(tiny_model_dir, data, small_disk):
    args = ["--model", str(tiny_model_dir("llama")), *(a.format(data=data) for a in ARGS)]
    run = small_disk / "run"
    # stopped (SIGSTOP) right after its first checkpoint; the disk fills; it goes on
    proc = subprocess.Popen(
        [sys.executable, "-m", "tunesmith.cli", "train", *args, "--out", str(run)],
        cwd=ROOT,
        env={
            **os.environ,
            "TUNESMITH_TEST_KILL_AT": "checkpoint.saved@1",
            "TUNESMITH_TEST_KILL_SIGNAL": "SIGSTOP",
        },
        stderr=subprocess.PIPE,
        text=True,
    )
    stat = Path(f"/proc/{proc.pid}/stat")
    while proc.poll() is None and stat.read_text().rsplit(")", 1)[1].split()[0] != "T":
        pass
    ballast = fill(small_disk)
    os.kill(proc.pid, signal.SIGCONT)
    err = proc.communicate(timeout=300)[1]
    assert proc.returncode in (1, 2), err
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "disk full" in err, err
    ballast.unlink()
    r = _train(["--resume", str(run), "--quiet"])
    assert r.returncode == 0, r.stderr
    assert leftovers(small_disk) == []
