"""assemble(): the flow of captured rows, its norms and its counts of non-finite, subnormal
and underflowed entries, against a count of every entry's bits done by hand."""

from __future__ import annotations

import pytest
import torch

from rnnscope.flow.gradients import RowGradients, assemble
from rnnscope.numerics import flush_denormal, magnitude_bits


def reference_counts(grads: torch.Tensor, live: torch.Tensor) -> tuple[int, int, int, int]:
    """Entry by entry over the live vectors (every sequence ends at the last step here):
    non-finite, subnormal, underflowed (subnormal, or zero in a vector whose norm is at
    rounding range), entries."""
    finfo = torch.finfo(grads.dtype)
    nonfinite = subnormal = underflow = entries = 0
    for t in range(grads.shape[0]):
        for b in range(grads.shape[1]):
            if not live[t, b]:
                continue
            vector = grads[t, b]
            bits, tiny = magnitude_bits(vector)
            vanished = torch.linalg.vector_norm(vector.double()) < finfo.tiny / finfo.eps
            for bit, value in zip(bits.tolist(), vector.tolist(), strict=True):
                entries += 1
                nonfinite += not torch.isfinite(torch.tensor(value)).item()
                is_subnormal = 0 < bit < tiny.item()
                subnormal += is_subnormal
                underflow += is_subnormal or (bit == 0 and bool(vanished))
    return nonfinite, subnormal, underflow, entries


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("flush", [False, True])
def test_counts_equal_an_entry_by_entry_count(dtype, flush):
    generator = torch.Generator().manual_seed(0)
    steps, batch, width = 7, 5, 6
    tiny = torch.finfo(dtype).tiny
    grads = torch.randn(steps, batch, width, generator=generator, dtype=dtype)
    grads[0] *= tiny * 1e-3  # a vanished step: zeros and subnormals ...
    grads[0, 0, :3] = 0.0
    grads[1, 1, 2] = tiny / 4  # ... a subnormal in a healthy vector ...
    grads[2, 2, 0] = 0.0  # ... a zero in one (not underflow: the vector is not vanishing)
    grads[3, 3, 1] = float("nan")
    grads[4, 4, 5] = float("-inf")
    live = torch.ones(steps, batch, dtype=torch.bool)
    live[0, 4] = False  # a row that does not run a step: its entries do not count
    grads[0, 4] = float("nan")
    expected = reference_counts(grads, live)
    assert expected[0] == 2 and expected[1] > 1 and expected[2] > expected[1]
    try:
        flush_denormal(flush)  # the counts read bits: DAZ must not change them
        flow = assemble([RowGradients("l0", True, "h", grads, live)])
    finally:
        flush_denormal(False)
    nonfinite, subnormal, underflow, entries = expected
    assert flow.nonfinite == nonfinite
    assert flow.subnormal_fraction == pytest.approx(subnormal / entries, rel=1e-12)
    assert flow.underflow_fraction == pytest.approx(underflow / entries, rel=1e-12)
    norms = torch.linalg.vector_norm(grads.double(), dim=-1).masked_fill(~live, float("nan"))
    torch.testing.assert_close(flow.norms[0], norms.nanmean(dim=1), equal_nan=True)


def test_a_healthy_gradient_counts_nothing():
    grads = torch.randn(4, 3, 5, generator=torch.Generator().manual_seed(1)) + 3.0
    flow = assemble([RowGradients("l0", False, "h", grads, torch.ones(4, 3, dtype=torch.bool))])
    assert (flow.nonfinite, flow.subnormal_fraction, flow.underflow_fraction) == (0, 0.0, 0.0)
