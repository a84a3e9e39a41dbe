"""Property-based: whatever flags and config values a user types, the command line never
shows a traceback; refused input is exit code 2 and exactly one line on stderr.

The commands run in-process (`rnnscope.cli.main.main`), each in a fresh directory. The
values are the hostile and careless ones: wrong types, empty and very long strings,
NaN, infinities, negative and huge numbers, unknown names. Integers that would be
valid but slow (a million steps) are left out: refusing them is not the point.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rnnscope.checks import field_names
from rnnscope.cli.main import main
from rnnscope.tasks import TASKS
from rnnscope.training.config import SECTIONS, SHORTHANDS

# Small where valid (a run of them trains in a fraction of a second), else refused.
NUMBERS = st.sampled_from([-(2**70), -1, 0, 1, 2, 3, 0.5, -0.0, 1e-300, 1e308, 2**64])
TEXTS = st.one_of(
    st.sampled_from(["", " ", "none", "true", "nan", "inf", "-inf", "1e400", "~/x", "../..",
                     "a/b", "lstm", "gru", "norm:1.0", "chrono:3", "spectral:-1", "x" * 300,
                     "\u00e9\u20ac", "<script>", "'", "0x10", "1_000", "--steps"]),
    st.text(max_size=12))
VALUES = st.one_of(NUMBERS, TEXTS, st.booleans())
# Huge sizes and seeds: refused by a limit, or by the allocator in one line.
HUGE = st.sampled_from([10**23, 10**12, 2**63])

FIELDS = [f"{section}.{name}" for section, cls in SECTIONS.items() if section != "task"
          for name in field_names(cls)]
TASK_KEYS = ["seq_len", "path", "columns", "column", "mode", "permuted", "valid_fraction",
             "horizon", "missing", "season", "level", "permutation_seed", "bogus"]
# Expensive fields held small by the base command (shorthands win over dotted keys).
BASE = ["--steps", "2", "--seq-len", "5", "--hidden", "4", "--batch", "2", "--quiet",
        "--run.eval_every=0", "--run.eval_batches=1", "--probe.every=0",
        "--run.checkpoint_every=0", "--layers", "1"]
SMALL_SHORTHANDS = ("steps", "seq_len", "hidden", "batch", "layers")


@st.composite
def train_flags(draw) -> list[str]:
    flags = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["short", "dotted", "task", "raw"]))
        if kind == "short":
            name = draw(st.sampled_from(sorted(SHORTHANDS)))
            value = draw(HUGE if name in ("seed", "hidden", "layers", "batch", "seq_len")
                         and draw(st.booleans())
                         else st.sampled_from(["-1", "0", "1", "2"])
                         if name in SMALL_SHORTHANDS else VALUES)
            flags += [f"--{name.replace('_', '-')}", str(value)]
        elif kind == "dotted":
            key = draw(st.sampled_from(FIELDS))
            if key.startswith("run.") and key.endswith(("steps", "batches", "every")):
                continue  # valid large values only run long
            flags.append(f"--{key}={draw(VALUES)}")
        elif kind == "task":
            flags.append(f"--task.{draw(st.sampled_from(TASK_KEYS))}={draw(VALUES)}")
        else:
            flags.append(draw(st.sampled_from(["--task", "--resume", "--json", "--out=",
                                               "-x", "--.=", "--task.", "--=1", "extra"])))
    return flags


def run_cli(arguments: list[str]) -> tuple[int, str]:
    """(exit code, stderr) of `rnnscope ARGUMENTS` run here, in a fresh directory."""
    stderr, home = io.StringIO(), os.environ.get("HOME")
    with tempfile.TemporaryDirectory() as directory, contextlib.chdir(directory), \
            contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        os.environ["HOME"] = directory  # `--out ~/x` stays in here
        try:
            code = main(arguments)
        finally:
            if home is None:
                del os.environ["HOME"]
            else:
                os.environ["HOME"] = home
    return code, stderr.getvalue()


def assert_clean(code: int, err: str) -> None:
    assert "Traceback" not in err, err
    assert code in (0, 1, 2), (code, err)
    if code == 2:
        assert err.count("\n") == 1 and err.startswith("rnnscope"), err
        assert len(err) < 1200, len(err)


FUZZ = settings(max_examples=40, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(train_flags())
def test_train_flags_never_give_a_traceback(flags):
    assert_clean(*run_cli(["train", *BASE, *flags]))


@settings(FUZZ, max_examples=25)  # a diagnosis that is accepted costs the most
@given(st.lists(st.tuples(st.sampled_from(["--task", "--seq-len", "--cell", "--init",
                                           "--hidden", "--layers", "--batch", "--seed",
                                           "--out", "--task.seq_len", "--task.permuted",
                                           "--task.mode"]), VALUES), min_size=1, max_size=3))
def test_diagnose_flags_never_give_a_traceback(pairs):
    flags = []
    for flag, value in pairs:
        if flag in ("--seq-len", "--hidden", "--batch", "--layers") and value in (1, 2, 3):
            value = 2  # valid sizes stay small
        flags += [f"{flag}={value}"] if flag.startswith("--task.") else [flag, str(value)]
    assert_clean(*run_cli(["diagnose", "--seq-len", "4", "--hidden", "4", "--batch", "2",
                           *flags]))


SECTION_VALUES = st.one_of(VALUES, st.none(), st.lists(VALUES, max_size=2),
                           st.dictionaries(st.sampled_from(["a", "lr", "name"]), VALUES,
                                           max_size=2))


@st.composite
def config_files(draw) -> dict:
    data = {}
    for _ in range(draw(st.integers(1, 3))):
        section = draw(st.sampled_from([*SECTIONS, "bogus"]))
        if draw(st.booleans()) or section == "bogus":
            data[section] = draw(SECTION_VALUES)
        else:
            names = (field_names(SECTIONS[section]) if section != "task"
                     else ["name", *TASK_KEYS])
            keys = [key for key in names if not key.endswith(("steps", "batches", "every"))]
            data[section] = {draw(st.sampled_from(keys)): draw(SECTION_VALUES)}
            if section == "task" and draw(st.booleans()):
                data[section]["name"] = draw(st.sampled_from(sorted(TASKS)))
    return data


@FUZZ
@given(config_files())
def test_config_file_values_never_give_a_traceback(data):
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as file:
        yaml.safe_dump(data, file)
    try:
        assert_clean(*run_cli(["train", "--config", file.name, *BASE]))
    finally:
        os.unlink(file.name)
