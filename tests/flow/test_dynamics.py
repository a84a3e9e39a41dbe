"""Step Jacobians, spectra and Lyapunov exponents against references computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import support
from rnnscope import CELLS, Recurrent, from_torch
from rnnscope.flow.dynamics import (
    LYAPUNOV_BUDGET,
    jacobian_singular_values,
    lyapunov,
    lyapunov_from_jacobians,
    lyapunov_steps,
    spectral_radius,
    state_size,
    step_jacobians,
)

F64 = torch.float64


def torch_module(cell: str, *args, **kwargs) -> nn.RNNBase:
    return support.torch_module(cell, *args, **kwargs, dtype=F64)


def reference_step(cell: str, x_t, s, w_ih, w_hh, b_ih, b_hh):
    """One step written out from torch's documented equations; s = h, or (h, c) for LSTM."""
    hidden = w_hh.shape[1]
    if cell.startswith("rnn_"):
        act = torch.tanh if cell == "rnn_tanh" else torch.relu
        return act(w_ih @ x_t + b_ih + w_hh @ s + b_hh)
    if cell == "lstm":
        h, c = s[:hidden], s[hidden:]
        i, f, g, o = (w_ih @ x_t + b_ih + w_hh @ h + b_hh).chunk(4)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.cat([torch.sigmoid(o) * torch.tanh(c), c])
    x_r, x_z, x_n = (w_ih @ x_t + b_ih).chunk(3)
    h_r, h_z, h_n = (w_hh @ s + b_hh).chunk(3)
    r, z = torch.sigmoid(x_r + h_r), torch.sigmoid(x_z + h_z)
    n = torch.tanh(x_n + r * h_n)
    return (1 - z) * n + z * s


def reference_jacobian(cell: str, x_t, s, weights):
    return torch.autograd.functional.jacobian(lambda s: reference_step(cell, x_t, s, *weights), s)


def reference_jacobians(cell, module, x, h0, c0, layer, direction):
    """Run every layer by hand, check it against torch, then differentiate one step at a time."""
    hidden, directions = module.hidden_size, 1 + module.bidirectional
    steps, batch = x.shape[:2]
    layer_input, finals = x, {}
    for lay in range(module.num_layers):
        outputs = []
        for d in range(directions):
            suffix = f"_l{lay}" + ("_reverse" if d else "")
            w = [getattr(module, name + suffix).detach()
                 for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
            index = lay * directions + d
            state = [h0[index, b] if c0 is None else torch.cat([h0[index, b], c0[index, b]])
                     for b in range(batch)]
            previous, out = [None] * steps, [None] * steps
            for t in (range(steps - 1, -1, -1) if d else range(steps)):
                previous[t] = list(state)
                state = [reference_step(cell, layer_input[t, b], state[b], *w)
                         for b in range(batch)]
                out[t] = torch.stack([s[:hidden] for s in state])
            finals[index] = torch.stack(state)
            outputs.append(torch.stack(out))
            if (lay, d) == (layer, direction):
                wanted = [[reference_jacobian(cell, layer_input[t, b], previous[t][b], w)
                           for b in range(batch)] for t in range(steps)]
        layer_input = torch.cat(outputs, dim=-1)

    expected_output, expected_state = module(x, h0 if c0 is None else (h0, c0))
    torch.testing.assert_close(layer_input, expected_output, rtol=1e-12, atol=1e-12)
    h_n = expected_state if c0 is None else expected_state[0]
    torch.testing.assert_close(torch.stack([finals[i][:, :hidden] for i in sorted(finals)]), h_n)
    if c0 is not None:
        c_n = torch.stack([finals[i][:, hidden:] for i in sorted(finals)])
        torch.testing.assert_close(c_n, expected_state[1])
    return torch.stack([torch.stack(row) for row in wanted])


LAYOUTS = {  # name: (num_layers, bidirectional, layer, direction)
    "single": (1, False, 0, 0),
    "layer0_of_2": (2, False, 0, 0),
    "layer1_of_2": (2, False, 1, 0),
    "reverse": (1, True, 0, 1),
    "layer1_reverse": (2, True, 1, 1),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("cell", sorted(CELLS))
def test_step_jacobians_match_autograd_of_the_hand_written_step(cell, layout):
    num_layers, bidirectional, layer, direction = LAYOUTS[layout]
    torch.manual_seed(0)
    module = torch_module(cell, 2, 3, num_layers=num_layers, bidirectional=bidirectional)
    x = torch.randn(4, 2, 2, dtype=F64)
    h0 = torch.randn(num_layers * (1 + bidirectional), 2, 3, dtype=F64)
    c0 = torch.randn_like(h0) if cell == "lstm" else None
    state = h0 if c0 is None else (h0, c0)

    expected = reference_jacobians(cell, module, x, h0, c0, layer, direction)
    for model in (module, from_torch(module)):
        actual = step_jacobians(model, x, state, layer=layer, direction=direction)
        size = 6 if cell == "lstm" else 3
        assert actual.shape == (4, 2, size, size)
        torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-12)


def test_input_layouts_and_containers_give_the_same_jacobians():
    torch.manual_seed(1)
    module = torch_module("lstm", 2, 4)
    x = torch.randn(5, 1, 2, dtype=F64)
    time_major = step_jacobians(module, x)
    unbatched = step_jacobians(module, x[:, 0])
    assert unbatched.shape == (5, 1, 8, 8)
    torch.testing.assert_close(unbatched, time_major)

    batch_first = torch_module("lstm", 2, 4, batch_first=True)
    batch_first.load_state_dict(module.state_dict())
    torch.testing.assert_close(step_jacobians(batch_first, x.transpose(0, 1)), time_major)

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(4, 1)
            self.rnn = module

    torch.testing.assert_close(step_jacobians(Model(), x), time_major)

    # A measurement: detached from the caller's graph, available under inference_mode.
    assert not step_jacobians(module, x.requires_grad_()).requires_grad
    with torch.inference_mode():
        torch.testing.assert_close(step_jacobians(module, x.detach()), time_major)


def test_reverse_jacobians_chain_to_the_gradient_of_the_reverse_output():
    """P = J[0] J[1] ... J[T-1] = d(reverse output at t=0) / d(reverse initial state)."""
    torch.manual_seed(2)
    module = torch_module("gru", 2, 3, bidirectional=True)
    x, h0 = torch.randn(6, 2, dtype=F64), torch.randn(2, 3, dtype=F64)
    jacobians = step_jacobians(module, x, h0, direction=1)[:, 0]
    product = torch.eye(3, dtype=F64)
    for t in range(6):
        product = product @ jacobians[t]

    def reverse_first_output(reverse_h0):
        return module(x, torch.stack([h0[0], reverse_h0]))[0][0, 3:]

    expected = torch.autograd.functional.jacobian(reverse_first_output, h0[1])
    torch.testing.assert_close(product, expected, rtol=1e-10, atol=1e-12)
    # With k=1 and Q_0 = e_1 the QR method measures log ||P e_1|| / T exactly.
    top = lyapunov(module, x, 1, state=h0, direction=1)
    assert top.item() == pytest.approx(expected[:, 0].norm().log().item() / 6, rel=1e-10)


def test_singular_values_match_numpy_and_k_limits_them():
    torch.manual_seed(3)
    jacobians = torch.randn(3, 2, 5, 5, dtype=F64)
    expected = np.linalg.svd(jacobians.numpy(), compute_uv=False)
    np.testing.assert_allclose(jacobian_singular_values(jacobians).numpy(), expected, rtol=1e-12)
    assert jacobian_singular_values(jacobians, k=2).shape == (3, 2, 2)
    np.testing.assert_allclose(jacobian_singular_values(jacobians, 2).numpy(), expected[..., :2])


def test_one_tanh_step_amplifies_no_more_than_the_norm_of_w_hh():
    torch.manual_seed(4)
    module = torch_module("rnn_tanh", 3, 6)
    x = 3 * torch.randn(10, 4, 3, dtype=F64)
    top = jacobian_singular_values(step_jacobians(module, x), k=1)
    assert torch.all(top <= torch.linalg.matrix_norm(module.weight_hh_l0.detach(), ord=2) + 1e-12)


@pytest.mark.parametrize("cell", sorted(CELLS))
def test_spectral_radius_matches_numpy_per_gate_block(cell):
    torch.manual_seed(5)
    module = Recurrent(cell, 2, 4, num_layers=2, bidirectional=True)
    radii = spectral_radius(module)
    spec = CELLS[cell]
    expected = {}
    for key, suffix in (("l0", "_l0"), ("l0_reverse", "_l0_reverse"), ("l1", "_l1"),
                        ("l1_reverse", "_l1_reverse")):
        blocks = getattr(module, "weight_hh" + suffix).detach().double().numpy().reshape(
            spec.gates, 4, 4)
        for gate, block in zip(spec.gate_names, blocks, strict=True):
            name = key if spec.gates == 1 else f"{key}/{gate}"
            expected[name] = float(np.abs(np.linalg.eigvals(block)).max())
    assert radii.keys() == expected.keys()
    for name, value in expected.items():
        assert isinstance(radii[name], float)
        assert radii[name] == pytest.approx(value, rel=1e-12)


def symmetric_with_eigenvalues(values, seed=0):
    generator = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(len(values), len(values), generator=generator, dtype=F64))
    return q @ torch.diag(torch.tensor(values, dtype=F64)) @ q.T


def test_constant_normal_jacobians_give_log_absolute_eigenvalues():
    values = [1.5, -1.2, 0.9, 0.6, -0.3, 0.1]
    jacobians = symmetric_with_eigenvalues(values).expand(300, 2, 6, 6)
    exponents = lyapunov_from_jacobians(jacobians, warmup=100)
    expected = torch.tensor(sorted((math.log(abs(v)) for v in values), reverse=True), dtype=F64)
    assert exponents.dtype == F64
    torch.testing.assert_close(exponents, expected, rtol=0, atol=1e-3)
    torch.testing.assert_close(lyapunov_from_jacobians(jacobians, 2, warmup=100), expected[:2],
                               rtol=0, atol=1e-3)


def test_constant_orthogonal_jacobians_give_zero_exponents():
    q, _ = torch.linalg.qr(torch.randn(5, 5, dtype=F64, generator=torch.Generator().manual_seed(6)))
    exponents = lyapunov_from_jacobians(q.expand(50, 3, 5, 5).float())
    torch.testing.assert_close(exponents, torch.zeros(5, dtype=F64), rtol=0, atol=1e-3)


def linear_relu_rnn(w_hh: torch.Tensor, bidirectional: bool = False) -> Recurrent:
    """Zero input weights and biases: with a nonnegative W_hh and a positive state, relu is
    the identity, so the model is the linear map h_t = W_hh h_{t-1}."""
    hidden = w_hh.shape[-1]
    model = Recurrent("rnn_relu", 2, hidden, bidirectional=bidirectional, dtype=F64)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(w_hh[int(name.endswith("reverse"))] if name.startswith("weight_hh") else 0)
    return model


def test_linear_model_with_known_eigenvalues():
    hidden, batch = 5, 3
    ones = torch.ones(hidden, hidden, dtype=F64) / hidden
    forward, reverse = 0.8 * torch.eye(hidden) + 0.3 * ones, 0.7 * torch.eye(hidden) + 0.35 * ones
    model = linear_relu_rnn(torch.stack([forward, reverse]), bidirectional=True)
    x = torch.randn(150, batch, 2, dtype=F64)
    h0 = 0.5 + torch.rand(2, batch, hidden, dtype=F64)
    for direction, (a, b) in enumerate(((0.8, 0.3), (0.7, 0.35))):
        exponents = lyapunov(model, x, state=h0, direction=direction, warmup=60)
        expected = torch.tensor([math.log(a + b)] + [math.log(a)] * (hidden - 1), dtype=F64)
        torch.testing.assert_close(exponents, expected, rtol=0, atol=1e-3)


def test_linear_model_with_a_permutation_matrix_conserves_volume():
    permutation = torch.eye(6, dtype=F64)[torch.tensor([3, 0, 5, 1, 2, 4])]  # orthogonal, >= 0
    model = linear_relu_rnn(permutation.unsqueeze(0))
    x, h0 = torch.randn(80, 2, 2, dtype=F64), 0.5 + torch.rand(1, 2, 6, dtype=F64)
    exponents = lyapunov(model, x, state=h0)
    torch.testing.assert_close(exponents, torch.zeros(6, dtype=F64), rtol=0, atol=1e-3)


def test_contracting_tanh_rnn_has_exponents_below_log_radius():
    torch.manual_seed(7)
    model = Recurrent("rnn_tanh", 3, 8)
    with torch.no_grad():
        nn.init.orthogonal_(model.weight_hh_l0)
        model.weight_hh_l0.mul_(0.5)  # normal, so its norm equals its spectral radius 0.5
    assert spectral_radius(model)["l0"] == pytest.approx(0.5)
    exponents = lyapunov(model, torch.randn(60, 4, 3), warmup=10)
    assert exponents.shape == (8,)
    assert torch.all(exponents < math.log(0.5) + 1e-6)


def test_exponents_are_sorted_and_sum_to_the_mean_log_determinant():
    torch.manual_seed(8)
    model = Recurrent("gru", 3, 6, num_layers=2, dtype=F64)
    x = torch.randn(40, 3, 3, dtype=F64)
    exponents = lyapunov(model, x, layer=1)
    assert torch.all(exponents[:-1] >= exponents[1:])
    log_det = torch.linalg.slogdet(step_jacobians(model, x, layer=1)).logabsdet
    assert exponents.sum().item() == pytest.approx(log_det.mean().item(), rel=1e-9)
    top = lyapunov(model, x, 2, layer=1)
    assert top.shape == (2,)
    assert torch.all(top[:-1] >= top[1:])


def test_lstm_state_includes_the_cell():
    model = Recurrent("lstm", 2, 3)
    assert lyapunov(model, torch.randn(5, 2, 2)).shape == (6,)


def test_model_without_recurrent_layer_is_rejected():
    x = torch.randn(3, 2, 2)
    for call in (lambda: step_jacobians(nn.Linear(2, 2), x),
                 lambda: lyapunov(nn.Linear(2, 2), x),
                 lambda: spectral_radius(nn.Sequential(nn.Linear(2, 2)))):
        with pytest.raises(ValueError, match="^(model|module): no recurrent layer"):
            call()


def test_bad_layer_direction_k_and_warmup_are_rejected():
    model, x = Recurrent("rnn_tanh", 2, 3, num_layers=2), torch.randn(4, 2, 2)
    with pytest.raises(ValueError, match=r"layer: must be in 0\.\.1"):
        step_jacobians(model, x, layer=2)
    with pytest.raises(ValueError, match="layer"):
        lyapunov(model, x, layer=-1)
    for direction in (1, 0.0):
        with pytest.raises(ValueError, match="direction"):
            step_jacobians(model, x, direction=direction)
    with pytest.raises(ValueError, match=r"k: must be an integer in 1\.\.3"):
        lyapunov(model, x, k=4)
    with pytest.raises(ValueError, match="k"):
        jacobian_singular_values(torch.zeros(2, 1, 3, 3), k=0)
    with pytest.raises(ValueError, match="warmup"):
        lyapunov(model, x, warmup=4)
    with pytest.raises(ValueError, match="x"):
        step_jacobians(model, torch.randn(4, 2, 5))
    with pytest.raises(ValueError, match="state"):
        step_jacobians(model, x, torch.zeros(1, 2, 3))
    with pytest.raises(ValueError, match="jacobians"):
        lyapunov_from_jacobians(torch.zeros(2, 1, 3, 4))


@pytest.mark.parametrize(("cell", "hidden", "state"), [("rnn_tanh", 64, 64), ("lstm", 128, 256),
                                                       ("gru", 300, 300)])
def test_one_lyapunov_budget_bounds_the_steps_of_every_estimate(cell, hidden, state):
    module = Recurrent(cell, 2, hidden)
    assert state_size(module) == state
    for sequences, steps in [(1, 10), (2, 200), (2, 100_000), (64, 1000)]:
        used = lyapunov_steps(module, sequences, steps)
        assert 1 <= used <= steps
        assert used == steps or used * sequences * state**2 <= LYAPUNOV_BUDGET
        assert used == 1 or (used + 1) * sequences * state**2 > LYAPUNOV_BUDGET or used == steps
