"""ldm-lite: Latent Diffusion Models (Rombach et al., CVPR 2022) built from scratch, chapter by chapter.

The package is the single source of truth for the course notebooks: each chapter writes a piece by
hand, checks it against the package, and imports the package from then on.
"""

from ldm_lite.config import device, scale, seed_everything

__version__ = "0.1.0"
__all__ = ["device", "scale", "seed_everything", "__version__"]
