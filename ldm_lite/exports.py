"""An exported checkpoint on disk: ``<name>.safetensors`` (the weights) beside ``<name>.json`` (its manifest).

How a name or a path is resolved to an export (a bare name is one shipped in ``data/pretrained/``), how its manifest
and weights are read, and how they are checked: the weights against the sha256 the manifest records. Every error
names the file and what to do. Only files are handled here; :mod:`ldm_lite.pretrained` writes exports and rebuilds
the models they hold (``load_autoencoder``, ``load_ldm``), and re-exports every name of this module.
"""

from __future__ import annotations

import json
import os
import shlex
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file

from ldm_lite.io import sha256_file, shown_path
from ldm_lite.train.checkpoint import _resolve_checkpoint

__all__ = ["PRETRAINED_DIR", "CorruptCheckpointError", "list_pretrained", "load_manifest", "load_state_dict",
           "resolve", "weights_file"]

PRETRAINED_DIR = Path(__file__).resolve().parent.parent / "data" / "pretrained"


class CorruptCheckpointError(ValueError):
    """A manifest or weights file cannot be read, is truncated, or fails its recorded sha256; ``path`` names it."""

    def __init__(self, message: str, path: str | os.PathLike | None = None):
        super().__init__(message)
        self.path = None if path is None else str(path)


def _restore_hint(base: Path) -> str:
    """How to get a good copy of a checkpoint back."""
    if base.parent.resolve() == PRETRAINED_DIR:
        return (f"it is shipped with the course: restore it with `git checkout -- data/pretrained/{base.name}.json "
                f"data/pretrained/{base.name}.safetensors` (or download the repository again)")
    return "export it again (its manifest's \"command\" records how it was trained)"


def _not_an_export(p: Path) -> str | None:
    """Why ``p`` (which has no manifest) is not an exported checkpoint, and how to make one; None if unknown."""
    run = None
    if p.is_dir() and ((p / "latest.json").is_file() or (p / "checkpoints").is_dir()):
        run = p
    elif p.is_dir() and (p / "trainer.json").is_file():  # run/checkpoints/step_X
        run = p.parent.parent
    elif p.is_file() and (p.parent / "trainer.json").is_file():  # run/checkpoints/step_X/model.safetensors
        run = p.parent.parent.parent
    elif p.is_file() and p.name == "latest.json":
        run = p.parent
    if run is not None:
        return f"{shown_path(p)} is a training run folder (checkpoints of ldm_lite.train.Trainer), not an export. " \
               + _export_run_hint(run)
    if p.is_file() and p.suffix == ".safetensors":
        return (f"{shown_path(p)} is a bare weights file without its manifest {shown_path(p.with_suffix('.json'))} "
                "(the config needed to rebuild the model). Load it into a model you build with "
                "ldm_lite.train.Trainer.load_weights(path, model), or export that model with "
                "ldm_lite.pretrained.save_pretrained(model, name, manifest)")
    if p.is_file() and p.suffix in (".ckpt", ".pt", ".pth", ".bin"):
        return (f"{shown_path(p)} is a PyTorch checkpoint, not an ldm-lite export; a CompVis / Stable Diffusion "
                "first stage loads with ldm_lite.autoencoder.convert.load_compvis_first_stage(path, config)")
    return None


def _export_run_hint(run: Path) -> str:
    """How to export the run in ``run``: its own command with ``--resume --export NAME`` (nothing more is trained
    when ``--steps`` equals the steps done), or the Python equivalent."""
    state, step = {}, None
    try:
        folder = _resolve_checkpoint(run)
        state = json.loads((folder / "trainer.json").read_text())
        step = state.get("step")
    except Exception:  # a broken run folder: give the generic advice
        pass
    kind = {"LatentDiffusion": "train-ldm", "AutoencoderModule": "train-ae"}.get(state.get("module"))
    cmd = state.get("command") or ""
    if kind and cmd.startswith(f"ldm-lite {kind}"):
        args, out, skip = shlex.split(cmd)[2:], [], False
        for i, a in enumerate(args):
            if skip:
                skip = False
                continue
            if a in ("--resume", "--force"):
                continue
            if a in ("--export", "--out", "--steps"):
                skip = True
                continue
            if a.startswith(("--export=", "--out=", "--steps=")):
                continue
            out.append(a)
        steps = f" --steps {step}" if step is not None else ""
        line = " ".join(["ldm-lite", kind] + [shlex.quote(a) for a in out]) + \
            f" --out {shlex.quote(str(run))}{steps} --resume --export NAME"
        return (f"Export it with the run's own command: `{line}` (trains nothing more; NAME is the new "
                "checkpoint's name)")
    if kind:
        return (f"Export it by re-running its command with the same flags plus `--out {shown_path(run)} --resume "
                f"--export NAME{f' --steps {step}' if step else ''}` (`ldm-lite {kind} ...`): with --steps equal to "
                "the steps done it trains nothing more")
    return ("Load its weights with ldm_lite.train.Trainer.load_weights(run_folder, model) into the model you built, "
            "then export that model with ldm_lite.pretrained.save_pretrained(model, name, manifest)")


def resolve(name_or_path: str | os.PathLike) -> Path:
    """A shipped checkpoint's name (``"ae_kl_f4_openmoji64"``) or a path -> the base path (no suffix).

    Not a string or path (``None``): ``TypeError``; an empty name or a bare folder (``""``, ``"."``): ``ValueError``
    listing the shipped checkpoints."""
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"name_or_path must be a checkpoint name or a path, got {name_or_path!r} "
                        f"({type(name_or_path).__name__}); pass e.g. 'ldm_openmoji64' or 'exports/my_ldm'")
    if not str(name_or_path).strip() or Path(name_or_path).name in ("", ".", ".."):
        why = _not_an_export(Path(name_or_path)) if str(name_or_path).strip() else None
        if why is not None:
            raise FileNotFoundError(f"no exported checkpoint at {str(name_or_path)!r}: {why}")
        available = ", ".join(sorted(x.stem for x in PRETRAINED_DIR.glob("*.json"))) or "none"
        raise ValueError(f"{str(name_or_path)!r} is an empty checkpoint name (or a bare folder); pass a checkpoint's "
                         f"name or the path of its .json (shipped checkpoints: {available})")
    p = Path(name_or_path)
    base = p.with_suffix("") if p.suffix in (".safetensors", ".json") else p
    if base.with_suffix(".json").exists():
        return base
    shipped = PRETRAINED_DIR / base.name
    if shipped.with_suffix(".json").exists():
        return shipped
    why = _not_an_export(p)
    if why is not None:
        raise FileNotFoundError(f"no exported checkpoint at {str(name_or_path)!r}: {why}")
    available = ", ".join(sorted(x.stem for x in PRETRAINED_DIR.glob("*.json"))) or "none"
    raise FileNotFoundError(
        f"no checkpoint {str(name_or_path)!r} (looked for {base}.json and {shipped}.json); "
        f"shipped checkpoints: {available}"
    )


def _read_manifest(path: Path) -> dict:
    base = path.with_suffix("")
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:  # JSONDecodeError is a ValueError
        raise CorruptCheckpointError(f"{shown_path(path)} is corrupt or truncated (not valid JSON: {err}); "
                                     f"{_restore_hint(base)}", path) from err
    except OSError as err:
        raise CorruptCheckpointError(f"cannot read {shown_path(path)} ({err.strerror or err}); "
                                     f"{_restore_hint(base)}", path) from err
    if not isinstance(manifest, dict):
        raise CorruptCheckpointError(f"{shown_path(path)} is not a checkpoint manifest (a JSON object was expected, "
                                     f"found {type(manifest).__name__}); {_restore_hint(base)}", path)
    return manifest


def load_manifest(name_or_path) -> dict:
    """The JSON manifest of a checkpoint."""
    return _read_manifest(resolve(name_or_path).with_suffix(".json"))


def weights_file(base: Path, manifest: dict) -> Path:
    """The weights file of the export at ``base`` (no suffix): ``<base>.safetensors``, the pair's own file -- a
    copy renamed as a pair (``new.json`` + ``new.safetensors``) still names the original file in its manifest's
    ``"weights"`` -- or else the file ``"weights"`` names. Where both exist and the manifest records a sha256, the
    one that matches it (another model's weights left under the original name are not picked up). The file
    returned is checked against the sha256 when loaded."""
    own = base.with_suffix(".safetensors")
    recorded = manifest.get("weights")
    named = base.parent / recorded if isinstance(recorded, str) and recorded else own
    found = [p for p in dict.fromkeys((own, named)) if p.is_file()]
    want = manifest.get("weights_sha256")
    if len(found) > 1 and want:
        for p in found:
            if sha256_file(p) == want:
                return p
    return found[0] if found else named


def _missing_weights(base: Path, manifest: dict, weights: Path) -> str:
    """Why the weights of ``base`` cannot be found and what to do: a ``.safetensors`` beside the manifest with the
    recorded sha256 is the renamed file (say what to rename it to); otherwise how the pair must be named."""
    own = base.with_suffix(".safetensors")
    msg = f"{shown_path(weights)} is missing (its manifest {shown_path(base.with_suffix('.json'))} exists)"
    want = manifest.get("weights_sha256")
    if want and base.parent.is_dir():
        for cand in sorted(base.parent.glob("*.safetensors"))[:64]:
            try:
                same = cand.is_file() and sha256_file(cand) == want
            except OSError:
                continue
            if same:
                return (f"{msg}; {shown_path(cand)} holds exactly the weights it records (same sha256): rename it to "
                        f"{own.name}")
    other = f" (or {weights.name})" if weights.name != own.name else ""
    return (f"{msg}. If the files were renamed or moved, the weights must lie beside the manifest as "
            f"{own.name}{other}; if they are lost, {_restore_hint(base)}")


def load_state_dict(name_or_path, dtype=torch.float32) -> dict:
    """The weights of a checkpoint as a state dict (floating tensors cast to ``dtype``), checked against the
    sha256 its manifest records (``weights_sha256``; every shipped manifest has one). A manifest without it (an
    export from before the record) loads unchecked, with a warning naming the file."""
    base = resolve(name_or_path)
    manifest = _read_manifest(base.with_suffix(".json"))
    weights = weights_file(base, manifest)
    want = manifest.get("weights_sha256")
    if weights.is_file():
        got = sha256_file(weights)
        if want is None:
            warnings.warn(
                f"{shown_path(base.with_suffix('.json'))} records no weights_sha256 (an export from an older "
                f"ldm-lite), so {weights.name} is loaded unchecked; if it is known to be good, add "
                f"\"weights_sha256\": \"{got}\" to the manifest to have every later load checked", stacklevel=2)
        elif got != want:
            raise CorruptCheckpointError(
                f"{shown_path(weights)} does not match the sha256 in {shown_path(base.with_suffix('.json'))} "
                f"(recorded {want[:16]}..., file {got[:16]}...): it is corrupt or was replaced without its manifest; "
                f"{_restore_hint(base)}", weights)
    try:
        sd = load_file(str(weights))
    except FileNotFoundError:
        raise CorruptCheckpointError(_missing_weights(base, manifest, weights), weights) from None
    except Exception as err:  # SafetensorError: truncated file, corrupt header
        raise CorruptCheckpointError(f"{shown_path(weights)} is corrupt or truncated and cannot be read ({err}); "
                                     f"{_restore_hint(base)}", weights) from err
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}


def list_pretrained() -> list[dict]:
    """Manifests of all checkpoints shipped in ``data/pretrained/``."""
    return [_read_manifest(p) | {"name": p.stem} for p in sorted(PRETRAINED_DIR.glob("*.json"))]
