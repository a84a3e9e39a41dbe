"""Layer 5, studies: a grid of runs from a study file (`spec`), the study directory and
its SQLite store (`store`), one attempt at one run (`attempt`: claim, train, finish), and
the backends that run them: local worker processes (`workers`, the default) and Ray tasks
(`ray_backend`, imported only for `--backend ray`)."""
