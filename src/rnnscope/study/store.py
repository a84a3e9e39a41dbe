"""The study directory and its store, `study.db`: the status and result of every run.

    studies/NAME/
      study.yaml        the study file as given
      study.db          SQLite: one row per run (params, config, status, result, attempts)
      runs/<run>/       one run directory per run (rundir/)

Worker processes (or Ray tasks) claim, finish and release runs concurrently; readers
(`--status`, the report) open the store read-only.
"""

from __future__ import annotations

import contextlib
import errno
import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from rnnscope.files import WriteError, json_safe

STUDY_FILE, STUDY_DB, STUDY_RUNS = "study.yaml", "study.db", "runs"
RUN_STATES = ("pending", "running", "done", "error")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    name TEXT PRIMARY KEY,
    position INTEGER NOT NULL,
    params TEXT NOT NULL,      -- JSON: the grid values of this run
    config TEXT NOT NULL,      -- JSON: the whole experiment config
    status TEXT NOT NULL DEFAULT 'pending',
    result TEXT,               -- JSON: summary.json of a done run, {"message"} of an error
    attempts INTEGER NOT NULL DEFAULT 0,
    finishes INTEGER NOT NULL DEFAULT 0,
    owner TEXT,                -- the attempt that holds the run while it is running
    started REAL,
    finished REAL
)"""


@dataclass(frozen=True)
class StudyRow:
    name: str
    position: int
    params: dict
    config: dict
    status: str  # one of RUN_STATES
    result: dict | None
    attempts: int
    finishes: int
    seconds: float | None  # of the attempt that finished it


class StudyStore:
    """`study.db`: the status and result of every run of a study.

    Workers in other processes claim, finish and release runs at the same time:
    every change is one short transaction (WAL journal, waits for the lock), and an
    attempt changes a run only while it still owns it, so a stale worker can never
    finish a run twice or overwrite another attempt's result.
    """

    def __init__(self, path: str | Path, *, readonly: bool = False) -> None:
        self.path = Path(path)
        try:
            if readonly:  # readers (--status, the report) change nothing, not even the file
                self._db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=60,
                                           isolation_level=None)
                self._db.execute("SELECT COUNT(*) FROM runs").fetchone()
            else:
                self._db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")  # WAL stays safe on a crash
                self._db.execute(_SCHEMA)
        except sqlite3.Error as error:
            raise ValueError(f"study: {self.path} is not a readable study store ({error})"
                             ) from None

    @classmethod
    def existing(cls, path: str | Path, *, readonly: bool = False) -> StudyStore:
        if not Path(path).is_file():
            raise ValueError(f"study: {path} is not a study store (made by rnnscope study)")
        return cls(path, readonly=readonly)

    def add(self, runs: list[tuple[str, dict, dict]]) -> None:
        """Insert (name, params, config) rows not yet stored; a stored run whose config
        differs is a ValueError (the study file changed under the same directory)."""
        with self._transaction():
            for position, (name, params, config) in enumerate(runs):
                text = json.dumps(config, sort_keys=True)
                stored = self._db.execute("SELECT config FROM runs WHERE name = ?",
                                          (name,)).fetchone()
                if stored is None:
                    self._db.execute(
                        "INSERT INTO runs (name, position, params, config) VALUES (?, ?, ?, ?)",
                        (name, position, json.dumps(params), text))
                elif json.loads(stored[0]) != json.loads(text):
                    raise ValueError(f"study: run {name!r} in {self.path} was made with "
                                     f"another config; the study file changed since: "
                                     f"choose another --out")

    def reset_running(self) -> int:
        """Mark runs left `running` by a killed study as pending again; only call this
        while holding the study's lock (no live worker owns them)."""
        with self._transaction():
            return self._db.execute("UPDATE runs SET status = 'pending', owner = NULL "
                                    "WHERE status = 'running'").rowcount

    def claim(self, name: str, owner: str) -> bool:
        """Start an attempt at a pending (or failed) run; False if it is taken or done."""
        with self._transaction():
            return self._db.execute(
                "UPDATE runs SET status = 'running', owner = ?, attempts = attempts + 1, "
                "started = ?, finished = NULL, result = NULL "
                "WHERE name = ? AND status IN ('pending', 'error')",
                (owner, time.time(), name)).rowcount == 1

    def finish(self, name: str, owner: str, status: str, result: dict) -> bool:
        """End `owner`'s attempt as "done" or "error"; False if it no longer owns the run."""
        if status not in ("done", "error"):
            raise ValueError(f"status: expected done or error, got {status!r}")
        with self._transaction():
            return self._db.execute(
                "UPDATE runs SET status = ?, result = ?, finishes = finishes + ?, "
                "finished = ?, owner = NULL WHERE name = ? AND owner = ? AND status = 'running'",
                (status, json.dumps(json_safe(result), allow_nan=False), int(status == "done"),
                 time.time(), name, owner)).rowcount == 1

    def release(self, name: str, owner: str) -> None:
        """Give an interrupted attempt's run back (pending), to be redone or resumed."""
        with self._transaction():
            self._db.execute("UPDATE runs SET status = 'pending', owner = NULL "
                             "WHERE name = ? AND owner = ? AND status = 'running'", (name, owner))

    def rows(self) -> list[StudyRow]:
        with self._reading():
            return [StudyRow(name, position, json.loads(params), json.loads(config), status,
                             json.loads(result) if result else None, attempts, finishes,
                             finished - started if finished and started else None)
                    for (name, position, params, config, status, result, attempts, finishes,
                         started, finished) in self._db.execute(
                        "SELECT name, position, params, config, status, result, attempts, "
                        "finishes, started, finished FROM runs ORDER BY position, name")]

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(RUN_STATES, 0)
        with self._reading():
            for status, number in self._db.execute(
                    "SELECT status, COUNT(*) FROM runs GROUP BY status"):
                counts[status] = number
        return counts

    @contextmanager
    def _reading(self) -> Iterator[None]:
        try:
            yield
        except (sqlite3.Error, json.JSONDecodeError, TypeError) as error:
            raise ValueError(f"study: cannot read {self.path} ({type(error).__name__}: "
                             f"{error}); it is damaged or not a study store") from None

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE takes the write lock up front, so two workers never both read a
        run as pending and both claim it. A write SQLite refuses (disk full, read-only) is
        one line naming study.db: a WriteError, which crosses from a worker process."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                with contextlib.suppress(sqlite3.Error):  # SQLite may have rolled back
                    self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        except sqlite3.Error as error:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            full = isinstance(error, sqlite3.OperationalError) and "full" in str(error)
            raise WriteError(errno.ENOSPC if full else errno.EIO,
                             f"study: cannot write {self.path} ({error}); the study resumes "
                             f"from here when run again") from None
