"""The doctor's exam: is `diagnose` right, and do its first fixes heal?

Each case of benchmarks/doctor/cases.yaml is a training setup. Training establishes its
label, never rnnscope's verdict: the case runs as written and under each intervention
that applies (the cases file says which); what heals it says what was wrong:

    solved as written          -> healthy
    gated (LSTM, chrono) heals -> vanishing          full BPTT heals -> truncated
    a larger rate heals        -> stalled            a tenth, clipped, heals -> exploding
                                                     (nonfinite when it had NaN/inf)
    3x the steps heals                  -> healthy (the gradient is not what stops it)
    nothing heals                       -> no label: left out of the scores (shown)

A case gets every label whose remedy heals it: a tanh RNN that an LSTM heals and that
learns with 3x the steps is {vanishing, healthy}, and either verdict is right.

Then the verdict of rnnscope's diagnosis is judged at three points of the case's own
run, re-computed from its run directory with today's `diagnose` (the flow and what the
trainer knew then: horizon, window, update size, solved, earlier reach):

    init     the first probe, on the initial weights
    early    the first probe at or after step 50, told the evaluation of that step: the
             prediction `rnnscope diagnose --predict` makes from a short run (the
             trainer's own probe at step 50 comes before that step's evaluation: it
             sees that metric at its next probe)
    end      the last probe, with the final evaluation's "solved"

A verdict is right when it is one of the case's labels. The scores are also given per
round of the suite (a case's `round`: rounds after the first were trained to test the
rules the rounds before them shaped). For every verdict that is not
healthy, its first fix (the flags it prints) is applied and the case trained again with
the same budget: the fix heals when that run solves the task.

    python benchmarks/doctor.py                # 119 cases, ~520 runs: ~1.6 hours on 2 cores
    python benchmarks/doctor.py --quick        # the cases file's quick subset (~15 min)
    python benchmarks/doctor.py --json         # the numbers, machine-readable
    python benchmarks/doctor.py --no-run       # score what --out holds so far
    python benchmarks/doctor.py --seeds 2      # every case and first fix with seed 1 too (+184)

Training is chaotic: near the edge of what a setup can learn, the seed decides. With
`--seeds N` every case is also trained as written with seeds 1 to N-1 (study
`doctor-seeds`), and the scores add the verdicts on the cases whose outcome as written
every seed agrees on, and name those where it does not (their labels stand on one seed);
the first fixes are trained with each seed too (`doctor-fixes-seed<N>`) and their heal
share is given per seed and pooled.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from rnnscope.files import read_yaml
from rnnscope.flow.diagnosis import VERDICTS, diagnose
from rnnscope.flow.gradients import GradientFlow
from rnnscope.rundir.directory import read_records
from rnnscope.study.spec import study_from_dict
from rnnscope.study.store import StudyStore
from rnnscope.study.workers import run_study
from rnnscope.training.config import SHORTHANDS, ExperimentConfig
from rnnscope.training.history import context_at, probes
from timing import machine  # benchmarks/timing.py: run as a script

CASES = Path(__file__).resolve().parent / "doctor" / "cases.yaml"
EARLY = 50  # the step of the early judgement ("after a few dozen steps")
POINTS = ("init", "early", "end")
CAUSES = {"gated": ("vanishing",), "full": ("truncated",), "lr_up": ("stalled",),
          "lr_base": ("stalled",), "lr_down": ("exploding", "nonfinite"),
          "longer": ("healthy",)}


@dataclass
class Case:
    name: str
    settings: dict  # study-variant keys over the base
    tried: tuple[str, ...] = ()  # the interventions to run (all that apply unless chosen)
    round: int = 1  # the round of the suite it was added in (the cases file says why)
    labels: set[str] = field(default_factory=set)
    primary: str = "healthy"
    verdicts: dict[str, str] = field(default_factory=dict)  # point -> verdict
    fixes: dict[str, dict] = field(default_factory=dict)  # point -> first fix's change
    healed: dict[str, bool] = field(default_factory=dict)  # point -> the fix healed
    # point -> the same fix trained with seeds 1 to N-1 (--seeds), where all are done
    healed_seeds: dict[str, list[bool]] = field(default_factory=dict)
    # Trained as written with other seeds (--seeds): True when one of them ended otherwise
    # (solved where the labelling run did not, or the reverse); None: not trained so.
    flips: bool | None = None


def load(path: Path, quick: bool) -> tuple[dict, list[Case]]:
    """The base config and the cases; `quick`: the subset and the interventions the
    cases file names for it (fewer runs, the same labelling)."""
    data = read_yaml(path)
    base = data["base"]
    cases = [Case(c.pop("name"), c, round=c.pop("round", 1)) for c in data["cases"]]
    every = INTERVENTIONS
    if not quick:
        return base, [Case(c.name, c.settings, every, round=c.round) for c in cases]
    chosen = data["quick"]["cases"]
    return _merge(base, data["quick"]["base"]), [
        Case(c.name, c.settings, ("baseline", *chosen[c.name]), round=c.round)
        for c in cases if c.name in chosen]


def _merge(base: dict, over: dict) -> dict:
    merged = dict(base)
    for key, value in over.items():
        merged[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return merged


def config_of(base: dict, settings: dict) -> ExperimentConfig:
    """The experiment a case (or one of its variants) runs."""
    study = study_from_dict({"base": base, "variants": [{"name": "x", **settings}]})
    return study.runs[0].config


INTERVENTIONS = ("baseline", "gated", "full", "lr_up", "lr_base", "lr_down", "longer")


def interventions(base: dict, case: Case) -> dict[str, dict]:
    """The variants that establish the case's label (see the module docstring), those
    that apply to it and that it tries."""
    config = config_of(base, case.settings)
    horizon = config.task.build().reach_needed or config.task.settings.get("seq_len", 100)
    chosen = {"baseline": {}}
    if not (config.model.cell == "lstm" and config.init.scheme.startswith("chrono")):
        chosen["gated"] = {"cell": "lstm", "init": f"chrono:{max(horizon, 3)}"}
    if config.bptt.window is not None:
        chosen["full"] = {"window": None}
    chosen["lr_up"] = {"lr": config.optim.lr * 10}
    standard = ExperimentConfig.from_dict(base).optim.lr  # the suite's own rate
    if config.optim.lr * 10 < standard:
        chosen["lr_base"] = {"lr": standard}
    chosen["lr_down"] = {"lr": config.optim.lr / 10, "clip": "norm:1.0"}
    chosen["longer"] = {"steps": config.run.steps * 3}
    return {kind: settings for kind, settings in chosen.items() if kind in case.tried}


def run(name: str, base: dict, variants: list[dict], out: Path, workers: int):
    """Train the variants as one study (resumable); rows by run name."""
    study = study_from_dict({"name": name, "base": base, "variants": variants})
    rows = run_study(study, out / name, workers=workers, on_result=lambda row, done, total:
                     print(f"  [{done}/{total}] {row.name}: "
                           f"{(row.result or {}).get('status', row.status)}", flush=True))
    return {row.name: row for row in rows}


def _stored(directory: Path) -> list[str]:
    """The runs a study directory holds already, done or not (none when it is new)."""
    if not (directory / "study.db").is_file():
        return []
    store = StudyStore(directory / "study.db", readonly=True)
    try:
        return [row.name for row in store.rows()]
    finally:
        store.close()


def _solved(row) -> bool:
    return bool(row and row.result and row.result.get("solved"))


def label(case: Case, rows: dict) -> None:
    """The case's labels from what healed it (see the module docstring)."""
    outcomes = {kind: rows.get(f"{case.name}.{kind}") for kind in CAUSES | {"baseline": 0}}
    solved = {kind: _solved(row) for kind, row in outcomes.items()}
    baseline = outcomes["baseline"].result or {}
    if solved["baseline"]:
        case.labels, case.primary = {"healthy"}, "healthy"
        return
    diverged = baseline.get("status") == "diverged"
    if diverged:  # training itself reached NaN/inf: whatever heals it, that was the problem
        case.labels.update(("nonfinite", "exploding"))
    for kind in ("full", "lr_up", "lr_base", "lr_down", "gated", "longer"):
        if solved.get(kind):
            # a tenth of the rate heals: exploding, and nonfinite only where NaN/inf came
            case.labels.update(("exploding",) if kind == "lr_down" and not diverged
                               else CAUSES[kind])
    order = ("truncated", "stalled", "nonfinite", "exploding", "vanishing", "healthy")
    # Nothing healed it: no verdict can be shown right or wrong, so it is not scored.
    case.primary = next((v for v in order if v in case.labels), "unlabelled")


def judge(case: Case, run_dir: Path) -> None:
    """The verdicts of today's `diagnose` at the three points of the baseline run."""
    config = ExperimentConfig.from_dict(read_yaml(run_dir / "config.yaml"))
    lines = read_records(run_dir / "metrics.jsonl") or []
    summary = json.loads((run_dir / "summary.json").read_text())
    recorded = probes(lines)
    if not recorded:
        return
    early = next((p for p in recorded if p["step"] >= EARLY), recorded[-1])
    for point, probe in (("init", recorded[0]), ("early", early), ("end", recorded[-1])):
        context = context_at(config, lines, probe["step"],
                             solved=summary.get("solved") if point == "end" else None)
        diagnosis = diagnose(GradientFlow.from_dict(probe["flow"]), lr=probe.get("lr"),
                             current=config.as_flags(), context=context)
        case.verdicts[point] = diagnosis.verdict
        if diagnosis.verdict != "healthy" and diagnosis.fixes:
            case.fixes[point] = diagnosis.fixes[0].change


def fix_variant(change: dict) -> dict:
    """A fix's CLI flags as study-variant keys (bptt.window=none: full BPTT)."""
    variant = {}
    for flag, value in change.items():
        key = SHORTHANDS.get(flag, flag)
        variant[key] = None if value == "none" else value
    return variant


def score(cases: list[Case]) -> dict:
    """Right verdicts per point, the confusion of primary label and verdict, precision and
    recall per verdict, false alarms on cases that solve, and the first fixes that heal."""
    result = {"cases": len(cases), "unlabelled": [c.name for c in cases if not c.labels],
              "points": {}}
    for point in POINTS:
        judged = [c for c in cases if point in c.verdicts and c.labels]
        right = [c for c in judged if c.verdicts[point] in c.labels]
        alarms = [c.name for c in judged if "healthy" in c.labels and c.primary == "healthy"
                  and c.verdicts[point] in ("vanishing", "exploding")]
        fixed = [c for c in judged if point in c.fixes]
        healed = [c for c in fixed if c.healed.get(point)]
        confusion = {truth: {v: sum(c.primary == truth and c.verdicts[point] == v
                                    for c in judged) for v in VERDICTS} for truth in VERDICTS}
        per_verdict = {}
        for verdict in VERDICTS:
            said = [c for c in judged if c.verdicts[point] == verdict]
            truly = [c for c in judged if c.primary == verdict]
            per_verdict[verdict] = {
                "said": len(said), "precision": _share([c.verdicts[point] in c.labels
                                                        for c in said]),
                "cases": len(truly), "recall": _share([c.verdicts[point] in c.labels
                                                       for c in truly])}
        result["points"][point] = {
            "judged": len(judged), "right": len(right), "accuracy": _share(
                [c.verdicts[point] in c.labels for c in judged]),
            "false_alarms": alarms, "fixes": len(fixed), "healed": len(healed),
            "heal_share": _share([c.healed.get(point, False) for c in fixed]),
            # the first fixes trained with the other seeds too: healed per seed, pooled
            "heal_seeds": _heal_seeds([c for c in fixed if point in c.healed_seeds], point),
            "confusion": confusion, "per_verdict": per_verdict,
            "wrong": {c.name: f"{c.verdicts[point]} (labels {', '.join(sorted(c.labels))})"
                      for c in judged if c.verdicts[point] not in c.labels},
            "by_round": {r: [sum(c.verdicts[point] in c.labels for c in judged
                                 if c.round == r), sum(c.round == r for c in judged)]
                         for r in sorted({c.round for c in judged})},
            # on the cases every seed agrees on, and those the seed decides
            "seed_stable": [sum(c.verdicts[point] in c.labels for c in judged
                                if c.flips is False), sum(c.flips is False for c in judged)],
            "seed_flipped": {c.name: c.verdicts[point] in c.labels for c in judged
                             if c.flips}}
    return result


def _heal_seeds(fixed: list[Case], point: str) -> dict:
    """Of the fixes trained with every seed: how many healed with each (seed 0 first), with
    all, with at least one, and the share of all their runs that healed."""
    if not fixed:
        return {}
    outcomes = [[c.healed[point], *c.healed_seeds[point]] for c in fixed]
    return {"fixes": len(fixed), "per_seed": [sum(o[i] for o in outcomes)
                                              for i in range(len(outcomes[0]))],
            "all": sum(all(o) for o in outcomes), "any": sum(any(o) for o in outcomes),
            "pooled": _share([flag for o in outcomes for flag in o])}


def _share(flags: list[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


def print_tables(cases: list[Case], scores: dict) -> None:
    print(machine())
    width = max(len(c.name) for c in cases) + 2
    print(f"\n{'case':{width}}{'labels':28}{'init':11}{'early':11}{'end':11}first fix healed")
    for c in cases:
        healed = " ".join(f"{p}:{'yes' if c.healed[p] else 'no'}" for p in POINTS
                          if p in c.healed)
        labels = ",".join(sorted(c.labels)) or "(nothing heals)"
        print(f"{c.name:{width}}{labels:28}" + "".join(
            f"{c.verdicts.get(p, '-'):11}" for p in POINTS) + healed)
    for point in POINTS:
        s = scores["points"][point]
        share = s["heal_share"]
        # One decimal: the bar is 95%, and 99 of 105 (94.3%) is not it.
        print(f"\n{point}: {s['right']}/{s['judged']} verdicts right ({s['accuracy']:.1%}); "
              f"false alarms on cases that solve: {len(s['false_alarms'])}; first fixes "
              f"healed {s['healed']}/{s['fixes']}" + (f" ({share:.1%})" if share else ""))
        print(f"  {'verdict':11}{'said':>6}{'precision':>11}{'cases':>7}{'recall':>8}")
        for verdict, row in s["per_verdict"].items():
            print(f"  {verdict:11}{row['said']:>6}{_pct(row['precision']):>11}"
                  f"{row['cases']:>7}{_pct(row['recall']):>8}")
        print("  confusion (rows: primary label, columns: verdict): " + ", ".join(
            f"{truth}->{{{', '.join(f'{v}: {n}' for v, n in row.items() if n)}}}"
            for truth, row in s["confusion"].items() if any(row.values())))
        seeds = s["heal_seeds"]
        if seeds:
            print("  first fixes by seed (0, 1, ...): " + ", ".join(
                f"{n}/{seeds['fixes']}" for n in seeds["per_seed"]) + f"; with every seed "
                f"{seeds['all']}, with one at least {seeds['any']}; pooled "
                f"{seeds['pooled']:.0%}")
        for name, why in s["wrong"].items():
            print(f"  wrong: {name}: {why}")
        print("  right by round: " + ", ".join(f"{r}: {right}/{judged}" for r, (right, judged)
                                                in s["by_round"].items()))
        right, stable = s["seed_stable"]
        flipped = s["seed_flipped"]
        if stable or flipped:
            agreed = (f"{right}/{stable} right ({right / stable:.0%})" if stable
                      else "none")
            decided = ", ".join(f"{n} ({'right' if ok else 'wrong'})"
                                for n, ok in flipped.items()) or "none"
            print(f"  on the {stable} cases whose outcome as written every seed agrees on: "
                  f"{agreed}; the seed decides {len(flipped)}: {decided}")


def _pct(value) -> str:
    return "-" if value is None else f"{value:.0%}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="the cases file's quick subset: smaller, shorter, only the "
                             "interventions it names")
    parser.add_argument("--cases", type=Path, default=CASES)
    parser.add_argument("--out", type=Path, default=Path("studies"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--seeds", type=int, default=1,
                        help="also train every case as written with seeds 1 to N-1 and "
                             "score apart the cases whose outcome every seed agrees on")
    parser.add_argument("--no-run", action="store_true",
                        help="score what --out holds, run nothing: cases whose labelling "
                             "runs are not all done are left out, fixes not yet run too")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error(f"--seeds: expected a whole number of at least 1, got {args.seeds}")
    base, cases = load(args.cases, args.quick)
    name = "doctor-quick" if args.quick else "doctor"
    if args.no_run:
        cases = held(base, cases, args.out / f"{name}-labels", args.out / f"{name}-fixes")
        seeded(cases, _rows(args.out / f"{name}-labels"), _rows(args.out / f"{name}-seeds"),
               args.seeds)
        fixes_with_seeds(cases, args.out, name, args.seeds)
        return report(cases, args.json)
    # The labels in two rounds of one study (it grows; what is done stays done): every
    # case as written; the interventions for those that did not solve.
    every = {f"{case.name}.{kind}": {"name": f"{case.name}.{kind}", **case.settings,
                                      **settings}
             for case in cases for kind, settings in interventions(base, case).items()}
    variants = [every[f"{case.name}.baseline"] for case in cases] + [
        every[run_name] for run_name in _stored(args.out / f"{name}-labels")
        if run_name in every and not run_name.endswith(".baseline")]  # resumed: kept
    rows = run(f"{name}-labels", base, variants, args.out, args.workers)
    unsolved = [case for case in cases if not _solved(rows.get(f"{case.name}.baseline"))]
    variants += [every[f"{case.name}.{kind}"] for case in unsolved
                 for kind in interventions(base, case) if kind != "baseline"
                 and every[f"{case.name}.{kind}"] not in variants]
    rows = run(f"{name}-labels", base, variants, args.out, args.workers)
    for case in cases:
        label(case, rows)
        judge(case, args.out / f"{name}-labels" / "runs" / f"{case.name}.baseline")
    if args.seeds > 1:
        # Every seed run the study holds stays declared (a study never loses a run); the
        # scores read seeds 1 to N-1.
        wanted = {f"{case.name}.seed{seed}": {"name": f"{case.name}.seed{seed}",
                                              **case.settings, "run.seed": seed}
                  for case in cases for seed in range(1, args.seeds)}
        by_case = {case.name: case for case in cases}
        for run_name in _stored(args.out / f"{name}-seeds"):
            case_name, _, seed = run_name.rpartition(".seed")
            if run_name not in wanted and case_name in by_case and seed.isdigit():
                wanted[run_name] = {"name": run_name, **by_case[case_name].settings,
                                    "run.seed": int(seed)}
        run(f"{name}-seeds", base, list(wanted.values()), args.out, args.workers)
        seeded(cases, _rows(args.out / f"{name}-labels"), _rows(args.out / f"{name}-seeds"),
               args.seeds)
    # One run per distinct fix of a case, named by its flags: the points that give the
    # same first fix share it, and a fix the rules no longer give stays, unused.
    runs = {fix_name(case, change): {**case.settings, **fix_variant(change)}
            for case in cases for change in case.fixes.values()}
    if runs:
        # The variants run so far, kept in a file beside the study: a study may grow, but
        # never lose a run it holds.
        declared = args.out / f"{name}-fixes.json"
        every_fix = json.loads(declared.read_text()) if declared.is_file() else {}
        every_fix.update(runs)
        args.out.mkdir(parents=True, exist_ok=True)
        declared.write_text(json.dumps(every_fix, indent=1))
        fixed = run(f"{name}-fixes", base, [{"name": run_name, **settings} for
                                            run_name, settings in every_fix.items()],
                    args.out, args.workers)
        for case in cases:
            for point, change in case.fixes.items():
                case.healed[point] = _solved(fixed.get(fix_name(case, change)))
        for seed in range(1, args.seeds):  # the same fixes with the other seeds
            run(f"{name}-fixes-seed{seed}", base, [
                {"name": run_name, **settings, "run.seed": seed}
                for run_name, settings in every_fix.items()], args.out, args.workers)
        fixes_with_seeds(cases, args.out, name, args.seeds)
    return report(cases, args.json)


def seeded(cases: list[Case], rows: dict, seed_rows: dict, seeds: int) -> None:
    """Mark the cases whose outcome as written another seed changed (`Case.flips`), from
    the done runs `<case>.seed1` to `<case>.seed<seeds-1>` of the seeds study; a case
    missing any of them, or its own labelling run, stays unknown."""
    for case in cases:
        baseline = rows.get(f"{case.name}.baseline")
        others = [seed_rows.get(f"{case.name}.seed{seed}") for seed in range(1, seeds)]
        if baseline is not None and others and all(others):
            case.flips = any(_solved(row) != _solved(baseline) for row in others)


def fixes_with_seeds(cases: list[Case], out: Path, name: str, seeds: int) -> None:
    """`Case.healed_seeds` from the studies `<name>-fixes-seed1` .. `-seed<seeds-1>`: a
    fix counts only where its runs with every seed are done."""
    studies = [_rows(out / f"{name}-fixes-seed{seed}") for seed in range(1, seeds)]
    if not studies:
        return
    for case in cases:
        for point, change in case.fixes.items():
            rows = [study.get(fix_name(case, change)) for study in studies]
            if point in case.healed and all(rows):
                case.healed_seeds[point] = [_solved(row) for row in rows]


def fix_name(case: Case, change: dict) -> str:
    """The fixes study's run of a case's first fix: the case and the fix's flags."""
    flags = "_".join(f"{flag}-{value}" for flag, value in sorted(change.items()))
    return f"{case.name}.fix-{re.sub(r'[^A-Za-z0-9.+-]+', '-', flags)}"


def report(cases: list[Case], as_json: bool) -> int:
    scores = score(cases)
    if as_json:
        print(json.dumps({"scores": scores, "cases": [
            {"name": c.name, "labels": sorted(c.labels), "primary": c.primary,
             "verdicts": c.verdicts, "fixes": c.fixes, "healed": c.healed,
             "healed_seeds": c.healed_seeds, "flips": c.flips} for c in cases]},
            indent=2))
    else:
        print_tables(cases, scores)
    return 0


def held(base: dict, cases: list[Case], labels: Path, fixes: Path) -> list[Case]:
    """The cases whose labels the study directories hold complete (the baseline solved, or
    every intervention done), labelled and judged; a fix counts only where its run is
    done."""
    rows = _rows(labels)
    fixed = _rows(fixes)
    complete = []
    for case in cases:
        kinds = list(interventions(base, case))
        done = {k: f"{case.name}.{k}" in rows for k in kinds}
        if not done["baseline"]:
            continue
        if not _solved(rows[f"{case.name}.baseline"]) and not all(done.values()):
            continue
        label(case, rows)
        judge(case, labels / "runs" / f"{case.name}.baseline")
        for point, change in list(case.fixes.items()):
            row = fixed.get(fix_name(case, change))
            if row is None:
                del case.fixes[point]
            else:
                case.healed[point] = _solved(row)
        complete.append(case)
    left = [case.name for case in cases if case not in complete]
    if left:
        print(f"left out, labelling runs not all done: {', '.join(left)}", file=sys.stderr)
    return complete


def _rows(directory: Path) -> dict:
    """The done rows of a study directory, by run name."""
    if not (directory / "study.db").is_file():
        return {}
    store = StudyStore(directory / "study.db", readonly=True)
    try:
        return {row.name: row for row in store.rows() if row.status == "done"}
    finally:
        store.close()


if __name__ == "__main__":
    sys.exit(main())
