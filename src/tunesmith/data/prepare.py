"""`tunesmith data prepare`: normalize, clean, dedupe, split without leaks, write a data card.

Policy (stated in the card too): records that fail validation are dropped with their error;
text is Unicode-NFC normalized, zero-width characters removed, line endings unified,
trailing spaces stripped and runs of blank lines collapsed; examples empty after cleaning,
longer than --max-length tokens, exact duplicates and near duplicates (word 5-gram Jaccard
>= --near-dup, default 0.8) of an earlier example are dropped, and so is any example that
duplicates or nearly duplicates an --eval-set example. The first occurrence is kept.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import statistics
import unicodedata
from pathlib import Path

from tunesmith.data.dedupe import near_duplicates
from tunesmith.data.formats import (
    Example,
    ReadOptions,
    iter_examples,
    load_examples,
    messages_digest,
)
from tunesmith.data.labels import stratified_order
from tunesmith.data.mix import Mix, apply_weights, is_mix
from tunesmith.errors import UserError
from tunesmith.files.atomic import make_temp_dir, replace_dir
from tunesmith.files.outputs import check_out, check_replaceable
from tunesmith.models.chat import last_assistant, rendered_lengths

SPLITS = ("train", "val", "test")
ZERO_WIDTH = re.compile("[\u200b\u200c\u200d\u2060\ufeff]")


def clean_text(text: str) -> str:
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    text = ZERO_WIDTH.sub("", text)
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip()


def example_text(ex: Example) -> str:
    """The text near-duplicate detection compares: every turn's content, and its tool calls."""
    return "\n".join(
        m["content"] + (json.dumps(m["tool_calls"]) if m.get("tool_calls") else "") for m in ex.messages
    )


def prompt_digest(ex: Example) -> int:
    return messages_digest(ex.messages[: last_assistant(ex.messages)])


def parse_split(spec: str, n: int) -> dict[str, int]:
    parts = [p.strip() for p in spec.split(",")]
    if len(parts) != 3:
        raise UserError(
            f"--split {spec!r}: expected three values for train,val,test (ratios like 0.8,0.1,0.1 or counts "
            "like 150,20,30)"
        )
    try:
        if all(re.fullmatch(r"\d+", p) for p in parts):
            counts = [int(p) for p in parts]
            if sum(counts) > n:
                raise UserError(
                    f"--split {spec}: asks for {sum(counts)} examples but only {n} remain after cleaning"
                )
            return dict(zip(SPLITS, counts))
        ratios = [float(p) for p in parts]
    except ValueError:
        raise UserError(f"--split {spec!r}: expected numbers") from None
    if any(r < 0 for r in ratios) or abs(sum(ratios) - 1) > 1e-6:
        raise UserError(f"--split {spec}: ratios must be >= 0 and add up to 1")
    val, test = round(ratios[1] * n), round(ratios[2] * n)
    return {"train": n - val - test, "val": val, "test": test}


def split(
    examples: list[Example], targets: dict[str, int], seed: int, group_by: str | None
) -> dict[str, list[Example]]:
    """Whole groups go to one split: test is filled first, then val, then train takes the rest."""
    groups: dict[str, list[Example]] = {}
    for i, ex in enumerate(examples):
        if group_by:
            if group_by not in ex.meta:
                raise UserError(
                    f"{ex.path}:{ex.line}: --group-by {group_by}: the example has no {group_by!r} field"
                )
            key = json.dumps(ex.meta[group_by], sort_keys=True)
        else:
            key = f"#{i}"
        groups.setdefault(key, []).append(ex)
    order = sorted(groups)
    random.Random(seed).shuffle(order)
    if not group_by and examples and all(isinstance(e.label, str) for e in examples):
        # classes: each split gets each class's share (stratified), as a test set must to measure every class
        order = [f"#{i}" for i in stratified_order([e.label for e in examples], seed)]
    out: dict[str, list[Example]] = {s: [] for s in SPLITS}
    for key in order:
        for name in ("test", "val"):
            if len(out[name]) < targets[name]:
                out[name] += groups[key]
                break
        else:
            if len(out["train"]) < targets["train"]:
                out["train"] += groups[key]
    return out


def histogram(values: list[int], bins: int = 8) -> list[dict]:
    if not values:
        return []
    lo, hi = min(values), max(values)
    width = max(1, -(-(hi - lo + 1) // bins))
    rows = []
    for b in range(bins):
        start = lo + b * width
        if start > hi:
            break
        rows.append(
            {
                "from": start,
                "to": start + width - 1,
                "count": sum(1 for v in values if start <= v < start + width),
            }
        )
    return rows


def _lengths(examples: list[Example], tokenizer) -> tuple[list[int], list[int]]:
    ins, outs = [], []
    for ex in examples:
        last = last_assistant(ex.messages)
        i_text = "\n".join(m["content"] for m in ex.messages[:last])
        o_text = ex.messages[last]["content"] if last < len(ex.messages) else ""
        if tokenizer is None:
            ins.append(len(i_text.split()))
            outs.append(len(o_text.split()))
        else:
            ins.append(len(tokenizer(i_text, add_special_tokens=False)["input_ids"]))
            outs.append(len(tokenizer(o_text, add_special_tokens=False)["input_ids"]))
    return ins, outs


def prepare(
    sources: list[str],
    out: Path,
    *,
    split_spec: str = "0.8,0.1,0.1",
    seed: int = 13,
    group_by: str | None = None,
    near_dup: float = 0.8,
    max_length: int | None = None,
    tokenizer=None,
    eval_sets: list[str] = (),
    opts: ReadOptions | None = None,
    overwrite: bool = False,
) -> dict:
    opts = opts or ReadOptions()
    mixes = [Mix.load(s) for s in sources if is_mix(s)]
    check_out(
        out,
        "data",
        overwrite=overwrite,
        inputs={
            "source": [*sources, *(d["path"] for m in mixes for d in m.datasets)],
            "--eval-set": list(eval_sets),
        },
    )
    if not 0 < near_dup <= 1:
        raise UserError(f"--near-dup {near_dup}: expected a Jaccard similarity in (0, 1]")
    dropped: list[dict] = []  # {"where", "reason"} of every example left out, for the data card
    examples, weights = read_sources(sources, opts, dropped)
    kept = drop_exact_duplicates(examples, dropped)
    if max_length and tokenizer is not None:
        kept = drop_long(kept, tokenizer, max_length, dropped)
    kept = drop_near_duplicates(kept, near_dup, dropped)
    leaks_eval: list[str] = []
    for ev in eval_sets:
        kept = drop_eval_leaks(kept, ev, near_dup, opts, dropped, leaks_eval)
    if not kept:
        raise UserError("no examples left after cleaning; see the reasons with `tunesmith data check`")
    targets = parse_split(split_spec, len(kept))
    parts = split(kept, targets, seed, group_by)
    if weights:
        parts["train"] = apply_weights(parts["train"], weights, seed)
    cross = cross_split_leaks(parts, near_dup)
    card = make_card(
        sources,
        parts,
        dropped,
        cross,
        leaks_eval,
        tokenizer,
        dict(
            split=split_spec,
            seed=seed,
            group_by=group_by,
            near_dup=near_dup,
            max_length=max_length,
            eval_sets=list(eval_sets),
            weights=weights or None,
            format=opts.format,
        ),
    )
    write_output(out, parts, card)
    return card


def read_sources(
    sources: list[str], opts: ReadOptions, dropped: list[dict]
) -> tuple[list[Example], dict[str, float]]:
    """Every valid example of the sources, cleaned (a mix's examples tagged with their task), and the
    mix weights by task; invalid records go to `dropped`."""
    weights: dict[str, float] = {}
    inputs: list[tuple[str, str | None]] = []
    for s in sources:
        if is_mix(s):
            for d in Mix.load(s).datasets:
                inputs.append((d["path"], d["task"]))
                weights[d["task"]] = d["weight"]
        else:
            inputs.append((s, None))
    examples: list[Example] = []
    for path, task in inputs:
        for ex, issues in iter_examples(path, opts):
            errs = [i for i in issues if i.level == "error"]
            if errs or ex is None:
                where = (
                    f"{errs[0].path}:{errs[0].line}"
                    if errs and errs[0].line
                    else (errs[0].path if errs else path)
                )
                reason = "; ".join(f"{i.field + ': ' if i.field else ''}{i.message}" for i in errs)
                dropped.append({"where": where, "reason": "invalid: " + reason})
                continue
            for m in ex.messages:
                m["content"] = clean_text(m["content"])
            if ex.rejected is not None:
                ex.rejected = clean_text(ex.rejected)
            if task is not None:
                ex.meta["task"] = task
            examples.append(ex)
    return examples, weights


def drop_exact_duplicates(examples: list[Example], dropped: list[dict]) -> list[Example]:
    """Examples empty after cleaning, and exact repeats of an earlier one, left out."""
    kept: list[Example] = []
    seen: dict[str, str] = {}
    for ex in examples:
        where = f"{ex.path}:{ex.line}" if ex.line else ex.path
        if any(not m["content"] and not m.get("tool_calls") for m in ex.messages) or ex.rejected == "":
            dropped.append({"where": where, "reason": "empty after cleaning"})
            continue
        key = messages_digest(ex.messages, ex.rejected if ex.label is None else repr(ex.label))
        if key in seen:
            dropped.append({"where": where, "reason": f"exact duplicate of {seen[key]}"})
            continue
        seen[key] = where
        kept.append(ex)
    return kept


def drop_long(kept: list[Example], tokenizer, max_length: int, dropped: list[dict]) -> list[Example]:
    lengths = rendered_lengths(tokenizer, [e.messages for e in kept], [e.tools for e in kept])
    long = {i for i, n in enumerate(lengths) if n > max_length}
    for i in sorted(long):
        ex = kept[i]
        dropped.append(
            {"where": f"{ex.path}:{ex.line}", "reason": f"{lengths[i]} tokens > --max-length {max_length}"}
        )
    return [e for i, e in enumerate(kept) if i not in long]


def drop_near_duplicates(kept: list[Example], near_dup: float, dropped: list[dict]) -> list[Example]:
    """The later of two examples at least `near_dup` alike (Jaccard), left out."""
    near = {}
    for i, j, J in near_duplicates([example_text(e) for e in kept], near_dup):
        if j not in near and i not in near:
            near[j] = (i, J)
    for j, (i, J) in sorted(near.items()):
        dropped.append(
            {
                "where": f"{kept[j].path}:{kept[j].line}",
                "reason": f"near duplicate (Jaccard {J}) of {kept[i].path}:{kept[i].line}",
            }
        )
    return [e for k, e in enumerate(kept) if k not in near]


def drop_eval_leaks(
    kept: list[Example],
    eval_set: str,
    near_dup: float,
    opts: ReadOptions,
    dropped: list[dict],
    leaks: list[str],
) -> list[Example]:
    """Examples whose input is in the --eval-set (the same, or a near duplicate), left out and listed."""
    ev_examples = load_examples(eval_set, "--eval-set", opts, kind=None)
    ev_prompts = {prompt_digest(e): e for e in ev_examples}
    bad: dict[int, str] = {}
    for k, e in enumerate(kept):
        hit = ev_prompts.get(prompt_digest(e))
        if hit is not None:
            bad[k] = f"leak: same input as --eval-set {hit.path}:{hit.line}"
    against = [example_text(e) for e in ev_examples]
    for k, j, J in near_duplicates([example_text(e) for e in kept], near_dup, against=against):
        bad.setdefault(
            k, f"leak: near duplicate (Jaccard {J}) of --eval-set {ev_examples[j].path}:{ev_examples[j].line}"
        )
    for k, reason in sorted(bad.items()):
        dropped.append({"where": f"{kept[k].path}:{kept[k].line}", "reason": reason})
        leaks.append(reason)
    return [e for k, e in enumerate(kept) if k not in bad]


def cross_split_leaks(parts: dict[str, list[Example]], threshold: float) -> list[str]:
    found = []
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        if not parts[a] or not parts[b]:
            continue
        pa = {prompt_digest(e): e for e in parts[a]}
        for e in parts[b]:
            if prompt_digest(e) in pa:
                found.append(
                    f"{b} {e.path}:{e.line} has the same input as {a} "
                    f"{pa[prompt_digest(e)].path}:{pa[prompt_digest(e)].line}"
                )
        for i, j, J in near_duplicates(
            [example_text(e) for e in parts[b]], threshold, against=[example_text(e) for e in parts[a]]
        ):
            found.append(
                f"{b} {parts[b][i].path}:{parts[b][i].line} is a near duplicate (Jaccard {J}) of {a} "
                f"{parts[a][j].path}:{parts[a][j].line}"
            )
    return found


def make_card(sources, parts, dropped, cross, leaks_eval, tokenizer, settings) -> dict:
    unit = "tokens" if tokenizer is not None else "words"
    card = {
        "sources": [{"path": s} for s in sources],
        "settings": settings,
        "length_unit": unit,
        "splits": {},
        "dropped": dropped,
        "leak_check": {"across_splits": cross, "against_eval_sets": leaks_eval},
    }
    group_by = settings.get("group_by")
    for name, exs in parts.items():
        ins, outs = _lengths(exs, tokenizer)
        info = {
            "examples": len(exs),
            "input_length": _summary(ins),
            "output_length": _summary(outs),
            "input_histogram": histogram(ins),
            "output_histogram": histogram(outs),
        }
        if group_by:
            info["groups"] = len({json.dumps(e.meta.get(group_by)) for e in exs})
        tasks = sorted({e.meta["task"] for e in exs if "task" in e.meta})
        if tasks:
            info["tasks"] = {t: sum(1 for e in exs if e.meta.get("task") == t) for t in tasks}
        card["splits"][name] = info
    return card


def _summary(values: list[int]) -> dict:
    if not values:
        return {}
    return {
        "min": min(values),
        "median": statistics.median(values),
        "max": max(values),
        "mean": round(statistics.fmean(values), 1),
    }


def card_text(card: dict) -> str:
    unit = card["length_unit"]
    s = card["settings"]
    lines = [
        "# Data card",
        "",
        f"Sources: {', '.join(x['path'] for x in card['sources'])}",
        f"Split {s['split']} (train,val,test), seed {s['seed']}"
        + (f", grouped by {s['group_by']!r}" if s["group_by"] else "")
        + f"; near-duplicate threshold {s['near_dup']}"
        + (f"; max length {s['max_length']} tokens" if s["max_length"] else ""),
        "",
    ]
    for name, info in card["splits"].items():
        extra = f" from {info['groups']} groups" if "groups" in info else ""
        tasks = f"; tasks {info['tasks']}" if "tasks" in info else ""
        lines.append(f"## {name}: {info['examples']} examples{extra}{tasks}")
        for label in ("input", "output"):
            summ = info[f"{label}_length"]
            if not summ:
                continue
            lines.append(
                f"{label} length ({unit}): min {summ['min']}, median {summ['median']}, max {summ['max']}"
            )
            top = max(h["count"] for h in info[f"{label}_histogram"]) or 1
            for h in info[f"{label}_histogram"]:
                lines.append(
                    f"  {h['from']:>6}-{h['to']:<6} {'#' * round(30 * h['count'] / top):<30} {h['count']}"
                )
        lines.append("")
    lines.append(f"## Dropped: {len(card['dropped'])}")
    lines += [f"- {d['where']}: {d['reason']}" for d in card["dropped"]] or ["(none)"]
    lines += ["", "## Leak check"]
    lk = card["leak_check"]
    lines += [f"- {x}" for x in lk["across_splits"]] or ["- across splits: no exact or near duplicates"]
    if s["eval_sets"]:
        lines.append(
            f"- against --eval-set: {len(lk['against_eval_sets'])} example(s) dropped (listed above)"
        )
    lines += [
        "",
        "Cleaning policy: " + " ".join((__doc__ or "").split("Policy (stated in the card too):")[1].split()),
    ]
    return "\n".join(lines) + "\n"


def write_output(out: Path, parts: dict[str, list[Example]], card: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(out)
    try:
        for name, exs in parts.items():
            with open(tmp / f"{name}.jsonl", "w", encoding="utf-8") as f:
                for e in exs:
                    f.write(json.dumps(e.to_json(), ensure_ascii=False) + "\n")
        (tmp / "card.json").write_text(json.dumps(card, indent=2, ensure_ascii=False))
        (tmp / "card.md").write_text(card_text(card))
        check_replaceable(out, "data")
        replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
