"""Optimisers and the learning-rate schedule against torch's own optimisers and schedulers."""

from __future__ import annotations

import io
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.optim import lr_scheduler

from rnnscope.remedies.optim import (
    DECAYS,
    OPTIMIZERS,
    LRSchedule,
    OptimConfig,
    ScheduleConfig,
    SummedRate,
    build_optimizer,
)

BASE = 0.1


def _parameters(seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(4, 3, generator=generator, dtype=torch.float64, requires_grad=True),
            torch.randn(4, generator=generator, dtype=torch.float64, requires_grad=True)]


def _run(optimizer: torch.optim.Optimizer, parameters: list[torch.Tensor], steps: int) -> None:
    """`steps` optimiser steps with fixed, step-dependent gradients."""
    for step in range(steps):
        generator = torch.Generator().manual_seed(100 + step)
        for p in parameters:
            p.grad = torch.randn(p.shape, generator=generator, dtype=torch.float64)
        optimizer.step()


# --- build_optimizer ---------------------------------------------------------------------

# Non-default values everywhere, and three steps: a dropped momentum only shows from the
# second step, a dropped eps only when it is large against sqrt(v).
REFERENCES = {
    "sgd": lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.7, weight_decay=0.01),
    "adam": lambda params: torch.optim.Adam(params, lr=0.05, eps=0.3, weight_decay=0.01),
    "rmsprop": lambda params: torch.optim.RMSprop(params, lr=0.05, momentum=0.7, eps=0.3,
                                                  weight_decay=0.01),
}


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_build_optimizer_steps_like_torch(name):
    config = OptimConfig(name=name, lr=0.05, momentum=0.7, weight_decay=0.01, eps=0.3)
    ours, theirs = _parameters(), _parameters()
    optimizer = build_optimizer(ours, config)
    assert type(optimizer) is type(REFERENCES[name](_parameters()))
    _run(optimizer, ours, 3)
    _run(REFERENCES[name](theirs), theirs, 3)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=0)


def test_weight_decay_is_l2_added_to_the_gradient():
    (w0,) = _parameters()[:1]
    w = w0.detach().clone().requires_grad_(True)
    g = torch.full_like(w, 0.3)
    w.grad = g.clone()
    build_optimizer([w], OptimConfig(name="sgd", lr=0.1, momentum=0.0, weight_decay=0.2)).step()
    torch.testing.assert_close(w.detach(), w0.detach() - 0.1 * (g + 0.2 * w0.detach()),
                               rtol=1e-12, atol=0)


def test_adam_weight_decay_is_coupled_not_adamw():
    config = OptimConfig(name="adam", lr=0.05, weight_decay=0.1)
    ours, adam, adamw = _parameters(), _parameters(), _parameters()
    _run(build_optimizer(ours, config), ours, 3)
    _run(torch.optim.Adam(adam, lr=0.05, weight_decay=0.1), adam, 3)
    _run(torch.optim.AdamW(adamw, lr=0.05, weight_decay=0.1), adamw, 3)
    assert torch.equal(ours[0], adam[0])
    assert not torch.allclose(ours[0], adamw[0], rtol=1e-6, atol=0)


# --- the schedule against torch's schedulers ----------------------------------------------

def _torch_rates(make_scheduler, steps: int) -> tuple[list[float], list[float]]:
    """torch's rate at every optimiser step: recursive (what `step()` leaves in the
    optimiser) and closed form (`_get_closed_form_lr` at the same epoch)."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=BASE)
    scheduler = make_scheduler(optimizer)
    recursive, closed = [], []
    for _ in range(steps):
        recursive.append(optimizer.param_groups[0]["lr"])
        closed.append(scheduler._get_closed_form_lr()[0])
        optimizer.step()
        scheduler.step()
    return recursive, closed


@pytest.mark.parametrize(("step_size", "gamma"), [(1, 0.9), (7, 0.5), (100, 0.3)])
def test_step_decay_matches_steplr(step_size, gamma):
    steps = 300
    schedule = LRSchedule(ScheduleConfig(decay="step", step_size=step_size, gamma=gamma),
                          BASE, steps)
    recursive, closed = _torch_rates(
        lambda o: lr_scheduler.StepLR(o, step_size=step_size, gamma=gamma), steps)
    ours = [schedule.lr(s) for s in range(steps)]
    assert ours == closed
    assert ours == pytest.approx(recursive, rel=1e-12, abs=0)  # gamma ** n vs n products


@pytest.mark.parametrize("min_lr", [0.0, 0.003])
def test_cosine_matches_cosine_annealing(min_lr):
    # Bit-identical to torch's closed form (`_get_closed_form_lr`, private but the formula
    # its docs give). The recursive form, what `step()` leaves in the optimiser, drifts:
    # about 4e-15 relative in torch 2.13 over 1000 steps, so it gets 1e-9 relative, plus
    # 1e-15 absolute for the last steps of a decay to 0, where the rate nears 0.
    steps = 400
    schedule = LRSchedule(ScheduleConfig(decay="cosine", min_lr=min_lr), BASE, steps)
    recursive, closed = _torch_rates(
        lambda o: lr_scheduler.CosineAnnealingLR(o, T_max=steps, eta_min=min_lr), steps)
    ours = [schedule.lr(s) for s in range(steps)]
    assert ours == closed
    assert ours == pytest.approx(recursive, rel=1e-9, abs=1e-15)
    assert schedule.lr(steps) == pytest.approx(min_lr, abs=1e-15)  # the floor, one past the end


def test_cosine_holds_the_floor_past_the_end_and_survives_warmup_beyond_it():
    schedule = LRSchedule(ScheduleConfig(decay="cosine", min_lr=0.01), BASE, 100)
    assert [schedule.lr(s) for s in (100, 150, 1000)] == pytest.approx([0.01] * 3)
    long_warmup = LRSchedule(ScheduleConfig(warmup=10, decay="cosine", min_lr=0.01), BASE, 5)
    assert [long_warmup.lr(s) for s in range(5)] == pytest.approx(
        [BASE * (s + 1) / 10 for s in range(5)])
    assert long_warmup.lr(10) == pytest.approx(0.01)


def test_warmup_is_a_linear_ramp_to_the_base_rate():
    schedule = LRSchedule(ScheduleConfig(warmup=4), BASE, 100)
    assert [schedule.lr(s) for s in range(7)] == pytest.approx(
        [0.025, 0.05, 0.075, 0.1, 0.1, 0.1, 0.1], rel=1e-15)
    assert LRSchedule(ScheduleConfig(warmup=1), BASE, 100).lr(0) == BASE


def test_warmup_then_cosine_matches_linear_then_cosine_annealing():
    warmup, steps, min_lr = 20, 300, 0.001
    schedule = LRSchedule(ScheduleConfig(warmup=warmup, decay="cosine", min_lr=min_lr),
                          BASE, steps)
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=BASE)
    # LinearLR from 1/warmup over warmup - 1 steps gives (step + 1) / warmup.
    scheduler = lr_scheduler.SequentialLR(optimizer, [
        lr_scheduler.LinearLR(optimizer, start_factor=1 / warmup, total_iters=warmup - 1),
        lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps - warmup, eta_min=min_lr),
    ], milestones=[warmup])
    theirs = []
    for _ in range(steps):
        theirs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    ours = [schedule.lr(s) for s in range(steps)]
    assert ours == pytest.approx(theirs, rel=1e-9, abs=1e-15)
    assert schedule.lr(warmup - 1) == schedule.lr(warmup) == BASE


def _torch_plateau(optimizer, patience, gamma, min_lr):
    # eps=0: torch skips a cut smaller than eps (1e-8 by default), a float-precision
    # guard that the closed form does not need; with it, deep decays would differ.
    return lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=gamma,
                                          patience=patience, min_lr=min_lr, eps=0.0)


# Values that repeat (plateaus), straddle the relative threshold (1 * (1 - 1e-4) is
# 0.9999: not an improvement on 1.0), and NaN / inf.
METRICS = st.one_of(st.sampled_from([1.0, 0.99995, 0.9999, 0.9998, 0.5, 2.0, math.nan,
                                     math.inf]),
                    st.floats(0.0, 2.0))


@settings(max_examples=150, deadline=None)
@given(metrics=st.lists(METRICS, max_size=80), patience=st.integers(0, 5),
       gamma=st.floats(0.05, 0.95), min_lr=st.sampled_from([0.0, 1e-4, 0.02]))
def test_plateau_matches_reduce_lr_on_plateau(metrics, patience, gamma, min_lr):
    schedule = LRSchedule(ScheduleConfig(decay="plateau", patience=patience, gamma=gamma,
                                         min_lr=min_lr), BASE, 1000)
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=BASE)
    scheduler = _torch_plateau(optimizer, patience, gamma, min_lr)
    for step, metric in enumerate(metrics):
        before = optimizer.param_groups[0]["lr"]
        decayed = schedule.observe(metric)
        scheduler.step(metric)
        after = optimizer.param_groups[0]["lr"]
        assert decayed == (after < before)
        assert schedule.lr(step) == pytest.approx(after, rel=1e-12, abs=0)
        assert schedule.plateau_bad == scheduler.num_bad_epochs
        assert schedule.plateau_best == scheduler.best or (
            math.isnan(schedule.plateau_best) and math.isnan(scheduler.best))


def test_plateau_patience_counts_evaluations_without_improvement():
    schedule = LRSchedule(ScheduleConfig(decay="plateau", patience=2, gamma=0.5), BASE, 100)
    # best 1.0, then three evaluations without improvement: the third (more than 2) cuts.
    assert [schedule.observe(m) for m in (1.0, 1.0, math.nan, 1.0)] == [False] * 3 + [True]
    assert schedule.lr(0) == BASE / 2
    assert schedule.plateau_bad == 0


def test_observe_is_a_no_op_without_plateau():
    for decay in ("none", "step", "cosine"):
        schedule = LRSchedule(ScheduleConfig(decay=decay, patience=0), BASE, 100)
        before = [schedule.lr(s) for s in range(0, 100, 7)]
        assert not any(schedule.observe(m) for m in (1.0, 2.0, 3.0, math.nan))
        assert [schedule.lr(s) for s in range(0, 100, 7)] == before


def test_plateau_floor_and_warmup():
    schedule = LRSchedule(ScheduleConfig(warmup=2, decay="plateau", patience=0, gamma=0.1,
                                         min_lr=0.005), BASE, 100)
    assert [schedule.observe(m) for m in (1.0, 1.0, 1.0, 1.0)] == [False, True, True, False]
    assert schedule.lr(0) == pytest.approx(0.005 / 2)  # warm-up still ramps up to the floor
    assert schedule.lr(5) == 0.005


@pytest.mark.parametrize("decay", DECAYS)
def test_scale_by_multiplies_every_later_rate(decay):
    config = ScheduleConfig(warmup=5, decay=decay, step_size=10, patience=0)
    schedule = LRSchedule(config, BASE, 200)
    schedule.observe(1.0)
    schedule.observe(1.0)
    before = [schedule.lr(s) for s in range(200)]
    schedule.scale_by(0.5)
    schedule.scale_by(0.5)
    assert schedule.scale == 0.25
    assert [schedule.lr(s) for s in range(200)] == pytest.approx([r / 4 for r in before],
                                                                rel=1e-12)


def test_scale_by_scales_the_whole_schedule_floor_included():
    """The guard's cut applies last: a floor (min_lr) never undoes it, and the rate
    never rises over the run because the scaled peak fell below the floor."""
    schedule = LRSchedule(ScheduleConfig(decay="cosine", min_lr=0.01), BASE, 100)
    schedule.scale_by(0.5)
    assert schedule.lr(0) == pytest.approx(0.05)
    assert schedule.lr(50) == pytest.approx(0.5 * (0.01 + (0.1 - 0.01) / 2))
    schedule.scale_by(0.01)
    rates = [schedule.lr(step) for step in range(100)]
    assert rates == sorted(rates, reverse=True)
    plateau = LRSchedule(ScheduleConfig(decay="plateau", min_lr=0.05, patience=0), BASE, 100)
    for metric in (1.0, 2.0, 3.0, 4.0):
        plateau.observe(metric)
    assert plateau.lr(0) == pytest.approx(0.05)  # decayed down to the floor
    plateau.scale_by(0.5)
    assert plateau.lr(0) == pytest.approx(0.025)  # the rollback's cut still takes effect


def test_apply_sets_every_parameter_group():
    optimizer = torch.optim.SGD([{"params": [torch.zeros(1, requires_grad=True)]},
                                 {"params": [torch.zeros(1, requires_grad=True)], "lr": 9.0}],
                                lr=1.0)
    schedule = LRSchedule(ScheduleConfig(warmup=4), BASE, 10)
    assert schedule.apply(optimizer, 1) == pytest.approx(0.05)
    assert [g["lr"] for g in optimizer.param_groups] == [schedule.lr(1)] * 2


def _roundtrip(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("stop", [0, 37])
def test_state_dict_roundtrip_resumes_identically(stop):
    # stop=0 saves before any evaluation: the best so far is still inf.
    config = ScheduleConfig(warmup=10, decay="plateau", patience=1, gamma=0.7, min_lr=1e-4)
    generator = torch.Generator().manual_seed(3)
    metrics = (1.0 + 0.1 * torch.randn(80, generator=generator)).tolist()
    original = LRSchedule(config, BASE, 80)

    def advance(schedule, step):
        if step == 20:
            schedule.scale_by(0.5)  # a guard rollback before the checkpoint
        return schedule.lr(step), schedule.observe(metrics[step])

    for step in range(stop):
        advance(original, step)
    resumed = LRSchedule(config, BASE, 80)
    resumed.load_state_dict(_roundtrip(original.state_dict()))
    assert resumed.state_dict() == original.state_dict()
    assert [advance(original, s) for s in range(stop, 80)] == [
        advance(resumed, s) for s in range(stop, 80)]


# --- validation --------------------------------------------------------------------------

@pytest.mark.parametrize(("make", "message"), [
    (lambda: OptimConfig(name="adamw"),
     "optim.name: unknown 'adamw'; accepted: sgd, adam, rmsprop"),
    (lambda: OptimConfig(lr=0), "optim.lr: must be a positive number, got 0"),
    (lambda: OptimConfig(lr=math.inf), "optim.lr: must be a positive number, got inf"),
    (lambda: OptimConfig(lr=True), "optim.lr: must be a positive number, got True"),
    (lambda: OptimConfig(lr="0.1"), "optim.lr: must be a positive number, got '0.1'"),
    (lambda: OptimConfig(momentum=1.5), "optim.momentum: must be in [0, 1), got 1.5"),
    (lambda: OptimConfig(momentum=1), "optim.momentum: must be in [0, 1), got 1"),
    (lambda: OptimConfig(momentum=-0.1), "optim.momentum: must be in [0, 1), got -0.1"),
    (lambda: OptimConfig(weight_decay=-1),
     "optim.weight_decay: must be a finite number >= 0, got -1"),
    (lambda: OptimConfig(weight_decay=math.nan),
     "optim.weight_decay: must be a finite number >= 0, got nan"),
    (lambda: OptimConfig(eps=0.0), "optim.eps: must be a positive number, got 0.0"),
    (lambda: ScheduleConfig(decay="exp"),
     "schedule.decay: unknown 'exp'; accepted: none, step, cosine, plateau"),
    (lambda: ScheduleConfig(warmup=-1), "schedule.warmup: must be an integer >= 0, got -1"),
    (lambda: ScheduleConfig(warmup=1.5), "schedule.warmup: must be an integer >= 0, got 1.5"),
    (lambda: ScheduleConfig(warmup=False),
     "schedule.warmup: must be an integer >= 0, got False"),
    (lambda: ScheduleConfig(step_size=0), "schedule.step_size: must be an integer >= 1, got 0"),
    (lambda: ScheduleConfig(gamma=1), "schedule.gamma: must be in (0, 1), got 1"),
    (lambda: ScheduleConfig(gamma=0.0), "schedule.gamma: must be in (0, 1), got 0.0"),
    (lambda: ScheduleConfig(min_lr=-1e-3),
     "schedule.min_lr: must be a finite number >= 0, got -0.001"),
    (lambda: ScheduleConfig(patience=-1), "schedule.patience: must be an integer >= 0, got -1"),
    (lambda: ScheduleConfig(patience=2.0),
     "schedule.patience: must be an integer >= 0, got 2.0"),
])
def test_validation_names_the_field_and_what_it_accepts(make, message):
    with pytest.raises(ValueError) as error:
        make()
    assert str(error.value) == message


def test_ints_are_accepted_for_floats():
    OptimConfig(lr=1, momentum=0, weight_decay=0, eps=1)
    ScheduleConfig(min_lr=0)


def test_summed_rate_counts_real_steps_and_keeps_unknown_unknown():
    """A hook on torch's own Adam: each step() adds the rate in force (a changed rate
    counts from then on); a rollback rewinds to the snapshot's sum; unknown (forgotten, or
    an optimiser it does not count) stays unknown, rewound or not; stop() removes the
    hook."""
    weight = torch.nn.Parameter(torch.ones(2))
    adam = torch.optim.Adam([weight], lr=0.01)
    rates = SummedRate()
    rates.follow(adam)
    for _ in range(3):
        weight.grad = torch.ones(2)
        adam.step()
    adam.param_groups[0]["lr"] = 0.005
    adam.step()
    assert rates.total == pytest.approx(0.035, rel=1e-12)
    rates.mark_evaluated()
    rates.rewind(0.01)  # a rollback to a snapshot taken after the first step
    assert rates.total == 0.01 and rates.evaluated == pytest.approx(0.035, rel=1e-12)
    rates.stop()
    adam.step()
    assert rates.total == 0.01 and not adam._optimizer_step_post_hooks
    rates.forget()
    rates.rewind(0.02)
    assert rates.total is None
    sgd_rates = SummedRate()
    sgd_rates.follow(torch.optim.SGD([weight], lr=0.01))
    assert sgd_rates.total is None
