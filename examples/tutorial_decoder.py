"""The decoder of PyTorch's seq2seq tutorial: an `nn.GRU` called once per output step.

    output, hidden = self.gru(output, hidden)   # inside a loop over the output steps

Each call runs one step; the next call starts from the `hidden` the previous one
returned. `record` sees that and joins the calls into one row, step after step, so
the decoder's profile has a step for every decoded token (a call starting from any
other state would be a row of its own, `decoder.gru#2`, never dropped). The encoder
is an `nn.GRU` over the source, called once.

The task: copy a sequence of symbols, after greedy decoding is learnt with teacher
forcing for a few hundred steps.

    python examples/tutorial_decoder.py --steps 300
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import nn

import rnnscope

SYMBOLS = 10


class Encoder(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(SYMBOLS, hidden)
        self.gru = nn.GRU(hidden, hidden, batch_first=True)

    def forward(self, source):
        return self.gru(self.embedding(source))


class Decoder(nn.Module):
    """As in the tutorial: embed the previous token, one GRU step, a linear read-out."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(SYMBOLS + 1, hidden)  # + the start token
        self.gru = nn.GRU(hidden, hidden, batch_first=True)
        self.out = nn.Linear(hidden, SYMBOLS)

    def forward(self, hidden, target):
        token = torch.full((target.shape[0], 1), SYMBOLS, dtype=torch.long)
        logits = []
        for t in range(target.shape[1]):
            output, hidden = self.gru(F.relu(self.embedding(token)), hidden)
            logits.append(self.out(output))
            token = target[:, t : t + 1]  # teacher forcing
        return torch.cat(logits, dim=1)


class Seq2Seq(nn.Module):
    def __init__(self, hidden: int = 64) -> None:
        super().__init__()
        self.encoder, self.decoder = Encoder(hidden), Decoder(hidden)

    def forward(self, source, target):
        _, hidden = self.encoder(source)
        logits = self.decoder(hidden, target)
        return F.cross_entropy(logits.reshape(-1, SYMBOLS), target.reshape(-1))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--length", type=int, default=9)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    model = Seq2Seq()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)

    def batch():
        source = torch.randint(0, SYMBOLS, (32, args.length), generator=generator)
        return source, source.clone()

    for _ in range(args.steps):
        optimizer.zero_grad()
        model(*batch()).backward()
        optimizer.step()
    with rnnscope.record(model) as rec:
        loss = model(*batch())
        loss.backward()
    flow = rec.flow
    print(f"after {args.steps} steps: loss {loss.item():.3f}; decoder GRU calls "
          f"{rec.calls['decoder.gru']}, one row of {flow.norms.shape[1]} steps")
    for name, row in zip(flow.layers, flow.steps_back(), strict=True):
        print(f"  {name:16} ||dL/dh|| by steps back: " +
              " ".join(f"{value:.1e}" for value in row.tolist()))


if __name__ == "__main__":
    main()
