"""record(): see dL/dh_t for every recurrent state and time step, in the user's own backward.

    with rnnscope.record(model) as rec:
        loss = criterion(model(x), y)
        loss.backward()
    rec.flow.norms        # [rows, T]: batch-mean ||dL/dh_t|| per recorded state

What it follows inside the block, found anywhere in `model`:
- fused layers (torch's `nn.RNN`/`nn.LSTM`/`nn.GRU`, projections included, and rnnscope's
  `Recurrent`), a row per layer and direction. An `nn.LSTM` (and on a GPU an `nn.RNN`)
  runs through torch's own kernel with the recurrence exposed (`models/fused.py`), the
  others through the unrolled engine, all with their own parameters. A module called
  several times in one step (a decoder stepping) continues its row when a call starts
  from the state the previous call returned; any other call is a row of its own
  (`encoder#2`), so nothing is dropped;
- cells (`nn.RNNCell`, `nn.LSTMCell`, `nn.GRUCell`) run as they are: each call is the
  next step of that cell's row;
- states marked with `rnnscope.mark(h, name)` in hand-written loops.

Each state gets a tensor hook; in the backward pass the user already runs, autograd
hands it the total dL/dh_t (through the next step and the layer above alike); a fused
layer's dL/dh_t is the sum of three hooked gradients (`capture.FusedLayer`). Hooks only
keep references; norms are computed once, when `rec.flow` is read: no second backward,
no host sync per step. `every=N` counts training steps, i.e. backward passes: a step is
the forward calls since the previous backward. Forward passes under `torch.no_grad()`
run natively and are not counted. Outside the block the model is untouched.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from rnnscope.checks import choice, integer, text
from rnnscope.flow.capture import Capture
from rnnscope.flow.gradients import GradientFlow, assemble
from rnnscope.models import fused
from rnnscope.models.cells import CELLS
from rnnscope.models.recurrent import (
    cell_name,
    find_recurrent,
    run_unrolled,
    unsupported_reason,
)
from rnnscope.schedules import Every

_ACTIVE: list[Recorder] = []  # the recorders inside their `with` block, innermost last
_CELL_NAMES = {"LSTMCell": "lstm", "GRUCell": "gru"}
ENGINES = ("auto", "fused", "unrolled")


class Recorder:
    """The object `record` yields; see the module docstring."""

    def __init__(self, model: nn.Module, every: int = 1, per_sample: bool = False,
                 cell_state: bool = False, engine: str = "auto") -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
        self.model, self.per_sample, self.cell_state = model, per_sample, bool(cell_state)
        self.engine = choice("engine", engine, ENGINES)
        self.every = integer("every", every, 1)
        self.schedule = Every(every, first=True)
        self.layers = find_recurrent(model)
        self.cells = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.RNNCellBase)]
        self.rank = {name: index for index, (name, _) in enumerate(self.layers + self.cells)}
        self.calls = dict.fromkeys(self.rank, 0)  # forward calls with autograd on
        self.step = 0  # training steps seen: forward calls since the previous backward
        self.recorded_steps: list[int] = []  # the steps the schedule recorded
        self._backward_seen = True  # so the first forward opens step 1
        self._capture: Capture | None = None  # of the current step, when it is due
        self._finished: Capture | None = None  # the latest one that received gradient
        self._saved: list[tuple[nn.Module, object]] = []
        self._listeners: list[Callable[[int, GradientFlow], None]] = []
        self._openers: list[Callable[[int, bool], None]] = []
        self._reported: Capture | None = None
        self._warned: set[str] = set()
        self.followed: list[nn.Module] = []  # the fused layers the engine runs

    def __enter__(self) -> Recorder:
        if self._saved or self in _ACTIVE:
            raise RuntimeError("record: this recorder is already active; use a new record()")
        for name, module in self.layers:
            reason = unsupported_reason(module)
            if reason:
                self.warn(name, f"record: {name or 'the model'} ({type(module).__name__}) "
                                f"{reason}; it runs natively and is not recorded")
                continue
            self.followed.append(module)
            self._patch(module, self._fused(name, module, module.forward))
        for name, module in self.cells:
            self._patch(module, self._cell(name, module.forward))
        _ACTIVE.append(self)
        return self

    def on_step(self, listener: Callable[[int, bool], None]) -> None:
        """Call `listener(step, recorded)` as each training step opens (its first
        forward), before the model runs: `recorded` says whether the schedule records it."""
        self._openers.append(listener)

    def on_recorded(self, listener: Callable[[int, GradientFlow], None]) -> None:
        """Call `listener(step, flow)` once for every recorded training step, when it is
        over (the next step's first forward, or the end of the block)."""
        self._listeners.append(listener)

    def __exit__(self, *exc_info) -> bool:
        if exc_info[0] is None:
            self._report(self._latest_complete())
        for module, previous in reversed(self._saved):
            if previous is None:
                module.__dict__.pop("forward", None)
            else:
                module.forward = previous
        self._saved.clear()
        if self in _ACTIVE:
            _ACTIVE.remove(self)
        return False

    def _patch(self, module: nn.Module, forward) -> None:
        # An instance attribute shadows the class's forward for this module only. Under
        # torch.compile the recording runs eagerly (a graph break at the layer): its
        # bookkeeping and the listeners (which write files) are no graph to trace.
        self._saved.append((module, module.__dict__.get("forward")))
        module.forward = torch.compiler.disable(forward)

    # what each kind of state does on a forward call

    def _fused(self, name: str, module: nn.Module, native):
        cell = cell_name(module)
        states = 2 if self.cell_state and CELLS[cell].has_cell_state else 1
        # torch's own Elman and LSTM layers can be recorded through their fused kernels
        # (models/fused.py); a GRU, rnnscope's Recurrent, and an LSTM with projections
        # or packed input whose dL/dc_t is asked for run the unrolled engine.
        kernels = fused.runs_fused(module, cell) and (
            states == 1 or fused.follows_cells(module)) and (
            self.engine == "fused" or self.engine == "auto" and fused.faster(module, cell))
        directions = 2 if module.bidirectional else 1

        def forward(input, hx=None, **kwargs):
            state = kwargs.pop("state", hx)
            if not torch.is_grad_enabled():
                return native(input, state, **kwargs)  # nothing to record without a graph
            capture = self._open(name)
            if capture is None:
                return self._watched(native(input, state, **kwargs))
            run = capture.occurrence(name, state, input)
            if kernels and _has_graph(module, input, state) and not (
                    states == 2 and isinstance(input, PackedSequence)):
                output, final = fused.run(CELLS[cell], module, input, state,
                                          probe=capture.fused_tap(run, self.rank[name],
                                                                  directions, states))
            else:
                output, final = run_unrolled(module, input, state, tap=capture.tap(
                    run, self.rank[name], states, input))
            capture.returned(name, run, final)
            self._check_graph(name, final)
            return output, final

        return forward

    def _cell(self, name: str, native):
        def forward(input, hx=None):
            result = native(input, hx)
            if not torch.is_grad_enabled():
                return result
            capture = self._open(name)
            if capture is None:
                return self._watched(result)
            states = result if isinstance(result, tuple) else (result,)
            if not all(isinstance(s, Tensor) for s in states):
                self.warn(name, f"record: {name} returned {type(result).__name__}, not a "
                                f"state tensor; its steps are not recorded")
                return result
            capture.cell_step(name, self.rank[name], states[0], "h")
            if self.cell_state and len(states) == 2:
                capture.cell_step(name, self.rank[name], states[1], "c")
            self._check_graph(name, states)
            return result

        return forward

    @torch.compiler.disable
    def mark(self, h: Tensor, name: str) -> None:
        text("name", name, max_length=200)
        if not isinstance(h, Tensor) or not torch.is_grad_enabled():
            return
        if not h.requires_grad:
            self.warn(f"mark:{name}", f"record: mark({name!r}) got a state that does not "
                                      f"require grad; its steps are not recorded")
            return
        capture = self._open(f"mark:{name}")
        if capture is None:
            self._watched(h)
        else:
            capture.mark_step(name, len(self.rank), h)

    # training steps

    def _open(self, name: str) -> Capture | None:
        """Count a forward call; the capture of the current step when it is recorded."""
        if name in self.calls:
            self.calls[name] += 1
        if self._backward_seen:  # a backward pass ended the previous step
            self.step += 1
            self._backward_seen = False
            if self._capture is not None and self._capture.complete:
                self._finished = self._capture
                self._report(self._finished)
            due = self.schedule.due(self.step)
            self._capture = Capture(self.step, self._backward_done, self.per_sample) \
                if due else None
            if due:
                self.recorded_steps.append(self.step)
            for listener in self._openers:
                listener(self.step, due)
        return self._capture

    def _backward_done(self) -> None:
        self._backward_seen = True

    def _watched(self, result):
        """A call of a step not recorded: one hook on its output tells when backward ran."""
        first = result[0] if isinstance(result, tuple) else result
        if isinstance(first, Tensor) and first.requires_grad:
            first.register_hook(lambda grad: self._backward_done())
        return result

    def _check_graph(self, name: str, states) -> None:
        flat = states if isinstance(states, (tuple, list)) else (states,)
        tensors = [s for s in flat if isinstance(s, Tensor)]
        if tensors and not any(s.requires_grad for s in tensors):
            self.warn(name, f"record: {name or 'the model'} ran with no gradient path (no "
                            f"parameter or input requires grad); its steps get no gradient")

    def warn(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, stacklevel=4)

    # results

    def _latest_complete(self) -> Capture | None:
        if self._capture is not None and self._capture.complete:
            return self._capture
        return self._finished

    @property
    def recorded(self) -> bool:
        """True once a recorded forward has been followed by its backward pass."""
        return self._latest_complete() is not None

    def _report(self, capture: Capture | None) -> None:
        if capture is None or capture is self._reported or not self._listeners:
            return
        self._reported = capture
        flow = self._assemble(capture)
        for listener in self._listeners:
            listener(capture.step, flow)

    @property
    def flow(self) -> GradientFlow:
        """The gradient flow of the latest recorded training step that received gradient."""
        capture = self._latest_complete()
        if capture is None:
            raise RuntimeError(
                "record: no gradient was recorded; call loss.backward() inside the "
                "`with record(model)` block, after a forward pass of the model (a model "
                "without torch's recurrent modules marks its states with rnnscope.mark)")
        return self._assemble(capture)

    def _assemble(self, capture: Capture) -> GradientFlow:
        unreached = capture.unreached()
        if unreached:
            self.warn(f"unreached:{','.join(unreached)}", f"record: backward never reached "
                      f"{', '.join(unreached)} (a forward pass whose output no loss used); "
                      f"left out of the flow")
        rows = capture.rows()
        if not rows:
            raise RuntimeError("record: backward reached no recorded state")
        return assemble(rows, self.per_sample)

    def cell(self) -> str | None:
        """The cell of the first recurrent layer or cell module followed ("lstm", "gru",
        "rnn_tanh", "rnn_relu"); None when only marked states are."""
        if self.followed:
            return cell_name(self.followed[0])
        for _, module in self.cells:
            return _CELL_NAMES.get(type(module).__name__) or (
                f"rnn_{getattr(module, 'nonlinearity', 'tanh')}")
        return None

    def input_of(self, name: str):
        """The input (detached) of the first recorded call of fused module `name` in the
        latest recorded step, for measurements along the same trajectory; None if none."""
        capture = self._latest_complete()
        return None if capture is None else capture.inputs.get(name)


def _has_graph(module: nn.Module, input, state) -> bool:
    """Whether a forward of `module` builds a graph: a parameter, the input or the initial
    state requires grad (else the unrolled engine runs, and the recorder warns)."""
    data = input.data if isinstance(input, PackedSequence) else input
    given = state if isinstance(state, (tuple, list)) else (state,)
    return any(p.requires_grad for p in module.parameters()) or any(
        isinstance(t, Tensor) and t.requires_grad for t in (data, *given))


def record(model: nn.Module, every: int = 1, per_sample: bool = False,
           cell_state: bool = False, engine: str = "auto") -> Recorder:
    """Context manager capturing dL/dh_t for every recurrent state of `model`.

    `every=N` records the first training step (forward calls up to a backward pass) and
    then every Nth (`schedules.every(N, first=True)`); on the others every layer runs
    torch's fused kernels, so it can stay on for a whole training run.
    `per_sample=True` also keeps per-sample norms (`flow.per_sample`); `cell_state=True`
    adds a row of dL/dc_t for every LSTM layer and LSTMCell, the path its memory takes.
    `engine` runs torch's nn.RNN and nn.LSTM layers while recorded: "fused" through
    torch's own kernels with the recurrence exposed (`models/fused.py`), "unrolled" step by
    step, "auto" (default) the faster of the two there (`fused.faster`). Both give the same
    flow; a GRU, rnnscope's `Recurrent`, and with `cell_state=True` an LSTM with
    projections or packed input run unrolled.
    """
    return Recorder(model, every=every, per_sample=per_sample, cell_state=cell_state,
                    engine=engine)


def mark(h: Tensor, name: str) -> Tensor:
    """Mark `h` as the next step of row `name`, for hand-written recurrent code.

    Inside a `record` block its dL/dh is captured with the rest; outside one it returns
    `h` untouched at the cost of one check. Returns `h`, so it can wrap an expression:
    `h = rnnscope.mark(torch.tanh(x @ W + h @ U), "elman")`.
    """
    if _ACTIVE:
        _ACTIVE[-1].mark(h, name)
    return h
