"""Training configuration: one dataclass; the CLI flags and a YAML file both fill it.

Unknown YAML keys are errors that name the closest valid key. The fully resolved config is
saved as config.yaml in the run directory.
"""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from tunesmith.errors import UserError
from tunesmith.models.loading import base_model_of

METHODS = ("lora", "dora", "qlora", "full", "freeze", "prompt-tuning", "prefix-tuning", "dpo", "grpo")
# LoRA adapters trained on preferences / graded samples (train/preference.py)
PREFERENCE_METHODS = ("dpo", "grpo")
# The fewest training pairs DPO is trusted with (train/dpo.py refuses fewer). Measured, not guessed:
# benchmarks/loop.py trained DPO (with its SFT term) from v1 on 4, 18 and 36 of the stand-in reviewer's pairs
# of the example data (36: all its pool had); each v2 lost half its format adherence (100 -> 50-53 %,
# p < 0.001 against v1). So fewer than 37 is refused; whether more pairs help is not measured.
MIN_PAIRS = 37
LOW_REPLAY = (
    "; below 3 earlier examples per new one, 20 corrections cost v1's format adherence in the loop "
    "benchmark (100 -> 83 %, p 0.004)"
)
MEASURED = "benchmarks/RESULTS.md, 'The loop'"
# write a PEFT adapter; the rest a model
ADAPTER_METHODS = ("lora", "dora", "qlora", "prompt-tuning", "prefix-tuning", *PREFERENCE_METHODS)


# The peak learning rate when none is given, per method. LoRA's (and DoRA's, QLoRA's) from the sweeps in
# benchmarks/RESULTS.md ("Defaults that need no sweep"); the others are the rates each method lowered the
# validation loss with in 10 steps on the example data (RESULTS.md, "Training methods") and in the DPO and
# GRPO benchmarks. Full fine-tuning at LoRA's 1e-3 moves 135M weights too far: it needs ~20x less.
DEFAULT_LR = {
    "lora": 1e-3,
    "dora": 1e-3,
    "qlora": 1e-3,
    "full": 5e-5,
    "freeze": 1e-4,
    "prompt-tuning": 3e-1,
    "prefix-tuning": 1e-2,
    "dpo": 5e-4,
    "grpo": 5e-4,
}


@dataclass
class TrainConfig:
    model: str = ""  # unset: the --from-adapter run's base model, else the default (__post_init__)
    data: str | None = None
    val: str | None = None
    out: str | None = None
    method: str = "lora"
    epochs: int = 3
    lr: float = 0.0  # 0 = the method's default (DEFAULT_LR)
    batch_size: int = 8  # examples per optimizer step
    # examples per forward pass (gradient accumulation makes up the rest); 0 = auto: 1 on a CPU, where
    # unpadded single sequences train faster and in ~1/3 of the memory of 4 padded ones (measured,
    # benchmarks/RESULTS.md), and the largest divisor of batch_size up to 4 on a GPU
    micro_batch_size: int = 0
    # tokens per forward pass under CPU bf16 with micro_batch_size 0; 0 = auto (precision.TOKEN_BUDGET)
    pass_tokens: int = 0
    max_length: int = 1024  # longer examples are dropped, and counted
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0  # 0.05 costs ~25 % speed on a CPU (measured); raise it if you see overfitting
    lora_targets: str = "all-linear"  # or a comma-separated list of module names
    rslora: bool = False  # rank-stabilized LoRA scaling (alpha / sqrt(r))
    freeze_layers: int = 2  # method freeze: train only the last N transformer layers ...
    train_modules: str = ""  # ... or only parameters whose names contain one of these (comma-separated)
    virtual_tokens: int = 20  # prompt-tuning / prefix-tuning: number of virtual tokens
    from_adapter: str = ""  # continue training this run's adapter (sequential fine-tuning)
    replay: str = ""  # sequential: the earlier training data, mixed back in with the new examples
    # --replay: earlier examples per new one. 3, measured (benchmarks/RESULTS.md, "The loop"): 20 corrections
    # with 1 each cost v1's format adherence (100 -> 83 %, p 0.004); with 3 each nothing got worse
    replay_ratio: float = 3.0
    precision: str = "auto"  # auto (bf16 on a GPU that has it, else fp32), fp32, bf16 or fp16
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~30 % slower
    low_memory: bool = False  # glibc hands freed tensors back (heap.py): ~21 % lower peak, ~7 % slower
    fsdp: bool = False  # shard weights, gradients and optimizer state over the torchrun processes (FSDP2)
    warmup_ratio: float = 0.1
    scheduler: str = "cosine"  # cosine (to 10 % of peak), linear (to 0) or constant, after warm-up
    max_steps: int = 0  # stop after this many optimizer steps (0 = run all epochs)
    max_grad_norm: float = 1.0  # gradient clipping (0 = off)
    weight_decay: float = 0.0
    train_on: str = "all"  # assistant turns to learn: all, or only the last
    seed: int = 42
    threads: int = 0  # torch CPU threads; 0 = torch's default
    eval_every_steps: int = 0  # validation loss every N steps too (0 = once per epoch)
    patience: int = 0  # stop after this many validations without a new best (0 = never)
    eval_metric: str = ""  # also generate on the validation set at each validation and score it (e.g. rougeL)
    eval_max_new_tokens: int = 256  # --eval-metric: longest generated answer
    eval_limit: int = 0  # --eval-metric: only the first N validation examples (0 = all)
    save_every: int = 0  # checkpoint every N steps too (0 = once per epoch)
    keep_checkpoints: int = 2  # how many recent checkpoints to keep
    tensorboard: str = ""  # also write the metrics as TensorBoard scalars in this folder ("" = off)
    dpo_beta: float = 0.1  # dpo: how far from the reference the preferences may pull the model
    dpo_sft: float = 1.0  # dpo: weight of an SFT term on the chosen answers (RPO, Pang et al. 2024); 0 = off
    allow_few_pairs: bool = False  # dpo: train on fewer pairs than MIN_PAIRS anyway
    graders: str = ""  # grpo: what scores a sampled answer, e.g. "format,rougeL*0.5"
    style: str = ""  # grpo: house-style spec for the format grader (as in `tunesmith eval --style`)
    rubric: str = ""  # grpo: rubric file for the judge grader
    documents: str = (
        ""  # a folder of documents: continued pre-training on them instead of --data (documents.py)
    )
    general: str = ""  # --documents: general text mixed in to limit forgetting (a folder or file)
    general_ratio: float = 0.25  # --general: its tokens per document token
    held_out: float = 0.1  # --documents: share of documents held out for the validation loss (0: none)
    task: str = "generate"  # generate text, or a head: classify, multilabel, regress (train/classify.py)
    class_weights: bool = False  # classify/multilabel: weight each class by n / (k * its count)
    other: str = ""  # classify/multilabel: a validation class the training never shows is read as this one
    huber: float = 0.0  # regress: Huber's loss with this delta instead of squared error (0 = squared error)
    grader_judge: str = ""  # grpo: who answers hosted score_model/label_model graders (a model or a URL)
    trust_grader_code: bool = False  # grpo: allow hosted python graders (their source runs here)
    grpo_group: int = 4  # grpo: answers sampled per prompt
    grpo_beta: float = 0.04  # grpo: weight of the KL penalty to the starting model
    grpo_max_new_tokens: int = 128  # grpo: longest sampled answer
    grpo_temperature: float = 1.0  # grpo: sampling temperature (> 0: a group needs different answers)

    def __post_init__(self) -> None:
        """An explicit model stays as given (even the default's name); an unset one becomes the
        --from-adapter run's base model, else the default (one rule: loading.base_model_of). An unset (0)
        learning rate becomes the method's default."""
        if not self.model:
            self.model = base_model_of(self.from_adapter or None, None)
        if not self.lr:
            self.lr = DEFAULT_LR.get(self.method, DEFAULT_LR["lora"])  # an unknown method fails in validate()
            if (
                self.from_adapter
            ):  # continuing: smaller steps, so a few new examples adjust rather than rewrite
                self.lr /= 2

    def _validate_task(self) -> None:
        why = _task_problem(self)
        if why:
            raise UserError(why)

    def validate(self) -> None:
        self._validate_task()
        why = _documents_problem(self)
        if why:
            raise UserError(why)
        if self.method not in METHODS:
            raise UserError(f"--method {self.method!r}: supported methods are {', '.join(METHODS)}")
        if self.scheduler not in ("cosine", "linear", "constant"):
            raise UserError(f"--scheduler {self.scheduler!r}: expected cosine, linear or constant")
        for name in ("max_steps", "eval_every_steps", "patience", "save_every", "threads"):
            if getattr(self, name) < 0:
                raise UserError(f"--{name.replace('_', '-')} must be 0 or more (got {getattr(self, name)})")
        if self.eval_metric:
            from tunesmith.scoring.metrics import TEXT_METRICS

            if self.eval_metric not in TEXT_METRICS:
                raise UserError(f"--eval-metric {self.eval_metric!r}: choose from {', '.join(TEXT_METRICS)}")
        if self.eval_max_new_tokens < 1 or self.eval_limit < 0:
            raise UserError("--eval-max-new-tokens must be at least 1 and --eval-limit 0 or more")
        if self.keep_checkpoints < 1:
            raise UserError(f"--keep-checkpoints must be at least 1 (got {self.keep_checkpoints})")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise UserError(f"--precision {self.precision!r}: expected auto, fp32, bf16 or fp16")
        if self.train_on not in ("all", "last"):
            raise UserError(f"--train-on {self.train_on!r}: expected all or last")
        if self.micro_batch_size < 0:
            raise UserError(f"--micro-batch-size must be 0 (auto) or more (got {self.micro_batch_size})")
        if self.pass_tokens < 0 or (self.pass_tokens and self.micro_batch_size):
            raise UserError(
                f"--pass-tokens {self.pass_tokens}: give 0 (auto) or more tokens, and only with "
                "--micro-batch-size 0 (it sizes the automatic passes)"
            )
        for name in ("epochs", "batch_size", "max_length", "lora_r", "freeze_layers", "virtual_tokens"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1 (got {getattr(self, name)})")
        if self.micro_batch_size and self.batch_size % self.micro_batch_size:
            raise UserError(
                f"--batch-size {self.batch_size} must be a multiple of --micro-batch-size "
                f"{self.micro_batch_size}"
            )
        if not self.dpo_beta > 0 or self.grpo_beta < 0 or self.dpo_sft < 0:
            raise UserError("--dpo-beta must be positive, --grpo-beta and --dpo-sft 0 or more")
        if self.replay and self.method in PREFERENCE_METHODS:
            raise UserError(
                f"--replay mixes earlier examples into supervised training, not --method {self.method}; "
                "DPO keeps the chosen answers likely with --dpo-sft"
            )
        if self.replay and not self.replay_ratio > 0:
            raise UserError(f"--replay-ratio must be positive (got {self.replay_ratio})")
        if self.grpo_group < 2:
            raise UserError(
                "--grpo-group must be at least 2: advantages compare answers to the same prompt (got "
                f"{self.grpo_group})"
            )
        if not self.grpo_temperature > 0 or self.grpo_max_new_tokens < 1:
            raise UserError(
                "--grpo-temperature must be above 0 (identical samples teach nothing) and "
                "--grpo-max-new-tokens at least 1"
            )
        if self.method != "grpo" and (
            self.graders or self.rubric or self.grader_judge or self.trust_grader_code
        ):
            raise UserError(
                "--graders, --rubric, --grader-judge and --trust-grader-code are for --method grpo"
            )
        if not self.lr > 0:
            raise UserError(f"--lr must be positive (got {self.lr})")
        if self.fsdp and self.method in ("qlora", "prompt-tuning", "prefix-tuning", *PREFERENCE_METHODS):
            raise UserError(
                f"--fsdp works with --method lora, dora, full or freeze, not {self.method}; "
                "drop --fsdp to train on each process with DDP"
            )
        if self.fsdp and self.eval_metric:
            raise UserError(
                "--eval-metric generates during training, which --fsdp does not support; "
                "drop --eval-metric and score the run afterwards with `tunesmith eval`"
            )


HELP = {
    "method": "lora, dora, qlora (CUDA), full, freeze, prompt-tuning or prefix-tuning",
    "epochs": "passes over the training data",
    "lr": "peak learning rate (linear warm-up, then cosine decay); default: by method, 1e-3 for LoRA, 5e-5 "
    "for full (`tunesmith train --print-config` shows it)",
    "batch_size": "examples per optimizer step",
    "micro_batch_size": "examples per forward pass; batch-size / micro-batch-size steps of gradient "
    "accumulation "
    "(default 0 = auto: 1 on a CPU, up to 4 on a GPU; with --precision bf16 on a CPU, whole examples "
    "packed end to end up to --pass-tokens)",
    "pass_tokens": "with --precision bf16 on a CPU and --micro-batch-size 0: tokens per forward pass, whole "
    "examples packed end to end (0 = auto, 1024; 2048 trained 1.1-1.3× faster in ~1.45× the memory)",
    "max_length": "drop examples longer than this many tokens (reported)",
    "lora_r": "LoRA rank",
    "lora_alpha": "LoRA alpha (scale = alpha / r)",
    "lora_dropout": "dropout on the LoRA input",
    "lora_targets": "modules to adapt: all-linear, or names like q_proj,v_proj",
    "rslora": "rank-stabilized LoRA: scale by alpha/sqrt(r) instead of alpha/r",
    "freeze_layers": "--method freeze: train only the last N transformer layers",
    "train_modules": "--method freeze: train only parameters whose names contain one of these "
    "(comma-separated)",
    "virtual_tokens": "--method prompt-tuning/prefix-tuning: number of virtual tokens",
    "from_adapter": "continue training the adapter of this run directory on new data (sequential "
    "fine-tuning; the method's default learning rate is halved)",
    "replay": "the earlier training data (file or folder) to mix back in with the new examples, so new "
    "corrections do not wreck what worked; an earlier example with a new example's prompt is left out",
    "replay_ratio": "--replay: earlier examples drawn per new example",
    "precision": "auto, fp32, bf16 or fp16 (auto: bf16 on a GPU that supports it, else fp32; bf16 on a CPU: "
    "autocast, frozen base in bf16, trainable weights fp32 — fast where the CPU has AVX512-BF16 "
    "or AMX)",
    "gradient_checkpointing": "recompute activations during backward: less memory, slower",
    "low_memory": "hand freed tensors back to the system at once (Linux): a lower peak in RAM, ~7 %% slower",
    "fsdp": "shard weights, gradients and optimizer state across the torchrun processes (PyTorch FSDP2), for "
    "models "
    "that do not fit one device; needs 2 or more processes",
    "warmup_ratio": "fraction of steps spent warming up the learning rate",
    "scheduler": "learning-rate schedule after warm-up: cosine, linear or constant",
    "max_steps": "stop after this many optimizer steps (0 = run all epochs)",
    "max_grad_norm": "clip gradients to this norm (0 = off)",
    "eval_every_steps": "also compute the validation loss every N steps (0 = once per epoch)",
    "patience": "early stopping: stop after N validations without a new best (0 = off)",
    "eval_metric": "also generate on the validation set at each validation, score with this metric (e.g. "
    "rougeL), "
    "and keep / early-stop on the best score instead of the lowest loss",
    "eval_max_new_tokens": "--eval-metric: longest generated answer in tokens",
    "eval_limit": "--eval-metric: generate for only the first N validation examples (0 = all)",
    "save_every": "also write a checkpoint every N steps (0 = once per epoch)",
    "keep_checkpoints": "how many recent checkpoints to keep",
    "tensorboard": "also write every logged metric as TensorBoard scalars in this folder (needs "
    "tunesmith[tensorboard])",
    "weight_decay": "AdamW weight decay",
    "dpo_beta": "--method dpo: beta, how strongly the preferences may move the model away from the reference",
    "dpo_sft": "--method dpo: weight of an SFT loss on the chosen answers beside the DPO loss (RPO); it "
    "keeps the chosen answers likely instead of only pushing the rejected ones down (0 = plain DPO)",
    "allow_few_pairs": "--method dpo: train on fewer pairs than tunesmith trusts (see the refusal)",
    "graders": "--method grpo: KIND[:ARG][*WEIGHT],...: rouge1/rouge2/rougeL/bleu/chrf (vs the answer), "
    "format "
    "(--style), length:N (words), python:MODULE:FUNCTION, judge[:MODEL] (--rubric)",
    "style": "--method grpo: house-style spec (YAML) for the format grader",
    "rubric": "--method grpo: rubric text file for the judge grader",
    "documents": "continued pre-training: learn the words of a folder of documents (txt, md, html, pdf, "
    "docx; the 'documents' extra) instead of --data's examples; rows of --max-length tokens within one "
    "document, "
    "every token a target; held-out documents give the validation loss",
    "general": "--documents: general text (a folder or file) mixed in, so the model forgets less of what "
    "it knew",
    "general_ratio": "--general: tokens of general text per document token",
    "held_out": "--documents: share of documents held out (by document, duplicates together; 0 = none)",
    "task": "what to train: generate (text, the default), or a head on the model: classify (one class), "
    "multilabel (several), regress (a number); the data are {text, label|labels|target}",
    "class_weights": "--task classify/multilabel: weight each class by how rare it is (imbalanced data)",
    "other": "--task classify/multilabel: read a validation label the training never shows as this class "
    "(one of the training classes) instead of stopping",
    "huber": "--task regress: Huber's loss with this delta on the scaled target instead of squared error",
    "grader_judge": "--method grpo: who answers hosted score_model/label_model graders: a local model, "
    "alias or run, or an OpenAI-compatible URL (key from $OPENAI_API_KEY)",
    "trust_grader_code": "--method grpo: allow hosted python graders (their source runs in this process)",
    "grpo_group": "--method grpo: answers sampled per prompt (the group the rewards are compared within)",
    "grpo_beta": "--method grpo: weight of the KL penalty that keeps the model near where it started",
    "grpo_max_new_tokens": "--method grpo: longest sampled answer in tokens",
    "grpo_temperature": "--method grpo: sampling temperature",
    "train_on": "assistant turns that carry loss: all or last",
    "seed": "random seed (data order, dropout, init)",
    "threads": "CPU threads for torch (0 = default)",
}
# Names people bring from other tools, mapped to ours (for "did you mean").
SYNONYMS = {
    "learning_rate": "lr",
    "num_epochs": "epochs",
    "num_train_epochs": "epochs",
    "r": "lora_r",
    "rank": "lora_r",
    "alpha": "lora_alpha",
    "max_seq_length": "max_length",
    "max_seq_len": "max_length",
    "per_device_train_batch_size": "micro_batch_size",
    "target_modules": "lora_targets",
    "base_model": "model",
}
CLI_ONLY = {"model", "data", "val", "out"}  # declared by the CLI itself
ALIASES = {"from_adapter": ("--from",)}  # --from RUN: tune on from a run (the --documents one, say)


def add_config_flags(parser) -> None:
    for f in fields(TrainConfig):
        if f.name in CLI_ONLY:
            continue
        typ = {"int": int, "float": float}.get(f.type if isinstance(f.type, str) else f.type.__name__, str)
        if f.type == "bool":
            parser.add_argument(
                f"--{f.name.replace('_', '-')}",
                dest=f.name,
                action="store_true",
                default=None,
                help=HELP[f.name],
            )
            continue
        parser.add_argument(
            f"--{f.name.replace('_', '-')}",
            *ALIASES.get(f.name, ()),
            dest=f.name,
            type=typ,
            default=None,
            help=f"{HELP[f.name]} (default {f.default})",
        )


def load_yaml(path: str) -> dict:
    import yaml

    p = Path(path)
    if not p.is_file():
        raise UserError(f"--config {path}: no such file")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise UserError(f"{path}{where}: invalid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of option: value")
    valid = [f.name for f in fields(TrainConfig)]
    for key in data:
        norm = str(key).replace("-", "_")
        if norm not in valid:
            close = [SYNONYMS[norm]] if norm in SYNONYMS else difflib.get_close_matches(norm, valid, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(valid)}"
            raise UserError(f"{path}: unknown key {key!r}{hint}")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def resolve_config(args) -> TrainConfig:
    """Defaults < YAML file < command-line flags."""
    values: dict = {}
    if getattr(args, "config", None):
        values.update(load_yaml(args.config))
    for f in fields(TrainConfig):
        v = getattr(args, f.name, None)
        if v is not None:
            values[f.name] = v
    types = {f.name: f.type for f in fields(TrainConfig)}
    for k, v in values.items():
        want = types[k]
        try:
            if want == "bool" and not isinstance(v, bool):
                raise ValueError
            if want == "int" and not isinstance(v, bool):
                values[k] = int(v)
            elif want == "float":
                values[k] = float(v)
        except (TypeError, ValueError):
            raise UserError(f"config {k}: expected {want}, got {v!r}") from None
    cfg = TrainConfig(**values)
    cfg.validate()
    return cfg


def to_yaml(cfg: TrainConfig) -> str:
    import yaml

    return yaml.safe_dump(asdict(cfg), sort_keys=False)


def _task_problem(c: TrainConfig) -> str | None:
    if c.task not in ("generate", "classify", "multilabel", "regress"):
        return f"--task {c.task!r}: expected generate, classify, multilabel or regress"
    if c.task == "generate":
        if c.class_weights or c.huber or c.other:
            return "--class-weights, --other and --huber are for --task classify, multilabel or regress"
        return None
    if c.method not in ("lora", "dora", "full"):
        return f"--task {c.task} trains with --method lora, dora or full, not {c.method}"
    if c.eval_metric or c.replay or c.fsdp or c.from_adapter:
        return f"--task {c.task}: --eval-metric, --replay, --fsdp and --from-adapter are for text generation"
    if c.huber < 0 or c.huber and c.task != "regress":
        return "--huber is a positive delta, for --task regress"
    if c.other and c.task == "regress":
        return "--other is for --task classify or multilabel"
    if c.class_weights and c.task == "regress":
        return "--class-weights is for --task classify or multilabel"
    return None


def _documents_problem(c: TrainConfig) -> str | None:
    if not c.documents:
        return (
            "--general goes with --documents (general text mixed into continued pre-training)"
            if c.general
            else None
        )
    if c.data:
        return (
            "--documents FOLDER trains on the documents, --data FILE on examples: give one (tune on the "
            "examples after, with --from-adapter RUN)"
        )
    if (
        c.task != "generate"
        or c.method in PREFERENCE_METHODS
        or c.method in ("prompt-tuning", "prefix-tuning")
    ):
        return "--documents trains next-token prediction with --method lora, dora, qlora, full or freeze"
    if c.eval_metric or c.replay:
        return "--documents: --eval-metric and --replay are for examples; held-out documents give the loss"
    if not 0 <= c.held_out < 1 or not c.general_ratio > 0:
        return f"--held-out {c.held_out:g} must be in [0, 1) and --general-ratio {c.general_ratio:g} above 0"
    return None


def held_out_count(n: int) -> int:
    """How many of n pairs or prompts DPO and GRPO hold out to measure on when there is no validation file:
    a tenth, at least 1 (the plan counts what training will count)."""
    return max(1, n // 10) if n > 1 else 0


def route(c: TrainConfig, n: int) -> str | None:
    """Which way of making the next version these data support, when the run continues one or learns from
    preferences (issue 32: a few corrections or pairs can wreck a version that worked)."""
    if c.method == "dpo":
        if n < MIN_PAIRS and not c.allow_few_pairs:
            return (
                f"{n} pairs: DPO refuses fewer than {MIN_PAIRS} ({MEASURED}); train the chosen answers "
                "with SFT instead: --method lora --from-adapter RUN --replay DATA"
            )
        if not c.dpo_sft:
            return "plain DPO (--dpo-sft 0) may lower the chosen answers too; the default SFT term keeps them"
        return f"DPO on {n} pairs with an SFT term of {c.dpo_sft:g} on the chosen answers"
    if c.from_adapter and c.method not in ("grpo",):
        if c.replay:
            return (
                f"{n} examples, the new ones with --replay-ratio {c.replay_ratio:g} earlier ones each, "
                f"continuing {c.from_adapter} at lr {c.lr:g}" + (LOW_REPLAY if c.replay_ratio < 3 else "")
            )
        return (
            f"{n} new examples continue {c.from_adapter} alone: add --replay DATA (its earlier training "
            "data) so they adjust it instead of rewriting it"
        )
    return None
