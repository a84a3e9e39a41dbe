"""A run directory for a training loop rnnscope does not own: `rnnscope.watch` over the
user's own loop, and the Lightning callback with `out=`.

It writes what the trainer writes (docs/run-directory.md), so `rnnscope report` renders
any of them: config.yaml (what was watched), metrics.jsonl (a train line per logged
step, a probe line per recording of the flow), TensorBoard events (the same scalars,
reach and rate, the flow profile and heat map images) and summary.json at the end.
"""

from __future__ import annotations

from pathlib import Path

from rnnscope.rundir.directory import RunDirectory
from rnnscope.rundir.metrics import probe_line
from rnnscope.rundir.tensorboard import TensorBoardLog

IMAGE_EVERY = 10  # probes between two drawings of the images (and one at the end)


class FlowLog:
    def __init__(self, path: str | Path, config: dict, title: str = "") -> None:
        """Create the run directory (refused where one exists) and its writers."""
        self.run = RunDirectory.create(path, config)
        self.board = TensorBoardLog(self.run.path, title=title or self.run.path.name)
        self.probes = 0
        self.last_step = 0
        self.last_scalars: dict[str, float] = {}

    def scalars(self, step: int, **values) -> None:
        """A train line of the user's numbers (loss, accuracy, ...) at training step `step`."""
        values = {key: _number(value) for key, value in values.items()}
        self.run.append({"kind": "train", "step": step, **values})
        self.board.scalars(step, values)
        self.last_step, self.last_scalars = max(self.last_step, step), values

    def probe(self, step: int, flow, diagnosis=None) -> None:
        """One recording of the gradient flow through time and its diagnosis."""
        self.run.append(probe_line(step, flow, diagnosis))
        self.board.probe(step, flow, diagnosis)
        self.probes += 1
        self.last_step = max(self.last_step, step)
        if self.probes % IMAGE_EVERY == 1:  # the first, then every IMAGE_EVERY-th
            self.board.images(step)

    def close(self, summary: dict) -> None:
        """summary.json, the images as they end, and the files closed."""
        try:
            self.board.images(self.last_step)
            self.run.write_summary(summary)
        finally:
            self.board.close()
            self.run.close()


def _number(value) -> float:
    """A logged value as a float: a 0-d tensor is read (one host sync, at the user's call)."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"log: values must be numbers (or 0-d tensors), got {value!r}")
    return float(value) if not isinstance(value, int) else value

