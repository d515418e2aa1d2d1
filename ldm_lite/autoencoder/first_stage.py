"""The first-stage protocol: what a latent diffusion model needs from its autoencoder (Sec. 3.1).

A diffusion model trained "in latent space" only ever asks four things of the first stage::

    f                  the downsampling factor: an H x W image has an (H / f) x (W / f) latent
    latent_channels    channels of that latent (CompVis: ``embed_dim``)
    encode_latent(x)   images (B, C, H, W) in [-1, 1] -> the latent the diffusion model is trained on
    decode_latent(z)   a latent -> images

and ``in_channels`` (the image channels it encodes) for checking inputs. :class:`~ldm_lite.autoencoder.AutoencoderKL`
and :class:`~ldm_lite.autoencoder.VQModel` implement it; :class:`IdentityFirstStage` is the pixel-space "first stage"
(f = 1, the image is its own latent), so a diffusion model in pixel space -- the paper's LDM-1 -- runs the same code as
one in latent space, and nothing downstream branches on whether an autoencoder is present.

Which latent: a KL autoencoder's posterior mode (its mean; ``sample=True`` draws from q(z|x) as CompVis's
``DiagonalGaussianDistribution.sample`` does); a VQ autoencoder's *pre-quantisation* latent -- the diffusion model
works on the continuous latent and the decoder quantises ("absorbing the quantisation layer into the decoder",
Sec. 3.1), as CompVis's ``VQModelInterface`` does.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["IdentityFirstStage", "is_pixel_space"]


class IdentityFirstStage(nn.Module):
    """Pixel space as a first stage: ``f = 1``, the latent is the image itself (no parameters, no state)."""

    f = 1
    pixel_space = True

    def __init__(self, channels: int = 3):
        super().__init__()
        self.in_channels = self.latent_channels = int(channels)

    def encode_latent(self, x: torch.Tensor, sample: bool = False,
                      generator: torch.Generator | None = None) -> torch.Tensor:
        return x

    def decode_latent(self, z: torch.Tensor, force_quantize: bool = True) -> torch.Tensor:
        return z

    def extra_repr(self) -> str:
        return f"channels={self.in_channels} (pixel space, f=1)"


def is_pixel_space(first_stage: nn.Module) -> bool:
    """True for the pixel-space first stage (an autoencoder with f = 1 is still a latent space)."""
    return bool(getattr(first_stage, "pixel_space", False))
