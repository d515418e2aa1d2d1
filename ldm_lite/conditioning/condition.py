"""The one form a learned condition takes inside :class:`~ldm_lite.ldm.LatentDiffusion`: a :class:`Condition`.

It holds the parts CompVis's ``DiffusionWrapper`` routes into the UNet, plus the padding mask of the context:

==================  ===============================  =======================================================
field (old key)     shape                            enters the UNet
==================  ===============================  =======================================================
``context``         (B, M, D) float                  as keys/values of every cross-attention layer (Eq. 3)
(``c_crossattn``)
``context_mask``    (B, M) bool, True = real token   padded tokens get zero attention weight
``concat``          (B, C, h, w) float               concatenated to ``z_t`` on the channel axis
(``c_concat``)
``y``               (B,) long                        class embedding added to the time embedding (ADM)
==================  ===============================  =======================================================

:meth:`Condition.of` is the one place where other forms are converted: the output of a cond stage (a tensor, a
``(context, mask)`` pair, a dict with the old keys), a condition handed to ``sample(c=...)`` / ``apply_model``, and
CompVis's ``{"c_crossattn": [c], "c_concat": [c]}`` lists (concatenated). Everything after that -- dropout for
guidance (:meth:`Condition.where`), the doubled batch of classifier-free guidance (:meth:`Condition.cat`), the UNet
call -- works on the :class:`Condition`. It reads like the old dict too (``c["c_crossattn"]``, ``c.items()``).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Callable

import torch

from ldm_lite.checks import check_class_labels  # noqa: F401  (re-exported: its old home)

__all__ = ["CONDITION_KEYS", "Condition", "check_class_labels", "raw_batch", "raw_condition", "to_device"]

CONDITION_KEYS = ("c_concat", "c_crossattn", "context_mask", "y")  # the old dict keys
_FIELD_OF_KEY = {"c_crossattn": "context", "context_mask": "context_mask", "c_concat": "concat", "y": "y"}
_ROUTED = {"crossattn": ("context", "context_mask"), "concat": ("concat",), "adm": ("y",),
           "hybrid": ("context", "context_mask", "concat")}  # the parts each conditioning_key feeds the UNet
_NEEDED = {"context": "a context 'c_crossattn' of shape (B, M, D)", "y": "class labels y (B,)",
           "concat": "a 'c_concat' tensor (B, C, h, w) at the latent size"}


def _joined(v: Any) -> Any:
    """CompVis's list of tensors -> one tensor (concatenated on the token / channel axis)."""
    if isinstance(v, (list, tuple)) and v and all(torch.is_tensor(t) for t in v):
        return torch.cat(list(v), dim=1) if len(v) > 1 else v[0]
    return v


@dataclass(frozen=True, eq=False)
class Condition:
    """A learned condition: the parts the UNet reads (each ``None`` when absent), batch first."""

    context: torch.Tensor | None = None
    context_mask: torch.Tensor | None = None
    concat: torch.Tensor | None = None
    y: torch.Tensor | None = None

    @classmethod
    def of(cls, c: Any, conditioning_key: str | None) -> "Condition | None":
        """Any accepted form of a learned condition -> a :class:`Condition` (``None`` and a Condition stay as they
        are): a dict with the old keys (CompVis lists inside are concatenated), a ``(context, mask)`` pair as text
        encoders return, or a tensor -- the one part ``conditioning_key`` uses (context, concat image or labels).
        Parts that ``conditioning_key`` does not route into the UNet are left out."""
        if c is None:
            return None
        if conditioning_key is None:
            raise ValueError("this model is unconditional (conditioning_key=None) but a condition was given")
        if isinstance(c, Condition):
            return c
        if isinstance(c, dict):
            bad = set(c) - set(CONDITION_KEYS)
            if bad:
                raise ValueError(f"unknown condition keys {sorted(bad)}; use {', '.join(CONDITION_KEYS)}")
            parts = {_FIELD_OF_KEY[k]: _joined(v) for k, v in c.items()}
        elif (isinstance(c, tuple) and len(c) == 2 and torch.is_tensor(c[0]) and torch.is_tensor(c[1])
              and c[1].dtype == torch.bool and conditioning_key in ("crossattn", "hybrid")):
            parts = {"context": c[0], "context_mask": c[1]}  # (context, mask) of a text / layout encoder
        elif conditioning_key == "hybrid":
            raise ValueError("conditioning_key='hybrid' needs a dict {'c_concat': (B, C, h, w), 'c_crossattn': "
                             "(B, M, D)}")
        else:
            parts = {_ROUTED[conditioning_key][0]: _joined(c)}
        for v in parts.values():
            if not torch.is_tensor(v):
                raise TypeError(
                    f"a learned condition must be a tensor or a dict of tensors, got {type(v).__name__}; raw "
                    "conditions (captions, labels, layouts ...) go through get_learned_conditioning first"
                )
        return cls(**{k: v for k, v in parts.items() if k in _ROUTED[conditioning_key]})

    # ---- the parts ------------------------------------------------------------------------------
    def check_parts(self, conditioning_key: str) -> "Condition":
        """Raise unless the parts ``conditioning_key`` routes into the UNet are present; returns the condition."""
        for part in _ROUTED[conditioning_key]:
            if part != "context_mask" and getattr(self, part) is None:
                raise ValueError(f"conditioning_key={conditioning_key!r} needs {_NEEDED[part]}")
        return self

    def parts(self) -> dict[str, torch.Tensor]:
        """The parts that are set, by field name."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    def _map(self, fn: Callable[[str, torch.Tensor], torch.Tensor]) -> "Condition":
        return Condition(**{k: fn(k, v) for k, v in self.parts().items()})

    @property
    def batch_size(self) -> int:
        for v in self.parts().values():
            return int(v.shape[0]) if v.ndim else 1
        raise ValueError("an empty condition has no batch size")

    def __repr__(self) -> str:
        shown = (f"{k}={tuple(v.shape)} {str(v.dtype).replace('torch.', '')}" for k, v in self.parts().items())
        return f"Condition({', '.join(shown)})"

    # ---- batches --------------------------------------------------------------------------------
    def expand(self, batch_size: int) -> "Condition":
        """A condition of batch size 1 repeated to ``batch_size`` (a view); one of that size as it is."""
        if self.batch_size not in (1, batch_size):
            raise ValueError(f"the condition holds {self.batch_size} samples but {batch_size} are sampled; give one "
                             "condition per sample, or one for all of them")

        def grow(_, v):
            if v.ndim == 0:
                return v.expand(batch_size)
            return v.expand(batch_size, *v.shape[1:]) if v.shape[0] == 1 and batch_size != 1 else v

        return self._map(grow)

    def to(self, device: torch.device | str) -> "Condition":
        return self._map(lambda _, v: v.to(device))

    def _with_mask(self) -> "Condition":
        """A context without a mask gets one of all real tokens."""
        if self.context is None or self.context_mask is not None:
            return self
        ones = torch.ones(self.context.shape[:2], dtype=torch.bool, device=self.context.device)
        return Condition(**{**self.parts(), "context_mask": ones})

    def where(self, dropped: torch.Tensor, other: "Condition") -> "Condition":
        """Per sample: ``other`` where ``dropped`` (B,) is True, this condition elsewhere (condition dropout).

        Parts ``other`` lacks (the concat image of inpainting / super-resolution) are kept. A context without a
        mask counts as all real tokens.
        """
        mine, theirs = self, other
        if self.context_mask is not None or other.context_mask is not None:
            mine, theirs = self._with_mask(), other._with_mask()
        b, out = dropped.shape[0], mine.parts()
        for k, uv in theirs.parts().items():
            cv = out[k]
            if uv.shape[1:] != cv.shape[1:]:
                raise ValueError(
                    f"the unconditional {k} has shape {tuple(uv.shape[1:])} per sample but the condition has "
                    f"{tuple(cv.shape[1:])}; give the unconditional value the same form (e.g. pad token ids to the "
                    "same length)"
                )
            m = dropped.to(cv.device).reshape(b, *([1] * (cv.ndim - 1)))
            out[k] = torch.where(m, uv.to(cv.dtype), cv)
        return Condition(**out)

    def cat(self, other: "Condition") -> "Condition":
        """``[self, other]`` along the batch axis: ``uncond.cat(cond)`` is classifier-free guidance's doubled batch.

        A part this condition lacks takes ``other``'s for both halves (the concat image is the same with and without
        guidance); a part only this one has is an error. Batch size 1 is expanded to ``other``'s; the parts are cast
        to ``other``'s dtype and device.
        """
        mine, theirs = self.parts(), other.parts()
        extra = set(mine) - set(theirs)
        if extra:
            raise ValueError(f"unconditional conditioning has parts {sorted(extra)} that the conditional one lacks")
        out = {}
        for k, c in theirs.items():
            u = mine.get(k, c)
            if u.shape[0] == 1 and c.shape[0] > 1:
                u = u.expand(c.shape[0], *u.shape[1:])
            if u.shape != c.shape:
                raise ValueError(f"unconditional and conditional {k} must have the same shape, got "
                                 f"{tuple(u.shape)} and {tuple(c.shape)}")
            out[k] = torch.cat([u.to(c), c])
        return Condition(**out)

    def chunk(self, n: int) -> list["Condition"]:
        """Split along the batch axis into ``n`` conditions (the inverse of :meth:`cat`)."""
        parts = {k: v.chunk(n) for k, v in self.parts().items()}
        return [Condition(**{k: p[i] for k, p in parts.items()}) for i in range(n)]

    def zeros_like(self, batch_size: int | None = None) -> "Condition":
        """The zero condition of this form (``batch_size`` samples): zero context (every token real), zero concat
        image. Class labels have no zero condition (0 is a class): use a null class."""
        b = self.batch_size if batch_size is None else batch_size

        def zero(k, v):
            if k == "y":
                raise ValueError("class labels have no zero condition (0 is a class); use a null class")
            if k == "context_mask":
                return torch.ones(b, *v.shape[1:], dtype=torch.bool, device=v.device)
            return torch.zeros(b, *v.shape[1:], device=v.device, dtype=v.dtype)

        return self._map(zero)

    @classmethod
    def zeros(cls, conditioning_key: str, batch_size: int, like: "Condition | None", context_dim: int | None,
              concat_channels: int, size: Any, device: torch.device) -> "Condition":
        """The zero null condition of a model without a null value: zeros shaped like ``like`` (a learned
        condition), else a one-token zero context ``(B, 1, context_dim)`` or a zero concat image of
        ``concat_channels`` at ``size`` (the latent size). ``"hybrid"``: the cross-attention part only (the concat
        image is kept from the condition when guiding)."""
        if conditioning_key != "concat":  # "crossattn", "hybrid"
            if like is not None and like.context is not None:
                return cls(context=like.context, context_mask=like.context_mask).zeros_like(batch_size)
            return cls(context=torch.zeros(batch_size, 1, context_dim, device=device))
        if like is not None and like.concat is not None:
            return cls(concat=like.concat).zeros_like(batch_size)
        if size is None:
            raise ValueError("the zero concat condition needs its size: pass latent_size=(h, w) (or like=a condition)")
        h, w = (size, size) if isinstance(size, int) else size
        return cls(concat=torch.zeros(batch_size, concat_channels, h, w, device=device))

    # ---- read like the old dict: c["c_crossattn"], c.get("context_mask"), c.items() ----------------
    def keys(self) -> list[str]:
        return [k for k, f in _FIELD_OF_KEY.items() if getattr(self, f) is not None]

    def items(self) -> list[tuple[str, torch.Tensor]]:
        return [(k, getattr(self, _FIELD_OF_KEY[k])) for k in self.keys()]

    def __contains__(self, key: str) -> bool:
        return key in self.keys()

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self:
            raise KeyError(f"{key!r}: this condition has {self.keys()}")
        return getattr(self, _FIELD_OF_KEY[key])

    def get(self, key: str, default: Any = None) -> Any:
        return self[key] if key in self else default


def raw_condition(batch: Any, cond_key: Any, encoded: dict[str, str] | None = None,
                  conditioning_key: str | None = None) -> Any:
    """The raw condition of a training batch: the field ``cond_key``; for a dict ``{part: field}`` (hybrid) the dict
    ``{part: batch[field]}``; for a tuple of fields the dict ``{field: batch[field]}``, where a field the latent cache
    holds already encoded (``encoded[field]``, a cond stage's ``encode_fields``) is taken in its encoded form. A
    missing field is a ``KeyError`` that names it and the batch's keys."""
    if not isinstance(batch, dict):
        raise KeyError(f"a conditional model needs dict batches with the condition under {cond_key!r}")
    encoded = encoded or {}
    if isinstance(cond_key, dict):
        names = dict(cond_key)
    elif isinstance(cond_key, tuple):  # several fields form one raw condition (a dict)
        names = {}
        for k in cond_key:
            name = encoded[k] if k not in batch and encoded.get(k) in batch else k
            names[name] = name
    else:
        names = None
    missing = [k for k in ([cond_key] if names is None else names.values()) if k not in batch]
    if missing:
        raise KeyError(
            f"the batch has no {missing} (cond_key of this {conditioning_key!r} model); batch keys: {sorted(batch)}. "
            "Pass cond_key=<the dataset's field>, or keep it when caching latents (encode_dataset(..., keys=[...]))"
        )
    return batch[cond_key] if names is None else {part: batch[k] for part, k in names.items()}


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
