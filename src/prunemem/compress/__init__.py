"""Compression baselines evaluated in the same slot as masks: quantization and low-rank.

A baseline is a deterministic weight transform. Its artifact,
``data/transforms/{model}/{method}/{level}.json``, records the params and the sha256 of the
resulting weights; evaluation recomputes the transform and refuses to go on if the weights it
gets differ from the record. Storing the record rather than the transformed weights keeps a
12B model's baselines at a few kB each.
"""
