"""Layer 5, studies: a grid of runs from a study file (`spec`), the study directory and
its SQLite store (`store`), and the local worker processes that run it (`workers`)."""
