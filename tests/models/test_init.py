"""init_: each scheme's defining property, checked per gate block against references
computed here (numpy eigenvalues, the published variance formulas), on rnnscope's
Recurrent and on torch's own modules, multi-layer and bidirectional."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from rnnscope import Recurrent, from_torch, init_

GATES = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru": 3}  # torch's stacking
MODELS = [(kind, cell) for kind in ("recurrent", "torch") for cell in GATES]
SCHEMES = {  # which schemes each cell accepts (forget_bias/chrono: LSTM; identity: Elman)
    "rnn_tanh": ["torch_default", "xavier_uniform", "xavier_normal", "kaiming", "orthogonal",
                 "identity", "spectral"],
    "lstm": ["torch_default", "xavier_uniform", "xavier_normal", "kaiming", "orthogonal",
             "spectral", "forget_bias", "chrono"],
    "gru": ["torch_default", "xavier_uniform", "xavier_normal", "kaiming", "orthogonal",
            "spectral"],
}
SCHEMES["rnn_relu"] = SCHEMES["rnn_tanh"]
ALL_SCHEMES = sorted({s for names in SCHEMES.values() for s in names})


def make(kind, cell, input_size=5, hidden=8, *, layers=2, bidirectional=True, bias=True,
         dtype=torch.float32, seed=0) -> nn.Module:
    torch.manual_seed(seed)
    kw = {"num_layers": layers, "bidirectional": bidirectional, "bias": bias, "dtype": dtype}
    if kind == "recurrent":
        return Recurrent(cell, input_size, hidden, **kw)
    if cell.startswith("rnn_"):
        return nn.RNN(input_size, hidden, nonlinearity=cell.removeprefix("rnn_"), **kw)
    return {"lstm": nn.LSTM, "gru": nn.GRU}[cell](input_size, hidden, **kw)


def params(model, prefix) -> list[torch.Tensor]:
    """Every parameter of every layer and direction whose own name starts with `prefix`."""
    return [p.detach().clone() for n, p in model.named_parameters()
            if n.rsplit(".", 1)[-1].startswith(prefix)]


def blocks(model, cell, prefix) -> list[torch.Tensor]:
    """Gate blocks, split by hand in torch's layout: rows [g*H, (g+1)*H) belong to gate g."""
    return [b for p in params(model, prefix) for b in p.chunk(GATES[cell])]


def bias_totals(model) -> list[tuple[torch.Tensor, ...]]:
    """(b_ih + b_hh) per layer and direction, split into the four LSTM gates i, f, g, o."""
    return [(ih + hh).chunk(4) for ih, hh in zip(params(model, "bias_ih"),
                                                  params(model, "bias_hh"), strict=True)]


def assert_variance(values, var, sigmas=5.0):
    """Mean 0 and E[x^2] = var, within `sigmas` standard errors of n draws (normal-theory
    SE var*sqrt(2/n) of the second moment; conservative for uniform draws)."""
    x, n = values.double().flatten(), values.numel()
    assert abs(x.mean().item()) < sigmas * math.sqrt(var / n)
    assert abs((x**2).mean().item() / var - 1) < sigmas * math.sqrt(2 / n)


def assert_zero_biases(model):
    assert all(torch.all(b == 0) for b in params(model, "bias_"))


# --- orthogonal, identity, spectral -------------------------------------------------------

@pytest.mark.parametrize(("kind", "cell"), MODELS)
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-5), (torch.float64, 1e-10)])
@pytest.mark.parametrize("gain", [1.0, 2.0])
def test_orthogonal(kind, cell, dtype, tol, gain):
    model = make(kind, cell, hidden=16, dtype=dtype)
    assert init_(model, "orthogonal", gain=gain) is model
    hh = blocks(model, cell, "weight_hh")
    assert len(hh) == 2 * 2 * GATES[cell]  # 2 layers x 2 directions x gates
    for b in hh:
        gram = b.double().T @ b.double() / gain**2
        assert (gram - torch.eye(16, dtype=torch.float64)).abs().max() < tol
    ih = blocks(model, cell, "weight_ih")  # Xavier-uniform, gain 1: |w| <= sqrt(6/(fan_in+H))
    assert all(b.abs().max() <= math.sqrt(6 / sum(b.shape)) for b in ih)
    assert_variance(torch.cat([(b * math.sqrt(sum(b.shape) / 2)).flatten() for b in ih]), 1.0)
    assert_zero_biases(model)


@pytest.mark.parametrize("kind", ["recurrent", "torch"])
@pytest.mark.parametrize("cell", ["rnn_tanh", "rnn_relu"])
@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_identity(kind, cell, scale):
    model = make(kind, cell, input_size=64, hidden=64)
    init_(model, "identity", scale=scale, input_std=0.01)
    for w in params(model, "weight_hh"):
        assert torch.equal(w, scale * torch.eye(64))
    assert_variance(torch.cat([w.flatten() for w in params(model, "weight_ih")]), 0.01**2)
    assert_zero_biases(model)


def rounding_slack(a: np.ndarray, eps: float) -> float:
    """First-order bound kappa * ||E||_F on how far the spectral radius of `a` moves when each
    entry carries a relative error <= 2 eps (scale rounded, product rounded); kappa = 1/|y^H x|
    is the condition number of the dominant eigenvalue(s)."""
    w, right = np.linalg.eig(a)
    wl, left = np.linalg.eig(a.T)
    kappa = 0.0
    for k in np.flatnonzero(abs(w) >= abs(w).max() * (1 - 1e-3)):
        y = left[:, np.argmin(abs(wl - w[k].conj()))]
        kappa = max(kappa, 1 / abs(np.vdot(y, right[:, k])))
    return kappa * 2 * eps * np.linalg.norm(a)


@pytest.mark.parametrize(("kind", "cell"), MODELS)
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-6), (torch.float64, 1e-10)])
@settings(max_examples=10, deadline=None)
@given(radius=st.floats(0.1, 10.0), seed=st.integers(0, 2**16))
def test_spectral(kind, cell, dtype, tol, radius, seed):
    model = make(kind, cell, dtype=dtype, seed=seed)
    before = {p: params(model, p) for p in ("weight_ih", "bias_")}
    hh_before = blocks(model, cell, "weight_hh")
    init_(model, "spectral", radius=radius)
    for old, new in zip(hh_before, blocks(model, cell, "weight_hh"), strict=True):
        rho_old = np.abs(np.linalg.eigvals(old.double().numpy())).max()
        rho_new = np.abs(np.linalg.eigvals(new.double().numpy())).max()
        # float32 cannot hold an exact rescale: allow for an ill-conditioned dominant eigenvalue
        slack = rounding_slack(new.double().numpy(), torch.finfo(dtype).eps / 2) / radius
        assert abs(rho_new / radius - 1) < tol + slack
        # rescaled as it stands: the same matrix times radius / rho
        torch.testing.assert_close(new, old * (radius / rho_old))
    for prefix, tensors in before.items():  # input weights and biases untouched
        assert all(map(torch.equal, tensors, params(model, prefix)))


@pytest.mark.parametrize("radius", [0.0, -1.0, math.nan, math.inf])
def test_spectral_rejects_bad_radius(radius):
    model = make("recurrent", "lstm")
    before = model.state_dict()
    with pytest.raises(ValueError, match="init.radius"):
        init_(model, "spectral", radius=radius)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_spectral_rejects_zero_matrix():
    model = make("torch", "rnn_tanh", layers=1, bidirectional=False)
    nn.init.zeros_(model.weight_hh_l0)
    with pytest.raises(ValueError, match="spectral radius 0"):
        init_(model, "spectral")


# --- LSTM gate biases ---------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["recurrent", "torch"])
@pytest.mark.parametrize("t_max", [3.0, 100.0, 1000])
def test_chrono(kind, t_max):
    model = make(kind, "lstm", hidden=256)
    weights, old_blocks = params(model, "weight_"), blocks(model, "lstm", "bias_")
    init_(model, "chrono", t_max=t_max)
    forget = torch.cat([f for _, f, _, _ in bias_totals(model)])
    slack = 1e-6  # float32 rounding of the two halves
    assert forget.min() >= math.log(1) and forget.max() <= math.log(t_max - 1) + slack
    assert all(torch.equal(i, -f) for i, f, _, _ in bias_totals(model))
    new_blocks = blocks(model, "lstm", "bias_")  # g and o untouched in b_ih and b_hh alike
    assert all(torch.equal(new_blocks[k], old_blocks[k]) for k in range(len(new_blocks))
               if k % 4 in (2, 3))
    assert all(map(torch.equal, weights, params(model, "weight_")))
    # exp(forget) ~ U[1, t_max - 1]: its mean is t_max / 2
    sd = (t_max - 2) / math.sqrt(12)
    assert abs(forget.double().exp().mean().item() - t_max / 2) < 5 * sd / forget.numel() ** 0.5


@pytest.mark.parametrize("kind", ["recurrent", "torch"])
@pytest.mark.parametrize(("scheme", "cell"), [("identity", "lstm"), ("identity", "gru"),
                                              ("chrono", "gru"), ("chrono", "rnn_tanh"),
                                              ("forget_bias", "gru")])
def test_scheme_rejects_cell(kind, scheme, cell):  # the message lists what the cell accepts
    with pytest.raises(ValueError, match="init.scheme") as info:
        init_(make(kind, cell), scheme)
    listed = str(info.value).split(f"accepted for {cell}:")[1]
    assert sorted(s.strip() for s in listed.split(",")) == sorted(SCHEMES[cell])


@pytest.mark.parametrize("kind", ["recurrent", "torch"])
@pytest.mark.parametrize("scheme", ["chrono", "forget_bias"])
def test_bias_schemes_need_biases(kind, scheme):
    with pytest.raises(ValueError, match="bias=False"):
        init_(make(kind, "lstm", bias=False), scheme)


@pytest.mark.parametrize("t_max", [2, 1.5, -3, math.nan])
def test_chrono_rejects_small_t_max(t_max):
    with pytest.raises(ValueError, match="init.t_max"):
        init_(make("recurrent", "lstm"), "chrono", t_max=t_max)


@pytest.mark.parametrize("kind", ["recurrent", "torch"])
@pytest.mark.parametrize(("dtype", "value"), [(torch.float32, None), (torch.float32, 0.3),
                                              (torch.float64, -2.7)])
def test_forget_bias(kind, dtype, value):
    model = make(kind, "lstm", dtype=dtype)
    old_blocks, weights = blocks(model, "lstm", "bias_"), params(model, "weight_")
    init_(model, "forget_bias", **({} if value is None else {"value": value}))
    expected = torch.tensor(1.0 if value is None else value, dtype=dtype)
    for _, f, _, _ in bias_totals(model):
        assert torch.all(f == expected)
    new_blocks = blocks(model, "lstm", "bias_")
    assert all(torch.equal(new_blocks[k], old_blocks[k]) for k in range(len(new_blocks))
               if k % 4 != 1)
    assert all(map(torch.equal, weights, params(model, "weight_")))


# --- fan-based schemes and torch's default ------------------------------------------------

@pytest.mark.parametrize(("kind", "cell"), MODELS)
@pytest.mark.parametrize(("scheme", "kw"), [
    ("xavier_uniform", {}), ("xavier_uniform", {"gain": 0.5}), ("xavier_normal", {"gain": 2.0}),
    ("kaiming", {}), ("kaiming", {"nonlinearity": "tanh"}),
])
def test_fan_based_variance(kind, cell, scheme, kw):
    model = make(kind, cell, input_size=96, hidden=128)  # >= 12288 draws per block
    init_(model, scheme, **kw)
    for b in blocks(model, cell, "weight_"):
        fan_out, fan_in = b.shape
        assert fan_out == 128 and fan_in in (96, 128, 256)  # W_ih l0, W_hh, W_ih l1
        if scheme == "kaiming":  # He et al., fan_in mode
            gain = {"relu": math.sqrt(2), "tanh": 5 / 3}[kw.get("nonlinearity", "relu")]
            var = gain**2 / fan_in
        else:
            var = kw.get("gain", 1.0) ** 2 * 2 / (fan_in + fan_out)
        assert_variance(b, var)
        if scheme == "xavier_uniform":
            assert b.abs().max() <= math.sqrt(3 * var)  # a = gain*sqrt(6/(fan_in+fan_out))
    assert_zero_biases(model)


def test_kaiming_rejects_unknown_nonlinearity():
    with pytest.raises(ValueError, match="init.nonlinearity"):
        init_(make("recurrent", "gru"), "kaiming", nonlinearity="swish")


@pytest.mark.parametrize(("kind", "cell"), MODELS)
def test_torch_default(kind, cell):
    model = make(kind, cell, input_size=64, hidden=64)
    for p in model.parameters():
        nn.init.constant_(p, 3.0)
    init_(model, "torch_default")
    bound = 1 / math.sqrt(64)
    values = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert values.abs().max() <= bound
    assert_variance(values, bound**2 / 3)


# --- errors, nesting, torch modules after init, determinism -------------------------------

def test_unknown_scheme_lists_accepted():
    with pytest.raises(ValueError, match="init.scheme") as info:
        init_(make("recurrent", "lstm"), "glorot")
    assert all(name in str(info.value) for name in ALL_SCHEMES)


@pytest.mark.parametrize(("scheme", "name"), [
    ("orthogonal", "radius"), ("spectral", "gain"), ("torch_default", "scale"),
    ("chrono", "hidden_size"),
])
def test_unknown_keyword(scheme, name):
    with pytest.raises(ValueError, match=f"init.{name}"):
        init_(make("torch", "lstm"), scheme, **{name: 2.0})


def test_model_without_recurrent_layer():
    with pytest.raises(ValueError, match="no recurrent layer"):
        init_(nn.Sequential(nn.Linear(3, 3), nn.Tanh()), "orthogonal")


def test_lstm_projections_take_every_lstm_scheme():
    torch.manual_seed(0)
    lstm = nn.LSTM(4, 8, num_layers=2, proj_size=3)
    init_(lstm, "spectral", radius=0.5)
    for layer in range(2):  # the map of h_{t-1} onto each gate: W_hh block @ W_hr
        w_hh, w_hr = getattr(lstm, f"weight_hh_l{layer}"), getattr(lstm, f"weight_hr_l{layer}")
        for block in w_hh.detach().chunk(4):
            radius = torch.linalg.eigvals((block @ w_hr.detach()).double()).abs().max()
            assert radius.item() == pytest.approx(0.5, rel=1e-6)
    init_(lstm, "xavier_uniform")
    bound = (6 / (3 + 8)) ** 0.5  # W_hr: fan_in 8, fan_out 3
    assert lstm.weight_hr_l0.abs().max() <= bound and lstm.bias_hh_l0.abs().max() == 0
    init_(lstm, "chrono", t_max=30)
    forget = (lstm.bias_ih_l0 + lstm.bias_hh_l0).detach()[8:16]
    assert ((forget >= 0) & (forget <= math.log(29) + 1e-6)).all()


class Nested(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(5, 5), nn.LSTM(5, 8, 2, bidirectional=True))
        self.decoder = Recurrent("gru", 16, 8)


def test_nested_model_two_layer_kinds():
    torch.manual_seed(0)
    model = init_(Nested(), "orthogonal")
    for module, cell in ((model.encoder[1], "lstm"), (model.decoder, "gru")):
        for b in blocks(module, cell, "weight_hh"):
            torch.testing.assert_close(b.T @ b, torch.eye(8), atol=1e-5, rtol=0)
        assert_zero_biases(module)
    linear = model.encoder[0].weight.detach().clone()
    before = model.state_dict()  # an LSTM-only scheme is refused before anything is changed
    with pytest.raises(ValueError, match="accepted for gru"):
        init_(model, "chrono")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    init_(model, "xavier_normal")
    assert torch.equal(model.encoder[0].weight, linear)  # non-recurrent layers untouched


@pytest.mark.parametrize(("cell", "scheme"), [(c, s) for c in GATES for s in SCHEMES[c]])
def test_torch_module_runs_after_init(cell, scheme):
    module = make("torch", cell)
    x = torch.randn(7, 3, 5)
    before, _ = module(x)
    init_(module, scheme)
    out, state = module(x)
    ref_out, ref_state = from_torch(module)(x)
    assert torch.isfinite(out).all()
    assert not torch.equal(out, before)  # the forward pass sees the new weights
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(state, ref_state, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("kind", "cell"), [("recurrent", "rnn_relu"), ("torch", "lstm"),
                                            ("recurrent", "lstm"), ("torch", "gru")])
def test_deterministic(kind, cell):
    for scheme in SCHEMES[cell]:
        # schemes that redraw everything must not depend on the weights they replace
        redraws = scheme not in ("spectral", "forget_bias", "chrono")
        weights = []
        for start in (0, 1):
            model = make(kind, cell, seed=start if redraws else 0)
            torch.manual_seed(123)
            weights.append(params(init_(model, scheme), ""))
        assert all(map(torch.equal, *weights)), scheme


# --- a failed call changes nothing; numeric arguments are checked alike --------------------

@pytest.mark.parametrize(("build", "scheme", "kw"), [
    (lambda: nn.RNN(3, 4, num_layers=2), "spectral", {"radius": 0.5}),  # zero W_hh in layer 1
    (lambda: nn.Sequential(nn.LSTM(3, 4), nn.LSTM(4, 4, bias=False)), "chrono", {}),
    (lambda: nn.Sequential(nn.LSTM(3, 4), Recurrent("lstm", 4, 4, bias=False)),
     "forget_bias", {}),
])
def test_failure_part_way_restores_every_parameter(build, scheme, kw):
    torch.manual_seed(0)
    model = build()
    if isinstance(model, nn.RNN):
        nn.init.zeros_(model.weight_hh_l1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="^init"):
        init_(model, scheme, **kw)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize(("scheme", "kw", "field"), [
    ("chrono", {"t_max": math.inf}, "init.t_max"),
    ("spectral", {"radius": True}, "init.radius: must be a positive number"),
    ("orthogonal", {"gain": math.nan}, "init.gain"),
    ("xavier_uniform", {"gain": "big"}, "init.gain"),
    ("forget_bias", {"value": math.nan}, "init.value"),
])
def test_bad_numeric_arguments_name_the_field(scheme, kw, field):
    with pytest.raises(ValueError, match=f"^{field}" if ":" in field else
                       f"^{field}: must be a finite number"):
        init_(make("torch", "lstm"), scheme, **kw)


@pytest.mark.parametrize("cell", ["rnn_tanh", "rnn_relu"])
def test_identity_rejects_bad_scale_and_std(cell):
    with pytest.raises(ValueError, match="^init.scale"):
        init_(make("recurrent", cell), "identity", scale=math.nan)
    with pytest.raises(ValueError, match="^init.input_std"):
        init_(make("recurrent", cell), "identity", input_std=-1.0)


@pytest.mark.parametrize("radius", [np.float32(0.5), np.int64(2), torch.tensor(0.5)])
def test_numeric_arguments_accept_numpy_and_tensor_scalars(radius):
    model = make("recurrent", "rnn_tanh", layers=1, bidirectional=False)
    init_(model, "spectral", radius=radius)
    rho = np.abs(np.linalg.eigvals(model.weight_hh_l0.detach().double().numpy())).max()
    assert abs(rho / float(radius) - 1) < 1e-5
