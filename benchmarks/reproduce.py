"""Reproduce the classic long-range results: one study per experiment, one command each.

Each experiment is a study file in benchmarks/studies/ (adding, copy, temporal-order,
digits), run with `rnnscope study`'s machinery (parallel workers, resumable: run the
same command again after a kill), then summarised per configuration, seeds pooled:

    solved     runs that reached the task's "solved" threshold on held-out data
    steps      mean optimiser steps to solved, over the solved runs
    best       mean over seeds of the best held-out metric seen during training
    baseline   the task's chance level (lower metric is better)
    reach      mean reach of the trained model's gradient flow (steps back to 1e-3 of
               its peak), and the verdicts

and a report.html per study.

    python benchmarks/reproduce.py adding                  # 60 runs, under an hour
    python benchmarks/reproduce.py copy temporal-order digits
    python benchmarks/reproduce.py adding --steps 50       # a short look (own directory)
"""

from __future__ import annotations

import argparse
import math
import statistics
from pathlib import Path

from rnnscope.files import read_yaml
from rnnscope.report.data import summary_value
from rnnscope.report.render import write_report
from rnnscope.rundir.directory import read_records
from rnnscope.study.spec import study_from_dict
from rnnscope.study.workers import run_study

STUDIES = Path(__file__).resolve().parent / "studies"


def load(name: str, steps: int | None):
    path = STUDIES / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in STUDIES.glob("*.yaml")))
        raise SystemExit(f"reproduce: no study {name!r}; accepted: {known}")
    data = read_yaml(path)
    if steps is not None:  # a short look goes into its own directory
        data["base"].setdefault("run", {})["steps"] = steps
        data["name"] = f"{data['name']}-{steps}steps"
    return study_from_dict(data, default_name=name)


def configuration(name: str) -> str:
    return ",".join(part for part in name.split(",") if not part.startswith("seed="))


def best_metric(run_dir: Path) -> float:
    lines = read_records(run_dir / "metrics.jsonl") or []
    values = [line["metric"] for line in lines
              if line.get("kind") == "eval" and isinstance(line.get("metric"), (int, float))]
    return min(values) if values else math.nan


def summarise(rows, directory: Path) -> list[dict]:
    """One dict per configuration (seeds pooled), in the study's order."""
    groups: dict[str, list] = {}
    for row in rows:
        groups.setdefault(configuration(row.name), []).append(row)
    table = []
    for label, members in groups.items():
        done = [row for row in members if row.status == "done" and row.result]
        solved = [row for row in done if row.result.get("solved")]
        reaches = [summary_value(row.result, "diagnosis", "reach") for row in done]
        bests = [best_metric(directory / "runs" / row.name) for row in done]
        table.append({
            "configuration": label, "runs": len(members), "done": len(done),
            "solved": len(solved),
            "steps": statistics.mean(row.result["steps"] for row in solved) if solved
            else math.nan,
            "best": _mean(bests), "baseline": _mean(
                [summary_value(row.result, "baseline") for row in done]),
            "reach": _mean(reaches),
            "verdicts": ",".join(sorted({summary_value(row.result, "diagnosis", "verdict",
                                                       default="-") for row in done})),
            "diverged": sum(row.result.get("status") == "diverged" for row in done)})
    return table


def _mean(values) -> float:
    finite = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return statistics.mean(finite) if finite else math.nan


def print_table(name: str, table: list[dict]) -> None:
    width = max(len(row["configuration"]) for row in table) + 2
    print(f"\n{name}")
    print(f"{'configuration':{width}}{'solved':>8}{'steps':>8}{'best':>10}{'baseline':>10}"
          f"{'reach':>8}{'diverged':>10}  verdicts")
    for row in table:
        print(f"{row['configuration']:{width}}{row['solved']:>4}/{row['done']:<3}"
              f"{row['steps']:>8.0f}{row['best']:>10.4g}{row['baseline']:>10.4g}"
              f"{row['reach']:>8.1f}{row['diverged']:>10}  {row['verdicts']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="+", help="studies in benchmarks/studies/")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("studies"),
                        help="parent of the study directories (default studies/)")
    parser.add_argument("--steps", type=int, help="override run.steps: a short look")
    args = parser.parse_args()
    for name in args.names:
        study = load(name, args.steps)
        directory = args.out / study.name
        print(f"{study.name}: {len(study.runs)} runs into {directory}", flush=True)
        rows = run_study(study, directory, workers=args.workers,
                         on_result=lambda row, done, total: print(
                             f"  [{done}/{total}] {row.name}: "
                             f"{(row.result or {}).get('status', row.status)}", flush=True))
        print_table(study.name, summarise(rows, directory))
        print(f"report: {write_report(directory)}")


if __name__ == "__main__":
    main()
