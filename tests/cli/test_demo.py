"""`rnnscope demo --quick` end to end, as `make demo` runs it: the story and its report."""

from __future__ import annotations

import html
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rnnscope.cli.demo import QUICK, STORY, demo_study_data
from rnnscope.cli.main import main
from rnnscope.study.spec import study_from_dict

# Remedies for the vanishing gradient; clipping is the remedy for the exploding one.
REMEDIES = ("irnn", "lstm+chrono", "gru", "lstm+chrono+tbptt")


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory) -> tuple[dict, Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("demo") / "demo"
    result = subprocess.run([sys.executable, "-m", "rnnscope", "demo", "--quick", "--out",
                             str(out), "--json"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout), out, result


def run_sections(report: str) -> dict[str, str]:
    """The report's section of each run, by run name."""
    parts = re.split(r'<h3 id="run-\d+">', report)[1:]
    return {html.unescape(part.split("</h3>", 1)[0]): part for part in parts}


def verdict_and_reach(section: str) -> tuple[str, int, int]:
    verdict = re.search(r'class="verdict verdict-(\w+)"', section).group(1)
    reach, steps = re.search(r"reach (\d+)/(\d+) steps back", section).groups()
    return verdict, int(reach), int(steps)


def test_quick_demo_tells_the_story_in_its_report(quick_demo):
    summary, out, _ = quick_demo
    report = Path(summary["report"])
    assert report == out / "report.html" and report.is_file()
    runs = {run["name"]: run for run in summary["runs"]}
    assert list(runs) == list(QUICK)
    assert all(run["status"] == "done" for run in runs.values())

    sections = run_sections(report.read_text(encoding="utf-8"))
    assert set(sections) == set(QUICK)
    tanh_verdict, tanh_reach, steps = verdict_and_reach(sections["tanh"])
    assert tanh_verdict == "vanishing" and tanh_reach < steps
    for name in REMEDIES:
        verdict, reach, _ = verdict_and_reach(sections[name])
        assert verdict == "healthy" or reach >= 2 * tanh_reach, name
        # The report shows what the store holds.
        assert reach == runs[name]["result"]["diagnosis"]["reach"]
    # Without clipping, the large init makes the gradient non-finite and the guard stops
    # the run; with clipping the same model trains to the last step.
    exploding = runs["relu-big-init"]["result"]
    assert exploding["status"] == "diverged" and exploding["diagnosis"]["verdict"] == "nonfinite"
    clipped = runs["relu-big-init+clip"]["result"]
    assert clipped["status"] in ("finished", "solved") and clipped["clip_rate"] > 0
    assert clipped["diagnosis"]["verdict"] != "nonfinite"
    assert clipped["metric"]["value"] < 10 * clipped["baseline"]  # finite and sane


def test_running_the_demo_again_reuses_finished_runs(quick_demo, capsys):
    _, out, _ = quick_demo
    code = main(["demo", "--quick", "--out", str(out), "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0
    assert all(run["status"] == "done" for run in summary["runs"])
    rows = {run["name"]: run for run in summary["runs"]}
    assert set(rows) == set(QUICK)
    from rnnscope.study.spec import open_store

    store = open_store(out)
    assert all(row.attempts == 1 and row.finishes == 1 for row in store.rows())
    store.close()


def test_demo_study_is_a_valid_study_with_every_story_model():
    full = study_from_dict(demo_study_data(quick=False))
    assert [run.name for run in full.runs] == [name for name, _, _ in STORY]
    quick = study_from_dict(demo_study_data(quick=True))
    assert [run.name for run in quick.runs] == list(QUICK)
    tbptt = next(run for run in quick.runs if run.name == "lstm+chrono+tbptt").config
    assert tbptt.bptt.window < tbptt.task.settings["seq_len"]  # shorter than the dependency
    assert tbptt.init.scheme == f"chrono:{tbptt.task.settings['seq_len']}"


def test_bad_workers_is_one_line_and_writes_nothing(tmp_path, capsys):
    code = main(["demo", "--quick", "--workers", "0", "--out", str(tmp_path / "d")])
    error = capsys.readouterr().err
    assert code == 2 and len(error.strip().splitlines()) == 1 and "--workers" in error
    assert not (tmp_path / "d").exists()
