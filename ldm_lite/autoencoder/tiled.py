"""Decode a latent too large for memory in overlapping tiles, blended (chapter 07, large canvases).

The decoder is convolutional, so a latent tile decodes to the matching image tile -- except near the tile's
edge, where the decoder sees zero padding instead of the neighbouring latents, and in the mid-block
self-attention, which in a full decode sees the whole latent. Overlapping tiles whose contributions fade
in over the overlap hide the first: every output pixel is a weighted mean of the tiles that cover it, with
weight 0 over the outer quarter of an overlap (where a tile saw padding) rising linearly to 1 in its
interior. For a *local* decoder (receptive field within that quarter) the result equals the full decode.
A real decoder is not local: its GroupNorms normalise with statistics of the whole input and its mid-block
attends over the whole latent, so a tile sees other statistics than the full image. Chapter 07 measures what
that costs on a 256 px super-resolved canvas (``ae_kl_f4_openmoji64_gan``, 16x16-latent tiles -- the
autoencoder's 64 px training size -- overlapping by 4): the tiled and the full decode of the same latent agree
to 26.8 dB PSNR, and against the 16 original emoji, paired emoji by emoji (99.17 % intervals, six differences
read together), tiling changes PSNR by -0.23 dB [-0.59, 0.13] (not resolved) and raises the feature distance
by 0.018 [0.003, 0.039] (resolved): a small cost, not a gain. (``benchmarks/README.md`` reports the opposite
for ``ae_kl_f4_shapes_fashion``, an autoencoder trained on 32 px crops, decoded at 64 px in 8x8-latent tiles:
a single measurement without an interval.) Memory is that of one tile.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["tile_starts", "tiled_decode"]


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering ``0..length`` with at least ``overlap`` shared."""
    if tile >= length:
        return [0]
    stride = tile - overlap
    starts = list(range(0, length - tile, stride))
    return [*starts, length - tile]


def _ramp(n: int, fade: int, at_start: bool, at_end: bool) -> torch.Tensor:
    """1-D weights: 1 inside; at an edge shared with another tile, 0 over the outer quarter of the overlap
    (pixels that saw the tile's zero padding) and a linear rise over the rest."""
    w = torch.ones(n)
    if fade > 0:
        drop = fade // 4
        ramp = ((torch.arange(fade, dtype=torch.float32) - drop + 0.5) / (fade - drop)).clamp(min=0)
        if at_start:
            w[:fade] = torch.minimum(w[:fade], ramp)
        if at_end:
            w[-fade:] = torch.minimum(w[-fade:], ramp.flip(0))
    return w


@torch.no_grad()
def tiled_decode(decode: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor, f: int, tile: int = 16,
                 overlap: int = 4) -> torch.Tensor:
    """``decode`` (latent -> image, factor ``f``) applied to ``z`` (B, c, h, w) in latent tiles of
    ``tile × tile`` that overlap by ``overlap`` latent pixels; returns (B, 3, h f, w f).

    ``tile`` must exceed ``overlap``; ``overlap`` of a quarter of the tile is a good default. A latent no
    larger than one tile is decoded in one call (identical to ``decode(z)``).
    """
    if z.ndim != 4:
        raise ValueError(f"z must be a latent batch (B, c, h, w), got shape {tuple(z.shape)}")
    if not (isinstance(tile, int) and isinstance(overlap, int)) or tile < 1 or not 0 <= overlap < tile:
        raise ValueError(f"need integers 0 <= overlap < tile, got tile={tile}, overlap={overlap}")
    b, _, h, w = z.shape
    if h <= tile and w <= tile:
        return decode(z)
    ys, xs = tile_starts(h, tile, overlap), tile_starts(w, tile, overlap)
    out = weight = None
    for y0 in ys:
        for x0 in xs:
            piece = decode(z[:, :, y0 : y0 + tile, x0 : x0 + tile])
            th, tw = piece.shape[-2:]
            if out is None:
                out = torch.zeros(b, piece.shape[1], h * f, w * f, dtype=piece.dtype, device=piece.device)
                weight = torch.zeros(1, 1, h * f, w * f, dtype=piece.dtype, device=piece.device)
            wy = _ramp(th, overlap * f, y0 > 0, y0 + tile < h)
            wx = _ramp(tw, overlap * f, x0 > 0, x0 + tile < w)
            wt = (wy[:, None] * wx[None, :]).to(piece)
            ys_, xs_ = slice(y0 * f, y0 * f + th), slice(x0 * f, x0 * f + tw)
            out[:, :, ys_, xs_] += piece * wt
            weight[:, :, ys_, xs_] += wt
    return out / weight
