"""The recurrent cells as step functions, and where their weights are found.

Parameter names, shapes and gate order are torch's (`weight_ih_l{k}`,
`weight_hh_l{k}`, `bias_ih_l{k}`, `bias_hh_l{k}`, `_reverse` for the backward
direction; LSTM gates i, f, g, o; GRU gates r, z, n), so the same step functions
run rnnscope's `Recurrent` and torch's `nn.RNN`/`nn.LSTM`/`nn.GRU` with their own
weights (`unrolled.py`), and a `state_dict` moves between the two both ways.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

State = tuple[Tensor, ...]  # (h,) for Elman and GRU cells, (h, c) for LSTM


@dataclass(frozen=True)
class Recurrence:
    """What a step needs besides its input projection and its state."""

    w_hh_t: Tensor  # W_hh transposed: [H (P with a projection), gates * H]
    bias: Tensor | None = None  # b_hh where the cell cannot fold it into the projection (GRU)
    w_hr_t: Tensor | None = None  # an LSTM's projection W_hr transposed, [H, P]


# step(gi, state, recurrence) -> new state. gi = W_ih x_t + b_ih (+ b_hh where the cell
# folds it in), 2-D [rows, gates * H].
StepFn = Callable[[Tensor, State, Recurrence], State]

# The step functions use as few autograd ops as the algebra allows (addmm,
# addcmul, lerp): in an unrolled loop each op costs dispatch time at every step
# in both passes, which outweighs the arithmetic at the sizes RNNs train at.


def _rnn_tanh_step(gi: Tensor, state: State, recurrence: Recurrence) -> State:
    return (torch.tanh(torch.addmm(gi, state[0], recurrence.w_hh_t)),)


def _rnn_relu_step(gi: Tensor, state: State, recurrence: Recurrence) -> State:
    return (torch.relu(torch.addmm(gi, state[0], recurrence.w_hh_t)),)


def _lstm_step(gi: Tensor, state: State, recurrence: Recurrence) -> State:
    h, c = state
    hidden = c.shape[1]
    # i and f are adjacent in torch's order: one sigmoid covers both.
    input_forget, g, o = torch.addmm(gi, h, recurrence.w_hh_t).split(
        [2 * hidden, hidden, hidden], dim=1)
    i, f = torch.sigmoid(input_forget).chunk(2, dim=1)
    c = torch.addcmul(f * c, i, torch.tanh(g))
    h = torch.sigmoid(o) * torch.tanh(c)
    if recurrence.w_hr_t is not None:  # proj_size > 0: h_t = W_hr (o * tanh(c_t))
        h = h @ recurrence.w_hr_t
    return h, c


def _gru_step(gi: Tensor, state: State, recurrence: Recurrence) -> State:
    h, b_hh = state[0], recurrence.bias
    hidden = h.shape[1]
    gh = torch.addmm(b_hh, h, recurrence.w_hh_t) if b_hh is not None else h @ recurrence.w_hh_t
    r, z = torch.sigmoid(gi[:, : 2 * hidden] + gh[:, : 2 * hidden]).chunk(2, dim=1)
    # The reset gate multiplies W_hn h + b_hn, not h: torch's (and cuDNN's) form,
    # which is also why b_hh cannot be folded into the input projection here.
    n = torch.tanh(torch.addcmul(gi[:, 2 * hidden :], r, gh[:, 2 * hidden :]))
    return (torch.lerp(n, h, z),)  # (1 - z) * n + z * h


@dataclass(frozen=True)
class CellSpec:
    """What the unrolled engine needs to know about one kind of cell."""

    name: str
    gates: int  # blocks stacked in weight_ih / weight_hh, in torch's order
    gate_names: tuple[str, ...]
    step: StepFn
    torch_class: type[nn.RNNBase]
    has_cell_state: bool = False
    # b_hh enters only as a sum with b_ih, so it can join the input projection.
    folds_recurrent_bias: bool = True

    @property
    def gated(self) -> bool:
        """Gates decide what the state keeps (LSTM, GRU); an Elman cell has none."""
        return self.gates > 1


CELLS: dict[str, CellSpec] = {
    "rnn_tanh": CellSpec("rnn_tanh", 1, ("h",), _rnn_tanh_step, nn.RNN),
    "rnn_relu": CellSpec("rnn_relu", 1, ("h",), _rnn_relu_step, nn.RNN),
    "lstm": CellSpec("lstm", 4, ("i", "f", "g", "o"), _lstm_step, nn.LSTM, has_cell_state=True),
    "gru": CellSpec("gru", 3, ("r", "z", "n"), _gru_step, nn.GRU, folds_recurrent_bias=False),
}



@dataclass(frozen=True)
class LayerWeights:
    """The parameters of one layer and direction (biases None when bias=False; weight_hr
    only for an LSTM with proj_size > 0)."""

    layer: int
    direction: int
    weight_ih: Tensor
    weight_hh: Tensor
    bias_ih: Tensor | None
    bias_hh: Tensor | None
    weight_hr: Tensor | None = None


def layer_weights(module: nn.Module) -> Iterator[LayerWeights]:
    """The parameters of a recurrent module by layer and direction, in torch's order."""
    directions = 2 if module.bidirectional else 1
    for layer in range(module.num_layers):
        for direction in range(directions):
            suffix = f"_l{layer}" + ("_reverse" if direction else "")
            yield LayerWeights(
                layer,
                direction,
                getattr(module, "weight_ih" + suffix),
                getattr(module, "weight_hh" + suffix),
                getattr(module, "bias_ih" + suffix) if module.bias else None,
                getattr(module, "bias_hh" + suffix) if module.bias else None,
                getattr(module, "weight_hr" + suffix) if projection(module) else None,
            )


def projection(module: nn.Module) -> int:
    """An LSTM's projection size (torch's `proj_size`); 0 without one."""
    return getattr(module, "proj_size", 0) or 0


def output_size(module: nn.Module) -> int:
    """The size of one direction's h_t: proj_size when the LSTM projects, else hidden_size."""
    return projection(module) or module.hidden_size
