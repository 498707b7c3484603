"""The hosted graders that ask a model: `score_model` (a number in `range`) and `label_model` (1 when
the model's label is one of `passing_labels`). The grader's messages, templated, go to the judge that
`--grader-judge` names: a local model (a path, an alias or a run, loaded once, batched as `eval`
generates) or an OpenAI-compatible URL (llama.cpp's server, Ollama, vLLM, or a hosted API; the
'teacher' extra), asked with the grader's `model` unless `--grader-judge-model` names another.

The hosted service asks for structured output ({"result": float, "steps": [...]} for a score, one of
the labels for a label); small local servers and models do not all support that, so the request is
an instruction appended to the last message, and the reply is read leniently: a JSON "result", else
the first number (a score) or the first label named (a label). As documented, a score is clipped to
`range` and a reply with no number grades 0; here such replies are also counted and reported, since a
judge that cannot answer in form makes the metric meaningless.
"""

from __future__ import annotations

import json
import os
import re
from concurrent.futures import ThreadPoolExecutor

from tunesmith.models.endpoint import Endpoint, EndpointError
from tunesmith.models.loading import generate, load
from tunesmith.scoring.templates import GraderError, number, render

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
TEXT_ITEMS = ("input_text", "output_text", "text")
LOCAL_MAX_TOKENS = 256  # a local judge's reply cap: the hosted default (32768) is for reasoning models
_local: dict = {}  # a local judge model, loaded once per process


def _messages(spec: dict, where: str) -> list[dict]:
    msgs = spec.get("input")
    if not isinstance(msgs, list) or not msgs:
        raise GraderError(f"{where}.input: expected a list of messages with role and content")
    out = []
    for i, m in enumerate(msgs):
        w = f"{where}.input[{i}]"
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise GraderError(f"{w}.role: expected one of {', '.join(ROLES)}")
        c = m.get("content")
        if isinstance(c, dict):
            c = [c]
        if isinstance(c, list):
            bad = [x.get("type") for x in c if not isinstance(x, dict) or x.get("type") not in TEXT_ITEMS]
            if bad:
                raise GraderError(f"{w}.content: {bad[0]!r} items are not supported here (text only)")
            c = "".join(x.get("text", "") for x in c)
        if not isinstance(c, str):
            raise GraderError(f"{w}.content: expected text")
        out.append({"role": ROLES[m["role"]], "content": c})
    return out


def _form(spec: dict, where: str):
    """(instruction appended to the prompt, reply -> value or None) for the grader's kind."""
    if spec["type"] == "score_model":
        lo, hi = (
            spec.get("range", [0, 1])[:2] if isinstance(spec.get("range", [0, 1]), list) else (None, None)
        )
        if not (number(lo) and number(hi) and lo < hi):
            raise GraderError(f"{where}.range: expected [low, high], two numbers with low < high")
        text = f'Reply with a JSON object {{"result": N}}, where N is a number from {lo:g} to {hi:g}.'
        return text, lambda reply: None if (v := parse_score(reply)) is None else min(max(v, lo), hi)
    labels, passing = spec.get("labels"), spec.get("passing_labels")
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) and x for x in labels):
        raise GraderError(f"{where}.labels: expected a list of label strings")
    if not isinstance(passing, list) or not set(passing) <= set(labels) or not passing:
        raise GraderError(f"{where}.passing_labels: expected a non-empty subset of labels")
    text = "Reply with exactly one of these labels and nothing else: " + ", ".join(labels) + "."
    return text, lambda reply: None if (lab := parse_label(reply, labels)) is None else float(lab in passing)


def parse_score(reply: str) -> float | None:
    """A JSON object's "result", else the first number in the reply; None when there is none."""
    m = re.search(r"\{.*\}", reply, re.S)
    if m:
        try:
            v = json.loads(m.group()).get("result")
            if number(v):
                return float(v)
        except (ValueError, AttributeError):
            pass
    m = re.search(r"-?\d+(?:\.\d+)?", reply)
    return float(m.group()) if m else None


def parse_label(reply: str, labels: list[str]) -> str | None:
    """The label the reply gives: a JSON "result", the whole reply, else the first label it names."""
    m = re.search(r"\{.*\}", reply, re.S)
    if m:
        try:
            reply = str(json.loads(m.group()).get("result", reply))
        except (ValueError, AttributeError):
            pass
    low = {x.lower(): x for x in labels}
    bare = reply.strip().strip("\"'`.!* \n").lower()
    if bare in low:
        return low[bare]
    found = [
        (mm.start(), x) for x in labels if (mm := re.search(rf"(?<!\w){re.escape(x)}(?!\w)", reply, re.I))
    ]
    return min(found)[1] if found else None


def _asker(spec: dict, ctx, where: str):
    """convs -> replies (None for a reply that failed), from the judge the command line names."""
    sp = spec.get("sampling_params") or {}
    if not isinstance(sp, dict):
        raise GraderError(f"{where}.sampling_params: expected an object")
    temperature = float(sp.get("temperature") or 0.0)
    seed = sp.get("seed")
    want = sp.get("max_completions_tokens") or sp.get("max_tokens")
    if ctx.judge.startswith(("http://", "https://")):
        model = ctx.judge_model or spec.get("model")
        try:
            ep = Endpoint(ctx.judge, model, os.environ.get("OPENAI_API_KEY"), 120.0, 3, role="grader model")
        except EndpointError as e:
            raise GraderError(f"--grader-judge {ctx.judge}: {e}") from None
        max_tokens = int(want or 1024)

        def one(conv):
            try:
                return ep.draft(conv, max_tokens, temperature, seed).text
            except EndpointError as e:
                if e.fatal:
                    raise GraderError(f"{where}: --grader-judge {ctx.judge}: {e}") from None
                return None

        def ask(convs):
            with ThreadPoolExecutor(4) as pool:
                return list(pool.map(one, convs))

        return ask
    max_tokens = min(int(want or LOCAL_MAX_TOKENS), LOCAL_MAX_TOKENS)

    def ask_local(convs):
        if ctx.judge not in _local:
            _local[ctx.judge] = load(ctx.judge, trust_remote_code=ctx.trust_remote_code, quiet=True)
        j = _local[ctx.judge]
        outs = generate(j.model, j.tokenizer, convs, max_new_tokens=max_tokens, batch_size=8,
                        temperature=temperature, seed=seed)  # fmt: skip
        return [o.text for o in outs]

    return ask_local


def model_grader(g, ctx):
    """run(roots, wheres) -> grades for a score_model or label_model grader `g` (scoring/hosted.Grader)."""
    if not ctx.judge:
        raise GraderError(
            f"{g.where}: a {g.kind} grader asks a model: add --grader-judge MODEL (a local model, alias or "
            "run) or --grader-judge URL (an OpenAI-compatible endpoint)"
        )
    msgs = _messages(g.spec, g.where)
    instruction, read = _form(g.spec, g.where)
    ask = _asker(g.spec, ctx, g.where)

    def run(roots, wheres):
        convs = []
        for r, w in zip(roots, wheres):
            conv = [{"role": m["role"], "content": render(m["content"], r, w)} for m in msgs]
            if conv[-1]["role"] == "user":
                conv[-1] = {"role": "user", "content": f"{conv[-1]['content']}\n\n{instruction}"}
            else:
                conv.append({"role": "user", "content": instruction})
            convs.append(conv)
        out = []
        for reply in ask(convs):
            v = None if reply is None else read(reply)
            g.invalid += v is None
            out.append(0.0 if v is None else v)
        return out

    return run
