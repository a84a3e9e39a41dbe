"""Running a study: its unfinished runs, in parallel worker processes.

    rnnscope study FILE --workers 2
      parent: lock the study directory, add every run to study.db, mark runs that a
              killed study left `running` as pending again, hand out the unfinished ones
      worker: claim a run in study.db -> train it into runs/<name>/ (resuming from its
              checkpoint if an earlier attempt got that far) -> finish it in study.db

Workers are spawned processes (forking a process that holds torch's thread pools
can hang) that end themselves when the parent dies, so a study killed with
SIGKILL leaves no worker behind to race the next attempt; an attempt that was
overtaken anyway can no longer finish its run (`StudyStore.finish` checks the owner).
"""

from __future__ import annotations

import fcntl
import json
import multiprocessing
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from pathlib import Path

import torch

from rnnscope.checks import integer
from rnnscope.rundir.directory import CONFIG, SUMMARY
from rnnscope.study.spec import Study, open_store, prepare, run_directory, stored_config
from rnnscope.study.store import STUDY_DB, STUDY_FILE, STUDY_RUNS, StudyRow, StudyStore
from rnnscope.training.config import ExperimentConfig
from rnnscope.training.run import train

LOCK = "study.lock"
PARENT_POLL_SECONDS = 0.5


class WorkerDied(RuntimeError):
    """A worker process ended without reporting (killed, or out of memory)."""


def run_study(study: Study, directory: str | Path, *, workers: int = 1,
              source: str | Path | None = None,
              on_result: Callable[[StudyRow, int, int], None] | None = None) -> list[StudyRow]:
    """Run every run of `study` not yet done into `directory`; return the store's rows.

    `workers` processes train at once (1: in this process). `on_result(row, done,
    total)` is called as each run ends. A ValueError (bad input, directory in use)
    comes before any run starts. On KeyboardInterrupt or WorkerDied the workers are
    ended and every unfinished run is pending again, to be resumed by the same call.
    """
    integer("--workers", workers, 1)
    directory = Path(directory)
    own = (STUDY_DB, LOCK, STUDY_FILE, STUDY_RUNS, "report.")  # study.db-wal too
    foreign = sorted(path.name for path in directory.iterdir()
                     if not path.name.startswith(own)) if directory.is_dir() else []
    if foreign:  # --out . or a run directory: a study would scatter its files among others
        raise ValueError(f"out: {directory} holds files that are not a study's (e.g. "
                         f"{foreign[0]}); choose a new directory for the study")
    with _locked(directory):
        store = prepare(study, directory, source)
        try:
            store.reset_running()  # we hold the lock: no live study owns them
            configs = {run.name: stored_config(run.config) for run in study.runs}
            todo = [row.name for row in store.rows()
                    if row.name in configs and row.status in ("pending", "error")]
            finished = 0

            def report(name: str) -> None:
                nonlocal finished
                finished += 1
                if on_result is not None:
                    row = next(row for row in store.rows() if row.name == name)
                    on_result(row, finished, len(todo))

            try:
                _run_all(todo, directory, configs, workers, report)
            except (KeyboardInterrupt, WorkerDied):
                # Our workers have ended; one stopped between claiming a run and
                # training it, or killed mid-run, left the run claimed: give it back.
                store.reset_running()
                raise
            return [row for row in store.rows() if row.name in configs]
        finally:
            store.close()


def _run_all(todo: list[str], directory: Path, configs: dict[str, dict], workers: int,
             report: Callable[[str], None]) -> None:
    """Train the runs in `todo`: here one after another, or in `workers` processes."""
    if workers == 1 or len(todo) <= 1:
        for name in todo:
            execute(str(directory), name, configs[name])
            report(name)
        return
    threads = max(1, len(os.sched_getaffinity(0)) // workers)
    context = multiprocessing.get_context("spawn")
    before = set(multiprocessing.active_children())
    with ProcessPoolExecutor(min(workers, len(todo)), mp_context=context,
                             initializer=_start_worker, initargs=(os.getpid(), threads)) as pool:
        futures = [pool.submit(execute, str(directory), name, configs[name]) for name in todo]
        try:
            for future in as_completed(futures):
                report(future.result())
        except BrokenProcessPool:
            raise WorkerDied("a worker process died (killed, or out of memory); finished "
                             "runs are kept: run the same command again to resume") from None
        except KeyboardInterrupt:
            # Workers ignore Ctrl-C (an idle one would die with a traceback, a busy one
            # would take the next queued run): the study ends them, as a SIGKILL would;
            # their runs resume from their last checkpoints.
            for future in futures:
                future.cancel()
            for child in set(multiprocessing.active_children()) - before:
                child.terminate()
            raise


def _start_worker(parent: int, threads: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the study process decides (above)
    torch.set_num_threads(threads)

    def watch() -> None:  # end with the study process, however it ends
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_SECONDS)
        os._exit(1)

    threading.Thread(target=watch, name="rnnscope-parent-watch", daemon=True).start()


def execute(directory: str, name: str, config: dict) -> str:
    """One attempt at one run (in a worker process, or in the caller's): claim, train,
    finish. Returns the run's name. A run that raises is stored as an error, not
    raised: one bad run does not stop the study."""
    store = open_store(directory)
    try:
        _attempt(store, Path(directory), name, config)
    finally:
        store.close()
    return name


def _attempt(store: StudyStore, directory: Path, name: str, config: dict) -> None:
    owner = f"{os.getpid()}:{uuid.uuid4().hex[:12]}"
    if not store.claim(name, owner):
        return
    out = run_directory(directory, name)
    try:
        # A worker of a killed study may live on for a moment: wait until it is gone.
        with _run_lock(out):
            summary = _finished_summary(out)
            if summary is None:
                experiment = ExperimentConfig.from_dict(config).with_overrides(
                    {"run": {"out": str(out)}})
                # An earlier attempt that wrote config.yaml is continued from its checkpoint.
                train(experiment, resume=(out / CONFIG).is_file())
                summary = json.loads((out / SUMMARY).read_text(encoding="utf-8"))
    except KeyboardInterrupt:
        store.release(name, owner)
        raise
    except Exception as error:  # noqa: BLE001 - any failure of one run is that run's result
        text = str(error).splitlines()[0] if str(error) else ""
        store.finish(name, owner, "error", {"message": f"{type(error).__name__}: {text}"})
        return
    store.finish(name, owner, "done", summary)


def _finished_summary(out: Path) -> dict | None:
    """The summary of a run that ended (solved, finished, diverged, failed) but was killed
    before the store heard of it: its result stands, it is not trained again."""
    try:
        summary = json.loads((out / SUMMARY).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) and summary.get("status") in (
        "solved", "finished", "diverged", "failed") else None


@contextmanager
def _run_lock(out: Path) -> Iterator[None]:
    out.parent.mkdir(parents=True, exist_ok=True)
    with (out.parent / f".{out.name}.lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released by the kernel when its holder dies
        yield


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Hold the study directory's lock: one study process per directory at a time (the
    kernel drops the lock when the process dies, however it dies)."""
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"out: {directory} exists and is not a directory")
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / LOCK).open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(f"out: {directory} is in use by another rnnscope study; wait for "
                             f"it to end or choose another --out") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def study_running(directory: str | Path) -> bool:
    """Whether a study process holds the lock of `directory` now (so its `running` runs
    are being trained, not left so by a study that was killed or hit a full disk)."""
    try:
        handle = (Path(directory) / LOCK).open("r")
    except OSError:
        return False  # no lock file: no study ever ran here
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


__all__ = ["WorkerDied", "execute", "run_study", "study_running"]
