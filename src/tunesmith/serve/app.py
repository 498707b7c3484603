"""The HTTP side of `tunesmith serve`: OpenAI-compatible routes over an Engine (serve/engine.py).

Each step of a request is a module-level function — check the key, read the body, validate it
against the schema (serve/api_schema.py), pick the model, build the job, answer — so each can be
tested on its own and in process (FastAPI's TestClient); `create_app` only wires them to routes.
Every error is an OpenAI-style JSON body (`APIError`).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import threading
import time
import uuid
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from tunesmith.corpus.cite import retrieve, sources
from tunesmith.models.chat import prompt_ids
from tunesmith.serve.accesslog import AccessLog, note, write_line
from tunesmith.serve.api_schema import (
    BadBody,
    ChatRequest,
    ClassifyRequest,
    CompletionRequest,
    FeedbackRequest,
    read_json,
)
from tunesmith.serve.bodies import chunk, completion_body, usage
from tunesmith.serve.engine import APIError, Engine, Job
from tunesmith.serve.labels import Classifier, answers, refuse_generation
from tunesmith.web.guard import Guard, HostRule, loopback_rule

MIN_TEMPERATURE = 1e-4  # a smaller one (1e-300 was sent) makes logits / T overflow; it is greedy in effect


@dataclass
class Settings:
    keys: list[str]
    max_tokens: int = 1024
    max_prompt_tokens: int = 4096
    max_body: int = 1_000_000
    timeout: float = 300.0
    log_prompts: bool = False
    log: object = None  # file-like for the access log (default stderr)
    capture: object = None  # serve --capture: a captures.Captures that keeps each answer and its feedback
    hosts: HostRule = field(default_factory=loopback_rule)  # the Host names answered (web/guard.py)


@dataclass
class Served:
    """What every route needs: the engine (None when only --task runs are served), the model names it
    answers to, the settings, and the --task runs (serve/labels.py)."""

    engine: Engine | None
    base_name: str | None
    settings: Settings
    classifiers: dict[str, Classifier] = field(default_factory=dict)
    docs: object = (
        None  # serve --docs: a corpus.index.Index every chat answer retrieves from, docs_k passages
    )
    docs_k: int = 3
    # the Rust tokenizer is not for concurrent calls; nor is the index's lazily loaded encoder
    tok_lock: threading.Lock = field(default_factory=threading.Lock)
    docs_lock: threading.Lock = field(default_factory=threading.Lock)
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def models(self) -> list[str]:
        text = [self.base_name] + self.engine.adapters if self.engine is not None else []
        return text + list(self.classifiers)


# ---------------------------------------------------------------- the steps of a request


def check_key(settings: Settings, authorization: str) -> None:
    """`Authorization: Bearer KEY` against every accepted key, in constant time, so the timing says
    nothing about which matched (or how much of one)."""
    if not settings.keys:
        return
    given = authorization[7:].strip() if authorization[:7].lower() == "bearer " else ""
    ok = False
    for k in settings.keys:
        ok |= hmac.compare_digest(given.encode(), k.encode())
    if not ok:
        raise APIError(
            401, "missing or wrong API key: send 'Authorization: Bearer <key>'", code="invalid_api_key"
        )


def parse_body(body: bytes, schema):
    """Bytes -> a validated request model (api_schema.read_json); a bad body is an OpenAI-style 400."""
    try:
        return read_json(body, schema)
    except BadBody as e:
        raise APIError(e.status, e.message, code=e.code, param=e.param or None) from None


def pick_model(req, models: list[str], base_name: str, classifiers=()) -> str | None:
    """The adapter a request names (None for the base model): only by name, never a path."""
    if req.model in classifiers:
        raise refuse_generation(req.model)
    if req.model not in models:
        raise APIError(
            404,
            f"model {req.model!r} does not exist; this server has: {', '.join(models)}",
            code="model_not_found",
            param="model",
        )
    return None if req.model == base_name else req.model


def make_job(req, ids: list[int], adapter: str | None, settings: Settings, loop) -> Job:
    """A validated request -> the engine's Job, with the server's own limits applied."""
    if len(ids) > settings.max_prompt_tokens:
        raise APIError(
            400,
            f"the prompt is {len(ids)} tokens; this server accepts at most {settings.max_prompt_tokens}",
            code="context_length_exceeded",
            param="messages",
        )
    key = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
    max_tokens = getattr(req, key)
    max_tokens = min(256, settings.max_tokens) if max_tokens is None else max_tokens
    if not 1 <= max_tokens <= settings.max_tokens:
        raise APIError(
            400, f"'{key}' is {max_tokens}; it must be between 1 and {settings.max_tokens}", param=key
        )
    if req.n not in (None, 1):
        raise APIError(
            400, f"'n' is {req.n}; this server makes one answer per request, so it must be 1", param="n"
        )
    temperature = 0.0 if req.temperature is None else req.temperature
    temperature = temperature if temperature >= MIN_TEMPERATURE else 0.0  # greedy in effect; avoids inf/nan
    return Job(
        adapter=adapter,
        ids=ids,
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=1.0 if req.top_p is None else req.top_p,
        seed=req.seed,
        stop=[req.stop] if isinstance(req.stop, str) else req.stop or [],
        deadline=time.monotonic() + settings.timeout,
        loop=loop,
    )


def timeout_error(settings: Settings) -> APIError:
    return APIError(504, f"the request took longer than {settings.timeout:g} s", "timeout", "timeout")


async def answer_whole(
    request: Request, job: Job, settings: Settings, shape: str, rid: str, model_name: str, done=None
):
    """Wait for the whole answer; a client that goes away cancels its generation. `done(text, finish)` is
    called with a finished answer (serve --capture)."""
    parts, finish = [], None
    try:
        while True:
            try:
                kind, value = await asyncio.wait_for(job.events.get(), timeout=0.5)
            except TimeoutError:
                if await request.is_disconnected():
                    job.cancelled.set()
                    note(request, cancelled=True)
                    return JSONResponse(APIError(499, "client closed the request").body(), status_code=499)
                continue
            if kind == "delta":
                parts.append(value)
            elif kind == "error":
                raise APIError(500, f"generation failed: {value}", "server_error")
            else:
                finish = value
                break
    finally:
        job.cancelled.set()  # no-op once finished; ends the generation if this handler is torn down
    note(request, completion_tokens=job.completion_tokens, finish_reason=finish)
    if finish == "timeout":
        raise timeout_error(settings)
    if done is not None:
        done("".join(parts), finish)
    return completion_body(shape, rid, model_name, "".join(parts), finish, job)


async def stream_events(
    request: Request,
    job: Job,
    settings: Settings,
    shape: str,
    rid: str,
    model_name: str,
    include_usage: bool,
    done=None,
    given=None,
):
    """The answer as server-sent events, then [DONE]; a client that goes away cancels its generation. With
    --docs the last chunk carries the passages and the answer's citations of them."""
    finish, parts = None, []
    try:
        if shape == "chat":
            yield chunk(shape, rid, model_name, None, None, role=True)
        while True:
            kind, value = await job.events.get()
            if kind == "delta":
                parts.append(value)
                yield chunk(shape, rid, model_name, value, None)
            elif kind == "error":
                yield (
                    "data: "
                    + json.dumps(APIError(500, f"generation failed: {value}", "server_error").body())
                    + "\n\n"
                )
                break
            else:
                finish = value
                if finish == "timeout":
                    yield "data: " + json.dumps(timeout_error(settings).body()) + "\n\n"
                else:
                    if done is not None:
                        done("".join(parts), finish)
                    extra = sources(given, "".join(parts)) if given else None
                    yield chunk(shape, rid, model_name, None, finish, extra=extra)
                break
        if include_usage:
            obj = "chat.completion.chunk" if shape == "chat" else "text_completion"
            last = {"id": rid, "object": obj, "created": int(time.time()), "model": model_name, "choices": [],
                    "usage": usage(job)}  # fmt: skip
            yield "data: " + json.dumps(last) + "\n\n"
        yield "data: [DONE]\n\n"
    finally:
        if finish is None:  # the client went away mid-stream: stop generating for it
            job.cancelled.set()
            note(request, cancelled=True)
        note(request, completion_tokens=job.completion_tokens, finish_reason=finish)
        write_line(request.scope, settings, None)


async def respond(request: Request, served: Served, job: Job, shape: str, req, given=None):
    """Queue the job; answer as one JSON body, or as server-sent events (with --docs, the passages `given`
    and the citations ride along)."""
    served.engine.submit(job)
    rid = ("chatcmpl-" if shape == "chat" else "cmpl-") + uuid.uuid4().hex[:24]
    note(request, model=req.model, prompt_tokens=len(job.ids), stream=req.stream)
    done, capture = None, served.settings.capture
    if capture is not None:
        asked = req.model_dump(exclude_none=True)

        def done(text: str, finish: str | None) -> None:
            capture.add(rid, req.model, asked, text, finish)

    if not req.stream:
        body = await answer_whole(request, job, served.settings, shape, rid, req.model, done)
        if given and isinstance(body, dict):
            body.update(sources(given, body["choices"][0]["message"]["content"]))
        return body
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    request.state.log_later = True
    return StreamingResponse(
        stream_events(request, job, served.settings, shape, rid, req.model, include_usage, done, given),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache"},
    )


async def read_body(request: Request, settings: Settings) -> bytes:
    """The body, refused (413) as soon as it passes --max-body, before it is all read."""
    check_key(settings, request.headers.get("authorization", ""))
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > settings.max_body:
        raise APIError(
            413,
            f"request body of {length} bytes is over the limit of {settings.max_body}",
            code="body_too_large",
        )
    body = b""
    async for part in request.stream():
        body += part
        if len(body) > settings.max_body:
            raise APIError(
                413, f"request body is over the limit of {settings.max_body} bytes", code="body_too_large"
            )
    return body


# ---------------------------------------------------------------- the routes


async def chat_completions(request: Request, served: Served):
    req = parse_body(await read_body(request, served.settings), ChatRequest)
    adapter = pick_model(req, served.models, served.base_name, served.classifiers)
    convo = [
        {"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in req.messages
    ]
    given = None
    if served.docs is not None:  # the passages for the last user turn, before it (corpus/cite.py)

        def find():
            with served.docs_lock:
                return retrieve(served.docs, convo, served.docs_k)

        convo, given = await asyncio.to_thread(find)
    if served.settings.log_prompts:
        note(request, messages=convo)
    with served.tok_lock:
        try:
            ids = prompt_ids(served.engine.tokenizer, convo)
        except Exception as e:  # the chat template refused this conversation (templates raise what they like)
            raise APIError(
                400, f"the model's chat template refused these messages: {e}", param="messages"
            ) from None
    job = make_job(req, ids, adapter, served.settings, asyncio.get_running_loop())
    return await respond(request, served, job, "chat", req, given)


async def completions(request: Request, served: Served):
    req = parse_body(await read_body(request, served.settings), CompletionRequest)
    adapter = pick_model(req, served.models, served.base_name, served.classifiers)
    prompt = req.prompt if isinstance(req.prompt, str) else req.prompt[0]
    if not prompt:
        raise APIError(400, "'prompt' must be a non-empty string (one prompt per request)", param="prompt")
    if served.settings.log_prompts:
        note(request, prompt=prompt)
    with served.tok_lock:
        ids = served.engine.tokenizer(prompt)["input_ids"]
    job = make_job(req, ids, adapter, served.settings, asyncio.get_running_loop())
    return await respond(request, served, job, "text", req)


async def feedback(request: Request, served: Served) -> dict:
    """POST /v1/feedback: thumbs up or down and/or a correction for a captured answer, by its id."""
    req = parse_body(await read_body(request, served.settings), FeedbackRequest)
    if served.settings.capture is None:
        raise APIError(404, "feedback needs a server started with --capture", code="capture_off")
    stored = served.settings.capture.feedback(req.id, req.rating, req.correction)
    if stored is None:
        raise APIError(
            503, "the registry could not store the feedback; see the server's log", code="registry"
        )
    if not stored:
        raise APIError(404, f"no captured answer has the id {req.id!r}", param="id")
    return {"id": req.id, "object": "feedback", "recorded": True}


async def classify(request: Request, served: Served) -> dict:
    """POST /v1/classify: a label with every class's probability, labels, or a value, for each input."""
    req = parse_body(await read_body(request, served.settings), ClassifyRequest)
    c = served.classifiers.get(req.model)
    if c is None:
        if req.model in served.models:
            raise APIError(
                400,
                f"model {req.model!r} writes text; /v1/classify takes a run trained with --task "
                f"({', '.join(served.classifiers) or 'none on this server'})",
                param="model",
            )
        pick_model(req, served.models, served.base_name)  # the 404 naming what there is
    texts = req.texts()
    empty = next((i for i, t in enumerate(texts) if not t.strip()), None)
    if empty is not None:
        raise APIError(400, f"input[{empty}] is empty; give the text to label", param="input")
    if served.settings.log_prompts:
        note(request, input=texts)
    try:
        data, tokens = await asyncio.to_thread(answers, c, texts, served.settings.max_prompt_tokens)
    except APIError:
        raise
    except Exception as e:  # a bug or out of memory: this request fails, the server goes on
        raise APIError(500, f"classification failed: {e}", "server_error") from None
    note(request, model=req.model, inputs=len(texts), prompt_tokens=tokens)
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return {"object": "list", "model": req.model, "task": c.task, "data": data, "usage": usage}


def list_models(request: Request, served: Served) -> dict:
    check_key(served.settings, request.headers.get("authorization", ""))
    return {
        "object": "list",
        "data": [
            {"id": m, "object": "model", "created": served.created, "owned_by": "tunesmith"}
            for m in served.models
        ],
    }


def health(served: Served, authorization: str) -> dict:
    """Liveness for anyone who reaches the server (a load balancer's probe); the models and the queue only
    for a caller with a key, like every other route."""
    try:
        check_key(served.settings, authorization)
    except APIError:
        return {"status": "ok"}
    e = served.engine
    return {
        "status": "ok",
        "models": served.models,
        "waiting": len(e.waiting) if e else 0,
        "generating": e.busy if e else 0,
        "batches": e.batches if e else 0,
    }


def create_app(engine: Engine | None, base_name: str | None, settings: Settings, classifiers=None, docs=None,
               docs_k: int = 3):  # fmt: skip
    served = Served(engine, base_name, settings, classifiers or {}, docs, docs_k)
    app = FastAPI(title="tunesmith", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, e: APIError):
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(404)
    async def _not_found(request: Request, e):
        return JSONResponse(
            APIError(404, f"no route {request.method} {request.url.path}").body(), status_code=404
        )

    @app.exception_handler(405)
    async def _bad_method(request: Request, e):
        return JSONResponse(
            APIError(405, f"{request.method} is not allowed on {request.url.path}").body(), status_code=405
        )

    # the routes only hand the request to the module-level functions above
    @app.get("/health")
    async def _health(request: Request):
        return health(served, request.headers.get("authorization", ""))

    @app.get("/v1/models")
    async def _models(request: Request):
        return list_models(request, served)

    @app.post("/v1/chat/completions")
    async def _chat(request: Request):
        return await chat_completions(request, served)

    @app.post("/v1/completions")
    async def _completions(request: Request):
        return await completions(request, served)

    @app.post("/v1/classify")
    async def _classify(request: Request):
        return await classify(request, served)

    @app.post("/v1/feedback")
    async def _feedback(request: Request):
        return await feedback(request, served)

    def refused(status: int, code: str, sentence: str) -> dict:
        return APIError(status, sentence, code=code).body()

    return AccessLog(Guard(app, settings.hosts, refused), settings)
