"""Benchmarks: orchwf beside pgqueuer and procrastinate (``python -m bench all``)."""
