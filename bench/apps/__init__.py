"""Apps run by the benchmark's worker processes (one module per system)."""
