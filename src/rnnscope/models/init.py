"""Named initialisation schemes for recurrent layers.

`init_(model, scheme, **kw)` applies one scheme to every recurrent layer in
`model` (rnnscope's `Recurrent` and torch's `nn.RNN`/`nn.LSTM`/`nn.GRU`, nested
anywhere). Weight matrices stack one block per gate (`[gates * H, fan_in]`), so
the fan-based and orthogonal schemes treat each gate block as its own matrix.

A new scheme is one function `scheme(weights, spec, **kw)` registered with
`@register`; the CLI and configs find it by name.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from rnnscope.checks import choice, number
from rnnscope.models.cells import CELLS, CellSpec, LayerWeights, layer_weights
from rnnscope.models.recurrent import cell_name, require_recurrent

SchemeFn = Callable[..., None]


@dataclass(frozen=True)
class Scheme:
    name: str
    apply: SchemeFn  # apply(weights: LayerWeights, spec: CellSpec, hidden_size: int, **kw)
    cells: frozenset[str]  # the cells the scheme is defined for
    doc: str


INIT_SCHEMES: dict[str, Scheme] = {}
_ALL_CELLS = frozenset(CELLS)


def register(name: str, cells=_ALL_CELLS):
    def wrap(fn: SchemeFn) -> SchemeFn:
        INIT_SCHEMES[name] = Scheme(name, fn, frozenset(cells), (fn.__doc__ or "").strip())
        return fn

    return wrap


def init_(model: nn.Module, scheme: str, **kw) -> nn.Module:
    """Initialise every recurrent layer of `model` in place with a named scheme; returns `model`.

    Schemes and their keyword arguments (see each function's docstring):
    torch_default, xavier_uniform(gain), xavier_normal(gain), kaiming(nonlinearity),
    orthogonal(gain), identity(scale, input_std), spectral(radius), forget_bias(value),
    chrono(t_max).
    """
    choice("init.scheme", scheme, INIT_SCHEMES)
    entry = INIT_SCHEMES[scheme]
    accepted = [p for p in inspect.signature(entry.apply).parameters if p not in
                ("weights", "spec", "hidden_size")]
    unknown = sorted(set(kw) - set(accepted))
    if unknown:
        raise ValueError(
            f"init.{unknown[0]}: not an argument of scheme {scheme!r}; "
            f"accepted: {', '.join(accepted) or 'none'}"
        )
    layers = require_recurrent(model)
    for _, module in layers:
        cell = cell_name(module)
        if cell not in entry.cells:
            fitting = [n for n, s in INIT_SCHEMES.items() if cell in s.cells]
            raise ValueError(
                f"init.scheme: {scheme!r} does not apply to a {cell} cell "
                f"(it is for {', '.join(sorted(entry.cells))}); accepted for {cell}: "
                f"{', '.join(fitting)}"
            )
    # A scheme may find a problem part-way (a zero W_hh, a missing bias in the
    # third layer); restore everything then, so a failed call changes nothing.
    parameters = [p for _, module in layers for p in module.parameters()]
    with torch.no_grad():
        saved = [p.clone() for p in parameters]
        try:
            for _, module in layers:
                spec = CELLS[cell_name(module)]
                for weights in layer_weights(module):
                    entry.apply(weights, spec, module.hidden_size, **kw)
        except Exception:
            for p, old in zip(parameters, saved, strict=True):
                p.copy_(old)
            raise
    return model


def parse_init_spec(spec: str) -> tuple[str, dict]:
    """`"chrono:300"` -> `("chrono", {"t_max": 300.0})`: the value after the colon is the
    scheme's first argument (t_max, radius, scale, value, gain or nonlinearity)."""
    name, _, argument = spec.partition(":")
    choice("init.scheme", name, INIT_SCHEMES)
    if not argument:
        return name, {}
    parameters = [p for p in inspect.signature(INIT_SCHEMES[name].apply).parameters
                  if p not in ("weights", "spec", "hidden_size")]
    if not parameters:
        raise ValueError(f"init: scheme {name!r} takes no argument, got {spec!r}")
    try:
        value: float | str = float(argument)
    except ValueError:
        value = argument
    return name, {parameters[0]: value}


@dataclass(frozen=True)
class InitConfig:
    """The `init` section: a scheme with an optional argument, as on the command line
    (`orthogonal`, `spectral:3.0`, `identity:1.0`, `chrono:300`, `forget_bias:1.0`)."""

    scheme: str = "torch_default"

    def __post_init__(self) -> None:
        if not isinstance(self.scheme, str):
            raise ValueError(f"init.scheme: expected a scheme name, got {self.scheme!r}")
        parse_init_spec(self.scheme)

    def apply(self, model: nn.Module) -> nn.Module:
        name, kwargs = parse_init_spec(self.scheme)
        return init_(model, name, **kwargs)


def gate_blocks(weight: Tensor, spec: CellSpec) -> tuple[Tensor, ...]:
    """Views of a stacked weight or bias, one per gate in torch's order."""
    return weight.chunk(spec.gates, dim=0)


def _zero_biases(weights: LayerWeights) -> None:
    for bias in (weights.bias_ih, weights.bias_hh):
        if bias is not None:
            bias.zero_()


def _per_block(weight: Tensor, spec: CellSpec, fill: Callable[[Tensor], object]) -> None:
    for block in gate_blocks(weight, spec):
        fill(block)


def _fill_weights(weights: LayerWeights, spec: CellSpec, fill: Callable[[Tensor], object]) -> None:
    """`fill` each gate block of W_ih and W_hh, and an LSTM's projection W_hr; zero the
    biases."""
    for weight in (weights.weight_ih, weights.weight_hh):
        _per_block(weight, spec, fill)
    if weights.weight_hr is not None:
        fill(weights.weight_hr)
    _zero_biases(weights)


def recurrence_blocks(weights: LayerWeights, spec: CellSpec) -> tuple[Tensor, ...]:
    """The square H x H map of h_{t-1} onto each gate: the gate block of W_hh, times the
    projection W_hr for an LSTM with proj_size (h_{t-1} = W_hr (o * tanh(c_{t-1})))."""
    blocks = gate_blocks(weights.weight_hh, spec)
    if weights.weight_hr is None:
        return blocks
    return tuple(block @ weights.weight_hr for block in blocks)


@register("torch_default")
def torch_default(weights: LayerWeights, spec: CellSpec, hidden_size: int) -> None:
    """torch's own: every weight and bias ~ U(-1/sqrt(H), 1/sqrt(H))."""
    bound = 1.0 / math.sqrt(hidden_size)
    for p in (weights.weight_ih, weights.weight_hh, weights.bias_ih, weights.bias_hh,
              weights.weight_hr):
        if p is not None:
            p.uniform_(-bound, bound)


@register("xavier_uniform")
def xavier_uniform(weights: LayerWeights, spec: CellSpec, hidden_size: int,
                   gain: float = 1.0) -> None:
    """Glorot & Bengio: U(-a, a), a = gain*sqrt(6/(fan_in+fan_out)) per gate block; zero biases."""
    gain = number("init.gain", gain)
    _fill_weights(weights, spec, lambda b: nn.init.xavier_uniform_(b, gain=gain))


@register("xavier_normal")
def xavier_normal(weights: LayerWeights, spec: CellSpec, hidden_size: int,
                  gain: float = 1.0) -> None:
    """Glorot & Bengio: N(0, gain^2 * 2/(fan_in+fan_out)) per gate block; zero biases."""
    gain = number("init.gain", gain)
    _fill_weights(weights, spec, lambda b: nn.init.xavier_normal_(b, gain=gain))


@register("kaiming")
def kaiming(weights: LayerWeights, spec: CellSpec, hidden_size: int,
            nonlinearity: str = "relu") -> None:
    """He et al.: N(0, gain^2/fan_in) per gate block (gain sqrt(2) for relu); zero biases."""
    choice("init.nonlinearity", nonlinearity, ("relu", "tanh", "linear", "sigmoid"))
    _fill_weights(weights, spec, lambda b: nn.init.kaiming_normal_(b, nonlinearity=nonlinearity))


@register("orthogonal")
def orthogonal(weights: LayerWeights, spec: CellSpec, hidden_size: int,
               gain: float = 1.0) -> None:
    """Saxe et al.: each gate block of W_hh a random orthogonal matrix times gain (and an
    LSTM's projection W_hr a random orthogonal one, so W_hh W_hr keeps norms too);
    W_ih Xavier-uniform per gate block; zero biases."""
    gain = number("init.gain", gain)
    _per_block(weights.weight_hh, spec, lambda b: nn.init.orthogonal_(b, gain=gain))
    if weights.weight_hr is not None:
        nn.init.orthogonal_(weights.weight_hr)
    _per_block(weights.weight_ih, spec, nn.init.xavier_uniform_)
    _zero_biases(weights)


@register("identity", cells=("rnn_tanh", "rnn_relu"))
def identity(weights: LayerWeights, spec: CellSpec, hidden_size: int, scale: float = 1.0,
             input_std: float = 0.001) -> None:
    """Le, Jaitly & Hinton (IRNN): W_hh = scale * I, W_ih ~ N(0, input_std^2), zero biases."""
    scale = number("init.scale", scale)
    input_std = number("init.input_std", input_std, minimum=0.0)
    weights.weight_hh.copy_(scale * torch.eye(hidden_size, dtype=weights.weight_hh.dtype))
    weights.weight_ih.normal_(0.0, input_std)
    _zero_biases(weights)


@register("spectral")
def spectral(weights: LayerWeights, spec: CellSpec, hidden_size: int,
             radius: float = 1.0) -> None:
    """Rescale each gate block of W_hh (as it stands) so its spectral radius equals `radius`
    (with an LSTM's projection, that of the block times W_hr: the map of h_{t-1})."""
    radius = number("init.radius", radius, above=0.0)
    for block, square in zip(gate_blocks(weights.weight_hh, spec),
                             recurrence_blocks(weights, spec), strict=True):
        current = matrix_spectral_radius(square)
        if current == 0.0:
            raise ValueError(
                "init.radius: W_hh has spectral radius 0, so it cannot be rescaled; "
                "initialise it with another scheme first"
            )
        block.mul_(radius / current)


@register("forget_bias", cells=("lstm",))
def forget_bias(weights: LayerWeights, spec: CellSpec, hidden_size: int,
                value: float = 1.0) -> None:
    """Gers et al.: the LSTM forget-gate bias set to `value` (b_ih + b_hh; half in each)."""
    value = number("init.value", value)
    _need_bias(weights, "forget_bias")
    for bias in (weights.bias_ih, weights.bias_hh):
        gate_blocks(bias, spec)[1].fill_(value / 2)


@register("chrono", cells=("lstm",))
def chrono(weights: LayerWeights, spec: CellSpec, hidden_size: int, t_max: float = 100.0) -> None:
    """Tallec & Ollivier: forget bias log(U[1, t_max - 1]), input bias its negative
    (b_ih + b_hh; half in each). `t_max`: the longest dependency expected, > 2."""
    t_max = number("init.t_max", t_max, above=2.0)
    _need_bias(weights, "chrono")
    forget = torch.empty(hidden_size, dtype=torch.float64).uniform_(1.0, t_max - 1.0).log_()
    for bias in (weights.bias_ih, weights.bias_hh):
        blocks = gate_blocks(bias, spec)
        blocks[0].copy_(-forget / 2)
        blocks[1].copy_(forget / 2)


def _need_bias(weights: LayerWeights, scheme: str) -> None:
    if weights.bias_ih is None:
        raise ValueError(f"init.scheme: {scheme!r} sets gate biases, but the model has bias=False")


def matrix_spectral_radius(matrix: Tensor) -> float:
    """Largest absolute eigenvalue of a square matrix, computed in float64."""
    return torch.linalg.eigvals(matrix.detach().double()).abs().max().item()
