"""Solutions to the exercises of notebook 06 (cross-attention conditioning)."""

import math

import torch


def my_cfg(e_u, e_c, s):
    """Classifier-free guidance: start from the unconditional prediction, move s times towards the conditional one."""
    return e_u + s * (e_c - e_u)


def drop_labels(labels, p, null, generator):
    """Each label independently becomes the null class with probability p."""
    dropped = torch.rand(labels.shape, generator=generator) < p
    return torch.where(dropped, torch.full_like(labels, null), labels)


def box_features(x, n_freq):
    """sin and cos of 2^j * pi * x, j = 0 .. n_freq - 1, for every coordinate: (..., k) -> (..., k * 2 * n_freq)."""
    freqs = (2.0 ** torch.arange(n_freq, dtype=x.dtype)) * math.pi
    ang = x[..., None] * freqs
    return torch.cat([ang.sin(), ang.cos()], dim=-1).flatten(-2)
