"""Finding and loading the Hugging Face tokenizer saved beside a model (one place for every task)."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import ModelLoadError
from .runtime import first_line

__all__ = ["TOKENIZER_FILES", "has_tokenizer", "load_tokenizer", "user_turn_prefix"]

#: Files whose presence in a directory marks it as holding a Hugging Face tokenizer.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json",
                   "spiece.model", "sentencepiece.bpe.model", "vocab.txt")


def has_tokenizer(directory: str | os.PathLike) -> bool:
    directory = Path(directory)
    return directory.is_dir() and any((directory / name).is_file() for name in TOKENIZER_FILES)


def load_tokenizer(directory: str | os.PathLike, *, hint: str = "give its directory (--tokenizer DIR)"):
    """The tokenizer saved in DIRECTORY; ModelLoadError (with HINT) when there is none or it is broken."""
    directory = Path(directory)
    if not has_tokenizer(directory):
        raise ModelLoadError(f"no tokenizer found in {directory}; {hint}")
    try:
        from transformers import AutoTokenizer
    except ImportError as exc:  # pragma: no cover - transformers comes with the hf extra
        raise ModelLoadError("loading a tokenizer needs the 'transformers' package: pip install 'onnxdepth[hf]'") \
            from exc
    try:
        return AutoTokenizer.from_pretrained(str(directory))
    except Exception as exc:  # noqa: BLE001 - transformers raises any type for a broken tokenizer directory
        fallback = _fast_tokenizer(directory)
        if fallback is None:
            raise ModelLoadError(f"cannot load tokenizer from {directory}: {first_line(exc)}") from exc
        return fallback


def _fast_tokenizer(directory: Path):
    """The tokenizer.json in DIRECTORY as a plain fast tokenizer with the special tokens its config names, when
    the config asks for a class this transformers lacks (transformers 5 writes `TokenizersBackend`, as the
    ONNX Runtime GenAI builder's folders have it); None when there is no usable tokenizer.json."""
    import json

    from transformers import PreTrainedTokenizerFast

    if not (directory / "tokenizer.json").is_file():
        return None
    try:
        config = json.loads((directory / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        config = {}
    special = {k: config[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token")
               if isinstance(config.get(k), str)}
    try:
        return PreTrainedTokenizerFast(tokenizer_file=str(directory / "tokenizer.json"),
                                       model_max_length=config.get("model_max_length", int(1e30)), **special)
    except Exception:  # noqa: BLE001 - a broken tokenizer.json: the caller reports the original error
        return None


def user_turn_prefix(tokenizer) -> list[int] | None:
    """The token ids a chat begins with up to where the first user message's text goes (the system turn, if the
    template writes a default one, and the user turn's header), read off the tokenizer's own chat template; None
    when it has no template. Sampling from a model after these ids makes it write a user message and then, an
    instruct model, the assistant's answer: chat-shaped text without any data."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    sentinel = "\u241fONNXDEPTH\u241f"  # a message text no template writes by itself
    try:
        text = tokenizer.apply_chat_template([{"role": "user", "content": sentinel}], tokenize=False)
    except Exception:  # noqa: BLE001 - a template can raise anything (jinja errors, raise_exception calls)
        return None
    if not isinstance(text, str) or sentinel not in text:
        return None
    ids = tokenizer(text[:text.index(sentinel)], add_special_tokens=False)["input_ids"]
    return list(ids) or None
