"""clipping: norm and value clipping against clip_grad_norm_/clip_grad_value_ on random
gradients, exact values on hand-set gradients for param_norm, autoclip (against
numpy.percentile) and agc, the non-finite rule for every method, the edges (no gradient,
a single tensor, overflow), the config and its errors, and a Clipper resumed from disk."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from rnnscope.remedies.clipping import (
    CLIP_METHODS,
    DEFAULT_THRESHOLD,
    ClipConfig,
    Clipper,
    NormHistory,
    clip_grad,
)

INF, NAN = math.inf, math.nan
ACCEPTED = "none, norm, value, param_norm, autoclip, agc"


def with_grads(*grads: torch.Tensor | None, weights=None) -> list[nn.Parameter]:
    """Parameters whose .grad is set by hand (None: no gradient); weights default to ones."""
    params = []
    for k, g in enumerate(grads):
        like = g if g is not None else torch.zeros(2)
        w = weights[k] if weights is not None else torch.ones_like(like)
        p = nn.Parameter(w.clone().to(like.dtype))
        p.grad = None if g is None else g.clone()
        params.append(p)
    return params


def copies(params: list[nn.Parameter]) -> list[nn.Parameter]:
    return with_grads(*[p.grad for p in params], weights=[p.detach() for p in params])


def bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bits, so NaN == NaN and -0.0 != 0.0: 'unchanged' means bit for bit."""
    return t.view({4: torch.int32, 8: torch.int64}[t.element_size()]).clone()


def total_norm(params, norm_type=2.0) -> torch.Tensor:
    return nn.utils.get_total_norm([p.grad for p in params if p.grad is not None], norm_type)


# --- norm and value against torch ------------------------------------------------------

gradients = st.lists(
    st.tuples(st.lists(st.integers(1, 5), min_size=0, max_size=3),
              st.sampled_from([torch.float32, torch.float64])),
    min_size=1, max_size=4)


def random_params(specs, log_scale: int, seed: int) -> list[nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    return with_grads(*[torch.randn(shape, generator=gen, dtype=dtype) * 10.0**log_scale
                        for shape, dtype in specs])


@settings(max_examples=60, deadline=None)
@given(specs=gradients, log_scale=st.integers(-4, 4), seed=st.integers(0, 2**16),
       ratio=st.floats(0.01, 10.0), norm_type=st.sampled_from([2.0, INF]))
def test_norm_equals_clip_grad_norm(specs, log_scale, seed, ratio, norm_type):
    params = random_params(specs, log_scale, seed)
    reference, original = copies(params), copies(params)
    max_norm = ratio * float(total_norm(params, norm_type))  # below, at and above the norm
    result = clip_grad(params, "norm", max_norm=max_norm, norm_type=norm_type)
    expected = nn.utils.clip_grad_norm_(reference, max_norm, norm_type)
    assert torch.equal(result.norm_before, expected)
    for p, r in zip(params, reference, strict=True):
        assert torch.equal(p.grad, r.grad)
    torch.testing.assert_close(result.norm_after, total_norm(params, norm_type),
                               rtol=1e-5, atol=0)
    changed = any(not torch.equal(p.grad, o.grad) for p, o in zip(params, original, strict=True))
    assert bool(result.clipped) == changed
    assert not result.nonfinite
    assert float(result.threshold) == pytest.approx(max_norm, rel=1e-6)


@settings(max_examples=60, deadline=None)
@given(specs=gradients, log_scale=st.integers(-4, 4), seed=st.integers(0, 2**16),
       ratio=st.floats(0.01, 2.0))
def test_value_equals_clip_grad_value(specs, log_scale, seed, ratio):
    params = random_params(specs, log_scale, seed)
    reference = copies(params)
    clip_value = ratio * float(total_norm(params, INF))
    over = any(bool((p.grad.abs() > clip_value).any()) for p in params)
    before = total_norm(params)
    result = clip_grad(params, "value", clip_value=clip_value)
    nn.utils.clip_grad_value_(reference, clip_value)
    for p, r in zip(params, reference, strict=True):
        assert torch.equal(p.grad, r.grad)
    assert torch.equal(result.norm_before, before)
    torch.testing.assert_close(result.norm_after, total_norm(params), rtol=1e-6, atol=0)
    assert bool(result.clipped) == over and not result.nonfinite


def test_single_tensor_is_accepted_as_torch_does():
    (p,) = with_grads(torch.tensor([3.0, -4.0]))
    (r,) = copies([p])
    result = clip_grad(p, "norm", max_norm=1.0)
    assert torch.equal(result.norm_before, nn.utils.clip_grad_norm_(r, 1.0))
    assert torch.equal(p.grad, r.grad) and result.clipped


# --- exact values on hand-set gradients ----------------------------------------------------

def test_param_norm_clips_each_parameter_on_its_own():
    params = with_grads(torch.tensor([3.0, 4.0], dtype=torch.float64),
                        torch.tensor([[0.0, 0.5]], dtype=torch.float64), None)
    result = clip_grad(params, "param_norm", max_norm=1.0)
    coef = 1.0 / (5.0 + 1e-6)
    assert params[0].grad.tolist() == [3.0 * coef, 4.0 * coef]
    assert params[1].grad.tolist() == [[0.0, 0.5]]  # under the limit: unchanged
    assert float(result.norm_before) == pytest.approx(math.sqrt(25.25), abs=1e-15)
    assert float(result.norm_after) == pytest.approx(math.sqrt((5 * coef) ** 2 + 0.25), rel=1e-15)
    assert result.clipped and not result.nonfinite and float(result.threshold) == 1.0

    loose = with_grads(torch.tensor([3.0, 4.0]))
    result = clip_grad(loose, "param_norm", max_norm=10.0)
    assert loose[0].grad.tolist() == [3.0, 4.0] and not result.clipped


def test_autoclip_clips_at_the_percentile_of_the_history():
    history = NormHistory(4)
    for norm in (1.0, 2.0, 3.0):
        history.append(norm)
    params = with_grads(torch.tensor([3.0, 4.0], dtype=torch.float64))  # norm 5
    result = clip_grad(params, "autoclip", percentile=50, history=history)
    threshold = np.percentile([1.0, 2.0, 3.0, 5.0], 50)  # 2.5
    assert float(result.threshold) == threshold and len(history) == 4
    coef = threshold / (5.0 + 1e-6)
    assert params[0].grad.tolist() == [3.0 * coef, 4.0 * coef]
    assert result.clipped and float(result.norm_after) == pytest.approx(5.0 * coef, rel=1e-15)

    # The window slides: 1.0 drops out once a fifth norm (13) arrives.
    params = with_grads(torch.tensor([5.0, 12.0], dtype=torch.float64))
    result = clip_grad(params, "autoclip", percentile=90, history=history)
    assert float(result.threshold) == pytest.approx(
        np.percentile([2.0, 3.0, 5.0, 13.0], 90), rel=1e-15, abs=0)


@settings(max_examples=60, deadline=None)
@given(norms=st.lists(st.floats(0.0, 1e6), min_size=1, max_size=30),
       size=st.integers(1, 12), p=st.floats(0.0, 100.0))
def test_norm_history_percentile_equals_numpy(norms, size, p):
    history = NormHistory(size)
    for norm in norms:
        history.append(torch.tensor(norm, dtype=torch.float64))
    held = norms[-size:]
    assert len(history) == len(held)
    assert history.state_dict()["norms"].tolist() == held
    assert float(history.percentile(p)) == pytest.approx(np.percentile(held, p),
                                                         rel=1e-12, abs=1e-300)


def test_norm_history_edges():
    history = NormHistory(3)
    assert len(history) == 0 and history.percentile(50).isnan()
    for norm in (NAN, 2.0, INF, -INF, 1.0):
        history.append(norm)
    assert history.state_dict()["norms"].tolist() == [2.0, 1.0]  # only the finite ones
    assert float(history.percentile(0)) == 1.0 and float(history.percentile(100)) == 2.0
    shorter = NormHistory(1)
    shorter.load_state_dict(history.state_dict())  # keeps the most recent
    assert shorter.state_dict()["norms"].tolist() == [1.0]
    with pytest.raises(ValueError, match=r"clip\.history: must be an integer >= 1, got 0"):
        NormHistory(0)
    with pytest.raises(ValueError, match=r"clip\.percentile: must be in \[0, 100\]"):
        history.percentile(101)


def test_agc_clips_each_unit_against_its_weight_norm():
    f64 = torch.float64
    weight = torch.tensor([[3.0, 4.0], [0.0, 0.0], [1.0, 0.0]], dtype=f64)
    weight_grad = torch.tensor([[6.0, 8.0], [0.0, 1e-3], [0.03, 0.04]], dtype=f64)
    bias, bias_grad = torch.tensor([0.0, 2.0], dtype=f64), torch.tensor([3.0, 4.0], dtype=f64)
    small, small_grad = torch.tensor([10.0], dtype=f64), torch.tensor([0.5], dtype=f64)
    params = with_grads(weight_grad, bias_grad, small_grad, weights=[weight, bias, small])
    result = clip_grad(params, "agc", clipping=0.1, eps=1e-3)
    expected = [
        [[6.0 * (0.5 / 10.0), 8.0 * (0.5 / 10.0)],  # ||G||=10 > 0.1 * ||W||=0.5
         [0.0, 1e-3 * (1e-4 / 1e-3)],  # zero row: limit 0.1 * eps = 1e-4 < 1e-3
         [0.03, 0.04]],  # ||G||=0.05 < 0.1 * 1: under the limit, unchanged
        [3.0 * (0.2 / 5.0), 4.0 * (0.2 / 5.0)],  # the bias is one unit: limit 0.1 * 2
        [0.5],  # under its limit 1.0
    ]
    for p, want in zip(params, expected, strict=True):
        torch.testing.assert_close(p.grad, torch.tensor(want, dtype=f64), rtol=1e-14, atol=0)
    assert params[0].grad[2].tolist() == [0.03, 0.04]
    assert result.clipped and float(result.threshold) == 0.1
    torch.testing.assert_close(result.norm_after, total_norm(params), rtol=1e-14, atol=0)


@settings(max_examples=40, deadline=None)
@given(shape=st.lists(st.integers(1, 4), min_size=0, max_size=3), seed=st.integers(0, 2**16),
       clipping=st.floats(0.01, 2.0), zero_rows=st.booleans())
def test_agc_equals_a_row_by_row_reference(shape, seed, clipping, zero_rows):
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(shape, generator=gen, dtype=torch.float64)
    if zero_rows and weight.dim() >= 1:
        weight[0] = 0.0
    grad = torch.randn(shape, generator=gen, dtype=torch.float64)
    params = with_grads(grad, weights=[weight])
    clip_grad(params, "agc", clipping=clipping, eps=1e-3)
    units = [(weight, grad)] if weight.dim() <= 1 else list(zip(weight, grad, strict=True))
    expected = []
    for w, g in units:
        limit = clipping * max(float(w.norm()), 1e-3)
        g_norm = float(g.norm())
        expected.append(g * (limit / g_norm) if g_norm > limit else g)
    want = expected[0] if weight.dim() <= 1 else torch.stack(expected)
    torch.testing.assert_close(params[0].grad, want, rtol=1e-12, atol=1e-300)


# --- the non-finite rule ----------------------------------------------------------------------

def method_kwargs(method: str) -> dict:
    history = NormHistory(5)
    history.append(0.5)
    return {"none": {}, "norm": {"max_norm": 0.1}, "value": {"clip_value": 0.1},
            "param_norm": {"max_norm": 0.1}, "autoclip": {"percentile": 50, "history": history},
            "agc": {"clipping": 0.01}}[method]


@pytest.mark.parametrize("method", list(CLIP_METHODS))
@pytest.mark.parametrize("poison", ["nan", "inf", "both"])
def test_nonfinite_gradients_change_nothing(method, poison):
    bad = {"nan": [1.0, NAN], "inf": [2.0, -INF], "both": [NAN, INF]}[poison]
    params = with_grads(torch.tensor(bad), torch.tensor([[10.0, -20.0]]),
                        torch.tensor([5.0, 6.0], dtype=torch.float64))
    if poison == "both":
        params[1].grad[0, 0] = INF
    before = [bits(p.grad) for p in params]
    kwargs = method_kwargs(method)
    result = clip_grad(params, method, **kwargs)
    for p, old in zip(params, before, strict=True):
        assert torch.equal(bits(p.grad), old)
    assert result.nonfinite and not result.clipped
    assert not torch.isfinite(result.norm_before)
    if method == "autoclip":
        assert kwargs["history"].state_dict()["norms"].tolist() == [0.5]


@pytest.mark.parametrize("method", ["norm", "value", "param_norm", "agc", "none"])
def test_huge_finite_gradients_are_clipped_not_flagged(method):
    """float32 squares of 1e20 overflow; the gradients are finite and must be clipped
    (an exploding RNN's gradients look like this), not treated as NaN."""
    params = with_grads(torch.tensor([1e20, -1e20]), torch.tensor([[3.0, 4.0]]))
    result = clip_grad(params, method, **method_kwargs(method))
    assert not result.nonfinite
    assert float(result.norm_before) == pytest.approx(2**0.5 * 1e20, rel=1e-6)
    assert all(torch.isfinite(p.grad).all() for p in params)
    if method != "none":
        assert result.clipped and float(params[0].grad.abs().max()) <= 0.1 + 1e-6
        assert float(result.norm_after) < 1.0


def test_finite_gradients_are_not_flagged():
    params = with_grads(torch.tensor([1e-30, 0.0]), torch.tensor([3.0]))
    for method in CLIP_METHODS:
        assert not clip_grad(params, method, **method_kwargs(method)).nonfinite


# --- edges -----------------------------------------------------------------------------------

@pytest.mark.parametrize("method", list(CLIP_METHODS))
def test_no_gradients_at_all(method):
    kwargs = method_kwargs(method)
    for params in (with_grads(None, None), []):
        result = clip_grad(params, method, **kwargs)
        assert float(result.norm_before) == 0.0 and float(result.norm_after) == 0.0
        assert not result.clipped and not result.nonfinite
    if method == "autoclip":
        assert len(kwargs["history"]) == 1  # nothing measured, nothing recorded


def test_zero_gradients_are_not_clipped():
    params = with_grads(torch.zeros(3))
    for method in CLIP_METHODS:
        assert not clip_grad(params, method, **method_kwargs(method)).clipped
    assert params[0].grad.tolist() == [0.0, 0.0, 0.0]


def test_clip_grad_returns_tensors_without_host_sync(monkeypatch):
    params = with_grads(torch.tensor([[3.0, 4.0]]), torch.tensor([NAN]))
    finite = with_grads(torch.tensor([[3.0, 4.0]]), torch.tensor([1.0], dtype=torch.float64))
    kwargs = {method: method_kwargs(method) for method in CLIP_METHODS}

    def host_sync(*args, **kw):
        raise AssertionError("clipping read a tensor value on the host")

    for name in ("item", "tolist", "__bool__", "__float__", "__int__", "numpy"):
        monkeypatch.setattr(torch.Tensor, name, host_sync)
    results = [clip_grad(ps, m, **kwargs[m]) for m in CLIP_METHODS for ps in (params, finite)]
    monkeypatch.undo()
    for result in results:
        values = vars(result).values()
        assert all(isinstance(v, torch.Tensor) and v.dim() == 0 for v in values)
        assert result.clipped.dtype == result.nonfinite.dtype == torch.bool
        assert result.norm_before.is_floating_point() and result.threshold.is_floating_point()


@pytest.mark.parametrize(("method", "kwargs", "message"), [
    ("clip", {}, f"clip.method: unknown 'clip'; accepted: {ACCEPTED}"),
    ("norm", {}, "clip.max_norm: required by method 'norm'; accepted: max_norm, norm_type"),
    ("norm", {"max_norm": 1.0, "clip_value": 1.0},
     "clip.clip_value: not an argument of method 'norm'; accepted: max_norm, norm_type"),
    ("none", {"max_norm": 1.0}, "clip.max_norm: not an argument of method 'none'; accepted: none"),
    ("autoclip", {}, "clip.history: required by method 'autoclip'; accepted: percentile, history"),
    ("autoclip", {"history": 10}, "clip.history: must be a NormHistory, got int"),
    ("autoclip", {"history": NormHistory(), "percentile": 0},
     r"clip.percentile: must be in \(0, 100\], got 0"),
    ("autoclip", {"history": NormHistory(), "percentile": 101},
     r"clip.percentile: must be in \(0, 100\], got 101"),
    ("norm", {"max_norm": -1}, "clip.max_norm: must be a positive number, got -1"),
    ("norm", {"max_norm": 1.0, "norm_type": 0}, "clip.norm_type: must be a positive number"),
    ("value", {"clip_value": True}, "clip.clip_value: must be a positive number, got True"),
    ("param_norm", {"max_norm": NAN}, "clip.max_norm: must be a positive number, got nan"),
    ("agc", {"eps": 0.0}, "clip.eps: must be a positive number, got 0.0"),
])
def test_clip_grad_errors_name_the_argument(method, kwargs, message):
    params = with_grads(torch.tensor([1.0]))
    with pytest.raises(ValueError, match=f"^{message}"):
        clip_grad(params, method, **kwargs)
    assert params[0].grad.tolist() == [1.0]


# --- config and Clipper ----------------------------------------------------------------------

@pytest.mark.parametrize(("spec", "method", "threshold"), [
    ("norm:1.0", "norm", 1.0), ("value:0.5", "value", 0.5), ("agc:0.01", "agc", 0.01),
    ("autoclip:90", "autoclip", 90.0), ("param_norm:2", "param_norm", 2.0),
    ("none", "none", None), ("norm", "norm", None), (" autoclip:100 ", "autoclip", 100.0)])
def test_config_from_spec_and_back(spec, method, threshold):
    config = ClipConfig.from_spec(spec)
    assert (config.method, config.threshold) == (method, threshold)
    assert ClipConfig.from_spec(config.spec) == config
    assert config.spec == (method if threshold is None else f"{method}:{threshold!r}")


def test_config_defaults_and_numbers():
    assert ClipConfig() == ClipConfig("none", None, 1000, 1e-3)
    assert ClipConfig("param_norm", 2).spec == "param_norm:2.0"  # ints are numbers
    assert ClipConfig("none", 3.0).spec == "none:3.0"  # kept, and ignored by none
    assert set(DEFAULT_THRESHOLD) == set(CLIP_METHODS) - {"none"}


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"method": "foo"}, f"clip.method: unknown 'foo'; accepted: {ACCEPTED}"),
    ({"method": None}, f"clip.method: unknown None; accepted: {ACCEPTED}"),
    ({"method": "norm", "threshold": -1}, "clip.threshold: must be a positive number, got -1"),
    ({"method": "norm", "threshold": INF}, "clip.threshold: must be a positive number, got inf"),
    ({"method": "value", "threshold": True}, "clip.threshold: must be a positive number, got True"),
    ({"method": "norm", "threshold": "1"}, "clip.threshold: must be a positive number, got '1'"),
    ({"method": "autoclip", "threshold": 150},
     r"clip.threshold: must be in \(0, 100\], got 150"),
    ({"history": 0}, "clip.history: must be an integer >= 1, got 0"),
    ({"history": True}, "clip.history: must be an integer >= 1, got True"),
    ({"history": 2.0}, "clip.history: must be an integer >= 1, got 2.0"),
    ({"eps": 0}, "clip.eps: must be a positive number, got 0"),
])
def test_config_errors_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        ClipConfig(**kwargs)


@pytest.mark.parametrize(("spec", "message"), [
    ("norm:abc", f"clip: cannot read 'norm:abc'; expected METHOD[:THRESHOLD] with METHOD one of "
                 f"{ACCEPTED}"),
    ("norm:", "clip: cannot read 'norm:'"),
    ("norm:1:2", "clip: cannot read 'norm:1:2'"),
    ("foo:1", f"clip.method: unknown 'foo'; accepted: {ACCEPTED}"),
    ("norm:-2", "clip.threshold: must be a positive number, got -2.0"),
])
def test_config_spec_errors(spec, message):
    with pytest.raises(ValueError) as error:
        ClipConfig.from_spec(spec)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


@pytest.mark.parametrize("method", list(CLIP_METHODS))
def test_clipper_applies_the_config_with_default_thresholds(method):
    grads = (torch.tensor([[30.0, 40.0]]), torch.tensor([0.3, 0.4]))
    params, reference = with_grads(*grads), with_grads(*grads)
    result = Clipper(ClipConfig(method))(params)
    kwargs = {"none": {}, "norm": {"max_norm": 1.0}, "value": {"clip_value": 1.0},
              "param_norm": {"max_norm": 1.0}, "agc": {"clipping": 0.01, "eps": 1e-3},
              "autoclip": {"percentile": 10.0, "history": NormHistory(1000)}}[method]
    expected = clip_grad(reference, method, **kwargs)
    for p, r in zip(params, reference, strict=True):
        assert torch.equal(p.grad, r.grad)
    assert torch.equal(result.threshold, expected.threshold)
    assert torch.equal(result.clipped, expected.clipped)
    assert bool(result.clipped) == (method not in ("none", "autoclip"))  # autoclip: 1 norm held


def test_clipper_passes_threshold_and_eps():
    params = with_grads(torch.tensor([[6.0, 8.0]]), weights=[torch.zeros(1, 2)])
    result = Clipper(ClipConfig("agc", threshold=0.5, eps=2.0))(params)  # limit 0.5 * 2 = 1
    torch.testing.assert_close(params[0].grad, torch.tensor([[0.6, 0.8]]))
    assert float(result.threshold) == 0.5


def test_clipper_resumed_from_state_dict_clips_identically(tmp_path):
    config = ClipConfig("autoclip", threshold=25, history=4)
    gen = torch.Generator().manual_seed(0)
    steps = [[torch.randn(3, 2, generator=gen) * (k + 1), torch.randn(2, generator=gen)]
             for k in range(10)]
    running = Clipper(config)
    for grads in steps[:6]:
        running(with_grads(*grads))
    torch.save(running.state_dict(), tmp_path / "clip.pt")
    resumed = Clipper(config)
    resumed.load_state_dict(torch.load(tmp_path / "clip.pt", weights_only=True))
    assert len(resumed.history) == 4
    for grads in steps[6:]:
        a, b = with_grads(*grads), with_grads(*grads)
        first, second = running(a), resumed(b)
        assert torch.equal(first.threshold, second.threshold)
        assert all(torch.equal(p.grad, q.grad) for p, q in zip(a, b, strict=True))

    fresh = Clipper(ClipConfig("norm"))
    assert fresh.state_dict() == {} and fresh.history is None
    fresh.load_state_dict(running.state_dict())  # another method's state: nothing to take
    buffer = io.BytesIO()
    torch.save(Clipper(config).state_dict(), buffer)  # an empty history saves and loads too
    buffer.seek(0)
    empty = Clipper(config)
    empty.load_state_dict(torch.load(buffer, weights_only=True))
    assert len(empty.history) == 0
