"""Every fix, as code for one's own model and loop: executed on a model it fits, it makes
the change it claims (and the same change as its command-line flags)."""

from __future__ import annotations

import math
import textwrap

import pytest
import torch
from torch import nn

import rnnscope
from rnnscope.flow.fixes import Fix, rank_fixes

T = 40


class Model(nn.Module):
    """A model as users write one: a recurrent layer, a read-out, `model(x, state)`."""

    def __init__(self, cell: str) -> None:
        super().__init__()
        kind = {"rnn_tanh": nn.RNN, "rnn_relu": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[cell]
        extra = {"nonlinearity": cell[4:]} if cell.startswith("rnn") else {}
        self.rnn = kind(2, 8, **extra)
        self.head = nn.Linear(8, 1)

    def forward(self, x, state=None):
        output, state = self.rnn(x, state)
        return self.head(output), state


def every_fix() -> list[tuple[str, Fix]]:
    fixes = []
    for cell in ("rnn_tanh", "rnn_relu", "lstm", "gru", None):
        for verdict, growth in (("vanishing", 1.0), ("exploding", 500.0), ("nonfinite", 1.0)):
            for fix in rank_fixes(verdict, cell=cell, steps=T, reach=12, growth=growth,
                                  grad_norm=40.0, lr=1e-2, explosive=True):
                fixes.append((cell or "rnn_tanh", fix))
    return fixes


def run(fix: Fix, model: Model, optimizer) -> dict:
    """Execute the fix's code where it belongs: after loss.backward(), in a training loop."""
    torch.manual_seed(0)
    inputs, targets = torch.randn(T, 4, 2), torch.randn(T, 4, 1)
    criterion = nn.MSELoss()
    model(inputs)[0].pow(2).mean().backward()
    namespace = {"rnnscope": rnnscope, "torch": torch, "model": model, "optimizer": optimizer,
                 "inputs": inputs, "targets": targets, "criterion": criterion}
    code = "for _ in range(1):  # a training loop's body\n" + textwrap.indent(fix.code, "    ")
    exec(compile(code, f"<fix {fix.remedy}>", "exec"), namespace)  # noqa: S102
    return namespace


def forget_bias(model) -> torch.Tensor:
    rnn = model.rnn
    return (rnn.bias_ih_l0 + rnn.bias_hh_l0).detach()[rnn.hidden_size : 2 * rnn.hidden_size]


@pytest.mark.parametrize(("cell", "fix"), every_fix(),
                         ids=lambda value: getattr(value, "remedy", value))
def test_each_fix_as_code_makes_the_change_it_claims(cell, fix):
    torch.manual_seed(1)
    model = Model(cell)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    namespace = run(fix, model, optimizer)
    optimizer = namespace["optimizer"]
    change = fix.change
    if "cell" in change:
        kinds = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn_relu": nn.RNN, "rnn_tanh": nn.RNN}
        assert isinstance(model.rnn, kinds[change["cell"]])
        assert {id(p) for g in optimizer.param_groups for p in g["params"]} == \
            {id(p) for p in model.parameters()}  # the new layer's parameters are trained
    if "init" in change:
        scheme, _, argument = change["init"].partition(":")
        hidden = model.rnn.hidden_size
        w_hh = model.rnn.weight_hh_l0.detach()
        if scheme == "chrono":
            assert forget_bias(model).min() >= -1e-6
            assert forget_bias(model).max() <= math.log(float(argument) - 1) + 1e-6
        elif scheme == "forget_bias":
            torch.testing.assert_close(forget_bias(model), torch.full((hidden,), 1.0))
        elif scheme == "orthogonal":
            for block in w_hh.chunk(w_hh.shape[0] // hidden):
                torch.testing.assert_close(block @ block.T, torch.eye(hidden), atol=1e-5,
                                           rtol=0)
        elif scheme == "identity":
            torch.testing.assert_close(w_hh, torch.eye(hidden))
        elif scheme == "spectral":
            for block in w_hh.chunk(w_hh.shape[0] // hidden):
                radius = torch.linalg.eigvals(block.double()).abs().max().item()
                assert radius == pytest.approx(float(argument), rel=1e-5)
    if "clip" in change:
        method, _, threshold = change["clip"].partition(":")
        norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()])
        assert method == "norm" and norm <= float(threshold) * (1 + 1e-5)
    if "lr" in change:
        assert optimizer.param_groups[0]["lr"] == pytest.approx(float(change["lr"]))
    if "optim.weight_decay" in change:
        assert optimizer.param_groups[0]["weight_decay"] == float(change["optim.weight_decay"])
    if "guard" in change:  # a finite step goes on; the rate is halved from now on
        assert optimizer.param_groups[0]["lr"] == pytest.approx(0.5e-2)
    if "bptt.window" in change:  # the windows' gradients were taken and the step made
        moved = any(not torch.equal(before[n], p) for n, p in model.named_parameters())
        assert moved and isinstance(namespace["state"], torch.Tensor | tuple)
        assert not namespace["state"][0].requires_grad if isinstance(
            namespace["state"], tuple) else not namespace["state"].requires_grad


def test_the_guard_code_skips_a_step_whose_gradient_is_not_finite():
    fix = next(fix for _, fix in every_fix() if "guard" in fix.change)
    model = Model("rnn_tanh")
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2)
    model.head.weight.grad = torch.full_like(model.head.weight, math.nan)
    code = "stepped = False\nfor _ in range(1):\n" + textwrap.indent(
        fix.code + "\nstepped = True", "    ")
    namespace = {"rnnscope": rnnscope, "torch": torch, "model": model, "optimizer": optimizer}
    exec(compile(code, "<guard>", "exec"), namespace)  # noqa: S102
    assert namespace["stepped"] is False and model.head.weight.grad is None


def test_every_fix_has_code_and_the_diagnosis_prints_it():
    assert all(fix.code.strip() for _, fix in every_fix())
    flow = rnnscope.GradientFlow(torch.logspace(0, -8, 50).flip(0).view(1, -1),
                                 ["rnn.l0"], [False])
    diagnosis = rnnscope.diagnose(flow, current={"cell": "rnn_tanh"})
    assert diagnosis.verdict == "vanishing"
    text = str(diagnosis)
    assert 'print(rnnscope.swap_cell(model, "lstm"))' in text
    assert 'rnnscope.init_(model, "chrono", t_max=50.0)' in text
    assert diagnosis.to_dict()["fixes"][0]["code"] == diagnosis.fixes[0].code
