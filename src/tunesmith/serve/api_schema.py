"""The request bodies `tunesmith serve` accepts, as strict pydantic models (FastAPI's own way).

Why strict, and why here rather than field-by-field checks in the handlers: the reliability attack
sent 79 malformed bodies and 16 of them got a 500 (NaN or 1e400 for `max_tokens`, `"text": 5` in
a content part, `"stream": "no"` taken as true, a seed of 2^70, 5,000 levels of nesting). A schema
says in one place what each field may be: strict types (no "no" for a boolean, no 1.0 for an
integer), finite numbers, and ranges; every violation becomes a JSON 400 naming the field.
Limits that depend on the server's flags (--max-tokens) are checked by the handler after this.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    model_validator,
)

MAX_DEPTH = (
    32  # a chat body is 4 levels deep (body, messages, message, content parts); 5,000 overflowed the parser
)
Finite = Annotated[float, Field(allow_inf_nan=False)]


def _unicode(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(
            "holds an unpaired surrogate (e.g. \\ud800), which is not valid Unicode text"
        ) from None
    return text


Text = Annotated[
    StrictStr, AfterValidator(_unicode)
]  # JSON may escape a lone surrogate; the tokenizer cannot take it
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)
_BRACKET = re.compile(rb"[\[\]{}]")


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class TextPart(_Body):
    type: StrictStr
    text: Text | None = None

    @model_validator(mode="after")
    def _has_text(self):
        if self.type == "text" and self.text is None:
            raise ValueError("a text part needs a string 'text'")
        return self


class Message(_Body):
    role: Literal["system", "developer", "user", "assistant"]
    content: Text | list[TextPart]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text or "" for p in self.content if p.type == "text")


class StreamOptions(_Body):
    include_usage: StrictBool = False


class _Generation(_Body):
    model: StrictStr
    max_tokens: StrictInt | None = None
    max_completion_tokens: StrictInt | None = None
    n: StrictInt | None = None
    temperature: Annotated[Finite, Field(ge=0, le=2)] | None = None
    top_p: Annotated[Finite, Field(ge=0, le=1)] | None = None
    seed: Annotated[StrictInt, Field(ge=-(2**63), le=2**64 - 1)] | None = None  # what torch.manual_seed takes
    stop: Text | Annotated[list[Text], Field(max_length=4)] | None = None
    stream: StrictBool = False
    stream_options: StreamOptions | None = None


class ChatRequest(_Generation):
    messages: Annotated[list[Message], Field(min_length=1)]


class CompletionRequest(_Generation):
    prompt: Text | Annotated[list[Text], Field(min_length=1, max_length=1)]


class FeedbackRequest(_Body):
    """POST /v1/feedback (serve --capture): what an app's user said about one answer."""

    id: Annotated[Text, Field(min_length=1, max_length=100)]
    rating: Literal["up", "down"] | None = None
    correction: Annotated[Text, Field(min_length=1, max_length=100_000)] | None = None

    @model_validator(mode="after")
    def _says_something(self):
        if self.rating is None and self.correction is None:
            raise ValueError("give a rating ('up' or 'down'), a correction, or both")
        return self


MAX_INPUTS = 256  # texts in one /v1/classify request: a few forward passes, not an unbounded queue


class ClassifyRequest(_Body):
    """POST /v1/classify: texts for a run trained with --task (a label, labels or a value for each)."""

    model: StrictStr
    input: Text | Annotated[list[Text], Field(min_length=1, max_length=MAX_INPUTS)]

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


def too_deep(body: bytes, limit: int = MAX_DEPTH) -> bool:
    """Is the JSON nested deeper than `limit`? Counted on the brackets outside strings, before parsing."""
    depth = 0
    for b in _BRACKET.findall(_STRING.sub(b"", body)):
        depth += 1 if b in (b"[", b"{") else -1
        if depth > limit:
            return True
    return False


SERVE_MODELS = (
    TextPart,
    Message,
    StreamOptions,
    ChatRequest,
    CompletionRequest,
    FeedbackRequest,
    ClassifyRequest,
)


def _fields(models) -> set[str]:
    names: set[str] = set()
    for m in models:
        names |= set(m.model_fields)
    return names


class BadBody(ValueError):
    """A request body that cannot be taken: the status, the top-level field ('' for the body) and why."""

    def __init__(self, status: int, message: str, param: str = "", code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def read_json(body: bytes, schema, models=SERVE_MODELS):
    """Bytes -> a validated `schema` instance: depth capped before parsing, JSON, an object, the schema;
    anything else a BadBody naming the field. `models` are the classes whose field names a location
    may hold (the schema and the models nested in it)."""
    if too_deep(body):
        raise BadBody(400, f"request body is nested more than {MAX_DEPTH} levels deep", code="invalid_json")
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as e:
        raise BadBody(400, f"request body is not valid JSON: {e}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise BadBody(400, "request body must be a JSON object", code="invalid_json")
    try:
        return schema.model_validate(data)
    except ValidationError as e:
        param, message = first_problem(e, models)
        raise BadBody(400, message, param) from None


_KIND = {
    "str": (str, "a string"),
    "list": (list, "a list"),
    "int": (int, "an integer"),
    "float": (float, "a number"),
}


def _member(tag: str) -> str:
    """'list[...]' -> 'list'; 'function-after[_unicode(), str]' (a validated str) -> 'str'."""
    if tag.startswith("function-"):
        return tag.rstrip("]").rsplit(", ", 1)[-1]
    return tag.split("[")[0]


def first_problem(e: ValidationError, models=SERVE_MODELS) -> tuple[str, str]:
    """(top-level field, one sentence) for the most specific thing wrong with a body. Pydantic puts the
    union member it tried into the location ('str', 'list[...]'); those are dropped from the path, and
    when every member failed at the same place the sentence says what the field may be."""
    fields = _fields(models)
    errs = []
    for err in e.errors(include_url=False):
        if err["type"] == "extra_forbidden":
            name = str(err["loc"][-1])
            return name, f"unknown field {name[:60]!r}; the fields are {', '.join(sorted(fields))}"
        loc = tuple(x for x in err["loc"] if isinstance(x, int) or x in fields)
        member = next((_member(x) for x in err["loc"] if isinstance(x, str) and x not in fields), None)
        errs.append((loc, member, err))
    deepest = max(len(loc) for loc, _, _ in errs)
    here = [(loc, member, err) for loc, member, err in errs if len(loc) == deepest]
    loc, _, err = here[0]
    value = err.get("input")
    if len(here) > 1 and all(m in _KIND for _, m, _ in here):
        fitting = [x for x in here if isinstance(value, _KIND[x[1]][0])]
        if fitting:
            loc, _, err = fitting[0]
            msg = err["msg"]
        else:
            msg = "must be " + " or ".join(_KIND[m][1] for _, m, _ in here)
    else:
        msg = err["msg"]
    msg = msg.removeprefix("Value error, ")
    path = "".join(f"[{x}]" if isinstance(x, int) else (f".{x}" if i else str(x)) for i, x in enumerate(loc))
    shown = type(value).__name__ if isinstance(value, (dict, list)) else repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    where = f"'{path}'" if path else "the body"
    top = str(loc[0]) if loc else ""
    if err["type"] == "missing":
        return top, f"{where} is required"
    return top, f"{where}: {msg[0].lower() + msg[1:]} (got {shown})"
