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

import dataclasses
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


def setting(default, doc: str, **cli):
    """A dataclass field of a config, with its one-line description and command-line hints.

    ``doc`` is what ``--help`` prints for the option generated from the field. ``cli`` keys: ``type`` (a range
    name the command line checks: ``"positive"``, ``"count"`` (>= 0), ``"non-negative"``, ``"probability"`` (in
    [0, 1)), ``"list"`` (comma-separated)), ``choices`` and ``flag=False`` (no option: set by the code that builds
    the model). A dataclass as ``default`` is a nested part (built fresh for every instance).
    """
    kw = dict(default_factory=default) if dataclasses.is_dataclass(default) else dict(default=default)
    return dataclasses.field(metadata=dict(doc=doc, cli=cli), **kw)


def recipe_dataclass(name: str, own: type, parts: dict[type, tuple[str, ...]], defaults: dict, doc: str) -> type:
    """A flat recipe class: the fields of ``own`` (a dataclass with the recipe's own settings and checks) followed
    by the fields of every config class in ``parts`` (``{config class: names left out}``; a name ``own`` already
    has is left out too), with ``defaults`` in place of the parts' defaults.

    A setting added to one of the parts is in every recipe built from it -- and in its command-line options, which
    are generated from these fields -- without another line. Each field's metadata names the part it comes from
    (``part``), so a recipe can hand every part its own values back.
    """
    have = {f.name for f in dataclasses.fields(own)}
    fields = []
    for cls, left_out in parts.items():
        for f in dataclasses.fields(cls):
            if f.name in have or f.name in left_out:
                continue
            if f.name in defaults:
                default = defaults[f.name]
            elif f.default is not dataclasses.MISSING:
                default = f.default
            elif f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            else:
                raise TypeError(f"{name}: the setting {cls.__name__}.{f.name} has no default; give one in defaults")
            fields.append((f.name, f.type, dataclasses.field(default=default,
                                                             metadata=dict(f.metadata, part=cls.__name__))))
            have.add(f.name)
    made = dataclasses.make_dataclass(name, fields, bases=(own,))
    made.__doc__ = doc
    made.__module__ = own.__module__
    return made
