"""LLM-as-judge: a local model reads a rubric, the question, the reference and an answer, and
replies with a grade from 1 to 10. Used by `tunesmith eval --judge` (a metric) and by the
GRPO grader `judge` (a reward). Any model tunesmith can load works; a judge no larger than the
model it grades is weak, so read its scores beside the other metrics, not alone."""

from __future__ import annotations

import re
from pathlib import Path

from tunesmith.errors import UserError
from tunesmith.models.loading import generate, load

TEMPLATE = (
    "You grade an answer against a rubric.\n\nRubric:\n{rubric}\n\nQuestion:\n{prompt}\n\n"
    "{reference}Answer to grade:\n{completion}\n\n"
    "Reply with one number from 1 (poor) to 10 (excellent) and nothing else."
)


def judge_score(text: str) -> float:
    """The first number in a judge's reply, clamped to 1-10 and scaled to 0-1; 0 when there is none."""
    m = re.search(r"\d+", text)
    return min(max(int(m.group()), 1), 10) / 10 if m else 0.0


def make_judge(model_spec: str, rubric: str, trust_remote_code: bool = False, *, where: str = "--judge"):
    """fn(prompts, completions, references) -> grades in 0-1. The judge model loads on first use."""
    if not rubric:
        raise UserError(f"{where}: needs --rubric FILE (what a good answer does, in words)")
    if not Path(rubric).is_file():
        raise UserError(f"--rubric {rubric}: no such file")
    text = Path(rubric).read_text().strip()
    if not text:
        raise UserError(f"--rubric {rubric}: is empty; write what a good answer does")
    state: dict = {}

    def fn(prompts, outs, refs):
        if "judge" not in state:
            state["judge"] = load(model_spec, trust_remote_code=trust_remote_code, quiet=True)
        j = state["judge"]
        convs = [
            [
                {
                    "role": "user",
                    "content": TEMPLATE.format(
                        rubric=text,
                        prompt=p[-1]["content"] if p else "",
                        completion=o,
                        reference=f"Reference answer (for comparison):\n{r}\n\n" if r else "",
                    ),
                }
            ]
            for p, o, r in zip(prompts, outs, refs)
        ]
        return [
            judge_score(g.text) for g in generate(j.model, j.tokenizer, convs, max_new_tokens=4, batch_size=8)
        ]

    return fn
