"""Reliability: bad input, interruption, determinism, security, unwritable output (issue 8)."""
