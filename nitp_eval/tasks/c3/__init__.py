"""lm-eval task files: c3."""
