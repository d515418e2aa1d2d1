"""The checkpoint folder: how a run is saved (atomically), loaded (checked file by file), compared with the
present run before resuming, and how its weights are loaded for inference.

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
:class:`~ldm_lite.train.loop.NonFiniteLossError`). Nothing is ever unpickled when loading: tensors come
from safetensors and ``torch.load(weights_only=True)``, the rest from JSON. Every file is checked against its recorded
sha256 and every load error names the file and the previous checkpoint to use instead
(:class:`CheckpointError`); a checkpoint with NaN / inf weights is refused.

Temporary folders are named ``.tmp-<step>-<pid>``, and a save removes only those whose process is gone (the
pid says whether; see :func:`ldm_lite.train.lock.pid_alive`).

Resuming
--------
Resuming (``fit(resume=True)``, or a path) restores weights, EMA, optimisers, scaler, random
generators, step and history, so on the CPU a resumed run is bit-identical to an uninterrupted one.
It first compares the saved run with the present one: a changed learning rate (or other optimiser
hyper-parameter), batch size, seed, ``drop_last`` or dataset length, or ``max_steps`` below the steps
already done, raises :class:`ResumeMismatchError` naming each field with its old and new value (the
optimiser state would silently overwrite a new learning rate, and the data order would change);
``fit(resume=..., allow_changes=True)`` continues with the new values knowingly. Harmless or
deliberate changes -- a longer ``max_steps``, the learning-rate schedule, EMA, clipping, precision,
fields of the caller's recipe -- are reported in one warning.

:func:`load_weights` (also ``Trainer.load_weights``) loads a checkpoint's weights into a model for
inference, with the same sha256 checks. Every checkpoint file is read through the helpers here
(``_read_json``, ``_load_safetensors``, ``_torch_load``), whose errors name the file and the checkpoint to
use instead.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import shutil
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import safetensors.torch
import torch
from torch import nn

from ldm_lite.io import atomic_write, sha256_file, shown_path
from ldm_lite.train.data_order import _mix_seed, _rng_from_json, _seed_all, _set_rng
from ldm_lite.train.lock import pid_alive

if TYPE_CHECKING:
    from ldm_lite.train.loop import Trainer

__all__ = [
    "CheckpointError",
    "ResumeMismatchError",
    "load_weights",
    "latest_checkpoint",
    "CHECKPOINT_FORMAT",
    "HISTORY_TAIL",
]

CHECKPOINT_FORMAT = "ldm_lite.train/1"
HISTORY_TAIL = 1000  # history entries stored in each checkpoint's trainer.json


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


def _temp_owner_dead(name: str) -> bool:
    """``.tmp-<what>-<pid>`` folders carry the pid of the process writing them: True when that process is gone
    (or is this one, which is not writing it now). Names without a pid are left alone."""
    tail = name.rsplit("-", 1)[-1]
    if not tail.isdigit():
        return False
    pid = int(tail)
    return pid == os.getpid() or not pid_alive(pid)


# --------------------------------------------------------------------------------------------------
# Reading, with errors that name the file and the checkpoint to use instead
# --------------------------------------------------------------------------------------------------
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


def _state_dict_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    sd = module.state_dict()
    bad = [k for k, v in sd.items() if not torch.is_tensor(v)]
    if bad:
        raise TypeError(f"state_dict entries that are not tensors cannot go into safetensors: {bad}")
    return sd


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


# --------------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------------
def write_checkpoint(trainer: Trainer, root: Path, gathered: list[dict]) -> Path:
    """Write ``trainer``'s state (its module, EMA, optimisers, scaler, step, config, history) as the folder
    ``root/checkpoints/step_XXXXXXXX`` and point ``root/latest.json`` at it; return the folder. Written into
    ``.tmp-<step>-<pid>`` first, then renamed; ``latest.json`` is replaced only after that (see the module
    docstring). ``gathered``: every rank's generator states (JSON), in rank order."""
    cfg = trainer.config
    final = root / "checkpoints" / _ckpt_name(trainer.step)
    ckdir = root / "checkpoints"
    ckdir.mkdir(parents=True, exist_ok=True)
    for stale in ckdir.glob(".tmp-*"):  # leftovers of a crash while writing: only of processes that are gone
        if _temp_owner_dead(stale.name):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = ckdir / f".tmp-{_ckpt_name(trainer.step)}-{os.getpid()}"
    tmp.mkdir()
    meta = {"step": trainer.step, "format": CHECKPOINT_FORMAT}
    _save_safetensors(_state_dict_tensors(trainer.module), tmp / "model.safetensors", meta)
    if trainer.ema_state is not None:
        _save_safetensors(trainer.ema_state, tmp / "ema.safetensors", {**meta, "ema_decay": cfg.ema_decay})
    with open(tmp / "optim.pt", "wb") as f:
        torch.save(
            {
                "optimizers": {n: o.state_dict() for n, o in trainer.optimizers.items()},
                "scaler": trainer.scaler.state_dict() if trainer.scaler.is_enabled() else {},
            },
            f,
        )
        f.flush()
        os.fsync(f.fileno())
    _write_json(tmp / "rng.json", {"world_size": trainer.world_size, "ranks": gathered}, indent=None)
    files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir())}  # checked when loading
    _write_json(
        tmp / "trainer.json",
        {
            "format": CHECKPOINT_FORMAT,
            "step": trainer.step,
            "module": type(trainer.module).__name__,
            "optimizers": list(trainer.optimizers),
            "optimizer_hparams": _optimizer_hparams(trainer.optimizers),
            "precision": trainer.precision,
            "world_size": trainer.world_size,
            "dataset_len": len(trainer.dataset),
            "ema": trainer.ema_state is not None,
            "torch_version": torch.__version__,
            "config": dataclasses.asdict(cfg),
            "recipe": trainer.recipe,
            "command": trainer.command,
            "files": files,
            "history": trainer.history[-HISTORY_TAIL:],
        },
    )
    _fsync_path(tmp)
    if final.exists():  # a folder of an abandoned run at this step: move it aside first
        trash = ckdir / f".tmp-old-{final.name}-{os.getpid()}"
        os.replace(final, trash)
        shutil.rmtree(trash, ignore_errors=True)
    os.replace(tmp, final)
    _fsync_path(ckdir)
    _atomic_write_json(root / "latest.json", {"step": trainer.step, "checkpoint": f"checkpoints/{final.name}"})
    return final


def prune_checkpoints(ckdir: Path, step: int, keep_last: int) -> None:
    """Keep the newest ``keep_last`` checkpoints up to ``step`` (later ones belong to an
    abandoned run and are left alone until overwritten)."""
    folders = []
    for d in ckdir.glob("step_*"):
        try:
            saved = int(d.name[len("step_") :])
        except ValueError:
            continue
        if saved <= step:
            folders.append((saved, d))
    folders.sort()
    for _, d in folders[:-keep_last]:
        trash = ckdir / f".tmp-old-{d.name}-{os.getpid()}"  # renamed first: a crash never leaves half a folder
        try:
            os.replace(d, trash)
        except OSError:
            trash = d
        shutil.rmtree(trash, ignore_errors=True)


# --------------------------------------------------------------------------------------------------
# Resuming: compare the saved run with the present one, then restore everything
# --------------------------------------------------------------------------------------------------
def resume_changes(trainer: Trainer, folder: Path, state: dict, new_hparams: dict) -> tuple[list, list]:
    """``(refused, reported)``: lists of ``(field, saved, now)`` between the checkpoint and ``trainer``."""
    cfg, saved_cfg = trainer.config, state.get("config", {})
    refused, reported = [], []
    for key in ("batch_size", "seed", "drop_last"):  # the data order is a function of these
        if key in saved_cfg and saved_cfg[key] != getattr(cfg, key):
            refused.append((key, saved_cfg[key], getattr(cfg, key)))
    if "dataset_len" in state and state["dataset_len"] != len(trainer.dataset):
        refused.append(("dataset length", state["dataset_len"], len(trainer.dataset)))
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
    if state.get("precision", trainer.precision) != trainer.precision:
        reported.append(("precision", state["precision"], trainer.precision))
    saved_recipe, recipe = state.get("recipe"), trainer.recipe
    if saved_recipe is not None and recipe is not None:  # fields the trainer does not see by itself
        for k in sorted(set(saved_recipe) | set(recipe)):
            if k in ("steps", "batch_size", "seed", "lr"):  # compared above, as the trainer sees them
                continue
            if saved_recipe.get(k) != recipe.get(k):
                reported.append((f"recipe.{k}", saved_recipe.get(k), recipe.get(k)))
    return refused, reported


def load_checkpoint(trainer: Trainer, folder: Path, allow_changes: bool = False) -> None:
    """Restore ``trainer`` (weights, EMA, optimisers, scaler, generators, step, history) from the checkpoint
    ``folder``, after comparing the saved run with the present one (see the module docstring). Called by
    ``Trainer.fit(resume=...)``."""
    hint = _fallback_hint(folder.parent, _step_of(folder))
    state = _read_json(folder / "trainer.json", hint)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        fmt = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{shown_path(folder)} is not a {CHECKPOINT_FORMAT} checkpoint "
                              f"(trainer.json format={fmt!r}); {hint}", folder / "trainer.json")
    if state["optimizers"] != list(trainer.optimizers):
        raise ResumeMismatchError(
            f"{folder} was saved with optimisers {state['optimizers']}, but the module now configures "
            f"{list(trainer.optimizers)}; build the module as in the saved run (e.g. the same disc_start / "
            "disc_weight), or start again in a new --out folder",
            [("optimizers", state["optimizers"], list(trainer.optimizers))],
        )
    new_hparams = _optimizer_hparams(trainer.optimizers)  # before the saved optimiser state replaces them
    refused, reported = resume_changes(trainer, folder, state, new_hparams)
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
    if state.get("world_size", 1) != trainer.world_size:
        warnings.warn(
            f"resuming {folder} (saved with world_size={state.get('world_size')}) on world_size="
            f"{trainer.world_size}: the global batch and the data order change"
        )

    _verify_files(folder, state, sorted(state.get("files") or {}), hint)
    model_file = folder / "model.safetensors"
    sd = _load_safetensors(model_file, hint)
    bad = _nonfinite(sd)
    if bad:
        raise CheckpointError(f"{shown_path(model_file)} holds NaN / inf weights ({', '.join(bad[:5])}); a "
                              f"diverged run is not continued from it: {hint}", model_file)
    _load_into(trainer.module, sd, strict=True, what=str(model_file))
    if trainer.ema_state is not None:
        ema_file = folder / "ema.safetensors"
        if ema_file.is_file():
            ema_sd = _load_safetensors(ema_file, hint)
            missing = sorted(set(trainer.ema_state) - set(ema_sd))
            if missing:
                raise KeyError(f"{ema_file} lacks EMA weights for {missing[:5]}")
            bad = _nonfinite({k: ema_sd[k] for k in trainer.ema_state})
            if bad:
                raise CheckpointError(f"{shown_path(ema_file)} holds NaN / inf EMA weights ({', '.join(bad[:5])}); "
                                      f"{hint}", ema_file)
            with torch.no_grad():
                for n, e in trainer.ema_state.items():
                    e.copy_(ema_sd[n])
        else:
            warnings.warn(f"{folder} has no EMA weights; the EMA starts from the loaded weights")
            with torch.no_grad():
                for n, p in trainer._ema_params.items():
                    trainer.ema_state[n].copy_(p.detach())
    optim_file = folder / "optim.pt"
    optim = _torch_load(optim_file, hint)
    try:
        for name, opt in trainer.optimizers.items():
            opt.load_state_dict(optim["optimizers"][name])
        if trainer.scaler.is_enabled() and optim.get("scaler"):
            trainer.scaler.load_state_dict(optim["scaler"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{shown_path(optim_file)} does not hold the optimiser states of this module "
                              f"({type(err).__name__}: {err}); {hint}", optim_file) from err
    if allow_changes:  # the loaded optimiser state carries the old hyper-parameters: put the new ones back
        for name, opt in trainer.optimizers.items():
            for group, new in zip(opt.param_groups, new_hparams[name]):
                for k, v in new.items():
                    group[k] = tuple(v) if isinstance(v, list) else v
                if "initial_lr" in group:
                    group["initial_lr"] = new["lr"]
    rng_states = _read_json(folder / "rng.json", hint)
    try:
        rng_states = rng_states["ranks"]
        if trainer.rank < len(rng_states):
            _set_rng(_rng_from_json(rng_states[trainer.rank]))
        else:
            _seed_all(_mix_seed(trainer.config.seed, trainer.rank, state["step"]))
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{shown_path(folder / 'rng.json')} is corrupt ({type(err).__name__}: {err}); "
                              f"{hint}", folder / "rng.json") from err
    trainer.step = int(state["step"])
    trainer.history = list(state.get("history", []))
    trainer.last_checkpoint = str(folder)
    trainer._last_saved_step = trainer.step
    trainer._started = True


# --------------------------------------------------------------------------------------------------
# Weights for inference
# --------------------------------------------------------------------------------------------------
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


def latest_checkpoint(out_dir: str | os.PathLike) -> str | None:
    """The folder of ``out_dir``'s latest checkpoint, or None (``fit(resume=...)`` accepts it); a corrupt
    ``latest.json`` raises :class:`CheckpointError` naming the newest complete checkpoint instead."""
    try:
        return str(_resolve_checkpoint(out_dir))
    except FileNotFoundError:
        return None
