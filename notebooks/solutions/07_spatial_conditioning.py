"""Solutions to the exercises of notebook 07 (spatial conditioning)."""

import torch
import torch.nn.functional as F


def my_inpaint_condition(model, image, hole):
    """The trained inpainter's c_concat: E(image * keep) (scaled) stacked with the hole max-pooled to the latent."""
    z = model.encode_first_stage(image * (1 - hole))
    return torch.cat([z, F.max_pool2d(hole, model.f)], dim=1)


def my_repaint_moves(num_steps, jump_length, jump_n_sample):
    """Walk down one step at a time; after every jump_length steps (not at the end) go back up jump_length steps,
    jump_n_sample - 1 times per position."""
    moves, jumps, i = [], {}, 0
    while i < num_steps:
        moves.append(("down", i))
        i += 1
        if jump_length and i % jump_length == 0 and i < num_steps and jumps.get(i, 0) < jump_n_sample - 1:
            jumps[i] = jumps.get(i, 0) + 1
            moves += [("up", k) for k in range(i - 1, i - 1 - jump_length, -1)]
            i -= jump_length
    return moves


def my_tiled_decode(decode, z, tile):
    """Decode tile x tile latent blocks on their own and paste them (no overlap: the seams show)."""
    rows = []
    for y in range(0, z.shape[-2], tile):
        rows.append(torch.cat([decode(z[..., y : y + tile, x : x + tile]) for x in range(0, z.shape[-1], tile)], -1))
    return torch.cat(rows, -2)
