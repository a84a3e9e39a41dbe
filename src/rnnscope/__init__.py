"""rnnscope: see how gradients flow back through time in recurrent networks.

Public API (names other code relies on; see DESIGN.md):

- `Recurrent`, `from_torch`: unrolled cells with torch's names and semantics.
- `init_`: named initialisation schemes for recurrent layers.
- `record`, `GradientFlow`: dL/dh_t for every recurrent layer and step; `mark` for
  states of hand-written loops.
- `diagnose` -> `Diagnosis`: verdict, reach, rate, evidence and ranked fixes.
- `lyapunov`: the largest Lyapunov exponents of a recurrent layer along a trajectory.
- `clip_grad` -> `ClipResult`: gradient clipping by norm, value, per parameter, AutoClip, AGC.
- `train(ExperimentConfig)` -> `RunResult`: the trainer with every remedy and a run directory.
- `watch(model, out, every=100)`: the gradient flow over your own training loop, as a run
  directory; `swap_cell(model, cell)`: another cell in the model's recurrent layers.
"""

from rnnscope.flow.diagnosis import Context, Diagnosis, diagnose
from rnnscope.flow.dynamics import lyapunov
from rnnscope.flow.fixes import Fix
from rnnscope.flow.gradients import GradientFlow
from rnnscope.flow.recording import Recorder, mark, record
from rnnscope.models.cells import CELLS
from rnnscope.models.init import INIT_SCHEMES, init_
from rnnscope.models.recurrent import Recurrent, find_recurrent, from_torch, run_unrolled
from rnnscope.models.swap import swap_cell
from rnnscope.remedies.clipping import ClipResult, clip_grad
from rnnscope.training.config import ExperimentConfig
from rnnscope.training.run import RunResult, train
from rnnscope.training.watch import Watch, watch

__version__ = "0.1.0"


__all__ = [
    "CELLS",
    "ClipResult",
    "Context",
    "ExperimentConfig",
    "RunResult",
    "Diagnosis",
    "Fix",
    "GradientFlow",
    "Recorder",
    "INIT_SCHEMES",
    "Recurrent",
    "clip_grad",
    "diagnose",
    "find_recurrent",
    "from_torch",
    "init_",
    "lyapunov",
    "mark",
    "record",
    "run_unrolled",
    "swap_cell",
    "train",
    "watch",
    "Watch",
    "__version__",
]
