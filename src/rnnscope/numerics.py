"""Floating-point facts read off the bits, shared by the recorder and the probes."""

from __future__ import annotations

import ctypes
import functools
import glob
import os
import threading

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


_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


def flush_denormal(enabled: bool = True) -> bool:
    """Flush subnormal floats to zero on *every* CPU thread torch computes on.

    Vanishing gradients underflow into subnormals, which x86 cores process up to
    ~100x slower. `torch.set_flush_denormal` sets the flag (FTZ/DAZ in MXCSR) only
    on the calling thread, while torch's intra-op work also runs on its OpenMP
    worker threads: measured on 2 cores, a 512x512 matmul of subnormal inputs took
    292 ms with the flag set that way against 5 ms for normal inputs. This runs
    one OpenMP parallel region in which every worker sets the flag too (8 ms).

    Returns True when every worker was reached, False when torch is not built on
    GNU OpenMP here (then only the calling thread is set). Call it again after
    `torch.set_num_threads` raises the thread count.
    """
    if not torch.set_flush_denormal(enabled):
        return False  # the CPU has no such mode
    gomp = _torch_gomp()
    if gomp is None:
        return False
    threads = torch.get_num_threads()
    reached: set[int] = set()

    def set_flag(_data) -> None:
        torch.set_flush_denormal(enabled)
        reached.add(threading.get_ident())

    callback = _CALLBACK(set_flag)
    gomp.GOMP_parallel(callback, None, threads, 0)
    return len(reached) == threads


@functools.cache
def _torch_gomp():
    """torch's own libgomp (the runtime of its thread pool), or None."""
    candidates = glob.glob(os.path.join(os.path.dirname(torch.__file__), "lib", "libgomp*"))
    for path in candidates:
        try:
            library = ctypes.CDLL(path)
            library.GOMP_parallel.argtypes = [_CALLBACK, ctypes.c_void_p, ctypes.c_uint,
                                              ctypes.c_uint]
            return library
        except (OSError, AttributeError):
            continue
    return None
