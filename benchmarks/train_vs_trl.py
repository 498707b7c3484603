"""Benchmark: tunesmith's trainer vs Hugging Face TRL (SFTTrainer + PEFT LoRA) on the same work.

    python benchmarks/train_vs_trl.py                       # dialogsum, 450 train / 50 val, 3 epochs
    python benchmarks/train_vs_trl.py --max-steps 3         # a quick check
    python benchmarks/train_vs_trl.py --data example        # examples/meeting-notes
    python benchmarks/train_vs_trl.py --sweep               # tunesmith: memory and speed vs length and model
    python benchmarks/train_vs_trl.py ... --out results.json

Needs TRL: pip install -r benchmarks/requirements-trl.txt

Each training run is its own subprocess (so peak memory is that run's alone), one after the
other. Both get the same examples (over-long ones dropped up front for both), the same
model, LoRA config, chat template, answer-only loss, global batch, learning rate and
schedule, steps, max length, seed and precision. How a step's examples are split into forward
passes is each side's own business and does not change the result (the loss is summed over a
step's answer tokens): by default tunesmith uses its automatic micro-batches (under bf16 on a
CPU, passes of similar-length examples up to the longest one's width, at most 1024 tokens;
otherwise one example per pass on a CPU) and TRL one example per pass; --micro-batch-size N
gives both N, --trl-micro-batch-size TRL another. By default TRL is also given tunesmith's
token ids and labels (--trl-data tokens) and its batches in tunesmith's order
(--trl-order tunesmith), so both train on exactly the same tokens step by step; the
per-step answer-token counts of both runs are printed side by side as the fairness check.
After training, one answer-only loss function in this script (full logits, no tricks) scores
both final adapters on the validation set, and the base model for reference.

Numbers are worth something only on a quiet machine: nothing else running.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

# no benchmark run enters the registry of the person who runs it (TUNESMITH_BENCH_REGISTRY=PATH keeps them)
os.environ["TUNESMITH_REGISTRY"] = os.environ.get("TUNESMITH_BENCH_REGISTRY", "off")

ROOT = Path(__file__).resolve().parent.parent
DIALOGSUM = ROOT.parent / "shared" / "data" / "dialogsum" / "train.jsonl"
EXAMPLE = ROOT / "examples" / "meeting-notes"
SYSTEM = "You are a helpful assistant that writes short, factual summaries of dialogues."
USER = "Summarize the following dialogue in one or two sentences.\n\n{dialogue}"
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
}
IGNORE = -100
FLOP_FORMULA = (
    "model FLOPs = sum over steps of [4·N_frozen·T + 6·N_lora·T + 4·V·d·A + attention]: T = real (non-pad) "
    "tokens, "
    "A = answer tokens (the loss needs the output layer there only), N_frozen = frozen weights outside the "
    "embedding/output layer (forward 2N + backward to the activations 2N, no weight gradient), N_lora = LoRA "
    "weights (2N + 2N + 2N weight gradient), V·d = output layer (forward + backward to the hidden state; "
    "tied, "
    "frozen), attention = 12·d_attn·Σ_layers Σ_i min(i, window) per sequence (QKᵀ and AV, causal, forward + "
    "2× "
    "backward). The same count is used for both runs (it is the work the task needs, not what each "
    "implementation "
    "executes), so MFU ratio = speed ratio at the same precision. MFU = achieved FLOP/s / measured matmul "
    "FLOP/s "
    "(2048×2048 on a CPU with the same threads, 8192×8192 on a GPU) of the precision the side computes in "
    "(fp32, or bf16 under --precision bf16)."
)


# ======================================================================== parent: data


def chat_examples(which: str, n_train: int, n_val: int) -> tuple[list[dict], list[dict]]:
    """-> (train, val) as lists of {"messages": [...]}."""
    if which == "dialogsum":
        if not DIALOGSUM.is_file():
            sys.exit(f"{DIALOGSUM}: not found")
        rows = [json.loads(l) for l in DIALOGSUM.read_text().splitlines() if l.strip()]

        def conv(r):
            return {
                "messages": [
                    {"role": "system", "content": SYSTEM},
                    {"role": "user", "content": USER.format(dialogue=r["dialogue"].strip())},
                    {"role": "assistant", "content": r["summary"].strip()},
                ]
            }

        return [conv(r) for r in rows[:n_train]], [conv(r) for r in rows[n_train : n_train + n_val]]
    if which == "example":

        def load(p):
            return [{"messages": json.loads(l)["messages"]} for l in p.read_text().splitlines() if l.strip()]

        return load(EXAMPLE / "train.jsonl"), load(EXAMPLE / "val.jsonl")
    raise SystemExit(f"--data {which!r}: expected dialogsum or example")


def encode_examples(tok, examples: list[dict], max_length: int) -> tuple[list[dict], list[dict], int]:
    """Tokenize with tunesmith's encoder; drop what tunesmith would drop (longer than max_length)."""
    from tunesmith.models.chat import encode_chat

    kept, enc, dropped = [], [], 0
    for ex in examples:
        e = encode_chat(tok, ex["messages"])
        if len(e.input_ids) > max_length:
            dropped += 1
            continue
        kept.append(ex)
        enc.append({"input_ids": e.input_ids, "labels": e.labels})
    return kept, enc, dropped


def n_answer(labels: list[int]) -> int:
    return sum(1 for x in labels[1:] if x != IGNORE)


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def prepare_data(work: Path, model: str, train_ex, val_ex, max_length: int) -> dict:
    from tunesmith.models.loading import load_tokenizer
    from tunesmith.models.resolve import resolve

    model_dir = resolve(model)
    tok = load_tokenizer(model_dir)
    train_ex, train_enc, d1 = encode_examples(tok, train_ex, max_length)
    val_ex, val_enc, d2 = encode_examples(tok, val_ex, max_length)
    work.mkdir(parents=True, exist_ok=True)
    write_jsonl(work / "train.jsonl", train_ex)
    write_jsonl(work / "val.jsonl", val_ex)
    (work / "encoded.json").write_text(json.dumps({"train": train_enc, "val": val_enc}))
    return {
        "model_dir": str(model_dir),
        "train": str(work / "train.jsonl"),
        "val": str(work / "val.jsonl"),
        "encoded": str(work / "encoded.json"),
        "n_train": len(train_enc),
        "n_val": len(val_enc),
        "dropped_train": d1,
        "dropped_val": d2,
        "train_tokens_per_epoch": sum(len(e["input_ids"]) for e in train_enc),
        "train_answer_tokens_per_epoch": sum(n_answer(e["labels"]) for e in train_enc),
    }


# ======================================================================== parent: running workers


def run_worker(kind: str, spec: dict, work: Path, tag: str) -> dict:
    """One subprocess; its own peak RSS from wait4, its wall time; its result JSON."""
    spec = dict(spec, result=str(work / f"{tag}.result.json"))
    spec_path = work / f"{tag}.spec.json"
    spec_path.write_text(json.dumps(spec))
    log_path = work / f"{tag}.log"
    env = dict(os.environ, **OFFLINE_ENV)
    t0 = time.time()
    with open(log_path, "w") as log:
        p = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--worker", kind, "--spec", str(spec_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=str(ROOT),
        )
        _, status, ru = os.wait4(p.pid, 0)
    wall = time.time() - t0
    rc = os.waitstatus_to_exitcode(status)
    p.returncode = rc
    if rc != 0:
        tail = "".join(log_path.read_text(errors="replace").splitlines(keepends=True)[-40:])
        raise SystemExit(f"{tag} worker failed (exit {rc}); log {log_path}:\n{tail}")
    out = json.loads(Path(spec["result"]).read_text())
    out["process_wall_s"] = wall
    out["process_peak_rss_mib"] = ru.ru_maxrss / 1024  # KiB on Linux
    return out


# ======================================================================== worker helpers


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


class PeakMemory:
    """Peak RSS (and CUDA allocation) between start() and stop(): VmHWM after resetting it through
    /proc/self/clear_refs; where that is not allowed, a 5 ms polling thread."""

    def start(self):
        import torch

        self.cuda = torch.cuda.is_available()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self.rss_start = _status_kib("VmRSS")
        self.poll = None
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.method = "VmHWM reset via /proc/self/clear_refs"
        except OSError:
            self.method = "VmRSS polled every 5 ms"
            self.poll_peak, self.stop_flag = self.rss_start, False

            def run():
                while not self.stop_flag:
                    self.poll_peak = max(self.poll_peak, _status_kib("VmRSS"))
                    time.sleep(0.005)

            self.poll = threading.Thread(target=run, daemon=True)
            self.poll.start()

    def stop(self) -> dict:
        import torch

        if self.poll is not None:
            self.stop_flag = True
            self.poll.join()
            peak = self.poll_peak
        else:
            peak = _status_kib("VmHWM")
        out = {
            "rss_before_train_mib": self.rss_start / 1024,
            "peak_rss_train_mib": peak / 1024,
            "rss_method": self.method,
        }
        if self.cuda:
            torch.cuda.synchronize()
            out["cuda_peak_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
            out["cuda_peak_reserved_mib"] = torch.cuda.max_memory_reserved() / 2**20
        return out


def model_stats(model) -> dict:
    """Parameter counts for the FLOP formula, and the attention shape."""
    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    total = sum(p.numel() for p in model.parameters())
    lora = sum(p.numel() for p in model.parameters() if p.requires_grad)
    tied = head.data_ptr() == emb.data_ptr()
    frozen = total - lora - emb.numel() - (0 if tied else head.numel())
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    cfg = inner.config.get_text_config() if hasattr(inner.config, "get_text_config") else inner.config
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    types = getattr(cfg, "layer_types", None) or ["full_attention"] * cfg.num_hidden_layers
    window = getattr(cfg, "sliding_window", None)
    windows = [window if (t == "sliding_attention" and window) else None for t in types]
    return {
        "params_total": total,
        "params_lora": lora,
        "params_frozen_body": frozen,
        "vocab": head.shape[0],
        "hidden": head.shape[1],
        "tied_embeddings": tied,
        "d_attn": heads * head_dim,
        "layer_windows": windows,
    }


def versions() -> dict:
    import importlib.metadata as md

    out = {}
    for pkg in ("tunesmith", "torch", "transformers", "peft", "accelerate", "trl", "datasets"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    import torch

    out["cuda"] = torch.version.cuda if torch.cuda.is_available() else None
    return out


def write_result(spec: dict, rec: dict) -> None:
    Path(spec["result"]).write_text(json.dumps(rec, indent=1))


def tunesmith_config(spec: dict):
    from tunesmith.train.config import TrainConfig

    return TrainConfig(
        model=spec["model"],
        data=spec.get("train"),
        out=spec.get("out"),
        method="lora",
        epochs=spec["epochs"],
        lr=spec["lr"],
        batch_size=spec["batch_size"],
        micro_batch_size=spec["micro_batch_size"],
        max_length=spec["max_length"],
        lora_r=spec["lora_r"],
        lora_alpha=spec["lora_alpha"],
        lora_dropout=0.0,
        lora_targets="all-linear",
        precision=spec["precision"],
        warmup_ratio=spec["warmup_ratio"],
        scheduler="cosine",
        max_steps=spec["max_steps"],
        max_grad_norm=1.0,
        weight_decay=0.0,
        seed=spec["seed"],
        low_memory=spec.get("low_memory", False),
        pass_tokens=spec.get("pass_tokens", 0),
    )


# ======================================================================== worker: tunesmith


def worker_tunesmith(spec: dict) -> None:
    t_start = time.time()
    import torch

    import tunesmith.train.sft as S
    from tunesmith.train.run import Run
    from tunesmith.train.trainer import train

    rec: dict = {"side": "tunesmith", "versions": versions(), "threads": torch.get_num_threads()}
    plans: dict[int, list] = {}
    mem = PeakMemory()
    orig_batches, orig_fit = S.batches, Run.fit

    def batches(encoded, cfg, epoch):  # record the step plan tunesmith actually uses
        plans[epoch] = orig_batches(encoded, cfg, epoch)
        return plans[epoch]

    def fit(
        run,
    ):  # the run harness's loop, timed from its start to its end (validation and checkpoints included)
        train_enc = run.m.train_enc
        rec["setup_s"] = time.time() - t_start
        rec["model"] = model_stats(run.m.model)
        rec["encoding"] = [(len(e.input_ids), n_answer(e.labels)) for e in train_enc]
        expected = json.loads(Path(spec["encoded"]).read_text())["train"]
        rec["same_token_ids_as_shared_encoding"] = len(expected) == len(train_enc) and all(
            e.input_ids == x["input_ids"] and e.labels == x["labels"] for e, x in zip(train_enc, expected)
        )
        rec["encoded_lengths"] = [len(e.input_ids) for e in train_enc]
        mem.start()
        t = time.perf_counter()
        st = orig_fit(run)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        rec["fit_s"] = time.perf_counter() - t
        rec.update(mem.stop())
        rec["_enc"] = train_enc
        return st

    S.batches, Run.fit = batches, fit
    cfg = tunesmith_config(spec)
    res = train(cfg, quiet=True)
    enc = rec.pop("_enc")
    steps, done = [], 0
    for epoch in sorted(plans):
        for micro in plans[epoch]:
            if done >= res.steps:
                break
            steps.append(step_stats([[enc[i] for i in m] for m in micro], lambda e: (e.input_ids, e.labels)))
            done += 1
    metrics = [json.loads(l) for l in (Path(spec["out"]) / "metrics.jsonl").read_text().splitlines()]
    losses = [m["loss"] for m in metrics if "loss" in m]
    for s, l in zip(steps, losses):
        s["loss"] = l
    rec.update(
        steps=steps,
        n_steps=res.steps,
        adapter=spec["out"],
        reported_tokens_per_s=res.tokens_per_s,
        reported_answer_tokens_per_s=res.answer_tokens_per_s,
        reported_tokens=max((m.get("tokens", 0) for m in metrics), default=0),
        settings={k: v for k, v in vars(cfg).items()},
    )
    write_result(spec, rec)


def step_stats(micro_batches, get) -> dict:
    """Per optimizer step: answer tokens, real tokens, padded tokens, sequence lengths."""
    ans = real = padded = 0
    lengths = []
    for mb in micro_batches:
        width = 0
        for ex in mb:
            ids, labels = get(ex)
            ans += n_answer(labels)
            real += len(ids)
            lengths.append(len(ids))
            width = max(width, len(ids))
        padded += width * len(mb)
    return {
        "answer_tokens": ans,
        "real_tokens": real,
        "padded_tokens": padded,
        "micro_batches": len(micro_batches),
        "lengths": lengths,
    }


# ======================================================================== worker: TRL


def trl_plan(lengths: list[int], spec: dict, epoch: int) -> list[list[int]]:
    """tunesmith's step plan for an epoch, as micro-batches for the HF Trainer: every step must be exactly
    gradient_accumulation_steps micro-batches, so a short step tunesmith runs as one micro-batch is split into
    that many (same examples, same step); a step with fewer examples than that goes to the epoch's end."""
    from types import SimpleNamespace

    from tunesmith.train.batching import batches

    ga = spec["batch_size"] // spec["trl_micro_batch_size"]
    cfg = tunesmith_config(spec)
    cfg.micro_batch_size = spec[
        "trl_micro_batch_size"
    ]  # the same steps; only their split into passes is TRL's
    plan = batches([SimpleNamespace(input_ids=[0] * n) for n in lengths], cfg, epoch)
    out, last = [], []
    for micro in plan:
        if len(micro) == ga:
            out += micro
            continue
        flat = [i for m in micro for i in m]
        if len(flat) < ga:
            last = [[i] for i in flat]
            continue
        k, r = divmod(len(flat), ga)
        parts, s = [], 0
        for j in range(ga):
            n = k + (1 if j < r else 0)
            parts.append(flat[s : s + n])
            s += n
        out += parts
    return out + last


def worker_trl(spec: dict) -> None:
    t_start = time.time()
    import collections

    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from torch.utils.data import DataLoader
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging
    from trl import SFTConfig, SFTTrainer

    from tunesmith.models.chat import FALLBACK_TEMPLATE
    from tunesmith.train.run import lr_schedule

    hf_logging.set_verbosity_warning()
    rec: dict = {"side": "trl", "versions": versions(), "threads": torch.get_num_threads()}
    cuda = torch.cuda.is_available()
    precision = spec.get("trl_precision") or spec["precision"]
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    tok = AutoTokenizer.from_pretrained(spec["model_dir"])
    if tok.pad_token_id is None:  # as tunesmith does
        tok.pad_token = tok.eos_token
    if not tok.chat_template:  # as tunesmith does: its fallback (ChatML) template
        tok.chat_template = FALLBACK_TEMPLATE
    model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=dtype, use_safetensors=True)
    model.to("cuda" if cuda else "cpu")
    shared = json.loads(Path(spec["encoded"]).read_text())["train"]
    if spec["trl_data"] == "tokens":
        train_ds = Dataset.from_list([{"input_ids": e["input_ids"], "labels": e["labels"]} for e in shared])
    else:  # TRL's own tokenization: conversational prompt-completion
        rows = [json.loads(l)["messages"] for l in Path(spec["train"]).read_text().splitlines() if l.strip()]
        for m in rows:
            if m[-1]["role"] != "assistant" or any(x["role"] == "assistant" for x in m[:-1]):
                raise SystemExit("--trl-data native needs one assistant turn, the last, per example")
        train_ds = Dataset.from_list([{"prompt": m[:-1], "completion": m[-1:]} for m in rows])

    ga = spec["batch_size"] // spec["trl_micro_batch_size"]
    order = spec["trl_order"]
    args = SFTConfig(
        output_dir=str(Path(spec["out"]).parent / "trl-trainer-out"),
        per_device_train_batch_size=spec["trl_micro_batch_size"],
        gradient_accumulation_steps=ga,
        learning_rate=spec["lr"],
        num_train_epochs=spec["epochs"],
        max_steps=spec["max_steps"] if spec["max_steps"] > 0 else -1,
        max_length=spec["max_length"],
        max_grad_norm=1.0,
        weight_decay=0.0,
        gradient_checkpointing=False,
        bf16=precision == "bf16",
        fp16=False,
        use_cpu=not cuda,
        packing=False,
        padding_free=False,
        assistant_only_loss=False,
        completion_only_loss=True if spec["trl_data"] == "native" else None,
        train_sampling_strategy={"tunesmith": "sequential"}.get(order, order),
        seed=spec["seed"],
        data_seed=spec["seed"],
        logging_steps=1,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    micro_log: collections.deque = collections.deque()
    steps_rec: list[dict] = []
    ts_cfg = tunesmith_config(spec)
    lengths = [len(e["input_ids"]) for e in shared]

    class PlanBatchSampler:
        def __init__(self):
            self.epoch = 0

        def set_epoch(self, epoch):
            self.epoch = epoch

        def __len__(self):
            return len(trl_plan(lengths, spec, 1))

        def __iter__(self):  # HF epochs count from 0, tunesmith's from 1
            return iter(trl_plan(lengths, spec, self.epoch + 1))

    def counting(collate):
        def wrapped(examples):
            batch = collate(examples)
            lab = batch["labels"]
            micro_log.append(
                {
                    "answer": int((lab[:, 1:] != IGNORE).sum()),
                    "real": int(batch["attention_mask"].sum()),
                    "padded": int(batch["input_ids"].numel()),
                    "lengths": batch["attention_mask"].sum(1).tolist(),
                }
            )
            return batch

        return wrapped

    class BenchSFTTrainer(SFTTrainer):
        def create_scheduler(self, num_training_steps, optimizer=None):
            if (
                self.lr_scheduler is None
            ):  # the exact schedule tunesmith uses, so both see the same lr every step
                self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
                    optimizer or self.optimizer, lr_schedule(ts_cfg, num_training_steps)
                )
                self._created_lr_scheduler = True
            return self.lr_scheduler

        def get_train_dataloader(self):
            if order != "tunesmith":
                return super().get_train_dataloader()
            ds = self._remove_unused_columns(self.train_dataset, description="Training")
            return self.accelerator.prepare(
                DataLoader(ds, batch_sampler=PlanBatchSampler(), collate_fn=self.data_collator, num_workers=0)
            )

        def training_step(self, model, inputs, num_items_in_batch=None):
            m = micro_log.popleft()
            step = self.state.global_step + 1
            if not steps_rec or steps_rec[-1]["step"] != step:
                steps_rec.append(
                    {
                        "step": step,
                        "answer_tokens": 0,
                        "real_tokens": 0,
                        "padded_tokens": 0,
                        "micro_batches": 0,
                        "lengths": [],
                        "num_items_in_batch": int(num_items_in_batch)
                        if num_items_in_batch is not None
                        else None,
                    }
                )
            s = steps_rec[-1]
            s["answer_tokens"] += m["answer"]
            s["real_tokens"] += m["real"]
            s["padded_tokens"] += m["padded"]
            s["micro_batches"] += 1
            s["lengths"] += m["lengths"]
            return super().training_step(model, inputs, num_items_in_batch)

    peft_config = LoraConfig(
        r=spec["lora_r"],
        lora_alpha=spec["lora_alpha"],
        lora_dropout=0.0,
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )
    trainer = BenchSFTTrainer(
        model=model, args=args, train_dataset=train_ds, processing_class=tok, peft_config=peft_config
    )
    trainer.data_collator = counting(trainer.data_collator)
    prepared = trainer.train_dataset
    if len(prepared) != len(shared):
        raise SystemExit(f"TRL kept {len(prepared)} of {len(shared)} examples")
    ids = prepared["input_ids"]
    labels = prepared["labels"]
    rec["encoding"] = [(len(i), n_answer(l)) for i, l in zip(ids, labels)]
    rec["same_token_ids_as_shared_encoding"] = all(i == e["input_ids"] for i, e in zip(ids, shared))
    rec["same_labels_as_shared_encoding"] = all(l == e["labels"] for l, e in zip(labels, shared))
    rec["model"] = model_stats(trainer.model)
    rec["setup_s"] = time.time() - t_start
    mem = PeakMemory()
    mem.start()
    t = time.perf_counter()
    out = trainer.train()
    if cuda:
        torch.cuda.synchronize()
    rec["fit_s"] = time.perf_counter() - t
    rec.update(mem.stop())
    losses = {h["step"]: h["loss"] for h in trainer.state.log_history if "loss" in h}
    for s in steps_rec:
        s["loss"] = losses.get(s["step"])
    trainer.save_model(spec["out"])
    defaults = SFTConfig(output_dir=args.output_dir, use_cpu=not cuda)
    changed = {
        k: v
        for k, v in args.to_dict().items()
        if defaults.to_dict().get(k) != v and k not in ("logging_dir",)
    }
    rec.update(
        steps=steps_rec,
        n_steps=trainer.state.global_step,
        adapter=spec["out"],
        train_runtime=out.metrics.get("train_runtime"),
        reported_num_tokens=trainer._total_train_tokens,
        settings={
            "SFTConfig (non-defaults)": changed,
            "optim": str(args.optim),
            "peft_config": {
                "r": spec["lora_r"],
                "lora_alpha": spec["lora_alpha"],
                "lora_dropout": 0.0,
                "target_modules": "all-linear",
                "task_type": "CAUSAL_LM",
            },
            "lr_scheduler": "LambdaLR with tunesmith's multiplier (linear warm-up over "
            f"{spec['warmup_ratio']:.0%} of steps, cosine to 10 % of peak), "
            "via create_scheduler override",
            "dataset": (
                "pre-tokenized input_ids + labels (tunesmith's encoding)"
                if spec["trl_data"] == "tokens"
                else "conversational prompt/completion, tokenized by TRL (completion_only_loss)"
            ),
            "order": {
                "tunesmith": "tunesmith's batches via a batch_sampler (get_train_dataloader override)",
                "group_by_length": "HF LengthGroupedSampler",
                "random": "HF RandomSampler",
            }[order],
            "attn_implementation": getattr(trainer.model.config, "_attn_implementation", None),
            "dtype": str(dtype),
        },
    )
    write_result(spec, rec)


# ======================================================================== worker: matmul + validation


def matmul_gflops(dtype_name: str, min_time: float = 1.5) -> float:
    """Square matmul throughput: the plan's own measurement (tunesmith.train.machine), timed longer."""
    from tunesmith.train.machine import measure_gflops

    return measure_gflops(dtype_name, min_time)


def bf16_native() -> str:
    import torch

    if torch.cuda.is_available():
        return "yes" if torch.cuda.is_bf16_supported() else "no"
    try:
        flags = next(l for l in open("/proc/cpuinfo") if l.startswith("flags")).split()
    except (OSError, StopIteration):
        return "unknown"
    return "yes" if {"avx512_bf16", "amx_bf16"} & set(flags) else "no (emulated)"


def answer_loss_reference(model, items: list[dict]) -> tuple[float, int]:
    """Mean cross-entropy over answer tokens: full logits, one example at a time (no padding)."""
    import torch
    import torch.nn.functional as F

    dev = next(model.parameters()).device
    total, count = 0.0, 0
    with torch.no_grad():
        for e in items:
            ids = torch.tensor([e["input_ids"]], device=dev)
            tgt = torch.tensor([e["labels"][1:]], device=dev)
            logits = model(input_ids=ids).logits[:, :-1].float()
            total += float(
                F.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]),
                    tgt.reshape(-1),
                    ignore_index=IGNORE,
                    reduction="sum",
                )
            )
            count += int((tgt != IGNORE).sum())
    return total / max(count, 1), count


def worker_measure(spec: dict) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    rec: dict = {"threads": torch.get_num_threads(), "versions": versions()}
    if spec.get("matmul", True):
        rec["matmul_fp32_gflops"] = matmul_gflops("fp32")
        rec["bf16_native"] = bf16_native()
        rec["matmul_bf16_gflops"] = matmul_gflops("bf16")
    if spec.get("adapters") is not None:
        dtype = torch.float32  # one judge for both sides, whatever precision each trained in
        dev = "cuda" if torch.cuda.is_available() else "cpu"
        val = json.loads(Path(spec["encoded"]).read_text())["val"]
        rec["val_loss"] = {}

        def base():
            m = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=dtype, use_safetensors=True).to(
                dev
            )
            return m.eval()

        if val:
            rec["val_loss"]["base model"], rec["val_answer_tokens"] = answer_loss_reference(base(), val)
            for name, path in spec["adapters"].items():
                m = PeftModel.from_pretrained(base(), path).eval()
                rec["val_loss"][name], _ = answer_loss_reference(m, val)
    write_result(spec, rec)


# ======================================================================== parent: report


def attention_flops(lengths: list[int], windows: list, d_attn: int) -> float:
    total = 0.0
    for n in lengths:
        for w in windows:
            pairs = n * (n + 1) / 2 if not w or w >= n else w * (w + 1) / 2 + (n - w) * w
            total += 12 * d_attn * pairs
    return total


def model_flops(r: dict) -> float:
    m = r["model"]
    f = 0.0
    for s in r["steps"]:
        f += (4 * m["params_frozen_body"] + 6 * m["params_lora"]) * s["real_tokens"]
        f += 4 * m["vocab"] * m["hidden"] * s["answer_tokens"]
        f += attention_flops(s["lengths"], m["layer_windows"], m["d_attn"])
    return f


def summarize(r: dict, matmul: dict | None, precision: str = "fp32") -> dict:
    steps = r["steps"]
    ans = sum(s["answer_tokens"] for s in steps)
    real = sum(s["real_tokens"] for s in steps)
    pad = sum(s["padded_tokens"] for s in steps)
    losses = [s["loss"] for s in steps if s.get("loss") is not None]
    tail = losses[-max(1, len(losses) // 10) :] if losses else []
    out = {
        "steps": r["n_steps"],
        "answer_tokens": ans,
        "real_tokens": real,
        "padded_tokens": pad,
        "answer_tokens_per_s": ans / r["fit_s"],
        "real_tokens_per_s": real / r["fit_s"],
        "train_s": r["fit_s"],
        "setup_s": r["setup_s"],
        "total_s": r["process_wall_s"],
        "peak_rss_process_mib": r["process_peak_rss_mib"],
        "peak_rss_train_mib": r["peak_rss_train_mib"],
        "rss_before_train_mib": r["rss_before_train_mib"],
        "train_loss_last": losses[-1] if losses else None,
        "train_loss_last10pct": sum(tail) / len(tail) if tail else None,
    }
    for k in ("cuda_peak_allocated_mib", "cuda_peak_reserved_mib"):
        if k in r:
            out[k] = r[k]
    out["model_flops"] = model_flops(r)
    out["achieved_gflops"] = out["model_flops"] / r["fit_s"] / 1e9
    if matmul and matmul.get(f"matmul_{precision}_gflops"):
        out["precision"] = precision
        out["mfu"] = out["achieved_gflops"] / matmul[f"matmul_{precision}_gflops"]
    return out


def fmt(v, digits=1):
    if v is None:
        return "-"
    if isinstance(v, float):
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        return f"{v:.{digits}f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def fairness_report(ts: dict, trl: dict, show: int = 5) -> tuple[list[str], dict]:
    lines = []
    e1, e2 = ts["encoding"], trl["encoding"]
    same_len = sum(a[0] == b[0] for a, b in zip(e1, e2))
    d_ans = sum(b[1] - a[1] for a, b in zip(e1, e2))
    lines.append(
        f"- examples: {len(e1)} (tunesmith) / {len(e2)} (TRL); identical token ids: {same_len}/{len(e1)}; "
        f"answer tokens per epoch: {sum(a[1] for a in e1):,} (tunesmith) / {sum(b[1] for b in e2):,} (TRL), "
        f"difference {d_ans:+,}"
    )
    s1, s2 = ts["steps"], trl["steps"]
    n = min(len(s1), len(s2))
    same_steps = sum(
        s1[i]["answer_tokens"] == s2[i]["answer_tokens"] and s1[i]["real_tokens"] == s2[i]["real_tokens"]
        for i in range(n)
    )
    lines.append(
        f"- steps: {len(s1)} / {len(s2)}; steps with identical answer and real token counts: "
        f"{same_steps}/{n}; "
        f"totals: answer {sum(s['answer_tokens'] for s in s1):,} / {sum(s['answer_tokens'] for s in s2):,}, "
        f"real {sum(s['real_tokens'] for s in s1):,} / {sum(s['real_tokens'] for s in s2):,}, "
        f"padded {sum(s['padded_tokens'] for s in s1):,} / {sum(s['padded_tokens'] for s in s2):,}"
    )
    nums = [s.get("num_items_in_batch") for s in s2]
    if all(x is not None for x in nums):
        ok = all(x == s["answer_tokens"] for x, s in zip(nums, s2))
        lines.append(f"- TRL's loss normalizer (num_items_in_batch) equals its step's answer tokens: {ok}")
    lines.append("")
    lines.append("| step | answer tokens ts / TRL | real tokens ts / TRL | padded ts / TRL | loss ts / TRL |")
    lines.append("| --- | --- | --- | --- | --- |")
    idx = list(range(min(show, n))) + ([n - 1] if n > show else [])
    for i in idx:
        a, b = s1[i], s2[i]
        lines.append(
            f"| {i + 1} | {a['answer_tokens']} / {b['answer_tokens']} | {a['real_tokens']} / "
            f"{b['real_tokens']} | "
            f"{a['padded_tokens']} / {b['padded_tokens']} | {fmt(a.get('loss'), 4)} / "
            f"{fmt(b.get('loss'), 4)} |"
        )
    diffs = [
        abs(a["loss"] - b["loss"])
        for a, b in zip(s1, s2)
        if a.get("loss") is not None and b.get("loss") is not None
    ]
    return lines, {
        "identical_token_ids": same_len,
        "examples": len(e1),
        "answer_token_diff_per_epoch": d_ans,
        "steps_identical_counts": same_steps,
        "steps_compared": n,
        "max_abs_step_loss_diff": max(diffs) if diffs else None,
    }


def main_table(sm: dict, val: dict) -> list[str]:
    rows = [
        ("trained (answer) tokens/s", "answer_tokens_per_s", 1, True),
        ("all real (non-pad) tokens/s", "real_tokens_per_s", 1, True),
        ("training wall time, s (fit, no model load)", "train_s", 1, False),
        ("setup: start → training, s (imports, model load, data)", "setup_s", 1, False),
        ("total wall time of the process, s", "total_s", 1, False),
        ("peak RSS of the process, MiB", "peak_rss_process_mib", 0, False),
        ("peak RSS during training, MiB", "peak_rss_train_mib", 0, False),
        ("RSS when training starts, MiB", "rss_before_train_mib", 0, False),
        ("CUDA peak allocated, MiB", "cuda_peak_allocated_mib", 0, False),
        ("final train loss (last step)", "train_loss_last", 4, False),
        ("train loss, mean of last 10 % of steps", "train_loss_last10pct", 4, False),
        ("achieved model GFLOP/s", "achieved_gflops", 2, True),
        ("precision of the matmuls", "precision", 0, False),
        ("MFU (vs the matmul peak of that precision)", "mfu", 4, True),
    ]
    sides = [k for k in ("tunesmith", "trl") if k in sm]
    head = "| metric | " + " | ".join({"tunesmith": "tunesmith", "trl": "TRL"}[k] for k in sides)
    head += " | tunesmith / TRL |" if len(sides) == 2 else " |"
    lines = [head, "| --- |" + " --- |" * (len(sides) + (1 if len(sides) == 2 else 0))]
    for label, key, digits, _ in rows:
        if not any(key in sm[k] for k in sides):
            continue
        vals = [sm[k].get(key) for k in sides]
        line = f"| {label} | " + " | ".join(fmt(v, digits) for v in vals)
        if len(sides) == 2:
            a, b = vals
            line += (
                f" | {a / b:.2f}× |"
                if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b
                else " | - |"
            )
        else:
            line += " |"
        lines.append(line)
    if val:
        vals = [val.get(k) for k in sides]
        line = "| validation loss (shared answer-only loss) | " + " | ".join(fmt(v, 4) for v in vals)
        line += (
            f" | {vals[0] / vals[1]:.3f}× |"
            if len(sides) == 2 and all(vals)
            else " |"
            if len(sides) != 2
            else " | - |"
        )
        lines.append(line)
    return lines


# ======================================================================== parent: main and sweep


def trl_micro(a) -> int:
    return a.trl_micro_batch_size or a.micro_batch_size or 1


def micro_label(a) -> str:
    ts = a.micro_batch_size or "auto"
    return f"{ts}" if trl_micro(a) == a.micro_batch_size else f"tunesmith {ts}, TRL {trl_micro(a)}"


def common_spec(a, model: str) -> dict:
    return {
        "model": model,
        "epochs": a.epochs,
        "lr": a.lr,
        "batch_size": a.batch_size,
        "micro_batch_size": a.micro_batch_size,
        "trl_micro_batch_size": trl_micro(a),
        "max_length": a.max_length,
        "lora_r": 16,
        "lora_alpha": 32,
        "precision": a.precision,
        "trl_precision": a.trl_precision or a.precision,
        "warmup_ratio": 0.1,
        "max_steps": a.max_steps,
        "seed": a.seed,
        "low_memory": a.low_memory,
        "pass_tokens": a.pass_tokens,
        "trl_order": a.trl_order,
        "trl_data": a.trl_data,
    }


def run_compare(a, work: Path) -> dict:
    train_ex, val_ex = chat_examples(a.data, a.n_train, a.n_val)
    data = prepare_data(work / "data", a.model, train_ex, val_ex, a.max_length)
    print(
        f"data {a.data}: {data['n_train']} train / {data['n_val']} val examples (dropped as longer than "
        f"{a.max_length} tokens: {data['dropped_train']} / {data['dropped_val']}); per epoch "
        f"{data['train_tokens_per_epoch']:,} tokens, {data['train_answer_tokens_per_epoch']:,} answer tokens",
        flush=True,
    )
    spec = dict(common_spec(a, a.model), **{k: data[k] for k in ("model_dir", "train", "val", "encoded")})
    results, sides = {}, (["tunesmith", "trl"] if a.only == "both" else [a.only])
    for side in sides:
        print(f"running {side} ...", flush=True)
        results[side] = run_worker(side, dict(spec, out=str(work / f"{side}-run")), work, side)
        r = results[side]
        print(
            f"  {side}: {r['n_steps']} steps in {r['fit_s']:.1f}s (process {r['process_wall_s']:.1f}s, "
            f"peak RSS {r['process_peak_rss_mib']:.0f} MiB)",
            flush=True,
        )
    print("measuring matmul peak and validation loss ...", flush=True)
    measure = run_worker(
        "measure",
        dict(spec, matmul=not a.no_matmul, adapters={k: r["adapter"] for k, r in results.items()}),
        work,
        "measure",
    )
    sm = {
        k: summarize(r, measure, spec["precision"] if k == "tunesmith" else spec["trl_precision"])
        for k, r in results.items()
    }
    val = {k: measure.get("val_loss", {}).get(k) for k in results}
    report = {
        "data": dict(data, which=a.data),
        "spec": spec,
        "summary": sm,
        "val_loss": measure.get("val_loss"),
        "matmul": {
            k: measure.get(k) for k in ("matmul_fp32_gflops", "matmul_bf16_gflops", "bf16_native", "threads")
        },
        "flop_formula": FLOP_FORMULA,
        "machine": machine(),
        "versions": measure["versions"],
        "trl_settings": results.get("trl", {}).get("settings"),
        "tunesmith_settings": results.get("tunesmith", {}).get("settings"),
        "runs": {k: {x: y for x, y in r.items() if x not in ("encoding",)} for k, r in results.items()},
    }
    lines = [
        f"## tunesmith vs TRL: {a.model}, data {a.data}, {data['n_train']} train / {data['n_val']} val, "
        f"batch {a.batch_size} (micro {micro_label(a)}), lr {a.lr}, "
        + (f"max {a.max_steps} steps" if a.max_steps else f"{a.epochs} epochs")
        + f", max length {a.max_length}, "
        + (
            f"tunesmith {a.precision}, TRL {a.trl_precision}"
            if a.trl_precision and a.trl_precision != a.precision
            else a.precision
        )
        + f", seed {a.seed}",
        "",
    ]
    lines += main_table(sm, val)
    lines.append("")
    if measure.get("val_loss"):
        lines.append(
            f"Validation loss: {measure['val_answer_tokens']:,} answer tokens of {data['n_val']} examples, "
            f"one example at a time, full logits; base model before training: "
            f"{measure['val_loss']['base model']:.4f}."
        )
    if measure.get("matmul_fp32_gflops"):
        from tunesmith.train.machine import MATMUL_N

        n = MATMUL_N["cuda" if measure["versions"].get("cuda") else "cpu"]
        lines.append(
            f"Matmul peak ({n}×{n}, {measure['threads']} threads): fp32 {measure['matmul_fp32_gflops']:.1f} "
            f"GFLOP/s, bf16 {measure['matmul_bf16_gflops']:.1f} GFLOP/s (native bf16: "
            f"{measure['bf16_native']})."
        )
    lines.append(f"FLOPs: {FLOP_FORMULA}")
    if "tunesmith" in results and "trl" in results:
        flines, fair = fairness_report(results["tunesmith"], results["trl"])
        report["fairness"] = fair
        lines += ["", "### Fairness check (same work on both sides)", ""] + flines
    v = measure["versions"]
    cuda = f" (CUDA {v['cuda']})" if v.get("cuda") else ""
    lines += [
        "",
        f"Versions: tunesmith {v['tunesmith']}, torch {v['torch']}{cuda}, transformers {v['transformers']}, "
        f"peft {v['peft']}, accelerate {v['accelerate']}, trl {v['trl']}, datasets {v['datasets']}. "
        f"Machine: {machine()['summary']}.",
    ]
    if "trl" in results:
        lines += ["", "TRL settings: " + json.dumps(results["trl"]["settings"], default=str)]
    report["markdown"] = "\n".join(lines)
    return report


def machine() -> dict:
    from tunesmith.train.machine import cpu_name

    cpu = cpu_name()
    gpu = None
    try:
        r = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        gpu = r.stdout.strip() or None if r.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        pass
    mem = None
    try:
        mem = int(next(l.split()[1] for l in open("/proc/meminfo") if l.startswith("MemTotal"))) / 2**20
    except (OSError, StopIteration):
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    summary = (
        f"{cpu}, {os.cpu_count()} logical CPUs, {mem:.0f} GiB RAM" if mem else f"{cpu}, {os.cpu_count()} CPUs"
    )
    if gpu:
        summary += f", GPU {gpu}"
    if load:
        summary += f", load average at start {load[0]:.2f}"
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "mem_gib": mem,
        "gpu": gpu,
        "loadavg": load,
        "summary": summary,
    }


def sweep_examples(tok, length: int, count: int) -> list[dict]:
    """Chats that fill about `length` tokens: dialogsum dialogues joined line by line, a summary as the
    answer."""
    from tunesmith.models.chat import encode_chat

    rows = [json.loads(l) for l in DIALOGSUM.read_text().splitlines() if l.strip()]
    pool = [(line, r["summary"]) for r in rows for line in r["dialogue"].splitlines() if line.strip()]
    out, pos = [], 0
    for _ in range(count):

        def build(k, pos=pos):  # this example's lines start at pos
            lines = [pool[(pos + j) % len(pool)][0] for j in range(k)]
            return {
                "messages": [
                    {"role": "system", "content": SYSTEM},
                    {"role": "user", "content": USER.format(dialogue="\n".join(lines))},
                    {"role": "assistant", "content": pool[pos % len(pool)][1]},
                ]
            }

        lo, hi = 1, max(2, length // 4)  # most lines with the whole chat at most `length` tokens
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if len(encode_chat(tok, build(mid)["messages"]).input_ids) <= length:
                lo = mid
            else:
                hi = mid - 1
        out.append(build(lo))
        pos += lo
    return out


def run_sweep(a, work: Path) -> dict:
    from tunesmith.models.loading import load_tokenizer
    from tunesmith.models.resolve import resolve

    sides = (
        ["tunesmith"]
        if a.only in (None, "tunesmith")
        else (["tunesmith", "trl"] if a.only == "both" else [a.only])
    )
    rows = []
    for model in a.sweep_models.split(","):
        model_dir = resolve(model)
        tok = load_tokenizer(model_dir)
        for length in [int(x) for x in a.sweep_lengths.split(",")]:
            tag = f"{model}-{length}"
            d = work / tag
            ex = sweep_examples(tok, length, a.batch_size * a.sweep_steps)
            data = prepare_data(d, model, ex, [], length)
            spec = dict(
                common_spec(a, model),
                max_length=length,
                max_steps=a.sweep_steps,
                epochs=1,
                **{k: data[k] for k in ("model_dir", "train", "val", "encoded")},
            )
            for side in sides:
                print(f"sweep {tag} {side} ...", flush=True)
                r = run_worker(side, dict(spec, out=str(d / f"{side}-run")), d, side)
                s = summarize(r, None)
                rows.append(
                    {
                        "model": model,
                        "max_length": length,
                        "side": side,
                        "steps": r["n_steps"],
                        "mean_tokens_per_example": data["train_tokens_per_epoch"] / data["n_train"],
                        **{
                            k: s.get(k)
                            for k in (
                                "real_tokens_per_s",
                                "answer_tokens_per_s",
                                "train_s",
                                "peak_rss_train_mib",
                                "peak_rss_process_mib",
                                "rss_before_train_mib",
                                "cuda_peak_allocated_mib",
                                "achieved_gflops",
                            )
                        },
                    }
                )
                print("  " + json.dumps(rows[-1]), flush=True)
    cuda = any(r.get("cuda_peak_allocated_mib") is not None for r in rows)
    lines = [
        f"## Sweep: memory and speed vs max length and model ({a.sweep_steps} steps each, batch "
        f"{a.batch_size} "
        f"(micro {micro_label(a)}), examples filled to about max length, {a.precision})",
        "",
        "| model | max length | run | tokens/example | real tokens/s | peak RSS in training, MiB | process "
        "peak RSS, MiB |" + (" CUDA peak, MiB |" if cuda else ""),
        "| --- | --- | --- | --- | --- | --- | --- |" + (" --- |" if cuda else ""),
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['max_length']} | {r['side']} | {r['mean_tokens_per_example']:.0f} | "
            f"{fmt(r['real_tokens_per_s'])} | {fmt(r['peak_rss_train_mib'], 0)} | "
            f"{fmt(r['peak_rss_process_mib'], 0)} |"
            + (f" {fmt(r.get('cuda_peak_allocated_mib'), 0)} |" if cuda else "")
        )
    return {"sweep": rows, "machine": machine(), "versions": versions(), "markdown": "\n".join(lines)}


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--data",
        default="dialogsum",
        choices=["dialogsum", "example"],
        help="dialogsum: ../shared/data/dialogsum (first --n-train for training, the next --n-val for "
        "validation); example: examples/meeting-notes",
    )
    ap.add_argument("--n-train", type=int, default=450)
    ap.add_argument("--n-val", type=int, default=50)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--max-steps", type=int, default=0, help="stop after N optimizer steps (0: all epochs)")
    ap.add_argument("--batch-size", type=int, default=8, help="examples per optimizer step")
    ap.add_argument(
        "--micro-batch-size",
        type=int,
        default=0,
        help="examples per forward pass, both sides (0: tunesmith's automatic micro-batches, TRL 1)",
    )
    ap.add_argument(
        "--trl-micro-batch-size",
        type=int,
        default=0,
        help="TRL's examples per forward pass when not --micro-batch-size's",
    )
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument(
        "--trl-precision", choices=["fp32", "bf16"], help="TRL's precision when not --precision's"
    )
    ap.add_argument(
        "--only",
        choices=["tunesmith", "trl", "both"],
        default=None,
        help="which trainer(s) to run (default: both; with --sweep: tunesmith)",
    )
    ap.add_argument(
        "--trl-order",
        default="tunesmith",
        choices=["tunesmith", "group_by_length", "random"],
        help="TRL's batch order: tunesmith's batches (default; identical work per step), or HF's own "
        "length-grouped or random sampler",
    )
    ap.add_argument(
        "--trl-data",
        default="tokens",
        choices=["tokens", "native"],
        help="tokens: TRL gets tunesmith's token ids and labels (default; identical answer tokens); native: "
        "conversational prompt/completion, tokenized by TRL (trains also on the newline after the "
        "end-of-turn token: +1 answer token per example)",
    )
    ap.add_argument(
        "--sweep", action="store_true", help="memory and tokens/s vs max length and model instead"
    )
    ap.add_argument("--sweep-lengths", default="512,1024,2048")
    ap.add_argument("--sweep-models", default="smollm2-135m,gemma3-270m")
    ap.add_argument("--sweep-steps", type=int, default=3)
    ap.add_argument(
        "--low-memory",
        action="store_true",
        help="tunesmith with --low-memory (TRL as it is: it has no such switch)",
    )
    ap.add_argument(
        "--pass-tokens", type=int, default=0, help="tunesmith's --pass-tokens (bf16 on a CPU; 0: its default)"
    )
    ap.add_argument("--no-matmul", action="store_true", help="skip the matmul microbenchmark (and so MFU)")
    ap.add_argument("--out", help="also write everything as JSON here")
    ap.add_argument("--keep", help="keep the run directories (adapters, logs) in this folder")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        spec = json.loads(Path(a.spec).read_text())
        {"tunesmith": worker_tunesmith, "trl": worker_trl, "measure": worker_measure}[a.worker](spec)
        return
    if a.micro_batch_size and a.batch_size % a.micro_batch_size or a.batch_size % trl_micro(a):
        sys.exit("--batch-size must be a multiple of --micro-batch-size and --trl-micro-batch-size")
    if a.only in (None, "both", "trl") and not a.sweep or a.only in ("both", "trl"):
        import importlib.util

        if importlib.util.find_spec("trl") is None:
            sys.exit(
                "TRL is not installed: pip install -r benchmarks/requirements-trl.txt (or pass --only "
                "tunesmith)"
            )
    if a.only is None and not a.sweep:
        a.only = "both"
    work = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="train-vs-trl-"))
    if a.keep:
        if work.exists() and any(work.iterdir()):
            sys.exit(f"--keep {work}: exists and is not empty")
        work.mkdir(parents=True, exist_ok=True)
    try:
        report = run_sweep(a, work) if a.sweep else run_compare(a, work)
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    report["command"] = " ".join([Path(sys.executable).name, *sys.argv])
    print()
    print(report["markdown"])
    if a.out:
        Path(a.out).write_text(json.dumps(report, indent=1, default=str))
        print(f"\nwrote {a.out}")


if __name__ == "__main__":
    main()
