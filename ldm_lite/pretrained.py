"""Small shipped checkpoints in ``data/pretrained/``: safetensors weights + a JSON manifest.

A manifest records what a later chapter (and a sceptical reader) needs to trust a checkpoint: the
model config, the data, the exact command that trained it, the steps, the wall time and held-out
metrics. Weights are stored in float16 to keep each file small (<= 10 MB); they are loaded back as
float32. Loading never unpickles code (safetensors only).

Safety rails: an export never replaces an existing checkpoint unless asked to (``force=True``, the CLI's
``--force``); a manifest records the sha256 of its weights, and an LDM's manifest the f, latent channels and
sha256 of its first stage, so :func:`load_ldm` refuses a first stage that was replaced after the LDM was
trained (which would decode its latents at the wrong size or colours). Every load error names the file and
what to do; a training run folder or a bare weights file passed where an export is expected says how to
export it.

Reading an export's files (resolving a name, the manifest, the checked weights) is :mod:`ldm_lite.exports`, a
lower layer that the metrics' shipped evaluators use too; its names are importable from here as well.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from ldm_lite.autoencoder.model import AutoencoderConfig, build_autoencoder
from ldm_lite.exports import (  # reading an export; every name stays importable from here
    PRETRAINED_DIR,
    CorruptCheckpointError,
    _restore_hint,
    list_pretrained,  # noqa: F401
    load_manifest,
    load_state_dict,
    resolve,
    weights_file,
)
from ldm_lite.io import atomic_write, check_writable_dir, sha256_file, shown_path
from ldm_lite.ldm import LatentDiffusion
from ldm_lite.ldm_config import FirstStageConfig, LDMConfig, ObjectiveConfig, ScheduleConfig
from ldm_lite.unet import UNetConfig


class ExistingExportError(FileExistsError):
    """An export would replace an existing checkpoint (pass ``force=True`` / ``--force`` to allow it)."""


class FirstStageMismatchError(ValueError):
    """An LDM's first stage is not the autoencoder it was trained with (other f, channels or weights)."""


def export_target(export: str | os.PathLike) -> Path:
    """Where an ``export=`` goes, as a base path without suffix: a bare name is a file in ``data/pretrained/``,
    anything with a folder (or a ``.safetensors`` / ``.json`` suffix) is a path."""
    s = str(export)
    target = Path(s) if ("/" in s or os.sep in s or s.endswith((".safetensors", ".json"))) else PRETRAINED_DIR / s
    return target.with_suffix("") if target.suffix in (".safetensors", ".json") else target


def _dependents(base: Path) -> list[str]:
    """Exported LDMs next to ``base`` whose manifest names it as their first stage."""
    out = []
    for m in sorted(base.parent.glob("*.json")) if base.parent.is_dir() else ():
        try:
            man = json.loads(m.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(man, dict) and man.get("kind") == "ldm" and man.get("first_stage") in (base.name, str(base)):
            out.append(m.stem)
    return out


def check_export_target(export: str | os.PathLike, force: bool = False, what: str = "export (--export)",
                        note: str = "nothing was trained") -> Path:
    """Refuse (``ExistingExportError``) an ``export`` whose ``.json`` or ``.safetensors`` exists unless ``force``,
    and prove its folder writable -- both *before* training, so no work is lost. Returns the base path."""
    base = export_target(export)
    existing = [p for p in (base.with_suffix(".json"), base.with_suffix(".safetensors")) if p.exists()]
    if existing:
        users = _dependents(base)
        used = (f" ({', '.join(users)} use{'s' if len(users) == 1 else ''} it as first stage and would no longer "
                "load)") if users else ""
        if not force:
            raise ExistingExportError(
                f"{shown_path(existing[0])} exists{used}; choose another {what} name or pass force=True to "
                f"replace it{f' ({note})' if note else ''}"
            )
        if users:
            import warnings

            warnings.warn(f"replacing {shown_path(existing[0])} (force=True){used}", stacklevel=2)
    check_writable_dir(base.parent, f"folder of the export {base.name}", note=note)
    return base


def save_pretrained(model: torch.nn.Module, path: str | os.PathLike, manifest: dict, dtype=torch.float16,
                    force: bool = False) -> Path:
    """Write ``<path>.safetensors`` (weights cast to ``dtype``) and ``<path>.json`` (the manifest), atomically.

    An existing checkpoint at ``path`` is replaced only with ``force=True``. Weights that are NaN or inf
    (or overflow ``dtype``) are refused. The manifest records the weights' sha256 (checked on loading).
    """
    path = Path(path)
    base = path.with_suffix("") if path.suffix in (".safetensors", ".json") else path
    check_export_target(base, force=force, note="")
    tensors = {k: (v.detach().to(dtype) if v.is_floating_point() else v.detach()).contiguous().cpu()
               for k, v in model.state_dict().items()}
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise ValueError(
            f"refusing to export {shown_path(base)}: weights {bad[:5]} are NaN or inf in {dtype} (a diverged run, or "
            f"values beyond {dtype}'s range); export an earlier checkpoint of the run, or pass dtype=torch.float32"
        )
    weights = base.with_suffix(".safetensors")
    atomic_write(weights, lambda tmp: save_file(tensors, tmp))
    manifest = dict(manifest, weights=weights.name, dtype=str(dtype).replace("torch.", ""),
                    size_mb=round(weights.stat().st_size / 2**20, 2),
                    parameters=sum(v.numel() for v in tensors.values() if v.is_floating_point()),
                    weights_sha256=sha256_file(weights))
    atomic_write(base.with_suffix(".json"), lambda tmp: Path(tmp).write_text(json.dumps(manifest, indent=2) + "\n"))
    return weights


def load_autoencoder(name_or_path, device="cpu"):
    """Rebuild an AutoencoderKL / VQModel from its manifest's config and load its weights (eval mode)."""
    base = resolve(name_or_path)
    manifest = load_manifest(base)
    if manifest.get("kind") != "autoencoder":
        raise ValueError(f"{name_or_path!r} is a {manifest.get('kind')!r} checkpoint, not an autoencoder")
    try:
        model = build_autoencoder(AutoencoderConfig(**manifest["config"]))
    except (KeyError, TypeError, ValueError) as err:
        raise CorruptCheckpointError(f"{shown_path(base.with_suffix('.json'))} has no valid autoencoder \"config\" "
                                     f"({type(err).__name__}: {err}); {_restore_hint(base)}",
                                     base.with_suffix(".json")) from err
    try:
        model.load_state_dict(load_state_dict(base))
    except RuntimeError as err:  # missing / unexpected keys, shape mismatch
        raise CorruptCheckpointError(
            f"the weights of {shown_path(base.with_suffix('.safetensors'))} do not fit the config in its manifest "
            f"(f={manifest['config'].get('f')}, ch={manifest['config'].get('ch')}): one of the two files was replaced "
            f"without the other ({str(err).splitlines()[0]}); {_restore_hint(base)}", base) from err
    return model.to(device).eval()


def first_stage_record(first_stage) -> dict:
    """What an LDM manifest records about its first stage, checked by :func:`load_ldm`: the downsampling factor,
    the latent channels and (for an exported first stage: a name or path) the sha256 of its weights file."""
    if isinstance(first_stage, torch.nn.Module):
        return dict(first_stage_f=int(first_stage.config.f), first_stage_channels=int(first_stage.embed_dim))
    base = resolve(first_stage)
    manifest = load_manifest(base)
    config = manifest["config"]
    return dict(first_stage_f=int(config["f"]),
                first_stage_channels=int(config.get("embed_dim") or config["z_channels"]),
                first_stage_sha256=sha256_file(weights_file(base, manifest)))


def _expected_first_stage(manifest: dict) -> dict:
    """f and latent channels an LDM manifest expects of its first stage: recorded at export, else implied by
    its ``ldm`` section (``image_size / latent_size``, ``latent_channels``) and the UNet's ``out_channels``."""
    ldm = manifest.get("ldm") or {}
    described = (manifest.get("config") or {}).get("first_stage") or {}
    f = manifest.get("first_stage_f") or described.get("f")
    if f is None and ldm.get("image_size") and ldm.get("latent_size"):
        f = int(ldm["image_size"]) // int(ldm["latent_size"][0])
    channels = manifest.get("first_stage_channels") or described.get("latent_channels")
    if channels is None:
        channels = ldm.get("latent_channels") or (manifest.get("unet_config") or {}).get("out_channels")
    return dict(f=f, channels=channels, sha256=manifest.get("first_stage_sha256"))


def _decoder_fine_tune_of(fs_base: Path, sha256: str, depth: int = 8) -> bool:
    """True if the autoencoder at ``fs_base`` descends from the weights ``sha256`` through decoder-only fine-tunes
    (``train-ae --init-from X --train-part decoder``): encoder and quantiser are then bit-identical, so are the latents
    an LDM was trained on; only the decoder -- how latents become pixels -- changed."""
    record = (load_manifest(fs_base).get("init_from") or {})
    for _ in range(depth):
        if record.get("train_part") != "decoder":
            return False
        if record.get("sha256") == sha256:
            return True
        try:
            record = load_manifest(record["name"]).get("init_from") or {}
        except (FileNotFoundError, KeyError, ValueError):
            return False
    return False


def check_first_stage(manifest: dict, name: str, first_stage, fs_base: Path | None = None) -> None:
    """Refuse (``FirstStageMismatchError``) a first stage whose f, latent channels or -- loaded from ``fs_base`` --
    weights differ from what the LDM ``name`` was trained with."""
    want = _expected_first_stage(manifest)
    cfg = getattr(first_stage, "config", None)
    have_f = getattr(cfg, "f", None)
    have_c = getattr(first_stage, "embed_dim", None)
    diffs = []
    if want["f"] is not None and have_f is not None and int(have_f) != int(want["f"]):
        diffs.append(f"downsampling factor f={have_f} instead of f={want['f']} (its images would come out "
                     f"{int(have_f) / int(want['f']):g} x the trained size)")
    if want["channels"] is not None and have_c is not None and int(have_c) != int(want["channels"]):
        diffs.append(f"{have_c} latent channels instead of {want['channels']}")
    if fs_base is not None and want["sha256"] is not None:
        got = sha256_file(weights_file(fs_base, load_manifest(fs_base)))
        if got != want["sha256"] and not _decoder_fine_tune_of(fs_base, want["sha256"]):
            diffs.append(f"other weights (sha256 {got[:16]}..., the LDM was trained on {want['sha256'][:16]}...)")
    if not diffs:
        return
    fs = manifest.get("first_stage")
    if fs_base is None:
        raise FirstStageMismatchError(
            f"the LDM {name!r} was trained on the first stage {fs!r}, but the first_stage passed in has "
            + "; ".join(diffs) + f"; pass the autoencoder it was trained with (or first_stage=None to load {fs!r})"
        )
    raise FirstStageMismatchError(
        f"the LDM {name!r} was trained on the first stage {fs!r}, but {shown_path(fs_base.with_suffix('.json'))} now "
        "has " + "; ".join(diffs) + ". It was replaced after the LDM was exported. Restore the original first stage "
        f"({_restore_hint(fs_base)}), or train and export a new LDM on the new first stage "
        f"(ldm-lite train-ldm --first-stage {fs} ... --export NEW_NAME)"
    )


def set_first_stage(ldm, autoencoder, force: bool = False) -> dict:
    """Make the exported LDM ``ldm`` decode with ``autoencoder`` from now on (its manifest's ``first_stage``).

    Only a *decoder-only* fine-tune of the first stage the LDM was trained on is accepted (``ldm-lite train-ae
    --init-from X --train-part decoder``): its encoder is bit-identical, so the latents the LDM learned are
    unchanged and only how they become pixels improves -- no retraining. Anything else raises
    :class:`FirstStageMismatchError` and leaves the manifest as it was. The first name the LDM used is kept
    as ``first_stage_trained_on``; the sha256 it was trained on is not touched. Returns the new manifest.

    Like every other write to ``data/pretrained/``, a manifest there (a shipped LDM, or an export made with a bare
    ``--export`` name) is changed only with ``force=True`` (the CLI's ``--force``): without it
    :class:`ExistingExportError` is raised once the switch has been checked, and nothing is written. A switch to
    the first stage the LDM already uses writes nothing either.
    """
    base = resolve(ldm)
    manifest = load_manifest(base)
    if manifest.get("kind") != "ldm":
        raise ValueError(f"{ldm!r} is a {manifest.get('kind')!r} checkpoint, not an LDM (kind='ldm')")
    if manifest.get("first_stage") in (None, "pixel"):
        raise ValueError(f"{ldm!r} has no exported first stage ({manifest.get('first_stage')!r}) to replace")
    if not manifest.get("first_stage_sha256"):
        raise ValueError(f"{shown_path(base.with_suffix('.json'))} does not record the sha256 of the first stage it "
                         "was trained on, so no other decoder can be checked against it; export the LDM again")
    fs_base = resolve(autoencoder)
    ae = load_autoencoder(fs_base)  # not an autoencoder: ValueError
    want = manifest["first_stage_sha256"]
    if sha256_file(weights_file(fs_base, load_manifest(fs_base))) != want and not _decoder_fine_tune_of(fs_base, want):
        trained_on = manifest.get("first_stage_trained_on", manifest["first_stage"])
        raise FirstStageMismatchError(
            f"{shown_path(fs_base.with_suffix('.json'))} is not a decoder-only fine-tune of {trained_on!r}, the first "
            f"stage {base.name!r} was trained on (sha256 {want[:16]}...): its encoder may differ, and with it the "
            f"latents, so the LDM would have to be retrained. Nothing was changed. Fine-tune a decoder with "
            f"`ldm-lite train-ae --init-from {trained_on} --train-part decoder ...`, or train a new LDM on this "
            f"autoencoder (ldm-lite train-ldm --first-stage {fs_base.name} ... --export NEW_NAME)")
    check_first_stage(manifest, base.name, ae)  # f and latent channels
    near = fs_base.parent.resolve() in (base.parent.resolve(), PRETRAINED_DIR)
    name = fs_base.name if near else str(fs_base)
    new = dict(manifest, first_stage=name)
    new.setdefault("first_stage_trained_on", manifest["first_stage"])
    if "measured" in manifest:  # image-space numbers were decoded by the old first stage: say so, keep them
        new.setdefault("measured_with_first_stage", manifest["first_stage"])
    if new == manifest:  # it already decodes with this first stage: nothing to write
        return new
    if base.parent.resolve() == PRETRAINED_DIR and not force:
        raise ExistingExportError(
            f"{shown_path(base.with_suffix('.json'))} is in data/pretrained/ (the shipped checkpoints' folder), where "
            f"a file is replaced only on request; nothing was changed. Pass force=True to switch it to {name!r} (a "
            f"shipped manifest comes back with `git checkout -- data/pretrained/{base.name}.json`), or copy "
            f"{base.name}.json and {base.name}.safetensors to a folder of your own and switch the copy")
    atomic_write(base.with_suffix(".json"), lambda tmp: Path(tmp).write_text(json.dumps(new, indent=2) + "\n"))
    return new


def ldm_manifest(model, first_stage: str | None, record: dict | None = None) -> dict:
    """The model part of an LDM export's manifest: ``kind``, the first stage it decodes with (``first_stage``: a
    shipped name, a path, ``"pixel"``, or ``None`` for a module that was not exported) with its f, latent channels
    and weights' sha256 (``record``: as measured when training started; default: measured now), and ``config``,
    the model's :class:`~ldm_lite.ldm_config.LDMConfig` with the estimated scale factor. :func:`load_ldm` reads it.
    """
    if record is None:
        record = first_stage_record(first_stage) if first_stage not in (None, "pixel") else {}
    config = model.export_config()
    # the manifest's "first_stage" is the one link to the autoencoder's files; the config keeps its architecture
    config = config.replace(name="pixel" if model.pixel_space else None)
    return dict(kind="ldm", first_stage=first_stage, **record, config=config.to_dict())


def export_ldm(model, export: str | os.PathLike, first_stage: str | None, extra: dict | None = None,
               force: bool = False, record: dict | None = None) -> Path:
    """Export ``model`` (a ``LatentDiffusion``): the UNet, a trainable cond stage and the scale factor as float16
    safetensors, and a manifest (:func:`ldm_manifest` + ``extra``: data, command, metrics ...). ``first_stage``
    names the autoencoder's own export (or ``"pixel"``); :func:`load_ldm` rebuilds the model from the two."""
    manifest = dict(ldm_manifest(model, first_stage, record), **(extra or {}))
    return save_pretrained(ldm_export_module(model), export_target(export), manifest, force=force)


def ldm_config_of(manifest: dict) -> LDMConfig:
    """The :class:`~ldm_lite.ldm_config.LDMConfig` of an LDM manifest: its ``config``, or -- for an export written
    before manifests stored one -- rebuilt from the ``ldm``, ``unet_config``, ``schedule`` and ``cond_stage`` entries
    such an export has."""
    if "config" in manifest:
        return LDMConfig.from_dict(manifest["config"])
    ldm, info = manifest["ldm"], manifest.get("cond_stage")
    sched = dict(manifest["schedule"])
    want = _expected_first_stage(manifest)
    pixel = manifest.get("first_stage") == "pixel"
    unet = UNetConfig(**manifest["unet_config"])
    cs = None if info is None else (info.get("config") or {"class": info.get("cls")})
    return LDMConfig(
        unet=unet,
        first_stage=FirstStageConfig(name="pixel" if pixel else None, posterior=ldm.get("posterior", "mode"),
                                     latent_channels=want["channels"] or unet.out_channels, f=int(want["f"] or 1)),
        conditioning=dict(conditioning_key=ldm.get("conditioning_key"), cond_key=ldm.get("cond_key"), cond_stage=cs,
                          cond_stage_trainable=bool(info and info.get("trainable")),
                          unconditional_value=ldm.get("unconditional_value"),
                          cond_drop_prob=ldm.get("cond_drop_prob") or 0.0),
        schedule=ScheduleConfig(schedule=sched.pop("schedule"), timesteps=sched.pop("n_timestep"), **sched),
        objective=ObjectiveConfig(parameterization=ldm.get("parameterization", "eps")),
        scale_factor=ldm["scale_factor"], image_size=ldm.get("image_size"),
    )


def load_ldm(name_or_path, device="cpu", first_stage=None, cond_stage=None):
    """Rebuild an exported :class:`~ldm_lite.ldm.LatentDiffusion` (manifest ``kind="ldm"``) in eval mode.

    The model comes from the manifest's ``config`` (:func:`ldm_config_of`), the weights (UNet, trainable cond
    stage) from the safetensors file, ``scale_factor`` from the config (exact; the float16 weights round it), and
    the first stage from the checkpoint the manifest names (shipped name, or a path relative to the manifest) --
    or ``"pixel"``. ``first_stage`` / ``cond_stage`` pass modules instead, e.g. a frozen pre-trained text encoder,
    which is recorded by class name but not exported.
    """
    base = resolve(name_or_path)
    manifest = load_manifest(base)
    if manifest.get("kind") != "ldm":
        raise ValueError(f"{name_or_path!r} is a {manifest.get('kind')!r} checkpoint, not an LDM (kind='ldm')")
    if first_stage is None and manifest.get("first_stage") not in (None, "pixel"):
        fs = manifest["first_stage"]
        try:
            fs_base = resolve(fs)
        except FileNotFoundError:
            fs_base = resolve(base.parent / fs)  # exported next to the LDM
        first_stage = load_autoencoder(fs_base)
        check_first_stage(manifest, base.name, first_stage, fs_base)
    elif first_stage is not None and manifest.get("first_stage") != "pixel":
        check_first_stage(manifest, base.name, first_stage)  # f and channels (a module has no file to hash)
    elif first_stage is None and manifest.get("first_stage") is None:
        raise ValueError(f"{name_or_path!r} was trained on an in-memory first stage that was not exported; "
                         "pass first_stage=<the autoencoder>")
    config = ldm_config_of(manifest)
    cs = config.conditioning.cond_stage
    if cs is not None and cond_stage is None and "type" not in cs:
        raise ValueError(
            f"{name_or_path!r} uses a cond stage ({cs.get('class')}); build it as in training and pass "
            "cond_stage=... (its weights are loaded from the checkpoint when it was trained)"
        )
    if first_stage is not None and isinstance(getattr(first_stage, "config", None), AutoencoderConfig):
        # the autoencoder decoding now (a decoder fine-tune may have replaced the one trained with)
        config = config.replace(autoencoder=first_stage.config)
    model = LatentDiffusion.from_config(config, first_stage=first_stage, cond_stage=cond_stage)
    load_ldm_weights(model, load_state_dict(base))
    with torch.no_grad():
        model.scale_factor.fill_(float(config.scale_factor))
    latent = (manifest.get("ldm") or {}).get("latent_size")
    if model.latent_size is None and latent:  # an old export trained without an image size
        model.latent_size = tuple(latent)
    return model.to(device).eval()


# --------------------------------------------------------------------------------------------------
# What an exported LDM stores: the UNet, a trainable cond stage and the scale factor. The first stage is
# a checkpoint of its own (named in the manifest), and a frozen cond stage (MiniLM, CLIP) is rebuilt from
# its own weights, so neither is repeated.
# --------------------------------------------------------------------------------------------------
class _ExportedLDM(torch.nn.Module):
    def __init__(self, unet: torch.nn.Module, cond_stage: torch.nn.Module | None, scale_factor: torch.Tensor):
        super().__init__()
        self.unet = unet
        if cond_stage is not None:
            self.cond_stage = cond_stage
        self.register_buffer("scale_factor", scale_factor.detach().clone())


def ldm_export_module(model) -> torch.nn.Module:
    """The part of a ``LatentDiffusion`` an export stores (``unet.*``, a trainable ``cond_stage.*``,
    ``scale_factor``), as one module to pass to :func:`save_pretrained`."""
    cs = model.cond_stage if (model.cond_stage is not None and model.cond_stage_trainable) else None
    return _ExportedLDM(model.unet, cs, model.scale_factor)


def load_ldm_weights(model, state_dict: dict[str, torch.Tensor]):
    """Load what :func:`ldm_export_module` stored into ``model`` (a ``LatentDiffusion``); returns it.

    (Exports are float16, which rounds ``scale_factor``; :func:`load_ldm` then sets the exact value from
    the manifest.)
    """
    unet_sd = {k[len("unet."):]: v for k, v in state_dict.items() if k.startswith("unet.")}
    cs_sd = {k[len("cond_stage."):]: v for k, v in state_dict.items() if k.startswith("cond_stage.")}
    other = set(state_dict) - {f"unet.{k}" for k in unet_sd} - {f"cond_stage.{k}" for k in cs_sd} - {"scale_factor"}
    if other:
        raise KeyError(f"unexpected keys in an exported LDM state dict: {sorted(other)[:8]}")
    model.unet.load_state_dict(unet_sd)
    if cs_sd:
        if model.cond_stage is None:
            raise KeyError("the weights include a cond stage, but this model has cond_stage=None")
        model.cond_stage.load_state_dict(cs_sd)
    if "scale_factor" in state_dict:
        with torch.no_grad():
            model.scale_factor.copy_(state_dict["scale_factor"].float())
    return model
