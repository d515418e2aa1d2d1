"""Solutions to the exercises of notebook 02 (the diffusion objective)."""

import math

import torch


def from_v(x_t, v, alpha_bar):
    """(x0, eps) from x_t and the velocity v.

    With c = sqrt(alpha_bar), s = sqrt(1 - alpha_bar), c^2 + s^2 = 1:  x_t = c x0 + s eps and v = c eps - s x0,
    a rotation of (x0, eps); its inverse is x0 = c x_t - s v, eps = s x_t + c v."""
    c = torch.as_tensor(alpha_bar, dtype=x_t.dtype).sqrt()
    s = (1 - torch.as_tensor(alpha_bar, dtype=x_t.dtype)).sqrt()
    return c * x_t - s * v, s * x_t + c * v


def cosine_alpha_bar(T, s=0.008):
    """alpha_bar at the code's timesteps 0..T-1: f(t + 1) / f(0) (code index t is the paper's t + 1)."""
    def f(t):
        return math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2
    return torch.tensor([f(t + 1) / f(0) for t in range(T)], dtype=torch.float64)


def posterior_mean_from_eps(x_t, eps, t, betas):
    """DDPM Eq. 11: mu = (x_t - beta_t / sqrt(1 - alpha_bar_t) * eps) / sqrt(alpha_t), for timesteps t (B,)."""
    alpha_bar = torch.cumprod(1 - betas, dim=0)
    shape = (-1,) + (1,) * (x_t.dim() - 1)
    b = betas[t].view(shape).to(x_t.dtype)
    ab = alpha_bar[t].view(shape).to(x_t.dtype)
    return (x_t - b / torch.sqrt(1 - ab) * eps) / torch.sqrt(1 - b)
