"""How far back does the gradient reach? The seeds' story in numbers, in seconds on a CPU.

Run with `make demo` (or `python examples/quickstart.py` inside the venv).

1. rnnscope's unrolled cells compute what torch's fused `nn.LSTM` computes.
2. On one batch of the adding problem (T=200), `rnnscope.record` captures
   dL/dh_t (and an LSTM's dL/dc_t) at every step of torch's own modules and
   `rnnscope.diagnose` turns it into a verdict, twice: on the initial weights, and
   as a prediction after a short run of 50 steps (`rnnscope diagnose --predict`),
   which sees what the initial weights cannot: gates that learn to remember, and a
   tanh RNN whose gradient dies as soon as it trains.
3. A relu RNN whose W_hh has spectral radius 3 explodes instead.
4. The remedy at work: `rnnscope.train` on the adding problem (T=50) with a tanh
   RNN and with a chrono-initialised LSTM, each writing a run directory under
   runs/quickstart-<time>/ (metrics.jsonl, TensorBoard events, checkpoints).
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

import rnnscope
from rnnscope.numerics import flush_denormal
from rnnscope.training.predict import short_run

CANDIDATES = [
    # (cell, init spec); "{T}" is replaced by the sequence length
    ("rnn_tanh", "torch_default"),
    ("rnn_tanh", "orthogonal"),
    ("rnn_relu", "spectral:3.0"),
    ("rnn_relu", "identity:1.0"),
    ("gru", "orthogonal"),
    ("lstm", "forget_bias:1.0"),
    ("lstm", "chrono:{T}"),
]


def check_parity() -> float:
    """Largest difference between torch's fused LSTM and its unrolled rnnscope copy."""
    reference = nn.LSTM(2, 32, num_layers=2, dtype=torch.float64)
    ours = rnnscope.from_torch(reference)
    x = torch.randn(50, 8, 2, dtype=torch.float64)
    results = []
    for module in (reference, ours):
        output, _ = module(x)
        output[-1].sum().backward()
        results.append([output] + [p.grad for p in module.parameters()])
    return max((a - b).abs().max().item() for a, b in zip(*results, strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-len", type=int, default=200)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--train-steps", type=int, default=600)
    parser.add_argument("--predict-steps", type=int, default=50)
    args = parser.parse_args()
    flush_denormal(True)  # vanishing gradients underflow; subnormals are slow

    print(f"rnnscope {rnnscope.__version__}")
    print(f"unrolled LSTM vs torch's nn.LSTM (float64), max difference: {check_parity():.1e}\n")

    print(f"adding problem, T={args.seq_len}, hidden {args.hidden}, one batch of "
          f"{args.batch}; at init, and predicted after {args.predict_steps} steps of Adam "
          f"(lr 0.01, clip 1) by rnnscope diagnose --predict")
    print(f"{'cell':9}{'init':17}{'at init':11}{'reach':>6}   {'predicted':11}{'reach':>6}"
          f"   first fix")
    for cell, init in CANDIDATES:
        config = rnnscope.ExperimentConfig.from_dict({
            "task": {"name": "adding", "seq_len": args.seq_len},
            "model": {"cell": cell, "hidden": args.hidden, "engine": "native"},
            "init": init.format(T=args.seq_len), "optim": {"lr": 0.01}, "clip": "norm:1.0",
            "run": {"batch": args.batch, "seed": 0}})
        at_init = diagnosis(config)
        run = short_run(config, args.predict_steps)
        predicted = diagnosis(config, run.weights, run.context)
        fix = predicted.fixes[0].cli if predicted.fixes else "-"
        print(f"{cell:9}{config.init.scheme:17}{at_init.verdict:11}{at_init.reach:>6}   "
              f"{predicted.verdict:11}{predicted.reach:>6}   {fix}")
    print("\nreach: steps back until ||dL/dh_t|| (or an LSTM's ||dL/dc_t||) falls below 1e-3 "
          "of its peak. For one model: rnnscope diagnose --help")
    train_both(seq_len=50, steps=args.train_steps)


def diagnosis(config, weights=None, context=None):
    """The diagnosis of one batch through the config's model (torch's fused module,
    recorded), on its initial weights or on `weights`."""
    task = config.task.build()
    torch.manual_seed(config.run.seed)
    model = config.model.build(task.input_size, task.output_size)
    config.init.apply(model)
    if weights is not None:
        model.load_state_dict(weights)
    inputs, targets = task.batch(config.run.batch, torch.Generator().manual_seed(0))
    with rnnscope.record(model, cell_state=True) as rec:
        output, _ = model(inputs)
        task.loss(output, targets).backward()
    return rnnscope.diagnose(rec, lr=config.optim.lr, current=config.as_flags(),
                             context=context or rnnscope.Context(
                                 horizon=task.reach_needed, initial=weights is None))


def train_both(seq_len: int, steps: int) -> None:
    """Train a tanh RNN and a chrono LSTM on the adding problem; print what happened."""
    out = f"runs/quickstart-{time.strftime('%Y%m%d-%H%M%S')}"
    print(f"\ntraining on the adding problem, T={seq_len}, up to {steps} steps (Adam, lr 0.01, "
          f"clip norm 1.0; chance MSE {1 / 6:.3f}, solved below 0.01)")
    print(f"{'cell':9}{'init':14}{'status':10}{'steps':>6}{'valid MSE':>11}{'reach':>7}"
          f"{'seconds':>9}")
    for cell, init in (("rnn_tanh", "torch_default"), ("lstm", f"chrono:{seq_len}")):
        config = rnnscope.ExperimentConfig.from_dict({
            "task": {"name": "adding", "seq_len": seq_len},
            "model": {"cell": cell, "hidden": 64}, "init": init, "clip": "norm:1.0",
            "optim": {"lr": 0.01}, "probe": {"histograms": False},
            "run": {"steps": steps, "batch": 32, "eval_every": 50, "quiet": True,
                    "out": f"{out}/{cell}"}})
        result = rnnscope.train(config)
        print(f"{cell:9}{init:14}{result.status:10}{result.steps:>6}{result.metric:>11.4f}"
              f"{result.diagnosis.reach:>7}{result.seconds:>9.1f}")
    print(f"\nrun directories: {out}/ (tensorboard --logdir {out}); "
          f"more: rnnscope train --help")


if __name__ == "__main__":
    main()
