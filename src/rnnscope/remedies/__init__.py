"""Layer 1, the remedies: gradient clipping (`clipping`), optimisers and learning-rate
schedules (`optim`), and the NaN/Inf guard (`guard`), which sees only a narrow interface
(snapshot and restore a state, scale the learning rate), never the trainer."""
