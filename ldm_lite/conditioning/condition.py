"""The one form a condition takes inside :class:`~ldm_lite.ldm.LatentDiffusion`.

A *learned* condition is a dict with the keys CompVis's ``DiffusionWrapper`` routes into the UNet, plus the
padding mask of the context:

==================  ===============================  =======================================================
key                 shape                            enters the UNet
==================  ===============================  =======================================================
``c_crossattn``     (B, M, D) float                  as keys/values of every cross-attention layer (Eq. 3)
``context_mask``    (B, M) bool, True = real token   padded tokens get zero attention weight
``c_concat``        (B, C, h, w) float               concatenated to ``z_t`` on the channel axis
``y``               (B,) long                        class embedding added to the time embedding (ADM)
==================  ===============================  =======================================================

:func:`as_condition` builds it once, where a condition enters the model (the output of a cond stage, or a
condition handed to ``sample(c=...)`` / ``apply_model``); everything after that -- dropout for guidance,
batching for classifier-free guidance, the UNet call -- reads only this dict. CompVis passes the same
information as ``{"c_crossattn": [c], "c_concat": [c]}`` lists; those are accepted and concatenated.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["CONDITION_KEYS", "as_condition", "batch_size_of", "check_class_labels", "expand_batch", "raw_batch",
           "to_device", "where_dropped"]

CONDITION_KEYS = ("c_concat", "c_crossattn", "context_mask", "y")
_PART_OF_KEY = {"crossattn": "c_crossattn", "concat": "c_concat", "adm": "y"}


def as_condition(c: Any, conditioning_key: str | None) -> dict[str, torch.Tensor] | None:
    """A learned condition in any accepted form -> the canonical dict (``None`` stays ``None``).

    Accepted: the dict itself (CompVis lists inside are concatenated on the token / channel axis); a
    tensor (the one part ``conditioning_key`` uses: context, concat image or labels); a ``(context, mask)``
    pair, as text encoders return.
    """
    if c is None:
        return None
    if conditioning_key is None:
        raise ValueError("this model is unconditional (conditioning_key=None) but a condition was given")
    if isinstance(c, dict):
        bad = set(c) - set(CONDITION_KEYS)
        if bad:
            raise ValueError(f"unknown condition keys {sorted(bad)}; use {', '.join(CONDITION_KEYS)}")
        out = {}
        for k, v in c.items():
            if isinstance(v, (list, tuple)):
                v = torch.cat(list(v), dim=1) if len(v) > 1 else v[0]
            out[k] = v
        return out
    if (isinstance(c, tuple) and len(c) == 2 and torch.is_tensor(c[0]) and torch.is_tensor(c[1])
            and c[1].dtype == torch.bool and conditioning_key in ("crossattn", "hybrid")):
        return {"c_crossattn": c[0], "context_mask": c[1]}  # (context, mask) of a text / layout encoder
    if isinstance(c, (list, tuple)) and c and all(torch.is_tensor(v) for v in c):
        c = torch.cat(list(c), dim=1) if len(c) > 1 else c[0]
    if not torch.is_tensor(c):
        raise TypeError(
            f"a learned condition must be a tensor or a dict of tensors, got {type(c).__name__}; raw conditions "
            "(captions, labels, layouts ...) go through get_learned_conditioning first"
        )
    if conditioning_key == "hybrid":
        raise ValueError("conditioning_key='hybrid' needs a dict {'c_concat': (B, C, h, w), 'c_crossattn': (B, M, D)}")
    return {_PART_OF_KEY[conditioning_key]: c}


def check_class_labels(labels: Any, num_classes: int, null_class: int | None = None,
                       what: str = "class labels") -> torch.Tensor:
    """Raw class labels (an int, a list of ints or an integer tensor ``(B,)``) -> a long tensor ``(B,)``, or a
    ``ValueError`` / ``TypeError`` that names the bad value and the valid range ``0..num_classes - 1``.

    Called once where labels enter the model (``LatentDiffusion.get_learned_conditioning`` / ``sample``), so
    that a label 99 or -1 fails with the range instead of ``nn.Embedding``'s "index out of range in self".
    ``null_class``: the label that stands for "no class" (classifier-free guidance), named in the message.
    """
    null = f" ({null_class} = the null class of guidance)" if null_class is not None else ""
    valid = f"0..{num_classes - 1}{null}"
    if isinstance(labels, bool) or isinstance(labels, float) or isinstance(labels, str):
        raise TypeError(f"{what} must be integers in {valid}, got {labels!r} ({type(labels).__name__}); "
                        "pass an int, a list of ints or a long tensor (B,)")
    if not torch.is_tensor(labels):
        try:
            labels = torch.as_tensor(labels)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"{what} must be integers in {valid}, got {labels!r}; pass an int, a list of ints "
                            "or a long tensor (B,)") from None
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        shown = labels.flatten()[:4].tolist()
        raise TypeError(f"{what} must be integers in {valid}, got dtype {labels.dtype} (values {shown}); pass a long "
                        "tensor, e.g. torch.tensor([3]) or labels.long()")
    if labels.ndim == 0:
        labels = labels[None]
    if labels.ndim != 1:
        raise ValueError(f"{what} must have shape (B,), got {tuple(labels.shape)}")
    if labels.numel():
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= num_classes:
            bad = lo if lo < 0 else hi
            raise ValueError(f"{what}: label {bad} is out of range; valid labels are {valid} (the model has "
                             f"{num_classes} classes). Fix the label, or build the model with more classes")
    return labels.long()


def batch_size_of(cond: dict[str, torch.Tensor]) -> int:
    """The batch size of a canonical condition."""
    for v in cond.values():
        return int(v.shape[0]) if v.ndim else 1
    raise ValueError("an empty condition has no batch size")


def expand_batch(cond: dict[str, torch.Tensor], batch_size: int) -> dict[str, torch.Tensor]:
    """Repeat a condition of batch size 1 to ``batch_size`` (others are returned as they are)."""
    out = {}
    for k, v in cond.items():
        if v.ndim == 0:
            v = v.expand(batch_size)
        elif v.shape[0] == 1 and batch_size != 1:
            v = v.expand(batch_size, *v.shape[1:])
        out[k] = v
    return out


def raw_batch(value: Any, batch_size: int) -> Any:
    """One sample's *raw* condition (int, float, str, tensor without batch axis, list of numbers, dict of
    these) -> a batch of ``batch_size`` copies, as a dataset's collate would make it."""
    if isinstance(value, bool):
        raise TypeError("a raw condition must be an int, str, tensor ..., not a bool")
    if isinstance(value, int):
        return torch.full((batch_size,), value, dtype=torch.long)
    if isinstance(value, float):
        return torch.full((batch_size,), value, dtype=torch.float32)
    if isinstance(value, str):
        return [value] * batch_size
    if torch.is_tensor(value):
        return value.unsqueeze(0).expand(batch_size, *value.shape)
    if isinstance(value, dict):
        return {k: raw_batch(v, batch_size) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        try:
            return raw_batch(torch.tensor(value), batch_size)  # token ids, a layout stored as nested lists
        except (TypeError, ValueError):
            pass
    raise TypeError(
        f"cannot make a batch of the raw condition {value!r}; use an int, float, str, tensor (one sample, no batch "
        "axis), (nested) lists of numbers or a dict of these -- or a callable batch_size -> raw batch"
    )


def to_device(x: Any, device: torch.device) -> Any:
    """Tensors inside a raw condition (tensor, list, tuple, dict) moved to ``device``; strings stay."""
    if torch.is_tensor(x):
        return x.to(device)
    if isinstance(x, dict):
        return {k: to_device(v, device) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(to_device(v, device) for v in x)
    return x


def where_dropped(dropped: torch.Tensor, uncond: dict[str, torch.Tensor],
                  cond: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per sample: the unconditional condition where ``dropped`` (B,) is True, the condition elsewhere.

    Parts the unconditional condition lacks (the ``c_concat`` image of inpainting / super-resolution) are
    kept. A context without a mask counts as all real tokens.
    """
    cond, uncond = dict(cond), dict(uncond)
    if "context_mask" in cond or "context_mask" in uncond:
        for d in (cond, uncond):
            if "context_mask" not in d and "c_crossattn" in d:
                ctx = d["c_crossattn"]
                d["context_mask"] = torch.ones(ctx.shape[:2], dtype=torch.bool, device=ctx.device)
    b = dropped.shape[0]
    out = dict(cond)
    for k, uv in uncond.items():
        cv = cond[k]
        if uv.shape[1:] != cv.shape[1:]:
            raise ValueError(
                f"the unconditional {k} has shape {tuple(uv.shape[1:])} per sample but the condition has "
                f"{tuple(cv.shape[1:])}; give the unconditional value the same form (e.g. pad token ids to the same "
                "length)"
            )
        m = dropped.to(cv.device).reshape(b, *([1] * (cv.ndim - 1)))
        out[k] = torch.where(m, uv.to(cv.dtype), cv)
    return out
