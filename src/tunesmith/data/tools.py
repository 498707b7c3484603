"""Tool calling in chat examples, as hosted fine-tuning files write it: `tools` (the function
definitions) beside `messages`, an assistant turn's `tool_calls`, and the `tool` turns that carry each
call's result. Training learns the calls (assistant turns, rendered by the model's own chat template,
which must know tools: models/chat.py checks) and not the results (context, like the user's turns).
The legacy `functions`, `function_call` and role `function` are named as errors with the fix, not
converted silently."""

from __future__ import annotations

import json

from tunesmith.errors import UserError

Problem = tuple[str, str, str]


def tool_definitions(obj: dict, meta: dict) -> tuple[list | None, list[Problem]]:
    """The chat's `tools`, checked (each {"type": "function", "function": {"name", ...}}); taken out of
    the metadata. `parallel_tool_calls` (a sampling setting) is accepted and not used."""
    meta.pop("parallel_tool_calls", None)
    problems: list[Problem] = []
    if obj.get("functions"):
        meta.pop("functions", None)
        problems.append(("error", "functions", "the legacy form of tools: write them as tools"))
    tools = obj.get("tools")
    meta.pop("tools", None)
    if tools is None:
        return None, problems
    if not isinstance(tools, list) or not tools:
        return None, [*problems, ("error", "tools", "expected a non-empty list of tool definitions")]
    for i, t in enumerate(tools):
        fn = t.get("function") if isinstance(t, dict) else None
        if not isinstance(t, dict) or t.get("type", "function") != "function" or not isinstance(fn, dict):
            problems.append(("error", f"tools[{i}]", 'expected {"type": "function", "function": {...}}'))
        elif not isinstance(fn.get("name"), str) or not fn["name"]:
            problems.append(("error", f"tools[{i}].function.name", "missing"))
    return tools, problems


def tool_calls(m: dict, f: str) -> tuple[list | None, list[Problem]]:
    """An assistant message's tool calls, normalized for chat templates (the arguments parsed from
    their JSON text into an object, as the templates of Qwen, Llama and others expect)."""
    if m.get("function_call"):
        return None, [
            ("error", f"{f}.function_call", "the legacy form of a tool call: write it as tool_calls")
        ]
    calls = m.get("tool_calls")
    if not calls:
        return None, []
    if m.get("role") != "assistant":
        return None, [("error", f"{f}.tool_calls", "only an assistant message makes tool calls")]
    if not isinstance(calls, list):
        return None, [("error", f"{f}.tool_calls", "expected a list of calls")]
    out, problems = [], []
    for i, c in enumerate(calls):
        w = f"{f}.tool_calls[{i}]"
        fn = c.get("function") if isinstance(c, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            problems.append(("error", f"{w}.function.name", "missing"))
            continue
        args = fn.get("arguments", {})
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except ValueError as e:
                problems.append(("error", f"{w}.function.arguments", f"not JSON ({e})"))
                continue
        if not isinstance(args, dict):
            problems.append(("error", f"{w}.function.arguments", "expected a JSON object"))
            continue
        call = {"type": "function", "function": {"name": fn["name"], "arguments": args}}
        out.append({**({"id": c["id"]} if isinstance(c.get("id"), str) else {}), **call})
    return out, problems


def without_tool_turns(msgs: list[dict], field: str) -> tuple[list[str], list[Problem]]:
    """The roles with each tool exchange (an assistant's calls and the tool turns answering them) taken
    out, so the rest must alternate as any chat does; a tool turn that answers no call, or calls whose
    results are followed by no answer, are errors."""
    roles: list[str] = []
    for i, m in enumerate(msgs):
        r = m.get("role")
        if r != "tool":
            roles.append(r)
            continue
        prev = msgs[i - 1] if i else {}
        if not (prev.get("role") == "tool" or prev.get("tool_calls")):
            return roles, [("error", field, f"turn {i + 1} is a tool result that answers no tool call")]
        if i + 1 == len(msgs):
            return roles, [
                ("error", field, "ends with a tool result: the assistant's turn after it is missing")
            ]
        if msgs[i + 1].get("role") != "tool":  # the last result of this exchange
            if msgs[i + 1].get("role") != "assistant":
                return roles, [
                    ("error", field, f"turn {i + 2} follows a tool result; the assistant's turn must")
                ]
            roles.pop()  # the calls and their results are one exchange inside the assistant's turn
    return roles, []


def uses_tools(ex) -> bool:
    return ex.tools is not None or any(m["role"] == "tool" or m.get("tool_calls") for m in ex.messages)


def refuse_tools(examples, doing: str) -> None:
    """Where tool calls would be lost (generation answers in text; preference methods), say so by line."""
    ex = next((e for e in examples if uses_tools(e)), None)
    if ex is not None:
        raise UserError(
            f"{ex.path}:{ex.line}: tool calls: {doing} does not handle them yet (supervised training does); "
            "leave such examples out here"
        )
