"""The run directory: everything a run leaves behind, written so a crash never leaves
a half-written file that a reader or `--resume` could trust.

    runs/NAME/
      config.yaml          the resolved experiment config (every field, defaults included)
      metrics.jsonl        one JSON object per line: {"kind": "train", "step": ...} every
                           step, {"kind": "eval", ...} on the eval schedule; train lines
                           carry the gradient flow through time on the probe schedule
      summary.json         the result (status, steps, metric, diagnosis, ...), at the end
      events.out.tfevents.*  TensorBoard: scalars, gradient histograms, the flow profile
                           and heat map images
      checkpoints/last.pt  model, optimiser, schedule, RNG and guard state (resume)
      checkpoints/best.pt  the weights with the best held-out metric so far

Checkpoints and JSON files are written to a temporary file and renamed into place;
metrics lines are flushed one by one and cut back to the checkpoint on resume.

A study keeps one row per run in `study.db` (SQLite, `StudyStore`), which its
worker processes update concurrently.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from rnnscope.config import write_yaml
from rnnscope.files import atomic_target, json_safe, write_json

CONFIG, METRICS, SUMMARY = "config.yaml", "metrics.jsonl", "summary.json"
CHECKPOINTS = "checkpoints"
HEATMAP_ROWS = 256  # probes drawn in TensorBoard's heat map, at most
# A study directory: the study file as given, the store, one run directory per run.
STUDY_FILE, STUDY_DB, STUDY_RUNS = "study.yaml", "study.db", "runs"


class RunDirectory:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.config_path = self.path / CONFIG
        self.metrics_path = self.path / METRICS
        self.summary_path = self.path / SUMMARY
        self.checkpoint_dir = self.path / CHECKPOINTS
        self._metrics = None

    @classmethod
    def create(cls, path: str | Path, config: dict) -> RunDirectory:
        run = cls(path)
        if run.path.exists() and not run.path.is_dir():
            raise ValueError(f"out: {run.path} exists and is not a directory")
        if run.config_path.exists():
            raise ValueError(f"out: {run.path} already holds a run; continue it with --resume "
                             f"or choose another --out")
        run.path.mkdir(parents=True, exist_ok=True)
        with atomic_target(run.config_path) as temporary:
            write_yaml(temporary, config)
        return run

    @classmethod
    def existing(cls, path: str | Path) -> RunDirectory:
        run = cls(path)
        if not run.config_path.is_file():
            raise ValueError(f"out: {run.path} holds no run to resume (no {CONFIG})")
        return run

    # metrics.jsonl

    def append(self, record: dict) -> None:
        if self._metrics is None:
            self._metrics = self.metrics_path.open("a", encoding="utf-8")
        self._metrics.write(json.dumps(json_safe(record), allow_nan=False) + "\n")
        self._metrics.flush()

    def cut_metrics(self, after_step: int) -> None:
        """Drop lines past `after_step` (written after the checkpoint a resume starts from),
        and a last line cut short by a kill."""
        if not self.metrics_path.exists():
            return
        kept = []
        for line in self.metrics_path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                break
            if record.get("step", 0) <= after_step:
                kept.append(line)
        with atomic_target(self.metrics_path) as temporary:
            temporary.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")

    def read_metrics(self) -> list[dict]:
        return read_records(self.metrics_path) or []

    # checkpoints

    def save_checkpoint(self, name: str, state: dict) -> bool:
        """Write `checkpoints/<name>.pt` atomically; refuse (return False) if any tensor in
        it is not finite, so a resume never starts from a diverged state."""
        if not all_finite(state):
            return False
        self.checkpoint_dir.mkdir(exist_ok=True)
        with atomic_target(self.checkpoint_dir / f"{name}.pt") as temporary:
            torch.save(state, temporary)
        return True

    def load_checkpoint(self, name: str) -> dict | None:
        """`checkpoints/<name>.pt`, or None if there is none; an unreadable file is a
        one-line ValueError (never unpickled beyond tensors: weights_only)."""
        path = self.checkpoint_dir / f"{name}.pt"
        if not path.is_file():
            return None
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises several kinds for a damaged file
            raise ValueError(f"resume: cannot read {path} ({type(error).__name__}); move it "
                             f"away to start the run again from its last good state") from None
        if not isinstance(state, dict):
            raise ValueError(f"resume: {path} holds no checkpoint")
        return state

    def write_summary(self, summary: dict) -> None:
        write_json(self.summary_path, summary)

    def close(self) -> None:
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None


def read_records(path: str | Path) -> list[dict] | None:
    """The JSON objects of a JSON-lines file up to the first unreadable line (a kill can
    cut the last one short); None if there is no file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    records = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            break
        if isinstance(record, dict):
            records.append(record)
    return records


def all_finite(state) -> bool:
    if isinstance(state, torch.Tensor):
        return not state.is_floating_point() or bool(torch.isfinite(state).all())
    if isinstance(state, dict):
        return all(all_finite(value) for value in state.values())
    if isinstance(state, (list, tuple)):
        return all(all_finite(value) for value in state)
    return True


class TensorBoardLog:
    """Listener writing TensorBoard events into the run directory (`tensorboard --logdir
    runs` shows every run): scalars every step, gradient histograms and the flow profile
    image on the probe schedule."""

    def __init__(self, path: Path, purge_step: int | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter  # imports tensorboard: slow

        self.writer = SummaryWriter(log_dir=str(path), purge_step=purge_step)
        # The probes so far, as metrics.jsonl has them, for the heat map; a resumed run
        # starts from the lines before the step it continues from.
        self.probes: list[dict] = [] if purge_step is None else [
            {"step": line["step"], "flow": line["flow"]}
            for line in read_records(Path(path) / METRICS) or []
            if line.get("kind") == "train" and "flow" in line and line["step"] < purge_step]
        self._seen, self._stride = 0, 1
        earlier, self.probes = self.probes, []
        for probe in earlier:
            self._keep_probe(probe)

    def _keep_probe(self, probe: dict) -> None:
        """At most HEATMAP_ROWS probes, evenly spaced: past that, every other one goes
        and only every `stride`-th new one is kept, so a long run's heat map costs the
        same to draw at every evaluation."""
        if self._seen % self._stride == 0:
            self.probes.append(probe)
            if len(self.probes) > HEATMAP_ROWS:
                self.probes, self._stride = self.probes[::2], self._stride * 2
        self._seen += 1

    def after_step(self, state) -> None:
        step, scalars = state.step, state.scalars()
        for key, value in scalars.items():
            if value is not None:
                self.writer.add_scalar(f"train/{key}", value, step)
        if state.flow is not None:
            self._keep_probe({"step": step, "flow": {
                "layers": state.flow.layers, "norms": state.flow.norms.tolist()}})
        if state.flow is not None and state.diagnosis is not None:
            self.writer.add_scalar("flow/reach", state.diagnosis.reach, step)
            self.writer.add_scalar("flow/rate", state.diagnosis.rate, step)
        for name, grad in state.grads.items():
            if torch.isfinite(grad).all():
                self.writer.add_histogram(f"grad/{name}", grad, step)

    def on_eval(self, evaluation) -> None:
        self.writer.add_scalar("valid/loss", evaluation.loss, evaluation.step)
        self.writer.add_scalar(f"valid/{evaluation.metric_name}", evaluation.metric,
                               evaluation.step)

    def add_flow_image(self, flow, step: int, title: str) -> None:
        """The latest flow profile and the heat map of every probe so far, as images."""
        from rnnscope.report.plots import flow_heatmap_figure, flow_profile_figure

        self.writer.add_figure("flow/profile", flow_profile_figure(flow, title=title), step)
        if self.probes:
            self.writer.add_figure("flow/heatmap", flow_heatmap_figure(
                self.probes, title=title.split(",")[0]), step)

    def close(self) -> None:
        self.writer.close()


class MetricsLog:
    """Listener writing `metrics.jsonl`: a train line every step (with the gradient flow
    through time on the probe schedule), an eval line on the eval schedule."""

    def __init__(self, run: RunDirectory) -> None:
        self.run = run

    def after_step(self, state) -> None:
        record = {"kind": "train", "step": state.step, **state.scalars(),
                  "clipped": state.clipped}
        if state.action:
            record["guard"] = state.action
        if state.param_norms:
            record["grad_norms"] = state.param_norms
        if state.flow is not None:
            record["flow"] = {"layers": state.flow.layers, "norms": state.flow.norms.tolist(),
                              "subnormal_fraction": state.flow.subnormal_fraction,
                              "underflow_fraction": state.flow.underflow_fraction}
        if state.diagnosis is not None:
            record.update(verdict=state.diagnosis.verdict, reach=state.diagnosis.reach,
                          rate=state.diagnosis.rate)
        self.run.append(record)

    def on_eval(self, evaluation) -> None:
        self.run.append({"kind": "eval", "step": evaluation.step, "loss": evaluation.loss,
                         "metric": evaluation.metric, "metric_name": evaluation.metric_name,
                         "solved": evaluation.solved})


# The study store

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
        cursor = self._db.execute(
            "SELECT name, position, params, config, status, result, attempts, finishes, "
            "started, finished FROM runs ORDER BY position, name")
        return [StudyRow(name, position, json.loads(params), json.loads(config), status,
                         json.loads(result) if result else None, attempts, finishes,
                         finished - started if finished and started else None)
                for (name, position, params, config, status, result, attempts, finishes,
                     started, finished) in cursor.fetchall()]

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(RUN_STATES, 0)
        for status, number in self._db.execute(
                "SELECT status, COUNT(*) FROM runs GROUP BY status"):
            counts[status] = number
        return counts

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE takes the write lock up front, so two workers never both read a
        run as pending and both claim it."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
