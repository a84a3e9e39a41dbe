"""`swap_cell(model, cell)`: put a gated (or another) cell where a model's recurrent layers are.

The remedy "switch to an LSTM" applied to the user's own model: every recurrent layer
(torch's `nn.RNN`/`nn.LSTM`/`nn.GRU`, rnnscope's `Recurrent`) is replaced in its parent
by a layer of the new cell with the same sizes and options, on the same device and
dtype, freshly initialised (torch's default init; apply a scheme with `init_` after).
The replaced layers' weights cannot carry over: the new cell has other gates.

An LSTM's state is a pair (h, c) where the others' is one tensor: code that passes an
initial state to the replaced layer, or reads its final state, has to take the pair
(or swap to "gru", whose state is one tensor as an Elman RNN's is). Build the optimiser
again afterwards: the new layers' parameters are new tensors.
"""

from __future__ import annotations

import warnings

from torch import nn

from rnnscope.checks import choice
from rnnscope.models.cells import CELLS
from rnnscope.models.recurrent import Recurrent, cell_name, find_recurrent


def swap_cell(model: nn.Module, cell: str) -> list[str]:
    """Replace every recurrent layer of `model` that is not already of `cell` (one of
    rnn_tanh, rnn_relu, lstm, gru) in place; returns what was replaced, one line each
    ("encoder.rnn: RNN(2, 64) -> LSTM(2, 64)"). `model` itself may not be the layer:
    a layer has to sit in a parent module to be replaced."""
    choice("cell", cell, CELLS)
    replaced = []
    for name, module in find_recurrent(model):
        if not name:
            raise ValueError("model: the model is itself a recurrent layer; build the new "
                             f"layer directly (e.g. nn.{CELLS[cell].torch_class.__name__})")
        if cell_name(module) == cell or getattr(module, "proj_size", 0):
            continue  # already that cell; an LSTM's projection has no counterpart elsewhere
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        new = _like(module, cell)
        setattr(parent, child, new)
        replaced.append(f"{name}: {_short(module)} -> {_short(new)}")
    return replaced


def _like(module: nn.Module, cell: str) -> nn.Module:
    """A layer of `cell` with `module`'s sizes, options, device and dtype."""
    reference = next(module.parameters())
    same = {key: getattr(module, key) for key in (
        "input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout",
        "bidirectional")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dropout with one layer: as the original had it
        if isinstance(module, Recurrent):
            new = Recurrent(cell, **same, device=reference.device, dtype=reference.dtype)
        else:
            torch_class = CELLS[cell].torch_class
            extra = {"nonlinearity": cell[4:]} if torch_class is nn.RNN else {}
            new = torch_class(**same, **extra, device=reference.device, dtype=reference.dtype)
    return new.train(module.training)


def _short(module: nn.Module) -> str:
    kind = module.cell if isinstance(module, Recurrent) else type(module).__name__
    return f"{kind}({module.input_size}, {module.hidden_size})"
