"""Running a study: its unfinished runs, on a backend.

    rnnscope study FILE --workers 2          local worker processes (the default)
    rnnscope study FILE --backend ray        Ray tasks, on one machine or a cluster
      study process: lock the study directory, add every run to study.db, mark runs that
                     a killed study left `running` as pending again, hand the unfinished
                     ones to the backend
      local worker:  claim a run in study.db -> train it into runs/<name>/ (resuming from
                     its checkpoint if an earlier attempt got that far) -> finish it
                     (attempt.py; ray_backend.py splits the same steps between its
                     driver and its tasks)

Local workers are spawned processes (forking a process that holds torch's thread pools
can hang) that end themselves when the parent dies, so a study killed with SIGKILL
leaves no worker behind to race the next attempt; an attempt that was overtaken anyway
can no longer finish its run (`StudyStore.finish` checks the owner).
"""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Protocol

import torch

from rnnscope.checks import available_cores, choice, integer
from rnnscope.study.attempt import WorkerDied, attempt
from rnnscope.study.spec import Study, open_store, prepare, stored_config
from rnnscope.study.store import STUDY_DB, STUDY_FILE, STUDY_RUNS, StudyRow, StudyStore

LOCK = "study.lock"
PARENT_POLL_SECONDS = 0.5
BACKENDS = ("local", "ray")
NO_RAY = ("--backend ray: Ray is not installed; install the extra: "
          "pip install 'rnnscope[ray]'")


class Runner(Protocol):
    """A backend: trains the runs it is handed, each exactly once (attempt.py)."""

    def describe(self) -> str: ...

    def session(self, study: Study): ...  # a context manager, entered before any write

    def run(self, todo: list[str], directory: Path, configs: dict[str, dict],
            store: StudyStore, report: Callable[[str], None]) -> None: ...


class LocalRunner:
    """`workers` processes on this machine (1: in the study's own process)."""

    def __init__(self, workers: int = 1) -> None:
        self.workers = integer("--workers", workers, 1)

    def describe(self) -> str:
        return f"{self.workers} worker(s)"

    def session(self, study: Study):
        return nullcontext()  # nothing to connect to

    def run(self, todo: list[str], directory: Path, configs: dict[str, dict],
            store: StudyStore, report: Callable[[str], None]) -> None:
        _run_all(todo, directory, configs, self.workers, report)


def make_runner(backend: str = "local", *, workers: int | None = None,
                address: str | None = None, cpus_per_run: int | None = None,
                gpus_per_run: float | None = None) -> Runner:
    """The backend the command line asks for, its options checked; Ray is imported only
    here and only for `backend="ray"` (a ValueError naming the extra without it)."""
    choice("--backend", backend, BACKENDS)
    if backend == "local":
        for flag, value, why in (
                ("--address", address, "the head of a Ray cluster"),
                ("--cpus-per-run", cpus_per_run, "local workers split this machine's cores"),
                ("--gpus-per-run", gpus_per_run, "a local run trains on its run.device")):
            if value is not None:
                raise ValueError(f"{flag}: only with --backend ray ({why})")
        return LocalRunner(1 if workers is None else workers)
    try:
        from rnnscope.study.ray_backend import RayRunner
    except ModuleNotFoundError as error:
        if (error.name or "").partition(".")[0] != "ray":
            raise
        raise ValueError(NO_RAY) from None
    return RayRunner(workers=workers, address=address, cpus_per_run=cpus_per_run,
                     gpus_per_run=gpus_per_run)


def run_study(study: Study, directory: str | Path, *, workers: int = 1,
              runner: Runner | None = None, source: str | Path | None = None,
              on_result: Callable[[StudyRow, int, int], None] | None = None) -> list[StudyRow]:
    """Run every run of `study` not yet done into `directory`; return the store's rows.

    `runner` trains them (`make_runner`; default: `workers` local processes, 1: in this
    process). `on_result(row, done, total)` is called as each run ends. A ValueError
    (bad input, directory in use, no Ray cluster) comes before anything is written. On
    KeyboardInterrupt or WorkerDied the workers are ended and every unfinished run is
    pending again, to be resumed by the same call.
    """
    runner = LocalRunner(workers) if runner is None else runner
    directory = Path(directory)
    own = (STUDY_DB, LOCK, STUDY_FILE, STUDY_RUNS, "report.")  # study.db-wal too
    foreign = sorted(path.name for path in directory.iterdir()
                     if not path.name.startswith(own)) if directory.is_dir() else []
    if foreign:  # --out . or a run directory: a study would scatter its files among others
        raise ValueError(f"out: {directory} holds files that are not a study's (e.g. "
                         f"{foreign[0]}); choose a new directory for the study")
    with runner.session(study), _locked(directory):
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
                runner.run(todo, directory, configs, store, report)
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
    """Train the runs in `todo`: here one after another, or in `workers` processes. Every
    run gets the threads a worker has (the cores over `workers`), wherever it runs: a
    run's numbers depend on its thread count (sums in another order), and training
    amplifies the difference, so a run left alone at the end of a study or resumed by
    itself must train as it would have in a worker."""
    threads = max(1, available_cores() // workers)
    if workers == 1 or len(todo) <= 1:
        before = torch.get_num_threads()
        if workers > 1:  # one worker's runs keep the process's threads, as `train` does
            torch.set_num_threads(threads)
        try:
            for name in todo:
                execute(str(directory), name, configs[name])
                report(name)
        finally:
            torch.set_num_threads(before)
        return
    context = multiprocessing.get_context("spawn")
    before = set(multiprocessing.active_children())
    with ProcessPoolExecutor(min(workers, len(todo)), mp_context=context,
                             initializer=_start_worker, initargs=(os.getpid(), threads)) as pool:
        # The workers start (here, on submit) with Ctrl-C ignored: a process still
        # importing when it comes would otherwise die with a traceback before its
        # initializer could ignore it. The study process takes Ctrl-C again after.
        main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
        try:
            futures = [pool.submit(execute, str(directory), name, configs[name])
                       for name in todo]
        finally:
            if main:
                signal.signal(signal.SIGINT, previous)
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
    """One attempt at one run, in a worker process or in the caller's (attempt.py).
    Returns the run's name."""
    store = open_store(directory)
    try:
        attempt(store, Path(directory), name, config)
    finally:
        store.close()
    return name


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


__all__ = ["BACKENDS", "NO_RAY", "LocalRunner", "Runner", "WorkerDied", "execute",
           "make_runner", "run_study", "study_running"]
