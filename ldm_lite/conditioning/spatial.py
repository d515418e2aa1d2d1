"""Spatial cond stages (Sec. 3.3, "concat"): a condition with the image's layout, brought to the latent size
and concatenated with z_t.

==========================  ============================================================================
:class:`SpatialRescaler`    the paper's semantic-map / low-resolution encoder (CompVis ``SpatialRescaler``):
                            ``n_stages`` bilinear halvings, then an optional 1×1 convolution to
                            ``out_channels``. For f = 4 two halvings bring a 64² one-hot map to the 16² latent.
:class:`SemanticEncoder`    label map -> one-hot -> SpatialRescaler with a 1×1 convolution (semantic synthesis).
:class:`InpaintConcat`      the masked image's latent + the hole mask at the latent size (inpainting).
==========================  ============================================================================

A low-resolution image needs no cond stage when its size is already the latent size (×4 super-resolution
with f = 4: the paper's LDM-SR concatenates the 64² input with the 64² latent of a 256² image).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ldm_lite.data.spatial import one_hot_segmentation

__all__ = ["InpaintConcat", "OneHot", "SemanticEncoder", "SpatialRescaler"]


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

    def config(self) -> dict:
        return dict(type="spatial-rescaler", n_stages=self.n_stages, in_channels=self.in_channels,
                    out_channels=None if self.channel_mapper is None else self.out_channels, method=self.method,
                    multiplier=self.multiplier, bias=self.channel_mapper is not None and self.channel_mapper.bias is not None)


class OneHot(nn.Module):
    """Integer label maps (B, H, W) -> one-hot float maps (B, num_classes, H, W) (no parameters)."""

    def __init__(self, num_classes: int):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 (background + a class), got {num_classes}")
        self.num_classes = num_classes

    def forward(self, seg: torch.Tensor) -> torch.Tensor:
        return one_hot_segmentation(seg, self.num_classes)


class SemanticEncoder(nn.Module):
    """The paper's semantic-synthesis cond stage (Sec. 4.3.2): a label map (B, H, W) -> one-hot ->
    :class:`SpatialRescaler` (``n_stages`` bilinear halvings to the latent size + a learned 1×1 convolution to
    ``out_channels``) -> concatenated with z_t."""

    def __init__(self, num_classes: int, n_stages: int, out_channels: int):
        super().__init__()
        self.onehot = OneHot(num_classes)
        self.rescaler = SpatialRescaler(n_stages, num_classes, out_channels)
        self.num_classes, self.n_stages, self.out_channels = num_classes, n_stages, out_channels

    def forward(self, seg: torch.Tensor) -> torch.Tensor:
        return self.rescaler(self.onehot(seg))

    def config(self) -> dict:
        return dict(type="semantic", num_classes=self.num_classes, n_stages=self.n_stages,
                    out_channels=self.out_channels)


class InpaintConcat(nn.Module):
    """The paper's inpainting condition (Sec. 4.5): the *latent* of the masked image and the hole mask at the
    latent size, stacked on the channel axis -> (B, c + 1, h, w); no parameters.

    Raw condition: a dict with ``hole_mask`` (B, 1, H, W; 1 = missing) and ``masked_latent`` (B, c, h, w, the
    scaled ``E(image · keep)``). ``LatentDiffusion`` encodes a ``masked_image`` field into ``masked_latent``
    (``encode_fields``), so the raw batch may carry images or the latent cache may carry latents. A latent
    position counts as a hole if any of its f × f pixels is (max-pooling): the model is never told a pixel is
    known when it is not.

    ``mask_resize="nearest"`` and ``mask_values=(-1.0, 1.0)`` give the released CompVis inpainting model's condition
    instead (``scripts/inpaint.py``: the mask as ``2 * hole - 1``, brought to the latent size by nearest-neighbour
    interpolation); ``mask_values`` are the channel's values at known and at missing positions.
    """

    encode_fields = {"masked_image": "masked_latent"}
    MASK_RESIZE = ("max", "nearest")

    def __init__(self, f: int, mask_resize: str = "max", mask_values: tuple[float, float] = (0.0, 1.0)):
        super().__init__()
        if f < 1:
            raise ValueError(f"f must be a positive int, got {f}")
        if mask_resize not in self.MASK_RESIZE:
            raise ValueError(f"mask_resize must be one of {self.MASK_RESIZE}, got {mask_resize!r}")
        self.f, self.mask_resize = f, mask_resize
        self.mask_values = (float(mask_values[0]), float(mask_values[1]))

    def forward(self, y: dict) -> torch.Tensor:
        if not isinstance(y, dict) or "hole_mask" not in y or "masked_latent" not in y:
            got = sorted(y) if isinstance(y, dict) else type(y).__name__
            raise ValueError(f"the inpainting condition is a dict with 'hole_mask' (B, 1, H, W) and 'masked_image' "
                             f"(or its latent 'masked_latent'); got {got}")
        z, hole = y["masked_latent"].float(), y["hole_mask"].float()
        if hole.ndim == 3:
            hole = hole[:, None]
        if hole.ndim != 4 or hole.shape[1] != 1 or hole.shape[0] != z.shape[0]:
            raise ValueError(f"hole_mask must be (B={z.shape[0]}, 1, H, W); got {tuple(hole.shape)}")
        if hole.shape[-2:] != z.shape[-2:]:
            if hole.shape[-2] != z.shape[-2] * self.f or hole.shape[-1] != z.shape[-1] * self.f:
                raise ValueError(f"hole_mask is {tuple(hole.shape[-2:])} but the image is "
                                 f"{(z.shape[-2] * self.f, z.shape[-1] * self.f)}; give a mask of the image's size")
            hole = F.max_pool2d(hole, self.f) if self.mask_resize == "max" else F.interpolate(hole, size=z.shape[-2:])
        known, missing = self.mask_values
        if (known, missing) != (0.0, 1.0):
            hole = known + (missing - known) * hole
        return torch.cat([z, hole], dim=1)

    def config(self) -> dict:
        extra = {} if self.mask_resize == "max" else {"mask_resize": self.mask_resize}
        if self.mask_values != (0.0, 1.0):
            extra["mask_values"] = list(self.mask_values)
        return dict(type="inpaint", f=self.f, **extra)
