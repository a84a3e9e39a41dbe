"""`rnnscope report`: the summary and --json, and bad input as one line with exit 2."""

from __future__ import annotations

import json

import pytest

from rnnscope.cli.main import main


def test_cli_json_and_summary(study, run_dir, tmp_path, capsys):
    out = tmp_path / "sub" / "study.html"
    assert main(["report", str(study), "--out", str(out), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == {"report": str(out), "kind": "study", "runs": 5, "figures": 7}
    assert out.read_text().count("<img ") == 7
    assert main(["report", str(run_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == f"open {run_dir / 'report.html'} in a browser"
    assert (run_dir / "report.html").is_file()
    (run_dir / "report.html").unlink()


@pytest.mark.parametrize(("target", "out", "message"), [
    ("missing", None, "directory: {dir} does not exist; expected a run directory"),
    ("empty", None, "directory: {dir} holds neither config.yaml (a run directory) nor "
                    "study.db"),
    ("file", None, "directory: {dir} is not a directory"),
    ("run", "a-file/report.html", "out: cannot write"),
    ("run", ".", "out: {out} is a directory"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(run_dir, tmp_path, capsys, target,
                                                         out, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("x")
    (tmp_path / "a-file").write_text("x")
    directory = run_dir if target == "run" else tmp_path / target
    out_path = tmp_path / out if out else None
    before = sorted(p.name for p in run_dir.iterdir())
    code = main(["report", str(directory), *(["--out", str(out_path)] if out else [])])
    error = capsys.readouterr().err
    assert code == 2
    assert error.count("\n") == 1 and "Traceback" not in error
    assert message.format(dir=directory, out=out_path) in error, error
    assert sorted(p.name for p in run_dir.iterdir()) == before
    assert not list(tmp_path.rglob("*.html")) and not list(tmp_path.rglob("*.tmp"))
