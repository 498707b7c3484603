"""Who the local web servers (`tunesmith ui`, `tunesmith serve`) answer: a Host allow-list and a
same-origin rule for writes, as one ASGI wrapper both apps put in front of their routes.

Why a Host allow-list: a server on 127.0.0.1 is reachable by every web page the user opens. A page
on attacker.example can re-point its own name at 127.0.0.1 (DNS rebinding); the browser then
treats our server as attacker.example's own origin and lets the page read every answer (the
registry's test transcripts, every output). The request still says `Host: attacker.example`,
which is what gives it away: Ollama (CVE-2024-28224) and Jupyter refuse such Host names for this
reason, and so do we, with a 421 that names the rule.

The names answered:
- bound to a loopback address (the default): `localhost`, `127.0.0.1` and `[::1]` only;
- bound to one other address: that address and the loopback names;
- bound to every address (0.0.0.0, ::): the loopback names, this machine's host name, and any IP
  address written as such (a page cannot rebind an IP literal: no name is looked up);
- and in every case the names given with `--allow-host NAME` (repeatable; `*` turns the check off,
  for a reverse proxy that checks Host itself).
The port is not compared: an `ssh -L 9000:localhost:8400` tunnel arrives as `localhost:9000`.

Why an Origin check on writes: a browser sends `Origin` with every POST. A write whose Origin is not
this server's own (scheme, allowed name, same port as the Host it was sent to) is refused with a
403 even when it carries the right token or cookie: a page elsewhere must not be able to post
judgements or spend the model's time through the user's browser. Clients that are not browsers
(curl, the openai library) send no Origin and are judged by their key or token alone.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARD = ("0.0.0.0", "::", "")
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def is_loopback(host: str) -> bool:
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


def split_host(value: str) -> tuple[str, str] | None:
    """'Name:8400' -> ('name', '8400'); '[::1]:80' -> ('::1', '80'); None for what is not a host."""
    value = value.strip()
    if value.startswith("["):
        name, sep, rest = value[1:].partition("]")
        if not sep or not _is_ip(name) or (rest and not rest.startswith(":")):
            return None
        port = rest[1:]
    else:
        name, _, port = value.partition(":")
        if ":" in port:
            return None  # an IPv6 address must be bracketed in a Host header
    if (port and not (port.isdigit() and len(port) <= 5)) or not name:
        return None
    name = name.lower().rstrip(".")
    if not name or any(c.isspace() or c in "/\\@?#" for c in name):
        return None
    return name, port


@dataclass(frozen=True)
class HostRule:
    """The names a server answers (see the module docstring); `bound` is the address it listens on."""

    bound: str
    names: frozenset[str]
    any_ip: bool = False
    anyone: bool = False

    def allows(self, name: str) -> bool:
        return self.anyone or name in self.names or (self.any_ip and _is_ip(name))

    def describe(self) -> str:
        if self.anyone:
            return "any Host (--allow-host '*')"
        shown = ", ".join(f"[{n}]" if ":" in n else n for n in sorted(self.names))
        return shown + (" and any IP address" if self.any_ip else "")


def host_rule(bound: str, allow: list[str] | tuple[str, ...] = ()) -> HostRule:
    names = set(LOOPBACK_NAMES)
    extra = [a.strip().lower().rstrip(".").strip("[]") for a in allow if a.strip()]
    any_ip = False
    if bound in WILDCARD:
        any_ip = True
        name = socket.gethostname()  # not getfqdn(): a DNS lookup that can stall an offline start
        if name:
            names.add(name.lower().rstrip("."))
    elif not is_loopback(bound):
        names.add(bound.lower().strip("[]"))
    return HostRule(bound, frozenset(names | {e for e in extra if e != "*"}), any_ip, "*" in extra)


def loopback_rule() -> HostRule:
    return host_rule("127.0.0.1")


def refusal(scope: dict, rule: HostRule) -> tuple[int, str, str] | None:
    """(status, code, sentence) when this request must not be answered, else None."""
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
    raw = headers.get("host", "")
    host = split_host(raw)
    if host is None or not rule.allows(host[0]):
        where = f"bound to {rule.bound}" if rule.bound else "this server"
        return (
            421,
            "host_not_allowed",
            f"Host {raw!r} is not a name this server answers ({where}, it answers {rule.describe()}): "
            "a guard against DNS rebinding; open it by one of those names, or start it with "
            "--allow-host NAME",
        )
    if scope.get("method", "GET").upper() in SAFE_METHODS:
        return None
    origin = headers.get("origin")
    if origin is None:
        if headers.get("sec-fetch-site") == "cross-site":
            return 403, "cross_origin", "a write from another site's page is refused (Sec-Fetch-Site)"
        return None
    if not _same_origin(origin, host, rule, scope):
        return (
            403,
            "cross_origin",
            f"a write from another origin is refused (Origin {origin[:100]!r}, this server is "
            f"{raw!r}); post from this server's own page, or from a client that sends no Origin",
        )
    return None


def _same_origin(origin: str, host: tuple[str, str], rule: HostRule, scope: dict) -> bool:
    try:
        parts = urlsplit(origin)
        port = parts.port
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not parts.hostname or not rule.allows(parts.hostname):
        return False
    scheme = scope.get("scheme", "http")
    default = {"http": 80, "https": 443}
    host_port = int(host[1]) if host[1] else default.get(scheme, 80)
    return (port or default[parts.scheme]) == host_port


class Guard:
    """ASGI wrapper: a request the HostRule refuses gets a JSON error (`error_body(status, code,
    sentence)`) and never reaches the app."""

    def __init__(self, app, rule: HostRule, error_body: Callable[[int, str, str], dict]):
        self.app, self.rule, self.error_body = app, rule, error_body

    async def __call__(self, scope, receive, send):
        if scope["type"] in ("http", "websocket"):
            refused = refusal(scope, self.rule)
            if refused is not None:
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008})
                    return
                status, code, sentence = refused
                body = json.dumps(self.error_body(status, code, sentence)).encode()
                await send(
                    {
                        "type": "http.response.start",
                        "status": status,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)
