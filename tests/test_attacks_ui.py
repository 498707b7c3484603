"""`tunesmith ui` attacked as a page on another site, another user of this machine, or a careless script
would (issue 33): a foreign Host (DNS rebinding), writes from another origin, a missing or wrong token,
path traversal in every path parameter, over a hundred generated malformed bodies, stored XSS in test
data, outputs, names and judgements opened in headless chromium, and the registry under four writers
with one killed mid-transaction. Every case asserts the status, the JSON error and that the server
still answers; no case may get a 5xx."""

from __future__ import annotations

import copy
import http.client
import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from urllib.parse import quote

import pytest

from conftest import LOCAL, ROOT, free_port, serving, wait_for
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
from tunesmith.registry.db import Registry
from tunesmith.review import store
from tunesmith.review.store import Judgement
from tunesmith.web.guard import host_rule, split_host

pytest.importorskip("fastapi", reason="the review app needs the 'serve' extra")
pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx (the 'test' extra)")

from fastapi.testclient import TestClient  # noqa: E402

from tunesmith.ui.app import create_app  # noqa: E402

TOKEN = "attack-suite-token"
PAYLOADS = [
    "<script>window.__xss=1;alert(1)</script>",
    '<img src=x onerror="window.__xss=2;alert(2)">',
    '<a href="javascript:window.__xss=3">click</a>',
    '<svg onload="window.__xss=4"></svg>',
    "javascript:window.__xss=5",
    '<iframe src="javascript:parent.__xss=6"></iframe>',
    '"><script>window.__xss=7</script>',
    "{{constructor.constructor('window.__xss=8')()}}",
]
NAME = '<img src=x onerror="window.__xss=10">'  # a run's and a queue's name (no '/': names are in URLs)
STUDY_PAGE = (
    "<!doctype html><title>sweep</title><script>window.__xss=9;document.title='XSS'</script>"
    "<img src=x onerror=\"document.title='XSS'\"><p>report</p>"
)


@pytest.fixture(scope="module")
def hostile_reg(evaluated):
    """The review fixture's registry, plus: an eval whose inputs, outputs and references are XSS payloads,
    a queue of it named with one, judgements whose reviewer, tags, comment and correction are payloads,
    and a sweep folder whose report.html holds a script. Returns (registry path, ids)."""
    root, reg_path, _ = evaluated
    reg = Registry(reg_path)
    both = reg.get(reg.find("both"))
    result = copy.deepcopy(both["result"])
    for s in result["systems"]:
        for i, ex in enumerate(s["examples"]):
            ex["output"] = PAYLOADS[i % len(PAYLOADS)]
            ex["input"] = PAYLOADS[(i + 1) % len(PAYLOADS)]
            ex["reference"] = PAYLOADS[(i + 2) % len(PAYLOADS)]
            ex["meta"] = {"topic": PAYLOADS[i % 2]}  # a metadata slice of `errors`, named by the test data
    v1 = reg.get(reg.find("v1"))
    eval_id = reg.add(kind="eval", name=NAME, path=str(root / "xss-eval"), model=both["model"],
                      config={"note": PAYLOADS[0]}, data=[{"role": "test", "path": PAYLOADS[1]}],
                      parents=[("evaluated", v1["path"])], result=result,
                      metrics=[(1, 0, "rougeL", 0.1)], headline=("rougeL", 0.1))  # fmt: skip
    q = store.add_queue(reg, [eval_id], NAME)
    its = store.items(reg, q["name"])
    label = sorted(its[0]["outputs"])[0]
    store.record(reg, Judgement(item=its[0]["id"], reviewer=PAYLOADS[1], kind="rating", label=label,
                                rating=2, tags=[PAYLOADS[3][:40]], comment=PAYLOADS[0]))  # fmt: skip
    store.record(reg, Judgement(item=its[1]["id"], reviewer=PAYLOADS[6], kind="correction", label=label,
                                text=PAYLOADS[2]))  # fmt: skip
    study = root / "sweep-xss"
    (study / "trial-0").mkdir(parents=True, exist_ok=True)
    (study / "report.html").write_text(STUDY_PAGE)
    train_id = reg.add(kind="train", name=NAME + "trial", path=str(study / "trial-0"), model=both["model"],
                       config={}, data=[], parents=[], result={}, metrics=[])  # fmt: skip
    key = next(s["key"] for s in TestClient(create_app(reg_path), base_url=LOCAL).get("/api/studies").json()
               if s["path"] == str(study))  # fmt: skip
    return reg_path, {"eval": eval_id, "train": train_id, "queue": q["name"], "study": key,
                      "item": its[0]["id"], "label": label, "v1_path": v1["path"]}  # fmt: skip


def routes(ids: dict) -> list[tuple[str, str]]:
    """Every route of the app, with real parameters."""
    return [
        ("GET", "/"),
        ("GET", "/static/app.js"),
        ("GET", "/static/style.css"),
        ("GET", "/api/runs"),
        ("GET", f"/api/runs/{ids['eval']}"),
        ("GET", f"/api/runs/{ids['eval']}/errors"),
        ("GET", f"/api/runs/{ids['eval']}/errors?against={ids['eval']}"),
        ("GET", "/api/studies"),
        ("GET", f"/studies/{ids['study']}/report.html"),
        ("GET", "/api/queues"),
        ("GET", f"/api/queues/{quote(ids['queue'], safe='')}?reviewer=ann"),
        ("GET", "/api/stats"),
        ("POST", "/api/judgements"),
    ]


def error_of(body: dict) -> tuple[str, str]:
    return body["error"], body.get("field", "")


def still_answers(client: TestClient, headers: dict | None = None) -> None:
    r = client.get("/api/stats", headers=headers or {})
    assert r.status_code == 200 and "reviewers" in r.json(), r.text


def test_host_names_split_and_allowed():
    assert split_host("LocalHost.:8400") == ("localhost", "8400")
    assert split_host("[::1]:80") == ("::1", "80")
    for bad in ("", "::1", "a:b:c", "[::1", "[evil]:80", "x:99999999", "a/b", "a@b", "a b"):
        assert split_host(bad) is None, bad
    loop = host_rule("127.0.0.1")
    assert [
        n for n in ("localhost", "127.0.0.1", "::1", "127.0.0.2", "10.0.0.1", "evil") if loop.allows(n)
    ] == [
        "localhost",
        "127.0.0.1",
        "::1",
    ]
    one = host_rule("10.1.2.3", ["notes.example.com"])
    assert one.allows("10.1.2.3") and one.allows("notes.example.com") and one.allows("localhost")
    assert not one.allows("10.1.2.4") and not one.allows("evil.example")
    every = host_rule("0.0.0.0")  # any IP literal (an address cannot be rebound), but still no foreign name
    assert every.allows("192.168.1.5") and every.allows("fe80::1") and not every.allows("attacker.example")
    assert host_rule("::1", ["*"]).allows("anything.example")


def test_a_foreign_host_is_421_on_every_route_even_with_the_token(hostile_reg):
    reg_path, ids = hostile_reg
    client = TestClient(create_app(reg_path, token=TOKEN), base_url=LOCAL, raise_server_exceptions=False)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    seen = 0
    for method, path in routes(ids):
        for host in FOREIGN_HOSTS:
            r = client.request(method, path, headers={**auth, "Host": host}, json={"item": ids["item"]})
            seen += 1
            assert r.status_code == 421, (method, path, host, r.status_code, r.text[:200])
            body = r.json()
            assert body["code"] == "host_not_allowed" and "DNS rebinding" in body["error"], body
            assert PAYLOADS[0] not in r.text and NAME not in r.text  # nothing of the registry in it
    # the exact request of the issue, without a token on the app started the old default way
    open_app = TestClient(create_app(reg_path), base_url=LOCAL)
    r = open_app.get(f"/api/runs/{ids['eval']}", headers={"Host": "attacker.example:8480"})
    assert r.status_code == 421 and PAYLOADS[0] not in r.text and len(r.content) < 600
    for host in LOCAL_HOSTS:
        assert open_app.get("/api/runs", headers={"Host": host}).status_code == 200, host
    assert seen >= 100
    still_answers(client, auth)


def test_bound_elsewhere_the_allowed_names_and_the_address(hostile_reg):
    reg_path, _ = hostile_reg
    app = create_app(reg_path, token=TOKEN, hosts=host_rule("10.1.2.3", ["notes.example.com"]))
    client = TestClient(app, base_url=LOCAL)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    answered = ["notes.example.com", "10.1.2.3:8400", "localhost:8400"]
    refused = ["10.1.2.4:8400", "evil.example.com", "notes.example.com.evil"]
    for host, status in [(h, 200) for h in answered] + [(h, 421) for h in refused]:
        assert client.get("/api/runs", headers={**auth, "Host": host}).status_code == status, host


def test_a_cross_origin_write_is_403_even_with_the_token(hostile_reg):
    reg_path, ids = hostile_reg
    client = TestClient(create_app(reg_path, token=TOKEN), base_url=LOCAL)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    reg = Registry(reg_path)
    before = len(store.judgements(reg))
    vote = {"item": ids["item"], "reviewer": "mallory", "kind": "rating", "label": ids["label"], "rating": 1}
    for origin in FOREIGN_ORIGINS:
        r = client.post("/api/judgements", json=vote, headers={**auth, "Origin": origin})
        assert r.status_code == 403 and r.json()["code"] == "cross_origin", (origin, r.text)
        assert "another origin" in r.json()["error"]
    r = client.post("/api/judgements", json=vote, headers={**auth, "Sec-Fetch-Site": "cross-site"})
    assert r.status_code == 403 and "another site" in r.json()["error"]
    assert len(store.judgements(reg)) == before  # nothing stored
    # a read from another origin is not a write (the browser keeps its answer from the page anyway)
    assert client.get("/api/runs", headers={**auth, "Origin": "http://attacker.example"}).status_code == 200
    # the page's own origin, by each loopback name, and a client that sends no Origin
    own = [("http://127.0.0.1:8400", "127.0.0.1:8400"), ("http://localhost:9000", "localhost:9000"),
           ("http://[::1]:8400", "[::1]:8400"), (None, "127.0.0.1:8400")]  # fmt: skip
    for origin, host in own:
        headers = {**auth, "Host": host, **({"Origin": origin} if origin else {})}
        r = client.post("/api/judgements", json=vote, headers=headers)
        assert r.status_code == 200 and r.json()["saved"] is True, (origin, r.text)
    assert len(store.judgements(reg)) == before + 4


def test_a_missing_or_wrong_token_is_401_on_every_route(hostile_reg):
    reg_path, ids = hostile_reg
    client = TestClient(create_app(reg_path, token=TOKEN), base_url=LOCAL, follow_redirects=False)
    for method, path in routes(ids):
        wrong = [f"Bearer {TOKEN}x", f"Basic {TOKEN}", "Bearer wrong"]
        for headers in [{}, {"Cookie": f"tunesmith_ui={TOKEN}"}, *({"Authorization": w} for w in wrong)]:
            r = client.request(method, path, headers=headers, json={})
            assert r.status_code == 401 and "needs its token" in r.json()["error"], (method, path, headers)
    assert client.get(f"/?token={TOKEN}x").status_code == 401
    assert client.get("/?token=").status_code == 401
    opened = client.get(f"/?token={TOKEN}")
    assert opened.status_code == 303 and "HttpOnly" in opened.headers["set-cookie"]
    for method, path in routes(ids)[:-1]:
        assert client.request(method, path).status_code == 200, path  # the cookie from now on
    still_answers(client)


@pytest.fixture
def live(hostile_reg):
    """The app on a real port: what a client sends reaches it byte for byte."""
    with serving(create_app(hostile_reg[0])) as port:
        yield port


def raw_get(port: int, path: str) -> tuple[int, bytes]:
    """GET exactly this path (no client-side normalising of dots or escapes)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.putrequest("GET", path, skip_host=True, skip_accept_encoding=True)
    conn.putheader("Host", f"127.0.0.1:{port}")
    conn.endheaders()
    r = conn.getresponse()
    body = r.read()
    conn.close()
    return r.status, body


def test_path_traversal_in_every_path_parameter_is_a_json_404(hostile_reg, live):
    reg_path, ids = hostile_reg
    run_dir = quote(ids["v1_path"], safe="")  # a run's own folder: a name never becomes a path on the web
    templates = ["/api/runs/{}", "/api/runs/{}/errors", f"/api/runs/{ids['eval']}/errors?against={{}}",
                 "/api/queues/{}", "/static/{}", "/studies/{}/report.html"]  # fmt: skip
    problems = []
    for t in templates:
        for bad in [*TRAVERSAL, run_dir, quote(reg_path, safe=""), "app.py", "index.html", "..", "."]:
            status, body = raw_get(live, t.format(bad))
            try:
                error = json.loads(body)["error"]
            except (ValueError, KeyError, TypeError):
                error = None
            if status not in (404, 400) or not error or b"root:" in body or b"SQLite" in body:
                problems.append((t, bad[:40], status, body[:120]))
    assert problems == [], problems
    assert raw_get(live, f"/api/runs/{ids['eval']}")[0] == 200  # still answers
    assert raw_get(live, "/api/stats")[0] == 200


JUDGEMENT_FIELDS = {
    "item": Field(True, is_int(1, 2**63 - 1), (10**9, -(2**63), "1e3", 1e3)),
    "reviewer": Field(True, is_text(1, 100), ("x" * 101, " " * 200)),
    "kind": Field(True, lambda v: v == "rating", ("AB", "rating ", "review")),
    "left": Field(False, either(is_none, is_text(1, 200)), ("x" * 201,)),
    "right": Field(False, either(is_none, is_text(1, 200)), ("x" * 201,)),
    "choice": Field(False, either(is_none, is_text(1, 200)), ("x" * 201,)),
    "label": Field(
        False, lambda v: False, ("gpt", "v1/tuned ", "x" * 201)
    ),  # the one label is the good body's
    "rating": Field(False, is_int(1, 5), (6, 5.0, "4", -(2**63))),
    "tags": Field(False, lambda v: v == [], (["x" * 41], ["a"] * 21, [5], [None], "a,b")),
    "comment": Field(False, either(is_none, is_text(0, 100_000)), ("x" * 100_001,)),
    "text": Field(False, either(is_none, is_text(0, 100_000)), ("x" * 100_001, 5)),
}


def test_over_a_hundred_malformed_judgements_are_json_4xx_naming_the_field(hostile_reg):
    reg_path, ids = hostile_reg
    client = TestClient(create_app(reg_path), base_url=LOCAL, raise_server_exceptions=False)
    good = {"item": ids["item"], "reviewer": "ann", "kind": "rating", "label": ids["label"], "rating": 4}
    fields = {**JUDGEMENT_FIELDS, "label": Field(False, lambda v: v == ids["label"], ("gpt", "x" * 201))}
    cases = bodies(good, fields, unknown_refused=True)
    refused = [c for c in cases if c[1]]
    assert len(refused) >= 100, len(refused)
    problems = []
    for field, must_refuse, body in cases:
        r = client.post("/api/judgements", content=body, headers={"Content-Type": "application/json"})
        why = problem(r.status_code, r.content, field, must_refuse, error_of)
        if why:
            problems.append((field, body[:60], why))
    # and what is not a JSON body at all
    for ctype, body in [("text/plain", b"{}"), ("application/x-www-form-urlencoded", b"item=1"),
                        ("multipart/form-data; boundary=x", b"--x--"), ("", b"{}")]:  # fmt: skip
        r = client.post("/api/judgements", content=body, headers={"Content-Type": ctype})
        if r.status_code != 415 or "JSON" not in r.json()["error"]:
            problems.append((ctype, r.status_code, r.text[:100]))
    r = client.post("/api/judgements", content=b"{" + b" " * 1_100_000 + b"}",
                    headers={"Content-Type": "application/json"})  # fmt: skip
    if r.status_code != 413:
        problems.append(("huge", r.status_code, r.text[:100]))
    assert problems == [], problems
    still_answers(client)


def test_stored_xss_runs_no_script_in_chromium(hostile_reg, browser):
    reg_path, ids = hostile_reg
    with serving(create_app(reg_path, token=TOKEN)) as port:
        xss_walk(browser, f"http://127.0.0.1:{port}", ids)


def xss_walk(browser, base: str, ids: dict) -> None:
    pages = ["#/runs", f"#/run/{ids['eval']}", f"#/run/{ids['train']}", "#/queues",
             f"#/review/{quote(ids['queue'], safe='')}", f"#/compare/{quote(ids['queue'], safe='')}",
             "#/studies", f"#/studies/{ids['study']}", f"#/diff/{ids['eval']}/{ids['eval']}"]  # fmt: skip
    check = """return {xss: window.__xss === undefined ? null : window.__xss, title: document.title,
        handlers: document.querySelectorAll('[onerror],[onload],[onclick]').length,
        js: document.querySelectorAll('[href^="javascript:" i],[src^="javascript:" i]').length,
        scripts: [...document.scripts].map(s => s.src), text: document.body.innerText}"""
    browser.get(f"{base}/?token={TOKEN}")  # the address `tunesmith ui` prints: sets the cookie
    shown = []
    for page in pages:
        browser.get(f"{base}/{page}")
        browser.refresh()
        wait_for(lambda: "Loading" not in browser.execute_script("return document.body.innerText"))
        time.sleep(0.3)  # an onerror fires after the failed image load
        got = browser.execute_script(check)
        assert got["xss"] is None and got["title"] == "tunesmith review", (page, got)
        assert got["handlers"] == 0 and got["js"] == 0, (page, got)
        assert got["scripts"] == [f"{base}/static/app.js"], (page, got)
        shown.append(got["text"])
    text = "\n".join(shown)
    # the payloads are there, as text: the pages rendered them, and rendered them inert
    assert NAME in text and PAYLOADS[0] in text and PAYLOADS[1] in text, text[:2000]
    browser.get(f"{base}/studies/{ids['study']}/report.html")  # the study's own page, opened directly
    time.sleep(0.3)
    got = browser.execute_script("return [window.__xss === undefined, document.title]")
    assert got == [True, "sweep"], got  # its Content-Security-Policy ran no script


WRITER = """
import sys, time
from tunesmith.registry.db import Registry
from tunesmith.review import store
from tunesmith.review.store import Judgement
reg, who, n, item, label = Registry(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
if who == "killed":  # holds the write lock in the middle of a big transaction until it is killed
    with reg.tx() as db:
        db.execute("INSERT INTO runs (id, name, kind, status, started) "
                   "VALUES ('killed', 'killed', 'eval', 'done', 0)")
        db.executemany("INSERT INTO metrics (run, step, name, value) VALUES ('killed', ?, 'loss', 1.0)",
                       [(i,) for i in range(200_000)])
        print("inside", flush=True)
        time.sleep(120)
for i in range(n):
    j = Judgement(item=item, reviewer=who, kind="rating", label=label, rating=1 + i % 5)
    print(store.record(reg, j), flush=True)
"""


def four_writers(reg_path: str, ids: dict, port: int) -> tuple[list[int], list[int]]:
    """A writer killed while it holds the lock mid-transaction (200,000 rows written, none committed), and
    meanwhile two processes storing 40 judgements each and the web app taking 40 posts; returns the ids
    acknowledged and the web app's statuses."""
    import httpx

    def spawn(who: str, n: int) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", WRITER, reg_path, who, str(n), str(ids["item"]),
                                 ids["label"]], stdout=subprocess.PIPE, text=True, cwd=ROOT)  # fmt: skip

    acked: list[int] = []
    statuses: list[int] = []

    def post(n: int) -> None:  # the fourth writer: the web app's own write route
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
            for i in range(n):
                vote = {"item": ids["item"], "reviewer": "web", "kind": "rating", "label": ids["label"],
                        "rating": 1 + i % 5}  # fmt: skip
                r = c.post("/api/judgements", json=vote)
                statuses.append(r.status_code)
                if r.status_code == 200:
                    acked.append(r.json()["id"])

    killed = spawn("killed", 0)
    assert killed.stdout.readline().strip() == "inside"
    writers = [spawn(f"w{i}", 40) for i in range(2)]
    web = threading.Thread(target=post, args=(40,))
    web.start()
    time.sleep(0.5)  # the others now wait on the killed writer's lock
    killed.send_signal(signal.SIGKILL)
    killed.wait(10)
    outs = [w.communicate(timeout=120)[0] for w in writers]
    web.join(120)
    assert all(w.returncode == 0 for w in writers), outs
    return acked + [int(x) for out in outs for x in out.split()], statuses


def test_the_registry_survives_four_writers_and_a_kill_mid_transaction(hostile_reg):
    reg_path, ids = hostile_reg
    before = {j["id"] for j in store.judgements(Registry(reg_path))}
    with serving(create_app(reg_path)) as port:
        acked, statuses = four_writers(reg_path, ids, port)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/stats", timeout=10) as r:
            assert r.status == 200  # the server still answers
    assert statuses == [200] * 40, statuses  # no 5xx, nothing refused while the lock was held
    assert len(acked) == 120
    db = sqlite3.connect(reg_path)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert db.execute("SELECT COUNT(*) FROM runs WHERE id = 'killed'").fetchone()[0] == 0
    assert db.execute("SELECT COUNT(*) FROM metrics WHERE run = 'killed'").fetchone()[0] == 0
    now = {j["id"] for j in store.judgements(Registry(reg_path))}
    assert now - before == set(acked)  # every acknowledged judgement is there, and nothing else


def test_tunesmith_ui_prints_a_token_and_answers_only_with_it(hostile_reg):
    reg_path, _ = hostile_reg
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tunesmith.cli", "ui", "--registry", reg_path, "--port",
                             str(port)], stderr=subprocess.PIPE, text=True, cwd=ROOT)  # fmt: skip
    try:
        line = proc.stderr.readline()
        assert f"on http://127.0.0.1:{port}/?token=" in line, line
        token = line.strip().rsplit("?token=", 1)[1]
        assert len(token) >= 32
        url = f"http://127.0.0.1:{port}/api/runs"

        def get(headers: dict) -> int:
            for _ in range(100):
                try:
                    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as r:
                        return r.status
                except urllib.error.HTTPError as e:
                    return e.code
                except OSError:
                    time.sleep(0.1)
            raise AssertionError("the ui did not start")

        assert get({}) == 401
        assert get({"Authorization": f"Bearer {token}"}) == 200
        assert get({"Authorization": f"Bearer {token}", "Host": "attacker.example:8480"}) == 421
    finally:
        proc.terminate()
        proc.wait(10)
    r = subprocess.run([sys.executable, "-m", "tunesmith.cli", "ui", "--registry", reg_path, "--host",
                        "0.0.0.0", "--no-token"], capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    assert r.returncode == 2 and "--no-token: only on a loopback address" in r.stderr, r.stderr
