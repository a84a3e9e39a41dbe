"""What GradientFlowCallback costs a Lightning training run, against the same run without it.

One LightningModule (nn.LSTM with input 2, linear read-out, MSE on the last step,
Adam), adding-problem batches (T=100, batch 32), Lightning's Trainer on the CPU
with no progress bar, summary or checkpointing and an in-memory logger. Three
configurations of the same run:

    none        no callback: torch's fused LSTM kernel on every batch
    every=10    GradientFlowCallback(every=10): one batch in ten runs unrolled and
                is recorded, diagnosed and logged
    every=1     GradientFlowCallback(every=1): every batch is

A clock callback around all others times each batch from on_train_batch_start to
on_train_batch_end (forward, backward, optimiser step and the callback's hooks,
not data loading). The first WARM_UP batches of a fit are not timed; the timed
ones include exactly one recorded batch in `every`. ms/batch is the mean over the
timed batches (the cost a run pays), median over rounds; "recorded" and "other"
are medians over the batches the callback recorded and those it did not.

    python benchmarks/lightning_overhead.py          # hidden 64, 128; 100 batches, 3 rounds (~70 s)
    python benchmarks/lightning_overhead.py --quick  # hidden 64; 60 batches, 1 round (~15 s)
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import time
import warnings

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers.logger import DummyLogger  # the callback logs; nothing is kept
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from rnnscope.integrations.lightning import GradientFlowCallback
from timing import machine  # benchmarks/timing.py: run as a script

SEQ_LEN, BATCH, WARM_UP = 100, 32, 10
CONFIGS = {"none": None, "every=10": 10, "every=1": 1}


def adding_problem(count: int, steps: int, seed: int = 0) -> TensorDataset:
    """Input [count, steps, 2]: values and two markers; target: the sum of the marked values."""
    generator = torch.Generator().manual_seed(seed)
    values = torch.rand(count, steps, generator=generator)
    markers = torch.zeros(count, steps)
    rows = torch.arange(count)
    markers[rows, torch.randint(0, steps // 2, (count,), generator=generator)] = 1
    markers[rows, torch.randint(steps // 2, steps, (count,), generator=generator)] = 1
    return TensorDataset(torch.stack([values, markers], dim=-1), (values * markers).sum(1))


class Adder(LightningModule):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.rnn = nn.LSTM(2, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        output, _ = self.rnn(x)
        return F.mse_loss(self.head(output[:, -1]).squeeze(-1), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


class BatchClock:
    """Seconds per training batch. `start` goes first in the callback list and `stop`
    last: Lightning runs every hook in list order, so the two bracket all the others."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._started = 0.0
        clock = self

        class Start(Callback):
            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
                clock._started = time.perf_counter()

        class Stop(Callback):
            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
                clock.seconds.append(time.perf_counter() - clock._started)

        self.start, self.stop = Start(), Stop()


def fit(hidden: int, every: int | None, batches: int) -> list[float]:
    """Seconds of each batch after the warm-up, in order."""
    clock = BatchClock()
    flow = [] if every is None else [GradientFlowCallback(every=every)]
    trainer = Trainer(accelerator="cpu", devices=1, logger=DummyLogger(),
                      callbacks=[clock.start, *flow, clock.stop], max_steps=WARM_UP + batches,
                      enable_progress_bar=False, enable_model_summary=False,
                      enable_checkpointing=False)
    data = adding_problem((WARM_UP + batches) * BATCH, SEQ_LEN)
    trainer.fit(Adder(hidden), DataLoader(data, batch_size=BATCH))
    return clock.seconds[WARM_UP:]


def recorded(every: int | None, batches: int) -> list[bool]:
    """Which timed batches the callback records (its schedule, from batch WARM_UP on)."""
    if every is None:
        return [False] * batches
    due = GradientFlowCallback(every=every).due
    return [due(WARM_UP + i) for i in range(batches)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: steadier on a shared machine)")
    args = parser.parse_args()
    hiddens, batches, rounds = ((64,), 60, 1) if args.quick else ((64, 128), 100, 3)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")  # Lightning's advice on workers and logging intervals
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)

    fit(hiddens[0], 1, 2)  # first-use costs (imports, allocator) out of the figures
    rows = []
    for hidden in hiddens:
        means = {name: [] for name in CONFIGS}
        times = {name: [] for name in CONFIGS}
        for _ in range(rounds):  # configurations interleaved, so drift hits all alike
            for name, every in CONFIGS.items():
                seconds = fit(hidden, every, batches)
                means[name].append(statistics.fmean(seconds))
                times[name].append(seconds)
        base = statistics.median(means["none"])
        for name, every in CONFIGS.items():
            due = recorded(every, batches)
            split = {True: [], False: []}
            for seconds in times[name]:
                for s, is_due in zip(seconds, due, strict=True):
                    split[is_due].append(s)
            mean = statistics.median(means[name])
            rows.append((hidden, name, mean, mean / base,
                         statistics.median(split[True]) if split[True] else None,
                         statistics.median(split[False]) if split[False] else None))

    print(machine())
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    print(f"Lightning GradientFlowCallback: nn.LSTM(2, hidden), adding T={SEQ_LEN}, "
          f"batch {BATCH}, Adam; {batches} timed batches after {WARM_UP}, "
          f"{rounds} round(s), {torch.get_num_threads()} thread(s)")
    print(f"{'hidden':>6} {'callback':<9} {'ms/batch':>9} {'x none':>7} "
          f"{'recorded ms':>12} {'other ms':>9}")
    for hidden, name, mean, ratio, due_ms, other_ms in rows:
        due_text = f"{due_ms * 1000:12.1f}" if due_ms is not None else f"{'-':>12}"
        other_text = f"{other_ms * 1000:9.1f}" if other_ms is not None else f"{'-':>9}"
        print(f"{hidden:>6} {name:<9} {mean * 1000:9.1f} {ratio:7.2f} {due_text} {other_text}")


if __name__ == "__main__":
    main()
