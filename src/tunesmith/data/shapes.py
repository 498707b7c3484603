"""Record shapes, and how each becomes a chat: chat {"messages": [...]}, {"prompt", "completion"},
{"question", "answer"} (a question set about documents, its "source" kept),
alpaca {"instruction", "input", "output"}, sharegpt {"conversations": [{"from", "value"}]},
preference {"prompt", "chosen", "rejected"}, and the hosted fine-tuning files as they are (OpenAI's
formats, for teams moving off hosted fine-tuning): an assistant message's `weight` (0: not in the loss)
in chat, and preference pairs as {"input": {"messages"}, "preferred_output", "non_preferred_output"}.
`detect` names a record's shape, `normalize` turns it into an `Example` or says what is wrong, field
by field. Reading files is formats.py's part."""

from __future__ import annotations

from tunesmith.data.labels import LABEL_SHAPES, label_shape, read_label
from tunesmith.data.records import Example
from tunesmith.data.tools import tool_calls, tool_definitions, without_tool_turns
from tunesmith.models.chat import learned_turns

ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
}
SHAPES = (
    "chat",
    "prompt-completion",
    "alpaca",
    "sharegpt",
    "preference",
    "preferred-output",
    "question-answer",
)
SHAPES += tuple(LABEL_SHAPES)  # a text with a class, classes or a number

SHAPE_KEYS = {
    "chat": ("messages",),
    "sharegpt": ("conversations",),
    "prompt-completion": ("prompt", "completion"),
    "question-answer": ("question", "answer"),  # a question set about documents; "source" stays as metadata
    "alpaca": ("instruction", "input", "output", "system"),
    "preference": ("prompt", "chosen", "rejected"),
    "preferred-output": ("input", "preferred_output", "non_preferred_output"),
    **{s: ("text", f) for s, f in LABEL_SHAPES.items()},
}
REQUIRED_KEYS = {
    "chat": ("messages",),
    "sharegpt": ("conversations",),
    "prompt-completion": ("prompt", "completion"),
    "question-answer": ("question", "answer"),
    "alpaca": ("instruction", "output"),
    "preference": ("prompt", "chosen", "rejected"),
    "preferred-output": ("input", "preferred_output", "non_preferred_output"),
    **{s: ("text", f) for s, f in LABEL_SHAPES.items()},
}


def detect(obj: dict) -> str | None:
    if "messages" in obj:
        return "chat"
    if "conversations" in obj:
        return "sharegpt"
    if "preferred_output" in obj or "non_preferred_output" in obj:
        return "preferred-output"
    if "chosen" in obj or "rejected" in obj:
        return "preference"
    if "prompt" in obj or "completion" in obj:
        return "prompt-completion"
    if "instruction" in obj or "output" in obj:
        return "alpaca"
    if "question" in obj and "answer" in obj:
        return "question-answer"
    return label_shape(obj)


def normalize(obj: object, shape: str | None = None) -> tuple[Example | None, list[tuple[str, str, str]]]:
    """-> (Example with path/line unset, or None; [(level, field, message)])."""
    if not isinstance(obj, dict):
        return None, [("error", "", f"expected a JSON object, got {type(obj).__name__}")]
    shape = shape or detect(obj)
    if shape is None:
        return None, [_unknown_shape(obj)]
    missing = [k for k in REQUIRED_KEYS[shape] if k not in obj]
    if missing:
        return None, [
            ("error", k, f"missing; the {shape} shape needs {', '.join(REQUIRED_KEYS[shape])}")
            for k in missing
        ]
    meta = {k: v for k, v in obj.items() if k not in SHAPE_KEYS[shape] and not k.startswith("_")}
    problems: list[tuple[str, str, str]] = [
        ("error", k, "holds an unpaired surrogate (e.g. \\ud800): not valid Unicode text")
        for k, v in meta.items()
        if not _encodable(k) or isinstance(v, str) and not _encodable(v)
    ]
    if shape in LABEL_SHAPES:
        return _labelled(obj, shape, meta, problems)
    tools = None
    if shape == "chat":
        tools, found = tool_definitions(obj, meta)
        problems += found
    rejected = None
    if shape == "preferred-output":
        msgs, names, rejected = _preferred_output(obj, problems)
        if msgs is None:
            return None, problems
    elif shape in ("prompt-completion", "preference", "question-answer"):
        ask = "question" if shape == "question-answer" else "prompt"
        answer_key = {"prompt-completion": "completion", "preference": "chosen"}.get(shape, "answer")
        msgs = [{"role": "user", "content": obj[ask]}, {"role": "assistant", "content": obj[answer_key]}]
        names = [ask, answer_key]
        if shape == "preference":
            rejected = obj["rejected"]
            msgs.append({"role": "assistant", "content": rejected})  # checked like the others, removed below
            names.append("rejected")
    elif shape == "alpaca":
        inp = obj.get("input") or ""
        if not isinstance(inp, str):
            problems.append(("error", "input", f"expected a string, got {type(inp).__name__}"))
            inp = ""
        instruction = obj["instruction"]
        user = f"{instruction}\n\n{inp}" if inp and isinstance(instruction, str) else instruction
        msgs = [{"role": "system", "content": obj["system"]}] if obj.get("system") else []
        msgs += [{"role": "user", "content": user}, {"role": "assistant", "content": obj["output"]}]
        names = (["system"] if obj.get("system") else []) + ["instruction", "output"]
    else:
        msgs, names = _message_list(obj, shape, problems)
        if msgs is None:
            return None, problems
    problems += _content_problems(msgs, names)
    if rejected is not None:
        msgs = msgs[:-1]
        if rejected == msgs[-1]["content"]:
            field = "non_preferred_output" if shape == "preferred-output" else "rejected"
            problems.append(
                ("error", field, f"same as {'preferred_output' if shape == 'preferred-output' else 'chosen'}")
            )
    if shape == "chat" and any(m.get("role") == "assistant" for m in msgs) and not learned_turns(msgs):
        problems.append(
            ("warning", "messages", "every assistant turn has weight 0: training learns nothing from it")
        )
    problems += _role_order(
        msgs, {"chat": "messages", "preferred-output": "input.messages"}.get(shape, shape)
    )
    if any(level == "error" for level, _, _ in problems):
        return None, problems
    return Example(msgs, "", 0, meta, rejected, tools), problems


def _labelled(obj: dict, shape: str, meta: dict, problems: list) -> tuple[Example | None, list]:
    """A text with a class, classes or a number (data/labels.py): the text as one user turn."""
    label, found = read_label(obj, shape)
    problems += found + _content_problems([{"content": obj["text"]}], ["text"])
    if any(level == "error" for level, _, _ in problems):
        return None, problems
    return Example([{"role": "user", "content": obj["text"]}], "", 0, meta, label=label), problems


def _unknown_shape(obj: dict) -> tuple[str, str, str]:
    hint = (
        "; an exported eval's item needs its run's template: eval --grader EVAL.json" if "item" in obj else ""
    )
    return (
        "error",
        "",
        "unknown shape: expected keys messages, prompt+completion, instruction+output, conversations, "
        "prompt+chosen+rejected, question+answer or text+label/labels/target; "
        f"found {', '.join(sorted(obj)) or 'none'}{hint}",
    )


def _content_problems(msgs: list[dict], names: list[str]) -> list[tuple[str, str, str]]:
    """Each message's content: present, a string, not blank, valid Unicode."""
    out = []
    for m, name in zip(msgs, names):
        if name is None:  # an assistant turn that is tool calls only
            continue
        c = m["content"]
        if c is None:
            out.append(("error", name, "missing"))
        elif not isinstance(c, str):
            out.append(("error", name, f"expected a string, got {type(c).__name__}"))
        elif not c.strip():
            out.append(("error", name, "empty"))
        elif not _encodable(c):
            out.append(("error", name, "holds an unpaired surrogate (e.g. \\ud800): not valid Unicode text"))
    return out


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _message_list(obj: dict, shape: str, problems: list) -> tuple[list[dict] | None, list[str]]:
    key = "messages" if shape == "chat" else "conversations"
    raw = obj[key]
    if not isinstance(raw, list) or not raw:
        problems.append(("error", key, "expected a non-empty list of messages"))
        return None, []
    msgs, names = [], []
    for i, m in enumerate(raw):
        f = f"{key}[{i}]"
        if not isinstance(m, dict):
            problems.append(("error", f, f"expected an object, got {type(m).__name__}"))
            continue
        weight = None
        if shape == "chat":
            role, content = m.get("role"), m.get("content")
            role = "system" if role == "developer" else role  # the system turn, as reasoning models name it
            extra = set(m) - {
                "role",
                "content",
                "name",
                "weight",
                "tool_calls",
                "function_call",
                "tool_call_id",
            }
            calls, found = tool_calls(m, f)
            problems += found
            if "weight" in m:
                weight = m["weight"]
                if role != "assistant":
                    problems.append(("error", f"{f}.weight", "only an assistant message has a weight"))
                elif type(weight) is not int or weight not in (0, 1):
                    problems.append(("error", f"{f}.weight", f"expected 0 or 1, got {weight!r}"))
            if "role" not in m:
                problems.append(("error", f"{f}.role", "missing"))
            elif role == "function":
                problems.append(
                    ("error", f"{f}.role", "the legacy form of a tool result: write it as role tool")
                )
            elif role not in ROLES and role != "tool":
                problems.append(
                    (
                        "error",
                        f"{f}.role",
                        f"unknown role {role!r}; expected system (or developer), user or assistant",
                    )
                )
        else:
            speaker = m.get("from")
            role, content = SHAREGPT_ROLES.get(speaker) if isinstance(speaker, str) else None, m.get("value")
            extra = set(m) - {"from", "value"}
            if role is None:
                problems.append(
                    (
                        "error",
                        f"{f}.from",
                        f"unknown speaker {m.get('from')!r}; expected human, gpt or system",
                    )
                )
        for k in sorted(extra):
            problems.append(("warning", f"{f}.{k}", "unknown key, ignored"))
        msg = {"role": role, "content": content, **({"weight": 0} if weight == 0 else {})}
        name = f"{f}.{'content' if shape == 'chat' else 'value'}"
        if shape == "chat" and calls:  # the calls are the answer; text beside them is optional
            msg = {**msg, "content": content or "", "tool_calls": calls}
            name = name if content else None
        if shape == "chat" and role == "tool" and isinstance(m.get("tool_call_id"), str):
            msg["tool_call_id"] = m["tool_call_id"]
        msgs.append(msg)
        names.append(name)
    return msgs, names


def _preferred_output(obj: dict, problems: list) -> tuple[list[dict] | None, list[str], str | None]:
    """A hosted preference pair: the conversation so far in `input.messages` (chat rules, ending with the
    user), the preferred and the non-preferred answer each as one assistant message."""
    inp = obj["input"]
    if not isinstance(inp, dict) or "messages" not in inp:
        problems.append(("error", "input", "expected an object with messages (the conversation so far)"))
        return None, [], None
    if inp.get("tools"):
        problems.append(
            ("error", "input.tools", "tool definitions are not supported yet; remove them or the pair")
        )
    for k in sorted(set(inp) - {"messages", "tools", "parallel_tool_calls"}):
        problems.append(("warning", f"input.{k}", "unknown key, ignored"))
    msgs, names = _message_list({"messages": inp["messages"]}, "chat", problems)
    if msgs is None:
        return None, [], None
    names = [f"input.{n}" for n in names]
    answers = []
    for key in ("preferred_output", "non_preferred_output"):
        out = obj[key]
        if not isinstance(out, list) or len(out) != 1 or not isinstance(out[0], dict):
            problems.append(("error", key, "expected a list of one assistant message"))
            return None, [], None
        m = out[0]
        if m.get("role") != "assistant":
            problems.append(("error", f"{key}[0].role", f"expected assistant, got {m.get('role')!r}"))
        for k in sorted(set(m) - {"role", "content"}):
            problems.append(("error", f"{key}[0].{k}", "not supported yet (an answer is its content)"))
        answers.append(m.get("content"))
        names.append(f"{key}[0].content")
    if msgs and msgs[-1]["role"] != "user":
        problems.append(("error", "input.messages", "the conversation must end with the user's turn"))
    chosen, rejected = answers
    return (
        [*msgs, {"role": "assistant", "content": chosen}, {"role": "assistant", "content": rejected}],
        names,
        rejected,
    )


def _role_order(msgs: list[dict], field: str) -> list[tuple[str, str, str]]:
    if any(m.get("role") not in (*ROLES, "tool") for m in msgs):
        return []  # already reported
    roles, problems = without_tool_turns(msgs, field)
    if problems:
        return problems
    body = roles[1:] if roles and roles[0] == "system" else roles
    if "system" in body:
        return [("error", field, "a system message may only come first")]
    if body == ["user"]:  # a prompt only: a reinforcement-tuning row, its references in other fields
        return [("warning", field, "no assistant turn: a prompt only, for --method grpo and eval --grader "
                 "(supervised training refuses it)")]  # fmt: skip
    if "assistant" not in body:
        return [("error", field, "no assistant turn: nothing to learn or score")]
    for i, r in enumerate(body):
        want = "user" if i % 2 == 0 else "assistant"
        if r != want:
            return [
                (
                    "error",
                    field,
                    f"wrong role order: turn {i + 1} is {r}, expected {want} (user and assistant alternate, "
                    "user first)",
                )
            ]
    if body[-1] != "assistant":
        return [("warning", field, "ends with a user turn, which is not learned from")]
    return []
