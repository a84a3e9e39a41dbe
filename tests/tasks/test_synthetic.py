"""Synthetic tasks (adding, copy, temporal order) against their definitions in TASKS.md."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import rnnscope.tasks.copy  # noqa: F401  (registers "copy")
import rnnscope.tasks.temporal_order  # noqa: F401  (registers "temporal_order")
from rnnscope.models.sequence import SequenceModel
from rnnscope.tasks import get_task, task_settings

SYNTHETIC = ("adding", "copy", "temporal_order")
SMALL = {"adding": 20, "copy": 7, "temporal_order": 20}  # seq_len for quick checks


def draw(name: str, seq_len: int, batch_size: int, seed: int = 0, split: str = "train"):
    task = get_task(name, seq_len=seq_len)
    inputs, target = task.batch(batch_size, torch.Generator().manual_seed(seed), split)
    return task, inputs, target


def assert_one_hot(inputs: torch.Tensor) -> torch.Tensor:
    """The symbol index at every step, after checking each step is exactly one 1."""
    assert inputs.dtype == torch.float32
    assert bool(((inputs == 0) | (inputs == 1)).all())
    assert bool((inputs.sum(dim=-1) == 1).all())
    return inputs.argmax(dim=-1)


# --- adding -----------------------------------------------------------------------------

@pytest.mark.parametrize("seq_len", [2, 3, 7, 200])
def test_adding_markers_and_target(seq_len):
    task, inputs, target = draw("adding", seq_len, 500)
    assert inputs.shape == (seq_len, 500, 2) and target.shape == (500, 1)
    values, markers = inputs[..., 0], inputs[..., 1]
    assert bool(((values >= 0) & (values < 1)).all())
    assert bool(((markers == 0) | (markers == 1)).all())
    half = seq_len // 2
    assert bool((markers[:half].sum(dim=0) == 1).all())  # one in [0, T//2)
    assert bool((markers[half:2 * half].sum(dim=0) == 1).all())  # one in T//2 + [0, T//2)
    assert bool((markers[2 * half:] == 0).all())  # odd T: the last step is never marked
    torch.testing.assert_close(target[:, 0], (values * markers).sum(dim=0))


def test_adding_predicting_one_scores_one_sixth():
    task, inputs, target = draw("adding", 10, 20_000)
    mse = float(task.loss(torch.ones(10, 20_000, 1), target))
    # (S - 1)^2 for S a sum of two U[0, 1]: mean 1/6, variance 1/15 - 1/36 = 7/180.
    standard_error = math.sqrt(7 / 180 / 20_000)
    assert abs(mse - 1 / 6) < 4 * standard_error
    assert task.baseline == pytest.approx(1 / 6) and not task.solved(mse)


# --- copy -------------------------------------------------------------------------------

@settings(max_examples=25, deadline=None)
@given(gap=st.integers(1, 150), seed=st.integers(0, 2**31 - 1))
def test_copy_layout(gap, seed):
    task, inputs, target = draw("copy", gap, 40, seed)
    steps = gap + 20
    assert inputs.shape == (steps, 40, 10) and target.shape == (steps, 40)
    assert target.dtype == torch.int64
    symbols = assert_one_hot(inputs)
    assert bool(((symbols[:10] >= 1) & (symbols[:10] <= 8)).all())
    assert bool((symbols[10:10 + gap - 1] == 0).all())  # T-1 blanks
    assert bool((symbols[gap + 9] == 9).all())  # the delimiter
    assert bool((symbols[gap + 10:] == 0).all())  # 10 blanks while recalling
    assert bool((target[:gap + 10] == 0).all())
    assert torch.equal(target[gap + 10:], symbols[:10])


def test_copy_symbols_cover_one_to_eight():
    _, inputs, _ = draw("copy", 5, 800)
    counts = torch.bincount(inputs[:10].argmax(dim=-1).flatten(), minlength=10)
    assert counts[0] == 0 and counts[9] == 0
    assert bool((counts[1:9] > 0.8 * 1000).all())  # 8000 draws, 1000 expected each


@pytest.mark.parametrize("gap, published", [(100, 0.1733), (200, 0.0945), (300, 0.0650),
                                            (500, 0.0400)])
def test_copy_memoryless_model_scores_the_baseline(gap, published):
    task, _, target = draw("copy", gap, 16)
    logits = torch.zeros(gap + 20, 16, 9, dtype=torch.float64)
    logits[: gap + 10, :, 1:] = -math.inf  # blank with probability 1 ...
    logits[gap + 10:, :, 0] = -math.inf  # ... then uniform over the symbols 1..8
    expected = 10 * math.log(8) / (gap + 20)
    assert float(task.loss(logits, target)) == pytest.approx(expected, rel=1e-12)
    assert float(task.metric(logits, target)) == pytest.approx(expected, rel=1e-12)
    assert task.baseline == pytest.approx(expected, rel=1e-12)
    assert round(task.baseline, 4) == published
    assert task.solved_below == pytest.approx(0.1 * expected)


def test_copy_perfect_recall_is_solved():
    task, _, target = draw("copy", 30, 16)
    logits = 30.0 * torch.nn.functional.one_hot(target, 9).float()
    loss = float(task.loss(logits, target))
    assert loss < 1e-6 and task.solved(loss)


# --- temporal order ---------------------------------------------------------------------

@settings(max_examples=30, deadline=None)
@given(length=st.integers(10, 300), seed=st.integers(0, 2**31 - 1))
def test_temporal_order_layout(length, seed):
    task, inputs, label = draw("temporal_order", length, 60, seed)
    assert inputs.shape == (length, 60, 6) and label.shape == (60,)
    assert label.dtype == torch.int64
    symbols = assert_one_hot(inputs)
    relevant = symbols < 2  # A or B; everything else must be a distractor c..f
    assert bool((relevant.sum(dim=0) == 2).all())
    positions = relevant.nonzero()  # sorted by step, then column
    order = positions[:, 1].argsort(stable=True)
    first, second = positions[order, 0].reshape(60, 2).unbind(dim=1)
    width = length // 10
    assert bool(((first >= width) & (first < 2 * width)).all())
    assert bool(((second >= length // 2) & (second < length // 2 + width)).all())
    if length % 10 == 0:  # then exactly [0.1L, 0.2L) and [0.5L, 0.6L)
        assert bool(((first >= 0.1 * length) & (first < 0.2 * length)).all())
        assert bool(((second >= 0.5 * length) & (second < 0.6 * length)).all())
    columns = torch.arange(60)
    assert torch.equal(label, symbols[first, columns] + 2 * symbols[second, columns])


def test_temporal_order_covers_every_position_symbol_and_label():
    length = 100
    task, inputs, label = draw("temporal_order", length, 4000)
    symbols = inputs.argmax(dim=-1)
    first_seen = set(symbols[10:20].lt(2).nonzero()[:, 0].tolist())
    second_seen = set(symbols[50:60].lt(2).nonzero()[:, 0].tolist())
    assert first_seen == set(range(10)) and second_seen == set(range(10))
    assert bool((torch.bincount(label, minlength=4) > 800).all())  # 1000 expected each
    assert bool((torch.bincount(symbols.flatten(), minlength=6)[2:] > 0.2 * symbols.numel()).all())


def test_temporal_order_constant_prediction_is_chance():
    task, _, label = draw("temporal_order", 20, 20_000)
    logits = torch.zeros(20, 20_000, 4)
    logits[-1, :, 2] = 1.0  # always "AB"
    error = float(task.metric(logits, label))
    assert abs(error - 0.75) < 4 * math.sqrt(0.75 * 0.25 / 20_000)
    assert task.baseline == 0.75 and task.solved_below == 0.01 and not task.solved(error)


def test_temporal_order_is_scored_at_the_last_step_only():
    task, _, label = draw("temporal_order", 20, 64)
    logits = torch.randn(20, 64, 4, generator=torch.Generator().manual_seed(1))
    logits[-1] = 20.0 * torch.nn.functional.one_hot(label, 4)
    earlier = logits.clone()
    earlier[:-1] = torch.randn(19, 64, 4)
    assert float(task.metric(logits, label)) == 0.0 and task.solved(0.0)
    assert float(task.loss(earlier, label)) == float(task.loss(logits, label))


# --- all synthetic tasks ----------------------------------------------------------------

@pytest.mark.parametrize("name", SYNTHETIC)
def test_same_seed_same_batch_other_seed_other_batch(name):
    _, inputs, target = draw(name, SMALL[name], 8, seed=3)
    _, inputs_again, target_again = draw(name, SMALL[name], 8, seed=3)
    _, other_inputs, other_target = draw(name, SMALL[name], 8, seed=4)
    assert torch.equal(inputs, inputs_again) and torch.equal(target, target_again)
    assert not torch.equal(inputs, other_inputs) and not torch.equal(target, other_target)


@pytest.mark.parametrize("name", SYNTHETIC)
def test_batches_never_touch_the_global_rng(name):
    torch.manual_seed(0)
    state = torch.get_rng_state()
    draw(name, SMALL[name], 4)
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("name", SYNTHETIC)
def test_splits(name):
    task = get_task(name, seq_len=SMALL[name])
    generator = torch.Generator().manual_seed(0)
    inputs, _ = task.batch(4, generator, split="valid")
    assert inputs.shape[1] == 4
    with pytest.raises(ValueError, match="split: unknown 'test'; accepted: train, valid"):
        task.batch(4, generator, split="test")
    with pytest.raises(ValueError, match=r"task\.batch_size"):
        task.batch(0, generator)


@pytest.mark.parametrize("name, too_small", [("adding", 1), ("copy", 0), ("temporal_order", 9)])
@pytest.mark.parametrize("bad", ["too_small", True, 100.0, "100", None])
def test_bad_seq_len_is_rejected(name, too_small, bad):
    value = too_small if bad == "too_small" else bad
    with pytest.raises(ValueError, match=r"^task\.seq_len: must be an integer >= \d+, got "):
        get_task(name, seq_len=value)


def test_settings_and_defaults():
    assert task_settings("adding") == {"seq_len": 200}
    assert task_settings("copy") == {"seq_len": 100}
    assert task_settings("temporal_order") == {"seq_len": 100}
    copy, order = get_task("copy"), get_task("temporal_order")
    assert (copy.input_size, copy.output_size, copy.metric_name) == (10, 9, "cross_entropy")
    assert (order.input_size, order.output_size, order.metric_name) == (6, 4, "error_rate")


@pytest.mark.parametrize("engine", ["unrolled", "native"])
@pytest.mark.parametrize("name", SYNTHETIC)
def test_tasks_train_a_sequence_model(name, engine):
    torch.manual_seed(0)
    task, inputs, target = draw(name, SMALL[name], 5)
    model = SequenceModel("lstm", task.input_size, 8, task.output_size, engine=engine)
    output, _ = model(inputs)
    assert output.shape == (*inputs.shape[:2], task.output_size)
    loss = task.loss(output, target)
    assert loss.shape == () and bool(torch.isfinite(loss))
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and bool(torch.isfinite(g).all()) for g in grads)
    assert any(bool((g != 0).any()) for g in grads)
    metric = task.metric(output.detach(), target)
    assert metric.shape == () and bool(torch.isfinite(metric))


@pytest.mark.parametrize("name, seq_len", [("adding", 20), ("adding", 7),
                                           ("temporal_order", 100), ("temporal_order", 37)])
def test_the_dependencies_a_task_says_it_has_are_those_of_its_data(name, seq_len):
    """reach_needed is the longest span from a relevant step to the loss (the gradient must
    reach that many steps back, the loss's own step counted), nearest_dependency the
    shortest span of the latest relevant step, over many drawn sequences."""
    task = get_task(name, seq_len=seq_len)
    inputs, _ = task.batch(4000, torch.Generator().manual_seed(0))
    relevant = inputs[..., 1] > 0 if name == "adding" else inputs[..., :2].sum(-1) > 0
    steps = torch.arange(seq_len).unsqueeze(1).expand_as(relevant)
    first = torch.where(relevant, steps, seq_len).min(dim=0).values
    last = torch.where(relevant, steps, -1).max(dim=0).values
    assert task.reach_needed == int((seq_len - first).max())
    assert task.nearest_dependency == int((seq_len - last).min())


def test_copy_and_noise_dependencies():
    copy = get_task("copy", seq_len=10)
    assert copy.reach_needed == copy.nearest_dependency == 20  # each symbol T+10 back
    noise = get_task("noise", seq_len=6)
    assert noise.reach_needed == noise.nearest_dependency == 1
