"""Converters between the course's models and other libraries' (diffusers, the CompVis originals).

* :mod:`ldm_lite.convert.diffusers` -- UNet, first stage and DDIM schedule <-> Hugging Face diffusers,
  both ways; its docstring explains the two layouts and what does not map.
* :mod:`ldm_lite.convert.compvis` -- the paper's released checkpoints (CompVis/latent-diffusion config + .ckpt)
  <-> the course's ``LatentDiffusion`` (``load_compvis_ldm`` / ``save_compvis``; ``ldm-lite convert-compvis``).

diffusers is imported only when a converter is called.
"""

from ldm_lite.convert.compvis import CompVisConversionError, load_compvis_ldm, save_compvis
from ldm_lite.convert.diffusers import (
    LEAF_NAMES,
    NotConvertibleError,
    UNetBlock,
    ddim_scheduler_from_schedule,
    first_stage_config_from_diffusers,
    first_stage_config_to_diffusers,
    first_stage_from_diffusers,
    first_stage_state_dict_to_diffusers,
    first_stage_to_diffusers,
    ldm_to_diffusers,
    unet_block_table,
    unet_config_from_diffusers,
    unet_config_to_diffusers,
    unet_from_diffusers,
    unet_state_dict_from_diffusers,
    unet_state_dict_to_diffusers,
    unet_to_diffusers,
)

__all__ = [
    "CompVisConversionError", "load_compvis_ldm", "save_compvis",
    "LEAF_NAMES", "NotConvertibleError", "UNetBlock", "ddim_scheduler_from_schedule",
    "first_stage_config_from_diffusers", "first_stage_config_to_diffusers", "first_stage_from_diffusers",
    "first_stage_state_dict_to_diffusers", "first_stage_to_diffusers", "ldm_to_diffusers", "unet_block_table",
    "unet_config_from_diffusers", "unet_config_to_diffusers", "unet_from_diffusers", "unet_state_dict_from_diffusers",
    "unet_state_dict_to_diffusers", "unet_to_diffusers",
]
