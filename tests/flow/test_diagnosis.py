"""diagnose(): exact values on hand-built flows, and verdicts on real constructed models."""

from __future__ import annotations

import math

import pytest
import torch

import rnnscope
from rnnscope.flow.diagnosis import HISTORY, REACH_THRESHOLD, Context, diagnose
from rnnscope.flow.recording import GradientFlow
from rnnscope.models.init import parse_init_spec
from rnnscope.models.sequence import SequenceModel
from rnnscope.numerics import flush_denormal
from rnnscope.tasks import get_task


def flow_from_profile(by_steps_back: list[float] | torch.Tensor) -> GradientFlow:
    """A one-layer flow whose norm s steps back from the loss is by_steps_back[s]."""
    norms = torch.as_tensor(by_steps_back, dtype=torch.float64).flip(0).unsqueeze(0)
    return GradientFlow(norms, ["rnn.l0"], [False])


@pytest.mark.parametrize("factor", [0.5, 0.9, 0.97])
def test_geometric_decay_gives_exact_reach_and_rate(factor):
    steps = 400
    flow = flow_from_profile([factor**s for s in range(steps)])
    result = diagnose(flow)
    assert result.verdict == "vanishing"
    assert result.reach == math.ceil(math.log(REACH_THRESHOLD) / math.log(factor) - 1e-9)
    # On the initial weights every cell is read down to 1e-6 of the peak: 0.97^400 is
    # 10^-5.3 at the far end.
    before = diagnose(flow, context=Context(initial=True))
    assert before.verdict == ("healthy" if factor == 0.97 else "vanishing")
    assert result.rate == pytest.approx(factor, rel=1e-9)
    assert result.steps == steps


def test_growth_back_in_time_is_exploding():
    result = diagnose(flow_from_profile([1.1**s for s in range(100)]))
    assert result.verdict == "exploding"
    assert result.rate == pytest.approx(1.1, rel=1e-9)
    assert result.evidence["growth"] == pytest.approx(1.1**99, rel=1e-9)
    # A tenth of the rate, clipped, first (the suite: clipping alone healed no SGD run
    # whose gradient grew); then clipping at the norm without the growth (none known: 1).
    assert result.fixes[0].change == {"lr": "<a tenth of the current>", "clip": "norm:1.0"}
    assert result.fixes[1].change == {"clip": "norm:1"}
    assert diagnose(flow_from_profile([1.1**s for s in range(100)]), lr=0.5).fixes[0].change \
        == {"lr": "0.05", "clip": "norm:1.0"}
    # An Elman RNN's growing gradient: an LSTM with chrono init first (the suite: it healed
    # two of three SGD runs, the rate, clipping or spectral radius 1 none); an update that
    # outweighs the weights: the rate first, whatever the cell.
    growing = flow_from_profile([1.1**s for s in range(100)])
    elman = diagnose(growing, lr=0.5, current={"cell": "rnn_relu"},
                     context=Context(horizon=100, update_ratio=3e7))  # SGD's huge steps
    assert "cause" not in elman.evidence  # the growth, not the rate, makes them huge
    assert elman.fixes[0].change == {"cell": "lstm", "init": "chrono:100"}
    assert elman.fixes[1].change == {"lr": "0.05", "clip": "norm:1.0"}
    by_update = diagnose(flow_from_profile([0.9**s for s in range(100)]), lr=0.5,
                         current={"cell": "rnn_relu"}, context=Context(
                             horizon=100, update_ratio=3.0))
    assert by_update.verdict == "exploding" and by_update.evidence["cause"] == "update"
    # The rate that brings the update (3x the weights) to 0.1 of them: 0.5 * 0.1 / 3.
    assert by_update.fixes[0].change == {"lr": "0.02", "clip": "norm:1.0"}


def test_flat_profile_is_healthy_and_needs_no_fix():
    result = diagnose(flow_from_profile([1.0 + 0.1 * math.sin(s) for s in range(50)]))
    assert (result.verdict, result.reach, result.fixes) == ("healthy", 50, [])


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_norms_win_over_everything(bad):
    profile = [0.5**s for s in range(30)]
    profile[3] = bad
    result = diagnose(flow_from_profile(profile))  # flow.nonfinite is 0: norms alone tell
    assert result.verdict == "nonfinite" and result.evidence["nonfinite"] == 1
    assert result.fixes[0].change == {"guard": "rollback"}


def test_nan_padding_of_a_shorter_row_is_not_nonfinite():
    long_row = torch.tensor([0.9**s for s in range(40)], dtype=torch.float64).flip(0)
    short_row = torch.full((40,), float("nan"), dtype=torch.float64)
    short_row[:25] = torch.tensor([0.9**s for s in range(25)], dtype=torch.float64).flip(0)
    flow = GradientFlow(torch.stack([long_row, short_row]), ["a.l0", "b.l0"], [False, False])
    result = diagnose(flow)
    assert result.verdict == "healthy" and result.evidence["nonfinite"] == 0


def test_fixes_skip_what_is_already_set_and_render_as_flags():
    flow = flow_from_profile([0.8**s for s in range(200)])
    fixes = diagnose(flow, current={"cell": "lstm", "init": "chrono:200"}).fixes
    assert all(fix.change != {"init": "chrono:200"} for fix in fixes)
    # chrono's forget biases are already above 1: forget_bias:1.0 would be a step back
    assert all(fix.change != {"init": "forget_bias:1.0"} for fix in fixes)
    assert fixes[0].cli == "--init=orthogonal"
    fixes = diagnose(flow, current={"cell": "lstm", "init": "forget_bias:1.0"}).fixes
    assert fixes[0].cli == "--init=chrono:200"
    truncation = [f for f in fixes if "bptt.window" in f.change]
    assert truncation and truncation[0].change["bptt.window"] == "31"  # the reach
    text = str(diagnose(flow, current={"cell": "rnn_tanh"}))
    assert text.startswith("verdict: vanishing")
    assert "--cell=lstm --init=chrono:200" in text


def test_learning_rate_fix_is_exact_when_the_rate_is_known():
    flow = flow_from_profile([1.2**s for s in range(60)])
    fixes = diagnose(flow, lr=0.01).fixes
    assert {"lr": "0.001"} in [f.change for f in fixes]


def test_the_reach_is_held_against_the_horizon_the_task_needs():
    flow = flow_from_profile([0.8**s for s in range(200)])  # reach 31
    assert diagnose(flow, horizon=30).verdict == "healthy"
    vanishing = diagnose(flow, horizon=100)
    assert vanishing.verdict == "vanishing" and vanishing.evidence["horizon"] == 100
    assert "where the task needs 100" in vanishing.summary()
    assert diagnose(flow).verdict == "vanishing"  # no horizon: the recorded 200 steps


def test_a_solved_task_is_healthy_whatever_the_profile():
    flow = flow_from_profile([0.5**s for s in range(100)])
    result = diagnose(flow, context=Context(horizon=100, solved=True))
    assert (result.verdict, result.fixes) == ("healthy", [])
    assert result.summary() == "the task is solved: nothing to fix"


def test_updates_too_small_to_move_the_weights_are_stalled_not_vanishing():
    flow = flow_from_profile([0.8**s for s in range(100)])
    result = diagnose(flow, lr=1e-6, context=Context(horizon=100, update_ratio=1e-6))
    assert result.verdict == "stalled" and result.evidence["update_ratio"] == 1e-6
    assert result.fixes[0].change == {"lr": "0.01"}  # 10^4x: updates up to ~3e-2 (capped)
    assert diagnose(flow, lr=1e-6, context=Context(update_ratio=5e-5)).fixes[0].change == \
        {"lr": "0.001"}  # 600x: the next power of ten, 1000x
    assert diagnose(flow, lr=1e-6, context=Context(update_ratio=9e-5)).fixes[0].change == \
        {"lr": "0.001"}  # 333x: 1000x
    assert diagnose(flow, context=Context(update_ratio=1e-3)).verdict == "vanishing"


def test_a_window_shorter_than_the_horizon_is_truncated_and_full_bptt_comes_first():
    flow = flow_from_profile([0.9**s for s in range(100)])
    result = diagnose(flow, horizon=90, window=25)
    assert result.verdict == "truncated" and result.evidence["window"] == 25
    assert [fix.change for fix in result.fixes] == [{"bptt.window": "none"},
                                                   {"bptt.window": "90"}]
    assert "full BPTT" in result.fixes[0].code
    assert diagnose(flow, horizon=20, window=25).verdict == "healthy"  # reach 66 >= 20


def test_a_gated_cell_is_read_down_to_a_faint_gradient():
    """Gates learn from a gradient of 1e-6 of its peak at the horizon (the suite: LSTMs
    with 10^-5.8 .. 10^-3.5 learnt, those with 10^-6.6 and less did not); an Elman RNN is
    held to 1e-3."""
    def at_horizon(log10: float) -> GradientFlow:  # the norm falls to 10^log10 at step 30
        return flow_from_profile([10 ** (log10 * s / 29) for s in range(30)])

    trained = Context(horizon=30, earlier_reach=(16, 16, 16))  # in training, flat
    lstm = diagnose(at_horizon(-5.5), current={"cell": "lstm"}, context=trained)
    assert lstm.verdict == "healthy" and lstm.evidence["reach_faint"] == 30
    assert lstm.reach == 16  # at 1e-3: 10^(-5.5 s / 29) < 1e-3 from s = 16
    assert "1e-06 of its peak for 30 steps back" in lstm.summary()
    gru = diagnose(at_horizon(-5.5), current={"cell": "gru"}, context=trained)
    assert gru.verdict == "healthy" and "gates" not in gru.evidence
    faint = diagnose(at_horizon(-7.0), current={"cell": "lstm"}, context=trained)
    assert faint.verdict == "vanishing" and faint.evidence["reach_faint"] == 25  # s > 24.9
    tanh = diagnose(at_horizon(-5.5), current={"cell": "rnn_tanh"}, context=trained)
    assert tanh.verdict == "vanishing"  # its faint reach is kept, not counted
    assert tanh.evidence["reach_faint"] == 30
    # On the initial weights an Elman RNN is read to 1e-6 too (training moves the reach
    # by orders of magnitude either way); told nothing, a flow is taken as in training.
    initial = Context(horizon=30, initial=True)
    for cell in ("rnn_tanh", "rnn_relu"):
        assert diagnose(at_horizon(-5.5), current={"cell": cell},
                        context=initial).verdict == "healthy"
        assert diagnose(at_horizon(-5.5), current={"cell": cell},
                        horizon=30).verdict == "vanishing"


def test_a_gru_is_not_judged_by_its_untrained_gates():
    """A GRU before training (reach 14-21 in the suite, T=60 to 150, all of which solved)
    and while its held-out metric is at chance (to-L100-gru: 13-15 steps for 300 steps,
    solved at 750) is healthy whatever its reach; once it has left chance, or for an LSTM,
    the reach decides again."""
    short = flow_from_profile([0.6**s for s in range(100)])  # reach 14 of 100, faint 28
    assert diagnose(short).reach == 14

    def judged(cell="gru", **context):
        return diagnose(short, current={"cell": cell},
                        context=Context(horizon=90, chance=0.75, **context))

    before = judged(initial=True)
    assert before.verdict == "healthy" and before.evidence["gates"] == "untrained"
    assert "at_chance" not in before.evidence and "--predict" in before.summary()
    at_chance = judged(metric=0.75, earlier_reach=(14, 13))
    assert at_chance.verdict == "healthy" and at_chance.evidence["at_chance"] is True
    assert "train longer" in at_chance.summary()
    assert judged(metric=0.5, earlier_reach=(14, 13)).verdict == "vanishing"  # learning
    assert judged(metric=None, earlier_reach=(14, 13)).verdict == "vanishing"  # unknown
    assert judged("lstm", metric=0.75, earlier_reach=(14, 13)).verdict == "vanishing"
    assert judged("lstm", initial=True).verdict == "vanishing"  # faint 28 of 90


def test_a_tanh_rnn_on_its_initial_weights_is_held_to_the_suites_limit():
    """A tanh RNN near an isometry reaches its whole horizon on the initial weights (the
    suite: 100 and 85 of 100 steps, orthogonal and Xavier) and collapses once it trains:
    on initial weights a horizon of 50 steps or more (the suite: none learnt 32 or more)
    is vanishing whatever the reach. Below 50, in training, for other cells, or
    with no horizon given: the reach decides."""
    full = flow_from_profile([0.999**s for s in range(120)])  # reach 120

    def verdict(cell="rnn_tanh", horizon=100, initial=True):
        return diagnose(full, current={"cell": cell},
                        context=Context(horizon=horizon, initial=initial))

    held = verdict()
    assert held.verdict == "vanishing" and held.evidence["tanh_horizon"] == 50
    assert "none learnt a task of 50 steps or more in rnnscope's diagnosis suite" in \
        held.summary()
    assert held.reach == 120 and "does not keep that reach" in held.summary()
    assert held.fixes[0].change == {"cell": "lstm", "init": "chrono:100"}
    assert verdict(horizon=50).verdict == "vanishing"  # the suite: none of these learnt
    assert verdict(horizon=49).verdict == "healthy"  # the reach decides
    assert verdict(initial=False).verdict == "healthy"
    assert verdict("rnn_relu").verdict == "healthy"  # an IRNN solves T=200 in the record
    assert verdict("lstm").verdict == "healthy"
    assert diagnose(full, current={"cell": "rnn_tanh"},
                    context=Context(initial=True)).verdict == "healthy"  # no horizon


def test_a_vanishing_summary_says_which_reach_held_it():
    full = flow_from_profile([1.0] * 100)
    recent = diagnose(full, current={"cell": "rnn_tanh"},
                      context=Context(horizon=100, earlier_reach=(40, 12, 100)))
    assert "12 steps back (the shortest of its last three recordings; 100 now)" in \
        recent.summary()


def test_a_run_whose_updates_never_moved_the_weights_is_stalled():
    """Stalled reads the largest update so far: 2e-4 of the weights' norm throughout is
    stalled; 2e-4 now after 5e-2 at first is a run that moved and slowed down."""
    flow = flow_from_profile([0.8**s for s in range(100)])
    stalled = diagnose(flow, lr=1e-5, context=Context(horizon=100, update_ratio=2e-4,
                                                      largest_update=1e-4))
    assert stalled.verdict == "stalled"
    assert stalled.fixes[0].change == {"lr": "0.01"}  # 2e-4 -> 3e-2: 150x, so 1000x
    moved = diagnose(flow, context=Context(horizon=100, update_ratio=2e-4,
                                           largest_update=5e-2))
    assert moved.verdict == "vanishing"


def test_a_window_that_holds_the_nearest_dependency_is_read_by_its_rate():
    """Adding with windows of 10: the second marked number may sit inside a window, so the
    weights learn there; the state must carry the rest, and the rate within the window
    says whether it can (0.977 per step: 0.977^100 = 0.097 of the peak at the horizon)."""
    cut = [0.977**s if s < 10 else 0.0 for s in range(100)]  # zero beyond the cut
    result = diagnose(flow_from_profile(cut), context=Context(horizon=100, window=10,
                                                              nearest=1))
    assert result.verdict == "healthy"
    assert result.evidence["extrapolated_at_horizon"] == pytest.approx(
        math.exp(100 * math.log(0.977)), rel=1e-6)
    fast = [0.7**s if s < 10 else 0.0 for s in range(100)]  # 0.7^100: nothing left
    lost = diagnose(flow_from_profile(fast), current={"cell": "rnn_tanh"},
                    context=Context(horizon=100, window=10, nearest=1))
    assert lost.verdict == "vanishing"
    # The state cannot carry it: a gated cell first, then full BPTT; no shorter window.
    assert [f.change for f in lost.fixes][:2] == [{"cell": "lstm", "init": "chrono:100"},
                                                  {"bptt.window": "none"}]
    assert all(f.change.get("bptt.window") in (None, "none") for f in lost.fixes)
    # Temporal order, L=100: its nearest dependency is 41 steps back; no window of 20
    # holds one, whatever the rate, and neither does any window when it is not known.
    for nearest in (41, None):
        assert diagnose(flow_from_profile(cut), context=Context(
            horizon=90, window=20, nearest=nearest)).verdict == "truncated"
    # A rate above 1 keeps at most all of it; an empty row (a layer with no step here)
    # has no rate and takes no part, wherever it comes.
    growing = [1.01**s if s < 10 else 0.0 for s in range(100)]
    grows = diagnose(flow_from_profile(growing), context=Context(horizon=100, window=10,
                                                                 nearest=1))
    assert grows.verdict == "healthy" and grows.evidence["extrapolated_at_horizon"] == 1.0
    cut_row = torch.tensor(cut, dtype=torch.float64).flip(0)
    for rows in ([cut_row, torch.full((100,), float("nan"))],
                 [torch.full((100,), float("nan")), cut_row]):
        mixed = GradientFlow(torch.stack(rows), ["a", "b"], [False, False])
        assert diagnose(mixed, context=Context(horizon=100, window=10, nearest=1)
                        ).verdict == "healthy"
    # A gradient that dies inside the window: no rate to extrapolate.
    dying = [0.977**s if s < 5 else 1e-9 for s in range(10)] + [0.0] * 90
    assert diagnose(flow_from_profile(dying), context=Context(
        horizon=100, window=10, nearest=1)).verdict == "vanishing"


def test_an_elman_rnn_is_held_to_its_shortest_recent_reach():
    """An Elman RNN's reach swings between recordings (the suite: 12, 100, 100, then 3);
    it is held to the shortest of the last three. A gated cell is not."""
    full = flow_from_profile([1.0] * 100)  # reach 100 now
    tanh = diagnose(full, current={"cell": "rnn_tanh"},
                    context=Context(horizon=100, earlier_reach=(40, 12, 100)))
    assert tanh.verdict == "vanishing" and tanh.evidence["reach_recent_min"] == 12
    assert diagnose(full, current={"cell": "rnn_tanh"}, context=Context(
        horizon=100, earlier_reach=(12, 100, 100))).verdict == "healthy"  # 12 is 3 back
    assert diagnose(full, current={"cell": "lstm"}, context=Context(
        horizon=100, earlier_reach=(40, 12, 100))).verdict == "healthy"
    assert diagnose(full, current={"cell": "rnn_relu"}).verdict == "healthy"  # no history


def test_an_elman_rnn_at_chance_is_held_to_the_shortest_faint_reach_it_has_had():
    """The suite's add-T100-tanh reached 25, 100, 100 steps within 1e-6 of the peak at steps
    1, 25, 50 with its held-out MSE at 2.1x chance, then 5: an Elman RNN that stores
    nothing yet is read as on its initial weights (to 1e-6) and held to the shortest such
    reach of every recording given, the initial one included. One that has left chance
    (below 3/4 of it) is read as before; so is one with no metric. (Read here for an IRNN:
    a tanh RNN asked for 60 steps is held to its limit first.)"""
    full = flow_from_profile([1.0] * 60)  # reach 60 now, faint too

    def verdict(metric, earlier=(12, 60), faint=(25, 60), cell="rnn_relu", chance=1 / 6):
        return diagnose(full, current={"cell": cell}, context=Context(
            horizon=60, earlier_reach=earlier, earlier_faint=faint, metric=metric,
            chance=chance))

    at_chance = verdict(0.353)
    assert at_chance.verdict == "vanishing"
    assert at_chance.evidence["reach_at_chance_min"] == 25
    assert at_chance.evidence["metric"] == 0.353 and at_chance.evidence["chance"] == 1 / 6
    assert "reached at least 25 steps back at each recent recording (60 within 0.001 " \
        "now), where the task needs 60: an Elman RNN's reach shrinks" in at_chance.summary()
    told_less = verdict(0.353, faint=())  # no faint reaches kept: the reaches stand in
    assert told_less.evidence["reach_at_chance_min"] == 12
    assert "(earlier ones read to 0.001)" in told_less.summary()
    assert "earlier ones" not in at_chance.summary()
    kept = verdict(0.353, faint=(60, 60))
    assert kept.verdict == "healthy" and kept.evidence["reach_at_chance_min"] == 60
    assert verdict(0.75 / 6 + 1e-9).verdict == "vanishing"  # just above 3/4 of chance
    assert verdict(0.75 / 6).verdict == "healthy"  # at 3/4 of chance it has learnt
    assert verdict(0.01).verdict == "healthy"  # it has learnt something: not held
    assert verdict(None).verdict == "healthy"  # no metric: nothing known of it
    assert verdict(float("nan")).verdict == "healthy"  # a broken metric tells nothing
    assert verdict(0.353, chance=None).verdict == "healthy"  # no chance level: unknown
    assert verdict(0.353, earlier=(), faint=()).verdict == "healthy"  # no history yet
    assert verdict(0.353, cell="lstm").verdict == "healthy"  # gates hold what they learn
    assert verdict(0.353, cell=None).verdict == "healthy"  # the cell unknown: not held
    # A tanh RNN asked for 50 steps or more at chance is held to its limit first.
    assert verdict(0.353, cell="rnn_tanh", faint=(60, 60)).evidence["tanh_horizon"] == 50
    # Under the limit the same rule holds it to its shortest faint reach.
    tanh = diagnose(full, current={"cell": "rnn_tanh"}, context=Context(
        horizon=40, earlier_reach=(12, 60), earlier_faint=(25, 60), metric=0.353,
        chance=1 / 6))
    assert tanh.verdict == "vanishing" and tanh.evidence["reach_at_chance_min"] == 25
    assert "tanh_horizon" not in tanh.evidence
    # Longer ago than the three-recording rule looks: at chance, every reach given counts.
    far = verdict(0.353, earlier=(9, 60, 60, 60), faint=(9, 60, 60, 60))
    assert far.verdict == "vanishing" and far.evidence["reach_at_chance_min"] == 9
    # With three earlier recordings it is held to its last three within 1e-3 as well: at
    # chance never more kindly than in training (the demo's IRNN: 35-50 steps within 1e-3,
    # all 50 within 1e-6, at chance after 800 steps).
    swinging = diagnose(flow_from_profile([1.0] * 35 + [1e-4] * 15),
                        current={"cell": "rnn_relu"}, context=Context(
                            horizon=50, earlier_reach=(50, 40, 50), earlier_faint=(50,) * 3,
                            metric=0.154, chance=1 / 6))
    assert swinging.reach == 35 and swinging.evidence["reach_faint"] == 50
    assert swinging.evidence["reach_at_chance_min"] == 50
    assert swinging.verdict == "vanishing" and swinging.evidence["reach_recent_min"] == 35
    assert swinging.summary().startswith("the gradient falls below 0.001 of its peak 35 "
                                         "steps back, where the task needs 50")
    # Only the last HISTORY (8) are read, however many a caller gives.
    older = (9,) + (60,) * HISTORY
    assert verdict(0.353, earlier=older, faint=older).verdict == "healthy"
    # The suite's to-L20-tanh at lr 1e-3: 13 steps within 1e-3 at steps 1 and 25, all 20
    # within 1e-6; at chance at step 50, it went on to solve. Read to 1e-3 it was a false
    # alarm; read as untrained, it is healthy.
    slow = flow_from_profile([10 ** (-5.7 * s / 19) for s in range(20)])
    learner = diagnose(slow, current={"cell": "rnn_tanh"}, context=Context(
        horizon=18, earlier_reach=(13, 13), earlier_faint=(20, 20), metric=0.68,
        chance=0.75))
    assert learner.reach == 11 and learner.evidence["reach_faint"] == 20
    assert learner.verdict == "healthy" and learner.evidence["reach_at_chance_min"] == 20


def test_an_untrained_tanh_rnn_asked_for_a_long_horizon_is_vanishing_at_chance_too():
    full = flow_from_profile([1.0] * 120)
    at_chance = diagnose(full, current={"cell": "rnn_tanh"}, context=Context(
        horizon=100, earlier_reach=(120,), metric=1.0, chance=1.0))
    assert at_chance.verdict == "vanishing" and at_chance.evidence["tanh_horizon"] == 50
    assert "before the model has learnt anything" in at_chance.summary()
    learnt = diagnose(full, current={"cell": "rnn_tanh"}, context=Context(
        horizon=100, earlier_reach=(120,), metric=0.5, chance=1.0))
    assert learnt.verdict == "healthy"


def test_a_tanh_rnn_still_at_chance_after_a_normal_run_on_a_task_over_20_steps_vanishes():
    """The suite's to-L30-tanh-orthogonal (27 steps back): all 30 steps within 1e-3 at
    step 50, its error at 0.81 of chance after 50 updates of Adam at 1e-2 (0.5 of summed
    rate); it never learnt. Every tanh RNN that learnt a task over 20 steps had left chance
    by then. Just under either limit, at 3/4 of chance, another cell, or without the summed
    rate (SGD, a user's loop without the optimiser) the rule is silent."""
    full = flow_from_profile([1.0] * 30)

    def verdict(lr_total=0.5, horizon=27, metric=0.61, cell="rnn_tanh", chance=0.75):
        return diagnose(full, current={"cell": cell}, context=Context(
            horizon=horizon, earlier_reach=(30, 30), earlier_faint=(30, 30), metric=metric,
            chance=chance, lr_total=lr_total))

    stuck = verdict()
    assert stuck.verdict == "vanishing" and stuck.evidence["at_chance_after"] == 0.5
    assert stuck.evidence["lr_total"] == 0.5 and stuck.reach == 30
    assert stuck.evidence["of_chance"] == pytest.approx(0.61 / 0.75, rel=1e-12)
    assert stuck.summary() == (
        "the held-out metric is still at chance, at 0.813 of chance after 0.5 of summed "
        "learning rate (50 updates at 1e-2 is 0.5), on a task needing 27 steps back: a tanh "
        "RNN that learns a task longer than 20 steps leaves chance sooner (in rnnscope's "
        "diagnosis suite every one did); the gradient reaches 30 steps back now, but "
        "nothing is stored")
    assert stuck.fixes and stuck.fixes[0].change.get("cell") == "lstm"
    assert verdict(lr_total=0.49).verdict == "healthy"  # 49 updates at 1e-2: too soon
    assert sum([0.05] * 10) < 0.5  # ten updates at 0.05 fall a rounding short of 0.5,
    assert verdict(lr_total=sum([0.05] * 10)).verdict == "vanishing"  # and count as 0.5
    assert verdict(lr_total=None).verdict == "healthy"  # not told: the rule is silent
    assert verdict(horizon=21).verdict == "vanishing"
    assert verdict(horizon=20).verdict == "healthy"  # to-L22-tanh learnt from 0.77 of chance
    assert verdict(metric=0.75 * 0.75).verdict == "healthy"  # at 3/4 of chance: learnt
    assert verdict(metric=0.75 * 0.75 + 1e-9).verdict == "vanishing"
    assert verdict(metric=None).verdict == "healthy"
    assert verdict(chance=None).verdict == "healthy"
    assert verdict(cell="rnn_relu").verdict == "healthy"  # measured on tanh RNNs only
    assert verdict(cell="gru").verdict == "healthy"  # a GRU at chance learns later
    assert verdict(cell="lstm").verdict == "healthy"
    # Where the rule is silent, the earlier ones still speak: the 50-step limit.
    assert verdict(horizon=60, lr_total=None).evidence["tanh_horizon"] == 50
    assert "lr_total" not in verdict(lr_total=None).evidence


def test_a_tanh_rnn_no_better_than_chance_after_a_normal_run_on_10_to_20_steps_vanishes():
    """The suite's add-T15-tanh (15 steps back): its error 1.25x chance after 50 updates
    of Adam at 1e-2; it never learnt (an LSTM did). From 10 to 20 steps back a tanh RNN may
    leave chance later (to-L22-tanh, 20 steps back, learnt from 0.77 of it at step 50), so
    there the rule asks for no better than chance itself; below 10 steps it is silent."""
    full = flow_from_profile([1.0] * 15)

    def verdict(lr_total=0.5, horizon=15, metric=0.2083, chance=1 / 6, cell="rnn_tanh"):
        return diagnose(full, current={"cell": cell}, context=Context(
            horizon=horizon, earlier_reach=(15, 15), earlier_faint=(15, 15), metric=metric,
            chance=chance, lr_total=lr_total))

    stuck = verdict()
    assert stuck.verdict == "vanishing" and stuck.evidence["at_chance_after"] == 0.5
    assert stuck.evidence["of_chance"] == pytest.approx(1.2498, rel=1e-12)
    assert stuck.summary() == (
        "the held-out metric is no better than chance, at 1.25 of chance after 0.5 of summed "
        "learning rate (50 updates at 1e-2 is 0.5), on a task needing 15 steps back: a tanh "
        "RNN that learns a task of 10-20 steps has moved off chance by then (in rnnscope's "
        "diagnosis suite every one had); the gradient reaches 15 steps back now, but nothing "
        "is stored")
    assert stuck.fixes and stuck.fixes[0].change.get("cell") == "lstm"
    assert verdict(metric=1 / 6).verdict == "vanishing"  # exactly chance: no better
    assert verdict(metric=1 / 6 * (1 - 1e-9)).verdict == "healthy"  # a hair better
    assert verdict(metric=0.77 / 6).verdict == "healthy"  # to-L22-tanh's 0.77: it learnt
    assert verdict(horizon=20).verdict == "vanishing" and verdict(horizon=10).verdict == \
        "vanishing"
    assert verdict(horizon=9).verdict == "healthy"  # below the suite's tanh RNNs: silent
    assert verdict(lr_total=0.49).verdict == "healthy"  # 49 updates at 1e-2: too soon
    assert verdict(lr_total=None).verdict == "healthy"
    assert verdict(metric=None).verdict == "healthy"
    assert verdict(metric=float("inf")).verdict == "healthy"  # not finite: not read
    assert verdict(chance=None).verdict == "healthy"
    assert verdict(cell="gru").verdict == "healthy"
    assert verdict(cell="rnn_relu").verdict == "healthy"
    # Over 20 steps back the rule asks less (at chance: above 3/4 of it), so from 21 on the
    # learner's 0.77 counts as stuck.
    assert verdict(horizon=21, metric=0.77 / 6).verdict == "vanishing"
    assert verdict(horizon=20).evidence["chance_band"] == "near"
    assert verdict(horizon=20).summary().startswith(
        "the held-out metric is no better than chance, at 1.25 of chance")
    assert verdict(horizon=21).evidence["chance_band"] == "far"
    assert verdict(horizon=21).summary().startswith(
        "the held-out metric is still at chance, at 1.25 of chance")
    # A summed rate that is not a number, a chance of 0, a metric that is not: silent.
    for broken in (float("nan"), float("inf")):
        assert verdict(lr_total=broken).verdict == "healthy"
        assert verdict(horizon=27, lr_total=broken).verdict == "healthy"
    assert verdict(chance=0.0).verdict == "healthy"
    assert verdict(metric=float("nan")).verdict == "healthy"


def test_a_tanh_rnn_not_yet_trained_enough_to_tell_says_so_beside_its_healthy():
    """On its initial weights, or at chance before 0.5 of summed rate (--predict at 1e-3:
    0.05), a tanh RNN asked for 10-49 steps whose gradient reaches is `healthy` with
    `undecided_until`: in the suite such setups learnt or not by init, rate and seed. Not
    said of other cells, of horizons outside the band, once trained enough, once it left
    chance, for SGD (no summed rate: the rule never tells), nor of a vanishing verdict."""
    full = flow_from_profile([1.0] * 24)

    def read(cell="rnn_tanh", horizon=22, **told):
        told = {"initial": True, **told}
        return diagnose(full, current={"cell": cell}, context=Context(horizon=horizon, **told))

    initial = read()
    assert initial.verdict == "healthy" and initial.evidence["undecided_until"] == 0.5
    assert initial.summary().endswith(
        "; but too soon to tell: whether a tanh RNN learns a task of 10-49 steps depends on "
        "the task, init, rate and seed more than on what its gradient reaches now, and its "
        "held-out metric after 0.5 of summed learning rate (50 Adam updates at 1e-2) tells: "
        "train that far and diagnose again (for rnnscope's tasks, `rnnscope diagnose "
        "--predict --lr 0.01`)")
    assert "undecided_until" in read(horizon=10).evidence
    assert "undecided_until" in read(horizon=49).evidence
    assert "undecided_until" not in read(horizon=9).evidence
    assert read(horizon=50).verdict == "vanishing"  # the 50-step limit decides
    assert "undecided_until" not in read(horizon=50).evidence
    for cell in ("lstm", "gru", "rnn_relu", None):
        assert "undecided_until" not in read(cell=cell).evidence
    assert "undecided_until" not in read(solved=True).evidence
    # Under truncation the windows' rules decide (and the summed rate never will).
    windowed = read(window=10, nearest=5)
    assert windowed.verdict == "healthy" and "undecided_until" not in windowed.evidence
    assert "undecided_until" in read(window=22).evidence  # a window spanning the task
    # Only beside a healthy: a short reach on initial weights is vanishing as it was.
    short = diagnose(flow_from_profile([0.5 ** s for s in range(24)]),
                     current={"cell": "rnn_tanh"}, context=Context(horizon=22, initial=True))
    assert short.verdict == "vanishing" and "undecided_until" not in short.evidence
    assert "too soon" not in short.summary()
    huge = read(update_ratio=2.0)
    assert huge.verdict == "exploding" and "undecided_until" not in huge.evidence
    early = {"initial": False, "earlier_reach": (24, 24), "earlier_faint": (24, 24),
             "chance": 0.75}
    assert read(**early, metric=0.7, lr_total=0.05).evidence["undecided_until"] == 0.5
    assert "undecided_until" not in read(**early, metric=0.3, lr_total=0.05).evidence
    assert "undecided_until" not in read(**early, metric=0.7, lr_total=None).evidence
    assert read(**early, metric=0.7, lr_total=0.5).verdict == "vanishing"  # told: stuck
    assert "undecided_until" not in read(**early, metric=0.7, lr_total=0.5).evidence
    # Ten updates at 0.05 summed (a rounding short of 0.5) count as 0.5: the rules have
    # spoken, here at 0.8 of chance and 15 steps back, where the near rule is silent.
    assert sum([0.05] * 10) < 0.5
    spoken = read(**early, horizon=15, metric=0.6, lr_total=sum([0.05] * 10))
    assert spoken.verdict == "healthy" and "undecided_until" not in spoken.evidence
    for broken in (float("nan"), float("inf"), -0.1):  # not a summed rate: no claim
        assert "undecided_until" not in read(**early, metric=0.7, lr_total=broken).evidence
    assert "too soon" not in read(horizon=9).summary()


def test_the_summed_rate_of_a_run_counts_adam_like_updates_up_to_the_evaluation():
    from rnnscope.training.config import ExperimentConfig
    from rnnscope.training.history import lr_total

    lines = [{"kind": "train", "step": s, "lr": 0.01} for s in range(1, 101)]
    lines += [{"kind": "eval", "step": 50, "metric": 0.5}, {"kind": "probe", "step": 60}]
    adam = ExperimentConfig.from_dict({"optim": {"name": "adam", "lr": 0.01}})
    assert lr_total(adam, lines, 50) == pytest.approx(0.5, rel=1e-12)
    assert lr_total(adam, lines, 100) == pytest.approx(1.0, rel=1e-12)
    assert lr_total(adam, lines, None) is None  # no evaluation yet
    rmsprop = ExperimentConfig.from_dict({"optim": {"name": "rmsprop", "lr": 0.01}})
    assert lr_total(rmsprop, lines, 50) is None  # its first steps are ~10x its rate
    sgd = ExperimentConfig.from_dict({"optim": {"name": "sgd", "lr": 0.01}})
    assert lr_total(sgd, lines, 50) is None  # SGD's step is the rate times the gradient


def test_a_gated_cell_whose_reach_keeps_growing_is_healthy():
    """A GRU at T=100 reached 15, 25, 76 steps at steps 1, 25, 50 and went on to solve:
    its gates are learning to hold the state. Falling or flat, or an Elman RNN: vanishing."""
    short = flow_from_profile([1.0] * 76 + [1e-9] * 24)  # reach 76 of 100, faint too
    gru = diagnose(short, current={"cell": "gru"},
                   context=Context(horizon=100, earlier_reach=(3, 15, 25)))
    assert gru.verdict == "healthy" and gru.evidence["reach_trend"] == "15 -> 25 -> 76"
    assert diagnose(flow_from_profile([1.0] + [1e-9] * 99), current={"cell": "lstm"},
                    context=Context(horizon=100, earlier_reach=(0, 0))).verdict == \
        "vanishing"  # 0 -> 0 -> 0: a dead gradient does not rise
    for earlier in ((42, 76), (40, 30), (76,), ()):  # < twice, falls, too short, none
        assert diagnose(short, current={"cell": "lstm"}, context=Context(
            horizon=100, earlier_reach=earlier)).verdict == "vanishing", earlier
    assert diagnose(short, current={"cell": "rnn_tanh"}, context=Context(
        horizon=100, earlier_reach=(15, 25))).verdict == "vanishing"


def test_an_lstm_cell_state_that_carries_the_gradient_counts_for_the_reach():
    steps = 120
    h = torch.tensor([0.8**s for s in range(steps)], dtype=torch.float64).flip(0)
    c = torch.tensor([0.99**s for s in range(steps)], dtype=torch.float64).flip(0)
    flow = GradientFlow(torch.stack([h, c]), ["rnn.l0", "rnn.l0/c"], [False, False],
                        states=["h", "c"])
    result = diagnose(flow)
    assert result.verdict == "healthy" and result.reach == steps
    only_h = GradientFlow(h.unsqueeze(0), ["rnn.l0"], [False])
    assert diagnose(only_h).verdict == "vanishing"


# --- real models on the adding problem -----------------------------------------------------

def recorded(cell, init, seq_len, *, hidden=64, seed=0, train_steps=0):
    torch.manual_seed(seed)
    task = get_task("adding", seq_len=seq_len)
    model = SequenceModel(cell, 2, hidden, 1)
    scheme, kwargs = parse_init_spec(init)
    rnnscope.init_(model, scheme, **kwargs)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(seed)
    for step in range(train_steps + 1):
        inputs, targets = task.batch(32, generator)
        optimiser.zero_grad()
        with rnnscope.record(model) as rec:
            output, _ = model(inputs)
            task.loss(output, targets).backward()
        if step < train_steps:  # diagnose the weights the last recording saw
            optimiser.step()
    return rec


@pytest.fixture(autouse=True)
def flush_subnormals():
    flush_denormal(True)
    yield
    flush_denormal(False)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tanh_rnn_with_xavier_init_vanishes_at_t200(seed):
    # At initialisation Xavier puts W_hh's spectral radius near 1 and the profile is
    # borderline (rate ~0.94-1.0); thirty Adam steps on the task make it vanish.
    result = diagnose(recorded("rnn_tanh", "xavier_uniform", 200, seed=seed, train_steps=30))
    assert result.verdict == "vanishing"
    assert result.reach < 60
    assert result.rate < 0.95


def test_relu_rnn_with_spectral_radius_3_explodes():
    rec = recorded("rnn_relu", "spectral:3.0", 50)
    result = diagnose(rec)
    assert result.verdict == "exploding"
    assert result.rate > 1.5
    assert result.evidence["spectral_radius_max"] == pytest.approx(3.0, rel=1e-5)
    assert result.evidence["lyapunov_max"] > 0
    assert result.fixes[0].change == {"cell": "lstm", "init": "chrono:50"}  # Elman, grows
    clipping = next(f for f in result.fixes if list(f.change) == ["clip"])
    threshold = float(clipping.change["clip"].split(":")[1])
    assert 0 < threshold < result.evidence["grad_norm_total"]


def test_overflow_from_explosive_weights_puts_the_cause_first():
    rec = recorded("rnn_relu", "spectral:3.0", 200)  # 3^200 overflows float32 going forward
    result = diagnose(rec)
    assert result.verdict == "nonfinite"
    assert result.evidence["lyapunov_max"] > 0
    assert result.fixes[0].change == {"init": "spectral:1.0"}
    assert {"guard": "rollback"} in [f.change for f in result.fixes]


def test_injected_nan_is_nonfinite():
    torch.manual_seed(0)
    task = get_task("adding", seq_len=20)
    model = SequenceModel("lstm", 2, 8, 1)
    inputs, targets = task.batch(4, torch.Generator().manual_seed(0))
    inputs[5, 2, 0] = float("nan")
    with rnnscope.record(model) as rec:
        output, _ = model(inputs)
        task.loss(output, targets).backward()
    assert diagnose(rec).verdict == "nonfinite"


def test_remedies_reach_far_further_than_the_tanh_rnn():
    tanh = diagnose(recorded("rnn_tanh", "torch_default", 200))
    irnn = diagnose(recorded("rnn_relu", "identity:1.0", 200))
    chrono = diagnose(recorded("lstm", "chrono:200", 200))
    assert tanh.verdict == "vanishing" and tanh.reach < 30
    assert irnn.reach == 200 and irnn.verdict == "healthy"
    assert chrono.reach > 3 * tanh.reach
    assert tanh.evidence["lyapunov_max"] < chrono.evidence["lyapunov_max"]


def test_an_update_larger_than_the_weights_is_exploding_and_a_smaller_rate_comes_first():
    """The doctor suite's adding problem with Adam at lr 1.0: its first update moved the
    weights by 5.2x their norm, the units saturated, and a tenth of the rate, clipped,
    solved it in one run of three. The first fix brings the update to 0.1 of the weights,
    the largest first update of the suite's runs that learn: lr 1 * 0.1 / 5.2, clipped.
    The flow itself need not grow."""
    flow = flow_from_profile([0.99**s for s in range(50)])  # a healthy-looking profile
    result = diagnose(flow, lr=1.0, context=Context(horizon=50, update_ratio=5.2))
    assert result.verdict == "exploding" and result.evidence["cause"] == "update"
    assert result.fixes[0].change == {"lr": "0.02", "clip": "norm:1.0"}
    assert "5.2x their norm" in result.summary()
    # Without the rate the fix says the factor, not a value.
    unknown = diagnose(flow, context=Context(horizon=50, update_ratio=4.0))
    assert unknown.fixes[0].change == {"lr": "<0.03x the current>", "clip": "norm:1.0"}
    # An infinite update has no size to scale by: a tenth of the rate, never lr 0.
    endless = diagnose(flow, lr=0.5, context=Context(horizon=50, update_ratio=math.inf))
    assert endless.verdict == "exploding"
    assert endless.fixes[0].change == {"lr": "0.05", "clip": "norm:1.0"}
    assert "infinite" in endless.fixes[0].why
    # At the threshold (an update as large as the weights) it is not yet a verdict.
    assert diagnose(flow, context=Context(horizon=50, update_ratio=1.0)).verdict == "healthy"
    # A flow that grows keeps its own cause and fixes.
    growing = diagnose(flow_from_profile([1.1**s for s in range(100)]),
                       context=Context(update_ratio=5.0))
    assert growing.verdict == "exploding" and "cause" not in growing.evidence


def test_an_earlier_huge_update_stays_the_cause_after_the_units_saturate():
    """After the lr-1.0 run's first update its reach fell to 1 step and its updates to
    1e-5: stalled by today's numbers alone, exploding by its history."""
    dead = flow_from_profile([1.0] + [1e-9] * 49)
    alone = diagnose(dead, lr=1.0, context=Context(horizon=50, update_ratio=1e-5))
    assert alone.verdict == "stalled"
    remembered = diagnose(dead, lr=1.0, context=Context(horizon=50, update_ratio=1e-5,
                                                        largest_update=5.2))
    assert remembered.verdict == "exploding"
    assert remembered.evidence["largest_update"] == 5.2
    assert remembered.fixes[0].change == {"lr": "0.02", "clip": "norm:1.0"}


def test_the_chance_level_is_told_for_the_tasks_that_know_their_horizon():
    """LEFT_CHANCE was measured on the synthetic tasks; a file task's baseline is a naive
    forecast or a unigram model, which a model that has learnt much may still be near."""
    from types import SimpleNamespace

    from rnnscope.flow.diagnosis import chance_level
    from rnnscope.tasks import get_task

    assert chance_level(get_task("adding", seq_len=20)) == 1 / 6
    assert chance_level(get_task("temporal_order", seq_len=20)) == 0.75
    assert chance_level(SimpleNamespace(baseline=0.9, reach_needed=None)) is None
