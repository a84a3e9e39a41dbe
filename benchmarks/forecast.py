"""Forecasting against the naive forecasts: an LSTM trained by rnnscope's trainer on the
`series` task, its MSE over every validation window next to persistence (repeat the
last value) and seasonal naive (repeat the value one season back).

    .venv/bin/python benchmarks/forecast.py            # the table in BENCHMARKS.md
    .venv/bin/python benchmarks/forecast.py --quick    # fewer steps, one horizon

Data: a trending, seasonal series with 5% of its values missing, generated here from
a seed, and the weekly Mauna Loa CO2 record (benchmarks/data/co2_weekly.csv: a trend,
a yearly season, 59 missing weeks, interpolated). MSE is in the task's units: changes
in units of the training rows' typical one-step change (tasks/series.py).
"""

from __future__ import annotations

import argparse
import math
import platform
import random
import tempfile
import time
from pathlib import Path

import torch

from rnnscope.training.config import ExperimentConfig
from rnnscope.training.trainer import Trainer

CO2 = Path(__file__).parent / "data" / "co2_weekly.csv"


def generated_csv(directory: Path, rows: int = 480, season: int = 12, seed: int = 0) -> Path:
    """A monthly-like series: trend 0.05 a row, season of amplitude 2, noise 0.2, and 5%
    of the values missing (empty cells)."""
    rng = random.Random(seed)
    lines = ["t,x"]
    for t in range(rows):
        value = 10 + 0.05 * t + 2 * math.sin(2 * math.pi * t / season) + rng.gauss(0, 0.2)
        lines.append(f"{t}," + ("" if rng.random() < 0.05 else f"{value:.4f}"))
    path = directory / "generated.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def forecast(path: Path, column: str, season: int, seq_len: int, horizon: int, hidden: int,
             steps: int, seed: int) -> dict:
    config = ExperimentConfig.from_dict({
        "task": {"name": "series", "path": str(path), "column": column, "season": season,
                 "missing": "interpolate", "seq_len": seq_len, "horizon": horizon},
        "model": {"cell": "lstm", "hidden": hidden, "engine": "native"},
        "optim": {"lr": 0.003},
        "run": {"steps": steps, "batch": 32, "seed": seed, "eval_every": 0,
                "checkpoint_every": 0, "quiet": True},
        "probe": {"every": 0}})
    started = time.perf_counter()
    trainer = Trainer(config)
    trainer.fit()
    inputs, targets = trainer.task.windows("valid")  # the windows the baselines score
    with torch.no_grad():
        output, _ = trainer.model(inputs)
    mse = torch.nn.functional.mse_loss(output[-1], targets).item()
    return {"mse": mse, **trainer.task.baselines, "windows": targets.shape[0],
            "seconds": time.perf_counter() - started}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps, horizon 1 only")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args()
    steps = {"generated": 100 if args.quick else 200, "co2": 100 if args.quick else 300}
    horizons = (1,) if args.quick else (1, 4)
    print(f"CPU: {cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"{'series':<10} {'h':>2} {'T':>4} {'steps':>5} {'seed':>4} {'LSTM MSE':>9} "
          f"{'persistence':>11} {'seasonal':>9} {'LSTM/persist':>12} {'s':>6}")
    with tempfile.TemporaryDirectory() as directory:
        cases = [("generated", generated_csv(Path(directory)), "x", 12, 24, 16),
                 ("co2", CO2, "co2", 52, 104, 32)]
        for name, path, column, season, seq_len, hidden in cases:
            for horizon in horizons:
                for seed in args.seeds:
                    result = forecast(path, column, season, seq_len, horizon, hidden,
                                      steps[name], seed)
                    print(f"{name:<10} {horizon:>2} {seq_len:>4} {steps[name]:>5} {seed:>4} "
                          f"{result['mse']:>9.4f} {result['persistence']:>11.4f} "
                          f"{result['seasonal_naive']:>9.4f} "
                          f"{result['mse'] / result['persistence']:>12.2f} "
                          f"{result['seconds']:>6.0f}", flush=True)


if __name__ == "__main__":
    main()
