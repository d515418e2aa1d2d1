"""Small shipped checkpoints in ``data/pretrained/``: safetensors weights + a JSON manifest.

A manifest records what a later chapter (and a sceptical reader) needs to trust a checkpoint: the
model config, the data, the exact command that trained it, the steps, the wall time and held-out
metrics. Weights are stored in float16 to keep each file small (<= 10 MB); they are loaded back as
float32. Loading never unpickles code (safetensors only).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ldm_lite.io import atomic_write

PRETRAINED_DIR = Path(__file__).resolve().parent.parent / "data" / "pretrained"


def save_pretrained(model: torch.nn.Module, path: str | os.PathLike, manifest: dict, dtype=torch.float16) -> Path:
    """Write ``<path>.safetensors`` (weights cast to ``dtype``) and ``<path>.json`` (the manifest), atomically."""
    path = Path(path)
    base = path.with_suffix("") if path.suffix in (".safetensors", ".json") else path
    tensors = {k: (v.detach().to(dtype) if v.is_floating_point() else v.detach()).contiguous().cpu()
               for k, v in model.state_dict().items()}
    weights = base.with_suffix(".safetensors")
    atomic_write(weights, lambda tmp: save_file(tensors, tmp))
    manifest = dict(manifest, weights=weights.name, dtype=str(dtype).replace("torch.", ""),
                    size_mb=round(weights.stat().st_size / 2**20, 2),
                    parameters=sum(v.numel() for v in tensors.values() if v.is_floating_point()))
    atomic_write(base.with_suffix(".json"), lambda tmp: Path(tmp).write_text(json.dumps(manifest, indent=2) + "\n"))
    return weights


def resolve(name_or_path: str | os.PathLike) -> Path:
    """A shipped checkpoint's name (``"ae_kl_f4_openmoji64"``) or a path -> the base path (no suffix)."""
    p = Path(name_or_path)
    base = p.with_suffix("") if p.suffix in (".safetensors", ".json") else p
    if base.with_suffix(".json").exists():
        return base
    shipped = PRETRAINED_DIR / base.name
    if shipped.with_suffix(".json").exists():
        return shipped
    available = ", ".join(sorted(x.stem for x in PRETRAINED_DIR.glob("*.json"))) or "none"
    raise FileNotFoundError(
        f"no checkpoint {str(name_or_path)!r} (looked for {base}.json and {shipped}.json); "
        f"shipped checkpoints: {available}"
    )


def load_manifest(name_or_path) -> dict:
    """The JSON manifest of a checkpoint."""
    return json.loads(resolve(name_or_path).with_suffix(".json").read_text())


def load_state_dict(name_or_path, dtype=torch.float32) -> dict:
    """The weights of a checkpoint as a state dict (floating tensors cast to ``dtype``)."""
    sd = load_file(str(resolve(name_or_path).with_suffix(".safetensors")))
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}


def list_pretrained() -> list[dict]:
    """Manifests of all checkpoints shipped in ``data/pretrained/``."""
    return [json.loads(p.read_text()) | {"name": p.stem} for p in sorted(PRETRAINED_DIR.glob("*.json"))]


def load_autoencoder(name_or_path, device="cpu"):
    """Rebuild an AutoencoderKL / VQModel from its manifest's config and load its weights (eval mode)."""
    from ldm_lite.autoencoder.model import AutoencoderConfig, build_autoencoder

    manifest = load_manifest(name_or_path)
    if manifest.get("kind") != "autoencoder":
        raise ValueError(f"{name_or_path!r} is a {manifest.get('kind')!r} checkpoint, not an autoencoder")
    model = build_autoencoder(AutoencoderConfig(**manifest["config"]))
    model.load_state_dict(load_state_dict(name_or_path))
    return model.to(device).eval()


def load_ldm(name_or_path, device="cpu", first_stage=None, cond_stage=None):
    """Rebuild an exported :class:`~ldm_lite.ldm.LatentDiffusion` (manifest ``kind="ldm"``) in eval mode.

    The UNet comes from the manifest's ``unet_config``, the weights (UNet, trainable cond stage) from
    the safetensors file, ``scale_factor`` from the manifest (exact; the float16 weights round it), and
    the first stage from the checkpoint the manifest names (shipped name, or a path relative to the
    manifest) -- or ``"pixel"``. ``first_stage`` / ``cond_stage`` pass modules instead, e.g. a frozen
    pre-trained text encoder, which is recorded by class name but not exported.
    """
    from ldm_lite.diffusion import NoiseSchedule
    from ldm_lite.ldm import LatentDiffusion
    from ldm_lite.unet import UNetModel

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
    elif first_stage is None and manifest.get("first_stage") is None:
        raise ValueError(f"{name_or_path!r} was trained on an in-memory first stage that was not exported; "
                         "pass first_stage=<the autoencoder>")
    info = manifest.get("cond_stage")
    if info is not None and cond_stage is None and info.get("config"):
        from ldm_lite.conditioning import build_cond_stage

        cond_stage = build_cond_stage(info["config"])
    if info is not None and cond_stage is None:
        raise ValueError(
            f"{name_or_path!r} uses a cond stage ({info.get('cls')}); build it as in training and pass "
            "cond_stage=... (its weights are loaded from the checkpoint when it was trained)"
        )
    ldm_cfg = manifest["ldm"]
    unet = UNetModel.from_config(manifest["unet_config"])
    sched = dict(manifest["schedule"])
    schedule = NoiseSchedule.from_name(sched.pop("schedule"), sched.pop("n_timestep"), **sched)
    uv = ldm_cfg.get("unconditional_value")
    if isinstance(uv, list):  # a tensor (an empty layout ...) stored as nested lists
        uv = torch.tensor(uv)
    model = LatentDiffusion(
        first_stage, unet, cond_stage, conditioning_key=ldm_cfg.get("conditioning_key"),
        cond_key=ldm_cfg.get("cond_key"), cond_stage_trainable=bool(info and info.get("trainable")),
        schedule=schedule, parameterization=ldm_cfg.get("parameterization", "eps"),
        posterior=ldm_cfg.get("posterior", "mode"), unconditional_value=uv,
        image_size=ldm_cfg.get("image_size"),
    )
    load_ldm_weights(model, load_state_dict(base))
    with torch.no_grad():
        model.scale_factor.fill_(float(ldm_cfg["scale_factor"]))
    if ldm_cfg.get("latent_size"):
        model.latent_size = tuple(ldm_cfg["latent_size"])
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
