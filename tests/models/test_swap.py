"""swap_cell: another cell where a model's recurrent layers are, same sizes, said out loud."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import rnnscope
from rnnscope import Recurrent, swap_cell


class Tagger(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.RNN(3, 8, num_layers=2, batch_first=True, bidirectional=True,
                              dtype=torch.float64)
        self.inner = nn.Sequential(Recurrent("rnn_tanh", 16, 4, dtype=torch.float64))
        self.head = nn.Linear(4, 2, dtype=torch.float64)

    def forward(self, x):
        return self.head(self.inner[0](self.encoder(x)[0])[0])


def test_every_recurrent_layer_becomes_the_cell_with_the_same_sizes():
    model = Tagger()
    replaced = swap_cell(model, "lstm")
    assert replaced == ["encoder: RNN(3, 8) -> LSTM(3, 8)",
                        "inner.0: rnn_tanh(16, 4) -> lstm(16, 4)"]
    assert isinstance(model.encoder, nn.LSTM) and model.inner[0].cell == "lstm"
    encoder = model.encoder
    assert (encoder.num_layers, encoder.bidirectional, encoder.batch_first) == (2, True, True)
    assert encoder.weight_hh_l1.dtype == torch.float64
    assert model(torch.randn(2, 5, 3, dtype=torch.float64)).shape == (2, 5, 2)
    assert swap_cell(model, "lstm") == []  # already LSTMs: nothing to replace


def test_swap_to_relu_and_gru_and_the_refusals():
    model = Tagger()
    assert swap_cell(model, "rnn_relu")[0] == "encoder: RNN(3, 8) -> RNN(3, 8)"
    assert model.encoder.nonlinearity == "relu"
    swap_cell(model, "gru")
    assert isinstance(model.encoder, nn.GRU)
    with pytest.raises(ValueError, match="^cell: unknown 'transformer'"):
        swap_cell(model, "transformer")
    with pytest.raises(ValueError, match="^model: the model is itself a recurrent layer"):
        swap_cell(nn.RNN(2, 3), "lstm")
    assert rnnscope.swap_cell is swap_cell
