"""The diffusion process of the LDM paper (Sec. 3.2): noise schedules, the training loss, samplers."""

from ldm_lite.diffusion.schedule import (
    BETA_SCHEDULES,
    PARAMETERIZATIONS,
    NoiseSchedule,
    diffusion_loss,
    make_beta_schedule,
    make_ddim_timesteps,
    min_snr_weight,
)

__all__ = [
    "BETA_SCHEDULES",
    "PARAMETERIZATIONS",
    "NoiseSchedule",
    "diffusion_loss",
    "make_beta_schedule",
    "make_ddim_timesteps",
    "min_snr_weight",
]
