"""`tunesmith export --quant`: the 4- and 5-bit types gguf-py writes, checked against the file llama.cpp
itself made (the default model's Q4_1 GGUF is reproduced tensor for tensor), the type rules, the error each
type costs, and the K-quants through llama.cpp's quantizer when llama-cpp-python is installed."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from test_export import IDS, cli, fields, load_gguf, peft_logits, tensors

LOW_BIT = ["q8_0", "q5_1", "q5_0", "q4_1", "q4_0"]


@pytest.fixture(scope="module")
def llama_run(tiny_model_dir, tmp_path_factory):
    from test_export import lora_run

    model_dir = tiny_model_dir("llama")
    return model_dir, lora_run(model_dir, tmp_path_factory.mktemp("run") / "run")


def test_low_bit_types_sizes_and_the_error_each_costs(llama_run, tmp_path, capsys):
    """Every 2-D weight at the type asked for, the tied embedding (the output projection too) at Q8_0, norms
    at F32; fewer bits, a smaller file and logits further from the model's -- in that order."""
    model_dir, run = llama_run
    want = peft_logits(model_dir, run)
    err, size = {}, {}
    for quant in LOW_BIT:
        out = tmp_path / f"{quant}.gguf"
        rc, stdout, _ = cli(
            capsys, "export", "--adapter", str(run), "--quant", quant.upper(), "--out", str(out)
        )
        assert rc == 0 and f", {quant}, llama, merged) in " in stdout
        meta, kinds = fields(out), {n: k for n, (k, _) in tensors(out).items()}
        assert meta["general.file_type"] == {"q8_0": 7, "q4_0": 2, "q4_1": 3, "q5_0": 8, "q5_1": 9}[quant]
        assert meta["general.quantization_version"] == 2
        assert kinds["blk.1.ffn_down.weight"] == kinds["blk.0.attn_q.weight"] == quant.upper()
        assert kinds["token_embd.weight"] == "Q8_0"  # tied: it is also the output projection
        assert kinds["blk.0.attn_norm.weight"] == kinds["output_norm.weight"] == "F32"
        model, _ = load_gguf(out)
        with torch.no_grad():
            err[quant] = float((model(IDS).logits - want).abs().max())
        size[quant] = out.stat().st_size
    assert size["q4_0"] < size["q4_1"] < size["q5_0"] < size["q5_1"] < size["q8_0"]
    assert err["q8_0"] < err["q5_1"] < err["q4_1"] and err["q8_0"] < err["q5_0"] < err["q4_0"] < 1.0, err


def test_a_row_that_is_not_whole_blocks_falls_back_to_f16():
    from gguf import GGMLQuantizationType as T

    from tunesmith.export.gguf_quant import tensor_type

    assert tensor_type("blk.0.attn_q.weight", (64, 64), "q4_0") == T.Q4_0
    assert tensor_type("blk.0.attn_q.weight", (64, 48), "q4_0") == T.F16
    assert tensor_type("output.weight", (400, 64), "q5_1", output=True) == T.Q8_0
    assert tensor_type("blk.0.attn_norm.weight", (64,), "q4_0") == T.F32
    assert tensor_type("blk.0.attn_q.lora_a", (8, 64), "q8_0") == T.Q8_0


def test_quant_refusals(llama_run, tmp_path, capsys, monkeypatch):
    model_dir, run = llama_run
    out = tmp_path / "a.gguf"
    rc, _, err = cli(
        capsys, "export", "--adapter", str(run), "--adapter-only", "--quant", "q4_0", "--out", str(out)
    )
    assert rc == 2 and err == (
        "error: --quant q4_0: a LoRA adapter GGUF is written at f32, f16, q8_0; quantize the merged model "
        "instead (drop --adapter-only)\n"
    )
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # as if llama-cpp-python were not installed
    rc, _, err = cli(capsys, "export", "--adapter", str(run), "--quant", "q4_k_m", "--out", str(out))
    assert rc == 2 and err.startswith("error: --quant q4_k_m needs llama.cpp: pip install 'tunesmith[llama]'")
    assert not out.exists() and not list(tmp_path.glob(".a.gguf*"))
    with pytest.raises(SystemExit):
        cli(capsys, "export", "--adapter", str(run), "--quant", "q3_0", "--out", str(out))
    assert "invalid choice: 'q3_0'" in capsys.readouterr().err


@pytest.mark.slow
def test_q4_1_reproduces_the_file_llama_cpp_made(tmp_path, capsys):
    """The default model comes from a Q4_1 GGUF that llama.cpp's quantizer wrote; its cached safetensors are
    that file dequantized. Exporting them at q4_1 must give back every tensor of llama.cpp's file byte for
    byte: the same type per tensor (the tied embedding at Q8_0, norms at F32) and the same blocks (gguf-py's
    quantizer is ggml's reference one)."""
    from gguf import GGUFReader

    from tunesmith.models.resolve import ALIASES, fetch_alias

    out = tmp_path / "smol.gguf"
    assert cli(capsys, "export", "--model", "smollm2-135m", "--quant", "q4_1", "--out", str(out))[0] == 0
    ref = {t.name: t for t in GGUFReader(fetch_alias(ALIASES["smollm2-135m"])).tensors}
    ours = {t.name: t for t in GGUFReader(out).tensors}
    assert set(ref) == set(ours) and len(ours) == 272
    for name, t in ref.items():
        assert ours[name].tensor_type == t.tensor_type, name
        assert np.array_equal(np.asarray(ours[name].data), np.asarray(t.data)), name
    assert fields(out)["general.file_type"] == 3


def test_the_files_name_does_not_switch_on_llama_cpps_phi3_tokenizer_rule(tiny_model_dir):
    """llama.cpp strips the whitespace after special tokens, and looks up "</s>", "<unk>", "<s>" and
    "<|endoftext|>", when general.name contains "phi3"/"phi-3": the name says so only when the tokenizer
    does."""
    from tokenizers import AddedToken
    from transformers import AutoTokenizer

    from tunesmith.export.gguf_vocab import llama_cpp_name

    tok = AutoTokenizer.from_pretrained(tiny_model_dir("phi3"))
    assert llama_cpp_name("phi3", tok) == "phi_3"  # its special tokens keep the whitespace after them
    assert llama_cpp_name("My-Phi-3-notes", tok) == "My-Phi_3-notes"
    assert llama_cpp_name("notes", tok) == "notes"
    # a tokenizer as Phi-3's own: its special tokens strip the whitespace after them, and it has the four
    specials = ["<|user|>", "<|end|>", "</s>", "<unk>", "<s>", "<|endoftext|>"]
    phi3 = SimpleNamespace(
        get_vocab=lambda: {t: i for i, t in enumerate(specials)},
        added_tokens_decoder={i: AddedToken(t, rstrip=True, special=True) for i, t in enumerate(specials)},
    )
    assert llama_cpp_name("phi3-notes", phi3) == "phi3-notes"
    assert llama_cpp_name("notes", phi3) == "notes (phi3)"
