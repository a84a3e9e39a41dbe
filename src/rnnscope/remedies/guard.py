"""The NaN/Inf guard: what the trainer does when a loss or a gradient is not finite.

    raise     stop the run at once (exit code 1), saying which step and what was hit;
    skip      drop that step (no optimiser update), count it, go on; `limit` counts
              the skips in a row;
    rollback  restore the last good state, multiply the learning rate by `factor`, go on.

"Good" is more than finite: an exploding run usually passes through a few steps of
huge but finite losses before the first NaN, and weights restored from there blow
up again at any learning rate. So a state becomes the restore point only after
`every` finite steps have followed it:

    step      1 ...... 10 ...... 20 ...... 30 ... NaN
    snapshot  T0       C1        C2        C3
              C1 is promoted to the restore point at step 20, C2 at step 30; a NaN
              at step 34 restores C2 (it survived 10 steps), never C3.

`skip` and `rollback` give up (like `raise`) after `limit` consecutive skips or
`limit` rollbacks in the run. The guard listens on `before_step`: the optimiser
never steps on a non-finite gradient, so weights only turn non-finite through an
update that overflows, which the next step's loss shows.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from rnnscope.checks import choice, integer, number

GUARD_POLICIES = ("raise", "skip", "rollback")


class TrainingDiverged(RuntimeError):
    """The run hit a non-finite loss or gradient and the guard gave up (exit code 1);
    `state` is the step it gave up on (`state.action` says how), for the log."""

    def __init__(self, message: str, state=None) -> None:
        super().__init__(message)
        self.state = state


@dataclass(frozen=True)
class GuardConfig:
    """The `guard` section."""

    policy: str = "raise"
    limit: int = 10  # skip: consecutive skipped steps; rollback: rollbacks in the whole run
    factor: float = 0.5  # rollback: learning-rate multiplier after each rollback
    every: int = 10  # rollback: finite steps a state must survive to become the restore point

    def __post_init__(self) -> None:
        choice("guard.policy", self.policy, GUARD_POLICIES)
        integer("guard.limit", self.limit, 1)
        number("guard.factor", self.factor, above=0.0, maximum=1.0)
        integer("guard.every", self.every, 1)


class Guard:
    """Listener on `before_step`. It sees the training state through three functions,
    nothing else: `snapshot()` returns a state to restore later, `restore(state)` puts one
    back, and `scale_lr(factor)` multiplies every later learning rate."""

    def __init__(self, config: GuardConfig, *, snapshot: Callable[[], dict],
                 restore: Callable[[dict], None], scale_lr: Callable[[float], None]) -> None:
        self.config = config
        self.snapshot, self.restore, self.scale_lr = snapshot, restore, scale_lr
        self.skipped = 0
        self.rollbacks = 0
        self.consecutive = 0
        # The restore point (at first the initial state) and the candidate that replaces
        # it once `every` finite steps have followed the candidate.
        self.good_state = snapshot() if config.policy == "rollback" else None
        self.candidate = None
        self.survived = 0

    def before_step(self, state) -> None:
        if state.finite:
            self.consecutive = 0
            if self.config.policy == "rollback":
                self._advance()
            return
        what = "gradient" if math.isfinite(state.loss) else "loss"
        problem = (f"step {state.step}: non-finite {what} (loss {state.loss:.4g}, "
                   f"gradient norm {state.grad_norm:.4g}, lr {state.lr:.3g})")
        policy, limit = self.config.policy, self.config.limit
        state.skip = True
        if policy == "raise":
            state.action = "raise"
            raise TrainingDiverged(f"{problem}; guard.policy=raise stops here. Try --clip "
                                   f"norm:1.0, a lower --lr, or --guard rollback", state)
        if policy == "skip":
            if self.consecutive >= limit:
                state.action = "gave_up"
                raise TrainingDiverged(f"{problem}; {limit} steps in a row skipped before it "
                                       f"(guard.limit={limit})", state)
            self.consecutive += 1
            self.skipped += 1
            state.action = "skip"
            return
        if self.rollbacks >= limit:
            state.action = "gave_up"
            raise TrainingDiverged(f"{problem}; gave up after {limit} rollbacks (guard.limit); "
                                   f"the learning rate is already "
                                   f"x{self.config.factor ** limit:.3g}", state)
        self.rollbacks += 1
        state.action = "rollback"
        self.restore(self.good_state)
        self.candidate, self.survived = None, 0
        self.scale_lr(self.config.factor)

    def _advance(self) -> None:
        # Taken before the update: these weights gave a finite loss and gradients.
        if self.candidate is None:
            self.candidate, self.survived = self.snapshot(), 0
            return
        self.survived += 1
        if self.survived >= self.config.every:
            self.good_state = self.candidate
            self.candidate, self.survived = self.snapshot(), 0

    def state_dict(self) -> dict:
        return {"skipped": self.skipped, "rollbacks": self.rollbacks,
                "consecutive": self.consecutive, "good_state": self.good_state,
                "candidate": self.candidate, "survived": self.survived}

    def load_state_dict(self, state: dict) -> None:
        self.skipped = state["skipped"]
        self.rollbacks = state["rollbacks"]
        self.consecutive = state["consecutive"]
        self.good_state = state["good_state"]
        self.candidate = state["candidate"]
        self.survived = state["survived"]
