"""The training loop: truncated BPTT against full BPTT, the order of events, clipping
before the step, and the probe schedule."""

from __future__ import annotations

import pytest
import torch

from rnnscope.training.trainer import Trainer
from support import tiny_run


def gradients(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in trainer.model.named_parameters()}


@pytest.mark.parametrize("task", [{"name": "adding", "seq_len": 12},
                                  {"name": "copy", "seq_len": 6}])
@pytest.mark.parametrize("engine", ["unrolled", "native"])
def test_truncated_bptt_with_a_window_of_t_or_more_is_full_bptt(task, engine):
    grads, losses = {}, {}
    for window in (None, 200, 5):
        # No probe: the native engine runs torch's fused kernels, as the reference does.
        trainer = Trainer(tiny_run(task=task, model={"engine": engine}, bptt={"window": window},
                               clip="none", probe={"every": 0}))
        trainer.optimizer.step = lambda: None  # keep the weights: compare the gradients
        state = trainer.train_step()
        grads[window], losses[window] = gradients(trainer), state.loss
    # The references are computed here by hand, outside truncated_bptt and window_loss:
    # full BPTT is one forward and backward of the task's loss over the whole sequence
    # (for the native engine: torch's own nn.LSTM); truncated BPTT with k=5 is the
    # word_language_model loop, the state detached between chunks, the loss of the
    # chunks weighted by their share of the steps.
    reference = Trainer(tiny_run(task=task, model={"engine": engine}))
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
    trainer = Trainer(tiny_run(bptt={"window": 5}, probe={"every": 1}))
    state = trainer.train_step()
    # adding scores the last step: only the last window's 2 steps (12 = 5 + 5 + 2) see it.
    norms = state.flow.norms[0]
    assert (norms[:10] == 0).all() and (norms[10:] > 0).all()
    assert state.diagnosis.reach <= 2


def test_events_fire_in_the_order_of_the_algorithm():
    trainer = Trainer(tiny_run(run={"steps": 3, "eval_every": 3}))
    seen = []
    for event in ("after_backward", "before_step", "after_step", "on_eval", "on_checkpoint"):
        trainer.on(event, lambda payload, event=event: seen.append(event))
    assert trainer.fit() == "finished"
    step = ["after_backward", "before_step", "after_step"]
    assert seen == step * 3 + ["on_eval", "on_checkpoint"]
    with pytest.raises(ValueError, match="event: unknown 'after_forward'; accepted"):
        trainer.on("after_forward", print)


def test_clipping_acts_before_the_step_and_is_reported():
    trainer = Trainer(tiny_run(clip="norm:0.001"))
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
    trainer = Trainer(tiny_run(model={"layers": 2}, probe={"every": 2, "histograms": True}))
    states = [trainer.train_step() for _ in range(4)]
    recorded = [s.step for s in states if s.flow is not None]
    assert recorded == [1, 2, 4]  # the first step, then every 2nd
    flow = states[0].flow
    # An LSTM: each layer has a row for dL/dh_t and one for its cell state dL/dc_t.
    assert flow.norms.shape == (4, 12)
    assert flow.layers == ["rnn.l0", "rnn.l0/c", "rnn.l1", "rnn.l1/c"]
    assert set(states[0].grads) == {n for n, _ in trainer.model.named_parameters()}
    assert states[2].grads == {}


def test_native_engine_records_the_flow_on_the_probe_schedule():
    unrolled = Trainer(tiny_run(probe={"every": 2}))
    native = Trainer(tiny_run(model={"engine": "native"}, probe={"every": 2}))
    assert isinstance(native.model.rnn, torch.nn.LSTM)  # torch's fused module
    native.model.load_state_dict(unrolled.model.state_dict())
    a, b = unrolled.train_step(), native.train_step()
    assert b.flow is not None and b.flow.layers == ["rnn.l0", "rnn.l0/c"]
    torch.testing.assert_close(b.flow.norms, a.flow.norms, rtol=1e-5, atol=1e-9)
    assert native.train_step().flow is not None  # step 2
    assert native.train_step().flow is None  # step 3: not on the schedule, fused kernels


@pytest.mark.parametrize(("optim", "known"), [("adam", True), ("rmsprop", False),
                                              ("sgd", False)])
def test_the_diagnosis_is_told_the_rates_summed_up_to_the_latest_evaluation(optim, known):
    """Context.lr_total: the rates of the updates before the held-out metric, summed, for
    an optimiser that moves each weight by about its rate (Adam); None for SGD and
    RMSprop (its first steps are ~10x its rate), and before any evaluation. It survives a
    checkpoint; one of before that lacks it leaves it unknown."""
    config = tiny_run(optim={"name": optim, "lr": 0.01},
                      schedule={"decay": "step", "step_size": 2, "gamma": 0.5},
                      run={"steps": 5, "eval_every": 3})
    trainer = Trainer(config)
    assert trainer.context().lr_total is None  # nothing evaluated yet
    assert trainer.fit() == "finished"
    rates = [trainer.schedule.lr(step) for step in range(5)]  # 0.01, 0.01, 0.005, 0.005, ..
    if not known:
        assert trainer.rates.total is None and trainer.context().lr_total is None
        return
    assert trainer.rates.total == pytest.approx(sum(rates), rel=1e-12)
    assert trainer.evaluation.step == 5
    assert trainer.context().lr_total == pytest.approx(sum(rates), rel=1e-12)
    resumed = Trainer(config)
    resumed.load_state_dict(trainer.state_dict())
    assert resumed.rates.total == trainer.rates.total
    assert resumed.context().lr_total == trainer.context().lr_total
    older = {k: v for k, v in trainer.state_dict().items()
             if k not in ("lr_total", "evaluated_lr_total")}
    before = Trainer(config)
    before.load_state_dict(older)
    assert before.rates.total is None and before.context().lr_total is None
    before.train_step()  # and stays unknown: the rates before the checkpoint are lost
    assert before.rates.total is None


def test_the_rates_are_summed_at_each_evaluation_not_at_each_probe():
    trainer = Trainer(tiny_run(optim={"name": "adam", "lr": 0.01},
                               run={"steps": 4, "eval_every": 2}))
    trainer.train_step()
    trainer.train_step()
    trainer.evaluate()
    trainer.train_step()
    assert trainer.rates.total == pytest.approx(0.03, rel=1e-12)
    assert trainer.context().lr_total == pytest.approx(0.02, rel=1e-12)


def test_a_step_the_guard_vetoes_or_rolls_back_does_not_count_in_the_summed_rate(tmp_path):
    """A skipped step made no update; a rollback takes the sum back with the weights."""
    from rnnscope.training.history import lr_total

    def poisoned(trainer, at):
        def before_step(state):
            if state.step in at:
                state.finite = False  # as a NaN loss would: the guard acts on it
        trainer.listeners["before_step"].insert(0, before_step)
        return trainer

    skip = poisoned(Trainer(tiny_run(guard="skip", optim={"name": "adam", "lr": 0.01},
                                     run={"steps": 4, "eval_every": 4})), at={2})
    skip.fit()
    assert skip.guard.skipped == 1
    assert skip.rates.total == pytest.approx(0.03, rel=1e-12)
    rollback = poisoned(Trainer(tiny_run(guard="rollback", optim={"name": "adam", "lr": 0.01},
                                         run={"steps": 6, "eval_every": 6})), at={5})
    rollback.fit()
    assert rollback.guard.rollbacks == 1
    # Step 5 rolls back to the initial weights (no state survived guard.every = 10 steps
    # yet): the four updates before it no longer count; step 6 runs at half the rate.
    assert rollback.rates.total == pytest.approx(0.005, rel=1e-12)
    # The metrics lines say a step was vetoed, not how far a rollback went.
    lines = [{"kind": "train", "step": s, "lr": 0.01} for s in range(1, 5)]
    lines[1]["guard"] = "skip"
    adam = tiny_run(optim={"name": "adam", "lr": 0.01})
    assert lr_total(adam, lines, 4) == pytest.approx(0.03, rel=1e-12)
    lines[2]["guard"] = "rollback"
    assert lr_total(adam, lines, 4) is None and lr_total(adam, lines, 2) == pytest.approx(
        0.01, rel=1e-12)
