"""How far back a gradient reaches: statistics of one profile of ||dL/dstate|| by steps back.

- reach: steps back until the norm falls below `REACH_THRESHOLD` of its largest value
  (the whole sequence when it never does);
- rate: the geometric change per step, exp of the least-squares slope of the log norm
  against steps back (below 1 shrinks, above 1 grows);
- growth: the largest norm over the norm where the loss enters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

REACH_THRESHOLD = 1e-3  # "reached" while within this fraction of the largest norm


@dataclass(frozen=True)
class ProfileStats:
    reach: int
    rate: float
    peak: float
    at_loss: float  # the norm where the loss enters (0 steps back)
    at_first_step: float  # the norm at the far end of the sequence
    length: int

    @property
    def growth(self) -> float:
        return self.peak / self.at_loss if self.at_loss > 0 else math.inf


def profile_stats(profile: Tensor, threshold: float = REACH_THRESHOLD) -> ProfileStats:
    """Reach, rate and growth of one row of norms indexed by steps back (NaN: no step);
    the reach counts the steps back until the norm falls below `threshold` of its peak."""
    values = profile[~torch.isnan(profile)].double()
    length = len(values)
    if length == 0:
        return ProfileStats(0, math.nan, 0.0, 0.0, 0.0, 0)
    finite = torch.where(torch.isfinite(values), values, torch.zeros_like(values))
    peak_at = int(finite.argmax())
    peak, at_loss, at_first = float(finite[peak_at]), float(finite[0]), float(finite[-1])
    if peak <= 0.0:
        return ProfileStats(0, 0.0, 0.0, at_loss, at_first, length)
    steps_back = torch.arange(length, dtype=torch.float64)
    fallen = (finite < threshold * peak) & (steps_back >= peak_at)
    reach = int(fallen.nonzero()[0]) if fallen.any() else length
    # Fit over every step where the norm is not yet lost in rounding (or flushed to 0).
    usable = finite > peak * 1e-30
    if int(usable.sum()) < 2:
        rate = 0.0 if reach < length else 1.0
    else:
        x, y = steps_back[usable], finite[usable].log()
        slope = ((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum()
        rate = math.exp(float(slope))
    return ProfileStats(reach, rate, peak, at_loss, at_first, length)


def nonfinite_norms(norms: Tensor) -> int:
    """inf anywhere, and NaN anywhere but the trailing padding of a shorter row."""
    nan = torch.isnan(norms)
    padding = nan.flip(1).cumprod(dim=1).flip(1).bool()  # NaN from some step to the end
    return int(torch.isinf(norms).sum() + (nan & ~padding).sum())
