"""The serve app's request steps, in process: each module-level function on its own, and the routes
through FastAPI's TestClient over a real Engine with a tiny model (no subprocess, no port)."""

from __future__ import annotations

import asyncio
import json

import pytest

from conftest import LOCAL, make_adapter

pytest.importorskip("fastapi", reason="serve needs the 'serve' extra")
pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx (the 'test' extra)")

from fastapi.testclient import TestClient  # noqa: E402

from tunesmith.serve import app as A  # noqa: E402
from tunesmith.serve.api_schema import ChatRequest, CompletionRequest  # noqa: E402
from tunesmith.serve.engine import APIError, Engine  # noqa: E402
from tunesmith.serve.server import load_engine  # noqa: E402

KEY = "sk-unit"
MSG = [{"role": "user", "content": "Write the meeting notes. Focus: budget"}]


@pytest.fixture(scope="module")
def engine(tiny_model_dir, tmp_path_factory):
    model = tiny_model_dir("llama")
    adapter = make_adapter(model, tmp_path_factory.mktemp("a") / "notes", 1)
    eng, base = load_engine(str(model), {"notes": adapter}, trust_remote_code=False, max_batch=4, max_queue=8)
    yield eng, base
    eng.close()


@pytest.fixture
def client(engine):
    eng, base = engine
    return TestClient(
        A.create_app(eng, base, A.Settings(keys=[KEY], max_tokens=50, max_prompt_tokens=300, max_body=5000)),
        base_url=LOCAL,
    )


def auth(key: str = KEY) -> dict:
    return {"Authorization": f"Bearer {key}"}


def test_check_key_accepts_only_a_listed_key():
    s = A.Settings(keys=["a-key", "b-key"])
    A.check_key(s, "Bearer b-key")
    A.check_key(s, "bearer   a-key ")
    for header in ("", "Bearer ", "Bearer a-ke", "Basic a-key", "a-key", "Bearer a-key-longer"):
        with pytest.raises(APIError) as e:
            A.check_key(s, header)
        assert e.value.status == 401 and e.value.code == "invalid_api_key"
    A.check_key(A.Settings(keys=[]), "")  # --no-auth


def test_parse_body_names_the_field_or_the_problem():
    ok = A.parse_body(json.dumps({"model": "m", "messages": MSG}).encode(), ChatRequest)
    assert ok.messages[0].text() == MSG[0]["content"] and ok.stream is False
    cases = {
        b"[" * 40: (400, None, "request body is nested more than 32 levels deep"),
        b"{": (400, None, "request body is not valid JSON"),
        b"[1]": (400, None, "request body must be a JSON object"),
        b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": "no"}': (
            400,
            "stream",
            "'stream': input should be a valid boolean (got 'no')",
        ),
        b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": NaN}': (
            400,
            "max_tokens",
            "'max_tokens': input should be a valid integer (got nan)",
        ),
        b'{"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}': (
            400,
            "messages",
            "'messages[0].content[0].text': input should be a valid string (got 5)",
        ),
        b'{"messages": []}': (400, "model", "'model' is required"),
    }
    for body, (status, param, message) in cases.items():
        with pytest.raises(APIError) as e:
            A.parse_body(body, ChatRequest)
        assert (e.value.status, e.value.param) == (status, param) and e.value.message.startswith(message), (
            e.value.message
        )
    with pytest.raises(APIError) as e:
        A.parse_body(b'{"model": "m", "prompt": ["a", "b"]}', CompletionRequest)
    assert e.value.param == "prompt"


def test_pick_model_and_make_job_apply_the_servers_limits():
    req = ChatRequest.model_validate(
        {"model": "notes", "messages": MSG, "temperature": 1e-300, "stop": "END"}
    )
    assert A.pick_model(req, ["base", "notes"], "base") == "notes"
    assert (
        A.pick_model(
            ChatRequest.model_validate({"model": "base", "messages": MSG}), ["base", "notes"], "base"
        )
        is None
    )
    with pytest.raises(APIError) as e:
        A.pick_model(
            ChatRequest.model_validate({"model": "../../etc/passwd", "messages": MSG}), ["base"], "base"
        )
    assert (e.value.status, e.value.code) == (404, "model_not_found")
    loop = asyncio.new_event_loop()
    s = A.Settings(keys=[], max_tokens=50, max_prompt_tokens=10)
    job = A.make_job(req, [1, 2, 3], "notes", s, loop)
    assert (job.max_tokens, job.temperature, job.stop, job.top_p) == (
        50,
        0.0,
        ["END"],
        1.0,
    )  # a tiny temperature is greedy
    for body, param in [
        ({"max_tokens": 51}, "max_tokens"),
        ({"max_completion_tokens": 0}, "max_completion_tokens"),
        ({"n": 2}, "n"),
    ]:
        with pytest.raises(APIError) as e:
            A.make_job(
                ChatRequest.model_validate({"model": "m", "messages": MSG, **body}), [1], None, s, loop
            )
        assert e.value.param == param
    with pytest.raises(APIError) as e:
        A.make_job(req, list(range(11)), None, s, loop)
    assert e.value.code == "context_length_exceeded"
    loop.close()


def test_routes_in_process(client, engine):
    eng, base = engine
    assert client.get("/health", headers=auth()).json()["models"] == [base, "notes"]
    assert client.get("/health").json() == {"status": "ok"}  # liveness only, without a key
    assert client.get("/v1/models").status_code == 401
    assert [m["id"] for m in client.get("/v1/models", headers=auth()).json()["data"]] == [base, "notes"]
    r = client.post(
        "/v1/chat/completions", headers=auth(), json={"model": "notes", "messages": MSG, "max_tokens": 6}
    )
    body = r.json()
    assert (
        r.status_code == 200
        and body["object"] == "chat.completion"
        and body["usage"]["completion_tokens"] <= 6
    )
    text = body["choices"][0]["message"]["content"]
    r = client.post(
        "/v1/chat/completions",
        headers=auth(),
        json={
            "model": "notes",
            "messages": MSG,
            "max_tokens": 6,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    events = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == text
    assert chunks[-1]["usage"]["completion_tokens"] == body["usage"]["completion_tokens"]
    r = client.post(
        "/v1/completions", headers=auth(), json={"model": base, "prompt": "Meeting", "max_tokens": 3}
    )
    assert r.status_code == 200 and r.json()["object"] == "text_completion"
    r = client.post("/v1/chat/completions", headers=auth(), content=b"x" * 6000)
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
    assert client.delete("/v1/models", headers=auth()).status_code == 405
    assert client.get("/nope", headers=auth()).json()["error"]["message"] == "no route GET /nope"


def test_a_full_queue_is_429_with_retry_after(engine):
    eng, base = engine
    full = Engine(eng.model, eng.tokenizer, eng.adapters, max_batch=4, max_queue=0)  # nothing may wait
    try:
        c = TestClient(A.create_app(full, base, A.Settings(keys=[KEY])), base_url=LOCAL)
        r = c.post(
            "/v1/chat/completions", headers=auth(), json={"model": base, "messages": MSG, "max_tokens": 2}
        )
        assert r.status_code == 429 and r.json()["error"]["code"] == "queue_full"
        assert r.headers["retry-after"] == "1"  # nothing measured yet: one second
    finally:
        full.close()
