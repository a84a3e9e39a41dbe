"""What record() costs: one training step with and without it, against native nn.LSTM.

Same weights and data in one run. Columns, all forward + backward of a last-step
MSE loss with a linear read-out, median of N:

    native     torch's nn.LSTM (oneDNN kernels), no recording
    unrolled   rnnscope's Recurrent (step by step), no recording
    record     the *native* model inside `with rnnscope.record(model)`: record
               swaps in the unrolled engine and captures dL/dh_t for every step
    every=10   the native model inside record(every=10): 1 step in 10 recorded

    python benchmarks/record_overhead.py            # T in {100, 200, 1000}, H in {64, 128, 256}
    python benchmarks/record_overhead.py --quick    # T=200, H=128
"""

from __future__ import annotations

import argparse
import time
from contextlib import nullcontext

import torch
from torch import nn

import rnnscope
from rnnscope.numerics import flush_denormal
from timing import median_time  # benchmarks/timing.py: run as a script


class Model(nn.Module):
    def __init__(self, rnn: nn.Module, hidden: int) -> None:
        super().__init__()
        self.rnn, self.head = rnn, nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.rnn(x)[0][-1])


def median_step(model: nn.Module, x, y, repeats: int, recorder=None) -> float:
    def step() -> None:
        model.zero_grad(set_to_none=True)
        nn.functional.mse_loss(model(x), y).backward()

    with recorder if recorder is not None else nullcontext():
        return median_time(step, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--cell", default="lstm", choices=sorted(rnnscope.CELLS))
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    flush_denormal(True)  # on every worker thread, not only this one
    lengths = (200,) if args.quick else (100, 200, 1000)
    hiddens = (128,) if args.quick else (64, 128, 256)
    repeats = 5 if args.quick else 7

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, cell {args.cell}, "
          f"batch {args.batch}; times in ms, ratios to native")
    print(f"{'T':>5}{'H':>5}{'native':>9}{'unrolled':>10}{'record':>9}{'every=10':>10}"
          f"{'rec/unr':>9}{'rec/nat':>9}{'e10/nat':>9}")
    for steps in lengths:
        for hidden in hiddens:
            torch.manual_seed(0)
            recurrent = rnnscope.Recurrent(args.cell, 8, hidden)
            native = Model(recurrent.to_torch(), hidden)
            unrolled = Model(recurrent, hidden)
            unrolled.head.load_state_dict(native.head.state_dict())
            x, y = torch.randn(steps, args.batch, 8), torch.randn(args.batch, 1)
            t_native = median_step(native, x, y, repeats)
            t_unrolled = median_step(unrolled, x, y, repeats)
            t_record = median_step(native, x, y, repeats, rnnscope.record(native))
            # every=10 over 20 steps: the median sees the 90% native steps, so report the mean.
            recorder = rnnscope.record(native, every=10)
            with recorder:
                start = time.perf_counter()
                for _ in range(20):
                    native.zero_grad(set_to_none=True)
                    nn.functional.mse_loss(native(x), y).backward()
                t_every = (time.perf_counter() - start) / 20
            print(f"{steps:>5}{hidden:>5}{t_native * 1e3:>9.1f}{t_unrolled * 1e3:>10.1f}"
                  f"{t_record * 1e3:>9.1f}{t_every * 1e3:>10.1f}{t_record / t_unrolled:>9.2f}"
                  f"{t_record / t_native:>9.2f}{t_every / t_native:>9.2f}")


if __name__ == "__main__":
    main()
