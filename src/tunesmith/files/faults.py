"""Kill points for the crash tests: `TUNESMITH_TEST_KILL_AT=NAME` (or `NAME@N`, the N-th time)
makes the process SIGKILL itself when it reaches the point NAME (`TUNESMITH_TEST_KILL_SIGNAL=SIGSTOP`
stops it there instead, for a test that changes the world, e.g. fills the disk, and lets it go on).

Why in the code and not from outside: a kill "after the checkpoint of the final step and before
the validation" lasts microseconds; a test that polls files from outside hits such a window about
1 time in 12 (measured by the reliability attack). Named points make every window reachable, every
time. Unset (always, outside the tests) it costs one dictionary look-up.
"""

from __future__ import annotations

import os
import signal

_seen: dict[str, int] = {}


def killpoint(name: str) -> None:
    want = os.environ.get("TUNESMITH_TEST_KILL_AT")
    if not want:
        return
    point, _, nth = want.partition("@")
    if point != name:
        return
    _seen[name] = _seen.get(name, 0) + 1
    if _seen[name] == int(nth or 1):
        os.kill(os.getpid(), getattr(signal, os.environ.get("TUNESMITH_TEST_KILL_SIGNAL", "SIGKILL")))
