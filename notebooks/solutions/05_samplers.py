"""Solutions to the exercises of notebook 05 (samplers)."""

import math


def my_timesteps(steps, T, spacing):
    """The timesteps a steps-step run visits, noisiest first.

    leading: every c = T // steps-th timestep from 0, plus the offset 1 (CompVis, Stable Diffusion);
    trailing: round(T - i T / steps) - 1 for i = 0 .. steps-1, so the first step is at T - 1 (Lin et al. 2024)."""
    if spacing == "leading":
        c = T // steps
        return [i * c + 1 for i in reversed(range(steps))]
    if spacing == "trailing":
        return [round(T - i * T / steps) - 1 for i in range(steps)]
    raise ValueError(f"unknown spacing {spacing!r}")


def ddpm_mean_coefficients(a_t, a_prev):
    """(c_0, c_eps) of DDPM's posterior mean written as c_0 z0_hat + c_eps eps, for a jump t -> t'.

    The mean is A z0_hat + B z_t with A = sqrt(a') beta / (1 - a), B = sqrt(1 - beta) (1 - a') / (1 - a) and
    beta = 1 - a / a'. Substituting z_t = sqrt(a) z0_hat + sqrt(1 - a) eps:
    c_0 = A + B sqrt(a) = sqrt(a')  (the algebra collapses), c_eps = B sqrt(1 - a)."""
    c_0 = math.sqrt(a_prev)
    c_eps = math.sqrt(a_t / a_prev) * (1 - a_prev) / math.sqrt(1 - a_t)
    return c_0, c_eps


def ddim_invert_step(eps, a_t, a_next, z):
    """Deterministic DDIM run upwards: keep z0_hat and eps, re-mix them at the noisier level a_next."""
    z0_hat = (z - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
    return math.sqrt(a_next) * z0_hat + math.sqrt(1 - a_next) * eps
