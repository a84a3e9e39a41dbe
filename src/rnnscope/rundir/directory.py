"""The run directory: everything a run leaves behind, written so a crash never leaves
a half-written file that a reader or `--resume` could trust.

    runs/NAME/
      config.yaml          the resolved experiment config (every field, defaults included)
      metrics.jsonl        one JSON object per line: {"kind": "train", "step": ...} every
                           step, {"kind": "eval", ...} on the eval schedule; train lines
                           carry the gradient flow through time on the probe schedule
      summary.json         the result (status, steps, metric, diagnosis, ...), at the end
      events.out.tfevents.*  TensorBoard: scalars, gradient histograms, the flow profile
                           and heat map images
      checkpoints/last.pt  model, optimiser, schedule, RNG and guard state (resume)
      checkpoints/best.pt  the weights with the best held-out metric so far

Checkpoints and JSON files are written to a temporary file and renamed into place.
Metrics lines reach the file in batches (one write where a line a step would be one
system call a step): every line is on disk before the next checkpoint is written, so a
kill loses only lines after the last checkpoint, and a resume cuts back to it anyway.

Listeners write the stream as the trainer runs: `metrics.MetricsLog` (metrics.jsonl)
and `tensorboard.TensorBoardLog` (the events).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from rnnscope.files import atomic_target, json_safe, write_json, write_yaml

CONFIG, METRICS, SUMMARY = "config.yaml", "metrics.jsonl", "summary.json"
# The version of the format (docs/run-directory.md), written into summary.json: a reader
# that meets a newer one knows the files may hold what it does not understand.
FORMAT = 1
CHECKPOINTS = "checkpoints"
# Metrics lines wait for at most this many lines or seconds (besides every checkpoint,
# summary, read and close), so a file someone tails stays current.
BUFFER_LINES, BUFFER_SECONDS = 100, 10.0


class RunDirectory:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.config_path = self.path / CONFIG
        self.metrics_path = self.path / METRICS
        self.summary_path = self.path / SUMMARY
        self.checkpoint_dir = self.path / CHECKPOINTS
        self._metrics = None
        self._pending: list[str] = []
        self._written = time.monotonic()

    @classmethod
    def create(cls, path: str | Path, config: dict) -> RunDirectory:
        run = cls(path)
        if run.path.exists() and not run.path.is_dir():
            raise ValueError(f"out: {run.path} exists and is not a directory")
        if run.config_path.exists():
            raise ValueError(f"out: {run.path} already holds a run; continue it with --resume "
                             f"or choose another --out")
        run.path.mkdir(parents=True, exist_ok=True)
        with atomic_target(run.config_path) as temporary:
            write_yaml(temporary, config)
        return run

    @classmethod
    def existing(cls, path: str | Path) -> RunDirectory:
        run = cls(path)
        if not run.config_path.is_file():
            raise ValueError(f"out: {run.path} holds no run to resume (no {CONFIG})")
        return run

    # metrics.jsonl

    def append(self, record: dict) -> None:
        """Queue a line of metrics.jsonl (see the module docstring for when it is written)."""
        self._pending.append(json.dumps(json_safe(record), allow_nan=False) + "\n")
        if len(self._pending) >= BUFFER_LINES or \
                time.monotonic() - self._written > BUFFER_SECONDS:
            self.flush_metrics()

    def flush_metrics(self) -> None:
        """Write the queued lines to metrics.jsonl, in one write."""
        if self._pending:
            if self._metrics is None:
                self._metrics = self.metrics_path.open("a", encoding="utf-8")
            self._metrics.write("".join(self._pending))
            self._metrics.flush()
            self._pending.clear()
        self._written = time.monotonic()

    def cut_metrics(self, after_step: int) -> None:
        """Drop lines past `after_step` (written after the checkpoint a resume starts from),
        and a last line cut short by a kill."""
        if not self.metrics_path.exists():
            return
        kept = []
        for line in self.metrics_path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                break
            if record.get("step", 0) <= after_step:
                kept.append(line)
        with atomic_target(self.metrics_path) as temporary:
            temporary.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")

    def read_metrics(self) -> list[dict]:
        self.flush_metrics()
        return read_records(self.metrics_path) or []

    # checkpoints

    def save_checkpoint(self, name: str, state: dict) -> bool:
        """Write `checkpoints/<name>.pt` atomically; refuse (return False) if any tensor in
        it is not finite, so a resume never starts from a diverged state."""
        if not all_finite(state):
            return False
        self.flush_metrics()  # every line up to the checkpoint's step is on disk first
        self.checkpoint_dir.mkdir(exist_ok=True)
        with atomic_target(self.checkpoint_dir / f"{name}.pt") as temporary:
            torch.save(state, temporary)
        return True

    def load_checkpoint(self, name: str) -> dict | None:
        """`checkpoints/<name>.pt`, or None if there is none; an unreadable file is a
        one-line ValueError (never unpickled beyond tensors: weights_only)."""
        path = self.checkpoint_dir / f"{name}.pt"
        if not path.is_file():
            return None
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises several kinds for a damaged file
            raise ValueError(f"resume: cannot read {path} ({type(error).__name__}); move it "
                             f"away to start the run again from its last good state") from None
        if not isinstance(state, dict):
            raise ValueError(f"resume: {path} holds no checkpoint")
        return state

    def write_summary(self, summary: dict) -> None:
        self.flush_metrics()
        write_json(self.summary_path, {"format": FORMAT, **summary})

    def close(self) -> None:
        self.flush_metrics()
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None


def read_records(path: str | Path) -> list[dict] | None:
    """The JSON objects of a JSON-lines file up to the first unreadable line (a kill can
    cut the last one short); None if there is no file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    records = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            break
        if isinstance(record, dict):
            records.append(record)
    return records


def all_finite(state) -> bool:
    if isinstance(state, torch.Tensor):
        return not state.is_floating_point() or bool(torch.isfinite(state).all())
    if isinstance(state, dict):
        return all(all_finite(value) for value in state.values())
    if isinstance(state, (list, tuple)):
        return all(all_finite(value) for value in state)
    return True
