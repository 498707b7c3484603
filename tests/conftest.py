"""Tiny random-weight models, built in-process, one per supported family.

Each is saved as a real Hugging Face directory (safetensors + tokenizer with the family's
chat template), so tests drive the same code paths — and the same CLI — as a real model.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
EXAMPLES = ROOT / "examples" / "meeting-notes"
LOCAL = "http://127.0.0.1:8400"  # the web apps answer loopback names only (web/guard.py), not "testserver"


@pytest.fixture(autouse=True, scope="session")
def _own_registry(tmp_path_factory):
    """Every run the tests train is registered in a registry of the test session's own (the CLI
    subprocesses inherit the variable), never in the registry of the person running the tests; the
    same for the machine's measured matmul speed."""
    own = {
        "TUNESMITH_REGISTRY": str(tmp_path_factory.mktemp("registry") / "registry.db"),
        # the plan `train` prints measures the matmul speed once per machine: once per session here, not
        # once per test home
        "TUNESMITH_MACHINE_FILE": str(tmp_path_factory.mktemp("machine") / "machine.json"),
    }
    before = {k: os.environ.get(k) for k in own}
    os.environ.update(own)
    yield
    for k, v in before.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>' + '\n' }}{% "
    "endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
GEMMA = (
    "{{ bos_token }}{% for m in messages %}{{ '<start_of_turn>' + ('model' if m['role'] == 'assistant' else "
    "m['role']) + '\n'"
    " + m['content'] + '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{ "
    "'<start_of_turn>model\n' }}{% endif %}"
)
PHI = (
    "{% for m in messages %}{{ '<|' + m['role'] + '|>' + m['content'] + '<|end|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% else %}{{ eos_token }}{% endif %}"
)

LLAMA3 = (
    "{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' + "
    "m['content'] + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

FAMILIES = {
    # family: (special tokens, bos, eos, pad, template)
    "llama": (
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        "<|im_start|>",
        "<|im_end|>",
        "<|im_end|>",
        CHATML,
    ),
    "qwen2": (["<|endoftext|>", "<|im_start|>", "<|im_end|>"], None, "<|im_end|>", "<|endoftext|>", CHATML),
    "qwen3": (["<|endoftext|>", "<|im_start|>", "<|im_end|>"], None, "<|im_end|>", "<|endoftext|>", CHATML),
    "gemma3": (
        ["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"],
        "<bos>",
        "<eos>",
        "<pad>",
        GEMMA,
    ),
    "phi3": (
        ["<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"],
        None,
        "<|endoftext|>",
        "<|endoftext|>",
        PHI,
    ),
    # Llama 3.2's shape (llama3 RoPE scaling, tied embeddings), its chat tokens and pre-tokenizer
    "llama32": (
        ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
        "<|begin_of_text|>",
        "<|eot_id|>",
        "<|end_of_text|>",
        LLAMA3,
    ),
    # Phi-4-mini's shape (phi3 + LongRoPE + partial rotary, tied embeddings), Phi-3's chat tokens, o200k split
    "phi4mini": (
        ["<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"],
        None,
        "<|endoftext|>",
        "<|endoftext|>",
        PHI,
    ),
}

SPLIT_OF = {"llama32": "llama-bpe", "phi4mini": "gpt-4o"}  # family -> llama.cpp's pre-tokenizer name

CORPUS = [
    "Meeting Summary: The team discussed the budget and the new remote control design.",
    "Points discussed: - The project manager opened the meeting. - Marketing presented user research.",
    "Decisions and actions: - The team agreed to use a rubber case. - The designer will prepare a prototype.",
    "Write the meeting notes for this transcript excerpt. Focus: what did the group decide?",
    "Transcript: Project Manager: Okay, let's start. Industrial Designer: I think we should use kinetic "
    "batteries.",
    "The quick brown fox jumps over the lazy dog. What is the capital of France? Paris is the capital.",
    "user assistant system model hello world 0123456789 ,.;:!?'\"()[]{}-_/\\",
]


def make_tokenizer(family: str):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    from tunesmith.export.gguf_vocab import SPLIT_PRE

    SPLITS = {
        family: next(r for r, name in SPLIT_PRE.items() if name == pre) for family, pre in SPLIT_OF.items()
    }
    from transformers import PreTrainedTokenizerFast

    specials, bos, eos, pad, template = FAMILIES[family]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    if family in SPLITS:  # the real model's split regex before the byte-level mapping, as its tokenizer.json
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(SPLITS[family]), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 3, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad)
    fast.chat_template = template
    return fast


def make_model(family: str, tok, seed: int = 0, **overrides):
    """A tiny random model of `family`'s shape; `overrides` change its config (sizes, layers, window)."""
    import torch
    import transformers as tf

    torch.manual_seed(seed)
    common = dict(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    common.update(overrides)
    if family == "llama":
        cfg, cls = tf.LlamaConfig(tie_word_embeddings=True, **common), tf.LlamaForCausalLM
    elif family == "qwen2":
        cfg, cls = tf.Qwen2Config(tie_word_embeddings=True, **common), tf.Qwen2ForCausalLM
    elif family == "qwen3":
        cfg, cls = tf.Qwen3Config(head_dim=16, tie_word_embeddings=True, **common), tf.Qwen3ForCausalLM
    elif family == "gemma3":
        # query_pre_attn_scalar = head_dim, as every Gemma 3 but the 27B (what llama.cpp assumes)
        cfg = tf.Gemma3TextConfig(
            **{"head_dim": 16, "query_pre_attn_scalar": 16, "sliding_window": 64, **common}
        )
        cls = tf.Gemma3ForCausalLM
    elif family == "phi3":
        cfg, cls = tf.Phi3Config(tie_word_embeddings=False, **common), tf.Phi3ForCausalLM
    elif family == "llama32":  # Llama 3.2: RoPE theta 500k with llama3 frequency scaling, tied embeddings
        rope = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0}
        cfg = tf.LlamaConfig(
            tie_word_embeddings=True,
            rope_theta=500000.0,
            rope_scaling={**rope, "original_max_position_embeddings": 64},
            **common,
        )
        cls = tf.LlamaForCausalLM
    elif family == "phi4mini":  # Phi-4-mini: 3/4 of each head rotated, LongRoPE factors for half of those
        rotary = 16 * 3 // 4
        cfg = tf.Phi3Config(
            tie_word_embeddings=True,
            partial_rotary_factor=0.75,
            original_max_position_embeddings=256,
            rope_scaling={
                "rope_type": "longrope",
                "long_factor": [1.0 + 0.5 * k for k in range(rotary // 2)],
                "short_factor": [1.0 + 0.1 * k for k in range(rotary // 2)],
            },
            **common,
        )
        cls = tf.Phi3ForCausalLM
    else:
        raise KeyError(family)
    return cls(cfg).eval()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """factory: family -> path of a saved tiny model directory (built once per session)."""
    cache: dict[str, Path] = {}

    def build(family: str = "llama") -> Path:
        if family not in cache:
            d = tmp_path_factory.mktemp(f"tiny-{family}")
            tok = make_tokenizer(family)
            make_model(family, tok).save_pretrained(d)
            tok.save_pretrained(d)
            cache[family] = d
        return cache[family]

    return build


@pytest.fixture(scope="session")
def gemma3_270m_f32(tmp_path_factory) -> Path:
    """gemma3-270m (the real model, from PyPI) exported at f32, once per session: 1.07 GB, 35-70 s here; read
    by tests/test_export.py (against llama.cpp's own file) and tests/test_llama_cpp.py (llama.cpp runs it)."""
    out = tmp_path_factory.mktemp("gemma3-270m") / "gemma3-270m.gguf"
    done = cli("export", "--model", "gemma3-270m", "--quant", "f32", "--out", str(out), "--registry", "off")
    assert done.returncode == 0, done.stderr
    return out


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch, request):
    """Unit tests get an empty model cache; tests marked `slow` use the real one."""
    if "slow" not in request.keywords:
        monkeypatch.setenv("TUNESMITH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def chat(user: str, answer: str, system: str | None = None) -> dict:
    msgs = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": user},
        {"role": "assistant", "content": answer},
    ]
    return {"messages": msgs}


def toy_examples(n: int, seed: int = 0) -> list[dict]:
    import random

    rng = random.Random(seed)
    words = "budget design remote battery case prototype marketing research team meeting".split()
    out = []
    for i in range(n):
        topic = " ".join(rng.sample(words, 3))
        out.append(
            chat(
                f"Write the meeting notes. Focus: {topic} {i}",
                f"Meeting Summary: The team discussed the {topic}.\n\nPoints discussed:\n- "
                f"{words[i % len(words)]}",
            )
        )
    return out


def run_cli(*args: str, env: dict | None = None, input: str | None = None) -> subprocess.CompletedProcess:
    """Run the real console entry point in a subprocess."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "tunesmith.cli", *args],
        capture_output=True,
        text=True,
        env=full_env,
        input=input,
        cwd=ROOT,
        timeout=600,
    )


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """The same entry point as run_cli, in this process: the same return code, stdout and stderr, about
    5 s sooner per call (a fresh process imports torch, transformers and peft: 5.3 s of `import peft`
    alone, measured with -X importtime on the 2-core EPYC). For what needs a process of its own (a kill,
    writers at once, a variable read at import, stdin) use run_cli."""
    from tunesmith.cli import main

    out, err = io.StringIO(), io.StringIO()
    saved_env = {k: os.environ.get(k) for k in env or {}}
    os.environ.update(env or {})
    cwd, threads = os.getcwd(), torch_threads()
    os.chdir(ROOT)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as e:  # argparse's own errors
                code = e.code if isinstance(e.code, int) else int(e.code is not None)
    finally:
        os.chdir(cwd)
        torch_threads(threads)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return subprocess.CompletedProcess(["tunesmith", *args], code, out.getvalue(), err.getvalue())


def torch_threads(n: int | None = None) -> int:
    """torch's thread count (train's --threads sets it for the whole process), or set it back."""
    import torch

    if n is not None:
        torch.set_num_threads(n)
    return torch.get_num_threads()


def make_adapter(model_dir: Path, out: Path, seed: int) -> Path:
    """A LoRA adapter with random (non-zero) weights, so it visibly changes the output."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    peft = get_peft_model(
        model, LoraConfig(r=8, lora_alpha=64, target_modules="all-linear", init_lora_weights=False)
    )
    peft.save_pretrained(out)
    return out


def train_then_sigkill(args: list[str], run: Path, kill_at: int) -> int:
    """Start `tunesmith train ARGS --out RUN` and SIGKILL it once its metrics.jsonl has `kill_at`
    step lines; returns the exit code (-SIGKILL when it was killed mid-training)."""
    import signal
    import time

    metrics = run.parent / f".{run.name}.partial" / "metrics.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tunesmith.cli", "train", *args, "--out", str(run)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and metrics.read_text().count('"loss"') >= kill_at:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.002)
    return proc.wait()


@pytest.fixture(scope="module")
def evaluated(tiny_model_dir, tmp_path_factory):
    """Two tiny adapters, v1 and v2; one eval of base and v1 ("both") and one of each version on its own,
    all on the same 4 examples of the example data's test set (each transcript cut to its first 300
    characters, which the tiny models' 1,024 positions hold; the reference notes whole), in one registry."""
    root = tmp_path_factory.mktemp("review")
    d = root / "data"
    write_jsonl(d / "train.jsonl", toy_examples(8))
    write_jsonl(d / "val.jsonl", toy_examples(2, seed=1))
    rows = [json.loads(x) for x in (EXAMPLES / "test.jsonl").read_text().splitlines()[:4]]
    for r in rows:
        r["messages"][0]["content"] = r["messages"][0]["content"][:300]
    test = write_jsonl(root / "review-set.jsonl", rows)
    reg = str(root / "reg.db")
    m = str(tiny_model_dir("llama"))
    for name, lr in (("v1", "0.05"), ("v2", "0.03")):
        r = cli("train", "--model", m, "--data", str(d), "--out", str(root / name), "--registry", reg,
                "--epochs", "1", "--batch-size", "4", "--lora-r", "4", "--lr", lr, "--quiet")  # fmt: skip
        assert r.returncode == 0, r.stderr
    flags = ["--data", str(test), "--max-new-tokens", "6", "--registry", reg, "--quiet"]
    r = cli("eval", "--adapter", "v1", "--systems", "base,tuned", *flags, "--out", str(root / "both"))
    assert r.returncode == 0, r.stderr
    for name in ("v1", "v2"):
        r = cli("eval", "--adapter", name, *flags, "--out", str(root / f"e-{name}"))
        assert r.returncode == 0, r.stderr
    return root, reg, test


# ---------------------------------------------------------------- the web apps in a real browser


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def browser():
    """Debian's chromium, headless, through selenium and chromium-driver (skipped without them)."""
    webdriver = pytest.importorskip(
        "selenium.webdriver", reason="the browser test needs selenium (the 'test' extra)"
    )
    import shutil

    if not shutil.which("chromium") or not shutil.which("chromedriver"):
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    opts = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,1600"):
        opts.add_argument(flag)
    opts.binary_location = shutil.which("chromium")
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the console, for tests that read it
    service = webdriver.ChromeService(executable_path=shutil.which("chromedriver"))
    driver = webdriver.Chrome(options=opts, service=service)
    yield driver
    driver.quit()


def wait_for(check, timeout=15.0):
    """Poll until check() is true; an element the page redrew meanwhile (stale) is looked up again."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    end = time.time() + timeout
    while time.time() < end:
        try:
            got = check()
        except (StaleElementReferenceException, NoSuchElementException):
            got = None
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError("timed out")


@contextlib.contextmanager
def serving(app):
    """An ASGI app on a free loopback port (uvicorn in a thread) while the block runs; yields the port."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(10)


@contextlib.contextmanager
def llama_server(gguf: Path, alias: str):
    """llama-cpp-python's OpenAI-compatible server on a GGUF file, on a free loopback port, while the block
    runs; yields its /v1 address."""
    import httpx

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1", "--port",
         str(port), "--n_ctx", "512", "--n_threads", "2", "--model_alias", alias],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.time() + 120
        while True:
            try:
                if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None and time.time() < deadline, "the server did not start"
            time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        server.wait(30)


SERVE_KEY = "sk-test-0123456789"


class Server:
    """`tunesmith serve ARGS` as a real process on a free port of 127.0.0.1, waited for until it answers."""

    def __init__(self, args: list[str], log: Path, env: dict | None = None):
        self.port = free_port()
        self.log = log
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tunesmith.cli", "serve", "--port", str(self.port), *args],
            stdout=subprocess.DEVNULL,
            stderr=log.open("w"),
            cwd=ROOT,
            env={**os.environ, **(env or {})},
        )
        deadline = time.time() + 90
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited: {log.read_text()}")
            try:
                self.health()
                return
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise AssertionError(f"server did not start: {log.read_text()}")

    def health(self) -> dict:
        ask = urllib.request.Request(self.url + "/health", headers={"Authorization": f"Bearer {SERVE_KEY}"})
        with urllib.request.urlopen(ask, timeout=5) as r:
            return json.loads(r.read())

    def client(self, key: str = SERVE_KEY):
        import openai

        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, timeout=60)

    def post(self, path: str, body: bytes, key: str = SERVE_KEY) -> tuple[int, dict]:
        req = urllib.request.Request(
            self.url + path,
            data=body,
            method="POST",
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def access_log(self) -> list[dict]:
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.startswith("{")]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
