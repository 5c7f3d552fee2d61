"""Benchmarks run by `make bench`; each prints ratios measured against a reference in the same run."""
