"""Benchmarks behind `radar-bench` (each prints a table of ratios and can write JSON)."""
