"""What a run shows while it trains: one line per epoch, and on a terminal a live bar."""
from __future__ import annotations

import os
import sys


def _epoch_line(m: dict, epochs: int) -> str:
    val = (f"val loss {m['val_loss']:.4f} acc {m['val_acc']:.4f}" if m["val_acc"] is not None
           else "no val split")
    width = len(str(epochs))
    return (f"epoch {m['epoch']:{width}d}/{epochs}  train loss {m['train_loss']:.4f} "
            f"acc {m['train_acc']:.4f}  {val}  lr {m['lr']:.3g}  {m['seconds']:.1f}s  "
            f"{m['images_per_s']:,.0f} img/s{_speed_text(m)}")


def _speed_text(m: dict) -> str:
    """`  0.123 TFLOP/s (MFU 41.0%)  data wait 2%`: what the epoch achieved (see throughput.py)."""
    parts = []
    if m.get("train_tflops") is not None:
        tflops = f"{m['train_tflops']:.3g} TFLOP/s"
        parts.append(tflops + (f" (MFU {m['mfu']:.1%})" if m.get("mfu") is not None else ""))
    if m.get("data_wait") is not None:
        parts.append(f"data wait {m['data_wait']:.0%}")
    return "".join("  " + p for p in parts)


class Reporter:
    """One line per epoch on any stdout; on a terminal, a live progress bar too.

    Only rank 0 reports. In CI (stdout not a terminal) the bar is off and the log
    is just the lines.
    """

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.live = enabled and sys.stdout.isatty()
        self.progress, self.task = None, None

    def line(self, text: str) -> None:
        if not self.enabled:
            return
        try:
            if self.progress is not None:
                self.progress.console.print(text, highlight=False, markup=False, soft_wrap=True)
            else:
                print(text, flush=True)
        except BrokenPipeError:
            # `cnndsl train ... | head`: the reader left; the run goes on, silently.
            self.enabled = False
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())

    def start_epoch(self, epoch: int, epochs: int, steps: int) -> None:
        if not self.live:
            return
        if self.progress is None:
            self.progress = _rich_progress()
            self.progress.start()
        if self.task is not None:
            self.progress.remove_task(self.task)
        self.task = self.progress.add_task(f"epoch {epoch}/{epochs}", total=steps,
                                           loss=0.0, acc=0.0, ips=0.0)

    def update(self, step: int, loss: float, acc: float, ips: float) -> None:
        if self.task is not None:
            self.progress.update(self.task, completed=step, loss=loss, acc=acc, ips=ips)

    def epoch_line(self, text: str) -> None:
        if self.task is not None:
            self.progress.remove_task(self.task)
            self.task = None
        self.line(text)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def _rich_progress():
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeRemainingColumn)

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]:.4f}  acc {task.fields[acc]:.4f}  "
                               "{task.fields[ips]:,.0f} img/s"),
                    TimeRemainingColumn(), transient=True)
