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
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from pathlib import Path

import torch

from rnnscope.experiment import ExperimentConfig
from rnnscope.runlog import SUMMARY, StudyRow, StudyStore
from rnnscope.runner import train
from rnnscope.study import Study, open_store, prepare, run_directory, stored_config

LOCK = "study.lock"
PARENT_POLL_SECONDS = 0.5


def run_study(study: Study, directory: str | Path, *, workers: int = 1,
              source: str | Path | None = None,
              on_result: Callable[[StudyRow, int, int], None] | None = None) -> list[StudyRow]:
    """Run every run of `study` not yet done into `directory`; return the store's rows.

    `workers` processes train at once (1: in this process). `on_result(row, done,
    total)` is called as each run ends. A ValueError (bad input, directory in use)
    comes before any run starts; KeyboardInterrupt gives unfinished runs back.
    """
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ValueError(f"workers: expected an integer >= 1, got {workers!r}")
    directory = Path(directory)
    with _locked(directory):
        store = prepare(study, directory, source)
        store.reset_running()  # we hold the lock: no live study owns them
        configs = {run.name: stored_config(run.config) for run in study.runs}
        todo = [row.name for row in store.rows()
                if row.name in configs and row.status in ("pending", "error")]
        total, finished = len(todo), 0

        def report(name: str) -> None:
            nonlocal finished
            finished += 1
            if on_result is not None:
                row = next(row for row in store.rows() if row.name == name)
                on_result(row, finished, total)

        try:
            _run_all(todo, directory, configs, workers, report)
        except (KeyboardInterrupt, RuntimeError):
            # Every attempt of ours has ended (the pool waits for its workers), but one
            # interrupted between its claim and its training, or a worker that died,
            # left its run claimed: give it back.
            store.reset_running()
            store.close()
            raise
        rows = [row for row in store.rows() if row.name in configs]
        store.close()
        return rows


def _run_all(todo: list[str], directory: Path, configs: dict[str, dict], workers: int,
             report: Callable[[str], None]) -> None:
    """Train the runs in `todo`: here one after another, or in `workers` processes."""
    if workers == 1 or len(todo) <= 1:
        for name in todo:
            execute(str(directory), name, configs[name])
            report(name)
    else:
        threads = max(1, (os.cpu_count() or 1) // workers)
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(min(workers, len(todo)), mp_context=context) as pool:
            futures = [pool.submit(execute, str(directory), name, configs[name],
                                   os.getpid(), threads) for name in todo]
            try:
                for future in as_completed(futures):
                    report(future.result())
            except BrokenProcessPool:
                raise RuntimeError("a worker process died (killed, or out of memory); "
                                   "finished runs are kept: run the same command again "
                                   "to resume") from None
            finally:
                for future in futures:
                    future.cancel()


def execute(directory: str, name: str, config: dict, parent: int | None = None,
            threads: int | None = None) -> str:
    """One attempt at one run (in a worker process, or in the caller's): claim, train,
    finish. Returns the run's name. A run that raises is stored as an error, not
    raised: one bad run does not stop the study."""
    if parent is not None:
        _exit_with(parent)
    if threads is not None:
        torch.set_num_threads(threads)
    store = open_store(directory)
    try:
        _attempt(store, Path(directory), name, config)
    except KeyboardInterrupt:
        if parent is None:
            raise
        # Ctrl-C reaches every process of the terminal's group. A worker that went on
        # would take the next queued run while the study shuts down; it ends here
        # instead (its run is given back), and the pool shuts the others down.
        os._exit(130)
    finally:
        store.close()
    return name


def _attempt(store: StudyStore, directory: Path, name: str, config: dict) -> None:
    owner = f"{os.getpid()}:{uuid.uuid4().hex[:12]}"
    if not store.claim(name, owner):
        return
    out = run_directory(directory, name)
    try:
        experiment = ExperimentConfig.from_dict(config).with_overrides(
            {"run": {"out": str(out)}})
        # An earlier attempt that wrote config.yaml is continued from its checkpoint.
        train(experiment, resume=(out / "config.yaml").is_file())
        summary = json.loads((out / SUMMARY).read_text(encoding="utf-8"))
    except KeyboardInterrupt:
        store.release(name, owner)
        raise
    except Exception as error:  # noqa: BLE001 - any failure of one run is that run's result
        text = str(error).splitlines()[0] if str(error) else ""
        store.finish(name, owner, "error", {"message": f"{type(error).__name__}: {text}"})
        return
    store.finish(name, owner, "done", summary)


_watching: set[int] = set()  # parents this process already watches


def _exit_with(parent: int) -> None:
    """End this worker when `parent` is gone (then this process is re-parented)."""
    if parent in _watching:
        return
    _watching.add(parent)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_SECONDS)
        os._exit(1)

    threading.Thread(target=watch, name="rnnscope-parent-watch", daemon=True).start()


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


__all__ = ["execute", "run_study"]
