"""matplotlib figures of gradient flow. Headless: the Agg backend, files written atomically."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from rnnscope.files import atomic_target  # noqa: E402
from rnnscope.recording import GradientFlow  # noqa: E402


def plot_flow_profile(flow: GradientFlow, path: str | Path, *, title: str = "",
                      threshold: float = 1e-3) -> Path:
    """||dL/dh_t|| against steps back from the loss, log scale, one line per layer.

    The dashed line is `threshold` x the peak of the first layer: where a curve
    crosses it is that layer's reach.
    """
    return save_figure(flow_profile_figure(flow, title=title, threshold=threshold), path)


def flow_profile_figure(flow: GradientFlow, *, title: str = "", threshold: float = 1e-3):
    """The figure of `plot_flow_profile`, for callers that render it elsewhere
    (TensorBoard); close it with `plt.close` or `save_figure`."""
    profiles = flow.steps_back()
    figure, axes = plt.subplots(figsize=(7, 4), dpi=100)
    peak = 0.0
    for name, row in zip(flow.layers, profiles, strict=True):
        values = row[~torch.isnan(row)]
        shown = values.clamp_min(1e-45).numpy()  # zeros (underflow) sit on the floor
        axes.plot(range(len(shown)), shown, label=name, linewidth=1.5)
        finite = values[torch.isfinite(values)]
        if len(finite) and peak == 0.0:
            peak = float(finite.max())
    if peak > 0:
        axes.axhline(peak * threshold, color="grey", linestyle="--", linewidth=1,
                     label=f"{threshold:g} x peak")
    axes.set_yscale("log")
    axes.set_xlabel("steps back from the loss")
    axes.set_ylabel("batch-mean ||dL/dh_t||")
    axes.set_title(title or "gradient flow through time")
    axes.grid(True, which="major", alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    return figure


def save_figure(figure, path: str | Path) -> Path:
    """Write a PNG atomically and release the figure's memory."""
    try:
        with atomic_target(path) as temporary:
            figure.savefig(temporary, format="png")
    finally:
        plt.close(figure)
    return Path(path)
