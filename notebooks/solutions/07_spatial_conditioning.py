"""Solutions to the exercises of notebook 07 (spatial conditioning)."""

import torch
import torch.nn.functional as F


def my_inpaint_condition(model, image, hole):
    """The trained inpainter's c_concat: E(image * keep) (scaled) stacked with the hole max-pooled to the latent."""
    z = model.encode_first_stage(image * (1 - hole))
    return torch.cat([z, F.max_pool2d(hole, model.f)], dim=1)


def my_repaint_moves(num_steps, jump_length, jump_n_sample):
    """Stretch by stretch: cut the steps 0..num_steps-1 into stretches of jump_length. Walk each stretch down once;
    a full stretch that does not end the run is then walked back up and down again jump_n_sample - 1 more times.
    (A different derivation from the package's step-by-step loop, so the check compares two independent answers.)"""
    if not jump_length:
        return [("down", i) for i in range(num_steps)]
    moves = []
    for start in range(0, num_steps, jump_length):
        stretch = list(range(start, min(start + jump_length, num_steps)))
        down = [("down", i) for i in stretch]
        moves += down
        if len(stretch) == jump_length and stretch[-1] + 1 < num_steps:
            moves += ([("up", i) for i in reversed(stretch)] + down) * (jump_n_sample - 1)
    return moves


def my_tiled_decode(decode, z, tile):
    """Decode tile x tile latent blocks on their own and paste them (no overlap: the seams show)."""
    rows = []
    for y in range(0, z.shape[-2], tile):
        rows.append(torch.cat([decode(z[..., y : y + tile, x : x + tile]) for x in range(0, z.shape[-1], tile)], -1))
    return torch.cat(rows, -2)
