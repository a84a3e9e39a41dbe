"""Writing files so that a crash or Ctrl-C never leaves a half-written one behind, output
paths checked so that nothing rnnscope did not write is replaced, and reading the YAML
files users write (configs, study files) with one-line errors."""

from __future__ import annotations

import errno
import json
import math
import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml


@contextmanager
def atomic_target(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.",
                                             suffix=".tmp")
    os.close(descriptor)
    os.chmod(temporary, 0o644)  # mkstemp makes files private; results are for sharing
    try:
        yield Path(temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


class WriteError(OSError):
    """A file rnnscope writes could not be written (disk full, no permission): one line
    naming the file, `WriteError(errno, "out: cannot write runs/x/metrics.jsonl (no space
    left on device)")`. An OSError, so the command line reports it as bad input (exit 2),
    and picklable, so it crosses from a worker process to the study."""

    def __str__(self) -> str:
        return str(self.strerror)

    @classmethod
    def of(cls, field: str, path: str | Path, error: OSError) -> WriteError:
        if isinstance(error, WriteError):
            return error
        return cls(error.errno, f"{field}: cannot write {path} ({reason(error)})")


def reason(error: OSError) -> str:
    """Why an operating-system call failed, in words ("no space left on device")."""
    if error.errno == errno.EFBIG:  # what a full quota or a file-size limit looks like
        return "file too large (disk full or a file-size limit)"
    text = error.strerror or str(error) or type(error).__name__
    return text[:1].lower() + text[1:]


def blocking_file(path: Path) -> Path | None:
    """The first existing ancestor of `path` that is not a directory (so nothing can be
    created under it), or None."""
    for parent in reversed(path.parents):
        if parent.exists() and not parent.is_dir():
            return parent
    return None


def make_directory(field: str, path: str | Path) -> list[Path]:
    """Create directory `path` and its missing parents; return the ones created (newest
    last), so a caller that fails afterwards can remove them. A path that cannot be made
    is one ValueError line naming `field`, and leaves nothing behind."""
    path = Path(path)
    try:
        blocked = blocking_file(path / "x")
    except OSError as error:  # a part of the path too long to look up
        raise ValueError(f"{field}: cannot create {path} ({reason(error)})") from None
    if blocked is not None:
        raise ValueError(f"{field}: cannot create {path}: {blocked} is a file, not a "
                         f"directory")
    missing = [parent for parent in (*reversed(path.parents), path) if not parent.exists()]
    created: list[Path] = []
    try:
        for directory in missing:
            directory.mkdir()
            created.append(directory)
    except OSError as error:
        remove_directories(created)
        raise ValueError(f"{field}: cannot create {path} ({reason(error)})") from None
    return created


def remove_directories(created: list[Path]) -> None:
    """Undo `make_directory`: remove the directories it made, newest first, if empty."""
    for directory in reversed(created):
        try:
            directory.rmdir()
        except OSError:
            return  # something was written into it meanwhile: keep it


def check_file_target(field: str, path: str | Path, *, ours=None) -> Path:
    """`path` as a file rnnscope may write: not a directory, a FIFO, a device or a link
    (replacing one would destroy it), no file where a parent directory should be, and an
    existing file only if `ours(path)` says rnnscope wrote it. One ValueError line else."""
    path = Path(path)
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        mode = None
    except OSError as error:
        raise ValueError(f"{field}: cannot write {path} ({reason(error)})") from None
    if mode is not None and stat.S_ISDIR(mode):
        raise ValueError(f"{field}: {path} is a directory; give the name of a file inside "
                         f"it")
    if mode is not None and not stat.S_ISREG(mode):
        raise ValueError(f"{field}: {path} is {_kind(mode)}, not a regular file; rnnscope "
                         f"replaces only files it wrote: choose another name")
    if mode is not None and ours is not None and not ours(path):
        raise ValueError(f"{field}: {path} exists and was not written by rnnscope; move it "
                         f"away or choose another name")
    try:
        blocked = blocking_file(path)
    except OSError as error:
        raise ValueError(f"{field}: cannot write {path} ({reason(error)})") from None
    if blocked is not None:
        raise ValueError(f"{field}: cannot write {path} ({blocked} is a file, not a "
                         f"directory)")
    return path


def _kind(mode: int) -> str:
    kinds = ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO"),
             (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"))
    return next((name for test, name in kinds if test(mode)), "a special file")


def json_safe(data):
    """`data` with NaN and +-inf replaced by None: strict JSON has no such numbers."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {key: json_safe(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [json_safe(value) for value in data]
    return data


def write_json(path: str | Path, data) -> Path:
    with atomic_target(path) as temporary:
        temporary.write_text(json.dumps(json_safe(data), indent=2, allow_nan=False) + "\n")
    return Path(path)


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
