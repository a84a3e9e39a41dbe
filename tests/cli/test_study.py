"""`rnnscope study`: bad study files and arguments are one line, exit 2, nothing written."""

from __future__ import annotations

import pytest

from rnnscope.cli.main import main
from support import TINY_STUDY, one_line_error, write_yaml_file


@pytest.mark.parametrize(("data", "message"), [
    ({"base": TINY_STUDY, "grid": {"seed": 0}}, "study.grid: expected a mapping"),
    ({"base": TINY_STUDY, "grid": {"cell": ["rnn_tanh"], "init": ["chrono:10"]}}, "exclude"),
    ({"base": {**TINY_STUDY, "model": {"hidden": -1}}}, "model.hidden: must be an integer >= 1"),
    ({"base": TINY_STUDY, "settings": {}}, "study.settings: unknown key"),
    ({"base": TINY_STUDY, "variants": [{"name": "a"}, {"name": "text", "task.name": "text",
                                                "task.path": "absent.txt"}]},
     "study: run text: task.path: no such file: absent.txt"),
])
def test_a_bad_study_file_exits_2_with_one_line_and_writes_nothing(tmp_path, monkeypatch,
                                                                   capsys, data, message):
    monkeypatch.chdir(tmp_path)
    path = write_yaml_file(tmp_path / "bad.yaml", data)
    assert main(["study", str(path)]) == 2  # default --out: studies/bad
    assert message in one_line_error(capsys)
    assert main(["study", str(path), "--out", str(tmp_path / "out"), "--workers", "2"]) == 2
    assert message in one_line_error(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]  # no study directory


@pytest.mark.parametrize(("args", "message"), [
    ([], "study: give a study FILE to run, or --status DIR to show one"),
    (["s.yaml", "--status", "out"], "study: give a study FILE to run, or --status DIR"),
    (["s.yaml", "--workers", "0"], "--workers: must be an integer >= 1, got 0"),
    (["s.yaml", "--workers", "two"], "argument --workers: invalid int value: 'two'"),
    (["absent.yaml"], "study: absent.yaml is not a file"),
    (["--status", "nowhere"], "--status: nowhere is not a directory"),
    (["--status", "empty"], "not a study store"),
    (["s.yaml", "--out", "s.yaml"], "out: s.yaml exists and is not a directory"),
])
def test_bad_arguments_exit_2_with_one_line(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    write_yaml_file(tmp_path / "s.yaml", {"base": TINY_STUDY})
    (tmp_path / "empty").mkdir()
    assert main(["study", *args]) == 2
    assert message in one_line_error(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "s.yaml"]
