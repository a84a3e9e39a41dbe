"""What rnnscope.watch costs a user's own training loop: the same plain PyTorch loop (an
nn.LSTM, Adam, a last-step MSE loss) with and without `watch`, in one run.

Each case trains the same model from the same weights on the same batches for `--steps`
steps (the time per step includes the recordings on watch's schedule, the probe lines,
TensorBoard scalars and images, and the summary with its diagnosis at the end). Rounds
alternate the cases, so drift in the machine's speed hits each alike; the table keeps
the best round of each. Subnormal flushing is on in every case (watch's default), so
the ratio is watch's own cost, not a difference in float handling.

    python benchmarks/watch_overhead.py                 # T=200, H=128, B=64, 200 steps
    python benchmarks/watch_overhead.py --steps 100 --rounds 1
"""

from __future__ import annotations

import argparse
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn

import rnnscope
from rnnscope.numerics import flush_denormal
from timing import machine  # benchmarks/timing.py: run as a script


class Model(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.rnn, self.head = nn.LSTM(2, hidden), nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.rnn(x)[0][-1])


def train(steps: int, hidden: int, batch: int, length: int, watcher=None) -> float:
    """Seconds per step of the loop, from the same weights and data every time."""
    torch.manual_seed(0)
    model = Model(hidden)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    data = [(torch.rand(length, batch, 2, generator=generator),
             torch.rand(batch, 1, generator=generator)) for _ in range(8)]
    context = watcher(model) if watcher is not None else nullcontext()
    started = time.perf_counter()
    with context as w:
        for step in range(steps):
            x, y = data[step % len(data)]
            optimizer.zero_grad(set_to_none=True)
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            optimizer.step()
            if w is not None:
                w.log(loss=loss)
    return (time.perf_counter() - started) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--length", type=int, default=200)
    args = parser.parse_args()
    flush_denormal(True)
    with tempfile.TemporaryDirectory() as scratch:
        runs = iter(range(10**6))

        def watching(every: int):
            return lambda model: rnnscope.watch(model, Path(scratch) / f"run{next(runs)}",
                                                every=every)

        cases = {"plain loop": None, "watch, every=100": watching(100),
                 "watch, every=10": watching(10)}
        best = {name: float("inf") for name in cases}
        train(5, args.hidden, args.batch, args.length)  # warm-up: allocator, first use
        for _ in range(args.rounds):
            for name, watcher in cases.items():
                seconds = train(args.steps, args.hidden, args.batch, args.length, watcher)
                best[name] = min(best[name], seconds)
    print(machine())
    print(f"nn.LSTM T={args.length}, H={args.hidden}, B={args.batch}, Adam; {args.steps} "
          f"steps a case, best of {args.rounds} rounds; subnormals flushed in every case")
    plain = best["plain loop"]
    print(f"{'':20}{'ms/step':>9}{'ratio':>8}")
    for name, seconds in best.items():
        print(f"{name:20}{seconds * 1e3:9.1f}{seconds / plain:8.3f}")


if __name__ == "__main__":
    main()
