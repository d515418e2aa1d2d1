"""The first stage: a perceptual autoencoder (Sec. 3.1)."""

from ldm_lite.autoencoder.model import (
    AutoencoderConfig,
    AutoencoderKL,
    Decoder,
    Encoder,
    VQModel,
    build_autoencoder,
    ch_mult_for_factor,
)
from ldm_lite.autoencoder.first_stage import IdentityFirstStage, is_pixel_space
from ldm_lite.autoencoder.regularizers import DiagonalGaussianDistribution, VectorQuantizer

__all__ = [
    "AutoencoderConfig", "AutoencoderKL", "Decoder", "Encoder", "VQModel", "build_autoencoder",
    "ch_mult_for_factor", "DiagonalGaussianDistribution", "VectorQuantizer",
    "IdentityFirstStage", "is_pixel_space",
]
