"""`tunesmith ui`, the review web app: every route in process (FastAPI's TestClient): what each returns,
bad input as a 4xx with a JSON message (never a 500), the token when bound beyond localhost; and a real
browser (Debian's chromium, headless, through selenium and chromium-driver) judging with the keyboard."""

from __future__ import annotations

import json

import pytest

from conftest import LOCAL, cli, serving, wait_for
from tunesmith.registry.db import Registry
from tunesmith.review import store

pytest.importorskip("fastapi", reason="the review app needs the 'serve' extra")
pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx (the 'test' extra)")

from fastapi.testclient import TestClient  # noqa: E402

from tunesmith.ui.app import create_app  # noqa: E402


@pytest.fixture(scope="module")
def queue(evaluated):
    root, reg, test = evaluated
    r = cli("review", "--registry", reg, "add", "v1", "v2", "--name", "round1")
    assert r.returncode == 0, r.stderr
    return reg


def test_every_route_answers_with_what_the_page_needs(queue):
    client = TestClient(create_app(queue), base_url=LOCAL)
    page = client.get("/")
    assert page.status_code == 200 and '<script src="/static/app.js">' in page.text
    assert "http" not in page.text.replace("http://www.w3.org", "")  # nothing fetched from elsewhere
    for name in ("app.js", "style.css"):
        asset = client.get(f"/static/{name}")
        assert asset.status_code == 200 and "http://" not in asset.text.replace("http://www.w3.org", "")
    runs = client.get("/api/runs").json()
    kinds = {r["name"]: r["kind"] for r in runs}
    assert kinds["v1"] == "train" and kinds["e-v1"] == "eval"
    run = client.get("/api/runs/v1").json()
    assert run["kind"] == "train" and [c["name"] for c in run["lineage"]] == ["v1"]
    assert {"loss", "val_loss"} <= {m["name"] for m in run["metrics"]} and {
        c["name"] for c in run["children"]
    } >= {"e-v1"}
    both = client.get("/api/runs/both").json()
    assert [s["system"] for s in both["eval"]["systems"]] == ["base", "tuned"]
    assert (
        len(both["eval"]["systems"][0]["examples"]) == 4
        and "rougeL" in both["eval"]["systems"][1]["examples"][0]["scores"]
    )
    assert both["eval"]["verdict"]["sentence"]
    queues = client.get("/api/queues").json()
    assert [(q["name"], q["a"], q["b"], q["items"]) for q in queues] == [
        ("round1", "v1/tuned", "v2/tuned", 4)
    ]
    items = client.get("/api/queues/round1", params={"reviewer": "ann"}).json()["items"]
    assert len(items) == 4 and all(sorted(i["order"]) == ["v1/tuned", "v2/tuned"] for i in items)
    orders = {tuple(client.get("/api/queues/round1").json()["items"][0]["order"]) for _ in range(30)}
    assert len(orders) == 2  # the blind order is drawn each time
    first = items[0]
    left, right = first["order"]
    vote = {
        "item": first["id"],
        "reviewer": "ann",
        "kind": "ab",
        "left": left,
        "right": right,
        "choice": "tie",
    }
    ok = client.post("/api/judgements", json=vote)
    assert ok.status_code == 200 and ok.json()["saved"] is True
    mine = client.get("/api/queues/round1", params={"reviewer": "ann"}).json()["items"][0]["mine"]
    assert [(j["kind"], j["choice"], j["left"]) for j in mine] == [("ab", "tie", first["order"][0])]
    assert client.get("/api/stats").json()["reviewers"]["ann"]["ab"] == 1
    store.remove_queue(Registry(queue), "round1")  # leave the queue as the browser test expects it
    cli("review", "--registry", queue, "add", "v1", "v2", "--name", "round1")


def test_bad_requests_are_4xx_with_a_message(queue):
    client = TestClient(create_app(queue), raise_server_exceptions=False, base_url=LOCAL)
    item = client.get("/api/queues/round1").json()["items"][0]["id"]
    good = {"item": item, "reviewer": "ann", "kind": "rating", "label": "v1/tuned", "rating": 4}
    cases = [
        (client.get("/api/runs/nope"), 404, "nope"),
        (client.get("/api/queues/nope"), 404, "review queue 'nope': no such queue"),
        (client.get("/static/registry.db"), 404, "no asset 'registry.db'"),
        (client.get("/static/..%2Fapp.py"), 404, None),
        (client.get("/api/nothing"), 404, "no route GET /api/nothing"),
        (client.delete("/api/runs"), 405, "DELETE is not allowed on /api/runs"),
        (
            client.post(
                "/api/judgements",
                content=b"item=1",
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            ),
            415,
            "Content-Type: application/json",
        ),  # fmt: skip
        (
            client.post("/api/judgements", content=b"{", headers={"Content-Type": "application/json"}),
            400,
            "not valid JSON",
        ),
        (client.post("/api/judgements", json=[1]), 400, "must be a JSON object"),
        (client.post("/api/judgements", json={**good, "admin": True}), 400, "unknown field 'admin'"),
        (
            client.post("/api/judgements", json={**good, "item": "1"}),
            400,
            "'item': input should be a valid integer",
        ),
        # the three bodies that were 500s (a TypeError before any check; SQLite's integer overflowed)
        (client.post("/api/judgements", json={"item": 1}), 400, "'reviewer' is required"),
        (client.post("/api/judgements", json={"item": 1, "reviewer": "x"}), 400, "'kind' is required"),
        (
            client.post("/api/judgements", json={**good, "item": 10**23}),
            400,
            "'item': input should be less than",
        ),
        (
            client.post("/api/judgements", json={**good, "rating": 9}),
            400,
            "'rating': input should be less than or equal to 5 (got 9)",
        ),
        (
            client.post("/api/judgements", json={**good, "reviewer": 5}),
            400,
            "'reviewer': input should be a valid string",
        ),
        (client.post("/api/judgements", json={**good, "item": 10**9}), 404, "no such item"),
        (client.post("/api/judgements", json={**good, "label": "gpt"}), 400, "label 'gpt'"),
    ]
    for r, status, message in cases:
        assert r.status_code == status, (r.request.url, r.text)
        assert message is None or message in r.json()["error"], r.json()
    assert store.judgements(Registry(queue), "round1") == []


def test_a_token_guards_every_route_when_one_is_set(queue):
    client = TestClient(create_app(queue, token="s3cret-token"), follow_redirects=False, base_url=LOCAL)
    for path in (
        "/",
        "/static/app.js",
        "/api/runs",
        "/api/queues",
        "/api/stats",
        "/api/runs/v1",
        "/api/queues/round1",
    ):
        r = client.get(path)
        assert r.status_code == 401 and "needs its token" in r.json()["error"], path
    assert client.post("/api/judgements", json={}).status_code == 401
    assert client.get("/api/runs", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/api/runs", headers={"Authorization": "Bearer s3cret-token"}).status_code == 200
    assert client.get("/?token=wrong").status_code == 401
    opened = client.get("/?token=s3cret-token")
    assert opened.status_code == 303 and opened.headers["location"] == "/"
    cookie = opened.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert client.get("/api/runs").status_code == 200  # the cookie, from now on


def test_ui_refuses_to_run_without_a_registry():
    r = cli("ui", "--registry", "off")
    assert r.returncode == 2 and "reviews live in the registry" in r.stderr


# ---------------------------------------------------------------- a real browser


def test_judging_three_pairs_and_a_correction_with_the_keyboard(queue, browser, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    reg = Registry(queue)
    with serving(create_app(queue)) as port:
        browser.get(f"http://127.0.0.1:{port}/#/review/round1")
        name = browser.find_element(By.ID, "reviewer")
        name.send_keys("ann", Keys.TAB)  # the name is kept when the box loses focus; the page redraws
        wait_for(lambda: "item 1 of 4" in browser.find_element(By.TAG_NAME, "h1").text)
        wait_for(
            lambda: (
                "1 A is better · 2 B is better · 0 tie" in browser.find_element(By.CLASS_NAME, "keys").text
            )
        )
        wait_for(
            lambda: browser.find_element(By.TAG_NAME, "h1").click() or True
        )  # keys to the page, not a box
        keys = ActionChains(browser)
        for n, key in enumerate(("1", "2", "0"), 1):
            keys.send_keys(key).perform()
            wait_for(lambda n=n: len(store.judgements(reg, "round1")) == n)
        wait_for(lambda: "item 4 of 4" in browser.find_element(By.TAG_NAME, "h1").text)
        keys.send_keys("e").perform()
        box = wait_for(lambda: browser.find_elements(By.ID, "edit"))[0]
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys("Meeting Summary: The budget was agreed.")
        box.send_keys(Keys.CONTROL, Keys.ENTER)
        wait_for(lambda: len(store.judgements(reg, "round1")) == 4)
        browser.save_screenshot(str(tmp_path / "review.png"))
    js = store.judgements(reg, "round1")
    assert [(j["reviewer"], j["kind"]) for j in js] == [("ann", "ab")] * 3 + [("ann", "correction")]
    assert [j["choice"] for j in js[:3]] == [js[0]["left"], js[1]["right"], "tie"]
    assert js[3]["correction"] == "Meeting Summary: The budget was agreed."
    # the judgements as training data
    sft, dpo = tmp_path / "sft.jsonl", tmp_path / "dpo.jsonl"
    r = cli(
        "review", "--registry", queue, "export", "--sft", str(sft), "--dpo", str(dpo), "--queue", "round1"
    )
    assert r.returncode == 0, r.stderr
    items = {i["id"]: i for i in store.items(reg, "round1")}
    [fixed] = [json.loads(x) for x in sft.read_text().splitlines()]
    assert fixed["messages"][-1]["content"] == "Meeting Summary: The budget was agreed."
    assert fixed["messages"][:-1] == items[js[3]["item"]]["prompt"]
    pairs = [json.loads(x) for x in dpo.read_text().splitlines()]
    expected = []
    for j in js[:2]:
        win = j["choice"]
        lose = j["right"] if win == j["left"] else j["left"]
        out = items[j["item"]]["outputs"]
        if (
            out[win]["output"].strip()
            and out[lose]["output"].strip()
            and out[win]["output"] != out[lose]["output"]
        ):
            expected.append((out[win]["output"], out[lose]["output"]))
    expected.append(
        ("Meeting Summary: The budget was agreed.", items[js[3]["item"]]["outputs"][js[3]["label"]]["output"])
    )
    assert [(p["chosen"], p["rejected"]) for p in pairs] == expected
