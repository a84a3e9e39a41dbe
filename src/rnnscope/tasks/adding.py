"""The adding problem (Hochreiter & Schmidhuber 1997; the uRNN / IRNN papers' version).

Input [T, B, 2]: channel 0 ~ U[0, 1]; channel 1 marks exactly two steps, one at
randint(0, T//2) and one at T//2 + randint(0, T//2). Target: the sum of the two
marked values. Loss: MSE on the last step only. Always predicting 1 gives
MSE 1/6 (the variance of a sum of two U[0, 1]); "solved" is MSE < 0.01.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rnnscope.checks import integer
from rnnscope.tasks import register_task
from rnnscope.tasks.base import Task


@register_task("adding")
class AddingTask(Task):
    input_size = 2
    output_size = 1
    metric_name = "mse"
    baseline = 1.0 / 6.0
    solved_below = 0.01

    def __init__(self, seq_len: int = 200) -> None:
        self.seq_len = integer("task.seq_len", seq_len, 2)

    @property
    def reach_needed(self) -> int:
        """The first marked number lies anywhere in the first half: up to T steps back."""
        return self.seq_len

    @property
    def nearest_dependency(self) -> int:
        """The second marked number may be the last step (of an even T; the one before it
        of an odd T): one step back, or two."""
        return self.seq_len - 2 * (self.seq_len // 2) + 1

    def draw(self, batch_size: int, generator: torch.Generator,
             split: str) -> tuple[Tensor, Tensor]:
        steps, half = self.seq_len, self.seq_len // 2
        values = torch.rand(steps, batch_size, generator=generator)
        first = torch.randint(0, half, (batch_size,), generator=generator)
        second = half + torch.randint(0, half, (batch_size,), generator=generator)
        columns = torch.arange(batch_size)
        markers = torch.zeros(steps, batch_size)
        markers[first, columns] = 1.0
        markers[second, columns] = 1.0
        target = values[first, columns] + values[second, columns]
        return torch.stack([values, markers], dim=-1), target.unsqueeze(-1)

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        return torch.nn.functional.mse_loss(output[-1], target)
