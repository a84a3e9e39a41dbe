"""Time-series forecasting from CSV columns: predict the next value(s) from a window.

The file needs a header line naming its columns; `columns` picks one or more
by name (a list, or one comma-separated string). Rows are time steps, in file
order; wholly blank lines are skipped. The last `valid_fraction` of the rows is
held out, and no window crosses into it. Each column is normalised with the
mean and (population) standard deviation of the training rows only.

A window is `seq_len` consecutive rows, inputs [seq_len, B, C]; its target is
the `horizon` rows after it, flattened step-major to [B, horizon * C] (entry
h * C + c is column c, h + 1 steps ahead). Loss and metric: MSE of the last
output step against the target.

Baseline: the persistence forecast (repeat the last observed row for the whole
horizon), its MSE over every validation window, in normalised units.

Empty, non-numeric and non-finite cells (nan, inf) are missing values:
`missing="error"` names the rows, `"drop"` drops them, `"interpolate"` fills
each column linearly between its neighbouring values (gaps at either end take
the nearest value).
"""

from __future__ import annotations

import csv
import io
import math
import os

import numpy as np
import torch
from torch import Tensor

from rnnscope.checks import integer, number
from rnnscope.tasks import register_task
from rnnscope.tasks.base import (
    Task,
    read_utf8,
)

MISSING = ("error", "drop", "interpolate")
ROWS_LISTED = 5  # how many bad row numbers an error message shows


def parse_columns(columns) -> list[str]:
    """Column names from a list or a comma-separated string (a number, as the CLI may type
    a numeric name, counts as its text)."""
    if isinstance(columns, (int, float)) and not isinstance(columns, bool):
        columns = str(columns)
    if isinstance(columns, str):
        columns = columns.split(",")
    if not isinstance(columns, (list, tuple)) or not all(isinstance(c, str) for c in columns):
        raise ValueError(f"task.columns: must be column names (a list or 'a,b'), got "
                         f"{columns!r}")
    names = [name.strip() for name in columns if name.strip()]
    if not names:
        raise ValueError("task.columns: name at least one column")
    twice = [name for name in names if names.count(name) > 1]
    if twice:
        raise ValueError(f"task.columns: {twice[0]!r} is named twice")
    return names


def _number(cell: str) -> float:
    try:
        value = float(cell)
    except ValueError:
        return math.nan
    return value if math.isfinite(value) else math.nan


def read_columns(path: str | os.PathLike, names: list[str]) -> tuple[str, np.ndarray, list[int]]:
    """(file name, values [rows, C] with NaN for missing cells, spreadsheet row numbers)."""
    file, text = read_utf8(path)
    # Row numbers count every record, blank ones too, as a spreadsheet shows the file.
    records = [(number, record) for number, record
               in enumerate(csv.reader(io.StringIO(text, newline="")), start=1)
               if any(cell.strip() for cell in record)]
    if not records:
        raise ValueError(f"{file}: empty: expected a header line naming the columns")
    header = [cell.strip() for cell in records[0][1]]
    if all(not math.isnan(_number(cell)) for cell in header):
        raise ValueError(f"{file}: no header: the first line holds numbers, not column names "
                         f"({', '.join(header[:5])})")
    where = []
    for name in names:
        if name not in header:
            raise ValueError(f"{file}: column {name!r} not found; available: "
                             f"{', '.join(repr(h) for h in header)}")
        if header.count(name) > 1:
            raise ValueError(f"{file}: column {name!r} appears {header.count(name)} times in "
                             f"the header")
        where.append(header.index(name))
    rows = [[_number(record[i]) if i < len(record) else math.nan for i in where]
            for _, record in records[1:]]
    numbers = [number for number, _ in records[1:]]
    return str(file), np.array(rows, dtype=np.float64).reshape(-1, len(names)), numbers


def fill_missing(file: str, values: np.ndarray, numbers: list[int], names: list[str],
                 missing: str) -> np.ndarray:
    """`values` with the NaN cells handled as `missing` says."""
    bad = np.isnan(values).any(axis=1)
    if not bad.any():
        return values
    if missing == "error":
        rows = [numbers[i] for i in np.flatnonzero(bad)]
        shown = ", ".join(map(str, rows[:ROWS_LISTED]))
        shown += ", ..." if len(rows) > ROWS_LISTED else ""
        raise ValueError(f"{file}: {len(rows)} rows with empty or non-numeric values in "
                         f"{', '.join(names)}: rows {shown} (set task.missing to drop or "
                         f"interpolate)")
    if missing == "drop":
        return values[~bad]
    filled = values.copy()
    steps = np.arange(len(values))
    for c, name in enumerate(names):
        known = ~np.isnan(values[:, c])
        if not known.any():
            raise ValueError(f"{file}: column {name!r} holds no numbers to interpolate from")
        # np.interp holds the end values beyond the first and last known points.
        filled[:, c] = np.interp(steps, steps[known], values[known, c])
    return filled


@register_task("series")
class SeriesTask(Task):
    metric_name = "mse"
    solved_below = None  # forecasting is judged against the persistence baseline

    def __init__(self, path: str, columns: str | list[str] | None = None, seq_len: int = 50,
                 horizon: int = 1, valid_fraction: float = 0.2, missing: str = "error",
                 column: str | None = None) -> None:
        # `column` is DESIGN.md's spelling for a single column (--task.column=co2).
        if (columns is None) == (column is None):
            raise ValueError("task.columns: give the CSV column(s) to forecast, as "
                             "--task.columns=a,b or --task.column=a (one of the two)")
        columns = column if columns is None else columns
        self.seq_len = integer("task.seq_len", seq_len, 2)
        self.horizon = integer("task.horizon", horizon, 1)
        self.valid_fraction = number("task.valid_fraction", valid_fraction, above=0.0, maximum=0.5)
        if missing not in MISSING:
            raise ValueError(f"task.missing: unknown {missing!r}; accepted: "
                             f"{', '.join(MISSING)}")
        self.columns = parse_columns(columns)
        file, values, numbers = read_columns(path, self.columns)
        self.path = file
        values = fill_missing(file, values, numbers, self.columns, missing)

        valid_count = round(self.valid_fraction * len(values))
        cut = len(values) - valid_count
        need = self.seq_len + self.horizon
        if min(cut, valid_count) < need:
            raise ValueError(
                f"{file}: too few rows: {len(values)} rows give {cut} for training and "
                f"{valid_count} for validation; each needs at least seq_len + horizon = {need}")
        train = values[:cut]
        for c, name in enumerate(self.columns):
            if train[:, c].min() == train[:, c].max():
                raise ValueError(f"{file}: column {name!r} is constant in the training rows "
                                 f"(std 0), so it cannot be normalised")
        self.mean = torch.from_numpy(train.mean(axis=0))
        self.std = torch.from_numpy(train.std(axis=0))
        normalised = (torch.from_numpy(values) - self.mean) / self.std
        self.values = {"train": normalised[:cut].float(), "valid": normalised[cut:].float()}
        self.input_size = len(self.columns)
        self.output_size = self.horizon * len(self.columns)
        self.baseline = self._persistence_mse(normalised[cut:])

    def _persistence_mse(self, values: Tensor) -> float:
        """MSE of repeating each validation window's last row over its horizon (float64)."""
        starts = torch.arange(len(values) - self.seq_len - self.horizon + 1)
        last = values[starts + self.seq_len - 1]  # [W, C]
        ahead = values[starts[:, None] + self.seq_len + torch.arange(self.horizon)]  # [W, H, C]
        return float(((ahead - last[:, None]) ** 2).mean())

    def draw(self, batch_size: int, generator: torch.Generator,
             split: str) -> tuple[Tensor, Tensor]:
        """Windows at random starts in the split: inputs [seq_len, B, C], targets [B, H * C]."""
        values = self.values[split]
        starts = torch.randint(0, len(values) - self.seq_len - self.horizon + 1, (batch_size,),
                               generator=generator)
        inputs = values[starts + torch.arange(self.seq_len)[:, None]]  # [T, B, C]
        ahead = values[starts[:, None] + self.seq_len + torch.arange(self.horizon)]  # [B, H, C]
        return inputs, ahead.reshape(batch_size, self.output_size)

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        return torch.nn.functional.mse_loss(output[-1], target)
