"""Evaluation: BEIR folders (beir.py), metrics (metrics.py), scoring a model (evaluate.py), evaluation
sets (pooled.py, longembed.py, limit.py), the generated-vs-real shift check (shift.py), `synth eval` (cli.py)."""
