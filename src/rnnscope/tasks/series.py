"""Time-series forecasting from CSV columns: predict the next value(s) from a window.

The file needs a header line naming its columns; `columns` picks one or more
by name (a list, or one comma-separated string). Rows are time steps, in file
order; wholly blank lines are skipped. The last `valid_fraction` of the rows is
held out, and no window crosses into it.

Forecasts are relative to the window, as forecasting libraries do it, so that a
trend that carries the held-out rows above anything seen in training changes
nothing: a window's inputs are its rows minus its last row, and its target is
the change from the last row to each of the `horizon` rows after it. Both are in
units of each column's `scale`: the root mean square of its one-step changes over
the training rows (the persistence forecast's one-step error there, so a steady
trend has a scale too). A model that outputs 0 repeats the last value: the
persistence forecast.

A window is `seq_len` consecutive rows, inputs [seq_len, B, C]; its target is
flattened step-major to [B, horizon * C] (entry h * C + c is column c, h + 1
steps ahead). Loss and metric: MSE of the last output step against the target.

Baselines, as MSE over every validation window in the same units:
`persistence` (repeat the last row over the horizon; the task's `baseline`) and,
when `season` (a period in rows, e.g. 52 for weekly data) is given,
`seasonal_naive` (repeat the value one season before each forecast step).

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

from rnnscope.checks import choice, integer, number
from rnnscope.tasks import register_task
from rnnscope.tasks.base import (
    Task,
    read_utf8,
)

MISSING = ("error", "drop", "interpolate")
ROWS_LISTED = 5  # how many bad row numbers an error message shows
MAX_SPAN = 1e30  # a column's range over its scale; float32 holds up to 3.4e38


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
                 column: str | None = None, season: int | None = None) -> None:
        # `column` is DESIGN.md's spelling for a single column (--task.column=co2).
        if (columns is None) == (column is None):
            raise ValueError("task.columns: give the CSV column(s) to forecast, as "
                             "--task.columns=a,b or --task.column=a (one of the two)")
        columns = column if columns is None else columns
        self.seq_len = integer("task.seq_len", seq_len, 2)
        self.horizon = integer("task.horizon", horizon, 1)
        self.valid_fraction = number("task.valid_fraction", valid_fraction, above=0.0, maximum=0.5)
        self.season = None if season is None else integer("task.season", season, 1)
        choice("task.missing", missing, MISSING)
        self.columns = parse_columns(columns)
        file, values, numbers = read_columns(path, self.columns)
        self.path = file
        values = fill_missing(file, values, numbers, self.columns, missing)

        valid_count = round(self.valid_fraction * len(values))
        self.cut = cut = len(values) - valid_count
        need = self.seq_len + self.horizon
        if min(cut, valid_count) < need:
            raise ValueError(
                f"{file}: too few rows: {len(values)} rows give {cut} for training and "
                f"{valid_count} for validation; each needs at least seq_len + horizon = {need}")
        if self.season is not None and self.season > cut:
            raise ValueError(f"task.season: at most the {cut} training rows, got {self.season}")
        self.scale = torch.from_numpy(change_scale(file, values[:cut], self.columns))
        with np.errstate(over="ignore"):
            span = (values.max(axis=0) - values.min(axis=0)) / self.scale.numpy()
        for c, name in enumerate(self.columns):  # a window's values must fit in float32
            if not span[c] < MAX_SPAN:
                raise ValueError(f"{file}: column {name!r} spans more than {MAX_SPAN:.0e} "
                                 f"times its typical change in the training rows; such "
                                 f"values overflow float32 once scaled: rescale the column")
        series = torch.from_numpy(values)  # float64: changes of 0.1 on levels of 400 stay exact
        self.values = {"train": series[:cut], "valid": series[cut:]}
        self.input_size = len(self.columns)
        self.output_size = self.horizon * len(self.columns)
        self.baselines = self._baselines(series)
        self.baseline = self.baselines["persistence"]

    def _windows(self, values: Tensor, starts: Tensor) -> tuple[Tensor, Tensor]:
        """Windows at `starts` of `values` relative to their last row, in units of `scale`:
        inputs [T, W, C] and the changes ahead [W, H, C] (float64)."""
        rows = values[starts + torch.arange(self.seq_len)[:, None]]  # [T, W, C]
        ahead = values[starts[:, None] + self.seq_len + torch.arange(self.horizon)]  # [W, H, C]
        last = rows[-1]  # [W, C]
        return (rows - last) / self.scale, (ahead - last[:, None]) / self.scale

    def _baselines(self, series: Tensor) -> dict[str, float]:
        """MSE of the naive forecasts over every validation window (float64)."""
        valid = self.values["valid"]
        starts = torch.arange(len(valid) - self.seq_len - self.horizon + 1)
        _, changes = self._windows(valid, starts)
        baselines = {"persistence": float((changes ** 2).mean())}  # it forecasts no change
        if self.season is not None:
            # Step h ahead repeats the value ceil(h / season) seasons before it (in the
            # training rows, where that reaches back past the validation split).
            steps = torch.arange(1, self.horizon + 1)
            back = self.season * -(-steps // self.season)  # [H]
            last = self.cut + starts + self.seq_len - 1  # [W], in the whole series
            earlier = series[last[:, None] + steps - back]  # [W, H, C]
            forecast = (earlier - series[last][:, None]) / self.scale
            baselines["seasonal_naive"] = float(((changes - forecast) ** 2).mean())
        return baselines

    def windows(self, split: str = "valid") -> tuple[Tensor, Tensor]:
        """Every window of the split in order, as `batch` gives them: what the baselines
        are measured on, so a model's MSE on these compares with them exactly."""
        values = self.values[choice("split", split, ("train", "valid"))]
        starts = torch.arange(len(values) - self.seq_len - self.horizon + 1)
        inputs, changes = self._windows(values, starts)
        return inputs.float(), changes.reshape(len(starts), self.output_size).float()

    def draw(self, batch_size: int, generator: torch.Generator,
             split: str) -> tuple[Tensor, Tensor]:
        """Windows at random starts in the split: inputs [seq_len, B, C], targets [B, H * C]."""
        values = self.values[split]
        starts = torch.randint(0, len(values) - self.seq_len - self.horizon + 1, (batch_size,),
                               generator=generator)
        inputs, changes = self._windows(values, starts)
        return inputs.float(), changes.reshape(batch_size, self.output_size).float()

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        return torch.nn.functional.mse_loss(output[-1], target)


def change_scale(file: str, train: np.ndarray, names: list[str]) -> np.ndarray:
    """Each column's scale: the root mean square of its one-step changes over the
    training rows; one line naming the column where there is none (a constant column) or
    where the values are too large to subtract in float64."""
    with np.errstate(over="ignore", invalid="ignore"):
        changes = np.diff(train, axis=0)
        largest = np.abs(changes).max(axis=0)
        # Divided by the largest change first, so that squaring cannot overflow.
        scale = largest * np.sqrt(((changes / np.where(largest > 0, largest, 1)) ** 2)
                                  .mean(axis=0))
    for c, name in enumerate(names):
        if not np.isfinite(changes[:, c]).all():
            raise ValueError(f"{file}: column {name!r} holds values up to "
                             f"{float(np.abs(train[:, c]).max()):.3g}, too large to take "
                             f"differences of in float64 (about 1.8e308 at most); rescale "
                             f"the column")
        if scale[c] == 0:
            raise ValueError(f"{file}: column {name!r} is constant in the training rows, "
                             f"so there are no changes to forecast")
    return scale
