"""The null task: the adding problem's inputs with a target drawn apart from them.

Input [T, B, 2] as in `adding` (values U[0, 1] and two markers); target: U[0, 2],
independent of the input. Nothing in the sequence predicts it, so no model beats
predicting its mean: MSE 1/3 (the variance of U[0, 2]) is both chance and the best
achievable, and the task has no "solved" threshold. It is the control of the
diagnosis suite (benchmarks/doctor.py): a model that cannot learn because the data
holds no signal must not be diagnosed with a gradient problem.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rnnscope.tasks import register_task
from rnnscope.tasks.adding import AddingTask


@register_task("noise")
class NoiseTask(AddingTask):
    baseline = 1.0 / 3.0
    solved_below = None

    @property
    def reach_needed(self) -> int:
        """No step predicts the target: there is no dependency for the gradient to span."""
        return 1

    def draw(self, batch_size: int, generator: torch.Generator,
             split: str) -> tuple[Tensor, Tensor]:
        inputs, _ = super().draw(batch_size, generator, split)
        return inputs, 2.0 * torch.rand(batch_size, 1, generator=generator)
