"""`tunesmith ui`: the web app over a registry, behind its token and the Host/Origin guard."""

from __future__ import annotations

import importlib.util
import os
import secrets
import sys

from tunesmith.errors import UserError
from tunesmith.registry.db import Registry, is_off
from tunesmith.web.guard import host_rule, is_loopback


def _registry(args) -> Registry:
    if is_off(args.registry):
        raise UserError("--registry off: the ui shows a registry; give one (or leave the default)")
    return Registry(args.registry)


def cli_ui(args) -> int:
    if any(importlib.util.find_spec(m) is None for m in ("fastapi", "uvicorn")):
        raise UserError("ui needs the 'serve' extra: pip install 'tunesmith[serve]'")
    import uvicorn

    from tunesmith.ui.app import create_app  # fastapi: imported once it is known to be there

    reg = _registry(args)
    token = os.environ.get(args.token_env, "").strip() or None
    if args.no_token:
        if not is_loopback(args.host):
            raise UserError(
                f"--no-token: only on a loopback address; {args.host} is reachable from elsewhere"
            )
        if token:
            raise UserError(f"--no-token, but {args.token_env} is set: unset it or leave out --no-token")
    elif not token:
        token = secrets.token_urlsafe(24)  # as Jupyter does: other users of this machine reach loopback too
    hosts = host_rule(args.host, args.allow_host)
    shown = f"[{args.host}]" if ":" in args.host else args.host
    address = f"http://{shown}:{args.port}/" + (f"?token={token}" if token else "")
    print(f"review app for {reg.path} on {address}", file=sys.stderr, flush=True)
    app = create_app(reg.path, token, hosts)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning")
    uvicorn.Server(config).run()
    return 0
