"""`review add --captures FILE`: completions a hosted API stored (`store: true`) and a team exported
as JSONL become a review queue, as the server's own captures do: a reviewer accepts, corrects or
rejects each answer, and `review export --sft` turns the kept ones into the next version's data
(distillation from stored completions, with a person in between).

A line is either a chat completion object as the API returns it (`choices[0].message`, `model`,
`metadata`), with the request's messages beside it under `messages` (a list, or the stored-messages
route's answer as it comes; `input_messages` and `request.messages` are read too), or a chat example
whose last turn is the answer (the dashboard's export to a fine-tuning file), with an optional
`metadata` object.
`--metadata KEY=VALUE` keeps the lines whose metadata has that value (all of them, when repeated);
KEY `model` also matches the completion's model. A line that is neither is an error naming its
line and field; an answer that is a tool call, not text, too.
"""

from __future__ import annotations

import json
from pathlib import Path

from tunesmith.errors import UserError

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


def parse_filters(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise UserError(f"--metadata {item!r}: expected KEY=VALUE, e.g. --metadata topic=billing")
        out[key.strip()] = value.strip()
    return out


def _text(content, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [
            p
            for p in content
            if isinstance(p, dict) and p.get("type") in ("text", "input_text", "output_text")
        ]
        if len(parts) == len(content):
            return "".join(str(p.get("text") or "") for p in parts)
    raise UserError(f"{where}: expected text content (a string or text parts)")


def _messages(msgs, where: str) -> list[dict]:
    if isinstance(msgs, dict) and msgs.get("object") == "list":  # the stored-messages route's answer, as is
        msgs = msgs.get("data")
    if not isinstance(msgs, list) or not msgs:
        raise UserError(f"{where}: expected the request's messages, a non-empty list")
    out = []
    for i, m in enumerate(msgs):
        w = f"{where}[{i}]"
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise UserError(
                f"{w}.role: expected system, developer, user or assistant (tool turns are not read)"
            )
        out.append({"role": ROLES[m["role"]], "content": _text(m.get("content"), f"{w}.content")})
    return out


def _answer(message, where: str) -> str:
    if not isinstance(message, dict):
        raise UserError(f"{where}: expected the answer message")
    if message.get("tool_calls") or message.get("function_call"):
        raise UserError(f"{where}.tool_calls: a tool call, not a text answer; tool turns are not read yet")
    text = _text(message.get("content"), f"{where}.content")
    if not text.strip():
        raise UserError(f"{where}.content: empty")
    return text


def parse_line(rec, where: str) -> tuple[list[dict], str, dict]:
    """(the prompt, the answer, {"model", "metadata", "id"}) of one exported line."""
    if not isinstance(rec, dict):
        raise UserError(f"{where}: expected a JSON object")
    meta = rec.get("metadata") or {}
    if not isinstance(meta, dict):
        raise UserError(f"{where}: metadata: expected an object")
    if "choices" in rec:
        choices = rec["choices"]
        if not isinstance(choices, list) or not choices:
            raise UserError(f"{where}: choices: expected a list with the answer")
        answer = _answer(choices[0].get("message") if isinstance(choices[0], dict) else None,
                         f"{where}: choices[0].message")  # fmt: skip
        req = rec.get("request") if isinstance(rec.get("request"), dict) else {}
        key = next((k for k in ("messages", "input_messages") if k in rec), None)
        if key is None and "messages" not in req:
            raise UserError(
                f"{where}: messages: missing; a stored completion needs its request's messages beside it "
                "(GET /v1/chat/completions/ID/messages gives them)"
            )
        prompt = _messages(rec[key] if key else req["messages"], f"{where}: {key or 'request.messages'}")
    elif "messages" in rec:
        msgs = _messages(rec["messages"], f"{where}: messages")
        if msgs[-1]["role"] != "assistant":
            raise UserError(f"{where}: messages: the last turn is not an answer (assistant)")
        prompt, answer = msgs[:-1], msgs[-1]["content"]
    else:
        raise UserError(
            f"{where}: expected a chat completion (choices, messages) or a chat example (messages)"
        )
    if not any(m["role"] == "user" for m in prompt):
        raise UserError(f"{where}: messages: no user turn before the answer")
    return prompt, answer, {"model": rec.get("model"), "metadata": meta, "id": rec.get("id")}


def read_stored(path: str, filters: dict[str, str]) -> tuple[list[tuple[int, list[dict], str, dict]], int]:
    """The lines that pass the filters as (line, prompt, answer, info), and how many lines there were."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"review add --captures {path}: no such file")
    rows, total = [], 0
    with p.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            total += 1
            where = f"{path}:{n}"
            try:
                rec = json.loads(line)
            except ValueError as e:
                raise UserError(f"{where}: invalid JSON ({e})") from None
            prompt, answer, info = parse_line(rec, where)
            meta = {**({"model": info["model"]} if info["model"] else {}), **info["metadata"]}
            if all(str(meta.get(k)) == v for k, v in filters.items()):
                rows.append((n, prompt, answer, info))
    if not total:
        raise UserError(f"review add --captures {path}: no completions in it")
    if not rows:
        said = ", ".join(f"{k}={v}" for k, v in filters.items())
        raise UserError(f"review add --captures {path}: none of its {total} completions has metadata {said}")
    return rows, total
