"""The model behind `tunesmith serve`: one worker thread owns it and batches waiting requests.

Requests wait in a bounded queue; the worker takes the oldest one and every other waiting request
for the same adapter and decoding settings (up to --max-batch) and generates them together —
dynamic batching, so 16 clients cost little more than one on a memory-bound decode. Tokens go back
to each request as they are made; a request that times out or whose client goes away is ended at
the next step. Nothing here knows HTTP: `serve/app.py` turns requests into Jobs and events into
responses.
"""

from __future__ import annotations

import asyncio
import math
import sys
import threading
import time
from dataclasses import dataclass, field

from tunesmith.models.chat import stop_token_ids
from tunesmith.models.loading import TextStream, generate_ids


class APIError(Exception):
    """An OpenAI-style error response."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type_, code, param
        self.headers = headers

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass
class Job:
    adapter: str | None  # adapter name; None = the base model
    ids: list[int]
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    stop: list[str]
    deadline: float
    loop: asyncio.AbstractEventLoop
    # ("delta", text) ... then ("end", finish_reason)
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    completion_tokens: int = 0
    arrived: float = field(default_factory=time.monotonic)

    @property
    def batch_key(self):
        return (self.adapter, self.temperature, self.top_p, self.seed)

    def emit(self, kind: str, value) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))


GATHER = 0.05  # seconds a request may wait for others to batch with (a decode step is ~60 ms on a CPU)


class Engine:
    """The model, its adapters, and the worker thread that batches waiting requests."""

    def __init__(self, model, tokenizer, adapters: list[str], *, max_batch: int, max_queue: int):
        self.model, self.tokenizer, self.adapters = model, tokenizer, adapters
        self.max_batch, self.max_queue = max_batch, max_queue
        self.stop_ids = stop_token_ids(tokenizer)
        self.waiting: list[Job] = []
        self.cv = threading.Condition()
        self.closed = False
        self.busy = 0  # jobs being generated now
        self.batches = 0
        self.batch_s = (
            1.0  # moving average of a batch's generation time, for Retry-After (1 s until measured)
        )
        self.thread = threading.Thread(target=self._work, name="tunesmith-engine", daemon=True)
        self.thread.start()

    def submit(self, job: Job) -> None:
        with self.cv:
            if len(self.waiting) >= self.max_queue:
                wait = self.retry_after()
                raise APIError(
                    429,
                    f"the server is busy: {self.max_queue} requests are already waiting; retry in about "
                    f"{wait} s",
                    "rate_limit_exceeded",
                    "queue_full",
                    headers={"Retry-After": str(wait)},
                )
            self.waiting.append(job)
            self.cv.notify()

    def retry_after(self) -> int:
        """Seconds until the queue has drained, from the measured time of recent batches: the batch being
        generated, then the waiting requests max_batch at a time. Called with the lock held."""
        batches = -(-len(self.waiting) // self.max_batch) + (1 if self.busy else 0)
        return max(1, min(3600, math.ceil(batches * self.batch_s)))

    def close(self) -> None:
        with self.cv:
            self.closed = True
            self.cv.notify()

    def _take(self) -> list[Job] | None:
        with self.cv:
            while not self.waiting and not self.closed:
                self.cv.wait()
            # Clients answered together come back together: give the stragglers GATHER seconds
            # from the oldest request's arrival to join, rather than starting a batch of one.
            while not self.closed and len(self.waiting) < self.max_batch:
                left = self.waiting[0].arrived + GATHER - time.monotonic()
                if left <= 0:
                    break
                self.cv.wait(left)
            if self.closed:
                return None
            key = self.waiting[0].batch_key
            batch = [j for j in self.waiting if j.batch_key == key][: self.max_batch]
            taken = set(map(id, batch))
            self.waiting = [j for j in self.waiting if id(j) not in taken]
            self.busy = len(batch)
            return batch

    def _work(self) -> None:
        while (batch := self._take()) is not None:
            now = time.monotonic()
            live = []
            for job in batch:
                if job.cancelled.is_set():
                    job.emit("end", "cancelled")
                elif now > job.deadline:
                    job.emit("end", "timeout")
                else:
                    live.append(job)
            if live:
                t = time.monotonic()
                try:
                    self._generate(live)
                    self.batch_s = (
                        0.7 * self.batch_s + 0.3 * (time.monotonic() - t)
                        if self.batches > 1
                        else time.monotonic() - t
                    )
                except Exception as e:  # a bug or out of memory: fail these requests, keep serving
                    print(f"tunesmith serve: generation failed: {e!r}", file=sys.stderr)
                    for job in live:
                        job.emit("error", str(e))
            with self.cv:
                self.busy = 0

    def _generate(self, jobs: list[Job]) -> None:
        streams = [TextStream(self.tokenizer, j.stop) for j in jobs]
        reason = ["length"] * len(jobs)

        def on_token(row: int, token: int) -> bool:
            jobs[row].completion_tokens += 1
            delta = streams[row].add(token)
            if delta:
                jobs[row].emit("delta", delta)
            if streams[row].hit_stop:
                reason[row] = "stop"
                return True
            return False

        def should_stop(row: int) -> bool:
            job = jobs[row]
            if job.cancelled.is_set():
                reason[row] = "cancelled"
                return True
            if time.monotonic() > job.deadline:
                reason[row] = "timeout"
                return True
            return False

        j0 = jobs[0]
        self._select(j0.adapter)
        self.batches += 1
        ctx = self.model.disable_adapter() if j0.adapter is None and self.adapters else _null()
        with ctx:
            outs = generate_ids(
                self.model,
                [j.ids for j in jobs],
                pad_id=self.tokenizer.pad_token_id,
                stop_ids=self.stop_ids,
                max_new_tokens=[j.max_tokens for j in jobs],
                temperature=j0.temperature,
                top_p=j0.top_p,
                seed=j0.seed,
                on_token=on_token,
                should_stop=should_stop,
            )
        for row, (job, (_, stopped)) in enumerate(zip(jobs, outs)):
            if stopped:
                reason[row] = "stop"
            rest = streams[row].flush()
            if rest:
                job.emit("delta", rest)
            job.emit("end", reason[row])

    def _select(self, adapter: str | None) -> None:
        if adapter is not None:
            self.model.set_adapter(adapter)


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
