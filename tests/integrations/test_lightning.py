"""Lightning integration: the callback logs what rnnscope.record gives by hand on the same
weights and batch; truncated BPTT and its clipping equal hand-written loops."""

from __future__ import annotations

import contextlib
import copy
import importlib
import json
import subprocess
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.loggers import Logger
from lightning.pytorch.plugins.precision import MixedPrecision
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from rnnscope import Recurrent, diagnose, record
from rnnscope.flow.bptt import truncated_bptt
from rnnscope.flow.diagnosis import VERDICTS, Context
from rnnscope.integrations.lightning import (
    GradientFlowCallback,
    TruncatedBPTT,
    flow_metrics,
    split_batch,
    truncated_bptt_step,
)
from rnnscope.report.render import render_report

pytestmark = pytest.mark.filterwarnings(
    "ignore:.*does not have many workers.*", "ignore:.*smaller than the logging interval.*",
    "ignore:.*LeafSpec.*")  # Lightning's own use of torch's pytree

KEYS = {f"rnnscope/{key}" for key in (
    "reach", "rate", "steps", "verdict", "norm_at_loss", "norm_at_first_step", "nonfinite",
    "underflow_fraction")} | {f"rnnscope/verdict_{name}" for name in VERDICTS}


class MemoryLogger(Logger):
    """Keeps every (step, metrics) it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[tuple[int, dict[str, float]]] = []

    @property
    def name(self) -> str:
        return "memory"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics, step=None) -> None:
        self.records.append((step, dict(metrics)))

    def steps_with(self, key: str) -> list[int]:
        return [step for step, metrics in self.records if key in metrics]


def trainer(tmp_path, callbacks=(), max_steps=6, **kw) -> Trainer:
    return Trainer(accelerator="cpu", devices=1, logger=MemoryLogger(), callbacks=list(callbacks),
                   max_steps=max_steps, log_every_n_steps=1, enable_progress_bar=False,
                   enable_model_summary=False, enable_checkpointing=False,
                   default_root_dir=tmp_path, **kw)


def sequences(count=32, steps=9, features=3, seed=0, dtype=torch.float32) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(count, steps, features, generator=generator, dtype=dtype)
    return TensorDataset(x, x[:, :, 0].cumsum(1) / steps)  # a per-step target


class TinyLSTM(LightningModule):
    """Predicts the running mean of feature 0 from the last state; remembers, per
    batch, the weights it started from, the batch, and whether the LSTM ran unrolled."""

    def __init__(self, engine: str = "torch", nonfinite_at: int | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        rnn = nn.LSTM(3, 5, batch_first=True) if engine == "torch" else \
            Recurrent("lstm", 3, 5, batch_first=True)
        self.rnn, self.head = rnn, nn.Linear(5, 1)
        self.nonfinite_at = nonfinite_at
        self.seen: list[dict] = []

    def loss(self, batch) -> torch.Tensor:
        x, y = batch
        output, _ = self.rnn(x)
        return F.mse_loss(self.head(output[:, -1]).squeeze(-1), y[:, -1])

    def training_step(self, batch, batch_idx):
        self.seen.append({"weights": copy.deepcopy(self.state_dict()), "batch": batch,
                          "unrolled": "forward" in self.rnn.__dict__})
        loss = self.loss(batch)
        self.log("train_loss", loss)
        if self.nonfinite_at == len(self.seen) - 1:
            loss = loss * float("nan")
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)


def fit(tmp_path, module, callback, max_steps=6, data=None, **kw) -> Trainer:
    run = trainer(tmp_path, [callback], max_steps=max_steps, **kw)
    run.fit(module, DataLoader(data or sequences(), batch_size=4))
    return run


def by_hand(engine: str, weights: dict, batch):
    """The same step outside Lightning: a fresh module, the recorded weights, record()."""
    module = TinyLSTM(engine)
    module.load_state_dict(weights)
    with record(module) as recorder:
        module.loss(batch).backward()
    return recorder.flow


@pytest.mark.parametrize("engine", ["torch", "rnnscope"])
def test_logged_flow_equals_record_by_hand(tmp_path, engine):
    module, callback = TinyLSTM(engine), GradientFlowCallback(every=2)
    run = fit(tmp_path, module, callback, max_steps=6)
    logger = run.logger
    due = [0, 1, 3, 5]  # the first batch, then every 2nd (1-based)
    assert logger.steps_with("rnnscope/reach") == due
    reaches = []
    for step, metrics in logger.records:
        if "rnnscope/reach" not in metrics:
            continue
        assert set(metrics) == KEYS
        flow = by_hand(engine, module.seen[step]["weights"], module.seen[step]["batch"])
        # As the callback tells it: the cell, whether no update has been made yet, and
        # the reach at its earlier recordings.
        expected = flow_metrics(diagnose(flow, current={"cell": "lstm"}, context=Context(
            initial=step == 0, earlier_reach=tuple(reaches))))
        assert metrics == pytest.approx(expected, rel=1e-12, abs=0)
        reaches.append(int(metrics["rnnscope/reach"]))
    assert callback.reaches == reaches
    # The latest flow itself, entry by entry.
    flow = by_hand(engine, module.seen[5]["weights"], module.seen[5]["batch"])
    assert callback.last_step == 5
    assert callback.last_flow.layers == flow.layers == ["rnn.l0"]
    torch.testing.assert_close(callback.last_flow.norms, flow.norms, rtol=1e-12, atol=0)
    assert callback.last_flow.steps == 9
    assert callback.last_diagnosis.verdict in VERDICTS
    # Same x-axis as the module's own self.log values of that batch.
    assert set(due) <= set(logger.steps_with("train_loss"))


class TinyGRU(TinyLSTM):
    """A GRU over 40 steps, logging a held-out metric as `val_metric` before each batch."""

    def __init__(self, metric: float) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.rnn = nn.GRU(3, 5, batch_first=True)
        self.metric = metric

    def training_step(self, batch, batch_idx):
        self.log("val_metric", self.metric)
        return super().training_step(batch, batch_idx)


def test_the_callback_tells_the_diagnosis_the_horizon_history_and_the_metric(tmp_path):
    """A GRU whose monitored metric is at chance is not held to its untrained gates
    (healthy, `at_chance`); left chance, or told nothing of it, its short reach over a
    40-step horizon is vanishing after the first batch. Bad arguments name the field."""
    def diagnoses(metric, **options):
        callback = GradientFlowCallback(every=1, horizon=40, **options)
        fit(tmp_path / str(len(options)) / str(metric), TinyGRU(metric), callback,
            max_steps=3, data=sequences(steps=40))
        return callback

    at_chance = diagnoses(1.0, monitor="val_metric", chance=1.0)
    assert at_chance.last_diagnosis.verdict == "healthy"
    assert at_chance.last_diagnosis.evidence["at_chance"] is True
    assert at_chance.last_diagnosis.evidence["horizon"] == 40
    assert len(at_chance.reaches) == 3 and max(at_chance.reaches) < 20
    learnt = diagnoses(0.5, monitor="val_metric", chance=1.0)
    assert learnt.last_diagnosis.verdict == "vanishing"
    assert learnt.last_diagnosis.evidence["metric"] == 0.5
    assert diagnoses(1.0).last_diagnosis.verdict == "vanishing"  # no monitor: unknown
    missing = diagnoses(1.0, monitor="val_loss", chance=1.0)  # a key never logged
    assert "metric" not in missing.last_diagnosis.evidence
    assert missing.last_diagnosis.verdict == "vanishing"
    # A resumed fit tells the diagnosis the same history (the callback's state).
    resumed = GradientFlowCallback(every=1, horizon=40, monitor="val_metric", chance=1.0)
    resumed.load_state_dict(at_chance.state_dict())
    assert (resumed.reaches, resumed.faint_reaches) == (at_chance.reaches,
                                                        at_chance.faint_reaches)
    resumed.load_state_dict({"reaches": [3, 4]})  # a state of before: reaches stand in
    assert resumed.faint_reaches == [3, 4]
    both = "monitor, chance: give both (the held-out metric's key and its chance level) or " \
           "neither"
    for options, message in (({"horizon": 0}, "horizon: must be an integer >= 1, got 0"),
                             ({"chance": -1}, "chance: must be a positive number, got -1"),
                             ({"monitor": "", "chance": 1.0}, "monitor: must be a key of "
                                                              "trainer.callback_metrics, got ''"),
                             ({"monitor": "val_mse"}, both), ({"chance": 1.0}, both)):
        with pytest.raises(ValueError) as error:
            GradientFlowCallback(**options)
        assert str(error.value) == message


class AdamGRU(TinyGRU):
    """TinyGRU trained by Adam at 1e-2 (or the optimiser given), validated (`val_metric`)
    on one batch."""

    def __init__(self, metric: float, optimizer=torch.optim.Adam) -> None:
        super().__init__(metric)
        self.optimizer = optimizer

    def configure_optimizers(self):
        return self.optimizer(self.parameters(), lr=0.01)

    def validation_step(self, batch, batch_idx):
        self.log("val_metric", self.metric)


def test_the_callback_tells_the_diagnosis_the_rates_summed_up_to_the_latest_validation(
        tmp_path):
    """With Adam the diagnosis is told the rates of its steps summed up to the latest
    validation (Context.lr_total), counted by a hook on the optimiser's step that goes
    when the fit ends; the sanity check before training does not count; SGD or a tensor
    rate leaves it unknown; a resumed fit keeps it, and a damaged state is named."""
    def fitted(out, optimizer=torch.optim.Adam):
        callback = GradientFlowCallback(every=1, horizon=40, monitor="val_metric", chance=1.0)
        data = DataLoader(sequences(steps=40), batch_size=4)
        run = trainer(out, [callback], max_steps=5, val_check_interval=2,
                      limit_val_batches=1)
        module = AdamGRU(1.0, optimizer)
        run.fit(module, data, data)
        return callback, run

    callback, run = fitted(tmp_path / "adam")
    assert callback.rates.total == pytest.approx(0.05, rel=1e-12)  # 5 updates at 1e-2
    assert callback.rates.evaluated == pytest.approx(0.04, rel=1e-12)  # validated at 4
    assert callback.last_diagnosis.evidence["lr_total"] == pytest.approx(0.04, rel=1e-12)
    assert not run.optimizers[0]._optimizer_step_post_hooks  # the hook went with the fit
    resumed = GradientFlowCallback(every=1)
    resumed.load_state_dict(callback.state_dict())
    assert (resumed.rates.total, resumed.rates.evaluated) == (
        callback.rates.total, callback.rates.evaluated)
    resumed.load_state_dict({"reaches": [3]})  # a state of before: unknown
    assert resumed.rates.total is None and resumed.rates.evaluated is None
    with pytest.raises(ValueError) as error:
        resumed.load_state_dict({"reaches": [3], "lr_total": "x"})
    assert str(error.value) == "lr_total: must be none or a finite number >= 0, got 'x'"

    sgd, _ = fitted(tmp_path / "sgd", torch.optim.SGD)  # validated too: the metric is known
    assert sgd.last_diagnosis.evidence["metric"] == 1.0
    assert sgd.rates.total is None and "lr_total" not in sgd.last_diagnosis.evidence
    tensor_rate = GradientFlowCallback(every=1)
    adam = torch.optim.Adam([nn.Parameter(torch.zeros(1))], lr=torch.tensor(0.01))
    tensor_rate.rates._stepped(adam, (), {})
    assert tensor_rate.rates.total is None


def test_nothing_recorded_or_logged_on_batches_not_due(tmp_path):
    module, callback = TinyLSTM(), GradientFlowCallback(every=3)
    run = fit(tmp_path, module, callback, max_steps=7)
    assert run.logger.steps_with("rnnscope/reach") == [0, 2, 5]
    assert [i for i, seen in enumerate(module.seen) if seen["unrolled"]] == [0, 2, 5]
    assert "forward" not in module.rnn.__dict__  # torch's own forward after training
    assert all(key.startswith("rnnscope/") or key in ("train_loss", "epoch")
               for _, metrics in run.logger.records for key in metrics)


@pytest.mark.parametrize("stop", [True, False])
def test_nonfinite_gradient_stops_training(tmp_path, stop):
    module = TinyLSTM(nonfinite_at=2)
    callback = GradientFlowCallback(every=1, stop_on_nonfinite=stop)
    with pytest.warns(UserWarning, match="non-finite") if stop else contextlib.nullcontext():
        run = fit(tmp_path, module, callback, max_steps=6)
    verdicts = [metrics["rnnscope/verdict"] for _, metrics in run.logger.records
                if "rnnscope/verdict" in metrics]
    code = VERDICTS.index("nonfinite")
    assert verdicts[2] == code and code not in verdicts[:2]
    assert callback.last_diagnosis.verdict == "nonfinite"
    assert run.global_step == (3 if stop else 6)


class UncastTinyLSTM(TinyLSTM):
    """TinyLSTM in float32 under CPU AMP (whose scaler still multiplies the loss), so the
    scaled backward is exactly `scale` times the one `by_hand` records. On batch
    `blow_up_at` the loss is multiplied by 1e36: finite, but not once scaled by 2**16."""

    def __init__(self, blow_up_at: int | None = None) -> None:
        super().__init__()
        self.blow_up_at = blow_up_at

    def loss(self, batch) -> torch.Tensor:
        with torch.autocast("cpu", enabled=False):
            return super().loss(batch)

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        return loss * 1e36 if self.blow_up_at == len(self.seen) - 1 else loss


def amp():
    return [MixedPrecision("16-mixed", "cpu")]  # Trainer(precision=) swaps it for bf16 on CPU


def flow_records_with_steps(run) -> list[tuple[int, dict[str, float]]]:
    return [(step, metrics) for step, metrics in run.logger.records
            if any(key.startswith("rnnscope/") for key in metrics)]


def flow_records(run) -> list[dict[str, float]]:
    return [metrics for _, metrics in flow_records_with_steps(run)]


@pytest.mark.parametrize(("accumulate", "plugins"), [(1, amp), (2, list), (2, amp)],
                         ids=["amp", "accumulate2", "accumulate2-amp"])
def test_logged_norms_are_those_of_the_loss_training_step_returned(tmp_path, accumulate,
                                                                   plugins):
    # Lightning backpropagates loss * scale / accumulate_grad_batches; the callback logs
    # what record() gives by hand for the loss itself.
    module, callback = UncastTinyLSTM(), GradientFlowCallback(every=1)
    run = fit(tmp_path, module, callback, max_steps=6 // accumulate,
              accumulate_grad_batches=accumulate, plugins=plugins())
    records = flow_records(run)
    assert len(records) == len(module.seen) == 6
    scaled = plugins is amp
    for batch, (metrics, seen) in enumerate(zip(records, module.seen, strict=True)):
        flow = by_hand("torch", seen["weights"], seen["batch"])
        expected = flow_metrics(diagnose(flow, current={"cell": "lstm"}, context=Context(
            initial=batch < accumulate)))  # the batches before the first update
        if scaled:
            expected.update({"rnnscope/amp_scale": 2.0**16, "rnnscope/amp_overflow": 0.0})
        assert metrics == pytest.approx(expected, rel=1e-12, abs=0)
    torch.testing.assert_close(callback.last_flow.norms, flow.norms, rtol=1e-12, atol=0)
    assert (run.precision_plugin.scaler.get_scale() == 2.0**16) if scaled else \
        not hasattr(run.precision_plugin, "scaler")
    assert run.global_step == 6 // accumulate


@pytest.mark.parametrize("accumulate", [1, 2])
def test_amp_overflow_is_logged_and_training_goes_on(tmp_path, accumulate):
    # Batch 2's scaled loss overflows. The scaler skips that update (with accumulation,
    # the one at batch 3, which also lowers the scale after batch 3's own finite flow).
    module = UncastTinyLSTM(blow_up_at=2)
    callback = GradientFlowCallback(every=1)  # stop_on_nonfinite=True
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = fit(tmp_path, module, callback, max_steps=6 // accumulate,
                  accumulate_grad_batches=accumulate, plugins=amp())
    assert not [w for w in caught if "non-finite" in str(w.message)]
    assert run.global_step == 6 // accumulate and len(module.seen) == 6
    records = flow_records(run)
    overflows = [metrics["rnnscope/amp_overflow"] for metrics in records]
    assert overflows == ([0, 0, 1, 0, 0, 0] if accumulate == 1 else [0, 0, 1, 1, 0, 0])
    lowered_from = 3 if accumulate == 1 else 4  # the first backward after the skipped update
    assert [metrics["rnnscope/amp_scale"] for metrics in records] == \
        [2.0**16] * lowered_from + [2.0**15] * (6 - lowered_from)
    # The overflowed flow is not a verdict; a finite flow on an overflow batch is.
    assert [set(metrics) - {"rnnscope/amp_scale", "rnnscope/amp_overflow"} == KEYS
            for metrics in records] == [True, True, False, True, True, True]
    assert set(records[2]) == {"rnnscope/amp_scale", "rnnscope/amp_overflow"}
    assert VERDICTS.index("nonfinite") not in [m.get("rnnscope/verdict") for m in records]
    assert callback.last_diagnosis.verdict != "nonfinite"
    assert run.precision_plugin.scaler.get_scale() == 2.0**15


def test_callback_with_out_writes_a_run_directory_the_report_renders(tmp_path):
    module = TinyLSTM()
    callback = GradientFlowCallback(every=2, out=tmp_path / "lightning-run")
    fit(tmp_path, module, callback, max_steps=6)
    run = tmp_path / "lightning-run"
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    probes = [line for line in lines if "flow" in line]
    losses = [line for line in lines if "loss" in line]
    assert [line["step"] for line in probes] == [0, 1, 3, 5]  # batches 1, 2, 4, 6 (0-based)
    assert [line["step"] for line in losses] == list(range(6))
    assert probes[-1]["flow"]["norms"][0] == pytest.approx(
        callback.last_flow.norms[0].tolist(), rel=1e-12)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["source"] == "lightning"
    assert summary["probes"] == 4 and summary["steps"] == 6
    assert summary["diagnosis"]["verdict"] == callback.last_diagnosis.verdict
    report = render_report(run)
    assert report.figures >= 2 and "Gradient flow over training" in report.html


def test_callback_refuses_a_module_without_recurrent_layers(tmp_path):
    class Plain(LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = nn.Linear(3, 1)

        def training_step(self, batch, batch_idx):
            return self.layer(batch[0]).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    with pytest.raises(ValueError, match="no recurrent layer"):
        fit(tmp_path, Plain(), GradientFlowCallback(every=1))
    with pytest.raises(ValueError, match="every: must be an integer >= 1"):
        GradientFlowCallback(every=0)


# ---------------------------------------------------------------------------------------
# Truncated BPTT

WINDOW, STEPS, LR = 4, 10, 0.3  # windows [0, 4), [4, 8), [8, 10)


class RecordingSGD(torch.optim.SGD):
    """SGD that keeps the gradients it steps with (after Lightning's closure: clipped)."""

    def __init__(self, params, lr):
        super().__init__(params, lr=lr)
        self.stepped_with: list[list[torch.Tensor]] = []

    def step(self, closure=None):
        loss = closure() if closure is not None else None
        self.stepped_with.append([p.grad.clone() for g in self.param_groups for p in g["params"]])
        super().step()
        return loss


class WindowedLSTM(TruncatedBPTT, LightningModule):
    truncated_bptt_steps = WINDOW

    def __init__(self, update="window", clip=None) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.tbptt_update, self.tbptt_gradient_clip_val = update, clip
        torch.manual_seed(1)
        self.rnn, self.head = nn.LSTM(3, 4, batch_first=True), nn.Linear(4, 1)
        self.before_clip: list[list[torch.Tensor]] = []

    def forward(self, x, state=None):
        output, state = self.rnn(x, state)
        return self.head(output).squeeze(-1), state

    def tbptt_window_step(self, chunk, state, window):
        x, y = chunk
        output, state = self(x, state)
        return F.mse_loss(output, y, reduction="sum"), state

    def on_before_optimizer_step(self, optimizer):
        self.before_clip.append([p.grad.clone() for p in self.parameters()])

    def configure_optimizers(self):
        return RecordingSGD(self.parameters(), lr=LR)


def windowed_fit(tmp_path, update, clip=None, callbacks=(), batches=2):
    module = WindowedLSTM(update, clip).double()
    start = copy.deepcopy(module)
    data = sequences(count=4 * batches, steps=STEPS, dtype=torch.float64)
    run = trainer(tmp_path, callbacks, max_steps=-1, max_epochs=1, precision="64-true")
    run.fit(module, DataLoader(data, batch_size=4))
    return module, start, data, run


def hand_windows(model, data, update, clip=None):
    """Detach per window, backward, (clip), SGD step: per update, the gradients before and
    after clipping. update="batch" accumulates the windows with rnnscope's truncated_bptt."""
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    raw, clipped = [], []
    for x, y in DataLoader(data, batch_size=4):
        state = None
        spans = [(s, min(s + WINDOW, STEPS)) for s in range(0, STEPS, WINDOW)]
        if update == "batch":
            optimizer.zero_grad()
            truncated_bptt(model, x, lambda out, a, b, y=y: F.mse_loss(out, y[:, a:b],
                           reduction="sum"), window=WINDOW, batch_first=True)
            spans = []
            raw.append([p.grad.clone() for p in model.parameters()])
        for start, stop in spans:
            state = None if state is None else tuple(s.detach() for s in state)
            optimizer.zero_grad()
            output, state = model(x[:, start:stop], state)
            F.mse_loss(output, y[:, start:stop], reduction="sum").backward()
            raw.append([p.grad.clone() for p in model.parameters()])
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            clipped.append([p.grad.clone() for p in model.parameters()])
            optimizer.step()
        if update == "batch":
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            clipped.append([p.grad.clone() for p in model.parameters()])
            optimizer.step()
    return raw, clipped


def assert_same_grads(ours, reference):
    assert len(ours) == len(reference)
    for update_ours, update_reference in zip(ours, reference, strict=True):
        for a, b in zip(update_ours, update_reference, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("update", ["window", "batch"])
def test_tbptt_gradients_equal_a_detach_per_window_loop(tmp_path, update):
    module, start, data, run = windowed_fit(tmp_path, update)
    raw, clipped = hand_windows(start, data, update)
    updates = 6 if update == "window" else 2  # 3 windows x 2 batches, or 1 per batch
    assert run.global_step == updates
    assert module.rnn.weight_hh_l0.dtype == torch.float64
    assert_same_grads(module.before_clip, raw)
    assert_same_grads(module.optimizers().optimizer.stepped_with, clipped)
    for ours, reference in zip(module.parameters(), start.parameters(), strict=True):
        torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("update", ["window", "batch"])
def test_tbptt_clipping_equals_clip_grad_norm(tmp_path, update):
    clip = 0.05
    module, start, data, _ = windowed_fit(tmp_path, update, clip=clip)
    raw, clipped = hand_windows(start, data, update, clip=clip)
    assert_same_grads(module.before_clip, raw)  # hooks see the gradients before clipping
    assert_same_grads(module.optimizers().optimizer.stepped_with, clipped)
    for grads in module.optimizers().optimizer.stepped_with:
        total = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))
        assert float(total) == pytest.approx(clip, rel=1e-6)  # every update was clipped
    for ours, reference in zip(module.parameters(), start.parameters(), strict=True):
        torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-15)


class UncastLSTM(WindowedLSTM):
    """Float32 under AMP: CPU autocast has no float16 LSTM kernel; the loss is still scaled."""

    def forward(self, x, state=None):
        with torch.autocast("cpu", enabled=False):
            return super().forward(x, state)


def test_tbptt_clipping_under_amp_clips_unscaled_gradients(tmp_path):
    # Clipping before optimizer.step() (Lightning's manual-optimisation example) would
    # clip the gradients of the scaled loss: the update would be `clip / scale` long.
    clip = 0.05
    module = UncastLSTM("window", clip=clip)
    run = trainer(tmp_path, max_steps=-1, max_epochs=1, plugins=[MixedPrecision("16-mixed", "cpu")])
    run.fit(module, DataLoader(sequences(count=8, steps=STEPS), batch_size=4))
    assert run.precision_plugin.scaler.get_scale() > 1
    # The scaler skips a step whose gradients overflowed; the hooks saw those too.
    finite = [grads for grads in module.before_clip
              if all(torch.isfinite(g).all() for g in grads)]
    stepped = module.optimizers().optimizer.stepped_with
    assert len(stepped) == len(finite) >= 4
    for ours, raw in zip(stepped, finite, strict=True):
        reference = [nn.Parameter(torch.zeros_like(g)) for g in raw]
        for parameter, g in zip(reference, raw, strict=True):
            parameter.grad = g.clone()
        torch.nn.utils.clip_grad_norm_(reference, clip)
        for a, b in zip(ours, reference, strict=True):
            torch.testing.assert_close(a, b.grad, rtol=1e-6, atol=1e-9)
        total = torch.linalg.vector_norm(torch.stack([g.norm() for g in ours]))
        assert float(total) == pytest.approx(clip, rel=1e-5)


def test_callback_under_tbptt_records_the_last_window(tmp_path):
    callback = GradientFlowCallback(every=1)
    module, start, data, run = windowed_fit(tmp_path, "window", callbacks=[callback],
                                            batches=1)
    with record(start) as recorder:  # the whole hand loop; record keeps the last window
        hand_windows(start, data, "window")
    assert callback.last_flow.steps == STEPS - 2 * WINDOW
    torch.testing.assert_close(callback.last_flow.norms, recorder.flow.norms, rtol=1e-12,
                               atol=0)
    assert run.logger.steps_with("rnnscope/reach") == [0]


class OverflowFirstWindow(WindowedLSTM):
    """Float32 under CPU AMP; window 0's loss is multiplied by 1e36, so its scaled backward
    overflows and the scaler halves its scale before windows 1 and 2. Keeps what each
    window started from."""

    def __init__(self) -> None:
        super().__init__("window")
        self.windows: list[tuple[dict, tuple, tuple]] = []

    def training_step(self, batch, batch_idx):
        # manual_backward runs inside training_step, and CPU autocast reaches into the
        # backward's matmuls: without this the scaled windows overflow in float16.
        with torch.autocast("cpu", enabled=False):
            return super().training_step(batch, batch_idx)

    def tbptt_window_step(self, chunk, state, window):
        self.windows.append((copy.deepcopy(self.state_dict()), chunk, state))
        loss, state = super().tbptt_window_step(chunk, state, window)
        return (loss * 1e36 if window.index == 0 else loss), state


def test_callback_under_tbptt_and_amp_unscales_by_the_last_windows_scale(tmp_path):
    callback = GradientFlowCallback(every=1)
    module = OverflowFirstWindow()
    run = trainer(tmp_path, [callback], max_steps=-1, max_epochs=1, plugins=amp())
    run.fit(module, DataLoader(sequences(count=4, steps=STEPS), batch_size=4))
    assert run.precision_plugin.scaler.get_scale() == 2.0**15  # lowered once, after window 0
    weights, (x, y), state = module.windows[-1]
    hand = WindowedLSTM()
    hand.load_state_dict(weights)
    with record(hand) as recorder:
        output, _ = hand(x, state)
        F.mse_loss(output, y, reduction="sum").backward()
    torch.testing.assert_close(callback.last_flow.norms, recorder.flow.norms, rtol=1e-12,
                               atol=0)
    (_, metrics), = flow_records_with_steps(run)
    assert metrics["rnnscope/amp_scale"] == 2.0**15 and metrics["rnnscope/amp_overflow"] == 0
    assert metrics["rnnscope/norm_at_loss"] == pytest.approx(
        flow_metrics(diagnose(recorder.flow))["rnnscope/norm_at_loss"], rel=1e-12)


def test_tbptt_step_checks_its_arguments(tmp_path):
    module = WindowedLSTM()
    module.automatic_optimization = True
    with pytest.raises(ValueError, match="manual optimisation"):
        truncated_bptt_step(module, (torch.zeros(1, 2, 3),), module.tbptt_window_step, window=1)
    module.automatic_optimization = False
    with pytest.raises(ValueError, match="update: unknown 'step'; accepted: window, batch"):
        truncated_bptt_step(module, (torch.zeros(1, 2, 3),), module.tbptt_window_step,
                            window=1, update="step")


def test_split_batch_cuts_only_tensors_with_the_sequence_length():
    x, y, label = torch.randn(2, 7, 3), torch.randn(2, 7), torch.tensor([1, 0])
    part = split_batch({"x": x, "pair": (y, label), "name": "a"}, 2, 5, steps=7)
    assert torch.equal(part["x"], x[:, 2:5]) and torch.equal(part["pair"][0], y[:, 2:5])
    assert part["pair"][1] is label and part["name"] == "a"
    assert isinstance(part["pair"], tuple)


# ---------------------------------------------------------------------------------------
# Optional dependency


def test_import_rnnscope_does_not_import_lightning():
    code = "import sys, rnnscope; print(any(m.split('.')[0] == 'lightning' for m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "False"


def test_missing_lightning_is_a_clear_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "lightning", None)  # `import lightning` now fails
    monkeypatch.delitem(sys.modules, "rnnscope.integrations.lightning")
    with pytest.raises(ImportError, match=r"pip install 'rnnscope\[lightning\]'"):
        importlib.import_module("rnnscope.integrations.lightning")


def test_the_mixin_without_a_window_step_says_what_to_define():
    class Incomplete(TruncatedBPTT, LightningModule):
        pass

    with pytest.raises(TypeError, match="define tbptt_window_step"):
        Incomplete().training_step((torch.zeros(1, 2, 3),), 0)
