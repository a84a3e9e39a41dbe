"""When periodic work happens during training: one definition of "due every N steps".

Steps count from 1: step k is the k-th training step (an optimiser update in the
trainer; a backward pass for `record` and `watch`; a training batch in Lightning).
`every(n)` is due at steps n, 2n, 3n, ...; `every(n, first=True)` at step 1 as well,
so a probe sees the model as training starts. n = 0 is never.

    every(100)              100, 200, 300, ...       evaluation, checkpoints
    every(10, first=True)   1, 10, 20, 30, ...       gradient-flow probes (trainer,
                                                     record, watch, Lightning callback)
    every(1)                1, 2, 3, ...             every step

A schedule is a pure function of the step number (Cockpit's `schedule(step) -> bool`):
a run resumed from a checkpoint fires on the same steps as one never stopped.
"""

from __future__ import annotations

from dataclasses import dataclass

from rnnscope.checks import integer


@dataclass(frozen=True)
class Every:
    n: int  # 0: never
    first: bool = False  # also due at step 1

    def due(self, step: int) -> bool:
        """Whether training step `step` (1-based) is one of this schedule's."""
        return self.n > 0 and (step % self.n == 0 or (self.first and step == 1))


def every(n: int, *, first: bool = False, field: str = "every") -> Every:
    """The schedule due every `n` steps (see the module docstring); `field` names `n` in
    the error a bad value gets."""
    return Every(integer(field, n, 0), bool(first))
