"""TensorBoard events in the run directory: a listener on the trainer's events."""

from __future__ import annotations

from pathlib import Path

import torch

from rnnscope.figures.flow import flow_heatmap_figure, flow_profile_figure
from rnnscope.rundir.directory import METRICS, read_records

HEATMAP_ROWS = 256  # probes drawn in TensorBoard's heat map, at most


class TensorBoardLog:
    """Listener writing TensorBoard events into the run directory (`tensorboard --logdir
    runs` shows every run): scalars every step, gradient histograms on the probe schedule,
    and on the eval schedule the latest flow profile and the heat map of every probe so
    far as images (drawn then, not at every probe: a figure costs ~0.1 s)."""

    def __init__(self, path: Path, purge_step: int | None = None, *, title: str = "") -> None:
        from torch.utils.tensorboard import SummaryWriter  # imports tensorboard: slow

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

    # what any writer of a run directory logs (the trainer, watch, Lightning)

    def scalars(self, step: int, values: dict, prefix: str = "train") -> None:
        for key, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(f"{prefix}/{key}", value, step)

    def probe(self, step: int, flow, diagnosis=None) -> None:
        """One recording of the flow (a `GradientFlow`) and its diagnosis: the reach and
        rate as scalars; kept for the images."""
        self.latest = {"step": step, "flow": flow.to_dict()}
        self._keep_probe(self.latest)
        if diagnosis is not None:
            self.writer.add_scalar("flow/reach", diagnosis.reach, step)
            self.writer.add_scalar("flow/rate", diagnosis.rate, step)

    def images(self, step: int) -> None:
        """The latest flow profile and the heat map of every probe so far, as images at
        `step` (drawn on a schedule, not at every probe: a figure costs ~0.1 s)."""
        if self.latest is not None:
            self.writer.add_figure("flow/profile", flow_profile_figure(
                self.latest["flow"], title=f"{self.title}, step {self.latest['step']}"),
                step)
        if self.probes:
            self.writer.add_figure("flow/heatmap", flow_heatmap_figure(
                self.probes, title=self.title), step)

    # the trainer's events

    def after_step(self, state) -> None:
        self.scalars(state.step, state.scalars())
        if state.flow is not None:
            self.probe(state.step, state.flow, state.diagnosis)
        for name, grad in state.grads.items():
            if torch.isfinite(grad).all():
                self.writer.add_histogram(f"grad/{name}", grad, state.step)

    def on_eval(self, evaluation) -> None:
        self.scalars(evaluation.step, {"loss": evaluation.loss,
                                       evaluation.metric_name: evaluation.metric}, "valid")
        self.images(evaluation.step)

    def close(self) -> None:
        self.writer.close()
