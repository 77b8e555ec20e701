"""Evaluation helpers: BEIR-layout datasets (beir.py) and retrieval metrics (metrics.py)."""
