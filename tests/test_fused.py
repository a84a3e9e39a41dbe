"""The fused LSTM scan (rnnscope.fused) against autograd through the unrolled step."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import rnnscope
from rnnscope import fused
from rnnscope.cells import CELLS, run_unrolled


def reference(gi, h0, c0, weight_hh, reverse=False):
    """The same scan through the unrolled engine's step, every h_t hooked."""
    step, state, outputs, hooked = CELLS["lstm"].step, (h0, c0), {}, {}
    order = range(gi.shape[0] - 1, -1, -1) if reverse else range(gi.shape[0])
    for t in order:
        state = step(gi[t], state, weight_hh.t(), None)
        outputs[t] = state[0]
        state[0].register_hook(lambda grad, t=t: hooked.__setitem__(t, grad))
    output = torch.stack([outputs[t] for t in range(gi.shape[0])])
    return output, state, hooked


def leaves(steps, batch, hidden, seed):
    generator = torch.Generator().manual_seed(seed)

    def draw(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=generator, dtype=torch.float64)
                ).requires_grad_()

    return (draw(steps, batch, 4 * hidden), draw(batch, hidden), draw(batch, hidden),
            draw(4 * hidden, hidden, scale=hidden ** -0.5))


def loss_of(output, state, weights):
    """A loss that reaches every output, the final h and the final c."""
    return (output * weights).sum() + state[0].pow(2).sum() + 0.5 * state[1].sum()


@settings(max_examples=25, deadline=None)
@given(steps=st.integers(1, 9), batch=st.integers(1, 4), hidden=st.integers(1, 5),
       reverse=st.booleans(), seed=st.integers(0, 2**16))
def test_gradients_and_flow_equal_autograd_through_the_unrolled_step(steps, batch, hidden,
                                                                     reverse, seed):
    inputs = leaves(steps, batch, hidden, seed)
    weights = torch.randn(steps, batch, hidden, dtype=torch.float64,
                          generator=torch.Generator().manual_seed(seed + 1))
    output, state, hooked = reference(*inputs, reverse=reverse)
    expected = torch.autograd.grad(loss_of(output, state, weights), inputs)

    seen = []
    output2, state2 = fused.lstm_sequence(*inputs, reverse=reverse, on_grad=seen.append)
    torch.testing.assert_close(output2, output, rtol=0, atol=1e-12)
    torch.testing.assert_close(state2[1], state[1], rtol=0, atol=1e-12)
    got = torch.autograd.grad(loss_of(output2, state2, weights), inputs)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert len(seen) == 1 and seen[0].shape == (steps, batch, hidden)
    torch.testing.assert_close(seen[0], torch.stack([hooked[t] for t in range(steps)]),
                               rtol=1e-10, atol=1e-12)


def test_gradcheck():
    inputs = leaves(4, 2, 3, seed=0)
    assert torch.autograd.gradcheck(
        lambda gi, h0, c0, w: fused.lstm_sequence(gi, h0, c0, w)[0], inputs)


def test_only_part_of_the_outputs_used():
    """Gradients that autograd leaves as None (final c unused, h_T unused) are zeros."""
    inputs = leaves(6, 3, 4, seed=1)
    output, state, _ = reference(*inputs)
    expected = torch.autograd.grad(output[2].sum(), inputs)
    got = torch.autograd.grad(fused.lstm_sequence(*inputs)[0][2].sum(), inputs)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_twice_differentiable_is_refused():
    inputs = leaves(3, 2, 2, seed=2)
    output, _ = fused.lstm_sequence(*inputs)
    (grad,) = torch.autograd.grad(output.pow(2).sum(), inputs[3], create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|twice"):
        grad.sum().backward()


def test_record_uses_the_fused_scan_for_lstms_and_matches_torch(monkeypatch):
    calls = []
    original = fused.LSTMSequence.apply
    monkeypatch.setattr(fused.LSTMSequence, "apply",
                        lambda *args: calls.append(1) or original(*args))
    torch.manual_seed(0)
    model = nn.LSTM(3, 5, num_layers=2, bidirectional=True).double()
    x = torch.randn(7, 4, 3, dtype=torch.float64)

    # Reference: dL/dh_t through the unrolled engine with a hook on every h_t.
    hooked: dict = {}

    def tap(layer, direction):
        return lambda t, h: h.register_hook(
            lambda grad: hooked.__setitem__((layer, direction, t), grad))

    output, _ = run_unrolled(model, x, tap=tap)
    output.pow(2).sum().backward()
    expected_grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()

    with rnnscope.record(model) as rec:
        output, _ = model(x)
        output.pow(2).sum().backward()
    assert len(calls) == 4  # 2 layers x 2 directions
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected_grads[name], rtol=1e-10, atol=1e-12)
    for row, (layer, direction) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        norms = torch.stack([hooked[(layer, direction, t)].norm(dim=-1).mean()
                             for t in range(7)])
        torch.testing.assert_close(rec.flow.norms[row], norms, rtol=1e-10, atol=1e-14)


def test_packed_input_and_other_cells_keep_the_step_by_step_path(monkeypatch):
    calls = []
    monkeypatch.setattr(fused.LSTMSequence, "apply", lambda *args: calls.append(1))
    model = nn.GRU(2, 3)
    with rnnscope.record(model) as rec:
        model(torch.randn(5, 2, 2))[0].sum().backward()
    packed = nn.utils.rnn.pack_padded_sequence(torch.randn(5, 2, 2), [5, 3])
    lstm = nn.LSTM(2, 3)
    with rnnscope.record(lstm) as rec:
        lstm(packed)[0].data.sum().backward()
    assert calls == [] and rec.flow.norms.shape == (1, 5)
