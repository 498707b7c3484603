"""`tunesmith generate`: the base model, or an adapter attached, on a prompt or a file of prompts."""

from __future__ import annotations

from pathlib import Path

from tunesmith.data.formats import Issue, normalize, read_records
from tunesmith.errors import UserError
from tunesmith.models.chat import last_assistant


def read_prompts(path: str) -> list[list[dict]]:
    """JSONL (chat examples: the conversation up to the last answer; or {"prompt": ...}), else one
    prompt a line."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"--input {path}: no such file")
    if p.suffix in (".jsonl", ".json"):
        convs = []
        for line, obj in read_records(p):
            if isinstance(obj, Issue):
                raise UserError(str(obj))
            if isinstance(obj, dict) and "prompt" in obj and "completion" not in obj:
                convs.append([{"role": "user", "content": str(obj["prompt"])}])
                continue
            ex, problems = normalize(obj)
            if ex is None:
                raise UserError(f"{path}:{line}: {'; '.join(m for lvl, _, m in problems if lvl == 'error')}")
            convs.append(ex.messages[: last_assistant(ex.messages)])
        return convs
    return [[{"role": "user", "content": line}] for line in p.read_text().splitlines() if line.strip()]
