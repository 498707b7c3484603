"""`tunesmith serve`: an OpenAI-compatible HTTP API over one base model and several adapters.

One worker thread owns the model. Requests wait in a bounded queue; the worker takes the
oldest one and every other waiting request for the same adapter and decoding settings (up to
--max-batch) and generates them together — dynamic batching, so 16 clients cost little more
than one on a memory-bound decode. Tokens go back to each request as they are made (SSE when
streamed); a request that times out or whose client goes away is ended at the next step.

Adapters are loaded once, at start, from the directories named on the command line; a request
chooses one only by its name, never by a path.
"""


import asyncio
import hmac
import json
import math
import os
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from tunesmith.chat import prompt_ids, stop_token_ids
from tunesmith.errors import UserError
from tunesmith.modeling import TextStream, base_model_of, check_adapter_dir, generate_ids, load


class APIError(Exception):
    """An OpenAI-style error response."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type_, code, param
        self.headers = headers

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass
class Job:
    adapter: str | None  # adapter name; None = the base model
    ids: list[int]
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    stop: list[str]
    deadline: float
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)  # ("delta", text) ... then ("end", finish_reason)
    cancelled: threading.Event = field(default_factory=threading.Event)
    completion_tokens: int = 0
    arrived: float = field(default_factory=time.monotonic)

    @property
    def batch_key(self):
        return (self.adapter, self.temperature, self.top_p, self.seed)

    def emit(self, kind: str, value) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))


MIN_TEMPERATURE = 1e-4  # a smaller one (1e-300 was sent) makes logits / T overflow; it is greedy in effect
GATHER = 0.05  # seconds a request may wait for others to batch with (a decode step is ~60 ms on a CPU)


class Engine:
    """The model, its adapters, and the worker thread that batches waiting requests."""

    def __init__(self, model, tokenizer, adapters: list[str], *, max_batch: int, max_queue: int):
        self.model, self.tokenizer, self.adapters = model, tokenizer, adapters
        self.max_batch, self.max_queue = max_batch, max_queue
        self.stop_ids = stop_token_ids(tokenizer)
        self.waiting: list[Job] = []
        self.cv = threading.Condition()
        self.closed = False
        self.busy = 0  # jobs being generated now
        self.batches = 0
        self.batch_s = 1.0  # moving average of a batch's generation time, for Retry-After (1 s until measured)
        self.thread = threading.Thread(target=self._work, name="tunesmith-engine", daemon=True)
        self.thread.start()

    def submit(self, job: Job) -> None:
        with self.cv:
            if len(self.waiting) >= self.max_queue:
                wait = self.retry_after()
                raise APIError(429, f"the server is busy: {self.max_queue} requests are already waiting; retry in about "
                               f"{wait} s", "rate_limit_exceeded", "queue_full", headers={"Retry-After": str(wait)})
            self.waiting.append(job)
            self.cv.notify()

    def retry_after(self) -> int:
        """Seconds until the queue has drained, from the measured time of recent batches: the batch being
        generated, then the waiting requests max_batch at a time. Called with the lock held."""
        batches = -(-len(self.waiting) // self.max_batch) + (1 if self.busy else 0)
        return max(1, min(3600, math.ceil(batches * self.batch_s)))

    def close(self) -> None:
        with self.cv:
            self.closed = True
            self.cv.notify()

    def _take(self) -> list[Job] | None:
        with self.cv:
            while not self.waiting and not self.closed:
                self.cv.wait()
            # Clients answered together come back together: give the stragglers GATHER seconds
            # from the oldest request's arrival to join, rather than starting a batch of one.
            while not self.closed and len(self.waiting) < self.max_batch:
                left = self.waiting[0].arrived + GATHER - time.monotonic()
                if left <= 0:
                    break
                self.cv.wait(left)
            if self.closed:
                return None
            key = self.waiting[0].batch_key
            batch = [j for j in self.waiting if j.batch_key == key][: self.max_batch]
            taken = set(map(id, batch))
            self.waiting = [j for j in self.waiting if id(j) not in taken]
            self.busy = len(batch)
            return batch

    def _work(self) -> None:
        while (batch := self._take()) is not None:
            now = time.monotonic()
            live = []
            for job in batch:
                if job.cancelled.is_set():
                    job.emit("end", "cancelled")
                elif now > job.deadline:
                    job.emit("end", "timeout")
                else:
                    live.append(job)
            if live:
                t = time.monotonic()
                try:
                    self._generate(live)
                    self.batch_s = 0.7 * self.batch_s + 0.3 * (time.monotonic() - t) if self.batches > 1 else time.monotonic() - t
                except Exception as e:  # a bug or out of memory: fail these requests, keep serving
                    print(f"tunesmith serve: generation failed: {e!r}", file=sys.stderr)
                    for job in live:
                        job.emit("error", str(e))
            with self.cv:
                self.busy = 0

    def _generate(self, jobs: list[Job]) -> None:
        streams = [TextStream(self.tokenizer, j.stop) for j in jobs]
        reason = ["length"] * len(jobs)

        def on_token(row: int, token: int) -> bool:
            jobs[row].completion_tokens += 1
            delta = streams[row].add(token)
            if delta:
                jobs[row].emit("delta", delta)
            if streams[row].hit_stop:
                reason[row] = "stop"
                return True
            return False

        def should_stop(row: int) -> bool:
            job = jobs[row]
            if job.cancelled.is_set():
                reason[row] = "cancelled"
                return True
            if time.monotonic() > job.deadline:
                reason[row] = "timeout"
                return True
            return False

        j0 = jobs[0]
        self._select(j0.adapter)
        self.batches += 1
        ctx = self.model.disable_adapter() if j0.adapter is None and self.adapters else _null()
        with ctx:
            outs = generate_ids(self.model, [j.ids for j in jobs], pad_id=self.tokenizer.pad_token_id,
                                stop_ids=self.stop_ids, max_new_tokens=[j.max_tokens for j in jobs],
                                temperature=j0.temperature, top_p=j0.top_p, seed=j0.seed,
                                on_token=on_token, should_stop=should_stop)
        for row, (job, (_, stopped)) in enumerate(zip(jobs, outs)):
            if stopped:
                reason[row] = "stop"
            rest = streams[row].flush()
            if rest:
                job.emit("delta", rest)
            job.emit("end", reason[row])

    def _select(self, adapter: str | None) -> None:
        if adapter is not None:
            self.model.set_adapter(adapter)


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# --- the HTTP layer ---------------------------------------------------------------------------


@dataclass
class Settings:
    keys: list[str]
    max_tokens: int = 1024
    max_prompt_tokens: int = 4096
    max_body: int = 1_000_000
    timeout: float = 300.0
    log_prompts: bool = False
    log: object = None  # file-like for the access log (default stderr)


def create_app(engine: Engine, base_name: str, settings: Settings):
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, StreamingResponse
    from pydantic import ValidationError

    # pydantic comes with the 'serve' extra, like fastapi: imported here so that without it `tunesmith serve` says so
    from tunesmith.use.api_schema import MAX_DEPTH, ChatRequest, CompletionRequest, first_problem, too_deep

    app = FastAPI(title="tunesmith", docs_url=None, redoc_url=None, openapi_url=None)
    models = [base_name] + engine.adapters
    tok_lock = threading.Lock()  # the Rust tokenizer is not meant for concurrent calls
    created = int(time.time())

    @app.exception_handler(APIError)
    async def _api_error(request: Request, e: APIError):
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(404)
    async def _not_found(request: Request, e):
        return JSONResponse(APIError(404, f"no route {request.method} {request.url.path}").body(), status_code=404)

    @app.exception_handler(405)
    async def _bad_method(request: Request, e):
        return JSONResponse(APIError(405, f"{request.method} is not allowed on {request.url.path}").body(), status_code=405)

    def authorize(request: Request) -> None:
        if not settings.keys:
            return
        header = request.headers.get("authorization", "")
        given = header[7:].strip() if header[:7].lower() == "bearer " else ""
        # compare against every key, in constant time, so timing says nothing about which matched
        ok = False
        for k in settings.keys:
            ok |= hmac.compare_digest(given.encode(), k.encode())
        if not ok:
            raise APIError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                           "invalid_request_error", "invalid_api_key")

    async def read_json(request: Request) -> dict:
        authorize(request)
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > settings.max_body:
            raise APIError(413, f"request body of {length} bytes is over the limit of {settings.max_body}", code="body_too_large")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > settings.max_body:
                raise APIError(413, f"request body is over the limit of {settings.max_body} bytes", code="body_too_large")
        if too_deep(body):
            raise APIError(400, f"request body is nested more than {MAX_DEPTH} levels deep", code="invalid_json")
        try:
            data = json.loads(body)
        except (ValueError, RecursionError) as e:
            raise APIError(400, f"request body is not valid JSON: {e}", code="invalid_json") from None
        if not isinstance(data, dict):
            raise APIError(400, "request body must be a JSON object", code="invalid_json")
        return data

    def parse(schema, data: dict):
        try:
            return schema.model_validate(data)
        except ValidationError as e:
            param, message = first_problem(e)
            raise APIError(400, message, param=param or None) from None

    def pick_model(req) -> str | None:
        if req.model not in models:
            raise APIError(404, f"model {req.model!r} does not exist; this server has: {', '.join(models)}",
                           code="model_not_found", param="model")
        return None if req.model == base_name else req.model

    def make_job(req, ids: list[int], adapter: str | None) -> Job:
        if len(ids) > settings.max_prompt_tokens:
            raise APIError(400, f"the prompt is {len(ids)} tokens; this server accepts at most {settings.max_prompt_tokens}",
                           code="context_length_exceeded", param="messages")
        key = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
        max_tokens = getattr(req, key)
        max_tokens = min(256, settings.max_tokens) if max_tokens is None else max_tokens
        if not 1 <= max_tokens <= settings.max_tokens:
            raise APIError(400, f"'{key}' is {max_tokens}; it must be between 1 and {settings.max_tokens}", param=key)
        if req.n not in (None, 1):
            raise APIError(400, f"'n' is {req.n}; this server makes one answer per request, so it must be 1", param="n")
        temperature = 0.0 if req.temperature is None else req.temperature
        # below this, dividing the logits overflows to inf/nan: such a temperature means greedy anyway
        temperature = temperature if temperature >= MIN_TEMPERATURE else 0.0
        return Job(adapter=adapter, ids=ids, max_tokens=max_tokens, temperature=temperature,
                   top_p=1.0 if req.top_p is None else req.top_p, seed=req.seed,
                   stop=[req.stop] if isinstance(req.stop, str) else req.stop or [],
                   deadline=time.monotonic() + settings.timeout, loop=asyncio.get_running_loop())

    def note(request: Request, **fields) -> None:
        request.state.log = {**getattr(request.state, "log", {}), **fields}

    async def run(request: Request, job: Job, shape: str, model_name: str, stream: bool, include_usage: bool):
        """Queue the job; answer as one JSON body, or as server-sent events."""
        engine.submit(job)
        rid = ("chatcmpl-" if shape == "chat" else "cmpl-") + uuid.uuid4().hex[:24]
        prompt_tokens = len(job.ids)
        note(request, model=model_name, prompt_tokens=prompt_tokens, stream=stream)

        def usage():
            return {"prompt_tokens": prompt_tokens, "completion_tokens": job.completion_tokens,
                    "total_tokens": prompt_tokens + job.completion_tokens}

        if not stream:
            parts = []
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
                raise APIError(504, f"the request took longer than {settings.timeout:g} s", "timeout", "timeout")
            text = "".join(parts)
            if shape == "chat":
                choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None, "finish_reason": finish}
            else:
                choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
            return {"id": rid, "object": "chat.completion" if shape == "chat" else "text_completion", "created": int(time.time()),
                    "model": model_name, "choices": [choice], "usage": usage()}

        obj = "chat.completion.chunk" if shape == "chat" else "text_completion"

        def chunk(delta: str | None, finish: str | None, role: bool = False) -> str:
            if shape == "chat":
                d = {"role": "assistant", "content": ""} if role else ({"content": delta} if delta is not None else {})
                choice = {"index": 0, "delta": d, "logprobs": None, "finish_reason": finish}
            else:
                choice = {"index": 0, "text": delta or "", "logprobs": None, "finish_reason": finish}
            return "data: " + json.dumps({"id": rid, "object": obj, "created": int(time.time()), "model": model_name,
                                          "choices": [choice]}, ensure_ascii=False) + "\n\n"

        async def events():
            finish = None
            try:
                if shape == "chat":
                    yield chunk(None, None, role=True)
                while True:
                    kind, value = await job.events.get()
                    if kind == "delta":
                        yield chunk(value, None)
                    elif kind == "error":
                        yield "data: " + json.dumps(APIError(500, f"generation failed: {value}", "server_error").body()) + "\n\n"
                        break
                    else:
                        finish = value
                        if finish == "timeout":
                            err = APIError(504, f"the request took longer than {settings.timeout:g} s", "timeout", "timeout")
                            yield "data: " + json.dumps(err.body()) + "\n\n"
                        else:
                            yield chunk(None, finish)
                        break
                if include_usage:
                    yield "data: " + json.dumps({"id": rid, "object": obj, "created": int(time.time()), "model": model_name,
                                                  "choices": [], "usage": usage()}) + "\n\n"
                yield "data: [DONE]\n\n"
            finally:
                if finish is None:  # the client went away mid-stream: stop generating for it
                    job.cancelled.set()
                    note(request, cancelled=True)
                note(request, completion_tokens=job.completion_tokens, finish_reason=finish)
                _log(request.scope, settings, None)

        request.state.log_later = True
        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @app.get("/health")
    async def health():
        return {"status": "ok", "models": models, "waiting": len(engine.waiting), "generating": engine.busy,
                "batches": engine.batches}

    @app.get("/v1/models")
    async def list_models(request: Request):
        authorize(request)
        return {"object": "list", "data": [{"id": m, "object": "model", "created": created, "owned_by": "tunesmith"} for m in models]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):

        req = parse(ChatRequest, await read_json(request))
        adapter = pick_model(req)
        convo = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in req.messages]
        if settings.log_prompts:
            note(request, messages=convo)
        with tok_lock:
            try:
                ids = prompt_ids(engine.tokenizer, convo)
            except Exception as e:  # the chat template refused this conversation
                raise APIError(400, f"the model's chat template refused these messages: {e}", param="messages") from None
        job = make_job(req, ids, adapter)
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return await run(request, job, "chat", req.model, req.stream, include_usage)

    @app.post("/v1/completions")
    async def completions(request: Request):
        req = parse(CompletionRequest, await read_json(request))
        adapter = pick_model(req)
        prompt = req.prompt if isinstance(req.prompt, str) else req.prompt[0]
        if not prompt:
            raise APIError(400, "'prompt' must be a non-empty string (one prompt per request)", param="prompt")
        if settings.log_prompts:
            note(request, prompt=prompt)
        with tok_lock:
            ids = engine.tokenizer(prompt)["input_ids"]
        job = make_job(req, ids, adapter)
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return await run(request, job, "text", req.model, req.stream, include_usage)

    return AccessLog(app, settings)


def _log(scope, settings: Settings, status: int | None) -> None:
    state = scope.setdefault("state", {})
    if status is not None:
        state["status"] = status
    line = {"ts": round(time.time(), 3), "method": scope.get("method"), "path": scope.get("path"),
            "status": state.get("status"), "ms": round(1000 * (time.perf_counter() - state.get("t0", time.perf_counter())), 1),
            "client": (scope.get("client") or ["-"])[0], **state.get("log", {})}
    print(json.dumps(line, ensure_ascii=False), file=settings.log or sys.stderr, flush=True)


class AccessLog:
    """ASGI wrapper: one JSON line per request (no prompt text unless --log-prompts). Streamed
    responses are logged when the stream ends, with their token counts."""

    def __init__(self, app, settings: Settings):
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
                _log(scope, self.settings, None)


def read_keys(args) -> list[str]:
    keys = [k.strip() for k in os.environ.get(args.api_key_env, "").split(",") if k.strip()]
    if args.api_key_file:
        path = Path(args.api_key_file)
        if not path.is_file():
            raise UserError(f"--api-key-file {path}: no such file")
        keys += [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    return keys


def parse_adapters(specs: list[str]) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise UserError(f"--adapter {spec}: expected NAME=RUN_DIR, e.g. --adapter notes=runs/notes")
        if name in out:
            raise UserError(f"--adapter {spec}: the name {name!r} is given twice")
        out[name] = check_adapter_dir(path).resolve()
    return out


def load_engine(model_spec: str | None, adapters: dict[str, Path], *, trust_remote_code: bool, max_batch: int,
                max_queue: int) -> tuple[Engine, str]:
    """Base model with every adapter loaded under its name (LoRA/DoRA kept unmerged, switched per batch)."""
    import json as _json


    first = next(iter(adapters.values()), None)
    spec = base_model_of(first, model_spec)
    for name, path in adapters.items():
        trained_on = base_model_of(path, None, spec)
        if not model_spec and trained_on != spec:
            raise UserError(f"--adapter {name}={path}: was trained on {trained_on}, "
                            f"not on {spec} like the first adapter; serve one base model per server, or pass --model")
        try:
            cfg = _json.loads((path / "adapter_config.json").read_text())
            cfg.get("peft_type")
        except (ValueError, AttributeError):
            raise UserError(f"--adapter {name}={path}: adapter_config.json is damaged (not a JSON object)") from None
        if cfg.get("peft_type") not in ("LORA",):
            raise UserError(f"--adapter {name}={path}: a {cfg.get('peft_type')} adapter; serve takes LoRA/DoRA/QLoRA adapters "
                            f"(use `tunesmith generate` or `tunesmith chat` with a prompt/prefix-tuning run)")
    loaded = load(spec, trust_remote_code=trust_remote_code)
    model = loaded.model
    if adapters:
        from peft import PeftModel

        names = list(adapters)
        model = PeftModel.from_pretrained(model, str(adapters[names[0]]), adapter_name=names[0])
        for name in names[1:]:
            model.load_adapter(str(adapters[name]), adapter_name=name)
        model.eval()
    base_name = spec if "/" not in spec and not spec.endswith(".gguf") else Path(spec).name
    if base_name in adapters:
        raise UserError(f"--adapter {base_name}=...: that name is the base model's; pick another")
    return Engine(model, loaded.tokenizer, list(adapters), max_batch=max_batch, max_queue=max_queue), base_name


def cli_serve(args) -> int:
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError:
        raise UserError("serve needs the 'serve' extra: pip install 'tunesmith[serve]'") from None
    for flag in ("max_batch", "max_queue", "max_tokens", "max_prompt_tokens", "max_body"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be at least 1")
    keys = read_keys(args)
    if not keys and not args.no_auth:
        raise UserError(f"no API keys: set {args.api_key_env}=key1,key2 or pass --api-key-file FILE "
                        f"(or --no-auth to accept anyone who can reach {args.host}:{args.port})")
    adapters = parse_adapters(args.adapter)
    engine, base_name = load_engine(args.model, adapters, trust_remote_code=args.trust_remote_code,
                                    max_batch=args.max_batch, max_queue=args.max_queue)
    settings = Settings(keys=[] if args.no_auth else keys, max_tokens=args.max_tokens, max_prompt_tokens=args.max_prompt_tokens,
                        max_body=args.max_body, timeout=args.timeout, log_prompts=args.log_prompts)
    app = create_app(engine, base_name, settings)
    models = ", ".join([base_name] + engine.adapters)
    print(f"serving {models} on http://{args.host}:{args.port}/v1 ({'no auth' if args.no_auth else f'{len(keys)} API key(s)'})",
          file=sys.stderr, flush=True)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    try:
        uvicorn.Server(config).run()
    finally:
        engine.close()
    return 0
