"""Balanced COPA prompts: the same as lm-eval's SuperGLUE COPA task (same fields and labels)."""

from lm_eval.tasks.super_glue.copa.utils import doc_to_choice, doc_to_target, doc_to_text

__all__ = ["doc_to_choice", "doc_to_target", "doc_to_text"]
