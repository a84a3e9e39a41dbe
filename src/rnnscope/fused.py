"""One LSTM layer over a whole sequence as a single autograd node, for recording.

The unrolled engine (`cells.run_unrolled`) builds a graph of a dozen small nodes a
time step, and recording hooks every h_t. Autograd then computes dL/dW_hh one step
at a time (T small matmuls) and calls T hooks. `LSTMSequence` does the same
arithmetic with the backward pass written out:

    forward   for t in 1..T: gates_t = gi_t + h_{t-1} W_hh^T  (one addmm a step)
    backward  for t in T..1: dgates_t from dh_t, dc_t       (element-wise)
                             dh_{t-1} += dgates_t W_hh       (one matmul a step)
              dW_hh = sum_t dgates_t^T h_{t-1}              (one matmul, all steps)

and hands the total dL/dh_t of every step (what the hooks would have seen) to
`on_grad` as one [T, B, H] tensor. Measured in BENCHMARKS.md; gradients equal
autograd's through the unrolled step to float64 round-off (tests/test_fused.py).

Not differentiable twice (`create_graph=True` raises); the unrolled engine stays
the path for that, for packed sequences and for the other cells.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

GradSink = Callable[[Tensor], None]  # receives dL/dh_t for t = 0..T-1, [T, B, H]


class LSTMSequence(torch.autograd.Function):
    """(gi [T, B, 4H], h0, c0 [B, H], W_hh [4H, H], on_grad) -> (h_1..h_T, h_T, c_T).

    gi is the input projection W_ih x_t + b_ih + b_hh; gate order i, f, g, o (torch's).
    """

    @staticmethod
    def forward(ctx, gi: Tensor, h0: Tensor, c0: Tensor, weight_hh: Tensor,
                on_grad: GradSink | None):
        steps, batch, gates = gi.shape
        hidden = gates // 4
        w_hh_t = weight_hh.t()
        # Preallocated: every step writes into its slice, nothing is stacked afterwards.
        h = gi.new_empty(steps + 1, batch, hidden)
        c = gi.new_empty(steps + 1, batch, hidden)
        act = gi.new_empty(steps, batch, gates)  # sigmoid(i, f), tanh(g), sigmoid(o)
        tanh_c = gi.new_empty(steps, batch, hidden)
        h[0], c[0] = h0, c0
        for t in range(steps):
            a = act[t]
            torch.addmm(gi[t], h[t], w_hh_t, out=a)
            input_forget, g, o = a[:, : 2 * hidden], a[:, 2 * hidden: 3 * hidden], \
                a[:, 3 * hidden:]
            torch.sigmoid(input_forget, out=input_forget)
            torch.tanh(g, out=g)
            torch.sigmoid(o, out=o)
            torch.mul(a[:, hidden: 2 * hidden], c[t], out=c[t + 1])
            c[t + 1].addcmul_(a[:, :hidden], g)
            torch.tanh(c[t + 1], out=tanh_c[t])
            torch.mul(o, tanh_c[t], out=h[t + 1])
        ctx.save_for_backward(h, c, act, tanh_c, weight_hh)
        ctx.on_grad = on_grad
        # Outputs are views of the saved buffers; they are never written after this.
        return h[1:], h[steps], c[steps]

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: Tensor | None, grad_h: Tensor | None,
                 grad_c: Tensor | None):
        h, c, act, tanh_c, weight_hh = ctx.saved_tensors
        steps, batch, gates = act.shape
        hidden = gates // 4
        # dh[t] collects dL/dh_t: the output's gradient, then the recurrent part.
        dh = act.new_zeros(steps, batch, hidden) if grad_output is None else \
            grad_output.clone(memory_format=torch.contiguous_format)
        if grad_h is not None:
            dh[steps - 1] += grad_h
        dc = grad_c.clone() if grad_c is not None else act.new_zeros(batch, hidden)
        dgates = act.new_empty(steps, batch, gates)
        dh0 = None
        for t in range(steps - 1, -1, -1):
            a, d, tc = act[t], dgates[t], tanh_c[t]
            i, f, g, o = (a[:, k * hidden: (k + 1) * hidden] for k in range(4))
            di, df, dg, do = (d[:, k * hidden: (k + 1) * hidden] for k in range(4))
            # h = o tanh(c):  do = dh tanh(c) o (1 - o),  dc += dh o (1 - tanh(c)^2)
            torch.mul(dh[t], tc, out=do)
            do.mul_(o - o * o)
            dc.addcmul_(dh[t] * o, 1 - tc * tc)
            # c = f c_prev + i g
            torch.mul(dc, g, out=di)
            di.mul_(i - i * i)
            torch.mul(dc, c[t], out=df)
            df.mul_(f - f * f)
            torch.mul(dc, i, out=dg)
            dg.mul_(1 - g * g)
            dc = dc * f
            if t > 0:
                dh[t - 1].addmm_(d, weight_hh)
            elif ctx.needs_input_grad[1]:
                dh0 = d @ weight_hh
        dweight_hh = None
        if ctx.needs_input_grad[3]:
            dweight_hh = dgates.reshape(-1, gates).t() @ h[:-1].reshape(-1, hidden)
        if ctx.on_grad is not None:
            ctx.on_grad(dh)
        return (dgates if ctx.needs_input_grad[0] else None, dh0,
                dc if ctx.needs_input_grad[2] else None, dweight_hh, None)


def lstm_sequence(gi: Tensor, h0: Tensor, c0: Tensor, weight_hh: Tensor, *,
                  reverse: bool = False,
                  on_grad: GradSink | None = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """The whole scan of one LSTM layer and direction: (outputs [T, B, H], (h_T, c_T)).

    `reverse` runs from the last step to the first (the backward direction of a
    bidirectional layer); outputs and the gradients given to `on_grad` are in the
    sequence's own order either way.
    """
    if not reverse:
        output, h_n, c_n = LSTMSequence.apply(gi, h0, c0, weight_hh, on_grad)
        return output, (h_n, c_n)
    sink = None if on_grad is None else (lambda grads: on_grad(grads.flip(0)))
    output, h_n, c_n = LSTMSequence.apply(gi.flip(0), h0, c0, weight_hh, sink)
    return output.flip(0), (h_n, c_n)
