"""Solutions to the exercises of notebook 01 (the perceptual autoencoder)."""

import torch


def kl_between(mean_q, logvar_q, mean_p, logvar_p):
    """KL(q || p) of two diagonal Gaussians, summed over every latent dimension: (B,).

    Per dimension, KL(N(m1, s1^2) || N(m2, s2^2)) = log(s2 / s1) + (s1^2 + (m1 - m2)^2) / (2 s2^2) - 1/2,
    written here with log-variances (log(s2 / s1) = (logvar_p - logvar_q) / 2)."""
    log_ratio = (logvar_p - logvar_q) / 2                         # log(s2 / s1)
    per_dim = log_ratio + (torch.exp(logvar_q) + (mean_q - mean_p) ** 2) / (2 * torch.exp(logvar_p)) - 0.5
    return per_dim.flatten(1).sum(dim=1)


def vq_quantize(z, codebook, beta=0.25):
    """Nearest-code quantisation of z (B, C, h, w) with a codebook (K, C).

    Returns (z_q, indices, loss): z_q with the straight-through gradient z + sg[e - z], indices (B, h, w),
    and ||sg[z] - e||^2 + beta ||z - sg[e]||^2 as mean squared errors."""
    B, C, h, w = z.shape
    vectors = z.movedim(1, -1).reshape(-1, C)                  # one row per position, (B*h*w, C)
    indices = torch.cdist(vectors.detach(), codebook.detach()).argmin(dim=1)
    chosen = codebook[indices].reshape(B, h, w, C).movedim(-1, 1)  # e_k laid out like z
    loss = torch.mean((chosen - z.detach()) ** 2) + beta * torch.mean((z - chosen.detach()) ** 2)
    z_q = z + (chosen - z).detach()
    return z_q, indices.reshape(B, h, w), loss


def my_psnr(x, y):
    """PSNR in dB per image (B,) for images in [-1, 1], measured on the [0, 1] scale."""
    err = (x - y) / 2                                          # the difference on the [0, 1] scale
    mse = err.pow(2).mean(dim=(1, 2, 3))
    return -10 * torch.log10(mse)
