"""rnnscope diagnose --predict: a short run in a temporary directory, then the diagnosis of
the model it ends with, told what the run saw."""

from __future__ import annotations

import json
import subprocess
import sys

import torch

from rnnscope.training.config import ExperimentConfig
from rnnscope.training.predict import short_run


def config(**model) -> ExperimentConfig:
    return ExperimentConfig.from_dict({
        "task": {"name": "adding", "seq_len": 12},
        "model": {"cell": "lstm", "hidden": 8, "engine": "native", **model},
        "optim": {"lr": 0.01}, "clip": "norm:1.0", "run": {"batch": 8, "seed": 0}})


def test_a_short_run_returns_its_weights_and_what_it_saw():
    run = short_run(config(), steps=10)
    assert set(run.weights) >= {"rnn.weight_hh_l0", "rnn.weight_ih_l0"}
    initial = config().model.build(1, 1)
    assert not torch.equal(run.weights["rnn.weight_hh_l0"], initial.rnn.weight_hh_l0)
    assert run.context.horizon == 12
    # Probes at steps 1, 5, 10 (every 10 // 2); the last is the model diagnosed, "now".
    assert len(run.context.earlier_reach) == 2
    assert run.context.nearest == 1  # adding, T=12: the second number may be the last step
    assert run.context.update_ratio is not None and run.context.update_ratio > 0
    assert run.context.largest_update is not None and run.context.largest_update > 0
    assert run.context.solved is False
    # The held-out metric of the run's last step, against the task's chance level.
    assert run.context.chance == config().task.build().baseline
    assert run.context.metric is not None and run.context.metric > 0
    # Adam's rates up to that evaluation, summed: 10 updates at 1e-2.
    assert abs(run.context.lr_total - 0.1) < 1e-12


def test_a_run_that_diverges_at_once_predicts_from_its_initial_weights(tmp_path):
    """A ReLU RNN with spectral radius 3 over 200 steps overflows float32 at its first
    forward pass: no finite checkpoint is ever written. The prediction says nonfinite
    instead of failing (it raised FileNotFoundError)."""
    settings = config(cell="rnn_relu").with_overrides(
        {"task": {"seq_len": 200}, "init": "spectral:3.0"})
    assert short_run(settings, steps=5).weights is None
    result = subprocess.run(
        [sys.executable, "-m", "rnnscope", "diagnose", "--task", "adding", "--seq-len", "200",
         "--cell", "rnn_relu", "--init", "spectral:3.0", "--hidden", "8", "--predict",
         "--predict-steps", "5", "--out", str(tmp_path / "diag")],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    written = json.loads((tmp_path / "diag" / "diagnosis.json").read_text())
    assert written["verdict"] == "nonfinite"
