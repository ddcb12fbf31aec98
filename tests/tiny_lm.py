"""A tiny Llama export with a word-level tokenizer beside it, built once per test session.

The same 3-layer model as test_transformer.py / test_importance.py (vocab 128, random weights); the
tokenizer (ids < 30) is trained on SENTENCES, and TEXT (in-vocabulary) is a perplexity text file.
Needs torch, transformers, optimum and tokenizers; callers skip without them.
"""

from __future__ import annotations

from pathlib import Path

SENTENCES = [
    "the cat sat on the mat and looked at the dog",
    "a dog ran in the park with a red ball",
    "the sun is warm and the sky is blue today",
    "we read a book about a small cat in the park",
]
TEXT = "\n".join(SENTENCES * 6) + "\n"
VOCAB = 128


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(SENTENCES, trainers.WordLevelTrainer(special_tokens=["[UNK]", "<s>"]))
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", bos_token="<s>")


def tiny_llama_lm(tmp_path_factory) -> tuple[Path, Path]:
    """(model.onnx with tokenizer beside it, text file), exported on the first call of the session."""
    from onnxdepth.export.hf import export_hf
    from tiny_hf import save_tiny_llama

    root = tmp_path_factory.getbasetemp() / "tiny_llama_lm"
    model, text = root / "tg" / "model.onnx", root / "text.txt"
    if model.is_file() and text.is_file():
        return model, text
    root.mkdir(exist_ok=True)
    llama_dir = save_tiny_llama(root / "llama", seed=0, vocab=VOCAB, hidden=64, layers=3, heads=4, kv_heads=2,
                                inter=128, tie_word_embeddings=True, initializer_range=0.2, norm_noise=0.1)
    path = export_hf(llama_dir, root / "tg", task="text-generation")
    _tokenizer().save_pretrained(str(path.parent))
    text.write_text(TEXT)
    return path, text
