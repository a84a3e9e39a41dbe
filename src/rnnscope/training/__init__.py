"""Layer 4, training: the experiment config (`config`), the loop that fires events
(`trainer`), held-out evaluation and the trained model's diagnosis (`evaluation`),
`rnnscope.train` wiring a trainer to its run directory (`run`), data-parallel training
under torchrun (`distributed`) and the progress line (`progress`)."""
