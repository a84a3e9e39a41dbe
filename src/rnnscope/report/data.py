"""Reading run and study directories into plain data for the plots and the HTML report.

Nothing here draws, and nothing here needs the trainer: any run directory (rundir/),
old, remote or killed half way, can be read. A missing or unreadable piece is None (or
empty), and each report section says which piece it needed. What is damaged (a line
of metrics.jsonl, a summary.json that is not JSON, a field of the wrong type) is left
out with a note naming the file, which the page shows.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from rnnscope.report.summary import clean_summary
from rnnscope.rundir.directory import CONFIG, METRICS, SUMMARY
from rnnscope.rundir.jsonlines import read_lines
from rnnscope.study.store import STUDY_DB, STUDY_FILE, STUDY_RUNS, StudyStore


@dataclass
class RunData:
    """What one run directory holds; None where the file is missing or unreadable."""

    path: Path
    config_text: str | None = None  # config.yaml as written, shown verbatim
    config: dict | None = None
    train: list[dict] | None = None  # the "train" lines of metrics.jsonl
    evals: list[dict] | None = None  # the "eval" lines
    summary: dict | None = None
    notes: list[str] = field(default_factory=list)  # what was damaged and left out

    @property
    def name(self) -> str:
        return str((self.summary or {}).get("name") or self.path.name)

    @property
    def probes(self) -> list[dict]:
        """The train lines that carry the gradient flow through time, in step order."""
        return [line for line in self.train or [] if isinstance(line.get("flow"), dict)]


@dataclass
class StudyData:
    path: Path
    rows: list  # rnnscope.study.store.StudyRow, in the study's order
    runs: dict[str, RunData] = field(default_factory=dict)  # by run name, where on disk
    spec_text: str | None = None  # study.yaml as written


def kind_of(directory: str | Path) -> str:
    """"study" (study.db), "run" (config.yaml), else a one-line ValueError."""
    directory = Path(directory)
    if not directory.is_dir():
        what = "does not exist" if not directory.exists() else "is not a directory"
        raise ValueError(f"directory: {directory} {what}; expected a run directory (with "
                         f"{CONFIG}) or a study directory (with {STUDY_DB})")
    if (directory / STUDY_DB).is_file():
        return "study"
    if (directory / CONFIG).is_file():
        return "run"
    raise ValueError(f"directory: {directory} holds neither {CONFIG} (a run directory) nor "
                     f"{STUDY_DB} (a study directory)")


def load_run(directory: str | Path) -> RunData:
    directory = Path(directory)
    run = RunData(path=directory)
    run.config_text = _read_text(directory / CONFIG)
    if run.config_text is not None:
        try:
            loaded = yaml.safe_load(run.config_text)
        except yaml.YAMLError:
            loaded = None
        run.config = loaded if isinstance(loaded, dict) else None
    try:
        lines = read_lines(directory / METRICS)
    except OSError as error:
        lines = None
        run.notes.append(f"{METRICS}: cannot be read ({error.strerror or error})")
    if lines is not None:
        run.train = [line for line in lines.records if line["kind"] == "train"]
        run.evals = [line for line in lines.records if line["kind"] == "eval"]
        run.notes += [note for note in [lines.note(METRICS)] if note]
    run.summary = _summary(directory / SUMMARY, run.notes)
    return run


def _summary(path: Path, notes: list[str]) -> dict | None:
    """summary.json as far as it can be trusted; a note for what was not."""
    if not path.exists():
        return None
    problem = None
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        problem = f"cannot be read ({getattr(error, 'strerror', None) or error})"
    except (json.JSONDecodeError, RecursionError) as error:
        problem = f"is not valid JSON ({getattr(error, 'msg', 'too deeply nested')})"
    else:
        if not isinstance(summary, dict):
            problem = f"holds {type(summary).__name__}, not a mapping of fields"
    if problem is not None:
        notes.append(f"{SUMMARY} {problem}; the run's result is left out")
        return None
    summary, left_out = clean_summary(summary, SUMMARY)
    notes += left_out
    return summary


def load_study(directory: str | Path) -> StudyData:
    directory = Path(directory)
    store = StudyStore.existing(directory / STUDY_DB, readonly=True)
    try:
        rows = store.rows()  # in the study's order
    finally:
        store.close()
    rows = [dataclasses.replace(row, result=_stored_result(row)) for row in rows]
    study = StudyData(path=directory, rows=rows, spec_text=_read_text(directory / STUDY_FILE))
    for row in rows:
        run_dir = directory / STUDY_RUNS / row.name
        if run_dir.is_dir():
            study.runs[row.name] = load_run(run_dir)
    return study


def _stored_result(row) -> dict | None:
    """A row's result in study.db, cleaned as a summary.json is (fields of the wrong
    type left out); the study page shows its own notes, so these are not kept."""
    if not isinstance(row.result, dict):
        return None
    return clean_summary(row.result)[0]


def summary_value(summary: dict | None, *keys, default=None):
    """summary[k1][k2]...; `default` where any level is missing or null."""
    value = summary
    for key in keys:
        if not isinstance(value, dict) or value.get(key) is None:
            return default
        value = value[key]
    return value


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
