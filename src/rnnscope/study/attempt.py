"""One attempt at one run of a study, shared by every backend: claim, train, finish.

    claim    study.db: the run goes pending (or error) -> running, owned by this attempt
    train    runs/<name>/: continued from checkpoints/last.pt if an earlier attempt got
             that far; a run that already ended is taken as it is, not trained again
    finish   study.db: done or error, only while this attempt still owns the run

Local worker processes do all three themselves (`attempt`). On Ray the driver claims
and finishes and a task on some node only trains (`train_run` touches the run
directory, never the store), so study.db keeps one writer however many nodes train.
"""

from __future__ import annotations

import fcntl
import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rnnscope.rundir.directory import CONFIG, SUMMARY
from rnnscope.study.spec import run_directory
from rnnscope.study.store import StudyStore
from rnnscope.training.config import ExperimentConfig
from rnnscope.training.run import train

# What training one run comes to: ("done", its summary.json) or ("error", {"message"}).
Outcome = tuple[str, dict]
ENDED = ("solved", "finished", "diverged", "failed")  # a summary with these stands


class WorkerDied(RuntimeError):
    """A worker ended without reporting (killed, out of memory, its node gone) and the
    study stopped; finished runs are kept and the same command resumes the rest."""


def new_owner() -> str:
    """A name for one attempt: the process that claims it, and a random part that makes
    it unique across processes, machines and attempts."""
    return f"{os.getpid()}:{uuid.uuid4().hex[:12]}"


def attempt(store: StudyStore, directory: Path, name: str, config: dict) -> None:
    """Claim `name`, train it, finish it; nothing if another attempt holds it or it is
    done. Ctrl-C gives the run back (pending) before it propagates."""
    owner = new_owner()
    if not store.claim(name, owner):
        return
    try:
        status, result = train_run(directory, name, config)
    except KeyboardInterrupt:
        store.release(name, owner)
        raise
    store.finish(name, owner, status, result)


def train_run(directory: Path, name: str, config: dict) -> Outcome:
    """Train run `name` of the study in `directory` into runs/<name>/ and return its
    outcome. A run that raises is an "error" outcome, not raised: one bad run does not
    stop the study. Only KeyboardInterrupt propagates."""
    out = run_directory(directory, name)
    try:
        # An attempt that was given up on (its study killed, its node cut off) may
        # still be writing for a moment: wait until it is gone.
        with _run_lock(out):
            summary = finished_summary(out)
            if summary is None:
                experiment = ExperimentConfig.from_dict(config).with_overrides(
                    {"run": {"out": str(out)}})
                # An earlier attempt that wrote config.yaml is continued from its checkpoint.
                train(experiment, resume=(out / CONFIG).is_file())
                summary = json.loads((out / SUMMARY).read_text(encoding="utf-8"))
    except Exception as error:  # noqa: BLE001 - any failure of one run is that run's result
        text = str(error).splitlines()[0] if str(error) else ""
        return "error", {"message": f"{type(error).__name__}: {text}"}
    return "done", summary


def finished_summary(out: Path) -> dict | None:
    """The summary of a run that ended (solved, finished, diverged, failed) but was killed
    before the store heard of it: its result stands, it is not trained again."""
    try:
        summary = json.loads((out / SUMMARY).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) and summary.get("status") in ENDED else None


@contextmanager
def _run_lock(out: Path) -> Iterator[None]:
    out.parent.mkdir(parents=True, exist_ok=True)
    with (out.parent / f".{out.name}.lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released by the kernel when its holder dies
        yield


__all__ = ["ENDED", "Outcome", "WorkerDied", "attempt", "finished_summary", "new_owner",
           "train_run"]
