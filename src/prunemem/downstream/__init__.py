"""Downstream tasks through lm-evaluation-harness: ``run.run_downstream`` scores one variant, ``local``
builds the embedded default's own tasks (README, "Downstream tasks")."""
