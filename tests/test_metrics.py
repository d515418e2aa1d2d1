"""PSNR and SSIM against closed forms and scikit-image."""

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from ldm_lite.metrics import psnr, ssim


def _pair(seed=0, noise=0.2):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    y = (x + noise * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    return x, y


def _np(t):
    return ((t + 1) / 2).permute(1, 2, 0).numpy().astype(np.float64)


def test_psnr_closed_form_and_skimage():
    x, y = _pair()
    per = psnr(x, y, reduction="none")
    for i in range(2):
        assert per[i].item() == pytest.approx(peak_signal_noise_ratio(_np(x[i]), _np(y[i]), data_range=1), rel=1e-4)
    # a constant offset of 0.1 on the [0, 1] scale is exactly 20 dB
    z = torch.zeros(1, 3, 8, 8)
    assert psnr(z, z + 0.2).item() == pytest.approx(20.0, rel=1e-5)


def test_ssim_matches_skimage():
    x, y = _pair(1, 0.3)
    ours = ssim(x, y, reduction="none")
    for i in range(2):
        ref_gauss = structural_similarity(_np(x[i]), _np(y[i]), channel_axis=2, data_range=1,
                                          gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
        assert ours[i].item() == pytest.approx(ref_gauss, abs=2e-3)
        ref_uniform = structural_similarity(_np(x[i]), _np(y[i]), channel_axis=2, data_range=1, win_size=7,
                                            use_sample_covariance=False)
        assert ssim(x[i:i + 1], y[i:i + 1], gaussian=False).item() == pytest.approx(ref_uniform, abs=1e-5)
    assert ssim(x, x).item() == pytest.approx(1.0, abs=1e-6)


def test_metric_errors():
    with pytest.raises(ValueError, match="same shape"):
        psnr(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 9))
    with pytest.raises(ValueError, match="smaller than the SSIM window"):
        ssim(torch.zeros(1, 3, 5, 5), torch.zeros(1, 3, 5, 5))
