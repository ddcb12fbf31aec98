"""Task evaluation of (pruned) ONNX models."""

from .detection import average_precision, decode_ultralytics, fidelity_map, letterbox, reference_images
from .perplexity import TEXT_JOINS, evaluate_perplexity, load_text_tokens, perplexity

__all__ = ["TEXT_JOINS", "average_precision", "decode_ultralytics", "evaluate_perplexity", "fidelity_map",
           "letterbox", "load_text_tokens", "perplexity", "reference_images"]
