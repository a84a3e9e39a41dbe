"""`rnnscope report`: the summary and --json, and bad input as one line with exit 2."""

from __future__ import annotations

import html as html_lib
import json
import os
import re
import shutil
import stat
from pathlib import Path

import pytest

from rnnscope.cli.main import main
from rnnscope.report.data import load_run
from support import one_line_error


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


# Issue 19

def copy_run(run_dir, tmp_path):
    run = shutil.copytree(run_dir, tmp_path / "run")
    (run / "report.html").unlink(missing_ok=True)
    return run


@pytest.mark.parametrize("kind", ["fifo", "device", "user-file", "link"])
def test_3_out_never_replaces_what_rnnscope_did_not_write(run_dir, tmp_path, capsys, kind):
    run = copy_run(run_dir, tmp_path)
    target = tmp_path / "target"
    if kind == "fifo":
        os.mkfifo(target)
    elif kind == "device":
        target = Path("/dev/null")
    elif kind == "user-file":
        target.write_text("my notes")
    else:
        (tmp_path / "elsewhere.html").write_text("<title>rnnscope run: x</title>")
        target.symlink_to(tmp_path / "elsewhere.html")
    assert main(["report", str(run), "--out", str(target)]) == 2
    err = one_line_error(capsys)
    expected = {"fifo": "is a FIFO, not a regular file", "device": "is a character device",
                "user-file": "exists and was not written by rnnscope",
                "link": "is a symbolic link"}[kind]
    assert err.startswith(f"rnnscope: error: out: {target} {expected}"), err
    if kind == "fifo":
        assert stat.S_ISFIFO(target.lstat().st_mode)
    elif kind == "user-file":
        assert target.read_text() == "my notes"
    # A report written before is replaced, as before.
    report = tmp_path / "report.html"
    assert main(["report", str(run), "--out", str(report)]) == 0
    assert main(["report", str(run), "--out", str(report)]) == 0


def notes_of(html: str) -> list[str]:
    return [html_lib.unescape(note) for note in re.findall(r'<p class="skip">([^<]*)</p>',
                                                           html)]


def test_5_damaged_metrics_and_summary_fields_are_notes_not_failures(run_dir, tmp_path):
    run = copy_run(run_dir, tmp_path)
    lines = (run / "metrics.jsonl").read_bytes().splitlines()
    steps = [json.loads(line)["step"] for line in lines]
    damaged = [*lines[:5], b"garbage{", *lines[5:10], b"\xff\xfe bad bytes", *lines[10:]]
    (run / "metrics.jsonl").write_bytes(b"\n".join(damaged) + b"\n")
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "clip_rate": {},
                                                  "fix_details": 5}))
    assert main(["report", str(run), "--out", str(tmp_path / "r.html")]) == 0
    html = (tmp_path / "r.html").read_text()
    assert notes_of(html)[:3] == [
        "metrics.jsonl: 2 damaged lines left out (lines 6, 12); every other line is kept",
        "summary.json: clip_rate should be a number, got {}; left out",
        "summary.json: fix_details should be a list of {remedy: text, why: text, cli: text}, "
        "got 5; left out"]
    # Every good line is read, those after the damage too.
    loaded = load_run(run)
    assert sorted(line["step"] for line in loaded.train + loaded.evals) == sorted(steps)
    assert html.count("<img ") == 5  # every figure still drawn


def test_5_a_summary_that_is_not_json_is_not_called_still_running(run_dir, tmp_path):
    run = copy_run(run_dir, tmp_path)
    (run / "summary.json").write_text('{"status": "finished", ')
    assert main(["report", str(run), "--out", str(tmp_path / "r.html")]) == 0
    notes = notes_of((tmp_path / "r.html").read_text())
    assert notes[0].startswith("summary.json is not valid JSON (")
    assert notes[0].endswith("); the run's result is left out")
    assert not any("killed or is still running" in note for note in notes)
    assert any(note.startswith("The result skipped: needs a readable summary.json")
               for note in notes)
