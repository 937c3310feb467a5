"""lm-eval task files: offline."""
