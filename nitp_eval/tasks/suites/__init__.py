"""lm-eval group files of the suites (generated from ../benchmarks.yaml)."""
