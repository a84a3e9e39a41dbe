"""The trainer: remedies, events, the guard, the run directory, checkpoints and resume."""

from __future__ import annotations

import json
import math

import pytest
import torch

import rnnscope
from rnnscope.experiment import ExperimentConfig
from rnnscope.numerics import flush_denormal
from rnnscope.train import Trainer


@pytest.fixture(autouse=True)
def restore_flush():
    yield
    flush_denormal(False)


def tiny(tmp_path=None, **sections) -> ExperimentConfig:
    """A config that trains in well under a second a step: T=12, hidden 16, batch 16."""
    data = {"task": {"name": "adding", "seq_len": 12}, "model": {"cell": "lstm", "hidden": 16},
            "run": {"steps": 6, "batch": 16, "eval_every": 3, "eval_batches": 1,
                    "quiet": True}, "probe": {"every": 2, "histograms": False}}
    for section, values in sections.items():
        if isinstance(values, dict) and isinstance(data.get(section), dict):
            data[section] = {**data[section], **values}
        else:
            data[section] = values
    if tmp_path is not None:
        data["run"]["out"] = str(tmp_path / "run")
    return ExperimentConfig.from_dict(data)


def gradients(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in trainer.model.named_parameters()}


@pytest.mark.parametrize("task", [{"name": "adding", "seq_len": 12},
                                  {"name": "copy", "seq_len": 6}])
@pytest.mark.parametrize("engine", ["unrolled", "native"])
def test_truncated_bptt_with_a_window_of_t_or_more_is_full_bptt(task, engine):
    grads, losses = {}, {}
    for window in (None, 200, 5):
        # No probe: the native engine runs torch's fused kernels, as the reference does.
        trainer = Trainer(tiny(task=task, model={"engine": engine}, bptt={"window": window},
                               clip="none", probe={"every": 0}))
        trainer.optimizer.step = lambda: None  # keep the weights: compare the gradients
        state = trainer.train_step()
        grads[window], losses[window] = gradients(trainer), state.loss
    # The references are computed here by hand, outside truncated_bptt and window_loss:
    # full BPTT is one forward and backward of the task's loss over the whole sequence
    # (for the native engine: torch's own nn.LSTM); truncated BPTT with k=5 is the
    # word_language_model loop, the state detached between chunks, the loss of the
    # chunks weighted by their share of the steps.
    reference = Trainer(tiny(task=task, model={"engine": engine}))
    inputs, targets = reference.task.batch(16, torch.Generator().manual_seed(0))
    output, _ = reference.model(inputs)
    reference.task.loss(output, targets).backward()
    full = gradients(reference)
    reference.model.zero_grad()
    steps, state, chunks = inputs.shape[0], None, []
    for start in range(0, steps, 5):
        state = None if state is None else tuple(s.detach() for s in state)
        output, state = reference.model(inputs[start:start + 5], state)
        chunks.append(output)
    every = reference.task.scored_steps == "every"
    for start, output in zip(range(0, steps, 5), chunks, strict=True):
        stop = start + output.shape[0]
        if every:
            loss = reference.task.loss(output, targets[start:stop]) * (stop - start) / steps
        elif stop == steps:
            loss = reference.task.loss(output, targets)
        else:
            continue
        loss.backward(retain_graph=True)
    truncated = gradients(reference)
    for name, expected in full.items():
        torch.testing.assert_close(grads[None][name], expected, rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(grads[200][name], expected, rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(grads[5][name], truncated[name], rtol=1e-6, atol=1e-9)
    # Shorter windows: the same loss (the window shares add up), other gradients.
    assert losses[5] == pytest.approx(losses[None], rel=1e-6)
    assert any(not torch.allclose(truncated[n], g) for n, g in full.items())


def test_truncated_bptt_flow_cannot_reach_past_the_window():
    trainer = Trainer(tiny(bptt={"window": 5}, probe={"every": 1}))
    state = trainer.train_step()
    # adding scores the last step: only the last window's 2 steps (12 = 5 + 5 + 2) see it.
    norms = state.flow.norms[0]
    assert (norms[:10] == 0).all() and (norms[10:] > 0).all()
    assert state.diagnosis.reach <= 2


def test_events_fire_in_the_order_of_the_algorithm():
    trainer = Trainer(tiny(run={"steps": 3, "eval_every": 3}))
    seen = []
    for event in ("after_backward", "before_step", "after_step", "on_eval", "on_checkpoint"):
        trainer.on(event, lambda payload, event=event: seen.append(event))
    assert trainer.fit() == "finished"
    step = ["after_backward", "before_step", "after_step"]
    assert seen == step * 3 + ["on_eval", "on_checkpoint"]
    with pytest.raises(ValueError, match="event: unknown 'after_forward'; accepted"):
        trainer.on("after_forward", print)


def test_clipping_acts_before_the_step_and_is_reported():
    trainer = Trainer(tiny(clip="norm:0.001"))
    observed = {}

    def before_step(state):
        total = torch.linalg.vector_norm(torch.stack(
            [torch.linalg.vector_norm(p.grad) for p in trainer.model.parameters()]))
        observed.update(after=float(total), reported=state.grad_norm_clipped)

    trainer.on("before_step", before_step)
    state = trainer.train_step()
    assert state.clipped and state.grad_norm > 0.001
    assert observed["after"] == pytest.approx(0.001, rel=1e-3)
    assert observed["reported"] == pytest.approx(observed["after"], rel=1e-5)


def test_probe_schedule_records_flow_for_every_layer_and_step():
    trainer = Trainer(tiny(model={"layers": 2}, probe={"every": 2, "histograms": True}))
    states = [trainer.train_step() for _ in range(4)]
    recorded = [s.step for s in states if s.flow is not None]
    assert recorded == [1, 2, 4]  # the first step, then every 2nd
    flow = states[0].flow
    assert flow.norms.shape == (2, 12) and flow.layers == ["rnn.l0", "rnn.l1"]
    assert set(states[0].grads) == {n for n, _ in trainer.model.named_parameters()}
    assert states[2].grads == {}


def test_train_solves_adding_end_to_end(tmp_path):
    config = tiny(tmp_path, task={"seq_len": 10}, model={"hidden": 32}, optim={"lr": 0.01},
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


def exploding(tmp_path, policy: str, **run) -> ExperimentConfig:
    """A relu RNN trained by SGD at lr 1.0 without clipping: NaN within a few steps."""
    return tiny(tmp_path, model={"cell": "rnn_relu", "hidden": 16},
                optim={"name": "sgd", "lr": 1.0, "momentum": 0.0}, clip="none",
                guard={"policy": policy, "limit": 10}, task={"seq_len": 30},
                run={"steps": 40, "eval_every": 20, **run})


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
    from rnnscope.runlog import RunDirectory

    run = RunDirectory.create(tmp_path / "r", {"run": {}})
    assert not run.save_checkpoint("last", {"model": {"w": torch.tensor([1.0, math.nan])}})
    assert not (run.checkpoint_dir / "last.pt").exists()
    assert run.save_checkpoint("last", {"model": {"w": torch.tensor([1.0, 2.0])}, "step": 3})
    assert run.load_checkpoint("last")["step"] == 3


def test_an_existing_run_is_not_overwritten(tmp_path):
    config = tiny(tmp_path, run={"steps": 1})
    rnnscope.train(config)
    with pytest.raises(ValueError, match="already holds a run; continue it with --resume"):
        rnnscope.train(config)


def test_resume_continues_to_the_same_weights(tmp_path):
    """A run stopped after its checkpoint at step 4 and resumed ends where an
    uninterrupted run ends (the SIGKILL version of this is in test_cli_train)."""
    full = rnnscope.train(tiny(tmp_path / "a", clip="autoclip:50", run={"steps": 8,
                               "checkpoint_every": 4}, schedule={"decay": "plateau"}))
    partial = tiny(tmp_path / "b", clip="autoclip:50", run={"steps": 8, "checkpoint_every": 4},
                   schedule={"decay": "plateau"})
    trainer = Trainer(partial)
    from rnnscope.runlog import RunDirectory

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


def test_run_directory_is_a_tensorboard_log(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = tiny(tmp_path, probe={"every": 2, "histograms": True})
    rnnscope.train(config)
    everything = {"images": 0, "histograms": 0}  # 0: keep every event, not a sample
    events = EventAccumulator(str(tmp_path / "run"), size_guidance=everything).Reload()
    tags = events.Tags()
    assert {"train/loss", "train/grad_norm", "train/lr", "train/clip_rate", "valid/mse",
            "flow/reach"} <= set(tags["scalars"])
    assert [e.step for e in events.Scalars("train/loss")] == list(range(1, 7))
    assert {"flow/profile", "flow/heatmap"} <= set(tags["images"])
    heatmaps = events.Images("flow/heatmap")
    assert [image.step for image in heatmaps] == [3, 6]  # on the eval schedule
    assert heatmaps[-1].encoded_image_string.startswith(b"\x89PNG")
    assert heatmaps[-1].width > 300 and heatmaps[-1].height > 200
    assert "grad/rnn.weight_hh_l0" in tags["histograms"]
    histogram = events.Histograms("grad/rnn.weight_hh_l0")
    assert [event.step for event in histogram] == [1, 2, 4, 6]  # the probe schedule
    weight_hh = torch.load(tmp_path / "run" / "checkpoints" / "last.pt",
                           weights_only=True)["model"]["rnn.weight_hh_l0"]
    assert histogram[-1].histogram_value.num == weight_hh.numel()


def test_tensorboard_heatmap_of_a_resumed_run_keeps_the_earlier_probes(tmp_path):
    from rnnscope.runlog import TensorBoardLog

    rnnscope.train(tiny(tmp_path, probe={"every": 2}))
    board = TensorBoardLog(tmp_path / "run", purge_step=5)  # as --resume from step 4
    try:
        assert [probe["step"] for probe in board.probes] == [1, 2, 4]
        assert board.probes[0]["flow"]["layers"] == ["rnn.l0"]
    finally:
        board.close()


def test_public_names():
    from rnnscope.runner import train
    from rnnscope.train import Trainer as LoopTrainer

    assert rnnscope.train is train and LoopTrainer is Trainer  # the function, not the module
    assert rnnscope.ExperimentConfig is ExperimentConfig


def test_metrics_lines_carry_the_probes(tmp_path):
    rnnscope.train(tiny(tmp_path, model={"layers": 2}))
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    first = lines[0]
    assert first["kind"] == "train" and first["step"] == 1
    assert first["grad_norms"]["grad_norm_total"] == pytest.approx(first["grad_norm"], rel=1e-5)
    assert "grad_norm/rnn.weight_hh_l1" in first["grad_norms"]
    assert first["flow"]["layers"] == ["rnn.l0", "rnn.l1"]
    assert len(first["flow"]["norms"][0]) == 12 and 0 <= first["flow"]["subnormal_fraction"] <= 1
    assert first["verdict"] in ("vanishing", "healthy", "exploding") and first["reach"] >= 1
    train = [line for line in lines if line["kind"] == "train"]
    assert [line["step"] for line in train if "flow" in line] == [1, 2, 4, 6]  # every=2
    evals = [line for line in lines if line["kind"] == "eval"]
    assert [line["step"] for line in evals] == [3, 6] and evals[0]["metric_name"] == "mse"


def test_native_engine_records_the_flow_on_the_probe_schedule():
    unrolled = Trainer(tiny(probe={"every": 2}))
    native = Trainer(tiny(model={"engine": "native"}, probe={"every": 2}))
    assert isinstance(native.model.rnn, torch.nn.LSTM)  # torch's fused module
    native.model.load_state_dict(unrolled.model.state_dict())
    a, b = unrolled.train_step(), native.train_step()
    assert b.flow is not None and b.flow.layers == ["rnn.l0"]
    torch.testing.assert_close(b.flow.norms, a.flow.norms, rtol=1e-5, atol=1e-9)
    assert native.train_step().flow is not None  # step 2
    assert native.train_step().flow is None  # step 3: not on the schedule, fused kernels


def test_tensorboard_heatmap_keeps_at_most_its_rows_evenly_spaced(tmp_path):
    from rnnscope.runlog import HEATMAP_ROWS, TensorBoardLog

    board = TensorBoardLog(tmp_path)
    try:
        for step in range(1, 1001):
            board._keep_probe({"step": step, "flow": {"layers": ["rnn.l0"], "norms": [[1.0]]}})
        steps = [probe["step"] for probe in board.probes]
        assert len(steps) <= HEATMAP_ROWS and steps[0] == 1
        assert len({b - a for a, b in zip(steps[:-1], steps[1:], strict=True)}) == 1
        assert steps[-1] > 1000 - (steps[1] - steps[0])  # reaches the latest probes
    finally:
        board.close()
