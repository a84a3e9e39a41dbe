"""The run directory, written and read in one place: config, metrics stream, checkpoints
and summary."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

from rnnscope.rundir.directory import BUFFER_LINES, RunDirectory, all_finite, read_records


def test_a_metrics_file_cut_short_by_a_kill_is_read_up_to_the_cut(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"kind": "train", "step": 1}\n\n{"kind": "train", "step": 2}\n'
                    '{"kind": "train", "st', encoding="utf-8")
    assert read_records(path) == [{"kind": "train", "step": 1}, {"kind": "train", "step": 2}]
    assert read_records(tmp_path / "absent.jsonl") is None
    run = RunDirectory(tmp_path)
    assert [record["step"] for record in run.read_metrics()] == [1, 2]


def test_create_writes_the_config_and_refuses_a_directory_holding_a_run(tmp_path):
    run = RunDirectory.create(tmp_path / "run", {"model": {"cell": "lstm"}})
    assert yaml.safe_load(run.config_path.read_text()) == {"model": {"cell": "lstm"}}
    with pytest.raises(ValueError, match="already holds a run; continue it with --resume"):
        RunDirectory.create(tmp_path / "run", {})
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="exists and is not a directory"):
        RunDirectory.create(tmp_path / "file", {})
    with pytest.raises(ValueError, match=r"holds no run to resume \(no config.yaml\)"):
        RunDirectory.existing(tmp_path / "nothing")
    assert RunDirectory.existing(tmp_path / "run").path == tmp_path / "run"


def test_metrics_lines_are_written_in_batches_and_all_before_a_checkpoint(tmp_path):
    run = RunDirectory.create(tmp_path / "run", {})

    def on_disk() -> list[int]:
        text = run.metrics_path.read_text() if run.metrics_path.exists() else ""
        return [json.loads(line)["step"] for line in text.splitlines()]

    for step in (1, 2, 3):
        run.append({"kind": "train", "step": step})
    assert on_disk() == []  # queued: one write for many steps
    assert run.save_checkpoint("last", {"step": 3})
    assert on_disk() == [1, 2, 3]  # a kill after the checkpoint loses none of its lines
    run.append({"kind": "train", "step": 4})
    assert not run.save_checkpoint("last", {"w": torch.tensor([math.nan])})
    assert on_disk() == [1, 2, 3]  # no checkpoint written, nothing forced out
    assert [record["step"] for record in run.read_metrics()] == [1, 2, 3, 4]
    for step in range(5, 5 + BUFFER_LINES):
        run.append({"kind": "train", "step": step})
    assert on_disk() == list(range(1, 5 + BUFFER_LINES))  # the batch filled up
    run.append({"kind": "eval", "step": 200})
    run.write_summary({"steps": 200})
    assert on_disk()[-1] == 200
    run.append({"kind": "eval", "step": 201})
    run.close()
    assert on_disk()[-1] == 201


def test_metrics_are_appended_line_by_line_and_cut_back_to_a_checkpoint(tmp_path):
    run = RunDirectory.create(tmp_path / "run", {})
    for step in (1, 2, 3):
        run.append({"kind": "train", "step": step, "loss": math.nan if step == 2 else 0.5})
    run.close()
    lines = run.metrics_path.read_text().splitlines()
    assert json.loads(lines[1]) == {"kind": "train", "step": 2, "loss": None}  # strict JSON
    run.cut_metrics(2)
    assert [record["step"] for record in run.read_metrics()] == [1, 2]


def test_checkpoints_are_atomic_finite_and_read_as_tensors_only(tmp_path):
    run = RunDirectory.create(tmp_path / "run", {})
    assert run.load_checkpoint("last") is None
    assert run.save_checkpoint("last", {"step": 3, "w": torch.ones(2)})
    assert not run.save_checkpoint("last", {"step": 4, "w": torch.tensor([1.0, math.inf])})
    assert run.load_checkpoint("last")["step"] == 3  # the finite one stays
    assert all_finite({"a": [torch.zeros(1), (torch.ones(1),)], "b": 1})
    assert not all_finite([{"x": torch.tensor([math.nan])}])
    (run.checkpoint_dir / "last.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"resume: cannot read .*last\.pt"):
        run.load_checkpoint("last")
    assert not list(run.path.rglob("*.tmp"))


def test_summary_is_strict_json(tmp_path):
    run = RunDirectory.create(tmp_path / "run", {})
    run.write_summary({"final_loss": math.inf, "steps": 2})
    assert json.loads(run.summary_path.read_text()) == {"format": 1, "final_loss": None,
                                                        "steps": 2}
