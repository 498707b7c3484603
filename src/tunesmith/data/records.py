"""The records every reader, checker and preparer of data shares: an `Example` (a chat, where it
came from, its metadata), an `Issue` (what is wrong, and where), and how to read a file
(`ReadOptions`). Kept apart from the readers (formats.py) so code that only reports or carries
examples does not depend on how files are parsed."""

from __future__ import annotations

from dataclasses import dataclass, field

from tunesmith.data.labels import label_json, task_of

DEFAULT_PAIR_TEMPLATE = "{input}"


@dataclass
class Issue:
    path: str
    line: int
    field: str
    message: str
    level: str = "error"

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else self.path
        return f"{where}: {self.field + ': ' if self.field else ''}{self.message}"

    def as_dict(self) -> dict:
        return {
            "path": self.path,
            "line": self.line,
            "field": self.field,
            "message": self.message,
            "level": self.level,
        }


@dataclass
class Example:
    messages: list[dict]
    path: str
    line: int
    meta: dict = field(default_factory=dict)
    rejected: str | None = None  # preference pairs: messages end with the chosen answer
    tools: list | None = None  # the tool definitions a chat's tool calls use (data/tools.py)
    label: str | list | float | None = None  # a class, classes or a number (data/labels.py)

    @property
    def kind(self) -> str:
        """preference, chat, or prompt: a prompt-only row (a reinforcement-tuning file's), for GRPO and
        graders."""
        if self.rejected is not None:
            return "preference"
        if self.label is not None:
            return task_of(self.label)
        return "chat" if any(m["role"] == "assistant" for m in self.messages) else "prompt"

    def to_json(self) -> dict:
        if self.label is not None:  # the text is the one user turn
            return {"text": self.messages[0]["content"], **label_json(self.label), **self.meta}
        out = {"messages": self.messages}
        if self.rejected is not None:
            out["rejected"] = self.rejected
        if self.tools is not None:
            out["tools"] = self.tools
        return {**out, **{k: v for k, v in self.meta.items() if k not in out}}


@dataclass
class ReadOptions:
    format: str | None = None  # force a shape instead of detecting it
    template: str = DEFAULT_PAIR_TEMPLATE  # folder pairs: user turn built from {input} (and {name})
    system: str | None = None  # folder pairs: optional system prompt
    fields: dict = field(default_factory=dict)  # data files: our key -> the record's own (--text-field ...)
    record_template: str | None = None  # data files: the text or prompt built from the record's fields
