"""`tunesmith serve` attacked as `tunesmith ui` is (tests/test_attacks_ui.py): a foreign Host on every route,
writes from another origin with a valid key, a missing or wrong key, path traversal, and over a hundred
generated malformed bodies on each write route (/v1/chat/completions, /v1/completions, /v1/feedback).
In process, over a real Engine with a tiny model and `--capture` on; no case may get a 5xx."""

from __future__ import annotations

import io

import pytest

from conftest import LOCAL, make_adapter
from hostile import (
    FOREIGN_HOSTS,
    FOREIGN_ORIGINS,
    LOCAL_HOSTS,
    TRAVERSAL,
    Field,
    bodies,
    either,
    is_int,
    is_none,
    is_text,
    problem,
)
from tunesmith.registry.captures import Captures
from tunesmith.web.guard import host_rule

pytest.importorskip("fastapi", reason="serve needs the 'serve' extra")
pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx (the 'test' extra)")

from fastapi.testclient import TestClient  # noqa: E402

from tunesmith.serve import app as A  # noqa: E402
from tunesmith.serve.server import load_engine  # noqa: E402

KEY = "sk-attack"
AUTH = {"Authorization": f"Bearer {KEY}"}
MSG = [{"role": "user", "content": "Write the meeting notes."}]
ROUTES = [("GET", "/health"), ("GET", "/v1/models"), ("POST", "/v1/chat/completions"),
          ("POST", "/v1/completions"), ("POST", "/v1/feedback")]  # fmt: skip


@pytest.fixture(scope="module")
def served(tiny_model_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("attack-serve")
    model = tiny_model_dir("llama")
    adapter = make_adapter(model, d / "notes", 3)
    eng, base = load_engine(str(model), {"notes": adapter}, trust_remote_code=False, max_batch=4,
                            max_queue=64)  # fmt: skip
    capture = Captures(str(d / "reg.db"), {base: (None, None), "notes": (str(adapter), None)})
    settings = A.Settings(keys=[KEY], max_tokens=8, max_prompt_tokens=300, max_body=400_000,
                          capture=capture, log=io.StringIO())  # fmt: skip
    app = A.create_app(eng, base, settings)
    with TestClient(app, base_url=LOCAL, raise_server_exceptions=False) as client:
        first = client.post("/v1/chat/completions", headers=AUTH, json={"model": "notes", "messages": MSG,
                                                                        "max_tokens": 2})  # fmt: skip
        assert first.status_code == 200, first.text
        yield client, base, first.json()["id"], (eng, settings)
    eng.close()


def error_of(body: dict) -> tuple[str, str]:
    return body["error"]["message"], body["error"].get("param") or ""


def still_answers(client) -> None:
    r = client.get("/v1/models", headers=AUTH)
    assert r.status_code == 200 and r.json()["data"], r.text


def test_a_foreign_host_is_421_on_every_route_even_with_the_key(served):
    client, base, rid, _ = served
    body = {"model": "notes", "messages": MSG, "prompt": "x", "id": rid, "rating": "up", "max_tokens": 1}
    for method, path in ROUTES:
        for host in FOREIGN_HOSTS:
            r = client.request(method, path, headers={**AUTH, "Host": host}, json=body)
            assert r.status_code == 421, (method, path, host, r.status_code, r.text[:200])
            err = r.json()["error"]
            assert err["code"] == "host_not_allowed" and "DNS rebinding" in err["message"], err
        for host in LOCAL_HOSTS:
            if method == "GET":
                assert client.request(method, path, headers={**AUTH, "Host": host}).status_code == 200, host
    still_answers(client)


def test_bound_elsewhere_serve_answers_the_allowed_names(served):
    client, base, _, (eng, settings) = served
    wide = A.Settings(keys=[KEY], max_tokens=8, hosts=host_rule("0.0.0.0", ["api.example.com"]))
    other = TestClient(A.create_app(eng, base, wide), base_url=LOCAL)
    for host, status in [("api.example.com", 200), ("192.168.1.20:8000", 200), ("[fe80::1]:8000", 200),
                         ("localhost:8000", 200), ("attacker.example", 421)]:  # fmt: skip
        assert other.get("/v1/models", headers={**AUTH, "Host": host}).status_code == status, host


def test_a_cross_origin_write_is_403_even_with_the_key(served):
    client, base, rid, _ = served
    writes = [("/v1/chat/completions", {"model": "notes", "messages": MSG, "max_tokens": 1}),
              ("/v1/completions", {"model": base, "prompt": "Notes:", "max_tokens": 1}),
              ("/v1/feedback", {"id": rid, "rating": "up"})]  # fmt: skip
    for path, body in writes:
        for origin in FOREIGN_ORIGINS:
            r = client.post(path, headers={**AUTH, "Origin": origin}, json=body)
            assert r.status_code == 403, (path, origin, r.text)
            assert r.json()["error"]["code"] == "cross_origin", r.text
        r = client.post(path, headers={**AUTH, "Sec-Fetch-Site": "cross-site"}, json=body)
        assert r.status_code == 403, r.text
        same = client.post(path, headers={**AUTH, "Origin": "http://127.0.0.1:8400"}, json=body)
        assert same.status_code == 200, same.text  # a page of this server's own origin may
        assert client.post(path, headers=AUTH, json=body).status_code == 200  # and a client without Origin
    still_answers(client)


def test_a_missing_or_wrong_key_is_401_on_every_route(served):
    client, base, rid, _ = served
    for method, path in ROUTES:
        for headers in ({}, {"Authorization": "Bearer sk-attac"}, {"Authorization": f"Basic {KEY}"},
                        {"Authorization": KEY}, {"Authorization": f"Bearer {KEY}x"}):  # fmt: skip
            r = client.request(method, path, headers=headers, json={"model": base, "prompt": "x"})
            if path == "/health":  # liveness only: no models, no queue without a key
                assert r.status_code == 200 and r.json() == {"status": "ok"}, r.text
                continue
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key", (path, r.text)
    still_answers(client)


def test_path_traversal_and_unknown_routes_are_json_404(served):
    client, _, _, _ = served
    for bad in TRAVERSAL:
        for t in ("/v1/{}", "/v1/models/{}", "/{}", "/v1/chat/{}"):
            r = client.get(t.format(bad), headers=AUTH)
            assert r.status_code in (404, 405), (t, bad, r.status_code)
            assert r.json()["error"]["message"] and "root:" not in r.text
    still_answers(client)


ANY_TEXT = is_text(0, 10**9)
TEXT = either(is_none, ANY_TEXT)
GENERATION = {
    "model": Field(True, lambda v: v == "notes", ("nope", "../notes", "/etc/passwd", "notes ")),
    "max_tokens": Field(False, either(is_none, is_int(1, 8)), (9, 2.0, "2")),
    "max_completion_tokens": Field(False, either(is_none, is_int(1, 8)), (9,)),
    "n": Field(False, lambda v: v is None or v == 1, (2,)),
    "temperature": Field(False, lambda v: v is None or (type(v) in (int, float) and 0 <= v <= 2), (2.5, "1")),
    "top_p": Field(False, lambda v: v is None or (type(v) in (int, float) and 0 <= v <= 1), (1.5,)),
    "seed": Field(
        False, lambda v: v is None or (type(v) is int and -(2**63) <= v < 2**64), (2**64, "7", 7.5)
    ),  # fmt: skip
    "stop": Field(
        False,
        lambda v: TEXT(v) or (isinstance(v, list) and len(v) <= 4 and all(map(ANY_TEXT, v))),
        (["a"] * 5, [5], [None]),
    ),  # fmt: skip
    "stream": Field(False, lambda v: isinstance(v, bool), ("no", 1, "true")),
    "stream_options": Field(
        False,
        lambda v: v is None or (isinstance(v, dict) and isinstance(v.get("include_usage", False), bool)),
        ({"include_usage": "y"},),
    ),  # fmt: skip
}
DEEP: object = "x"
for _ in range(20):  # within the depth cap (32): the schema, not the cap, refuses it
    DEEP = [DEEP]
MESSAGES = (
    "hi",
    [{}],
    [{"role": "user"}],
    [{"role": "robot", "content": "x"}],
    [{"role": "user", "content": 5}],
    [{"role": "user", "content": [{"type": "text", "text": 5}]}],
    [{"role": "user", "content": [{"type": "text"}]}],
    [{"role": "user", "content": "\ud800"}],
    [None],
    {"role": "user", "content": "x"},
    [{"role": "user", "content": DEEP}],
)


def check_route(client, path: str, good: dict, fields: dict, unknown_refused: bool) -> list:
    cases = bodies(good, fields, unknown_refused)
    assert sum(refused for _, refused, _ in cases) >= 100, (path, len(cases))
    problems = []
    for field, must_refuse, body in cases:
        r = client.post(path, content=body, headers={**AUTH, "Content-Type": "application/json"})
        why = problem(r.status_code, r.content, field, must_refuse, error_of)
        if why:
            problems.append((path, field, body[:70], why))
    return problems


def test_over_a_hundred_malformed_bodies_per_write_route_are_json_4xx_naming_the_field(served):
    client, base, rid, _ = served
    chat = {"model": "notes", "messages": MSG, "max_tokens": 1}
    text = {"model": "notes", "prompt": "Notes:", "max_tokens": 1}
    problems = check_route(
        client, "/v1/chat/completions", chat,
        {**GENERATION, "messages": Field(True, lambda v: False, MESSAGES)}, unknown_refused=False,
    )  # fmt: skip
    problems += check_route(
        client, "/v1/completions", text,
        {**GENERATION, "prompt": Field(True, lambda v: is_text(1, 10**9)(v) or v in (["1"], [" "]),
                                       (["a", "b"], [5], "\ud800x"))}, unknown_refused=False,
    )  # fmt: skip
    feedback = {
        "id": Field(
            True,
            lambda v: v == rid,
            (
                "x" * 101,
                "../../etc/passwd",
                "'; DROP TABLE captures;--",
                "\x00",
                "%",
                "*",
                rid + " ",
                rid.upper(),
                " " + rid,
            ),
        ),  # fmt: skip
        "rating": Field(
            False,
            lambda v: v in (None, "up", "down"),
            ("UP", "meh", "down ", "\N{THUMBS UP SIGN}", "good", "-1", "thumbs"),
        ),  # fmt: skip
        "correction": Field(
            False, either(is_none, is_text(1, 100_000)), ("x" * 100_001, "\ud800 note", ["a"], {"text": "a"})
        ),  # fmt: skip
    }
    good = {"id": rid, "rating": "down", "correction": "Budget: agreed."}
    problems += check_route(client, "/v1/feedback", good, feedback, unknown_refused=False)
    assert problems == [], problems
    still_answers(client)
