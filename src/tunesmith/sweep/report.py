"""The sweep's report.html: the objective against each searched setting (one dot per trial; pruned trials
hollow, at the last value they reported), every trial's validation curve (pruned ones grey, so it shows
where the pruner cut), and the ranking. One self-contained file of inline SVG: no script, nothing
fetched, opens offline."""

from __future__ import annotations

import html
import math

from tunesmith.sweep.run import params_text

W, H, PAD = 360, 220, 40


def scale(values: list[float], log: bool, lo_px: float, hi_px: float):
    vals = [math.log10(v) if log else v for v in values]
    lo, hi = min(vals), max(vals)
    span = (hi - lo) or 1.0
    return lambda v: lo_px + (hi_px - lo_px) * (((math.log10(v) if log else v) - lo) / span)


def axes(title: str, xlab: str, ylab: str) -> list[str]:
    return [
        f'<svg viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" aria-label="{html.escape(title)}">',
        f'<rect x="{PAD}" y="10" width="{W - PAD - 10}" height="{H - PAD - 10}" fill="#fff" stroke="#ccd"/>',
        f'<text x="{W / 2}" y="{H - 6}" text-anchor="middle" font-size="11">{html.escape(xlab)}</text>',
        f'<text x="12" y="{H / 2}" font-size="11" transform="rotate(-90 12 {H / 2})" text-anchor="middle">'
        f"{html.escape(ylab)}</text>",
    ]


def ticks(xs: list[float], ys: list[float]) -> list[str]:
    """The ends of both axes, written at the corners of the plot area."""
    lo_x, hi_x, lo_y, hi_y = min(xs), max(xs), min(ys), max(ys)
    return [
        f'<text x="{PAD}" y="{H - PAD + 14}" font-size="10">{lo_x:g}</text>',
        f'<text x="{W - 10}" y="{H - PAD + 14}" font-size="10" text-anchor="end">{hi_x:g}</text>',
        f'<text x="{PAD - 3}" y="{H - PAD - 4}" font-size="10" text-anchor="end">{lo_y:.3g}</text>',
        f'<text x="{PAD - 3}" y="22" font-size="10" text-anchor="end">{hi_y:.3g}</text>',
    ]


def value_of(t) -> float | None:
    """A finished trial's value; a pruned trial's last reported one."""
    if t.state.name == "COMPLETE":
        return t.value
    if t.state.name == "PRUNED" and t.intermediate_values:
        return t.intermediate_values[max(t.intermediate_values)]
    return None


def scatter(trials: list, param, key: str) -> str:
    pts = [(t.params[param.name], value_of(t), t) for t in trials if param.name in t.params]
    pts = [(x, y, t) for x, y, t in pts if y is not None and not isinstance(x, (str, bool))]
    if not pts:
        return ""
    log = bool(param.log)
    sx = scale([p[0] for p in pts], log, PAD + 8, W - 18)
    sy = scale([p[1] for p in pts], False, H - PAD - 8, 18)
    out = axes(f"{key} against {param.name}", param.name + (" (log scale)" if log else ""), key)
    out += ticks([p[0] for p in pts], [p[1] for p in pts])
    for x, y, t in pts:
        fill = "none" if t.state.name == "PRUNED" else "#3a78c9"
        said = f"trial {t.number}: {param.name} {x:g}, {key} {y:.4f} ({t.state.name.lower()})"
        out.append(
            f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="4" fill="{fill}" stroke="#3a78c9">'
            f"<title>{said}</title></circle>"
        )
    return "\n".join([*out, "</svg>"])


def curves(trials: list, key: str) -> str:
    series = [(t, sorted(t.intermediate_values.items())) for t in trials if t.intermediate_values]
    if not series:
        return ""
    steps = [s for _, pts in series for s, _ in pts]
    values = [v for _, pts in series for _, v in pts]
    sx = scale(steps + [0], False, PAD + 8, W - 18)
    sy = scale(values, False, H - PAD - 8, 18)
    out = axes(f"{key} during each trial", "step", key) + ticks([0, *steps], values)
    for t, pts in series:
        colour = "#aab" if t.state.name == "PRUNED" else "#3a78c9"
        if len(pts) == 1:  # pruned at its first validation: a point
            ((s, v),) = pts
            out.append(f'<circle cx="{sx(s):.1f}" cy="{sy(v):.1f}" r="3" fill="{colour}"/>')
        line = " ".join(f"{sx(s):.1f},{sy(v):.1f}" for s, v in pts)
        out.append(
            f'<polyline points="{line}" fill="none" stroke="{colour}" stroke-width="1.5">'
            f"<title>trial {t.number} ({t.state.name.lower()})</title></polyline>"
        )
    return "\n".join([*out, "</svg>"])


def render(study, spec, ranked: list) -> str:
    trials = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    plots = [scatter(trials, p, spec.key) for p in spec.space] + [curves(trials, spec.key)]
    rows = "".join(
        f"<tr><td>{i}</td><td>{t.number}</td><td>{t.value:.4f}</td><td>"
        + html.escape(params_text(t.params))
        + "</td></tr>"
        for i, t in enumerate(ranked, 1)
    )
    pruned = sum(t.state.name == "PRUNED" for t in study.trials)
    return (
        "<!doctype html><meta charset='utf-8'><title>sweep "
        f"{html.escape(study.study_name)}</title><style>body{{font:14px system-ui,sans-serif;margin:1.5em}}"
        "table{border-collapse:collapse}td,th{border-bottom:1px solid #dde;padding:.2em .6em;text-align:left}"
        "svg{margin:0 1em 1em 0}</style>"
        f"<h1>sweep {html.escape(study.study_name)}</h1><p>{len(ranked)} finished, {pruned} pruned; "
        f"{html.escape(spec.key)}, {'higher' if spec.maximize else 'lower'} is better. Hollow dots and grey "
        "lines: pruned trials, at the last value they reported.</p>"
        + "".join(p for p in plots if p)
        + f"<h2>ranking</h2><table><tr><th>#</th><th>trial</th><th>{html.escape(spec.key)}</th>"
        f"<th>settings</th></tr>{rows}</table>"
    )
