"""Layer 1, the models: recurrent cells as step functions (`cells`), the unrolled engine
that runs them with a module's own weights (`unrolled`), torch's fused kernels run layer
by layer with the recurrence exposed (`fused`), rnnscope's `Recurrent` and what
counts as a recurrent layer (`recurrent`), named initialisers (`init`) and the sequence
model the trainer builds (`sequence`)."""
