"""`rnnscope.train`: a trainer wired to its run directory. It solves a task end to end,
the guard's policies end runs as documented, checkpoints stay finite, an existing run
is never overwritten, and a resumed run ends with the same weights."""

from __future__ import annotations

import json
import math

import pytest
import torch

import rnnscope
from rnnscope.rundir.directory import RunDirectory
from rnnscope.training.config import ExperimentConfig
from rnnscope.training.trainer import Trainer
from support import tiny_run


def exploding(tmp_path, policy: str, **run) -> ExperimentConfig:
    """A relu RNN trained by SGD at lr 1.0 without clipping: NaN within a few steps."""
    return tiny_run(tmp_path, model={"cell": "rnn_relu", "hidden": 16},
                optim={"name": "sgd", "lr": 1.0, "momentum": 0.0}, clip="none",
                guard={"policy": policy, "limit": 10}, task={"seq_len": 30},
                run={"steps": 40, "eval_every": 20, **run})


def test_train_solves_adding_end_to_end(tmp_path):
    config = tiny_run(tmp_path, task={"seq_len": 10}, model={"hidden": 32}, optim={"lr": 0.01},
                  run={"steps": 1500, "batch": 32, "eval_every": 50, "eval_batches": 2})
    result = rnnscope.train(config)
    assert result.status == "solved" and result.solved
    assert result.metric < 0.01 < result.baseline
    assert result.steps < 1500
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "solved" and summary["metric"]["name"] == "mse"
    assert {"status", "steps", "final_loss", "metric", "baseline", "solved", "diagnosis",
            "run_dir", "seconds"} <= set(summary)
    assert summary["diagnosis"]["verdict"] in ("healthy", "vanishing")
    saved = ExperimentConfig.from_yaml(tmp_path / "run" / "config.yaml")
    assert saved == config
    best = torch.load(tmp_path / "run" / "checkpoints" / "best.pt", weights_only=True)
    assert best["metric"] < 0.01


def test_rollback_finishes_an_exploding_run_with_finite_weights(tmp_path):
    result = rnnscope.train(exploding(tmp_path, "rollback"))
    assert result.status in ("finished", "solved") and result.rollbacks > 0
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in checkpoint["model"].values())
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    train = [line for line in lines if line["kind"] == "train"]
    assert sum(line.get("guard") == "rollback" for line in train) == result.rollbacks
    # Each rollback halves the learning rate from the next step on.
    for index, line in enumerate(train):
        earlier = sum(other.get("guard") == "rollback" for other in train[:index])
        assert line["lr"] == pytest.approx(0.5 ** earlier)
    assert math.isfinite(result.metric) and result.metric < 1.0


def test_raise_stops_at_the_first_nonfinite_step(tmp_path):
    result = rnnscope.train(exploding(tmp_path, "raise"))
    assert result.status == "diverged"
    assert "non-finite" in result.message and "guard.policy=raise" in result.message
    assert result.steps < 40
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "diverged"


def test_skip_counts_and_gives_up_after_the_limit(tmp_path):
    config = exploding(tmp_path, "skip").with_overrides({"guard": {"limit": 3}})
    result = rnnscope.train(config)
    # Skipping does not change the weights that overflow, so every later step is skipped.
    assert result.status == "diverged" and "3 steps in a row skipped" in result.message
    assert result.skipped == 3 and "guard.limit=3" in result.message
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    actions = [line["guard"] for line in lines if "guard" in line]
    assert actions == ["skip", "skip", "skip", "gave_up"]  # the step it gave up on is logged


def test_checkpoints_are_never_written_with_nonfinite_values(tmp_path):

    run = RunDirectory.create(tmp_path / "r", {"run": {}})
    assert not run.save_checkpoint("last", {"model": {"w": torch.tensor([1.0, math.nan])}})
    assert not (run.checkpoint_dir / "last.pt").exists()
    assert run.save_checkpoint("last", {"model": {"w": torch.tensor([1.0, 2.0])}, "step": 3})
    assert run.load_checkpoint("last")["step"] == 3


def test_an_existing_run_is_not_overwritten(tmp_path):
    config = tiny_run(tmp_path, run={"steps": 1})
    rnnscope.train(config)
    with pytest.raises(ValueError, match="already holds a run; continue it with --resume"):
        rnnscope.train(config)


def test_resume_continues_to_the_same_weights(tmp_path):
    """A run stopped after its checkpoint at step 4 and resumed ends where an
    uninterrupted run ends (the SIGKILL version of this is in test_cli_train)."""
    full = rnnscope.train(tiny_run(tmp_path / "a", clip="autoclip:50", run={"steps": 8,
                               "checkpoint_every": 4}, schedule={"decay": "plateau"}))
    partial = tiny_run(tmp_path / "b", clip="autoclip:50", run={"steps": 8, "checkpoint_every": 4},
                   schedule={"decay": "plateau"})
    trainer = Trainer(partial)

    run = RunDirectory.create(partial.run_dir, partial.to_dict())
    trainer.on("on_checkpoint", lambda t: run.save_checkpoint("last", t.state_dict()))
    for _ in range(4):
        trainer.train_step()
    trainer.evaluate()
    trainer.fire("on_checkpoint", trainer)
    for _ in range(2):  # steps lost in the "crash"
        trainer.train_step()
    resumed = rnnscope.train(partial, resume=True)
    assert resumed.steps == full.steps == 8
    a = torch.load(full.run_dir / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(resumed.run_dir / "checkpoints" / "last.pt", weights_only=True)
    for name, weight in a["model"].items():
        torch.testing.assert_close(b["model"][name], weight, rtol=0, atol=0)


def test_metrics_lines_carry_the_probes(tmp_path):
    rnnscope.train(tiny_run(tmp_path, model={"layers": 2}))
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    first = lines[0]
    assert first["kind"] == "train" and first["step"] == 1
    assert first["grad_norms"]["grad_norm_total"] == pytest.approx(first["grad_norm"], rel=1e-5)
    assert "grad_norm/rnn.weight_hh_l1" in first["grad_norms"]
    assert first["flow"]["layers"] == ["rnn.l0", "rnn.l0/c", "rnn.l1", "rnn.l1/c"]
    assert len(first["flow"]["norms"][0]) == 12 and 0 <= first["flow"]["subnormal_fraction"] <= 1
    assert first["verdict"] in ("vanishing", "healthy", "exploding") and first["reach"] >= 1
    train = [line for line in lines if line["kind"] == "train"]
    assert [line["step"] for line in train if "flow" in line] == [1, 2, 4, 6]  # every=2
    evals = [line for line in lines if line["kind"] == "eval"]
    assert [line["step"] for line in evals] == [3, 6] and evals[0]["metric_name"] == "mse"
