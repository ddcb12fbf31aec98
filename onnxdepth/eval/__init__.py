"""Task evaluation of (pruned) ONNX models."""

from .perplexity import TEXT_JOINS, evaluate_perplexity, load_text_tokens, perplexity

__all__ = ["TEXT_JOINS", "evaluate_perplexity", "load_text_tokens", "perplexity"]
