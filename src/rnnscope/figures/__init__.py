"""Layer 3, the figures: plain data in (lists and dicts as a run directory holds them),
matplotlib figures out: the gradient flow (`flow`: profile, heat map, slices), training
(`training`: curves, clipping, Lyapunov spectrum) and a study's grid (`grid`), drawn on
one headless canvas (`canvas`). TensorBoard images and the HTML report share them."""
