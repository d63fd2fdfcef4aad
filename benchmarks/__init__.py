"""The benchmark harness: `bash benchmarks/run.sh [--quick]`, or `python -m benchmarks` (docs/benchmarks.md)."""
