"""An attention seq2seq model, as public code writes it, recorded by rnnscope as it is.

The encoder is an `nn.LSTM`; the decoder is an `nn.LSTMCell` stepped in a Python loop
with dot-product attention over the encoder's outputs (Luong et al. 2015). `record`
follows both without a change to the model: the encoder's layer runs unrolled, and
every call of the decoder cell is the next step of its row. With `cell_state=True` it
also records dL/dc_t, the path the LSTM's memory gives the gradient.

The task: reverse a sequence of random symbols. A few hundred Adam steps on a CPU show
the decoder's gradient reaching every output step and, through attention, the encoder's
early steps (attention is a shortcut: the reach is not the recurrence's alone).

    python examples/seq2seq_attention.py --steps 300
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import nn

import rnnscope

SYMBOLS = 8


class AttentionSeq2Seq(nn.Module):
    def __init__(self, hidden: int = 64) -> None:
        super().__init__()
        self.embed = nn.Embedding(SYMBOLS + 1, hidden)  # the last symbol starts decoding
        self.encoder = nn.LSTM(hidden, hidden, batch_first=True)
        self.decoder = nn.LSTMCell(2 * hidden, hidden)  # input: previous symbol + context
        self.out = nn.Linear(2 * hidden, SYMBOLS)

    def forward(self, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Teacher-forced cross-entropy of `target` given `source`, both [B, T]."""
        memory, (h, c) = self.encoder(self.embed(source))
        h, c = h[0], c[0]
        context = torch.zeros_like(h)
        previous = torch.full_like(target[:, 0], SYMBOLS)
        logits = []
        for t in range(target.shape[1]):
            h, c = self.decoder(torch.cat([self.embed(previous), context], dim=1), (h, c))
            weights = torch.softmax(torch.einsum("bth,bh->bt", memory, h), dim=1)
            context = torch.einsum("bt,bth->bh", weights, memory)
            logits.append(self.out(torch.cat([h, context], dim=1)))
            previous = target[:, t]
        return F.cross_entropy(torch.stack(logits, dim=1).reshape(-1, SYMBOLS),
                               target.reshape(-1))


def batch(size: int, steps: int, generator: torch.Generator):
    source = torch.randint(0, SYMBOLS, (size, steps), generator=generator)
    return source, source.flip(1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--length", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    model = AttentionSeq2Seq()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(args.steps):
        optimizer.zero_grad()
        model(*batch(32, args.length, generator)).backward()
        optimizer.step()
    with rnnscope.record(model, cell_state=True) as rec:
        loss = model(*batch(32, args.length, generator))
        loss.backward()
    flow = rec.flow
    chance = torch.log(torch.tensor(float(SYMBOLS))).item()
    print(f"after {args.steps} steps: loss {loss.item():.3f} (chance {chance:.3f})")
    for name, row in zip(flow.layers, flow.steps_back(), strict=True):
        print(f"  {name:18} {len(row):3d} steps  ||dL/dstate|| at the loss {row[0]:.2e}, "
              f"at the first step {row[-1]:.2e}")
    print(rnnscope.diagnose(rec))


if __name__ == "__main__":
    main()
