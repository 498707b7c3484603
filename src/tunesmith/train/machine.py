"""What this machine can do, measured here rather than looked up: matmul speed per precision, and memory.

Why measured: one CPU model name covers machines with and without AVX512-BF16 (and cloud VMs hide
flags), and what a training step costs is set by the kernels torch picks on this machine with this
many threads. A square 2048×2048 product timed for about half a second per precision (after a
warm-up) is the figure benchmarks/train_vs_trl.py calls the matmul peak; on the 2-core EPYC it read
fp32 182-192 GFLOP/s and bf16 385-417 GFLOP/s over a dozen runs, within 5 % of each other. It is
kept in `$TUNESMITH_HOME/machine.json` (or `$TUNESMITH_MACHINE_FILE`) under a key of the CPU (or GPU)
model, the CPU flags, torch's version and the thread count, so another machine, a new torch or
another `--threads` measures again.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from pathlib import Path

from tunesmith.files.atomic import write_json
from tunesmith.files.home import home

MATMUL_N = {"cpu": 2048, "cuda": 8192}
FLAGS_SHOWN = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "neon", "asimd", "sve")


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(l.split(":", 1)[1].strip() for l in f if l.startswith(("model name", "Model")))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The CPU's instruction-set flags (Linux; elsewhere empty)."""
    try:
        with open("/proc/cpuinfo") as f:
            line = next(l for l in f if l.startswith(("flags", "Features")))
    except (OSError, StopIteration):
        return []
    return line.split(":", 1)[1].split()


def flags_text() -> str:
    """The flags that decide the speed of training, as a plan and RESULTS.md name them."""
    have = set(cpu_flags())
    return ", ".join(f for f in FLAGS_SHOWN if f in have) or "flags unknown"


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def memory_bytes() -> tuple[int, int]:
    """(available, total) bytes of what training would use: GPU memory on a GPU, else RAM."""
    import torch

    if torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info()
        return int(free), int(total)
    try:
        with open("/proc/meminfo") as f:
            info = {l.split(":")[0]: int(l.split()[1]) * 1024 for l in f if ":" in l}
        return info.get("MemAvailable", info["MemFree"]), info["MemTotal"]
    except (OSError, KeyError, ValueError):
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        return pages * size, pages * size


def _key(dtype: str, threads: int) -> str:
    import torch

    where = torch.cuda.get_device_name(0) if torch.cuda.is_available() else cpu_name()
    flags = hashlib.sha256(" ".join(sorted(cpu_flags())).encode()).hexdigest()[:12]
    return f"{where}|{flags}|torch {torch.__version__}|{threads} threads|{dtype}"


def cache_path() -> Path:
    """$TUNESMITH_MACHINE_FILE, else $TUNESMITH_HOME/machine.json."""
    env = os.environ.get("TUNESMITH_MACHINE_FILE")
    return Path(env).expanduser() if env else home() / "machine.json"


def measure_gflops(dtype: str, min_time: float = 0.5) -> float:
    """GFLOP/s of square products in `dtype` (fp32, bf16 or fp16) on the training device; on a GPU timed
    over batches of 10 products, one synchronize per batch. (benchmarks/train_vs_trl.py's MFU uses it too.)"""
    import torch

    dev = device()
    n, batch = MATMUL_N[dev], (10 if dev == "cuda" else 1)
    t = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    a, b = torch.randn(n, n, dtype=t, device=dev), torch.randn(n, n, dtype=t, device=dev)

    def sync():
        if dev == "cuda":
            torch.cuda.synchronize()

    for _ in range(2 * batch):
        a @ b
    sync()
    runs, t0 = 0, time.perf_counter()
    while True:
        for _ in range(batch):
            a @ b
        runs += batch
        sync()
        spent = time.perf_counter() - t0
        if spent >= min_time and runs >= 3:
            return 2 * n**3 * runs / spent / 1e9


def matmul_gflops(dtype: str, threads: int = 0) -> tuple[float, bool]:
    """(GFLOP/s, measured now): from the cache, else measured (about a second) and cached. A cache that
    cannot be read or written is measured around, never an error."""
    import torch

    threads = threads or torch.get_num_threads()
    key = _key(dtype, threads)
    path = cache_path()
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    if isinstance(cached, dict) and isinstance(cached.get(key), int | float):
        return float(cached[key]), False
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        speed = measure_gflops(dtype)
    finally:
        torch.set_num_threads(before)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, {**(cached if isinstance(cached, dict) else {}), key: round(speed, 1)})
    except OSError:
        pass
    return speed, True


def process_rss_bytes() -> int:
    """This process's resident memory now (Linux), else its peak so far."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if platform.system() == "Darwin" else peak * 1024
