"""`tunesmith merge`: fold a trained LoRA adapter into its base model and write a standalone Hugging
Face directory (safetensors + config + tokenizer + chat template) that plain
`AutoModelForCausalLM.from_pretrained` loads. Also the checks and the full-precision load that
`tunesmith export` (export.py) shares.

The output is written under a temporary name beside --out and renamed into place at the end, so an
interrupted merge never leaves a half-written model where a good one was.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tunesmith.errors import UserError
from tunesmith.files.atomic import make_temp_dir, replace_dir
from tunesmith.files.outputs import MERGE_INFO, check_replaceable
from tunesmith.models.chat import FALLBACK_TEMPLATE
from tunesmith.models.heads import load_run
from tunesmith.models.loading import LABELS_FILE, check_adapter_dir, is_task_run, load

PROMPT_LEARNING = {"PROMPT_TUNING", "PREFIX_TUNING", "P_TUNING", "MULTITASK_PROMPT_TUNING", "ADAPTION_PROMPT"}


def human_bytes(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB"


# ---------------------------------------------------------------- checks shared by both commands


def adapter_config(adapter: str) -> dict:
    """adapter_config.json of a run dir, after the checks every command makes."""

    path = Path(adapter)
    if path.is_dir() and (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
        raise UserError(
            f"--adapter {adapter}: this run (method full or freeze) is already a standalone Hugging Face "
            "model "
            f"directory; there is nothing to merge. Load it as it is, or export it with "
            f"`tunesmith export --model {adapter} --out FILE.gguf`"
        )
    check_adapter_dir(path)
    cfg = json.loads((path / "adapter_config.json").read_text())
    peft_type = str(cfg.get("peft_type", "")).upper()
    if peft_type in PROMPT_LEARNING:
        kind = peft_type.lower().replace("_", "-")
        raise UserError(
            f"--adapter {adapter}: a {kind} adapter adds learned virtual tokens to every prompt; it changes "
            "no "
            "weights, so it cannot be merged into the model or exported. Use it with `tunesmith "
            "generate/serve "
            f"--adapter {adapter}`, or train with --method lora to get a mergeable adapter"
        )
    if peft_type != "LORA":
        raise UserError(
            f"--adapter {adapter}: peft_type {cfg.get('peft_type')!r}; only LoRA adapters can be merged or "
            "exported"
        )
    return cfg


def load_fp32(spec: str, adapter: str | None, trust_remote_code: bool):
    """Base model (+ adapter folded in) in float32, on the CPU: merging in full precision."""
    import torch
    from peft import PeftModel

    loaded = load(spec, adapter, trust_remote_code=trust_remote_code, dtype=torch.float32, merge=True)
    loaded.model.to("cpu")
    if isinstance(loaded.model, PeftModel):  # load() merges every LoRA; guard anyway
        raise UserError(f"--adapter {adapter}: could not be folded into the model")
    return loaded


def _saved_dtype(model_dir: Path):
    """The dtype the base model's weights were saved in (the merged model keeps it)."""
    import torch

    cfg = json.loads((model_dir / "config.json").read_text())
    name = cfg.get("dtype") or cfg.get("torch_dtype") or "float32"
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(
        str(name), torch.float32
    )


def chat_template(tok) -> str:
    template = tok.chat_template
    if isinstance(template, dict):
        template = template.get("default") or next(iter(template.values()))
    return template or FALLBACK_TEMPLATE  # what tunesmith trained and generates with


# ---------------------------------------------------------------- merge


def merge_head_to_dir(run: str, out: Path, *, trust_remote_code: bool = False) -> dict:
    """A --task run (base + LoRA + its trained head) as one standalone classification model at `out`, with
    its labels.json: what `tunesmith predict --adapter OUT` and AutoModelForSequenceClassification load."""
    from peft import PeftModel

    model, tok, space = load_run(run, trust_remote_code)
    if isinstance(model, PeftModel):
        model = model.merge_and_unload()
    tmp = make_temp_dir(out)
    try:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tok.save_pretrained(str(tmp))
        (tmp / LABELS_FILE).write_text(json.dumps(space, indent=2) + "\n")
        (tmp / MERGE_INFO).write_text(
            json.dumps({"adapter": str(Path(run).resolve()), "task": space["task"]}, indent=2)
        )
        check_replaceable(out, "merge")
        replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    weights = sum(p.stat().st_size for p in out.glob("*.safetensors"))
    return {
        "dir": out,
        "bytes": weights,
        "arch": model.config.model_type,
        "dtype": str(model.dtype).removeprefix("torch."),
    }


def merge_to_dir(spec: str, adapter: str, out: Path, *, trust_remote_code: bool = False) -> dict:
    """Write base + adapter as a standalone HF directory at `out` (replaced atomically)."""
    if is_task_run(adapter):
        return merge_head_to_dir(adapter, out, trust_remote_code=trust_remote_code)
    lora = adapter_config(adapter)
    loaded = load_fp32(spec, adapter, trust_remote_code)
    model, tok = loaded.model, loaded.tokenizer
    dtype = _saved_dtype(loaded.model_dir)
    model.to(dtype)
    tok.chat_template = chat_template(tok)
    tmp = make_temp_dir(out)
    try:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tok.save_pretrained(str(tmp))
        if not list(tmp.glob("*.safetensors")) or list(tmp.glob("*.bin")):
            raise UserError(
                "the merged model was not saved as safetensors (transformers version?); nothing was written"
            )
        info = {
            "base_model": spec,
            "base_model_dir": str(loaded.model_dir),
            "adapter": str(Path(adapter).resolve()),
            "lora_r": lora.get("r"),
            "lora_alpha": lora.get("lora_alpha"),
            "use_dora": bool(lora.get("use_dora")),
            "use_rslora": bool(lora.get("use_rslora")),
            "dtype": str(dtype).removeprefix("torch."),
        }
        (tmp / MERGE_INFO).write_text(json.dumps(info, indent=2))
        check_replaceable(out, "merge")
        replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    weights = sum(p.stat().st_size for p in out.glob("*.safetensors"))
    return {"dir": out, "bytes": weights, "arch": model.config.model_type, "dtype": info["dtype"]}
