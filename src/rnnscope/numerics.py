"""Floating-point facts read off the bits, shared by the recorder and the probes."""

from __future__ import annotations

import torch
from torch import Tensor

_SAME_SIZE_INT = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def magnitude_bits(tensor: Tensor) -> tuple[Tensor, Tensor]:
    """The bit pattern of |x| as integers, and that of the smallest normal number.

    Comparing bits, not floats: with `torch.set_flush_denormal(True)` the CPU treats
    subnormal inputs as zero (DAZ), so `x != 0` is False for them and a float
    comparison would miss exactly the values that need counting.
    """
    if not tensor.is_floating_point():
        raise TypeError(f"expected floating-point tensors, got {tensor.dtype}")
    int_dtype = _SAME_SIZE_INT[tensor.element_size()]
    sign_off = torch.iinfo(int_dtype).max  # all bits but the sign bit
    tiny = torch.tensor(torch.finfo(tensor.dtype).tiny, dtype=tensor.dtype)
    return tensor.detach().view(int_dtype) & sign_off, tiny.view(int_dtype)


def subnormal_count(tensor: Tensor) -> Tensor:
    """Number of subnormal elements (nonzero, |x| < finfo.tiny), as a 0-d tensor."""
    bits, tiny = magnitude_bits(tensor)
    return ((bits > 0) & (bits < tiny.to(bits.device))).sum()
