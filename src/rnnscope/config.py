"""Frozen config dataclasses from plain data (YAML, `--section.key=value`) and back.

Each component keeps its own section dataclass next to its code (`ModelConfig` in
`model.py`, `ClipConfig` in `clipping.py`, ...) and checks its values in
`__post_init__`. This module only checks that keys exist and that values have the
field's type, turning both mistakes into one line naming `section.key` and what it
accepts (minGPT's dotted overrides with nanoGPT's type check, without `exec`).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path

import yaml

NONE_WORDS = ("none", "null")  # `--bptt.window=none` on the command line


def field_names(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def build_section(cls, section: str, data: dict, base=None):
    """`cls` with the fields in `data` (over `base`, else the defaults), type-checked."""
    if not isinstance(data, dict):
        raise ValueError(f"{section}: expected a mapping of keys to values, got {data!r}")
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
    raise ValueError(f"{field}: expected {names}, got {value!r}")


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


def read_yaml(path: str | Path) -> dict:
    """A YAML mapping from a file, or a one-line ValueError naming the file and the problem."""
    file = Path(path)
    if not file.is_file():
        problem = "is a directory" if file.is_dir() else "no such file"
        raise ValueError(f"config: {problem}: {file}")
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"config: cannot read {file} ({error})") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or "not valid YAML"
        raise ValueError(f"config: {file}{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"config: {file} must hold a mapping of sections, got "
                         f"{type(data).__name__}")
    return data


def write_yaml(path: Path, data: dict) -> None:
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
