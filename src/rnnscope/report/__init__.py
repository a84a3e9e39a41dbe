"""Figures and reports; they read recorded data, never the live training loop."""
