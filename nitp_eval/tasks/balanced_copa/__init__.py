"""lm-eval task files: balanced_copa."""
