"""`rnnscope study --backend ray` on a local Ray of 2 CPUs: every run trained exactly
once and recorded by the driver alone, a Ray worker killed mid-run retried from its
checkpoint, the same results as the local backend in float64, and bad input refused in
one line with nothing written."""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import ray
import torch

from rnnscope.cli.main import main
from rnnscope.study import ray_backend
from rnnscope.study.spec import load_study, prepare, stored_config
from rnnscope.study.store import StudyStore
from rnnscope.study.workers import run_study
from rnnscope.training.run import train
from support import TINY_STUDY, one_line_error, write_yaml_file

FLOAT64 = {**TINY_STUDY, "run": {**TINY_STUDY["run"], "steps": 12, "dtype": "float64"}}
FOUR_RUNS = {"name": "four", "base": FLOAT64,
             "grid": {"cell": ["rnn_tanh", "lstm"], "seed": [0, 1]}}


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except (FileNotFoundError, ProcessLookupError):  # it ended meanwhile
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _gone(pid: int) -> bool:
    """True once `pid` has exited (a zombie that no one reaped counts as exited)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return "\nState:\tZ" in status or "\nState:\tX" in status


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray of 2 CPUs for this module; the backend uses a Ray it finds running.
    Shutting it down leaves no Ray process behind (checked)."""
    before = _descendants(os.getpid())
    ray.init(address="local", num_cpus=2, logging_level=logging.WARNING, log_to_driver=False)
    try:
        yield
    finally:
        started = _descendants(os.getpid()) - before
        ray.shutdown()
        deadline = time.monotonic() + 30
        while not all(_gone(pid) for pid in started) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = [pid for pid in started if not _gone(pid)]
        for pid in left:  # fail, but leave nothing running behind the tests either
            os.kill(pid, signal.SIGKILL)
        assert started and not left, f"Ray left processes behind: {left}"


def _rows(out: Path) -> dict:
    store = StudyStore.existing(out / "study.db", readonly=True)
    rows = {row.name: row for row in store.rows()}
    store.close()
    return rows


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def ray_study(local_ray, tmp_path_factory):
    """The four-run study, trained on Ray through the command line: (file, out, stdout)."""
    root = tmp_path_factory.mktemp("ray-study")
    path = write_yaml_file(root / "four.yaml", FOUR_RUNS)
    out = root / "out"
    return path, out, _main_output(["study", str(path), "--backend", "ray", "--out", str(out)])


def _main_output(argv: list[str]) -> list[str]:
    """`rnnscope ARGV` in this process (so it uses the module's Ray): its stdout lines."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = main(argv)
    assert code == 0, buffer.getvalue()
    return buffer.getvalue().splitlines()


def test_a_study_on_ray_trains_every_run_exactly_once(ray_study, capsys):
    path, out, lines = ray_study
    assert lines[0] == f"study four: 4 runs, on Ray, 1 CPU per run, into {out}"
    assert sorted(line.split("] ")[0] for line in lines[1:5]) == [
        f"  [{done}/4" for done in range(1, 5)]
    assert lines[-1] == (f"4/4 runs done, 0 failed with an error; compare them: rnnscope "
                         f"report {out}")
    rows = _rows(out)
    assert list(rows) == ["cell=rnn_tanh,seed=0", "cell=rnn_tanh,seed=1", "cell=lstm,seed=0",
                          "cell=lstm,seed=1"]
    for name, row in rows.items():
        # Claimed once by the driver, finished once, by its owner.
        assert (row.status, row.attempts, row.finishes) == ("done", 1, 1), row
        run_dir = out / "runs" / name
        assert row.result["run_dir"] == str(run_dir)  # --out was absolute: as given
        assert row.result["status"] == "finished" and row.result["steps"] == 12
        assert [r["step"] for r in _records(run_dir) if r["kind"] == "train"] == list(
            range(1, 13))
        assert json.loads((run_dir / "summary.json").read_text()) == row.result

    # --status reads study.db whichever backend wrote it, in the same words.
    assert main(["study", "--status", str(out)]) == 0
    status = capsys.readouterr().out.splitlines()
    assert status[0] == f"{out}: 4 runs: 0 pending, 0 running, 4 done, 0 error"
    assert status[1].startswith("  cell=rnn_tanh,seed=0: finished after 12 steps, mse ")

    # Again: nothing to do, nothing rewritten, no attempt added.
    stamps = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*") if p.is_file()}
    again = _main_output(["study", str(path), "--backend", "ray", "--out", str(out),
                          "--json"])
    summary = json.loads("\n".join(again))
    assert summary["counts"] == {"done": 4}
    assert {(run["attempts"], run["finishes"]) for run in summary["runs"]} == {(1, 1)}
    assert stamps == {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*") if p.is_file()}


def test_ray_gives_the_local_backends_results_in_float64(ray_study, tmp_path):
    path, ray_out, _ = ray_study
    local_out = tmp_path / "local"
    assert main(["study", str(path), "--out", str(local_out), "--quiet"]) == 0
    local, on_ray = _rows(local_out), _rows(ray_out)
    assert list(local) == list(on_ray)
    for name in local:
        def same(result: dict) -> dict:
            return {key: value for key, value in result.items()
                    if key not in ("run_dir", "seconds")}
        assert same(local[name].result) == same(on_ray[name].result), name
        assert _records(local_out / "runs" / name) == _records(ray_out / "runs" / name)
        weights = [torch.load(out / "runs" / name / "checkpoints" / "last.pt",
                              weights_only=True)["model"] for out in (local_out, ray_out)]
        assert weights[0].keys() == weights[1].keys()
        for key, tensor in weights[0].items():
            assert tensor.dtype == torch.float64
            torch.testing.assert_close(weights[1][key], tensor, rtol=0, atol=1e-12)


def _ray_worker_of(name: str) -> int | None:
    """The Ray worker training run `name`: Ray titles it ray::rnnscope:<name>."""
    title = f"ray::rnnscope:{name}".encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if cmdline.replace(b"\0", b" ").strip() == title:
                return int(entry.name)
    return None


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def test_a_ray_worker_killed_mid_run_is_retried_from_its_checkpoint(local_ray, tmp_path):
    steps, every = 150, 5
    long_run = {**FLOAT64, "run": {**FLOAT64["run"], "steps": steps, "early_stop": False,
                                   "checkpoint_every": every}}
    study = load_study(write_yaml_file(tmp_path / "long.yaml",
                                       {"base": long_run, "grid": {"seed": [0, 1]}}))
    out, victim = tmp_path / "out", "seed=0"
    run_dir = out / "runs" / victim
    ended: dict = {}

    def drive() -> None:
        try:
            ended["rows"] = run_study(study, out, runner=ray_backend.RayRunner())
        except BaseException as error:  # noqa: BLE001 - reported by the test below
            ended["error"] = error

    driver = threading.Thread(target=drive, daemon=True)
    driver.start()
    deadline = time.monotonic() + 120
    while True:  # the victim's worker, past a checkpoint, well short of the end
        assert driver.is_alive(), f"the study ended before the kill: {ended}"
        assert time.monotonic() < deadline, "the run did not get under way in time"
        pid = _ray_worker_of(victim)
        if (pid and (run_dir / "checkpoints" / "last.pt").exists()
                and _lines(run_dir / "metrics.jsonl") < steps // 3):
            break
        time.sleep(0.02)

    # Wait on the run's lock (the worker holds it while it trains), so that after the
    # kill this test, not the retry, holds it first: it reads and marks what the killed
    # attempt left, then lets the retry go on.
    acquired, release = threading.Event(), threading.Event()

    def hold() -> None:
        with (out / "runs" / f".{victim}.lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            acquired.set()
            release.wait(60)

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    time.sleep(0.2)
    os.kill(pid, signal.SIGKILL)
    try:
        assert acquired.wait(60), "the killed worker's lock was not released"
        assert not (run_dir / "summary.json").exists()  # it was killed mid-run
        checkpoint = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["step"]
        records = []
        for line in (run_dir / "metrics.jsonl").read_text().splitlines():
            try:
                records.append({**json.loads(line), "attempt": "first"})
            except json.JSONDecodeError:  # a line the kill cut short
                break
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    finally:
        release.set()
    holder.join(60)
    driver.join(300)
    assert not driver.is_alive() and "error" not in ended, ended

    reached = max(record["step"] for record in records)
    assert every <= checkpoint <= reached < steps and checkpoint % every == 0
    rows = {row.name: row for row in ended["rows"]}
    assert (rows[victim].status, rows[victim].attempts, rows[victim].finishes) == ("done", 2, 1)
    assert (rows["seed=1"].status, rows["seed=1"].attempts, rows["seed=1"].finishes) == (
        "done", 1, 1)
    assert rows[victim].result["steps"] == steps
    trained = [record for record in _records(run_dir) if record["kind"] == "train"]
    assert [record["step"] for record in trained] == list(range(1, steps + 1))  # once each
    # Up to the checkpoint: the first attempt's lines, kept; after it, the retry's only
    # (what the first attempt wrote past the checkpoint was cut and trained again).
    assert [record["step"] for record in trained if record.get("attempt") == "first"] == list(
        range(1, checkpoint + 1))
    # Continued exactly as if never stopped: the losses of the same run trained without
    # a kill, in float64.
    config = next(run.config for run in study.runs if run.name == victim)
    train(config.with_overrides({"run": {"out": str(tmp_path / "reference")}}))
    unbroken = [record["loss"] for record in _records(tmp_path / "reference")
                if record["kind"] == "train"]
    assert unbroken == [record["loss"] for record in trained]


def _device(name: str) -> dict:
    return {**FLOAT64, "run": {**FLOAT64["run"], "device": name}}


@pytest.mark.parametrize("options, base, message", [
    (["--backend", "rey"], FLOAT64, "--backend: unknown 'rey'; accepted: local, ray"),
    (["--address", "127.0.0.1:6379"], FLOAT64, "--address: only with --backend ray"),
    (["--cpus-per-run", "2"], FLOAT64, "--cpus-per-run: only with --backend ray"),
    (["--gpus-per-run", "1"], FLOAT64, "--gpus-per-run: only with --backend ray"),
    (["--backend", "ray", "--workers", "0"], FLOAT64,
     "--workers: must be an integer >= 1, got 0"),
    (["--backend", "ray", "--cpus-per-run", "0"], FLOAT64,
     "--cpus-per-run: must be an integer >= 1, got 0"),
    (["--backend", "ray", "--cpus-per-run", "two"], FLOAT64,
     "argument --cpus-per-run: invalid int value: 'two'"),
    (["--backend", "ray", "--cpus-per-run", "3"], FLOAT64,
     "--cpus-per-run: 3 CPUs for one run, but the largest node of the Ray cluster has 2; "
     "accepted here: 1..2"),
    (["--backend", "ray", "--gpus-per-run", "-1"], FLOAT64,
     "--gpus-per-run: must be a finite number >= 0, got -1.0"),
    (["--backend", "ray", "--gpus-per-run", "1.5"], FLOAT64,
     "--gpus-per-run: a fraction of one GPU (0 to 1) or a whole number of GPUs, got 1.5"),
    (["--backend", "ray", "--gpus-per-run", "1"], FLOAT64,
     "--gpus-per-run: run run has run.device: cpu and would leave its GPU idle"),
    (["--backend", "ray"], _device("cuda"),
     "--gpus-per-run: run run has run.device: cuda, which on Ray needs a GPU share"),
    # No GPU on the cluster: refused, and said how runs fall back to the CPU.
    (["--backend", "ray", "--gpus-per-run", "0.5"], _device("auto"),
     "--gpus-per-run: 0.5 GPU for one run, but the largest node of the Ray cluster has 0; "
     "accepted here: 0 (runs with run.device: auto then train on CPU)"),
    (["--backend", "ray", "--address", "nowhere"], FLOAT64,
     "--address: expected HOST:PORT of a Ray head (e.g. 10.0.0.5:6379), ray://HOST:PORT or "
     "auto, got 'nowhere'"),
    (["--backend", "ray", "--address", "127.0.0.1:1"], FLOAT64,
     "--address: nothing answers at 127.0.0.1:1 (ConnectionRefusedError)"),
])
def test_bad_backend_options_are_one_line_errors_and_nothing_is_written(
        local_ray, tmp_path, capsys, options, base, message):
    path = write_yaml_file(tmp_path / "s.yaml", {"base": base})
    out = tmp_path / "out"
    assert main(["study", str(path), "--out", str(out), *options]) == 2
    assert message in one_line_error(capsys)
    assert not out.exists()


def test_backend_ray_without_ray_is_one_line_naming_the_extra(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # as where it is not installed
    monkeypatch.delitem(sys.modules, "rnnscope.study.ray_backend")
    path = write_yaml_file(tmp_path / "s.yaml", {"base": FLOAT64})
    out = tmp_path / "out"
    assert main(["study", str(path), "--backend", "ray", "--out", str(out)]) == 2
    assert one_line_error(capsys) == ("rnnscope: error: --backend ray: Ray is not installed; "
                                      "install the extra: pip install 'rnnscope[ray]'\n")
    assert not out.exists()


def test_rnnscope_and_a_local_study_never_import_ray(tmp_path):
    path = write_yaml_file(tmp_path / "s.yaml", {"base": FLOAT64})
    script = (f"import sys, rnnscope\n"
              f"from rnnscope.cli.main import main\n"
              f"assert main(['study', {str(path)!r}, '--out', {str(tmp_path / 'out')!r}, "
              f"'--quiet']) == 0\n"
              f"print(sorted(m for m in sys.modules if m.partition('.')[0] == 'ray'))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "[]"
    assert _rows(tmp_path / "out")["run"].status == "done"


def test_a_node_that_does_not_see_the_study_directory_stops_the_study(local_ray, tmp_path):
    study = load_study(write_yaml_file(tmp_path / "s.yaml", {"base": FLOAT64}))
    out = tmp_path / "out"
    store = prepare(study, out)
    configs = {run.name: stored_config(run.config) for run in study.runs}
    elsewhere = tmp_path / "not-mounted"  # where the node looks: no study there
    try:
        with pytest.raises(ValueError, match=r"^out: Ray node \S+ does not see the study "
                           r"directory .*not-mounted; put --out on a path every node sees"):
            ray_backend.RayRunner().run(["run"], elsewhere, configs, store, print)
        row = store.rows()[0]
    finally:
        store.close()
    # Claimed once, given back: the same command resumes it once --out is shared.
    assert (row.status, row.attempts, row.finishes) == ("pending", 1, 0)
    assert not elsewhere.exists() and not (out / "runs").exists()


def test_a_run_whose_ray_worker_keeps_dying_is_an_error_and_is_retried_next_time(
        local_ray, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(ray_backend, "RETRIES", 0)  # give up after the first death
    steps = 150
    path = write_yaml_file(tmp_path / "one.yaml", {"base": {**FLOAT64, "run": {
        **FLOAT64["run"], "steps": steps, "early_stop": False, "checkpoint_every": 5}}})
    out = tmp_path / "out"
    codes: list[int] = []
    driver = threading.Thread(target=lambda: codes.append(
        main(["study", str(path), "--backend", "ray", "--out", str(out), "--quiet"])),
        daemon=True)
    driver.start()
    deadline = time.monotonic() + 120
    while not ((pid := _ray_worker_of("run"))
               and (out / "runs" / "run" / "checkpoints" / "last.pt").exists()):
        assert driver.is_alive() and time.monotonic() < deadline, codes
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    driver.join(120)
    assert codes == [1]
    err = capsys.readouterr().err
    assert ("rnnscope: run run failed: WorkerCrashedError: the Ray worker training it died "
            "1 time\n") in err and "Traceback" not in err
    row = _rows(out)["run"]
    assert (row.status, row.attempts, row.finishes) == ("error", 1, 0)

    monkeypatch.undo()
    _main_output(["study", str(path), "--backend", "ray", "--out", str(out), "--quiet"])
    row = _rows(out)["run"]
    assert (row.status, row.attempts, row.finishes) == ("done", 2, 1)
    steps_trained = [r["step"] for r in _records(out / "runs" / "run") if r["kind"] == "train"]
    assert steps_trained == list(range(1, steps + 1))
