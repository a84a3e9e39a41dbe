"""What record() costs on a cell loop: a model stepping an nn.LSTMCell (GRUCell, RNNCell)
in Python, with and without recording, in one run on the same weights and data.

Cells already expose every h_t, so record runs them as they are and only hooks each
state (and, with cell_state=True, each c_t): the cost is a hook per step in forward
and its call in backward. Columns: forward + backward of a loss on the last step's
read-out, median of N runs, ms and the ratio to the plain loop.

    python benchmarks/record_cells.py                 # T=200, H=128, B=64, LSTMCell
    python benchmarks/record_cells.py --cell gru --steps 400
"""

from __future__ import annotations

import argparse
from contextlib import nullcontext

import torch
from torch import nn

import rnnscope
from rnnscope.numerics import flush_denormal
from timing import machine, median_time  # benchmarks/timing.py: run as a script

CELLS = {"lstm": nn.LSTMCell, "gru": nn.GRUCell, "rnn_tanh": nn.RNNCell}


class CellLoop(nn.Module):
    def __init__(self, cell: str, hidden: int) -> None:
        super().__init__()
        self.cell, self.head = CELLS[cell](hidden, hidden), nn.Linear(hidden, 1)

    def forward(self, x):
        state = None
        for x_t in x:
            state = self.cell(x_t, state)
        h = state[0] if isinstance(state, tuple) else state
        return self.head(h)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cell", default="lstm", choices=sorted(CELLS))
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    flush_denormal(True)
    torch.manual_seed(0)
    model = CellLoop(args.cell, args.hidden)
    x = torch.randn(args.steps, args.batch, args.hidden)
    y = torch.randn(args.batch, 1)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        nn.functional.mse_loss(model(x), y).backward()

    cases = [("plain loop", nullcontext()), ("record", rnnscope.record(model)),
             ("record, cell_state", rnnscope.record(model, cell_state=True)),
             ("record, every=10", rnnscope.record(model, every=10))]
    times = {}
    for _ in range(2):  # interleaved rounds: drift in the machine's speed hits every case
        for name, context in cases:
            with context:
                times.setdefault(name, []).append(median_time(step, args.repeats))
    print(machine())
    print(f"{args.cell} cell loop, T={args.steps}, H={args.hidden}, B={args.batch}; "
          f"forward + backward, median of {args.repeats}, best of 2 rounds")
    plain = min(times["plain loop"])
    print(f"{'':22}{'ms':>9}{'ratio':>8}")
    for name, _ in cases:
        best = min(times[name])
        print(f"{name:22}{best * 1e3:9.1f}{best / plain:8.2f}")


if __name__ == "__main__":
    main()
