"""llama.cpp itself (llama-cpp-python, the `llama` extra; `.ci/run` builds it) runs what `export` writes:
per architecture the logits of the model within a stated tolerance, the K-quants made by its own quantizer,
and `export --verify`. Skipped where llama-cpp-python is not installed.

Tolerances (logits of the tiny models are of size ~1): f32 within 1e-3, f16 within 1e-2 (measured on the
2-core EPYC: see the asserts' messages when they fail)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import llama_server, toy_examples, write_jsonl
from test_export import cli, fields, lora_run, tensors

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (the 'llama' extra)")

TOL = {"f32": 1e-3, "f16": 1e-2}
COMMON = dict(n_threads=1, n_batch=512, logits_all=True, verbose=False)


def merged_logits(model_dir, run, ids: list[int]) -> np.ndarray:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), run).eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


def llama_logits(path, ids: list[int], n_ctx: int) -> np.ndarray:
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, **COMMON)
    llm.eval(ids)
    return np.asarray(llm.scores[: len(ids)])


def prompt(tok, n_words: int = 12) -> list[int]:
    from tunesmith.models.chat import prompt_ids

    words = " ".join(f"budget{k % 7} design" for k in range(n_words))
    return prompt_ids(tok, [{"role": "user", "content": f"Write the meeting notes. Focus: {words}"}])


@pytest.mark.parametrize("family", ["llama", "llama32", "qwen2", "qwen3", "phi3", "phi4mini", "gemma3"])
@pytest.mark.parametrize("quant", ["f32", "f16"])
def test_llama_cpp_gives_the_models_logits(family, quant, tiny_model_dir, tmp_path, capsys):
    from transformers import AutoTokenizer

    model_dir = tiny_model_dir(family)
    run = lora_run(model_dir, tmp_path / "run")
    out = tmp_path / f"{family}.gguf"
    assert cli(capsys, "export", "--adapter", str(run), "--quant", quant, "--out", str(out))[0] == 0
    ids = prompt(AutoTokenizer.from_pretrained(model_dir))
    want = merged_logits(model_dir, run, ids)
    err = np.abs(llama_logits(out, ids, 256) - want).max()
    assert err < TOL[quant], f"{family} {quant}: llama.cpp's logits differ by {err:.2e}"


TRICKY = [
    "Hello WORLD, it's 12345 o'clock!\n\n  Café naïve — Ünïcödé\tdon't I'LL SHOUT\r\nx  y",
    "Meeting Summary:\n- The team's budget: 1,250.75 EUR (Q3/2024)   \n\n\nDecisions/actions ... done",
]


@pytest.mark.parametrize("family", ["llama", "llama32", "qwen2", "phi4mini"])
def test_llama_cpp_splits_text_as_the_tokenizer(family, tiny_model_dir, tmp_path, capsys):
    """Each pre-tokenizer name the file states (gpt-2, llama-bpe, qwen2, gpt-4o) makes llama.cpp split text as
    the Hugging Face tokenizer does: digits, contractions, capitals, accents, runs of spaces and newlines."""
    from transformers import AutoTokenizer

    model_dir = tiny_model_dir(family)
    out = tmp_path / "t.gguf"
    assert cli(capsys, "export", "--model", str(model_dir), "--quant", "f32", "--out", str(out))[0] == 0
    tok = AutoTokenizer.from_pretrained(model_dir)
    llm = llama_cpp.Llama(model_path=str(out), n_ctx=64, vocab_only=True, verbose=False)
    for text in TRICKY:
        assert (
            llm.tokenize(text.encode(), add_bos=False, special=False)
            == tok(text, add_special_tokens=False)["input_ids"]
        ), (family, text)


def test_gemma3s_sliding_and_global_layers(tmp_path, capsys):
    """Six layers, the sixth global (llama.cpp's fixed gemma3 pattern), a 16-token window and a longer
    prompt: the sliding layers see only the window in both engines."""
    from conftest import make_model, make_tokenizer

    tok = make_tokenizer("gemma3")
    model = make_model("gemma3", tok, num_hidden_layers=6, sliding_window=16, max_position_embeddings=512)
    assert (
        model.config.layer_types[5] == "full_attention" and model.config.layer_types[4] == "sliding_attention"
    )
    model_dir = tmp_path / "g"
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    run = lora_run(model_dir, tmp_path / "run")
    out = tmp_path / "g.gguf"
    assert cli(capsys, "export", "--adapter", str(run), "--quant", "f32", "--out", str(out))[0] == 0
    ids = prompt(tok, 20)
    assert len(ids) > 3 * 16
    err = np.abs(llama_logits(out, ids, 256) - merged_logits(model_dir, run, ids)).max()
    assert err < TOL["f32"], err


def test_phi4_minis_long_factors_past_the_original_context(tiny_model_dir, tmp_path, capsys):
    """Past the original context (256 here) LongRoPE switches to its long factors and scales attention:
    llama.cpp (whose context is then longer than the original) and transformers (whose sequence is) agree."""
    from transformers import AutoTokenizer

    model_dir = tiny_model_dir("phi4mini")
    run = lora_run(model_dir, tmp_path / "run")
    out = tmp_path / "phi4.gguf"
    assert cli(capsys, "export", "--adapter", str(run), "--quant", "f32", "--out", str(out))[0] == 0
    ids = prompt(AutoTokenizer.from_pretrained(model_dir), 60)
    assert 256 < len(ids) < 1024
    want = merged_logits(model_dir, run, ids)
    short = np.abs(llama_logits(out, ids[:200], 256) - merged_logits(model_dir, run, ids[:200])).max()
    # llama.cpp picks the factors by its context, transformers by the sequence: a long context on a short
    # prompt is where they part (noticed, not ours to change)
    long = np.abs(llama_logits(out, ids, 1024) - want).max()
    assert short < TOL["f32"] and long < TOL["f32"], (short, long)


def test_q4_k_m_by_llama_cpps_quantizer(tmp_path, capsys):
    """A tiny llama whose rows are multiples of 256 (K-quants' block): q4_k_m gets Q4_K weights with some at
    Q6_K (llama.cpp's mix), keeps tunesmith's metadata, runs, and is closer to the model than q4_0."""
    from transformers import AutoTokenizer

    from conftest import make_model, make_tokenizer

    tok = make_tokenizer("llama")
    model_dir = tmp_path / "m"
    make_model(
        "llama", tok, hidden_size=256, intermediate_size=512, max_position_embeddings=512
    ).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    run = lora_run(model_dir, tmp_path / "run")
    ids = prompt(AutoTokenizer.from_pretrained(model_dir))
    want = merged_logits(model_dir, run, ids)
    err = {}
    for quant in ("q4_k_m", "q4_0"):
        out = tmp_path / f"{quant}.gguf"
        rc, stdout, _ = cli(capsys, "export", "--adapter", str(run), "--quant", quant, "--out", str(out))
        assert rc == 0 and f", {quant}, llama, merged) in " in stdout
        assert not list(tmp_path.glob(f".{out.name}.tmp-*"))
        err[quant] = np.abs(llama_logits(out, ids, 256) - want).max()
    kinds = {n: k for n, (k, _) in tensors(tmp_path / "q4_k_m.gguf").items()}
    meta = fields(tmp_path / "q4_k_m.gguf")
    assert meta["general.file_type"] == 15  # LLAMA_FTYPE_MOSTLY_Q4_K_M
    assert meta["tunesmith.exported_by"].startswith("tunesmith ")
    assert kinds["blk.0.attn_q.weight"] == "Q4_K" and "Q6_K" in kinds.values()
    assert kinds["blk.0.attn_norm.weight"] == "F32"
    assert err["q4_k_m"] < err["q4_0"] < 1.0, err


@pytest.mark.slow
def test_gemma3_270m_in_llama_cpp(gemma3_270m_f32):
    """The real Gemma 3 270M (sentencepiece vocabulary, 262k tokens) as exported: llama.cpp tokenizes like its
    Hugging Face tokenizer and gives the model's logits."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunesmith.models.chat import prompt_ids
    from tunesmith.models.resolve import resolve

    model_dir = resolve("gemma3-270m")
    tok = AutoTokenizer.from_pretrained(model_dir)
    llm = llama_cpp.Llama(model_path=str(gemma3_270m_f32), n_ctx=256, **COMMON)
    for text in TRICKY:
        assert (
            llm.tokenize(text.encode(), add_bos=False, special=False)
            == tok(text, add_special_tokens=False)["input_ids"]
        ), text
    ids = prompt_ids(tok, [{"role": "user", "content": "Write one sentence about the sea."}])
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        want = model(torch.tensor([ids])).logits[0].numpy()
    llm.eval(ids)
    got = np.asarray(llm.scores[: len(ids)])
    assert (got.argmax(-1) == want.argmax(-1)).all()
    assert np.abs(got - want).max() < 0.05, np.abs(got - want).max()  # logits of size ~30


# ---------------------------------------------------------------- export --verify


@pytest.fixture(scope="module")
def memorized(tiny_model_dir, tmp_path_factory):
    """A tiny llama fine-tuned (full) until it writes its 8 training answers back: the PyTorch model scores
    high on them, so a broken file shows as a drop. (A LoRA on the tiny random model does not get there.)"""
    from tunesmith.train import trainer
    from tunesmith.train.config import TrainConfig

    root = tmp_path_factory.mktemp("memorized")
    write_jsonl(root / "data" / "train.jsonl", toy_examples(8))
    write_jsonl(root / "data" / "val.jsonl", toy_examples(8))
    run = root / "run"
    trainer.train(
        TrainConfig(
            model=str(tiny_model_dir("llama")),
            data=str(root / "data"),
            out=str(run),
            method="full",
            epochs=30,
            lr=3e-3,
            batch_size=4,
            micro_batch_size=4,
        ),
        quiet=True,
    )
    return run, root / "data" / "train.jsonl"


def test_verify_an_exact_export(memorized, tmp_path, capsys):
    run, test = memorized
    out = tmp_path / "notes.gguf"
    rc, stdout, err = cli(
        capsys, "export", "--model", str(run), "--quant", "f32", "--out", str(out), "--verify", str(test)
    )
    assert rc == 0, err
    assert "warning" not in err
    assert "llama.cpp tokenizes the prompt as tunesmith does: 8/8" in stdout
    assert "greedy agreement: 8/8 outputs identical; 100.0 % of tokens before the first difference" in stdout
    v = json.loads((tmp_path / "notes.verify.json").read_text())
    assert v["pytorch"]["rougeL"] == v["gguf"]["rougeL"] > 50, v["pytorch"]
    assert v["paired"]["rougeL"]["change"] == 0 and v["significant_drops"] == []
    assert f"wrote {tmp_path / 'notes.verify.json'}" in stdout


def test_verify_warns_when_the_file_is_worse(memorized, tmp_path, capsys, monkeypatch):
    """A file written without llama.cpp's q/k permutation runs, but answers differently: agreement falls, the
    metrics drop significantly and the export warns."""
    from tunesmith.export import gguf_arch

    run, test = memorized
    monkeypatch.setattr(gguf_arch, "permute", lambda w, n: w)
    out = tmp_path / "bad.gguf"
    rc, stdout, err = cli(
        capsys, "export", "--model", str(run), "--quant", "f32", "--out", str(out), "--verify", str(test)
    )
    assert rc == 0
    v = json.loads((tmp_path / "bad.verify.json").read_text())
    assert v["agreement"]["identical"] < 8 and v["gguf"]["rougeL"] < v["pytorch"]["rougeL"]
    assert "rougeL" in v["significant_drops"]
    assert "warning: the f32 file is significantly worse than the model on rougeL (" in err


def test_verify_refusals(memorized, tmp_path, capsys):
    run, test = memorized
    out = tmp_path / "x.gguf"
    rc, _, err = cli(
        capsys, "export", "--adapter", str(run), "--adapter-only", "--out", str(out), "--verify", str(test)
    )
    assert (
        rc == 2
        and err == "error: --verify checks a whole model: export the merged model (drop --adapter-only)\n"
    )
    empty = write_jsonl(tmp_path / "empty.jsonl", [])
    rc, _, err = cli(capsys, "export", "--model", str(run), "--out", str(out), "--verify", str(empty))
    assert rc == 2 and str(empty) in err and not out.exists()


# ---------------------------------------------------------------- llama.cpp's OpenAI-compatible server


@pytest.mark.slow
def test_llama_cpp_server_answers_as_tunesmith_generate(tmp_path, capsys):
    """The default model exported at f16, served by llama-cpp-python's OpenAI-compatible server (the chat
    template from the file), asked with the official openai client: greedy answers equal `tunesmith
    generate`. That server penalizes repeats by default (1.1; llama.cpp's own llama-server does not, Ollama
    does, which is why the Modelfile says repeat_penalty 1): the request turns it off."""

    pytest.importorskip("llama_cpp.server.app", reason="llama-cpp-python[server] is not installed")
    import openai

    prompts = ["What is the capital of France?", "Name three colours.", "Say hello in one short sentence."]
    out = tmp_path / "smol.gguf"
    assert cli(capsys, "export", "--model", "smollm2-135m", "--quant", "f16", "--out", str(out))[0] == 0
    file = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": p} for p in prompts])
    rc, stdout, _ = cli(
        capsys,
        "generate",
        "--model",
        "smollm2-135m",
        "--input",
        str(file),
        "--max-new-tokens",
        "24",
        "--json",
    )
    assert rc == 0
    want = [json.loads(line)["output"] for line in stdout.splitlines()]
    with llama_server(out, "smol") as url:
        client = openai.OpenAI(base_url=url, api_key="unused")
        got = [
            client.chat.completions.create(
                model="smol",
                messages=[{"role": "user", "content": p}],
                temperature=0,
                max_tokens=24,
                extra_body={"repeat_penalty": 1.0},
            )
            .choices[0]
            .message.content.strip()
            for p in prompts
        ]
    assert got == want and all(want), (got, want)


# ---------------------------------------------------------------- every family, from training to llama.cpp


@pytest.mark.parametrize("family", ["llama", "llama32", "qwen2", "qwen3", "gemma3", "phi3", "phi4mini"])
def test_each_family_trains_merges_exports_and_runs_in_llama_cpp(family, tiny_model_dir, tmp_path, capsys):
    """LoRA and full fine-tuning through tunesmith's own trainer (2 steps), the LoRA merged, both exported:
    llama.cpp gives the trained model's logits (the merged directory's, the full run's)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunesmith.train import trainer
    from tunesmith.train.config import TrainConfig

    model_dir = tiny_model_dir(family)
    write_jsonl(tmp_path / "data" / "train.jsonl", toy_examples(6))
    write_jsonl(tmp_path / "data" / "val.jsonl", toy_examples(2, seed=1))
    ids = prompt(AutoTokenizer.from_pretrained(model_dir))
    for method in ("lora", "full"):
        run = tmp_path / method
        cfg = TrainConfig(
            model=str(model_dir), data=str(tmp_path / "data"), out=str(run), method=method, lr=1e-2,
            batch_size=2, micro_batch_size=2, max_steps=2,
        )  # fmt: skip
        trainer.train(cfg, quiet=True)
        out = tmp_path / f"{method}.gguf"
        if method == "lora":
            reference = tmp_path / "merged"
            assert cli(capsys, "merge", "--adapter", str(run), "--out", str(reference))[0] == 0
            assert cli(capsys, "export", "--adapter", str(run), "--quant", "f32", "--out", str(out))[0] == 0
        else:
            reference = run
            assert cli(capsys, "export", "--model", str(run), "--quant", "f32", "--out", str(out))[0] == 0
        model = AutoModelForCausalLM.from_pretrained(reference, dtype=torch.float32).eval()
        with torch.no_grad():
            want = model(torch.tensor([ids])).logits[0].numpy()
            base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
            assert np.abs(base(torch.tensor([ids])).logits[0].numpy() - want).max() > 1e-3, (
                "training moved it"
            )
        err = np.abs(llama_logits(out, ids, 256) - want).max()
        assert err < TOL["f32"], f"{family} {method}: {err:.2e}"
