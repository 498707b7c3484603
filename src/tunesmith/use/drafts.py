"""`tunesmith data generate`: a bigger model (the teacher) drafts answers for inputs that have none
(transcripts without notes), in the house style, for a person to accept, correct or reject
(`review add --drafts`, then `review export --sft`). Distillation, offline.

The teacher (use/teacher.py) is an OpenAI-compatible endpoint or a local model or trained run, and
sees the input with the house style around it. `--style SPEC` checks every draft against the same
rules eval scores (`--best-of N` keeps the first of N sampled drafts that passes them). The
training example a draft becomes holds the input's own prompt, never the shots or the system prompt
added for the teacher.

Nothing drafted is lost: each draft is appended to a journal beside `--out` (`.NAME.journal`, one
flushed and fsynced JSON line) the moment it is made, so a killed run keeps what it drafted and the
same command again drafts only the rest. When the run ends `--out` is written whole, atomically
(every draft in input order), and the journal removed. An input whose draft failed (a timeout
after the retries, an answer that is not a chat completion, an empty answer) is named with why,
and left for the next run; a teacher that cannot be reached at all, or refuses the key or the
model, stops the run with one line.
"""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path

from tunesmith.data.formats import load_examples, messages_digest, read_records
from tunesmith.data.records import Issue
from tunesmith.errors import UserError
from tunesmith.files.atomic import write_text
from tunesmith.scoring.style import check_style, load_style
from tunesmith.use.teacher import (
    Draft,
    EndpointTeacher,
    LocalTeacher,
    Plan,
    TeacherError,
    is_run,
    teacher_prompts,
)

INPUT_FIELDS = ("input", "prompt", "text", "question", "transcript")
TEXT_SUFFIXES = (".txt", ".md")


@dataclass
class Input:
    messages: list[dict]  # the prompt as the training example will hold it
    source: str  # file:line
    digest: str


@dataclass
class Failed:
    source: str
    why: str


# ---------------------------------------------------------------- the inputs


def _prompt_of(obj, template: str) -> list[dict] | str:
    """A record's prompt, or why it has none."""
    if isinstance(obj, str):
        return [{"role": "user", "content": template.replace("{input}", obj)}]
    if not isinstance(obj, dict):
        return "expected a JSON object, a string, or a CSV row"
    if "messages" in obj:
        msgs = obj["messages"]
        roles = ("system", "user", "assistant")
        ok = lambda m: isinstance(m, dict) and m.get("role") in roles and isinstance(m.get("content"), str)
        if not isinstance(msgs, list) or not all(ok(m) for m in msgs):
            return "messages: a list of {role: system/user/assistant, content: string}"
        while msgs and msgs[-1]["role"] == "assistant":
            msgs = msgs[:-1]  # an answer already there: the teacher drafts a new one for the same prompt
        if not msgs or msgs[-1]["role"] != "user":
            return "messages: end with a user turn (the input to answer)"
        return [{"role": m["role"], "content": m["content"]} for m in msgs]
    for key in INPUT_FIELDS:
        if isinstance(obj.get(key), str) and obj[key].strip():
            return [{"role": "user", "content": template.replace("{input}", obj[key])}]
    return f"no input: give 'messages' or one of {', '.join(INPUT_FIELDS)} as a string"


def read_inputs(path: str | Path, template: str = "{input}") -> list[Input]:
    """The inputs of a JSONL/JSON/CSV/Parquet file, or of a folder of .txt/.md files (one input each)."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"--inputs {p}: no such file or folder")
    if "{input}" not in template:
        raise UserError(f"--template {template!r}: put {{input}} where the input goes")
    out, issues = [], []
    if p.is_dir():
        for f in sorted(x for x in p.iterdir() if x.suffix in TEXT_SUFFIXES and x.is_file()):
            text = f.read_text(encoding="utf-8", errors="replace").strip()
            if text:
                msgs = [{"role": "user", "content": template.replace("{input}", text)}]
                out.append(Input(msgs, str(f), str(messages_digest(msgs))))
    else:
        for line, obj in read_records(p):
            if isinstance(obj, Issue):
                issues.append(str(obj))
                continue
            got = _prompt_of(obj, template)
            if isinstance(got, str):
                issues.append(f"{p}:{line}: {got}")
            else:
                out.append(Input(got, f"{p}:{line}", str(messages_digest(got))))
    if issues:
        for i in issues[:20]:
            print(i, file=sys.stderr)
        raise UserError(f"--inputs {p}: {len(issues)} problem(s); fix them and run again")
    if not out:
        raise UserError(f"--inputs {p}: no inputs found" + (" (.txt or .md files)" if p.is_dir() else ""))
    return out


def failed_rules(plan: Plan, text: str) -> list[str] | None:
    if not plan.rules:
        return None
    return [name for name, ok in check_style(plan.rules, text).items() if not ok]


def pick(candidates: list[Draft], plan: Plan) -> tuple[Draft, list[str] | None]:
    """Of best-of-N drafts: the first that passes every style rule and stopped by itself, else the one that
    breaks the fewest rules (ties: the earliest)."""
    scored = [
        (len(failed_rules(plan, d.text) or []) + (d.finish == "length"), i) for i, d in enumerate(candidates)
    ]
    best = candidates[min(scored)[1]]
    total = Draft(
        best.text,
        best.finish,
        sum(d.prompt_tokens for d in candidates),  # what all N cost, not only the one kept
        sum(d.completion_tokens for d in candidates),
        sum(d.seconds for d in candidates),
    )
    return total, failed_rules(plan, best.text)


def record(inp: Input, d: Draft, rules_failed: list[str] | None, teacher: str, n: int) -> dict:
    """A draft as a training example (the input's own prompt and the draft), with where it came from."""
    style = {} if rules_failed is None else {"style_ok": not rules_failed, "failed_rules": rules_failed}
    return {
        "messages": [*inp.messages, {"role": "assistant", "content": d.text}],
        "draft": {"teacher": teacher, "source": inp.source, "input": inp.digest, "finish": d.finish,
                  "seconds": round(d.seconds, 2), "prompt_tokens": d.prompt_tokens,
                  "completion_tokens": d.completion_tokens, "candidates": n,
                  **style},
    }  # fmt: skip


# ---------------------------------------------------------------- the journal and --out


def journal_of(out: Path) -> Path:
    return out.with_name(f".{out.name}.journal")


def _drafts_in(path: Path, partial_ok: bool) -> dict[str, dict]:
    """The drafts a file holds, by input digest (a journal's cut last line, from a kill, is dropped)."""
    done: dict[str, dict] = {}
    lines = path.read_text(encoding="utf-8").splitlines()
    for n, line in enumerate(lines, 1):
        try:
            rec = json.loads(line)
            done[rec["draft"]["input"]] = rec
        except (ValueError, KeyError, TypeError):
            if partial_ok and n == len(lines):
                break
            raise UserError(f"--out {path}:{n}: not a draft tunesmith wrote; choose a new --out") from None
    return done


def already_drafted(out: Path, inputs_path: Path) -> dict[str, dict]:
    if out.resolve() == inputs_path.resolve():
        raise UserError(f"--out {out}: is the inputs file; inputs are never changed, give a new file")
    if out.is_dir():
        raise UserError(f"--out {out}: is a folder; give a .jsonl file to write")
    done = _drafts_in(out, False) if out.is_file() else {}
    if journal_of(out).is_file():
        done.update(_drafts_in(journal_of(out), True))
    return done


class Journal:
    """One fsynced JSON line per draft, the moment it is made."""

    def __init__(self, out: Path):
        self.path = journal_of(out)
        self.f = self.path.open("a", encoding="utf-8")

    def add(self, rec: dict) -> None:
        self.f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        self.f.flush()
        os.fsync(self.f.fileno())

    def close(self) -> None:
        self.f.close()


def finish(out: Path, inputs: list[Input], done: dict[str, dict]) -> int:
    """--out, whole, in the inputs' order, atomically; then the journal goes. Returns how many it holds."""
    asked = {i.digest for i in inputs}
    rows = [done[i.digest] for i in inputs if i.digest in done]
    extra = [r for d, r in done.items() if d not in asked]  # drafted earlier, for inputs no longer given
    if rows or extra:
        write_text(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows + extra))
    journal_of(out).unlink(missing_ok=True)
    return len(rows) + len(extra)


# ---------------------------------------------------------------- the run


class Progress:
    """A line on stderr at most every 2 s (and at the end): drafts, time and tokens a draft, ETA."""

    def __init__(self, total: int, quiet: bool):
        self.total, self.quiet, self.n, self.t0, self.last = total, quiet, 0, time.monotonic(), 0.0
        self.tokens = 0

    def tick(self, rec: dict) -> None:
        self.n += 1
        self.tokens += rec["draft"]["completion_tokens"]
        now = time.monotonic()
        if self.quiet or (now - self.last < 2 and self.n < self.total):
            return
        self.last = now
        each = (now - self.t0) / self.n
        eta = each * (self.total - self.n)
        print(f"drafted {self.n}/{self.total} · {each:.1f} s and {self.tokens / self.n:.0f} tokens a draft · "
              f"ETA {eta // 60:.0f} m {eta % 60:02.0f} s", file=sys.stderr, flush=True)  # fmt: skip


def one(teacher: EndpointTeacher, inp: Input, conv: list[dict], plan: Plan) -> dict:
    cands = [
        teacher.draft(conv, plan.max_tokens, plan.temperature, plan.seed + k) for k in range(plan.best_of)
    ]
    d, fails = pick(cands, plan)
    if not d.text:
        raise TeacherError("the teacher's answer is empty")
    return record(inp, d, fails, teacher.name, plan.best_of)


def run_endpoint(teacher, todo, convs, plan, concurrency, keep) -> list[Failed]:
    """Drafts through the endpoint, `concurrency` at a time; `keep(rec)` takes each as it is made."""
    failed = []
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        futures = {pool.submit(one, teacher, i, c, plan): i for i, c in zip(todo, convs)}
        for f in as_completed(futures):
            try:
                keep(f.result())
            except TeacherError as e:
                if e.fatal:
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise
                failed.append(Failed(futures[f].source, str(e)))
    return failed


def run_local(teacher: LocalTeacher, todo, convs, plan, keep) -> list[Failed]:
    failed = []
    for start in range(0, len(todo), teacher.batch_size):
        batch, bconvs = todo[start : start + teacher.batch_size], convs[start : start + teacher.batch_size]
        cands = [teacher.draft_many(bconvs, plan, k) for k in range(plan.best_of)]
        for j, inp in enumerate(batch):
            d, fails = pick([c[j] for c in cands], plan)
            if d.text:
                keep(record(inp, d, fails, teacher.name, plan.best_of))
            else:
                failed.append(Failed(inp.source, "the teacher's answer is empty"))
    return failed


@dataclass
class Summary:
    teacher: str
    out: str
    inputs: int
    already: int
    drafted: int
    written: int
    seconds: float
    seconds_per_draft: float | None
    tokens_per_draft: float | None
    style_passed: int | None
    failed: list[Failed]
    cost: float | None = None

    def lines(self) -> list[str]:
        out = [f"drafted {self.drafted} of {self.inputs} inputs with {self.teacher} in {self.seconds:.0f} s"
               + (f" ({self.already} drafted before)" if self.already else "")]  # fmt: skip
        if self.drafted:
            out.append(f"  {self.seconds_per_draft:.1f} s and {self.tokens_per_draft:.0f} new tokens a draft"
                       + (f", about {self.cost:.4f} in all at --price" if self.cost is not None else "")
                       + (f"; {self.style_passed} of {self.drafted} pass the style rules"
                          if self.style_passed is not None else ""))  # fmt: skip
        for f in self.failed[:10]:
            out.append(f"  no draft: {f.source}: {f.why}")
        if self.failed:
            out.append(f"  {len(self.failed)} inputs have no draft; run the same command again to retry them")
        out.append(
            f"wrote {self.out} ({self.written} drafts); next: tunesmith review add --drafts {self.out}"
        )
        return out

    def as_dict(self) -> dict:
        return {**asdict(self), "failed": [asdict(f) for f in self.failed]}


def draft_all(
    teacher,
    inputs: list[Input],
    done: dict[str, dict],
    out: Path,
    plan: Plan,
    *,
    concurrency: int = 4,
    quiet: bool = False,
    price: tuple[float, float] | None = None,
) -> Summary:
    """Draft every input that has no draft in `done` (already_drafted: --out and its journal); write --out;
    say what it did."""
    todo = [i for i in inputs if i.digest not in done]
    convs = teacher_prompts([i.messages for i in todo], plan) if todo else []
    journal, made, progress = Journal(out), [], Progress(len(todo), quiet)
    t0 = time.monotonic()

    def keep(rec: dict) -> None:
        journal.add(rec)
        done[rec["draft"]["input"]] = rec
        made.append(rec)
        progress.tick(rec)

    try:
        if isinstance(teacher, LocalTeacher):
            failed = run_local(teacher, todo, convs, plan, keep)
        else:
            failed = run_endpoint(teacher, todo, convs, plan, concurrency, keep)
    except TeacherError as e:
        kept = f"{len(made)} drafts of this run are kept in {journal.path}"
        raise UserError(f"{e}; {kept}: run the same command again to go on") from None
    finally:
        journal.close()
    written = finish(out, inputs, done)
    seconds = time.monotonic() - t0
    d = [r["draft"] for r in made]
    checked = [x for x in d if "style_ok" in x]
    cost = None
    if price and d:
        cost = (
            sum(x["prompt_tokens"] for x in d) * price[0] + sum(x["completion_tokens"] for x in d) * price[1]
        ) / 1e6
    return Summary(
        teacher.name, str(out), len(inputs), len(inputs) - len(todo), len(made), written, round(seconds, 1),
        round(statistics.fmean(x["seconds"] for x in d), 2) if d else None,
        round(statistics.fmean(x["completion_tokens"] for x in d), 1) if d else None,
        sum(x["style_ok"] for x in checked) if checked else None, failed, cost,
    )  # fmt: skip


# ---------------------------------------------------------------- the command


def plan_of(args) -> Plan:
    if args.system and args.system_file:
        raise UserError("give --system or --system-file, not both")
    system = args.system
    if args.system_file:
        try:
            system = Path(args.system_file).read_text(encoding="utf-8").strip()
        except OSError:
            raise UserError(f"--system-file {args.system_file}: cannot read it") from None
    train: list[list[dict]] = []
    if args.train:
        t = Path(args.train)
        t = t / "train.jsonl" if t.is_dir() and (t / "train.jsonl").is_file() else t
        train = [ex.messages for ex in load_examples(t, "--train")]
    if args.shots and not train:
        raise UserError("--shots K: needs training examples to show: --train FILE (or a prepared folder)")
    if args.shots > len(train) > 0:
        raise UserError(f"--shots {args.shots}: the training data has {len(train)} examples")
    temperature = args.temperature if args.temperature is not None else (0.7 if args.best_of > 1 else 0.0)
    return Plan(args.max_tokens, temperature, args.seed, args.best_of, system, args.shots, train,
                load_style(args.style) if args.style else [])  # fmt: skip


def teacher_of(args):
    if args.teacher.startswith(("http://", "https://")):
        if importlib.util.find_spec("openai") is None:
            raise UserError("an endpoint teacher needs the 'teacher' extra: pip install 'tunesmith[teacher]'")
        try:
            key = os.environ.get(args.api_key_env)
            return EndpointTeacher(args.teacher, args.teacher_model, key, args.timeout, args.retries)
        except TeacherError as e:
            raise UserError(f"--teacher {args.teacher}: {e}") from None
    if args.teacher_model:
        raise UserError(
            "--teacher-model names the model of an endpoint; a local --teacher is the model itself"
        )
    return LocalTeacher(args.teacher, args.trust_remote_code, args.batch_size)


def price_of(text: str | None) -> tuple[float, float] | None:
    if not text:
        return None
    try:
        a, b = (float(x) for x in text.split(","))
        if a < 0 or b < 0:
            raise ValueError
        return a, b
    except ValueError:
        raise UserError(
            f"--price {text}: IN,OUT, the price of a million prompt and new tokens (e.g. 0.15,0.6)"
        ) from None


SELF_TEACHER = (
    "note: the teacher is a trained run: drafts by the model you will continue pass its own habits on; "
    "in the loop benchmark 60 accepted drafts of v1's own made v2 worse (ROUGE-L -3.3, p 0.022; "
    "benchmarks/RESULTS.md, 'The loop'). A bigger teacher, or a person's review of every draft, is safer"
)


def teacher_note(spec: str) -> str | None:
    """What to say before drafting, when the teacher is a trained run (a student teaching itself)."""
    return SELF_TEACHER if is_run(spec) else None
