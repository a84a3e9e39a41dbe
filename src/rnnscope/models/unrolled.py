"""The unrolled engine: a recurrent stack run one time step at a time with its own weights.

torch's fused kernels hide the hidden states h_t; here every h_t is an ordinary
tensor of the autograd graph, which is what lets rnnscope measure dL/dh_t
(`flow/recording.py`) and take step Jacobians (`flow/dynamics.py`). The engine reads
only torch's parameter names and attributes (`cells.layer_weights`), so it runs
rnnscope's `Recurrent` and torch's `nn.RNN`/`nn.LSTM`/`nn.GRU` alike, with torch's
semantics: time-major or `batch_first`, unbatched, `PackedSequence`, initial states.

    run(spec, module, input, state, tap)   the whole module, torch's inputs and outputs
    run_layers(...)                        the stack on time-major data
    project(...) then scan(...)            one layer and direction
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from rnnscope.models.cells import (
    CellSpec,
    LayerWeights,
    Recurrence,
    State,
    layer_weights,
    output_size,
)

# tap(layer, direction) -> observe(t, state_t) or None. observe is called with the state
# each step t of that layer and direction produces ((h_t,) or (h_t, c_t), the rows live at
# step t) as soon as it is computed, before anything uses it; a tensor hook there
# receives the total dL/dh_t (or dL/dc_t) in backward.
Observer = Callable[[int, State], None]
Tap = Callable[[int, int], Observer | None]


@dataclass(frozen=True)
class Batch:
    """Input as the engine runs it: time-major data and the live rows at every step."""

    data: Tensor  # [T, B, I], or the packed data [sum of active, I]
    active: list[int]  # rows live at step t (packed: longest sequences first)
    packed: PackedSequence | None  # the caller's packed input, for its indices
    unbatched: bool
    batch_first: bool


def run(spec: CellSpec, module: nn.Module, input, state=None, *, tap: Tap | None = None):
    """`module(input, state)` run step by step: `(output, state)` as torch returns them."""
    reference = module.weight_ih_l0
    batch = batch_of(module, input, reference)
    sorted_indices = batch.packed.sorted_indices if batch.packed is not None else None
    initial = initial_state(spec, module, state, batch.active[0], batch.unbatched,
                            sorted_indices, reference)
    output, finals = run_layers(spec, module, batch.data, initial, batch.active,
                                packed=batch.packed is not None, training=module.training,
                                tap=tap)
    final_state = tuple(torch.stack([f[i] for f in finals]) for i in range(len(initial)))
    output, final_state = as_torch_returns(batch, output, final_state)
    return output, (final_state if spec.has_cell_state else final_state[0])


def run_layers(spec: CellSpec, module: nn.Module, data: Tensor, initial: State,
               active: list[int], *, packed: bool, training: bool,
               layers: int | None = None, tap: Tap | None = None) -> tuple[Tensor, list[State]]:
    """The first `layers` layers (default all) over time-major `data`: the top layer's
    output (directions concatenated) and the final state of every layer and direction.
    Dropout between layers applies only when `training`, as in torch."""
    params = list(layer_weights(module))
    directions = 2 if module.bidirectional else 1
    layers = module.num_layers if layers is None else layers
    layer_input, finals = data, []
    for layer in range(layers):
        outputs = []
        for direction in range(directions):
            index = layer * directions + direction
            observe = tap(layer, direction) if tap is not None else None
            projected, recurrence = project(spec, params[index], layer_input)
            out, final = scan(spec, projected, tuple(s[index] for s in initial), recurrence,
                              active, reverse=direction == 1, packed=packed, observe=observe)
            outputs.append(out)
            finals.append(final)
        layer_input = outputs[0] if directions == 1 else torch.cat(outputs, dim=-1)
        if module.dropout and training and layer < module.num_layers - 1:
            layer_input = F.dropout(layer_input, module.dropout, training=True)
    return layer_input, finals


def project(spec: CellSpec, weights: LayerWeights,
            layer_input: Tensor) -> tuple[Tensor, Recurrence]:
    """W_ih x_t + b_ih for every step at once (b_hh folded in where the cell allows), and
    what each step needs besides: W_hh (and an LSTM's W_hr) transposed, the recurrent
    bias where it could not be folded."""
    input_bias, step_bias = weights.bias_ih, weights.bias_hh
    if spec.folds_recurrent_bias and step_bias is not None:
        input_bias, step_bias = input_bias + step_bias, None
    w_hr_t = weights.weight_hr.t() if weights.weight_hr is not None else None
    return (F.linear(layer_input, weights.weight_ih, input_bias),
            Recurrence(weights.weight_hh.t(), step_bias, w_hr_t))


def scan(spec: CellSpec, projected: Tensor, state: State, recurrence: Recurrence,
         active: list[int], *, reverse: bool, packed: bool,
         observe: Observer | None = None) -> tuple[Tensor, State]:
    """One layer, one direction, over all time steps.

    The input projection has no recurrence, so it is one matmul for the whole
    sequence (`project`); only W_hh h_{t-1} is computed step by step.

        x_1 .. x_T ──W_ih──> gi_1 .. gi_T        (one matmul, all steps)
                               │       │
        h_0 ──step──> h_1 ──step──> h_2 ... h_T  (W_hh, one step at a time)

    Packed input is time-major with the longest sequences first, so at step t
    the first `active[t]` rows are live. Rows past their end keep their state
    (the forward direction's final state is taken at each sequence's own last
    step); in the reverse direction a row waits at its initial state until its
    last step comes round, which is where its backward pass begins.
    """
    steps = projected.split(active) if packed else projected.unbind(0)
    batch = active[0]
    outputs: list[Tensor] = [None] * len(steps)  # type: ignore[list-item]
    order = range(len(steps) - 1, -1, -1) if reverse else range(len(steps))
    for t in order:
        rows = active[t]
        if rows == batch:
            live = state = spec.step(steps[t], state, recurrence)
        else:
            live = spec.step(steps[t], tuple(s[:rows] for s in state), recurrence)
            state = tuple(
                torch.cat((new, old[rows:])) for new, old in zip(live, state, strict=True)
            )
        outputs[t] = live[0]
        if observe is not None:
            observe(t, live)
    return (torch.cat(outputs) if packed else torch.stack(outputs)), state


def batch_of(module: nn.Module, input, reference: Tensor) -> Batch:
    """`input` as the engines run it (time-major, batched), checked against `module`."""
    if isinstance(input, PackedSequence):
        # One host read per call, not per step: the schedule of live rows.
        active = input.batch_sizes.tolist()
        data, packed, unbatched = input.data, input, False
    else:
        data = _check_input(module, input, reference)
        unbatched = data.dim() == 2
        if unbatched:
            data = data.unsqueeze(1)
        elif module.batch_first:
            data = data.transpose(0, 1)
        active, packed = [data.shape[1]] * data.shape[0], None
    if not active:
        raise ValueError("input: the sequence is empty; expected at least one time step")
    return Batch(data, active, packed, unbatched, bool(module.batch_first))


def as_torch_returns(batch: Batch, output: Tensor, final_state: State):
    """Time-major `output` and engine-order `final_state` in the form torch returns them."""
    if batch.packed is not None:
        packed = batch.packed
        if packed.unsorted_indices is not None:
            final_state = tuple(s.index_select(1, packed.unsorted_indices) for s in final_state)
        return PackedSequence(output, packed.batch_sizes, packed.sorted_indices,
                              packed.unsorted_indices), final_state
    if batch.unbatched:
        return output.squeeze(1), tuple(s.squeeze(1) for s in final_state)
    return (output.transpose(0, 1) if batch.batch_first else output), final_state


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


def initial_state(spec: CellSpec, module: nn.Module, state, batch: int, unbatched: bool,
                  sorted_indices: Tensor | None, reference: Tensor) -> State:
    """The caller's initial state (or zeros) as a tuple of [layers * directions, B, size]
    (size: H, or an LSTM's proj_size for h), checked against the module, in the engine's
    row order."""
    layers = module.num_layers * (2 if module.bidirectional else 1)
    shapes = [(layers, batch, output_size(module)), (layers, batch, module.hidden_size)]
    shapes = shapes[: 2 if spec.has_cell_state else 1]
    if state is None:
        return tuple(torch.zeros(shape, dtype=reference.dtype, device=reference.device)
                     for shape in shapes)
    if spec.has_cell_state:
        if not (isinstance(state, (tuple, list)) and len(state) == 2):
            raise TypeError("state: an LSTM expects a tuple (h_0, c_0)")
        parts = tuple(state)
    else:
        if not isinstance(state, Tensor):
            raise TypeError(f"state: a {spec.name} layer expects a Tensor h_0")
        parts = (state,)
    checked = []
    for name, part, shape in zip(("h_0", "c_0"), parts, shapes, strict=False):
        expected = shape[:1] + shape[2:] if unbatched else shape
        if not isinstance(part, Tensor) or tuple(part.shape) != expected:
            got = tuple(part.shape) if isinstance(part, Tensor) else type(part).__name__
            raise ValueError(f"state: expected {name} of shape {expected}, got {got}")
        if unbatched:
            part = part.unsqueeze(1)
        if sorted_indices is not None:
            # Packed batches are sorted by length; the caller's state is in the caller's order.
            part = part.index_select(1, sorted_indices)
        checked.append(part)
    return tuple(checked)
