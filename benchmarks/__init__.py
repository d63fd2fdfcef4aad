"""The benchmark harness (issue 10): `bash benchmarks/run.sh [--quick]`, or `python -m benchmarks`."""
