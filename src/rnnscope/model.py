"""The sequence model rnnscope trains and diagnoses: a recurrent stack and a linear read-out."""

from __future__ import annotations

from torch import Tensor, nn

from rnnscope.cells import Recurrent

ENGINES = ("unrolled", "native")


class SequenceModel(nn.Module):
    """Recurrent layers (`engine="unrolled"`: rnnscope's `Recurrent`; `"native"`: torch's
    fused module with the same parameter names) and a linear read-out at every step."""

    def __init__(self, cell: str, input_size: int, hidden_size: int, output_size: int,
                 num_layers: int = 1, engine: str = "unrolled", dropout: float = 0.0) -> None:
        super().__init__()
        if engine not in ENGINES:
            raise ValueError(f"model.engine: unknown {engine!r}; accepted: {', '.join(ENGINES)}")
        rnn = Recurrent(cell, input_size, hidden_size, num_layers=num_layers, dropout=dropout)
        self.rnn = rnn if engine == "unrolled" else rnn.to_torch()
        self.head = nn.Linear(hidden_size, output_size)

    def forward(self, x: Tensor, state=None) -> tuple[Tensor, object]:
        output, state = self.rnn(x, state)
        return self.head(output), state
