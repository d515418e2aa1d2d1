"""The training loop: :class:`TrainConfig` and :class:`Trainer`, one for every model in the course -- the
autoencoder with its GAN (Sec. 3.1, App. G), the latent diffusion model (Sec. 3.2, Eq. 2) and the
conditional models (Sec. 3.3, Eq. 3).

The paper's code trains with PyTorch Lightning. Here the loop is written out: mixed precision, EMA of the
weights, gradient clipping, logging, and the orchestration of checkpoints, resume and DDP, whose details
live next door (:mod:`ldm_lite.train.checkpoint`, :mod:`ldm_lite.train.data_order`,
:mod:`ldm_lite.train.distributed`, :mod:`ldm_lite.train.lock`).

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

Callbacks run with the generators forked (their random draws, e.g. sampling preview images, do not change
training). ``fit(resume=...)`` restores the whole state from a checkpoint after comparing the saved run with
the present one (:mod:`ldm_lite.train.checkpoint`).

Interrupts and failures
-----------------------
Ctrl-C (SIGINT) during ``fit`` in a single process is deferred to the end of the current step; the
trainer then saves a checkpoint of that consistent state and re-raises ``KeyboardInterrupt``. A
second Ctrl-C stops at once (a checkpoint is still saved if no optimiser had stepped yet in the
interrupted step). A non-finite loss or gradient norm raises :class:`NonFiniteLossError` naming the
step, the optimiser, the logged values and the last good checkpoint, which is left as it is.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import threading
import warnings
from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from ldm_lite.config import device as default_device
from ldm_lite.config import setting
from ldm_lite.io import check_writable_dir
from ldm_lite.progress import progress as tqdm
from ldm_lite.train.checkpoint import (
    _ckpt_name,
    _nonfinite,
    _resolve_checkpoint,
    latest_checkpoint,
    load_checkpoint,
    load_weights,
    prune_checkpoints,
    write_checkpoint,
)
from ldm_lite.train.data_order import (
    _get_rng,
    _mix_seed,
    _rng_to_json,
    _seed_all,
    _set_rng,
    _StepBatchSampler,
    _StepDataset,
)
from ldm_lite.train.distributed import (
    _init_distributed,
    _TrainingStepForward,
    rank,
    world_size,
)
from ldm_lite.train.lock import acquire_run_lock

__all__ = ["TrainConfig", "Trainer", "NonFiniteLossError", "PRECISIONS"]

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
    ``batch_size`` is per rank under DDP (see :mod:`ldm_lite.train.distributed`).
    """

    max_steps: int = setting(MISSING, "optimisation steps (the command line's --steps)", type="count")
    batch_size: int = setting(MISSING, "examples per step (per rank under DDP)")
    seed: int = setting(0, "seed of the weights, the data order and the noise", type="count")
    grad_clip: float | None = setting(1.0, "clip the gradient norm to this (None: no clipping)", type="positive")
    ema_decay: float | None = setting(None, "decay of the weights' exponential moving average (0 or None: off)",
                                      type="probability")
    ema_start: int = setting(0, "steps before the EMA starts following the weights", type="count")
    ema_warmup: bool = setting(True, "EMA decay min(decay, (1 + n) / (10 + n)) at its n-th update (as CompVis)")
    precision: str = setting("auto", "auto (bf16 on a GPU that has it), fp32, bf16 or fp16", choices=PRECISIONS)
    log_every: int = setting(10, "log the training losses every N steps")
    ckpt_every: int | None = setting(None, "checkpoint every N steps (needs out_dir)", flag=False)
    out_dir: str | None = setting(None, "the run folder", flag=False)
    keep_last: int = setting(2, "checkpoints kept in the run folder")
    num_workers: int = setting(0, "DataLoader worker processes", type="count")
    progress: bool = setting(True, "show a progress bar", flag=False)
    drop_last: bool = setting(True, "drop the last incomplete batch of an epoch")
    lr_warmup_steps: int = setting(0, "linear learning-rate warm-up over the first N steps", type="count")
    lr_schedule: str = setting("constant", "constant or cosine (to lr_min_ratio x lr at the last step)",
                               choices=("constant", "cosine"))
    lr_min_ratio: float = setting(0.1, "the cosine schedule's final share of lr", type="non-negative")
    device: str | None = setting(None, "None: ldm_lite.config.device() (cuda:LOCAL_RANK under DDP)", flag=False)
    ddp: bool = setting(False, "force DDP (torchrun's WORLD_SIZE > 1 turns it on by itself)", flag=False)
    find_unused_parameters: bool = setting(False, "DDP: True for the GAN (see ldm_lite.train.distributed)",
                                           flag=False)

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


# --------------------------------------------------------------------------------------------------
# Helpers: recipes as JSON, batches to the device
# --------------------------------------------------------------------------------------------------
def _jsonable(obj):
    """``obj`` as JSON would give it back (tuples -> lists; anything unusual -> its repr)."""
    return json.loads(json.dumps(obj, default=repr))


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
                    "(see the ldm_lite.train.loop docstring)"
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

        Before resuming, the saved run's settings are compared with the present ones (see
        :mod:`ldm_lite.train.checkpoint`): changes that break an exact continuation raise
        :class:`~ldm_lite.train.checkpoint.ResumeMismatchError` unless ``allow_changes=True``, which continues
        with the new learning rate / batch size / data knowingly.
        Before the first step, ``out_dir`` is created and proven writable, and its run lock
        (``out_dir/run.lock``) is taken until ``fit`` returns or raises: another process training into the
        same ``out_dir`` meanwhile gets :class:`~ldm_lite.train.lock.RunLockedError` naming this one's pid.
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
            load_checkpoint(self, _resolve_checkpoint(where), allow_changes=allow_changes)
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

    # loading a checkpoint's weights for inference and finding a run's latest checkpoint belong to the
    # checkpoint format (ldm_lite.train.checkpoint); they are reachable from the Trainer too
    load_weights = staticmethod(load_weights)
    latest_checkpoint = staticmethod(latest_checkpoint)

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
        """Refuse weights with NaN / inf, gather every rank's generator states, and on rank 0 write the
        checkpoint folder and prune the old ones (:mod:`ldm_lite.train.checkpoint`)."""
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
        write_checkpoint(self, root, gathered)
        self.last_checkpoint, self._last_saved_step = str(final), self.step
        prune_checkpoints(final.parent, self.step, cfg.keep_last)
        return str(final)
