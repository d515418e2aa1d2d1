"""Reconstruction metrics (chapter 01): PSNR and SSIM on images in [-1, 1], computed on the [0, 1] scale
per image and averaged. The LPIPS distance lives in ``ldm_lite.autoencoder.perceptual`` (real LPIPS when
its ImageNet backbone is present, a labelled substitute otherwise).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ldm_lite.data.spatial import keep_mask_from


def _to_unit(x: torch.Tensor) -> torch.Tensor:
    return ((x.float().clamp(-1, 1) + 1) / 2)


def _check_pair(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.shape != y.shape:
        raise ValueError(f"images must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.dim() != 4:
        raise ValueError(f"expected (B, C, H, W) images, got {tuple(x.shape)}")


def psnr(x: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Peak signal-to-noise ratio in dB, per image on the [0, 1] scale: 10 log10(1 / MSE).

    x, y: (B, C, H, W) in [-1, 1]. ``reduction="none"`` returns (B,).
    """
    _check_pair(x, y)
    mse = (_to_unit(x) - _to_unit(y)).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    out = 10 * torch.log10(1.0 / mse)
    return out.mean() if reduction == "mean" else out


def _gaussian_window(size: int, sigma: float, channels: int, device, dtype) -> torch.Tensor:
    coords = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()


def ssim(x: torch.Tensor, y: torch.Tensor, window: int = 7, sigma: float = 1.5, reduction: str = "mean",
         gaussian: bool = True) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004) on the [0, 1] scale, averaged over channels and the
    valid (unpadded) window positions.

    Defaults: a 7x7 Gaussian window with sigma 1.5 (a 7-pixel window suits 32-64 px images better than
    the original 11), K1 = 0.01, K2 = 0.03 -- within ~1e-3 of
    ``skimage.metrics.structural_similarity(..., gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=1)``, which truncates its Gaussian at 11 px.
    """
    _check_pair(x, y)
    a, b = _to_unit(x), _to_unit(y)
    C = a.shape[1]
    if min(a.shape[-2:]) < window:
        raise ValueError(f"images of size {tuple(a.shape[-2:])} are smaller than the SSIM window ({window})")
    if gaussian:
        w = _gaussian_window(window, sigma, C, a.device, a.dtype)
    else:
        w = torch.full((C, 1, window, window), 1.0 / window**2, device=a.device, dtype=a.dtype)
    conv = lambda t: F.conv2d(t, w, groups=C)  # noqa: E731  valid positions only
    mu_a, mu_b = conv(a), conv(b)
    var_a = conv(a * a) - mu_a**2
    var_b = conv(b * b) - mu_b**2
    cov = conv(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    out = s.flatten(1).mean(1)
    return out.mean() if reduction == "mean" else out


def masked_l1(x: torch.Tensor, y: torch.Tensor, hole_mask: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Mean absolute error on the [0, 1] scale *inside the hole* (``hole_mask`` 1 = generated), per image:
    the inpainting error of chapter 07 -- the known pixels are equal by construction and would dilute it.

    x, y: (B, C, H, W) in [-1, 1]; ``hole_mask`` (B or 1, 1, H, W), binary. ``reduction="none"`` returns (B,).
    """
    _check_pair(x, y)
    hole = 1.0 - keep_mask_from(hole_mask=hole_mask, like=x).to(x.device)
    hole = hole.expand(x.shape[0], 1, *x.shape[-2:])
    area = hole.flatten(1).sum(1)
    if (area == 0).any():
        raise ValueError("a hole mask is empty (no pixel to score); give every image a hole")
    err = ((_to_unit(x) - _to_unit(y)).abs().mean(1, keepdim=True) * hole).flatten(1).sum(1) / area
    return err.mean() if reduction == "mean" else err
