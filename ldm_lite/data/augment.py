"""Random degradations and augmentations, batched, each image with its own random amount.

Used to train the course's evaluators so that what a generative model gets slightly wrong (blur, noise,
colour cast, the smoothness of a coarse latent grid) does not fool them, and -- at full strength -- as
the "degraded real images" ceiling beside every sample-quality number. Hue is never
jittered: on ShapesDataset colour is a label.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _uniform(n: int, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    """Random numbers on the CPU (where the seeded generator lives); callers move them to the images' device."""
    return lo + (hi - lo) * torch.rand(n, generator=g)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Blur each image of ``(B, C, H, W)`` with its own Gaussian ``sigma[b]`` (pixels; 0 = unchanged)."""
    radius = int(math.ceil(3 * float(sigma.max()))) if len(sigma) else 0
    if radius == 0:
        return x
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    sigma = sigma.to(x.device, x.dtype)
    k = torch.exp(-(t[None] ** 2) / (2 * sigma.clamp_min(1e-3)[:, None] ** 2))
    k = k / k.sum(1, keepdim=True)                                      # (B, K)
    B, C, H, W = x.shape
    y = x.reshape(1, B * C, H, W)
    kk = k.repeat_interleave(C, 0)                                      # (B*C, K)
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="replicate"), kk[:, None, None, :], groups=B * C)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="replicate"), kk[:, None, :, None], groups=B * C)
    return y.reshape(B, C, H, W)


def random_degrade(x: torch.Tensor, strength: float = 1.0, generator: torch.Generator | None = None,
            ae: torch.nn.Module | None = None, ae_prob: float = 0.0) -> torch.Tensor:
    """Randomly degrade images ``(B, C, H, W)`` in [-1, 1]; ``strength`` in [0, 1] scales every range.

    At strength 1: blur sigma up to 1.2 px, noise std up to 0.15, brightness +-0.1, contrast and
    saturation x(1 +- 0.25), and for a third of the images a trip through a coarser grid (H/4 to H/2
    pixels a side, one size per batch; 16-32 px for 64 px images). Each image draws its own blur, noise
    and colour amounts (uniform up to the maximum), so a batch spans clean to fully degraded.
    ``ae`` (an RGB autoencoder whose forward returns the reconstruction first) replaces a share
    ``ae_prob`` of the images by their reconstructions first; grey images go through it as RGB.
    """
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    B, C, H, W = x.shape
    s = float(strength)
    device = x.device
    y = x.detach().float().cpu()  # the seeded generator lives on the CPU; the result goes back to x's device
    if ae is not None and ae_prob > 0:
        pick = torch.rand(B, generator=g) < ae_prob
        if pick.any():
            with torch.no_grad():
                ae_device = next(ae.parameters()).device
                rec = ae((y[pick] if C == 3 else y[pick].expand(-1, 3, -1, -1)).to(ae_device))
                rec = (rec[0] if isinstance(rec, (tuple, list)) else rec).float().cpu()
            y = y.clone()
            y[pick] = (rec if C == 3 else rec.mean(1, keepdim=True)).clamp(-1, 1)
    coarse = torch.rand(B, generator=g) < s / 3
    if coarse.any():
        side = int(torch.randint(max(H // 4, 8), max(H // 2, 9), (1,), generator=g))
        small = F.interpolate(y[coarse], size=(side, side), mode="area")
        y = y.clone()
        y[coarse] = F.interpolate(small, size=(H, W), mode="bilinear", align_corners=False)
    y = gaussian_blur(y, _uniform(B, 0, 1.2 * s, g))
    u = (y + 1) / 2
    u = u + _uniform(B, -0.1 * s, 0.1 * s, g)[:, None, None, None]
    mean = u.mean(dim=(1, 2, 3), keepdim=True)
    u = mean + (u - mean) * _uniform(B, 1 - 0.25 * s, 1 + 0.25 * s, g)[:, None, None, None]
    if C == 3:
        grey = u.mean(1, keepdim=True)
        u = grey + (u - grey) * _uniform(B, 1 - 0.25 * s, 1 + 0.25 * s, g)[:, None, None, None]
    u = u + torch.randn(u.shape, generator=g) * _uniform(B, 0, 0.15 * s, g)[:, None, None, None]
    return (u * 2 - 1).clamp(-1, 1).to(device)


def random_affine(x: torch.Tensor, generator: torch.Generator, max_shift: float = 0.1, scale=(0.8, 1.0),
                  flip: bool = True) -> torch.Tensor:
    """Random zoom-in crop + shift (+ horizontal flip) per image, white-free: border pixels are replicated."""
    B = len(x)
    s = _uniform(B, *scale, generator)
    tx, ty = _uniform(B, -max_shift, max_shift, generator), _uniform(B, -max_shift, max_shift, generator)
    sx = s * torch.where(torch.rand(B, generator=generator) < 0.5, -1.0, 1.0) if flip else s
    theta = torch.zeros(B, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1], theta[:, 0, 2], theta[:, 1, 2] = sx, s, tx, ty
    theta = theta.to(x.device, x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
