"""`metrics.jsonl` read line by line, so that one damaged line costs that line only.

rnnscope writes one JSON object per line, each with a "kind" and an integer "step".
A line that is not UTF-8, not JSON, or not such an object is *damaged*: a kill cuts
the last line short, and a disk error or an editor can spoil one anywhere. Readers
skip damaged lines and say which they skipped; blank lines are skipped silently (they
hold nothing). A resume moves damaged lines to `metrics.damaged` (as they were) and
keeps every good line before the checkpoint, those after a damaged one included.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

DAMAGED = "metrics.damaged"  # beside metrics.jsonl: lines a resume kept out, verbatim
LINES_LISTED = 3  # damaged line numbers a note lists


@dataclass
class MetricsLines:
    records: list[dict] = field(default_factory=list)
    damaged: list[int] = field(default_factory=list)  # 1-based line numbers
    cut_short: bool = False  # the last line has no newline and is damaged: a kill

    def note(self, name: str = "metrics.jsonl") -> str | None:
        """The damage in one sentence, or None if there is none."""
        if not self.damaged:
            return None
        shown = ", ".join(map(str, self.damaged[:LINES_LISTED]))
        shown += ", ..." if len(self.damaged) > LINES_LISTED else ""
        lines = "line" if len(self.damaged) == 1 else "lines"
        why = " (the last one cut short, as by a kill)" if self.cut_short else ""
        return (f"{name}: {len(self.damaged)} damaged {lines} left out ({lines} "
                f"{shown}){why}; every other line is kept")


def parse_line(raw: bytes) -> dict | None:
    """The record on one line, or None if the line is damaged."""
    try:
        record = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None
    step = record.get("step") if isinstance(record, dict) else None
    ok = isinstance(step, int) and not isinstance(step, bool) and step >= 0
    return record if ok and isinstance(record.get("kind"), str) else None


def split_lines(data: bytes) -> tuple[list[bytes], bool]:
    """The lines of `data` and whether the last one lacks its newline."""
    lines = data.split(b"\n")
    unterminated = lines[-1] != b""
    return (lines if unterminated else lines[:-1]), unterminated


def read_lines(path: str | Path) -> MetricsLines | None:
    """Every good record of a metrics file and the numbers of its damaged lines; None if
    there is no file."""
    try:
        data = Path(path).read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return None
    lines, unterminated = split_lines(data)
    result = MetricsLines()
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        record = parse_line(raw)
        if record is None:
            result.damaged.append(number)
            result.cut_short = unterminated and number == len(lines)
        else:
            result.records.append(record)
    return result


def cut_after(path: Path, after_step: int) -> tuple[bytes, bytes, MetricsLines]:
    """(the file's good lines up to `after_step`, its damaged lines, what was found):
    the lines a resume from the checkpoint at `after_step` keeps, and those it moves to
    `metrics.damaged`. Lines past the checkpoint are written again by the resumed run;
    so is a last line cut short by a kill, which always falls past the last checkpoint
    (a step's lines are written before its checkpoint)."""
    lines, unterminated = split_lines(path.read_bytes())
    kept, damaged, found = [], [], MetricsLines()
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        record = parse_line(raw)
        if record is None and unterminated and number == len(lines):
            continue
        if record is None:
            damaged.append(raw + b"\n")
            found.damaged.append(number)
        elif record["step"] <= after_step:
            kept.append(raw + b"\n")
            found.records.append(record)
    return b"".join(kept), b"".join(damaged), found
