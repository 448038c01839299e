"""Runs: config, the append-only run log, the driver loop, resume by replay, status."""
