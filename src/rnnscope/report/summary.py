"""`summary.json` as the report may trust it: every field of the wrong type left out,
with a note, so a damaged or hand-edited summary costs that field and never the page.

The fields are those `rnnscope.train` writes (training/run.py); null stands for a
missing value, as in the file (NaN and infinity are written as null).
"""

from __future__ import annotations

from rnnscope.checks import shown

NUMBER, TEXT, WHOLE, YES_NO = "a number", "text", "an integer", "true or false"
# field -> what it holds: a kind above, {"key": kind} for a mapping of known keys, or
# ("a list of", kind) / ("a mapping to", kind) for lists and mappings of one kind.
FIELDS = {
    "status": TEXT, "name": TEXT, "task": TEXT, "run_dir": TEXT, "message": TEXT,
    "explanation": TEXT, "steps": WHOLE, "rollbacks": WHOLE, "skipped": WHOLE,
    "final_loss": NUMBER, "baseline": NUMBER, "threshold": NUMBER, "seconds": NUMBER,
    "clip_rate": NUMBER, "solved": YES_NO,
    "metric": {"name": TEXT, "value": NUMBER},
    "diagnosis": {"verdict": TEXT, "reach": WHOLE, "rate": NUMBER,
                  "fixes": ("a list of", TEXT)},
    "fix_details": ("a list of", {"remedy": TEXT, "why": TEXT, "cli": TEXT}),
    "lyapunov": ("a list of", NUMBER),
    "notes": ("a list of", TEXT),
    "baselines": ("a mapping to", NUMBER),
    "evidence": ("a mapping to", (NUMBER, TEXT, YES_NO)),
}


def clean_summary(summary: dict, source: str = "summary.json") -> tuple[dict, list[str]]:
    """(`summary` without the fields that do not hold what they should, a note for each
    one left out). Unknown fields are kept: the report shows only the ones it knows."""
    clean, notes = {}, []
    for key, value in summary.items():
        expected = FIELDS.get(key)
        if expected is None or value is None or holds(value, expected):
            clean[key] = value
        else:
            notes.append(f"{source}: {key} should be {describe(expected)}, got "
                         f"{shown(value)}; left out")
    return clean, notes


def holds(value, expected) -> bool:
    """Whether `value` fits `expected` (a kind, a tuple of kinds, a mapping of keys, or a
    list / mapping of one kind); null fits anywhere."""
    if value is None:
        return True
    if isinstance(expected, str):
        return _KINDS[expected](value)
    if isinstance(expected, tuple) and expected and expected[0] == "a list of":
        return isinstance(value, list) and all(holds(item, expected[1]) for item in value)
    if isinstance(expected, tuple) and expected and expected[0] == "a mapping to":
        return isinstance(value, dict) and all(holds(item, expected[1])
                                               for item in value.values())
    if isinstance(expected, tuple):
        return any(holds(value, kind) for kind in expected)
    return isinstance(value, dict) and all(holds(value.get(key), kind)
                                           for key, kind in expected.items())


def describe(expected) -> str:
    if isinstance(expected, str):
        return expected
    if isinstance(expected, tuple) and expected and expected[0] in ("a list of", "a mapping to"):
        return f"{expected[0]} {describe(expected[1])}"
    if isinstance(expected, tuple):
        return " or ".join(describe(kind) for kind in expected)
    return f"{{{', '.join(f'{key}: {describe(kind)}' for key, kind in expected.items())}}}"


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


_KINDS = {
    NUMBER: _number,
    TEXT: lambda value: isinstance(value, str),
    WHOLE: lambda value: isinstance(value, int) and not isinstance(value, bool),
    YES_NO: lambda value: isinstance(value, bool),
}
