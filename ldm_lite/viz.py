"""Figures for the notebooks: image grids, boxes, segmentation maps, process strips.

Every function takes tensors in the course's convention -- images float in [-1, 1], (B, C, H, W) --
and returns a matplotlib Figure (or draws on a given Axes), so the tests can call them headless.
"""

from __future__ import annotations

import math
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch


def check_finite_images(images: torch.Tensor) -> None:
    """Refuse images with NaN / inf: converted to uint8 they would silently become black (or white) pixels."""
    bad = ~torch.isfinite(images)
    if bool(bad.any()):
        n_nan = int(torch.isnan(images).sum())
        per_image = bad.flatten(1).any(1) if images.dim() == 4 else bad.any()[None]
        which = torch.nonzero(per_image).flatten()[:5].tolist()
        raise ValueError(
            f"cannot draw or save images with NaN / inf: {int(bad.sum())} of {images.numel()} values are not finite "
            f"({n_nan} NaN) in image(s) {which}{' ...' if int(per_image.sum()) > 5 else ''} of {len(per_image)}; "
            "they would come out black. Find where they arise (a diverged model, too large guidance) instead of "
            "saving them, or replace them deliberately with torch.nan_to_num(images)"
        )


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) or (C, H, W) in [-1, 1] -> uint8 (B, H, W, 3) (grey is repeated to RGB).

    Values outside [-1, 1] are clipped; NaN / inf raise a ``ValueError`` (:func:`check_finite_images`), so no
    grid, figure or PNG is made from them."""
    x = images.detach().float().cpu()
    if x.dim() == 3:
        x = x[None]
    if x.dim() != 4:
        raise ValueError(f"expected images of shape (B, C, H, W) or (C, H, W), got {tuple(images.shape)}")
    check_finite_images(x)
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    x = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def make_grid(images: torch.Tensor, nrow: int | None = None, pad: int = 2, pad_value: int = 255) -> np.ndarray:
    """Tile (B, C, H, W) images into one uint8 (H', W', 3) array, ``nrow`` images per row."""
    arr = to_uint8(images)
    B, H, W, _ = arr.shape
    nrow = nrow or math.ceil(math.sqrt(B))
    rows = math.ceil(B / nrow)
    grid = np.full((rows * (H + pad) + pad, nrow * (W + pad) + pad, 3), pad_value, dtype=np.uint8)
    for i in range(B):
        r, c = divmod(i, nrow)
        grid[pad + r * (H + pad): pad + r * (H + pad) + H, pad + c * (W + pad): pad + c * (W + pad) + W] = arr[i]
    return grid


def show_grid(images: torch.Tensor, nrow: int | None = None, title: str | None = None, ax=None, scale: float = 1.0):
    """Show a grid of images; returns the Figure."""
    grid = make_grid(images, nrow)
    if ax is None:
        h, w = grid.shape[:2]
        fig, ax = plt.subplots(figsize=(scale * max(2.0, w / 80), scale * max(2.0, h / 80)))
    else:
        fig = ax.figure
    ax.imshow(grid, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def show_images(images: torch.Tensor, titles: Sequence[str] | None = None, ncols: int = 8, size: float = 1.6,
                fontsize: int = 7, suptitle: str | None = None):
    """Images in a grid of subplots with a (wrapped) title under each: for captions or metrics."""
    arr = to_uint8(images)
    n = len(arr)
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows * (1.45 if titles else 1.0)),
                             squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i < n:
            ax.imshow(arr[i], interpolation="nearest")
            if titles is not None:
                ax.set_title(_wrap(titles[i], 26), fontsize=fontsize)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def _wrap(text: str, width: int) -> str:
    words, lines, line = text.split(), [], ""
    for w in words:
        if line and len(line) + 1 + len(w) > width:
            lines.append(line)
            line = w
        else:
            line = f"{line} {w}".strip()
    lines.append(line)
    return "\n".join(lines[:5])


PALETTE = np.array(
    [[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48], [145, 30, 180],
     [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212], [0, 128, 128], [220, 190, 255]],
    dtype=np.uint8,
)


def colorize_segmentation(seg: torch.Tensor) -> np.ndarray:
    """(H, W) integer class map -> uint8 (H, W, 3) with a fixed palette (0 = background = black)."""
    s = seg.detach().cpu().numpy().astype(np.int64)
    return PALETTE[s % len(PALETTE)]


def draw_boxes(ax, boxes: torch.Tensor, labels: Sequence[str] | None = None, color: str = "white", lw: float = 1.2):
    """Draw (N, 4) pixel boxes (x0, y0, x1, y1) on an Axes showing an image, with optional labels."""
    for k, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        if x1 <= x0 or y1 <= y0:
            continue  # padding row
        ax.add_patch(plt.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor=color, lw=lw))
        if labels is not None and k < len(labels):
            ax.text(x0 - 0.5, y0 - 1.0, labels[k], color=color, fontsize=6, va="bottom",
                    bbox=dict(facecolor="black", alpha=0.5, pad=0.5, lw=0))


def show_process(frames: Sequence[torch.Tensor], labels: Sequence[str], rows: int | None = None, size: float = 1.4):
    """A strip of snapshots (e.g. x_t for several t): each frame (B, C, H, W); one row per batch item."""
    arrs = [to_uint8(f) for f in frames]
    B = arrs[0].shape[0] if rows is None else min(rows, arrs[0].shape[0])
    fig, axes = plt.subplots(B, len(arrs), figsize=(size * len(arrs), size * B), squeeze=False)
    for j, a in enumerate(arrs):
        for i in range(B):
            axes[i, j].imshow(a[i], interpolation="nearest")
            axes[i, j].set_axis_off()
        axes[0, j].set_title(labels[j], fontsize=8)
    fig.tight_layout()
    return fig
