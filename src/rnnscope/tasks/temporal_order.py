"""The temporal order task (Hochreiter & Schmidhuber 1997; Pascanu, Mikolov & Bengio 2013).

Six symbols, one-hot: A, B (channels 0, 1) are relevant, c, d, e, f (channels 2..5)
are distractors. A sequence of length L = `seq_len` is all distractors except two
steps, each showing A or B:

    p0 = L//10 + randint(0, L//10)     in [L//10, 2*(L//10))   ~ [0.1L, 0.2L)
    p1 = L//2  + randint(0, L//10)     in [L//2, L//2 + L//10) ~ [0.5L, 0.6L)

(upper bounds exclusive). This is the rounding of Pascanu's reference generator
(`int(l*.1)`, `int(l*.5)`); for L a multiple of 10 it is exactly [0.1L, 0.2L) and
[0.5L, 0.6L). L >= 10 keeps both ranges non-empty.

Label (4 classes: AA, BA, AB, BB) = v0 + 2*v1 with v = 0 for A, 1 for B. The model
is scored at the last step: loss = cross-entropy of output[-1] against the label;
the metric is the error rate. Chance is 0.75; "solved" is under 1% errors (the
paper's criterion, on 10,000 fresh sequences).
"""

from __future__ import annotations

import torch
from torch import Tensor

from rnnscope.checks import integer
from rnnscope.tasks import register_task
from rnnscope.tasks.base import Task

SYMBOLS = 6  # A, B, c, d, e, f
RELEVANT = 2  # A and B are channels 0 and 1; the distractors are 2..5


@register_task("temporal_order")
class TemporalOrderTask(Task):
    input_size = SYMBOLS
    output_size = 4
    metric_name = "error_rate"
    baseline = 0.75  # 4 equally likely labels
    solved_below = 0.01

    def __init__(self, seq_len: int = 100) -> None:
        self.seq_len = integer("task.seq_len", seq_len, 10)

    @property
    def reach_needed(self) -> int:
        """The first relevant symbol lies in [L/10, 2L/10): up to 9L/10 steps back."""
        return self.seq_len - self.seq_len // 10

    @property
    def nearest_dependency(self) -> int:
        """The second relevant symbol lies in [L/2, L/2 + L/10): at least
        L - L/2 - L/10 + 1 steps back (41 for L=100)."""
        return self.seq_len - (self.seq_len // 2 + self.seq_len // 10 - 1)

    def draw(self, batch_size: int, generator: torch.Generator,
             split: str) -> tuple[Tensor, Tensor]:
        """(one-hot inputs [L, B, 6], labels [B] (int64) in 0..3)."""
        steps, width = self.seq_len, self.seq_len // 10
        symbols = torch.randint(RELEVANT, SYMBOLS, (steps, batch_size), generator=generator)
        first = width + torch.randint(0, width, (batch_size,), generator=generator)
        second = steps // 2 + torch.randint(0, width, (batch_size,), generator=generator)
        values = torch.randint(0, 2, (2, batch_size), generator=generator)  # 0: A, 1: B
        columns = torch.arange(batch_size)
        symbols[first, columns] = values[0]
        symbols[second, columns] = values[1]
        inputs = torch.nn.functional.one_hot(symbols, SYMBOLS).to(torch.float32)
        return inputs, values[0] + 2 * values[1]

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        return torch.nn.functional.cross_entropy(output[-1], target)

    def metric(self, output: Tensor, target: Tensor) -> Tensor:
        return (output[-1].argmax(dim=-1) != target).double().mean()
