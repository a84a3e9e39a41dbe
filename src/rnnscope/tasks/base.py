"""The task interface: what the trainer, `diagnose` and the studies need from a data set.

Conventions every task keeps:
- Batches are time-major: inputs [T, B, input_size] (float32), model outputs [T, B, O].
- Everything random comes from the `torch.Generator` passed in, so a run is
  reproducible from its seed; a task never touches the global RNG.
- `split` is "train" or "valid". Synthetic tasks draw fresh data for both (fresh
  data is held out by construction); file-based tasks keep the two apart.
- The metric is "lower is better" (MSE, error rate, bits per character, ...);
  `baseline` is its value for a model that ignores the inputs (chance level),
  and the task is "solved" when the metric on held-out data is below
  `solved_below` (None: no such threshold, e.g. language modelling).
- Bad input raises ValueError with one line naming the field (`task.<key>`) or
  the file and the problem.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor

SPLITS = ("train", "valid")


class Task(ABC):
    name: str = ""
    input_size: int
    output_size: int
    metric_name: str
    baseline: float
    solved_below: float | None

    @abstractmethod
    def batch(self, batch_size: int, generator: torch.Generator,
              split: str = "train") -> tuple[Tensor, Tensor]:
        """(inputs [T, B, input_size], targets) drawn from `generator`."""

    @abstractmethod
    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        """The training loss (a scalar) of model outputs [T, B, O] against `target`."""

    def metric(self, output: Tensor, target: Tensor) -> Tensor:
        """The reported metric (lower is better); the loss unless the task says otherwise."""
        return self.loss(output, target)

    def solved(self, metric: float) -> bool:
        return self.solved_below is not None and metric < self.solved_below


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split: unknown {split!r}; accepted: {', '.join(SPLITS)}")
    return split


def check_int(field: str, value, minimum: int) -> int:
    """A one-line error naming `task.<field>` unless `value` is an integer >= minimum."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"task.{field}: must be an integer >= {minimum}, got {value!r}")
    return value
