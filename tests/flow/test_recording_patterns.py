"""record() on the recurrent models public code writes: cell loops, a decoder calling its
nn.GRU once per step, the same LSTM run twice, hand-written loops with `mark`, LSTM
projections, packed batches aligned per sequence, and an LSTM's cell state.

The reference is independent of rnnscope: the same model computed with torch's own
`*Cell` modules (or torch's documented equations) in a Python loop that keeps every
state, then `torch.autograd.grad` of the loss with respect to the kept states, float64.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import rnnscope
from rnnscope import record

F64 = torch.float64
CELL_MODULES = {"rnn_tanh": nn.RNNCell, "lstm": nn.LSTMCell, "gru": nn.GRUCell}


def profile(loss: torch.Tensor, kept: list[torch.Tensor]) -> torch.Tensor:
    """Batch-mean ||dL/dstate_t|| over the kept states, by autograd (the reference)."""
    grads = torch.autograd.grad(loss, kept, retain_graph=True, allow_unused=True,
                                materialize_grads=True)
    return torch.stack([g.reshape(-1, g.shape[-1]).norm(dim=-1).mean() for g in grads])


def tied_cell(kind: str, module: nn.Module, suffix: str = "_l0") -> nn.Module:
    """torch's cell holding the very Parameters of one layer of a fused module."""
    cell = CELL_MODULES[kind](module.input_size, module.hidden_size, dtype=F64)
    for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
        setattr(cell, name, getattr(module, name + suffix))
    return cell


def parameter_grads(model: nn.Module, run) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad()
    loss = run()
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()
                         if p.grad is not None}


def assert_same_training(model: nn.Module, run) -> rnnscope.Recorder:
    """The loss and every parameter gradient are the same inside `record` as outside it;
    returns the recorder of the run inside."""
    plain_loss, plain = parameter_grads(model, run)
    with record(model, cell_state=True) as rec:
        loss, inside = parameter_grads(model, run)
    assert abs(loss - plain_loss) <= 1e-10 * abs(plain_loss)
    assert inside.keys() == plain.keys()
    for name, grad in plain.items():
        torch.testing.assert_close(inside[name], grad, rtol=1e-10, atol=1e-13)
    return rec


# cell loops: each call is the next step of the cell's row


class CellLoop(nn.Module):
    def __init__(self, kind: str, hidden: int = 5) -> None:
        super().__init__()
        self.kind = kind
        self.cell = CELL_MODULES[kind](3, hidden, dtype=F64)
        self.head = nn.Linear(hidden, 1, dtype=F64)

    def forward(self, x, keep_h=None, keep_c=None):
        state = None
        outputs = []
        for x_t in x:
            state = self.cell(x_t, state)
            h = state[0] if self.kind == "lstm" else state
            if keep_h is not None:
                keep_h.append(h)
                if self.kind == "lstm":
                    keep_c.append(state[1])
            outputs.append(self.head(h))
        return (torch.stack(outputs)[-4:] ** 2).sum()  # the loss reads the last 4 steps


@pytest.mark.parametrize("kind", sorted(CELL_MODULES))
def test_cell_loops_equal_autograd_on_kept_states(kind):
    torch.manual_seed(0)
    model = CellLoop(kind)
    x = torch.randn(11, 3, 3, dtype=F64)
    kept_h, kept_c = [], []
    loss = model(x, kept_h, kept_c)
    expected_h = profile(loss, kept_h)
    rec = assert_same_training(model, lambda: model(x))
    flow = rec.flow
    assert flow.layers[0] == "cell" and flow.norms.shape[1] == 11
    torch.testing.assert_close(flow.norms[0], expected_h, rtol=1e-10, atol=0)
    if kind == "lstm":  # dL/dc_t: the path of the LSTM's memory
        assert flow.layers == ["cell", "cell/c"] and flow.states == ["h", "c"]
        torch.testing.assert_close(flow.norms[1], profile(loss, kept_c), rtol=1e-10, atol=0)
    else:
        assert flow.layers == ["cell"]


# the decoder of PyTorch's seq2seq tutorial: nn.GRU called once per output step


class TutorialSeq2Seq(nn.Module):
    def __init__(self, hidden: int = 6) -> None:
        super().__init__()
        self.encoder = nn.GRU(3, hidden, batch_first=True, dtype=F64)
        self.decoder = nn.GRU(hidden, hidden, batch_first=True, dtype=F64)
        self.out = nn.Linear(hidden, 2, dtype=F64)

    def forward(self, source, steps: int):
        _, hidden = self.encoder(source)
        decoder_input = torch.zeros(source.shape[0], 1, hidden.shape[-1], dtype=F64)
        outputs = []
        for _ in range(steps):
            output, hidden = self.decoder(decoder_input, hidden)  # one step per call
            decoder_input = output  # feed the output back, as the tutorial does
            outputs.append(self.out(output))
        return torch.cat(outputs, dim=1).pow(2).sum()

    def reference(self, source, steps: int):
        """The same model through GRUCells tied to the same weights, every h_t kept."""
        encoder, decoder = tied_cell("gru", self.encoder), tied_cell("gru", self.decoder)
        kept_encoder, kept_decoder, h = [], [], None
        for t in range(source.shape[1]):
            h = encoder(source[:, t], h)
            kept_encoder.append(h)
            decoder_input = torch.zeros_like(h)
        loss = 0.0
        for _ in range(steps):
            h = decoder(decoder_input, h)
            kept_decoder.append(h)
            decoder_input = h
            loss = loss + self.out(h).pow(2).sum()
        return loss, kept_encoder, kept_decoder


def test_a_decoder_calling_its_gru_per_step_is_one_row_of_every_step():
    torch.manual_seed(1)
    model = TutorialSeq2Seq()
    source = torch.randn(4, 7, 3, dtype=F64)
    loss, kept_encoder, kept_decoder = model.reference(source, 9)
    rec = assert_same_training(model, lambda: model(source, 9))
    flow = rec.flow
    assert flow.layers == ["encoder.l0", "decoder.l0"]
    assert flow.norms.shape == (2, 9)  # 7 encoder steps (NaN after), 9 decoder steps
    torch.testing.assert_close(flow.norms[0, :7], profile(loss, kept_encoder), rtol=1e-10,
                               atol=0)
    assert flow.norms[0, 7:].isnan().all()
    torch.testing.assert_close(flow.norms[1], profile(loss, kept_decoder), rtol=1e-10, atol=0)
    assert rec.calls["decoder"] == 9


# the same LSTM run twice in one forward: a row per run


class Siamese(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.LSTM(3, 5, dtype=F64)

    def forward(self, a, b):
        (_, (h_a, _)), (_, (h_b, _)) = self.encoder(a), self.encoder(b)
        return (h_a - h_b).pow(2).sum()

    def reference(self, a, b):
        cell = tied_cell("lstm", self.encoder)
        kept, finals = [], []
        for x in (a, b):
            state, hs = None, []
            for x_t in x:
                state = cell(x_t, state)
                hs.append(state[0])
            kept.append(hs)
            finals.append(state[0])
        return (finals[0] - finals[1]).pow(2).sum(), kept


def test_the_same_lstm_run_twice_is_two_rows():
    torch.manual_seed(2)
    model = Siamese()
    a, b = torch.randn(6, 2, 3, dtype=F64), torch.randn(8, 2, 3, dtype=F64)
    loss, (kept_a, kept_b) = model.reference(a, b)
    flow = assert_same_training(model, lambda: model(a, b)).flow
    assert flow.layers == ["encoder.l0", "encoder.l0/c", "encoder#2.l0", "encoder#2.l0/c"]
    torch.testing.assert_close(flow.norms[0, :6], profile(loss, kept_a), rtol=1e-10, atol=0)
    torch.testing.assert_close(flow.norms[2], profile(loss, kept_b), rtol=1e-10, atol=0)


# a hand-written loop with mark


class MarkedElman(nn.Module):
    def __init__(self, hidden: int = 4) -> None:
        super().__init__()
        self.input = nn.Linear(3, hidden, dtype=F64)
        self.recurrent = nn.Linear(hidden, hidden, bias=False, dtype=F64)
        self.head = nn.Linear(hidden, 1, dtype=F64)

    def forward(self, x, keep=None):
        h = torch.zeros(x.shape[1], self.recurrent.in_features, dtype=F64)
        for x_t in x:
            h = rnnscope.mark(torch.tanh(self.input(x_t) + self.recurrent(h)), "elman")
            if keep is not None:
                keep.append(h)
        return self.head(h).pow(2).sum()


def test_an_elman_loop_with_mark_equals_autograd_and_mark_is_inert_outside():
    torch.manual_seed(3)
    model = MarkedElman()
    x = torch.randn(10, 3, 3, dtype=F64)
    kept = []
    loss = model(x, kept)
    assert all(isinstance(h, torch.Tensor) for h in kept)  # outside a block: h itself
    flow = assert_same_training(model, lambda: model(x)).flow
    assert flow.layers == ["elman"] and flow.norms.shape == (1, 10)
    torch.testing.assert_close(flow.norms[0], profile(loss, kept), rtol=1e-10, atol=0)
    h = torch.ones(2, requires_grad=True)
    assert rnnscope.mark(h, "x") is h


# LSTM projections


def projected_reference(lstm: nn.LSTM, x: torch.Tensor, loss_of):
    """An LSTM with proj_size from torch's documented equations, layer by layer and
    direction by direction, every projected h_t kept (order: layer, then direction)."""
    directions = 2 if lstm.bidirectional else 1
    layer_input, kept = list(x), []
    for layer in range(lstm.num_layers):
        outputs = []
        for direction in range(directions):
            suffix = f"_l{layer}" + ("_reverse" if direction else "")
            w_ih, w_hh, b_ih, b_hh, w_hr = (getattr(lstm, name + suffix) for name in (
                "weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr"))
            h = torch.zeros(x.shape[1], lstm.proj_size, dtype=F64)
            c = torch.zeros(x.shape[1], lstm.hidden_size, dtype=F64)
            hs = [None] * len(layer_input)
            order = range(len(hs) - 1, -1, -1) if direction else range(len(hs))
            for t in order:
                i, f, g, o = (layer_input[t] @ w_ih.T + b_ih + h @ w_hh.T + b_hh).chunk(4, 1)
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                h = (torch.sigmoid(o) * torch.tanh(c)) @ w_hr.T
                hs[t] = h
            kept.append(hs)
            outputs.append(hs)
        layer_input = [torch.cat([d[t] for d in outputs], dim=1) for t in range(len(x))]
    return loss_of(torch.stack(layer_input)), kept


@pytest.mark.parametrize(("layers", "bidirectional"), [(1, False), (2, False), (2, True)])
def test_lstm_projections_equal_torch_and_autograd(layers, bidirectional):
    torch.manual_seed(4)
    lstm = nn.LSTM(3, 6, num_layers=layers, bidirectional=bidirectional, proj_size=2,
                   dtype=F64)
    x = torch.randn(9, 3, 3, dtype=F64)

    def loss_of(output):
        return output[-3:].pow(2).sum()

    loss, kept = projected_reference(lstm, x, loss_of)
    torch.testing.assert_close(loss_of(lstm(x)[0]), loss, rtol=1e-12, atol=0)
    flow = assert_same_training(lstm, lambda: loss_of(lstm(x)[0])).flow
    h_rows = [i for i, state in enumerate(flow.states) if state == "h"]
    assert len(h_rows) == len(kept) == layers * (2 if bidirectional else 1)
    for row, hs in zip(h_rows, kept, strict=True):
        torch.testing.assert_close(flow.norms[row], profile(loss, hs), rtol=1e-10, atol=0)


def test_projections_move_between_torch_and_rnnscope_and_take_init_schemes():
    torch.manual_seed(5)
    lstm = nn.LSTM(3, 6, num_layers=2, proj_size=4, dtype=F64)
    ours = rnnscope.from_torch(lstm)
    assert ours.proj_size == 4 and ours.weight_hr_l1.shape == (4, 6)
    x = torch.randn(5, 2, 3, dtype=F64)
    torch.testing.assert_close(ours(x)[0], lstm(x)[0], rtol=1e-12, atol=0)
    back = ours.to_torch()
    assert isinstance(back, nn.LSTM) and back.proj_size == 4
    rnnscope.init_(lstm, "chrono", t_max=50)
    rnnscope.init_(lstm, "orthogonal")
    w_hr = lstm.weight_hr_l0.detach()
    torch.testing.assert_close(w_hr @ w_hr.T, torch.eye(4, dtype=F64), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="^proj_size: only an LSTM projects"):
        rnnscope.Recurrent("gru", 3, 6, proj_size=2)


# packed batches: steps back from each sequence's own end


def test_packed_sequences_are_profiled_from_each_sequences_own_end():
    torch.manual_seed(6)
    gru = nn.GRU(3, 4, bidirectional=True, dtype=F64)
    head = nn.Linear(8, 1, dtype=F64)
    lengths = [3, 7, 5]
    x = torch.randn(7, 3, 3, dtype=F64)
    packed = pack_padded_sequence(x, torch.tensor(lengths), enforce_sorted=False)
    forward_cell, reverse_cell = tied_cell("gru", gru), tied_cell("gru", gru, "_l0_reverse")
    kept, loss = [], 0.0  # per sequence, its own forward h_t, run over its own length
    for b, length in enumerate(lengths):
        h, ahead = None, [None] * length
        for t in range(length):
            h = forward_cell(x[t, b : b + 1], h)
            ahead[t] = h
        h, behind = None, [None] * length
        for t in range(length - 1, -1, -1):  # the reverse direction starts at its own end
            h = reverse_cell(x[t, b : b + 1], h)
            behind[t] = h
        kept.append(ahead)
        loss = loss + sum(head(torch.cat([ahead[t], behind[t]], dim=1)).pow(2).sum()
                          for t in range(length))
    torch.testing.assert_close(head(gru(packed)[0].data).pow(2).sum(), loss, rtol=1e-12,
                               atol=0)
    expected = torch.full((7, 3), float("nan"), dtype=F64)  # [steps back, sequence]
    for b, hs in enumerate(kept):
        norms = torch.stack([g.norm() for g in torch.autograd.grad(loss, hs,
                                                                   retain_graph=True)])
        expected[: lengths[b], b] = norms.flip(0)
    with record(gru) as rec:
        head(gru(packed)[0].data).pow(2).sum().backward()
    back = rec.flow.steps_back()
    assert rec.flow.layers == ["l0", "l0_reverse"]
    torch.testing.assert_close(back[0], expected.nanmean(dim=1), rtol=1e-10, atol=0)
    assert rec.flow.aligned is not None
    assert rec.flow.to_dict()["steps_back"][0] == back[0].tolist()


# what record sees but cannot follow is said, never dropped in silence


class OddRNN(nn.RNNBase):
    """A recurrent layer of a kind the unrolled engine does not know."""

    def __init__(self) -> None:
        super().__init__("RNN_TANH", 3, 4, dtype=F64)
        self.mode = "MY_CELL"

    def forward(self, x, hx=None):
        return torch.tanh(F.linear(x, self.weight_ih_l0)), None


def test_what_record_cannot_follow_is_warned_about_by_name():
    torch.manual_seed(7)
    model = nn.ModuleDict({"odd": OddRNN(), "gru": nn.GRU(3, 4, dtype=F64),
                           "frozen": nn.LSTM(3, 4, dtype=F64)})
    model["frozen"].requires_grad_(False)
    x = torch.randn(5, 2, 3, dtype=F64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with record(model) as rec:
            loss = model["odd"](x)[0].sum() + model["gru"](x)[0].sum()
            model["frozen"](x)  # no parameter or input requires grad
            rnnscope.mark(x, "unmarkable")  # a state without a graph
            model["gru"](x)  # a second run whose output no loss uses
            loss.backward()
            flow = rec.flow
    messages = [str(w.message) for w in caught]
    assert any("odd (OddRNN)" in m and "not recorded" in m for m in messages), messages
    assert any(m.startswith("record: frozen ran with no gradient path") for m in messages)
    assert any("mark('unmarkable')" in m for m in messages)
    assert any("backward never reached" in m and "gru#2.l0" in m for m in messages)
    assert flow.layers == ["gru.l0"]  # every followed state backward reached


def test_marks_keep_their_own_rows_after_the_modules_in_the_order_first_marked():
    torch.manual_seed(8)
    gru = nn.GRU(2, 3, dtype=F64)
    x = torch.randn(4, 1, 2, dtype=F64)
    with record(gru) as rec:
        output, _ = gru(x)
        b = rnnscope.mark(output[0] * 2, "b")
        a = rnnscope.mark(output[1] * 3, "a")
        b2 = rnnscope.mark(b + 1, "b")
        (a.sum() + b2.sum() + output[-1].sum()).backward()
    flow = rec.flow
    assert flow.layers == ["l0", "b", "a"] and flow.norms.shape == (3, 4)
    assert flow.norms[1, :2].tolist() == [pytest.approx(3 ** 0.5)] * 2  # d(sum)/db = ones
    assert flow.norms[2, 0].item() == pytest.approx(3 ** 0.5)


def test_dropout_zeros_are_not_underflow_but_a_vanished_gradient_is():
    torch.manual_seed(9)
    lstm = nn.LSTM(3, 16, num_layers=2, dropout=0.5, dtype=torch.float32)
    x = torch.randn(20, 8, 3)
    with record(lstm) as rec:
        output, _ = lstm(x)
        F.dropout(output, 0.5).sum().backward()
    assert rec.flow.underflow_fraction == 0.0  # healthy: dropout's zeros do not count
    rnn = nn.RNN(1, 8, dtype=torch.float32)
    with torch.no_grad():
        rnn.weight_hh_l0.mul_(0.05)  # contracts ~20x a step: gone to zero long before t=0
    with record(rnn) as rec:
        rnn(torch.randn(200, 4, 1))[0][-1].sum().backward()
    assert 0.3 < rec.flow.underflow_fraction <= 1.0


class EncoderCellDecoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn, self.cell = nn.LSTM(3, 4, dtype=F64), nn.GRUCell(4, 4, dtype=F64)

    def forward(self, x):
        output, h = self.rnn(x)[0], None
        for output_t in output:
            h = self.cell(output_t, h)
        return h.pow(2).sum()


def test_a_compiled_model_is_recorded_as_the_model_itself():
    torch.manual_seed(10)
    model = EncoderCellDecoder()
    x = torch.randn(6, 2, 3, dtype=F64)
    with record(model) as plain:
        model(x).backward()
    compiled = torch.compile(model, backend="eager")  # dynamo's tracing, no code generation
    with record(model) as rec:
        compiled(x).backward()
    assert rec.flow.layers == plain.flow.layers == ["rnn.l0", "cell"]
    torch.testing.assert_close(rec.flow.norms, plain.flow.norms, rtol=1e-12, atol=0)
