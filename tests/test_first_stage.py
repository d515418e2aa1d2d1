"""The first-stage protocol: KL, VQ and pixel space answer the same four questions (f, latent_channels,
encode_latent, decode_latent), so a LatentDiffusion never asks whether it has an autoencoder."""

from __future__ import annotations

import pytest
import torch
from test_ldm import tiny_ae, tiny_unet

from ldm_lite.autoencoder import IdentityFirstStage, is_pixel_space
from ldm_lite.ldm import LatentDiffusion


@pytest.mark.parametrize("kind", ["kl", "vq", "pixel"])
def test_every_first_stage_implements_the_protocol(kind):
    fs = IdentityFirstStage(3) if kind == "pixel" else tiny_ae(vq=kind == "vq")
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    z = fs.encode_latent(x)
    assert z.shape == (2, fs.latent_channels, 8 // fs.f, 8 // fs.f) and fs.in_channels == 3
    assert fs.decode_latent(z).shape == x.shape
    assert is_pixel_space(fs) == (kind == "pixel")
    if kind == "kl":  # the posterior mode by default, a draw with sample=True
        torch.testing.assert_close(z, fs.encode(x).mode())
        drawn = fs.encode_latent(x, sample=True, generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(drawn, fs.encode(x).sample(torch.Generator().manual_seed(1)))
    if kind == "vq":  # the continuous latent; the decoder quantises it
        torch.testing.assert_close(z, fs.encode_pre_quant(x))
        torch.testing.assert_close(fs.decode_latent(z), fs.decode(z, force_quantize=True))
    if kind == "pixel":
        assert z is x and fs.f == 1 and not list(fs.parameters())


def test_a_pixel_space_model_has_an_identity_first_stage_without_state():
    pixel = LatentDiffusion(None, tiny_unet(3, 3), image_size=8)
    assert isinstance(pixel.first_stage, IdentityFirstStage) and pixel.pixel_space and pixel.f == 1
    assert pixel.latent_channels == 3
    assert not any(k.startswith("first_stage") for k in pixel.state_dict())
    x = torch.rand(1, 3, 8, 8) * 2 - 1
    torch.testing.assert_close(pixel.decode_first_stage(pixel.encode_first_stage(x)), x)
    latent = LatentDiffusion(tiny_ae(), tiny_unet())
    assert not latent.pixel_space and latent.latent_channels == latent.first_stage.embed_dim
