"""matplotlib figures of gradient flow and training. Headless: the Agg backend.

Each `*_figure` function takes plain data (lists and dicts as a run directory holds
them, see `report.data`) and returns a Figure; `save_figure` writes it as a PNG file
atomically, `figure_png` renders it to bytes for the HTML report. Both close it.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from rnnscope.files import atomic_target  # noqa: E402
from rnnscope.recording import GradientFlow  # noqa: E402
from rnnscope.report.data import flow_layers, flow_matrix  # noqa: E402

UNDERFLOW_COLOUR, NONFINITE_COLOUR = "#000000", "#ff2db4"


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
    _steps_back_axes(axes, title or "gradient flow through time")
    figure.tight_layout()
    return figure


def _steps_back_axes(axes, title: str) -> None:
    """The axes of a gradient-norm profile: log norm against steps back from the loss."""
    axes.set_yscale("log")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("steps back from the loss")
    axes.set_ylabel("batch-mean ||dL/dh_t||")
    axes.set_title(title)
    axes.grid(True, which="major", alpha=0.3)
    axes.legend(fontsize=8)


def save_figure(figure, path: str | Path) -> Path:
    """Write a PNG atomically and release the figure's memory."""
    try:
        with atomic_target(path) as temporary:
            figure.savefig(temporary, format="png")
    finally:
        plt.close(figure)
    return Path(path)


def figure_png(figure, dpi: int = 80) -> bytes:
    """The figure as PNG bytes; releases the figure's memory."""
    buffer = io.BytesIO()
    try:
        figure.savefig(buffer, format="png", dpi=dpi)
    finally:
        plt.close(figure)
    return buffer.getvalue()


def flow_heatmap_figure(probes: list[dict], *, title: str = ""):
    """Heat map of log10 ||dL/dh_t||: x steps back from the loss, y training step, one
    panel per layer on one colour scale. Norms that underflowed to 0 and non-finite
    ones have colours of their own (black, magenta), outside the scale.

    `probes`: train lines of metrics.jsonl that carry "flow" (`RunData.probes`).
    """
    layers = flow_layers(probes)
    grids = [_flow_grid(*flow_matrix(probes, k)) for k in range(len(layers))]
    values = np.concatenate([grid["log"].compressed() for grid in grids] or [np.zeros(0)])
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)
    figure, axes = plt.subplots(1, len(layers), figsize=(4 + 3.2 * len(layers), 3.8),
                                dpi=100, squeeze=False)
    image = None
    for ax, name, grid in zip(axes[0], layers, grids, strict=True):
        image = ax.imshow(grid["log"], origin="lower", aspect="auto", interpolation="nearest",
                          cmap="viridis", vmin=low, vmax=max(high, low + 1e-9))
        special = np.ma.masked_array(grid["special"], mask=grid["special"] < 0)
        if special.count():
            ax.imshow(special, origin="lower", aspect="auto", interpolation="nearest",
                      cmap=ListedColormap([UNDERFLOW_COLOUR, NONFINITE_COLOUR]), vmin=0, vmax=1)
        _step_ticks(ax, grid["steps"])
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("steps back from the loss")
        ax.set_title(name, fontsize=10)
    axes[0][0].set_ylabel("training step")
    if image is not None:
        figure.colorbar(image, ax=axes[0].tolist(), label="log10 ||dL/dh_t||")
    underflow = sum(int((grid["special"] == 0).sum()) for grid in grids)
    nonfinite = sum(int((grid["special"] == 1).sum()) for grid in grids)
    figure.legend(handles=[Patch(color=UNDERFLOW_COLOUR, label=f"0 (underflow): {underflow}"),
                           Patch(color=NONFINITE_COLOUR, label=f"NaN/inf: {nonfinite}")],
                  loc="lower left", fontsize=8, ncols=2, frameon=False)
    figure.suptitle(title or "gradient flow through time over training", fontsize=11)
    figure.subplots_adjust(bottom=0.2, right=0.8, top=0.85, wspace=0.25)
    return figure


def _flow_grid(steps: list[int], rows: list[list[float]]) -> dict:
    """log10 of the norms (masked where not > 0 and finite) and a code per cell:
    0 underflow (exactly 0), 1 non-finite, -1 otherwise (also past a short row's end)."""
    width = max((len(row) for row in rows), default=0)
    data, present = np.full((len(rows), width), np.nan), np.zeros((len(rows), width), bool)
    for i, row in enumerate(rows):
        data[i, :len(row)], present[i, :len(row)] = row, True
    finite = np.isfinite(data)
    positive = present & finite & (data > 0)
    special = np.full(data.shape, -1)
    special[present & finite & (data <= 0)] = 0
    special[present & ~finite] = 1
    logged = np.log10(np.where(positive, data, 1.0))
    return {"steps": steps, "log": np.ma.masked_array(logged, mask=~positive),
            "special": special}


def _step_ticks(ax, steps: list[int], most: int = 8) -> None:
    every = max(1, math.ceil(len(steps) / most))
    ax.set_yticks(range(0, len(steps), every), [str(s) for s in steps[::every]])


def flow_slices_figure(probes: list[dict], *, title: str = ""):
    """||dL/dh_t|| against steps back at the first, middle and last probed training step,
    log scale: how the reach changed as the model trained. Zeros and non-finite values
    leave gaps."""
    picks = sorted({0, len(probes) // 2, len(probes) - 1}) if probes else []
    figure, ax = plt.subplots(figsize=(7, 3.8), dpi=100)
    styles = ["-", "--", ":", "-."]
    colours = plt.get_cmap("plasma")(np.linspace(0.1, 0.8, max(len(picks), 1)))
    for k, name in enumerate(flow_layers(probes)):
        steps, rows = flow_matrix(probes, k)
        for colour, pick in zip(colours, picks, strict=False):
            if pick >= len(rows):
                continue
            row = np.asarray(rows[pick], dtype=float)
            shown = np.where(np.isfinite(row) & (row > 0), row, np.nan)
            ax.plot(range(len(shown)), shown, color=colour, linestyle=styles[k % len(styles)],
                    label=f"{name}, step {steps[pick]}")
    _steps_back_axes(ax, title or "gradient flow at the first, middle and last probe")
    figure.tight_layout()
    return figure


def curves_figure(train: list[dict], evals: list[dict], *, baseline: float | None = None,
                  threshold: float | None = None, metric_name: str = "metric"):
    """Training and held-out loss (left), held-out metric against the task's chance
    level and its solved-below threshold (right)."""
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6), dpi=100)
    _line(left, train, "loss", label="training loss", linewidth=1, alpha=0.8)
    _line(left, evals, "loss", label="held-out loss", marker="o", markersize=3)
    left.set_title("loss")
    _line(right, evals, "metric", label=f"held-out {metric_name}", marker="o", markersize=3)
    if baseline is not None and math.isfinite(baseline):
        right.axhline(baseline, color="grey", linestyle="--", label=f"chance {baseline:.3g}")
    if threshold is not None and math.isfinite(threshold):
        right.axhline(threshold, color="tab:green", linestyle=":",
                      label=f"solved below {threshold:.3g}")
    right.set_title(metric_name)
    for ax in (left, right):
        _log_if_positive(ax)
        ax.set_xlabel("training step")
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    figure.tight_layout()
    return figure


def clipping_figure(train: list[dict]):
    """Gradient norm before and after clipping (log scale), the clipped steps and the
    guard's skipped or rolled-back steps as marks, and the running clip rate."""
    figure, ax = plt.subplots(figsize=(10, 3.4), dpi=100)
    _line(ax, train, "grad_norm", label="norm before clipping", linewidth=1)
    _line(ax, train, "grad_norm_clipped", label="norm after clipping", linewidth=1)
    clipped = [line for line in train if line.get("clipped")]
    marks = [(clipped, "clipped", "|", "tab:red")]
    marks += [([line for line in train if line.get("guard") == action], action, "x", "black")
              for action in ("skip", "rollback")]
    for lines, label, marker, colour in marks:
        if lines:
            # y in axes fraction: the marks sit along the bottom edge
            ax.plot([line["step"] for line in lines], [0.03] * len(lines), marker,
                    color=colour, markersize=8, label=f"{label} ({len(lines)})",
                    transform=ax.get_xaxis_transform())
    _log_if_positive(ax)
    ax.set_xlabel("training step")
    ax.set_ylabel("global gradient norm")
    rate = ax.twinx()
    _line(rate, train, "clip_rate", color="tab:purple", linewidth=1, linestyle="--")
    rate.set_ylim(0, 1.05)
    rate.set_ylabel("clip rate so far", color="tab:purple")
    ax.set_title("gradient norm and clipping")
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="upper right")
    figure.tight_layout()
    return figure


def lyapunov_figure(exponents: list[float | None]):
    """The largest Lyapunov exponents of the trained model (per step, natural log):
    below 0 the dynamics contract and gradients vanish, above 0 they expand."""
    values = [math.nan if value is None else float(value) for value in exponents]
    figure, ax = plt.subplots(figsize=(7, 3.2), dpi=100)
    colours = ["tab:red" if value > 0 else "tab:blue" for value in values]
    ax.bar(range(1, len(values) + 1), values, color=colours)
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xlabel("exponent index (largest first)")
    ax.set_ylabel("lambda per step")
    top = values[0] if values else math.nan
    ax.set_title(f"Lyapunov spectrum: lambda_1 = {top:.3g} "
                 f"({'expanding' if top > 0 else 'contracting'})")
    ax.grid(True, axis="y", alpha=0.3)
    figure.tight_layout()
    return figure


def _line(ax, lines: list[dict], key: str, **style) -> None:
    points = [(line["step"], line[key]) for line in lines
              if isinstance(line.get(key), (int, float)) and "step" in line]
    if points:
        ax.plot(*zip(*points, strict=True), **style)


def _log_if_positive(ax) -> None:
    data = [value for line in ax.get_lines() for value in np.asarray(line.get_ydata(), float)
            if np.isfinite(value)]
    if data and min(data) > 0:
        ax.set_yscale("log")
