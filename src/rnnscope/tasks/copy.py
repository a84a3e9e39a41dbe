"""The copy memory task (Hochreiter & Schmidhuber 1997; the uRNN paper's version).

Symbols 0..9 (0 blank, 1..8 data, 9 delimiter), one-hot over 10 channels. With
`seq_len` = T (the gap), a sequence has T+20 steps:

    input   s1 .. s10 | 0 ... 0 (T-1) | 9 | 0 ... 0 (10)
    target  0 ... 0 (T+10)                 | s1 .. s10

with s_i ~ randint{1..8}. The model emits 9 logits (classes 0..8) at every step;
loss and metric are the cross-entropy averaged over all T+20 steps and the batch.

Baseline: a memoryless model predicts blank with certainty for T+10 steps (cost 0)
and then a uniform guess over 1..8 (cost ln 8 each), 10*ln(8)/(T+20) in all
(0.1733 at T=100). "Solved" is a tenth of that: the symbols recalled at an average
cost of 0.1*ln 8 = 0.21 nats, i.e. a geometric-mean probability of 0.81 on the
right symbol, where the baseline puts 1/8 on it. The uRNN paper's curves only say
"far below the baseline", so the threshold is ours.

Arjovsky et al. have no variable-length variant (that is Henaff et al. 2016's, a
different task), so there is none here.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from rnnscope.checks import integer
from rnnscope.tasks import register_task
from rnnscope.tasks.base import Task

SYMBOLS = 10  # input channels: blank, 8 data symbols, delimiter
BLANK, DELIMITER = 0, 9
COPIED = 10  # how many symbols are shown and recalled
DATA_LOW, DATA_HIGH = 1, 9  # data symbols are randint{1..8}: torch's high bound is exclusive


@register_task("copy")
class CopyTask(Task):
    input_size = SYMBOLS
    output_size = 9  # blank and the 8 data symbols: the delimiter is never a target
    metric_name = "cross_entropy"
    scored_steps = "every"  # blanks are targets too, as in the uRNN paper

    def __init__(self, seq_len: int = 100) -> None:
        # T=1 leaves no blank between the symbols and the delimiter, the shortest gap there is.
        self.seq_len = integer("task.seq_len", seq_len, 1)
        self.baseline = COPIED * math.log(8) / (self.seq_len + 2 * COPIED)
        self.solved_below = 0.1 * self.baseline

    @property
    def reach_needed(self) -> int:
        """Each symbol is recalled T + 10 steps after it was shown."""
        return self.seq_len + COPIED

    def draw(self, batch_size: int, generator: torch.Generator,
             split: str) -> tuple[Tensor, Tensor]:
        """(one-hot inputs [T+20, B, 10], target classes [T+20, B] (int64))."""
        gap, steps = self.seq_len, self.seq_len + 2 * COPIED
        data = torch.randint(DATA_LOW, DATA_HIGH, (COPIED, batch_size), generator=generator)
        symbols = torch.full((steps, batch_size), BLANK, dtype=torch.long)
        symbols[:COPIED] = data
        symbols[COPIED + gap - 1] = DELIMITER  # after T-1 blanks
        target = torch.full((steps, batch_size), BLANK, dtype=torch.long)
        target[-COPIED:] = data
        inputs = torch.nn.functional.one_hot(symbols, SYMBOLS).to(torch.float32)
        return inputs, target

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        return torch.nn.functional.cross_entropy(output.reshape(-1, output.shape[-1]),
                                                 target.reshape(-1))
