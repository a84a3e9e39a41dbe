"""Recurrent cells run step by step, with torch's parameter names and semantics.

`Recurrent` is a drop-in for `nn.RNN`, `nn.LSTM` and `nn.GRU` that unrolls the
sequence in Python, one time step at a time, so that every hidden state h_t is
an ordinary tensor in the autograd graph. That is what lets rnnscope measure
dL/dh_t later; torch's fused kernels hide those states.

Parameter names, shapes and gate order are torch's (`weight_ih_l{k}`,
`weight_hh_l{k}`, `bias_ih_l{k}`, `bias_hh_l{k}`, `_reverse` for the backward
direction; LSTM gates i, f, g, o; GRU gates r, z, n), so a `state_dict` moves
between the two both ways.

The unrolled engine (`run_unrolled`) reads only those parameter names and the
usual attributes, so it runs torch's own modules with their own weights too.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

State = tuple[Tensor, ...]  # (h,) for Elman and GRU cells, (h, c) for LSTM
# step(gi, state, w_hh_t, b_hh) -> new state. gi = W_ih x_t + b_ih (+ b_hh where the
# cell folds it in), 2-D [rows, gates * H]; w_hh_t is W_hh transposed, [H, gates * H].
StepFn = Callable[[Tensor, State, Tensor, Tensor | None], State]

# The step functions use as few autograd ops as the algebra allows (addmm,
# addcmul, lerp): in an unrolled loop each op costs dispatch time at every step
# in both passes, which outweighs the arithmetic at the sizes RNNs train at.


def _rnn_tanh_step(gi: Tensor, state: State, w_hh_t: Tensor, b_hh: Tensor | None) -> State:
    return (torch.tanh(torch.addmm(gi, state[0], w_hh_t)),)


def _rnn_relu_step(gi: Tensor, state: State, w_hh_t: Tensor, b_hh: Tensor | None) -> State:
    return (torch.relu(torch.addmm(gi, state[0], w_hh_t)),)


def _lstm_step(gi: Tensor, state: State, w_hh_t: Tensor, b_hh: Tensor | None) -> State:
    h, c = state
    hidden = h.shape[1]
    # i and f are adjacent in torch's order: one sigmoid covers both.
    input_forget, g, o = torch.addmm(gi, h, w_hh_t).split([2 * hidden, hidden, hidden], dim=1)
    i, f = torch.sigmoid(input_forget).chunk(2, dim=1)
    c = torch.addcmul(f * c, i, torch.tanh(g))
    return torch.sigmoid(o) * torch.tanh(c), c


def _gru_step(gi: Tensor, state: State, w_hh_t: Tensor, b_hh: Tensor | None) -> State:
    h = state[0]
    hidden = h.shape[1]
    gh = torch.addmm(b_hh, h, w_hh_t) if b_hh is not None else h @ w_hh_t
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


CELLS: dict[str, CellSpec] = {
    "rnn_tanh": CellSpec("rnn_tanh", 1, ("h",), _rnn_tanh_step, nn.RNN),
    "rnn_relu": CellSpec("rnn_relu", 1, ("h",), _rnn_relu_step, nn.RNN),
    "lstm": CellSpec("lstm", 4, ("i", "f", "g", "o"), _lstm_step, nn.LSTM, has_cell_state=True),
    "gru": CellSpec("gru", 3, ("r", "z", "n"), _gru_step, nn.GRU, folds_recurrent_bias=False),
}

_TORCH_MODES = {"RNN_TANH": "rnn_tanh", "RNN_RELU": "rnn_relu", "LSTM": "lstm", "GRU": "gru"}


def _choices(names) -> str:
    return ", ".join(sorted(names))


def cell_name(module: nn.Module) -> str:
    """The rnnscope cell name of a `Recurrent` or a torch `nn.RNN`/`nn.LSTM`/`nn.GRU`."""
    if isinstance(module, Recurrent):
        return module.cell
    if isinstance(module, nn.RNNBase) and module.mode in _TORCH_MODES:
        if getattr(module, "proj_size", 0):
            raise ValueError(f"proj_size: LSTM projections are not supported "
                             f"(got proj_size={module.proj_size}); accepted: 0")
        return _TORCH_MODES[module.mode]
    raise TypeError(
        "module: expected rnnscope.Recurrent, nn.RNN, nn.LSTM or nn.GRU, "
        f"got {type(module).__name__}"
    )


def find_recurrent(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every recurrent layer in `model` (itself included), named as in `named_modules`."""
    return [
        (name, m) for name, m in model.named_modules() if isinstance(m, (Recurrent, nn.RNNBase))
    ]


def require_recurrent(model: nn.Module, field: str = "model") -> list[tuple[str, nn.Module]]:
    """`find_recurrent(model)`, refusing a model with none, or with a layer the unrolled
    engine cannot run (an LSTM with projections)."""
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


@dataclass(frozen=True)
class LayerWeights:
    """The four parameters of one layer and direction (biases None when bias=False)."""

    layer: int
    direction: int
    weight_ih: Tensor
    weight_hh: Tensor
    bias_ih: Tensor | None
    bias_hh: Tensor | None


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
            )


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
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        if cell not in CELLS:
            raise ValueError(f"cell: unknown {cell!r}; accepted: {_choices(CELLS)}")
        for field, value in (("input_size", input_size), ("hidden_size", hidden_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{field}: must be a positive integer, got {value!r}")
        if not isinstance(num_layers, int) or isinstance(num_layers, bool) or num_layers < 1:
            raise ValueError(f"num_layers: must be a positive integer, got {num_layers!r}")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)):
            raise ValueError(f"dropout: must be a number in [0, 1], got {dropout!r}")
        if not 0.0 <= dropout <= 1.0:
            raise ValueError(f"dropout: must be a number in [0, 1], got {dropout!r}")
        if dropout > 0 and num_layers == 1:
            warnings.warn(
                f"dropout={dropout} has no effect with num_layers=1: rnnscope, like torch, "
                "applies dropout between layers only",
                stacklevel=2,
            )
        self.cell = cell
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.batch_first = bool(batch_first)
        self.dropout = float(dropout)
        self.bias = bool(bias)
        self.bidirectional = bool(bidirectional)

        spec = CELLS[cell]
        factory = {"device": device, "dtype": dtype}
        directions = 2 if bidirectional else 1
        gate_size = spec.gates * hidden_size
        for layer in range(num_layers):
            layer_input = input_size if layer == 0 else hidden_size * directions
            for direction in range(directions):
                suffix = f"_l{layer}" + ("_reverse" if direction else "")
                # Registration order equals torch's, so state_dict keys line up.
                shapes = [("weight_ih", (gate_size, layer_input)),
                          ("weight_hh", (gate_size, hidden_size))]
                if bias:
                    shapes += [("bias_ih", (gate_size,)), ("bias_hh", (gate_size,))]
                for name, shape in shapes:
                    parameter = nn.Parameter(torch.empty(shape, **factory))
                    self.register_parameter(name + suffix, parameter)
        self.reset_parameters()

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
        kwargs = {}
        if spec.torch_class is nn.RNN:
            kwargs["nonlinearity"] = "relu" if self.cell == "rnn_relu" else "tanh"
        return _copy(self, lambda **same: spec.torch_class(**same, **kwargs))

    def extra_repr(self) -> str:
        text = f"{self.cell!r}, {self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            text += f", num_layers={self.num_layers}"
        for name, default in (("batch_first", False), ("dropout", 0.0), ("bias", True),
                              ("bidirectional", False)):
            if getattr(self, name) != default:
                text += f", {name}={getattr(self, name)}"
        return text


def from_torch(module: nn.Module) -> Recurrent:
    """A `Recurrent` equivalent to torch's `nn.RNN`/`nn.LSTM`/`nn.GRU`, with copied weights."""
    if not isinstance(module, (nn.RNN, nn.LSTM, nn.GRU)):
        raise TypeError(
            f"module: expected nn.RNN, nn.LSTM or nn.GRU, got {type(module).__name__}"
        )
    cell = cell_name(module)  # also refuses LSTM projections
    return _copy(module, lambda **same: Recurrent(cell, **same))


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


# tap(layer, direction) -> observe(t, h_t) or None: called with every hidden output h_t
# of that layer and direction as soon as it is computed (before anything uses it).
Observer = Callable[[int, Tensor], None]
Tap = Callable[[int, int], Observer | None]


def run_unrolled(module: nn.Module, input, state=None, *, tap: Tap | None = None):
    """Run a recurrent module step by step with its own weights.

    Works on `Recurrent` and on torch's `nn.RNN`/`nn.LSTM`/`nn.GRU` (their
    parameters and attributes have the same names), with torch's semantics.

    `tap` is how gradients through time are observed: for each layer and
    direction it may return `observe(t, h_t)`, which sees every hidden output
    h_t (the rows live at step t) while it is still an ordinary tensor of the
    graph; a tensor hook there receives the total dL/dh_t in backward.
    """
    spec = CELLS[cell_name(module)]
    params = list(layer_weights(module))
    reference = params[0].weight_ih
    directions = 2 if module.bidirectional else 1

    packed = isinstance(input, PackedSequence)
    if packed:
        data, batch_sizes, sorted_indices, unsorted_indices = input
        # One host read per call, not per step: the schedule of active rows.
        active = batch_sizes.tolist()
        batch, unbatched = active[0], False
    else:
        data = _check_input(module, input, reference)
        unbatched = data.dim() == 2
        if unbatched:
            data = data.unsqueeze(1)
        elif module.batch_first:
            data = data.transpose(0, 1)
        batch, sorted_indices, unsorted_indices = data.shape[1], None, None
        active = [batch] * data.shape[0]
    if not active:
        raise ValueError("input: the sequence is empty; expected at least one time step")

    initial = _initial_state(spec, module, state, batch, unbatched, sorted_indices, reference)
    layer_input = data
    finals: list[State] = []
    for layer in range(module.num_layers):
        outputs = []
        for direction in range(directions):
            weights = params[layer * directions + direction]
            start = tuple(s[layer * directions + direction] for s in initial)
            observe = tap(layer, direction) if tap is not None else None
            out, final = _scan(spec, layer_input, start, weights, active,
                               reverse=direction == 1, packed=packed, observe=observe)
            outputs.append(out)
            finals.append(final)
        layer_input = outputs[0] if directions == 1 else torch.cat(outputs, dim=-1)
        if module.dropout and module.training and layer < module.num_layers - 1:
            layer_input = F.dropout(layer_input, module.dropout, training=True)

    final_state = tuple(torch.stack([f[i] for f in finals]) for i in range(len(initial)))
    if packed:
        if unsorted_indices is not None:
            final_state = tuple(s.index_select(1, unsorted_indices) for s in final_state)
        output = PackedSequence(layer_input, batch_sizes, sorted_indices, unsorted_indices)
    else:
        output = layer_input
        if unbatched:
            output = output.squeeze(1)
            final_state = tuple(s.squeeze(1) for s in final_state)
        elif module.batch_first:
            output = output.transpose(0, 1)
    return output, (final_state if spec.has_cell_state else final_state[0])


def _scan(spec: CellSpec, layer_input: Tensor, state: State, weights: LayerWeights,
          active: list[int], *, reverse: bool, packed: bool,
          observe: Observer | None = None) -> tuple[Tensor, State]:
    """One layer, one direction, over all time steps.

    The input projection W_ih x_t + b_ih has no recurrence, so it is one matmul
    for the whole sequence; only W_hh h_{t-1} is computed step by step.

        x_1 .. x_T ──W_ih──> gi_1 .. gi_T        (one matmul, all steps)
                               │       │
        h_0 ──step──> h_1 ──step──> h_2 ... h_T  (W_hh, one step at a time)

    Packed input is time-major with the longest sequences first, so at step t
    the first `active[t]` rows are live. Rows past their end keep their state
    (the forward direction's final state is taken at each sequence's own last
    step); in the reverse direction a row waits at its initial state until its
    last step comes round, which is where its backward pass begins.
    """
    input_bias, step_bias = weights.bias_ih, weights.bias_hh
    if spec.folds_recurrent_bias and step_bias is not None:
        input_bias, step_bias = input_bias + step_bias, None
    projected = F.linear(layer_input, weights.weight_ih, input_bias)
    steps = projected.split(active) if packed else projected.unbind(0)
    w_hh_t = weights.weight_hh.t()
    batch = active[0]
    outputs: list[Tensor] = [None] * len(steps)  # type: ignore[list-item]
    order = range(len(steps) - 1, -1, -1) if reverse else range(len(steps))
    for t in order:
        rows = active[t]
        if rows == batch:
            state = spec.step(steps[t], state, w_hh_t, step_bias)
            outputs[t] = state[0]
        else:
            live = spec.step(steps[t], tuple(s[:rows] for s in state), w_hh_t, step_bias)
            state = tuple(
                torch.cat((new, old[rows:])) for new, old in zip(live, state, strict=True)
            )
            outputs[t] = live[0]
        if observe is not None:
            observe(t, outputs[t])
    return (torch.cat(outputs) if packed else torch.stack(outputs)), state


def _check_input(module: nn.Module, input, reference: Tensor) -> Tensor:
    if not isinstance(input, Tensor):
        raise TypeError(f"input: expected a Tensor or PackedSequence, got {type(input).__name__}")
    if input.dim() not in (2, 3):
        raise ValueError(
            f"input: expected 2-D (unbatched) or 3-D (batched) input, got {input.dim()}-D "
            f"of shape {tuple(input.shape)}"
        )
    if input.shape[-1] != module.input_size:
        raise ValueError(
            f"input: last dimension must equal input_size={module.input_size}, "
            f"got shape {tuple(input.shape)}"
        )
    if input.dtype != reference.dtype:
        raise TypeError(
            f"input: dtype {input.dtype} does not match the parameters' dtype {reference.dtype}"
        )
    return input


def _initial_state(spec: CellSpec, module: nn.Module, state, batch: int, unbatched: bool,
                   sorted_indices: Tensor | None, reference: Tensor) -> State:
    layers = module.num_layers * (2 if module.bidirectional else 1)
    shape = (layers, batch, module.hidden_size)
    count = 2 if spec.has_cell_state else 1
    if state is None:
        zeros = torch.zeros(shape, dtype=reference.dtype, device=reference.device)
        return (zeros,) * count
    if spec.has_cell_state:
        if not (isinstance(state, (tuple, list)) and len(state) == 2):
            raise TypeError("state: an LSTM expects a tuple (h_0, c_0)")
        parts = tuple(state)
    else:
        if not isinstance(state, Tensor):
            raise TypeError(f"state: a {spec.name} layer expects a Tensor h_0")
        parts = (state,)
    checked = []
    for name, part in zip(("h_0", "c_0")[: len(parts)], parts, strict=True):
        expected = shape[:1] + shape[2:] if unbatched else shape
        if tuple(part.shape) != expected:
            raise ValueError(
                f"state: expected {name} of shape {expected}, got {tuple(part.shape)}"
            )
        if unbatched:
            part = part.unsqueeze(1)
        if sorted_indices is not None:
            # Packed batches are sorted by length; the caller's state is in the caller's order.
            part = part.index_select(1, sorted_indices)
        checked.append(part)
    return tuple(checked)
