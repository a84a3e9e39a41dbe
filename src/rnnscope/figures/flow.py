"""Figures of the gradient flow through time, from plain data.

A flow is a dict as metrics.jsonl keeps it on a probe line (`GradientFlow.to_dict()`):

    {"layers": ["rnn.l0", ...],            one name per row
     "norms": [[...], ...],                ||dL/dh_t|| per row in time order (None: NaN)
     "reverse": [false, ...]}              optional: rows of a backward direction

`steps_back` turns a row into the profile by steps back from the loss (column 0 is
where the loss enters: the last time step, or the first for a reverse row).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from rnnscope.figures.canvas import plt, save_figure

UNDERFLOW_COLOUR, NONFINITE_COLOUR = "#000000", "#ff2db4"


def steps_back(flow: dict, row: int) -> list[float]:
    """Row `row` of `flow` by steps back from the loss; None reads as NaN."""
    values = [math.nan if value is None else float(value) for value in flow["norms"][row]]
    reverse = (flow.get("reverse") or [False] * len(flow["norms"]))[row]
    return values if reverse else values[::-1]


def plot_flow_profile(flow: dict, path: str | Path, *, title: str = "",
                      threshold: float = 1e-3) -> Path:
    """||dL/dh_t|| against steps back from the loss, log scale, one line per layer.

    The dashed line is `threshold` x the peak of the first layer: where a curve
    crosses it is that layer's reach.
    """
    return save_figure(flow_profile_figure(flow, title=title, threshold=threshold), path)


def flow_profile_figure(flow: dict, *, title: str = "", threshold: float = 1e-3):
    """The figure of `plot_flow_profile`, for callers that render it elsewhere
    (TensorBoard); close it with `plt.close` or `save_figure`."""
    figure, axes = plt.subplots(figsize=(7, 4), dpi=100)
    peak = 0.0
    for row, name in enumerate(flow["layers"]):
        values = np.asarray(steps_back(flow, row), dtype=float)
        values = values[~np.isnan(values)]
        shown = np.maximum(values, 1e-45)  # zeros (underflow) sit on the floor
        axes.plot(range(len(shown)), shown, label=name, linewidth=1.5)
        finite = values[np.isfinite(values)]
        if len(finite) and peak == 0.0:
            peak = float(finite.max())
    if peak > 0:
        axes.axhline(peak * threshold, color="grey", linestyle="--", linewidth=1,
                     label=f"{threshold:g} x peak")
    steps_back_axes(axes, title or "gradient flow through time")
    figure.tight_layout()
    return figure


def steps_back_axes(axes, title: str) -> None:
    """The axes of a gradient-norm profile: log norm against steps back from the loss."""
    axes.set_yscale("log")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("steps back from the loss")
    axes.set_ylabel("batch-mean ||dL/dh_t||")
    axes.set_title(title)
    axes.grid(True, which="major", alpha=0.3)
    axes.legend(fontsize=8)


def flow_matrix(probes: list[dict], layer: int) -> tuple[list[int], list[list[float]]]:
    """(training steps, rows of ||dL/dh|| by steps back) of one layer over the probes
    (train lines of metrics.jsonl that carry "flow"); NaN where a value was null."""
    steps, rows = [], []
    for probe in probes:
        if layer >= len(probe["flow"].get("norms") or []):
            continue
        steps.append(int(probe.get("step", len(steps))))
        rows.append(steps_back(probe["flow"], layer))
    return steps, rows


def flow_layers(probes: list[dict]) -> list[str]:
    """Layer names of the widest probe line (every probe of a run has the same layers)."""
    return max((list(probe["flow"].get("layers") or []) for probe in probes), key=len,
               default=[])


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
    steps_back_axes(ax, title or "gradient flow at the first, middle and last probe")
    figure.tight_layout()
    return figure
