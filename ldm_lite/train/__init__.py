"""One Trainer for every model in the course: the autoencoder with its GAN (Sec. 3.1, App. G), the
latent diffusion model (Sec. 3.2, Eq. 2) and the conditional models (Sec. 3.3, Eq. 3).

The paper's code trains with PyTorch Lightning. Here the loop is written out in a few readable modules:
mixed precision, EMA of the weights, gradient clipping, checkpoints that survive crashes, exact
resume, and DistributedDataParallel for several GPUs. Read them in this order:

    loop.py          TrainConfig and Trainer: the module protocol a trained model follows
                     (configure_optimizers, training_step), what one step does (autocast, clipping, EMA),
                     logging, Ctrl-C and NaN handling, and when to save, resume and lock
    data_order.py    which samples each step sees (a pure function of seed and step) and the random
                     generator states a checkpoint keeps: why a resumed run is bit-identical
    checkpoint.py    the checkpoint folder: atomic save, load with sha256 checks, the comparison of a
                     saved run with the present one before resuming, load_weights for inference
    lock.py          one process per out_dir: the run lock file
    distributed.py   DDP: rank and world size, starting the process group, the wrapper DDP sees

Each module's docstring tells its part in full. ``loop`` uses the other four; ``checkpoint`` uses
``data_order`` and ``lock``; ``data_order``, ``lock`` and ``distributed`` stand alone. Everything is
importable from here: ``from ldm_lite.train import Trainer, TrainConfig``.
"""

from ldm_lite.train.checkpoint import (
    CHECKPOINT_FORMAT,
    HISTORY_TAIL,
    CheckpointError,
    ResumeMismatchError,
)
from ldm_lite.train.checkpoint import _resolve_checkpoint as _resolve_checkpoint
from ldm_lite.train.data_order import _StepBatchSampler as _StepBatchSampler
from ldm_lite.train.distributed import is_main_process, rank, world_size
from ldm_lite.train.lock import (
    LOCK_NAME,
    RunLock,
    RunLockedError,
    acquire_run_lock,
    check_run_lock,
    pid_alive,
)
from ldm_lite.train.loop import PRECISIONS, NonFiniteLossError, TrainConfig, Trainer

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
    "RunLock",
    "acquire_run_lock",
    "check_run_lock",
    "pid_alive",
    "CHECKPOINT_FORMAT",
    "HISTORY_TAIL",
    "LOCK_NAME",
    "PRECISIONS",
]
