"""Fixtures shared by every test; plain helpers are in support.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from rnnscope.numerics import flush_denormal
from support import EVIL, make_study


@pytest.fixture(autouse=True)
def subnormals_not_flushed_after():
    """Every test leaves torch's threads without subnormal flushing, as it found them:
    the trainer and `diagnose` turn it on, and a test that measures subnormals must not
    depend on which test ran before it."""
    yield
    flush_denormal(False)


@pytest.fixture(scope="session")
def study(tmp_path_factory) -> Path:
    """A study directory of three tiny trained runs, a pending one and a failed one, with
    hostile strings in names, params and messages (support.make_study). Shared by the
    report, figure, browser and command tests; read it, do not change it."""
    return make_study(tmp_path_factory.mktemp("study"))


@pytest.fixture(scope="session")
def run_dir(study) -> Path:
    """The trained run of `study` whose name holds a script tag."""
    return study / "runs" / EVIL
