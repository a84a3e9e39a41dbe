"""torch's fused kernels run layer by layer, with the gradient through the recurrence
made visible: how `record` sees dL/dh_t of an Elman RNN or an LSTM at native speed.

A fused kernel (oneDNN's LSTM on a CPU, cuDNN on a GPU) keeps h_1 .. h_T inside: autograd
sees one node for the whole sequence, so no hook can reach dL/dh_t. But h_{t-1} enters
step t only through the pre-activation

    pre_t = W_ih x_t + W_hh h_{t-1} + b.

Append zero input channels e_t (one per unit of h) and the block W_hh to W_ih:

    pre_t = [W_ih  W_hh] [x_t; e_t] + W_hh h_{t-1} + b      (e_t = 0: the same pre_t)

and the kernel's own input gradient holds dL/de_t = W_hh^T dL/dpre_t: exactly the part of
dL/dh_{t-1} that flows through the recurrence, from one large matrix product over all
steps. The rest of dL/dh_{t-1} is the gradient of h_{t-1} as an output (the layer above,
the loss), which a hook on the output sees; at the last step the final state's gradient
takes the place of the recurrence:

    dL/dh_t = dL/dout_t + dL/de_{t+1}     (t < T)        reverse direction: dL/de_{t-1}
    dL/dh_T = dL/dout_T + dL/dh_n                         ... and dL/dh_n at t = 1

Stacks run one layer at a time, so every layer's output is a tensor of the graph; a
bidirectional layer gets e channels for each direction, each direction's W_hh block
beside zeros in the other's. The GRU is not run this way: its reset gate multiplies
W_hn h_{t-1} + b_hn, which no input channel can reproduce.

An LSTM's c_{t-1} never meets a matrix, so its dL/dc_t comes from dL/dh_t instead. The
forget and output gates are recomputed from the layer's input and its outputs h_t in one
matrix product (pre_t needs only x_t and h_{t-1}), tanh c_t = h_t / o_t, and then, from
the direction's last step back,

    dL/dc_t = dL/dh_t * o_t * (1 - tanh^2 c_t) + dL/dc_{t+1} * f_{t+1}
    dL/dc_T = dL/dh_T * o_T * (1 - tanh^2 c_T) + dL/dc_n

one fused multiply-add per step (`lstm_cells`, `cell_gradients`; not for projections or
packed input, where the unrolled engine runs).

    run(module, input, state, probe)   torch's inputs and outputs, as `module(input, state)`
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import NamedTuple, Protocol

import torch
import torch.nn.functional as F
from torch import _VF, Tensor, nn

from rnnscope.models.cells import CellSpec, LayerWeights, layer_weights, output_size
from rnnscope.models.unrolled import Batch, State, as_torch_returns, batch_of, initial_state

# The cells whose recurrence enters only through W_hh h_{t-1} (see the module docstring).
FUSED_CELLS = ("rnn_tanh", "rnn_relu", "lstm")
_KERNELS = {"rnn_tanh": _VF.rnn_tanh, "rnn_relu": _VF.rnn_relu, "lstm": _VF.lstm}


class LayerProbe(Protocol):
    """What observes one layer (all its directions) of a fused run."""

    def recurrent(self, grad: Tensor) -> None:
        """dL/de of the layer in backward: [T, B, D * P] time-major, or [N, D * P] packed
        (D directions of P units each, in the layout of the layer's output)."""

    def ran(self, output: Tensor, final: State, cells: Callable[[int], Cells] | None) -> None:
        """The layer's output ([T, B, D * P], or packed data) and its final state (each
        [D, B, P], packed rows in sorted order), as soon as the kernel returns them; an
        LSTM's `cells(direction)` recomputes what its dL/dc_t needs (`lstm_cells`)."""


# probe(layer, batch) -> the LayerProbe of that layer; `batch` is the input as the engine runs
# it (time-major; packed: the live rows per step, longest sequences first).
Probe = Callable[[int, Batch], LayerProbe]


def run(spec: CellSpec, module: nn.RNNBase, input, state=None, *, probe: Probe):
    """`module(input, state)` through torch's fused kernel, one layer at a time, with the
    recurrence exposed: `probe(layer, batch)` returns what observes each layer. Same outputs as
    the module (to rounding) and the same gradients for every parameter and input."""
    if spec.name not in FUSED_CELLS:
        raise ValueError(f"cell: the fused engine runs {', '.join(FUSED_CELLS)}; "
                         f"got {spec.name}")
    reference = module.weight_ih_l0
    batch = batch_of(module, input, reference)
    sorted_indices = batch.packed.sorted_indices if batch.packed is not None else None
    initial = initial_state(spec, module, state, batch.active[0], batch.unbatched,
                            sorted_indices, reference)
    params = list(layer_weights(module))
    directions = 2 if module.bidirectional else 1
    layer_input, finals = batch.data, []
    for layer in range(module.num_layers):
        here = slice(layer * directions, (layer + 1) * directions)
        output, final = _layer(spec, module, params[here], layer_input,
                               tuple(s[here] for s in initial), batch, probe(layer, batch))
        finals.append(final)
        layer_input = output
        if module.dropout and module.training and layer < module.num_layers - 1:
            layer_input = F.dropout(output, module.dropout, training=True)
    final_state = tuple(torch.cat(parts) for parts in zip(*finals, strict=True))
    output, final_state = as_torch_returns(batch, layer_input, final_state)
    return output, (final_state if spec.has_cell_state else final_state[0])


def _layer(spec: CellSpec, module: nn.RNNBase, weights: list[LayerWeights], layer_input: Tensor,
           hx: State, batch: Batch, probe: LayerProbe) -> tuple[Tensor, State]:
    """One layer, all directions, in one kernel call on the input with its e channels."""
    width = output_size(module)
    directions = len(weights)
    # Every tensor the kernel's node depends on is an input of the probe's node too, so a
    # backward pass that reaches the layer (autograd.grad with `inputs` included) runs it.
    anchors = [t for w in weights for t in (w.weight_ih, w.weight_hh, w.bias_ih, w.bias_hh,
                                            w.weight_hr) if t is not None] + list(hx)
    augmented = _Recurrence.apply(layer_input, directions * width, probe, *anchors)
    flat = []
    for direction, w in enumerate(weights):
        # [W_ih | W_hh of this direction | zeros for the other's e channels], in the
        # order of the output's directions.
        blocks = [w.weight_ih] + [w.weight_hh if k == direction else
                                  w.weight_hh.new_zeros(w.weight_hh.shape)
                                  for k in range(directions)]
        flat += [torch.cat(blocks, dim=1), w.weight_hh]
        flat += [w.bias_ih, w.bias_hh] if w.bias_ih is not None else []
        flat += [w.weight_hr] if w.weight_hr is not None else []
    state = list(hx) if spec.has_cell_state else hx[0]
    arguments = (flat, weights[0].bias_ih is not None, 1, 0.0, module.training, directions == 2)
    with warnings.catch_warnings():
        # cuDNN warns once that these weights are not one flat buffer: they are built anew
        # for each call, which is this engine's point.
        warnings.filterwarnings("ignore", message=".*contiguous chunk of memory.*")
        if batch.packed is not None:
            output, *final = _KERNELS[spec.name](augmented, batch.packed.batch_sizes, state,
                                                 *arguments)
        else:
            output, *final = _KERNELS[spec.name](augmented, state, *arguments, False)
    cells = None
    if spec.has_cell_state and batch.packed is None and weights[0].weight_hr is None:
        # Detached: what the probe keeps must not hold the graph (a cycle through
        # autograd's nodes that Python's collector cannot see would keep every step's).
        kept_input, kept_output = layer_input.detach(), output.detach()
        h0 = hx[0].detach()

        def cells(direction: int) -> Cells:
            return lstm_cells(weights[direction], kept_input, h0[direction],
                              kept_output[..., direction * width:(direction + 1) * width],
                              reverse=direction == 1)
    probe.ran(output, tuple(final), cells)
    return output, tuple(final)


class Cells(NamedTuple):
    """What dL/dc_t needs of an LSTM direction, each [T, B, P]: the forget gate f_t and
    dh_t/dc_t = o_t * (1 - tanh^2 c_t)."""

    forget: Tensor
    slope: Tensor


@torch.no_grad()
def lstm_cells(weights: LayerWeights, layer_input: Tensor, h0: Tensor, h: Tensor,
               reverse: bool) -> Cells:
    """f_t and o_t * (1 - tanh^2 c_t) of one LSTM direction from its time-major input
    [T, B, I], initial h0 [B, P] and outputs h [T, B, P]: the forget and output gates in
    one matrix product over all steps (h_{t-1} is known), and tanh c_t = h_t / o_t, so
    that c_t itself is never needed (where o_t is 0, h_t is too and the slope is 0)."""
    h = h.detach()
    if reverse:
        previous = torch.cat([h[1:], h0.detach().unsqueeze(0)])
    else:
        previous = torch.cat([h0.detach().unsqueeze(0), h[:-1]])
    units = h.shape[-1]
    gates = slice(units, 2 * units), slice(3 * units, 4 * units)  # f and o of i, f, g, o
    both = torch.cat([weights.weight_ih, weights.weight_hh], dim=1).detach()
    weight = torch.cat([both[gate] for gate in gates])
    bias = None
    if weights.bias_ih is not None:
        summed = (weights.bias_ih + weights.bias_hh).detach()
        bias = torch.cat([summed[gate] for gate in gates])
    forget, out = F.linear(torch.cat([layer_input.detach(), previous], dim=-1), weight,
                           bias).sigmoid_().chunk(2, dim=-1)
    tanh_c = torch.where(out > 0, h / out, 0.0).clamp_(-1.0, 1.0)
    return Cells(forget, out * (1 - tanh_c.square()))


def cell_gradients(cells: Cells, dh: Tensor, dc_n: Tensor, reverse: bool) -> Tensor:
    """dL/dc_t [T, B, P] of one LSTM direction from its total dL/dh_t and dL/dc_n (see the
    module docstring): one fused multiply-add per step, in the order opposite to the
    direction's."""
    own = dh * cells.slope
    dc = torch.empty_like(own)
    steps = len(dc)
    last = 0 if reverse else steps - 1  # the direction's last step: c_n's
    torch.add(own[last], dc_n, out=dc[last])
    for t in (range(1, steps) if reverse else range(steps - 2, -1, -1)):
        after = t - 1 if reverse else t + 1  # the step c_t feeds
        torch.addcmul(own[t], dc[after], cells.forget[after], out=dc[t])
    return dc


class _Recurrence(torch.autograd.Function):
    """x -> [x, 0]: the e channels. Its backward hands their gradient, W_hh^T dL/dpre_t, to
    the probe and passes x's own on; the anchors get none (they are there so that every
    backward pass that reaches the kernel reaches this node too)."""

    @staticmethod
    def forward(ctx, x: Tensor, width: int, probe: LayerProbe, *anchors: Tensor) -> Tensor:
        ctx.probe, ctx.split, ctx.anchors = probe, x.shape[-1], len(anchors)
        return torch.cat([x, x.new_zeros(*x.shape[:-1], width)], dim=-1)

    @staticmethod
    def backward(ctx, grad: Tensor):
        ctx.probe.recurrent(grad[..., ctx.split:])
        x_grad = grad[..., : ctx.split] if ctx.needs_input_grad[0] else None
        return (x_grad, None, None, *([None] * ctx.anchors))


def follows_cells(module: nn.Module) -> bool:
    """Whether `run` also gives an LSTM's dL/dc_t on `module` (no projections; not packed
    input either, which the caller checks per call)."""
    return getattr(module, "proj_size", 0) == 0


def runs_fused(module: nn.Module, cell: str) -> bool:
    """Whether `run` takes `module`: torch's own nn.RNN or nn.LSTM (rnnscope's `Recurrent`
    is the unrolled engine by the user's choice, and stays so)."""
    return isinstance(module, nn.RNNBase) and cell in FUSED_CELLS


def faster(module: nn.Module, cell: str) -> bool:
    """Whether `run` beats the unrolled engine on `module`: an LSTM (oneDNN's kernel on a
    CPU, cuDNN's on a GPU), and an Elman RNN on a GPU. torch's CPU Elman "kernel" is a
    loop of steps in C++, slower than the unrolled one (BENCHMARKS.md)."""
    if not runs_fused(module, cell):
        return False
    return cell == "lstm" or module.weight_ih_l0.device.type == "cuda"
