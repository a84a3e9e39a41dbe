"""The sequence model rnnscope trains and diagnoses: a recurrent stack and a linear read-out."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from rnnscope.checks import choice, integer, number
from rnnscope.models.cells import CELLS
from rnnscope.models.recurrent import Recurrent

ENGINES = ("unrolled", "native")


@dataclass(frozen=True)
class ModelConfig:
    """The `model` section: which recurrent stack the trainer builds."""

    cell: str = "lstm"
    hidden: int = 128
    layers: int = 1
    # unrolled: rnnscope's cells, every step visible; native: torch's fused kernels,
    # recorded only on the probe schedule (record runs them as flow/recording.py says).
    engine: str = "unrolled"
    dropout: float = 0.0  # between stacked layers, in training mode only (as torch)

    def __post_init__(self) -> None:
        choice("model.cell", self.cell, CELLS)
        integer("model.hidden", self.hidden, 1)
        integer("model.layers", self.layers, 1)
        choice("model.engine", self.engine, ENGINES)
        number("model.dropout", self.dropout, minimum=0.0, below=1.0)

    def build(self, input_size: int, output_size: int) -> SequenceModel:
        return SequenceModel(self.cell, input_size, self.hidden, output_size,
                             num_layers=self.layers, engine=self.engine, dropout=self.dropout)


class SequenceModel(nn.Module):
    """Recurrent layers (`engine="unrolled"`: rnnscope's `Recurrent`; `"native"`: torch's
    fused module with the same parameter names) and a linear read-out at every step.
    Built from a checked `ModelConfig`; `Recurrent` checks the sizes of a direct call."""

    def __init__(self, cell: str, input_size: int, hidden_size: int, output_size: int,
                 num_layers: int = 1, engine: str = "unrolled", dropout: float = 0.0) -> None:
        super().__init__()
        rnn = Recurrent(cell, input_size, hidden_size, num_layers=num_layers, dropout=dropout)
        self.rnn = rnn if engine == "unrolled" else rnn.to_torch()
        self.head = nn.Linear(hidden_size, output_size)

    def forward(self, x: Tensor, state=None) -> tuple[Tensor, object]:
        output, state = self.rnn(x, state)
        return self.head(output), state
