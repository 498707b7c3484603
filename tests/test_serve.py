"""`tunesmith serve`: a real server on 127.0.0.1, spoken to with the official `openai` client."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import pytest

from conftest import SERVE_KEY, Server, make_adapter

openai = pytest.importorskip("openai", reason="the openai client is in the 'test' extra")
pytest.importorskip("fastapi", reason="serve needs the 'serve' extra")

KEY = SERVE_KEY


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("serve")
    model = tiny_model_dir("llama")
    a1, a2 = make_adapter(model, d / "a1", 1), make_adapter(model, d / "a2", 2)
    (d / "keys").write_text(f"# keys\n{KEY}\n")
    srv = Server(
        [
            "--model",
            str(model),
            "--adapter",
            f"notes={a1}",
            "--adapter",
            f"support={a2}",
            "--api-key-file",
            str(d / "keys"),
            "--max-batch",
            "4",
            "--max-queue",
            "3",
            "--max-tokens",
            "900",
            "--max-prompt-tokens",
            "200",
            "--max-body",
            "5000",
        ],
        d / "server.log",
        env={"TUNESMITH_API_KEYS": "sk-env"},
    )
    srv.model, srv.adapters = model, {"notes": a1, "support": a2}
    yield srv
    srv.stop()


def reference(model_dir: Path, adapter: Path | None, messages: list[dict], n: int) -> str:
    """What `tunesmith generate` makes for the same conversation (greedy)."""
    from tunesmith.models.loading import load

    loaded = load(str(model_dir), adapter, quiet=True)
    from tunesmith.models.chat import prompt_ids, stop_token_ids
    from tunesmith.models.loading import generate_ids

    ((ids, _),) = generate_ids(
        loaded.model,
        [prompt_ids(loaded.tokenizer, messages)],
        pad_id=loaded.tokenizer.pad_token_id,
        stop_ids=stop_token_ids(loaded.tokenizer),
        max_new_tokens=n,
    )
    return loaded.tokenizer.decode(ids, skip_special_tokens=True)


MSG = [{"role": "user", "content": "Write the meeting notes. Focus: budget"}]


def test_models_and_adapter_selection(server):
    c = server.client()
    assert [m.id for m in c.models.list().data] == ["tiny-llama0", "notes", "support"] or [
        m.id for m in c.models.list().data
    ][1:] == ["notes", "support"]
    base_name = c.models.list().data[0].id
    outs = {}
    for name, adapter in [
        (base_name, None),
        ("notes", server.adapters["notes"]),
        ("support", server.adapters["support"]),
    ]:
        r = c.chat.completions.create(model=name, messages=MSG, max_tokens=12)
        assert r.object == "chat.completion" and r.model == name
        assert r.choices[0].finish_reason in ("length", "stop")
        assert r.usage.completion_tokens == 12 or r.choices[0].finish_reason == "stop"
        assert r.choices[0].message.content == reference(server.model, adapter, MSG, 12)
        outs[name] = r.choices[0].message.content
    assert len(set(outs.values())) == 3, "each adapter (and the base) must give its own output"
    # the environment variable's key is accepted too
    assert server.client("sk-env").models.list().data


def test_streaming_matches_plain_and_completions(server):
    c = server.client()
    plain = c.chat.completions.create(model="notes", messages=MSG, max_tokens=20).choices[0].message.content
    chunks = list(
        c.chat.completions.create(
            model="notes", messages=MSG, max_tokens=20, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == plain
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] in ("length", "stop")
    assert chunks[-1].usage.completion_tokens >= 1 and chunks[-1].choices == []

    comp = c.completions.create(model="support", prompt="The team discussed the", max_tokens=8)
    assert (
        comp.object == "text_completion"
        and comp.usage.completion_tokens == 8
        or comp.choices[0].finish_reason == "stop"
    )
    streamed = "".join(
        ch.choices[0].text
        for ch in c.completions.create(
            model="support", prompt="The team discussed the", max_tokens=8, stream=True
        )
    )
    assert streamed == comp.choices[0].text


def test_stop_sequence(server):
    c = server.client()
    full = c.completions.create(model="notes", prompt="The team discussed the", max_tokens=30).choices[0].text
    cut = next((full[i : i + 2] for i in range(3, len(full) - 2) if full[i : i + 2].strip()), None)
    if cut is None:
        pytest.skip(f"output has no usable stop string: {full!r}")
    r = c.completions.create(model="notes", prompt="The team discussed the", max_tokens=30, stop=[cut])
    assert r.choices[0].text == full[: full.index(cut)]
    assert r.choices[0].finish_reason == "stop"


def test_errors(server):
    c = server.client()
    with pytest.raises(openai.AuthenticationError) as e:
        server.client("wrong-key").chat.completions.create(model="notes", messages=MSG)
    assert e.value.status_code == 401 and e.value.body["code"] == "invalid_api_key"
    with pytest.raises(openai.NotFoundError) as e:
        c.chat.completions.create(model="../../etc/passwd", messages=MSG)
    assert "does not exist; this server has: " in e.value.body["message"] and e.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model="notes", messages=MSG, max_tokens=5000)
    assert e.value.body["message"] == "'max_tokens' is 5000; it must be between 1 and 900"
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model="notes", messages=[{"role": "user", "content": "budget " * 300}])
    assert "this server accepts at most 200" in e.value.body["message"]
    with pytest.raises(openai.APIStatusError) as e:
        c.chat.completions.create(model="notes", messages=[{"role": "user", "content": "x" * 6000}])
    assert e.value.status_code == 413 and e.value.body["code"] == "body_too_large"
    status, body = server.post("/v1/chat/completions", b'{"model": "notes", "messages": [')
    assert status == 400 and body["error"]["code"] == "invalid_json"
    status, body = server.post("/v1/chat/completions", b'{"model": "notes", "messages": "hi"}')
    assert status == 400 and body["error"]["param"] == "messages"
    # no prompt text in the access log by default
    log = server.access_log()
    assert log and not any("budget" in json.dumps(line) for line in log)
    assert {401, 404, 413, 400} <= {line["status"] for line in log}


def test_concurrent_requests_are_batched_and_equal_to_one_at_a_time(server):
    c = server.client()
    prompts = [
        [{"role": "user", "content": f"Write the meeting notes. Focus: {w}"}]
        for w in ("budget", "design", "remote case")
    ]
    alone = [
        c.chat.completions.create(model="notes", messages=p, max_tokens=40).choices[0].message.content
        for p in prompts
    ]
    before = server.health()["batches"]
    results: list = [None] * 3

    def ask(i):
        results[i] = (
            c.chat.completions.create(model="notes", messages=prompts[i], max_tokens=40)
            .choices[0]
            .message.content
        )

    # hold the worker busy on a long request so the three queue up and go in one batch
    blocker = threading.Thread(
        target=lambda: c.chat.completions.create(model="support", messages=MSG, max_tokens=200)
    )
    blocker.start()
    time.sleep(0.3)
    threads = [threading.Thread(target=ask, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads + [blocker]:
        t.join()
    assert results == alone, "batched (left-padded) outputs must equal the one-at-a-time outputs"
    assert server.health()["batches"] - before == 2  # the blocker, then the three together


def test_full_queue_gets_429(server):
    c = server.client()
    codes: list = []

    def ask():
        try:
            c.chat.completions.create(model="notes", messages=MSG, max_tokens=300)
            codes.append(200)
        except openai.RateLimitError as e:
            assert e.body["code"] == "queue_full"
            wait = int(e.response.headers["retry-after"])  # whole seconds, from the measured batch time
            assert 1 <= wait <= 60 and f"retry in about {wait} s" in e.body["message"]
            codes.append(429)

    blocker = threading.Thread(
        target=lambda: c.chat.completions.create(model="support", messages=MSG, max_tokens=200)
    )
    blocker.start()
    time.sleep(0.3)
    threads = [threading.Thread(target=ask) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads + [blocker]:
        t.join()
    assert codes.count(200) == 3 and codes.count(429) == 3  # --max-queue 3 while the blocker generates


# ---------------------------------------------------------------- malformed bodies: always a JSON 4xx

NAN, INF, BIG = "__NaN__", "__Infinity__", "__1e400__"  # JSON tokens json.dumps cannot be asked for directly
BAD_FIELDS = {
    "max_tokens": [NAN, INF, BIG, -1, 0, 901, "5", True, 1.5, [], {}, 10**30],
    "max_completion_tokens": [NAN, -5, "x", False],
    "n": [NAN, 2, 0, "1", True, 1.5],
    "temperature": [NAN, INF, BIG, -0.1, 2.5, "0", True, []],
    "top_p": [NAN, -1, 1.5, "1", False],
    "seed": [2**64, -(2**70), 1.5, "7", True, NAN],
    "stop": [5, [1], ["a", "b", "c", "d", "e"], {}, True, [None]],
    "stream": ["no", 1, "true", [], None],
    "stream_options": [5, "x", [], {"include_usage": "yes"}],
    "model": [5, None, [], {}, ""],
}
BAD_MESSAGES = [
    "hi",
    [],
    [5],
    [{"role": "bot", "content": "x"}],
    [{"role": "user"}],
    [{"role": "user", "content": 5}],
    [{"role": "user", "content": None}],
    [{"role": "user", "content": [{"type": "text", "text": 5}]}],
    [{"role": "user", "content": [{"type": "text", "text": None}]}],
    [{"role": "user", "content": [5]}],
    [{"role": "user", "content": "a \ud800 b"}],
    None,
]
BAD_PROMPTS = [5, [], ["a", "b"], None, [5], {}, "", "\udfff"]
RAW = [
    b"",
    b"{",
    b"[]",
    b"null",
    b"5",
    b'"x"',
    b"[" * 5000,
    b'{"a":' * 5000 + b"1" + b"}" * 5000,
    b"\xff\xfe{}",
    b'{"model": "notes", "messages": [',
    b'{"model": "notes", "prompt": "a"' + b", " * 3,
]


def _body(base: dict, field: str, value) -> bytes:
    raw = json.dumps({**base, field: value})
    return (
        raw.replace(f'"{NAN}"', "NaN").replace(f'"{INF}"', "Infinity").replace(f'"{BIG}"', "1e400").encode()
    )


def malformed() -> list[tuple[str, bytes]]:
    chat = {"model": "notes", "messages": MSG, "max_tokens": 2}
    text = {"model": "notes", "prompt": "Write the notes.", "max_tokens": 2}
    cases = []
    for field, values in BAD_FIELDS.items():
        for v in values:
            cases += [
                ("/v1/chat/completions", _body(chat, field, v)),
                ("/v1/completions", _body(text, field, v)),
            ]
    cases += [("/v1/chat/completions", _body(chat, "messages", v)) for v in BAD_MESSAGES]
    cases += [("/v1/completions", _body(text, "prompt", v)) for v in BAD_PROMPTS]
    cases += [(route, raw) for raw in RAW for route in ("/v1/chat/completions", "/v1/completions")]
    return cases


def test_malformed_bodies_get_a_json_4xx_naming_the_field(server):
    import http.client

    cases = malformed()
    assert len(cases) >= 80
    problems = []
    for route, body in cases:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        conn.request(
            "POST",
            route,
            body=body,
            headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
        )
        r = conn.getresponse()
        raw = r.read()
        conn.close()
        try:
            err = json.loads(raw)["error"]
        except (ValueError, KeyError, TypeError):
            problems.append((route, body[:80], r.status, raw[:200]))
            continue
        if not 400 <= r.status < 500 or not err.get("message"):
            problems.append((route, body[:80], r.status, err))
    for method, route, body, key in [
        ("POST", "/v1/models", b"{}", KEY),
        ("GET", "/v1/chat/completions", None, KEY),
        ("PUT", "/v1/completions", b"{}", KEY),
        ("GET", "/v1/../../etc/passwd", None, KEY),
        ("GET", "/v1/models", None, "nope"),
        ("POST", "/v1/completions", b"[" * 5000, "nope"),
        ("DELETE", "/health", None, KEY),
    ]:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        conn.request(method, route, body=body, headers={"Authorization": f"Bearer {key}"})
        r = conn.getresponse()
        raw = r.read()
        conn.close()
        if not 400 <= r.status < 500 or "message" not in json.loads(raw).get("error", {}):
            problems.append((method, route, r.status, raw[:200]))
    assert problems == [], problems
    assert server.health()["status"] == "ok"
    # the ones the attack found, with the exact field named
    for field, value, want in [
        ("max_tokens", NAN, "'max_tokens': input should be a valid integer (got nan)"),
        ("stream", "no", "'stream': input should be a valid boolean (got 'no')"),
        ("seed", 2**64, "'seed': input should be less than or equal to 18446744073709551615"),
        ("stream_options", 5, "'stream_options': input should be a valid dictionary"),
    ]:
        status, body = server.post(
            "/v1/chat/completions", _body({"model": "notes", "messages": MSG}, field, value)
        )
        assert (
            status == 400 and body["error"]["param"] == field and body["error"]["message"].startswith(want)
        ), body
    status, body = server.post("/v1/chat/completions", b"[" * 5000)
    assert status == 400 and body["error"]["message"] == "request body is nested more than 32 levels deep"


def test_a_tiny_temperature_is_greedy_not_an_error(server):
    c = server.client()
    greedy = (
        c.chat.completions.create(model="notes", messages=MSG, max_tokens=8, temperature=0)
        .choices[0]
        .message.content
    )
    tiny = c.chat.completions.create(model="notes", messages=MSG, max_tokens=8, temperature=1e-300, seed=3)
    assert tiny.choices[0].message.content == greedy


def test_disconnecting_client_cancels_generation(server):
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.request(
        "POST",
        "/v1/chat/completions",
        json.dumps({"model": "notes", "messages": MSG, "max_tokens": 900, "stream": True}),
        {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
    )
    resp = conn.getresponse()
    assert resp.status == 200
    resp.fp.readline()  # the first event is there: generation has started
    conn.sock.shutdown(socket.SHUT_RDWR)
    conn.close()
    deadline = time.time() + 20
    while time.time() < deadline:
        entry = [line for line in server.access_log() if line.get("stream") and line.get("cancelled")]
        if entry and server.health()["generating"] == 0:
            break
        time.sleep(0.2)
    assert entry, "the server did not notice the client going away"
    assert entry[-1]["completion_tokens"] < 900


def test_timeout_and_no_auth(tiny_model_dir, tmp_path):
    srv = Server(
        ["--model", str(tiny_model_dir("llama")), "--no-auth", "--timeout", "0.3", "--max-tokens", "900"],
        tmp_path / "log",
    )
    try:
        c = srv.client("anything")
        with pytest.raises(openai.APIStatusError) as e:
            c.chat.completions.create(model=c.models.list().data[0].id, messages=MSG, max_tokens=900)
        assert e.value.status_code == 504 and e.value.body["type"] == "timeout"
    finally:
        srv.stop()


def test_serve_refuses_bad_setup(tiny_model_dir, tmp_path):
    from conftest import run_cli

    r = run_cli("serve", "--model", str(tiny_model_dir("llama")), env={"TUNESMITH_API_KEYS": ""})
    assert r.returncode == 2
    assert r.stderr.startswith(
        "error: no API keys: set TUNESMITH_API_KEYS=key1,key2 or pass --api-key-file FILE"
    )
    r = run_cli("serve", "--no-auth", "--adapter", "notes")
    assert (
        r.returncode == 2
        and r.stderr == "error: --adapter notes: expected NAME=RUN_DIR, e.g. --adapter notes=runs/notes\n"
    )
    r = run_cli("serve", "--no-auth", "--adapter", f"notes={tmp_path}/nope")
    assert r.returncode == 2 and r.stderr == f"error: --adapter {tmp_path}/nope: no such directory\n"
