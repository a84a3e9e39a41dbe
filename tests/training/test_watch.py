"""rnnscope.watch over a plain PyTorch loop: the run directory it writes, the probes equal
to record() on the same weights and batch, the report, and the edges."""

from __future__ import annotations

import html
import json
import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import rnnscope
from rnnscope.figures.canvas import plt
from rnnscope.figures.flow import flow_heatmap_figure
from rnnscope.remedies.guard import TrainingDiverged
from rnnscope.report.data import load_run
from rnnscope.report.render import render_report
from support import WatchedModel as Model
from support import metrics_lines
from support import watched_loop as plain_loop


def test_a_watched_loop_writes_a_run_directory_of_probes_and_curves(tmp_path):
    watcher, _, _ = plain_loop(tmp_path / "run")
    run = tmp_path / "run"
    lines = metrics_lines(run)
    probes = [line for line in lines if "flow" in line]
    logged = [line for line in lines if "loss" in line]
    assert [line["step"] for line in probes] == [1, *range(5, 61, 5)]  # first, every 5th
    assert [line["step"] for line in logged] == list(range(1, 61))
    assert all(line["flow"]["layers"] == ["rnn.l0"] for line in probes)
    assert all(line["verdict"] in ("vanishing", "healthy") for line in probes)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "watched" and summary["source"] == "watch"
    assert summary["steps"] == 60 and summary["probes"] == 13 and summary["format"] == 1
    assert summary["final_loss"] == pytest.approx(logged[-1]["loss"])
    assert summary["diagnosis"]["verdict"] == probes[-1]["verdict"]
    assert all("code" in fix for fix in summary["fix_details"])
    assert "watch" in (run / "config.yaml").read_text()
    assert [step for step, _ in watcher.history] == [line["step"] for line in probes]
    assert list(run.glob("events.out.tfevents.*"))


def test_the_norms_at_a_probe_equal_record_on_the_same_weights_and_batch(tmp_path):
    _, _, kept = plain_loop(tmp_path / "run", keep_at=(5, 30))
    probes = {line["step"]: line for line in metrics_lines(tmp_path / "run") if "flow" in line}
    for step, (weights, inputs, targets) in kept.items():
        model = Model()
        model.load_state_dict(weights)  # an LSTM, as in the loop
        with rnnscope.record(model) as rec:
            nn.functional.mse_loss(model(inputs), targets).backward()
        expected = rec.flow.norms[0].tolist()
        assert probes[step]["flow"]["norms"][0] == pytest.approx(expected, rel=1e-6)


def test_the_report_of_a_watched_run_has_the_heat_map_of_every_probe_and_the_loss(tmp_path):
    plain_loop(tmp_path / "run", rnn=nn.RNN, seq_len=60)  # a tanh RNN: the gradient vanishes
    run = load_run(tmp_path / "run")
    figure = flow_heatmap_figure(run.probes)
    assert figure.axes[0].images[0].get_array().shape == (13, 60)  # probes x steps back
    plt.close(figure)
    report = render_report(tmp_path / "run")
    page = report.html
    assert report.figures == 3  # heat map, slices, curves
    assert "Gradient flow over training" in page and "Loss and held-out metric" in page
    assert "gradient norms (&quot;grad_norm&quot;) in metrics.jsonl" in page  # skipped, said
    assert "60 training steps watched" in page
    assert run.summary["diagnosis"]["verdict"] == "vanishing"
    assert run.summary["fix_details"] and all(  # the fixes, flags and code
        html.escape(fix["code"]) in page and html.escape(fix["cli"]) in page
        for fix in run.summary["fix_details"])


def test_nonfinite_numbers_warn_or_raise_and_the_summary_says_so(tmp_path):
    model = Model()
    x = torch.randn(12, 4, 2)
    with pytest.warns(UserWarning, match="watch: step 1: loss not finite"), \
            rnnscope.watch(model, tmp_path / "warned", every=1) as watcher:
        model(x).sum().backward()
        watcher.log(loss=math.nan)
    with pytest.raises(TrainingDiverged, match="watch: step 1: loss not finite"), \
            rnnscope.watch(model, tmp_path / "raised", every=1, nonfinite="raise") as watcher:
        model(x).sum().backward()
        watcher.log(loss=float("inf"))
    summary = json.loads((tmp_path / "raised" / "summary.json").read_text())
    assert summary["status"] == "diverged" and "loss not finite" in summary["message"]


def test_flushing_is_switched_on_while_watching_and_off_after(tmp_path):
    model = Model()
    tiny = torch.tensor([1e-40])  # subnormal in float32
    with rnnscope.watch(model, tmp_path / "a"):
        assert (tiny * 1.0).item() == 0.0  # flushed
    assert (tiny * 1.0).item() != 0.0
    with rnnscope.watch(model, tmp_path / "b", flush_subnormals=False):
        assert (tiny * 1.0).item() != 0.0


def test_a_compiled_model_is_watched(tmp_path):
    torch.manual_seed(0)
    model = Model()
    compiled = torch.compile(model, backend="eager")
    with rnnscope.watch(compiled, tmp_path / "run", every=2) as watcher:
        for _ in range(4):
            compiled(torch.randn(12, 4, 2)).sum().backward()
    assert [step for step, _ in watcher.history] == [1, 2, 4]


def test_only_rank_zero_writes(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 1)
    model = Model()
    with rnnscope.watch(model, tmp_path / "run", every=1) as watcher:
        model(torch.randn(12, 4, 2)).sum().backward()
        watcher.log(loss=1.0)
    assert not (tmp_path / "run").exists() and watcher.history == []
    assert "forward" not in model.rnn.__dict__  # not even recorded on ranks > 0


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"every": 0}, "every: must be an integer >= 1, got 0"),
    ({"nonfinite": "stop"}, "nonfinite: unknown 'stop'; accepted: warn, raise"),
    ({"out": ""}, "out: expected a directory path, got ''"),
])
def test_bad_arguments_name_the_field(tmp_path, kwargs, message):
    arguments = {"out": tmp_path / "run", **kwargs}
    with pytest.raises(ValueError) as error:
        rnnscope.watch(Model(), **arguments)
    assert str(error.value) == message
    assert not (tmp_path / "run").exists()


def test_an_existing_run_is_never_overwritten(tmp_path):
    plain_loop(tmp_path / "run", steps=2)
    before = (tmp_path / "run" / "metrics.jsonl").read_text()
    with pytest.raises(ValueError, match="already holds a run"), \
            rnnscope.watch(Model(), tmp_path / "run"):
        pass
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == before
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing left patched or flushed by the refusal
        assert (torch.tensor([1e-40]) * 1.0).item() != 0.0


def test_a_held_out_metric_at_chance_reaches_the_diagnosis(tmp_path):
    """With `chance` and `w.held_out(metric)` a watched GRU still at chance is not held to
    its untrained gates; told nothing, the same recording is vanishing (its reach is
    about 14 of 60 steps). The metric is logged; a NaN one leaves the metric unknown."""
    def probed(out, **options):
        torch.manual_seed(0)
        model = Model(nn.GRU)
        inputs = torch.randn(60, 8, 2)  # time-major, as the model reads it
        with rnnscope.watch(model, out, every=1, **options) as watcher:
            for step in range(3):
                nn.functional.mse_loss(model(inputs), torch.zeros(8, 1)).backward()
                model.zero_grad()
                if "chance" in options:
                    watcher.held_out(torch.tensor(0.2) if step < 2 else 0.19)
        return watcher

    told = probed(tmp_path / "told", chance=1 / 6)
    assert [d.verdict for _, d in told.history] == ["healthy"] * 3
    assert told.history[-1][1].evidence["at_chance"] is True
    # A recording is diagnosed once its update is done: the metric told by then counts.
    assert [d.evidence["metric"] for _, d in told.history] == pytest.approx([0.2, 0.2, 0.19])
    summary = json.loads((tmp_path / "told" / "summary.json").read_text())
    assert summary["evidence"]["metric"] == pytest.approx(0.19)
    logged = [line["held_out_metric"] for line in metrics_lines(tmp_path / "told")
              if "held_out_metric" in line]
    assert logged == pytest.approx([0.2, 0.2, 0.19])
    blind = probed(tmp_path / "blind")
    assert [d.verdict for _, d in blind.history][1:] == ["vanishing"] * 2
    assert blind.history[-1][1].reach < 30

    with rnnscope.watch(Model(), tmp_path / "bad", chance=1.0) as watcher:
        with pytest.raises(ValueError, match=r"^metric: must be a number, got 'low'$"):
            watcher.held_out("low")
        watcher.held_out(np.float32(0.5))
        assert watcher._metric == 0.5
        for nan in (float("nan"), np.float32("nan"), torch.tensor(float("inf"))):
            watcher.held_out(0.5)
            with pytest.warns(UserWarning, match="held_out_metric not finite"):
                watcher.held_out(nan)
            assert watcher._metric is None  # unknown again, not the last finite one
    with pytest.raises(ValueError, match=r"^chance: must be a positive number, got 0$"):
        rnnscope.watch(Model(), tmp_path / "bad2", chance=0)


def test_an_adam_optimiser_tells_the_diagnosis_its_rates_summed_up_to_held_out(tmp_path):
    """`optimizer=`: the rate of each of its steps (a hook on the step: two backward
    passes accumulated into one update count once), summed up to the latest `held_out`
    call, is the diagnosis' Context.lr_total (how long the model has trained at chance);
    SGD's is not (its step is the rate times the gradient); anything else is refused by
    name, and the hook goes with the block."""
    def run(out, make, steps=4, held_at=3):
        torch.manual_seed(0)
        model = Model()
        optimizer = make(model.parameters())
        inputs = torch.randn(30, 8, 2)
        with rnnscope.watch(model, out, every=2, chance=1 / 6, horizon=25,
                            optimizer=optimizer) as watcher:
            for step in range(1, steps + 1):
                optimizer.zero_grad()
                for _ in range(2):  # gradient accumulation: two backward passes
                    nn.functional.mse_loss(model(inputs), torch.zeros(8, 1)).backward()
                optimizer.step()
                if step == held_at:
                    watcher.held_out(0.2)
        return watcher, optimizer

    adam, optimizer = run(tmp_path / "adam", lambda p: torch.optim.Adam(p, lr=0.01))
    assert adam.rates.total == pytest.approx(0.04, rel=1e-12)  # 4 updates, 8 backward passes
    assert not optimizer._optimizer_step_post_hooks  # removed when the block ended
    # Recordings at backward passes 1, 2, 4, 6, 8, each diagnosed when the next pass
    # opens (the last at the block's end); held_out came after the third update (pass 6):
    # the recordings of passes 6 and 8 were told its sum.
    told = [d.evidence.get("lr_total") for _, d in adam.history]
    assert [step for step, _ in adam.history] == [1, 2, 4, 6, 8]
    assert told[:3] == [None] * 3 and told[3:] == pytest.approx([0.03, 0.03])
    summary = json.loads((tmp_path / "adam" / "summary.json").read_text())
    assert summary["evidence"]["lr_total"] == pytest.approx(0.03)
    sgd, _ = run(tmp_path / "sgd", lambda p: torch.optim.SGD(p, lr=0.01))
    assert sgd.rates.total is None
    assert all("lr_total" not in d.evidence for _, d in sgd.history)
    with pytest.raises(ValueError) as error:
        rnnscope.watch(Model(), tmp_path / "bad", optimizer="adam")
    assert str(error.value) == "optimizer: expected a torch.optim.Optimizer or None, got str"
    assert not (tmp_path / "bad").exists()
