"""The diffusion process of the LDM paper (Sec. 3.2): noise schedules, the training loss, samplers."""

from ldm_lite.diffusion.guidance import (
    batch_conditionings,
    cfg_combine,
    guided_model_fn,
    split_batch,
)
from ldm_lite.diffusion.samplers import (
    SAMPLERS,
    DDIMSampler,
    DDPMSampler,
    DPMSolverSampler,
    PLMSSampler,
    Sampler,
    make_sampler,
)
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
    "Sampler",
    "DDPMSampler",
    "DDIMSampler",
    "PLMSSampler",
    "DPMSolverSampler",
    "SAMPLERS",
    "make_sampler",
    "cfg_combine",
    "batch_conditionings",
    "split_batch",
    "guided_model_fn",
]
