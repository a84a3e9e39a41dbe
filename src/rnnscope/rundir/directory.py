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
      metrics.damaged      only after a resume that found damaged lines in
                           metrics.jsonl: those lines, as they were (jsonlines.py)

Checkpoints and JSON files are written to a temporary file and renamed into place.
Metrics lines reach the file in batches (one write where a line a step would be one
system call a step): every line is on disk before the next checkpoint is written, so a
kill loses only lines after the last checkpoint, and a resume cuts back to it anyway. A
run directory is made new (or in an empty directory): rnnscope never writes among files
it did not write.

Listeners write the stream as the trainer runs: `metrics.MetricsLog` (metrics.jsonl)
and `tensorboard.TensorBoardLog` (the events).
"""

from __future__ import annotations

import contextlib
import io
import json
import time
from pathlib import Path

import torch

from rnnscope.files import (
    WriteError,
    atomic_target,
    json_safe,
    make_directory,
    reason,
    remove_directories,
    write_json,
    write_yaml,
)
from rnnscope.rundir.jsonlines import DAMAGED, cut_after, read_lines

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
        """A new run directory holding `config.yaml`: `path` must not exist or be an empty
        directory. A failure (disk full, no permission) leaves nothing behind."""
        run = cls(path)
        try:
            run._check_new()
        except OSError as error:  # a name too long, a directory we may not read
            raise ValueError(f"out: cannot use {run.path} ({reason(error)})") from None
        created = make_directory("out", run.path)
        try:
            with atomic_target(run.config_path) as temporary:
                write_yaml(temporary, config)
        except OSError as error:
            remove_directories(created)
            raise ValueError(f"out: cannot write {run.config_path} ({reason(error)})") from None
        return run

    def _check_new(self) -> None:
        """Refuse a path that is a file, a run, or a directory of someone else's files."""
        if self.path.exists() and not self.path.is_dir():
            raise ValueError(f"out: {self.path} exists and is not a directory")
        if self.config_path.exists():
            raise ValueError(f"out: {self.path} already holds a run; continue it with "
                             f"--resume or choose another --out")
        if self.path.is_dir():
            present = sorted(entry.name for entry in self.path.iterdir())
            if present:  # the user's files: a run would overwrite or append to them
                raise ValueError(f"out: {self.path} holds files that are not a run's (e.g. "
                                 f"{present[0]}); choose a new or empty directory")

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
        """Write the queued lines to metrics.jsonl, in one write. A failed write is one
        WriteError naming the file; its lines are not tried again."""
        if self._pending:
            lines, self._pending = "".join(self._pending), []
            try:
                if self._metrics is None:
                    self._metrics = self.metrics_path.open("a", encoding="utf-8")
                self._metrics.write(lines)
                self._metrics.flush()
            except OSError as error:
                raise WriteError.of("out", self.metrics_path, error) from None
        self._written = time.monotonic()

    def cut_metrics(self, after_step: int) -> str | None:
        """Drop the lines past `after_step` (written after the checkpoint a resume starts
        from; the resumed run writes them again) and move damaged lines to
        `metrics.damaged`; every other line is kept. Returns a note on the damage, if any."""
        if not self.metrics_path.is_file():
            return None
        kept, damaged, found = cut_after(self.metrics_path, after_step)
        try:
            if damaged:  # appended: an earlier resume may have moved lines there already
                with (self.path / DAMAGED).open("ab") as side:
                    side.write(damaged)
            with atomic_target(self.metrics_path) as temporary:
                temporary.write_bytes(kept)
        except OSError as error:  # metrics.jsonl is left as it was
            raise WriteError.of("out", self.metrics_path, error) from None
        note = found.note()
        return None if note is None else f"{note} (moved to {self.path / DAMAGED})"

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
        path = self.checkpoint_dir / f"{name}.pt"
        # Serialised in memory first: torch's own file writer reports a full disk as a
        # RuntimeError without the file's name or the reason.
        buffer = io.BytesIO()
        torch.save(state, buffer)
        try:
            self.checkpoint_dir.mkdir(exist_ok=True)
            with atomic_target(path) as temporary:
                temporary.write_bytes(buffer.getbuffer())
        except OSError as error:
            raise WriteError.of("out", path, error) from None
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
        try:
            write_json(self.summary_path, {"format": FORMAT, **summary})
        except OSError as error:
            raise WriteError.of("out", self.summary_path, error) from None

    def close(self) -> None:
        self.flush_metrics()
        if self._metrics is not None:
            metrics, self._metrics = self._metrics, None
            # A failed write was raised (and reported) by `flush_metrics` already.
            with contextlib.suppress(OSError):
                metrics.close()


def read_records(path: str | Path) -> list[dict] | None:
    """The good records of a metrics file, damaged lines skipped (`jsonlines`); None if
    there is no file."""
    lines = read_lines(path)
    return None if lines is None else lines.records


def all_finite(state) -> bool:
    if isinstance(state, torch.Tensor):
        return not state.is_floating_point() or bool(torch.isfinite(state).all())
    if isinstance(state, dict):
        return all(all_finite(value) for value in state.values())
    if isinstance(state, (list, tuple)):
        return all(all_finite(value) for value in state)
    return True
