"""What `record` keeps of one recorded training step: rows of hooked states.

A row is created where a state is first seen and grows a slot per step; each slot's
tensor gets a hook that adds dL/dstate to the slot in backward. Rows are ordered as the
model's modules are (`named_modules`), then by run, layer, direction and state, then
the marked rows in the order they were first marked.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor
from torch.nn.utils.rnn import PackedSequence

from rnnscope.flow.gradients import RowGradients


class Row:
    """One state followed through time: a slot per step, filled by its hook."""

    def __init__(self, name: str, reverse: bool, state: str, capture: Capture) -> None:
        self.name, self.reverse, self.state = name, reverse, state
        self.grads: list[Tensor | None] = []
        self.sizes: list[int] = []
        self.positions: list[Tensor | None] = []
        self._capture = capture

    def put(self, index: int, tensor: Tensor, positions: Tensor | None = None) -> None:
        """`tensor` is this row's state at step `index`; its gradient lands in that slot."""
        while len(self.grads) <= index:
            self.grads.append(None)
            self.sizes.append(0)
            self.positions.append(None)
        self.sizes[index] = tensor.numel() // tensor.shape[-1] if tensor.dim() else 1
        self.positions[index] = positions
        if tensor.requires_grad:
            tensor.register_hook(lambda grad: self._store(index, grad))

    def append(self, tensor: Tensor) -> None:
        self.put(len(self.grads), tensor)

    def _store(self, index: int, grad: Tensor) -> None:
        grad = grad.detach()
        previous = self.grads[index]
        # Several backward passes through one forward add up, as parameter gradients do.
        self.grads[index] = grad if previous is None else previous + grad
        self._capture.reached()

    def gradients(self) -> RowGradients:
        return RowGradients(self.name, self.reverse, self.state, self.grads, self.sizes,
                            self.positions)


class Capture:
    """The rows of one recorded training step."""

    def __init__(self, step: int, on_backward: Callable[[], None], per_sample: bool) -> None:
        self.step = step  # the training step it records
        self.per_sample = per_sample
        self.complete = False  # True once backward has reached any state
        self.inputs: dict[str, object] = {}  # the first input of each fused module
        self._rows: dict[tuple, Row] = {}
        self._runs: dict[str, int] = {}  # separate runs of each fused module so far
        self._returned: dict[str, tuple[str, int, tuple[Tensor, ...]]] = {}
        self._marks: dict[str, int] = {}
        self._on_backward = on_backward

    def reached(self) -> None:
        self.complete = True
        self._on_backward()

    def row(self, key: tuple, name: str, reverse: bool = False, state: str = "h") -> Row:
        if key not in self._rows:
            self._rows[key] = Row(name, reverse, state, self)
        return self._rows[key]

    def rows(self) -> list[RowGradients]:
        """The rows in the model's order; a row that backward never reached (a forward
        pass whose output no loss used) is left out, and `unreached` names it."""
        ordered = [self._rows[key] for key in sorted(self._rows)]
        return [row.gradients() for row in ordered if any(g is not None for g in row.grads)]

    def unreached(self) -> list[str]:
        return [row.name for row in self._rows.values()
                if not any(g is not None for g in row.grads)]

    # fused modules: a run of the unrolled engine per call

    def occurrence(self, name: str, hx, input) -> tuple[str, int]:
        """The run this call belongs to: the one whose state it starts from (a decoder
        stepping continues its row), else a new run, `name#2` for the second."""
        last = self._returned.get(name)
        if last is not None and _same_state(hx, last[2]):
            return last[0], last[1]
        run = self._runs[name] = self._runs.get(name, 0) + 1
        if run == 1:
            self.inputs[name] = input._replace(data=input.data.detach()) if isinstance(
                input, PackedSequence) else input.detach()
        return (name if run == 1 else f"{name}#{run}"), run

    def returned(self, name: str, run: tuple[str, int], final) -> None:
        """The state a call returned, to recognise the call that continues from it."""
        self._returned[name] = (*run, tuple(final) if isinstance(final, tuple) else (final,))

    def tap(self, run: tuple[str, int], rank: int, states: int, input):
        """The engine's tap for one call: each layer and direction appends its steps to
        its row; with `states=2` an LSTM's c_t to a row of its own too (`.../c`)."""
        prefix, number = run
        order = input.sorted_indices if isinstance(input, PackedSequence) else None

        def tap(layer: int, direction: int):
            base = (f"{prefix}.l{layer}" if prefix else f"l{layer}") + (
                "_reverse" if direction else "")
            rows = [self.row((rank, number, layer, direction, kind),
                             base if kind == 0 else f"{base}/c", direction == 1, "hc"[kind])
                    for kind in range(states)]
            offsets = [len(row.grads) for row in rows]  # the steps of earlier calls

            def observe(t: int, state) -> None:
                # Packed input runs longest first: live row i is the caller's order[i].
                where = None if order is None else order[: state[0].shape[0]]
                for row, offset, tensor in zip(rows, offsets, state, strict=False):
                    row.put(offset + t, tensor, where)

            return observe

        return tap

    # cells and marks: each call is the next step

    def cell_step(self, name: str, rank: int, tensor: Tensor, state: str) -> None:
        kind = 0 if state == "h" else 1
        self.row((rank, 1, 0, 0, kind), name if kind == 0 else f"{name}/c",
                 state=state).append(tensor)

    def mark_step(self, name: str, after: int, tensor: Tensor) -> None:
        """A marked state: rows after the modules' (`after`), in the order first marked."""
        order = self._marks.setdefault(name, len(self._marks))
        self.row((after, order, 0, 0, 0), name).append(tensor)


def _same_state(hx, returned: tuple[Tensor, ...]) -> bool:
    """Whether a call's initial state is the very state an earlier call returned."""
    if hx is None:
        return False
    given = tuple(hx) if isinstance(hx, (tuple, list)) else (hx,)
    return len(given) == len(returned) and all(a is b for a, b in zip(given, returned,
                                                                       strict=True))
