"""Hostile and broken model folders: each is refused before transformers reads a weight, with one
line naming the folder or the file and what is wrong, never a traceback and never a pickle load."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest

from tunesmith.cli import main


def cli(capsys, *args: str) -> tuple[int, str, str]:
    rc = main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


def _header(n: int, rest: bytes = b"") -> bytes:
    return struct.pack("<Q", n) + rest


def _pickle_bytes() -> bytes:
    import io

    import torch

    buf = io.BytesIO()
    torch.save({"model.embed_tokens.weight": torch.zeros(2, 2)}, buf)
    return buf.getvalue()


def _set_json(path: Path, **changes) -> None:
    d = json.loads(path.read_text())
    d.update(changes)
    path.write_text(json.dumps(d))


def _weights(m: Path) -> Path:
    return m / "model.safetensors"


def _shape_mismatch(m: Path) -> None:
    import transformers as tf

    cfg = tf.AutoConfig.from_pretrained(m)
    cfg.intermediate_size = 96  # the weights of another size of model
    tf.AutoModelForCausalLM.from_config(cfg).save_pretrained(m / "other")
    shutil.move(m / "other" / "model.safetensors", _weights(m))
    shutil.rmtree(m / "other")


def _offsets_outside(m: Path) -> None:
    raw = _weights(m).read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    name = next(k for k in header if k != "__metadata__")
    begin, end = header[name]["data_offsets"]
    header[name]["data_offsets"] = [begin, end + 10**9]
    h = json.dumps(header).encode()
    _weights(m).write_bytes(struct.pack("<Q", len(h)) + h + raw[8 + n :])


def _index(m: Path, files: dict) -> None:
    (m / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": files}))


# name: (how to break a good tiny model folder, what the one line must contain)
HOSTILE = {
    "pickle named model.safetensors": (
        lambda m: _weights(m).write_bytes(_pickle_bytes()),
        "model.safetensors: not a valid safetensors file",
    ),
    "index names a pickle": (
        lambda m: (
            _index(m, {"model.embed_tokens.weight": "pytorch_model.bin"}),
            (m / "pytorch_model.bin").write_bytes(_pickle_bytes()),
        ),
        "model.safetensors.index.json: names 'pytorch_model.bin'; only .safetensors files",
    ),
    "index names a file outside": (
        lambda m: _index(m, {"x": "../model.safetensors"}),
        "names '../model.safetensors'",
    ),
    "index names a missing file": (
        lambda m: _index(m, {"x": "model-00002.safetensors"}),
        "names model-00002.safetensors, which is not in",
    ),
    "index is not JSON": (
        lambda m: (m / "model.safetensors.index.json").write_text("{oops"),
        "model.safetensors.index.json: not valid JSON",
    ),
    "index without weight_map": (
        lambda m: (m / "model.safetensors.index.json").write_text("{}"),
        "expected a weight_map",
    ),
    "weights cut in half": (
        lambda m: _weights(m).write_bytes(_weights(m).read_bytes()[: _weights(m).stat().st_size // 2]),
        "model.safetensors: not a valid safetensors file",
    ),
    "empty weights": (lambda m: _weights(m).write_bytes(b""), "(0 bytes; the file is empty or cut short)"),
    "20-byte weights": (
        lambda m: _weights(m).write_bytes(b"\x01" * 20),
        "model.safetensors: not a valid safetensors file",
    ),
    "header of 2^63 bytes": (
        lambda m: _weights(m).write_bytes(_header(2**63, b"{}")),
        "its header claims 9,223,372,036,854,775,808 bytes",
    ),
    "header of 99 MB": (
        lambda m: _weights(m).write_bytes(_header(99_000_000, b"{}")),
        "its header claims 99,000,000 bytes",
    ),
    "header of 100 GB": (
        lambda m: _weights(m).write_bytes(_header(100 << 30, b"{}")),
        "its header claims 107,374,182,400 bytes",
    ),
    "header not JSON": (
        lambda m: _weights(m).write_bytes(_header(4, b"\x80\x04K.")),
        "(its header is not JSON)",
    ),
    "header a JSON list": (
        lambda m: _weights(m).write_bytes(_header(2, b"[]")),
        "(its header is not a JSON object)",
    ),
    "tensor outside the file": (_offsets_outside, "lies outside the file or does not match its shape"),
    "unknown dtype": (
        lambda m: _weights(m).write_bytes(
            _header(
                len(b'{"w":{"dtype":"X9","shape":[1],"data_offsets":[0,1]}}'),
                b'{"w":{"dtype":"X9","shape":[1],"data_offsets":[0,1]}}',
            )
            + b"\0"
        ),
        "tensor 'w' lies outside the file or does not match its shape",
    ),
    "only pickle weights": (
        lambda m: (_weights(m).unlink(), (m / "pytorch_model.bin").write_bytes(_pickle_bytes())),
        "no .safetensors weights (found pytorch_model.bin: pickle files are not loaded, for safety)",
    ),
    "config.json not JSON": (
        lambda m: (m / "config.json").write_text("model_type: llama"),
        "config.json: not valid JSON",
    ),
    "config.json a list": (
        lambda m: (m / "config.json").write_text("[1]"),
        "config.json: expected a JSON object",
    ),
    "no config.json": (
        lambda m: (m / "config.json").unlink(),
        "no config.json; expected a Hugging Face model directory",
    ),
    "unknown model_type": (
        lambda m: _set_json(m / "config.json", model_type="llama-9000"),
        "config.json: model_type 'llama-9000' is not an architecture this version of transformers knows",
    ),
    "no model_type": (
        lambda m: _set_json(m / "config.json", model_type=None),
        "model_type None is not an architecture",
    ),
    "code without --trust-remote-code": (
        lambda m: _set_json(m / "config.json", auto_map={"AutoModelForCausalLM": "evil.Model"}),
        "ships its own Python code (auto_map in config.json); pass --trust-remote-code",
    ),
    "weights of another shape": (
        _shape_mismatch,
        "cannot load this model (model.safetensors holds model.layers.0.mlp.",
    ),
    "tokenizer code without tokenizer.json": (
        lambda m: (
            (m / "tokenizer.json").unlink(),
            _set_json(
                m / "tokenizer_config.json",
                auto_map={"AutoTokenizer": ["evil.Tok", None]},
                tokenizer_class="EvilTokenizer",
            ),
        ),
        "cannot load its tokenizer",
    ),
    "tokenizer.json not JSON": (
        lambda m: (m / "tokenizer.json").write_text("{"),
        "cannot load its tokenizer",
    ),
}


@pytest.fixture
def hostile(tiny_model_dir, tmp_path):
    def build(name: str) -> Path:
        m = tmp_path / "model"
        shutil.copytree(tiny_model_dir("llama"), m)
        HOSTILE[name][0](m)
        return m

    return build


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_a_hostile_model_folder_is_one_line_naming_it(name, hostile, capsys, monkeypatch):
    import torch

    m = hostile(name)
    capsys.readouterr()  # building the tiny model (the first test of a run does) writes a progress bar
    loads = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(a) or real(*a, **k))
    rc, out, err = cli(capsys, "generate", "--model", str(m), "hello", "--max-new-tokens", "2")
    assert rc == 2 and out == "", err
    assert len(err.splitlines()) == 1 and err.startswith(f"error: {m}"), err
    assert HOSTILE[name][1] in err, err
    assert loads == [], "a pickle was loaded"


@pytest.mark.parametrize(
    "name",
    ["tokenizer code without tokenizer.json", "code without --trust-remote-code", "index names a pickle"],
)
def test_data_check_and_export_refuse_them_too(name, hostile, capsys, tmp_path):
    m = hostile(name)
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"prompt": "a", "completion": "b"}) + "\n")
    for args in (
        ["data", "check", str(data), "--max-length", "64", "--model", str(m)],
        ["export", "--model", str(m), "--out", str(tmp_path / "x.gguf")],
    ):
        rc, out, err = cli(capsys, *args)
        assert rc == 2 and len(err.splitlines()) == 1 and err.startswith(f"error: {m}"), (args, err)
        assert HOSTILE[name][1] in err
    assert not (tmp_path / "x.gguf").exists()
