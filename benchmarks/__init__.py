"""Benchmark protocols that write result JSON under benchmarks/results/."""
