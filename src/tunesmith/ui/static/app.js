// tunesmith review: runs, one run or eval (and where it fails), two evals or two outputs side by side,
// and the review queue.
// Every text from the registry (prompts, outputs, names) goes into the page as text nodes, never as HTML.
"use strict";

const main = document.getElementById("main");
const who = document.getElementById("reviewer");
who.value = localStorage.getItem("tunesmith.reviewer") || "";
who.addEventListener("change", () => { localStorage.setItem("tunesmith.reviewer", who.value.trim()); route(); });

function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (v !== null && v !== undefined && v !== false) el.setAttribute(k, v === true ? "" : v);
  }
  for (const kid of kids.flat()) {
    if (kid !== null && kid !== undefined) el.append(kid instanceof Node ? kid : String(kid));
  }
  return el;
}

async function api(path, body) {
  const opts = body === undefined ? {} : {
    method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)};
  const r = await fetch(path, opts);
  const data = await r.json().catch(() => ({error: r.statusText}));
  if (!r.ok) throw new Error(data.error || r.statusText);
  return data;
}

function toast(text, bad) {
  const t = document.getElementById("toast");
  t.textContent = text;
  t.className = bad ? "bad" : "";
  t.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.hidden = true; }, bad ? 6000 : 1500);
}

const fmt = (v) => typeof v === "number" ? (Math.abs(v) >= 100 ? v.toFixed(0) : v.toFixed(Number.isInteger(v) ? 0 : 3)) : (v ?? "–");
const when = (t) => t ? new Date(t * 1000).toISOString().slice(0, 16).replace("T", " ") : "–";

// ------------------------------------------------------------ sortable tables

function table(columns, rows, onRow) {
  let key = null, dir = 1;
  const body = h("tbody");
  const draw = () => {
    body.replaceChildren();
    const sorted = key === null ? rows : [...rows].sort((a, b) => {
      const x = a[key], y = b[key];
      return (x === y ? 0 : x === null || x === undefined ? 1 : y === null || y === undefined ? -1 : x < y ? -1 : 1) * dir;
    });
    for (const r of sorted) {
      body.append(h("tr", {class: onRow ? "link" : null, onclick: onRow ? () => onRow(r) : null},
        columns.map(([k, , show]) => h("td", {}, show ? show(r[k], r) : fmt(r[k])))));
    }
  };
  const head = h("tr", {}, columns.map(([k, label]) => h("th", {title: "sort", onclick: () => {
    dir = key === k ? -dir : 1; key = k; draw(); }}, label)));
  draw();
  return h("table", {class: "grid"}, h("thead", {}, head), body);
}

// ------------------------------------------------------------ runs

async function runsPage() {
  const runs = await api("/api/runs");
  main.replaceChildren(h("h1", {}, "Runs"),
    runs.length ? table([
      ["id", "id"], ["name", "name"], ["kind", "kind"], ["status", "status"], ["method", "method"],
      ["model", "model"], ["headline", "headline", (v, r) => v === null ? "–" : `${r.headline_metric} ${fmt(v)}`],
      ["tags", "tags", (v) => v.join(", ")], ["started", "started", when],
    ], runs, (r) => { location.hash = `#/run/${r.id}`; }) : h("p", {}, "No runs yet: `tunesmith train` registers each run."));
}

// a line chart of the metrics whose names `pick` keeps, one line per name, over the steps
function curve(metrics, pick, title) {
  const series = {};
  for (const m of metrics) if (m.step !== null && typeof m.value === "number" && pick(m.name)) (series[m.name] ||= []).push([m.step, m.value]);
  const names = Object.keys(series);
  if (!names.length) return null;
  const all = names.flatMap((n) => series[n]);
  const [x0, x1] = [Math.min(...all.map((p) => p[0])), Math.max(...all.map((p) => p[0]))];
  const [y0, y1] = [Math.min(...all.map((p) => p[1])), Math.max(...all.map((p) => p[1]))];
  const W = 520, H = 160, sx = (x) => 30 + (W - 40) * (x - x0) / Math.max(1, x1 - x0);
  const sy = (y) => H - 20 - (H - 30) * (y - y0) / Math.max(1e-9, y1 - y0);
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("class", "curve");
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", title);
  names.forEach((n, i) => {
    const line = document.createElementNS(svg.namespaceURI, series[n].length > 1 ? "polyline" : "circle");
    if (series[n].length > 1) line.setAttribute("points", series[n].map(([x, y]) => `${sx(x)},${sy(y)}`).join(" "));
    else { line.setAttribute("cx", sx(series[n][0][0])); line.setAttribute("cy", sy(series[n][0][1])); line.setAttribute("r", 3); }
    line.setAttribute("class", `s${i % 4}`);
    svg.append(line);
    const label = document.createElementNS(svg.namespaceURI, "text");
    label.setAttribute("x", W - 170); label.setAttribute("y", 14 + 14 * i); label.setAttribute("class", `s${i % 4}`);
    label.textContent = `${n} ${fmt(series[n].at(-1)[1])}`;
    svg.append(label);
  });
  return h("figure", {}, h("figcaption", {}, `${title}: ${fmt(y0)} to ${fmt(y1)} over steps ${x0}–${x1}`), svg);
}

function ruleFailures(ex) {
  const failed = Object.entries(ex.style || {}).filter(([, ok]) => ok === false).map(([rule]) => rule);
  return failed.length ? h("div", {class: "fail"}, "format: ", failed.join("; ")) : null;
}

function examplesView(systems) {
  const metricNames = Object.keys(systems[0].examples[0]?.scores || {});
  const box = h("div");
  const filter = h("input", {placeholder: "filter text", size: 20});
  const by = h("select", {}, systems.flatMap((s) => metricNames.map((m) => h("option", {value: `${s.system}|${m}`}, `${s.system} ${m}`))));
  const headline = `${systems.at(-1).system}|rougeL`;
  if ([...by.options].some((o) => o.value === headline)) by.value = headline;  // the headline metric first
  const worst = h("input", {type: "checkbox", checked: true});
  const onlyFails = h("input", {type: "checkbox"});
  const draw = () => {
    const [sys, metric] = by.value.split("|");
    const si = systems.findIndex((s) => s.system === sys);
    let idx = systems[0].examples.map((_, i) => i);
    const q = filter.value.toLowerCase();
    if (q) idx = idx.filter((i) => [systems[0].examples[i].input, systems[0].examples[i].reference,
      ...systems.map((s) => s.examples[i].output)].join(" ").toLowerCase().includes(q));
    if (onlyFails.checked) idx = idx.filter((i) => systems.some((s) => s.examples[i].format_ok === false));
    const score = (i) => (systems[si].examples[i].scores || {})[metric] ?? 0;
    idx.sort((a, b) => (worst.checked ? 1 : -1) * (score(a) - score(b)));
    box.replaceChildren(...idx.map((i) => {
      const ex = systems[0].examples[i];
      return h("section", {class: "example"},
        h("div", {class: "meta"}, `${ex.path}:${ex.line}`),
        h("details", {}, h("summary", {}, "input"), h("pre", {}, ex.input)),
        h("div", {class: "cols"},
          h("div", {}, h("h4", {}, "reference"), h("pre", {}, ex.reference ?? "")),
          systems.map((s) => { const y = s.examples[i]; return h("div", {class: y.format_ok === false ? "bad" : null},
            h("h4", {}, `${s.system} · ${metric} ${fmt((y.scores || {})[metric])}`), h("pre", {}, y.output), ruleFailures(y)); })));
    }));
  };
  for (const el of [filter, by, worst, onlyFails]) el.addEventListener("input", draw);
  draw();
  return h("div", {}, h("div", {class: "controls"}, "sort by ", by, h("label", {}, worst, " worst first"),
    h("label", {}, onlyFails, " format failures only"), filter), box);
}

const size = (b) => typeof b !== "number" ? "–" : b >= 1e9 ? `${(b / 1e9).toFixed(2)} GB` : b >= 1e6 ? `${(b / 1e6).toFixed(1)} MB` : `${(b / 1e3).toFixed(1)} kB`;
const short = (v) => v ? String(v).slice(0, 12) : "–";
const ago = (t) => t ? `${Math.max(0, Math.round(Date.now() / 1000 - t))} s ago` : "–";
const ci = (x) => x && x.ci ? `[${fmt(x.ci[0])}, ${fmt(x.ci[1])}]` : "–";
const pv = (p) => p === null || p === undefined ? "–" : p < 0.001 ? "<0.001" : fmt(p);
const signed = (v) => typeof v === "number" ? (v > 0 ? "+" : "") + fmt(v) : "–";
const gateWord = (g) => g === true ? "passed" : g === false ? "failed" : "–";

function section(title, ...kids) {
  const body = kids.flat().filter(Boolean);
  return body.length ? h("section", {class: "part"}, h("h3", {}, title), body) : null;
}

function commonParts(r) {
  const lineage = r.lineage.map((c) => h("a", {href: `#/run/${c.id}`}, c.name || c.id)).flatMap((a, i) => i ? [" → ", a] : [a]);
  const config = Object.entries(r.config || {}).filter(([, v]) => v !== null && v !== "" && v !== false)
    .map(([k, v]) => ({k, v: typeof v === "object" ? JSON.stringify(v) : String(v)}));
  return [
    section("data", r.data.length ? table([["role", "role"], ["path", "file"], ["examples", "examples"],
      ["bytes", "size", size], ["sha256", "sha256", short]], r.data) : h("p", {class: "meta"}, "no data files recorded")),
    section("artefacts", r.artefacts.length ? table([["kind", "kind"], ["path", "file"], ["bytes", "size", size],
      ["sha256", "sha256", short], ["present", "on disk", (v) => v ? "yes" : h("span", {class: "missing"}, "missing")]], r.artefacts) : null),
    r.lineage.length > 1 ? section("lineage", h("p", {}, lineage)) : null,
    r.children.length ? section("followed by", table([["name", "name"], ["kind", "kind"], ["relation", "relation"],
      ["headline", "headline", (v, c) => v === null ? "–" : `${c.headline_metric} ${fmt(v)}`]], r.children,
      (c) => { location.hash = `#/run/${c.run}`; })) : null,
    config.length ? h("details", {class: "part"}, h("summary", {}, `config (${config.length} settings)`),
      table([["k", "setting"], ["v", "value", (v) => v]], config)) : null,
  ];
}

function trainParts(r) {
  const t = r.train, counts = Object.entries(t.examples).map(([k, v]) => `${k} ${v}`).join(", ");
  const best = t.best ? Object.entries(t.best).filter(([k]) => !["step", "epoch"].includes(k)).map(([k, v]) => `${k} ${fmt(v)}`).join(", ") : "";
  const parts = [
    h("p", {}, [counts ? `examples: ${counts}` : null, t.steps !== null ? `${t.steps} steps` : null,
      t.train_loss !== null ? `train loss ${fmt(t.train_loss)}` : null, t.tokens_per_s !== null ? `${fmt(t.tokens_per_s)} tokens/s` : null,
      t.wall_s !== null ? `${fmt(t.wall_s)} s` : null].filter(Boolean).join(" · ")),
    t.best ? h("p", {}, `best: step ${t.best.step}${best ? ` (${best})` : ""}${t.early_stopped ? " · stopped early" : ""}`) : null,
    t.progress ? h("p", {class: "meta"}, t.progress.step === null ? `no step finished yet (${t.progress.folder})`
      : `at step ${t.progress.step}, loss ${fmt(t.progress.loss)}, written ${ago(t.progress.updated)} in ${t.progress.folder}`) : null,
    t.study ? h("p", {}, "a trial of ", h("a", {href: `#/studies/${t.study.key}`}, t.study.name)) : null,
    curve(r.metrics, (n) => /loss$/.test(n), "loss"),
    curve(r.metrics, (n) => (n.startsWith("val_") && n !== "val_loss") || /^reward/.test(n) || /accuracy|margin/.test(n), "validation and rewards"),
    section("checkpoints", t.checkpoints.length ? table([["step", "step"], ["best", "best", (v) => v ? "best" : ""], ["path", "folder"]], t.checkpoints) : null),
    section("evals of it", t.evals.length ? table([["name", "eval"], ["headline", "headline", (v, c) => v === null ? "–" : `${c.headline_metric} ${fmt(v)}`],
      ["gate", "gate", gateWord], ["started", "when", when]], t.evals, (c) => { location.hash = `#/run/${c.run}`; })
      : h("p", {class: "meta"}, "none yet: `tunesmith eval --adapter RUN` measures it")),
  ];
  return parts;
}

function metricTable(systems) {
  const names = [...new Set(systems.flatMap((s) => Object.keys(s.metrics)))];
  const cell = (s, m) => {
    const v = s.metrics[m], iv = s.intervals[m], t = s.tests[m];
    return h("span", {}, fmt(v), iv ? h("span", {class: "meta"}, ` [${fmt(iv[0])}, ${fmt(iv[1])}]`) : null,
      t && t.p !== null && t.p !== undefined ? h("div", {class: t.significant ? (t.change > 0 ? "ok" : "bad") : "meta"},
        `${signed(t.change)} vs ${s.against} ${ci(t)}, p ${pv(t.p)}`) : null);
  };
  return table([["metric", "metric"], ...systems.map((s, i) => [`s${i}`, s.system, (v) => v])],
    names.map((m) => Object.fromEntries([["metric", m], ...systems.map((s, i) => [`s${i}`, cell(s, m)])])));
}

function testsTable(tests) {
  return table([["metric", "metric"], ["change", "change", signed], ["ci", "95 % interval", (v, t) => ci(t)], ["p", "p", pv],
    ["significant", "", (v) => v ? "significant" : ""]], Object.entries(tests).map(([metric, t]) => ({metric, ...t})));
}

async function evalParts(r) {
  const e = r.eval, g = e.gate;
  const parts = [
    e.data ? h("p", {class: "meta"}, `test set ${e.data}${e.decoding ? ` · max ${e.decoding.max_new_tokens ?? "?"} new tokens` : ""}`) : null,
    e.verdict && e.verdict.sentence ? h("p", {class: "verdict"}, h("b", {}, "Verdict. "), e.verdict.sentence) : null,
    g ? h("p", {class: g.passed ? "ok" : "bad"}, `gate ${g.passed ? "passed" : "failed"} against ${g.reference ?? "the reference"}`) : null,
    g && g.metrics ? testsTable(g.metrics) : null,
    e.systems.length ? section("metrics (mean, 95 % interval; paired test against the first system)", metricTable(e.systems)) : null,
    e.baseline ? section("against the baseline (--baseline), example by example", testsTable(e.baseline)) : null,
  ];
  if (e.systems.some((s) => s.examples.length)) {  // a --task eval has no failure groups (text metrics)
    parts.push(e.task ? null : await failuresView(r), section("examples", examplesView(e.systems)));
  }
  return parts;
}

function outputParts(r) {
  const o = r.output, facts = Object.entries(o.facts).map(([k, v]) => ({k, v: k === "bytes" ? size(v) : String(v)}));
  return [
    section(r.kind === "export" ? "the exported file" : "the merged model", table([["k", "what"], ["v", "value", (v) => v]], facts)),
    o.verify ? section("verified against the source model", table([["k", "check"], ["v", "result", (v) => v]],
      Object.entries(o.verify).map(([k, v]) => ({k, v: typeof v === "object" ? JSON.stringify(v) : String(v)})))) : null,
  ];
}

async function runPage(id) {
  const r = await api(`/api/runs/${encodeURIComponent(id)}`);
  const parts = [
    h("h1", {}, `${r.name} `, h("small", {}, `${r.kind} ${r.id} · ${r.status}`)),
    ...r.notes.map((n) => h("p", {class: "note"}, n)),
    h("p", {}, [`model ${r.model || "–"}`, r.method ? `method ${r.method}` : null, `started ${when(r.started)}`,
      r.ended ? `ended ${when(r.ended)}` : null, r.attempts > 1 ? `${r.attempts} attempts` : null,
      r.headline === null ? null : `${r.headline_metric} ${fmt(r.headline)}`].filter(Boolean).join(" · ")),
    r.path ? h("p", {class: "meta"}, `folder ${r.path}${r.folder === "missing" ? " (not on disk)" : ""}`) : null,
  ];
  if (r.train) parts.push(...trainParts(r));
  if (r.eval) parts.push(...await evalParts(r));
  if (r.output) parts.push(...outputParts(r));
  parts.push(...commonParts(r));
  main.replaceChildren(...parts.filter(Boolean));
}

// ------------------------------------------------------------ where an eval fails, and what changed

function worstList(g) {
  return h("details", {}, h("summary", {}, `${g.worst.length} worst`),
    g.worst.map((w) => h("div", {}, h("div", {class: "meta"}, `#${w.example} ${w.path}:${w.line} · ${fmt(w.value)}`), h("pre", {}, w.output))));
}

async function failuresView(r) {
  let got;
  try { got = await api(`/api/runs/${encodeURIComponent(r.id)}/errors`); }
  catch (e) { return h("p", {class: "meta"}, `where it fails: ${e.message}`); }  // the rest of the page still shows
  const {analysis: a, peers} = got;
  const pick = h("select", {}, h("option", {value: ""}, "compare with an earlier eval of this test set…"),
    peers.map((p) => h("option", {value: p.id}, `${p.name} (${p.id}, ${when(p.started)})`)));
  pick.addEventListener("change", () => { if (pick.value) location.hash = `#/diff/${pick.value}/${r.id}`; });
  return h("div", {class: "failures"},
    h("h3", {}, `where ${a.system || "it"} fails`),
    h("p", {class: "meta"}, `groups by ${a.metric} (mean ${fmt(a.mean)}), costliest first: "if like rest" is how much the mean would rise if the group scored like the other examples`),
    peers.length ? h("p", {}, pick) : null,
    a.groups.length ? table([["name", "group"], ["count", "count"], ["share", "share %"], ["mean", a.metric], ["rest", "rest"],
      ["if_like_rest", "if like rest"], ["worst", "worst", (_, g) => worstList(g)]], a.groups)
      : h("p", {}, "No failure groups: every example passed every check."));
}

async function diffPage(before, after) {
  const [{comparison: c}, ra, rb] = await Promise.all([
    api(`/api/runs/${encodeURIComponent(after)}/errors?against=${encodeURIComponent(before)}`),
    api(`/api/runs/${encodeURIComponent(before)}`), api(`/api/runs/${encodeURIComponent(after)}`)]);
  const o = c.overall;
  const systems = [{...ra.eval.systems.at(-1), system: ra.name}, {...rb.eval.systems.at(-1), system: rb.name}];
  main.replaceChildren(h("h1", {}, `${rb.name} against ${ra.name} `, h("small", {}, `the same ${c.n} examples`)),
    h("p", {class: "verdict"}, `${c.metric} ${fmt(c.before.mean)} → ${fmt(c.after.mean)}: ${signed(o.change)} ${ci(o)}, p ${pv(o.p)}`),
    h("h3", {}, "each group of the earlier eval, example by example"),
    table([["name", "group"], ["count", "count", (v, g) => g.failure ? `${v} → ${g.count_after}` : String(v)],
      ["before", "before"], ["after", "after"], ["change", "change", signed], ["ci", "95 % interval", (v, g) => ci(g)], ["p", "p", pv],
      ["verdict", ""]], c.groups),
    h("h3", {}, "examples"), examplesView(systems));
}

// ------------------------------------------------------------ queues, compare

async function queuesPage() {
  const [queues, st] = await Promise.all([api("/api/queues"), api("/api/stats")]);
  main.replaceChildren(h("h1", {}, "Review queues"),
    queues.length ? table([["name", "queue"], ["a", "A"], ["b", "B"], ["items", "items"], ["judgements", "judgements"],
      ["name", "", (n) => h("span", {}, h("a", {href: `#/review/${encodeURIComponent(n)}`}, "review"), " · ",
        h("a", {href: `#/compare/${encodeURIComponent(n)}`}, "compare"))]], queues)
      : h("p", {}, "No queues yet: `tunesmith review add EVAL` makes one."),
    h("h3", {}, "judgements per reviewer"),
    table([["name", "reviewer"], ["ab", "A/B"], ["rating", "ratings"], ["correction", "corrections"]],
      Object.entries(st.reviewers).map(([name, c]) => ({name, ...c}))));
}

function words(text) { return (text || "").split(/(\s+)/); }

function diff(a, b) {  // words of b not in a, marked: enough to see what changed between two notes
  const seen = new Set(words(a));
  return words(b).map((w) => (/\S/.test(w) && !seen.has(w) ? h("mark", {}, w) : w));
}

async function comparePage(name) {
  const [data, st] = await Promise.all([api(`/api/queues/${encodeURIComponent(name)}`), api("/api/stats")]);
  const q = data.queue, ab = (st.queues.find((x) => x.queue === name) || {}).ab || {};
  main.replaceChildren(h("h1", {}, `Compare ${q.a} and ${q.b} `, h("small", {}, `queue ${name}`)),
    h("p", {class: "verdict"}, ab.a_win_rate === null || ab.a_win_rate === undefined ? "people: no decisive votes yet"
      : `people prefer ${q.a} in ${fmt(ab.a_wins)} of ${ab.a_wins + ab.b_wins} decisive votes: ${(100 * ab.a_win_rate).toFixed(0)} % [95 % interval ${(100 * ab.interval[0]).toFixed(0)}, ${(100 * ab.interval[1]).toFixed(0)}]; ties ${ab.ties}`),
    h("p", {class: "meta"}, `each metric's mean with its bootstrap 95 % interval, and ${q.b} against ${q.a} paired on the same items`),
    table([["metric", "metric"], ["a", q.a, (v, m) => `${fmt(v)} [${fmt(m.a_ci[0])}, ${fmt(m.a_ci[1])}]`],
      ["b", q.b, (v, m) => `${fmt(v)} [${fmt(m.b_ci[0])}, ${fmt(m.b_ci[1])}]`], ["change", `${q.b} − ${q.a}`, signed],
      ["ci", "95 % interval", (v, m) => ci(m)], ["p", "p", pv], ["n", "items"]], data.metrics),
    ...data.items.map((it) => h("section", {class: "example"},
      h("details", {}, h("summary", {}, `example ${it.example + 1}: prompt`), h("pre", {}, it.prompt.map((m) => m.content).join("\n\n"))),
      h("div", {class: "cols"},
        h("div", {}, h("h4", {}, q.a), h("pre", {}, it.outputs[q.a].output)),
        h("div", {}, h("h4", {}, `${q.b} (words not in ${q.a} marked)`), h("pre", {}, diff(it.outputs[q.a].output, it.outputs[q.b].output)))))));
}

// ------------------------------------------------------------ the review queue

const review = {items: [], at: 0, side: 0, queue: null, editing: false};

async function reviewPage(name) {
  if (!who.value.trim()) {
    main.replaceChildren(h("h1", {}, "Review"), h("p", {class: "bad"}, "Type your name in the reviewer box above: every judgement carries one."));
    who.focus();
    return;
  }
  const data = await api(`/api/queues/${encodeURIComponent(name)}?reviewer=${encodeURIComponent(who.value.trim())}`);
  Object.assign(review, {items: data.items, queue: data.queue, editing: false, side: 0});
  review.at = Math.max(0, review.items.findIndex((i) => !i.mine.some((j) => j.kind === "ab")));
  drawReview();
}

function shown(it) { const q = review.queue; return q.a === q.b ? [q.a] : it.order; }

function drawReview() {
  const it = review.items[review.at], q = review.queue;
  if (!it) { main.replaceChildren(h("p", {}, "This queue is empty.")); return; }
  const labels = shown(it), done = it.mine.find((j) => j.kind === "ab");
  const pane = (label, i) => h("div", {class: `answer${review.side === i ? " focus" : ""}`, "data-side": i},
    h("h4", {}, labels.length > 1 ? (i ? "B" : "A") : "answer", done ? ` (${label})` : ""),
    review.editing && review.side === i
      ? h("textarea", {id: "edit", rows: 12}, it.mine.filter((j) => j.kind === "correction").at(-1)?.correction || it.outputs[label].output)
      : h("pre", {}, it.outputs[label].output), ruleFailures(it.outputs[label]),
    review.side === i && !review.editing ? h("div", {class: "rate"},
      h("input", {id: "tags", placeholder: "tags for a rating (comma separated)", size: 28}),
      h("input", {id: "comment", placeholder: "comment for a rating", size: 36})) : null);
  main.replaceChildren(
    h("h1", {}, `Review ${review.queue.name} `, h("small", {}, `item ${review.at + 1} of ${review.items.length} · ${
      review.items.filter((i) => i.mine.length).length} judged by ${who.value.trim()}`)),
    h("p", {class: "keys"}, q.a === q.b ? "" : "1 A is better · 2 B is better · 0 tie · ",
      "a/b choose the answer to rate or edit · y accept it as a training answer · n reject it · r then 1–5 rate it (with the tags and comment typed below it; Enter leaves the box) · e edit it (ctrl+enter save, esc cancel) · j next · k previous"),
    h("details", {open: true}, h("summary", {}, "prompt"), h("pre", {class: "prompt"}, it.prompt.map((m) => `${m.role}: ${m.content}`).join("\n\n"))),
    it.reference ? h("details", {}, h("summary", {}, "reference"), h("pre", {}, it.reference)) : null,
    h("div", {class: "cols"}, labels.map(pane)),
    h("p", {id: "status"}, done ? `your choice: ${done.choice}` : "", ...it.mine.filter((j) => j.kind === "rating").map((j) => ` · rated ${j.label} ${j.rating}`),
      it.mine.some((j) => j.kind === "correction") ? " · corrected" : "",
      ...it.mine.filter((j) => j.kind === "accept" || j.kind === "reject").slice(-1).map((j) => ` · ${j.kind}ed ${j.label}`)));
  if (review.editing) document.getElementById("edit").focus();
}

async function judge(body) {
  const it = review.items[review.at];
  try {
    const saved = await api("/api/judgements", {item: it.id, reviewer: who.value.trim(), ...body});
    it.mine.push({...body, id: saved.id, correction: body.text});
    toast("saved");
    return true;
  } catch (e) { toast(e.message, true); return false; }
}

async function onKey(ev) {
  if (!location.hash.startsWith("#/review/") || ev.target === who) return;
  const it = review.items[review.at];
  if (!it) return;
  const labels = shown(it);
  if (review.editing) {
    if (ev.key === "Escape") { review.editing = false; drawReview(); }
    if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) {
      ev.preventDefault();
      const text = document.getElementById("edit").value;
      if (await judge({kind: "correction", label: labels[review.side], text})) { review.editing = false; drawReview(); }
    }
    return;
  }
  if (review.rating) {
    review.rating = false;
    const tags = (document.getElementById("tags")?.value || "").split(",").map((t) => t.trim()).filter(Boolean);
    const comment = document.getElementById("comment")?.value.trim() || null;
    if (/^[1-5]$/.test(ev.key) && await judge({kind: "rating", label: labels[review.side], rating: Number(ev.key), tags, comment})) drawReview();
    return;
  }
  if (ev.target.tagName === "INPUT") {  // typing tags or a comment: Enter hands the keys back
    if (ev.key === "Enter") ev.target.blur();
    return;
  }
  const move = (d) => { review.at = Math.min(review.items.length - 1, Math.max(0, review.at + d)); review.side = 0; drawReview(); };
  if (ev.key === "j") move(1);
  else if (ev.key === "k") move(-1);
  else if (ev.key === "a" || ev.key === "b") { review.side = labels.length > 1 && ev.key === "b" ? 1 : 0; drawReview(); }
  else if (ev.key === "r") { review.rating = true; toast("rate 1–5"); }
  else if (ev.key === "y" || ev.key === "n") {
    if (await judge({kind: ev.key === "y" ? "accept" : "reject", label: labels[review.side]})) move(1);
  }
  else if (ev.key === "e") { ev.preventDefault(); review.editing = true; drawReview(); }
  else if (labels.length > 1 && ["1", "2", "0"].includes(ev.key)) {
    const choice = ev.key === "0" ? "tie" : labels[Number(ev.key) - 1];
    if (await judge({kind: "ab", left: labels[0], right: labels[1], choice})) move(1);
  }
}
document.addEventListener("keydown", onKey);

// ------------------------------------------------------------ sweeps and learning curves

async function studiesPage(key) {
  const all = await api("/api/studies");
  const one = all.find((s) => s.key === key);
  if (one) {
    // the sweep's or curve's own report (inline SVG plots), in a frame that may run nothing
    main.replaceChildren(h("h1", {}, `${one.kind} ${one.name} `, h("small", {}, one.path)),
      h("iframe", {class: "report", sandbox: "", src: `/studies/${encodeURIComponent(one.key)}/report.html`}));
    return;
  }
  main.replaceChildren(h("h1", {}, "Sweeps and learning curves"),
    all.length ? table([["kind", "kind"], ["name", "name"], ["runs", "runs"], ["updated", "updated", when],
      ["path", "folder"]], all, (s) => { location.hash = `#/studies/${s.key}`; })
      : h("p", {}, "None yet: `tunesmith sweep` and `tunesmith curve` register their runs and write a report here."));
}

// ------------------------------------------------------------ people's judgements, all queues

async function statsPage() {
  const st = await api("/api/stats");
  const pct = (x) => `${(100 * x).toFixed(0)} %`;
  main.replaceChildren(h("h1", {}, "Judgements"),
    section("per reviewer", Object.keys(st.reviewers).length ? table([["name", "reviewer"], ["ab", "A/B"], ["rating", "ratings"],
      ["correction", "corrections"], ["accept", "accepted"], ["reject", "rejected"]],
      Object.entries(st.reviewers).map(([name, c]) => ({name, ...c}))) : h("p", {}, "No judgements yet: open a queue under Review.")),
    ...st.queues.map((q) => section(`queue ${q.queue}: ${q.ab.a} against ${q.ab.b}`,
      h("p", {}, q.ab.a_win_rate === null ? `no decisive votes yet (${q.ab.ties} ties)`
        : `${q.ab.a} preferred in ${q.ab.a_wins} of ${q.ab.a_wins + q.ab.b_wins} decisive votes: ${pct(q.ab.a_win_rate)} [95 % interval ${pct(q.ab.interval[0])}, ${pct(q.ab.interval[1])}]; ties ${q.ab.ties}`),
      Object.keys(q.ratings).length ? table([["label", "rated"], ["mean", "mean of 5"], ["n", "ratings"]],
        Object.entries(q.ratings).map(([label, r]) => ({label, ...r}))) : null,
      q.agreement.length ? table([["who", "reviewers"], ["items", "items"], ["agreed", "agreed"], ["kappa", "Cohen's kappa"]],
        q.agreement.map((a) => ({...a, who: a.reviewers.join(" / ")}))) : null)));
}

// ------------------------------------------------------------ routes

// anything the page did not expect is said in the page, in words, not left in the console
function failed(what) { main.replaceChildren(h("p", {class: "bad error"}, `This page could not be shown: ${what}`)); }
window.addEventListener("error", (ev) => failed(ev.message));
window.addEventListener("unhandledrejection", (ev) => failed(ev.reason && ev.reason.message || String(ev.reason)));

async function route() {
  const [, page, arg, arg2] = (location.hash || "#/runs").split("/").map(decodeURIComponent);
  try {
    if (page === "run") await runPage(arg);
    else if (page === "diff") await diffPage(arg, arg2);
    else if (page === "queues") await queuesPage();
    else if (page === "studies") await studiesPage(arg);
    else if (page === "compare") await comparePage(arg);
    else if (page === "review") await reviewPage(arg);
    else if (page === "stats") await statsPage();
    else await runsPage();
  } catch (e) { main.replaceChildren(h("p", {class: "bad error"}, e.message)); }
}
window.addEventListener("hashchange", route);
route();
