"""Data-parallel training against one process: time per step, same global batch, one run.

Runs `rnnscope train` as one process (all cores) and under `torchrun --nproc_per_node N`
(gloo, the cores split between the ranks) on the adding problem, LSTM, with the flow
recorded every 10 steps. Each is run for a short and a long number of steps and the
time per step is read from the difference of the two (summary.json's `seconds`), so
start-up, the final diagnosis and the Lyapunov spectrum cancel out.

    python benchmarks/distributed_speed.py          # hidden/batch 64/64 and 128/128
    python benchmarks/distributed_speed.py --ranks 2 --quick
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

SEQ_LEN = 100


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_seconds(hidden: int, batch: int, steps: int, ranks: int, cores: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        args = ["-m", "rnnscope", "train", "--task", "adding", "--seq-len", str(SEQ_LEN),
                "--cell", "lstm", "--hidden", str(hidden), "--batch", str(batch),
                "--steps", str(steps), "--engine", "native", "--probe.every=10",
                "--run.eval_every=0", "--run.early_stop=false", "--json",
                "--out", str(Path(tmp) / "run")]
        env = {**os.environ, "OMP_NUM_THREADS": str(max(1, cores // ranks))}
        if ranks > 1:
            command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                       f"--nproc_per_node={ranks}", f"--master_port={free_port()}", *args]
        else:
            command = [sys.executable, *args]
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if done.returncode:
            raise SystemExit(f"failed ({done.returncode}): {' '.join(command)}\n{done.stderr}")
        return json.loads(done.stdout)["seconds"]


def per_step(hidden: int, batch: int, ranks: int, cores: int, short: int, long: int) -> float:
    return (run_seconds(hidden, batch, long, ranks, cores)
            - run_seconds(hidden, batch, short, ranks, cores)) / (long - short)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="one size, fewer steps")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    short, long = (5, 25) if args.quick else (10, 60)
    sizes = [(64, 64)] if args.quick else [(64, 64), (128, 128)]
    print(f"adding T={SEQ_LEN}, LSTM, native, flow every 10 steps; {cores} cores; "
          f"ms per step from {long} - {short} steps")
    print(f"{'hidden':>7}{'batch':>7}{'1 process':>11}{f'{args.ranks} ranks':>10}"
          f"{'speed-up':>10}")
    for hidden, batch in sizes:
        one = per_step(hidden, batch, 1, cores, short, long)
        many = per_step(hidden, batch, args.ranks, cores, short, long)
        print(f"{hidden:>7}{batch:>7}{one * 1e3:>11.1f}{many * 1e3:>10.1f}{one / many:>10.2f}",
              flush=True)


if __name__ == "__main__":
    main()
