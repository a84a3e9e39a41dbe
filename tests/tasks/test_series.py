"""Forecasting from small CSV files the tests write: windows relative to their last row,
the scale, the baselines, errors; and an LSTM that beats the naive forecasts on a
trending, seasonal series with missing rows."""

from __future__ import annotations

import math
import random
import statistics

import pytest
import torch

from rnnscope.models.sequence import SequenceModel
from rnnscope.tasks import get_task
from rnnscope.tasks.series import SeriesTask
from rnnscope.training.config import ExperimentConfig
from rnnscope.training.trainer import Trainer


def write_csv(tmp_path, header: str, rows: list, name: str = "data.csv") -> str:
    lines = [header] + [row if isinstance(row, str) else ",".join(map(str, row)) for row in rows]
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def ramp(tmp_path, rows: int = 20) -> str:
    """t, x = t and y = 100 - 2t: every value tells which row it came from."""
    return write_csv(tmp_path, "t,x,y", [(t, t, 100 - 2 * t) for t in range(rows)])


def test_registered_and_sized(tmp_path):
    task = get_task("series", path=ramp(tmp_path, 40), columns="x, y", seq_len=3, horizon=2)
    assert isinstance(task, SeriesTask) and task.name == "series"
    assert (task.input_size, task.output_size) == (2, 4)
    assert task.metric_name == "mse" and task.solved_below is None
    assert task.columns == ["x", "y"]


def squares(tmp_path, rows: int = 20) -> str:
    """t, x = t^2 and y = 100 - 3t: x's changes grow, so windows differ, y trends down."""
    return write_csv(tmp_path, "t,x,y", [(t, t * t, 100 - 3 * t) for t in range(rows)])


def test_scale_is_the_rms_of_one_step_changes_in_the_training_rows(tmp_path):
    task = SeriesTask(squares(tmp_path), "x,y", seq_len=3, valid_fraction=0.25)  # 15 train rows
    changes = [2 * t + 1 for t in range(14)]  # (t + 1)^2 - t^2
    rms = math.sqrt(statistics.fmean(c * c for c in changes))
    assert task.scale.tolist() == pytest.approx([rms, 3.0], rel=1e-12)  # a steady trend: 3
    assert task.values["train"][:, 0].tolist() == [t * t for t in range(15)]  # kept as read
    assert task.values["valid"][:, 0].tolist() == [t * t for t in range(15, 20)]


def test_validation_values_do_not_change_the_scale(tmp_path):
    rows = [(t, t * t) for t in range(20)]
    first = SeriesTask(write_csv(tmp_path, "t,x", rows, "a.csv"), "x", seq_len=3)
    changed = rows[:16] + [(t, 1000 - 7 * t) for t in range(16, 20)]
    second = SeriesTask(write_csv(tmp_path, "t,x", changed, "b.csv"), "x", seq_len=3)
    assert torch.equal(first.scale, second.scale)
    assert torch.equal(first.values["train"], second.values["train"])
    assert first.baseline != second.baseline


@pytest.mark.parametrize("split", ["train", "valid"])
def test_windows_are_relative_to_their_last_row(tmp_path, split):
    task = SeriesTask(squares(tmp_path), ["x", "y"], seq_len=3, horizon=2, valid_fraction=0.25)
    inputs, targets = task.windows(split)
    first, last = (0, 15) if split == "train" else (15, 20)
    assert inputs.shape == (3, last - first - 4, 2) and targets.shape == (last - first - 4, 4)
    assert inputs.dtype == targets.dtype == torch.float32
    x_scale, y_scale = task.scale.tolist()
    for w, start in enumerate(range(first, last - 4)):
        rows = [(t * t, 100 - 3 * t) for t in range(start, start + 5)]
        end = rows[2]  # the window's last row
        for t in range(3):
            assert inputs[t, w].tolist() == pytest.approx(
                [(rows[t][0] - end[0]) / x_scale, (rows[t][1] - end[1]) / y_scale], rel=1e-6)
        # Target entry h * C + c: column c's change, h + 1 rows after the window.
        expected = [(rows[3 + h][c] - end[c]) / (x_scale, y_scale)[c] for h in range(2)
                    for c in range(2)]
        assert targets[w].tolist() == pytest.approx(expected, rel=1e-6)
    # A trend far above the training rows looks like any other window: y's inputs are
    # the same in every window of either split.
    assert torch.equal(inputs[:, 0, 1], inputs[:, -1, 1])


def test_drawn_batches_are_windows_of_the_split(tmp_path):
    task = SeriesTask(squares(tmp_path), "x", seq_len=3, horizon=2, valid_fraction=0.25)
    for split in ("train", "valid"):
        inputs, targets = task.batch(64, torch.Generator().manual_seed(0), split)
        every_input, every_target = task.windows(split)
        drawn = {tuple(inputs[:, b, 0].tolist() + targets[b].tolist()) for b in range(64)}
        allowed = {tuple(every_input[:, w, 0].tolist() + every_target[w].tolist())
                   for w in range(every_target.shape[0])}
        assert drawn == allowed  # never across the boundary; every window turns up


def test_batches_are_deterministic_by_seed(tmp_path):
    task = SeriesTask(squares(tmp_path, 40), "x", seq_len=4)
    first = task.batch(8, torch.Generator().manual_seed(5), "valid")
    second = task.batch(8, torch.Generator().manual_seed(5), "valid")
    other = task.batch(8, torch.Generator().manual_seed(6), "valid")
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    assert not torch.equal(first[0], other[0])


def test_persistence_baseline_is_exact(tmp_path):
    # x = 0, 2, 4, 4, 0 | 1, 3, 2, 6; training changes 2, 2, 0, -4: scale^2 = 24 / 4.
    path = write_csv(tmp_path, "x", [(v,) for v in (0, 2, 4, 4, 0, 1, 3, 2, 6)])
    task = SeriesTask(path, "x", seq_len=2, horizon=2, valid_fraction=0.45)
    assert len(task.values["valid"]) == 4
    # One validation window fits: (1, 3) -> (2, 6); repeating 3 errs by -1 and 3.
    expected = ((2 - 3) ** 2 + (6 - 3) ** 2) / 2 / (24 / 4)
    assert task.baseline == task.baselines["persistence"] == pytest.approx(expected, rel=1e-12)
    assert "seasonal_naive" not in task.baselines  # no season given


def test_persistence_baseline_of_a_ramp(tmp_path):
    # A straight line: h steps ahead the persistence error is h times the one-step change,
    # which is the scale.
    task = SeriesTask(squares(tmp_path, 40), "y", seq_len=4, horizon=3)
    assert task.baseline == pytest.approx((1 + 4 + 9) / 3, rel=1e-12)


def test_seasonal_naive_baseline_is_exact(tmp_path):
    # Period 4 on a trend of 1 per row: the value a season back is 4 lower, always.
    pattern = (0, 3, -1, 2)
    rows = [(t, t + pattern[t % 4]) for t in range(60)]
    task = SeriesTask(write_csv(tmp_path, "t,x", rows), "x", seq_len=6, horizon=5,
                      season=4)
    scale = task.scale.item()
    # Steps 1-4 look one season back, step 5 two: errors 4, 4, 4, 4, 8.
    assert task.baselines["seasonal_naive"] == pytest.approx(
        (4 * 16 + 64) / 5 / scale**2, rel=1e-12)
    # Without the trend the season repeats exactly: the seasonal naive forecast is right.
    flat = SeriesTask(write_csv(tmp_path, "t,x", [(t, pattern[t % 4]) for t in range(60)],
                                "flat.csv"), "x", seq_len=6, horizon=5, season=4)
    assert flat.baselines["seasonal_naive"] == 0 < flat.baselines["persistence"]


def test_missing_error_lists_spreadsheet_row_numbers(tmp_path):
    rows = [(t, t) for t in range(30)]
    rows[2] = (2, "")  # row 4 of the sheet: header is row 1, data starts at row 2
    rows[5] = (5, "n/a")  # row 7
    rows[6] = "6"  # row 8: the cell is not there at all
    rows[9] = (9, "nan")  # row 11
    rows[12] = (12, "inf")  # row 14
    rows[20] = (20, "?")  # row 22: the sixth, not listed
    path = write_csv(tmp_path, "t,x", rows)
    with pytest.raises(ValueError) as info:
        SeriesTask(path, "x", seq_len=3)
    assert str(info.value) == (f"{path}: 6 rows with empty or non-numeric values in x: rows "
                               f"4, 7, 8, 11, 14, ... (set task.missing to drop or interpolate)")
    # The other column is clean: picking only it needs no missing policy.
    assert len(SeriesTask(path, "t", seq_len=3).values["train"]) == 24


def test_missing_drop_removes_the_rows(tmp_path):
    rows = [(t, t if t % 5 != 2 else "") for t in range(25)]
    task = SeriesTask(write_csv(tmp_path, "t,x", rows), ["t", "x"], seq_len=3,
                      missing="drop")
    kept = torch.cat([task.values["train"], task.values["valid"]])
    expected = [t for t in range(25) if t % 5 != 2]
    assert kept[:, 0].tolist() == expected and kept[:, 1].tolist() == expected


def test_missing_interpolate_is_linear_and_holds_the_ends(tmp_path):
    x = ["", "", 3, "", "", 9, 10, "x", 14, 1, 2, 3, 4, 5, 6, 7, 8, ""]
    y = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, "", 13, 14, 15, 16, 17, 18]
    path = write_csv(tmp_path, "x,y", list(zip(x, y, strict=True)))
    task = SeriesTask(path, "x,y", seq_len=3, missing="interpolate", valid_fraction=0.5)
    filled = torch.cat([task.values["train"], task.values["valid"]])
    assert filled[:, 0].tolist() == pytest.approx(
        [3, 3, 3, 5, 7, 9, 10, 12, 14, 1, 2, 3, 4, 5, 6, 7, 8, 8], abs=1e-5)
    assert filled[:, 1].tolist() == pytest.approx(list(range(1, 19)), abs=1e-5)


def test_blank_lines_are_skipped_but_counted_in_row_numbers(tmp_path):
    rows = [(t, t) for t in range(10)] + [""] + [(10, "")] + [(t, t) for t in range(11, 20)]
    path = write_csv(tmp_path, "t,x", rows)
    with pytest.raises(ValueError, match="1 rows with empty or non-numeric values in x: rows 13 "):
        SeriesTask(path, "x", seq_len=3)
    task = SeriesTask(path, "x", seq_len=3, missing="drop")
    assert len(task.values["train"]) + len(task.values["valid"]) == 19


def test_plugs_into_a_sequence_model(tmp_path):
    task = SeriesTask(ramp(tmp_path, 80), "x,y", seq_len=10, horizon=3)
    torch.manual_seed(0)
    model = SequenceModel("gru", task.input_size, 8, task.output_size)
    inputs, targets = task.batch(6, torch.Generator().manual_seed(0))
    output, _ = model(inputs)
    assert output.shape == (10, 6, 6)
    loss = task.loss(output, targets)
    loss.backward()
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss, torch.nn.functional.mse_loss(output[-1], targets))
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize(("case", "settings", "message"), [
    ("missing", {}, "task.path: no such file: {path}"),
    ("fine", {"columns": "z"}, "{path}: column 'z' not found; available: 't', 'x', 'y'"),
    ("fine", {"columns": "x,,x"}, "task.columns: 'x' is named twice"),
    ("fine", {"columns": " , "}, "task.columns: name at least one column"),
    ("empty", {}, "{path}: empty: expected a header line naming the columns"),
    ("numbers", {}, "{path}: no header: the first line holds numbers, not column names"),
    ("latin-1", {}, "{path}: not UTF-8 text"),
    ("fine", {"seq_len": 8}, "{path}: too few rows: 20 rows give 16 for training and 4 for "
                             "validation; each needs at least seq_len + horizon = 9"),
    ("fine", {"horizon": 3, "seq_len": 2}, "at least seq_len + horizon = 5"),
    ("fine", {"seq_len": 1}, "task.seq_len: must be an integer >= 2, got 1"),
    ("fine", {"horizon": 0}, "task.horizon: must be an integer >= 1, got 0"),
    ("fine", {"valid_fraction": 1.0}, "task.valid_fraction: must be in (0, 0.5], got 1.0"),
    ("fine", {"missing": "zero"}, "task.missing: unknown 'zero'; accepted: error, drop, "
                                  "interpolate"),
    ("constant", {}, "{path}: column 'x' is constant in the training rows, so there are "
                     "no changes to forecast"),
    ("huge", {}, "{path}: column 'x' holds values up to 1e+308, too large to take "
                 "differences of in float64"),
    ("spiky", {}, "{path}: column 'x' spans more than 1e+30 times its typical change"),
    ("fine", {"season": 0}, "task.season: must be an integer >= 1, got 0"),
    ("fine", {"season": 17}, "task.season: at most the 16 training rows, got 17"),
    ("hollow", {"missing": "interpolate"}, "{path}: column 'x' holds no numbers"),
])
def test_bad_input_is_one_line_naming_the_file_or_field(tmp_path, case, settings, message):
    path = tmp_path / "data.csv"
    body = "".join(f"{t},{t % 7},{t}\n" for t in range(20))
    contents = {
        "fine": "t,x,y\n" + body,
        "empty": "\n\n",
        "numbers": body,
        "latin-1": "t,caf\xe9\n" + body,
        "constant": "t,x\n" + "".join(f"{t},5\n" for t in range(16)) + "16,1\n" * 4,
        "hollow": "t,x\n" + "".join(f"{t},-\n" for t in range(20)),
        # +-1e308 in turn: each is a float64, their differences are not (issue 19)
        "huge": "t,x\n" + "".join(f"{t},{(-1) ** t}e308\n" for t in range(20)),
        "spiky": "t,x\n" + "".join(f"{t},{t}\n" for t in range(16)) + "16,1e300\n" * 4,
    }
    if case in contents:
        path.write_bytes(contents[case].encode("latin-1" if case == "latin-1" else "utf-8"))
    settings = {"columns": "x", "seq_len": 3, **settings}
    with pytest.raises(ValueError) as info:
        SeriesTask(str(path), **settings)
    text = str(info.value)
    assert "\n" not in text
    assert message.format(path=path) in text


def test_design_spelling_column_is_an_alias_for_one_column(tmp_path):
    path = ramp(tmp_path, 40)
    by_alias = get_task("series", path=path, column="y", seq_len=4)
    by_name = get_task("series", path=path, columns="y", seq_len=4)
    assert by_alias.columns == by_name.columns == ["y"]
    assert torch.equal(by_alias.values["train"], by_name.values["train"])
    for settings in ({}, {"column": "y", "columns": "y"}):
        with pytest.raises(ValueError, match="^task.columns: give the CSV column"):
            get_task("series", path=path, seq_len=4, **settings)


def trending_seasonal_csv(tmp_path, rows: int = 480, season: int = 12) -> str:
    """Monthly-like data: a trend, a yearly season, noise, and 5% of the values missing
    (empty cells, as a spreadsheet export leaves them)."""
    rng = random.Random(0)
    lines = []
    for t in range(rows):
        value = 10 + 0.05 * t + 2 * math.sin(2 * math.pi * t / season) + rng.gauss(0, 0.2)
        lines.append((t, "" if rng.random() < 0.05 else f"{value:.4f}"))
    return write_csv(tmp_path, "t,x", lines)


def test_an_lstm_beats_the_naive_forecasts_on_a_trending_seasonal_series(tmp_path):
    """Issue 19: forecasting levels normalised on the training rows lost to persistence
    13x once the trend carried the held-out rows above them; relative windows win."""
    config = ExperimentConfig.from_dict({
        "task": {"name": "series", "path": trending_seasonal_csv(tmp_path), "column": "x",
                 "missing": "interpolate", "season": 12, "seq_len": 24},
        "model": {"cell": "lstm", "hidden": 16, "engine": "native"}, "optim": {"lr": 0.01},
        "run": {"steps": 100, "batch": 32, "eval_every": 0, "checkpoint_every": 0,
                "quiet": True}, "probe": {"every": 0}})
    trainer = Trainer(config)
    task = trainer.task
    assert task.values["valid"].min() > task.values["train"].max() - 4  # the trend
    trainer.fit()
    inputs, targets = task.windows("valid")
    with torch.no_grad():
        output, _ = trainer.model(inputs)
    mse = torch.nn.functional.mse_loss(output[-1], targets).item()
    persistence, seasonal = task.baselines["persistence"], task.baselines["seasonal_naive"]
    assert 0.5 < persistence < 2 and 0.5 < seasonal < 2  # the units: one-step changes
    assert mse < 0.3 * persistence and mse < 0.3 * seasonal, (mse, task.baselines)
