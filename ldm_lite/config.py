"""Scale presets, device choice and seeding.

One setting decides how big every experiment in the course is: the environment variable
``LDM_SCALE``. Notebooks read it through :func:`scale` and pick their settings from a small table,
so a reader never edits code to move from a laptop to a GPU:

* ``smoke``  -- continuous integration: every notebook runs in about a minute on 2 CPU cores;
  the numbers mean nothing, the code paths are all exercised.
* ``laptop`` -- default without a GPU: at most about 10 minutes per notebook on 2 cores,
  results recognisable.
* ``gpu``    -- default with CUDA: the real experiment.
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch

SCALES = ("smoke", "laptop", "gpu")
ENV_VAR = "LDM_SCALE"


def scale() -> str:
    """Return the active scale: ``"smoke"``, ``"laptop"`` or ``"gpu"``.

    Read from the environment variable ``LDM_SCALE`` (case-insensitive). Without it the default is
    ``"gpu"`` when CUDA is available and ``"laptop"`` otherwise. An unknown value raises
    ``ValueError`` naming the valid ones.
    """
    value = os.environ.get(ENV_VAR, "").strip().lower()
    if not value:
        return "gpu" if torch.cuda.is_available() else "laptop"
    if value not in SCALES:
        raise ValueError(
            f"{ENV_VAR}={os.environ[ENV_VAR]!r} is not a valid scale; use one of "
            f"{', '.join(SCALES)} (for example `export {ENV_VAR}=laptop`)."
        )
    return value


def device(prefer: str | None = None) -> torch.device:
    """The device to compute on: ``cuda`` when available, then Apple's ``mps``, else ``cpu``.

    ``prefer`` forces a device (e.g. ``"cpu"``); the environment variable ``LDM_DEVICE`` does the
    same for a whole session. Asking for CUDA on a machine without it is an error, not a silent
    fall-back.
    """
    choice = prefer or os.environ.get("LDM_DEVICE") or ""
    if choice:
        dev = torch.device(choice)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(
                f"device {choice!r} was requested but CUDA is not available on this machine; "
                "unset LDM_DEVICE or pass prefer='cpu'."
            )
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int = 0, deterministic: bool = False) -> torch.Generator:
    """Seed Python, NumPy and PyTorch (CPU and all GPUs); return a CPU ``torch.Generator``.

    With ``deterministic=True`` PyTorch is also asked for deterministic kernels (slower on GPU).
    The CPU is deterministic already: the same seed gives the same numbers run after run.
    """
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen


def pick(table: dict, name: str | None = None):
    """Pick the entry of a ``{"smoke": ..., "laptop": ..., "gpu": ...}`` table for the active scale.

    A table missing a scale is an error naming the missing key, so a notebook cannot silently run
    with another scale's settings.
    """
    name = name or scale()
    missing = [s for s in SCALES if s not in table]
    if missing:
        raise KeyError(f"scale table has no entry for {missing}; give one for each of {SCALES}")
    return table[name]


def cache_dir() -> str:
    """Folder for rendered datasets and other caches (``LDM_LITE_CACHE`` or ``~/.cache/ldm-lite/data``).

    Safe to delete: everything in it is rebuilt on demand.
    """
    root = os.environ.get("LDM_LITE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "ldm-lite", "data"
    )
    os.makedirs(root, exist_ok=True)
    return root


def threads_report() -> dict:
    """Threads and device facts for the environment report in notebook 00."""
    return {
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cuda": torch.cuda.is_available(),
        "cuda_devices": torch.cuda.device_count() if torch.cuda.is_available() else 0,
    }
