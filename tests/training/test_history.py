"""Reading a run's metrics lines back into the diagnosis' Context: equal to what the
trainer itself had, field by field (the trainer is the reference)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from rnnscope.flow.gradients import GradientFlow
from rnnscope.rundir.directory import read_records
from rnnscope.training.history import context_at
from rnnscope.training.run import train
from rnnscope.training.trainer import Trainer
from support import tiny_run


@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm"])
def test_the_context_read_back_from_a_run_equals_the_trainers_own(tmp_path, cell):
    """Probes every 2 steps, evaluations every 3 (some between probes), 9 steps (the last
    probe is not the last step). A Trainer resumed from the run's last checkpoint (which
    keeps every field the context is built from) is told exactly what `context_at` reads
    from metrics.jsonl for a probe on the same weights, at step 10."""
    config = tiny_run(tmp_path, model={"cell": cell}, optim={"name": "adam", "lr": 0.01},
                      task={"name": "temporal_order", "seq_len": 30},
                      run={"steps": 9, "eval_every": 3, "checkpoint_every": 9,
                           "early_stop": False})
    train(config)
    run = tmp_path / "run"
    resumed = Trainer(config)
    resumed.load_state_dict(torch.load(run / "checkpoints" / "last.pt", weights_only=False))
    assert resumed.step == 9
    lines = read_records(run / "metrics.jsonl")
    read = context_at(config, lines, 10)
    own = resumed.context()
    expected = {key: pytest.approx(value, rel=1e-12) if isinstance(value, float) else value
                for key, value in dataclasses.asdict(own).items()}
    assert dataclasses.asdict(read) == expected
    assert len(read.earlier_reach) == 5 and read.metric is not None  # probes 1,2,4,6,8
    assert read.lr_total == pytest.approx(0.09, rel=1e-12) and read.initial is False
    # At a probe's own step: the probes before it, and the evaluation at or before it.
    at_four = context_at(config, lines, 4)
    assert len(at_four.earlier_reach) == 2  # probes at steps 1 and 2
    assert at_four.lr_total == pytest.approx(0.03, rel=1e-12)  # evaluated at step 3
    first = context_at(config, lines, 1)
    assert first.initial and first.earlier_reach == () and first.metric is None
    assert first.lr_total is None


def test_a_probe_lines_flow_reads_back_as_the_flow_it_was():
    norms = torch.tensor([[1.0, 0.5, float("nan")], [2.0, 1e-310, 0.0]], dtype=torch.float64)
    flow = GradientFlow(norms, ["rnn.l0", "rnn.l0/c"], [False, False], states=["h", "c"],
                        subnormal_fraction=0.25, underflow_fraction=0.5,
                        aligned=norms.flip(1))
    data = json.loads(json.dumps(flow.to_dict()).replace("NaN", "null"))
    back = GradientFlow.from_dict(data)
    assert torch.equal(back.norms.isnan(), norms.isnan())
    assert torch.equal(back.norms.nan_to_num(), norms.nan_to_num())
    assert torch.equal(back.aligned.nan_to_num(), norms.flip(1).nan_to_num())
    assert (back.layers, back.reverse, back.states) == (flow.layers, flow.reverse, flow.states)
    assert (back.subnormal_fraction, back.underflow_fraction) == (0.25, 0.5)


def test_an_evaluation_is_read_up_to_the_step_asked_and_damaged_values_as_unknown():
    config = tiny_run(optim={"name": "adam", "lr": 0.01})
    lines = [{"kind": "train", "step": s, "lr": 0.01} for s in range(1, 7)]
    lines += [{"kind": "eval", "step": 4, "metric": 0.3, "solved": False},
              {"kind": "eval", "step": 5, "metric": 0.1, "solved": True}]
    at_six = context_at(config, lines, 6)
    assert (at_six.metric, at_six.solved) == (0.1, True)
    assert at_six.lr_total == pytest.approx(0.05, rel=1e-12)
    # The weights after 5 updates... as told by step 4's evaluation: bounded apart.
    bounded = context_at(config, lines, 6, evaluated_by=4)
    assert (bounded.metric, bounded.solved) == (0.3, False)
    assert bounded.lr_total == pytest.approx(0.04, rel=1e-12)
    lines[-1].update(metric="0.1", solved="yes")  # a damaged line: unknown, not believed
    damaged = context_at(config, lines, 6)
    assert damaged.metric is None and damaged.solved is None
