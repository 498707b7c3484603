"""`tunesmith serve`: the OpenAI-compatible endpoint (serve/server.py).

The parsers are declarations only; each handler imports its library when the command runs, so building
every parser (`tunesmith --help`) imports no torch."""

from __future__ import annotations

import importlib.util
import sys

from tunesmith.errors import UserError
from tunesmith.flags import add_allow_host, add_docs, add_model, add_registry
from tunesmith.registry.db import is_off


def add_parsers(sub) -> None:
    """The parsers of `serve` (declarations only)."""
    p = sub.add_parser(
        "serve", help="OpenAI-compatible HTTP API with one or more adapters (needs the 'serve' extra)"
    )
    add_model(p)
    p.add_argument(
        "--adapter",
        action="append",
        default=[],
        metavar="NAME=RUN_DIR",
        help="serve this adapter as model NAME (repeatable); requests choose it by their `model` field; "
        "a run trained with --task answers on POST /v1/classify",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    add_allow_host(p)
    p.add_argument(
        "--api-key-env",
        default="TUNESMITH_API_KEYS",
        metavar="VAR",
        help="environment variable with the accepted API keys, comma-separated (default TUNESMITH_API_KEYS)",
    )
    p.add_argument("--api-key-file", help="file with one accepted API key a line")
    p.add_argument(
        "--no-auth", action="store_true", help="accept requests without a key (only sensible on 127.0.0.1)"
    )
    p.add_argument("--max-batch", type=int, default=16, help="requests generated together (default 16)")
    p.add_argument(
        "--max-queue", type=int, default=64, help="requests waiting beyond this get 429 (default 64)"
    )
    p.add_argument(
        "--max-tokens", type=int, default=1024, help="largest max_tokens a request may ask for (default 1024)"
    )
    p.add_argument(
        "--max-prompt-tokens",
        type=int,
        default=4096,
        help="longest prompt accepted, in tokens (default 4096)",
    )
    p.add_argument(
        "--max-body", type=int, default=1_000_000, help="largest request body in bytes (default 1000000)"
    )
    p.add_argument(
        "--timeout", type=float, default=300.0, help="seconds a request may take in all (default 300)"
    )
    p.add_argument(
        "--log-prompts", action="store_true", help="put prompt text in the access log (off by default)"
    )
    add_docs(p)
    p.add_argument(
        "--capture",
        action="store_true",
        help="keep every request and answer in the registry, and take POST /v1/feedback (off by default)",
    )
    add_registry(p)
    p.set_defaults(handler=cli_serve)


def _captures(args, engine, base_name, adapters):
    """serve --capture: where each request and answer is kept (the registry), or None."""
    from tunesmith.registry.captures import Captures
    from tunesmith.registry.runfolder import run_id_of

    if not args.capture:
        return None
    if engine is None:
        raise UserError("--capture keeps chat answers; this server has only --task runs (/v1/classify)")
    if is_off(args.registry):
        raise UserError("--capture keeps answers in the registry: leave out --registry off")
    versions = {base_name: (None, None)}
    for name, path in adapters.items():
        try:
            versions[name] = (str(path), run_id_of(path))
        except UserError:  # an adapter folder that is not a run of ours: its path says which it was
            versions[name] = (str(path), None)
    return Captures(args.registry, versions)


def _docs_index(args, engine):
    """serve --docs: the index every chat answer retrieves from, or None."""
    from tunesmith.corpus.cite import open_docs

    if args.docs and engine is None:
        raise UserError("--docs answers chat requests; this server has only --task runs (/v1/classify)")
    return open_docs(args.docs, args.passages)


def cli_serve(args) -> int:
    from tunesmith.serve.labels import load_classifiers
    from tunesmith.serve.server import load_engine, parse_adapters, read_keys, split_runs
    from tunesmith.web.guard import host_rule

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
    adapters, tasks = split_runs(parse_adapters(args.adapter))
    engine, base_name = None, None
    if adapters or args.model or not tasks:
        engine, base_name = load_engine(
            args.model,
            adapters,
            trust_remote_code=args.trust_remote_code,
            max_batch=args.max_batch,
            max_queue=args.max_queue,
        )
    classifiers = load_classifiers(tasks, trust_remote_code=args.trust_remote_code)
    if base_name in classifiers:
        raise UserError(f"--adapter {base_name}=...: that name is the base model's; pick another")
    capture = _captures(args, engine, base_name, adapters)
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
    docs = _docs_index(args, engine)
    app = create_app(engine, base_name, settings, classifiers, docs, args.passages)
    models = ", ".join(([base_name] + engine.adapters if engine else []) + list(classifiers))
    print(
        f"serving {models} on http://{args.host}:{args.port}/v1 "
        f"({'no auth' if args.no_auth else f'{len(keys)} API key(s)'})"
        + (f"; capturing requests and answers in {capture.where}" if capture else "")
        + (f"; answering from {args.docs} ({args.passages} passages an answer)" if docs else ""),
        file=sys.stderr,
        flush=True,
    )
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    try:
        uvicorn.Server(config).run()
    finally:
        if engine is not None:
            engine.close()
    return 0
