"""Truncated BPTT: window >= T equals full BPTT; shorter windows equal torch modules cut by hand."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from rnnscope import CELLS, Recurrent
from rnnscope.flow.bptt import truncated_bptt, window_bounds


def every_step_loss(weights):
    def loss_fn(output, start, stop):
        return (output * weights[start:stop]).sum()
    return loss_fn


@settings(max_examples=40, deadline=None)
@given(cell=st.sampled_from(sorted(CELLS)), steps=st.integers(1, 12), extra=st.integers(0, 5),
       layers=st.integers(1, 2), seed=st.integers(0, 2**16))
def test_window_at_least_t_equals_full_bptt(cell, steps, extra, layers, seed):
    torch.manual_seed(seed)
    model = Recurrent(cell, 3, 4, num_layers=layers, dtype=torch.float64)
    x = torch.randn(steps, 2, 3, dtype=torch.float64)
    weights = torch.randn(steps, 2, 4, dtype=torch.float64)
    full_loss = (model(x)[0] * weights).sum()
    full_loss.backward()
    full = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    result = truncated_bptt(model, x, every_step_loss(weights), window=steps + extra)
    assert result.windows == [(0, steps)]
    torch.testing.assert_close(result.loss, full_loss.detach(), rtol=1e-12, atol=0)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, full[name], rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("cell", sorted(CELLS))
@pytest.mark.parametrize("window", [1, 3, 5])
def test_short_windows_equal_torch_cut_by_hand(cell, window):
    torch.manual_seed(0)
    ours = Recurrent(cell, 3, 4, num_layers=2, batch_first=True, dtype=torch.float64)
    reference = ours.to_torch()
    x = torch.randn(2, 11, 3, dtype=torch.float64)
    weights = torch.randn(2, 11, 4, dtype=torch.float64)

    state = None
    for start in range(0, 11, window):
        stop = min(start + window, 11)
        if state is not None:
            state = tuple(s.detach() for s in state) if cell == "lstm" else state.detach()
        output, state = reference(x[:, start:stop], state)
        (output * weights[:, start:stop]).sum().backward()

    def loss_fn(output, start, stop):
        return (output * weights[:, start:stop]).sum()

    result = truncated_bptt(ours, x, loss_fn, window=window, batch_first=True,
                            record_flow=True)
    assert len(result.windows) == -(-11 // window)
    for (name, p), q in zip(ours.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-10, atol=1e-14, msg=name)
    final = result.state if cell == "lstm" else (result.state,)
    assert all(not s.requires_grad for s in final)
    assert all(f is not None and f.steps == stop - start
               for f, (start, stop) in zip(result.flows, result.windows, strict=True))


def test_windows_without_loss_still_carry_state():
    torch.manual_seed(0)
    model = nn.LSTM(2, 3, dtype=torch.float64)
    x = torch.randn(10, 1, 2, dtype=torch.float64)

    def last_step_only(output, start, stop):
        return output[-1].sum() if stop == 10 else None

    result = truncated_bptt(model, x, last_step_only, window=4)
    full_output, _ = model(x)
    torch.testing.assert_close(result.loss, full_output[-1].sum().detach())


@pytest.mark.parametrize("window", [0, -2, 2.5, True])
def test_bad_window_is_rejected(window):
    with pytest.raises(ValueError, match="^bptt.window"):
        window_bounds(10, window)
