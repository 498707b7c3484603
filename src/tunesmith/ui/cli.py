"""`tunesmith ui`: the web app over a registry, behind its token and the Host/Origin guard.

The parsers are declarations only; each handler imports its library when the command runs, so building
every parser (`tunesmith --help`) imports no torch."""

from __future__ import annotations

import importlib.util
import os
import secrets
import sys

from tunesmith.errors import UserError
from tunesmith.flags import add_allow_host, add_registry
from tunesmith.review.cli import open_registry


def add_parsers(sub) -> None:
    """The parsers of `ui` (declarations only)."""
    p = sub.add_parser(
        "ui", help="the review web app: runs, evals, compare, the review queue (the 'serve' extra)"
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1)",
    )
    p.add_argument("--port", type=int, default=8400, help="port (default 8400)")
    add_allow_host(p)
    p.add_argument(
        "--token-env",
        default="TUNESMITH_UI_TOKEN",
        help="variable holding the token (default TUNESMITH_UI_TOKEN; unset: a new one each start)",
    )
    p.add_argument(
        "--no-token",
        action="store_true",
        help="no token on a loopback address (anyone on this machine may then read the registry)",
    )
    add_registry(p)
    p.set_defaults(handler=cli_ui)


def cli_ui(args) -> int:
    from tunesmith.web.guard import host_rule, is_loopback

    if any(importlib.util.find_spec(m) is None for m in ("fastapi", "uvicorn")):
        raise UserError("ui needs the 'serve' extra: pip install 'tunesmith[serve]'")
    import uvicorn

    from tunesmith.ui.app import create_app  # fastapi: imported once it is known to be there

    reg = open_registry(args)
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
