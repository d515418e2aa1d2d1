"""Building blocks of the time-conditional UNet (paper Sec. 3.3, App. E).

The denoiser of a latent diffusion model is a "time-conditional UNet" ε_θ(z_t, t): a convolutional
encoder-decoder whose every residual block is told the diffusion step ``t``. This module holds the
pieces that know nothing about attention:

* :func:`timestep_embedding` -- the sinusoidal embedding of ``t`` (the Transformer's positional
  encoding, applied to the diffusion step),
* :class:`ResBlock` -- GroupNorm → SiLU → conv, plus the time embedding, → GroupNorm → SiLU → dropout
  → zero-initialised conv, plus a skip connection,
* :class:`Downsample` / :class:`Upsample` -- halve / double the spatial size,
* :class:`GroupNorm32` and :func:`normalization` -- GroupNorm with 32 groups, computed in float32,
* :class:`TimestepEmbedSequential` -- an ``nn.Sequential`` that hands the time embedding to the
  layers that want it and the cross-attention context to the layers that want that.

Names and layouts follow ``ldm/modules/diffusionmodules/openaimodel.py`` of the CompVis code, so the
parameter names of a CompVis checkpoint (``in_layers.0``, ``emb_layers.1``, ``op``, ...) are ours.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "timestep_embedding",
    "GroupNorm32",
    "normalization",
    "zero_module",
    "TimestepBlock",
    "TimestepEmbedSequential",
    "Downsample",
    "Upsample",
    "ResBlock",
]


# ----------------------------------------------------------------------------------------------
# Time embedding
# ----------------------------------------------------------------------------------------------
def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000) -> torch.Tensor:
    """Sinusoidal embedding of diffusion steps, ``[cos | sin]`` halves (LDM / openaimodel order).

    For ``half = dim // 2`` frequencies ``ω_i = max_period ** (-i / half)``, ``i = 0 … half-1``::

        emb[:, i]        = cos(t · ω_i)
        emb[:, half + i] = sin(t · ω_i)

    i.e. the cosines come first. This is the convention of the CompVis ``timestep_embedding`` and of
    diffusers' ``get_timestep_embedding(..., flip_sin_to_cos=True, downscale_freq_shift=0)`` -- the
    setting diffusers uses for Stable Diffusion, so weights trained with either code line up. (The
    original DDPM code uses ``[sin | cos]`` and ``ω_i = max_period ** (-i / (half - 1))``.)
    An odd ``dim`` gets one extra zero column at the end.

    Args:
        t: ``(B,)`` diffusion steps; integers or floats (fractional steps are fine).
        dim: embedding width (the UNet uses ``model_channels``).
        max_period: the longest wavelength, as in the Transformer's positional encoding.

    Returns:
        ``(B, dim)`` float32 tensor.
    """
    if t.ndim != 1:
        raise ValueError(f"timestep_embedding expects a 1-D tensor of shape (B,), got shape {tuple(t.shape)}")
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None, :]  # (B, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, 2·half)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


# ----------------------------------------------------------------------------------------------
# Normalisation and small helpers
# ----------------------------------------------------------------------------------------------
class GroupNorm32(nn.GroupNorm):
    """GroupNorm that computes in float32 and returns the input's dtype (safe under fp16/bf16).

    Raises ``ValueError`` (instead of PyTorch's bare assertion) when ``num_channels`` is not a
    multiple of ``num_groups``, naming both and the nearest valid channel counts.
    """

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True):
        if num_channels % num_groups != 0:
            lower = (num_channels // num_groups) * num_groups
            upper = lower + num_groups
            raise ValueError(
                f"GroupNorm with {num_groups} groups needs a channel count divisible by {num_groups}, "
                f"got {num_channels} channels; use e.g. {max(lower, num_groups)} or {upper} channels "
                f"(model_channels × channel_mult), or a smaller norm_num_groups."
            )
        super().__init__(num_groups, num_channels, eps=eps, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32 and (self.weight is None or self.weight.dtype == torch.float32):
            return super().forward(x)
        w = self.weight.float() if self.weight is not None else None
        b = self.bias.float() if self.bias is not None else None
        return F.group_norm(x.float(), self.num_groups, w, b, self.eps).to(x.dtype)


def normalization(channels: int, num_groups: int = 32, eps: float = 1e-5) -> GroupNorm32:
    """The UNet's normalisation layer: ``GroupNorm32(num_groups, channels)`` (32 groups in LDM)."""
    return GroupNorm32(num_groups, channels, eps=eps)


def zero_module(module: nn.Module) -> nn.Module:
    """Set every parameter of ``module`` to zero and return it.

    Used on the last layer of each residual branch (ResBlock's second conv, the attention output
    projections, the UNet's output conv): at initialisation every branch adds nothing, so the
    network starts as (close to) an identity map through its skip connections.
    """
    for p in module.parameters():
        p.detach().zero_()
    return module


# ----------------------------------------------------------------------------------------------
# Sequential containers that route the time embedding and the context
# ----------------------------------------------------------------------------------------------
class TimestepBlock(nn.Module):
    """Marker base class: a module whose ``forward(x, emb)`` takes the time embedding."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


class TimestepEmbedSequential(nn.Sequential):
    """``nn.Sequential`` that passes ``emb`` to :class:`TimestepBlock` layers and ``context``
    (and ``context_mask``) to layers that declare ``takes_context = True`` (the SpatialTransformer).

    ``forward(x, emb, context=None, context_mask=None)``: ``x`` (B, C, H, W), ``emb`` (B, D_emb),
    ``context`` (B, N_ctx, D_ctx), ``context_mask`` (B, N_ctx) bool.
    """

    def forward(self, x, emb, context=None, context_mask=None):  # type: ignore[override]
        for layer in self:
            if isinstance(layer, TimestepBlock):
                x = layer(x, emb)
            elif getattr(layer, "takes_context", False):
                x = layer(x, context=context, context_mask=context_mask)
            else:
                x = layer(x)
        return x


# ----------------------------------------------------------------------------------------------
# Resampling
# ----------------------------------------------------------------------------------------------
class Downsample(nn.Module):
    """Halve H and W: a 3×3 conv with stride 2 (``use_conv=True``) or 2×2 average pooling.

    (B, C, H, W) → (B, C_out, H/2, W/2). The conv is called ``op`` as in the CompVis code.
    """

    def __init__(self, channels: int, use_conv: bool = True, out_channels: int | None = None):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        if use_conv:
            self.op = nn.Conv2d(channels, self.out_channels, 3, stride=2, padding=1)
        else:
            if self.out_channels != channels:
                raise ValueError("Downsample without a conv cannot change the channel count")
            self.op = nn.AvgPool2d(kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Double H and W: nearest-neighbour ×2, then (``use_conv=True``) a 3×3 conv.

    (B, C, H, W) → (B, C_out, 2H, 2W).
    """

    def __init__(self, channels: int, use_conv: bool = True, out_channels: int | None = None):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_conv = use_conv
        if use_conv:
            self.conv = nn.Conv2d(channels, self.out_channels, 3, padding=1)
        elif self.out_channels != channels:
            raise ValueError("Upsample without a conv cannot change the channel count")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x) if self.use_conv else x


# ----------------------------------------------------------------------------------------------
# Residual block
# ----------------------------------------------------------------------------------------------
class ResBlock(TimestepBlock):
    """Residual block conditioned on the time embedding (the UNet's workhorse, App. E).

    ::

        h = conv3×3(SiLU(GN(x)))                         in_layers   (optionally resampled first)
        e = Linear(SiLU(emb))                             emb_layers  (B, C_out) or (B, 2·C_out)
        default:           h = h + e[..., None, None]
                           h = conv3×3(Dropout(SiLU(GN(h))))
        scale-shift norm:  s, b = e.chunk(2)
                           h = conv3×3(Dropout(SiLU(GN(h) · (1 + s) + b)))    (FiLM, "adaptive GN")
        out = skip(x) + h

    The last conv is zero-initialised, so a fresh block is the identity on its skip path.
    ``skip`` is the identity when the channel count is unchanged, otherwise a 1×1 conv (or 3×3 with
    ``use_conv=True``). With ``up``/``down`` the block also resamples (nearest / average pooling,
    no parameters), used by ``resblock_updown=True`` UNets (e.g. the paper's LSUN-Churches model).

    Args:
        channels: input channels C.
        emb_channels: width of the time embedding (``4 · model_channels`` in the UNet).
        dropout: dropout probability before the last conv.
        out_channels: output channels (default C).
        use_scale_shift_norm: FiLM-style conditioning instead of adding ``e``.
        up / down: double / halve H and W inside the block.
        use_conv: 3×3 instead of 1×1 conv on the skip path when channels change.
        norm_num_groups: GroupNorm groups (32 in LDM).

    Shapes: ``x`` (B, C, H, W), ``emb`` (B, emb_channels) → (B, C_out, H', W').
    """

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        dropout: float = 0.0,
        out_channels: int | None = None,
        use_scale_shift_norm: bool = False,
        up: bool = False,
        down: bool = False,
        use_conv: bool = False,
        norm_num_groups: int = 32,
    ):
        super().__init__()
        if up and down:
            raise ValueError("ResBlock cannot be both up=True and down=True")
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.updown = up or down

        self.in_layers = nn.Sequential(
            normalization(channels, norm_num_groups),
            nn.SiLU(),
            nn.Conv2d(channels, self.out_channels, 3, padding=1),
        )
        if up:
            self.h_upd, self.x_upd = Upsample(channels, use_conv=False), Upsample(channels, use_conv=False)
        elif down:
            self.h_upd, self.x_upd = Downsample(channels, use_conv=False), Downsample(channels, use_conv=False)
        else:
            self.h_upd = self.x_upd = nn.Identity()

        self.emb_layers = nn.Sequential(
            nn.SiLU(),
            nn.Linear(emb_channels, 2 * self.out_channels if use_scale_shift_norm else self.out_channels),
        )
        self.out_layers = nn.Sequential(
            normalization(self.out_channels, norm_num_groups),
            nn.SiLU(),
            nn.Dropout(p=dropout),
            zero_module(nn.Conv2d(self.out_channels, self.out_channels, 3, padding=1)),
        )
        if self.out_channels == channels:
            self.skip_connection = nn.Identity()
        elif use_conv:
            self.skip_connection = nn.Conv2d(channels, self.out_channels, 3, padding=1)
        else:
            self.skip_connection = nn.Conv2d(channels, self.out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.updown:
            # GN → SiLU, resample, then conv (resampling before the conv is cheaper when going down)
            h = self.in_layers[1](self.in_layers[0](x))
            h = self.in_layers[2](self.h_upd(h))
            x = self.x_upd(x)
        else:
            h = self.in_layers(x)
        e = self.emb_layers(emb).to(h.dtype)[:, :, None, None]  # (B, C_out or 2·C_out, 1, 1)
        if self.use_scale_shift_norm:
            norm, rest = self.out_layers[0], self.out_layers[1:]
            scale, shift = e.chunk(2, dim=1)
            h = rest(torch.addcmul(shift, norm(h), 1 + scale))  # GN(h)·(1+s) + b
        else:
            h = self.out_layers(h + e)
        return self.skip_connection(x) + h
