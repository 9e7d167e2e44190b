"""Monitor: what a run measures and shows: exact metrics, records, load balance, profiling, benchmarks."""
