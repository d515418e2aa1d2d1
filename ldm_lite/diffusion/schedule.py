"""The forward (noising) process of a diffusion model, and the loss that trains the denoiser.

Read this module top to bottom; it follows chapter 02 of the course.

1. :func:`make_beta_schedule` -- the noise levels beta_1..beta_T, with the names used by the original
   LDM code (CompVis ``ldm/modules/diffusionmodules/util.py``).
2. :class:`NoiseSchedule` -- every quantity derived from the betas (alpha-bar, posterior coefficients,
   SNR) plus the formulas that use them: noising ``q_sample`` (DDPM Eq. 4), the true posterior
   ``q_posterior`` (DDPM Eq. 6-7) and conversions between the three things a network can predict
   (noise ``eps``, clean sample ``x0``, velocity ``v``).
3. :func:`make_ddim_timesteps` -- which of the T training timesteps a shortened sampler visits.
4. :func:`diffusion_loss` -- the LDM training objective, the paper's Eq. 1 (pixels) / Eq. 2 (latents),
   Sec. 3.2, with the x0 and v variants and optional min-SNR-gamma weighting.

Notation (Ho et al. 2020, "DDPM"):

* ``t`` runs over ``0 .. T-1`` in code (the papers write 1..T); ``t=0`` is the least noisy step.
* ``alpha_t = 1 - beta_t`` and ``alpha_bar_t = prod_{s<=t} alpha_s`` (``alphas_cumprod``).
* ``x_t = sqrt(alpha_bar_t) * x_0 + sqrt(1 - alpha_bar_t) * eps`` with ``eps ~ N(0, I)`` (DDPM Eq. 4).
* ``SNR(t) = alpha_bar_t / (1 - alpha_bar_t)``, the signal-to-noise ratio of ``x_t``.

In latent diffusion "x" is the autoencoder's latent ``z = E(x)`` (scaled by ``scale_factor``); nothing
in this module cares which, so the same code trains a pixel DM and an LDM.

Dtype convention: the schedule is kept in float64 (``1 - alpha_bar`` near ``t=0`` is ~1e-3 and loses
~10 % of its value in float16), while every method returns tensors in the dtype of its input ``x``.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from torch import nn

__all__ = [
    "BETA_SCHEDULES",
    "loss_by_timestep",
    "PARAMETERIZATIONS",
    "make_beta_schedule",
    "NoiseSchedule",
    "make_ddim_timesteps",
    "min_snr_weight",
    "diffusion_loss",
]

BETA_SCHEDULES = ("linear", "sqrt_linear", "cosine", "sqrt")
PARAMETERIZATIONS = ("eps", "x0", "v")


# --------------------------------------------------------------------------------------------------
# 1. Beta schedules
# --------------------------------------------------------------------------------------------------
def make_beta_schedule(
    schedule: str,
    n_timestep: int = 1000,
    linear_start: float = 1e-4,
    linear_end: float = 2e-2,
    cosine_s: float = 8e-3,
) -> torch.Tensor:
    """The noise variances ``beta_t`` for ``t = 0 .. n_timestep-1``; a float64 tensor of shape ``(T,)``.

    The names are those of the LDM code, which differ from diffusers' names -- a classic trap:

    =============== ================================================ ============================
    ``schedule``    definition                                       diffusers ``beta_schedule``
    =============== ================================================ ============================
    ``"linear"``    ``linspace(sqrt(start), sqrt(end), T) ** 2``      ``"scaled_linear"``
                    (linear in sqrt(beta); used by LDM / Stable
                    Diffusion with start=0.00085, end=0.012)
    ``"sqrt_linear"`` ``linspace(start, end, T)`` (linear in beta;   ``"linear"``
                    the DDPM schedule, start=1e-4, end=0.02)
    ``"cosine"``    Nichol & Dhariwal 2021, Eq. 17:                   ``"squaredcos_cap_v2"``
                    ``alpha_bar(t) = f(t)/f(0)``,
                    ``f(t) = cos(((t/T + s) / (1 + s)) * pi/2) ** 2``,
                    ``beta_t = 1 - alpha_bar(t+1)/alpha_bar(t)``
                    clipped to at most 0.999
    ``"sqrt"``      ``linspace(start, end, T) ** 0.5``                (none)
    =============== ================================================ ============================

    ``linear_start``/``linear_end`` are ignored by ``"cosine"``; ``cosine_s`` is used only by it.
    """
    if schedule not in BETA_SCHEDULES:
        raise ValueError(
            f"unknown beta schedule {schedule!r}; valid schedules are {', '.join(BETA_SCHEDULES)}. "
            "(Note: LDM's 'linear' is diffusers' 'scaled_linear', LDM's 'sqrt_linear' is diffusers' "
            "'linear', LDM's 'cosine' is diffusers' 'squaredcos_cap_v2'.)"
        )
    if not isinstance(n_timestep, int) or n_timestep < 1:
        raise ValueError(f"n_timestep must be a positive integer, got {n_timestep!r}")
    if schedule != "cosine" and not 0.0 < linear_start <= linear_end < 1.0:
        raise ValueError(
            f"need 0 < linear_start <= linear_end < 1, got linear_start={linear_start}, "
            f"linear_end={linear_end}"
        )

    f64 = torch.float64
    if schedule == "linear":  # linear in sqrt(beta), so beta grows quadratically
        betas = torch.linspace(linear_start**0.5, linear_end**0.5, n_timestep, dtype=f64) ** 2
    elif schedule == "sqrt_linear":  # linear in beta
        betas = torch.linspace(linear_start, linear_end, n_timestep, dtype=f64)
    elif schedule == "sqrt":
        betas = torch.linspace(linear_start, linear_end, n_timestep, dtype=f64) ** 0.5
    else:  # "cosine"
        if cosine_s <= 0:
            raise ValueError(f"cosine_s must be > 0, got {cosine_s}")
        # alpha_bar at the T+1 grid points t/T, t = 0..T; f(0) normalises alpha_bar(0) to 1
        # (it cancels in the ratio below, but keeps alpha_bar readable if you plot it).
        steps = torch.arange(n_timestep + 1, dtype=f64) / n_timestep
        f = torch.cos((steps + cosine_s) / (1 + cosine_s) * math.pi / 2) ** 2
        alpha_bar = f / f[0]
        betas = 1 - alpha_bar[1:] / alpha_bar[:-1]
        # The last steps would have beta -> 1 (alpha_bar -> 0); clipping avoids a singular x_T.
        betas = betas.clamp(min=0.0, max=0.999)
    return betas


# --------------------------------------------------------------------------------------------------
# 2. The schedule and the formulas built on it
# --------------------------------------------------------------------------------------------------
class NoiseSchedule(nn.Module):
    """All quantities derived from ``betas`` (shape ``(T,)``), stored as float64 buffers.

    Buffers (each of shape ``(T,)``; index ``t`` in ``0 .. T-1``):

    * ``betas``, ``alphas = 1 - betas``, ``alphas_cumprod`` (alpha_bar_t),
      ``alphas_cumprod_prev`` (alpha_bar_{t-1}, with alpha_bar_{-1} = 1)
    * ``sqrt_alphas_cumprod``, ``sqrt_one_minus_alphas_cumprod`` -- the two coefficients of DDPM Eq. 4
    * ``sqrt_recip_alphas_cumprod``, ``sqrt_recipm1_alphas_cumprod`` -- for x0 from eps (DDPM Eq. 15)
    * ``posterior_variance`` (beta-tilde_t, DDPM Eq. 7; it is 0 at t=0),
      ``posterior_log_variance_clipped`` (log of it, with the t=0 entry replaced by t=1's so it is
      finite), ``posterior_mean_coef1``, ``posterior_mean_coef2`` (the two coefficients of mu-tilde)
    * ``log_snr = log(alpha_bar / (1 - alpha_bar))``

    It is an ``nn.Module`` only so that ``.to(device)`` moves it together with a model that owns it.
    The buffers are not saved in ``state_dict`` (the schedule is rebuilt from its config), and they
    stay float64 under ``model.half()`` / ``.to(torch.bfloat16)`` (float32 on Apple's MPS, which has
    no float64).

    Methods take ``t`` as an integer tensor of shape ``(B,)`` (or a Python int for the whole batch)
    and ``x`` of shape ``(B, ...)``, e.g. ``(B, C, H, W)``; per-timestep coefficients are broadcast
    over the non-batch dimensions.
    """

    def __init__(self, betas: torch.Tensor):
        super().__init__()
        betas = torch.as_tensor(betas, dtype=torch.float64).detach().cpu()
        if betas.ndim != 1 or betas.numel() < 1:
            raise ValueError(f"betas must be a non-empty 1-D tensor, got shape {tuple(betas.shape)}")
        if not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError(
                f"every beta must lie in (0, 1); got min {betas.min().item():.3g}, "
                f"max {betas.max().item():.3g}"
            )
        self.num_timesteps = int(betas.numel())
        self._betas_source = betas.clone()  # float64 on CPU: the ground truth, see _apply below
        self.made_from: dict | None = None  # the name and parameters of from_name, when it made this schedule
        self._register_schedule(betas)

    @classmethod
    def from_name(cls, schedule: str = "linear", n_timestep: int = 1000, **kwargs) -> "NoiseSchedule":
        """``NoiseSchedule(make_beta_schedule(schedule, n_timestep, **kwargs))``.

        Stable Diffusion / most LDM configs: ``from_name("linear", 1000, linear_start=0.00085,
        linear_end=0.012)``.
        """
        made = cls(make_beta_schedule(schedule, n_timestep, **kwargs))
        made.made_from = dict(schedule=schedule, n_timestep=n_timestep, **kwargs)  # what LDMConfig records
        return made

    def _register_schedule(self, betas: torch.Tensor) -> None:
        alphas = 1.0 - betas
        alphas_cumprod = torch.cumprod(alphas, dim=0)
        alphas_cumprod_prev = torch.cat([alphas_cumprod.new_ones(1), alphas_cumprod[:-1]])
        one_minus = 1.0 - alphas_cumprod

        # Posterior q(x_{t-1} | x_t, x_0) = N(mu_tilde, beta_tilde I)  (DDPM Eq. 6-7):
        #   beta_tilde_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) * beta_t
        #   mu_tilde_t   = sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t) * x_0
        #                + sqrt(alpha_t) (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) * x_t
        posterior_variance = betas * (1.0 - alphas_cumprod_prev) / one_minus
        # beta_tilde_0 = 0, so log() would be -inf; use beta_tilde_1 there, as DDPM/LDM do.
        if self.num_timesteps > 1:
            clipped = torch.cat([posterior_variance[1:2], posterior_variance[1:]])
        else:
            clipped = betas.clone()

        buffers = {
            "betas": betas,
            "alphas": alphas,
            "alphas_cumprod": alphas_cumprod,
            "alphas_cumprod_prev": alphas_cumprod_prev,
            "sqrt_alphas_cumprod": alphas_cumprod.sqrt(),
            "sqrt_one_minus_alphas_cumprod": one_minus.sqrt(),
            "sqrt_recip_alphas_cumprod": (1.0 / alphas_cumprod).sqrt(),
            "sqrt_recipm1_alphas_cumprod": (1.0 / alphas_cumprod - 1.0).sqrt(),
            "posterior_variance": posterior_variance,
            "posterior_log_variance_clipped": clipped.log(),
            "posterior_mean_coef1": betas * alphas_cumprod_prev.sqrt() / one_minus,
            "posterior_mean_coef2": (1.0 - alphas_cumprod_prev) * alphas.sqrt() / one_minus,
            "log_snr": alphas_cumprod.log() - one_minus.log(),
        }
        for name, value in buffers.items():
            self.register_buffer(name, value, persistent=False)

    def _apply(self, fn, recurse=True):
        # nn.Module.to / .cuda / .half all end up here with a function `fn` applied to every tensor.
        # We let `fn` pick the device (probing it on a tiny tensor) but rebuild the buffers from the
        # float64 source, so casting a model to half precision never rounds the schedule.
        target = fn(torch.zeros((), dtype=torch.float32)).device
        dtype = torch.float32 if target.type == "mps" else torch.float64
        self._register_schedule(self._betas_source.to(device=target, dtype=dtype))
        return self

    def extra_repr(self) -> str:
        return f"num_timesteps={self.num_timesteps}, device={self.betas.device}"

    def __len__(self) -> int:
        return self.num_timesteps

    # ---- indexing helper -------------------------------------------------------------------------
    def check_timesteps(self, t, batch_size: int) -> torch.Tensor:
        """Validate timesteps; return a long tensor of shape ``(batch_size,)`` on the buffers' device.

        ``t`` may be an integer tensor ``(batch_size,)``, a 0-d integer tensor or a Python int (the
        same step for every sample). The range check reads ``t`` back (one host sync on a GPU).
        """
        if isinstance(t, (int, np.integer)) and not isinstance(t, bool):
            t = torch.full((batch_size,), int(t), dtype=torch.long)
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"t must be an int or an integer tensor of shape (B,), got {type(t).__name__}")
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise TypeError(
                f"t must hold integer timesteps in 0..{self.num_timesteps - 1}, got dtype {t.dtype} "
                "(a continuous time t/T in [0, 1] is not accepted here)"
            )
        if t.ndim == 0:
            t = t.expand(batch_size)
        if t.ndim != 1 or t.shape[0] != batch_size:
            raise ValueError(
                f"t must have shape (B,) = ({batch_size},) to match the batch of x, got {tuple(t.shape)}"
            )
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.num_timesteps):
            raise ValueError(
                f"timesteps must lie in 0..{self.num_timesteps - 1}; got values from {int(t.min())} "
                f"to {int(t.max())}"
            )
        return t.to(device=self.betas.device, dtype=torch.long)

    def extract(self, buffer: str | torch.Tensor, t, x: torch.Tensor) -> torch.Tensor:
        """``buffer[t]`` reshaped to ``(B, 1, 1, ...)`` to broadcast against ``x`` ``(B, ...)``, in x's dtype.

        ``buffer`` is a buffer name (e.g. ``"alphas_cumprod"``) or a ``(T,)`` tensor. The lookup
        happens in float64; only the result is cast to ``x.dtype`` and moved to ``x.device``.
        """
        values = getattr(self, buffer) if isinstance(buffer, str) else buffer
        t = self.check_timesteps(t, x.shape[0])
        out = values[t.to(values.device)]
        return out.to(device=x.device, dtype=x.dtype).reshape(x.shape[0], *([1] * (x.ndim - 1)))

    def snr(self, t, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``SNR(t) = alpha_bar_t / (1 - alpha_bar_t)``, shape ``(B,)``, in ``dtype``."""
        if isinstance(t, (int, np.integer)) or (isinstance(t, torch.Tensor) and t.ndim == 0):
            t = torch.as_tensor(t).reshape(1)
        t = self.check_timesteps(t, t.shape[0] if isinstance(t, torch.Tensor) else 1)
        return self.log_snr[t].exp().to(dtype)

    # ---- forward process -------------------------------------------------------------------------
    def q_sample(
        self,
        x0: torch.Tensor,
        t,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Sample ``x_t ~ q(x_t | x_0)``: ``sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps`` (DDPM Eq. 4).

        ``x0``: ``(B, ...)``; ``t``: ``(B,)`` integers; ``noise``: like ``x0`` (drawn from N(0, I)
        with ``generator`` when omitted). Returns ``x_t`` of ``x0``'s shape and dtype.
        """
        noise = _noise_like(x0, noise, generator)
        return (
            self.extract("sqrt_alphas_cumprod", t, x0) * x0
            + self.extract("sqrt_one_minus_alphas_cumprod", t, x0) * noise
        )

    def q_posterior(self, x0: torch.Tensor, xt: torch.Tensor, t):
        """The true reverse step ``q(x_{t-1} | x_t, x_0) = N(mean, var I)`` (DDPM Eq. 6-7).

        ``x0``, ``xt``: ``(B, ...)``; ``t``: ``(B,)``. Returns ``(mean, var, log_var)``: ``mean`` of
        ``xt``'s shape, ``var`` and ``log_var`` of shape ``(B, 1, 1, ...)``. ``var`` is 0 at ``t=0``
        (the last step is deterministic); ``log_var`` is clipped there to stay finite.
        """
        _check_same_shape(x0, xt, "x0", "xt")
        mean = (
            self.extract("posterior_mean_coef1", t, xt) * x0
            + self.extract("posterior_mean_coef2", t, xt) * xt
        )
        var = self.extract("posterior_variance", t, xt)
        log_var = self.extract("posterior_log_variance_clipped", t, xt)
        return mean, var, log_var

    # ---- what the network predicts: eps, x0 or v -------------------------------------------------
    # With a = sqrt(alpha_bar_t), b = sqrt(1 - alpha_bar_t) (a^2 + b^2 = 1) and x_t = a x0 + b eps:
    #   x0  = (x_t - b eps) / a            eps = (x_t - a x0) / b
    #   v   = a eps - b x0                 (Salimans & Ho 2022, "Progressive Distillation", Sec. 4)
    #   x0  = a x_t - b v                  eps = b x_t + a v
    def predict_x0_from_eps(self, xt: torch.Tensor, t, eps: torch.Tensor) -> torch.Tensor:
        """``x0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)`` (DDPM Eq. 15).

        Shapes ``(B, ...)``.
        """
        _check_same_shape(xt, eps, "xt", "eps")
        return (
            self.extract("sqrt_recip_alphas_cumprod", t, xt) * xt
            - self.extract("sqrt_recipm1_alphas_cumprod", t, xt) * eps
        )

    def predict_eps_from_x0(self, xt: torch.Tensor, t, x0: torch.Tensor) -> torch.Tensor:
        """``eps = (x_t - sqrt(alpha_bar_t) x0) / sqrt(1 - alpha_bar_t)``. Shapes ``(B, ...)``."""
        _check_same_shape(xt, x0, "xt", "x0")
        return (
            self.extract("sqrt_recip_alphas_cumprod", t, xt) * xt - x0
        ) / self.extract("sqrt_recipm1_alphas_cumprod", t, xt)

    def get_v(self, x0: torch.Tensor, eps: torch.Tensor, t) -> torch.Tensor:
        """The velocity target ``v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x0``; shapes ``(B, ...)``.

        (Salimans & Ho 2022, Sec. 4.)
        """
        _check_same_shape(x0, eps, "x0", "eps")
        return (
            self.extract("sqrt_alphas_cumprod", t, x0) * eps
            - self.extract("sqrt_one_minus_alphas_cumprod", t, x0) * x0
        )

    def predict_x0_from_v(self, xt: torch.Tensor, t, v: torch.Tensor) -> torch.Tensor:
        """``x0 = sqrt(alpha_bar_t) x_t - sqrt(1 - alpha_bar_t) v``. Shapes ``(B, ...)``."""
        _check_same_shape(xt, v, "xt", "v")
        return (
            self.extract("sqrt_alphas_cumprod", t, xt) * xt
            - self.extract("sqrt_one_minus_alphas_cumprod", t, xt) * v
        )

    def predict_eps_from_v(self, xt: torch.Tensor, t, v: torch.Tensor) -> torch.Tensor:
        """``eps = sqrt(1 - alpha_bar_t) x_t + sqrt(alpha_bar_t) v``. Shapes ``(B, ...)``."""
        _check_same_shape(xt, v, "xt", "v")
        return (
            self.extract("sqrt_one_minus_alphas_cumprod", t, xt) * xt
            + self.extract("sqrt_alphas_cumprod", t, xt) * v
        )

    def ddim_timesteps(self, num_steps: int, method: str = "uniform", steps_offset: int = 1) -> torch.Tensor:
        """:func:`make_ddim_timesteps` for this schedule's ``T``."""
        return make_ddim_timesteps(num_steps, self.num_timesteps, method, steps_offset)


def _noise_like(
    x: torch.Tensor, noise: torch.Tensor | None, generator: torch.Generator | None
) -> torch.Tensor:
    if noise is None:
        # Draw on the generator's device (a CPU generator cannot fill a CUDA tensor), then move.
        gen_device = generator.device if generator is not None else x.device
        return torch.randn(x.shape, generator=generator, device=gen_device, dtype=x.dtype).to(x.device)
    _check_same_shape(x, noise, "x0", "noise")
    return noise


def _check_same_shape(a: torch.Tensor, b: torch.Tensor, name_a: str, name_b: str) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"{name_a} and {name_b} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )


# --------------------------------------------------------------------------------------------------
# 3. Timesteps for shortened samplers (DDIM, PLMS, ...)
# --------------------------------------------------------------------------------------------------
def make_ddim_timesteps(
    num_ddim_timesteps: int,
    num_ddpm_timesteps: int = 1000,
    method: str = "uniform",
    steps_offset: int = 1,
) -> torch.Tensor:
    """The ``num_ddim_timesteps`` training timesteps a shortened sampler visits, **ascending**, long ``(S,)``.

    * ``"uniform"``: ``c = T // S``; timesteps ``0, c, 2c, ..., (S-1)c`` plus ``steps_offset``.
      With the default ``steps_offset=1`` this is CompVis' ``make_ddim_timesteps(..., 'uniform')``
      (``range(0, T, c)`` then ``+ 1``) and equals diffusers' ``DDIMScheduler(timestep_spacing=
      "leading", steps_offset=1).set_timesteps(S).timesteps`` reversed (Stable Diffusion's setting).
      One deliberate difference from CompVis: when ``S`` does not divide ``T``, ``range(0, T, c)`` can
      give *more* than ``S`` steps (T=1000, S=3 -> 4 steps); here, as in diffusers, exactly ``S``.
    * ``"quadratic"`` (alias ``"quad"``): ``floor(linspace(0, sqrt(0.8 T), S) ** 2) + steps_offset``,
      as CompVis (denser near t=0). It repeats timesteps when ``S`` is large (S >= 30 for T=1000);
      that raises an error here instead of silently taking zero-length steps.

    * ``"trailing"``: ``T - 1, T - 1 - T/S, ...`` rounded (Lin et al. 2024, *Common Diffusion Noise Schedules
      and Sample Steps are Flawed*, Tab. 2; diffusers' ``timestep_spacing="trailing"``): the first step starts at
      ``t = T - 1``, where the training noise is, instead of ``T - T/S + offset`` (a 5-step ``"uniform"`` run
      starts at ``t = 801`` with ``alpha_bar = 0.037``, from pure noise: a mismatch that grows as ``S`` shrinks).
      ``steps_offset`` does not apply. ``"leading"`` is an alias of ``"uniform"``.

    Samplers iterate over ``timesteps.flip(0)`` (from noisy to clean); the step after the smallest
    timestep goes to the clean sample (CompVis and SD use ``alpha_bar_0`` there; diffusers'
    ``set_alpha_to_one=True`` uses 1).
    """
    methods = ("uniform", "leading", "trailing", "quadratic", "quad")
    if method not in methods:
        raise ValueError(f"unknown DDIM timestep method {method!r}; use 'uniform' (= 'leading'), 'trailing' or "
                         "'quadratic'")
    if not isinstance(num_ddim_timesteps, int) or not 1 <= num_ddim_timesteps <= num_ddpm_timesteps:
        raise ValueError(
            f"num_ddim_timesteps must be an integer in 1..{num_ddpm_timesteps} (the number of training "
            f"timesteps), got {num_ddim_timesteps!r}"
        )
    if method == "trailing":
        T, S = num_ddpm_timesteps, num_ddim_timesteps
        steps = np.round(T - np.arange(S) * (T / S)).astype(np.int64)[::-1] - 1
        return torch.from_numpy(steps.copy())
    if method in ("uniform", "leading"):
        c = num_ddpm_timesteps // num_ddim_timesteps
        steps = np.arange(num_ddim_timesteps, dtype=np.int64) * c
    else:
        steps = (np.linspace(0, np.sqrt(num_ddpm_timesteps * 0.8), num_ddim_timesteps) ** 2).astype(np.int64)
        if len(np.unique(steps)) != len(steps):
            raise ValueError(
                f"quadratic spacing with {num_ddim_timesteps} steps over T={num_ddpm_timesteps} repeats "
                "timesteps; use fewer steps or method='uniform'"
            )
    steps = steps + steps_offset
    if steps.min() < 0 or steps.max() >= num_ddpm_timesteps:
        raise ValueError(
            f"steps_offset={steps_offset} moves the timesteps {steps.min()}..{steps.max()} outside "
            f"0..{num_ddpm_timesteps - 1} (e.g. {num_ddim_timesteps} of {num_ddpm_timesteps} steps with "
            "offset 1 needs timestep T); pass steps_offset=0"
        )
    return torch.from_numpy(steps)


# --------------------------------------------------------------------------------------------------
# 4. The training objective
# --------------------------------------------------------------------------------------------------
def min_snr_weight(snr: torch.Tensor, parameterization: str = "eps", gamma: float = 5.0) -> torch.Tensor:
    """Min-SNR-gamma loss weights (Hang et al. 2023), shape of ``snr``.

    Min-SNR weights the *x0* error by ``min(SNR, gamma)``. Because, at fixed ``x_t``,
    ``|eps - eps_hat|^2 = SNR |x0 - x0_hat|^2`` and ``|v - v_hat|^2 = (SNR + 1) |x0 - x0_hat|^2``,
    the same weighting expressed for each target is

    * ``eps``: ``min(SNR, gamma) / SNR``   (-> 1 as gamma -> inf: the plain L_simple)
    * ``v``:   ``min(SNR, gamma) / (SNR + 1)``
    * ``x0``:  ``min(SNR, gamma)``
    """
    _check_parameterization(parameterization)
    if gamma <= 0:
        raise ValueError(f"min_snr_gamma must be > 0, got {gamma}")
    clipped = snr.clamp(max=gamma)
    if parameterization == "eps":
        return clipped / snr
    if parameterization == "v":
        return clipped / (snr + 1)
    return clipped


def _check_parameterization(parameterization: str) -> None:
    if parameterization not in PARAMETERIZATIONS:
        raise ValueError(
            f"unknown parameterization {parameterization!r}; use one of {', '.join(PARAMETERIZATIONS)} "
            "(diffusers calls them 'epsilon', 'sample' and 'v_prediction')"
        )


def diffusion_loss(
    model_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x0: torch.Tensor,
    schedule: NoiseSchedule,
    t: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    parameterization: str = "eps",
    weighting: str | None = None,
    min_snr_gamma: float = 5.0,
    loss_type: str = "l2",
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The (latent) diffusion training loss; returns ``(loss, logs)``.

    With the defaults this is the paper's Eq. 1 (Sec. 3.2), which is DDPM's L_simple (Eq. 14):

        ``L_DM = E_{x, eps ~ N(0, I), t} || eps - eps_theta(x_t, t) ||^2``,

    and, when ``x0`` is a latent ``z = E(x)`` of the autoencoder, Eq. 2 (``L_LDM``, same formula on
    ``z_t``). Steps: draw ``t ~ Uniform{0..T-1}`` and ``eps ~ N(0, I)``, form ``x_t`` (DDPM Eq. 4),
    ask ``model_fn(x_t, t)`` for a prediction and compare it with the target of ``parameterization``:
    ``"eps"`` -> ``eps``, ``"x0"`` -> ``x0``, ``"v"`` -> ``sqrt(a_bar) eps - sqrt(1 - a_bar) x0``.

    Args:
        model_fn: ``(x_t (B, ...), t (B,) long) -> prediction (B, ...)``; wrap a conditional model as
            ``lambda x, t: unet(x, t, context=c)``.
        x0: clean samples or latents, ``(B, ...)`` e.g. ``(B, C, H, W)``.
        schedule: the :class:`NoiseSchedule`.
        t, noise: fix the timesteps ``(B,)`` / the noise ``(B, ...)`` instead of drawing them.
        weighting: ``None`` (uniform over t, as LDM) or ``"min_snr"`` (:func:`min_snr_weight`).
        loss_type: ``"l2"`` (squared error, the paper) or ``"l1"`` (absolute error; LDM configs offer it).
        generator: for ``t`` and ``noise`` when they are drawn here.

    The error is averaged over the non-batch dimensions to a per-sample loss ``(B,)`` (as the CompVis
    code's ``mean([1, 2, 3])``), weighted, then averaged over the batch. It is computed in float32
    even when the model runs in float16/bfloat16. (The CompVis code also has a learnable ``logvar``
    per timestep and an ELBO term; with its defaults -- logvar 0, elbo weight 0 -- they vanish.)

    ``logs`` (all detached): ``"loss"`` (the returned value), ``"loss_simple"`` (unweighted mean),
    ``"t"`` ``(B,)``, ``"loss_per_sample"`` ``(B,)`` unweighted (scatter it against ``t`` to plot loss
    vs. timestep) and ``"weights"`` ``(B,)``.
    """
    _check_parameterization(parameterization)
    if weighting not in (None, "min_snr"):
        raise ValueError(f"unknown weighting {weighting!r}; use None or 'min_snr'")
    if loss_type not in ("l2", "l1"):
        raise ValueError(f"unknown loss_type {loss_type!r}; use 'l2' or 'l1'")
    if not isinstance(x0, torch.Tensor) or not x0.is_floating_point() or x0.ndim < 2:
        raise ValueError("x0 must be a floating-point tensor of shape (B, ...), e.g. (B, C, H, W)")

    batch = x0.shape[0]
    if t is None:
        gen_device = generator.device if generator is not None else x0.device
        t = torch.randint(0, schedule.num_timesteps, (batch,), generator=generator, device=gen_device)
    t = schedule.check_timesteps(t, batch).to(x0.device)
    noise = _noise_like(x0, noise, generator)

    xt = schedule.q_sample(x0, t, noise)
    if parameterization == "eps":
        target = noise
    elif parameterization == "x0":
        target = x0
    else:
        target = schedule.get_v(x0, noise, t)

    pred = model_fn(xt, t)
    if not isinstance(pred, torch.Tensor) or pred.shape != target.shape:
        got = tuple(pred.shape) if isinstance(pred, torch.Tensor) else type(pred).__name__
        raise ValueError(
            f"model_fn returned {got}, but the {parameterization!r} target has shape {tuple(target.shape)} "
            "(a model that also predicts a variance must be split before the loss)"
        )

    err = pred.float() - target.float()
    err = err.pow(2) if loss_type == "l2" else err.abs()
    loss_per_sample = err.mean(dim=tuple(range(1, err.ndim)))  # (B,)

    if weighting == "min_snr":
        snr = schedule.snr(t, dtype=torch.float64)
        weights = min_snr_weight(snr, parameterization, min_snr_gamma).to(loss_per_sample)
    else:
        weights = torch.ones_like(loss_per_sample)
    loss = (weights * loss_per_sample).mean()

    logs = {
        "loss": loss.detach(),
        "loss_simple": loss_per_sample.detach().mean(),
        "t": t.detach(),
        "loss_per_sample": loss_per_sample.detach(),
        "weights": weights.detach(),
    }
    return loss, logs


def loss_by_timestep(t: torch.Tensor, loss_per_sample: torch.Tensor, num_timesteps: int, buckets: int) -> dict:
    """The mean loss in each of ``buckets`` equal timestep ranges, ``{"loss_t/<lo>-<hi>": value}`` (ranges with no
    sample of the batch left out): how hard each noise level is, as training goes."""
    edges = [round(i * num_timesteps / buckets) for i in range(buckets + 1)]
    out = {}
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (t >= lo) & (t < hi)
        if bool(sel.any()):
            out[f"loss_t/{lo}-{hi - 1}"] = float(loss_per_sample[sel].mean())
    return out
