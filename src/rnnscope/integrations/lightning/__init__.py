"""Lightning 2.x: a gradient-flow callback, and truncated BPTT under manual optimisation.

    trainer = lightning.Trainer(callbacks=[GradientFlowCallback(every=100)])

`GradientFlowCallback` records dL/dh_t for every recurrent layer of the
LightningModule (torch's `nn.RNN`/`nn.LSTM`/`nn.GRU` and rnnscope's `Recurrent`)
on a schedule of training batches, diagnoses it and logs verdict, reach and rate
to the trainer's loggers; a non-finite gradient stops training.

`truncated_bptt_step` (and the `TruncatedBPTT` mixin around it) brings back
Lightning 1.x's `truncated_bptt_steps`, removed in 2.0: the batch is cut into
windows along time, the hidden state is carried and detached between windows,
each window is backpropagated with `manual_backward`, and the optimiser steps
after every window (as 1.x did) or once per batch, with gradient clipping done
where automatic optimisation does it (after AMP unscaling).

Needs Lightning 2.x: pip install 'rnnscope[lightning]'. `import rnnscope` never
imports this module or Lightning.
"""

from __future__ import annotations

try:
    import lightning
except ImportError as error:
    raise ImportError(
        "rnnscope.integrations.lightning needs Lightning 2.x (the `lightning` package): "
        "pip install 'rnnscope[lightning]'"
    ) from error

if int(lightning.__version__.split(".")[0]) < 2:
    raise ImportError(
        f"rnnscope.integrations.lightning needs Lightning 2.x, found {lightning.__version__}: "
        "pip install 'rnnscope[lightning]'"
    )

from rnnscope.integrations.lightning.callback import (  # noqa: E402
    GradientFlowCallback,
    flow_metrics,
    rescaled_flow,
)
from rnnscope.integrations.lightning.tbptt import (  # noqa: E402
    BPTTWindow,
    TBPTTResult,
    TruncatedBPTT,
    split_batch,
    truncated_bptt_step,
)

__all__ = [
    "BPTTWindow",
    "GradientFlowCallback",
    "TBPTTResult",
    "TruncatedBPTT",
    "flow_metrics",
    "rescaled_flow",
    "split_batch",
    "truncated_bptt_step",
]
