"""Benchmarks: each prints a table and appends it, with its command, machine and versions, to RESULTS.md."""
