"""The public names of `import rnnscope` (DESIGN.md)."""

from __future__ import annotations

import rnnscope
from rnnscope.training.config import ExperimentConfig
from rnnscope.training.run import train


def test_public_names():
    assert rnnscope.train is train
    assert rnnscope.ExperimentConfig is ExperimentConfig
