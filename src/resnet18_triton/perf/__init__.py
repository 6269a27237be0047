"""Load tests (perf_analyzer), side-by-side benchmarks of engines and served paths, soaks."""
