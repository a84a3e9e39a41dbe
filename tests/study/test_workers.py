"""`rnnscope study` runs every run of a study exactly once in worker processes, reruns
only what is unfinished, and a study killed with SIGKILL or Ctrl-C resumes without
losing or redoing finished work."""

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

from rnnscope.cli.main import main
from rnnscope.study.store import StudyStore
from rnnscope.training.config import ExperimentConfig
from support import TINY_STUDY, one_line_error, write_yaml_file


def test_study_runs_every_run_shows_status_and_reruns_nothing(tmp_path, capsys):
    path = write_yaml_file(tmp_path / "pair.yaml", {"base": TINY_STUDY,
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
    changed = write_yaml_file(tmp_path / "pair.yaml",
                              {"base": {**TINY_STUDY, "model": {"hidden": 5}},
                               "grid": {"cell": ["rnn_tanh", "lstm"]}})
    assert main(["study", str(changed), "--out", str(out)]) == 2
    assert "run 'cell=rnn_tanh'" in one_line_error(capsys)


def test_a_run_that_fails_is_stored_as_an_error_and_retried_alone(tmp_path, capsys):
    # The corpus is long enough for the task (checked when the study is loaded) but too
    # short for a batch of 8 columns of held-out text: the trainer finds out at run time.
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog. " * 4, encoding="utf-8")
    path = write_yaml_file(tmp_path / "mixed.yaml", {
        "base": TINY_STUDY, "grid": {"seed": [0]},
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
    path = write_yaml_file(tmp_path / "s.yaml", {"base": TINY_STUDY})
    out = tmp_path / "out"
    out.mkdir()
    with (out / "study.lock").open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running study holds it
        assert main(["study", str(path), "--out", str(out)]) == 2
        err = one_line_error(capsys)
        assert f"out: {out} is in use by another rnnscope study" in err
        assert not (out / "study.db").exists() and not (out / "runs").exists()
    assert main(["study", str(path), "--out", str(out), "--quiet"]) == 0  # once it is free


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
    path = write_yaml_file(tmp_path / "long.yaml", {
        "base": {**TINY_STUDY, "run": {**TINY_STUDY["run"], "steps": steps, "checkpoint_every": 10,
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


def _ctrl_c_at_its_default() -> None:
    """In the child, before exec: SIGINT at its default and not blocked, as a terminal's
    foreground job has it. An ignored or blocked SIGINT is inherited across exec (and
    Python then leaves it so): what earlier tests in this process did to it (a library
    that blocks signals in the thread that forks) must not reach the study."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def test_ctrl_c_ends_the_study_at_once_and_the_same_command_finishes_it(tmp_path):
    # One short run, so that one worker is idle (waiting for work) at the interrupt, and
    # one long run that is under way.
    steps = {"short": 20, "long": 3000}
    path = write_yaml_file(tmp_path / "two.yaml", {
        "base": {**TINY_STUDY, "run": {**TINY_STUDY["run"], "checkpoint_every": 10,
                                       "early_stop": False}},
        "variants": [{"name": name, "steps": count} for name, count in steps.items()]})
    out, database = tmp_path / "out", tmp_path / "out" / "study.db"
    command = [sys.executable, "-m", "rnnscope", "study", str(path), "--workers", "2",
               "--out", str(out)]
    workers: set[int] = set()
    # Its own process group, as a terminal's foreground job: Ctrl-C reaches every process.
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, start_new_session=True,
                             preexec_fn=_ctrl_c_at_its_default)
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
    path = write_yaml_file(tmp_path / "s.yaml", {"base": TINY_STUDY, "grid": {"seed": [0, 1]}})
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
    assert rows["seed=1"].result["steps"] == TINY_STUDY["run"]["steps"]
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
    path = write_yaml_file(tmp_path / "s.yaml", {"base": TINY_STUDY})
    assert main(["study", str(path), "--out", str(elsewhere)]) == 2
    assert "holds files that are not a study's (e.g. notes.txt)" in one_line_error(capsys)
    assert sorted(p.name for p in elsewhere.iterdir()) == ["notes.txt"]


def test_a_directory_holding_another_study_is_refused_but_a_grown_one_continues(tmp_path,
                                                                                  capsys):
    out = tmp_path / "study"
    first = write_yaml_file(tmp_path / "first.yaml", {"base": TINY_STUDY, "grid": {"seed": [0]}})
    assert main(["study", str(first), "--out", str(out), "--quiet"]) == 0
    other = write_yaml_file(tmp_path / "other.yaml",
                            {"base": TINY_STUDY, "grid": {"cell": ["gru"]}})
    assert main(["study", str(other), "--out", str(out), "--quiet"]) == 2
    assert "holds another study" in one_line_error(capsys)
    assert [row.name for row in StudyStore(out / "study.db").rows()] == ["seed=0"]
    # The same study with one more seed: the finished run stays, the new one runs.
    grown = write_yaml_file(tmp_path / "grown.yaml", {"base": TINY_STUDY, "grid": {"seed": [0, 1]}})
    assert main(["study", str(grown), "--out", str(out), "--quiet"]) == 0
    rows = StudyStore(out / "study.db").rows()
    assert [(row.name, row.status, row.attempts) for row in rows] == [
        ("seed=0", "done", 1), ("seed=1", "done", 1)]
    assert (out / "study.yaml").read_text() == grown.read_text()


def test_a_run_left_alone_trains_with_a_workers_threads(tmp_path, monkeypatch):
    """The last run of a study, or one resumed by itself, runs in the study process: it
    gets the threads a worker has (cores // workers), not the process's, so that its
    numbers are those it would have had in a worker; the process's count is restored.
    With one worker every run keeps the process's threads, as `rnnscope train` does."""
    import torch

    from rnnscope.study import workers

    seen = []
    monkeypatch.setattr(workers, "execute", lambda directory, name, config:
                        seen.append(torch.get_num_threads()))
    before = torch.get_num_threads()
    cores = len(os.sched_getaffinity(0))
    workers._run_all(["only"], tmp_path, {"only": {}}, 2, lambda name: None)
    torch.set_num_threads(1)
    try:
        workers._run_all(["a", "b"], tmp_path, {"a": {}, "b": {}}, 1, lambda name: None)
    finally:
        torch.set_num_threads(before)
    assert seen == [max(1, cores // 2), 1, 1]
    assert torch.get_num_threads() == before
