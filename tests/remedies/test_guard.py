"""The NaN/Inf guard through its narrow interface (snapshot, restore, scale the learning
rate): what each policy does with a non-finite step, which state a rollback restores,
and when it gives up."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from rnnscope.remedies.guard import Guard, GuardConfig, TrainingDiverged


class Training:
    """What the guard may touch: a counter standing for the weights, and the rate."""

    def __init__(self) -> None:
        self.weights = 0  # "the weights after step k" is k
        self.lr_scale = 1.0
        self.restored: list[int] = []

    def snapshot(self) -> dict:
        return {"weights": self.weights}

    def restore(self, state: dict) -> None:
        self.weights = state["weights"]
        self.restored.append(state["weights"])

    def scale_lr(self, factor: float) -> None:
        self.lr_scale *= factor


def guard_for(training: Training, **config) -> Guard:
    return Guard(GuardConfig(**config), snapshot=training.snapshot, restore=training.restore,
                 scale_lr=training.scale_lr)


def step(guard: Guard, training: Training, number: int, finite: bool = True):
    state = SimpleNamespace(step=number, finite=finite, loss=1.0 if finite else math.nan,
                            grad_norm=1.0, lr=0.1 * training.lr_scale, skip=False, action=None)
    guard.before_step(state)
    if not state.skip:
        training.weights = number  # the update of step `number`
    return state


def test_raise_stops_at_the_first_nonfinite_step_with_what_was_hit():
    training = Training()
    guard = guard_for(training, policy="raise")
    step(guard, training, 1)
    with pytest.raises(TrainingDiverged, match=r"^step 2: non-finite loss \(loss nan") as error:
        step(guard, training, 2, finite=False)
    assert error.value.state.action == "raise" and error.value.state.skip
    assert training.weights == 1  # no update on the bad step


def test_skip_drops_the_step_and_gives_up_after_limit_in_a_row():
    training = Training()
    guard = guard_for(training, policy="skip", limit=2)
    assert step(guard, training, 1, finite=False).action == "skip"
    step(guard, training, 2)  # a finite step resets the count in a row
    assert [step(guard, training, n, finite=False).action for n in (3, 4)] == ["skip", "skip"]
    with pytest.raises(TrainingDiverged, match="2 steps in a row skipped"):
        step(guard, training, 5, finite=False)
    assert guard.skipped == 3 and training.weights == 2


def test_rollback_restores_the_last_state_that_survived_every_steps_and_cuts_the_rate():
    training = Training()
    guard = guard_for(training, policy="rollback", every=3, factor=0.5)
    for number in range(1, 9):  # the state before step 1 is the candidate; 4 and 7 replace it
        step(guard, training, number)
    state = step(guard, training, 9, finite=False)
    # Candidates are taken before updates: weights 0 (survived steps 2-4), then 3 (5-7),
    # then 6, which has survived only step 8 at the NaN: weights 3 is restored, never 6.
    assert state.action == "rollback" and training.restored == [3] and training.weights == 3
    assert training.lr_scale == 0.5 and guard.rollbacks == 1


def test_rollback_gives_up_after_limit_rollbacks_in_the_run():
    training = Training()
    guard = guard_for(training, policy="rollback", limit=2, every=1, factor=0.1)
    assert step(guard, training, 1, finite=False).action == "rollback"
    assert step(guard, training, 2, finite=False).action == "rollback"
    with pytest.raises(TrainingDiverged, match=r"gave up after 2 rollbacks.*x0\.01"):
        step(guard, training, 3, finite=False)
    assert training.restored == [0, 0] and training.lr_scale == pytest.approx(0.01)


def test_only_rollback_takes_snapshots():
    taken = []
    training = Training()
    for policy in ("raise", "skip"):
        guard = Guard(GuardConfig(policy=policy), snapshot=lambda: taken.append(1) or {},
                      restore=training.restore, scale_lr=training.scale_lr)
        for number in range(1, 30):
            step(guard, training, number)
    assert taken == []


def test_state_dict_round_trips_the_guards_memory():
    training = Training()
    guard = guard_for(training, policy="rollback", every=2)
    for number in range(1, 6):
        step(guard, training, number)
    copy = guard_for(Training(), policy="rollback", every=2)
    copy.load_state_dict(guard.state_dict())
    assert copy.state_dict() == guard.state_dict()


@pytest.mark.parametrize(("config", "message"), [
    ({"policy": "retry"}, "guard.policy: unknown 'retry'; accepted: raise, skip, rollback"),
    ({"limit": 0}, "guard.limit: must be an integer >= 1, got 0"),
    ({"factor": 1.5}, "guard.factor: must be in (0, 1], got 1.5"),
    ({"every": 0}, "guard.every: must be an integer >= 1, got 0"),
])
def test_bad_guard_settings_name_the_field(config, message):
    with pytest.raises(ValueError) as error:
        GuardConfig(**config)
    assert str(error.value) == message
