"""`tunesmith merge` and `tunesmith export`, checked by readers that are not tunesmith.

merge:  plain `AutoModelForCausalLM.from_pretrained(out)` must give the logits of base + adapter
        (PEFT's own forward, adapter not merged) within 1e-4 in float32, and the same greedy text.
export: transformers' GGUF loader (which also undoes llama.cpp's q/k permutation) must give the
        logits of the model tunesmith serves: float32 within 1e-4 (it is exact: 0.0 measured),
        f16 within 5e-3 and q8_0 within 5e-2 (logits of the tiny models are of size ~1; measured
        2.3e-4 and 7e-3), and the same greedy tokens for f32/f16.
        The LoRA adapter GGUF is checked tensor by tensor against the merged file:
        W_merged = W_base + alpha/r * B @ A (in GGUF layout, permutation included) within 1e-5.
llama.cpp: tests/test_llama_cpp.py (when llama-cpp-python is installed: `make llama`, as .ci/run does).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import toy_examples, write_jsonl
from tunesmith.cli import main
from tunesmith.errors import UserError
from tunesmith.export.gguf import ExportSpec, export
from tunesmith.models.loading import RUN_INFO

IDS = torch.tensor([[1, 5, 9, 20, 33, 100, 200, 7, 42, 64, 128, 3]])
MERGE_TOL = 1e-4
GGUF_TOL = {"f32": 1e-4, "f16": 5e-3, "q8_0": 5e-2}


# ---------------------------------------------------------------- helpers


def lora_run(
    model_dir: Path,
    run: Path,
    *,
    r: int = 8,
    alpha: int = 16,
    rslora: bool = False,
    seed: int = 1,
    targets="all-linear",
) -> Path:
    """A run dir with a LoRA adapter whose A and B are both random (a freshly trained adapter has
    B near zero, too weak to show a wrong merge or a wrong q/k permutation)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    cfg = LoraConfig(
        r=r,
        lora_alpha=alpha,
        target_modules=targets,
        init_lora_weights=False,
        use_rslora=rslora,
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(base, cfg)
    with torch.no_grad():  # PEFT's random init of B is small; make every adapted weight move for real
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    model.save_pretrained(run)
    (run / RUN_INFO).write_text(json.dumps({"model": str(model_dir), "method": "lora"}))
    return run


def peft_logits(model_dir: Path, run: Path | None, ids=IDS) -> torch.Tensor:
    """Logits of base (+ adapter, applied by PEFT's forward, not merged)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    if run is not None:
        model = PeftModel.from_pretrained(model, run).eval()
    with torch.no_grad():
        return model(ids).logits


def hf_logits(path: Path, ids=IDS, **kw) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **kw).eval()
    with torch.no_grad():
        return model(ids).logits


def load_gguf(path: Path, **config_overrides):
    """The GGUF file read by transformers' loader: the independent reader."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
    for key, value in config_overrides.items():  # what the reader does not take from the file
        setattr(config, key, value)
    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, config=config, dtype=torch.float32
    ).eval()
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return model, tok


def greedy(model, ids: torch.Tensor, n: int = 16) -> list[int]:
    with torch.no_grad():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=n,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
    return out[0, ids.shape[1] :].tolist()


def fields(path: Path) -> dict:
    from gguf import GGUFReader

    reader = GGUFReader(path)
    out = {}
    for k, f in reader.fields.items():
        if k.startswith("GGUF."):
            continue
        v = f.contents()
        out[k] = v
    return out


def tensors(path: Path) -> dict:
    from gguf import GGUFReader, dequantize

    reader = GGUFReader(path)
    return {
        t.name: (t.tensor_type.name, dequantize(t.data, t.tensor_type).astype(np.float32))
        for t in reader.tensors
    }


def cli(capsys, *argv) -> tuple[int, str, str]:
    rc = main(list(argv))
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


@pytest.fixture(scope="module")
def llama_run(tiny_model_dir, tmp_path_factory):
    model_dir = tiny_model_dir("llama")
    return model_dir, lora_run(model_dir, tmp_path_factory.mktemp("run") / "run")


# ---------------------------------------------------------------- merge


def test_merge_gives_a_plain_hf_model_with_base_plus_adapter_logits(llama_run, tmp_path, capsys):
    model_dir, run = llama_run
    out = tmp_path / "merged"
    rc, stdout, _ = cli(capsys, "merge", "--adapter", str(run), "--out", str(out))
    assert rc == 0
    assert stdout.startswith(f"wrote {out}/ (") and "safetensors, float32, llama" in stdout
    names = sorted(p.name for p in out.iterdir())
    assert "model.safetensors" in names and "config.json" in names and "tokenizer.json" in names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth"))], "weights are safetensors only"
    assert not [n for n in names if n.startswith("adapter")], "a merged model, not an adapter"
    assert not list(tmp_path.glob(".merged.tmp-*")), "no temp dir left behind"
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    assert tok.chat_template == AutoTokenizer.from_pretrained(model_dir).chat_template
    assert json.loads((out / "config.json").read_text())["model_type"] == "llama"

    base = peft_logits(model_dir, None)
    tuned = peft_logits(model_dir, run)
    merged = hf_logits(out)
    assert (tuned - base).abs().max() > 100 * MERGE_TOL, (
        "the adapter must matter, or this test proves nothing"
    )
    assert (merged - tuned).abs().max() < MERGE_TOL

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(out).eval()
    ref = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), run).eval()
    assert greedy(plain, IDS) == greedy(ref, IDS)


def test_merge_keeps_rslora_scaling(tiny_model_dir, tmp_path, capsys):
    model_dir = tiny_model_dir("qwen2")
    run = lora_run(model_dir, tmp_path / "run", r=4, alpha=8, rslora=True)
    assert cli(capsys, "merge", "--adapter", str(run), "--out", str(tmp_path / "m"))[0] == 0
    assert (hf_logits(tmp_path / "m") - peft_logits(model_dir, run)).abs().max() < MERGE_TOL


def test_merge_refuses_prompt_tuning(tiny_model_dir, tmp_path, capsys):
    from peft import PromptTuningConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    run = tmp_path / "pt"
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir("llama")),
        PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4),
    )
    model.save_pretrained(run)
    for cmd in (["merge", "--out", str(tmp_path / "m")], ["export", "--out", str(tmp_path / "m.gguf")]):
        rc, _, err = cli(capsys, *cmd, "--adapter", str(run))
        assert rc == 2
        assert err == (
            f"error: --adapter {run}: a prompt-tuning adapter adds learned virtual tokens to every prompt; "
            "it changes "
            "no weights, so it cannot be merged into the model or exported. Use it with `tunesmith "
            "generate/serve "
            f"--adapter {run}`, or train with --method lora to get a mergeable adapter\n"
        )
    assert not (tmp_path / "m").exists() and not (tmp_path / "m.gguf").exists()


def test_merge_of_a_full_run_says_it_is_already_a_model(tiny_model_dir, tmp_path, capsys):
    full = tmp_path / "full-run"
    shutil.copytree(tiny_model_dir("llama"), full)
    rc, _, err = cli(capsys, "merge", "--adapter", str(full), "--out", str(tmp_path / "m"))
    assert rc == 2
    assert err == (
        f"error: --adapter {full}: this run (method full or freeze) is already a standalone Hugging Face "
        "model "
        f"directory; there is nothing to merge. Load it as it is, or export it with "
        f"`tunesmith export --model {full} --out FILE.gguf`\n"
    )


def test_merge_refuses_an_existing_out_and_overwrite_replaces_it(llama_run, tmp_path, capsys):
    _, run = llama_run
    out = tmp_path / "merged"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    for extra in ([], ["--overwrite"]):  # a folder of someone else's files is never replaced
        rc, _, err = cli(capsys, "merge", "--adapter", str(run), "--out", str(out), *extra)
        assert rc == 2
        assert err == (
            f"error: --out {out}: holds files tunesmith did not write (keep.txt); choose a new --out "
            "(tunesmith never replaces what it did not write)\n"
        )
    assert (out / "keep.txt").read_text() == "mine"
    (out / "keep.txt").unlink()
    assert cli(capsys, "merge", "--adapter", str(run), "--out", str(out))[0] == 0  # an empty folder is fine
    rc, _, err = cli(capsys, "merge", "--adapter", str(run), "--out", str(out))
    assert rc == 2 and err == (
        f"error: --out {out}: already holds a merged model; choose a new --out, or pass --overwrite "
        "(the old one is replaced only once the new one is complete)\n"
    )
    first = (out / "model.safetensors").stat().st_ino
    assert cli(capsys, "merge", "--adapter", str(run), "--out", str(out), "--overwrite")[0] == 0
    assert (out / "model.safetensors").is_file() and (out / "model.safetensors").stat().st_ino != first
    rc, _, err = cli(capsys, "merge", "--adapter", str(run), "--out", str(run), "--overwrite")
    assert (
        rc == 2
        and err == f"error: --out {run}: is the --adapter {run} itself; write the result somewhere else\n"
    )
    assert (run / "adapter_model.safetensors").is_file()


def test_merge_missing_adapter_dir(tmp_path, capsys):
    rc, _, err = cli(capsys, "merge", "--adapter", str(tmp_path / "nope"), "--out", str(tmp_path / "m"))
    assert rc == 2 and err == f"error: --adapter {tmp_path / 'nope'}: no such directory\n"


# ---------------------------------------------------------------- export: merged model


@pytest.mark.parametrize("quant", ["f32", "f16", "q8_0"])
def test_export_merged_gguf_reads_back_with_the_same_logits(llama_run, tmp_path, capsys, quant):
    model_dir, run = llama_run
    out = tmp_path / f"model-{quant}.gguf"
    rc, stdout, _ = cli(capsys, "export", "--adapter", str(run), "--quant", quant, "--out", str(out))
    assert rc == 0
    assert stdout.startswith(f"wrote {out} (") and f", {quant}, llama, merged) in " in stdout
    assert not list(tmp_path.glob(f".{out.name}.tmp-*"))

    meta = fields(out)
    assert meta["general.architecture"] == "llama" and meta["general.type"] == "model"
    assert meta["general.file_type"] == {"f32": 0, "f16": 1, "q8_0": 7}[quant]
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "gpt-2"
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    assert meta["tokenizer.chat_template"] == tok.chat_template
    assert (
        meta["tokenizer.ggml.bos_token_id"] == tok.bos_token_id == tok.convert_tokens_to_ids("<|im_start|>")
    )
    assert meta["tokenizer.ggml.eos_token_id"] == tok.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")
    assert meta["tokenizer.ggml.add_bos_token"] is False
    assert len(meta["tokenizer.ggml.tokens"]) == len(tok) and meta["tokenizer.ggml.tokens"][2] == "<|im_end|>"
    assert meta["tokenizer.ggml.token_type"][:3] == [3, 3, 3]  # control tokens
    assert meta["llama.attention.head_count"] == 4 and meta["llama.attention.head_count_kv"] == 2
    kinds = {name: kind for name, (kind, _) in tensors(out).items()}
    assert kinds["blk.0.attn_norm.weight"] == "F32" and kinds["output_norm.weight"] == "F32"
    assert kinds["blk.0.attn_q.weight"] == {"f32": "F32", "f16": "F16", "q8_0": "Q8_0"}[quant]
    assert "output.weight" not in kinds, "tied embeddings: llama.cpp reuses token_embd"

    tuned = peft_logits(model_dir, run)
    model, gtok = load_gguf(out)
    with torch.no_grad():
        back = model(IDS).logits
    assert (back - tuned).abs().max() < GGUF_TOL[quant]
    text = "Meeting Summary: The team discussed the budget."
    assert (
        gtok(text, add_special_tokens=False)["input_ids"] == tok(text, add_special_tokens=False)["input_ids"]
    )
    if quant != "q8_0":
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        ref = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), run).eval()
        assert greedy(model, IDS) == greedy(ref, IDS)


def test_export_without_permutation_would_be_caught(llama_run, tmp_path, capsys, monkeypatch):
    """The round trip is a real check: skip llama.cpp's q/k permutation and the logits go wrong
    by far more than the f32 tolerance."""
    from tunesmith.export import gguf_arch

    model_dir, run = llama_run
    monkeypatch.setattr(gguf_arch, "permute", lambda w, n: w)
    out = tmp_path / "wrong.gguf"
    assert cli(capsys, "export", "--adapter", str(run), "--quant", "f32", "--out", str(out))[0] == 0
    back, _ = load_gguf(out)
    with torch.no_grad():
        assert (back(IDS).logits - peft_logits(model_dir, run)).abs().max() > 100 * GGUF_TOL["f32"]


@pytest.mark.parametrize("family", ["qwen2", "qwen3", "phi3"])
def test_export_other_families(family, tiny_model_dir, tmp_path, capsys):
    model_dir = tiny_model_dir(family)
    run = lora_run(model_dir, tmp_path / "run")
    out = tmp_path / f"{family}.gguf"
    assert cli(capsys, "export", "--adapter", str(run), "--quant", "f32", "--out", str(out))[0] == 0
    meta = fields(out)
    assert meta["general.architecture"] == family
    assert meta["tokenizer.ggml.pre"] == ("qwen2" if family == "qwen2" else "gpt-2")
    # transformers' GGUF loader ignores qwen3's attention.key_length (which llama.cpp reads) and would
    # fall back to Qwen3Config's default head_dim of 128; the file states 16, so tell the reader
    extra = {"head_dim": meta["qwen3.attention.key_length"]} if family == "qwen3" else {}
    model, _ = load_gguf(out, **extra)
    with torch.no_grad():
        back = model(IDS).logits
    assert (back - peft_logits(model_dir, run)).abs().max() < GGUF_TOL["f32"]


def test_phi4_mini_shape_exports_longrope_and_partial_rotary(tiny_model_dir, tmp_path, capsys):
    """Phi-4-mini's architecture: phi3 with 3/4 of each head rotated and LongRoPE. The file states the rotated
    dimensions, the original context, LongRoPE's attention factor and both factor tensors, as llama.cpp's
    converter writes them; read back with those RoPE settings, the weights give the model's logits."""
    import math

    from transformers import AutoConfig

    model_dir = tiny_model_dir("phi4mini")
    run = lora_run(model_dir, tmp_path / "run")
    out = tmp_path / "phi4.gguf"
    assert cli(capsys, "export", "--adapter", str(run), "--quant", "f32", "--out", str(out))[0] == 0
    meta, config = fields(out), AutoConfig.from_pretrained(model_dir)
    rope = config.rope_parameters
    assert meta["phi3.rope.dimension_count"] == 12  # 0.75 × 16
    assert meta["phi3.rope.scaling.original_context_length"] == 256
    assert meta["phi3.context_length"] == config.max_position_embeddings == 1024
    assert meta["phi3.rope.scaling.attn_factor"] == pytest.approx(math.sqrt(1 + math.log(4) / math.log(256)))
    T = tensors(out)
    assert np.allclose(T["rope_factors_long.weight"][1], rope["long_factor"])
    assert np.allclose(T["rope_factors_short.weight"][1], rope["short_factor"])
    assert "output.weight" not in T  # tied, as Phi-4-mini
    # transformers' GGUF reader ignores phi3's RoPE keys: give it the model's, and compare the weights' logits
    model, _ = load_gguf(
        out, partial_rotary_factor=0.75, rope_parameters=dict(rope), original_max_position_embeddings=256
    )
    with torch.no_grad():
        back = model(IDS).logits
    assert (back - peft_logits(model_dir, run)).abs().max() < GGUF_TOL["f32"]


def test_gemma3_exports_shifted_norms_and_its_sliding_window(tiny_model_dir, tmp_path, capsys):
    """Gemma's RMSNorm scales by (1 + w): llama.cpp's gemma3 graph by w, so every norm weight is written + 1
    (its converter's rule); the sliding window is stated; read back, the weights give the model's logits."""
    from transformers import AutoModelForCausalLM

    model_dir = tiny_model_dir("gemma3")
    run = lora_run(model_dir, tmp_path / "run")
    out = tmp_path / "g.gguf"
    assert cli(capsys, "export", "--adapter", str(run), "--quant", "f32", "--out", str(out))[0] == 0
    meta, T = fields(out), tensors(out)
    assert meta["general.architecture"] == "gemma3" and meta["gemma3.attention.sliding_window"] == 64
    assert meta["gemma3.attention.key_length"] == 16
    hf = AutoModelForCausalLM.from_pretrained(model_dir).state_dict()
    for name, gname in [
        ("model.norm.weight", "output_norm.weight"),
        ("model.layers.0.self_attn.q_norm.weight", "blk.0.attn_q_norm.weight"),
        ("model.layers.1.post_feedforward_layernorm.weight", "blk.1.post_ffw_norm.weight"),
    ]:
        assert np.allclose(T[gname][1], hf[name].numpy() + 1, atol=1e-6), gname
    # transformers' reader takes 1 back off the norms, and not Gemma 3's attention scale from the file
    model, _ = load_gguf(out, query_pre_attn_scalar=16, head_dim=16)
    with torch.no_grad():
        back = model(IDS).logits
    assert (back - peft_logits(model_dir, run)).abs().max() < GGUF_TOL["f32"]


def test_llama_3_2_shape_exports_its_rope_frequency_factors(tiny_model_dir, tmp_path, capsys):
    """Llama 3.1/3.2 scale RoPE's low frequencies (rope_type llama3): the file carries rope_freqs, the divisor
    per frequency that llama.cpp applies -- the model's unscaled over its scaled inverse frequencies."""
    from transformers import AutoModelForCausalLM

    model_dir = tiny_model_dir("llama32")
    out = tmp_path / "l32.gguf"
    assert cli(capsys, "export", "--model", str(model_dir), "--quant", "f32", "--out", str(out))[0] == 0
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    scaled = model.model.rotary_emb.inv_freq.numpy()
    plain = 1.0 / (500000.0 ** (np.arange(0, 16, 2) / 16))
    factors = tensors(out)["rope_freqs.weight"][1]
    assert np.allclose(factors, plain / scaled, rtol=1e-5)
    assert factors[0] == 1.0 and 1.0 < factors[1] < 32.0 and factors[-1] == 32.0  # all three bands
    assert fields(out)["tokenizer.ggml.pre"] == "llama-bpe"


def test_export_base_model_alone(tiny_model_dir, tmp_path, capsys):
    model_dir = tiny_model_dir("llama")
    out = tmp_path / "base.gguf"
    rc, stdout, _ = cli(capsys, "export", "--model", str(model_dir), "--quant", "f16", "--out", str(out))
    assert rc == 0 and ", f16, llama, base model) in " in stdout
    model, _ = load_gguf(out)
    with torch.no_grad():
        assert (model(IDS).logits - peft_logits(model_dir, None)).abs().max() < GGUF_TOL["f16"]


def test_export_is_a_library_function_as_train_and_evaluate(tiny_model_dir, tmp_path, capsys):
    """export(ExportSpec) is the workflow the CLI calls: the same file, Modelfile and result, no argparse."""
    model_dir = tiny_model_dir("llama")
    out = tmp_path / "lib.gguf"
    r = export(ExportSpec(out=str(out), model=str(model_dir), quant="f32", registry="off"))
    assert (
        r["arch"] == "llama" and r["bytes"] == out.stat().st_size and (tmp_path / "lib.Modelfile").is_file()
    )
    model, _ = load_gguf(out)
    with torch.no_grad():
        assert (model(IDS).logits - peft_logits(model_dir, None)).abs().max() < GGUF_TOL["f32"]
    with pytest.raises(UserError, match="expected a file name ending in .gguf"):
        export(ExportSpec(out=str(tmp_path / "x.bin"), model=str(model_dir)))


def test_every_gguf_gets_a_modelfile_beside_it(llama_run, tmp_path, capsys):
    """The merged file's Modelfile runs it; the adapter's names the base GGUF as FROM and itself as ADAPTER;
    one tunesmith did not write is never replaced, and ours only with --overwrite."""
    model_dir, run = llama_run
    out, lora = tmp_path / "notes.gguf", tmp_path / "notes-lora.gguf"
    rc, stdout, _ = cli(capsys, "export", "--adapter", str(run), "--quant", "f16", "--out", str(out))
    assert rc == 0
    text = (tmp_path / "notes.Modelfile").read_text()
    assert text.splitlines()[2:4] == ["FROM ./notes.gguf", 'TEMPLATE """{{ if .System }}<|im_start|>system']
    assert 'PARAMETER stop "<|im_end|>"' in text and "PARAMETER temperature 0" in text
    assert stdout.splitlines()[1:] == [
        f"wrote {tmp_path / 'notes.Modelfile'} (the chat template as Ollama's TEMPLATE, its stop tokens, "
        "greedy decoding)",
        f"run it:  cd {tmp_path} && ollama create notes -f notes.Modelfile && ollama run notes",
        f"     or: llama-server -m {out} --jinja   (OpenAI-compatible, http://127.0.0.1:8080/v1)",
    ]
    rc, stdout, _ = cli(capsys, "export", "--adapter", str(run), "--adapter-only", "--out", str(lora))
    assert rc == 0
    lines = (tmp_path / "notes-lora.Modelfile").read_text().splitlines()
    assert f"FROM ./{model_dir.name}.gguf" in lines and "ADAPTER ./notes-lora.gguf" in lines
    assert (
        f"# FROM is the base model's GGUF: tunesmith export --model {model_dir} --out {model_dir.name}.gguf"
        in lines
    )
    assert f"llama-server -m {model_dir.name}.gguf --lora notes-lora.gguf --jinja" in stdout

    rc, _, err = cli(capsys, "export", "--adapter", str(run), "--out", str(out))
    assert rc == 2 and "already holds a GGUF file" in err
    (tmp_path / "notes.Modelfile").write_text("FROM llama3\n")  # the user's own
    before = out.read_bytes()
    rc, _, err = cli(capsys, "export", "--adapter", str(run), "--out", str(out), "--overwrite")
    assert rc == 2 and err == (
        f"error: --out {out}: {tmp_path / 'notes.Modelfile'} exists and tunesmith did not write it; move it "
        "away or choose another --out (the export writes its Modelfile there)\n"
    )
    assert out.read_bytes() == before and (tmp_path / "notes.Modelfile").read_text() == "FROM llama3\n"


def test_export_unsupported_architecture(tiny_model_dir, tmp_path, capsys):
    model_dir = tmp_path / "mistral"
    shutil.copytree(tiny_model_dir("llama"), model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    config.update(model_type="mistral", architectures=["MistralForCausalLM"])
    (model_dir / "config.json").write_text(json.dumps(config))
    rc, _, err = cli(capsys, "export", "--model", str(model_dir), "--out", str(tmp_path / "g.gguf"))
    assert rc == 2
    assert err.endswith(
        f"error: --model {model_dir}: architecture 'mistral' cannot be exported to GGUF yet; supported: "
        "llama, qwen2, qwen3, phi3, gemma3_text. `tunesmith merge` writes a Hugging Face directory for any "
        "architecture\n"
    )
    assert not list(tmp_path.glob("*g.gguf*"))


def test_export_out_checks(llama_run, tmp_path, capsys):
    _, run = llama_run
    existing = tmp_path / "x.gguf"
    existing.write_bytes(b"keep")
    for extra in ([], ["--overwrite"]):
        rc, _, err = cli(capsys, "export", "--adapter", str(run), "--out", str(existing), *extra)
        assert rc == 2
        assert err == (
            f"error: --out {existing}: exists and is not a GGUF file tunesmith exported; choose a new --out "
            "(tunesmith never replaces what it did not write)\n"
        )
    assert existing.read_bytes() == b"keep"
    existing.unlink()
    assert cli(capsys, "export", "--adapter", str(run), "--out", str(existing), "--quant", "f16")[0] == 0
    rc, _, err = cli(capsys, "export", "--adapter", str(run), "--out", str(existing))
    assert rc == 2 and err == (
        f"error: --out {existing}: already holds a GGUF file tunesmith exported; choose a new --out, "
        "or pass --overwrite (the old one is replaced only once the new one is complete)\n"
    )
    rc, _, err = cli(capsys, "export", "--adapter", str(run), "--out", str(tmp_path / "x.bin"))
    assert rc == 2 and err == f"error: --out {tmp_path / 'x.bin'}: expected a file name ending in .gguf\n"
    rc, _, err = cli(capsys, "export", "--adapter-only", "--out", str(tmp_path / "a.gguf"))
    assert rc == 2 and err == "error: --adapter-only needs --adapter RUN_DIR (the adapter to write)\n"
    assert (
        cli(
            capsys, "export", "--adapter", str(run), "--out", str(existing), "--overwrite", "--quant", "q8_0"
        )[0]
        == 0
    )
    assert fields(existing)["general.file_type"] == 7


def test_export_unsupported_tokenizer(tiny_model_dir, tmp_path, capsys):
    """A tokenizer of neither kind (Metaspace over a vocabulary without byte fallback) is refused rather than
    exported wrong."""
    from tokenizers import decoders, normalizers, pre_tokenizers
    from transformers import AutoTokenizer

    model_dir = tmp_path / "spm"
    shutil.copytree(tiny_model_dir("llama"), model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    backend = tok.backend_tokenizer
    backend.normalizer = normalizers.Replace(" ", "\u2581")
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    tok.save_pretrained(model_dir)
    rc, _, err = cli(capsys, "export", "--model", str(model_dir), "--out", str(tmp_path / "s.gguf"))
    assert rc == 2
    assert err.endswith(
        f"error: --model {model_dir}: its tokenizer (BPE model, pre-tokenizer Metaspace, "
        "sentencepiece-style) is not "
        "one GGUF export can describe to llama.cpp yet; supported are byte-level BPE tokenizers of the "
        "GPT-2, SmolLM, Qwen2, Llama-3 and GPT-4o (Phi-4-mini) kinds and sentencepiece-style BPE ones "
        "(Gemma, Llama 2). `tunesmith merge` writes a Hugging Face directory instead\n"
    )
    assert not list(tmp_path.glob("*s.gguf*"))


# ---------------------------------------------------------------- export: LoRA adapter


@pytest.mark.parametrize("rslora", [False, True])
def test_adapter_only_gguf_is_the_difference_between_merged_and_base(
    tiny_model_dir, tmp_path, capsys, rslora
):
    model_dir = tiny_model_dir("llama")
    r, alpha = 4, 8
    run = lora_run(model_dir, tmp_path / "run", r=r, alpha=alpha, rslora=rslora)
    base, merged, lora = tmp_path / "base.gguf", tmp_path / "merged.gguf", tmp_path / "lora.gguf"
    assert cli(capsys, "export", "--model", str(model_dir), "--quant", "f32", "--out", str(base))[0] == 0
    assert cli(capsys, "export", "--adapter", str(run), "--quant", "f32", "--out", str(merged))[0] == 0
    rc, stdout, _ = cli(
        capsys, "export", "--adapter", str(run), "--adapter-only", "--quant", "f32", "--out", str(lora)
    )
    gguf_alpha = alpha * r**0.5 if rslora else alpha
    assert rc == 0
    assert re.fullmatch(
        rf"wrote {re.escape(str(lora))} \(\d+ kB, f32, llama LoRA adapter, r={r}, alpha {gguf_alpha:g}\) "
        rf"in \d+s",
        stdout.splitlines()[0],
    ), stdout

    meta = fields(lora)
    assert meta["general.type"] == "adapter" and meta["adapter.type"] == "lora"
    assert meta["general.architecture"] == "llama"
    # llama.cpp scales by alpha / r; rsLoRA's alpha / sqrt(r) is folded into the alpha written
    assert meta["adapter.lora.alpha"] == pytest.approx(gguf_alpha)
    scale = meta["adapter.lora.alpha"] / r
    W0, W1, L = tensors(base), tensors(merged), tensors(lora)
    names = sorted({n.rsplit(".", 1)[0] for n in L})
    # all-linear on a 2-layer llama: q k v o gate up down, per layer
    assert len(names) == 14 and "blk.0.attn_q.weight" in names and "blk.1.ffn_down.weight" in names
    for n in names:
        a, b = L[n + ".lora_a"][1], L[n + ".lora_b"][1]
        assert a.shape[0] == r and b.shape[1] == r  # llama.cpp: a->ne[1] == b->ne[0] == r
        delta = W1[n][1] - W0[n][1]
        assert np.abs(delta).max() > 1e-3
        assert np.abs(W0[n][1] + scale * b @ a - W1[n][1]).max() < 1e-5, n


def test_adapter_only_refuses_dora(tiny_model_dir, tmp_path, capsys):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    run = tmp_path / "dora"
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir("llama")),
        LoraConfig(r=4, target_modules=["q_proj"], use_dora=True, task_type="CAUSAL_LM"),
    )
    model.save_pretrained(run)
    (run / RUN_INFO).write_text(json.dumps({"model": str(tiny_model_dir("llama"))}))
    rc, _, err = cli(
        capsys, "export", "--adapter", str(run), "--adapter-only", "--out", str(tmp_path / "d.gguf")
    )
    assert rc == 2
    assert err == (
        f"error: --adapter {run}: a DoRA adapter rescales whole weight columns, which a llama.cpp LoRA file "
        f"cannot express; drop --adapter-only to export the merged model\n"
    )


# ---------------------------------------------------------------- the real training path, end to end


def test_trained_adapter_merge_and_export_agree_with_generate(tiny_model_dir, tmp_path, capsys):
    from tunesmith.models.loading import generate, load
    from tunesmith.train import trainer
    from tunesmith.train.config import TrainConfig

    model_dir = tiny_model_dir("llama")
    data = tmp_path / "data"
    write_jsonl(data / "train.jsonl", toy_examples(8))
    write_jsonl(data / "val.jsonl", toy_examples(2, seed=1))
    run = tmp_path / "run"
    trainer.train(
        TrainConfig(
            model=str(model_dir),
            data=str(data),
            out=str(run),
            epochs=2,
            lr=2e-2,
            batch_size=4,
            micro_batch_size=4,
            lora_r=8,
            lora_alpha=16,
        ),
        quiet=True,
    )
    assert cli(capsys, "merge", "--adapter", str(run), "--out", str(tmp_path / "merged"))[0] == 0
    assert (
        cli(capsys, "export", "--adapter", str(run), "--quant", "f32", "--out", str(tmp_path / "m.gguf"))[0]
        == 0
    )

    conv = [[{"role": "user", "content": "Write the meeting notes. Focus: budget design"}]]
    tuned = load(str(model_dir), run, quiet=True)
    want = generate(tuned.model, tuned.tokenizer, conv, max_new_tokens=12)[0].text
    merged = load(str(tmp_path / "merged"), quiet=True)
    assert generate(merged.model, merged.tokenizer, conv, max_new_tokens=12)[0].text == want
    gmodel, gtok = load_gguf(tmp_path / "m.gguf")
    gtok.chat_template = tuned.tokenizer.chat_template
    assert generate(gmodel, gtok, conv, max_new_tokens=12)[0].text == want


# ---------------------------------------------------------------- llama.cpp itself


def _llama_cpp():
    return pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")


def _llama_greedy(llm, prompt: list[int], n: int) -> list[int]:
    llm.reset()
    llm.eval(prompt)
    out = []
    for _ in range(n):
        nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(nxt)
        llm.eval([nxt])
    return out


def test_llama_cpp_runs_the_export_and_the_lora(llama_run, tmp_path, capsys):
    llama_cpp = _llama_cpp()
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunesmith.models.chat import prompt_ids

    model_dir, run = llama_run
    merged, base, lora = tmp_path / "merged.gguf", tmp_path / "base.gguf", tmp_path / "lora.gguf"
    assert cli(capsys, "export", "--adapter", str(run), "--quant", "f32", "--out", str(merged))[0] == 0
    assert cli(capsys, "export", "--model", str(model_dir), "--quant", "f32", "--out", str(base))[0] == 0
    assert (
        cli(capsys, "export", "--adapter", str(run), "--adapter-only", "--quant", "f32", "--out", str(lora))[
            0
        ]
        == 0
    )

    tok = AutoTokenizer.from_pretrained(model_dir)
    conv = [{"role": "user", "content": "Write the meeting notes. Focus: the budget"}]
    ids = prompt_ids(tok, conv)
    ref_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), run).eval()
    with torch.no_grad():
        ref_logits = ref_model(torch.tensor([ids])).logits[0].numpy()
    want = greedy(ref_model, torch.tensor([ids]), 16)

    common = dict(n_ctx=256, n_threads=1, n_batch=256, logits_all=True, verbose=False)
    llm = llama_cpp.Llama(model_path=str(merged), **common)
    text = tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
    assert llm.tokenize(text.encode(), add_bos=False, special=True) == ids, (
        "llama.cpp tokenizes like tunesmith"
    )
    llm.eval(ids)
    assert np.abs(np.asarray(llm.scores[: len(ids)]) - ref_logits).max() < 1e-3
    assert _llama_greedy(llm, ids, 16) == want
    del llm

    with_lora = llama_cpp.Llama(model_path=str(base), lora_path=str(lora), **common)
    assert _llama_greedy(with_lora, ids, 16) == want


# ---------------------------------------------------------------- the real default model


@pytest.mark.slow
def test_default_model_export_with_a_tiny_adapter(tmp_path, capsys):
    """SmolLM2-135M (llama, 30 layers, 9 heads / 3 kv heads) + a rank-2 LoRA on q,k: export f16, read it
    back."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunesmith.models.chat import prompt_ids
    from tunesmith.models.resolve import resolve

    model_dir = resolve("smollm2-135m")
    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = torch.tensor([prompt_ids(tok, [{"role": "user", "content": "What is the capital of France?"}])])
    torch.manual_seed(0)
    peft = get_peft_model(
        AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32),
        LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "k_proj"], init_lora_weights=False),
    )
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
        peft.eval()
        tuned = peft(ids).logits
        with peft.disable_adapter():
            base = peft(ids).logits
    run = tmp_path / "run"
    peft.save_pretrained(run)
    (run / RUN_INFO).write_text(json.dumps({"model": "smollm2-135m"}))
    del peft

    out = tmp_path / "smol.gguf"
    rc, stdout, _ = cli(capsys, "export", "--adapter", str(run), "--quant", "f16", "--out", str(out))
    assert rc == 0 and ", f16, llama, merged) in " in stdout
    assert 250e6 < out.stat().st_size < 300e6
    model, _ = load_gguf(out)
    with torch.no_grad():
        back = model(ids).logits
    assert (tuned - base).abs().max() > 1.0, "the adapter must matter"
    assert (back - tuned).abs().max() < 0.1  # f16 weights; logits of size ~30 here (measured 0.03-0.07)
    assert torch.equal(back[0].argmax(-1), tuned[0].argmax(-1))


def exported_beside_original(alias: str, out: Path, capsys):
    """The alias's model exported at f32 (to `out`, unless it is there), and the GGUF it came from: both
    readers, and both files' keys (general.* and the file-format keys left out)."""
    from gguf import GGUFReader

    from tunesmith.models.resolve import ALIASES, fetch_alias

    if not out.exists():
        assert cli(capsys, "export", "--model", alias, "--quant", "f32", "--out", str(out))[0] == 0
    ref, ours = GGUFReader(fetch_alias(ALIASES[alias])), GGUFReader(out)
    keys = [
        {k: f.contents() for k, f in r.fields.items() if not k.startswith(("GGUF.", "general."))}
        for r in (ref, ours)
    ]
    return ref, ours, *keys


@pytest.mark.slow
def test_gemma3_270m_export_equals_the_file_llama_cpp_wrote(gemma3_270m_f32, capsys):
    """gemma3-270m comes from a Q4_K_M GGUF llama.cpp made; its cached safetensors are that file dequantized.
    Exported at f32, every tensor must come back (norms + 1 again, within float rounding), with the same
    hyper-parameters and the same sentencepiece vocabulary: tokens, token types, special ids; scores in the
    same order (the file's own values are not in a tokenizer.json; llama.cpp only compares them)."""
    from gguf import dequantize

    ref, ours, want, got = exported_beside_original("gemma3-270m", gemma3_270m_f32, capsys)
    assert got.pop("tunesmith.exported_by").startswith("tunesmith ")
    assert want.pop("tokenizer.ggml.add_sep_token") is False
    got.pop("tokenizer.chat_template", None)  # the published file has none; ours writes the tokenizer's
    ref_scores, our_scores = (
        np.array(want.pop("tokenizer.ggml.scores")),
        np.array(got.pop("tokenizer.ggml.scores")),
    )
    normal = np.array(want["tokenizer.ggml.token_type"]) == 1
    assert np.array_equal(
        np.argsort(-ref_scores[normal], kind="stable"), np.argsort(-our_scores[normal], kind="stable")
    )
    assert got == want  # tokens, token types, special ids, add_bos, every hyper-parameter
    ref_t = {t.name: t for t in ref.tensors}
    our_t = {t.name: t for t in ours.tensors}
    assert set(ref_t) == set(our_t)
    for name, t in ref_t.items():
        a = dequantize(t.data, t.tensor_type).astype(np.float32)
        b = dequantize(our_t[name].data, our_t[name].tensor_type)
        assert np.allclose(a, b, rtol=0, atol=1e-6 if name.endswith("norm.weight") else 0), name


@pytest.mark.slow
def test_default_model_export_equals_what_llama_cpp_converter_wrote(tmp_path, capsys):
    """The default model comes from a GGUF that llama.cpp's own convert_hf_to_gguf.py wrote (Q4_1), and its
    cached safetensors are that file dequantized. Exporting the base model at f32 must therefore give back
    every tensor of the original exactly -- q/k permutation included -- and the same tokenizer and
    hyper-parameter metadata. This checks the writer against llama.cpp's converter without llama.cpp."""
    from gguf import dequantize

    ref, ours, want, got = exported_beside_original("smollm2-135m", tmp_path / "smol.gguf", capsys)
    # the cached tokenizer splits digits with GPT-2's regex, not SmolLM's one-digit rule: we describe the
    # tokenizer tunesmith trains with (identical ids for this vocabulary, which has no multi-digit tokens)
    assert want.pop("tokenizer.ggml.pre") == "smollm" and got.pop("tokenizer.ggml.pre") == "gpt-2"
    want.pop("tokenizer.ggml.add_space_prefix")  # False, llama.cpp's default
    assert got.pop("tokenizer.ggml.add_eos_token") is False
    assert got.pop("llama.attention.key_length") == got.pop("llama.attention.value_length") == 64
    assert got.pop("tunesmith.exported_by").startswith("tunesmith ")  # marks a file `--overwrite` may replace
    assert got == want  # tokens, token types, merges, bos/eos/unk/pad ids, chat template, every hparam
    ref_t = {t.name: t for t in ref.tensors}
    our_t = {t.name: t for t in ours.tensors}
    assert set(ref_t) == set(our_t) and len(our_t) == 272
    for name, t in ref_t.items():
        a = dequantize(t.data, t.tensor_type)
        b = dequantize(our_t[name].data, our_t[name].tensor_type)
        assert np.array_equal(a.astype(np.float32), b), name
