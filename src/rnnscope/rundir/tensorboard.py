"""TensorBoard events in the run directory: a listener on the trainer's events.

What a training step pays for them is kept small: scalars are buffered and handed to the
writer in batches (each event handed over alone wakes its writer thread, which then
competes with the step for the interpreter), and gradient histograms are binned by torch
rather than by numpy's sort (the same buckets as `add_histogram`'s default).
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from rnnscope.figures.flow import flow_heatmap_figure, flow_profile_figure
from rnnscope.files import WriteError
from rnnscope.rundir.directory import METRICS, read_records

HEATMAP_ROWS = 256  # probes drawn in TensorBoard's heat map, at most
# Scalars wait in a buffer for at most this many events or seconds; on_eval, images and
# close hand them over too. A kill loses at most these, which a resume writes again.
BUFFER_EVENTS, BUFFER_SECONDS = 200, 10.0


def _quiet_writer_thread_errors() -> None:
    """TensorBoard writes events from a thread of its own; when a write fails (disk full)
    the thread keeps the error, hands it to the next call on the writer (which reports
    it: `_writing`), and also prints a traceback through `threading.excepthook`. That
    second, raw copy is left out; any other thread's errors print as before."""
    previous = threading.excepthook
    if getattr(previous, "rnnscope_quiet", False):
        return

    def hook(args) -> None:
        writer_thread = type(args.thread).__name__ == "_AsyncWriterThread"
        if not (writer_thread and issubclass(args.exc_type, OSError)):
            previous(args)

    hook.rnnscope_quiet = True
    threading.excepthook = hook


def _writing(method):
    """A failed write (in the method, or kept by the writer's thread) as one line naming
    the run directory (a WriteError), once; later calls repeat nothing."""
    @functools.wraps(method)
    def wrapped(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except OSError as error:
            self._failed = True
            raise WriteError.of("out", f"the TensorBoard events in {self.path}", error) \
                from None
    return wrapped


class TensorBoardLog:
    """Listener writing TensorBoard events into the run directory (`tensorboard --logdir
    runs` shows every run): scalars every step, gradient histograms on the probe schedule,
    and on the eval schedule the latest flow profile and the heat map of every probe so
    far as images (drawn then, not at every probe: a figure costs ~0.1 s)."""

    def __init__(self, path: Path, purge_step: int | None = None, *, title: str = "") -> None:
        from torch.utils.tensorboard import SummaryWriter  # imports tensorboard: slow

        _quiet_writer_thread_errors()
        self.path, self._failed = Path(path), False
        try:
            self.writer = SummaryWriter(log_dir=str(path), purge_step=purge_step)
        except OSError as error:
            raise WriteError.of("out", f"the TensorBoard events in {self.path}", error) \
                from None
        self.title = title or Path(path).name
        self.latest: dict | None = None  # the latest probe: {"step", "flow"}
        # The probes so far, as metrics.jsonl has them, for the heat map; a resumed run
        # starts from the lines before the step it continues from.
        self.probes: list[dict] = [] if purge_step is None else [
            {"step": line["step"], "flow": line["flow"]}
            for line in read_records(Path(path) / METRICS) or []
            if line.get("kind") == "train" and "flow" in line and line["step"] < purge_step]
        self._seen, self._stride = 0, 1
        self._pending: list[tuple[str, float, int]] = []
        self._handed_over = time.monotonic()
        self._edges = torch.tensor(self.writer.default_bins, dtype=torch.float64)
        earlier, self.probes = self.probes, []
        for probe in earlier:
            self._keep_probe(probe)

    def _keep_probe(self, probe: dict) -> None:
        """At most HEATMAP_ROWS probes, evenly spaced: past that, every other one goes
        and only every `stride`-th new one is kept, so a long run's heat map costs the
        same to draw at every evaluation."""
        if self._seen % self._stride == 0:
            self.probes.append(probe)
            if len(self.probes) > HEATMAP_ROWS:
                self.probes, self._stride = self.probes[::2], self._stride * 2
        self._seen += 1

    # what any writer of a run directory logs (the trainer, watch, Lightning)

    @_writing
    def scalars(self, step: int, values: dict, prefix: str = "train") -> None:
        for key, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self._pending.append((f"{prefix}/{key}", value, step))
        if len(self._pending) >= BUFFER_EVENTS or \
                time.monotonic() - self._handed_over > BUFFER_SECONDS:
            self.flush()

    def flush(self) -> None:
        """Hand the buffered scalars to the writer (its thread writes them to disk)."""
        for tag, value, step in self._pending:
            self.writer.add_scalar(tag, value, step)
        self._pending.clear()
        self._handed_over = time.monotonic()

    def histogram(self, tag: str, values: Tensor, step: int) -> None:
        """`add_histogram(tag, values, step)` with its default buckets, binned by torch."""
        buckets = histogram_buckets(values, self._edges)
        if buckets is None:
            return  # beyond the buckets: an exploding gradient the scalars already show
        limits, counts, values = buckets
        self.writer.add_histogram_raw(
            tag, float(values.min()), float(values.max()), values.numel(),
            float(values.sum()), float(torch.dot(values, values)), limits, counts, step)

    @_writing
    def probe(self, step: int, flow, diagnosis=None) -> None:
        """One recording of the flow (a `GradientFlow`) and its diagnosis: the reach and
        rate as scalars; kept for the images."""
        self.latest = {"step": step, "flow": flow.to_dict()}
        self._keep_probe(self.latest)
        if diagnosis is not None:
            self.writer.add_scalar("flow/reach", diagnosis.reach, step)
            self.writer.add_scalar("flow/rate", diagnosis.rate, step)

    @_writing
    def images(self, step: int) -> None:
        """The latest flow profile and the heat map of every probe so far, as images at
        `step` (drawn on a schedule, not at every probe: a figure costs ~0.1 s)."""
        self.flush()
        if self.latest is not None:
            self.writer.add_figure("flow/profile", flow_profile_figure(
                self.latest["flow"], title=f"{self.title}, step {self.latest['step']}"),
                step)
        if self.probes:
            self.writer.add_figure("flow/heatmap", flow_heatmap_figure(
                self.probes, title=self.title), step)

    # the trainer's events

    @_writing
    def after_step(self, state) -> None:
        self.scalars(state.step, state.scalars())
        if state.flow is not None:
            self.probe(state.step, state.flow, state.diagnosis)
        for name, grad in state.grads.items():
            if torch.isfinite(grad).all():
                self.histogram(f"grad/{name}", grad, state.step)

    @_writing
    def on_eval(self, evaluation) -> None:
        self.scalars(evaluation.step, {"loss": evaluation.loss,
                                       evaluation.metric_name: evaluation.metric}, "valid")
        self.images(evaluation.step)

    def close(self) -> None:
        if self._failed:  # reported when it happened; closing only repeats it
            with contextlib.suppress(OSError):
                self.writer.close()
            return
        self._close()

    @_writing
    def _close(self) -> None:
        self.flush()
        self.writer.close()


def histogram_buckets(values: Tensor, edges: Tensor
                      ) -> tuple[list[float], list[int], Tensor] | None:
    """The bucket limits and counts TensorBoard's `make_histogram` computes for `values`
    over the bucket `edges` (numpy's histogram: [e_i, e_i+1), the last closed; values
    outside ignored; then trimmed to the buckets that hold any, with an empty one on the
    left), and `values` flattened in float64. None when no value lies within the edges
    (|g| > 1e20 everywhere, where `add_histogram` raises)."""
    values = values.detach().reshape(-1).to(torch.float64)
    bucket = torch.searchsorted(edges, values, right=True) - 1
    bucket = torch.where(values == edges[-1], len(edges) - 2, bucket)  # the closed end
    inside = (bucket >= 0) & (bucket < len(edges) - 1)
    counts = torch.bincount(bucket[inside], minlength=len(edges) - 1).numpy()
    if not counts.any():
        return None
    limits = edges.numpy()
    # From here on as make_histogram does it (tensorboard's summary.py), on the counts.
    cumulative = np.cumsum(np.greater(counts, 0))
    start, end = np.searchsorted(cumulative, [0, cumulative[-1] - 1], side="right")
    start, end = int(start), int(end) + 1
    counts = counts[start - 1 : end] if start > 0 else np.concatenate([[0], counts[:end]])
    return limits[start : end + 1].tolist(), counts.tolist(), values
