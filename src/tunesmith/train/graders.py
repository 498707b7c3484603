"""GRPO's graders: what scores a sampled answer, as a weighted sum of KIND[:ARG][*WEIGHT] terms (text
metrics against the reference, the house-style rules, a length target, your own Python function, a
local LLM judge). Every grader returns one score in [0, 1] per answer."""

from __future__ import annotations

import importlib
import math
import sys
from dataclasses import dataclass
from pathlib import Path

from tunesmith.errors import UserError
from tunesmith.scoring import hosted
from tunesmith.scoring import metrics as M
from tunesmith.scoring.judge import make_judge
from tunesmith.scoring.style import check_style, load_style
from tunesmith.scoring.templates import sample_of


@dataclass
class Grader:
    name: str
    weight: float
    fn: object  # (prompts: list[list[dict]], completions: list[str], references: list[str]) -> list[float]
    rows: bool = False  # fn also takes rows: [(the data row's fields, "file:line")] (hosted graders)


GRADER_HELP = (
    "comma-separated KIND[:ARG][*WEIGHT]: rouge1, rouge2, rougeL, bleu, chrf (against the example's "
    "answer), format (the --style spec: share of rules passed), length:N (closeness to N words), "
    "python:MODULE:FUNCTION (your function(prompt, completion, reference) -> float), "
    "judge[:MODEL] (a local model grades with --rubric), hosted:FILE.json (hosted fine-tuning's grader JSON: "
    "each grader in the file, scored as `eval --grader` does)"
)


def parse_graders(
    spec: str,
    *,
    style: str = "",
    rubric: str = "",
    judge_default: str = "",
    trust_remote_code: bool = False,
    hosted_ctx: hosted.Context | None = None,
) -> list[Grader]:

    if not spec.strip():
        raise UserError(f"--method grpo needs --graders ({GRADER_HELP})")
    graders = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        body, _, w = item.partition("*")
        try:
            weight = float(w) if w else 1.0
        except ValueError:
            raise UserError(
                f"--graders {item!r}: weight {w!r} is not a number (write e.g. rougeL*0.5)"
            ) from None
        kind, _, arg = body.partition(":")
        kind = kind.strip()
        if kind in ("rouge1", "rouge2", "rougeL", "rougeLsum"):

            def fn(prompts, outs, refs, k=kind):
                return [M.rouge(o, r)[k] / 100 for o, r in zip(outs, refs)]
        elif kind in ("bleu", "chrf"):

            def fn(prompts, outs, refs, k=kind):
                return [M.scores(o, r)[k] / 100 for o, r in zip(outs, refs)]
        elif kind == "format":
            if not style:
                raise UserError(
                    "--graders format: needs --style SPEC.yaml (the house-style spec of `tunesmith eval`)"
                )

            rules = load_style(style)
            if not rules:
                raise UserError(f"--style {style}: has no rules to grade with")

            def fn(prompts, outs, refs, rules=rules):
                return [sum(check_style(rules, o).values()) / len(rules) for o in outs]
        elif kind == "length":
            try:
                target = int(arg)
                assert target > 0
            except (ValueError, AssertionError):
                raise UserError(
                    f"--graders {item!r}: length needs a target in words, e.g. length:120"
                ) from None

            def fn(prompts, outs, refs, n=target):
                return [max(0.0, 1 - abs(len(o.split()) - n) / n) for o in outs]
        elif kind == "python":
            fn = _python_grader(item, arg)
        elif kind == "judge":
            fn = make_judge(arg or judge_default, rubric, trust_remote_code, where=f"--graders {item!r}")
        elif kind == "hosted":
            if not arg:
                raise UserError(f"--graders {item!r}: expected hosted:FILE.json (a hosted grader's JSON)")
            ctx = hosted_ctx or hosted.Context(trust_remote_code=trust_remote_code)
            graders += [
                Grader(g.name, weight, _hosted_fn(g), rows=True) for g in hosted.load(arg, ctx, "--graders")
            ]
            continue
        else:
            raise UserError(f"--graders {item!r}: unknown grader {kind!r}; {GRADER_HELP}")
        graders.append(Grader(body.strip(), weight, fn))
    return graders


def _python_grader(item: str, arg: str):
    module, _, func = arg.rpartition(":")
    if not module or not func:
        raise UserError(
            f"--graders {item!r}: expected python:MODULE:FUNCTION, e.g. python:mygraders:has_action_items"
        )
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))  # a graders.py beside the user's data
    try:
        f = getattr(importlib.import_module(module), func)
    except ImportError as e:
        raise UserError(f"--graders {item!r}: cannot import {module} ({e})") from None
    except AttributeError:
        raise UserError(f"--graders {item!r}: {module} has no function {func}") from None

    def fn(prompts, outs, refs):
        vals = []
        for p, o, r in zip(prompts, outs, refs):
            v = f(prompt=p[-1]["content"] if p else "", completion=o, reference=r)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
                raise UserError(
                    f"--graders {item!r}: {module}.{func} returned {v!r}; expected a finite number"
                )
            vals.append(float(v))
        return vals

    return fn


def _hosted_fn(g: hosted.Grader):
    def fn(prompts, outs, refs, rows):
        return g.score([sample_of(o) for o in outs], [r[0] for r in rows], [r[1] for r in rows])

    return fn


def grade(graders: list[Grader], prompts, outs, refs, rows=None) -> tuple[list[float], dict[str, float]]:
    """Weighted sum per completion, and the mean of each grader (for the log). `rows`: each completion's
    data row and its file:line, for the hosted graders."""
    total = [0.0] * len(outs)
    means = {}
    for g in graders:
        vals = g.fn(prompts, outs, refs, rows) if g.rows else g.fn(prompts, outs, refs)
        means[g.name] = sum(vals) / max(len(vals), 1)
        total = [t + g.weight * v for t, v in zip(total, vals)]
    return total, means
