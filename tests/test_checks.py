"""The validators every config section and task uses: one line naming the field and what
it accepts; and plain data coerced into a config section's types."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from rnnscope.checks import (
    build_section,
    choice,
    coerce,
    integer,
    name,
    number,
    number_text,
    positive,
    seed,
    shown,
    text,
    to_plain,
    workers,
)


def test_choice_lists_the_accepted_values():
    assert choice("model.cell", "gru", ("lstm", "gru")) == "gru"
    with pytest.raises(ValueError, match=r"^model\.cell: unknown 'lstn'; accepted: lstm, gru$"):
        choice("model.cell", "lstn", ("lstm", "gru"))
    with pytest.raises(ValueError, match=r"unknown \['lstm'\]"):
        choice("model.cell", ["lstm"], ("lstm", "gru"))  # unhashable: still one line


@pytest.mark.parametrize(("value", "minimum", "maximum", "message"), [
    (0, 1, None, "run.steps: must be an integer >= 1, got 0"),
    (True, 1, None, "run.steps: must be an integer >= 1, got True"),
    (2.0, 1, None, "run.steps: must be an integer >= 1, got 2.0"),
    ("3", None, None, "run.steps: must be an integer, got '3'"),
    (11, 0, 10, "run.steps: must be an integer in 0..10, got 11"),
    (11, None, 10, "run.steps: must be an integer <= 10, got 11"),
])
def test_integer_refuses_what_is_not_an_integer_in_range(value, minimum, maximum, message):
    with pytest.raises(ValueError) as error:
        integer("run.steps", value, minimum, maximum)
    assert str(error.value) == message


@pytest.mark.parametrize(("bounds", "value", "message"), [
    ({"above": 0.0}, 0, "must be a positive number, got 0"),
    ({"above": 0.0}, math.inf, "must be a positive number, got inf"),
    ({"minimum": 0.0}, math.nan, "must be a finite number >= 0, got nan"),
    ({"above": 2.0}, 2, "must be a finite number > 2, got 2"),
    ({"minimum": 0.0, "below": 1.0}, 1, "must be in [0, 1), got 1"),
    ({"above": 0.0, "maximum": 100.0}, 101, "must be in (0, 100], got 101"),
    ({"below": 1.0}, 1.5, "must be a finite number < 1, got 1.5"),
    ({}, "1.0", "must be a finite number, got '1.0'"),
    ({}, True, "must be a finite number, got True"),
])
def test_number_names_its_bounds(bounds, value, message):
    with pytest.raises(ValueError) as error:
        number("x", value, **bounds)
    assert str(error.value) == f"x: {message}"


def test_number_takes_numpy_and_one_element_tensors_and_returns_a_float():
    for value in (np.float32(0.5), np.int64(2), torch.tensor(0.25), 3):
        result = number("init.gain", value)
        assert isinstance(result, float) and result == float(value)
    with pytest.raises(ValueError, match="must be a finite number"):
        number("init.gain", torch.ones(2))
    assert positive("optim.lr", 1e-3) == 1e-3


@given(st.floats(allow_nan=True, allow_infinity=True), st.floats(-10, 10), st.floats(-10, 10))
def test_number_accepts_exactly_the_finite_values_within_bounds(value, low, high):
    inside = math.isfinite(value) and low <= value <= high
    try:
        assert number("x", value, minimum=low, maximum=high) == value
        assert inside
    except ValueError as error:
        assert not inside and str(error).startswith("x: must be ")


def test_text_refuses_empty_and_overlong_strings():
    assert text("run.name", "baseline") == "baseline"
    with pytest.raises(ValueError, match=r"^run\.name: must be a non-empty string, got ''$"):
        text("run.name", "")
    with pytest.raises(ValueError, match=r"^run\.name: must be at most 5 characters, got 6$"):
        text("run.name", "x" * 6, max_length=5)


@dataclass(frozen=True)
class Section:
    rate: float = 0.1
    window: int | None = None
    name: str = "a"
    on: bool = False


def test_build_section_types_plain_data_as_the_fields_say():
    built = build_section(Section, "s", {"rate": 1, "window": "none", "name": 2, "on": True})
    assert built == Section(rate=1.0, window=None, name="2", on=True)
    assert isinstance(built.rate, float)
    over = build_section(Section, "s", {"window": "50"}, base=built)
    assert over.window == 50 and over.rate == 1.0
    assert to_plain(over) == {"rate": 1.0, "window": 50, "name": "2", "on": True}


@pytest.mark.parametrize(("data", "message"), [
    ({"rates": 1}, "s.rates: unknown key; accepted: rate, window, name, on"),
    ({"rate": "fast"}, "s.rate: expected a number, got 'fast'"),
    ({"window": 1.5}, "s.window: expected an integer or none, got 1.5"),
    ({"on": "yes"}, "s.on: expected true/false, got 'yes'"),
    (["rate"], "s: expected a mapping of keys to values, got ['rate']"),
])
def test_build_section_errors_name_the_key(data, message):
    with pytest.raises(ValueError) as error:
        build_section(Section, "s", data)
    assert str(error.value) == message


def test_numbers_in_text_are_read_as_numbers():
    assert number_text("12") == 12 and number_text("1e-3") == 1e-3
    assert number_text("norm:1") == "norm:1"
    assert coerce("f", float, "1e-3") == 1e-3


# Issue 19: limits, each with its reason in the message

def test_refused_values_are_quoted_short():
    with pytest.raises(ValueError) as error:
        choice("model.cell", "x" * 30_000_000, ("lstm",))
    assert str(error.value) == (f"model.cell: unknown '{'x' * 59}... (30,000,000 characters);"
                                f" accepted: lstm")
    assert shown(10**5000).startswith("an integer of 16,610 bits")


@pytest.mark.parametrize(("value", "message"), [
    ("a" * 101, "run.name: must be at most 100 characters, got 101"),
    ("\u20ac" * 90, "run.name: must be at most 255 bytes in UTF-8 (it names a directory), "
                    "got 270"),
    ("a/b", "run.name: must be a plain name without / or \\ (a path goes in --out)"),
    ("..", "run.name: must be a plain name"),
    ("", "run.name: must be a non-empty string"),
])
def test_names_fit_in_a_directory_name(value, message):
    with pytest.raises(ValueError) as error:
        name("run.name", value)
    assert str(error.value).startswith(message)
    assert name("run.name", "a" * 100) == "a" * 100


def test_seeds_fit_every_generator():
    assert seed("run.seed", 2**32 - 1) == 2**32 - 1
    with pytest.raises(ValueError, match=r"^run.seed: must be an integer in 0..4294967295, "
                                         r"got 99999999999999999999999$"):
        seed("run.seed", 99999999999999999999999)


def test_workers_at_most_the_cores_unless_forced(monkeypatch):
    monkeypatch.setattr("rnnscope.checks.available_cores", lambda: 4)
    assert workers("--workers", 4) == 4
    with pytest.raises(ValueError, match=r"^--workers: at most 4 here \(the CPU cores this "
                                         r"process may use\), got 5; add --force"):
        workers("--workers", 5)
    assert workers("--workers", 1000, force=True) == 1000
    with pytest.raises(ValueError, match="must be an integer >= 1"):
        workers("--workers", 0, force=True)


def test_real_takes_any_number_nan_and_inf_included_and_names_the_field_otherwise():
    from rnnscope.checks import real

    assert real("metric", 1) == 1.0 and real("metric", np.float32(0.5)) == 0.5
    assert real("metric", torch.tensor(2.0)) == 2.0
    assert math.isnan(real("metric", float("nan"))) and real("metric", math.inf) == math.inf
    for bad in ("low", True, None, torch.ones(2)):
        with pytest.raises(ValueError, match=r"^metric: must be a number, got "):
            real("metric", bad)
