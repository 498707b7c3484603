"""A model behind an OpenAI-compatible chat endpoint (llama.cpp's server, Ollama, vLLM, a hosted
API), through the `openai` client (the 'teacher' extra). `data generate --teacher URL` drafts with
it and the hosted graders' `score_model`/`label_model` ask it for grades. The client retries
connection errors, timeouts, 429 and 5xx with exponential backoff; what still goes wrong is an
EndpointError, `fatal` when no other request can succeed either (cannot connect, the key or the
model refused)."""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass
class Draft:
    text: str
    finish: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0


class EndpointError(Exception):
    """A request that failed; `fatal`: no other can succeed either (down, key, model)."""

    def __init__(self, message: str, fatal: bool = False):
        super().__init__(message)
        self.fatal = fatal


class Endpoint:
    """An OpenAI-compatible chat endpoint; thread-safe (the client is), so drafts run concurrently."""

    def __init__(
        self,
        url: str,
        model: str | None,
        key: str | None,
        timeout: float,
        retries: int,
        role: str = "teacher",
    ):
        import openai  # the 'teacher' extra; the CLI checks it is there before this runs

        self.role = role
        self.errors = openai
        self.url = url
        self.client = openai.OpenAI(base_url=url, api_key=key or "none", timeout=timeout, max_retries=retries)
        try:
            self.model = model or self.client.models.list().data[0].id
        except (openai.APIError, IndexError, AttributeError, TypeError) as e:
            raise self._error(e) from None
        self.name = f"{self.model} at {url}"

    def _error(self, e: Exception) -> EndpointError:
        o = self.errors
        if isinstance(e, o.APITimeoutError):
            return EndpointError(f"no answer within the timeout, after the retries ({self.url})")
        if isinstance(e, o.APIConnectionError):
            return EndpointError(
                f"cannot reach the {self.role} at {self.url}: is it running? ({e})", fatal=True
            )
        if isinstance(e, o.APIStatusError):
            fatal = e.status_code in (401, 403, 404)
            said = " ".join(str(getattr(e, "message", e)).split())[:200]
            return EndpointError(f"the {self.role} answered {e.status_code}: {said}", fatal=fatal)
        return EndpointError(f"the {self.role}'s answer is not a chat completion ({type(e).__name__}: {e})")

    def draft(self, messages: list[dict], max_tokens: int, temperature: float, seed: int | None) -> Draft:
        t0 = time.monotonic()
        try:
            r = self.client.chat.completions.create(
                model=self.model, messages=messages, max_tokens=max_tokens, temperature=temperature, seed=seed
            )
            choice = r.choices[0]
            text = choice.message.content
            if not isinstance(text, str):
                raise TypeError(f"message.content is {type(text).__name__}")
        except (self.errors.APIError, IndexError, AttributeError, TypeError, ValueError) as e:
            raise self._error(e) from None
        usage = getattr(r, "usage", None)
        return Draft(text.strip(), choice.finish_reason, getattr(usage, "prompt_tokens", 0) or 0,
                     getattr(usage, "completion_tokens", 0) or 0, time.monotonic() - t0)  # fmt: skip
