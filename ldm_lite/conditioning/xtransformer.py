"""The text / layout encoder of the paper's released LDMs: a transformer trained from scratch with the LDM.

The CompVis text-to-image model (``txt2img-f8-large``, "LDM-KL-8-G" of the paper) and the layout-to-image model
(``layout2img-openimages256``) condition on a ``BERTEmbedder``: token ids -> token embedding + learned absolute
position embedding -> ``n_layer`` pre-norm transformer blocks -> a final LayerNorm, one vector per token. The
blocks are those of ``x_transformers`` 0.x (Phil Wang), as vendored in ``ldm/modules/x_transformer.py``::

    x = token_emb(ids) + pos_emb.emb(arange(L))                       (B, L, D)
    for each layer:                                                   2 * n_layer entries, alternating
        attention    x = x + to_out(softmax(q k^T / sqrt(dim_head)) v),  q, k, v = to_q/k/v(LayerNorm(x))
        feed-forward x = x + net(LayerNorm(x)),  net = Linear(D, 4D) -> GELU -> Linear(4D, D)
    z = norm(x)                                                       (B, L, D)

``heads = 8`` heads of width ``dim_head = 64`` (the library's defaults, which the released models keep: the
attention is 512 wide whatever ``D`` is); ``to_q / to_k / to_v`` have no bias. Every token attends to every
token, padding included -- the original passes no mask, and neither does the UNet's cross-attention, so the
context is returned without one. ``to_logits`` (a ``Linear(D, vocab_size)`` head for a language-model loss)
exists in the released checkpoints but is never used for conditioning; it is kept (``logits=True``) so the
weights load and save key for key.

Module and parameter names are those of the original, so ``cond_stage_model.*`` of a CompVis checkpoint loads
by name: ``transformer.token_emb``, ``transformer.pos_emb.emb``, ``transformer.attn_layers.layers.{i}.0``
(the LayerNorm of layer ``i``), ``.layers.{i}.1.to_q`` (attention) or ``.layers.{i}.1.net.0.0`` (feed-forward),
``transformer.norm``, ``transformer.to_logits``.

Input: captions, tokenized with BERT's uncased WordPiece vocabulary (:class:`WordPieceTokenizer`, padded to
``max_seq_len`` as the original's ``BertTokenizerFast("bert-base-uncased")`` does; a caption that does not fit
is refused instead of cut), or token ids ``(B, L)`` directly (``use_tokenizer=False``: the layout model's box
tokens, vocabulary 8192).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ldm_lite.conditioning.tokenizer import WordPieceTokenizer

__all__ = ["XTransformer", "XTransformerEmbedder"]


class _AbsolutePositionalEmbedding(nn.Module):
    """A learned vector per position (``emb``: ``nn.Embedding(max_seq_len, dim)``)."""

    def __init__(self, dim: int, max_seq_len: int):
        super().__init__()
        self.emb = nn.Embedding(max_seq_len, dim)
        nn.init.normal_(self.emb.weight, std=0.02)

    def forward(self, length: int) -> torch.Tensor:
        return self.emb(torch.arange(length, device=self.emb.weight.device))[None]  # (1, L, D)


class _Attention(nn.Module):
    """Multi-head self-attention, ``heads * dim_head`` wide inside, no bias on q, k, v."""

    def __init__(self, dim: int, heads: int, dim_head: int):
        super().__init__()
        inner = heads * dim_head
        self.heads, self.dim_head = heads, dim_head
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(dim, inner, bias=False)
        self.to_v = nn.Linear(dim, inner, bias=False)
        self.to_out = nn.Linear(inner, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = (f(x).reshape(b, n, self.heads, self.dim_head).transpose(1, 2)
                   for f in (self.to_q, self.to_k, self.to_v))
        h = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(dim_head)) v, no mask
        return self.to_out(h.transpose(1, 2).reshape(b, n, self.heads * self.dim_head))


class _FeedForward(nn.Module):
    """``Linear(D, mult D) -> GELU -> (dropout) -> Linear(mult D, D)``, keys ``net.0.0`` and ``net.2``."""

    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.net = nn.Sequential(nn.Sequential(nn.Linear(dim, dim * mult), nn.GELU()), nn.Dropout(0.0),
                                 nn.Linear(dim * mult, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class _Layers(nn.Module):
    """``layers``: ``2 * depth`` entries ``[LayerNorm, block]`` -- attention, feed-forward, attention, ..."""

    def __init__(self, dim: int, depth: int, heads: int, dim_head: int):
        super().__init__()
        self.layers = nn.ModuleList()
        for _ in range(depth):
            self.layers.append(nn.ModuleList([nn.LayerNorm(dim), _Attention(dim, heads, dim_head)]))
            self.layers.append(nn.ModuleList([nn.LayerNorm(dim), _FeedForward(dim)]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for norm, block in self.layers:  # pre-norm residual blocks
            x = x + block(norm(x))
        return x


class XTransformer(nn.Module):
    """Token ids ``(B, L)`` -> embeddings ``(B, L, dim)``: the x-transformers ``TransformerWrapper`` around an
    ``Encoder`` (module docstring), with its parameter names."""

    def __init__(self, num_tokens: int, max_seq_len: int, dim: int, depth: int, heads: int = 8, dim_head: int = 64,
                 logits: bool = True):
        super().__init__()
        for name, v in dict(num_tokens=num_tokens, max_seq_len=max_seq_len, dim=dim, depth=depth, heads=heads,
                            dim_head=dim_head).items():
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"XTransformer: {name} must be a positive int, got {v!r}")
        self.num_tokens, self.max_seq_len = num_tokens, max_seq_len
        self.token_emb = nn.Embedding(num_tokens, dim)
        nn.init.normal_(self.token_emb.weight, std=0.02)
        self.pos_emb = _AbsolutePositionalEmbedding(dim, max_seq_len)
        self.attn_layers = _Layers(dim, depth, heads, dim_head)
        self.norm = nn.LayerNorm(dim)
        self.to_logits = nn.Linear(dim, num_tokens) if logits else None

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.ndim != 2 or ids.shape[1] > self.max_seq_len:
            raise ValueError(f"token ids must have shape (B, L <= {self.max_seq_len}), got {tuple(ids.shape)}")
        x = self.token_emb(ids) + self.pos_emb(ids.shape[1])
        return self.norm(self.attn_layers(x))


class XTransformerEmbedder(nn.Module):
    """The CompVis ``BERTEmbedder`` (and ``TransformerEmbedder``): captions or token ids -> ``(B, L, n_embed)``.

    Args:
        n_embed: width ``D`` of the tokens (the UNet's ``context_dim``; 1280 for ``txt2img-f8-large``).
        n_layer: transformer blocks (32 for text, 16 for layouts).
        vocab_size: rows of the token embedding (BERT's 30522; 8192 box tokens for layouts).
        max_seq_len: positions (77 for text: every caption is padded to it; 92 for layouts).
        heads, dim_head: attention heads and their width (the released models: 8 x 64).
        use_tokenizer: captions are tokenized with BERT's WordPiece vocabulary; ``False``: the input is token ids.
        logits: keep the unused language-model head ``to_logits`` (present in the released checkpoints).

    Trained with the LDM (``cond_stage_trainable: true`` in the released configs). ``forward`` returns the
    context without a padding mask (every token, ``[PAD]`` included, is attended to, as in the original).
    """

    def __init__(self, n_embed: int, n_layer: int, vocab_size: int = 30522, max_seq_len: int = 77, heads: int = 8,
                 dim_head: int = 64, use_tokenizer: bool = True, logits: bool = True):
        super().__init__()
        self.n_embed, self.n_layer, self.vocab_size, self.max_seq_len = n_embed, n_layer, vocab_size, max_seq_len
        self.heads, self.dim_head, self.use_tokenizer, self.logits = heads, dim_head, bool(use_tokenizer), bool(logits)
        self.tokenizer = WordPieceTokenizer(max_length=max_seq_len) if use_tokenizer else None
        if self.tokenizer is not None and self.tokenizer.vocab_size != vocab_size:
            raise ValueError(f"use_tokenizer=True reads BERT's WordPiece vocabulary ({self.tokenizer.vocab_size} "
                             f"tokens) but vocab_size={vocab_size}; pass token ids with use_tokenizer=False")
        self.transformer = XTransformer(vocab_size, max_seq_len, n_embed, n_layer, heads, dim_head, logits=logits)

    @property
    def embed_dim(self) -> int:
        return self.n_embed

    def tokenize(self, y) -> torch.Tensor:
        """Captions (str or list of str) or token ids ``(B, L)`` -> token ids on this module's device."""
        dev = self.transformer.token_emb.weight.device
        if isinstance(y, str) or (isinstance(y, (list, tuple)) and y and all(isinstance(c, str) for c in y)):
            if self.tokenizer is None:
                raise ValueError("this encoder takes token ids (B, L) (use_tokenizer=False), not captions")
            ids, _ = self.tokenizer([y] if isinstance(y, str) else list(y))
        else:
            ids = torch.as_tensor(y)
            if ids.dtype.is_floating_point or ids.dtype == torch.bool:
                raise TypeError(f"token ids must be integers, got dtype {ids.dtype}")
            if ids.ndim == 1:
                ids = ids[None]
        ids = ids.to(dev).long()
        bad = (ids < 0) | (ids >= self.vocab_size)
        if bool(bad.any()):
            raise ValueError(f"token id {int(ids[bad][0])} is out of range 0..{self.vocab_size - 1}")
        return ids

    def forward(self, y) -> torch.Tensor:
        return self.transformer(self.tokenize(y))

    def encode(self, y) -> torch.Tensor:
        """Alias of ``forward`` (CompVis's name)."""
        return self(y)

    def config(self) -> dict:
        return dict(type="bert", n_embed=self.n_embed, n_layer=self.n_layer, vocab_size=self.vocab_size,
                    max_seq_len=self.max_seq_len, heads=self.heads, dim_head=self.dim_head,
                    use_tokenizer=self.use_tokenizer, logits=self.logits)

    def extra_repr(self) -> str:
        return (f"n_embed={self.n_embed}, n_layer={self.n_layer}, vocab_size={self.vocab_size}, "
                f"max_seq_len={self.max_seq_len}, heads={self.heads}x{self.dim_head}")
