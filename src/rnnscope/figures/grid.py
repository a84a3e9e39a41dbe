"""The study's comparison grid: the final metric and the reach of every configuration,
seeds averaged, as two heat-map tables over the grid's axes.

The columns are the sequence length when the study varies it (the classic plot: how far
back can each remedy reach), else the parameter with the most values; the rows are
every combination of the other varied parameters, so any number of them stays readable.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np

from rnnscope.figures.canvas import plt

SEED_KEYS = ("run.seed", "seed")
PREFERRED_COLUMN = "task.seq_len"


@dataclass
class Grid:
    row_keys: list[str]
    column_key: str | None
    rows: list[str]  # labels
    columns: list[str]
    means: dict[str, np.ndarray]  # quantity -> [rows, columns], NaN where no finished run
    counts: np.ndarray  # finished runs averaged per cell


def param_text(value) -> str:
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def varied_keys(params: list[dict]) -> list[str]:
    """Grid parameters that take more than one value, in first-seen order, seeds left
    out (they are averaged)."""
    keys: dict[str, set] = {}
    for values in params:
        for key, value in values.items():
            keys.setdefault(key, set()).add(param_text(value))
    return [key for key, seen in keys.items() if len(seen) > 1 and key not in SEED_KEYS]


def study_grid(points: list[tuple[dict, dict]], quantities: tuple[str, ...],
               labels: list[str] | None = None) -> Grid:
    """`points`: (params, {quantity: value or None}) of the finished runs. `labels`, one
    per point (a run's name without its seed), name the rows when the study is a list
    of variants rather than a grid: a table over two parameters would be mostly empty."""
    varied = varied_keys([params for params, _ in points])
    column_key = None
    if varied:
        column_key = PREFERRED_COLUMN if PREFERRED_COLUMN in varied else max(
            reversed(varied), key=lambda k: len({param_text(p.get(k)) for p, _ in points}))
    row_keys = [key for key in varied if key != column_key]
    grid = _fill(points, quantities, row_keys, column_key, None)
    if labels is not None and len(grid.rows) > 1 and (grid.counts > 0).mean() < 0.5:
        column_key = PREFERRED_COLUMN if PREFERRED_COLUMN in varied else None
        grid = _fill(points, quantities, [], column_key, labels)
    return grid


def _fill(points, quantities, row_keys: list[str], column_key: str | None,
          labels: list[str] | None) -> Grid:
    def row_of(index: int, params: dict) -> str:
        if labels is not None:
            return labels[index]
        return ", ".join(f"{key}={param_text(params.get(key))}" for key in row_keys) \
            or "all runs"

    def column_of(params: dict) -> str:
        return "" if column_key is None else param_text(params.get(column_key))

    if labels is not None:  # in the study's order
        rows = list(dict.fromkeys(labels))
    else:
        rows = _ordered({row_of(i, p): tuple(_sort_key(p.get(k)) for k in row_keys)
                         for i, (p, _) in enumerate(points)})
    columns = _ordered({column_of(p): (_sort_key(p.get(column_key)),) for p, _ in points})
    sums = {q: np.zeros((len(rows), len(columns))) for q in quantities}
    counts = {q: np.zeros((len(rows), len(columns))) for q in quantities}
    runs = np.zeros((len(rows), len(columns)), dtype=int)
    for index, (params, values) in enumerate(points):
        i, j = rows.index(row_of(index, params)), columns.index(column_of(params))
        runs[i, j] += 1
        for quantity in quantities:
            value = values.get(quantity)
            if isinstance(value, (int, float)) and math.isfinite(value):
                sums[quantity][i, j] += value
                counts[quantity][i, j] += 1
    means = {q: np.where(counts[q] > 0, sums[q] / np.maximum(counts[q], 1), np.nan)
             for q in quantities}
    return Grid(row_keys, column_key, rows, columns, means, runs)


def _sort_key(value):
    # numbers in numeric order before text; text alphabetically
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, float(value), "")
    return (1, 0.0, param_text(value))


def _ordered(labels: dict[str, tuple]) -> list[str]:
    return sorted(labels, key=lambda label: labels[label])


def study_grid_figure(grid: Grid, titles: dict[str, str], *, lower_is_better=("metric",)):
    """One heat-map table per quantity in `titles`, each cell annotated with its mean and
    (when seeds were averaged) the number of runs; empty cells had no finished run."""
    quantities = list(titles)
    height = 2.2 + 0.5 * len(grid.rows)
    width = 2.5 + max(len(label) for label in grid.rows) * 0.06 + 1.1 * len(grid.columns)
    figure, axes = plt.subplots(1, len(quantities), figsize=(min(width, 9) * len(quantities),
                                                             height), dpi=100, squeeze=False)
    for ax, quantity in zip(axes[0], quantities, strict=True):
        values = np.ma.masked_invalid(grid.means[quantity])
        cmap = "viridis_r" if quantity in lower_is_better else "viridis"
        image = ax.imshow(values, aspect="auto", cmap=cmap, interpolation="nearest")
        low, high = image.get_clim()
        for (i, j), value in np.ndenumerate(grid.means[quantity]):
            text = "-" if not math.isfinite(value) else f"{value:.3g}"
            if grid.counts[i, j] > 1:
                text += f"\n(n={grid.counts[i, j]})"
            shade = 0.5 if high == low else (value - low) / (high - low)
            dark = (shade > 0.5) == (cmap == "viridis_r") if math.isfinite(value) else False
            ax.text(j, i, text, ha="center", va="center", fontsize=9,
                    color="white" if dark else "black")
        ax.set_yticks(range(len(grid.rows)), grid.rows, fontsize=9)
        long = max((len(label) for label in grid.columns), default=0) > 6
        ax.set_xticks(range(len(grid.columns)), grid.columns, fontsize=9,
                      rotation=30 if long else 0, ha="right" if long else "center")
        ax.set_xlabel(grid.column_key or "")
        ax.set_title(titles[quantity], fontsize=10)
    figure.tight_layout()
    return figure
