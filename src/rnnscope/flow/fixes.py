"""The remedies of the seeds, ranked for a verdict: what to change, why, and how.

`rank_fixes(verdict, ...)` returns `Fix`es most effective first. Each carries the exact
command-line change that applies it to rnnscope's trainer (DESIGN.md's CLI flags; the
diagnosis leaves out a fix already in force) and, as `code`, the Python that applies the
same remedy to the user's own model and training loop (`model`, `optimizer` and, for
clipping, the place between `loss.backward()` and `optimizer.step()`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from rnnscope.models.cells import CELLS
from rnnscope.models.init import parse_init_spec


@dataclass(frozen=True)
class Fix:
    """One remedy: what to change, why, and the flags that change it."""

    remedy: str
    why: str
    change: dict[str, str]  # CLI flag (without --) -> value, e.g. {"cell": "lstm"}

    @property
    def cli(self) -> str:
        return " ".join(f"--{flag}={value}" for flag, value in self.change.items())

    @property
    def code(self) -> str:
        """Python applying the same change to your own model and loop (see the module)."""
        return "\n".join(line for flag, value in self.change.items()
                         for line in _CODE[flag](value))


def _swap(cell: str) -> list[str]:
    return [f'print(rnnscope.swap_cell(model, "{cell}"))  # fresh {cell} layers, same sizes',
            "optimizer = type(optimizer)(model.parameters(), **optimizer.defaults)  # new "
            "parameters"]


def _init(spec: str) -> list[str]:
    scheme, arguments = parse_init_spec(spec)
    given = "".join(f", {key}={value!r}" for key, value in arguments.items())
    return [f'rnnscope.init_(model, "{scheme}"{given})']


def _clip(spec: str) -> list[str]:
    method, _, threshold = spec.partition(":")
    keyword = {"norm": "max_norm", "value": "clip_value", "param_norm": "max_norm",
               "agc": "clipping", "autoclip": "percentile"}.get(method, "max_norm")
    if method == "autoclip":  # its history of norms lives across steps
        return ["history = rnnscope.remedies.clipping.NormHistory()  # once, before the loop",
                f'rnnscope.clip_grad(model.parameters(), "autoclip", percentile={threshold}, '
                "history=history)  # after backward(), before step()"]
    return [f'rnnscope.clip_grad(model.parameters(), "{method}", {keyword}={threshold})'
            "  # after loss.backward(), before optimizer.step()"]


def _optimizer_setting(key: str):
    def lines(value: str) -> list[str]:
        try:
            assignment = f'group["{key}"] = {float(value)!r}'
        except ValueError:  # "<a tenth of the current>": the rate in force is not known
            factor = value.strip("<>").split("x")[0] if "x the current" in value else None
            assignment = (f'group["{key}"] *= {float(factor)!r}' if factor
                          else f'group["{key}"] /= 10')
        return ["for group in optimizer.param_groups:  # from the next step on",
                f"    {assignment}"]
    return lines


def _guard(policy: str) -> list[str]:
    return ["# in the loop, after loss.backward(): skip a step whose gradient is not finite",
            "if not all(p.grad.isfinite().all() for p in model.parameters()",
            "           if p.grad is not None):",
            "    optimizer.zero_grad()  # the update would spread NaN into every weight",
            "    continue",
            "for group in optimizer.param_groups:  # and take smaller steps from now on",
            '    group["lr"] *= 0.5']


def _window(window: str) -> list[str]:
    if window == "none":
        return ["# full BPTT: one backward pass through the whole sequence, no cut",
                "output, state = model(inputs)",
                "criterion(output, targets).backward()",
                "optimizer.step()"]
    return [f"# truncated BPTT: windows of {window} steps, the state carried and detached",
            "state = None",
            f"for start in range(0, inputs.shape[0], {window}):",
            f"    output, state = model(inputs[start:start + {window}], state)",
            f"    criterion(output, targets[start:start + {window}]).backward()",
            "    state = rnnscope.flow.bptt.detach_state(state)",
            "optimizer.step()"]


_CODE = {"cell": _swap, "init": _init, "clip": _clip, "lr": _optimizer_setting("lr"),
         "optim.weight_decay": _optimizer_setting("weight_decay"), "guard": _guard,
         "bptt.window": _window}


def rank_fixes(verdict: str, *, cell: str | None, steps: int, reach: int, growth: float,
               grad_norm: float | None = None, lr: float | None = None,
               init: str | None = None, explosive: bool = False,
               update_ratio: float | None = None, window: int | None = None) -> list[Fix]:
    """The seeds' remedies that address `verdict`, most effective first.

    `steps` is the horizon the gradient must span; `init` the scheme in force (e.g.
    "chrono:200"); `explosive` says the dynamics themselves grow (top Lyapunov exponent
    > 0), which for a non-finite verdict puts the cause (the weights) before the guard;
    `update_ratio` (||dtheta|| / ||theta||) sizes a stalled run's larger rate; given
    (above 1) for an exploding one, its cause is the rate, which keeps the smaller rate
    first for an Elman RNN too (a gradient that grows back in time in an Elman RNN gets a
    gated cell first). `window`: the truncated-BPTT window in force.
    """
    smaller_lr = {"lr": f"{lr / 10:g}"} if lr else {"lr": "<a tenth of the current>"}
    if verdict == "nonfinite":
        return _nonfinite_fixes(smaller_lr, explosive)
    if verdict == "exploding":
        # Ranked by the diagnosis suite (benchmarks/doctor.py). An update larger than the
        # weights: the rate that brings it to the first updates of runs that learn. An
        # Elman RNN whose gradient grows back in time (SGD, spectral radius 3): an LSTM
        # with chrono init healed two of three; a tenth of the rate with clipping,
        # clipping alone, and spectral radius 1 (with or without clipping) none.
        by_update = update_ratio is not None and update_ratio > 1.0
        if by_update:
            rate = Fix("smaller learning rate, clipped", _sized_down(lr, update_ratio),
                       {**_rate_for(lr, update_ratio), "clip": "norm:1.0"})
        else:
            rate = Fix("smaller learning rate, clipped", f"the gradient grows {growth:.3g}x "
                       "back in time; a tenth of the rate with clipping by norm 1 keeps each "
                       "step inside the weights and stops them growing further",
                       {**smaller_lr, "clip": "norm:1.0"})
        fixes = [rate, *_exploding_fixes(smaller_lr, cell, grad_norm, growth, steps)]
        if _elman(cell) and not by_update:
            fixes.insert(0, fixes.pop())  # the gated cell, last of _exploding_fixes
        return fixes
    if verdict == "vanishing":
        fixes = _vanishing_fixes(cell, steps, reach, init)
        if window is not None:  # truncated BPTT in force: no shorter window, full BPTT
            fixes = [f for f in fixes if "bptt.window" not in f.change]
            fixes.insert(1, _truncated_fixes(steps, window)[0])
        return fixes
    if verdict == "truncated":
        return _truncated_fixes(steps, window)
    if verdict == "stalled":
        return _stalled_fixes(lr, update_ratio)
    return []


def _truncated_fixes(steps: int, window: int | None) -> list[Fix]:
    return [Fix("full BPTT", f"a gradient cut every {window} steps never spans the {steps} "
                "steps the task needs; backpropagate through the whole sequence",
                {"bptt.window": "none"}),
            Fix("a window as long as the dependency", f"windows of {steps} steps keep the "
                "memory bound of truncation but let the gradient span the dependency",
                {"bptt.window": str(steps)})]


MOVING_UPDATE = 3e-2  # ||dtheta|| / ||theta|| of the first updates of runs that learn


def _stalled_fixes(lr: float | None, update_ratio: float | None) -> list[Fix]:
    """A larger rate, by the power of ten that brings updates up to `MOVING_UPDATE` of the
    weights' norm (at least 10x, at most 1e4x): an update's size grows in proportion to
    the rate, for SGD and Adam alike. The runs of the diagnosis suite that learn move
    their weights by 4e-2 to 1e-1 in their first updates (1e-3 to 1e-2 later, as the
    gradient's direction starts to vary); a stalled run's ratio stays at its first value,
    and in the suite only the rate that brought it to their first updates' size healed
    (a GRU at lr 1e-6 learnt at 1e-2, not at 1e-5 or 1e-3)."""
    factor = 10.0
    if update_ratio and update_ratio > 0:
        factor = 10.0 ** min(4, max(1, math.ceil(math.log10(MOVING_UPDATE / update_ratio))))
    rate = {"lr": f"{lr * factor:g}"} if lr else {"lr": f"<{factor:g}x the current>"}
    return [Fix("larger learning rate", f"each update moves the weights by "
                f"{update_ratio:.2g} of their norm; runs that learn move them by "
                f"{MOVING_UPDATE:g} and more at first"
                if update_ratio else "the updates are too small to move the weights", rate)]


FIRST_UPDATE = 1e-1  # the largest first update of the suite's runs that learn (4e-2 .. 1e-1)


def _rate_for(lr: float | None, update_ratio: float) -> dict[str, str]:
    """The rate whose updates move the weights by `FIRST_UPDATE` of their norm, for one whose
    largest moved them by `update_ratio` (> 1): an update's size is in proportion to the
    rate. In the diagnosis suite a tenth of the rate healed Adam at lr 0.3 (a GRU, first
    update 4.2x the weights) but at lr 1 (an LSTM, 5.2x) only in one of three runs."""
    if not math.isfinite(update_ratio):  # no size to scale by: a tenth
        return {"lr": f"{lr / 10:g}"} if lr else {"lr": "<a tenth of the current>"}
    if not lr:
        return {"lr": f"<{FIRST_UPDATE / update_ratio:.1g}x the current>"}
    return {"lr": f"{lr * FIRST_UPDATE / update_ratio:.1g}"}


def _sized_down(lr: float | None, update_ratio: float) -> str:
    if not math.isfinite(update_ratio):
        return ("an update moved the weights by an infinite multiple of their norm: a tenth "
                "of the rate, with clipping by norm 1, keeps each step inside the weights")
    return (f"each update moves the weights by {update_ratio:.2g}x their norm; runs that learn "
            f"move them by {FIRST_UPDATE:g} of it at most at first: a rate "
            f"{update_ratio / FIRST_UPDATE:.2g}x smaller, with clipping by norm 1, keeps each "
            "step inside the weights")


def _nonfinite_fixes(smaller_lr: dict[str, str], explosive: bool) -> list[Fix]:
    fixes = [
        Fix("NaN guard", "restore the last finite weights, halve the learning rate and go "
            "on, instead of spreading NaN into every weight", {"guard": "rollback"}),
        Fix("gradient clipping", "NaN usually follows an overflow that clipping by the "
            "global norm would have capped", {"clip": "norm:1.0"}),
        Fix("smaller learning rate", "a smaller step keeps weights out of the region "
            "where activations overflow", smaller_lr),
    ]
    if explosive:
        fixes.insert(0, Fix("smaller initial recurrent weights", "the state dynamics grow "
                            "(top Lyapunov exponent > 0) until activations overflow; "
                            "spectral radius 1 stops the growth", {"init": "spectral:1.0"}))
    return fixes


def _elman(cell: str | None) -> bool:
    """A cell with no gate to hold its state (rnn_tanh, rnn_relu)."""
    return cell in CELLS and not CELLS[cell].gated


def _exploding_fixes(smaller_lr: dict[str, str], cell: str | None, grad_norm: float | None,
                     growth: float, steps: int) -> list[Fix]:
    threshold = _clip_threshold(grad_norm, growth)
    fixes = [
        Fix("gradient clipping", f"rescale the update when the global gradient norm exceeds "
            f"{threshold:g} (the observed norm without the {growth:.3g}x growth through "
            "time); the direction is kept", {"clip": f"norm:{threshold:g}"}),
        Fix("smaller initial recurrent weights", "rescale W_hh to spectral radius 1, the "
            "edge between shrinking and growing", {"init": "spectral:1.0"}),
        Fix("smaller learning rate", "smaller steps keep W_hh from growing past the point "
            "where gradients explode", smaller_lr),
        Fix("L2 regularisation", "weight decay pulls the recurrent weights back towards "
            "small norms", {"optim.weight_decay": "1e-4"}),
    ]
    if _elman(cell):
        fixes.append(Fix("gated cell with chrono init", "an LSTM's gates bound the state and "
                         "its gradient, and chrono-initialised forget gates keep the cell "
                         f"for up to ~{steps} steps", {"cell": "lstm",
                                                        "init": f"chrono:{steps}"}))
    return fixes


def _vanishing_fixes(cell: str | None, steps: int, reach: int, init: str | None) -> list[Fix]:
    chrono = f"chrono:{steps}"
    fixes = []
    if cell in (None, "rnn_tanh", "rnn_relu", "gru"):
        fixes.append(Fix("gated cell with chrono init", "the LSTM cell state is additive and "
                         f"chrono-initialised forget gates keep it for up to ~{steps} steps",
                         {"cell": "lstm", "init": chrono}))
    if cell == "lstm":
        fixes.append(Fix("chrono init", f"forget-gate biases log U[1, {steps - 1}] make the "
                         f"cell remember over the {steps} steps the task spans",
                         {"init": chrono}))
        if not (init or "").startswith("chrono"):  # chrono's forget biases are already larger
            fixes.append(Fix("forget-gate bias 1", "forget gates start open (sigmoid(1) ~ "
                             "0.73) instead of half shut", {"init": "forget_bias:1.0"}))
    if cell in (None, "rnn_tanh"):
        fixes.append(Fix("ReLU units with identity init (IRNN)", "W_hh = I and ReLU pass the "
                         "gradient back unchanged while units are active",
                         {"cell": "rnn_relu", "init": "identity:1.0"}))
    if cell == "rnn_relu":
        fixes.append(Fix("identity init (IRNN)", "W_hh = I passes the gradient back "
                         "unchanged while units are active", {"init": "identity:1.0"}))
    fixes.append(Fix("orthogonal init", "an orthogonal W_hh preserves the gradient norm "
                     "through the linear part of every step", {"init": "orthogonal"}))
    if 0 < reach < steps:
        fixes.append(Fix("truncated BPTT (speed, not memory)", f"the gradient beyond {reach} "
                         "steps is already below 1e-3 of its peak, so windows of that length "
                         "cost less per step without losing gradient; it cannot teach "
                         "longer dependencies", {"bptt.window": str(reach)}))
    return fixes


def _clip_threshold(grad_norm: float | None, growth: float) -> float:
    """One significant digit of the gradient norm without its growth through time."""
    if not grad_norm or not math.isfinite(grad_norm) or not math.isfinite(growth):
        return 1.0
    # Capped at 1.0, the threshold of the classic long-range results (TASKS.md).
    estimate = min(max(grad_norm / max(growth, 1.0), 1e-2), 1.0)
    digits = 10 ** math.floor(math.log10(estimate))
    return round(estimate / digits) * digits
