"""Spatial cond stages (Sec. 3.3, "concat"): a condition with the image's layout, brought to the latent size
and concatenated with z_t.

==========================  ============================================================================
:class:`SpatialRescaler`    the paper's semantic-map / low-resolution encoder (CompVis ``SpatialRescaler``):
                            ``n_stages`` bilinear halvings, then an optional 1×1 convolution to
                            ``out_channels``. For f = 4 two halvings bring a 64² one-hot map to the 16² latent.
==========================  ============================================================================
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SpatialRescaler"]


class SpatialRescaler(nn.Module):
    """Resize a spatial condition by ``multiplier ** n_stages`` (``method`` interpolation), then map its
    channels with a 1×1 convolution when ``out_channels`` is given (learned with the LDM).

    Args:
        n_stages: how many times to rescale by ``multiplier`` (log2 f for a map at image size and f = 2^k).
        in_channels: channels of the condition (number of classes for a one-hot map, 3 for an image).
        out_channels: channels after the 1×1 convolution; ``None`` keeps ``in_channels`` (no parameters).
        method: ``"bilinear"``, ``"nearest"``, ``"bicubic"``, ``"area"``.
        multiplier: scale per stage (0.5 halves).
    """

    METHODS = ("nearest", "bilinear", "bicubic", "area")

    def __init__(self, n_stages: int = 2, in_channels: int = 3, out_channels: int | None = None,
                 method: str = "bilinear", multiplier: float = 0.5, bias: bool = False):
        super().__init__()
        if n_stages < 0:
            raise ValueError(f"n_stages must be >= 0, got {n_stages}")
        if method not in self.METHODS:
            raise ValueError(f"unknown method {method!r}; use one of {self.METHODS}")
        if in_channels < 1 or (out_channels is not None and out_channels < 1):
            raise ValueError(f"channels must be positive, got in_channels={in_channels}, out_channels={out_channels}")
        self.n_stages, self.method, self.multiplier = n_stages, method, multiplier
        self.in_channels = in_channels
        self.out_channels = in_channels if out_channels is None else out_channels
        self.channel_mapper = None if out_channels is None else nn.Conv2d(in_channels, out_channels, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"SpatialRescaler expects (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        x = x.float()
        for _ in range(self.n_stages):
            kw = {"align_corners": False} if self.method in ("bilinear", "bicubic") else {}
            x = F.interpolate(x, scale_factor=self.multiplier, mode=self.method, **kw)
        return x if self.channel_mapper is None else self.channel_mapper(x)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Alias of ``forward`` (CompVis's name)."""
        return self(x)
