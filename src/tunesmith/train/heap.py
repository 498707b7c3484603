"""`--low-memory`: freed tensors handed back to the operating system at once (glibc's malloc).

On a CPU every activation of a training pass is a fresh heap allocation, of a new size for every
sequence length. glibc keeps freed memory for reuse, in the middle of its heap, where a later
allocation of another size often does not fit; and once a big block has been freed, glibc raises its
threshold for giving big blocks pages of their own (up to 32 MiB), so the activations stop getting
them. The heap grows around its holes: 10 fp32 LoRA steps of SmolLM2-135M on the example data peaked at
2,680, 3,061 and 3,079 MiB in three identical runs (2-core EPYC, torch held to its AVX2 kernels), where
what is alive at once comes to ~2.3 GiB.

lean() fixes that threshold at 1 MiB: every tensor of 1 MiB and more gets its own pages (mmap) and
gives them back when freed. The same 10 steps: 2,343 and 2,419 MiB (-21 %), at 154 and 152 tokens/s
against 159-175 (median 165; -7 %): every big tensor's pages are new, and the kernel zeroes each at its
first touch. Measured and not kept (one run each): malloc_trim after every optimizer step (3,079 MiB:
the peak is inside a step) or before every forward pass (2,661 MiB, 151 tokens/s); transparent huge
pages for those mmaps (2,414 MiB, 130 tokens/s: a huge page is zeroed whole); lengths padded to
multiples of 64, for fewer sizes (3,182 MiB). So it is a choice, not a default: cheaper than
--gradient-checkpointing (~30 % slower), and what `plan` offers first when a run will not fit.

Linux with glibc only; elsewhere (macOS, musl) lean() says it could not.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

M_MMAP_THRESHOLD = -3  # mallopt's parameter number (malloc.h)
THRESHOLD = 1 << 20


@functools.cache
def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt  # noqa: B018 - glibc has it; musl's libc does not
        return libc
    except (OSError, AttributeError):
        return None


def available() -> bool:
    """Whether this process's allocator can be made lean (glibc)."""
    return _libc() is not None


def lean() -> bool:
    """Give every allocation of THRESHOLD bytes or more its own pages from now on, in this process; False
    where that is not possible."""
    libc = _libc()
    return bool(libc is not None and libc.mallopt(M_MMAP_THRESHOLD, THRESHOLD))
