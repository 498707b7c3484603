"""Will this training fit, and how long will it take? Predicted before any weight is loaded.

The model is built on PyTorch's meta device from its config.json (shapes, no memory, under a
second), with the run's own adapter or trainable selection applied (setup.py's tables), so the
parameter counts are exact for every architecture transformers knows. The data is tokenized through
the chat template as the run would (sft.encode_data, whose encodings the run then trains on). Then:

Peak memory = runtime (this process's resident memory: the libraries, and what a training process
holds beyond them) + weights (each parameter in the dtype the run holds it in) + trainable state
(fp32 gradient and two AdamW moments, 12 bytes per trainable parameter) + activations of the largest
forward pass × SLACK; for full training at least AdamW's temporaries (4 bytes per trainable weight),
and never less than loading needs when the weights change dtype (the file and the copy at once).

Activations are what autograd keeps for the backward pass, per token per decoder layer, in units of
the hidden size h, the MLP's intermediate size i, the key/value width kv and the LoRA rank r. The
coefficients were counted with saved-tensor hooks on real forward passes (64 and 128 tokens) of
SmolLM2-135M (h 576, i 1536) and a Qwen2.5-0.5B-shaped model (h 896, i 4864), and solved from the
two: fp32 LoRA 6h + 4i + 2kv + r per adapted matrix (4 bytes each; measured 1,186 and 2,366 KB per
token, the formula gives 1,185 and 2,366); fp32 full 8h + 4i + 2kv and the output layer's log-softmax
(vocabulary × 4 bytes per answer token); bf16 on a CPU, whose norms, gated MLPs and attention
recompute in the backward pass (recompute.py, attention.py), 6h + 3i + 2kv + r at 2 bytes (measured
503 / 955 KB per token; formula 503 / 955); bf16 full training keeps its bf16 weight copies (2 bytes
per parameter) and 20 bytes per h per layer more. Gradient checkpointing keeps each layer's input
and one layer's activations at a time.

Time per epoch = the FLOPs of the epoch's tokens / (this machine's matmul speed × EFFICIENCY): per
token 4 FLOPs per frozen weight (forward, and the backward to the activations), 6 per trained weight,
the output layer only at answer positions, and attention 12·d·(T/2) per layer (the same count as
benchmarks/train_vs_trl.py's MFU); plus a fixed cost per decoder layer per pass (LAYER_PASS_S), the
optimizer's work per trainable weight per step, and the validation passes. SLACK, EFFICIENCY,
LAYER_PASS_S and OPTIMIZER_NS are fitted on benchmarks/plan.py's measurements (RESULTS.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from tunesmith.data.formats import load_examples, locate_paths
from tunesmith.errors import UserError
from tunesmith.models.loading import load_tokenizer
from tunesmith.models.resolve import cached_status, resolve
from tunesmith.train import heap, machine, plan_labels
from tunesmith.train.batching import n_answer_tokens, padded_width, row_budget
from tunesmith.train.config import PREFERENCE_METHODS, TrainConfig, held_out_count, route
from tunesmith.train.precision import autocast_device, bucket_size, frozen_base_bf16, packing, token_budget
from tunesmith.train.setup import SELECTIONS, peft_config, select_trainable
from tunesmith.train.sft import Encoded, auto_micro_batch, encode_data

GIB = 2**30
EXIT_WILL_NOT_FIT = 4
# Resident memory over what autograd keeps, fitted on benchmarks/plan.py's SmolLM2-135M runs (256 and 1,024
# tokens, RESULTS.md) and checked on the Qwen2.5-0.5B-shaped ones: freed activations and the backward pass's
# own buffers stay in the heap (glibc keeps what it freed), most of all with PEFT's extra sums in fp32.
SLACK = {"adapter fp32": 2.8, "adapter 16-bit": 1.8, "full": 1.5}
# --low-memory (heap.py) keeps glibc from holding freed activations: fp32 LoRA of SmolLM2-135M on the example
# data peaked at 2,343 and 2,419 MiB instead of 2,680-3,079 (10 steps, RESULTS.md): 1.54-1.64 × what autograd
# keeps instead of 2.8; at 152-154 tokens/s instead of 159-175 (median 165): each new tensor's pages are
# zeroed by the kernel at their first touch.
LOW_MEMORY_SLACK = 1.65
LOW_MEMORY_TIME = 1.07
# A training process holds ~200 MiB more than the plan's own process (the tokenizer and data, oneDNN's
# kernel caches, the progress display): SmolLM2 bf16 LoRA at 256 tokens peaked while loading at 1,549 MiB,
# which is runtime + file + bf16 copy with a 650 MiB runtime; the plan's process read 429-450 MiB.
TRAINING_PROCESS = 200 * 2**20
# A training step's time = its FLOPs / (the matmul peak × EFFICIENCY) + LAYER_PASS_S per decoder layer per
# forward+backward pass + OPTIMIZER_NS per trainable parameter. Fitted together (least squares on the relative
# error) on benchmarks/plan.py's third run, 15 configurations of SmolLM2-135M and a Qwen2.5-0.5B-shaped model
# at 256 and 1,024 tokens (RESULTS.md), then checked on a fourth run: FLOPs alone could not tell SmolLM2's
# 256-token steps (1.40× slower than predicted) from the 0.5B's (on time): what a layer costs beyond its
# matmuls (norms, attention, LoRA's small products, dispatch) weighs most on a narrow model's short passes.
EFFICIENCY = {("fp32", False): 0.58, ("bf16", False): 0.64, ("fp32", True): 0.53, ("bf16", True): 0.58}
LAYER_PASS_S = {"cpu": 0.020, "cuda": 0.001}  # the GPU's is a guess (kernel launches), not measured: no GPU
# ns per trainable parameter per optimizer step: AdamW (foreach, fp32), the gradient-norm clip, zeroing and
# the gradients accumulated over the step's passes; all memory-bound (the fit gave 17.4)
OPTIMIZER_NS = 17.0


def efficiency(precision: str, cfg: TrainConfig) -> float:
    return EFFICIENCY[("fp32" if precision == "fp32" else "bf16", cfg.method in SELECTIONS)]


CUDA_RUNTIME = int(0.6 * GIB)  # the CUDA context and cuBLAS workspace (not measured here: no GPU)


@dataclass
class Arch:
    """What the plan needs of a model: its shapes and parameter counts under the run's method."""

    name: str
    layers: int
    hidden: int
    intermediate: int
    kv: int  # key/value width (heads × head size) of one layer
    attn: int  # query width
    vocab: int
    params: int  # every parameter, adapter included
    adapter_params: int  # parameters the method added (LoRA A/B, virtual tokens)
    trainable: int
    linear: int  # weights of the decoder layers' linear maps (the matmul FLOPs), adapters excluded
    lora_per_layer: int  # adapted matrices per layer (LoRA's r-wide activations)
    norms: int  # width a layer normalizes beyond Llama's two norms (Gemma's extra norms, q/k norms)
    gelu: bool  # a tanh-approximated GELU keeps its intermediate too
    output_trainable: bool
    window: int  # sliding attention window, 0 = none
    stored: int = 0  # bytes of the weights files


@dataclass
class Data:
    """Token counts of the run's data, as the run encodes it (over-long examples dropped)."""

    lengths: list[int]  # tokens of each training example
    answer_counts: list[int]  # answer tokens of each
    val_tokens: int
    val_answers: int
    dropped: int
    encoded: Encoded | None = field(default=None, repr=False, compare=False)  # for the run: tokenized once

    @property
    def answers(self) -> int:
        return sum(self.answer_counts)

    def cut(self, max_length: int) -> Data:
        """The same data under a lower --max-length: longer examples dropped (and counted)."""
        kept = [(n, a) for n, a in zip(self.lengths, self.answer_counts) if n <= max_length]
        return replace(
            self,
            lengths=[n for n, _ in kept],
            answer_counts=[a for _, a in kept],
            dropped=self.dropped + len(self.lengths) - len(kept),
            encoded=None,
        )


@dataclass
class Plan:
    method: str
    precision: str  # what the matmuls compute in: fp32, bf16 or fp16
    where: str  # "RAM" or "GPU memory"
    parts: dict[str, int]  # bytes: runtime, weights, trainable state, activations (, loading, AdamW step)
    resident: int  # of the runtime, what this process holds already
    peak: int
    available: int
    total: int
    pass_tokens: int  # tokens in the largest forward pass
    tokens_per_s: float
    steps_per_epoch: int
    epoch_s: float
    total_s: float
    gflops: float
    measured_now: bool
    flops_per_token: float
    arch: Arch
    data: Data
    cfg: TrainConfig

    @property
    def fits(self) -> bool:
        """The peak beyond what is already in use: on a CPU this process's runtime is resident already (and
        outside MemAvailable); on a GPU the CUDA context is yet to come."""
        return self.peak - self.resident <= self.available


# ------------------------------------------------------------------------------------ what goes in


def architecture(cfg: TrainConfig, trust_remote_code: bool = False) -> Arch:
    """The model of `cfg` with its method applied, built on the meta device: exact counts, no memory."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    model_dir = resolve(cfg.model, trust_remote_code=trust_remote_code)
    conf = AutoConfig.from_pretrained(str(model_dir), trust_remote_code=trust_remote_code)
    text = conf.get_text_config() if hasattr(conf, "get_text_config") else conf
    task = plan_labels.is_task(cfg)
    with torch.device("meta"):
        if task:
            model = plan_labels.meta_model(cfg, conf, trust_remote_code)
        else:
            model = AutoModelForCausalLM.from_config(conf, trust_remote_code=trust_remote_code)
        base_params = sum(p.numel() for p in model.parameters())
        if cfg.method in SELECTIONS:
            select_trainable(model, cfg)
        elif task and cfg.method == "full":
            pass  # every weight trains
        else:
            from peft import get_peft_model

            for p in model.parameters():
                p.requires_grad_(False)
            pc = peft_config(cfg)
            if task:
                pc.task_type = "SEQ_CLS"  # as train/classify.py: the head trained whole beside the adapter
            model = get_peft_model(model, pc)
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    layers = plan_labels.layer_stack(inner, text)
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    linear = lora = norms = 0
    for name, mod in layers[0].named_modules():
        if isinstance(mod, torch.nn.Linear) and "lora_" not in name:
            linear += mod.weight.numel()
        lora += name.endswith("lora_A")
        if "Norm" in type(mod).__name__ and getattr(mod, "weight", None) is not None:
            leaf = name.rsplit(".", 1)[-1]
            norms += (
                text.hidden_size
                if mod.weight.numel() == text.hidden_size
                else heads * head_dim
                if leaf.startswith("q")
                else kv_heads * head_dim
            )
    act = str(getattr(text, "hidden_act", None) or getattr(text, "hidden_activation", ""))
    params = sum(p.numel() for p in model.parameters())
    out = inner.get_output_embeddings() if not task else None
    head = model.config.num_labels if task else 0
    stored = sum(f.stat().st_size for f in model_dir.glob("*.safetensors"))
    return Arch(
        name=cfg.model,
        layers=len(layers),
        hidden=text.hidden_size,
        intermediate=getattr(text, "intermediate_size", 4 * text.hidden_size),
        kv=kv_heads * head_dim,
        attn=heads * head_dim,
        vocab=head or text.vocab_size,  # a --task head's outputs stand for the vocabulary's logits
        params=params,
        adapter_params=params - base_params,
        trainable=sum(p.numel() for p in model.parameters() if p.requires_grad),
        linear=linear * len(layers),
        lora_per_layer=lora,
        norms=max(0, norms - 2 * text.hidden_size),
        gelu="gelu" in act and "tanh" in act,
        output_trainable=task or (out is not None and out.weight.requires_grad),
        window=int(getattr(text, "sliding_window", None) or 0),
        stored=stored,
    )


def data_stats(cfg: TrainConfig, trust_remote_code: bool = False) -> Data:
    model_dir = resolve(cfg.model, trust_remote_code=trust_remote_code)
    if plan_labels.is_task(cfg):
        train, val = plan_labels.text_lengths(cfg, load_tokenizer(model_dir, trust_remote_code))
        return Data(lengths=train, answer_counts=[1] * len(train), val_tokens=sum(val),
                    val_answers=len(val), dropped=0)  # fmt: skip
    enc = encode_data(cfg, load_tokenizer(model_dir, trust_remote_code))
    return Data(
        lengths=[len(e.input_ids) for e in enc.train],
        answer_counts=[n_answer_tokens(enc.train, [k]) for k in range(len(enc.train))],
        val_tokens=sum(len(e.input_ids) for e in enc.val),
        val_answers=n_answer_tokens(enc.val, range(len(enc.val))),
        dropped=len(enc.dropped),
        encoded=enc,
    )


# ------------------------------------------------------------------------------------ the model


def _precision(cfg: TrainConfig) -> str:
    device = autocast_device(cfg)
    if device:
        return "bf16"
    return cfg.precision if cfg.precision in ("bf16", "fp16") else "fp32"


def _pass_tokens(cfg: TrainConfig, data: Data, on_cpu: bool) -> int:
    """Tokens in the largest forward pass, padded as the run pads (CPU bf16: rows of packed examples up to
    the token budget, or padded rows capped at the longest example's width; else examples × longest)."""
    longest = max(data.lengths)
    if plan_labels.is_task(cfg):
        return longest * plan_labels.examples_per_pass(cfg)
    budget = row_budget(longest, cfg)
    if budget and packing(cfg):  # at most a step's longest examples, end to end
        return min(budget, padded_width(sum(sorted(data.lengths)[-cfg.batch_size :]), bucket_size(cfg)))
    if budget:
        return budget
    micro = auto_micro_batch(cfg, on_cpu) or 1
    return longest * min(micro, cfg.batch_size)


def _passes(cfg: TrainConfig, data: Data, on_cpu: bool) -> int:
    """Forward+backward passes in an epoch: per step, the step's examples over the examples a pass holds."""
    budget = token_budget(cfg)
    if plan_labels.is_task(cfg):
        per = plan_labels.examples_per_pass(cfg)
    elif budget:
        mean = round(sum(data.lengths) / len(data.lengths))
        per = max(1, budget // (mean if packing(cfg) else padded_width(mean, bucket_size(cfg))))
    else:
        per = auto_micro_batch(cfg, on_cpu) or 1
    n, batch = len(data.lengths), cfg.batch_size
    full, rest = divmod(n, batch)
    return full * math.ceil(batch / min(per, batch)) + (math.ceil(rest / min(per, batch)) if rest else 0)


def activation_bytes(arch: Arch, cfg: TrainConfig, tokens: int, answers: int, precision: str) -> int:
    """What autograd keeps for the backward pass of one forward pass of `tokens` tokens (the formulas and
    their measurement: module docstring)."""
    h, i, kv, more = arch.hidden, arch.intermediate, arch.kv, arch.norms + arch.gelu * arch.intermediate
    adapters = cfg.method not in SELECTIONS
    r = cfg.lora_r * arch.lora_per_layer if cfg.method in ("lora", "dora", "qlora") else 0
    if precision == "fp32" or autocast_device(cfg) == "cuda" or cfg.method == "qlora":
        unit = 4 if precision == "fp32" else 2
        per_layer = (
            6 * h + 4 * i + 2 * kv + r + more if adapters else 8 * h + 4 * i + 2 * kv + 2 * more
        ) * unit
    else:  # bf16 on a CPU: the recomputing norms, MLPs and attention (adapters); full keeps fp32 norm copies
        per_layer = (6 * h + 3 * i + 2 * kv + r + more) * 2 + (0 if frozen_base_bf16(cfg) else 20 * h)
    trained_layers = arch.layers
    if cfg.method == "freeze" and not cfg.train_modules:
        trained_layers = min(cfg.freeze_layers, arch.layers)  # nothing below the first trained layer is kept
    if cfg.gradient_checkpointing:
        kept = arch.layers * h * (4 if precision == "fp32" else 2) * tokens + per_layer * tokens
    else:
        kept = trained_layers * per_layer * tokens
    if arch.window and tokens > arch.window:  # a sliding window's mask takes SDPA's masked path: T² per layer
        kept += (4 if precision == "fp32" else 2) * tokens * tokens * arch.layers
    if arch.output_trainable:  # log-softmax of the logits at every answer position
        kept += answers * arch.vocab * (4 if precision == "fp32" else 6.7)
    else:  # the blockwise loss keeps the hidden state's gradient only (loss.py)
        kept += answers * h * (4 if precision == "fp32" else 2)
    if not adapters and precision != "fp32" and autocast_device(cfg) == "cpu":
        kept += 2 * (arch.params - arch.adapter_params)  # autocast's bf16 copies of the fp32 weights
    return int(kept)


def weight_bytes(arch: Arch, cfg: TrainConfig, precision: str) -> int:
    base = arch.params - arch.adapter_params
    if cfg.method == "qlora":
        per = 0.56  # NF4 with double-quantized scales; the embeddings stay 16-bit (counted below)
        return int(base * per + arch.vocab * arch.hidden * 1.5 + arch.adapter_params * 4)
    bytes_per = 2 if precision != "fp32" and frozen_base_bf16(cfg) else 4
    if precision != "fp32" and autocast_device(cfg) is None:  # --precision bf16/fp16 without autocast
        bytes_per = 2
    return base * bytes_per + arch.adapter_params * 4


def flops_per_token(arch: Arch, cfg: TrainConfig, mean_len: float, answer_share: float) -> float:
    """Training FLOPs per token (see the module docstring)."""
    frozen, trained = (arch.linear, 0) if cfg.method not in SELECTIONS else (0, arch.linear)
    if cfg.method == "freeze" and not cfg.train_modules:
        share = min(cfg.freeze_layers, arch.layers) / arch.layers
        frozen, trained = arch.linear * (1 - share) / 2, arch.linear * share  # frozen layers below: forward
    lora = arch.adapter_params if cfg.method in ("lora", "dora", "qlora") else 0
    out = arch.vocab * arch.hidden * answer_share * (6 if arch.output_trainable else 4)
    window = min(mean_len, arch.window) if arch.window else mean_len
    attention = 12 * arch.attn * arch.layers * window / 2
    flops = 4 * frozen + 6 * trained + 6 * lora + out + attention
    if cfg.gradient_checkpointing:
        flops += 2 * arch.linear + attention / 3
    return flops


def predict(
    cfg: TrainConfig,
    arch: Arch,
    data: Data,
    speed: tuple[float, bool],
    memory: tuple[int, int],
    runtime: int,
    on_cpu: bool = True,
) -> Plan:
    """The plan of `cfg` on this architecture, data and machine (pure: every measurement is passed in)."""
    precision = _precision(cfg)
    tokens = _pass_tokens(cfg, data, on_cpu)
    share = data.answers / max(sum(data.lengths), 1)
    adapters = cfg.method not in SELECTIONS
    slack = SLACK["full" if not adapters else "adapter fp32" if precision == "fp32" else "adapter 16-bit"]
    if cfg.low_memory and on_cpu:
        slack = min(slack, LOW_MEMORY_SLACK)
    parts = {
        "runtime": runtime + TRAINING_PROCESS if on_cpu else CUDA_RUNTIME,
        "weights": weight_bytes(arch, cfg, precision),
        "gradients and AdamW state": 12 * arch.trainable,
        "activations": int(slack * activation_bytes(arch, cfg, tokens, math.ceil(tokens * share), precision)),
    }
    # full training: AdamW's step makes fp32 temporaries of every trainable weight, activations freed by then
    if not adapters:
        parts["AdamW step"] = max(0, 4 * arch.trainable - parts["activations"])
    converted = arch.stored and abs(arch.stored - parts["weights"]) > 0.1 * arch.stored
    if on_cpu and converted:  # loading: the file's pages and the converted copy at once
        loading = parts["runtime"] + arch.stored + parts["weights"]
        parts["while loading"] = max(0, loading - sum(parts.values()))
    gflops, measured_now = speed
    mean_len = sum(data.lengths) / len(data.lengths)
    per_token = flops_per_token(arch, cfg, mean_len, share)
    tokens_epoch = sum(data.lengths)
    steps = math.ceil(len(data.lengths) / cfg.batch_size)
    # the time inside training steps, the optimizer's included (as the run counts its tokens/s)
    train_s = tokens_epoch * per_token / (gflops * 1e9 * efficiency(precision, cfg))
    train_s += _passes(cfg, data, on_cpu) * arch.layers * LAYER_PASS_S["cpu" if on_cpu else "cuda"]
    train_s += steps * arch.trainable * OPTIMIZER_NS * 1e-9
    if cfg.low_memory and on_cpu:
        train_s *= LOW_MEMORY_TIME
    val_flops = data.val_tokens * (2 * arch.linear + 6 * arch.attn * arch.layers * mean_len / 2)
    val_flops += data.val_answers * 2 * arch.vocab * arch.hidden
    validations = 1 + (steps // cfg.eval_every_steps if cfg.eval_every_steps else 0)
    val_s = validations * val_flops / (gflops * 1e9 * efficiency(precision, cfg))
    epoch_s = train_s + val_s
    total_s = epoch_s * cfg.epochs
    if cfg.max_steps:
        total_s = min(total_s, epoch_s * cfg.max_steps / steps)
    available, total = memory
    return Plan(
        method=cfg.method,
        precision=precision,
        where="RAM" if on_cpu else "GPU memory",
        parts=parts,
        resident=runtime if on_cpu else 0,
        peak=sum(parts.values()),
        available=available,
        total=total,
        pass_tokens=tokens,
        tokens_per_s=tokens_epoch / train_s,
        steps_per_epoch=steps,
        epoch_s=epoch_s,
        total_s=total_s,
        gflops=gflops,
        measured_now=measured_now,
        flops_per_token=per_token,
        arch=arch,
        data=data,
        cfg=cfg,
    )


# ------------------------------------------------------------------------------------ on this machine


def count_pairs(cfg: TrainConfig) -> int:
    """The preference pairs DPO will train on, as its refusal counts them: --data's, less the tenth held out
    to measure on when there is no validation file."""
    train, val = locate_paths(cfg.data, cfg.val)
    n = sum(ex.rejected is not None for ex in load_examples(train, kind=None))
    return n if val else n - held_out_count(n)


def make_plan(cfg: TrainConfig, trust_remote_code: bool = False) -> Plan:
    """The plan of `cfg` here: the architecture and data read, the matmul speed from the cache (measured
    once), the memory there is now."""
    import torch

    if cfg.method in PREFERENCE_METHODS:
        advice = f"; route: {route(cfg, count_pairs(cfg))}" if cfg.method == "dpo" and cfg.data else ""
        raise UserError(
            f"--method {cfg.method}: the plan models the SFT methods (lora, dora, qlora, full, freeze, "
            "prompt-tuning, prefix-tuning); DPO holds two sequences per example and GRPO samples answers, "
            "which it does not predict" + advice
        )
    on_cpu = not torch.cuda.is_available()
    if cfg.method == "qlora" and on_cpu:
        raise UserError(
            "--method qlora quantizes the base model to 4 bits with bitsandbytes, which needs a CUDA GPU; "
            "plan --method lora here (the same adapter, on an unquantized base)"
        )
    arch = architecture(cfg, trust_remote_code)
    data = data_stats(cfg, trust_remote_code)
    speed = machine.matmul_gflops(_precision(cfg), cfg.threads)
    return predict(cfg, arch, data, speed, machine.memory_bytes(), machine.process_rss_bytes(), on_cpu)


def suggestions(plan: Plan, trust_remote_code: bool = False) -> list[tuple[str, Plan]]:
    """Changes that lower the peak, each with its own plan, the ones that fit first."""
    cfg, data = plan.cfg, plan.data
    on_cpu = plan.where == "RAM"
    speed, memory, runtime = (plan.gflops, False), (plan.available, plan.total), plan.resident
    tries: list[tuple[str, TrainConfig, Data, Arch]] = []
    if on_cpu and not cfg.low_memory and heap.available():
        tries.append(("--low-memory", replace(cfg, low_memory=True), data, plan.arch))
    if not cfg.gradient_checkpointing:
        tries.append(("--gradient-checkpointing", replace(cfg, gradient_checkpointing=True), data, plan.arch))
    micro = auto_micro_batch(cfg, on_cpu)
    if micro != 1 or token_budget(cfg):
        tries.append(("--micro-batch-size 1", replace(cfg, micro_batch_size=1), data, plan.arch))
    if on_cpu and plan.precision == "fp32" and {"avx512_bf16", "amx_bf16"} & set(machine.cpu_flags()):
        tries.append(("--precision bf16", replace(cfg, precision="bf16"), data, plan.arch))
    lengths = [
        n for n in (2048, 1536, 1024, 768, 512, 384, 256) if n < max(data.lengths) and data.cut(n).lengths
    ]
    for n in lengths:  # the longest --max-length that fits, else the shortest that keeps any example
        shorter = replace(cfg, max_length=n)
        if n == lengths[-1] or predict(shorter, plan.arch, data.cut(n), speed, memory, runtime, on_cpu).fits:
            tries.append((f"--max-length {n}", shorter, data.cut(n), plan.arch))
            break
    if not on_cpu and cfg.method == "lora":
        tries.append(("--method qlora", replace(cfg, method="qlora"), data, plan.arch))
    for row in cached_status():  # a smaller model already here (nothing is fetched for a suggestion)
        if row["cached"] and row["alias"] != cfg.model:
            small = replace(cfg, model=row["alias"])
            arch = architecture(small)
            if arch.params < plan.arch.params:
                tries.append((f"--model {row['alias']}", small, data_stats(small), arch))
    out = []
    for label, c, d, a in tries:
        own = speed if _precision(c) == plan.precision else machine.matmul_gflops(_precision(c), c.threads)
        out.append((label, predict(c, a, d, own, memory, runtime, on_cpu)))
    return sorted(out, key=lambda lp: (not lp[1].fits, lp[1].total_s))
