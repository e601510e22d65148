"""Evaluation: metrics on gathered predictions (metrics.py) and PNG plots (plots.py)."""
