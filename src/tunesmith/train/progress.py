"""What a run shows and logs as it goes: TensorBoard scalars, and a progress bar with loss, tokens/s
and ETA (plain lines when not on a terminal; nothing with --quiet)."""

from __future__ import annotations

import time

from tunesmith.errors import UserError
from tunesmith.train import distributed as dist
from tunesmith.train.config import TrainConfig


def tensorboard_writer(cfg: TrainConfig, purge_step: int | None = None):
    """A SummaryWriter for --tensorboard DIR on rank 0, else None. `purge_step` (resuming): events from
    that step on, logged before the run was interrupted, are hidden (the resumed run logs them again)."""
    if not cfg.tensorboard or dist.world()[0] != 0:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError(
            "--tensorboard needs the tensorboard package: pip install 'tunesmith[tensorboard]'"
        ) from None
    return SummaryWriter(log_dir=cfg.tensorboard, purge_step=purge_step)


def tensorboard_add(tb, rec: dict) -> None:
    """Every number of a metrics.jsonl record, as a scalar at its step."""
    if tb is None:
        return
    for k, v in rec.items():
        if k not in ("step", "epoch") and isinstance(v, (int, float)) and not isinstance(v, bool):
            tb.add_scalar(k, v, rec["step"])
    tb.flush()


class Progress:
    """A progress bar with loss, tokens/s and ETA; plain lines when not on a terminal; silent with --quiet."""

    def __init__(self, total: int, quiet: bool, start: int = 0):
        self.quiet, self.total, self.t0, self.start = quiet, total, time.time(), start
        if quiet:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.console = Console(stderr=True)
        self.live = self.console.is_terminal
        if self.live:
            self.p = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=self.console,
            )
            self.task = self.p.add_task("train", total=total, completed=start, info="")
            self.p.start()
        self.every = max(1, total // 10)

    def update(self, step, epoch, epochs, loss, tps):
        if self.quiet:
            return
        info = f"epoch {epoch}/{epochs} loss {loss:.4f} {tps:,.0f} tok/s"
        if self.live:
            self.p.update(self.task, completed=step, info=info)
        elif step % self.every == 0 or step == self.total:
            el = time.time() - self.t0
            eta = el / max(1, step - self.start) * (self.total - step)
            self.console.print(
                f"step {step}/{self.total} {info} ETA {eta // 60:.0f}m{eta % 60:02.0f}s", highlight=False
            )

    def note(self, text):
        if not self.quiet:
            self.console.print(text, highlight=False)

    def close(self):
        if not self.quiet and self.live:
            self.p.stop()
