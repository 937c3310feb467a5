"""lm-eval task files: lcbench."""
