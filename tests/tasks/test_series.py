"""Forecasting from small CSV files the tests write: windows, normalisation, baseline, errors."""

from __future__ import annotations

import statistics

import pytest
import torch

from rnnscope.models.sequence import SequenceModel
from rnnscope.tasks import get_task
from rnnscope.tasks.series import SeriesTask


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


def test_normalised_with_training_statistics(tmp_path):
    task = SeriesTask(ramp(tmp_path), "x", seq_len=3, valid_fraction=0.25)  # 15 train rows
    mean, std = statistics.fmean(range(15)), statistics.pstdev(range(15))
    assert task.mean.tolist() == pytest.approx([mean]) and task.std.tolist() == pytest.approx([std])
    expected = [(t - mean) / std for t in range(20)]
    assert task.values["train"][:, 0].tolist() == pytest.approx(expected[:15], abs=1e-6)
    assert task.values["valid"][:, 0].tolist() == pytest.approx(expected[15:], abs=1e-6)


def test_validation_values_do_not_change_the_statistics(tmp_path):
    rows = [(t, t) for t in range(20)]
    first = SeriesTask(write_csv(tmp_path, "t,x", rows, "a.csv"), "x", seq_len=3)
    changed = rows[:16] + [(t, 1000 - 7 * t) for t in range(16, 20)]
    second = SeriesTask(write_csv(tmp_path, "t,x", changed, "b.csv"), "x", seq_len=3)
    assert torch.equal(first.mean, second.mean) and torch.equal(first.std, second.std)
    assert torch.equal(first.values["train"], second.values["train"])
    assert not torch.equal(first.values["valid"], second.values["valid"])


def raw(task: SeriesTask, values: torch.Tensor) -> torch.Tensor:
    """Normalised values [..., C] back in the file's units, rounded (the ramp is integer)."""
    return (values.double() * task.std + task.mean).round()


@pytest.mark.parametrize("split", ["train", "valid"])
def test_windows_and_targets_match_the_file(tmp_path, split):
    task = SeriesTask(ramp(tmp_path), ["x", "y"], seq_len=3, horizon=2, valid_fraction=0.25)
    inputs, targets = task.batch(64, torch.Generator().manual_seed(0), split)
    assert inputs.shape == (3, 64, 2) and targets.shape == (64, 4)
    assert inputs.dtype == targets.dtype == torch.float32
    rows_in, rows_ahead = raw(task, inputs), raw(task, targets.reshape(64, 2, 2))
    first, last = (0, 15) if split == "train" else (15, 20)
    for b in range(64):
        start = int(rows_in[0, b, 0])
        window = torch.arange(start, start + 5, dtype=torch.float64)
        assert torch.equal(rows_in[:, b, 0], window[:3])  # x, three rows in a row
        assert torch.equal(rows_in[:, b, 1], 100 - 2 * window[:3])  # y alongside
        # Target entry h * C + c: column c, h + 1 rows after the window.
        assert torch.equal(rows_ahead[b, :, 0], window[3:])
        assert torch.equal(rows_ahead[b, :, 1], 100 - 2 * window[3:])
        assert first <= start and start + 5 <= last  # never across the boundary
    starts = set(rows_in[0, :, 0].tolist())
    assert starts == set(range(first, last - 4))  # every window of the split turns up


def test_batches_are_deterministic_by_seed(tmp_path):
    task = SeriesTask(ramp(tmp_path, 40), "x", seq_len=4)
    first = task.batch(8, torch.Generator().manual_seed(5), "valid")
    second = task.batch(8, torch.Generator().manual_seed(5), "valid")
    other = task.batch(8, torch.Generator().manual_seed(6), "valid")
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    assert not torch.equal(first[0], other[0])


def test_persistence_baseline_is_exact(tmp_path):
    # x = 0, 2, 4, 4, 0 | 1, 3, 2, 6; train mean 2, variance 16/5; seq_len 2, horizon 2.
    path = write_csv(tmp_path, "x", [(v,) for v in (0, 2, 4, 4, 0, 1, 3, 2, 6)])
    task = SeriesTask(path, "x", seq_len=2, horizon=2, valid_fraction=0.45)
    assert len(task.values["valid"]) == 4
    # One validation window fits: (1, 3) -> (2, 6); repeating 3 errs by -1 and 3.
    expected = ((2 - 3) ** 2 + (6 - 3) ** 2) / 2 / (16 / 5)
    assert task.baseline == pytest.approx(expected, rel=1e-12)


def test_persistence_baseline_of_a_ramp(tmp_path):
    # A straight line: h steps ahead the persistence error is h * slope, for every window.
    task = SeriesTask(ramp(tmp_path, 40), "x", seq_len=4, horizon=3)
    slope = 1 / statistics.pstdev(range(32))
    assert task.baseline == pytest.approx((1 + 4 + 9) / 3 * slope**2, rel=1e-12)


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
    kept = torch.cat([raw(task, task.values["train"]), raw(task, task.values["valid"])])
    expected = [t for t in range(25) if t % 5 != 2]
    assert kept[:, 0].tolist() == expected and kept[:, 1].tolist() == expected


def test_missing_interpolate_is_linear_and_holds_the_ends(tmp_path):
    x = ["", "", 3, "", "", 9, 10, "x", 14, 1, 2, 3, 4, 5, 6, 7, 8, ""]
    y = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, "", 13, 14, 15, 16, 17, 18]
    path = write_csv(tmp_path, "x,y", list(zip(x, y, strict=True)))
    task = SeriesTask(path, "x,y", seq_len=3, missing="interpolate", valid_fraction=0.5)
    filled = torch.cat([task.values["train"], task.values["valid"]]).double()
    filled = filled * task.std + task.mean
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
    ("constant", {}, "{path}: column 'x' is constant in the training rows (std 0)"),
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
