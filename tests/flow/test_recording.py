"""record(): dL/dh_t against autograd.grad on hidden states kept by hand with torch's cells."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import rnnscope
from rnnscope import Recurrent, record

TORCH_CELLS = {"rnn_tanh": nn.RNNCell, "rnn_relu": nn.RNNCell, "lstm": nn.LSTMCell,
               "gru": nn.GRUCell}
MODULES = {"rnn_tanh": nn.RNN, "rnn_relu": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


def build(cell, input_size, hidden, layers, bidirectional, batch_first=False):
    kwargs = {"nonlinearity": cell[4:]} if cell.startswith("rnn_") else {}
    return MODULES[cell](input_size, hidden, num_layers=layers, bidirectional=bidirectional,
                         batch_first=batch_first, dtype=torch.float64, **kwargs)


class Model(nn.Module):
    """A recurrent layer and a linear read-out, as users write them."""

    def __init__(self, rnn, loss_on):
        super().__init__()
        self.rnn, self.loss_on = rnn, loss_on
        directions = 2 if rnn.bidirectional else 1
        self.head = nn.Linear(rnn.hidden_size * directions, 1, dtype=torch.float64)

    def forward(self, x):
        output, _ = self.rnn(x)
        if isinstance(output, nn.utils.rnn.PackedSequence):
            output = output.data  # every live (step, row) of the batch
        elif self.loss_on == "last":
            output = output[-1] if not self.rnn.batch_first else output[:, -1]
        return self.head(output).pow(2).sum()


def torch_cell(rnn, cell, layer, direction):
    """torch's own cell holding the weights of one layer and direction of `rnn`."""
    suffix = f"_l{layer}" + ("_reverse" if direction else "")
    w_ih = getattr(rnn, "weight_ih" + suffix)
    kwargs = {"nonlinearity": cell[4:]} if cell.startswith("rnn_") else {}
    module = TORCH_CELLS[cell](w_ih.shape[1], rnn.hidden_size, dtype=torch.float64, **kwargs)
    for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
        setattr(module, name, getattr(rnn, name + suffix))  # the same Parameter objects
    return module


def reference_norms(model, cell, x, lengths):
    """Batch-mean ||dL/dh_t|| per (layer, direction): each sequence run by torch's cells over
    its own length, every h_t kept, then torch.autograd.grad of the model's loss."""
    rnn = model.rnn
    directions = 2 if rnn.bidirectional else 1
    kept = {}  # (layer, direction) -> per sample list of h_t
    outputs = []
    for b, length in enumerate(lengths):
        layer_input = [x[t, b : b + 1] for t in range(length)]
        for layer in range(rnn.num_layers):
            per_direction = []
            for direction in range(directions):
                step = torch_cell(rnn, cell, layer, direction)
                order = range(length - 1, -1, -1) if direction else range(length)
                hs, state = [None] * length, None
                for t in order:
                    state = step(layer_input[t], state)
                    h = state[0] if cell == "lstm" else state
                    hs[t] = h
                kept.setdefault((layer, direction), []).append(hs)
                per_direction.append(hs)
            layer_input = [torch.cat([d[t] for d in per_direction], dim=-1)
                           for t in range(length)]
        outputs.append(layer_input)
    if model.loss_on == "last" and len(set(lengths)) == 1:
        loss = sum(model.head(out[-1]).pow(2).sum() for out in outputs)
    else:
        loss = sum(model.head(h).pow(2).sum() for out in outputs for h in out)
    keys = sorted(kept)
    flat = [h for k in keys for hs in kept[k] for h in hs]
    grads = iter(torch.autograd.grad(loss, flat, allow_unused=True, materialize_grads=True))
    steps = max(lengths)
    per_sample = torch.full((len(keys), steps, len(lengths)), float("nan"), dtype=torch.float64)
    for row, k in enumerate(keys):
        for b, hs in enumerate(kept[k]):
            for t in range(len(hs)):
                per_sample[row, t, b] = next(grads).norm()
    return loss, per_sample.nanmean(dim=2), per_sample


@st.composite
def setups(draw):
    return {
        "cell": draw(st.sampled_from(sorted(TORCH_CELLS))),
        "layers": draw(st.integers(1, 2)),
        "bidirectional": draw(st.booleans()),
        "hidden": draw(st.integers(1, 5)),
        "batch": draw(st.integers(1, 3)),
        "steps": draw(st.integers(1, 8)),
        "loss_on": draw(st.sampled_from(["last", "every", "packed"])),
        "batch_first": draw(st.booleans()),
        "seed": draw(st.integers(0, 2**16)),
    }


@settings(max_examples=60, deadline=None)
@given(setups())
def test_flow_equals_autograd_on_kept_hidden_states(setup):
    torch.manual_seed(setup["seed"])
    cell, batch, steps = setup["cell"], setup["batch"], setup["steps"]
    batch_first = setup["batch_first"]
    model = Model(build(cell, 3, setup["hidden"], setup["layers"], setup["bidirectional"],
                        batch_first=batch_first),
                  "every" if setup["loss_on"] == "packed" else setup["loss_on"])
    x = torch.randn(steps, batch, 3, dtype=torch.float64)
    lengths = [steps] * batch
    model_input = x.transpose(0, 1) if batch_first else x
    if setup["loss_on"] == "packed":
        lengths = torch.randint(1, steps + 1, (batch,)).tolist()
        model_input = pack_padded_sequence(model_input, torch.tensor(lengths),
                                           batch_first=batch_first, enforce_sorted=False)
    expected_loss, expected, expected_samples = reference_norms(model, cell, x, lengths)
    with record(model, per_sample=True) as rec:
        loss = model(model_input)
        loss.backward()
    assert abs(loss.item() - expected_loss.item()) <= 1e-10 * abs(expected_loss.item())
    flow = rec.flow
    directions = 2 if setup["bidirectional"] else 1
    assert flow.norms.shape == (setup["layers"] * directions, max(lengths))
    assert flow.layers[: 1 + directions - 1] == ["rnn.l0", "rnn.l0_reverse"][:directions]
    torch.testing.assert_close(flow.norms, expected, rtol=1e-10, atol=1e-300)
    torch.testing.assert_close(flow.per_sample, expected_samples, rtol=1e-10, atol=1e-300,
                               equal_nan=True)


@pytest.mark.parametrize("cell", sorted(MODULES))
def test_record_changes_neither_loss_nor_parameter_gradients(cell):
    torch.manual_seed(0)
    model = Model(build(cell, 3, 6, 2, True), "every")
    x = torch.randn(12, 4, 3, dtype=torch.float64)
    plain_loss = model(x)
    plain_loss.backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    with record(model):
        loss = model(x)
        loss.backward()
    assert abs(loss.item() - plain_loss.item()) <= 1e-10 * abs(plain_loss.item())
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, plain[name], rtol=1e-10, atol=1e-12)


def test_model_is_untouched_outside_the_block_and_after_an_error():
    model = Model(nn.LSTM(3, 4, dtype=torch.float64), "last")
    forward = model.rnn.forward
    with pytest.raises(ZeroDivisionError), record(model) as rec:
        model(torch.randn(5, 2, 3, dtype=torch.float64))
        raise ZeroDivisionError("inside the block")
    assert "forward" not in model.rnn.__dict__
    assert model.rnn.forward == forward and model.rnn.forward.__func__ is nn.LSTM.forward
    model(torch.randn(5, 2, 3, dtype=torch.float64))
    assert rec.calls["rnn"] == 1  # the call after the block went to torch, not the recorder


def test_every_n_records_the_first_training_step_and_every_nth():
    torch.manual_seed(0)
    model = Model(Recurrent("gru", 3, 4, dtype=torch.float64), "last")
    inputs = [torch.randn(6, 2, 3, dtype=torch.float64) for _ in range(7)]
    flows = []
    with record(model, every=3) as rec:
        for x in inputs:
            model.zero_grad()
            model(x).backward()
            flows.append(rec.flow.norms)
    assert rec.recorded_steps == [1, 3, 6] and rec.calls["rnn"] == 7
    for step, norms in enumerate(flows, 1):  # read after each step: the latest recorded one
        latest = max(s for s in rec.recorded_steps if s <= step)
        _, expected, _ = reference_norms(model, "gru", inputs[latest - 1], [6, 6])
        torch.testing.assert_close(norms, expected, rtol=1e-10, atol=0)


def test_every_counts_backward_passes_not_forward_calls():
    """A model that calls its GRU twice per step (two rows) records steps 1, 2 and 4 of 5."""
    torch.manual_seed(0)
    gru = nn.GRU(3, 4, dtype=torch.float64)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    with record(gru, every=2) as rec:
        for _ in range(5):
            (gru(x)[0].sum() + gru(x)[0].pow(2).sum()).backward()
    assert rec.calls[""] == 10 and rec.recorded_steps == [1, 2, 4]
    assert rec.flow.layers == ["l0", "#2.l0"]


def test_gradients_of_several_backward_passes_add_up():
    torch.manual_seed(0)
    model = Model(build("gru", 3, 4, 1, False), "every")
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    _, expected, _ = reference_norms(model, "gru", x, [6, 6])
    with record(model) as rec:
        loss = model(x)
        (0.25 * loss).backward(retain_graph=True)
        (0.75 * loss).backward()
    torch.testing.assert_close(rec.flow.norms, expected, rtol=1e-10, atol=0)


def test_autograd_grad_with_parameter_inputs_is_recorded():
    torch.manual_seed(0)
    model = Model(build("lstm", 3, 4, 1, False), "last")
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    _, expected, _ = reference_norms(model, "lstm", x, [5, 5])
    with record(model) as rec:
        torch.autograd.grad(model(x), list(model.parameters()))
    torch.testing.assert_close(rec.flow.norms, expected, rtol=1e-10, atol=0)


def test_later_forward_passes_keep_the_finished_record():
    torch.manual_seed(0)
    model = Model(build("rnn_tanh", 3, 4, 1, False), "last")
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    _, expected, _ = reference_norms(model, "rnn_tanh", x, [5, 5])
    with record(model) as rec:
        model(x).backward()
        with torch.no_grad():
            model(torch.randn(9, 2, 3, dtype=torch.float64))  # not recorded, not counted
        model(torch.randn(7, 2, 3, dtype=torch.float64))  # recorded, never backpropagated
    assert rec.calls["rnn"] == 2
    torch.testing.assert_close(rec.flow.norms, expected, rtol=1e-10, atol=0)


def test_a_recorder_cannot_be_entered_twice():
    model = nn.GRU(2, 3)
    rec = record(model)
    with rec, pytest.raises(RuntimeError, match="already active"), rec:
        pass
    assert "forward" not in model.__dict__


def test_nested_layers_of_both_kinds_and_per_sample_norms():
    torch.manual_seed(0)
    encoder = nn.GRU(3, 4, dtype=torch.float64)
    decoder = Recurrent("lstm", 4, 5, dtype=torch.float64)
    model = nn.ModuleDict({"encoder": encoder, "decoder": decoder})
    x = torch.randn(7, 3, 3, dtype=torch.float64)
    with record(model, per_sample=True) as rec:
        out, _ = model["decoder"](model["encoder"](x)[0])
        out[-1].sum().backward()
    flow = rec.flow
    assert flow.layers == ["encoder.l0", "decoder.l0"]
    assert flow.per_sample.shape == (2, 7, 3)
    torch.testing.assert_close(flow.per_sample.mean(dim=2), flow.norms)


def test_nonfinite_gradients_are_counted():
    model = Model(nn.RNN(2, 3, dtype=torch.float64), "last")
    with torch.no_grad():
        model.head.weight.fill_(float("nan"))
    with record(model) as rec:
        model(torch.randn(4, 1, 2, dtype=torch.float64)).backward()
    assert rec.flow.nonfinite > 0


def test_errors_are_clear():
    with pytest.raises(TypeError, match="^model: expected an nn.Module, got str"):
        record("lstm")
    linear = nn.Linear(2, 2)  # nothing recurrent: a hand-written loop would mark its states
    with pytest.raises(RuntimeError, match="rnnscope.mark"), record(linear) as rec:
        linear(torch.randn(3, 2)).sum().backward()
        rec.flow  # noqa: B018
    with pytest.raises(ValueError, match="^every:"):
        record(nn.LSTM(2, 2), every=0)
    with pytest.raises(RuntimeError, match="backward"), record(nn.LSTM(2, 2)) as rec:
        rec.flow  # noqa: B018


def test_public_names():
    assert rnnscope.record is record
