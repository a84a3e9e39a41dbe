"""Studies: study files expand to the runs they name (or one clear error), `rnnscope
study` runs them into a study directory and reruns only what is unfinished, and a
study killed with SIGKILL resumes without losing or redoing finished work."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from rnnscope.cli.main import main
from rnnscope.experiment import ExperimentConfig
from rnnscope.numerics import flush_denormal
from rnnscope.runlog import StudyStore
from rnnscope.study import load_study, study_from_dict

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
# Runs of a few hundred milliseconds each: no evaluation before the end, no probes.
TINY = {"task": {"name": "adding", "seq_len": 10}, "model": {"hidden": 4},
        "run": {"steps": 10, "batch": 8, "eval_every": 0, "checkpoint_every": 5},
        "probe": {"every": 0, "histograms": False}}


@pytest.fixture(autouse=True)
def restore_flush():
    yield
    flush_denormal(False)


def write_study(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


# Study files


def test_grid_expands_to_every_combination_with_readable_names():
    study = study_from_dict({"base": TINY, "grid": {"cell": ["rnn_tanh", "lstm", "gru"],
                                                     "seq_len": [10, 20], "seed": [0, 1]}},
                            default_name="lengths")
    assert study.name == "lengths" and len(study.runs) == 3 * 2 * 2
    names = [run.name for run in study.runs]
    assert names[:3] == ["cell=rnn_tanh,seq_len=10,seed=0", "cell=rnn_tanh,seq_len=10,seed=1",
                         "cell=rnn_tanh,seq_len=20,seed=0"]
    assert len(set(names)) == len(names)
    run = study.runs[-1]
    assert run.name == "cell=gru,seq_len=20,seed=1"
    # Aliases are stored under the field they set, and set it.
    assert run.params == {"model.cell": "gru", "task.seq_len": 20, "run.seed": 1}
    config = run.config
    assert (config.model.cell, config.task.settings["seq_len"], config.run.seed) == ("gru", 20, 1)
    assert config.run.name == run.name and config.run.quiet  # one directory per run, no bars
    assert config.model.hidden == 4 and config.run.steps == 10  # the rest is the base


def test_every_alias_and_dotted_key_sets_its_field():
    study = study_from_dict({"base": TINY, "grid": {
        "hidden": [6], "layers": [2], "engine": ["native"], "lr": [0.01], "batch": [4],
        "steps": [3], "window": [5], "optim.name": ["sgd"], "clip": ["norm:1.0"],
        "guard": ["skip"], "task": ["copy"], "init": ["orthogonal"]}})
    (run,) = study.runs
    config = run.config
    assert (config.model.hidden, config.model.layers, config.model.engine) == (6, 2, "native")
    assert (config.optim.lr, config.optim.name, config.run.batch) == (0.01, "sgd", 4)
    assert (config.run.steps, config.bptt.window) == (3, 5)
    assert (config.clip.method, config.clip.threshold) == ("norm", 1.0)
    assert config.guard.policy == "skip" and config.init.scheme == "orthogonal"
    assert config.task.name == "copy" and dict(config.task.settings) == {}  # adding's seq_len
    # is adding's own setting: it does not carry over to another task


def test_templates_are_filled_from_each_runs_own_config():
    study = study_from_dict({"base": TINY, "grid": {
        "cell": ["lstm"], "seq_len": [10, 20], "init": ["chrono:{task.seq_len}"]}})
    runs = {run.config.task.settings["seq_len"]: run for run in study.runs}
    assert runs[10].config.init.scheme == "chrono:10"
    assert runs[20].config.init.scheme == "chrono:20"
    assert runs[20].params["init"] == "chrono:20"
    assert runs[20].name == "cell=lstm,seq_len=20,init=chrono-20"
    # A template may read a value set by the base config too.
    (run,) = study_from_dict({"base": TINY, "grid": {"init": ["chrono:{run.steps}"]}}).runs
    assert run.config.init.scheme == "chrono:10" and run.name == "init=chrono-10"


def test_variants_are_crossed_with_the_grid_and_exclude_leaves_out_combinations():
    study = study_from_dict({
        "base": TINY,
        "grid": {"cell": ["rnn_tanh", "lstm"], "init": ["torch_default", "chrono:{task.seq_len}"]},
        "variants": [{"name": "full"}, {"name": "tbptt", "window": 5, "clip": "norm:1.0"}],
        "exclude": [{"cell": "rnn_tanh", "init": "chrono:{task.seq_len}"}]})
    names = [run.name for run in study.runs]
    assert names == ["full,cell=rnn_tanh,init=torch_default", "full,cell=lstm,init=torch_default",
                     "full,cell=lstm,init=chrono-10", "tbptt,cell=rnn_tanh,init=torch_default",
                     "tbptt,cell=lstm,init=torch_default", "tbptt,cell=lstm,init=chrono-10"]
    for run in study.runs:
        tbptt = run.name.startswith("tbptt")
        assert run.config.bptt.window == (5 if tbptt else None)
        assert run.config.clip.method == ("norm" if tbptt else "none")
    # Every run names every setting any run varies, so runs compare column by column.
    assert study.runs[3].params == {"bptt.window": 5, "clip": "norm:1.0",
                                    "model.cell": "rnn_tanh", "init": "torch_default"}
    assert study.runs[2].params == {"bptt.window": None, "clip": "none",
                                    "model.cell": "lstm", "init": "chrono:10"}


def test_a_single_unnamed_variant_and_no_grid_is_one_run():
    (run,) = study_from_dict({"base": TINY, "variants": [{"seed": 3}]}).runs
    assert run.name == "run" and run.config.run.seed == 3


def test_base_may_be_a_yaml_file_next_to_the_study_file(tmp_path, monkeypatch):
    folder = tmp_path / "studies"
    folder.mkdir()
    (folder / "base.yaml").write_text(yaml.safe_dump(TINY), encoding="utf-8")
    path = write_study(folder / "lengths.yaml", {"base": "base.yaml", "grid": {"seed": [0, 1]}})
    monkeypatch.chdir(tmp_path)  # relative to the study file, not to the working directory
    study = load_study(path)
    assert study.name == "lengths" and len(study.runs) == 2
    assert study.runs[0].config.model.hidden == 4 and study.runs[1].config.run.seed == 1
    named = write_study(folder / "other.yaml", {"name": "given", "base": "base.yaml"})
    assert load_study(named).name == "given"


@pytest.mark.parametrize(("data", "message"), [
    ({"grids": {"seed": [0]}}, "study.grids: unknown key; accepted: name, base, grid"),
    ({"grid": {"modle.cell": ["lstm"]}}, "study: modle.cell: unknown setting; use section.key"),
    ({"grid": {"model": ["lstm"]}}, "study: model: give a key of the section"),
    ({"grid": {"model.hiden": [4]}}, "study: run hiden=4: model.hiden: unknown key; accepted:"),
    ({"base": {"optimizer": {"lr": 1}}}, "optimizer: unknown section; accepted: task, model"),
    ({"grid": {"seed": 0}}, "study.grid: expected a mapping of setting -> non-empty list"),
    ({"grid": {"seed": []}}, "study.grid: expected a mapping of setting -> non-empty list"),
    ({"grid": {"cell": ["rnn_tanh", "lstm"], "init": ["chrono:10"]}},
     "study: run cell=rnn_tanh,init=chrono-10: init.scheme: 'chrono' does not apply to a "
     "rnn_tanh cell"),
    ({"variants": [{"name": "a"}, {"name": "a", "window": 5}]},
     "study: two runs are both named 'a'"),
    ({"variants": [{"name": "a"}, {"window": 5}]}, "study.variants[1]: needs a name"),
    ({"variants": {"name": "a"}}, "study.variants: expected a list of mappings"),
    ({"exclude": {"seed": 0}}, "study.exclude: expected a list of mappings"),
    ({"grid": {"seed": [0]}, "exclude": [{"seed": 0}]}, "study: no runs left"),
    ({"base": {"model": {"hidden": -1}}}, "model.hidden: must be an integer >= 1, got -1"),
    ({"grid": {"hidden": [4, -1]}}, "study: run hidden=-1: model.hidden: must be an integer"),
    ({"grid": {"init": ["chrono:{task.length}"]}}, "{task.length}: no such setting to fill in"),
    ({"grid": {"task.seq_len": [10, "long"]}},
     "study: run seq_len=long: task.seq_len: must be an integer >= 2, got 'long'"),
    ({"base": {"task": {"name": "text", "path": "absent.txt"}}},
     "study: run run: task.path: no such file: absent.txt"),
    ({"name": "../../elsewhere"}, "study.name: letters, digits and . _ + - only"),
    ({"grid": {"cell": ["lstm"], "model.cell": ["gru"]}},
     "study.grid: model.cell is given twice"),
    ({"grid": {"window": [5]}, "variants": [{"name": "a", "bptt.window": 3}]},
     "study.variants: a sets bptt.window, which the grid also varies"),
])
def test_bad_study_files_are_one_line_errors_naming_the_field(data, message):
    with pytest.raises(ValueError) as error:
        study_from_dict({"base": TINY, **data} if "base" not in data else data)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_an_init_that_does_not_fit_a_cell_points_to_exclude():
    with pytest.raises(ValueError, match="leave such combinations out with exclude"):
        study_from_dict({"base": TINY, "grid": {"cell": ["gru"], "init": ["forget_bias:1.0"]}})


def test_load_study_errors_name_the_file(tmp_path):
    with pytest.raises(ValueError, match="is not a file; expected a study YAML file"):
        load_study(tmp_path / "absent.yaml")
    (tmp_path / "broken.yaml").write_text("grid: {seed: [0\n")
    with pytest.raises(ValueError, match="broken.yaml at line"):
        load_study(tmp_path / "broken.yaml")
    write_study(tmp_path / "s.yaml", {"base": "missing-base.yaml"})
    with pytest.raises(ValueError, match="no such file: .*missing-base.yaml"):
        load_study(tmp_path / "s.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="must hold a mapping"):
        load_study(tmp_path / "list.yaml")


# The command line: bad input


@pytest.mark.parametrize(("data", "message"), [
    ({"base": TINY, "grid": {"seed": 0}}, "study.grid: expected a mapping"),
    ({"base": TINY, "grid": {"cell": ["rnn_tanh"], "init": ["chrono:10"]}}, "exclude"),
    ({"base": {**TINY, "model": {"hidden": -1}}}, "model.hidden: must be an integer >= 1"),
    ({"base": TINY, "settings": {}}, "study.settings: unknown key"),
    ({"base": TINY, "variants": [{"name": "a"}, {"name": "text", "task.name": "text",
                                                "task.path": "absent.txt"}]},
     "study: run text: task.path: no such file: absent.txt"),
])
def test_a_bad_study_file_exits_2_with_one_line_and_writes_nothing(tmp_path, monkeypatch,
                                                                   capsys, data, message):
    monkeypatch.chdir(tmp_path)
    path = write_study(tmp_path / "bad.yaml", data)
    assert main(["study", str(path)]) == 2  # default --out: studies/bad
    assert message in one_line_error(capsys)
    assert main(["study", str(path), "--out", str(tmp_path / "out"), "--workers", "2"]) == 2
    assert message in one_line_error(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]  # no study directory


@pytest.mark.parametrize(("args", "message"), [
    ([], "study: give a study FILE to run, or --status DIR to show one"),
    (["s.yaml", "--status", "out"], "study: give a study FILE to run, or --status DIR"),
    (["s.yaml", "--workers", "0"], "--workers: expected an integer >= 1, got 0"),
    (["s.yaml", "--workers", "two"], "argument --workers: invalid int value: 'two'"),
    (["absent.yaml"], "study: absent.yaml is not a file"),
    (["--status", "nowhere"], "--status: nowhere is not a directory"),
    (["--status", "empty"], "not a study store"),
    (["s.yaml", "--out", "s.yaml"], "out: s.yaml exists and is not a directory"),
])
def test_bad_arguments_exit_2_with_one_line(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    write_study(tmp_path / "s.yaml", {"base": TINY})
    (tmp_path / "empty").mkdir()
    assert main(["study", *args]) == 2
    assert message in one_line_error(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "s.yaml"]


# The command line: running a study in this process (--workers 1)


def test_study_runs_every_run_shows_status_and_reruns_nothing(tmp_path, capsys):
    path = write_study(tmp_path / "pair.yaml", {"base": TINY,
                                                "grid": {"cell": ["rnn_tanh", "lstm"]}})
    out = tmp_path / "out"
    assert main(["study", str(path), "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"study pair: 2 runs, 1 worker(s), into {out}"
    assert lines[1].startswith("  [1/2] cell=rnn_tanh: finished after 10 steps, mse ")
    assert lines[2].startswith("  [2/2] cell=lstm: finished after 10 steps, mse ")
    assert lines[-1] == (f"2/2 runs done, 0 failed with an error; compare them: rnnscope "
                         f"report {out}")

    assert (out / "study.yaml").read_text() == path.read_text()
    store = StudyStore.existing(out / "study.db")
    rows = store.rows()
    store.close()
    assert [row.name for row in rows] == ["cell=rnn_tanh", "cell=lstm"]
    for row in rows:
        assert (row.status, row.attempts, row.finishes) == ("done", 1, 1)
        assert row.params == {"model.cell": row.name.partition("=")[2]}
        result = row.result
        assert result["status"] == "finished" and result["steps"] == 10
        assert result["metric"]["name"] == "mse" and isinstance(result["metric"]["value"], float)
        assert result["diagnosis"]["verdict"] in ("vanishing", "exploding", "healthy",
                                                  "nonfinite")
        run_dir = out / "runs" / row.name
        assert result["run_dir"] == str(run_dir)
        assert json.loads((run_dir / "summary.json").read_text())["status"] == "finished"
        saved = ExperimentConfig.from_yaml(run_dir / "config.yaml")
        assert saved.run.name == row.name and saved.model.cell == row.params["model.cell"]

    assert main(["study", "--status", str(out)]) == 0
    status = capsys.readouterr().out.splitlines()
    assert status[0] == f"{out}: 2 runs: 0 pending, 0 running, 2 done, 0 error"
    assert status[1].startswith("  cell=rnn_tanh: finished after 10 steps, mse ")
    assert ", reach " in status[1] and len(status) == 3

    assert main(["study", "--status", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["study"] == "out" and summary["dir"] == str(out)
    assert summary["counts"] == {"done": 2}
    assert [run["name"] for run in summary["runs"]] == ["cell=rnn_tanh", "cell=lstm"]
    assert summary["runs"][1]["params"] == {"model.cell": "lstm"}
    assert summary["runs"][1]["result"]["metric"]["name"] == "mse"
    assert {run["attempts"] for run in summary["runs"]} == {1}

    # The same command again: everything is done, nothing is redone.
    stamps = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*") if p.is_file()}
    assert main(["study", str(path), "--out", str(out), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["study"] == "pair" and again["counts"] == {"done": 2}
    assert [(run["attempts"], run["finishes"]) for run in again["runs"]] == [(1, 1), (1, 1)]
    assert stamps == {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*") if p.is_file()}

    # The study file changed under the same directory: refused, nothing touched.
    changed = write_study(tmp_path / "pair.yaml", {"base": {**TINY, "model": {"hidden": 5}},
                                                   "grid": {"cell": ["rnn_tanh", "lstm"]}})
    assert main(["study", str(changed), "--out", str(out)]) == 2
    assert "run 'cell=rnn_tanh'" in one_line_error(capsys)


def test_a_run_that_fails_is_stored_as_an_error_and_retried_alone(tmp_path, capsys):
    # The corpus is long enough for the task (checked when the study is loaded) but too
    # short for a batch of 8 columns of held-out text: the trainer finds out at run time.
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog. " * 4, encoding="utf-8")
    path = write_study(tmp_path / "mixed.yaml", {
        "base": TINY, "grid": {"seed": [0]},
        "variants": [{"name": "adding"},
                     {"name": "text", "task": {"name": "text", "path": str(corpus),
                                               "seq_len": 10}},
                     {"name": "lstm", "cell": "lstm"}]})
    out = tmp_path / "out"
    assert main(["study", str(path), "--out", str(out), "--quiet"]) == 1
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [
        f"2/3 runs done, 1 failed with an error; compare them: rnnscope report {out}"]
    message = "ValueError: batch_size: 8 columns of the valid split"
    assert captured.err.startswith(f"rnnscope: run text,seed=0 failed: {message}")
    assert captured.err.count("\n") == 1
    store = StudyStore.existing(out / "study.db")
    rows = {row.name: row for row in store.rows()}
    assert {name: row.status for name, row in rows.items()} == {
        "adding,seed=0": "done", "text,seed=0": "error", "lstm,seed=0": "done"}
    assert rows["text,seed=0"].result["message"].startswith(message)
    assert rows["text,seed=0"].finishes == 0

    assert main(["study", "--status", str(out)]) == 0
    status = capsys.readouterr().out.splitlines()
    assert status[0] == f"{out}: 3 runs: 0 pending, 0 running, 2 done, 1 error"
    assert status[2].startswith(f"  text,seed=0: error: {message}")

    corpus.write_text("the quick brown fox jumps over the lazy dog. " * 20, encoding="utf-8")
    assert main(["study", str(path), "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith("  [1/1] text,seed=0: finished after 10 steps, bits_per_char ")
    rows = {row.name: row for row in store.rows()}
    store.close()
    assert {row.status for row in rows.values()} == {"done"}
    assert {name: row.attempts for name, row in rows.items()} == {
        "adding,seed=0": 1, "text,seed=0": 2, "lstm,seed=0": 1}
    assert {row.finishes for row in rows.values()} == {1}


def test_a_study_directory_in_use_is_refused(tmp_path, capsys):
    path = write_study(tmp_path / "s.yaml", {"base": TINY})
    out = tmp_path / "out"
    out.mkdir()
    with (out / "study.lock").open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running study holds it
        assert main(["study", str(path), "--out", str(out)]) == 2
        err = one_line_error(capsys)
        assert f"out: {out} is in use by another rnnscope study" in err
        assert not (out / "study.db").exists() and not (out / "runs").exists()
    assert main(["study", str(path), "--out", str(out), "--quiet"]) == 0  # once it is free


# A study killed with SIGKILL, and the same command again


def _rows(database: Path) -> list[tuple[str, str, str | None, int, int]]:
    """(name, status, owner, attempts, finishes) per run, read without writing."""
    if not database.exists():
        return []
    connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30)
    try:
        return connection.execute("SELECT name, status, owner, attempts, finishes FROM runs "
                                  "ORDER BY position").fetchall()
    except sqlite3.OperationalError:  # the table is not made yet
        return []
    finally:
        connection.close()


def _kill_leftovers(study: subprocess.Popen, workers: set[int], *, group: bool = False) -> None:
    """A test that fails part-way leaves no study or worker process behind."""
    if study.poll() is None:
        if group:
            os.killpg(study.pid, signal.SIGKILL)
        else:
            study.kill()
        study.wait()
    for pid in workers:
        if not _gone(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _gone(pid: int) -> bool:
    """True once `pid` has exited (a zombie that no one reaped counts as exited)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status or "\nState:\tX" in status


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def _train_steps(run_dir: Path) -> list[int]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["step"] for line in lines if '"kind": "train"' in line]


def test_a_study_killed_with_sigkill_resumes_where_it_stopped(tmp_path):
    steps = 200
    path = write_study(tmp_path / "long.yaml", {
        "base": {**TINY, "run": {**TINY["run"], "steps": steps, "checkpoint_every": 10,
                                 "early_stop": False}},
        "grid": {"cell": ["rnn_tanh", "gru"], "seed": [0, 1]}})
    out, database = tmp_path / "out", tmp_path / "out" / "study.db"
    command = [sys.executable, "-m", "rnnscope", "study", str(path), "--workers", "2",
               "--out", str(out)]
    workers: set[int] = set()
    with (tmp_path / "first.log").open("w") as log:
        first = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        # Kill the study once a run is done and another is well under way: it has a
        # checkpoint and at most half its steps, so it cannot finish before its worker
        # notices that the parent is gone.
        deadline = time.monotonic() + 180
        while True:
            assert first.poll() is None, "the study ended before it could be killed"
            assert time.monotonic() < deadline, "no run got done in time"
            rows = _rows(database)
            running = [row for row in rows if row[1] == "running"]
            workers |= {int(row[2].partition(":")[0]) for row in running}
            under_way = [
                name for name, *_ in running
                if (out / "runs" / name / "checkpoints" / "last.pt").exists()
                and _lines(out / "runs" / name / "metrics.jsonl") < steps // 2]
            if any(row[1] == "done" for row in rows) and under_way:
                break
            time.sleep(0.05)
        os.kill(first.pid, signal.SIGKILL)  # the parent only
        first.wait(timeout=30)
        assert workers and first.pid not in workers

        # The orphaned workers end by themselves (they watch their parent).
        deadline = time.monotonic() + 15
        while not all(_gone(pid) for pid in workers):
            assert time.monotonic() < deadline, "worker processes outlived their study"
            time.sleep(0.1)

        rows = _rows(database)
        interrupted = {name for name, status, *_ in rows if status == "running"}
        done_before = {name for name, status, *_ in rows if status == "done"}
        assert interrupted and done_before and len(rows) == 4
        # Mark the first metrics line of every interrupted run that had a checkpoint: a
        # run that continues from its checkpoint keeps it, one that restarted would not.
        marked = []
        for name in interrupted:
            run_dir = out / "runs" / name
            if (run_dir / "checkpoints" / "last.pt").exists():
                lines = (run_dir / "metrics.jsonl").read_text().splitlines(keepends=True)
                first_line = json.loads(lines[0])
                assert first_line["step"] == 1
                lines[0] = json.dumps({**first_line, "marker": "first attempt"}) + "\n"
                (run_dir / "metrics.jsonl").write_text("".join(lines))
                marked.append(name)
        assert marked

        second = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert second.returncode == 0, second.stdout + second.stderr
    finally:
        _kill_leftovers(first, workers)

    store = StudyStore.existing(database)
    rows = store.rows()
    store.close()
    assert len(rows) == 4
    for row in rows:
        assert row.status == "done" and row.finishes == 1, row  # finished exactly once
        assert row.attempts == (2 if row.name in interrupted else 1), row
        assert row.result["steps"] == steps and row.result["status"] == "finished"
        run_dir = out / "runs" / row.name
        assert json.loads((run_dir / "summary.json").read_text())["steps"] == steps
        assert _train_steps(run_dir) == list(range(1, steps + 1))  # no step lost or repeated
    for name in marked:  # continued from the checkpoint rather than started again
        first_line = json.loads((out / "runs" / name / "metrics.jsonl").read_text()
                                .splitlines()[0])
        assert first_line.get("marker") == "first attempt"



def test_ctrl_c_ends_the_study_at_once_and_the_same_command_finishes_it(tmp_path):
    # One short run, so that one worker is idle (waiting for work) at the interrupt, and
    # one long run that is under way.
    steps = {"short": 20, "long": 3000}
    path = write_study(tmp_path / "two.yaml", {
        "base": {**TINY, "run": {**TINY["run"], "checkpoint_every": 10, "early_stop": False}},
        "variants": [{"name": name, "steps": count} for name, count in steps.items()]})
    out, database = tmp_path / "out", tmp_path / "out" / "study.db"
    command = [sys.executable, "-m", "rnnscope", "study", str(path), "--workers", "2",
               "--out", str(out)]
    workers: set[int] = set()
    # Its own process group, as a terminal's foreground job: Ctrl-C reaches every process.
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert first.poll() is None, "the study ended before it could be interrupted"
            assert time.monotonic() < deadline, "the runs did not get under way in time"
            rows = {row[0]: row for row in _rows(database)}
            if "long" in rows and rows["long"][1] == "running":
                workers.add(int(rows["long"][2].partition(":")[0]))
            if (rows.get("short", ("", ""))[1] == "done" and rows["long"][1] == "running"
                    and _lines(out / "runs" / "long" / "metrics.jsonl") >= 20):
                break
            time.sleep(0.05)
        interrupted = time.monotonic()
        os.killpg(first.pid, signal.SIGINT)
        _, err = first.communicate(timeout=60)
        # At once: the long run is not trained to its end first (that takes many seconds).
        assert time.monotonic() - interrupted < 5
        assert first.returncode == 130, err
        assert "Traceback" not in err and "Resume with: rnnscope study" in err, err
        deadline = time.monotonic() + 15
        while not all(_gone(pid) for pid in workers):
            assert time.monotonic() < deadline, "worker processes outlived the interrupt"
            time.sleep(0.1)
        # Nothing is left claimed by a process that no longer exists.
        assert {row[0]: row[1] for row in _rows(database)} == {"short": "done",
                                                                "long": "pending"}
        assert _lines(out / "runs" / "long" / "metrics.jsonl") < steps["long"]

        second = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert second.returncode == 0, second.stdout + second.stderr
    finally:
        _kill_leftovers(first, workers, group=True)

    store = StudyStore.existing(database)
    rows = {row.name: row for row in store.rows()}
    store.close()
    assert all(row.status == "done" and row.finishes == 1 for row in rows.values()), rows
    assert rows["short"].attempts == 1 and rows["long"].attempts == 2
    for name, count in steps.items():
        assert _train_steps(out / "runs" / name) == list(range(1, count + 1))


def test_a_run_that_ended_before_the_store_heard_of_it_is_not_trained_again(tmp_path,
                                                                              capsys):
    path = write_study(tmp_path / "s.yaml", {"base": TINY, "grid": {"seed": [0, 1]}})
    out = tmp_path / "out"
    assert main(["study", str(path), "--out", str(out), "--quiet"]) == 0
    # As a kill between writing summary.json and finishing the row would leave it.
    with sqlite3.connect(out / "study.db") as connection:
        connection.execute("UPDATE runs SET status = 'running', finishes = 0, result = NULL "
                           "WHERE name = 'seed=1'")
    run_files = sorted((out / "runs" / "seed=1").rglob("*"))
    before = {path: path.stat().st_mtime_ns for path in run_files if path.is_file()}
    assert main(["study", str(path), "--out", str(out), "--quiet"]) == 0
    rows = {row.name: row for row in StudyStore(out / "study.db").rows()}
    assert rows["seed=1"].status == "done" and rows["seed=1"].finishes == 1
    assert rows["seed=1"].result["steps"] == TINY["run"]["steps"]
    assert {path: path.stat().st_mtime_ns for path in before} == before  # nothing rewritten


def test_a_damaged_store_and_a_foreign_directory_are_one_line_errors(tmp_path, capsys):
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "study.db").write_text("not a database")
    assert main(["study", "--status", str(damaged)]) == 2
    assert "not a readable study store" in one_line_error(capsys)
    assert main(["report", str(damaged)]) == 2
    assert "not a readable study store" in one_line_error(capsys)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "notes.txt").write_text("mine")
    path = write_study(tmp_path / "s.yaml", {"base": TINY})
    assert main(["study", str(path), "--out", str(elsewhere)]) == 2
    assert "holds files that are not a study's (e.g. notes.txt)" in one_line_error(capsys)
    assert sorted(p.name for p in elsewhere.iterdir()) == ["notes.txt"]

# Example study files


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_example_study_files_load_and_say_how_to_run_them(path):
    study = load_study(path)
    assert study.runs and len({run.name for run in study.runs}) == len(study.runs)
    head = path.read_text().splitlines()[0]
    assert head.startswith("#")
    assert f"rnnscope study examples/{path.name}" in path.read_text()
    tasks = {}
    for run in study.runs:
        assert isinstance(run.config, ExperimentConfig)
        key = (run.config.task.name, tuple(sorted(run.config.task.settings.items())))
        tasks.setdefault(key, run.config.task)
    for task in tasks.values():
        task.build()  # the data each run trains on can be made


def test_there_are_example_study_files():
    assert {"adding-lengths.yaml", "copy-lengths.yaml", "remedies.yaml",
            "temporal-order.yaml"} <= {p.name for p in EXAMPLES.glob("*.yaml")}


def test_exclude_matches_a_template_as_written_and_as_filled_in():
    grid = {"cell": ["rnn_tanh", "lstm"], "init": ["orthogonal", "chrono:{task.seq_len}"]}
    for excluded in ("chrono:{task.seq_len}", "chrono:10"):
        study = study_from_dict({"base": TINY, "grid": grid,
                                 "exclude": [{"cell": "rnn_tanh", "init": excluded}]})
        assert [run.name for run in study.runs] == [
            "cell=rnn_tanh,init=orthogonal", "cell=lstm,init=orthogonal",
            "cell=lstm,init=chrono-10"]


def test_a_directory_holding_another_study_is_refused_but_a_grown_one_continues(tmp_path,
                                                                                  capsys):
    out = tmp_path / "study"
    first = write_study(tmp_path / "first.yaml", {"base": TINY, "grid": {"seed": [0]}})
    assert main(["study", str(first), "--out", str(out), "--quiet"]) == 0
    other = write_study(tmp_path / "other.yaml", {"base": TINY, "grid": {"cell": ["gru"]}})
    assert main(["study", str(other), "--out", str(out), "--quiet"]) == 2
    assert "holds another study" in one_line_error(capsys)
    assert [row.name for row in StudyStore(out / "study.db").rows()] == ["seed=0"]
    # The same study with one more seed: the finished run stays, the new one runs.
    grown = write_study(tmp_path / "grown.yaml", {"base": TINY, "grid": {"seed": [0, 1]}})
    assert main(["study", str(grown), "--out", str(out), "--quiet"]) == 0
    rows = StudyStore(out / "study.db").rows()
    assert [(row.name, row.status, row.attempts) for row in rows] == [
        ("seed=0", "done", 1), ("seed=1", "done", 1)]
    assert (out / "study.yaml").read_text() == grown.read_text()
