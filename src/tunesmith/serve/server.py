"""`tunesmith serve`: an OpenAI-compatible HTTP API over one base model and several adapters.

This module starts it: it reads the keys, loads the base model with every adapter under its name
(serve/engine.py batches their requests) and runs the app (serve/app.py) under uvicorn. Adapters are
loaded once, at start, from the directories named on the command line; a request chooses one only
by its name, never by a path. A run trained with --task is served beside them on /v1/classify
(serve/labels.py); with only such runs and no --model, no text model is loaded at all.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from tunesmith.errors import UserError
from tunesmith.models.loading import base_model_of, check_adapter_dir, is_task_run, load
from tunesmith.serve.engine import Engine


def read_keys(args) -> list[str]:
    keys = [k.strip() for k in os.environ.get(args.api_key_env, "").split(",") if k.strip()]
    if args.api_key_file:
        path = Path(args.api_key_file)
        if not path.is_file():
            raise UserError(f"--api-key-file {path}: no such file")
        keys += [
            line.strip()
            for line in path.read_text().splitlines()
            if line.strip() and not line.startswith("#")
        ]
    return keys


def parse_adapters(specs: list[str]) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise UserError(f"--adapter {spec}: expected NAME=RUN_DIR, e.g. --adapter notes=runs/notes")
        if name in out:
            raise UserError(f"--adapter {spec}: the name {name!r} is given twice")
        out[name] = (Path(path) if is_task_run(path) else check_adapter_dir(path)).resolve()
    return out


def split_runs(adapters: dict[str, Path]) -> tuple[dict[str, Path], dict[str, Path]]:
    """(adapters that write text, runs trained with --task that label or score it: serve/labels.py)."""
    tasks = {n: p for n, p in adapters.items() if is_task_run(p)}
    return {n: p for n, p in adapters.items() if n not in tasks}, tasks


def load_engine(
    model_spec: str | None,
    adapters: dict[str, Path],
    *,
    trust_remote_code: bool,
    max_batch: int,
    max_queue: int,
) -> tuple[Engine, str]:
    """Base model with every adapter loaded under its name (LoRA/DoRA kept unmerged, switched per batch)."""

    first = next(iter(adapters.values()), None)
    spec = base_model_of(first, model_spec)
    for name, path in adapters.items():
        trained_on = base_model_of(path, None, spec)
        if not model_spec and trained_on != spec:
            raise UserError(
                f"--adapter {name}={path}: was trained on {trained_on}, "
                f"not on {spec} like the first adapter; serve one base model per server, or pass --model"
            )
        try:
            cfg = json.loads((path / "adapter_config.json").read_text())
            cfg.get("peft_type")
        except (ValueError, AttributeError):
            raise UserError(
                f"--adapter {name}={path}: adapter_config.json is damaged (not a JSON object)"
            ) from None
        if cfg.get("peft_type") not in ("LORA",):
            raise UserError(
                f"--adapter {name}={path}: a {cfg.get('peft_type')} adapter; serve takes LoRA/DoRA/QLoRA "
                "adapters "
                f"(use `tunesmith generate` or `tunesmith chat` with a prompt/prefix-tuning run)"
            )
    loaded = load(spec, trust_remote_code=trust_remote_code)
    model = loaded.model
    if adapters:
        from peft import PeftModel

        names = list(adapters)
        model = PeftModel.from_pretrained(model, str(adapters[names[0]]), adapter_name=names[0])
        for name in names[1:]:
            model.load_adapter(str(adapters[name]), adapter_name=name)
        model.eval()
    base_name = spec if "/" not in spec and not spec.endswith(".gguf") else Path(spec).name
    if base_name in adapters:
        raise UserError(f"--adapter {base_name}=...: that name is the base model's; pick another")
    return Engine(
        model, loaded.tokenizer, list(adapters), max_batch=max_batch, max_queue=max_queue
    ), base_name
