"""record() through torch's fused kernels (models/fused.py) against record() through the
unrolled engine: the same rows, names and per-step norms, in float64 to 1e-10."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence
from torch.testing import assert_close

from rnnscope import record
from rnnscope.models import fused

FUSED = ("rnn_tanh", "rnn_relu", "lstm")


def module(cell: str, hidden: int, layers: int, bidirectional: bool, batch_first: bool,
           proj_size: int = 0, bias: bool = True) -> nn.RNNBase:
    kwargs = {"proj_size": proj_size} if proj_size else {}
    if cell.startswith("rnn_"):
        kwargs["nonlinearity"] = cell[4:]
    cls = nn.LSTM if cell == "lstm" else nn.RNN
    return cls(3, hidden, num_layers=layers, bidirectional=bidirectional, bias=bias,
               batch_first=batch_first, dtype=torch.float64, **kwargs)


def loss_of(rnn: nn.RNNBase, head: nn.Linear, x, state, use: str):
    """A loss on the outputs, the final state or both, as models use them."""
    output, final = rnn(x, state)
    h_n = final[0] if isinstance(final, tuple) else final
    c_n = final[1] if isinstance(final, tuple) else None
    data = output.data if isinstance(output, PackedSequence) else output
    loss = torch.zeros((), dtype=torch.float64)
    if use in ("output", "both"):
        loss = loss + head(data).pow(2).sum()
    if use in ("final", "both"):
        loss = loss + h_n.pow(3).sum()
        if c_n is not None:  # an LSTM's final cell state: dL/dc_n starts the c rows
            loss = loss + c_n.pow(2).sum() / 2
    return loss


def recorded(engine: str, rnn, head, x, state, use: str, cell_state: bool = False):
    rnn.zero_grad(set_to_none=True)
    head.zero_grad(set_to_none=True)
    with record(rnn, per_sample=True, engine=engine, cell_state=cell_state) as rec:
        loss = loss_of(rnn, head, x, state, use)
        loss.backward()
    grads = {n: p.grad for n, p in [*rnn.named_parameters(),
                                    *head.named_parameters(prefix="head")]}
    return rec.flow, loss.detach(), grads


@st.composite
def setups(draw):
    cell = draw(st.sampled_from(FUSED))
    hidden = draw(st.integers(1, 6))
    return {
        "cell": cell, "hidden": hidden,
        "layers": draw(st.integers(1, 3)),
        "bidirectional": draw(st.booleans()),
        "batch_first": draw(st.booleans()),
        "proj_size": draw(st.integers(0, hidden - 1)) if cell == "lstm" else 0,
        "bias": draw(st.booleans()),
        "batch": draw(st.integers(1, 4)),
        "steps": draw(st.integers(1, 9)),
        "packed": draw(st.booleans()),
        "initial": draw(st.booleans()),
        "use": draw(st.sampled_from(["output", "final", "both"])),
        "cell_state": draw(st.booleans()),  # an LSTM's dL/dc_t rows too
        "seed": draw(st.integers(0, 2**16)),
    }


@settings(max_examples=80, deadline=None)
@given(setups())
def test_fused_flow_equals_the_unrolled_flow(setup):
    torch.manual_seed(setup["seed"])
    rnn = module(setup["cell"], setup["hidden"], setup["layers"], setup["bidirectional"],
                 setup["batch_first"], setup["proj_size"], setup["bias"])
    directions = 2 if setup["bidirectional"] else 1
    head = nn.Linear(directions * (setup["proj_size"] or setup["hidden"]), 1,
                     dtype=torch.float64)
    batch, steps = setup["batch"], setup["steps"]
    x = torch.randn(batch, steps, 3, dtype=torch.float64)
    x = x if setup["batch_first"] else x.transpose(0, 1)
    if setup["packed"]:
        lengths = torch.randint(1, steps + 1, (batch,))
        x = pack_padded_sequence(x, lengths, batch_first=setup["batch_first"],
                                 enforce_sorted=False)
    state = None
    if setup["initial"]:
        shape = (setup["layers"] * directions, batch)
        h_0 = torch.randn(*shape, setup["proj_size"] or setup["hidden"], dtype=torch.float64)
        c_0 = torch.randn(*shape, setup["hidden"], dtype=torch.float64)
        state = (h_0, c_0) if setup["cell"] == "lstm" else h_0

    options = (setup["use"], setup["cell_state"])
    flow, loss, grads = recorded("fused", rnn, head, x, state, *options)
    expected, expected_loss, expected_grads = recorded("unrolled", rnn, head, x, state,
                                                       *options)
    assert flow.layers == expected.layers and flow.reverse == expected.reverse
    assert flow.states == expected.states
    assert_close(flow.norms, expected.norms, rtol=1e-10, atol=1e-300, equal_nan=True)
    assert_close(flow.per_sample, expected.per_sample, rtol=1e-10, atol=1e-300,
                 equal_nan=True)
    assert (flow.aligned is None) == (expected.aligned is None)
    if flow.aligned is not None:
        assert_close(flow.aligned, expected.aligned, rtol=1e-10, atol=1e-300, equal_nan=True)
    assert flow.nonfinite == expected.nonfinite == 0
    assert_close(loss, expected_loss, rtol=1e-12, atol=0)
    for name, grad in expected_grads.items():
        if grad is None:  # the read-out of a loss on the final state alone
            assert grads[name] is None and name.startswith("head")
        else:
            assert_close(grads[name], grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("cell", FUSED)
def test_the_fused_engine_changes_neither_outputs_nor_gradients(cell):
    """Outputs, final states and every gradient (parameters, input, initial state) as the
    module computes them itself."""
    torch.manual_seed(0)
    rnn = module(cell, 5, 2, True, False)
    x = torch.randn(7, 3, 3, dtype=torch.float64, requires_grad=True)
    h_0 = torch.randn(4, 3, 5, dtype=torch.float64, requires_grad=True)
    state = (h_0, torch.randn(4, 3, 5, dtype=torch.float64)) if cell == "lstm" else h_0

    def run(engine):
        with record(rnn, engine=engine):
            output, final = rnn(x, state)
        h_n = final[0] if cell == "lstm" else final
        inputs = [x, h_0, *rnn.parameters()]
        return output, h_n, torch.autograd.grad(output.pow(2).sum() + h_n.sum(), inputs)

    plain_output, plain_final = rnn(x, state)
    plain_h = plain_final[0] if cell == "lstm" else plain_final
    output, h_n, grads = run("fused")
    assert_close(output, plain_output, rtol=1e-12, atol=1e-14)
    assert_close(h_n, plain_h, rtol=1e-12, atol=1e-14)
    for got, expected in zip(grads, torch.autograd.grad(
            plain_output.pow(2).sum() + plain_h.sum(), [x, h_0, *rnn.parameters()]),
            strict=True):
        assert_close(got, expected, rtol=1e-10, atol=1e-12)


def test_a_decoder_stepping_a_fused_lstm_continues_its_row():
    """One call per step, each starting from the state the previous returned: one row of
    every step, as the unrolled engine records it."""
    torch.manual_seed(0)
    rnn = module("lstm", 4, 2, False, False)
    x = torch.randn(6, 2, 3, dtype=torch.float64)

    def flow(engine):
        with record(rnn, engine=engine) as rec:
            state, outputs = None, []
            for t in range(6):
                output, state = rnn(x[t : t + 1], state)
                outputs.append(output)
            (torch.cat(outputs).pow(2).sum() + state[0].sum()).backward()
        return rec.flow

    got, expected = flow("fused"), flow("unrolled")
    assert got.layers == expected.layers == ["l0", "l1"]
    assert got.norms.shape == (2, 6)
    assert_close(got.norms, expected.norms, rtol=1e-10, atol=0)


def test_gradients_asked_for_the_initial_state_alone_reach_every_step():
    """autograd.grad with `inputs` = h_0 runs only what leads to h_0; the recurrence's
    node is anchored to it, so its gradient arrives all the same."""
    torch.manual_seed(0)
    rnn = module("lstm", 4, 1, False, False)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    h_0 = torch.randn(1, 2, 4, dtype=torch.float64, requires_grad=True)
    c_0 = torch.zeros(1, 2, 4, dtype=torch.float64)

    def flow(engine):
        with record(rnn, engine=engine) as rec:
            output, _ = rnn(x, (h_0, c_0))
            torch.autograd.grad(output[-1].sum(), [h_0])
        return rec.flow

    assert_close(flow("fused").norms, flow("unrolled").norms, rtol=1e-10, atol=0)


def test_several_backward_passes_add_up_on_the_fused_path_too():
    torch.manual_seed(0)
    rnn = module("rnn_tanh", 4, 2, True, False)
    x = torch.randn(6, 2, 3, dtype=torch.float64)

    def flow(engine, parts):
        with record(rnn, engine=engine) as rec:
            loss = rnn(x)[0].pow(2).sum()
            for i, share in enumerate(parts):
                (share * loss).backward(retain_graph=i < len(parts) - 1)
        return rec.flow.norms

    assert_close(flow("fused", [0.25, 0.75]), flow("unrolled", [1.0]), rtol=1e-10, atol=0)


def test_which_engine_records_what():
    """auto: an LSTM through its fused kernel (its cell-state rows too), an Elman RNN on
    a CPU unrolled (torch's CPU Elman kernel is a loop of steps); GRUs, Recurrent, and the
    cell-state rows of a projected LSTM or of packed input always unrolled."""
    torch.manual_seed(0)
    calls = []
    layer = fused._layer

    def counted(*args, **kwargs):
        calls.append(args[0].name)
        return layer(*args, **kwargs)

    x = torch.randn(4, 2, 3)
    cases = [(nn.LSTM(3, 4), {}, ["lstm"]), (nn.RNN(3, 4), {}, []),
             (nn.RNN(3, 4), {"engine": "fused"}, ["rnn_tanh"]), (nn.GRU(3, 4), {}, []),
             (nn.GRU(3, 4), {"engine": "fused"}, []),
             (nn.LSTM(3, 4), {"engine": "unrolled"}, []),
             (nn.LSTM(3, 4), {"cell_state": True}, ["lstm"]),
             (nn.LSTM(3, 4, proj_size=2), {"cell_state": True}, [])]
    for rnn, options, expected in cases:
        calls.clear()
        fused._layer = counted
        try:
            with record(rnn, **options) as rec:
                rnn(x)[0].sum().backward()
        finally:
            fused._layer = layer
        assert calls == expected, (type(rnn).__name__, options)
        assert rec.flow.norms.shape[1] == 4
    with pytest.raises(ValueError, match="^engine: unknown 'cudnn'; accepted: auto, fused"):
        record(nn.LSTM(3, 4), engine="cudnn")


@pytest.mark.parametrize("cell", FUSED)
def test_unbatched_input_is_recorded_alike(cell):
    torch.manual_seed(0)
    rnn = module(cell, 4, 2, True, False)
    x = torch.randn(5, 3, dtype=torch.float64)  # [T, I]: no batch dimension

    def flow(engine):
        with record(rnn, engine=engine) as rec:
            output, _ = rnn(x)
            assert output.shape == (5, 8)
            output.pow(2).sum().backward()
        return rec.flow

    got, expected = flow("fused"), flow("unrolled")
    assert got.layers == expected.layers
    assert_close(got.norms, expected.norms, rtol=1e-10, atol=0)


@pytest.mark.parametrize("engine", ["fused", "unrolled"])
@pytest.mark.parametrize("cell_state", [False, True])
def test_a_recorded_step_lets_go_of_its_graph(engine, cell_state):
    """Nothing record keeps may hold a step's graph: a state held by the capture, whose
    graph holds the capture in turn (the fused engine's nodes do), is a cycle through
    autograd that Python's collector cannot see, and kept every recorded step's
    activations and gradients (25 MB a step at T=200, H=128, batch 64)."""
    import gc
    import weakref

    torch.manual_seed(0)
    rnn = nn.LSTM(3, 4)
    with record(rnn, cell_state=cell_state, engine=engine) as rec:
        for _ in range(3):
            x = torch.randn(5, 2, 3)
            output, (h_n, _) = rnn(x)
            (output.sum() + h_n.sum()).backward()
            flow = rec.flow
            graphs = [weakref.ref(output), weakref.ref(h_n)]
            del output, h_n
            gc.collect()
            assert [alive() for alive in graphs] == [None, None]
    assert flow.norms.shape == ((2 if cell_state else 1), 5)
