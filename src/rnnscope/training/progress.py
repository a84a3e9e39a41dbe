"""A live progress line for `rnnscope train` (rich): step, loss, held-out metric,
gradient norm, clip rate and the latest gradient-flow verdict. Shown only on a
terminal; quiet in logs, pipes and CI, and with `--quiet`."""

from __future__ import annotations

import math
import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


def wanted(quiet: bool) -> bool:
    return not quiet and sys.stderr.isatty()


class ProgressBar:
    """Listener on `after_step` and `on_eval`; a context manager around the loop."""

    def __init__(self, total: int, title: str, start: int = 0) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeRemainingColumn(), TextColumn("{task.fields[status]}"),
            console=Console(stderr=True), transient=False, refresh_per_second=4)
        self.task = self.progress.add_task(title, total=total, completed=start, status="")
        self.metric = ""
        self.verdict = ""

    def __enter__(self) -> ProgressBar:
        self.progress.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.progress.stop()

    def after_step(self, state) -> None:
        if state.diagnosis is not None:
            self.verdict = f"{state.diagnosis.verdict} (reach {state.diagnosis.reach})"
        parts = [f"loss {_short(state.loss)}", self.metric, f"|g| {_short(state.grad_norm)}",
                 f"clip {state.clip_rate:.0%}", self.verdict]
        if state.action:
            parts.append(f"[red]{state.action}[/red]")
        self.progress.update(self.task, completed=state.step,
                             status="  ".join(part for part in parts if part))

    def on_eval(self, evaluation) -> None:
        self.metric = f"{evaluation.metric_name} {_short(evaluation.metric)}"


def _short(value: float) -> str:
    return f"{value:.4g}" if math.isfinite(value) else str(value)
