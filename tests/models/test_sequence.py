"""The sequence model the trainer builds from the `model` section: both engines give the
same outputs from the same weights, and bad settings name their field."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rnnscope.models.recurrent import Recurrent
from rnnscope.models.sequence import ModelConfig, SequenceModel


@pytest.mark.parametrize("cell", ["rnn_tanh", "rnn_relu", "lstm", "gru"])
def test_native_and_unrolled_engines_compute_the_same_model(cell):
    torch.manual_seed(0)
    config = ModelConfig(cell=cell, hidden=6, layers=2, dropout=0.0)
    unrolled = config.build(input_size=3, output_size=2).double()
    native = ModelConfig(cell=cell, hidden=6, layers=2, engine="native").build(3, 2).double()
    assert isinstance(unrolled.rnn, Recurrent) and isinstance(native.rnn, nn.RNNBase)
    native.load_state_dict(unrolled.state_dict())  # the same parameter names
    x = torch.randn(7, 4, 3, dtype=torch.float64)
    (ours, _), (theirs, _) = unrolled(x), native(x)
    assert ours.shape == (7, 4, 2)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)


def test_the_read_out_is_applied_at_every_step_and_the_state_is_returned():
    model = SequenceModel("lstm", 2, 5, 1)
    output, (h, c) = model(torch.randn(9, 3, 2))
    assert output.shape == (9, 3, 1) and h.shape == c.shape == (1, 3, 5)


@pytest.mark.parametrize(("settings", "message"), [
    ({"cell": "lstn"}, "model.cell: unknown 'lstn'; accepted: rnn_tanh, rnn_relu, lstm, gru"),
    ({"hidden": 0}, "model.hidden: must be an integer >= 1, got 0"),
    ({"layers": 1.5}, "model.layers: must be an integer >= 1, got 1.5"),
    ({"engine": "cudnn"}, "model.engine: unknown 'cudnn'; accepted: unrolled, native"),
    ({"dropout": 1.0}, "model.dropout: must be in [0, 1), got 1.0"),
])
def test_bad_model_settings_name_the_field(settings, message):
    with pytest.raises(ValueError) as error:
        ModelConfig(**settings)
    assert str(error.value) == message
