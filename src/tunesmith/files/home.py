"""Where tunesmith keeps what it makes for itself: converted models, downloads, the registry, the machine
file. One function, apart from the model code, so the registry finds its default place without
importing model resolution."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """`$TUNESMITH_HOME`, else `$XDG_CACHE_HOME/tunesmith`, else `~/.cache/tunesmith`."""
    env = os.environ.get("TUNESMITH_HOME")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tunesmith"
