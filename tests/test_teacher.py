"""`tunesmith data generate` (issue 32, part 2): a teacher drafts answers for inputs without any, through an
OpenAI-compatible endpoint (a scripted one here that fails on purpose, and llama.cpp's real server
serving a GGUF the test makes) or a local model; drafts survive a kill and a run resumes; a person
accepts, corrects or rejects them in a review queue, and `review export --sft` writes only the accepted
and corrected ones."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import ROOT, cli, free_port, llama_server, write_jsonl
from tunesmith.registry.db import Registry
from tunesmith.review import store
from tunesmith.review.store import Judgement

pytest.importorskip("openai", reason="an endpoint teacher needs the 'teacher' extra (openai)")


class Teacher(BaseHTTPRequestHandler):
    """A scripted OpenAI-compatible endpoint. The draft is 'NOTES: ' + the last user turn, upper-cased (and
    how many messages it was sent). An input holding GARBAGE gets a body that is not JSON, SLOW one that
    takes longer than the client waits; the first `fail_first` requests get a 500; `key` is checked."""

    state: dict = {}

    def log_message(self, *a):  # quiet
        pass

    def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # a client that timed out has gone
            pass

    def _refused(self) -> bool:
        key = self.state.get("key")
        if key and self.headers.get("Authorization") != f"Bearer {key}":
            self._send(401, json.dumps({"error": {"message": "Incorrect API key provided"}}).encode())
            return True
        return False

    def do_GET(self):
        if self._refused():
            return
        self._send(
            200, json.dumps({"object": "list", "data": [{"id": "big-teacher", "object": "model"}]}).encode()
        )

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self._refused():
            return
        s = self.state
        with s["lock"]:
            s["requests"].append(body)
            n = len(s["requests"])
        if n <= s.get("fail_first", 0):
            return self._send(500, b'{"error": {"message": "overloaded"}}')
        if body["model"] != "big-teacher":
            return self._send(
                404, json.dumps({"error": {"message": f"model {body['model']} not found"}}).encode()
            )
        last = body["messages"][-1]["content"]
        if "GARBAGE" in last:
            return self._send(200, b"<html>this is not json", "application/json")
        if "SLOW" in last:
            time.sleep(3)
        time.sleep(s.get("delay", 0))
        text = s.get("answer", lambda b: f"NOTES: {last.upper()} ({len(b['messages'])} messages)")(body)
        reply = {
            "id": "x",
            "object": "chat.completion",
            "created": 0,
            "model": body["model"],
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
        }
        self._send(200, json.dumps(reply).encode())


@pytest.fixture
def teacher():
    Teacher.state = {"lock": threading.Lock(), "requests": []}
    server = ThreadingHTTPServer(("127.0.0.1", 0), Teacher)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", Teacher.state
    server.shutdown()


def inputs(tmp_path, texts: list[str]):
    rows = [
        {"input": t} if i % 2 else {"messages": [{"role": "user", "content": t}]} for i, t in enumerate(texts)
    ]
    return write_jsonl(tmp_path / "inputs.jsonl", rows)


def drafts(path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_drafts_through_an_endpoint_retries_and_a_garbage_answer_is_left_for_the_next_run(teacher, tmp_path):
    url, state = teacher
    state["fail_first"] = 2  # the first two requests get a 500: the client's retries (with backoff) go on
    src = inputs(tmp_path, ["budget meeting", "hiring plan", "GARBAGE here", "office move", "q3 review"])
    out = tmp_path / "drafts.jsonl"
    args = [
        "data",
        "generate",
        "--teacher",
        url,
        "--inputs",
        str(src),
        "--out",
        str(out),
        "--concurrency",
        "2",
        "--template",
        "Transcript: {input}",
        "--retries",
        "3",
        "--quiet",
    ]
    r = cli(*args)
    assert r.returncode == 1, r.stderr
    got = drafts(out)
    assert [d["messages"][-1]["content"] for d in got] == [
        "NOTES: BUDGET MEETING (1 messages)",
        "NOTES: TRANSCRIPT: HIRING PLAN (1 messages)",  # a plain input goes through --template
        "NOTES: TRANSCRIPT: OFFICE MOVE (1 messages)",
        "NOTES: Q3 REVIEW (1 messages)",
    ]
    assert got[0]["messages"][0] == {"role": "user", "content": "budget meeting"}
    assert got[1]["draft"]["source"] == f"{src}:2" and got[1]["draft"]["teacher"] == f"big-teacher at {url}"
    assert got[1]["draft"]["completion_tokens"] == 5 and got[1]["draft"]["finish"] == "stop"
    assert f"no draft: {src}:3: the teacher's answer is not a chat completion" in r.stdout
    assert "1 inputs have no draft; run the same command again to retry them" in r.stdout
    assert r.stdout.splitlines()[0].startswith("drafted 4 of 5 inputs with big-teacher at")
    assert not (tmp_path / ".drafts.jsonl.journal").exists()
    # the same command again: only the one without a draft is asked for (and still fails the same way)
    before = len(state["requests"])
    r = cli(*args)
    assert r.returncode == 1 and len(state["requests"]) - before == 1, r.stdout
    assert "drafted 0 of 5 inputs" in r.stdout and "(4 drafted before)" in r.stdout
    assert [d["draft"]["source"] for d in drafts(out)] == [f"{src}:{n}" for n in (1, 2, 4, 5)]
    check = cli("data", "check", str(out))
    assert check.returncode == 0, check.stdout + check.stderr  # the drafts are training data as they are


def test_a_killed_run_keeps_its_drafts_and_the_next_drafts_only_the_rest(teacher, tmp_path):
    url, state = teacher
    state["delay"] = 0.4
    texts = [f"meeting {i}" for i in range(8)]
    src = inputs(tmp_path, texts)
    out = tmp_path / "d.jsonl"
    journal = tmp_path / ".d.jsonl.journal"
    args = [
        "data",
        "generate",
        "--teacher",
        url,
        "--inputs",
        str(src),
        "--out",
        str(out),
        "--concurrency",
        "1",
        "--quiet",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "tunesmith.cli", *args],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 60
    while not (journal.exists() and len(journal.read_text().splitlines()) >= 3):
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read() if proc.poll() else "slow"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    kept = [json.loads(x) for x in journal.read_text().splitlines()]
    assert len(kept) >= 3 and not out.exists()
    asked = len(state["requests"])
    state["delay"] = 0
    r = cli(*args)
    assert r.returncode == 0, r.stdout + r.stderr
    got = drafts(out)
    assert [d["messages"][0]["content"] for d in got] == texts  # all, once each, in the inputs' order
    assert all(k in got for k in kept)  # the journal's drafts, as they were
    assert len(state["requests"]) - asked == 8 - len(kept)  # nothing drafted twice (bar the one in flight)
    assert not journal.exists()


def test_a_teacher_that_is_down_refuses_the_key_or_the_model_is_one_line(teacher, tmp_path):
    url, state = teacher
    src = inputs(tmp_path, ["one", "two"])
    out = str(tmp_path / "d.jsonl")
    base = ["data", "generate", "--inputs", str(src), "--out", out, "--retries", "0", "--quiet"]
    cases = [
        ((f"http://127.0.0.1:{free_port()}/v1",), "cannot reach the teacher at"),
        ((url, "--teacher-model", "tiny"), "the teacher answered 404: "),
    ]
    for extra, message in cases:
        r = cli(*base, "--teacher", *extra)
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    state["key"] = "sk-right"
    r = cli(*base, "--teacher", url, env={"TUNESMITH_TEACHER_KEY": "sk-wrong"})
    assert r.returncode == 2 and "the teacher answered 401" in r.stderr, r.stderr
    r = cli(*base, "--teacher", url, env={"TUNESMITH_TEACHER_KEY": "sk-right"})
    assert r.returncode == 0, r.stderr
    for bad, message in [
        (["--inputs", str(tmp_path / "none.jsonl")], "no such file or folder"),
        (["--out", str(src)], "is the inputs file"),
        (["--out", str(tmp_path)], "is a folder"),
        (["--template", "no slot"], "put {input} where the input goes"),
        (["--shots", "2"], "--shots K: needs training examples"),
        (["--price", "cheap"], "--price cheap: IN,OUT"),
    ]:
        r = cli(*base, "--teacher", url, *bad)
        assert r.returncode == 2 and message in r.stderr, (bad, r.stderr)
    (tmp_path / "not-drafts.jsonl").write_text('{"messages": []}\n')
    r = cli(*base, "--teacher", url, "--out", str(tmp_path / "not-drafts.jsonl"))
    assert r.returncode == 2 and "not a draft tunesmith wrote" in r.stderr


def test_shots_style_and_best_of(teacher, tmp_path):
    url, state = teacher
    train = write_jsonl(
        tmp_path / "train.jsonl",
        [
            {
                "messages": [
                    {"role": "user", "content": f"meeting about {t}"},
                    {"role": "assistant", "content": f"Summary: {t}"},
                ]
            }
            for t in ("budget", "hiring", "travel")
        ],
    )
    style = tmp_path / "style.yaml"
    style.write_text("required: ['Summary:']\n")
    seen = []

    def answer(body):  # passes the rule only on the third sample (seed 13 + 2)
        seen.append(body)
        return "Summary: fine" if body.get("seed") == 15 else "no heading"

    state["answer"] = answer
    src = inputs(tmp_path, ["meeting about budget cuts"])
    out = tmp_path / "d.jsonl"
    r = cli(
        "data",
        "generate",
        "--teacher",
        url,
        "--inputs",
        str(src),
        "--out",
        str(out),
        "--train",
        str(train),
        "--shots",
        "1",
        "--system",
        "Write house-style notes.",
        "--style",
        str(style),
        "--best-of",
        "3",
        "--quiet",
        "--price",
        "1,2",
    )
    assert r.returncode == 0, r.stderr
    assert len(seen) == 3 and {b["temperature"] for b in seen} == {0.7}
    sent = seen[0]["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]
    assert (
        sent[1]["content"] == "meeting about budget" and sent[2]["content"] == "Summary: budget"
    )  # BM25's pick
    (d,) = drafts(out)
    assert d["messages"] == [
        {"role": "user", "content": "meeting about budget cuts"},
        {"role": "assistant", "content": "Summary: fine"},
    ]
    assert (
        d["draft"]["style_ok"] is True and d["draft"]["failed_rules"] == [] and d["draft"]["candidates"] == 3
    )
    assert "1 of 1 pass the style rules" in r.stdout and "about 0.0001 in all at --price" in r.stdout


def test_drafts_are_accepted_corrected_or_rejected_and_only_the_kept_ones_exported(teacher, tmp_path):
    url, _ = teacher
    src = inputs(tmp_path, ["alpha", "beta", "gamma", "delta"])
    out = tmp_path / "d.jsonl"
    assert (
        cli(
            "data", "generate", "--teacher", url, "--inputs", str(src), "--out", str(out), "--quiet"
        ).returncode
        == 0
    )
    reg_path = str(tmp_path / "reg.db")
    r = cli("review", "--registry", reg_path, "add", "--drafts", str(out), "--name", "round2")
    assert r.returncode == 0 and "queue round2: 4 items, outputs draft" in r.stdout, r.stderr
    reg = Registry(reg_path)
    its = store.items(reg, "round2")
    assert its[0]["outputs"]["draft"]["output"] == "NOTES: ALPHA (1 messages)"
    assert its[0]["prompt"] == [{"role": "user", "content": "alpha"}]
    judge = lambda i, kind, **kw: store.record(
        reg, Judgement(item=its[i]["id"], reviewer="ann", kind=kind, label="draft", **kw)
    )
    judge(0, "accept")
    judge(1, "correction", text="Notes: beta, corrected.")
    judge(2, "accept")
    judge(2, "reject")  # changed her mind: the newest verdict counts
    sft = tmp_path / "sft.jsonl"
    r = cli("review", "--registry", reg_path, "export", "--sft", str(sft), "--queue", "round2")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in sft.read_text().splitlines()]
    assert [row["messages"][-1]["content"] for row in rows] == [
        "NOTES: ALPHA (1 messages)",
        "Notes: beta, corrected.",
    ]
    assert "wrote 2 to" in r.stdout and "1 rejected" in r.stdout
    assert cli("data", "check", str(sft)).returncode == 0
    for bad, message in [
        (["--drafts", str(src)], "not a draft `tunesmith data generate` wrote"),
        (["--drafts", str(out), "--captures"], "takes no EVAL, --captures"),
    ]:
        r = cli("review", "--registry", reg_path, "add", *bad, "--name", "x")
        assert r.returncode == 2 and message in r.stderr, r.stderr


def test_a_local_teacher_drafts_as_generate_does(tmp_path):
    """The default model as the teacher (the tiny random models often decode to nothing at all)."""
    from tunesmith.models.loading import generate, load

    model = "smollm2-135m"
    src = inputs(tmp_path, ["budget", "hiring", "travel"])
    out = tmp_path / "d.jsonl"
    r = cli(
        "data",
        "generate",
        "--teacher",
        model,
        "--inputs",
        str(src),
        "--out",
        str(out),
        "--max-tokens",
        "6",
        "--batch-size",
        "2",
        "--quiet",
        "--json",
    )
    summary = json.loads(r.stdout)
    loaded = load(model, quiet=True)
    want = generate(
        loaded.model,
        loaded.tokenizer,
        [[{"role": "user", "content": t}] for t in ("budget", "hiring", "travel")],
        max_new_tokens=6,
    )
    # what generate makes, draft for draft; an input it answers with nothing has no draft, and is named
    assert [d["messages"][-1]["content"] for d in drafts(out)] == [g.text for g in want if g.text]
    empty = [f"{src}:{i + 1}" for i, g in enumerate(want) if not g.text]
    assert [f["source"] for f in summary["failed"]] == empty and r.returncode == (1 if empty else 0)
    assert summary["drafted"] == 3 - len(empty) and all(
        f["why"] == "the teacher's answer is empty" for f in summary["failed"]
    )


def test_a_real_llama_cpp_server_as_the_teacher(tmp_path):
    """llama.cpp's OpenAI-compatible server (llama-cpp-python[server], built in CI) serving the default model
    as a GGUF this test exports: the drafts are what the same server answers the openai client directly,
    greedy."""
    pytest.importorskip("llama_cpp.server.app", reason="llama-cpp-python[server] is not installed")
    import openai

    gguf = tmp_path / "smol.gguf"
    r = cli("export", "--model", "smollm2-135m", "--quant", "f16", "--out", str(gguf))
    assert r.returncode == 0, r.stderr
    with llama_server(gguf, "smol") as url:
        texts = [
            "Write the notes: budget agreed.",
            "Write the notes: hiring paused.",
            "Write the notes: move.",
        ]
        src = inputs(tmp_path, texts)
        out = tmp_path / "d.jsonl"
        r = cli("data", "generate", "--teacher", url, "--inputs", str(src), "--out", str(out), "--max-tokens",
                "16", "--concurrency", "2", "--quiet")  # fmt: skip
        assert r.returncode == 0, r.stdout + r.stderr
        client = openai.OpenAI(base_url=url, api_key="none")
        ask = lambda t: client.chat.completions.create(
            model="smol", messages=[{"role": "user", "content": t}], max_tokens=16, temperature=0, seed=13
        )
        want = [ask(t).choices[0].message.content.strip() for t in texts]
    got = drafts(out)
    assert [d["messages"][-1]["content"] for d in got] == want and all(want), (got, want)
    assert {d["draft"]["teacher"] for d in got} == {f"smol at {url}"}
    assert all(d["draft"]["completion_tokens"] > 0 for d in got)


def test_a_trained_run_as_teacher_is_warned_about_before_drafting(tmp_path):
    from tunesmith.use.drafts import SELF_TEACHER, teacher_note

    run = tmp_path / "v1"
    run.mkdir()
    assert teacher_note(str(run)) is None  # a folder that is no trained run
    (run / "adapter_config.json").write_text("{}")
    assert teacher_note(str(run)) == SELF_TEACHER and "made v2 worse (ROUGE-L -3.3, p 0.022" in SELF_TEACHER
    assert teacher_note("http://127.0.0.1:8080/v1") is None


def test_an_empty_answer_is_no_draft(teacher, tmp_path):
    url, state = teacher
    state["answer"] = lambda b: "" if "EMPTY" in b["messages"][-1]["content"] else "fine"
    src = inputs(tmp_path, ["EMPTY one", "two"])
    out = tmp_path / "d.jsonl"
    r = cli("data", "generate", "--teacher", url, "--inputs", str(src), "--out", str(out), "--quiet")
    assert r.returncode == 1 and f"no draft: {src}:1: the teacher's answer is empty" in r.stdout, r.stdout
    assert [d["messages"][-1]["content"] for d in drafts(out)] == ["fine"]


def test_drafts_are_accepted_and_rejected_with_the_keyboard(teacher, tmp_path, browser):
    pytest.importorskip("fastapi", reason="the review app needs the 'serve' extra")
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    from conftest import serving, wait_for
    from tunesmith.ui.app import create_app

    url, _ = teacher
    src = inputs(tmp_path, ["alpha", "beta"])
    out = tmp_path / "d.jsonl"
    assert (
        cli(
            "data", "generate", "--teacher", url, "--inputs", str(src), "--out", str(out), "--quiet"
        ).returncode
        == 0
    )
    reg_path = str(tmp_path / "reg.db")
    assert cli("review", "--registry", reg_path, "add", "--drafts", str(out), "--name", "d1").returncode == 0
    reg = Registry(reg_path)
    with serving(create_app(reg_path)) as port:
        browser.get(f"http://127.0.0.1:{port}/#/review/d1")
        browser.find_element(By.ID, "reviewer").send_keys("ann", Keys.TAB)
        wait_for(lambda: "item 1 of 2" in browser.find_element(By.TAG_NAME, "h1").text)
        assert "y accept it as a training answer" in browser.find_element(By.CLASS_NAME, "keys").text
        browser.find_element(By.TAG_NAME, "h1").click()  # keys to the page, not a box
        ActionChains(browser).send_keys("y").perform()
        wait_for(lambda: len(store.judgements(reg, "d1")) == 1)
        wait_for(lambda: "item 2 of 2" in browser.find_element(By.TAG_NAME, "h1").text)
        ActionChains(browser).send_keys("n").perform()
        wait_for(lambda: len(store.judgements(reg, "d1")) == 2)
    js = store.judgements(reg, "d1")
    assert [(j["reviewer"], j["kind"], j["label"]) for j in js] == [
        ("ann", "accept", "draft"),
        ("ann", "reject", "draft"),
    ]


def test_a_slow_answer_times_out_and_is_left_for_the_next_run(teacher, tmp_path):
    url, _ = teacher
    src = inputs(tmp_path, ["SLOW one", "quick two"])
    out = tmp_path / "d.jsonl"
    t0 = time.time()
    r = cli("data", "generate", "--teacher", url, "--inputs", str(src), "--out", str(out), "--timeout", "1",
            "--retries", "1", "--quiet")  # fmt: skip
    assert r.returncode == 1 and f"no draft: {src}:1: no answer within the timeout" in r.stdout, r.stdout
    assert [d["messages"][0]["content"] for d in drafts(out)] == ["quick two"]
    assert time.time() - t0 < 30
