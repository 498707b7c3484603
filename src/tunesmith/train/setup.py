"""The model a run trains: the base (in the precision plan's dtype), the method's adapter or its
trainable selection, and the CPU bf16 kernels."""

from __future__ import annotations

import json

from tunesmith.errors import UserError
from tunesmith.models.loading import check_adapter_dir, load_base
from tunesmith.train import attention, fused_lora, recompute
from tunesmith.train.config import TrainConfig
from tunesmith.train.precision import autocast_device, cpu_autocast, frozen_base_bf16


def setup_model(cfg: TrainConfig, trust_remote_code: bool = False):
    """The base model with the chosen method applied: what is trainable, and how."""
    import torch

    if cfg.method == "qlora":
        if not torch.cuda.is_available():
            raise UserError(
                "--method qlora quantizes the base model to 4 bits with bitsandbytes, which needs a CUDA "
                "GPU; "
                "on this machine use --method lora (the same adapter, on an unquantized base)"
            )
        import importlib.util

        if importlib.util.find_spec("bitsandbytes") is None:
            raise UserError("--method qlora needs bitsandbytes: pip install bitsandbytes")
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.precision)
    if autocast_device(
        cfg
    ):  # trainable weights and the optimizer in fp32, the forward pass under bf16 autocast
        dtype = torch.bfloat16 if frozen_base_bf16(cfg) else torch.float32
    model, tok, model_dir = load_base(
        cfg.model, trust_remote_code=trust_remote_code, dtype=dtype, quantize_4bit=cfg.method == "qlora"
    )
    if cpu_autocast(cfg):
        model.set_attn_implementation(attention.register())
    torch.manual_seed(cfg.seed)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.method in SELECTIONS:
        if cfg.from_adapter:
            raise UserError(
                f"--from-adapter is for adapter methods; to continue a {cfg.method} run, pass its directory "
                "as --model"
            )
        select_trainable(model, cfg)
    else:
        from peft import PeftModel, get_peft_model

        if cfg.method == "qlora":
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(
                model, use_gradient_checkpointing=cfg.gradient_checkpointing
            )
        elif cfg.gradient_checkpointing:
            model.enable_input_require_grads()
        if cfg.from_adapter:
            src = check_adapter_dir(cfg.from_adapter)
            kind = json.loads((src / "adapter_config.json").read_text()).get("peft_type")
            want = peft_config(cfg).peft_type.value
            if kind != want:
                raise UserError(
                    f"--from-adapter {src}: a {kind} adapter cannot continue as --method {cfg.method} "
                    f"({want})"
                )
            try:
                model = PeftModel.from_pretrained(model, str(src), is_trainable=True)
            except (RuntimeError, ValueError, KeyError) as e:
                raise UserError(
                    f"--from-adapter {src}: does not fit model {cfg.model} ({str(e).splitlines()[0]})"
                ) from None
        else:
            try:
                model = get_peft_model(model, peft_config(cfg))
            except ValueError as e:
                raise UserError(f"--method {cfg.method}: {str(e).splitlines()[0]}") from None
    model.config.use_cache = False
    if cpu_autocast(cfg) and frozen_base_bf16(cfg):
        recompute.apply(model)
    if cfg.method == "lora" and not cfg.fsdp and not torch.cuda.is_available():
        fused_lora.apply(model)  # CPU: bf16 and fp32 alike (measured in fused_lora.py)
    return model, tok, model_dir


def _lora(cfg: TrainConfig):
    from peft import LoraConfig

    targets = (
        cfg.lora_targets
        if cfg.lora_targets == "all-linear"
        else [t.strip() for t in cfg.lora_targets.split(",") if t.strip()]
    )
    return LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=targets,
        use_dora=cfg.method == "dora",
        use_rslora=cfg.rslora,
        task_type="CAUSAL_LM",
    )


def _prompt_tuning(cfg: TrainConfig):
    from peft import PromptTuningConfig, PromptTuningInit

    return PromptTuningConfig(
        task_type="CAUSAL_LM",
        num_virtual_tokens=cfg.virtual_tokens,
        prompt_tuning_init=PromptTuningInit.RANDOM,
    )


def _prefix_tuning(cfg: TrainConfig):
    from peft import PrefixTuningConfig

    return PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=cfg.virtual_tokens)


def _every_weight(model, cfg: TrainConfig) -> None:
    for p in model.parameters():
        p.requires_grad_(True)


def _chosen_weights(model, cfg: TrainConfig) -> None:
    """Only the last --freeze-layers layers, or the --train-modules named."""
    names = [n.strip() for n in cfg.train_modules.split(",") if n.strip()]
    if not names:
        n_layers = model.config.num_hidden_layers
        names = [f"layers.{i}." for i in range(max(0, n_layers - cfg.freeze_layers), n_layers)]
    hit = 0
    for name, p in model.named_parameters():
        on = any(k in name for k in names)
        p.requires_grad_(on)
        hit += on
    if not hit:
        raise UserError(
            f"--train-modules {cfg.train_modules!r}: matches no parameter of this model "
            f"(names look like {next(iter(dict(model.named_parameters())))})"
        )


# What each --method trains: a PEFT adapter (its config), or a selection of the model's own weights.
ADAPTERS = {
    "lora": _lora,
    "dora": _lora,
    "qlora": _lora,
    "dpo": _lora,
    "grpo": _lora,
    "prompt-tuning": _prompt_tuning,
    "prefix-tuning": _prefix_tuning,
}
SELECTIONS = {"full": _every_weight, "freeze": _chosen_weights}


def peft_config(cfg: TrainConfig):
    return ADAPTERS[cfg.method](cfg)


def select_trainable(model, cfg: TrainConfig) -> None:
    """full: every weight. freeze: only the last N layers, or the named modules."""
    SELECTIONS[cfg.method](model, cfg)
