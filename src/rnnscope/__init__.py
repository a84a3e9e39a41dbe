"""rnnscope: see how gradients flow back through time in recurrent networks.

Public API (names other code relies on; see DESIGN.md):

- `Recurrent`, `from_torch`: unrolled cells with torch's names and semantics.
- `init_`: named initialisation schemes for recurrent layers.
- `record`, `GradientFlow`: dL/dh_t for every recurrent layer and step.
"""

from rnnscope.cells import CELLS, Recurrent, find_recurrent, from_torch, run_unrolled
from rnnscope.init import INIT_SCHEMES, init_
from rnnscope.recording import GradientFlow, Recorder, record

__version__ = "0.1.0"

__all__ = [
    "CELLS",
    "GradientFlow",
    "Recorder",
    "INIT_SCHEMES",
    "Recurrent",
    "find_recurrent",
    "from_torch",
    "init_",
    "record",
    "run_unrolled",
    "__version__",
]
