"""The diagnosis suite (benchmarks/doctor.py): labels come from what training heals, never
from rnnscope's verdict; scores count a verdict right only when it is one of the labels.
The full suite is a benchmark (BENCHMARKS.md); here its rules, on study rows made by
hand, and one small end-to-end run of the script."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from rnnscope.study.store import StudyRow
from support import ROOT

BENCHMARKS = ROOT / "benchmarks"


@pytest.fixture
def doctor(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import doctor

    return doctor


def rows_of(case: str, **outcomes) -> dict:
    """Study rows of one case: kind=True solved, False finished unsolved, "diverged"."""
    rows = {}
    for kind, outcome in outcomes.items():
        result = {"status": outcome if isinstance(outcome, str) else "finished",
                  "solved": outcome is True}
        rows[f"{case}.{kind}"] = StudyRow(f"{case}.{kind}", 0, {}, {}, "done", result, 1, 1,
                                          1.0)
    return rows


@pytest.mark.parametrize(("outcomes", "labels", "primary"), [
    ({"baseline": True, "gated": False}, {"healthy"}, "healthy"),
    ({"baseline": False, "gated": True, "lr_up": False}, {"vanishing"}, "vanishing"),
    ({"baseline": False, "full": True, "gated": True}, {"truncated", "vanishing"},
     "truncated"),
    ({"baseline": False, "lr_base": True, "gated": False}, {"stalled"}, "stalled"),
    ({"baseline": False, "lr_down": True}, {"exploding"}, "exploding"),
    ({"baseline": "diverged", "lr_down": False}, {"exploding", "nonfinite"}, "nonfinite"),
    ({"baseline": False, "gated": False, "longer": True}, {"healthy"}, "healthy"),
    ({"baseline": False, "gated": False, "lr_up": False, "longer": False}, set(),
     "unlabelled"),
])
def test_a_case_is_labelled_by_what_heals_it(doctor, outcomes, labels, primary):
    case = doctor.Case("c", {})
    doctor.label(case, rows_of("c", **outcomes))
    assert (case.labels, case.primary) == (labels, primary)


def test_scores_count_labels_and_leave_out_what_nothing_heals(doctor):
    def case(name, labels, primary, verdicts, fixes=None, healed=None):
        return doctor.Case(name, {}, labels=set(labels), primary=primary,
                           verdicts=verdicts, fixes=fixes or {}, healed=healed or {})

    cases = [
        case("solves", ["healthy"], "healthy", {"early": "vanishing"},
             {"early": {"init": "chrono:40"}}, {"early": True}),
        case("gated-heals", ["vanishing"], "vanishing", {"early": "vanishing"},
             {"early": {"cell": "lstm"}}, {"early": False}),
        case("cut", ["truncated", "vanishing"], "truncated", {"early": "vanishing"}),
        case("nothing-heals", [], "unlabelled", {"early": "exploding"}),
    ]
    early = doctor.score(cases)["points"]["early"]
    assert (early["judged"], early["right"]) == (3, 2)
    assert early["false_alarms"] == ["solves"]  # solved as written, called vanishing
    assert (early["fixes"], early["healed"], early["heal_share"]) == (2, 1, 0.5)
    assert early["wrong"] == {"solves": "vanishing (labels healthy)"}
    assert early["per_verdict"]["vanishing"] == {"said": 3, "precision": 2 / 3, "cases": 1,
                                                 "recall": 1.0}
    assert doctor.score(cases)["unlabelled"] == ["nothing-heals"]


def test_scores_are_given_per_round_of_the_suite(doctor, tmp_path):
    """Each case keeps the round it was added in (held-out rounds test the rules the
    rounds before shaped); the `round` key is read off the case, not passed to training."""
    def case(name, round_, verdict, labels=("vanishing",)):
        return doctor.Case(name, {}, labels=set(labels), round=round_,
                           primary=labels[0] if labels else "unlabelled",
                           verdicts={"end": verdict})

    cases = [case("a", 1, "vanishing"), case("b", 1, "healthy"), case("c", 3, "vanishing"),
             case("d", 3, "vanishing", labels=()), case("e", 5, "healthy")]
    assert doctor.score(cases)["points"]["end"]["by_round"] == {1: [1, 2], 3: [1, 1],
                                                                5: [0, 1]}
    cases_file = tmp_path / "cases.yaml"
    cases_file.write_text("base: {}\ncases:\n  - {name: x, seq_len: 5, round: 4}\n"
                          "  - {name: y, seq_len: 6}\n")
    _, loaded = doctor.load(cases_file, quick=False)
    assert [(c.name, c.settings, c.round) for c in loaded] == [
        ("x", {"seq_len": 5}, 4), ("y", {"seq_len": 6}, 1)]


def test_cases_the_seed_decides_are_named_and_scored_apart(doctor):
    """A case whose outcome as written another seed changes is marked (its labels stand on
    one seed); the scores add the verdicts on the cases every seed agrees on. Only seeds 1
    to N-1 are read, each by its exact run name, and a case missing one stays unknown."""
    rows = {**rows_of("steady", baseline=False), **rows_of("coin", baseline=True),
            **rows_of("alone", baseline=False), **rows_of("partial", baseline=False)}
    seed_rows = {**rows_of("steady", seed1=False, seed2=False, seed3=True),
                 **rows_of("coin", seed1=True, seed2=False),
                 **rows_of("partial", seed1=False),
                 **rows_of("alone-other", seed1=True)}  # a longer name, not "alone"'s
    cases = [doctor.Case(name, {}, labels={"vanishing"}, primary="vanishing",
                         verdicts={"end": verdict})
             for name, verdict in (("steady", "vanishing"), ("coin", "healthy"),
                                   ("alone", "healthy"), ("partial", "vanishing"))]
    doctor.seeded(cases, rows, seed_rows, seeds=3)  # seed3 is not read
    assert [c.flips for c in cases] == [False, True, None, None]
    end = doctor.score(cases)["points"]["end"]
    assert end["seed_stable"] == [1, 1]
    assert end["seed_flipped"] == {"coin": False}
    assert (end["right"], end["judged"]) == (2, 4)  # the plain score is unchanged
    doctor.seeded(cases, rows, seed_rows, seeds=4)
    assert cases[0].flips is True  # seed3 solved it
    fresh = [doctor.Case("steady", {})]
    doctor.seeded(fresh, rows, seed_rows, seeds=1)  # no other seed asked for
    assert fresh[0].flips is None


def test_first_fixes_are_scored_per_seed_and_pooled(doctor, tmp_path, monkeypatch):
    """Each first fix trained with seeds 1 to N-1 (studies `<name>-fixes-seed<N>`, the same
    run names): healed per seed, with every seed, with one at least, pooled; a fix whose
    run with some seed is missing is left out of these (not of the seed-0 score)."""
    def case(name, healed):
        return doctor.Case(name, {}, labels={"vanishing"}, primary="vanishing",
                           verdicts={"end": "vanishing"}, fixes={"end": {"cell": "lstm"}},
                           healed={"end": healed})

    cases = [case("a", True), case("b", False), case("c", True)]
    studies = {1: {"a": True, "b": True}, 2: {"a": False, "b": True, "c": True}}
    by_name = {c.name: c for c in cases}
    stored = {tmp_path / f"doctor-fixes-seed{seed}": {
        doctor.fix_name(by_name[n], by_name[n].fixes["end"]):
            rows_of("x", baseline=solved)["x.baseline"] for n, solved in runs.items()}
        for seed, runs in studies.items()}
    monkeypatch.setattr(doctor, "_rows", lambda directory: stored.get(directory, {}))
    doctor.fixes_with_seeds(cases, tmp_path, "doctor", seeds=3)
    assert [c.healed_seeds for c in cases] == [{"end": [True, False]},
                                               {"end": [True, True]}, {}]  # c: no seed 1
    end = doctor.score(cases)["points"]["end"]
    assert end["heal_seeds"] == {"fixes": 2, "per_seed": [1, 2, 1], "all": 0, "any": 2,
                                 "pooled": 4 / 6}
    assert (end["healed"], end["fixes"]) == (2, 3)  # seed 0 alone, every fix


def test_a_bad_seed_count_is_one_line_and_exit_2(doctor, capsys):
    with pytest.raises(SystemExit) as exit_:
        doctor.main(["--seeds", "0", "--no-run", "--cases", "missing.yaml"])
    assert exit_.value.code == 2
    assert "--seeds: expected a whole number of at least 1, got 0" in capsys.readouterr().err


def test_the_interventions_that_apply(doctor):
    base, cases = doctor.load(doctor.CASES, quick=False)
    by_name = {case.name: case for case in cases}
    kinds = {name: set(doctor.interventions(base, by_name[name])) for name in (
        "add-T100-lstm-chrono", "to-L40-lstm-chrono-window5", "add-T20-tanh-lr1e-6")}
    assert kinds["add-T100-lstm-chrono"] == {"baseline", "lr_up", "lr_down",
                                             "longer"}  # gated already
    assert kinds["to-L40-lstm-chrono-window5"] == {"baseline", "full", "lr_up", "lr_down",
                                                   "longer"}
    assert kinds["add-T20-tanh-lr1e-6"] == {"baseline", "gated", "lr_up", "lr_base",
                                            "lr_down", "longer"}
    assert doctor.interventions(base, by_name["add-T30-lstm"])["longer"] == {"steps": 2400}
    gated = doctor.interventions(base, by_name["to-L40-tanh"])["gated"]
    assert gated == {"cell": "lstm", "init": "chrono:36"}  # temporal order: L - L // 10
    assert doctor.fix_variant({"bptt.window": "none", "cell": "lstm"}) == {
        "bptt.window": None, "model.cell": "lstm"}


def test_the_script_labels_judges_and_scores_a_small_suite(tmp_path):
    """Two tiny cases end to end: a null task nothing can learn, and an LSTM cut by a
    window of 2 steps; every verdict is judged at the three points of the baseline run."""
    cases = tmp_path / "cases.yaml"
    cases.write_text(
        "base:\n"
        "  model: {hidden: 8, engine: native}\n"
        "  optim: {name: adam, lr: 0.01}\n"
        "  probe: {every: 10, histograms: false}\n"
        "  run: {steps: 20, batch: 8, eval_every: 10, eval_batches: 1, checkpoint_every: 0}\n"
        "quick:\n  base: {}\n  cases: {noise: [lr_up], cut: [full]}\n"
        "cases:\n"
        "  - {name: noise, task.name: noise, seq_len: 6, cell: lstm}\n"
        "  - {name: cut, task.name: temporal_order, seq_len: 10, cell: lstm, window: 2}\n")
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "doctor.py"), "--quick", "--json", "--cases",
         str(cases), "--out", str(tmp_path / "out"), "--workers", "1", "--seeds", "2"],
        capture_output=True, text=True, timeout=600, cwd=BENCHMARKS)
    assert result.returncode == 0, result.stderr[-2000:]
    exam = json.loads(result.stdout[result.stdout.index("{"):])
    by_name = {case["name"]: case for case in exam["cases"]}
    assert set(by_name) == {"noise", "cut"}
    for case in by_name.values():
        assert set(case["verdicts"]) == {"init", "early", "end"}
    # The cut LSTM is told its window (2) is shorter than temporal order's nearest
    # dependency (L=10: 5 steps back), so no window holds one.
    assert by_name["cut"]["verdicts"]["init"] == "truncated"
    # 20 steps solve neither; each ran its baseline and its named intervention.
    runs = sorted(p.name for p in (tmp_path / "out" / "doctor-quick-labels" / "runs").iterdir()
                  if not p.name.startswith("."))  # the runs' lock files
    assert runs == ["cut.baseline", "cut.full", "noise.baseline", "noise.lr_up"]
    # --seeds 2: each case as written once more, with seed 1; neither solves either way.
    seeded = sorted(p.name for p in (tmp_path / "out" / "doctor-quick-seeds" / "runs")
                    .iterdir() if not p.name.startswith("."))
    assert seeded == ["cut.seed1", "noise.seed1"]
    assert [case["flips"] for case in exam["cases"]] == [False, False]
    # ... and each first fix once more with seed 1 (the cut LSTM's: full BPTT).
    cut = by_name["cut"]
    assert cut["fixes"] and set(cut["healed_seeds"]) == set(cut["fixes"])
    again = [p.name for p in (tmp_path / "out" / "doctor-quick-fixes-seed1" / "runs")
             .iterdir() if not p.name.startswith(".")]
    assert again and all(name.startswith("cut.fix-") for name in again)
    assert exam["scores"]["cases"] == 2
