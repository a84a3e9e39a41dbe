"""Recurrent against torch's nn.RNN / nn.LSTM / nn.GRU: forward, state and every gradient."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from rnnscope import CELLS, Recurrent, find_recurrent, from_torch
from rnnscope.models.recurrent import cell_name
from support import relative_error, torch_module

TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}
INPUT_MODES = ("batched", "unbatched", "packed_sorted", "packed_unsorted")


def as_tuple(state) -> tuple[torch.Tensor, ...]:
    return state if isinstance(state, tuple) else (state,)


@st.composite
def configurations(draw):
    return {
        "cell": draw(st.sampled_from(sorted(CELLS))),
        "num_layers": draw(st.integers(1, 3)),
        "input_size": draw(st.integers(1, 4)),
        "hidden_size": draw(st.integers(1, 5)),
        "batch": draw(st.integers(1, 4)),
        "steps": draw(st.integers(1, 6)),
        "batch_first": draw(st.booleans()),
        "bidirectional": draw(st.booleans()),
        "bias": draw(st.booleans()),
        "mode": draw(st.sampled_from(INPUT_MODES)),
        "with_state": draw(st.booleans()),
        "seed": draw(st.integers(0, 2**16)),
        "lengths": draw(st.lists(st.integers(1, 6), min_size=4, max_size=4)),
    }


def run_both(config: dict, dtype: torch.dtype):
    """Run torch's module and its rnnscope copy on the same input; return both results."""
    torch.manual_seed(config["seed"])
    cell, batch, steps = config["cell"], config["batch"], config["steps"]
    reference = torch_module(
        cell, config["input_size"], config["hidden_size"], num_layers=config["num_layers"],
        bias=config["bias"], batch_first=config["batch_first"],
        bidirectional=config["bidirectional"], dtype=dtype,
    )
    ours = from_torch(reference)
    directions = 2 if config["bidirectional"] else 1
    mode = config["mode"]
    unbatched = mode == "unbatched"

    x_shape = (batch, steps) if config["batch_first"] else (steps, batch)
    x = torch.randn(*((steps,) if unbatched else x_shape), config["input_size"], dtype=dtype)
    state_shape = (config["num_layers"] * directions,) + (() if unbatched else (batch,))
    state_shape += (config["hidden_size"],)
    state = None
    if config["with_state"]:
        parts = tuple(torch.randn(state_shape, dtype=dtype) for _ in range(1 + (cell == "lstm")))
        state = parts if cell == "lstm" else parts[0]
    lengths = [min(n, steps) for n in config["lengths"][:batch]]
    if mode == "packed_sorted":
        lengths = sorted(lengths, reverse=True)

    results = []
    for module in (reference, ours):
        x_leaf = x.clone().requires_grad_(True)
        state_leaves = None
        if state is not None:
            state_leaves = tuple(s.clone().requires_grad_(True) for s in as_tuple(state))
        module_input = x_leaf
        if mode.startswith("packed"):
            module_input = pack_padded_sequence(
                x_leaf, torch.tensor(lengths), batch_first=config["batch_first"],
                enforce_sorted=mode == "packed_sorted",
            )
        given_state = None
        if state_leaves is not None:
            given_state = state_leaves if cell == "lstm" else state_leaves[0]
        output, final = module(module_input, given_state)
        output_data = output.data if mode.startswith("packed") else output
        final = as_tuple(final)
        # A loss that weighs every output step and the final state differently,
        # so that any misplaced step, row or direction changes the gradients.
        generator = torch.Generator().manual_seed(1)
        loss = (output_data * torch.randn(output_data.shape, generator=generator,
                                          dtype=dtype)).sum()
        for part in final:
            loss = loss + (part * torch.randn(part.shape, generator=generator, dtype=dtype)).sum()
        loss.backward()
        grads = {name: p.grad for name, p in module.named_parameters()}
        state_grads = [s.grad for s in state_leaves] if state_leaves else []
        results.append((output_data, final, x_leaf.grad, state_grads, grads))
    return results


def assert_parity(config: dict, dtype: torch.dtype) -> None:
    tolerance = TOLERANCE[dtype]
    expected, actual = run_both(config, dtype)
    assert relative_error(actual[0], expected[0]) < tolerance, "output"
    for ours, theirs in zip(actual[1], expected[1], strict=True):
        assert ours.shape == theirs.shape
        assert relative_error(ours, theirs) < tolerance, "final state"
    assert relative_error(actual[2], expected[2]) < tolerance, "input gradient"
    for ours, theirs in zip(actual[3], expected[3], strict=True):
        assert relative_error(ours, theirs) < tolerance, "initial-state gradient"
    assert actual[4].keys() == expected[4].keys()
    # In float32 a parameter gradient that is a near-cancelling sum over steps (e.g. one
    # bias of a hidden-size-1 layer: 0.0011 from terms of size ~1) carries rounding error
    # relative to its terms, not to itself; such a tensor's norm is floored at 1e-2 of
    # the norm of all parameter gradients. float64 keeps the plain per-tensor error.
    overall = torch.cat([g.reshape(-1) for g in expected[4].values()]).norm().item()
    floor = 1e-2 * overall if dtype == torch.float32 else 0.0
    for name, theirs in expected[4].items():
        error = (actual[4][name] - theirs).norm().item() / max(theirs.norm().item(), floor,
                                                                1e-30)
        assert error < tolerance, f"gradient of {name}"


@settings(max_examples=250, deadline=None)
@given(configurations())
def test_parity_with_torch_float64(config):
    assert_parity(config, torch.float64)


@settings(max_examples=60, deadline=None)
@given(configurations())
def test_parity_with_torch_float32(config):
    assert_parity(config, torch.float32)


@pytest.mark.parametrize("cell", sorted(CELLS))
def test_long_sequence_parity(cell):
    """Step-by-step error does not build up over a few hundred steps."""
    config = {"cell": cell, "num_layers": 2, "input_size": 3, "hidden_size": 16, "batch": 4,
              "steps": 300, "batch_first": True, "bidirectional": True, "bias": True,
              "mode": "packed_unsorted", "with_state": True, "seed": 7,
              "lengths": [300, 120, 299, 1]}
    assert_parity(config, torch.float64)


@pytest.mark.parametrize("cell", sorted(CELLS))
def test_round_trips_give_identical_outputs(cell):
    torch.manual_seed(0)
    original = torch_module(cell, 3, 6, num_layers=2, bidirectional=True, batch_first=True)
    x = torch.randn(2, 9, 3)
    back = from_torch(original).to_torch()
    assert type(back) is type(original)
    assert back.batch_first and back.bidirectional and back.num_layers == 2
    assert torch.equal(back(x)[0], original(x)[0])

    ours = Recurrent(cell, 3, 6, num_layers=2, bidirectional=True, batch_first=True)
    copy = Recurrent(cell, 3, 6, num_layers=2, bidirectional=True, batch_first=True)
    copy.load_state_dict(ours.state_dict())
    assert torch.equal(copy(x)[0], ours(x)[0])


@pytest.mark.parametrize("cell", sorted(CELLS))
def test_state_dicts_load_both_ways(cell):
    """Same keys in the same order; loaded either way, the two compute the same function.
    (Bitwise equality across the two implementations is not expected: torch's fused
    kernel sums in another order, so the check is at float64 rounding level.)"""
    torch.manual_seed(0)
    ours = Recurrent(cell, 3, 6, num_layers=2, bidirectional=True, dtype=torch.float64)
    theirs = torch_module(cell, 3, 6, num_layers=2, bidirectional=True, dtype=torch.float64)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    x = torch.randn(9, 2, 3, dtype=torch.float64)
    theirs.load_state_dict(ours.state_dict())
    assert relative_error(ours(x)[0], theirs(x)[0]) < 1e-12
    fresh = torch_module(cell, 3, 6, num_layers=2, bidirectional=True, dtype=torch.float64)
    ours.load_state_dict(fresh.state_dict())
    assert relative_error(ours(x)[0], fresh(x)[0]) < 1e-12
    assert relative_error(ours(x)[0], theirs(x)[0]) > 1e-3  # the load really changed it


@pytest.mark.parametrize("cell", sorted(CELLS))
@pytest.mark.parametrize("bidirectional", [False, True])
def test_dropout_between_layers_in_training_only(cell, bidirectional):
    """Same masks as torch layers stacked by hand with F.dropout between them."""
    torch.manual_seed(0)
    ours = Recurrent(cell, 3, 5, num_layers=2, dropout=0.5, bidirectional=bidirectional,
                     dtype=torch.float64)
    directions = 2 if bidirectional else 1
    first = torch_module(cell, 3, 5, bidirectional=bidirectional, dtype=torch.float64)
    second = torch_module(cell, 5 * directions, 5, bidirectional=bidirectional,
                          dtype=torch.float64)
    state = ours.state_dict()
    first.load_state_dict({k: v for k, v in state.items() if "_l0" in k})
    second.load_state_dict({k.replace("_l1", "_l0"): v for k, v in state.items() if "_l1" in k})
    x = torch.randn(6, 4, 3, dtype=torch.float64)

    torch.manual_seed(123)
    actual = ours(x)[0]
    torch.manual_seed(123)
    expected = second(F.dropout(first(x)[0], 0.5, training=True))[0]
    assert relative_error(actual, expected) < 1e-12

    ours.eval()
    undropped = second(first(x)[0])[0]
    assert relative_error(ours(x)[0], undropped) < 1e-12
    assert relative_error(actual, undropped) > 1e-3


def test_dropout_with_one_layer_warns_like_torch():
    with pytest.warns(UserWarning, match="dropout"):
        Recurrent("lstm", 2, 3, dropout=0.3)


def test_outputs_for_all_cells_and_nested_models_are_found():
    model = nn.Sequential(nn.Linear(2, 3))
    model.add_module("rnn", Recurrent("gru", 3, 4))
    model.add_module("inner", nn.ModuleDict({"lstm": nn.LSTM(4, 4)}))
    names = [name for name, _ in find_recurrent(model)]
    assert names == ["rnn", "inner.lstm"]
    assert [cell_name(m) for _, m in find_recurrent(model)] == ["gru", "lstm"]


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: Recurrent("transformer", 2, 3), "cell"),
        (lambda: Recurrent("lstm", 0, 3), "input_size"),
        (lambda: Recurrent("lstm", 2, -1), "hidden_size"),
        (lambda: Recurrent("lstm", 2, 3, num_layers=0), "num_layers"),
        (lambda: Recurrent("lstm", 2, 3, dropout=1.5), "dropout"),
        (lambda: Recurrent("gru", 2, 4, proj_size=2), "proj_size"),
        (lambda: Recurrent("lstm", 2, 4, proj_size=4), "proj_size"),  # torch: < hidden
        (lambda: Recurrent("lstm", 2, 4, proj_size=-1), "proj_size"),
    ],
)
def test_bad_configuration_names_the_field(build, field):
    with pytest.raises(ValueError, match=f"^{field}:"):
        build()


def test_unknown_cell_lists_the_accepted_cells():
    with pytest.raises(ValueError,
                       match="^cell: unknown 'elman'; accepted: rnn_tanh, rnn_relu, lstm, gru$"):
        Recurrent("elman", 2, 3)


def test_from_torch_rejects_other_modules():
    with pytest.raises(TypeError, match="^module:"):
        from_torch(nn.Linear(2, 3))


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda m: m(torch.randn(5, 2, 7)), ValueError, "input_size=3"),
        (lambda m: m(torch.randn(5)), ValueError, "2-D"),
        (lambda m: m(torch.randn(5, 2, 3, dtype=torch.float64)), TypeError, "dtype"),
        (lambda m: m(torch.randn(5, 2, 3), torch.zeros(1, 2, 4)), TypeError, r"\(h_0, c_0\)"),
        (lambda m: m(torch.randn(5, 2, 3), (torch.zeros(1, 3, 4),) * 2), ValueError, "h_0"),
        (lambda m: m(torch.randn(0, 2, 3)), ValueError, "empty"),
    ],
)
def test_bad_input_gives_a_clear_error(call, error, message):
    module = Recurrent("lstm", 3, 4)
    with pytest.raises(error, match=message):
        call(module)


def test_parameters_are_initialised_like_torch():
    torch.manual_seed(3)
    ours = Recurrent("lstm", 3, 25)
    bound = 1 / 25**0.5
    for p in ours.parameters():
        assert p.abs().max() <= bound
        assert p.std() > bound / 3  # not left at zero or a constant


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("cell", sorted(CELLS))
def test_parity_on_cuda(cell):
    torch.manual_seed(0)
    reference = torch_module(cell, 3, 8, num_layers=2, bidirectional=True).cuda().double()
    ours = from_torch(reference)
    assert next(ours.parameters()).is_cuda
    x = torch.randn(20, 4, 3, device="cuda", dtype=torch.float64)
    assert relative_error(ours(x)[0], reference(x)[0]) < 1e-10
    assert next(ours.to_torch().parameters()).is_cuda
