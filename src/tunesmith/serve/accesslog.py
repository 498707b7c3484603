"""`serve`'s access log: one JSON line per request, with no prompt text unless --log-prompts.

Kept apart from the routes (serve/app.py) so that each route adds its fields with `note` and the
line is written once, when the response (or a stream) ends."""

from __future__ import annotations

import json
import sys
import time

from fastapi import Request


def note(request: Request, **fields) -> None:
    """Add fields to this request's access-log line."""
    request.state.log = {**getattr(request.state, "log", {}), **fields}


def write_line(scope, settings, status: int | None) -> None:
    state = scope.setdefault("state", {})
    if status is not None:
        state["status"] = status
    line = {
        "ts": round(time.time(), 3),
        "method": scope.get("method"),
        "path": scope.get("path"),
        "status": state.get("status"),
        "ms": round(1000 * (time.perf_counter() - state.get("t0", time.perf_counter())), 1),
        "client": (scope.get("client") or ["-"])[0],
        **state.get("log", {}),
    }
    print(json.dumps(line, ensure_ascii=False), file=settings.log or sys.stderr, flush=True)


class AccessLog:
    """ASGI wrapper: one JSON line per request (no prompt text unless --log-prompts). Streamed
    responses are logged when the stream ends, with their token counts."""

    def __init__(self, app, settings):
        self.app, self.settings = app, settings

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        state = scope.setdefault("state", {})
        state["t0"] = time.perf_counter()

        async def send_and_note(message):
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            if not state.get("log_later"):
                write_line(scope, self.settings, None)
