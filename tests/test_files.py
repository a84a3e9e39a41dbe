"""Output paths: nothing rnnscope did not write is replaced, and a path that cannot be
made is one line naming the field (issue 19)."""

from __future__ import annotations

import os

import pytest

from rnnscope.files import WriteError, check_file_target, make_directory, reason


def test_make_directory_creates_parents_and_names_a_blocking_file(tmp_path):
    created = make_directory("out", tmp_path / "a" / "b")
    assert created == [tmp_path / "a", tmp_path / "a" / "b"]
    (tmp_path / "file").write_text("mine")
    with pytest.raises(ValueError) as error:
        make_directory("out", tmp_path / "file" / "run")
    assert str(error.value) == (f"out: cannot create {tmp_path / 'file' / 'run'}: "
                                f"{tmp_path / 'file'} is a file, not a directory")
    with pytest.raises(ValueError) as error:
        make_directory("out", tmp_path / "x" / ("n" * 300) / "run")
    assert str(error.value).endswith("(file name too long)")
    assert not (tmp_path / "x").exists()  # what it made on the way is removed again


def test_check_file_target_refuses_what_replacing_would_destroy(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "mine.html").write_text("notes")
    (tmp_path / "ours.html").write_text("ours")
    (tmp_path / "link.html").symlink_to(tmp_path / "ours.html")
    cases = {tmp_path / "fifo": "is a FIFO, not a regular file",
             tmp_path: "is a directory",
             tmp_path / "link.html": "is a symbolic link",
             tmp_path / "mine.html": "exists and was not written by rnnscope"}
    for path, message in cases.items():
        with pytest.raises(ValueError, match=f"^out: {path} {message}"):
            check_file_target("out", path, ours=lambda p: p.read_text() == "ours")
    assert check_file_target("out", tmp_path / "ours.html", ours=lambda p: True)
    assert check_file_target("out", tmp_path / "new.html") == tmp_path / "new.html"


def test_write_errors_are_one_line_and_cross_processes():
    import pickle

    error = WriteError.of("out", "runs/x/metrics.jsonl", OSError(28, "No space left on device"))
    assert str(error) == "out: cannot write runs/x/metrics.jsonl (no space left on device)"
    assert str(pickle.loads(pickle.dumps(error))) == str(error)
    assert reason(OSError(27, "File too large")) == ("file too large (disk full or a "
                                                     "file-size limit)")
