"""What `record` keeps of one recorded training step: rows of hooked states.

A row is created where a state is first seen and grows a slot per step; each slot's
tensor gets a hook that adds dL/dstate to the slot in backward. A layer run by the fused
engine (`models/fused.py`) adds a block of steps at once instead: three gradients (of
its output, its final state and its recurrence) from which the block's dL/dh_t is
assembled when the flow is read. Rows are ordered as the model's modules are
(`named_modules`), then by run, layer, direction and state, then the marked rows in the
order they were first marked.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence

from rnnscope.flow.gradients import RowGradients
from rnnscope.models import fused
from rnnscope.models.unrolled import Batch


class Row:
    """One state followed through time: a slot per step, filled by its hook, or blocks of
    steps filled by a fused layer."""

    def __init__(self, name: str, reverse: bool, state: str, capture: Capture) -> None:
        self.name, self.reverse, self.state = name, reverse, state
        self.grads: list[Tensor | None] = []
        self.sizes: list[int] = []
        self.positions: list[Tensor | None] = []
        # (first step, layer, direction); the row's state says h_t or c_t
        self.blocks: list[tuple[int, FusedLayer, int]] = []
        self._capture = capture

    def put(self, index: int, tensor: Tensor, positions: Tensor | None = None) -> None:
        """`tensor` is this row's state at step `index`; its gradient lands in that slot."""
        self._grow(index + 1)
        self.sizes[index] = tensor.numel() // tensor.shape[-1] if tensor.dim() else 1
        self.positions[index] = positions
        if tensor.requires_grad:
            tensor.register_hook(lambda grad: self._store(index, grad))

    def append(self, tensor: Tensor) -> None:
        self.put(len(self.grads), tensor)

    def put_block(self, layer: FusedLayer, direction: int) -> None:
        """The steps of one direction of a fused layer, after those the row has."""
        first = len(self.grads)
        self._grow(first + len(layer.active))
        for t, size in enumerate(layer.active):
            self.sizes[first + t] = size
            self.positions[first + t] = None if layer.order is None else layer.order[:size]
        self.blocks.append((first, layer, direction))

    def _grow(self, steps: int) -> None:
        while len(self.grads) < steps:
            self.grads.append(None)
            self.sizes.append(0)
            self.positions.append(None)

    def _store(self, index: int, grad: Tensor) -> None:
        grad = grad.detach()
        previous = self.grads[index]
        # Several backward passes through one forward add up, as parameter gradients do.
        self.grads[index] = grad if previous is None else previous + grad
        self._capture.reached()

    @property
    def reached(self) -> bool:
        return any(g is not None for g in self.grads) or any(
            layer.reached for _, layer, _ in self.blocks)

    def gradients(self) -> RowGradients:
        if len(self.blocks) == 1 and len(self.blocks[0][1].active) == len(self.grads):
            _, layer, direction = self.blocks[0]  # the whole row is one fused run
            grads, live = layer.caller_order(*layer.totals(direction, self.state))
        else:
            slots = list(self.grads)
            for first, layer, direction in self.blocks:
                if layer.reached:
                    totals, _ = layer.totals(direction, self.state)
                    for t, size in enumerate(layer.active):
                        slots[first + t] = totals[t, :size]
            grads, live = _padded(slots, self.sizes, self.positions)
        return RowGradients(self.name, self.reverse, self.state, grads, live)


class FusedLayer:
    """One layer of a fused run (`models/fused.py`, its `LayerProbe`): the gradients of
    its output, of its final state and through its recurrence, each summed over backward
    passes; dL/dh_t of each direction (and an LSTM's dL/dc_t) is assembled from them when
    the flow is read."""

    def __init__(self, capture: Capture, batch: Batch) -> None:
        self._capture = capture
        self.active = batch.active  # live rows per step, longest sequences first
        packed = batch.packed
        self.order = packed.sorted_indices if packed is not None else None
        self._unsorted = packed.unsorted_indices if packed is not None else None
        self._packed = packed is not None
        self._parts: dict[str, Tensor] = {}
        self._like: Tensor | None = None
        self._cells = None  # direction -> fused.Cells, for an LSTM's c rows
        self._totals: dict[int, tuple[Tensor, Tensor]] = {}

    @property
    def reached(self) -> bool:
        return bool(self._parts)

    def recurrent(self, grad: Tensor) -> None:
        self._add("recurrent", grad)

    def ran(self, output: Tensor, final: tuple[Tensor, ...], cells) -> None:
        # [D, B, P]: shape, dtype, device; detached, so that the probe holds no graph
        self._like, self._cells = final[0].detach(), cells
        parts = (("output", output), ("final", final[0]), ("final_c", final[-1]))
        for key, tensor in parts[: 3 if cells is not None else 2]:
            if tensor.requires_grad:
                tensor.register_hook(lambda grad, key=key: self._add(key, grad))

    def _add(self, key: str, grad: Tensor) -> None:
        grad = grad.detach()
        previous = self._parts.get(key)
        self._parts[key] = grad if previous is None else previous + grad
        self._capture.reached()

    def totals(self, direction: int, state: str = "h") -> tuple[Tensor, Tensor]:
        """dL/dh_t (`state` "h") or an LSTM's dL/dc_t ("c") of one direction, [T, B, P],
        and the live mask [T, B]; rows in the engine's order (packed: longest first).
        Where a row is not live the values mean nothing (the mask keeps them out)."""
        if direction not in self._totals:
            self._totals[direction] = self._hidden(direction)
        dh, live = self._totals[direction]
        if state == "h":
            return dh, live
        final = self._parts.get("final_c")
        final = final[direction] if final is not None else torch.zeros_like(dh[0])
        return fused.cell_gradients(self._cells(direction), dh, final,
                                    reverse=direction == 1), live

    def _hidden(self, direction: int) -> tuple[Tensor, Tensor]:
        steps, batch = len(self.active), self.active[0]
        width = self._like.shape[-1]
        live = torch.ones(steps, batch, dtype=torch.bool, device=self._like.device)
        if self._packed:
            sizes = torch.tensor(self.active, device=live.device).unsqueeze(1)
            live = torch.arange(batch, device=live.device) < sizes
        output, recurrent = (self._steps(key, direction, width, live)
                             for key in ("output", "recurrent"))
        final = self._parts.get("final")
        final = final[direction] if final is not None else self._like.new_zeros(batch, width)
        total = torch.empty_like(output)  # written once: out= sums, no clone
        if direction == 1:  # reverse: h_t feeds step t - 1; h_n is the state at t = 0
            torch.add(output[1:], recurrent[:-1], out=total[1:])
            torch.add(output[0], final, out=total[0])
        elif not self._packed:  # forward: h_t feeds step t + 1; h_n is h_T
            torch.add(output[:-1], recurrent[1:], out=total[:-1])
            torch.add(output[-1], final, out=total[-1])
        else:  # a row's h_n is its state at its own last step, where it stops being live
            continues = torch.zeros_like(live)
            continues[:-1] = live[1:]
            following = torch.zeros_like(recurrent)
            following[:-1] = recurrent[1:]
            torch.add(output, torch.where(continues.unsqueeze(-1), following, final),
                      out=total)
        return total, live

    def _steps(self, key: str, direction: int, width: int, live: Tensor) -> Tensor:
        """One direction's columns of a part as [T, B, P] (zeros when it never came)."""
        part = self._parts.get(key)
        if part is None:
            return self._like.new_zeros(*live.shape, width)
        part = part[..., direction * width:(direction + 1) * width]
        if not self._packed:
            return part
        # Packed data is step-major, longest first: the order of the live mask's True entries.
        padded = part.new_zeros(*live.shape, width)
        padded[live] = part
        return padded

    def caller_order(self, grads: Tensor, live: Tensor) -> tuple[Tensor, Tensor]:
        if self._unsorted is None:
            return grads, live
        index = self._unsorted.to(grads.device)
        return grads.index_select(1, index), live.index_select(1, index)


class Capture:
    """The rows of one recorded training step."""

    def __init__(self, step: int, on_backward: Callable[[], None], per_sample: bool) -> None:
        self.step = step  # the training step it records
        self.per_sample = per_sample
        self.complete = False  # True once backward has reached any state
        self.inputs: dict[str, object] = {}  # the first input of each fused module
        self._rows: dict[tuple, Row] = {}
        self._runs: dict[str, int] = {}  # separate runs of each fused module so far
        # Weak references: a state held here would hold its graph, and through the
        # fused engine's nodes (which hold this capture) a cycle the collector cannot see.
        self._returned: dict[str, tuple[str, int, tuple[weakref.ref, ...]]] = {}
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
        return [row.gradients() for row in ordered if row.reached]

    def unreached(self) -> list[str]:
        return [row.name for row in self._rows.values() if not row.reached]

    # fused modules: a run of an engine per call (unrolled: `tap`, fused: `fused_tap`)

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
        states = tuple(final) if isinstance(final, tuple) else (final,)
        self._returned[name] = (*run, tuple(weakref.ref(state) for state in states))

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

    def fused_tap(self, run: tuple[str, int], rank: int, directions: int, states: int):
        """The fused engine's probe for one call: each layer appends a block of steps to
        the row of each of its directions (and with `states=2` to its `.../c` row)."""
        prefix, number = run

        def probe(layer: int, batch: Batch) -> FusedLayer:
            observed = FusedLayer(self, batch)
            for direction in range(directions):
                base = (f"{prefix}.l{layer}" if prefix else f"l{layer}") + (
                    "_reverse" if direction else "")
                for kind in range(states):
                    self.row((rank, number, layer, direction, kind),
                             base if kind == 0 else f"{base}/c", direction == 1,
                             "hc"[kind]).put_block(observed, direction)
            return observed

        return probe

    # cells and marks: each call is the next step

    def cell_step(self, name: str, rank: int, tensor: Tensor, state: str) -> None:
        kind = 0 if state == "h" else 1
        self.row((rank, 1, 0, 0, kind), name if kind == 0 else f"{name}/c",
                 state=state).append(tensor)

    def mark_step(self, name: str, after: int, tensor: Tensor) -> None:
        """A marked state: rows after the modules' (`after`), in the order first marked."""
        order = self._marks.setdefault(name, len(self._marks))
        self.row((after, order, 0, 0, 0), name).append(tensor)


def _same_state(hx, returned: tuple[weakref.ref, ...]) -> bool:
    """Whether a call's initial state is the very state an earlier call returned."""
    if hx is None:
        return False
    given = tuple(hx) if isinstance(hx, (tuple, list)) else (hx,)
    return len(given) == len(returned) and all(a is b() for a, b in zip(given, returned,
                                                                         strict=True))


def _padded(grads: list[Tensor | None], sizes: list[int],
            positions: list[Tensor | None]) -> tuple[Tensor, Tensor]:
    """[T, B, H] gradients (zero where a step was never reached) and the live mask [T, B]
    of a row kept step by step, rows in the caller's batch order."""
    like = next((g for g in grads if g is not None), None)
    batch = max(sizes)
    if like is None:  # backward reached no step of this row: gradient zero everywhere
        like = torch.zeros(1, 1)
    device, dtype, width = like.device, like.dtype, like.shape[-1]
    steps = len(grads)
    if all(g is not None and p is None and s == batch for g, p, s in
           zip(grads, positions, sizes, strict=True)):  # every step, every row
        return (torch.stack(grads).reshape(steps, batch, width),
                torch.ones(steps, batch, dtype=torch.bool, device=device))
    padded = torch.zeros(steps, batch, width, dtype=dtype, device=device)
    live = torch.zeros(steps, batch, dtype=torch.bool, device=device)
    for t, (grad, size, where) in enumerate(zip(grads, sizes, positions, strict=True)):
        where = torch.arange(size, device=device) if where is None else where.to(device)
        live[t, where] = True
        if grad is not None:  # a step no loss depends on has gradient zero
            padded[t, where] = grad.reshape(size, width).to(dtype)
    return padded, live
