"""Layer 3, the run directory: its format written and read in one place (`directory`:
config, checkpoints, summary, the metrics stream), and the listeners that write it while
a run trains (`metrics`: metrics.jsonl, `tensorboard`: the TensorBoard events)."""
