"""A self-contained `report.html` for one or more systems scored on the same examples.

No JavaScript and nothing fetched: CSS and the charts (SVG) are written into the page, so it
opens offline, attaches to an e-mail and prints. Sections: the metrics with their 95 %
intervals (and the paired test against the first system), a bar chart, where the last system
fails (eval/errors.py's groups), the training run's loss curves, and every example side by side —
worst first.
"""

from __future__ import annotations

import html
import json
import time
from pathlib import Path

from tunesmith.errors import UserError
from tunesmith.eval.errors import analyse
from tunesmith.eval.rows import decimals

COLORS = ["#8c8c8c", "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#b07aa1"]
NEUTRAL = {"mean_new_tokens", "length_ratio"}  # a change here is neither better nor worse by itself
CHART_METRICS = [
    "rougeL",
    "rouge1",
    "bleu",
    "chrf",
    "token_f1",
    "meteor",
    "format_adherence",
    "stopped_by_eos",
]

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#222;background:#fafafa}
main{max-width:1200px;margin:0 auto;padding:24px}
h1{font-size:22px;margin:0 0 4px}
h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
.meta{color:#666;font-size:13px}
table{border-collapse:collapse;background:#fff;width:100%}
th,td{border:1px solid #e2e2e2;padding:5px 8px;vertical-align:top;text-align:left}
th{background:#f0f0f0;font-weight:600}
td.num{text-align:right;white-space:nowrap;font-variant-numeric:tabular-nums}
.ci{color:#777;font-size:12px}.sig{color:#1a7f37;font-weight:600}.nosig{color:#777}.worse{color:#b42318;font-weight:600}
.swatch{display:inline-block;width:10px;height:10px;margin-right:4px;border-radius:2px}
pre{white-space:pre-wrap;word-break:break-word;margin:0;font:12.5px/1.4 ui-monospace,Menlo,Consolas,monospace}
.ex td{max-width:320px}.score{color:#555;font-size:12px;margin-top:4px}
details summary{cursor:pointer;color:#4e79a7}
figure{margin:0;background:#fff;border:1px solid #e2e2e2;padding:8px;display:inline-block}
"""


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _fmt(v, d: int = 1) -> str:
    return "-" if v is None else f"{v:.{d}f}"


def bar_chart(systems: list[dict], metrics: list[str], width: int = 1100, height: int = 300) -> str:
    """Grouped bars (one group per metric, one bar per system) with 95 % interval whiskers."""
    metrics = [m for m in metrics if any(m in s["metrics"] for s in systems)]
    if not metrics:
        return ""
    top = max([100.0] + [s["metrics"].get("ci95", {}).get(m, [0, 0])[1] for s in systems for m in metrics])
    left, bottom, plot_h = 40, 40, height - 60
    group_w = (width - left - 10) / len(metrics)
    bar_w = min(28, (group_w - 16) / len(systems))
    out = [
        f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
        f'aria-label="metrics by system">'
    ]
    for tick in range(0, 101, 25):
        y = 10 + plot_h * (1 - tick / top)
        out.append(
            f'<line x1="{left}" x2="{width - 10}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end" fill="#777">{tick}</text>'
        )
    for g, m in enumerate(metrics):
        x0 = left + g * group_w + (group_w - bar_w * len(systems)) / 2
        for k, s in enumerate(systems):
            v = s["metrics"].get(m)
            if v is None:
                continue
            x = x0 + k * bar_w
            h = plot_h * v / top
            out.append(
                f'<rect class="bar" data-system="{_e(s["system"])}" data-metric="{m}" x="{x:.1f}" '
                f'y="{10 + plot_h - h:.1f}" '
                f'width="{bar_w - 3:.1f}" height="{h:.1f}" fill="{COLORS[k % len(COLORS)]}">'
                f"<title>{_e(s['system'])} {m}: {v:.1f}</title></rect>"
            )
            ci = s["metrics"].get("ci95", {}).get(m)
            if ci:
                cx = x + (bar_w - 3) / 2
                y1, y2 = 10 + plot_h * (1 - ci[0] / top), 10 + plot_h * (1 - ci[1] / top)
                out.append(f'<line x1="{cx:.1f}" x2="{cx:.1f}" y1="{y1:.1f}" y2="{y2:.1f}" stroke="#333"/>')
        out.append(
            f'<text x="{left + g * group_w + group_w / 2:.1f}" y="{height - bottom + 22}" font-size="12" '
            f'text-anchor="middle">{_e(m.replace("_", " "))}</text>'
        )
    out.append("</svg>")
    return "".join(out)


def read_curves(run_dir: str | Path) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """(train losses, validation losses) as (step, loss) from a run's metrics.jsonl."""
    path = Path(run_dir) / "metrics.jsonl"
    train, val = [], []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if "loss" in rec:
                train.append((rec["step"], rec["loss"]))
            if "val_loss" in rec:
                val.append((rec["step"], rec["val_loss"]))
    return train, val


def loss_chart(train: list, val: list, width: int = 700, height: int = 260) -> str:
    if not train and not val:
        return ""
    pts = train + val
    max_step = max(s for s, _ in pts) or 1
    lo, hi = min(v for _, v in pts), max(v for _, v in pts)
    hi = hi if hi > lo else lo + 1
    left, right, top, bottom = 48, 12, 12, 32
    pw, ph = width - left - right, height - top - bottom

    def xy(s, v):
        return left + pw * s / max_step, top + ph * (1 - (v - lo) / (hi - lo))

    out = [
        f'<svg class="loss" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
        'aria-label="loss curves">'
    ]
    for k in range(5):
        v = lo + (hi - lo) * k / 4
        _, y = xy(0, v)
        out.append(
            f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end" '
            f'fill="#777">{v:.2f}</text>'
        )
    out.append(
        f'<text x="{left + pw / 2}" y="{height - 6}" font-size="11" text-anchor="middle" fill="#777">step '
        f"(of {max_step})</text>"
    )
    for series, color, name in ((train, COLORS[1], "train"), (val, COLORS[2], "validation")):
        if not series:
            continue
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in (xy(s, v) for s, v in series))
        out.append(
            f'<polyline class="curve" data-series="{name}" fill="none" stroke="{color}" stroke-width="2" '
            f'points="{path}"/>'
        )
        if name == "validation":
            out.extend(
                f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{color}"><title>step {s}: '
                f"{v:.3f}</title></circle>"
                for (s, v), (x, y) in zip(series, (xy(s, v) for s, v in series))
            )
    out.append(
        f'<text x="{width - right - 150}" y="{top + 14}" font-size="12" fill="{COLORS[1]}">— train '
        "loss</text>"
        f'<text x="{width - right - 150}" y="{top + 30}" font-size="12" fill="{COLORS[2]}">● validation '
        "loss</text>"
    )
    out.append("</svg>")
    return "".join(out)


def _metric_rows(systems: list[dict], labels: list[tuple[str, str]]) -> str:
    first = systems[0]
    head = "".join(
        f'<th><span class="swatch" style="background:{COLORS[k % len(COLORS)]}"></span>{_e(s["system"])}</th>'
        for k, s in enumerate(systems)
    )
    rows = [f"<tr><th>metric</th>{head}</tr>"]
    for key, label in labels:
        if not any(key in s["metrics"] for s in systems):
            continue
        cells = []
        for k, s in enumerate(systems):
            m = s["metrics"]
            v = m.get(key)
            ci = m.get("ci95", {}).get(key)
            d = decimals(key)
            cell = _fmt(v, d) + (f' <span class="ci">[{ci[0]:.{d}f}, {ci[1]:.{d}f}]</span>' if ci else "")
            test = (s.get("comparisons") or {}).get(first["system"], {}).get(key) if k else None
            if test and test.get("p") is not None:
                if test["significant"]:
                    cls = "nosig" if key in NEUTRAL else "sig" if test["change"] > 0 else "worse"
                    p = "p<0.001" if test["p"] < 0.001 else f"p={test['p']:.3f}"
                    vs = f"{test['change']:+.{d}f} vs {_e(first['system'])}, {p}"
                    cell += f'<br><span class="{cls}">{vs}</span>'
                else:
                    cell += f'<br><span class="nosig">no significant difference (p={test["p"]:.2f})</span>'
            cells.append(f'<td class="num">{cell}</td>')
        rows.append(f"<tr><td>{_e(label)}</td>{''.join(cells)}</tr>")
    return "<table>" + "".join(rows) + "</table>"


def _examples(systems: list[dict], sort_key: str, limit: int) -> str:
    last = systems[-1]
    order = sorted(
        range(len(last["examples"])), key=lambda i: last["examples"][i].get("scores", {}).get(sort_key, 0.0)
    )
    head = "".join(f"<th>{_e(s['system'])}</th>" for s in systems)
    rows = [f"<tr><th>#</th><th>input</th><th>reference</th>{head}</tr>"]
    for rank, i in enumerate(order[:limit]):
        ex = last["examples"][i]
        inp = ex.get("input", "")
        excerpt = inp if len(inp) <= 400 else inp[:400] + " …"
        input_cell = f"<pre>{_e(excerpt)}</pre>" + (
            f"<details><summary>whole input</summary><pre>{_e(inp)}</pre></details>" if len(inp) > 400 else ""
        )
        cells = []
        for s in systems:
            e = s["examples"][i]
            sc = e.get("scores", {})
            badges = " · ".join(f"{k} {sc[k]:.1f}" for k in ("rougeL", "bleu", "chrf") if k in sc)
            if "format_ok" in e:
                badges += " · format " + ("ok" if e["format_ok"] else "<b>fails</b>")
            cells.append(f'<td><pre>{_e(e.get("output", ""))}</pre><div class="score">{badges}</div></td>')
        src = f"{_e(Path(str(ex.get('path', ''))).name)}:{_e(ex.get('line', ''))}"
        rows.append(
            f'<tr><td class="num">{rank + 1}<br><span class="ci">{src}</span></td><td>{input_cell}</td>'
            f"<td><pre>{_e(ex.get('reference', ''))}</pre></td>{''.join(cells)}</tr>"
        )
    return '<table class="ex">' + "".join(rows) + "</table>"


def _probes(extra: dict) -> str:
    parts = []
    mem = extra.get("memorization")
    if mem:
        parts.append(
            f"<p><b>Memorization</b>: {_e(mem['metric'])} {mem['train']:.1f} on {mem['n_train']} training "
            "examples vs "
            f"{mem['held_out']:.1f} held out — gap {mem['gap']:+.1f} (95 % interval "
            f"{mem['gap_ci95'][0]:+.1f} to "
            f"{mem['gap_ci95'][1]:+.1f}).</p>"
        )
    fg = extra.get("forgetting")
    if fg:
        b, a = fg["before"], fg["after"]
        parts.append(
            f"<p><b>Forgetting</b> ({b['n']} general-knowledge questions shipped with tunesmith): answer "
            "perplexity "
            f"{b['perplexity']:.2f} → {a['perplexity']:.2f} ({fg['perplexity_ratio']:.2f}×); answer found "
            f"{b['contains_answer']:.0f} % → {a['contains_answer']:.0f} %; token F1 {b['token_f1']:.1f} → "
            f"{a['token_f1']:.1f}.</p>"
        )
    for rep in (mem, fg):
        if rep and rep.get("warning"):
            parts.append(f'<p class="worse">warning: {_e(rep["warning"])}</p>')
    return "<h2>Generalization and forgetting</h2>" + "".join(parts) if parts else ""


def _failures(system: dict, metric: str, top: int = 10) -> str:
    """Where the last system fails (eval/errors.py): the costliest groups, each with its worst example."""
    try:
        a = analyse(
            system, metric if metric in (system["examples"][0].get("scores") or {}) else None, worst=1
        )
    except UserError:
        return ""
    rows = []
    for g in a["groups"][:top]:
        w = g["worst"][0]
        cells = [
            g["count"],
            f"{g['share']:.0f} %",
            f"{g['mean']:.1f}",
            f"{g['rest']:.1f}",
            f"+{g['if_like_rest']:.1f}",
        ]
        worst = f"#{w['example']} ({w['path']}:{w['line']}, {w['value']:.1f})"
        rows.append(
            f"<tr><td>{_e(g['name'])}</td>" + "".join(f"<td class=num>{_e(c)}</td>" for c in cells)
            + f"<td><span class=meta>{_e(worst)}</span><pre>{_e(w['output'])}</pre></td></tr>"
        )  # fmt: skip
    return (
        f"<h2>Where it fails</h2><p class=meta>{_e(a['system'])}'s outputs in groups, costliest first: "
        f"<i>if like rest</i> is how much the mean {_e(a['metric'])} ({a['mean']:.1f}) would rise if the "
        "group scored like the other examples. <code>tunesmith errors</code> prints them all, and compares "
        "two evals.</p><table><tr><th>group</th><th>count</th><th>share</th>"
        f"<th>{_e(a['metric'])}</th><th>rest</th><th>if like rest</th><th>worst example</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def _verdict(results: dict) -> str:
    """The eval's one-sentence answer to "which system?" (eval/verdict.py), when it compared several."""
    v = results.get("verdict")
    return f'<p class="verdict"><b>Verdict.</b> {_e(v["sentence"])}</p>' if v and v.get("sentence") else ""


def render(
    systems: list[dict],
    labels: list[tuple[str, str]],
    *,
    run_dir: str | Path | None = None,
    sort_key: str = "rougeL",
    limit: int = 200,
    extra: dict | None = None,
) -> str:
    """The whole page. `systems`: results dicts (as in results.json) on the same examples, the
    reference system first; `labels`: (metric key, label) rows for the table."""
    first = systems[0]
    title = f"tunesmith eval — {Path(first['data']).name}"
    parts = [
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{_e(title)}</title>",
        "<meta name=viewport "
        f"content='width=device-width,initial-scale=1'><style>{CSS}</style></head><body><main>",
        f"<h1>{_e(title)}</h1>",
        f'<p class="meta">{len(first["examples"])} examples from {_e(first["data"])} · model '
        f"{_e(first['model'])} · "
        f"{'greedy' if first.get('decoding', {}).get('greedy', True) else 'sampled'}, "
        f"max {first.get('decoding', {}).get('max_new_tokens', '?')} new tokens · "
        f"{time.strftime('%Y-%m-%d %H:%M')}</p>",
        "<h2>Metrics</h2><p class=meta>mean and bootstrap 95 % interval; below each system, the paired test "
        "against "
        f"<b>{_e(first['system'])}</b> on the same examples.</p>",
        _metric_rows(systems, labels),
        _verdict(extra or {}),
        "<h2>At a glance</h2><figure>",
        bar_chart(systems, CHART_METRICS),
        "</figure>",
        _probes(extra or {}),
        _failures(systems[-1], sort_key),
    ]
    if run_dir:
        train, val = read_curves(run_dir)
        chart = loss_chart(train, val)
        if chart:
            parts += [
                f"<h2>Training run</h2><p class=meta>{_e(run_dir)}: {len(train)} steps, {len(val)} "
                "validations</p>",
                "<figure>",
                chart,
                "</figure>",
            ]
    shown = min(limit, len(systems[-1]["examples"]))
    parts += [
        f"<h2>Examples, worst first</h2><p class=meta>sorted by {_e(systems[-1]['system'])}'s "
        f"{_e(sort_key)}; "
        f"{shown} of {len(systems[-1]['examples'])} shown</p>",
        _examples(systems, sort_key, limit),
        "</main></body></html>",
    ]
    return "".join(parts)
