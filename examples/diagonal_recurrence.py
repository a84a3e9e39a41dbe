"""A modern diagonal recurrence written by hand (minGRU, Feng et al. 2024), recorded with
`rnnscope.mark`.

minGRU drops the hidden-to-hidden matrix: the gate and the candidate read only x_t,

    z_t = sigmoid(W_z x_t + b_z)       h~_t = W_h x_t
    h_t = (1 - z_t) * h_{t-1} + z_t * h~_t

so dh_t/dh_{t-1} = diag(1 - z_t): the gradient through time is a product of forget
factors, as in an LSTM's cell state. Models like it are trained in parallel (a scan)
and written sequentially for inference; in either form no torch module holds the
recurrence, so `record` cannot find it. One line marks the state:

    h = rnnscope.mark((1 - z) * h + z * candidate, "mingru.l0")

and the state gets a row of its own, exactly as a recognised layer would. The gate
bias sets how long the state remembers: b_z = -log(T) keeps ~(1 - 1/T) of h per step.

    python examples/diagonal_recurrence.py --seq-len 100 --steps 300
"""

from __future__ import annotations

import argparse
import math

import torch
from torch import nn

import rnnscope
from rnnscope.tasks import get_task


class MinGRU(nn.Module):
    def __init__(self, input_size: int, hidden: int, layers: int, horizon: int) -> None:
        super().__init__()
        shapes = [(input_size if k == 0 else hidden, hidden) for k in range(layers)]
        self.gates = nn.ModuleList(nn.Linear(a, b) for a, b in shapes)
        self.candidates = nn.ModuleList(nn.Linear(a, b) for a, b in shapes)
        self.head = nn.Linear(hidden, 1)
        with torch.no_grad():  # remember over ~horizon steps at the start
            for gate in self.gates:
                gate.bias.fill_(-math.log(horizon))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [T, B, I] -> prediction [B, 1] from the last step."""
        for layer, (gate, candidate) in enumerate(zip(self.gates, self.candidates, strict=True)):
            z, proposal = torch.sigmoid(gate(x)), candidate(x)  # every step at once
            h = torch.zeros_like(proposal[0])
            outputs = []
            for t in range(x.shape[0]):  # the sequential form of the scan
                h = rnnscope.mark((1 - z[t]) * h + z[t] * proposal[t], f"mingru.l{layer}")
                outputs.append(h)
            x = torch.stack(outputs)
        return self.head(x[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-len", type=int, default=100)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    task = get_task("adding", seq_len=args.seq_len)
    generator = torch.Generator().manual_seed(args.seed)
    model = MinGRU(task.input_size, 32, layers=2, horizon=args.seq_len)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(args.steps):
        inputs, targets = task.batch(64, generator)
        optimizer.zero_grad()
        nn.functional.mse_loss(model(inputs), targets.view(-1, 1)).backward()
        optimizer.step()
    inputs, targets = task.batch(256, generator, "valid")
    with rnnscope.record(model) as rec:
        loss = nn.functional.mse_loss(model(inputs), targets.view(-1, 1))
        loss.backward()
    print(f"adding problem T={args.seq_len} after {args.steps} steps: MSE {loss.item():.4f} "
          f"(chance {task.baseline:.4f}, solved below {task.solved_below})")
    print(f"rows: {rec.flow.layers}")
    print(rnnscope.diagnose(rec))


if __name__ == "__main__":
    main()
