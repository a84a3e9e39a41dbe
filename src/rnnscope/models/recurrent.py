"""`Recurrent`: a drop-in for torch's `nn.RNN`, `nn.LSTM` and `nn.GRU` run step by step,
and what counts as a recurrent layer in a user's model.

`Recurrent` has torch's arguments, parameter names, shapes and forward semantics, and
unrolls the sequence in Python (`unrolled.py`), so that every hidden state h_t is an
ordinary tensor in the autograd graph: what lets rnnscope measure dL/dh_t. A
`state_dict` moves between the two both ways (`from_torch`, `Recurrent.to_torch`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch
from torch import nn

from rnnscope.checks import choice, integer, number
from rnnscope.models import unrolled
from rnnscope.models.cells import CELLS, output_size, projection


class Recurrent(nn.Module):
    """A multi-layer recurrent network run one time step at a time.

    Same arguments and forward semantics as torch's `nn.RNN`/`nn.LSTM`/`nn.GRU`:
    inputs `[T, B, I]` (`[B, T, I]` with `batch_first`), `[T, I]` without a batch,
    or a `PackedSequence`; `forward(x, state=None) -> (output, state)` where the
    LSTM state is `(h_n, c_n)`. `cell` is one of `rnn_tanh`, `rnn_relu`, `lstm`, `gru`.
    """

    def __init__(
        self,
        cell: str,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        batch_first: bool = False,
        dropout: float = 0.0,
        bias: bool = True,
        bidirectional: bool = False,
        proj_size: int = 0,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        _check_arguments(cell, input_size, hidden_size, num_layers, dropout, proj_size)
        self.cell = cell
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.batch_first = bool(batch_first)
        self.dropout = float(dropout)
        self.bias = bool(bias)
        self.bidirectional = bool(bidirectional)
        self.proj_size = proj_size
        self._register_parameters(device, dtype)
        self.reset_parameters()

    def _register_parameters(self, device, dtype) -> None:
        factory = {"device": device, "dtype": dtype}
        directions = 2 if self.bidirectional else 1
        gate_size = CELLS[self.cell].gates * self.hidden_size
        out = output_size(self)  # of h_t: proj_size when the LSTM projects
        for layer in range(self.num_layers):
            layer_input = self.input_size if layer == 0 else out * directions
            for direction in range(directions):
                suffix = f"_l{layer}" + ("_reverse" if direction else "")
                # Registration order equals torch's, so state_dict keys line up.
                shapes = [("weight_ih", (gate_size, layer_input)),
                          ("weight_hh", (gate_size, out))]
                if self.bias:
                    shapes += [("bias_ih", (gate_size,)), ("bias_hh", (gate_size,))]
                if self.proj_size:
                    shapes.append(("weight_hr", (self.proj_size, self.hidden_size)))
                for name, shape in shapes:
                    parameter = nn.Parameter(torch.empty(shape, **factory))
                    self.register_parameter(name + suffix, parameter)

    def reset_parameters(self) -> None:
        """torch's default: every parameter ~ U(-1/sqrt(H), 1/sqrt(H))."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def flatten_parameters(self) -> None:
        """Nothing to flatten: kept so code written for torch's modules runs unchanged."""

    def forward(self, input, state=None):
        return run_unrolled(self, input, state)

    def to_torch(self) -> nn.RNNBase:
        """An equivalent torch `nn.RNN`/`nn.LSTM`/`nn.GRU` holding copies of these weights."""
        spec = CELLS[self.cell]
        kwargs = {"proj_size": self.proj_size} if self.proj_size else {}
        if spec.torch_class is nn.RNN:
            kwargs["nonlinearity"] = "relu" if self.cell == "rnn_relu" else "tanh"
        return _copy(self, lambda **same: spec.torch_class(**same, **kwargs))

    def extra_repr(self) -> str:
        text = f"{self.cell!r}, {self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            text += f", num_layers={self.num_layers}"
        for name, default in (("batch_first", False), ("dropout", 0.0), ("bias", True),
                              ("bidirectional", False), ("proj_size", 0)):
            if getattr(self, name) != default:
                text += f", {name}={getattr(self, name)}"
        return text


def from_torch(module: nn.Module) -> Recurrent:
    """A `Recurrent` equivalent to torch's `nn.RNN`/`nn.LSTM`/`nn.GRU`, with copied weights."""
    if not isinstance(module, (nn.RNN, nn.LSTM, nn.GRU)):
        raise TypeError(
            f"module: expected nn.RNN, nn.LSTM or nn.GRU, got {type(module).__name__}"
        )
    cell = cell_name(module)
    return _copy(module, lambda **same: Recurrent(cell, **same, proj_size=projection(module)))


def _copy(module: nn.Module, build: Callable[..., nn.Module]) -> nn.Module:
    """`build` called with `module`'s shape, device and dtype, holding copies of its weights."""
    reference = next(module.parameters())
    same = {name: getattr(module, name) for name in (
        "input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout",
        "bidirectional")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the dropout warning was given when `module` was built
        copy = build(**same, device=reference.device, dtype=reference.dtype)
    copy.load_state_dict(module.state_dict())
    return copy.train(module.training)


def _check_arguments(cell, input_size, hidden_size, num_layers, dropout, proj_size) -> None:
    choice("cell", cell, CELLS)
    integer("input_size", input_size, 1)
    integer("hidden_size", hidden_size, 1)
    integer("num_layers", num_layers, 1)
    number("dropout", dropout, minimum=0.0, maximum=1.0)
    integer("proj_size", proj_size, 0)
    if proj_size and cell != "lstm":  # torch's rules for proj_size
        raise ValueError(f"proj_size: only an LSTM projects its state; accepted for a {cell} "
                         f"cell: 0, got {proj_size}")
    if proj_size:
        integer("proj_size", proj_size, 0, hidden_size - 1)
    if dropout > 0 and num_layers == 1:
        warnings.warn(
            f"dropout={dropout} has no effect with num_layers=1: rnnscope, like torch, "
            "applies dropout between layers only",
            stacklevel=3,
        )


_TORCH_MODES = {"RNN_TANH": "rnn_tanh", "RNN_RELU": "rnn_relu", "LSTM": "lstm", "GRU": "gru"}


def cell_name(module: nn.Module) -> str:
    """The rnnscope cell name of a `Recurrent` or a torch `nn.RNN`/`nn.LSTM`/`nn.GRU`."""
    if isinstance(module, Recurrent):
        return module.cell
    if isinstance(module, nn.RNNBase) and module.mode in _TORCH_MODES:
        return _TORCH_MODES[module.mode]
    raise TypeError(
        "module: expected rnnscope.Recurrent, nn.RNN, nn.LSTM or nn.GRU, "
        f"got {type(module).__name__}"
    )


def unsupported_reason(module: nn.Module) -> str | None:
    """Why the unrolled engine cannot run `module` (a subclass of nn.RNNBase with a mode of
    its own), or None when it can."""
    try:
        cell_name(module)
    except TypeError:
        return (f"is a recurrent layer of a kind the unrolled engine cannot run (mode "
                f"{getattr(module, 'mode', '?')!r}; it runs rnn_tanh, rnn_relu, lstm, gru)")
    return None


def find_recurrent(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every recurrent layer in `model` (itself included), named as in `named_modules`."""
    return [
        (name, m) for name, m in model.named_modules() if isinstance(m, (Recurrent, nn.RNNBase))
    ]


def require_recurrent(model: nn.Module, field: str = "model") -> list[tuple[str, nn.Module]]:
    """`find_recurrent(model)`, refusing a model with none, or with a layer the unrolled
    engine cannot run (a subclass of nn.RNNBase with a mode of its own)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"{field}: expected an nn.Module, got {type(model).__name__}")
    layers = find_recurrent(model)
    if not layers:
        raise ValueError(
            f"{field}: no recurrent layer found in {type(model).__name__} "
            "(expected rnnscope.Recurrent, nn.RNN, nn.LSTM or nn.GRU)"
        )
    for _, module in layers:
        cell_name(module)
    return layers


def run_unrolled(module: nn.Module, input, state=None, *, tap: unrolled.Tap | None = None):
    """Run a recurrent module step by step with its own weights.

    Works on `Recurrent` and on torch's `nn.RNN`/`nn.LSTM`/`nn.GRU` (their
    parameters and attributes have the same names), with torch's semantics.

    `tap` is how gradients through time are observed: for each layer and
    direction it may return `observe(t, state_t)`, which sees every state the
    layer produces (the rows live at step t) while it is still an ordinary
    tensor of the graph; a tensor hook there receives the total dL/dh_t in backward.
    """
    return unrolled.run(CELLS[cell_name(module)], module, input, state, tap=tap)
