"""Layer 2, the gradient flow through time: `record` (dL/dh_t for every recurrent layer
and step), truncated BPTT (`bptt`), pure probes of one training step (`probes`, no I/O),
the recurrence as a dynamical system (`dynamics`: step Jacobians, Lyapunov exponents),
and `diagnose` with the ranked `fixes`."""
