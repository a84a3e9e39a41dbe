"""Studies: a grid of training runs, run in parallel, kept in a SQLite store, resumable.

A study file names a base config and the settings to vary:

    name: adding-lengths             # default: the file's stem
    base:                            # experiment config sections, or a YAML file's path
      task: {name: adding}
      run: {steps: 2000}
    grid:                            # every combination of these
      cell: [rnn_tanh, lstm]         # a shorthand, a section (init, clip, guard, task)
      task.seq_len: [50, 100]        # or section.key
      init: ["chrono:{task.seq_len}"]   # {section.key}: that run's own value
      seed: [0, 1]
    variants:                        # optional: named settings, each crossed with the grid
      - {name: full}
      - {name: tbptt, bptt.window: 10}
    exclude:                         # optional: combinations to leave out
      - {cell: rnn_tanh, init: "chrono:{task.seq_len}"}

The study directory holds `study.yaml` (the file as given), `study.db` (one row
per run: `store.StudyStore`) and `runs/<name>/`, one run directory per run.
Running the same command again skips finished runs and continues unfinished ones
from their last checkpoint: nothing finished is redone or lost.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import math
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rnnscope.checks import MAX_NAME, shown
from rnnscope.checks import name as check_name
from rnnscope.files import atomic_target, read_yaml
from rnnscope.study.store import STUDY_DB, STUDY_FILE, STUDY_RUNS, StudyRow, StudyStore
from rnnscope.training.config import SECTIONS, SHORTHANDS, SPEC_FIELDS, ExperimentConfig

KEYS = ("name", "base", "grid", "variants", "exclude")
# More combinations than this are a typo, not a study (every run's config is built and
# checked before anything runs: about a millisecond each, and a row in study.db).
MAX_RUNS = 100_000
# The shorthands of the command line, as grid keys: a section with a one-string form
# (init, clip, guard, task) stays that section (`init: chrono:100`); the run's own
# directory is the study's to choose.
GRID_SHORTHANDS = {short: key for short, key in SHORTHANDS.items()
                   if short not in (*SPEC_FIELDS, "clip", "out")}
_TEMPLATE = re.compile(r"\{(\w+)\.(\w+)\}")


@dataclass(frozen=True)
class StudyRun:
    name: str
    params: dict  # the settings that make this run differ: {"model.cell": "lstm", ...}
    config: ExperimentConfig


@dataclass(frozen=True)
class Study:
    name: str
    runs: list[StudyRun]
    source: dict  # the study file's contents


def load_study(path: str | Path, confirm: Callable[[int], None] | None = None) -> Study:
    """Read and check a study file; every run's config is built, so a bad value anywhere
    is one ValueError naming the run and the field before anything runs. `confirm(n)`
    is called with the number of combinations before they are built (it may refuse)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"study: {path} is not a file; expected a study YAML file")
    data = read_yaml(path)
    if isinstance(data, dict) and isinstance(data.get("base"), str):
        base_path = Path(data["base"]).expanduser()
        data = {**data, "base": read_yaml(base_path if base_path.is_absolute()
                                          else path.parent / base_path)}
    return study_from_dict(data, default_name=path.stem, confirm=confirm)


def study_from_dict(data: dict, default_name: str = "study",
                    confirm: Callable[[int], None] | None = None) -> Study:
    if not isinstance(data, dict):
        raise ValueError(f"study: expected a mapping with keys {', '.join(KEYS)}")
    unknown = sorted(set(data) - set(KEYS))
    if unknown:
        raise ValueError(f"study.{unknown[0]}: unknown key; accepted: {', '.join(KEYS)}")
    name = str(data.get("name") or default_name)
    if re.search(r"[^A-Za-z0-9._+-]", name) or name in (".", ".."):
        raise ValueError(f"study.name: letters, digits and . _ + - only (it names the study "
                         f"directory), got {shown(name)}")
    check_name("study.name", name)  # and not too long for a directory name
    base = ExperimentConfig.from_dict(data.get("base") or {})
    grid, variants, exclude = _grid(data), _variants(data), _exclusions(data)
    combinations = len(variants) * math.prod(len(values) for values in grid.values())
    if combinations > MAX_RUNS:
        raise ValueError(f"study.grid: {combinations:,} combinations; at most {MAX_RUNS:,} "
                         f"(each run's config is built and checked before any runs)")
    if confirm is not None:
        confirm(combinations)
    runs, tasks = [], set()
    for variant in variants:
        runs += _variant_runs(base, variant, grid, exclude, tasks)
    if not runs:
        raise ValueError("study: no runs left (every combination is excluded)")
    # Every run names a value for every setting any run varies (a variant that leaves
    # the clip alone shows the base's clip), so runs compare column by column.
    varied = list(dict.fromkeys(key for run in runs for key in run.params))
    runs = [dataclasses.replace(run, params={key: run.params[key] if key in run.params
                                             else _resolved(run.config, key)
                                             for key in varied}) for run in runs]
    names = [run.name for run in runs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"study: two runs are both named {twice[0]!r}; give the variants "
                         f"different names")
    return Study(name, runs, data)


def _grid(data: dict) -> dict[str, list]:
    """The grid with every key as section.key, in the file's order."""
    grid = data.get("grid") or {}
    if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
        raise ValueError("study.grid: expected a mapping of setting -> non-empty list of values")
    keys = [_setting(key) for key in grid]
    twice = sorted({key for key in keys if keys.count(key) > 1})
    if twice:
        raise ValueError(f"study.grid: {twice[0]} is given twice (as a shorthand and as "
                         f"section.key); keep one")
    return dict(zip(keys, grid.values(), strict=True))


def _variants(data: dict) -> list[dict]:
    variants = data.get("variants") or [{}]
    if not isinstance(variants, list) or not all(isinstance(v, dict) for v in variants):
        raise ValueError("study.variants: expected a list of mappings of setting -> value")
    for index, variant in enumerate(variants):  # a name is needed to tell variants apart
        if len(variants) > 1 and not variant.get("name"):
            raise ValueError(f"study.variants[{index}]: needs a name")
    return variants


def _exclusions(data: dict) -> list[dict]:
    exclude = data.get("exclude") or []
    if not isinstance(exclude, list) or not all(isinstance(e, dict) for e in exclude):
        raise ValueError("study.exclude: expected a list of mappings of setting -> value")
    return [{_setting(k): v for k, v in entry.items()} for entry in exclude]


def _variant_runs(base: ExperimentConfig, variant: dict, grid: dict[str, list],
                  exclude: list[dict], tasks: set[str]) -> list[StudyRun]:
    """The runs of one variant: its fixed settings crossed with the grid."""
    label = variant.get("name")
    fixed = {_setting(k): v for k, v in variant.items() if k != "name"}
    both = sorted(set(fixed) & set(grid))
    if both:
        raise ValueError(f"study.variants: {label} sets {both[0]}, which the grid also "
                         f"varies; set it in one place")
    runs = []
    for values in itertools.product(*grid.values()):
        chosen = dict(zip(grid, values, strict=True))
        params = {**fixed, **chosen}
        if _excluded(params, exclude):
            continue
        run_name = _run_name(label, chosen)
        try:
            config, params = _configure(base, params)
            _check_task(config, tasks)
        except ValueError as error:
            raise ValueError(f"study: run {run_name}: {error}") from None
        if _excluded(params, exclude):  # as filled in: chrono:100 as well as chrono:{...}
            continue
        try:
            _check_model(config)
        except ValueError as error:
            raise ValueError(f"study: run {run_name}: {error} (leave such combinations "
                             f"out with exclude:)") from None
        run_name = _run_name(label, {key: params[key] for key in grid})
        runs.append(StudyRun(run_name, params, config.with_overrides(
            {"run": {"name": run_name, "quiet": True}})))
    return runs


def _excluded(params: dict, exclude: list[dict]) -> bool:
    return any(all(params.get(key) == value for key, value in entry.items())
               for entry in exclude)


def _setting(key) -> str:
    key = GRID_SHORTHANDS.get(str(key), str(key))
    section = key.partition(".")[0]
    if section not in SECTIONS:
        raise ValueError(f"study: {key}: unknown setting; use section.key (sections: "
                         f"{', '.join(SECTIONS)}) or one of {', '.join(GRID_SHORTHANDS)}")
    if "." not in key and section not in (*SPEC_FIELDS, "clip"):
        raise ValueError(f"study: {key}: give a key of the section ({key}.KEY=...); a whole "
                         f"section as one value works for {', '.join((*SPEC_FIELDS, 'clip'))}")
    return key


def _configure(base: ExperimentConfig, params: dict) -> tuple[ExperimentConfig, dict]:
    """`base` with `params` applied in order (a section spec before its keys), then the
    `{section.key}` templates in string values filled from the resulting config; returns
    the config and the params as filled in."""
    config = base
    for key, value in sorted(params.items(), key=lambda item: "." in item[0]):
        section, _, field = key.partition(".")
        config = config.with_overrides({section: {field: value} if field else value})
    resolved = config.to_dict()
    filled = {}
    for key, value in params.items():
        if isinstance(value, str) and _TEMPLATE.search(value):
            filled[key] = _TEMPLATE.sub(lambda m: _lookup(resolved, m), value)
    for key, value in filled.items():
        section, _, field = key.partition(".")
        config = config.with_overrides({section: {field: value} if field else value})
    return config, {**params, **filled}


def _resolved(config: ExperimentConfig, key: str):
    section, _, field = key.partition(".")
    if field:
        return config.to_dict()[section].get(field)
    return config.clip.spec if section == "clip" else \
        getattr(getattr(config, section), SPEC_FIELDS[section])


def _check_task(config: ExperimentConfig, built: set[str]) -> None:
    """Build the run's task, once per distinct task config: the task section checks only
    its keys, so a bad value (seq_len: long) or a missing data file is caught here, before
    anything runs, rather than as an error in every run."""
    key = repr(config.task)
    if key not in built:
        config.task.build()
        built.add(key)


def _check_model(config: ExperimentConfig) -> None:
    """Build a small model of the run's cell and apply its init: an init that does not
    fit the cell (chrono on a tanh RNN) is caught before anything runs."""
    model = dataclasses.replace(config.model, hidden=2, layers=1).build(1, 1)
    config.init.apply(model)


def _lookup(config: dict, match: re.Match) -> str:
    section, key = match.groups()
    if key not in config.get(section, {}):
        raise ValueError(f"{{{section}.{key}}}: no such setting to fill in")
    return str(config[section][key])


def _run_name(label: str | None, grid_values: dict) -> str:
    parts = [label] if label else []
    parts += [f"{key.rpartition('.')[2]}={value}" for key, value in grid_values.items()]
    name = ",".join(str(part) for part in parts) or "run"
    name = re.sub(r"[^A-Za-z0-9._=,+-]+", "-", name).strip("-.") or "run"
    if len(name) > MAX_NAME:  # a directory name: long values (paths) are cut, and a
        # digest of the whole name keeps two such runs apart
        digest = hashlib.sha1(name.encode()).hexdigest()[:10]
        name = f"{name[:MAX_NAME - 11].rstrip('-.')}-{digest}"
    return name


# The study directory

def prepare(study: Study, directory: str | Path, source: str | Path | None = None) -> StudyStore:
    """Create (or reopen) the study directory and its store with every run in it."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"out: {directory} exists and is not a directory")
    directory.mkdir(parents=True, exist_ok=True)
    store = StudyStore(directory / STUDY_DB)
    # The same study again, or one grown by more runs (another seed); never a mix of two.
    names = {run.name for run in study.runs}
    foreign = [row.name for row in store.rows() if row.name not in names]
    if foreign:
        store.close()
        raise ValueError(f"out: {directory} holds another study (its run {foreign[0]!r} is "
                         f"not in this one); choose another --out")
    store.add([(run.name, run.params, stored_config(run.config)) for run in study.runs])
    if source is not None:
        with atomic_target(directory / STUDY_FILE) as temporary:
            shutil.copyfile(source, temporary)
    return store


def stored_config(config: ExperimentConfig) -> dict:
    """The config as the store keeps it: without run.out, which is decided at run time
    (the study directory may move)."""
    return dataclasses.replace(config, run=dataclasses.replace(config.run, out=None)).to_dict()


def run_directory(directory: str | Path, name: str) -> Path:
    return Path(directory) / STUDY_RUNS / name


def open_store(directory: str | Path, *, readonly: bool = False) -> StudyStore:
    return StudyStore.existing(Path(directory) / STUDY_DB, readonly=readonly)


def result_line(row: StudyRow) -> str:
    """One line for a run: its status and, when done, what it achieved."""
    result = row.result or {}
    if row.status == "error":
        return f"{row.name}: error: {result.get('message', '')}"
    if row.status != "done":
        return f"{row.name}: {row.status}"
    metric, diagnosis = result.get("metric") or {}, result.get("diagnosis") or {}
    value = metric.get("value")
    shown = f"{value:.4g}" if isinstance(value, float) else "n/a"
    flow = (f", {diagnosis.get('verdict')}, reach {diagnosis.get('reach')}"
            if diagnosis else "")
    return (f"{row.name}: {result.get('status')} after {result.get('steps')} steps, "
            f"{metric.get('name', 'metric')} {shown}{flow}")


__all__ = ["GRID_SHORTHANDS", "MAX_RUNS", "Study", "StudyRun", "load_study",
           "open_store", "prepare", "result_line", "run_directory", "study_from_dict"]
