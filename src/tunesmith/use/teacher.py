"""The teachers `tunesmith data generate` drafts with (use/drafts.py runs them):

- an OpenAI-compatible endpoint (`--teacher http://127.0.0.1:8080/v1`: llama.cpp's server, Ollama,
  vLLM), through the `openai` client (the 'teacher' extra), several requests at once
  (`--concurrency`); the client retries connection errors, timeouts, 429 and 5xx with exponential
  backoff (`--retries`). What goes wrong is a TeacherError: `fatal` when no other draft can be made
  either (cannot connect after the retries, the key or the model refused), else it is this draft's;
- a local model or a trained run through tunesmith itself (`--teacher runs/v1`, `--teacher
  qwen2.5-1.5b`), batched generation as `tunesmith eval` does.

The teacher sees the input with the house style around it: `--system` and `--shots K` examples of
`--train` (the K most like each input, BM25, as `eval --systems rag:K` does).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from tunesmith.errors import UserError
from tunesmith.eval.systems import System, build_prompts
from tunesmith.models.endpoint import Draft
from tunesmith.models.endpoint import Endpoint as EndpointTeacher
from tunesmith.models.endpoint import EndpointError as TeacherError
from tunesmith.models.loading import attach_adapter, base_model_of, check_adapter_dir, generate, load

__all__ = ["Draft", "EndpointTeacher", "TeacherError"]  # the names use/drafts.py reads from here


@dataclass
class Plan:
    """What to ask and how: built once from the flags."""

    max_tokens: int = 512
    temperature: float = 0.0
    seed: int = 13
    best_of: int = 1
    system: str | None = None
    shots: int = 0
    train: list[list[dict]] = field(default_factory=list)
    rules: list = field(default_factory=list)  # scoring.style rules


def teacher_prompts(prompts: list[list[dict]], plan: Plan) -> list[list[dict]]:
    """Each input as the teacher sees it: the system prompt, then the K most similar training examples as
    earlier turns (BM25, as eval's rag:K), then the input."""
    if plan.shots and not plan.train:
        raise UserError("--shots: needs the training examples: --train FILE")
    kind = "rag" if plan.shots else ("prompted" if plan.system else "base")
    system = System(kind, kind, plan.shots, bool(plan.system))
    convs, _, _ = build_prompts(system, prompts, train=plan.train, system_prompt=plan.system)
    return convs


def is_run(spec: str) -> bool:
    """Is this local teacher a trained run (an adapter folder) rather than a model?"""
    return (Path(spec) / "adapter_config.json").is_file()


class LocalTeacher:
    """A model or trained run through tunesmith: batched generation, one batch at a time."""

    def __init__(self, spec: str, trust_remote_code: bool, batch_size: int):
        adapter = spec if is_run(spec) else None
        base = base_model_of(adapter, None if adapter else spec)
        loaded = load(base, trust_remote_code=trust_remote_code, quiet=True)
        self.model, self.tok = loaded.model, loaded.tokenizer
        if adapter:
            self.model = attach_adapter(self.model, check_adapter_dir(adapter), base)
        self.name, self.batch_size = spec, batch_size

    def draft_many(self, convs: list[list[dict]], plan: Plan, attempt: int) -> list[Draft]:
        t0 = time.monotonic()
        outs = generate(
            self.model,
            self.tok,
            convs,
            max_new_tokens=plan.max_tokens,
            batch_size=self.batch_size,
            temperature=plan.temperature,
            seed=plan.seed + attempt,
        )
        each = (time.monotonic() - t0) / max(1, len(outs))
        return [
            Draft(o.text, "stop" if o.stopped else "length", o.prompt_tokens, o.new_tokens, each)
            for o in outs
        ]
