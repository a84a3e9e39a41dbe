"""The recurrence as a dynamical system: step Jacobians, spectra, Lyapunov exponents.

Backprop through time multiplies the gradient by one step Jacobian
J_t = ds_t/ds_{t-1} per step, so dL/ds_0 = J_1^T ... J_T^T dL/ds_T. Whether
gradients vanish or explode is therefore a property of products of the J_t: their
singular values say what one step does, the spectral radius of W_hh says what the
linearised map does at the origin, and the Lyapunov exponents (the average log
growth rates of the product along the real trajectory) say what many steps do.
An exponent below 0 means some direction shrinks by exp(lambda) per step.

The state s is what the recurrence carries: h for Elman and GRU cells (S = H),
and (h, c) concatenated for LSTM (S = 2H): c is the LSTM's gradient highway, and
leaving it out would hide exactly the path that keeps gradients alive.

Time indexing: J[t] is the Jacobian of the step that reads x_t. In the forward
direction that is ds_t/ds_{t-1} (s_{-1} the initial state); in the reverse
direction, which runs from t = T-1 down to 0, it is ds_t/ds_{t+1} (s_T the
initial state). Either way J[t] lines up with `output[t]` of the module.

Everything here is a measurement: results are detached from the training graph.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rnnscope.models.cells import (
    CELLS,
    CellSpec,
    LayerWeights,
    Recurrence,
    State,
    layer_weights,
    output_size,
)
from rnnscope.models.init import matrix_spectral_radius, recurrence_blocks
from rnnscope.models.recurrent import cell_name, require_recurrent
from rnnscope.models.unrolled import initial_state, project, run_layers, scan

# Step Jacobians cost T x B x S^2 numbers: an estimate along a long sequence, or of a
# large state, takes the first steps that fit this many entries (256 MB in float64).
LYAPUNOV_BUDGET = 2**25
LYAPUNOV_SAMPLES = 2  # sequences of a batch used for an estimate after training


def step_jacobians(module: nn.Module, x: Tensor, state=None, *, layer: int = 0,
                   direction: int = 0) -> Tensor:
    """Jacobians ds_t/ds_{t-1} of one layer and direction along the trajectory driven by x.

    `module`: an rnnscope `Recurrent`, a torch `nn.RNN`/`nn.LSTM`/`nn.GRU`, or a model
    holding one (the first found is used). `x` and `state` follow the module's own
    conventions ([T, B, I], [B, T, I] with batch_first, [T, I] unbatched; h_0 or
    (h_0, c_0)). Returns [T, B, S, S], time-major, rows the new state and columns
    the previous one; S = H, or 2H for LSTM with the state ordered (h, c) (P + H with
    a projection of size P). An
    unbatched x gives B = 1; x is cast to the parameters' dtype. Dropout between
    layers is not applied: this is the Jacobian of the deterministic (eval-mode) map.
    """
    recurrent = _find(module, "module")
    spec = CELLS[cell_name(recurrent)]
    weights = _weights(recurrent, layer, direction)
    with torch.no_grad():
        data, initial = _prepare(recurrent, spec, x, state)
        active = [data.shape[1]] * data.shape[0]
        layer_input, _ = run_layers(spec, recurrent, data, initial, active, packed=False,
                                    training=False, layers=layer)
        projected, recurrence = project(spec, weights, layer_input)
        recurrence = Recurrence(*(None if w is None else w.detach() for w in (
            recurrence.w_hh_t, recurrence.bias, recurrence.w_hr_t)))
        previous = _previous_states(spec, projected, _start(initial, recurrent, layer, direction),
                                    recurrence, active, reverse=direction == 1)
    steps, batch, size = previous.shape
    parts = [output_size(recurrent), recurrent.hidden_size][: len(initial)]

    def step(gi: Tensor, s: Tensor) -> Tensor:
        return torch.cat(spec.step(gi, s.split(parts, dim=1), recurrence), dim=1)

    jacobians = _row_jacobians(step, projected.reshape(steps * batch, -1),
                               previous.reshape(steps * batch, size))
    return jacobians.reshape(steps, batch, size, size)


def _row_jacobians(step, gi: Tensor, previous: Tensor) -> Tensor:
    """[N, S, S]: the Jacobian of step(gi, s)[n] with respect to s[n], for every row n.

    Row (n, i) of a batch that repeats each row S times asks for row i of J_n: the
    seed e_i, pulled back through row (n, i), is e_i^T J_n. So one forward and one
    backward pass over N*S rows give every Jacobian, with no Python loop over steps
    or units (torch.func.jacrev does the same, but its first call costs seconds of
    imports).
    """
    rows, size = previous.shape
    seeds = torch.eye(size, dtype=previous.dtype, device=previous.device).repeat(rows, 1)
    # A measurement may be asked for under no_grad or inference_mode; it needs autograd.
    with torch.inference_mode(False), torch.enable_grad():
        state = previous.repeat_interleave(size, dim=0).requires_grad_()
        (pulled_back,) = torch.autograd.grad(step(gi.repeat_interleave(size, dim=0), state),
                                             state, seeds)
    return pulled_back.reshape(rows, size, size)


def jacobian_singular_values(jacobians: Tensor, k: int | None = None) -> Tensor:
    """The k largest singular values of each Jacobian, [T, B, S, S] -> [T, B, k], descending.

    The largest one bounds how much a single step can amplify a gradient; the
    smallest how much it can shrink one.
    """
    size = _check_square(jacobians, "jacobians")
    return torch.linalg.svdvals(jacobians)[..., : _check_k(k, size)]


def spectral_radius(module: nn.Module) -> dict[str, float]:
    """Spectral radius of W_hh for every layer and direction, computed in float64.

    Keys: `l{layer}` and `l{layer}_reverse`; gated cells stack one H x H block per
    gate, each a recurrence of its own, so they get one key per gate: `l0/f`, `l0/z`
    (gate names as in `CELLS[cell].gate_names`). Near the origin, a radius above 1
    means the linearised recurrence explodes; below 1, it forgets geometrically.
    """
    recurrent = _find(module, "module")
    spec = CELLS[cell_name(recurrent)]
    radii = {}
    for weights in layer_weights(recurrent):
        key = f"l{weights.layer}" + ("_reverse" if weights.direction else "")
        blocks = recurrence_blocks(weights, spec)
        for gate, block in zip(spec.gate_names, blocks, strict=True):
            radii[key if spec.gates == 1 else f"{key}/{gate}"] = matrix_spectral_radius(block)
    return radii


def lyapunov_from_jacobians(jacobians: Tensor, k: int | None = None, *,
                            warmup: int = 0) -> Tensor:
    """The k largest Lyapunov exponents of the products J[T-1] ... J[1] J[0], float64, [k].

    Benettin's QR method: Q_0 = I[:, :k]; each step Z = J_t Q_{t-1}, Q_t R_t = qr(Z),
    and log|diag R_t| is how much each of k orthogonal directions grew that step.
    Re-orthonormalising keeps the directions from collapsing onto the fastest one
    and the numbers from overflowing, however long the product. The first `warmup`
    steps only turn Q towards the stable directions; the rest are averaged (nats per
    step), then over the batch, and sorted descending. A singular step (a dead relu
    layer, say) gives -inf. The Jacobians are taken in the order they are applied:
    flip a reverse direction's along time first (`lyapunov` does).
    """
    size = _check_square(jacobians, "jacobians")
    k = _check_k(k, size)
    steps = jacobians.shape[0]
    if not _is_index(warmup, steps):
        raise ValueError(f"warmup: must be an integer in [0, {steps - 1}] (T={steps}), "
                         f"got {warmup!r}")
    jacobians = jacobians.detach().double()
    q = torch.eye(size, k, dtype=torch.float64, device=jacobians.device)
    q = q.expand(jacobians.shape[1], size, k)
    growth = torch.zeros(jacobians.shape[1], k, dtype=torch.float64, device=jacobians.device)
    for t in range(steps):
        # geqrf leaves R in the upper triangle. On small matrices it ran 100x faster than
        # linalg.qr on our 2-core CPU (300 QRs of [2, 6, 6]: 0.01 s against 1.3 s).
        packed, tau = torch.geqrf(jacobians[t] @ q)
        q = torch.linalg.householder_product(packed, tau)
        if t >= warmup:
            growth += packed.diagonal(dim1=-2, dim2=-1).abs().log()
    exponents = growth.mean(dim=0) / (steps - warmup)
    return exponents.sort(descending=True).values


def lyapunov(model: nn.Module, x: Tensor, k: int | None = None, *, state=None,
             layer: int = 0, direction: int = 0, warmup: int = 0) -> Tensor:
    """The k largest Lyapunov exponents (nats per step, descending) of one layer's state.

    Measured along the trajectory that x drives (see `step_jacobians` for `x`,
    `state`, `layer`, `direction` and the state S; k=None means all S), averaged
    over the batch. The top exponent is the rate at which the longest-lived
    gradient signal grows (> 0) or dies (< 0) per step; the ones below it say how
    many directions in state space keep information alive.
    """
    jacobians = step_jacobians(model, x, state, layer=layer, direction=direction)
    if direction == 1:
        jacobians = jacobians.flip(0)  # the reverse direction applies J[T-1] first
    return lyapunov_from_jacobians(jacobians, k, warmup=warmup)


def _find(model, argument: str) -> nn.Module:
    return require_recurrent(model, argument)[0][1]


def _weights(recurrent: nn.Module, layer: int, direction: int) -> LayerWeights:
    layers, directions = recurrent.num_layers, 2 if recurrent.bidirectional else 1
    if not _is_index(layer, layers):
        raise ValueError(f"layer: must be in 0..{layers - 1} for a {layers}-layer model, "
                         f"got {layer!r}")
    if not _is_index(direction, directions):
        accepted = "0 or 1" if directions == 2 else "0 (the model is not bidirectional)"
        raise ValueError(f"direction: must be {accepted}, got {direction!r}")
    return list(layer_weights(recurrent))[layer * directions + direction]


def _prepare(recurrent: nn.Module, spec: CellSpec, x, state) -> tuple[Tensor, State]:
    """x as [T, B, I] and the initial state as a tuple of [layers * directions, B, size]."""
    reference = recurrent.weight_hh_l0
    if not isinstance(x, Tensor) or x.dim() not in (2, 3) or x.shape[-1] != recurrent.input_size:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"x: expected [T, B, {recurrent.input_size}] (or unbatched "
                         f"[T, {recurrent.input_size}]), got {shape}")
    if x.shape[0 if x.dim() == 2 or not recurrent.batch_first else 1] == 0:
        raise ValueError("x: the sequence is empty; expected at least one time step")
    unbatched = x.dim() == 2
    data = x.unsqueeze(1) if unbatched else (x.transpose(0, 1) if recurrent.batch_first else x)
    data = data.detach().to(device=reference.device, dtype=reference.dtype)
    if state is not None:  # a measurement: detached, in the parameters' dtype
        state = tuple(_detached(p, data) for p in state) if spec.has_cell_state \
            else _detached(state, data)
    return data, initial_state(spec, recurrent, state, data.shape[1], unbatched, None,
                               reference)


def _detached(part, like: Tensor):
    return part.detach().to(like) if isinstance(part, Tensor) else part


def _start(initial: State, recurrent: nn.Module, layer: int, direction: int) -> State:
    index = layer * (2 if recurrent.bidirectional else 1) + direction
    return tuple(s[index] for s in initial)


def _previous_states(spec: CellSpec, projected: Tensor, start: State, recurrence: Recurrence,
                     active: list[int], *, reverse: bool) -> Tensor:
    """[T, B, S]: the state each step starts from (index t: the step reading x_t), (h, c)
    concatenated for LSTM, from one run of the engine's scan."""
    produced: dict[int, Tensor] = {}
    scan(spec, projected, start, recurrence, active, reverse=reverse, packed=False,
         observe=lambda t, state: produced.__setitem__(t, torch.cat(state, dim=-1)))
    previous: list[Tensor] = [None] * len(active)  # type: ignore[list-item]
    before = torch.cat(start, dim=-1)
    for t in range(len(active) - 1, -1, -1) if reverse else range(len(active)):
        previous[t], before = before, produced[t]
    return torch.stack(previous)


def state_size(module: nn.Module) -> int:
    """S: what the recurrence carries per sequence: H, or for an LSTM (h, c), 2H (P + H
    with a projection of size P)."""
    cell_state = CELLS[cell_name(module)].has_cell_state
    return output_size(module) + (module.hidden_size if cell_state else 0)


def lyapunov_steps(module: nn.Module, sequences: int, steps: int) -> int:
    """How many of `steps` time steps of `sequences` sequences a Lyapunov estimate may use
    within LYAPUNOV_BUDGET (at least one)."""
    return max(1, min(steps, LYAPUNOV_BUDGET // (sequences * state_size(module) ** 2)))


def _is_index(value, stop: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < stop


def _check_square(jacobians, argument: str) -> int:
    if not isinstance(jacobians, Tensor) or jacobians.dim() != 4 or (
            jacobians.shape[-1] != jacobians.shape[-2]) or jacobians.shape[0] == 0:
        shape = tuple(jacobians.shape) if isinstance(jacobians, Tensor) else type(jacobians)
        raise ValueError(f"{argument}: expected a [T, B, S, S] tensor with T >= 1, got {shape}")
    return jacobians.shape[-1]


def _check_k(k, size: int) -> int:
    if k is None:
        return size
    if not _is_index(k, size + 1) or k == 0:
        raise ValueError(f"k: must be an integer in 1..{size} (the state size) or None, got {k!r}")
    return k
