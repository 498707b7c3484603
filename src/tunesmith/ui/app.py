"""`tunesmith ui`: the review web app, served by FastAPI like `serve`, every asset shipped in the package
(ui/static/: one HTML page, one script, one style sheet; nothing from a CDN, no web fonts), so it
works offline.

The page is a small single-page app over a JSON API: the registry's runs, one run or eval in full,
two systems side by side with the people's win rate beside the metric differences, the review
queue, and the sweeps' and learning curves' own report pages (their plots). Every judgement is
posted the moment it is made and stored in its own transaction.

Access (say what each protects; the README's "What tunesmith guarantees" says it to users):
- a Host allow-list and a same-origin rule for writes (web/guard.py) in front of every route: a web
  page elsewhere can neither read the registry through DNS rebinding nor post through the user's
  browser;
- a token, made at each start and printed in the address `tunesmith ui` shows (as Jupyter does),
  even on 127.0.0.1: every other user and program on this machine can reach a loopback port, and
  the registry holds the company's test transcripts. `--no-token` turns it off on loopback only.
  The token is compared in constant time (hmac.compare_digest): `Authorization: Bearer TOKEN`, or
  the cookie set when the page is opened once as `/?token=TOKEN` (HttpOnly, SameSite=Strict).
  Without it every route, the page itself included, is a 401;
- a write must be a JSON body that fits the schema (ui/schema.py): a cross-site form cannot send
  JSON without the browser's preflight, and a bad body is a 4xx naming the field, never a 500.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import random
import sqlite3
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse

from tunesmith.errors import NotFound, UserError
from tunesmith.eval import errors
from tunesmith.registry.db import Registry
from tunesmith.review import stats as review_stats
from tunesmith.review import store
from tunesmith.serve.api_schema import BadBody, read_json
from tunesmith.ui.schema import MODELS, JudgementBody
from tunesmith.ui.views import run_detail, study_key, summary
from tunesmith.web.guard import Guard, HostRule, loopback_rule

STATIC = Path(__file__).parent / "static"
ASSETS = ("app.js", "style.css", "favicon.svg")
COOKIE = "tunesmith_ui"


def cookie_name(token: str) -> str:
    """One cookie per token: cookies are shared by every port of a host, so two `tunesmith ui` on one
    machine must not overwrite each other's."""
    return f"{COOKIE}_{hashlib.sha256(token.encode()).hexdigest()[:8]}"


MAX_BODY = 1_000_000
# A second line behind app.js's rule (every text from the registry becomes a text node, never HTML):
# the page may run only our own script and talk only to this server, and no other site may frame it.
PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "frame-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": PAGE_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class Refused(Exception):
    def __init__(self, status: int, message: str, field: str = ""):
        super().__init__(message)
        self.status, self.message, self.field = status, message, field

    def body(self) -> dict:
        return {"error": self.message, **({"field": self.field} if self.field else {})}


def allowed(token: str | None, request: Request) -> None:
    """The token from the header or the cookie, in constant time; no token configured: open."""
    if not token:
        return
    auth = request.headers.get("authorization", "")
    given = auth[7:].strip() if auth[:7].lower() == "bearer " else request.cookies.get(cookie_name(token), "")
    if not hmac.compare_digest(given.encode(), token.encode()):
        raise Refused(401, "this review app needs its token: open the address `tunesmith ui` printed")


def run_errors(reg: Registry, ref: str, system: str | None, against: str | None) -> dict:
    """An eval's failure groups with the evals it can be compared with; given `against` (the earlier eval of
    the same test set), how each of its groups changed in this one (eval/errors.py)."""
    ev = errors.registered_eval(reg, ref, paths=False)  # a trained run stands for its newest eval
    result = ev["result"]
    if against is None:
        return {
            "analysis": errors.analyse(errors.system_of(result, system)),
            "peers": errors.peers(reg, result, ev["id"]),
        }
    before = errors.registered_eval(reg, against, paths=False)["result"]
    return {"comparison": errors.compare(errors.system_of(before, system), errors.system_of(result, system))}


def studies(reg: Registry) -> dict[str, dict]:
    """The sweeps and learning curves whose runs are registered: the folder above a training run that holds
    a report.html (`tunesmith sweep` and `tunesmith curve` write one there), keyed by a hash of its path,
    so a request names a key and never a path."""
    found: dict[str, dict] = {}
    for r in reg.runs(limit=5000):
        if r.get("kind") != "train" or not r.get("path"):
            continue
        folder = Path(r["path"]).parent
        key = study_key(folder)
        if key not in found:
            report = folder / "report.html"
            if not report.is_file():
                continue
            kind = "curve" if (folder / "subsets").is_dir() else "sweep"
            found[key] = {
                "key": key,
                "kind": kind,
                "name": folder.name,
                "path": str(folder),
                "runs": 0,
                "updated": report.stat().st_mtime,
            }
        found[key]["runs"] += 1
    return found


def study_report(reg: Registry, key: str) -> FileResponse:
    """A sweep's or curve's report.html by its key: our own self-contained page (inline SVG and style),
    shown in a sandboxed frame and allowed to load nothing."""
    study = studies(reg).get(key)
    if study is None:
        raise Refused(404, f"no sweep or curve {key!r}")
    policy = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'self'"
    return FileResponse(Path(study["path"]) / "report.html", headers={"Content-Security-Policy": policy})


def next_items(reg: Registry, name: str, reviewer: str) -> list[dict]:
    """The queue's items, each with this reviewer's judgements, and a random order of A and B for the
    blind choice (recorded with the choice when it is posted)."""
    q = store.queue(reg, name)
    mine: dict[int, list[dict]] = {}
    for j in store.judgements(reg, name):
        if j["reviewer"] == reviewer:
            mine.setdefault(j["item"], []).append(j)
    out = []
    for it in store.items(reg, name):
        pair = [q["a"], q["b"]]
        random.shuffle(pair)
        out.append({**it, "order": pair, "mine": mine.get(it["id"], [])})
    return out


async def judgement_body(request: Request) -> JudgementBody:
    """The posted judgement: JSON (a cross-site form cannot send it without a preflight), at most
    MAX_BODY bytes, valid against the schema; anything else a 4xx naming the field (ui/schema.py)."""
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
        raise Refused(415, "send the judgement as JSON (Content-Type: application/json)")
    body = b""
    async for part in request.stream():
        body += part
        if len(body) > MAX_BODY:
            raise Refused(413, f"request body over {MAX_BODY:,} bytes")
    try:
        return read_json(body, JudgementBody, MODELS)
    except BadBody as e:
        raise Refused(e.status, e.message, e.param) from None


async def guarded(request: Request, call_next, token: str | None):
    """The token (and the cookie it sets once), then the route; what a route refuses becomes a JSON 4xx
    (a registry locked past its busy timeout a 503), never a 500."""
    try:
        if request.url.path == "/" and token and request.query_params.get("token"):
            if hmac.compare_digest(request.query_params["token"].encode(), token.encode()):
                resp = RedirectResponse("/", status_code=303)
                resp.set_cookie(cookie_name(token), token, httponly=True, samesite="strict")
                return resp
        allowed(token, request)
        resp = await call_next(request)
        for k, v in HEADERS.items():
            resp.headers.setdefault(k, v)
        return resp
    except Refused as e:
        return JSONResponse(e.body(), status_code=e.status)
    except UserError as e:  # an unknown run, queue or item (NotFound); a judgement that cannot be stored
        return JSONResponse({"error": str(e)}, status_code=404 if isinstance(e, NotFound) else 400)
    except sqlite3.OperationalError as e:  # locked past the busy timeout by other writers, a full disk
        return JSONResponse({"error": f"the registry could not answer now ({e}); try again"}, 503)


async def not_found(request: Request, e) -> JSONResponse:
    return JSONResponse({"error": f"no route {request.method} {request.url.path}"}, status_code=404)


async def bad_method(request: Request, e) -> JSONResponse:
    return JSONResponse({"error": f"{request.method} is not allowed on {request.url.path}"}, status_code=405)


def create_app(registry: str | Path | None, token: str | None = None, hosts: HostRule | None = None):
    """The app, behind the Host and Origin guard (web/guard.py: loopback names unless `hosts` says more)."""
    app = FastAPI(title="tunesmith review", docs_url=None, redoc_url=None, openapi_url=None)

    def reg() -> Registry:
        # a registry deleted or moved while the app runs is said so, not made again empty behind the user
        if registry is not None and not Path(registry).is_file():
            raise Refused(
                503, f"the registry {registry} is gone (deleted or moved since `tunesmith ui` started)"
            )
        return Registry(registry)  # a connection per request: the server's threads never share one

    @app.middleware("http")
    async def _guard(request: Request, call_next):
        return await guarded(request, call_next, token)

    app.add_exception_handler(404, not_found)
    app.add_exception_handler(405, bad_method)

    @app.get("/")
    async def _page():
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    @app.get("/static/{name}")
    async def _static(name: str):
        if name not in ASSETS:  # a fixed list: a name never becomes a path
            raise Refused(404, f"no asset {name!r}")
        return FileResponse(STATIC / name)

    @app.get("/favicon.ico")
    async def _icon():  # what a browser asks for by itself: our icon, not a 404 in its console
        return FileResponse(STATIC / "favicon.svg", media_type="image/svg+xml")

    @app.get("/api/runs")
    async def _runs():
        return [summary(r) for r in reg().runs(limit=500)]

    @app.get("/api/runs/{run_id}")
    async def _run(run_id: str):
        return run_detail(reg(), run_id)

    @app.get("/api/runs/{run_id}/errors")
    async def _errors(run_id: str, system: str | None = None, against: str | None = None):
        return run_errors(reg(), run_id, system, against)

    @app.get("/api/studies")
    async def _studies():
        return sorted(studies(reg()).values(), key=lambda s: -s["updated"])

    @app.get("/studies/{key}/report.html")
    async def _study_report(key: str):
        return study_report(reg(), key)

    @app.get("/api/queues")
    async def _queues():
        return store.queues(reg())

    @app.get("/api/queues/{name}")
    async def _queue(name: str, reviewer: str = ""):
        r = reg()
        q, items = store.queue(r, name), next_items(r, name, reviewer)
        return {"queue": q, "items": items, "metrics": review_stats.metric_tests(items, q["a"], q["b"])}

    @app.get("/api/stats")
    async def _stats():
        return review_stats.stats(reg())

    @app.post("/api/judgements")
    async def _judge(request: Request):
        j = (await judgement_body(request)).judgement()
        # in a worker thread (with its own connection): a write waiting on another writer's lock must not
        # stop every other request of the app meanwhile
        return {"id": await asyncio.to_thread(lambda: store.record(reg(), j)), "saved": True}

    def refused(status: int, code: str, sentence: str) -> dict:
        return {"error": sentence, "code": code}

    return Guard(app, hosts or loopback_rule(), refused)
