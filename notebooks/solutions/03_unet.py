"""Solutions to the exercises of notebook 03 (the UNet)."""

import math

import torch

from ldm_lite.unet import blocks


def time_shift_matrix(delta, dim, max_period=10000):
    """M (dim, dim) with emb(t + delta) = M emb(t) for the [cos | sin] embedding.

    For each frequency w_k the pair (cos tw, sin tw) is rotated by the angle delta * w_k:
    cos(t+d)w = cos dw cos tw - sin dw sin tw,  sin(t+d)w = sin dw cos tw + cos dw sin tw."""
    half = dim // 2
    M = torch.zeros(dim, dim, dtype=torch.float64)
    for k in range(half):
        angle = delta * max_period ** (-k / half)
        c, s = math.cos(angle), math.sin(angle)
        M[k, k], M[k, half + k] = c, -s              # the cosine row
        M[half + k, k], M[half + k, half + k] = s, c  # the sine row
    return M


def resblock_parameters(channels, emb_channels, out_channels):
    """Parameters of a ResBlock, layer by layer (every layer has a bias)."""
    def conv(c_in, c_out, k):
        return c_in * c_out * k * k + c_out

    def group_norm(c):
        return 2 * c                                       # a scale and a shift per channel

    count = group_norm(channels) + conv(channels, out_channels, 3)            # in_layers
    count += emb_channels * out_channels + out_channels                         # emb_layers: Linear
    count += group_norm(out_channels) + conv(out_channels, out_channels, 3)   # out_layers
    if channels != out_channels:
        count += conv(channels, out_channels, 1)                                # 1x1 skip
    return count


def block_embedding(unet, t, y):
    """What every ResBlock receives: the MLP of the sinusoidal time embedding plus the label's embedding."""
    time_part = unet.time_embed(blocks.timestep_embedding(t, unet.model_channels))
    return time_part + unet.label_emb(y)
