"""What drawing a batch costs next to the training step it feeds, for the synthetic tasks.

Each task at its default size, batch 64, against one training step (forward,
loss, backward, Adam step) of SequenceModel("lstm", ..., hidden 128, engine="native").
Columns, median of N, times in ms:

    batch      task.batch(64, generator): the data generator alone
    step       zero_grad + forward + task.loss + backward + optimizer.step
    ratio      batch / step; data generation should stay under 5% of the step

    python benchmarks/tasks_throughput.py            # N = 200 batches, 20 steps
    python benchmarks/tasks_throughput.py --quick    # N = 50 batches, 5 steps
"""

from __future__ import annotations

import argparse

import torch

from rnnscope.models.sequence import SequenceModel
from rnnscope.numerics import flush_denormal
from rnnscope.tasks import Task, get_task
from timing import median_time  # benchmarks/timing.py: run as a script

SIZES = {"adding": 200, "copy": 100, "temporal_order": 100}  # seq_len (T) of each task
LIMIT = 0.05  # generation must cost less than this fraction of a step


def measure(task: Task, batch_size: int, hidden: int, batch_repeats: int,
            step_repeats: int) -> tuple[float, float]:
    """Median seconds to draw one batch, and to take one training step on it."""
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = SequenceModel("lstm", task.input_size, hidden, task.output_size, engine="native")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    inputs, target = task.batch(batch_size, generator)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        output, _ = model(inputs)
        task.loss(output, target).backward()
        optimizer.step()

    t_batch = median_time(lambda: task.batch(batch_size, generator), batch_repeats)
    return t_batch, median_time(step, step_repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=128)
    args = parser.parse_args()
    flush_denormal(True)  # on every worker thread, not only this one
    batch_repeats, step_repeats = (50, 5) if args.quick else (200, 20)

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, lstm hidden "
          f"{args.hidden} (native), batch {args.batch}; times in ms, median of "
          f"{batch_repeats} batches / {step_repeats} steps")
    print(f"{'task':<16}{'T':>5}{'steps':>7}{'batch':>9}{'step':>9}{'ratio':>9}  < 5%")
    for name, seq_len in SIZES.items():
        task = get_task(name, seq_len=seq_len)
        t_batch, t_step = measure(task, args.batch, args.hidden, batch_repeats, step_repeats)
        ratio = t_batch / t_step
        steps = task.batch(1, torch.Generator())[0].shape[0]
        print(f"{name:<16}{seq_len:>5}{steps:>7}{t_batch * 1e3:>9.3f}"
              f"{t_step * 1e3:>9.1f}{ratio:>8.2%}  {'yes' if ratio < LIMIT else 'NO'}")

if __name__ == "__main__":
    main()
