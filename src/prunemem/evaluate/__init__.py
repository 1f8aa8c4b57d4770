"""Evaluation: exact extraction, perplexity, and the statistics reported with them."""
