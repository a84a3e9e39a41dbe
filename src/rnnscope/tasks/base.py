"""The task interface."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor


class Task(ABC):
    """Batches are time-major: inputs [T, B, input_size]; outputs of the model [T, B, O]."""

    name: str = ""
    input_size: int
    output_size: int
    metric_name: str
    baseline: float  # the metric of a model that ignores the inputs
    solved_below: float  # "solved" when the metric on fresh data is below this

    @abstractmethod
    def batch(self, batch_size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """(inputs, targets) drawn from `generator`."""

    @abstractmethod
    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        """The training loss of model outputs [T, B, O] against `target`."""

    def metric(self, output: Tensor, target: Tensor) -> Tensor:
        """The reported metric; the loss unless the task says otherwise."""
        return self.loss(output, target)
