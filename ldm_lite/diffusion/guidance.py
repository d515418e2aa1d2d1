"""Classifier-free guidance (Ho & Salimans 2021), as the LDM paper uses it (Sec. 4.3, App. C).

A conditional denoiser that was also trained with the condition dropped (replaced by an "empty"
condition, e.g. the embedding of the caption ``""``) gives two predictions at every step:

* ``out_c = model(x_t, t, c)``        -- conditional
* ``out_u = model(x_t, t, c_empty)``  -- unconditional

and guidance extrapolates from the second towards (and past) the first:

    ``out = out_u + s * (out_c - out_u)``        (Ho & Salimans 2021, Eq. 6; ``s = 1 + w``)

``s = 1`` is the plain conditional model; ``s > 1`` trades diversity for fidelity to the condition.
CompVis (``ddim.py``) and Stable Diffusion apply the formula to the predicted noise; here it is
applied to whatever the model outputs (eps, x0 or v). The three are affine in each other at a fixed
``x_t`` and ``t``, so guiding any of them gives the same step.

The two predictions are computed in **one** model call on a doubled batch: ``x`` is repeated,
the conditionings are concatenated as ``[uncond, cond]`` along the batch axis, and the output is
split back in two. That is what :func:`guided_model_fn` does.

A :class:`~ldm_lite.conditioning.condition.Condition` (what :class:`~ldm_lite.ldm.LatentDiffusion` passes)
batches itself: ``uncond.cat(cond)``, split back by ``chunk``. A bare ``model_fn`` may take other conditionings:
``None``, a tensor ``(B, ...)``, a list/tuple of tensors (CompVis passes ``{"c_crossattn": [tensor]}``) or a dict
whose values are any of these, for example ``{"c_crossattn": (B, L, D), "c_concat": (B, c, H, W), "mask": (B, L)}``.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

__all__ = [
    "cfg_combine",
    "batch_conditionings",
    "split_batch",
    "guided_model_fn",
]

ModelFn = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]


def cfg_combine(out_uncond: torch.Tensor, out_cond: torch.Tensor, scale: float) -> torch.Tensor:
    """``out_uncond + scale * (out_cond - out_uncond)``; tensors of the same shape ``(B, ...)``."""
    if out_uncond.shape != out_cond.shape:
        raise ValueError(
            f"unconditional and conditional outputs must have the same shape, got "
            f"{tuple(out_uncond.shape)} and {tuple(out_cond.shape)}"
        )
    return out_uncond + scale * (out_cond - out_uncond)


def batch_conditionings(uncond: Any, cond: Any) -> Any:
    """Concatenate two conditionings along the batch axis as ``[uncond, cond]``.

    Works recursively on the structures described in the module docstring:

    * ``None`` with ``None`` -> ``None``;
    * a :class:`~ldm_lite.conditioning.condition.Condition` -> ``uncond.cat(cond)`` (the same rules, part by part);
    * tensors ``(B_u, ...)`` and ``(B, ...)`` -> ``torch.cat([uncond, cond])``, shape ``(2B, ...)``.
      An unconditional tensor with batch size 1 (the embedding of ``""`` computed once) is
      expanded to ``B`` first;
    * lists / tuples -> element by element;
    * dicts -> key by key. A key present in ``cond`` but missing from ``uncond`` uses ``cond``'s
      value for both halves -- convenient for inputs that are the same with and without guidance,
      such as the masked image in ``"c_concat"`` for inpainting. A key only in ``uncond`` is an error.
    """
    if uncond is None and cond is None:
        return None
    if hasattr(cond, "cat") and hasattr(cond, "chunk"):  # a Condition batches itself
        if type(uncond) is not type(cond):
            raise TypeError(f"conditional input is a {type(cond).__name__} but the unconditional one is "
                            f"{type(uncond).__name__}; pass the null condition in the same form")
        return uncond.cat(cond)
    if isinstance(cond, torch.Tensor):
        if not isinstance(uncond, torch.Tensor):
            raise TypeError(
                f"conditional input is a tensor but the unconditional one is {type(uncond).__name__}; "
                "pass an unconditional tensor of the same shape (e.g. the embedding of the empty prompt)"
            )
        if uncond.shape[0] == 1 and cond.shape[0] > 1:
            uncond = uncond.expand(cond.shape[0], *uncond.shape[1:])
        if uncond.shape != cond.shape:
            raise ValueError(
                f"unconditional and conditional inputs must have the same shape, got "
                f"{tuple(uncond.shape)} and {tuple(cond.shape)}"
            )
        return torch.cat([uncond.to(cond), cond])
    if isinstance(cond, (list, tuple)):
        if not isinstance(uncond, (list, tuple)) or len(uncond) != len(cond):
            raise TypeError(
                "conditional input is a list/tuple; the unconditional one must be a list/tuple of the "
                f"same length, got {type(uncond).__name__}"
            )
        return type(cond)(batch_conditionings(u, c) for u, c in zip(uncond, cond))
    if isinstance(cond, dict):
        if not isinstance(uncond, dict):
            raise TypeError(
                f"conditional input is a dict but the unconditional one is {type(uncond).__name__}; "
                "pass a dict with the same keys"
            )
        extra = set(uncond) - set(cond)
        if extra:
            raise ValueError(f"unconditional conditioning has keys {sorted(extra)} that the conditional one lacks")
        return {k: batch_conditionings(uncond.get(k, v), v) for k, v in cond.items()}
    raise TypeError(
        f"cannot batch conditionings of types {type(uncond).__name__} and {type(cond).__name__}; "
        "use None, tensors, lists of tensors or dicts of these"
    )


def split_batch(x: Any, chunks: int = 2) -> list:
    """The inverse of :func:`batch_conditionings`: split a tensor / Condition / list / dict into ``chunks`` along
    dim 0."""
    if x is None:
        return [None] * chunks
    if isinstance(x, torch.Tensor) or hasattr(x, "cat") and hasattr(x, "chunk"):  # a tensor, a Condition
        return list(x.chunk(chunks))
    if isinstance(x, (list, tuple)):
        parts = [split_batch(v, chunks) for v in x]
        return [type(x)(p[i] for p in parts) for i in range(chunks)]
    if isinstance(x, dict):
        parts = {k: split_batch(v, chunks) for k, v in x.items()}
        return [{k: p[i] for k, p in parts.items()} for i in range(chunks)]
    raise TypeError(f"cannot split an object of type {type(x).__name__}")


def guided_model_fn(model_fn: ModelFn, uncond: Any, scale: float) -> ModelFn:
    """Wrap ``model_fn(x, t, cond)`` so that it returns the classifier-free-guided output.

    The returned function has the same signature. For ``x`` ``(B, ...)`` it calls ``model_fn``
    **once** on ``x`` ``(2B, ...)``, ``t`` ``(2B,)`` and ``batch_conditionings(uncond, cond)`` and
    returns ``cfg_combine(out_u, out_c, scale)`` ``(B, ...)``.

    With ``scale == 1`` or ``uncond is None`` guidance is a no-op, and the wrapper calls
    ``model_fn(x, t, cond)`` once on the conditional batch only (no wasted unconditional half).
    """
    if uncond is None or scale == 1:
        return model_fn

    def guided(x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        if cond is None:
            raise ValueError(
                "classifier-free guidance needs a conditioning: pass conditioning=... together with "
                "unconditional_conditioning, or set guidance_scale=1"
            )
        out = model_fn(torch.cat([x, x]), torch.cat([t, t]), batch_conditionings(uncond, cond))
        out_u, out_c = out.chunk(2)
        return cfg_combine(out_u, out_c, scale)

    return guided
