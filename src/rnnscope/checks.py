"""One validator per kind of value, used by every config section, task and public function.

Each check returns the value (normalised: `number` returns a float) or raises one
ValueError line naming the field and what it accepts, the message a user sees after a
typo on the command line, in a YAML file or in a call:

    optim.lr: must be a positive number, got 0
    model.cell: unknown 'lstn'; accepted: rnn_tanh, rnn_relu, lstm, gru

`build_section` turns plain data (YAML, `--section.key=value`) into a frozen config
dataclass: it checks that every key exists and that every value has the field's type
(minGPT's dotted overrides with nanoGPT's type check, without `exec`); the section's own
`__post_init__` then checks the values with the validators here.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from collections.abc import Iterable

NONE_WORDS = ("none", "null")  # `--bptt.window=none` on the command line
SHOWN = 60  # characters of a refused value quoted in an error: a 30 MB value stays one line

# Limits, each with its reason (README "Limits" lists them for users).
# A seed fits every generator's seed (torch takes 64 bits, numpy 32) with room for
# the per-step and per-rank offsets added to it.
MAX_SEED = 2**32 - 1
# A name becomes a directory name: file systems allow 255 bytes, and a study run's name
# is built from its settings, so 100 characters keeps paths readable and listings short.
MAX_NAME = 100
MAX_NAME_BYTES = 255
# A study this large starts only once confirmed (`--yes`, or an answer at a terminal):
# at a minute a run on two cores it keeps the machine busy for most of a day.
CONFIRM_RUNS = 500


def shown(value) -> str:
    """`value` as an error message quotes it: its repr, cut short (with its length) when
    long, so a huge value still makes one short line."""
    try:
        text = repr(value)
    except ValueError:  # an int of more digits than Python converts to text
        return f"an integer of {value.bit_length():,} bits"
    if len(text) <= SHOWN:
        return text
    size = f"{len(value):,} characters" if isinstance(value, str) else f"{len(text):,} " \
        "characters as text"
    return f"{text[:SHOWN]}... ({size})"


def choice(field: str, value, accepted: Iterable[str]) -> str:
    accepted = tuple(accepted)
    if not isinstance(value, str) or value not in accepted:
        raise ValueError(f"{field}: unknown {shown(value)}; accepted: {', '.join(accepted)}")
    return value


def integer(field: str, value, minimum: int | None = None, maximum: int | None = None) -> int:
    """An int (not a bool) within [minimum, maximum]."""
    ok = isinstance(value, int) and not isinstance(value, bool)
    ok = ok and (minimum is None or value >= minimum) and (maximum is None or value <= maximum)
    if not ok:
        if minimum is not None and maximum is not None:
            bound = f" in {minimum}..{maximum}"
        elif minimum is not None:
            bound = f" >= {minimum}"
        else:
            bound = "" if maximum is None else f" <= {maximum}"
        raise ValueError(f"{field}: must be an integer{bound}, got {shown(value)}")
    return value


def number(field: str, value, *, above: float | None = None, minimum: float | None = None,
           below: float | None = None, maximum: float | None = None) -> float:
    """A finite real number within the given bounds (`above`/`below` exclusive). numpy
    scalars and one-element tensors count as numbers; strings and bools do not."""
    real = _as_float(value)
    ok = real is not None and math.isfinite(real)
    for bound, holds in ((above, lambda b: real > b), (minimum, lambda b: real >= b),
                         (below, lambda b: real < b), (maximum, lambda b: real <= b)):
        if bound is not None:
            ok = ok and holds(bound)
    if not ok:
        raise ValueError(f"{field}: must be {_accepted(above, minimum, below, maximum)}, "
                         f"got {shown(value)}")
    return real


def real(field: str, value) -> float:
    """A real number, NaN and inf included (the caller decides what they mean); numpy
    scalars and one-element tensors count, strings, bools and None do not."""
    result = _as_float(value)
    if result is None:
        raise ValueError(f"{field}: must be a number, got {shown(value)}")
    return result


def positive(field: str, value) -> float:
    return number(field, value, above=0.0)


def _as_float(value) -> float | None:
    if isinstance(value, (bool, str, bytes)):
        return None
    try:
        return float(value)
    except (TypeError, ValueError, RuntimeError):  # RuntimeError: a tensor of many elements
        return None


def _accepted(above, minimum, below, maximum) -> str:
    low = (above, "(") if above is not None else (minimum, "[") if minimum is not None else None
    high = (below, ")") if below is not None else (maximum, "]") if maximum is not None else None
    if low and high:
        return f"in {low[1]}{low[0]:g}, {high[0]:g}{high[1]}"
    if low == (0.0, "(") or low == (0, "("):
        return "a positive number"
    if low:
        return f"a finite number {'>' if low[1] == '(' else '>='} {low[0]:g}"
    if high:
        return f"a finite number {'<' if high[1] == ')' else '<='} {high[0]:g}"
    return "a finite number"


def text(field: str, value, *, max_length: int | None = None) -> str:
    """A non-empty string, at most `max_length` characters."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{field}: must be a non-empty string, got {shown(value)}")
    if max_length is not None and len(value) > max_length:
        raise ValueError(f"{field}: must be at most {max_length} characters, got "
                         f"{len(value):,}")
    return value


def name(field: str, value, *, max_length: int = MAX_NAME) -> str:
    """A name that becomes one directory: non-empty, at most `max_length` characters and
    255 bytes of UTF-8 (a file name's limit), without / or \\ and not . or .."""
    text(field, value, max_length=max_length)
    if len(value.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise ValueError(f"{field}: must be at most {MAX_NAME_BYTES} bytes in UTF-8 (it "
                         f"names a directory), got {len(value.encode('utf-8', 'surrogatepass'))}")
    if value in (".", "..") or "/" in value or "\\" in value or "\0" in value:
        raise ValueError(f"{field}: must be a plain name without / or \\ (a path goes in "
                         f"--out), got {shown(value)}")
    return value


def seed(field: str, value) -> int:
    """A random seed: an integer in 0..MAX_SEED."""
    return integer(field, value, 0, MAX_SEED)


def workers(field: str, value, *, force: bool = False) -> int:
    """A number of worker processes: at least 1 and, unless `force`, at most the CPU cores
    this process may use (more processes than cores only share the same cores, and each
    holds a copy of torch: about 300 MB)."""
    integer(field, value, 1)
    cores = available_cores()
    if value > cores and not force:
        raise ValueError(f"{field}: at most {cores} here (the CPU cores this process may "
                         f"use), got {value:,}; add --force to start more anyway")
    return value


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


# Config sections from plain data

def field_names(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def build_section(cls, section: str, data: dict, base=None):
    """`cls` with the fields in `data` (over `base`, else the defaults), type-checked."""
    if not isinstance(data, dict):
        raise ValueError(f"{section}: expected a mapping of keys to values, got "
                         f"{shown(data)}")
    hints = typing.get_type_hints(cls)
    accepted = field_names(cls)
    values = {}
    for key, value in data.items():
        if key not in accepted:
            raise ValueError(f"{section}.{key}: unknown key; accepted: {', '.join(accepted)}")
        values[key] = coerce(f"{section}.{key}", hints[key], value)
    return dataclasses.replace(base, **values) if base is not None else cls(**values)


def coerce(field: str, annotation, value):
    """`value` as the annotated type: ints are floats where a float is wanted, a number
    is a string where a string is wanted (`--run.name=2`); anything else must match."""
    options = typing.get_args(annotation) if _is_union(annotation) else (annotation,)
    if type(None) in options and (value is None or
                                  (isinstance(value, str) and value.lower() in NONE_WORDS)):
        return None
    kinds = [kind for kind in options if kind is not type(None)]
    if isinstance(value, str) and (float in kinds or int in kinds):
        value = number_text(value)  # YAML reads 1e-3 (no dot) as a string
    for kind in kinds:
        if kind is bool and isinstance(value, bool):
            return value
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if kind is str and isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        mapping = typing.get_origin(kind) in (dict, typing.Mapping) or kind is dict
        if mapping and isinstance(value, dict):
            return value
    names = " or ".join(_type_name(kind) for kind in options)
    raise ValueError(f"{field}: expected {names}, got {shown(value)}")


def number_text(text: str):
    """`text` as an int or a float if it reads as one, else unchanged."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _is_union(annotation) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def _type_name(kind) -> str:
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string",
            type(None): "none"}.get(kind, getattr(kind, "__name__", str(kind)))


def to_plain(config) -> dict:
    """A section as a plain dict (what YAML and JSON hold)."""
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
