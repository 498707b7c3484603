"""report.html: built from real scored results, checked in a real headless browser (Debian's chromium)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest


def results_for(system: str, outputs: list[str], refs: list[str]) -> dict:
    from conftest import EXAMPLES
    from tunesmith.eval.run import score
    from tunesmith.models.loading import Generation
    from tunesmith.scoring.style import load_style

    rules = load_style(str(EXAMPLES / "style.yaml"))
    agg, per = score([Generation(o, len(o.split()), True) for o in outputs], refs, rules)
    return {
        "system": system,
        "model": "tiny",
        "data": "test.jsonl",
        "n": len(outputs),
        "decoding": {"greedy": True, "max_new_tokens": 64},
        "metrics": agg,
        "examples": [
            {
                "path": "test.jsonl",
                "line": i + 1,
                "input": f"Transcript {i}: <b>hello</b>",
                "reference": r,
                "output": o,
                **row,
            }
            for i, (o, r, row) in enumerate(zip(outputs, refs, per))
        ],
    }


def build(tmp_path):
    from tunesmith.eval.report import render
    from tunesmith.eval.run import ROWS, compare

    refs = [
        f"Meeting Summary: the team agreed on item {i}.\n\nPoints discussed:\n- item {i}" for i in range(6)
    ]
    base = results_for("base", ["<script>alert(1)</script> unrelated words"] * 6, refs)
    tuned = results_for(
        "tuned", [r if i % 2 else r.replace("agreed", "argued") for i, r in enumerate(refs)], refs
    )
    tuned["comparisons"] = {"base": compare(tuned, base)}
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(
        "".join(
            json.dumps(r) + "\n"
            for r in [{"step": 0, "epoch": 0, "val_loss": 3.0}]
            + [{"step": s, "epoch": 1, "loss": 3.0 - 0.1 * s} for s in range(1, 11)]
            + [{"step": 10, "epoch": 1, "val_loss": 2.1}]
        )
    )
    (tmp_path / "metrics.json").write_text(json.dumps(base["metrics"]))
    page = tmp_path / "report.html"
    page.write_text(render([base, tuned], ROWS, run_dir=run))
    return page


def test_report_content(tmp_path):
    html = build(tmp_path).read_text()
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html  # outputs are escaped
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")  # nothing fetched
    from tunesmith.eval.report import CHART_METRICS

    shown = [m for m in CHART_METRICS if m in json.loads((tmp_path / "metrics.json").read_text())]
    assert {"rougeL", "bleu", "format_adherence"} <= set(shown)
    assert html.count('class="bar"') == 2 * len(shown)  # one bar per system and metric
    # worst first: the tuned outputs with "argued" (lower ROUGE-L) come before the exact copies
    rows = re.findall(r"<tr><td class=\"num\">(\d+)<br><span class=\"ci\">test.jsonl:(\d+)</span>", html)
    assert [int(line) for _, line in rows][:3] == [1, 3, 5]
    assert "significant" in html


@pytest.mark.skipif(
    shutil.which("chromium") is None, reason="Debian's chromium is not installed (apt-get install chromium)"
)
def test_report_renders_in_chromium(tmp_path):
    page = build(tmp_path)
    base = [
        "chromium",
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    dom = subprocess.run(
        base + ["--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120
    ).stdout
    assert "<title>tunesmith eval — test.jsonl</title>" in dom
    assert len(re.findall(r'<rect class="bar"', dom)) == page.read_text().count('class="bar"') >= 10
    assert len(re.findall(r'<polyline class="curve"', dom)) == 2
    assert "<script>" not in dom  # the escaped output stayed text
    shot = tmp_path / "shot.png"
    subprocess.run(
        base + [f"--screenshot={shot}", "--window-size=1280,1600", page.as_uri()],
        capture_output=True,
        timeout=120,
    )
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000  # a real rendered page, not a blank one
