"""Load tests (perf_analyzer) and side-by-side benchmarks of engines and served paths."""
