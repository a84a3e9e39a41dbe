"""flush_denormal reaches torch's worker threads, not only the calling one."""

from __future__ import annotations

import pytest
import torch

from rnnscope.numerics import flush_denormal, subnormal_count


@pytest.fixture
def two_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    flush_denormal(False)
    torch.set_num_threads(threads)


def test_every_worker_treats_subnormal_inputs_as_zero(two_threads):
    subnormal = torch.full((512, 512), 1e-39)  # float32 subnormal: 1e-39 < 1.18e-38
    halves = torch.full((512, 512), 0.5)
    assert subnormal_count(subnormal) == subnormal.numel()
    flush_denormal(False)
    assert (torch.mm(subnormal, halves) != 0).all()  # 512 * 5e-40 is a normal number
    if not flush_denormal(True):
        pytest.skip("torch is not built on GNU OpenMP here")
    # With the flag on the calling thread only, the rows a worker computes stay nonzero.
    assert (torch.mm(subnormal, halves) == 0).all()
    flush_denormal(False)
    assert (torch.mm(subnormal, halves) != 0).all()
