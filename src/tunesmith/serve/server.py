"""`tunesmith serve`: an OpenAI-compatible HTTP API over one base model and several adapters.

This module starts it: it reads the keys, loads the base model with every adapter under its name
(serve/engine.py batches their requests) and runs the app (serve/app.py) under uvicorn. Adapters are
loaded once, at start, from the directories named on the command line; a request chooses one only
by its name, never by a path.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

from tunesmith.errors import UserError
from tunesmith.models.loading import base_model_of, check_adapter_dir, load
from tunesmith.registry.captures import Captures
from tunesmith.registry.db import is_off
from tunesmith.registry.runfolder import run_id_of
from tunesmith.serve.engine import Engine
from tunesmith.web.guard import host_rule


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
        out[name] = check_adapter_dir(path).resolve()
    return out


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


def cli_serve(args) -> int:
    if any(importlib.util.find_spec(m) is None for m in ("fastapi", "uvicorn", "pydantic")):
        raise UserError("serve needs the 'serve' extra: pip install 'tunesmith[serve]'")
    import uvicorn

    # the app imports fastapi and pydantic (the 'serve' extra): imported once they are known to be there
    from tunesmith.serve.app import Settings, create_app

    for flag in ("max_batch", "max_queue", "max_tokens", "max_prompt_tokens", "max_body"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be at least 1")
    keys = read_keys(args)
    if not keys and not args.no_auth:
        raise UserError(
            f"no API keys: set {args.api_key_env}=key1,key2 or pass --api-key-file FILE "
            f"(or --no-auth to accept anyone who can reach {args.host}:{args.port})"
        )
    adapters = parse_adapters(args.adapter)
    engine, base_name = load_engine(
        args.model,
        adapters,
        trust_remote_code=args.trust_remote_code,
        max_batch=args.max_batch,
        max_queue=args.max_queue,
    )
    capture = None
    if args.capture:
        if is_off(args.registry):
            raise UserError("--capture keeps answers in the registry: leave out --registry off")
        versions = {base_name: (None, None)}
        for name, path in adapters.items():
            try:
                versions[name] = (str(path), run_id_of(path))
            except UserError:  # an adapter folder that is not a run of ours: its path says which it was
                versions[name] = (str(path), None)
        capture = Captures(args.registry, versions)
    settings = Settings(
        keys=[] if args.no_auth else keys,
        max_tokens=args.max_tokens,
        max_prompt_tokens=args.max_prompt_tokens,
        max_body=args.max_body,
        timeout=args.timeout,
        log_prompts=args.log_prompts,
        capture=capture,
        hosts=host_rule(args.host, args.allow_host),
    )
    app = create_app(engine, base_name, settings)
    models = ", ".join([base_name] + engine.adapters)
    print(
        f"serving {models} on http://{args.host}:{args.port}/v1 "
        f"({'no auth' if args.no_auth else f'{len(keys)} API key(s)'})"
        + (f"; capturing requests and answers in {capture.where}" if capture else ""),
        file=sys.stderr,
        flush=True,
    )
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    try:
        uvicorn.Server(config).run()
    finally:
        engine.close()
    return 0
