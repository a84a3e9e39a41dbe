"""The canvas every figure is drawn on: matplotlib, headless (the Agg backend), and the
two ways a figure leaves: a PNG file written atomically, or PNG bytes for the report.

Figure functions in this package take plain data (lists and dicts as a run directory
holds them) and return a Figure, so TensorBoard images and the HTML report share them.
"""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from rnnscope.files import atomic_target  # noqa: E402

__all__ = ["figure_png", "log_if_positive", "plot_series", "plt", "save_figure"]


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


def plot_series(ax, lines: list[dict], key: str, **style) -> None:
    points = [(line["step"], line[key]) for line in lines
              if isinstance(line.get(key), (int, float)) and "step" in line]
    if points:
        ax.plot(*zip(*points, strict=True), **style)


def log_if_positive(ax) -> None:
    data = [value for line in ax.get_lines() for value in np.asarray(line.get_ydata(), float)
            if np.isfinite(value)]
    if data and min(data) > 0:
        ax.set_yscale("log")
