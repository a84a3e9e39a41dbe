"""Figures of training: loss and metric curves, gradient norms and clipping, and the
Lyapunov spectrum of the trained model. Each takes the lines of metrics.jsonl (or the
summary's numbers) as plain data."""

from __future__ import annotations

import math

from rnnscope.figures.canvas import log_if_positive, plot_series, plt


def curves_figure(train: list[dict], evals: list[dict], *, baseline: float | None = None,
                  threshold: float | None = None, metric_name: str = "metric"):
    """Training and held-out loss (left), held-out metric against the task's chance
    level and its solved-below threshold (right)."""
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6), dpi=100)
    plot_series(left, train, "loss", label="training loss", linewidth=1, alpha=0.8)
    plot_series(left, evals, "loss", label="held-out loss", marker="o", markersize=3)
    left.set_title("loss")
    plot_series(right, evals, "metric", label=f"held-out {metric_name}", marker="o", markersize=3)
    if baseline is not None and math.isfinite(baseline):
        right.axhline(baseline, color="grey", linestyle="--", label=f"chance {baseline:.3g}")
    if threshold is not None and math.isfinite(threshold):
        right.axhline(threshold, color="tab:green", linestyle=":",
                      label=f"solved below {threshold:.3g}")
    right.set_title(metric_name)
    for ax in (left, right):
        log_if_positive(ax)
        ax.set_xlabel("training step")
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    figure.tight_layout()
    return figure


def clipping_figure(train: list[dict]):
    """Gradient norm before and after clipping (log scale), the clipped steps and the
    guard's skipped or rolled-back steps as marks, and the running clip rate."""
    figure, ax = plt.subplots(figsize=(10, 3.4), dpi=100)
    plot_series(ax, train, "grad_norm", label="norm before clipping", linewidth=1)
    plot_series(ax, train, "grad_norm_clipped", label="norm after clipping", linewidth=1)
    clipped = [line for line in train if line.get("clipped")]
    marks = [(clipped, "clipped", "|", "tab:red")]
    marks += [([line for line in train if line.get("guard") == action], action, "x", "black")
              for action in ("skip", "rollback")]
    for lines, label, marker, colour in marks:
        if lines:
            # y in axes fraction: the marks sit along the bottom edge
            ax.plot([line["step"] for line in lines], [0.03] * len(lines), marker,
                    color=colour, markersize=8, label=f"{label} ({len(lines)})",
                    transform=ax.get_xaxis_transform())
    log_if_positive(ax)
    ax.set_xlabel("training step")
    ax.set_ylabel("global gradient norm")
    rate = ax.twinx()
    plot_series(rate, train, "clip_rate", color="tab:purple", linewidth=1, linestyle="--")
    rate.set_ylim(0, 1.05)
    rate.set_ylabel("clip rate so far", color="tab:purple")
    ax.set_title("gradient norm and clipping")
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="upper right")
    figure.tight_layout()
    return figure


def lyapunov_figure(exponents: list[float | None]):
    """The largest Lyapunov exponents of the trained model (per step, natural log):
    below 0 the dynamics contract and gradients vanish, above 0 they expand."""
    values = [math.nan if value is None else float(value) for value in exponents]
    figure, ax = plt.subplots(figsize=(7, 3.2), dpi=100)
    colours = ["tab:red" if value > 0 else "tab:blue" for value in values]
    ax.bar(range(1, len(values) + 1), values, color=colours)
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xlabel("exponent index (largest first)")
    ax.set_ylabel("lambda per step")
    top = values[0] if values else math.nan
    ax.set_title(f"Lyapunov spectrum: lambda_1 = {top:.3g} "
                 f"({'expanding' if top > 0 else 'contracting'})")
    ax.grid(True, axis="y", alpha=0.3)
    figure.tight_layout()
    return figure
