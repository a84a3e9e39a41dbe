"""The sequence model rnnscope trains and diagnoses: a recurrent stack and a linear read-out."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from rnnscope.checks import choice, integer, number
from rnnscope.models.cells import CELLS
from rnnscope.models.recurrent import Recurrent

ENGINES = ("unrolled", "native")
# Recurrent weights at most: 400 MB as float32, 1.6 GB once gradients and Adam's two
# moments are counted, before any activation. A typo (--hidden 100000: 40 billion
# weights) is refused here, in one line, instead of failing in the allocator.
MAX_WEIGHTS = 100_000_000


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
        weights = self.recurrent_weights()
        if weights > MAX_WEIGHTS:
            fields = "model.hidden" if self.layers == 1 else "model.hidden, model.layers"
            raise ValueError(
                f"{fields}: {self.layers:,} {self.cell} layer(s) of {self.hidden:,} units "
                f"hold {weights:,} recurrent weights; at most {MAX_WEIGHTS:,} "
                f"(400 MB as float32, 1.6 GB with gradients and Adam's state): choose a "
                f"smaller model.hidden or model.layers")

    def recurrent_weights(self) -> int:
        """W_hh of every layer and W_ih of the layers above the first (the first one's
        depends on the task's input size): a lower bound on the model's weights."""
        gates = CELLS[self.cell].gates
        return gates * self.hidden * self.hidden * (2 * self.layers - 1)

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
