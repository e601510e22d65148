"""Benchmarks (issue 8): `python -m bench.run [--quick] [names...]`; see BENCHMARKS.md."""
