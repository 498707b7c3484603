"""What the attack suites (tests/test_attacks_*.py) send: foreign Host names, other origins, path traversal
and generated malformed bodies, with one check of every answer (a JSON 4xx that says what was wrong,
never a 5xx)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote

FOREIGN_HOSTS = [
    "attacker.example:8480",  # the request: a rebound name
    "attacker.example",
    "localhost.attacker.example:8400",
    "127.0.0.1.nip.io:8400",
    "127.0.0.1@attacker.example",
    "127.0.0.2:8400",  # loopback, but not a name we answer
    "0.0.0.0:8400",
    "[::ffff:7f00:1]:8400",
    "localhost:8400/evil",
    "localhost:port",
    "::1",  # an IPv6 address without brackets
    "",
]
LOCAL_HOSTS = ["localhost:8400", "127.0.0.1:8400", "[::1]:8400", "LOCALHOST", "localhost.:9000", "127.0.0.1"]
FOREIGN_ORIGINS = [
    "http://attacker.example",
    "https://attacker.example:8400",
    "http://127.0.0.1:9999",  # same machine, another port: another origin
    "http://localhost:8401",
    "null",  # a sandboxed frame or a file:// page
    "file://",
    "chrome-extension://abc",
    "http://127.0.0.1:8400@attacker.example",
]

TRAVERSAL = [
    "../../../../etc/passwd",
    "..%2F..%2F..%2Fetc%2Fpasswd",
    "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "....%2F%2F....%2F%2Fetc%2Fpasswd",
    "%2Fetc%2Fpasswd",
    "..%5C..%5Cwindows%5Cwin.ini",
    "%00",
    "a%00.db",
    "%252e%252e%252f",
    "x" * 5000,
    "%",
    "%%",
    "____",
    quote("😀"),
]

NAN, INF, NINF, BIG = "__nan__", "__inf__", "__ninf__", "__1e400__"
# one of each kind a JSON field can be sent as, plus the edges of numbers and text
UNIVERSAL = [None, True, False, 0, -1, 1.5, 2**64, -(2**64), 10**23, NAN, INF, NINF, BIG, "", " ", "1",
             "\ud800", [], [1], {}, {"$ne": 1}]  # fmt: skip
RAW = [
    b"",
    b"null",
    b"5",
    b'"x"',
    b"[]",
    b"[1]",
    b"{",
    b"}",
    b'{"a":',
    b"{}",
    b"NaN",
    b"\xff\xfe{}",
    b"\x00",
    b"[" * 5000,
    b'{"a":' * 5000 + b"1" + b"}" * 5000,
    json.dumps({"a": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}).encode(),
    '{"x": "\u00e9"}'.encode("utf-16"),
    b'{"__proto__": {"admin": true}}',
    b"\xef\xbb\xbf{}",
    b"{'single': 'quotes'}",
]


def encode(body: dict) -> bytes:
    """JSON with NaN, Infinity and 1e400 where the sentinels stand (json.dumps cannot write them)."""
    raw = json.dumps(body)
    for sentinel, literal in ((NAN, "NaN"), (INF, "Infinity"), (NINF, "-Infinity"), (BIG, "1e400")):
        raw = raw.replace(f'"{sentinel}"', literal)
    return raw.encode()


@dataclass
class Field:
    required: bool
    ok: Callable[[object], bool]  # a value the route may take for this field (the rest must be refused)
    extra: tuple = ()  # values to send beyond UNIVERSAL


def bodies(good: dict, fields: dict[str, Field], unknown_refused: bool) -> list[tuple[str, bool, bytes]]:
    """(field, must be refused, body) for: each required field left out, every UNIVERSAL value and each
    field's own extras put in each field, an unknown field, and the RAW bodies (field '')."""
    out = []
    for name, f in fields.items():
        if f.required:
            out.append((name, True, encode({k: v for k, v in good.items() if k != name})))
        for v in [*UNIVERSAL, *f.extra]:
            out.append((name, not f.ok(v), encode({**good, name: v})))
    out.append(("admin", unknown_refused, encode({**good, "admin": True})))
    out += [("", True, raw) for raw in RAW]
    return out


def is_text(lo: int, hi: int) -> Callable[[object], bool]:
    def ok(v) -> bool:
        return (
            isinstance(v, str) and lo <= len(v) <= hi and v not in (NAN, INF, NINF, BIG) and "\ud800" not in v
        )

    return ok


def is_int(lo: int, hi: int) -> Callable[[object], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def either(*oks) -> Callable[[object], bool]:
    return lambda v: any(ok(v) for ok in oks)


def is_none(v) -> bool:
    return v is None


def problem(status: int, raw: bytes, field: str, refused: bool, error_of) -> str | None:
    """What is wrong with one answer, or None: a 5xx; not JSON; a refusal without its sentence; a body that
    must be refused and was not, or that does not name its field. `error_of(json)` -> (message, field)."""
    if status >= 500:
        return f"{status}: {raw[:200]!r}"
    try:
        message, named = error_of(json.loads(raw)) if status >= 400 else ("", "")
    except (ValueError, KeyError, TypeError, AttributeError):
        return f"{status}, not a JSON error: {raw[:200]!r}"
    if status >= 400 and not message:
        return f"{status} without a message: {raw[:200]!r}"
    if refused and not 400 <= status < 500:
        return f"accepted ({status}) though {field or 'the body'} is bad"
    if refused and field and status not in (413,) and field != named and field not in message:
        return f"{status} does not name {field!r}: {message[:200]}"
    return None
