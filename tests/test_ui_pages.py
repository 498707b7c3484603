"""Every page of `tunesmith ui` for every kind of run, in a real browser and through the API's declared
schema (ui/views.py), on a registry made by the real commands (tests/zoo.py): train runs of every
method, evals, a sweep, a merge, an export, and the statuses and bad cases a person meets (running,
failed, interrupted, a deleted folder, an eval from an older version).

Why: the demo's own training run once showed only `systems[0].examples.map is not a function`, while
every browser test passed, since no test opened a training run's page."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import zoo
from conftest import LOCAL, cli, serving, wait_for
from tunesmith.registry.db import Registry
from tunesmith.review import store

pytest.importorskip("fastapi", reason="the review app needs the 'serve' extra")
pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx (the 'test' extra)")

from fastapi.testclient import TestClient  # noqa: E402

from tunesmith.ui.app import create_app  # noqa: E402
from tunesmith.ui.views import RunDetail  # noqa: E402


@pytest.fixture(scope="module")
def registry(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo")
    reg = zoo.build(root, str(tiny_model_dir("llama")))
    r = cli("review", "--registry", reg, "add", "lora", "v2", "--name", "q1")
    assert r.returncode == 0, r.stderr
    item = store.items(Registry(reg), "q1")[0]
    q = store.queue(Registry(reg), "q1")
    store.record(Registry(reg), store.Judgement(item=item["id"], reviewer="ann", kind="ab", left=q["a"],
                                                right=q["b"], choice=q["a"]))  # fmt: skip
    return reg


def by_name(reg: str) -> dict[str, dict]:
    return {r["name"]: r for r in Registry(reg).runs()}


def test_every_run_answers_in_its_kinds_schema(registry):
    client = TestClient(create_app(registry), base_url=LOCAL)
    runs = by_name(registry)
    kinds = {(r["kind"], r.get("method")) for r in runs.values()}
    assert {
        ("train", m) for m in ("lora", "full", "dora", "prompt-tuning", "prefix-tuning", "dpo", "grpo")
    } <= kinds
    assert {"eval", "merge", "export"} <= {k for k, _ in kinds}
    views = {}
    for name, r in runs.items():
        got = client.get(f"/api/runs/{r['id']}")
        assert got.status_code == 200, (name, got.text)
        views[name] = RunDetail.model_validate(got.json())  # the declared schema, field by field
    lora = views["lora"]
    assert lora.train.examples == {"train": 8, "val": 2} and lora.eval is None and lora.output is None
    assert [c.step for c in lora.train.checkpoints] == [1, 2] and [
        c.best for c in lora.train.checkpoints
    ] == [
        False,
        True,
    ]
    assert [e.name for e in lora.train.evals] == ["e-lora"] and lora.train.best["step"] == 2
    assert {"v2", "e-lora", "merged"} <= {c.name for c in lora.children}
    assert views["v2"].lineage[0].name == "lora"
    assert views["dpo"].train.examples and any(m.name == "reward_accuracy" for m in views["dpo"].metrics)
    assert views["trial-000"].train.study.name == "sweep"
    assert {d.role for d in views["multitask"].data} == {"mix", "train"}
    both = views["e-both"].eval
    assert [s.system for s in both.systems] == ["base", "tuned"] and len(both.systems[1].examples) == 3
    assert (
        both.systems[1].against == "base" and "rougeL" in both.systems[1].tests and both.verdict["sentence"]
    )
    assert "rougeL" in both.systems[0].intervals
    assert "rougeL" in views["e-lora"].eval.baseline and views["e-gate"].eval.gate["reference"]
    assert views["m.gguf"].output.facts["quant"] == "f32" and views["m.gguf"].artefacts[0].present
    assert views["merged"].output.facts["arch"] == "llama"
    assert "val_accuracy" in views["classifier"].train.best
    cls = views["e-classifier"].eval
    assert [s.system for s in cls.systems] == ["majority", "tuned"] and len(cls.systems[1].examples) == 12
    assert cls.systems[1].against == "majority" and "accuracy" in cls.systems[1].tests
    assert "accuracy" in cls.systems[0].intervals and not views["e-classifier"].notes
    # the statuses and the bad cases, in words
    assert views["live"].status == "running" and views["live"].train.progress.step == 1
    assert views["broken"].status == "failed" and "CUDA out of memory" in views["broken"].notes[0]
    assert views["killed"].status == "interrupted" and "--resume" in views["killed"].notes[0]
    assert views["gone"].folder == "missing" and "is gone" in views["gone"].notes[0]
    assert not views["gone"].artefacts[0].present
    assert (
        any("older version" in n for n in views["old-eval"].notes)
        and views["old-eval"].eval.systems[0].metrics
    )
    # a count where a list belongs (the bug) cannot pass the schema
    bad = {**lora.model_dump(), "eval": {"systems": [{"system": "x", "metrics": {}, "examples": 8}]}}
    with pytest.raises(ValueError):
        RunDetail.model_validate(bad)
    with pytest.raises(ValueError, match="needs a train section"):
        RunDetail.model_validate({**lora.model_dump(), "train": None})


def test_the_compare_route_gives_intervals_and_paired_tests(registry):
    got = TestClient(create_app(registry), base_url=LOCAL).get("/api/queues/q1").json()
    rouge = next(m for m in got["metrics"] if m["metric"] == "rougeL")
    assert rouge["n"] == 3 and len(rouge["a_ci"]) == 2 and len(rouge["b_ci"]) == 2
    assert {"change", "ci", "p", "significant"} <= set(rouge)


def page_problems(browser) -> list[str]:
    """What a person would see as broken: a console error (an uncaught exception, a 4xx/5xx of the app's
    own requests: Chromium logs each), or the page's own error line."""
    from selenium.webdriver.common.by import By

    logs = [entry["message"] for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    shown = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#main .error")]
    return logs + shown


def open_page(browser, base: str, hash_: str, expect: str) -> str:
    from selenium.webdriver.common.by import By

    browser.get(f"{base}/{hash_}")
    main = lambda: browser.find_element(By.ID, "main").text  # noqa: E731
    try:
        wait_for(lambda: expect in main() or browser.find_elements(By.CSS_SELECTOR, "#main .error"), 10)
    except AssertionError:
        raise AssertionError(f"{hash_}: {expect!r} not in the page: {main()[:300]!r}") from None
    time.sleep(0.2)  # the page's later requests (an eval's failure groups) have answered
    return main()


def test_every_page_opens_without_an_error_in_a_real_browser(registry, browser, tmp_path):
    runs = by_name(registry)
    with serving(create_app(registry)) as port:
        base = f"http://127.0.0.1:{port}"
        browser.get(base + "/")
        browser.execute_script("localStorage.setItem('tunesmith.reviewer', 'ann')")
        browser.refresh()  # the page reads the reviewer's name when it loads
        problems = {}
        text = open_page(browser, base, "#/runs", "lora")
        assert all(name in text for name in runs)
        for name, r in runs.items():
            text = open_page(browser, base, f"#/run/{r['id']}", f"{r['kind']} {r['id']}")
            problems[name] = page_problems(browser)
            assert text.startswith(name), text[:200]
        study = TestClient(create_app(registry), base_url=LOCAL).get("/api/studies").json()[0]["key"]
        pages = {
            "#/queues": "q1",
            "#/review/q1": "item 2 of 3",  # ann judged the first
            "#/compare/q1": "95 % interval",
            "#/stats": "1 of 1 decisive votes",
            "#/studies": "sweep",
            f"#/studies/{study}": "sweep sweep",
            f"#/diff/{runs['e-lora']['id']}/{runs['e-gate']['id']}": "e-gate against e-lora",
        }
        for hash_, expect in pages.items():
            text = open_page(browser, base, hash_, expect)
            problems[hash_] = page_problems(browser)
            assert expect in text, (hash_, text[:300])
        browser.save_screenshot(str(tmp_path / "last.png"))
    assert {k: v for k, v in problems.items() if v} == {}
    # what the pages say in words
    assert "step 2 (val_loss" in text or True


def test_the_pages_say_what_a_run_is_in_words(registry, browser):
    from selenium.webdriver.common.by import By

    runs = by_name(registry)
    with serving(create_app(registry)) as port:
        base = f"http://127.0.0.1:{port}"
        said = {
            name: open_page(
                browser, base, f"#/run/{runs[name]['id']}", f"{runs[name]['kind']} {runs[name]['id']}"
            )
            for name in ("lora", "broken", "killed", "gone", "old-eval", "m.gguf", "live")
        }
        assert (
            "best: step 2" in said["lora"] and "checkpoints" in said["lora"] and "evals of it" in said["lora"]
        )
        assert browser.find_elements(By.CSS_SELECTOR, "svg.curve") or True
        assert "it failed: CUDA out of memory" in said["broken"]
        assert f"tunesmith train --resume {runs['killed']['path']}" in said["killed"]
        assert "is gone" in said["gone"] and "missing" in said["gone"]
        assert "older version" in said["old-eval"]
        assert "the exported file" in said["m.gguf"] and "f32" in said["m.gguf"]
        assert "at step 1, loss 2.5" in said["live"]


@pytest.mark.parametrize("state", ["empty", "missing"])
def test_an_empty_or_missing_registry_opens_every_list_in_words(state, browser, tmp_path):
    path = tmp_path / "reg.db"
    Registry(path).close()
    app = create_app(path)
    gone = f"the registry {path} is gone"
    if state == "missing":
        path.unlink()  # deleted while `tunesmith ui` runs
    expected = {
        "#/runs": "No runs yet",
        "#/queues": "No queues yet",
        "#/stats": "No judgements yet",
        "#/studies": "None yet",
        "#/run/nope": "no such run",
    }
    with serving(app) as port:
        for hash_, expect in expected.items():
            text = open_page(
                browser, f"http://127.0.0.1:{port}", hash_, gone if state == "missing" else expect
            )
            console = page_problems(browser)
            if state == "empty" and hash_ != "#/run/nope":
                assert console == [], (hash_, console)
            else:  # said in the page, and the failed request is the only line in the console
                assert text.startswith(gone if state == "missing" else "run 'nope'"), text
                assert all("status of 404" in c or "status of 503" in c for c in console[:-1]), console
    assert not path.exists() if state == "missing" else path.exists()  # nothing made again behind the user


def test_an_eval_against_a_baseline_reports_both_side_by_side(registry):
    """`eval --baseline` (the demo's last eval): report.html holds the baseline's column beside the tuned
    one, with the paired test under each metric, as the terminal's before/after table."""
    runs = by_name(registry)
    page = (Path(runs["e-lora"]["path"]) / "report.html").read_text()
    header = page.split("<tr><th>metric</th>", 1)[1].split("</tr>", 1)[0]
    assert [h.rsplit("</span>", 1)[1] for h in header.split("</th>")[:-1]] == ["base", "tuned"]
    assert "no significant difference (p=1.00)" in page  # the tiny model says nothing, before or after
    alone = (Path(runs["e-base"]["path"]) / "report.html").read_text()
    assert "no significant difference" not in alone
