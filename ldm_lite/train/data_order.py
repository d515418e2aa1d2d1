"""Which samples each training step sees, and the random generators a checkpoint saves: together they make
a run a pure function of its seed, so that a resumed run is bit-identical to an uninterrupted one.

Data order
----------
The trainer draws the indices itself: epoch ``e`` is a permutation of the dataset from a generator
seeded by ``(seed, e)``, and step ``s`` takes the slice at its position in that epoch. The batch of a
step is therefore a pure function of ``(seed, step)``, whatever happened before, and resuming at
step ``s`` is just starting a ``DataLoader`` over a batch sampler that begins at ``s``. With
``num_workers > 0`` each worker reseeds python/numpy/torch from ``(seed, rank, step)`` before
loading a batch, so random augmentation in a dataset is reproducible too (with ``num_workers=0`` it
draws from the main process's generators, which checkpoints save and restore).

Under DDP one step's global batch is ``batch_size * world_size`` samples and rank ``r`` takes its ``r``-th
contiguous part (see :mod:`ldm_lite.train.distributed`).

Random generators
-----------------
A fresh run seeds python / numpy / torch with ``seed + rank``. Each checkpoint's ``rng.json`` holds every
rank's generator states (python, numpy, torch CPU, CUDA) as JSON, and resuming restores them.
"""

from __future__ import annotations

import math
import random
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler


# --------------------------------------------------------------------------------------------------
# Data: indices as a pure function of (seed, step)
# --------------------------------------------------------------------------------------------------
def _mix_seed(*values: int) -> int:
    """A well-mixed 63-bit seed from several integers (numpy's SeedSequence hash)."""
    words = np.random.SeedSequence([int(v) for v in values]).generate_state(2, dtype=np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])


class _StepBatchSampler(Sampler):
    """Yields, for each step from ``start`` to ``stop``, this rank's indices as ``(step, index)`` pairs.

    Epoch ``e`` is ``randperm(n)`` from a generator seeded by ``(seed, e)``; with a global batch of
    ``g = batch_size * world`` there are ``n // g`` steps per epoch (``ceil(n / g)`` without
    ``drop_last``, the last batch being smaller) and step ``s`` takes the ``s % steps_per_epoch``-th
    slice of ``g`` indices, of which rank ``r`` keeps ``[r * batch_size, (r + 1) * batch_size)``.
    """

    def __init__(self, n, batch_size, seed, start, stop, drop_last=True, rank=0, world=1):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.start, self.stop, self.drop_last = start, stop, drop_last
        self.rank, self.world = rank, world
        g = batch_size * world
        self.global_batch = g
        self.steps_per_epoch = n // g if drop_last else math.ceil(n / g)
        self._epoch, self._perm = None, None

    def permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(_mix_seed(self.seed, epoch))
            self._epoch, self._perm = epoch, torch.randperm(self.n, generator=gen)
        return self._perm

    def global_indices(self, step: int) -> list[int]:
        """The whole global batch of ``step`` (all ranks' parts, in rank order)."""
        epoch, pos = divmod(step, self.steps_per_epoch)
        return self.permutation(epoch)[pos * self.global_batch : (pos + 1) * self.global_batch].tolist()

    def indices(self, step: int) -> list[int]:
        """This rank's part of the global batch of ``step``."""
        return self.global_indices(step)[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start, self.stop):
            yield [(step, i) for i in self.indices(step)]

    def __len__(self) -> int:
        return max(0, self.stop - self.start)


class _StepDataset(torch.utils.data.Dataset):
    """Wraps the user's dataset; keys are ``(step, index)``. In a worker, reseeds per step."""

    def __init__(self, dataset, seed: int, rank: int):
        self.dataset, self.seed, self.rank = dataset, seed, rank

    def __len__(self):
        return len(self.dataset)

    def _maybe_reseed(self, step: int):
        if torch.utils.data.get_worker_info() is not None:  # never touch the main process's RNG
            s = _mix_seed(self.seed, self.rank, step, 0x5EED)
            torch.manual_seed(s)
            random.seed(s)
            np.random.seed(s % 2**32)

    def __getitem__(self, key):
        step, index = key
        self._maybe_reseed(step)
        return self.dataset[index]

    def __getitems__(self, keys):
        self._maybe_reseed(keys[0][0])
        indices = [i for _, i in keys]
        getitems = getattr(self.dataset, "__getitems__", None)
        if getitems is not None:
            return getitems(indices)
        return [self.dataset[i] for i in indices]


# --------------------------------------------------------------------------------------------------
# Random generator states (python, numpy, torch CPU, CUDA), as plain objects and as JSON
# --------------------------------------------------------------------------------------------------
def _get_rng() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"][: torch.cuda.device_count()]
        for i, s in enumerate(cuda):
            torch.cuda.set_rng_state(s, i)


def _rng_to_json(state: dict) -> dict:
    version, internal, gauss = state["python"]
    name, keys, pos, has_gauss, cached = state["numpy"]
    out = {
        "python": [version, list(internal), gauss],
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": state["torch"].tolist(),
    }
    if "cuda" in state:
        out["cuda"] = [s.tolist() for s in state["cuda"]]
    return out


def _rng_from_json(js: dict) -> dict:
    version, internal, gauss = js["python"]
    name, keys, pos, has_gauss, cached = js["numpy"]
    state = {
        "python": (version, tuple(internal), gauss),
        "numpy": (name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached),
        "torch": torch.tensor(js["torch"], dtype=torch.uint8),
    }
    if "cuda" in js:
        state["cuda"] = [torch.tensor(s, dtype=torch.uint8) for s in js["cuda"]]
    return state


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device
