"""One Trainer for every model in the course: the autoencoder with its GAN (Sec. 3.1, App. G), the
latent diffusion model (Sec. 3.2, Eq. 2) and the conditional models (Sec. 3.3, Eq. 3).

The paper's code trains with PyTorch Lightning. Here the loop is written out in one readable file:
mixed precision, EMA of the weights, gradient clipping, checkpoints that survive crashes, exact
resume, and DistributedDataParallel for several GPUs.

The module protocol
-------------------
Anything trained here is an ``nn.Module`` with two methods (and up to two optional hooks)::

    class MyModule(nn.Module):
        def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
            # ordered; each optimiser gets its own training_step call per step, in this order
            return {"ae": Adam(ae_params), "disc": Adam(disc_params)}

        def training_step(self, batch, step: int, optimizer_name: str):
            # -> (loss, logs): the loss to back-propagate for that optimiser, or None to skip it
            #    this step (e.g. the discriminator before disc_start), and a dict of scalars to log.
            ...

        # optional
        def ema_module(self) -> nn.Module: ...       # which weights the EMA tracks (default: all)
        def on_train_start(self, first_batch): ...   # once, at the start of a fresh run (not on
                                                     # resume), under torch.no_grad(), with the first
                                                     # global batch (under DDP: all batch_size *
                                                     # world_size samples, on every rank); e.g. estimate
                                                     # scale_factor from it (scale_by_std)

Anything the module keeps in its ``state_dict()`` (parameters and ``register_buffer`` buffers, such
as a ``scale_factor`` estimated in ``on_train_start``) is saved and restored automatically.

``step`` passed to ``training_step`` is the number of optimisation steps completed before this one
(0 for the first batch, like Lightning's ``global_step``). The history and the checkpoint folders count
completed steps: the history entry ``{"step": 1, ...}`` is the result of ``training_step(step=0)``, and
``step_00000100/`` holds the state after 100 steps.

What one step does, per optimiser ``name`` in order: forward ``training_step`` (under autocast),
check the loss is finite, zero that optimiser's gradients, backward (through the fp16 ``GradScaler``
when ``precision="fp16"``), clip the global gradient norm of that optimiser's parameters (logged as
``grad_norm/<name>``), ``optimizer.step()``. After all optimisers: update the EMA. Logged per step:
the module's scalars, ``loss/<name>``, ``grad_norm/<name>`` (when clipping), ``lr/<name>``.

Data order
----------
The trainer draws the indices itself: epoch ``e`` is a permutation of the dataset from a generator
seeded by ``(seed, e)``, and step ``s`` takes the slice at its position in that epoch. The batch of a
step is therefore a pure function of ``(seed, step)``, whatever happened before, and resuming at
step ``s`` is just starting a ``DataLoader`` over a batch sampler that begins at ``s``. With
``num_workers > 0`` each worker reseeds python/numpy/torch from ``(seed, rank, step)`` before
loading a batch, so random augmentation in a dataset is reproducible too (with ``num_workers=0`` it
draws from the main process's generators, which checkpoints save and restore).

Checkpoints
-----------
Written every ``ckpt_every`` steps, at the end of ``fit`` and on ``KeyboardInterrupt``::

    out_dir/
      latest.json                    {"step": 100, "checkpoint": "checkpoints/step_00000100"}
      checkpoints/
        step_00000100/
          model.safetensors          module.state_dict(): parameters and buffers
          ema.safetensors            EMA of the ema_module()'s trainable parameters (if ema_decay)
          optim.pt                   optimiser + GradScaler states (torch.save; read weights_only=True)
          rng.json                   python / numpy / torch CPU / CUDA generator states, one per rank
          trainer.json               step, config, world size, optimiser names and hyper-parameters,
                                     dataset length, the caller's recipe and command, history tail,
                                     and the sha256 of every other file in the folder

Writes are atomic: a checkpoint is written into a temporary folder which is then renamed to
``step_XXXXXXXX``, and ``latest.json`` is replaced (write temp + ``os.replace``) only after that. A
crash while writing (even ``kill -9``) leaves the previous checkpoint and pointer untouched. The last
``keep_last`` checkpoints are kept. Weights containing NaN or inf are never saved (the run stops with
:class:`NonFiniteLossError`). Nothing is ever unpickled when loading: tensors come from safetensors and
``torch.load(weights_only=True)``, the rest from JSON. Every file is checked against its recorded
sha256 and every load error names the file and the previous checkpoint to use instead
(:class:`CheckpointError`); a checkpoint with NaN / inf weights is refused.

One process trains in an ``out_dir`` at a time: ``fit`` holds the lock file ``out_dir/run.lock`` (the
owner's pid, host and process start time; taken with ``O_CREAT | O_EXCL``, removed when ``fit`` returns
or raises). A second process on the same folder gets :class:`RunLockedError` naming the pid, before it
trains; a lock left by a process that no longer runs (``kill -9``, a power cut) is taken over. Temporary
folders are named ``.tmp-<step>-<pid>``, and a save removes only those whose process is gone.

Resuming (``fit(resume=True)``, or a path) restores weights, EMA, optimisers, scaler, random
generators, step and history, so on the CPU a resumed run is bit-identical to an uninterrupted one.
It first compares the saved run with the present one: a changed learning rate (or other optimiser
hyper-parameter), batch size, seed, ``drop_last`` or dataset length, or ``max_steps`` below the steps
already done, raises :class:`ResumeMismatchError` naming each field with its old and new value (the
optimiser state would silently overwrite a new learning rate, and the data order would change);
``fit(resume=..., allow_changes=True)`` continues with the new values knowingly. Harmless or
deliberate changes -- a longer ``max_steps``, the learning-rate schedule, EMA, clipping, precision,
fields of the caller's recipe -- are reported in one warning. Callbacks run with the generators
forked (their random draws, e.g. sampling preview images, do not change training).

Interrupts and failures
-----------------------
Ctrl-C (SIGINT) during ``fit`` in a single process is deferred to the end of the current step; the
trainer then saves a checkpoint of that consistent state and re-raises ``KeyboardInterrupt``. A
second Ctrl-C stops at once (a checkpoint is still saved if no optimiser had stepped yet in the
interrupted step). A non-finite loss or gradient norm raises :class:`NonFiniteLossError` naming the
step, the optimiser, the logged values and the last good checkpoint, which is left as it is.

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

import contextlib
import dataclasses
import json
import math
import os
import random
import shutil
import signal
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import safetensors.torch
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Sampler

from ldm_lite.io import atomic_write, check_writable_dir, sha256_file, shown_path
from ldm_lite.progress import progress as tqdm

__all__ = [
    "TrainConfig",
    "Trainer",
    "NonFiniteLossError",
    "CheckpointError",
    "ResumeMismatchError",
    "RunLockedError",
    "is_main_process",
    "rank",
    "world_size",
]

CHECKPOINT_FORMAT = "ldm_lite.train/1"
HISTORY_TAIL = 1000  # history entries stored in each checkpoint's trainer.json
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


# --------------------------------------------------------------------------------------------------
# Configuration and errors
# --------------------------------------------------------------------------------------------------
@dataclass
class TrainConfig:
    """Everything the loop needs; the model's own hyper-parameters live in the module.

    ``precision``: ``"auto"`` is bf16 autocast on CUDA when the GPU supports it, fp32 elsewhere;
    ``"bf16"`` works on the CPU too (slow, for testing); ``"fp16"`` adds a ``GradScaler``.
    ``ema_decay``: e.g. 0.9999; the EMA copies the weights for the first ``ema_start`` steps and
    then follows ``ema = decay * ema + (1 - decay) * weights`` after every step. With ``ema_warmup``
    (default, as CompVis' ``LitEma``) the n-th update uses ``min(ema_decay, (1 + n) / (10 + n))``, so
    a short run's EMA is not dominated by its random initial weights (plain 0.999 still keeps 55 %
    of the initial weights after 600 steps).
    ``lr_warmup_steps``: linear warm-up of every optimiser's learning rate from ``lr / n`` to ``lr``.
    ``lr_schedule``: ``"constant"`` or ``"cosine"`` (decay from ``lr`` at step 0 to ``lr_min_ratio * lr``
    at ``max_steps``; a pure function of the step, so it may also be switched on when resuming).
    ``ckpt_every`` needs ``out_dir``; with ``out_dir`` alone a checkpoint is written at the end.
    ``batch_size`` is per rank under DDP (see the module docstring).
    """

    max_steps: int
    batch_size: int
    seed: int = 0
    grad_clip: float | None = 1.0
    ema_decay: float | None = None
    ema_start: int = 0
    ema_warmup: bool = True
    precision: str = "auto"
    log_every: int = 10
    ckpt_every: int | None = None
    out_dir: str | None = None
    keep_last: int = 2
    num_workers: int = 0
    progress: bool = True
    drop_last: bool = True
    lr_warmup_steps: int = 0
    lr_schedule: str = "constant"
    lr_min_ratio: float = 0.1
    device: str | None = None  # None: ldm_lite.config.device() (cuda:LOCAL_RANK under DDP)
    ddp: bool = False  # force DDP (torchrun's WORLD_SIZE > 1 turns it on by itself)
    find_unused_parameters: bool = False  # DDP: True for the GAN (see module docstring)

    def __post_init__(self):
        def need(cond, msg):
            if not cond:
                raise ValueError(f"TrainConfig: {msg}")

        need(isinstance(self.max_steps, int) and self.max_steps >= 0, f"max_steps must be an int >= 0, got {self.max_steps!r}")
        need(isinstance(self.batch_size, int) and self.batch_size >= 1, f"batch_size must be an int >= 1, got {self.batch_size!r}")
        need(isinstance(self.seed, int) and self.seed >= 0, f"seed must be an int >= 0, got {self.seed!r}")
        need(self.grad_clip is None or self.grad_clip > 0, f"grad_clip must be > 0 or None, got {self.grad_clip!r}")
        need(self.ema_decay is None or 0.0 <= self.ema_decay < 1.0, f"ema_decay must be in [0, 1) or None, got {self.ema_decay!r}")
        need(self.ema_start >= 0, f"ema_start must be >= 0, got {self.ema_start!r}")
        need(self.precision in PRECISIONS, f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        need(self.log_every >= 1, f"log_every must be >= 1, got {self.log_every!r}")
        need(self.keep_last >= 1, f"keep_last must be >= 1, got {self.keep_last!r}")
        need(self.num_workers >= 0, f"num_workers must be >= 0, got {self.num_workers!r}")
        need(self.lr_warmup_steps >= 0, f"lr_warmup_steps must be >= 0, got {self.lr_warmup_steps!r}")
        need(self.lr_schedule in ("constant", "cosine"), f"lr_schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}")
        need(0.0 <= self.lr_min_ratio <= 1.0, f"lr_min_ratio must be in [0, 1], got {self.lr_min_ratio!r}")
        need(self.ckpt_every is None or self.ckpt_every >= 1, f"ckpt_every must be >= 1 or None, got {self.ckpt_every!r}")
        need(
            self.ckpt_every is None or self.out_dir is not None,
            f"ckpt_every={self.ckpt_every} needs out_dir (where should the checkpoints go?); "
            "set out_dir='runs/my_run' or ckpt_every=None",
        )


class NonFiniteLossError(FloatingPointError):
    """A loss, gradient norm or weight became NaN or infinite; training stopped without saving."""

    def __init__(self, message: str, step: int | None = None, optimizer_name: str | None = None,
                 logs: dict | None = None, checkpoint: str | None = None):
        super().__init__(message)
        self.step = step
        self.optimizer_name = optimizer_name
        self.logs = logs
        self.checkpoint = checkpoint


class CheckpointError(ValueError):
    """A checkpoint file (or ``latest.json``) is missing, unreadable, corrupt or truncated, fails the sha256
    recorded when it was saved, or holds NaN / inf weights. ``path`` names the file; the message says
    which earlier checkpoint to use instead."""

    def __init__(self, message: str, path: str | os.PathLike | None = None):
        super().__init__(message)
        self.path = None if path is None else str(path)


class ResumeMismatchError(ValueError):
    """``fit(resume=...)`` with settings that cannot continue the saved run as it was (see the module
    docstring). ``changes``: ``(field, saved value, present value)`` for each difference."""

    def __init__(self, message: str, changes: list[tuple[str, object, object]]):
        super().__init__(message)
        self.changes = changes


class RunLockedError(FileExistsError):
    """Another live process holds the run lock of this ``out_dir`` (it is training there right now)."""

    def __init__(self, message: str, pid: int | None = None, host: str | None = None):
        super().__init__(message)
        self.pid, self.host = pid, host


# --------------------------------------------------------------------------------------------------
# One run per out_dir: a lock file with the owner's pid
# --------------------------------------------------------------------------------------------------
LOCK_NAME = "run.lock"
_HELD_LOCKS: dict[str, "RunLock"] = {}  # resolved lock path -> the lock this process holds (re-entrant)


def _host() -> str:
    import socket

    return socket.gethostname()


def _proc_stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (state first), or None where there is none."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode("ascii", "replace")
    except OSError:
        return None
    return data.rsplit(")", 1)[-1].split()


def _process_start(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, from /proc), to tell it from a later process that
    reuses the number; None where /proc is unavailable."""
    fields = _proc_stat(pid)
    return fields[19] if fields is not None and len(fields) > 19 else None


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (a zombie -- exited, not yet reaped -- counts as dead)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    if os.name == "nt":  # os.kill(pid, 0) would send CTRL_C_EVENT there
        import ctypes

        kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined]
        handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return ctypes.get_last_error() == 5  # access denied: it exists
        try:
            code = ctypes.c_ulong()
            kernel32.GetExitCodeProcess(handle, ctypes.byref(code))
            return code.value == 259  # STILL_ACTIVE
        finally:
            kernel32.CloseHandle(handle)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    fields = _proc_stat(pid)
    return not (fields and fields[0] == "Z")


def _read_lock(path: Path) -> dict | None:
    try:
        owner = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) and isinstance(owner.get("pid"), int) else None


def _lock_owner_alive(owner: dict) -> bool:
    """Whether the process that wrote a lock still runs. A lock of another machine counts as alive (its process
    cannot be seen from here); one with this process's own pid that this process does not hold is left from an
    earlier process with the same number (e.g. a restarted container)."""
    if owner.get("host") not in (None, _host()):
        return True
    pid = owner["pid"]
    if pid == os.getpid():
        return False
    if not pid_alive(pid):
        return False
    started, now = owner.get("started_ticks"), _process_start(pid)
    return started is None or now is None or started == now


def _locked_message(out_dir: Path, owner: dict) -> str:
    host = owner.get("host")
    where = "" if host in (None, _host()) else f" on host {host}"
    hint = (f" (if no run is writing there any more, delete {shown_path(out_dir / LOCK_NAME)})" if where else "")
    return (f"another run (pid {owner['pid']}{where}) is writing to out_dir {shown_path(out_dir)}; wait for it to "
            f"finish or choose another out_dir{hint}")


class RunLock:
    """The lock file ``out_dir/run.lock`` (JSON: pid, host, start time of the process) that says one process
    trains in ``out_dir``. Taken atomically (``O_CREAT | O_EXCL``); a lock whose process is dead is taken over;
    re-entrant within a process (``train_ldm`` holds it and its ``Trainer.fit`` takes it again). ``release()``
    removes the file once the outermost holder releases it (also after an exception)."""

    def __init__(self, path: Path, key: str, token: str):
        self.path, self.key, self.token, self.count = path, key, token, 1

    def release(self) -> None:
        self.count -= 1
        if self.count > 0:
            return
        _HELD_LOCKS.pop(self.key, None)
        owner = _read_lock(self.path)
        if owner is not None and owner.get("token") == self.token:
            with contextlib.suppress(OSError):
                os.remove(self.path)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def check_run_lock(out_dir: str | os.PathLike) -> None:
    """Raise :class:`RunLockedError` if another live process holds ``out_dir``'s run lock (reads only)."""
    out_dir = Path(out_dir)
    path = out_dir / LOCK_NAME
    if not path.is_file() or str(path.resolve()) in _HELD_LOCKS:
        return
    owner = _read_lock(path)
    if owner is not None and _lock_owner_alive(owner):
        raise RunLockedError(_locked_message(out_dir, owner), owner["pid"], owner.get("host"))


def acquire_run_lock(out_dir: str | os.PathLike) -> RunLock:
    """Take ``out_dir``'s run lock (the folder must exist) or raise :class:`RunLockedError` naming the pid
    of the live process that holds it. A lock left by a dead process is taken over."""
    import time
    import uuid

    out_dir = Path(out_dir)
    path = out_dir / LOCK_NAME
    key = str(path.resolve())
    held = _HELD_LOCKS.get(key)
    if held is not None:
        held.count += 1
        return held
    token = uuid.uuid4().hex
    record = {"pid": os.getpid(), "host": _host(), "started_ticks": _process_start(os.getpid()), "token": token}
    for _ in range(200):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = _read_lock(path)
            if owner is None:  # being written this instant, or left empty by a crash right after creating it
                try:
                    age = time.time() - path.stat().st_mtime
                except FileNotFoundError:
                    continue
                if age < 5:
                    time.sleep(0.05)
                    continue
            elif _lock_owner_alive(owner):
                raise RunLockedError(_locked_message(out_dir, owner), owner["pid"], owner.get("host")) from None
            # a dead process's lock: move it aside under a unique name (only one taker can), then check that
            # what was moved is the dead lock and not one a faster taker has just written
            aside = path.with_name(f"{LOCK_NAME}.stale-{token}")
            try:
                os.rename(path, aside)
            except FileNotFoundError:
                continue
            moved = _read_lock(aside)
            if moved is not None and (owner is None or moved.get("token") != owner.get("token")):
                with contextlib.suppress(OSError):  # not the lock judged dead: put it back (unless taken anew)
                    os.link(aside, path)
            with contextlib.suppress(OSError):
                os.remove(aside)
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(record, f)
            f.flush()
            os.fsync(f.fileno())
        lock = RunLock(path, key, token)
        _HELD_LOCKS[key] = lock
        return lock
    raise RunLockedError(f"could not take the lock {shown_path(path)} of out_dir {shown_path(out_dir)}; is another "
                         "run starting there? Choose another out_dir")


def _temp_owner_dead(name: str) -> bool:
    """``.tmp-<what>-<pid>`` folders carry the pid of the process writing them: True when that process is gone
    (or is this one, which is not writing it now). Names without a pid are left alone."""
    tail = name.rsplit("-", 1)[-1]
    if not tail.isdigit():
        return False
    pid = int(tail)
    return pid == os.getpid() or not pid_alive(pid)


# --------------------------------------------------------------------------------------------------
# Distributed helpers
# --------------------------------------------------------------------------------------------------
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


def _to_device(batch, device: torch.device, non_blocking: bool = False):
    """Move every tensor in a (nested) dict / list / tuple batch to ``device``."""
    if torch.is_tensor(batch):
        return batch.to(device, non_blocking=non_blocking)
    if isinstance(batch, dict):
        return {k: _to_device(v, device, non_blocking) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        return type(batch)(*(_to_device(v, device, non_blocking) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device, non_blocking) for v in batch)
    return batch


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


# --------------------------------------------------------------------------------------------------
# Atomic file helpers
# --------------------------------------------------------------------------------------------------
def _fsync_path(path: Path) -> None:
    """Flush a file (or folder entry) to disk so a rename after it cannot expose a half-written file."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_json(path: Path, obj, indent: int | None = 1) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=indent)
        f.flush()
        os.fsync(f.fileno())


def _atomic_write_json(path: Path, obj) -> None:
    atomic_write(path, lambda tmp: _write_json(Path(tmp), obj), fsync=True)


def _save_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict | None = None) -> None:
    # Own CPU, contiguous copies: safetensors refuses tensors sharing memory (tied weights, views).
    own = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}
    safetensors.torch.save_file(own, str(path), metadata={k: str(v) for k, v in (metadata or {}).items()})
    _fsync_path(path)


def _ckpt_name(step: int) -> str:
    return f"step_{step:08d}"


def _step_of(folder: Path) -> int | None:
    try:
        return int(folder.name[len("step_"):]) if folder.name.startswith("step_") else None
    except ValueError:
        return None


def _complete_checkpoints(ckdir: Path, below: int | None = None) -> list[tuple[int, Path]]:
    """``(step, folder)`` of the complete checkpoints in ``ckdir`` (before step ``below``), oldest first."""
    found = []
    for d in ckdir.glob("step_*") if ckdir.is_dir() else ():
        s = _step_of(d)
        if s is not None and (below is None or s < below) and (d / "trainer.json").is_file() \
                and (d / "model.safetensors").is_file():
            found.append((s, d))
    return sorted(found)


def _fallback_hint(ckdir: Path, below: int | None = None) -> str:
    """What to do when a checkpoint cannot be used: the newest complete one before it, or a fresh run."""
    earlier = _complete_checkpoints(ckdir, below)
    if earlier:
        s, d = earlier[-1]
        which = "the newest complete checkpoint" if below is None else "the previous checkpoint"
        return (f"resume from {which}, step {s}: pass --resume {shown_path(d)} "
                f"(in Python fit(resume={str(d)!r}))")
    return (f"no earlier complete checkpoint is left in {shown_path(ckdir)}; start again in a new --out folder "
            "(or delete this run folder)")


def _read_json(path: Path, hint: str):
    """``json.load`` whose errors name the file and say what to do (``hint``)."""
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"{shown_path(path)} is missing; {hint}", path) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{shown_path(path)} is corrupt or truncated (not valid JSON: {err}); {hint}",
                              path) from err
    except OSError as err:
        raise CheckpointError(f"cannot read {shown_path(path)} ({err.strerror or err}); {hint}", path) from err


def _load_safetensors(path: Path, hint: str) -> dict[str, torch.Tensor]:
    """``safetensors.torch.load_file`` whose errors (missing, truncated, corrupt header) name the file."""
    try:
        return safetensors.torch.load_file(str(path))
    except FileNotFoundError:
        raise CheckpointError(f"{shown_path(path)} is missing; {hint}", path) from None
    except Exception as err:  # SafetensorError (truncated / corrupt header), OSError
        raise CheckpointError(f"{shown_path(path)} is corrupt or truncated and cannot be read ({err}); {hint}",
                              path) from err


def _torch_load(path: Path, hint: str):
    """``torch.load(weights_only=True)`` (never unpickles code) whose errors name the file."""
    import pickle

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{shown_path(path)} is missing; {hint}", path) from None
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{shown_path(path)} holds pickled objects other than tensors and plain containers, which are never "
            f"unpickled here (it was not written by this trainer, or was tampered with): {err}; {hint}", path
        ) from err
    except Exception as err:  # zipfile / "PytorchStreamReader failed", EOFError: truncated or corrupt
        raise CheckpointError(f"{shown_path(path)} is corrupt or truncated and cannot be read ({err}); {hint}",
                              path) from err


def _verify_files(folder: Path, state: dict, names: Iterable[str], hint: str) -> None:
    """Check ``names`` in ``folder`` against the sha256 recorded in its trainer.json (older checkpoints
    without the record are not checked)."""
    recorded = state.get("files") or {}
    for name in names:
        want = recorded.get(name)
        if want is None:
            continue
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"{shown_path(path)} is missing (trainer.json lists it); {hint}", path)
        got = sha256_file(path)
        if got != want:
            raise CheckpointError(
                f"{shown_path(path)} does not match the sha256 recorded when it was saved (recorded {want[:16]}..., "
                f"file {got[:16]}...): it is corrupt or was changed since; {hint}", path
            )


def _nonfinite(tensors: dict) -> list[str]:
    """Names of the floating tensors holding NaN or inf."""
    return [k for k, v in tensors.items()
            if torch.is_tensor(v) and v.is_floating_point() and not bool(torch.isfinite(v).all())]


def _resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint folder from a checkpoint folder, an ``out_dir`` (via latest.json) or a file in it."""
    p = Path(path)
    if p.is_file():
        p = p.parent
    if (p / "trainer.json").is_file() and (p / "model.safetensors").is_file():
        return p
    latest = p / "latest.json"
    if latest.is_file():
        hint = _fallback_hint(p / "checkpoints")
        pointer = _read_json(latest, hint)
        rel = pointer.get("checkpoint") if isinstance(pointer, dict) else None
        if not isinstance(rel, str):
            raise CheckpointError(f"{shown_path(latest)} is corrupt (no \"checkpoint\" entry: {pointer!r}); {hint}",
                                  latest)
        ckpt = p / rel
        if not (ckpt / "trainer.json").is_file():
            raise CheckpointError(f"{shown_path(latest)} points to {shown_path(ckpt)}, which is not a complete "
                                  f"checkpoint folder; {_fallback_hint(p / 'checkpoints', _step_of(ckpt))}", latest)
        return ckpt
    raise FileNotFoundError(
        f"no checkpoint found in {p.resolve()}: expected a checkpoint folder (with trainer.json and "
        f"model.safetensors) or an out_dir with latest.json"
    )


_HPARAMS = ("lr", "betas", "eps", "weight_decay", "momentum", "dampening", "nesterov", "amsgrad", "alpha", "lr_decay")


def _optimizer_hparams(optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, list[dict]]:
    """Per optimiser and parameter group, the hyper-parameters a checkpoint's optimiser state would restore
    (``lr`` is the base rate before warm-up / schedule). JSON-ready."""
    def plain(v):
        v = v.item() if torch.is_tensor(v) else v
        return list(v) if isinstance(v, tuple) else v

    out = {}
    for name, opt in optimizers.items():
        out[name] = [{k: plain(g.get("initial_lr", g["lr"]) if k == "lr" else g[k]) for k in _HPARAMS if k in g}
                     for g in opt.param_groups]
    return out


def _jsonable(obj):
    """``obj`` as JSON would give it back (tuples -> lists; anything unusual -> its repr)."""
    return json.loads(json.dumps(obj, default=repr))


def _state_dict_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    sd = module.state_dict()
    bad = [k for k, v in sd.items() if not torch.is_tensor(v)]
    if bad:
        raise TypeError(f"state_dict entries that are not tensors cannot go into safetensors: {bad}")
    return sd


# --------------------------------------------------------------------------------------------------
# Ctrl-C: finish the step, save, then stop
# --------------------------------------------------------------------------------------------------
class _DeferSigint:
    """While active (main thread only), the first SIGINT only sets ``requested``; a second one raises."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.requested = False
        self._old = None

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nInterrupt: finishing this step and saving a checkpoint (press again to stop at once).", flush=True)

    def __enter__(self):
        if self.enabled and threading.current_thread() is threading.main_thread():
            try:
                self._old = signal.signal(signal.SIGINT, self._handler)
            except ValueError:  # not allowed here (e.g. embedded interpreter)
                self._old = None
        return self

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
            self._old = None
        return False


# --------------------------------------------------------------------------------------------------
# The trainer
# --------------------------------------------------------------------------------------------------
class Trainer:
    """Train a module that follows the protocol in the module docstring.

    ``callbacks``: callables ``fn(trainer, logs)`` called on every rank after each completed step
    (after the EMA update and any checkpoint), with the generators forked so their random draws do
    not change training. ``logs`` is that step's history entry (it includes ``"step"``).
    ``recipe`` (a JSON-able dict, e.g. an experiment recipe's fields) and ``command`` (how the run was
    started) are stored in every checkpoint's trainer.json; on resume, changed recipe fields are reported.
    """

    def __init__(
        self,
        module: nn.Module,
        dataset,
        config: TrainConfig,
        collate_fn: Callable | None = None,
        callbacks: Iterable[Callable[["Trainer", dict], None]] = (),
        recipe: dict | None = None,
        command: str | None = None,
    ):
        for method in ("configure_optimizers", "training_step"):
            if not callable(getattr(module, method, None)):
                raise TypeError(
                    f"{type(module).__name__} has no {method}() method; a module trained by Trainer must "
                    "define configure_optimizers() -> dict[str, Optimizer] and "
                    "training_step(batch, step, optimizer_name) -> (loss | None, logs) "
                    "(see the ldm_lite.train docstring)"
                )
        if not hasattr(dataset, "__len__") or isinstance(dataset, torch.utils.data.IterableDataset):
            raise TypeError("Trainer needs a map-style dataset with __len__ and __getitem__ (not an IterableDataset)")
        self.config = config
        self.module = module
        self.dataset = dataset
        self.collate_fn = collate_fn
        self.callbacks = list(callbacks)
        self.recipe = None if recipe is None else _jsonable(dict(recipe))
        self.command = command

        self.distributed = _init_distributed(config)
        self.rank = rank() if self.distributed else 0
        self.world_size = world_size() if self.distributed else 1
        if self.distributed and not config.drop_last:
            raise ValueError("DDP needs drop_last=True (every rank must get an equal, non-empty part of each batch)")

        n, g = len(dataset), config.batch_size * self.world_size
        if n == 0 or (config.drop_last and n < g):
            what = f"batch_size {config.batch_size}" + (f" x world_size {self.world_size}" if self.world_size > 1 else "")
            raise ValueError(
                f"the dataset has {n} samples, fewer than one batch ({what} = {g}) with drop_last=True; "
                "use a smaller batch_size, a larger dataset, or drop_last=False"
            )

        self.device = self._pick_device()
        self.module.to(self.device)
        optimizers = module.configure_optimizers()
        if not isinstance(optimizers, dict) or not optimizers or not all(
            isinstance(o, torch.optim.Optimizer) for o in optimizers.values()
        ):
            raise TypeError(
                f"{type(module).__name__}.configure_optimizers() must return a non-empty dict "
                f"{{name: torch.optim.Optimizer}}, got {type(optimizers).__name__}"
            )
        self.optimizers: dict[str, torch.optim.Optimizer] = dict(optimizers)

        self.precision = self._pick_precision()
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

        if self.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp_model = DistributedDataParallel(
                _TrainingStepForward(module), device_ids=ids, find_unused_parameters=config.find_unused_parameters
            )
            self._forward = self.ddp_model
        else:
            self.ddp_model = None
            self._forward = module.training_step

        target = module.ema_module() if callable(getattr(module, "ema_module", None)) else module
        self._ema_params = {n: p for n, p in target.named_parameters() if p.requires_grad}
        self.ema_state: dict[str, torch.Tensor] | None = None
        if config.ema_decay is not None:  # kept in fp32 even for low-precision weights
            self.ema_state = {n: p.detach().float().clone() for n, p in self._ema_params.items()}

        self.step = 0
        self.history: list[dict] = []
        self.last_checkpoint: str | None = None
        self._last_saved_step: int | None = None
        self._started = False  # on_train_start has run (or the state came from a checkpoint)
        self._boundary_rng: dict | None = None  # generator states at the end of the last completed step
        self._in_step = False
        self._stepped_in_step = False

    # ---------------------------------------------------------------- setup helpers
    def _pick_device(self) -> torch.device:
        if self.config.device is not None:
            dev = torch.device(self.config.device)
        elif self.distributed and torch.cuda.is_available():
            dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        else:
            from ldm_lite.config import device as default_device

            dev = default_device()
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        return dev

    def _pick_precision(self) -> str:
        p = self.config.precision
        if p == "auto":
            return "bf16" if self.device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
        return p

    def _autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ---------------------------------------------------------------- public API
    def fit(self, resume: bool | str | os.PathLike = False, allow_changes: bool = False) -> list[dict]:
        """Train until ``config.max_steps`` completed steps; return the history (one dict per step).

        ``resume=True`` continues from ``config.out_dir``'s latest checkpoint; a path continues from
        that checkpoint folder (or out_dir). After a resume the history holds the checkpoint's last
        ``HISTORY_TAIL`` entries, then the new ones. Without ``resume`` a trainer that has not
        trained yet starts fresh (seeding python/numpy/torch with ``seed + rank``), and one that
        has (a second ``fit`` with a larger ``max_steps``) continues in memory. The module is put in
        train mode (``module.train()``) before the first step and after the callbacks of every
        step; a module with frozen parts keeps them in eval mode by overriding ``train()``, as the
        LDM does with its first stage.

        Before resuming, the saved run's settings are compared with the present ones (see the module
        docstring): changes that break an exact continuation raise :class:`ResumeMismatchError` unless
        ``allow_changes=True``, which continues with the new learning rate / batch size / data knowingly.
        Before the first step, ``out_dir`` is created and proven writable, and its run lock
        (``out_dir/run.lock``) is taken until ``fit`` returns or raises: another process training into the
        same ``out_dir`` meanwhile gets :class:`RunLockedError` naming this one's pid.
        """
        cfg = self.config
        self._lock = None
        try:
            if cfg.out_dir is not None and self.is_main and Path(cfg.out_dir).is_dir():
                self._lock = acquire_run_lock(cfg.out_dir)
            return self._fit(resume, allow_changes)
        finally:
            if self._lock is not None:
                self._lock.release()
                self._lock = None

    def _fit(self, resume: bool | str | os.PathLike, allow_changes: bool) -> list[dict]:
        cfg = self.config
        if resume:
            if resume is True:
                if cfg.out_dir is None:
                    raise ValueError("fit(resume=True) needs config.out_dir (or pass the checkpoint path)")
                where = cfg.out_dir
                if not (Path(where) / "latest.json").is_file():
                    raise FileNotFoundError(
                        f"resume=True but no checkpoint found in {Path(where).resolve()} (no latest.json); "
                        "train without resume first, or pass the path of a checkpoint folder"
                    )
            else:
                where = resume
            self._load_checkpoint(_resolve_checkpoint(where), allow_changes=allow_changes)
        elif self.step == 0 and not self._started:
            if cfg.out_dir is not None and (Path(cfg.out_dir) / "latest.json").is_file():
                raise FileExistsError(
                    f"{Path(cfg.out_dir).resolve()} already holds checkpoints (latest.json); pass "
                    "fit(resume=True) to continue that run, or use another out_dir (or delete it) to start fresh"
                )
            _seed_all(cfg.seed + self.rank)
            if self.ema_state is not None:  # the weights may have changed since __init__
                with torch.no_grad():
                    for n, p in self._ema_params.items():
                        self.ema_state[n].copy_(p.detach())

        start = self.step
        if start >= cfg.max_steps:
            return self.history
        if cfg.out_dir is not None and self.is_main:  # found now, not at the first save after hours of training
            check_writable_dir(cfg.out_dir, "out_dir (where the checkpoints go)")
            if self._lock is None:  # the folder was created just now
                self._lock = acquire_run_lock(cfg.out_dir)

        sampler = _StepBatchSampler(
            len(self.dataset), cfg.batch_size, cfg.seed, start, cfg.max_steps, cfg.drop_last, self.rank, self.world_size
        )
        pin = self.device.type == "cuda"
        loader = DataLoader(
            _StepDataset(self.dataset, cfg.seed, self.rank),
            batch_sampler=sampler,
            num_workers=cfg.num_workers,
            collate_fn=self.collate_fn,  # None -> default_collate
            pin_memory=pin,
            generator=torch.Generator().manual_seed(_mix_seed(cfg.seed, start)),  # keeps the global RNG untouched
            persistent_workers=False,
        )
        pbar = tqdm(
            total=cfg.max_steps,
            initial=start,
            desc="train",
            disable=not (cfg.progress and self.is_main),
            dynamic_ncols=True,
        )
        defer = _DeferSigint(enabled=self.world_size == 1)
        it = iter(loader)
        try:
            with defer:
                pending = None
                if not self._started:
                    pending = _to_device(next(it), self.device, pin)
                    self._on_train_start(pending, sampler, pin)
                    self._started = True
                self._boundary_rng = _get_rng()
                self.module.train()
                for s in range(start, cfg.max_steps):
                    batch = pending if pending is not None else _to_device(next(it), self.device, pin)
                    pending = None
                    self._in_step, self._stepped_in_step = True, False
                    logs = self._train_step(batch, s)
                    self._update_ema()
                    self.step = s + 1
                    self._in_step = False
                    entry = {"step": self.step, **logs}
                    self.history.append(entry)
                    self._boundary_rng = _get_rng()

                    pbar.update(1)
                    if self.step % cfg.log_every == 0 or self.step == cfg.max_steps:
                        pbar.set_postfix({k: f"{v:.4g}" for k, v in logs.items() if k.startswith("loss/")}, refresh=False)
                    if cfg.ckpt_every and self.step % cfg.ckpt_every == 0 and self.step < cfg.max_steps:
                        self.save_checkpoint()
                    if self.callbacks:
                        try:
                            for cb in self.callbacks:
                                cb(self, entry)
                        finally:
                            _set_rng(self._boundary_rng)
                            self.module.train()  # a callback may have switched to eval() to sample
                    if defer.requested:
                        raise KeyboardInterrupt
            if cfg.out_dir is not None:
                self.save_checkpoint()
        except KeyboardInterrupt:
            self._save_on_interrupt()
            raise
        finally:
            pbar.close()
            del it  # shuts worker processes down
        return self.history

    def save_checkpoint(self) -> str | None:
        """Write a checkpoint of the current state to ``out_dir``; return its folder.

        Under DDP every rank must call it (the ranks' generator states are gathered); rank 0 writes.
        """
        return self._save(_get_rng())

    @contextlib.contextmanager
    def swap_ema(self):
        """``with trainer.swap_ema(): sample(...)`` -- evaluate with the EMA weights, then put the
        trained weights back."""
        if self.ema_state is None:
            raise RuntimeError("EMA is off for this trainer; set TrainConfig(ema_decay=0.9999) to keep one")
        backup = {n: p.detach().clone() for n, p in self._ema_params.items()}
        with torch.no_grad():
            for n, p in self._ema_params.items():
                p.copy_(self.ema_state[n])
        try:
            yield self.module
        finally:
            with torch.no_grad():
                for n, p in self._ema_params.items():
                    p.copy_(backup[n])

    @staticmethod
    def load_weights(path: str | os.PathLike, module: nn.Module, ema: bool = False, strict: bool = True) -> nn.Module:
        """Load a checkpoint's weights into ``module`` for inference and return it.

        ``path``: a checkpoint folder or an ``out_dir`` (its latest checkpoint): the weights and
        buffers are loaded, then with ``ema=True`` the EMA weights replace those of
        ``module.ema_module()`` (or of the whole module). A single ``.safetensors`` file is loaded as
        it is, into ``module`` (or into ``module.ema_module()`` with ``ema=True``, since an EMA file
        holds only the tracked parameters).
        """
        p = Path(path)
        if p.is_file() and p.suffix == ".safetensors":  # one weights file: load just that
            hint = "use another checkpoint's file, or train / export it again"
            if (p.parent / "trainer.json").is_file():  # a file of a checkpoint folder: check its recorded sha256
                hint = _fallback_hint(p.parent.parent, _step_of(p.parent))
                _verify_files(p.parent, _read_json(p.parent / "trainer.json", hint), [p.name], hint)
            sd = _load_safetensors(p, hint)
            target = module.ema_module() if ema and callable(getattr(module, "ema_module", None)) else module
            _load_into(target, sd, strict=strict and not ema, what=str(p))
            return module
        folder = _resolve_checkpoint(p)
        hint = _fallback_hint(folder.parent, _step_of(folder))
        files = ["model.safetensors"] + (["ema.safetensors"] if ema else [])
        _verify_files(folder, _read_json(folder / "trainer.json", hint), files, hint)
        sd = _load_safetensors(folder / "model.safetensors", hint)
        _load_into(module, sd, strict=strict, what=str(folder / "model.safetensors"))
        if ema:
            ema_file = folder / "ema.safetensors"
            if not ema_file.is_file():
                raise FileNotFoundError(f"{folder} has no ema.safetensors (the run had ema_decay=None)")
            target = module.ema_module() if callable(getattr(module, "ema_module", None)) else module
            _load_into(target, _load_safetensors(ema_file, hint), strict=False, what=str(ema_file))
        return module

    @staticmethod
    def latest_checkpoint(out_dir: str | os.PathLike) -> str | None:
        """The folder of ``out_dir``'s latest checkpoint, or None (``fit(resume=...)`` accepts it); a corrupt
        ``latest.json`` raises :class:`CheckpointError` naming the newest complete checkpoint instead."""
        try:
            return str(_resolve_checkpoint(out_dir))
        except FileNotFoundError:
            return None

    # ---------------------------------------------------------------- one step
    def _train_step(self, batch, s: int) -> dict[str, float]:
        cfg = self.config
        logs: dict[str, float] = {}
        if cfg.lr_warmup_steps or cfg.lr_schedule != "constant":
            factor = min(1.0, (s + 1) / cfg.lr_warmup_steps) if cfg.lr_warmup_steps else 1.0
            if cfg.lr_schedule == "cosine":
                progress = min(1.0, s / max(1, cfg.max_steps))
                factor *= cfg.lr_min_ratio + (1 - cfg.lr_min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
            for opt in self.optimizers.values():
                for group in opt.param_groups:
                    group.setdefault("initial_lr", group["lr"])
                    group["lr"] = group["initial_lr"] * factor
        stepped = False
        for name, opt in self.optimizers.items():
            with self._autocast():
                out = self._forward(batch, s, name)
            if not (isinstance(out, (tuple, list)) and len(out) == 2):
                raise TypeError(
                    f"{type(self.module).__name__}.training_step must return (loss or None, logs dict), "
                    f"got {type(out).__name__}"
                )
            loss, step_logs = out
            for k, v in (step_logs or {}).items():
                logs[k] = v.item() if torch.is_tensor(v) else float(v)
            logs[f"lr/{name}"] = float(opt.param_groups[0]["lr"])
            if loss is None:
                continue
            self._check_finite(loss.detach().float(), s, name, logs, "loss")
            logs[f"loss/{name}"] = float(loss.detach())
            opt.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if cfg.grad_clip is not None:
                self.scaler.unscale_(opt)
                params = [p for g in opt.param_groups for p in g["params"] if p.grad is not None]
                norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip) if params else torch.zeros(())
                logs[f"grad_norm/{name}"] = float(norm)
                if not self.scaler.is_enabled():  # fp16: the scaler skips steps with inf gradients itself
                    self._check_finite(norm.detach().float(), s, name, logs, "gradient norm")
            self.scaler.step(opt)
            self._stepped_in_step = stepped = True
        if stepped:
            self.scaler.update()
        self.module.zero_grad(set_to_none=True)
        return logs

    def _check_finite(self, value: torch.Tensor, s: int, name: str, logs: dict, what: str) -> None:
        ok = torch.isfinite(value).all().to(torch.float32)
        if self.distributed:  # all ranks must agree, or the healthy ones would hang in the next all-reduce
            ok = ok.to(self.device)
            dist.all_reduce(ok, op=dist.ReduceOp.MIN)
        if bool(ok.item()):
            return
        where = self.last_checkpoint or (
            "none written yet" if self.config.out_dir else "none (out_dir=None, nothing is saved)"
        )
        raise NonFiniteLossError(
            f"non-finite {what} ({value.item()}) at step {s + 1} (training_step(step={s})) for optimiser "
            f"{name!r}; logged values: {logs}. Nothing was saved for this step; the last good checkpoint "
            f"is {where}. Try a lower learning rate, grad_clip, or precision='fp32'.",
            step=s + 1,
            optimizer_name=name,
            logs=dict(logs),
            checkpoint=self.last_checkpoint,
        )

    @torch.no_grad()
    def _on_train_start(self, first_batch, sampler: _StepBatchSampler, pin: bool) -> None:
        """Call the module's hook with the first *global* batch. Under DDP every rank loads all
        ``batch_size * world_size`` samples, so the hook sees what a single process would; rank 0's
        resulting state is then broadcast so that random draws in the hook cannot split the ranks."""
        hook = getattr(self.module, "on_train_start", None)
        if not callable(hook):
            return
        if self.distributed:
            collate = self.collate_fn or torch.utils.data.default_collate
            items = [self.dataset[i] for i in sampler.global_indices(self.step)]
            first_batch = _to_device(collate(items), self.device, pin)
        hook(first_batch)
        if self.distributed:
            for t in self.module.state_dict().values():
                dist.broadcast(t, src=0)

    @torch.no_grad()
    def _update_ema(self) -> None:
        if self.ema_state is None:
            return
        completed = self.step + 1  # this step is done (self.step is bumped right after)
        n = completed - self.config.ema_start  # EMA updates so far, this one included
        decay = self.config.ema_decay if n > 0 else 0.0
        if n > 0 and self.config.ema_warmup:  # CompVis LitEma: min(decay, (1 + n) / (10 + n))
            decay = min(decay, (1.0 + n) / (10.0 + n))
        for n, p in self._ema_params.items():
            e = self.ema_state[n]
            if decay == 0.0:
                e.copy_(p.detach())
            else:
                e.mul_(decay).add_(p.detach().to(e.dtype), alpha=1.0 - decay)

    # ---------------------------------------------------------------- checkpoints
    def _save_on_interrupt(self) -> None:
        if self.config.out_dir is None or self.step == 0:
            return
        if self.distributed:
            if self.is_main:
                warnings.warn(f"interrupted under DDP: no checkpoint saved; the last one is {self.last_checkpoint}")
            return
        if self._in_step and self._stepped_in_step:
            warnings.warn(
                f"interrupted in the middle of step {self.step + 1} after an optimiser had stepped; that state "
                f"is not consistent, so nothing was saved. The last checkpoint is {self.last_checkpoint}"
            )
            return
        try:
            path = self._save(self._boundary_rng or _get_rng())
        except NonFiniteLossError as err:
            warnings.warn(f"interrupted, and nothing was saved: {err}")
            return
        print(f"Interrupted: saved step {self.step} to {path}; continue with fit(resume=True)", flush=True)

    def _save(self, rng_state: dict) -> str | None:
        cfg = self.config
        if cfg.out_dir is None:
            raise ValueError("save_checkpoint needs config.out_dir")
        bad = _nonfinite(self.module.state_dict()) + [f"EMA {k}" for k in _nonfinite(self.ema_state or {})]
        if bad:  # every rank holds the same weights, so every rank stops here
            where = self.last_checkpoint or "none written yet"
            raise NonFiniteLossError(
                f"refusing to save a checkpoint at step {self.step}: the weights contain NaN or inf "
                f"({', '.join(bad[:5])}{', ...' if len(bad) > 5 else ''}); nothing was written, and the last good "
                f"checkpoint is {where}. The training diverged: resume from that checkpoint with a lower learning "
                "rate or grad_clip (fit(resume=..., allow_changes=True)), or start again in a new --out folder.",
                step=self.step, checkpoint=self.last_checkpoint,
            )
        rng_js = _rng_to_json(rng_state)
        if self.distributed:
            gathered = [None] * self.world_size
            dist.all_gather_object(gathered, rng_js)
        else:
            gathered = [rng_js]
        root = Path(cfg.out_dir)
        final = root / "checkpoints" / _ckpt_name(self.step)
        if not self.is_main:
            self.last_checkpoint, self._last_saved_step = str(final), self.step
            return str(final)
        if self._last_saved_step == self.step and final.is_dir():
            return str(final)  # this exact state is on disk already

        ckdir = root / "checkpoints"
        ckdir.mkdir(parents=True, exist_ok=True)
        for stale in ckdir.glob(".tmp-*"):  # leftovers of a crash while writing: only of processes that are gone
            if _temp_owner_dead(stale.name):
                shutil.rmtree(stale, ignore_errors=True)
        tmp = ckdir / f".tmp-{_ckpt_name(self.step)}-{os.getpid()}"
        tmp.mkdir()
        meta = {"step": self.step, "format": CHECKPOINT_FORMAT}
        _save_safetensors(_state_dict_tensors(self.module), tmp / "model.safetensors", meta)
        if self.ema_state is not None:
            _save_safetensors(self.ema_state, tmp / "ema.safetensors", {**meta, "ema_decay": cfg.ema_decay})
        with open(tmp / "optim.pt", "wb") as f:
            torch.save(
                {
                    "optimizers": {n: o.state_dict() for n, o in self.optimizers.items()},
                    "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
                },
                f,
            )
            f.flush()
            os.fsync(f.fileno())
        _write_json(tmp / "rng.json", {"world_size": self.world_size, "ranks": gathered}, indent=None)
        files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir())}  # checked when loading
        _write_json(
            tmp / "trainer.json",
            {
                "format": CHECKPOINT_FORMAT,
                "step": self.step,
                "module": type(self.module).__name__,
                "optimizers": list(self.optimizers),
                "optimizer_hparams": _optimizer_hparams(self.optimizers),
                "precision": self.precision,
                "world_size": self.world_size,
                "dataset_len": len(self.dataset),
                "ema": self.ema_state is not None,
                "torch_version": torch.__version__,
                "config": dataclasses.asdict(cfg),
                "recipe": self.recipe,
                "command": self.command,
                "files": files,
                "history": self.history[-HISTORY_TAIL:],
            },
        )
        _fsync_path(tmp)
        if final.exists():  # a folder of an abandoned run at this step: move it aside first
            trash = ckdir / f".tmp-old-{final.name}-{os.getpid()}"
            os.replace(final, trash)
            shutil.rmtree(trash, ignore_errors=True)
        os.replace(tmp, final)
        _fsync_path(ckdir)
        _atomic_write_json(root / "latest.json", {"step": self.step, "checkpoint": f"checkpoints/{final.name}"})
        self.last_checkpoint, self._last_saved_step = str(final), self.step
        self._prune(ckdir)
        return str(final)

    def _prune(self, ckdir: Path) -> None:
        """Keep the newest ``keep_last`` checkpoints up to the current step (later ones belong to an
        abandoned run and are left alone until overwritten)."""
        folders = []
        for d in ckdir.glob("step_*"):
            try:
                step = int(d.name[len("step_") :])
            except ValueError:
                continue
            if step <= self.step:
                folders.append((step, d))
        folders.sort()
        for _, d in folders[: -self.config.keep_last]:
            trash = ckdir / f".tmp-old-{d.name}-{os.getpid()}"  # renamed first: a crash never leaves half a folder
            try:
                os.replace(d, trash)
            except OSError:
                trash = d
            shutil.rmtree(trash, ignore_errors=True)

    def _resume_changes(self, folder: Path, state: dict, new_hparams: dict) -> tuple[list, list]:
        """``(refused, reported)``: lists of ``(field, saved, now)`` between the checkpoint and this trainer."""
        cfg, saved_cfg = self.config, state.get("config", {})
        refused, reported = [], []
        for key in ("batch_size", "seed", "drop_last"):  # the data order is a function of these
            if key in saved_cfg and saved_cfg[key] != getattr(cfg, key):
                refused.append((key, saved_cfg[key], getattr(cfg, key)))
        if "dataset_len" in state and state["dataset_len"] != len(self.dataset):
            refused.append(("dataset length", state["dataset_len"], len(self.dataset)))
        saved_hp = state.get("optimizer_hparams") or {}
        for name, groups in new_hparams.items():
            old_groups = saved_hp.get(name)
            if old_groups is None:
                continue
            if len(old_groups) != len(groups):
                refused.append((f"parameter groups of optimiser {name!r}", len(old_groups), len(groups)))
                continue
            for i, (old, new) in enumerate(zip(old_groups, groups)):
                for k in sorted(set(old) | set(new)):
                    if old.get(k) != new.get(k):
                        where = f"optimiser {name!r}" + (f" group {i}" if len(groups) > 1 else "")
                        refused.append((f"{k} of {where}", old.get(k), new.get(k)))
        done = int(state["step"])
        if cfg.max_steps < done:
            refused.append(("max_steps", f"{done} steps already done", cfg.max_steps))
        elif "max_steps" in saved_cfg and saved_cfg["max_steps"] != cfg.max_steps:
            reported.append(("max_steps", saved_cfg["max_steps"], cfg.max_steps))
        for key in ("lr_schedule", "lr_min_ratio", "lr_warmup_steps", "grad_clip", "ema_decay", "ema_start",
                    "ema_warmup"):
            if key in saved_cfg and saved_cfg[key] != getattr(cfg, key):
                reported.append((key, saved_cfg[key], getattr(cfg, key)))
        if state.get("precision", self.precision) != self.precision:
            reported.append(("precision", state["precision"], self.precision))
        saved_recipe, recipe = state.get("recipe"), self.recipe
        if saved_recipe is not None and recipe is not None:  # fields the trainer does not see by itself
            for k in sorted(set(saved_recipe) | set(recipe)):
                if k in ("steps", "batch_size", "seed", "lr"):  # compared above, as the trainer sees them
                    continue
                if saved_recipe.get(k) != recipe.get(k):
                    reported.append((f"recipe.{k}", saved_recipe.get(k), recipe.get(k)))
        return refused, reported

    def _load_checkpoint(self, folder: Path, allow_changes: bool = False) -> None:
        hint = _fallback_hint(folder.parent, _step_of(folder))
        state = _read_json(folder / "trainer.json", hint)
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            fmt = state.get("format") if isinstance(state, dict) else type(state).__name__
            raise CheckpointError(f"{shown_path(folder)} is not a {CHECKPOINT_FORMAT} checkpoint "
                                  f"(trainer.json format={fmt!r}); {hint}", folder / "trainer.json")
        if state["optimizers"] != list(self.optimizers):
            raise ResumeMismatchError(
                f"{folder} was saved with optimisers {state['optimizers']}, but the module now configures "
                f"{list(self.optimizers)}; build the module as in the saved run (e.g. the same disc_start / "
                "disc_weight), or start again in a new --out folder",
                [("optimizers", state["optimizers"], list(self.optimizers))],
            )
        new_hparams = _optimizer_hparams(self.optimizers)  # before the saved optimiser state replaces them
        refused, reported = self._resume_changes(folder, state, new_hparams)
        if refused and not allow_changes:
            lines = "\n".join(f"  - {k}: saved {old!r}, now {new!r}" for k, old, new in refused)
            steps_note = ""
            if any(k == "max_steps" for k, _, _ in refused):
                steps_note = (f" For max_steps, pass --steps {state['step']} or more (exactly {state['step']} trains "
                              "nothing more: that is how to --export the run).")
            raise ResumeMismatchError(
                f"cannot resume {shown_path(folder)}: these settings differ from the saved run, which therefore "
                f"could not continue as it was:\n{lines}\nRestore the saved values to continue the run exactly, or "
                f"start a new run in a new --out folder.{steps_note} (In Python, "
                "fit(resume=..., allow_changes=True) continues with the new values, knowingly.)",
                refused,
            )
        if reported or refused:
            items = "; ".join(f"{k}: {old!r} -> {new!r}" for k, old, new in refused + reported)
            warnings.warn(f"resuming {shown_path(folder)} with changed settings ({items}); the result will differ "
                          "from continuing the saved run unchanged", stacklevel=4)  # the caller of fit()
        if state.get("world_size", 1) != self.world_size:
            warnings.warn(
                f"resuming {folder} (saved with world_size={state.get('world_size')}) on world_size="
                f"{self.world_size}: the global batch and the data order change"
            )

        _verify_files(folder, state, sorted(state.get("files") or {}), hint)
        model_file = folder / "model.safetensors"
        sd = _load_safetensors(model_file, hint)
        bad = _nonfinite(sd)
        if bad:
            raise CheckpointError(f"{shown_path(model_file)} holds NaN / inf weights ({', '.join(bad[:5])}); a "
                                  f"diverged run is not continued from it: {hint}", model_file)
        _load_into(self.module, sd, strict=True, what=str(model_file))
        if self.ema_state is not None:
            ema_file = folder / "ema.safetensors"
            if ema_file.is_file():
                ema_sd = _load_safetensors(ema_file, hint)
                missing = sorted(set(self.ema_state) - set(ema_sd))
                if missing:
                    raise KeyError(f"{ema_file} lacks EMA weights for {missing[:5]}")
                bad = _nonfinite({k: ema_sd[k] for k in self.ema_state})
                if bad:
                    raise CheckpointError(f"{shown_path(ema_file)} holds NaN / inf EMA weights ({', '.join(bad[:5])}); "
                                          f"{hint}", ema_file)
                with torch.no_grad():
                    for n, e in self.ema_state.items():
                        e.copy_(ema_sd[n])
            else:
                warnings.warn(f"{folder} has no EMA weights; the EMA starts from the loaded weights")
                with torch.no_grad():
                    for n, p in self._ema_params.items():
                        self.ema_state[n].copy_(p.detach())
        optim_file = folder / "optim.pt"
        optim = _torch_load(optim_file, hint)
        try:
            for name, opt in self.optimizers.items():
                opt.load_state_dict(optim["optimizers"][name])
            if self.scaler.is_enabled() and optim.get("scaler"):
                self.scaler.load_state_dict(optim["scaler"])
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"{shown_path(optim_file)} does not hold the optimiser states of this module "
                                  f"({type(err).__name__}: {err}); {hint}", optim_file) from err
        if allow_changes:  # the loaded optimiser state carries the old hyper-parameters: put the new ones back
            for name, opt in self.optimizers.items():
                for group, new in zip(opt.param_groups, new_hparams[name]):
                    for k, v in new.items():
                        group[k] = tuple(v) if isinstance(v, list) else v
                    if "initial_lr" in group:
                        group["initial_lr"] = new["lr"]
        rng_states = _read_json(folder / "rng.json", hint)
        try:
            rng_states = rng_states["ranks"]
            if self.rank < len(rng_states):
                _set_rng(_rng_from_json(rng_states[self.rank]))
            else:
                _seed_all(_mix_seed(self.config.seed, self.rank, state["step"]))
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"{shown_path(folder / 'rng.json')} is corrupt ({type(err).__name__}: {err}); "
                                  f"{hint}", folder / "rng.json") from err
        self.step = int(state["step"])
        self.history = list(state.get("history", []))
        self.last_checkpoint = str(folder)
        self._last_saved_step = self.step
        self._started = True


def _load_into(module: nn.Module, sd: dict[str, torch.Tensor], strict: bool, what: str) -> None:
    """``load_state_dict`` with a message naming the file and the mismatched keys."""
    own = module.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    if unexpected or (strict and missing):
        raise KeyError(
            f"{what} does not match {type(module).__name__}: missing {missing[:8]}"
            f"{'...' if len(missing) > 8 else ''}, unexpected {unexpected[:8]}{'...' if len(unexpected) > 8 else ''}"
        )
    module.load_state_dict(sd, strict=strict)
