"""The latent cache: encode a dataset through the frozen first stage once, train on the latents.

The first stage is frozen (Sec. 3.1), so ``E(x)`` of a training image never changes: encoding every image once
and training the diffusion model on the stored latents gives exactly the loss of encoding in the loop
(with the posterior mode, ``LatentDiffusion(posterior="mode")``) and skips the encoder at every step --
chapter 04 measures the saving. :func:`encode_dataset` makes a :class:`LatentDataset`; ``LatentDiffusion``
trains on its ``{"latent": ..., <condition fields>}`` items like on images.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset

from ldm_lite.io import atomic_write
from ldm_lite.progress import progress as tqdm

__all__ = ["LatentDataset", "encode_dataset", "latents_of_batch"]


class LatentDataset(Dataset):
    """Pre-encoded, already scaled latents plus the conditioning fields of the images they came from.

    ``dataset[i] == {"latent": (c, h, w), **{key: value_i}}``. Made by :func:`encode_dataset`;
    ``scale_factor`` records the scale the latents carry (a model must use the same one).
    """

    def __init__(self, latents: torch.Tensor, fields: dict[str, Any] | None = None, scale_factor: float = 1.0,
                 info: dict | None = None):
        self.latents = latents
        self.fields = dict(fields or {})
        for k, v in self.fields.items():
            if len(v) != len(latents):
                raise ValueError(f"field {k!r} has {len(v)} entries for {len(latents)} latents")
        self.scale_factor = float(scale_factor)
        self.info = dict(info or {})

    def __len__(self) -> int:
        return len(self.latents)

    def __getitem__(self, index: int) -> dict:
        item = {"latent": self.latents[index]}
        for k, v in self.fields.items():
            item[k] = v[index]
        return item

    def __repr__(self) -> str:
        return (f"LatentDataset(n={len(self)}, latent={tuple(self.latents.shape[1:])}, fields={list(self.fields)}, "
                f"scale_factor={self.scale_factor:.5g})")

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``<path>.safetensors`` (tensors) + ``<path>.json`` (scale, info, non-tensor fields), atomically."""
        base = Path(path).with_suffix("")
        tensors = {"latent": self.latents.contiguous()}
        other = {}
        for k, v in self.fields.items():
            if torch.is_tensor(v):
                tensors[f"field.{k}"] = v.contiguous()
            else:
                other[k] = list(v)
        atomic_write(base.with_suffix(".safetensors"), lambda tmp: save_file(tensors, tmp))
        meta = {"scale_factor": self.scale_factor, "info": self.info, "fields": other}
        atomic_write(base.with_suffix(".json"), lambda tmp: Path(tmp).write_text(json.dumps(meta)))
        return base.with_suffix(".safetensors")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "LatentDataset":
        base = Path(path).with_suffix("")
        tensors = load_file(str(base.with_suffix(".safetensors")))
        meta = json.loads(base.with_suffix(".json").read_text())
        fields = {k[len("field."):]: v for k, v in tensors.items() if k.startswith("field.")}
        fields.update(meta.get("fields", {}))
        return cls(tensors["latent"], fields, scale_factor=meta["scale_factor"], info=meta.get("info"))


@torch.no_grad()
def encode_dataset(model, dataset, batch_size: int = 64, keys: Sequence[str] | None = None,
                   progress: bool = True, num_workers: int = 0, collate_fn: Callable | None = None) -> LatentDataset:
    """Encode a whole dataset once: a :class:`LatentDataset` of scaled latents plus the fields ``keys``.

    Training on it skips the encoder (``training_step`` takes ``"latent"`` batches). ``keys`` default:
    the condition's batch key(s). With ``scale_by_std`` and no estimate yet, ``scale_factor`` is
    estimated first, from the first ``batch_size`` images (in dataset order), so every cached latent
    has the same scale. Fields the cond stage lists in ``encode_fields`` (an inpainting model's
    ``masked_image``) are encoded too and stored under their latent name (``masked_latent``). The latents are deterministic with ``posterior="mode"``; with ``"sample"``
    each image keeps the one sample drawn here.
    """
    if keys is None:
        if model.cond_key is None:
            keys = ()
        elif isinstance(model.cond_key, dict):
            keys = tuple(model.cond_key.values())
        elif isinstance(model.cond_key, tuple):
            keys = model.cond_key
        else:
            keys = (model.cond_key,)
    keys = tuple(keys)
    encode = dict(getattr(model.cond_stage, "encode_fields", None) or {})  # image fields cached as latents
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=collate_fn)
    was_training = model.training
    model.eval()
    latents: list[torch.Tensor] = []
    fields: dict[str, list] = {encode.get(k, k): [] for k in keys}
    try:
        for batch in tqdm(loader, desc="encoding latents", disable=not progress, leave=False):
            if not isinstance(batch, dict) or "image" not in batch:
                raise KeyError("encode_dataset needs samples that are dicts with an 'image'")
            missing = [k for k in keys if k not in batch]
            if missing:
                raise KeyError(f"the dataset's samples have no {missing}; their keys: {sorted(batch)}")
            images = batch["image"].to(model.device)
            if model.scale_by_std and not model.scale_estimated:
                model.estimate_scale_factor(images)
            latents.append(model.encode_first_stage(images).cpu())
            for k in keys:
                if k in encode:
                    fields[encode[k]].append(model.encode_first_stage(batch[k].to(model.device).float()).cpu())
                else:
                    fields[k].append(batch[k])
    finally:
        model.train(was_training)
    merged = {}
    for k, parts in fields.items():
        if parts and torch.is_tensor(parts[0]):
            merged[k] = torch.cat(parts)
        else:
            merged[k] = [v for p in parts for v in p]
    return LatentDataset(torch.cat(latents), merged, scale_factor=float(model.scale_factor),
                         info={"posterior": model.posterior, "f": model.f})


def latents_of_batch(batch, encode, channels: int, device) -> torch.Tensor:
    """The scaled latents of a training batch: ``batch["latent"]`` as it is (cached by :func:`encode_dataset`,
    already scaled) or ``encode(batch["image"])``; a bare tensor is taken as images. Checked: ``(B, channels, h, w)``."""
    if torch.is_tensor(batch):
        batch = {"image": batch}
    if not isinstance(batch, dict):
        raise TypeError(f"a batch must be a dict with 'image' or 'latent', got {type(batch).__name__}")
    if "latent" in batch:
        z = batch["latent"].to(device).float()
    elif "image" in batch:
        z = encode(batch["image"].to(device))
    else:
        raise KeyError(f"the batch has neither 'image' nor 'latent' (keys: {sorted(batch)})")
    if z.ndim != 4 or z.shape[1] != channels:
        raise ValueError(f"expected latents of shape (B, {channels}, h, w), got {tuple(z.shape)}")
    return z
