"""TensorBoard events in the run directory: a listener on the trainer's events."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from rnnscope.figures.flow import flow_heatmap_figure, flow_profile_figure
from rnnscope.files import WriteError
from rnnscope.rundir.directory import METRICS, read_records

HEATMAP_ROWS = 256  # probes drawn in TensorBoard's heat map, at most


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


class TensorBoardLog:
    """Listener writing TensorBoard events into the run directory (`tensorboard --logdir
    runs` shows every run): scalars every step, gradient histograms on the probe schedule,
    and on the eval schedule the latest flow profile and the heat map of every probe so
    far as images (drawn then, not at every probe: a figure costs ~0.1 s)."""

    def __init__(self, path: Path, purge_step: int | None = None, *, title: str = "") -> None:
        from torch.utils.tensorboard import SummaryWriter  # imports tensorboard: slow

        _quiet_writer_thread_errors()
        self.path, self._failed = Path(path), False
        with self._writing():
            self.writer = SummaryWriter(log_dir=str(path), purge_step=purge_step)
        self.title = title or Path(path).name
        self.latest: dict | None = None  # the latest probe: {"step", "flow"}
        # The probes so far, as metrics.jsonl has them, for the heat map; a resumed run
        # starts from the lines before the step it continues from.
        self.probes: list[dict] = [] if purge_step is None else [
            {"step": line["step"], "flow": line["flow"]}
            for line in read_records(Path(path) / METRICS) or []
            if line.get("kind") == "train" and "flow" in line and line["step"] < purge_step]
        self._seen, self._stride = 0, 1
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

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """A failed write (here, or kept by the writer's thread) as one line naming the
        directory."""
        try:
            yield
        except OSError as error:
            self._failed = True
            raise WriteError.of("out", f"the TensorBoard events in {self.path}", error) \
                from None

    def after_step(self, state) -> None:
        with self._writing():
            self._after_step(state)

    def on_eval(self, evaluation) -> None:
        with self._writing():
            self._on_eval(evaluation)

    def close(self) -> None:
        if self._failed:  # reported when it happened; closing only repeats it
            with contextlib.suppress(OSError):
                self.writer.close()
            return
        with self._writing():
            self.writer.close()

    def _after_step(self, state) -> None:
        step, scalars = state.step, state.scalars()
        for key, value in scalars.items():
            if value is not None:
                self.writer.add_scalar(f"train/{key}", value, step)
        if state.flow is not None:
            self.latest = {"step": step, "flow": state.flow.to_dict()}
            self._keep_probe(self.latest)
        if state.flow is not None and state.diagnosis is not None:
            self.writer.add_scalar("flow/reach", state.diagnosis.reach, step)
            self.writer.add_scalar("flow/rate", state.diagnosis.rate, step)
        for name, grad in state.grads.items():
            if torch.isfinite(grad).all():
                self.writer.add_histogram(f"grad/{name}", grad, step)

    def _on_eval(self, evaluation) -> None:
        self.writer.add_scalar("valid/loss", evaluation.loss, evaluation.step)
        self.writer.add_scalar(f"valid/{evaluation.metric_name}", evaluation.metric,
                               evaluation.step)
        if self.latest is not None:
            self.writer.add_figure("flow/profile", flow_profile_figure(
                self.latest["flow"], title=f"{self.title}, step {self.latest['step']}"),
                evaluation.step)
        if self.probes:
            self.writer.add_figure("flow/heatmap", flow_heatmap_figure(
                self.probes, title=self.title), evaluation.step)
