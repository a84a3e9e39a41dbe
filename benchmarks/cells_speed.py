"""Cost of running cells unrolled: rnnscope's Recurrent vs torch's fused module.

One forward + backward pass of a last-step loss, same weights and data, in one
run; the ratio is unrolled time / native time. Subnormals are flushed in both,
as rnnscope's trainer does by default.

    python benchmarks/cells_speed.py            # the full table
    python benchmarks/cells_speed.py --quick    # a short version
"""

from __future__ import annotations

import argparse

import torch

import rnnscope
from rnnscope.numerics import flush_denormal
from timing import median_time  # benchmarks/timing.py: run as a script


def time_step(module: torch.nn.Module, x: torch.Tensor, repeats: int) -> float:
    """Median seconds of one forward + backward pass."""
    def step() -> None:
        module.zero_grad(set_to_none=True)
        output, _ = module(x)
        output[-1].pow(2).mean().backward()

    return median_time(step, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer sizes and repeats")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = parser.parse_args()
    flush_denormal(True)  # on every worker thread, not only this one
    if args.threads:
        torch.set_num_threads(args.threads)

    cells = ("lstm", "gru", "rnn_tanh")
    lengths = (100,) if args.quick else (100, 200, 1000)
    hiddens = (128,) if args.quick else (64, 128, 256)
    repeats = 3 if args.quick else 5
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch {args.batch}")
    print(f"{'cell':9}{'T':>6}{'H':>6}{'native ms':>12}{'unrolled ms':>13}{'ratio':>8}")
    for cell in cells:
        for steps in lengths:
            for hidden in hiddens:
                torch.manual_seed(0)
                unrolled = rnnscope.Recurrent(cell, 32, hidden)
                native = unrolled.to_torch()
                x = torch.randn(steps, args.batch, 32)
                native_s = time_step(native, x, repeats)
                unrolled_s = time_step(unrolled, x, repeats)
                print(f"{cell:9}{steps:>6}{hidden:>6}{native_s * 1e3:>12.1f}"
                      f"{unrolled_s * 1e3:>13.1f}{unrolled_s / native_s:>8.2f}")


if __name__ == "__main__":
    main()
