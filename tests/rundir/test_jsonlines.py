"""metrics.jsonl read line by line: a damaged line costs that line only (issue 19)."""

from __future__ import annotations

import json

from rnnscope.rundir.directory import RunDirectory, read_records
from rnnscope.rundir.jsonlines import read_lines


def write_lines(path, lines: list[bytes], end: bytes = b"\n") -> None:
    path.write_bytes(b"\n".join(lines) + end)


def line(step: int, kind: str = "train") -> bytes:
    return json.dumps({"kind": kind, "step": step, "loss": 1.0 / step}).encode()


DAMAGE = [b"garbage{", b"\xff\xfe", b"[1, 2]", b'{"kind": "train"}', b'{"step": 3}',
          b'{"kind": "train", "step": -1}', b'{"kind": "train", "step": true}', b"5"]


def test_damaged_lines_are_skipped_and_numbered_and_the_rest_kept(tmp_path):
    path = tmp_path / "metrics.jsonl"
    write_lines(path, [line(1), *DAMAGE, b"", b"   ", line(2), line(3, "eval")])
    found = read_lines(path)
    assert [r["step"] for r in found.records] == [1, 2, 3]
    assert found.damaged == list(range(2, 2 + len(DAMAGE)))  # blank lines are not damage
    assert not found.cut_short
    assert found.note() == (f"metrics.jsonl: {len(DAMAGE)} damaged lines left out (lines "
                            f"2, 3, 4, ...); every other line is kept")
    assert read_records(path) == found.records
    assert read_lines(tmp_path / "absent.jsonl") is None


def test_a_last_line_cut_short_by_a_kill_is_told_apart(tmp_path):
    path = tmp_path / "metrics.jsonl"
    write_lines(path, [line(1), line(2), b'{"kind": "tr'], end=b"")
    found = read_lines(path)
    assert found.damaged == [3] and found.cut_short
    assert "(the last one cut short, as by a kill)" in found.note()


def test_resume_keeps_good_lines_to_the_checkpoint_and_moves_damaged_ones(tmp_path):
    run = RunDirectory(tmp_path)
    write_lines(run.metrics_path, [line(1), b"garbage{", line(2), line(3, "eval"), line(4),
                                   b"\xff", line(5), b'{"kind": "tr'], end=b"")
    note = run.cut_metrics(4)
    kept = [json.loads(text) for text in run.metrics_path.read_text().splitlines()]
    assert [(r["kind"], r["step"]) for r in kept] == [("train", 1), ("train", 2),
                                                      ("eval", 3), ("train", 4)]
    # The damaged lines, as they were; the cut-short last line falls past the checkpoint.
    assert (tmp_path / "metrics.damaged").read_bytes() == b"garbage{\n\xff\n"
    assert note == (f"metrics.jsonl: 2 damaged lines left out (lines 2, 6); every other "
                    f"line is kept (moved to {tmp_path / 'metrics.damaged'})")
    assert run.cut_metrics(4) is None  # nothing damaged is left
    assert (tmp_path / "metrics.damaged").read_bytes() == b"garbage{\n\xff\n"
