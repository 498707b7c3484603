"""The JSON bodies of `tunesmith serve`'s answers, in OpenAI's shapes: a whole completion, one streamed
chunk, the token usage. Beside them (OpenAI clients ignore fields they do not know) an answer from
documents (serve --docs) carries its passages and citations."""

from __future__ import annotations

import json
import time

from tunesmith.serve.engine import Job


def usage(job: Job) -> dict:
    return {
        "prompt_tokens": len(job.ids),
        "completion_tokens": job.completion_tokens,
        "total_tokens": len(job.ids) + job.completion_tokens,
    }


def completion_body(shape: str, rid: str, model_name: str, text: str, finish: str, job: Job) -> dict:
    if shape == "chat":
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "logprobs": None,
            "finish_reason": finish,
        }
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
    return {
        "id": rid,
        "object": "chat.completion" if shape == "chat" else "text_completion",
        "created": int(time.time()),
        "model": model_name,
        "choices": [choice],
        "usage": usage(job),
    }


def chunk(
    shape: str,
    rid: str,
    model_name: str,
    delta: str | None,
    finish: str | None,
    role: bool = False,
    extra=None,
) -> str:
    """One server-sent event of a streamed answer."""
    if shape == "chat":
        d = (
            {"role": "assistant", "content": ""}
            if role
            else ({"content": delta} if delta is not None else {})
        )
        choice = {"index": 0, "delta": d, "logprobs": None, "finish_reason": finish}
    else:
        choice = {"index": 0, "text": delta or "", "logprobs": None, "finish_reason": finish}
    obj = "chat.completion.chunk" if shape == "chat" else "text_completion"
    return (
        "data: "
        + json.dumps(
            {
                "id": rid,
                "object": obj,
                "created": int(time.time()),
                "model": model_name,
                "choices": [choice],
                **(extra or {}),
            },  # fmt: skip
            ensure_ascii=False,
        )
        + "\n\n"
    )
