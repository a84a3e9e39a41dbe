"""probes: gradient norms against clip_grad_norm_ and torch.linalg.vector_norm, exact values
on hand-set gradients and bit-built subnormals, the edges (no grad, NaN, inf, zero
weights, short or non-finite loss history), and no host sync in any probe."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from torch import nn

from rnnscope.flow.probes import (
    flow_profile,
    grad_norms,
    loss_spike,
    nonfinite_counts,
    snapshot,
    subnormal_fraction,
    update_ratio,
    zero_fraction,
)

INF = math.inf


def with_grads(*grads: torch.Tensor | None) -> list[tuple[str, nn.Parameter]]:
    """Named parameters p0, p1, ... whose .grad is set by hand (None: no gradient)."""
    named = []
    for k, g in enumerate(grads):
        p = nn.Parameter(torch.zeros(g.shape if g is not None else (2,), dtype=(
            g.dtype if g is not None else torch.float32)))
        p.grad = g
        named.append((f"p{k}", p))
    return named


def float32_from_bits(bits: list[int]) -> torch.Tensor:
    """Floats with exactly these bit patterns: no float arithmetic, so nothing is flushed."""
    return torch.from_numpy(np.array(bits, dtype=np.uint32).view(np.float32))


def flushing() -> bool:
    """Whether the CPU currently flushes subnormals (torch has no getter for it)."""
    smallest = float32_from_bits([1])
    return bool((smallest * 1.0).view(torch.int32)[0] == 0)


@pytest.fixture
def no_flush():
    """Subnormal arithmetic on for the test; the caller's setting restored after."""
    was = flushing()
    torch.set_flush_denormal(False)
    yield
    torch.set_flush_denormal(was)


# --- grad_norms -------------------------------------------------------------------------

shapes = st.lists(st.lists(st.integers(1, 5), min_size=0, max_size=2), min_size=1, max_size=4)


@settings(max_examples=40, deadline=None)
@given(shapes=shapes, norm_type=st.sampled_from([1.0, 2.0, INF, 3.0]),
       log_scale=st.integers(-6, 6), dtype=st.sampled_from([torch.float32, torch.float64]),
       seed=st.integers(0, 2**16))
def test_grad_norm_total_equals_clip_grad_norm(shapes, norm_type, log_scale, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    grads = [torch.randn(s, generator=gen, dtype=dtype) * 10.0**log_scale for s in shapes]
    named = with_grads(*grads)
    norms = grad_norms(named, norm_type)
    expected = nn.utils.clip_grad_norm_([p for _, p in named], max_norm=INF,
                                        norm_type=norm_type)
    torch.testing.assert_close(norms["grad_norm_total"], expected)
    for (name, p), g in zip(named, grads, strict=True):
        assert torch.equal(norms[f"grad_norm/{name}"], torch.linalg.vector_norm(g, norm_type))
        assert torch.equal(p.grad, g)  # max_norm=inf left the gradients as they were
    assert set(norms) == {f"grad_norm/p{k}" for k in range(len(grads))} | {"grad_norm_total"}


@pytest.mark.parametrize(("norm_type", "first", "second", "total"), [
    (2.0, 5.0, 12.0, 13.0), (1.0, 7.0, 12.0, 19.0), (INF, 4.0, 12.0, 12.0)])
def test_grad_norms_exact_on_hand_set_gradients(norm_type, first, second, total):
    named = with_grads(torch.tensor([3.0, -4.0]), torch.tensor([[0.0, -12.0]]))
    assert grad_norms(named, norm_type) == pytest.approx(
        {"grad_norm/p0": first, "grad_norm/p1": second, "grad_norm_total": total}, abs=0)


def test_grad_norms_skips_parameters_without_gradient_and_takes_a_module():
    named = with_grads(torch.tensor([3.0, 4.0]), None)
    assert set(grad_norms(named)) == {"grad_norm/p0", "grad_norm_total"}
    assert grad_norms(with_grads(None, None)) == {"grad_norm_total": torch.tensor(0.0)}

    model = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 1))
    model[1](torch.ones(4, 2)).sum().backward()  # only the second layer gets gradients
    norms = grad_norms(model)
    assert set(norms) == {"grad_norm/1.weight", "grad_norm/1.bias", "grad_norm_total"}
    torch.testing.assert_close(norms["grad_norm/1.bias"], torch.tensor(4.0))


def test_grad_norms_nonfinite_gradient_gives_nonfinite_total_as_torch_does():
    named = with_grads(torch.tensor([1.0, math.nan]), torch.tensor([INF]))
    norms = grad_norms(named)
    assert norms["grad_norm/p0"].isnan() and norms["grad_norm/p1"].isinf()
    assert norms["grad_norm_total"].isnan()


# --- nonfinite_counts ---------------------------------------------------------------------

def test_nonfinite_counts_exact():
    named = with_grads(torch.tensor([math.nan, INF, -INF, 1.0, 0.0]),
                       torch.tensor([[1.0, 2.0], [3.0, -0.0]]), None,
                       torch.full((3,), math.nan, dtype=torch.float64))
    counts = nonfinite_counts(named)
    assert {k: int(v) for k, v in counts.items()} == {
        "nonfinite/p0": 3, "nonfinite/p1": 0, "nonfinite/p3": 3, "nonfinite_total": 6}
    assert all(v.dtype == torch.int64 for v in counts.values())
    assert {k: int(v) for k, v in nonfinite_counts(with_grads(None)).items()} == {
        "nonfinite_total": 0}


# --- subnormal_fraction, zero_fraction ----------------------------------------------------

def test_subnormal_fraction_exact_float32_bit_patterns():
    values = float32_from_bits([
        0x00000000,  # +0
        0x80000000,  # -0
        0x00000001,  # smallest subnormal
        0x007FFFFF,  # largest subnormal
        0x80000001,  # negative subnormal
        0x00800000,  # tiny: smallest normal, not subnormal
        0x7F800000,  # inf
        0x7FC00000,  # nan
    ])
    assert subnormal_fraction(values) == 3 / 8
    assert zero_fraction(values) == 2 / 8


def test_subnormal_fraction_float64_threshold_differs(no_flush):
    # 1e-40 is subnormal in float32 but normal in float64; 1e-310 is subnormal in float64.
    f32 = torch.tensor([1e-40, 1e-30, 0.0, 1.0], dtype=torch.float32)
    f64 = torch.tensor([1e-40, 1e-310, -5e-324, 1.0], dtype=torch.float64)
    assert subnormal_fraction(f32) == 1 / 4
    assert subnormal_fraction([f64]) == 2 / 4
    assert subnormal_fraction([f32, f64, torch.empty(0)]) == 3 / 8
    assert zero_fraction([f32, f64]) == 1 / 8


def test_subnormal_fraction_half_precision(no_flush):
    f16 = torch.tensor([1e-5, 1e-4, 0.0, 1.0], dtype=torch.float16)  # f16 tiny ~6.1e-5
    bf16 = torch.tensor([1e-39, 1e-30, 0.0, 1.0], dtype=torch.bfloat16)  # bf16 tiny ~1.2e-38
    assert subnormal_fraction(f16) == 1 / 4
    assert subnormal_fraction(bf16) == 1 / 4


@settings(max_examples=40, deadline=None)
@given(arrays(np.float32, st.integers(0, 64),
              elements=st.floats(width=32, allow_subnormal=True, allow_nan=True)))
def test_subnormal_fraction_matches_numpy(values):
    with_flush = flushing()
    torch.set_flush_denormal(False)
    try:
        magnitude = np.abs(values)
        expected = np.count_nonzero((magnitude > 0) & (magnitude < np.finfo(np.float32).tiny))
        fraction = subnormal_fraction(torch.from_numpy(values))
    finally:
        torch.set_flush_denormal(with_flush)
    assert float(fraction) == pytest.approx(expected / max(values.size, 1), rel=1e-6)


def test_subnormal_fraction_correct_while_flushing():
    values = float32_from_bits([0x00000001, 0x3F800000])
    was = flushing()
    if not torch.set_flush_denormal(True):
        pytest.skip("this CPU cannot flush subnormals")
    try:
        assert (values != 0).sum() < 2  # a float comparison now reads the subnormal as 0
        assert subnormal_fraction(values) == 0.5
        assert zero_fraction(values) == 0.0
    finally:
        torch.set_flush_denormal(was)


def test_subnormal_fraction_edges():
    assert subnormal_fraction([]) == 0.0
    with pytest.raises(TypeError, match="floating-point"):
        subnormal_fraction(torch.tensor([1, 2]))


# --- snapshot, update_ratio ---------------------------------------------------------------

def test_update_ratio_exact_on_hand_set_parameters():
    before = {"w": torch.tensor([3.0, 4.0]), "b": torch.zeros(2), "c": torch.zeros(1)}
    after = {"w": torch.tensor([4.5, 6.0]), "b": torch.zeros(2), "c": torch.tensor([2.0]),
             "extra": torch.ones(1)}
    ratios = update_ratio(before, after)
    assert ratios == {
        "update_ratio/w": 0.5,  # ||(1.5, 2)|| / ||(3, 4)|| = 2.5 / 5
        "update_ratio/b": 0.0,  # zero and unmoved
        "update_ratio/c": INF,  # zero and moved: no scale to be relative to
        "update_ratio_total": pytest.approx(math.sqrt(2.5**2 + 2.0**2) / 5.0)}
    with pytest.raises(KeyError, match="'extra'"):
        update_ratio(after, before)


def test_update_ratio_of_an_sgd_step():
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    model(torch.randn(8, 4)).pow(2).sum().backward()
    before = snapshot(model)
    assert all(not t.requires_grad for t in before.values())
    lr = 0.1
    torch.optim.SGD(model.parameters(), lr=lr).step()
    assert not torch.equal(before["weight"], model.weight)  # a copy, not a view
    ratios = update_ratio(before, dict(model.named_parameters()))
    for name, p in model.named_parameters():
        torch.testing.assert_close(ratios[f"update_ratio/{name}"],
                                   lr * p.grad.norm() / before[name].norm())
    grads = torch.cat([p.grad.flatten() for p in model.parameters()])
    weights = torch.cat([w.flatten() for w in before.values()])
    torch.testing.assert_close(ratios["update_ratio_total"], lr * grads.norm() / weights.norm())


# --- loss_spike ---------------------------------------------------------------------------

def noisy_history(n=100, level=2.0, noise=0.01):
    return level + noise * torch.randn(n, generator=torch.Generator().manual_seed(0))


def test_loss_spike_flags_a_spike_not_noise():
    history = noisy_history()
    assert loss_spike(history, torch.tensor(3.0)) > 20
    assert loss_spike(history, torch.tensor(2.005)).abs() < 3
    assert loss_spike(history, torch.tensor(1.995)).abs() < 3


def test_loss_spike_exact_robust_z():
    # median 3, |deviations| (2, 1, 0, 1, 2) -> MAD 1; earlier values are outside the window
    history = torch.tensor([1000.0] * 10 + [1.0, 2.0, math.nan, 3.0, 4.0, 5.0])
    z = loss_spike(history, torch.tensor(6.0), window=6)
    torch.testing.assert_close(z, torch.tensor(3.0 / (1.4826 + 1e-6 * 4)))


def test_loss_spike_nonfinite_and_short_history():
    history = noisy_history()
    for bad in (math.nan, INF, -INF):
        assert loss_spike(history, torch.tensor(bad)) == INF
        assert loss_spike(history[:2], torch.tensor(bad)) == INF
    assert loss_spike(history[:4], torch.tensor(100.0)) == 0.0
    assert loss_spike(torch.tensor([]), 100.0) == 0.0
    some_nan = torch.tensor([1.0, 2.0, math.nan, math.nan, math.nan, 3.0, 4.0])
    assert loss_spike(some_nan, torch.tensor(100.0)) == 0.0  # only 4 finite values


def test_loss_spike_flat_history_ignores_rounding():
    history = torch.full((20,), 2.3)
    one_ulp = torch.nextafter(torch.tensor(2.3), torch.tensor(3.0))
    assert loss_spike(history, one_ulp).abs() < 1
    assert loss_spike(history, torch.tensor(2.3)) == 0.0
    assert loss_spike(history, torch.tensor(4.6)) > 1e5


# --- flow_profile -------------------------------------------------------------------------

def test_flow_profile_one_series_per_layer():
    norms = torch.arange(21, dtype=torch.float64).reshape(3, 7)
    norms[2, :3] = math.nan
    profile = flow_profile(norms)
    assert list(profile) == ["flow/l0", "flow/l1", "flow/l2"]
    for k in range(3):
        torch.testing.assert_close(profile[f"flow/l{k}"], norms[k], rtol=0, atol=0,
                                   equal_nan=True)
    with pytest.raises(ValueError, match="num_layers, T"):
        flow_profile(norms[0])


# --- tensors out, no host sync ------------------------------------------------------------

def all_probe_outputs() -> dict[str, object]:
    named = with_grads(torch.tensor([3.0, math.nan]), torch.tensor([1e-40, 0.0]))
    before = snapshot(named)
    after = {name: p.detach() + 1 for name, p in named}
    return {
        **grad_norms(named), **grad_norms(named, INF), **nonfinite_counts(named),
        **update_ratio(before, after), **flow_profile(torch.ones(2, 3)),
        "subnormal": subnormal_fraction([p.grad for _, p in named]),
        "zero": zero_fraction([p.grad for _, p in named]),
        "spike": loss_spike(noisy_history(), torch.tensor(2.5)),
        "short": loss_spike(noisy_history()[:3], torch.tensor(2.5)),
    }


def test_probes_return_tensors_without_host_sync(monkeypatch):
    def host_sync(*args, **kwargs):
        raise AssertionError("a probe read a tensor value on the host")

    for method in ("item", "tolist", "__bool__", "__float__", "__int__", "numpy"):
        monkeypatch.setattr(torch.Tensor, method, host_sync)
    outputs = all_probe_outputs()
    monkeypatch.undo()
    assert all(isinstance(v, torch.Tensor) for v in outputs.values())
    assert all(v.dim() == 0 for k, v in outputs.items() if not k.startswith("flow/"))
    assert all(not v.requires_grad for v in outputs.values())
