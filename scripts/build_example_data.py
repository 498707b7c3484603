#!/usr/bin/env python3
"""Build examples/meeting-notes/ from QMSum (MIT licence), reproducibly.

Each example is one QMSum "specific query": the transcript turns its relevant span(s) cover
(cleaned of QMSum's {disfmarker}-style markup) paired with the real human-written QMSum
answer, rearranged into the house layout:

    Meeting Summary: <first sentence of the answer>

    Points discussed:
    - <each further sentence>

    Decisions and actions:          (only when further sentences speak of decisions/actions)
    - <those sentences>

No wording is invented: every sentence of a note is a sentence of the QMSum answer. Notes
that would break the house style (style.yaml) are skipped, not edited. Meetings are assigned
whole to one split, so no meeting straddles train/val/test.

    python3 scripts/build_example_data.py [--qmsum ../shared/data/qmsum] [--out examples/meeting-notes]

Standard library only; the output is byte-identical on every run.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import statistics
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SEED = 13
TARGETS = {"test": 30, "val": 20, "train": 150}  # filled in this order
PER_MEETING = 4
MIN_TOKENS, MAX_TOKENS = 100, 450  # short excerpts: the demo trains on a 2-core CPU in minutes
PROMPT = "Write the meeting notes for this transcript excerpt. Focus: {query}\n\nTranscript:\n{excerpt}"
DECISION = re.compile(r"\b(decided|agreed|will|going to|plan(?:ned|s)? to|should|next step|action)\b", re.I)
SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
# Some ICSI answers name speakers by corpus id ("mn014"); the excerpt calls them "PhD C".
SPEAKER_ID = re.compile(r"\b[mf][en]\d{3}\b")
SKIP_ID = "answer names an ICSI speaker id (e.g. mn014) the transcript never shows"
# A split after one of these is not a sentence end ("Hon. Bill Morneau", "Mr. Stanton").
ABBREVIATIONS = re.compile(r"(?:^|\s)(?:Mr|Mrs|Ms|Dr|Hon|St)\.$")

STYLE = """\
# House style for meeting notes (used by `tunesmith eval --style`)
required:
  - pattern: '^Meeting Summary:'
    name: starts with the "Meeting Summary:" heading
  - pattern: '(?m)^Points discussed:$'
    name: has a "Points discussed:" section
  - pattern: '(?m)^- \\S'
    name: lists points as "- " bullets
forbidden:
  - pattern: '(?i)\\b(I|we|my|our)\\b'
    name: written in the third person
max_words: 250
"""


def parse_style(spec: str) -> tuple[list[re.Pattern], list[re.Pattern], int]:
    """The rules of STYLE, read from its text, so that the check here cannot drift from the file."""
    required: list[re.Pattern] = []
    forbidden: list[re.Pattern] = []
    max_words = 0
    section = None
    for line in spec.splitlines():
        if line.startswith(("required:", "forbidden:")):
            section = required if line.startswith("required:") else forbidden
        elif m := re.fullmatch(r"\s*- pattern: '(.*)'", line):
            section.append(re.compile(m.group(1).replace("''", "'")))
        elif m := re.fullmatch(r"max_words: (\d+)", line):
            max_words = int(m.group(1))
    assert len(required) == 3 and len(forbidden) == 1 and max_words == 250, "STYLE could not be parsed"
    return required, forbidden, max_words


REQUIRED, FORBIDDEN, MAX_WORDS = parse_style(STYLE)


def style_problem(note: str) -> str | None:
    """None when the note passes every rule of STYLE, else the reason it fails."""
    if not all(rx.search(note) for rx in REQUIRED):
        return "note layout"
    if any(rx.search(note) for rx in FORBIDDEN):
        return "answer in first person (I/we/my/our)"
    if len(note.split()) > MAX_WORDS:
        return f"note over {MAX_WORDS} words"
    return None


def est_tokens(text: str) -> int:
    return math.ceil(len(text.split()) * 1.4)


def clean(text: str) -> str:
    """One transcript turn without QMSum markup, with ordinary spacing."""
    text = re.sub(r"\{[^{}]*\}", " ", text)  # {disfmarker} {vocalsound} {gap} {pause} {comment} ...
    text = re.sub(r"(?<=[A-Z*])_", "", text)  # AMI spelled-out letters: L_C_D_ -> LCD, T_V_s -> TVs
    text = re.sub(r"\s+", " ", text).strip()
    text = re.sub(r"\s+([,.?!;:%])", r"\1", text)  # "yes , okay ." -> "yes, okay."
    text = re.sub(r"(?<=\w) (n't|'(?:s|re|ll|ve|d|m))\b", r"\1", text)  # "it 's" -> "it's"
    text = re.sub(r"(?<=\w) - (?=\w)", "-", text)  # ICSI hyphens: "Mm - hmm" -> "Mm-hmm"
    text = re.sub(r"([,.?!])(?:\s*\1)+", r"\1", text)  # ". ." left where a marker was removed
    text = re.sub(r"^[,.;:]\s*", "", text)  # turn that began with a marker then punctuation
    return text.strip()


def excerpt(turns: list[dict], spans: list[list[str]]) -> str:
    """The turns covered by the spans (inclusive, union, in transcript order), one a line."""
    covered = sorted({i for start, end in spans for i in range(int(start), int(end) + 1) if i < len(turns)})
    lines = []
    for i in covered:
        content = clean(turns[i]["content"])
        if content:
            lines.append(f"{turns[i]['speaker'].strip()}: {content}")
    return "\n".join(lines)


def sentences(answer: str) -> list[str]:
    parts = [p.strip() for p in SENTENCE.split(re.sub(r"\s+", " ", answer).strip()) if p.strip()]
    merged: list[str] = []
    for p in parts:
        if merged and ABBREVIATIONS.search(merged[-1]):
            merged[-1] += " " + p
        else:
            merged.append(p)
    return merged


def notes(answer: str) -> str:
    """The QMSum answer, sentence for sentence, in the house layout."""
    sents = sentences(answer)
    first, rest = sents[0], sents[1:]
    points = [s for s in rest if not DECISION.search(s)]
    decisions = [s for s in rest if DECISION.search(s)]
    if not points:  # one-sentence answer, or every further sentence is a decision
        points = [first]
    out = f"Meeting Summary: {first}\n\nPoints discussed:\n" + "\n".join(f"- {s}" for s in points)
    if decisions:
        out += "\n\nDecisions and actions:\n" + "\n".join(f"- {s}" for s in decisions)
    return out


def load_candidates(qmsum: Path, skipped: Counter) -> dict[str, list[dict]]:
    files = sorted((qmsum / "train").glob("*.json")) + sorted((qmsum / "val").glob("*.json"))
    if not files:
        raise SystemExit(f"{qmsum}: no QMSum train/*.json or val/*.json files (see --qmsum)")
    by_meeting: dict[str, list[dict]] = {}
    for f in files:
        if f.stem in by_meeting:
            raise SystemExit(f"{f}: meeting {f.stem} appears twice")
        d = json.loads(f.read_text(encoding="utf-8"))
        items = []
        for order, q in enumerate(d["specific_query_list"]):
            query = re.sub(r"\s+", " ", q["query"]).strip()
            ex = excerpt(d["meeting_transcripts"], q["relevant_text_span"])
            n = est_tokens(ex)
            if not MIN_TOKENS <= n <= MAX_TOKENS:
                skipped[f"excerpt outside {MIN_TOKENS}-{MAX_TOKENS} est. tokens"] += 1
                continue
            if not q["answer"].strip():
                skipped["empty answer"] += 1
                continue
            if SPEAKER_ID.search(q["answer"]):
                skipped[SKIP_ID] += 1
                continue
            note = notes(q["answer"])
            why = style_problem(note)
            if why:
                skipped[why] += 1
                continue
            items.append(
                {
                    "messages": [
                        {"role": "user", "content": PROMPT.format(query=query, excerpt=ex)},
                        {"role": "assistant", "content": note},
                    ],
                    "meeting": f.stem,
                    "query": query,
                    "_tokens": n,
                    "_order": order,
                }
            )
        # Within a meeting: the shortest excerpts first (quick to train on a CPU), then file order.
        items.sort(key=lambda x: (x["_tokens"], x["_order"]))
        if len(items) > PER_MEETING:
            skipped[f"over {PER_MEETING} per meeting"] += len(items) - PER_MEETING
        if items:
            by_meeting[f.stem] = items[:PER_MEETING]
    return by_meeting


def split(by_meeting: dict[str, list[dict]], skipped: Counter) -> dict[str, list[dict]]:
    """Whole meetings, shuffled with SEED, fill test, then val, then train, to their targets."""
    meetings = sorted(by_meeting)
    random.Random(SEED).shuffle(meetings)
    splits: dict[str, list[dict]] = {name: [] for name in TARGETS}
    for m in meetings:
        name = next((s for s in TARGETS if len(splits[s]) < TARGETS[s]), None)
        if name is None:
            skipped["not needed (all splits full)"] += len(by_meeting[m])
            continue
        room = TARGETS[name] - len(splits[name])
        splits[name] += by_meeting[m][:room]  # the last meeting of a split may give fewer
        skipped["not needed (all splits full)"] += max(0, len(by_meeting[m]) - room)
    for rows in splits.values():
        rows.sort(key=lambda r: (r["meeting"], r["_order"]))
    return splits


def verify(splits: dict[str, list[dict]]) -> None:
    owner: dict[str, str] = {}
    for name, rows in splits.items():
        for r in rows:
            if owner.setdefault(r["meeting"], name) != name:
                raise SystemExit(f"meeting {r['meeting']} is in both {owner[r['meeting']]} and {name}")
            note = r["messages"][1]["content"]
            if style_problem(note):
                raise SystemExit(f"{name}: {r['meeting']}: note fails the style: {style_problem(note)}")


def stats(values: list[int]) -> str:
    return f"{min(values)}/{statistics.median(values):g}/{max(values)}"


README = """\
# Example data: meeting transcripts → house-style notes

Built from **QMSum** — Ming Zhong, Da Yin, Tao Yu, Ahmad Zaidi, Mutethia Mutuma, Rahul Jha,
Ahmed Hassan Awadallah, Asli Celikyilmaz, Yang Liu, Xipeng Qiu and Dragomir Radev,
"QMSum: A New Benchmark for Query-based Multi-domain Meeting Summarization", NAACL 2021
(<https://github.com/Yale-LILY/QMSum>). QMSum is released under the MIT licence
(Copyright (c) 2021 Yale-LILY); a copy is in `LICENSE-QMSum` in this folder and must stay
with these files. The transcripts come from the AMI and ICSI meeting corpora and from
Welsh and Canadian parliamentary committees, as collected by QMSum.

| file | what |
| --- | --- |
{table}
| `style.yaml` | the house style, as a spec for `tunesmith eval --style` |
| `LICENSE-QMSum` | the QMSum MIT licence |

Each line is a chat example:
`{{"messages": [{{"role": "user", ...}}, {{"role": "assistant", ...}}], "meeting": "<QMSum meeting>", "query": "<QMSum query>"}}`.

## How the examples were built

Every example is one of QMSum's *specific queries* (from its `train/` and `val/` meetings).

- **User turn**: `Write the meeting notes for this transcript excerpt. Focus: <QMSum query>`,
  a blank line, `Transcript:`, then the transcript turns that the query's relevant span(s)
  cover, one `Speaker: text` a line. QMSum's markup is removed (`{{disfmarker}}`,
  `{{vocalsound}}`, `{{gap}}`, `{{pause}}`, `{{comment}}`, ... and the underscores of spelled
  letters, `L_C_D_` → `LCD`), spacing is tidied (`it 's ,` → `it's,`, `Mm - hmm` →
  `Mm-hmm`), and turns left empty are dropped. Only excerpts of {min_tok}–{max_tok}
  estimated tokens (words × 1.4) are kept, so training is quick on a CPU.
- **Assistant turn**: the real, human-written QMSum answer to that query, rearranged into the
  house layout — `Meeting Summary:` with the answer's first sentence, then `Points discussed:`
  with its other sentences as `- ` bullets, and `Decisions and actions:` for those of them
  that speak of decisions or actions (decided, agreed, will, going to, plan to, should, next
  step, action). A one-sentence answer is repeated as the single point. **No text is
  invented**: every sentence of every note is a sentence of the QMSum answer, unchanged.
- **Style**: every note passes every rule in `style.yaml`. Answers that would not are left
  out, not edited — in this build {skip_person} answers written with I/we/my/our and
  {skip_long} over {max_words} words. So are {skip_id} answers that name a speaker by an ICSI
  corpus id (`mn014`), which the excerpt never shows (it says `PhD C`).
- **Splits** are by meeting: all examples of a meeting sit in one split. The {n_meetings}
  meetings with usable queries are sorted by name, shuffled with `random.Random({seed})`, and
  assigned whole, in that order, to test until it holds {t_test}, then val until {t_val},
  then train until {t_train} (the last meeting of a split may contribute fewer examples).
  At most {per_meeting} examples come from one meeting, chosen as the ones with the shortest
  excerpts (ties in file order), so that many meetings are represented.

## Rebuild

From the repository root, with QMSum at `../shared/data/qmsum` (the default):

```bash
python3 scripts/build_example_data.py --qmsum ../shared/data/qmsum --out examples/meeting-notes
```

The script uses only the Python standard library and rebuilds these files byte-identically.
"""  # noqa: E501 (a line of the generated README, as it is)


def write(out: Path, qmsum: Path, splits: dict[str, list[dict]], skipped: Counter, n_meetings: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in splits.items():
        text = "".join(
            json.dumps({k: v for k, v in r.items() if not k.startswith("_")}, ensure_ascii=False) + "\n"
            for r in rows
        )
        (out / f"{name}.jsonl").write_text(text, encoding="utf-8", newline="\n")
    (out / "style.yaml").write_text(STYLE, encoding="utf-8", newline="\n")
    (out / "LICENSE-QMSum").write_bytes((qmsum / "LICENSE").read_bytes())
    order = ("train", "val", "test")
    table = "\n".join(
        f"| `{name}.jsonl` | {len(splits[name])} examples from "
        f"{len({r['meeting'] for r in splits[name]})} meetings |"
        for name in order
    )
    readme = README.format(
        table=table,
        min_tok=MIN_TOKENS,
        max_tok=MAX_TOKENS,
        max_words=MAX_WORDS,
        seed=SEED,
        skip_person=skipped["answer in first person (I/we/my/our)"],
        skip_long=skipped[f"note over {MAX_WORDS} words"],
        skip_id=skipped[SKIP_ID],
        n_meetings=n_meetings,
        t_test=TARGETS["test"],
        t_val=TARGETS["val"],
        t_train=TARGETS["train"],
        per_meeting=PER_MEETING,
    )
    (out / "README.md").write_text(readme, encoding="utf-8", newline="\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--qmsum",
        type=Path,
        default=ROOT.parent / "shared" / "data" / "qmsum",
        help="QMSum folder with train/ val/ LICENSE (default: ../shared/data/qmsum)",
    )
    ap.add_argument(
        "--out",
        type=Path,
        default=ROOT / "examples" / "meeting-notes",
        help="output folder (default: examples/meeting-notes)",
    )
    a = ap.parse_args()
    skipped: Counter = Counter()
    by_meeting = load_candidates(a.qmsum, skipped)
    splits = split(by_meeting, skipped)
    verify(splits)
    write(a.out, a.qmsum, splits, skipped, len(by_meeting))
    for name in ("train", "val", "test"):
        rows = splits[name]
        print(
            f"{name:5}: {len(rows):3} examples from {len({r['meeting'] for r in rows}):2} meetings; "
            f"est. tokens min/median/max: excerpt {stats([r['_tokens'] for r in rows])}, "
            f"notes {stats([est_tokens(r['messages'][1]['content']) for r in rows])}"
        )
    print(f"meetings with usable queries: {len(by_meeting)}")
    print("skipped:", "; ".join(f"{k}: {v}" for k, v in sorted(skipped.items())) or "none")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
