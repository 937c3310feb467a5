"""lm-eval task files: xiezhi."""
