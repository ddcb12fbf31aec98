"""Task evaluation of (pruned) ONNX models."""

from .detection import average_precision, decode_ultralytics, fidelity_map, letterbox, reference_images
from .embedding import embedding_similarity, sentence_embeddings, similarity_metrics
from .multiple_choice import evaluate_multiple_choice, load_questions
from .ocr import evaluate_ocr, ocr_detection, ocr_recognition
from .perplexity import TEXT_JOINS, evaluate_perplexity, load_text_tokens, perplexity

__all__ = ["TEXT_JOINS", "average_precision", "decode_ultralytics", "embedding_similarity",
           "evaluate_multiple_choice", "evaluate_ocr", "evaluate_perplexity", "fidelity_map", "letterbox",
           "load_questions", "load_text_tokens", "ocr_detection", "ocr_recognition", "perplexity",
           "reference_images", "sentence_embeddings", "similarity_metrics"]
