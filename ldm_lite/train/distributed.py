"""Several GPUs with DistributedDataParallel (DDP): which process this is, starting the process group, and the
wrapper through which DDP sees ``training_step``.

Distributed data parallel (DDP)
-------------------------------
Launched with ``torchrun --nproc_per_node N`` (environment ``WORLD_SIZE > 1``) or with
``TrainConfig(ddp=True)``, the trainer initialises the process group if needed (NCCL on CUDA, gloo on
the CPU), puts rank ``r`` on ``cuda:LOCAL_RANK`` and wraps the module in
``DistributedDataParallel``. **``batch_size`` is per rank**: one optimisation step consumes a global
batch of ``batch_size * world_size`` samples (the slice of the epoch permutation a single process with
that batch size would take), rank ``r`` gets its ``r``-th contiguous part. Each rank's loss is the mean
over its part and DDP averages gradients, so N ranks compute the same update as one process with the
global batch. To keep a recipe's global batch when going from 1 to N GPUs, divide ``batch_size`` by N.
``training_step`` runs *through* the DDP wrapper (a tiny wrapper module whose ``forward`` calls
``training_step``), which is how DDP's hooks see the backward pass and all-reduce the gradients.
Modules whose losses leave some parameters without gradient in a step -- the GAN (the discriminator
loss never reaches the autoencoder, the autoencoder loss skips the discriminator before
``disc_start``) -- need ``TrainConfig(find_unused_parameters=True)``. Only rank 0 writes checkpoints
and shows progress; every rank keeps its own random generators (seeded ``seed + rank``), and rank 0
gathers them into ``rng.json``. Logged values are rank 0's. Under DDP, Ctrl-C is not deferred and
saves nothing (ranks would stop at different points): rely on ``ckpt_every``. ``drop_last`` must stay
True. Destroy the process group at the end of your script
(``torch.distributed.destroy_process_group()``) if you like a clean exit.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch import nn

if TYPE_CHECKING:
    from ldm_lite.train.loop import TrainConfig

__all__ = ["is_main_process", "rank", "world_size"]


def world_size() -> int:
    """Number of processes (1 without DDP): the process group's, else torchrun's ``WORLD_SIZE``."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's rank (0 without DDP)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    """True on rank 0: the process that writes checkpoints, shows progress and logs."""
    return rank() == 0


def _init_distributed(config: TrainConfig) -> bool:
    """Start the process group when asked to (torchrun or ``config.ddp``); True when DDP is on."""
    wanted = config.ddp or int(os.environ.get("WORLD_SIZE", "1")) > 1
    if not wanted:
        return False
    if not dist.is_available():
        raise RuntimeError("DDP was requested but this PyTorch build has no torch.distributed")
    if not dist.is_initialized():
        if "MASTER_ADDR" not in os.environ:
            raise RuntimeError(
                "TrainConfig(ddp=True) needs either an initialised process group "
                "(torch.distributed.init_process_group) or a launch with torchrun "
                "(e.g. `torchrun --nproc_per_node 2 train.py`), which sets MASTER_ADDR, RANK, WORLD_SIZE"
            )
        cuda = torch.cuda.is_available() and (config.device is None or str(config.device).startswith("cuda"))
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return True


class _TrainingStepForward(nn.Module):
    """Routes ``forward`` to ``training_step`` so calls go through DDP and its gradient hooks."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, batch, step: int, optimizer_name: str):
        return self.module.training_step(batch, step, optimizer_name)
