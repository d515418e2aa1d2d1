"""The checks of values that enter the package, in one place: one valid range per parameter.

A public entry point -- ``LatentDiffusion.sample`` / ``training_step`` / a direct ``apply_model`` call,
``Sampler.sample``, the command line -- checks what it is given with these functions, once, before any work; the
code below it (the sampling loop, the UNet call) trusts what it receives. Every error names the argument, the value
and the fix.

=======================  ==========================================================================================
value                    valid
=======================  ==========================================================================================
``guidance_scale``       finite, ``>= 0`` (1 = no guidance); ``!= 1`` needs a condition and a null condition
``eta``                  finite, in [0, 1]
``scale_factor``         finite, ``> 0``
``steps``                an int in ``1..T``
``x_T``, latents         finite, of the sampling shape
images                   finite, in [-1, 1] (0..255 raises; every value >= 0 warns: [0, 1] images)
class labels             ints in ``0..num_classes - 1``
concat condition         ``(B, C_c, h, w)`` at the latent size, ``c + C_c`` = the UNet's ``in_channels``
masks and ``x0``         binary; ``keep_mask`` (1 = known, kept) or ``hole_mask`` (1 = generated), always with ``x0``
=======================  ==========================================================================================
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

__all__ = ["IMAGE_RANGE_SLACK", "check_class_labels", "check_concat", "check_eta", "check_finite",
           "check_finite_sample", "check_guidance", "check_guidance_scale", "check_image_range", "check_known_at",
           "check_sample_condition", "check_scale_factor", "check_start_noise", "check_steps", "keep_mask_from",
           "known_region", "latent_shape", "paired_mask"]


def _is_number(x) -> bool:
    """A real scalar (Python / NumPy number or a one-element tensor), not a bool."""
    if isinstance(x, bool):
        return False
    if torch.is_tensor(x):
        return x.numel() == 1 and not x.dtype.is_complex and x.dtype != torch.bool
    try:
        float(x)
    except (TypeError, ValueError):
        return False
    return not isinstance(x, (str, bytes))


# ----------------------------------------------------------------------------- numbers
def check_guidance_scale(guidance_scale) -> float:
    """Validate a classifier-free guidance scale ``s`` (``out_u + s (out_c - out_u)``) and return it as a float.

    ``s`` must be finite and ``>= 0``: ``s = 1`` is the plain conditional model (no guidance), ``s = 0`` the
    unconditional one, ``0 < s < 1`` interpolates between them (less fidelity, more diversity) and ``s > 1``
    extrapolates past the conditional prediction (the usual 1.5-10). A negative ``s`` steers *away* from the
    condition and a NaN / inf one turns every sample into NaN, so both are refused.
    """
    if not _is_number(guidance_scale):
        raise TypeError(f"guidance_scale must be a number >= 0 (1 = no guidance), got {guidance_scale!r} "
                        f"({type(guidance_scale).__name__}); pass e.g. guidance_scale=3.0")
    s = float(guidance_scale)
    if not math.isfinite(s) or s < 0:
        raise ValueError(
            f"guidance_scale must be a finite number >= 0, got {s}; 1 = no guidance (the plain conditional model), "
            "0 = the unconditional model, > 1 = stronger guidance (typically 1.5-10): pass e.g. guidance_scale=3.0"
        )
    return s


def check_guidance(guidance_scale, conditioning: Any, unconditional_conditioning: Any) -> float:
    """:func:`check_guidance_scale`, and what guidance needs: ``s != 1`` with an unconditional conditioning (else it
    would silently do nothing) and a conditioning to guide towards. Returns the scale as a float."""
    s = check_guidance_scale(guidance_scale)
    if s == 1:
        return s
    if unconditional_conditioning is not None and conditioning is None:
        raise ValueError(
            "unconditional_conditioning and guidance_scale != 1 were given without conditioning: pass "
            "conditioning=... (the prompt / class / layout), or drop unconditional_conditioning"
        )
    if unconditional_conditioning is None:
        raise ValueError(
            f"guidance_scale={s:g} asks for classifier-free guidance, but no unconditional_conditioning was given, "
            "so guidance would silently do nothing"
            + (" (and there is no conditioning either: an unconditional model cannot be guided)"
               if conditioning is None else "")
            + ". Pass unconditional_conditioning=<the null condition> (e.g. LatentDiffusion."
            "get_unconditional_conditioning(B)), or guidance_scale=1 for no guidance"
        )
    return s


def check_eta(eta) -> float:
    """Validate DDIM's noise scale ``eta`` (Song et al. 2021, Eq. 16): finite, in [0, 1]; return it as a float."""
    if not _is_number(eta):
        raise TypeError(f"eta must be a number in [0, 1], got {eta!r} ({type(eta).__name__}); pass e.g. eta=0.0")
    e = float(eta)
    if not math.isfinite(e) or e < 0 or e > 1:
        raise ValueError(
            f"eta must be >= 0 and <= 1 (a finite number: 0 = deterministic DDIM, 1 = DDPM's posterior variance), "
            f"got {e}; pass eta in [0, 1]"
        )
    return e


def check_steps(steps, num_timesteps: int) -> int:
    """The number of sampling steps: an int in ``1..num_timesteps``."""
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= num_timesteps:
        raise ValueError(f"steps must be an integer in 1..{num_timesteps} (the number of training timesteps), got "
                         f"{steps!r}")
    return steps


def check_scale_factor(value, where: str = "") -> float:
    """``scale_factor`` must be a finite number > 0 (latents are multiplied by it, decoding divides by it: 0
    gives inf, NaN gives NaN images). Returns it as a float; ``where`` says where the value came from."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"scale_factor{where} must be a finite number > 0, got {value!r}") from None
    if not math.isfinite(v) or v <= 0:
        raise ValueError(
            f"scale_factor{where} must be a finite number > 0, got {v}; use 1.0 for pixel space or an unscaled "
            "autoencoder, 0.18215 for Stable Diffusion's KL-f8, or scale_by_std=True to estimate 1 / std of the "
            "latents (a checkpoint with this value is corrupt: re-export it)"
        )
    return v


# ----------------------------------------------------------------------------- tensors
def check_finite(name: str, x: torch.Tensor, fix: str) -> None:
    """Raise a ``ValueError`` naming ``name`` and how many of its values are NaN / inf."""
    if not torch.is_tensor(x):
        raise TypeError(f"{name} must be a tensor, got {type(x).__name__}")
    if x.is_floating_point() or x.is_complex():
        bad = ~torch.isfinite(x)
        if bool(bad.any()):
            n_nan = int(torch.isnan(x).sum())
            raise ValueError(
                f"{name} contains {int(bad.sum())} non-finite values ({n_nan} NaN, {int(bad.sum()) - n_nan} inf) "
                f"of {x.numel()}; every value must be finite. {fix}"
            )


def check_start_noise(x_T: torch.Tensor, shape: Sequence[int]) -> None:
    """The starting noise ``x_T`` of a sampler: a finite tensor of the sampling ``shape``."""
    if not torch.is_tensor(x_T) or tuple(x_T.shape) != tuple(shape):
        raise ValueError(f"x_T must have the sampling shape {tuple(shape)}, got {tuple(getattr(x_T, 'shape', ()))}")
    check_finite("x_T (the starting noise)", x_T,
                 "Pass finite noise, e.g. torch.randn(shape, generator=g), or omit x_T to draw it from generator.")


def check_finite_sample(z: torch.Tensor, images: torch.Tensor, guidance_scale: float) -> None:
    """Never hand out an image made of NaN / inf (it would be written as a black PNG)."""
    if bool(torch.isfinite(images).all()):
        return
    n_bad_z = int((~torch.isfinite(z)).sum())
    n_bad = int((~torch.isfinite(images)).sum())
    where = (f"{n_bad_z} of {z.numel()} latent values" if n_bad_z else
             f"{n_bad} of {images.numel()} decoded pixel values (the latents were finite)")
    cause = ("a corrupt or diverged checkpoint: check torch.isfinite on the UNet's and the autoencoder's "
             "parameters (and scale_factor)")
    if guidance_scale != 1:
        cause += (f", or guidance_scale={guidance_scale:g} too large for this model (retry with guidance_scale=1 "
                  "to tell them apart)")
    raise FloatingPointError(f"sampling produced NaN / inf: {where}; no image is returned. Likely cause: {cause}")


IMAGE_RANGE_SLACK = 0.5


def check_image_range(images: torch.Tensor, name: str = "images", all_nonnegative: str | None = "warn",
                      where: str = "", why: str = "", stacklevel: int = 3) -> None:
    """Check that ``images`` are images in the course's convention: finite, in [-1, 1].

    * NaN / inf: ``ValueError``.
    * Values beyond ``[-1 - IMAGE_RANGE_SLACK, 1 + IMAGE_RANGE_SLACK]`` = [-1.5, 1.5]: ``ValueError`` naming the
      conversion (0..255 -> ``x / 127.5 - 1``). The slack lets through what resizing a [-1, 1] image does: bicubic
      interpolation overshoots by at most 0.375 (its kernel's negative lobes), and samples are clamped only when
      saved; no [-1, 1] image gets near 1.5, every 0..255 image with content gets far beyond it.
    * Every value >= 0: almost surely [0, 1] images (``x * 2 - 1`` converts). ``all_nonnegative="warn"`` (a
      ``UserWarning``) where a real [-1, 1] image can be bright everywhere -- a pale photo, a flat light-grey test
      image; ``"error"`` where it cannot (``why`` says why, e.g. a dataset whose renders all have a dark
      background); ``None`` skips the test.

    ``name`` is the argument as the caller knows it, ``where`` a prefix such as ``"degrade: "``; ``stacklevel``
    points the warning at the user's call (3: the caller of the function that calls this one).
    """
    x = images.detach()
    if not x.is_floating_point():
        x = x.float()
    if x.numel() == 0:
        return
    verb = "contain" if name.endswith("s") else "contains"
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        raise ValueError(f"{where}{name} {verb} NaN or inf ({int(bad.sum())} of {x.numel()} values); pass finite "
                         "images in [-1, 1] (torch.nan_to_num replaces such values deliberately)")
    lo, hi = float(x.min()), float(x.max())
    if lo < -1 - IMAGE_RANGE_SLACK or hi > 1 + IMAGE_RANGE_SLACK:
        raise ValueError(f"{where}{name} must lie in [-1, 1]; got values in [{lo:.4g}, {hi:.4g}]: 0..255 images "
                         "convert with x / 127.5 - 1, other ranges must be rescaled to [-1, 1]")
    if all_nonnegative and lo >= 0:
        msg = (f"{where}every value of {name} is >= 0: they look like [0, 1] images, but the course's images are in "
               "[-1, 1]; convert with x * 2 - 1")
        if all_nonnegative == "error":
            raise ValueError(f"{msg}{f' ({why})' if why else ''}")
        warnings.warn(f"{msg} (ignore this for [-1, 1] images that are bright everywhere)", UserWarning,
                      stacklevel=stacklevel)


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
    if isinstance(labels, (bool, float, str)):
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


def check_concat(concat: torch.Tensor, z_shape: Sequence[int], in_channels: int) -> None:
    """A concat condition ``(B, C_c, h, w)`` that fits ``z_t`` of shape ``z_shape`` ``(B, c, h, w)``: the same batch
    size and spatial size, and ``c + C_c`` = the UNet's ``in_channels``."""
    b, zc = z_shape[0], z_shape[1]
    if concat.ndim != 4 or concat.shape[0] != b:
        raise ValueError(f"c_concat must have shape (B={b}, C, h, w), got {tuple(concat.shape)}")
    if tuple(concat.shape[-2:]) != tuple(z_shape[-2:]):
        raise ValueError(
            f"the concat condition is {concat.shape[-2]}x{concat.shape[-1]} but z_t is {z_shape[-2]}x{z_shape[-1]}; "
            "give the condition at the latent size (resize it, e.g. F.interpolate(c, size=z.shape[-2:]), or use a "
            "cond stage that does, such as a SpatialRescaler)"
        )
    if zc + concat.shape[1] != in_channels:
        raise ValueError(
            f"z_t has {zc} channels and the concat condition {concat.shape[1]}, {zc + concat.shape[1]} in all, but the "
            f"UNet has in_channels={in_channels}; build it with in_channels={zc + concat.shape[1]} or give a "
            f"condition with {in_channels - zc} channels"
        )


# ----------------------------------------------------------------------------- masks and the known region
def keep_mask_from(keep_mask: torch.Tensor | None = None, hole_mask: torch.Tensor | None = None,
                   like: torch.Tensor | None = None) -> torch.Tensor:
    """The one conversion point of the course's mask convention: give exactly one of ``keep_mask``
    (1 = known, kept) or ``hole_mask`` (1 = missing, generated); returns the float keep mask.

    Masks must be binary (0/1) and, when ``like`` (an image or latent batch) is given, have its spatial size
    with 1 channel (or as many as ``like``) -- a soft or wrongly sized mask is an error, not a silent blend.
    """
    if (keep_mask is None) == (hole_mask is None):
        raise ValueError("give exactly one of keep_mask (1 = known pixels, kept) or hole_mask (1 = missing, "
                         "to be generated)")
    name, m = ("keep_mask", keep_mask) if keep_mask is not None else ("hole_mask", hole_mask)
    m = torch.as_tensor(m).float()
    if not torch.isfinite(m).all() or not ((m == 0) | (m == 1)).all():
        vals = torch.unique(m[torch.isfinite(m)])[:5].tolist()
        raise ValueError(f"{name} must be binary (0 or 1 everywhere); found values such as {vals}. Threshold a "
                         f"soft mask first, e.g. (mask > 0.5).float()")
    if like is not None:
        if m.ndim == 2:
            m = m[None, None]
        elif m.ndim == 3:
            m = m[:, None] if m.shape[0] == like.shape[0] and m.shape[0] != 1 else m[None]
        if m.shape[-2:] != like.shape[-2:]:
            raise ValueError(f"{name} is {tuple(m.shape[-2:])} but the image is {tuple(like.shape[-2:])}; "
                             "give a mask of the image's height and width")
        if m.shape[1] not in (1, like.shape[1]) or m.shape[0] not in (1, like.shape[0]):
            raise ValueError(f"{name} of shape {tuple(m.shape)} does not fit images of shape {tuple(like.shape)}; "
                             "use (B, 1, H, W) or (1, 1, H, W)")
    return m if keep_mask is not None else 1.0 - m


def paired_mask(x0: Any, keep_mask: Any, hole_mask: Any) -> torch.Tensor | None:
    """A known region comes as ``x0`` with exactly one mask: returns the float keep mask
    (:func:`keep_mask_from`), or ``None`` when neither ``x0`` nor a mask is given."""
    has_mask = keep_mask is not None or hole_mask is not None
    if x0 is None and not has_mask:
        return None
    if x0 is None:
        raise ValueError("a mask was given without x0: pass x0 (the known image or latent, (B, C, H, W)) together "
                         "with keep_mask (1 = keep x0 there) or hole_mask (1 = generate there)")
    if not has_mask:
        raise ValueError("x0 given without a mask: pass keep_mask (1 = keep x0 there) or hole_mask (1 = generate "
                         "there); to start from a noised x0 instead (img2img), pass x_T=schedule.q_sample(x0, "
                         "t_start) and fewer steps")
    if not torch.is_tensor(x0):
        raise TypeError(f"x0 must be a tensor (B, C, H, W): the known image in [-1, 1] or its latent; got "
                        f"{type(x0).__name__}")
    return keep_mask_from(keep_mask, hole_mask)


def check_known_at(x0: torch.Tensor, mask: torch.Tensor, shape: Sequence[int]) -> None:
    """A known region at the sampling ``shape``: ``x0`` of that shape and finite, the keep mask broadcastable."""
    shape = tuple(shape)
    if tuple(x0.shape) != shape:
        raise ValueError(f"x0 must have the sampling shape {shape}, got {tuple(x0.shape)}")
    try:
        mask_ok = torch.broadcast_shapes(tuple(mask.shape), shape) == shape
    except RuntimeError:
        mask_ok = False
    if not mask_ok:
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not broadcast to the sampling shape {shape}; "
                         "use (B, 1, H, W) or (B, C, H, W) with 1 = keep x0")
    check_finite("x0 (the known image / latent to keep)", x0,
                 "Replace the unknown pixels by any finite value (e.g. 0); the mask decides what is kept.")


def known_region(x0: Any, keep_mask: Any, hole_mask: Any, shape: Sequence[int], *, f: int = 1,
                 encode: Callable[[torch.Tensor], torch.Tensor] | None = None, image_range: bool = False,
                 device: torch.device | str | None = None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """A latent model's known region, checked where it enters: ``(keep mask, x0)`` at the latent ``shape``
    ``(B, c, h, w)`` (``x0`` encoded by ``encode`` when it is an image), or ``(None, None)`` without one.

    Accepted shapes: ``x0`` ``(B, C, H, W)`` or one ``(C, H, W)``, an image at the image size ``(h f, w f)``
    (encoded; values in [-1, 1], :func:`check_image_range`) or a latent at the latent size, with ``B`` = 1 (used for
    every sample) or ``B``. The mask: ``(H, W)``, ``(1, H, W)``, ``(B, H, W)`` or ``(1 or B, C, H, W)``, at the image
    size (``C`` = 1, or 3: a pixel is then known only where all its channels are) or at the latent size (``C`` = 1 or
    the latent channels); at the image size a latent position is kept only where all its ``f x f`` pixels are known.
    A 2-D mask -- what a greyscale mask file reads as -- is broadcast over the batch and channels. ``encode=None``:
    a pixel-space model (nothing is encoded); ``image_range``: ``x0`` at the latent size is an image in [-1, 1] too.
    Anything else is a ``ValueError`` naming the argument and the fix.
    """
    mask = paired_mask(x0, keep_mask, hole_mask)
    if mask is None:
        return None, None
    name = "keep_mask" if keep_mask is not None else "hole_mask"
    mask, x0 = mask.to(device), x0.to(device).float()
    b, zc, h, w = shape
    big_h, big_w = h * f, w * f
    if x0.ndim == 3:
        x0 = x0[None]
    if x0.ndim != 4:
        raise ValueError(f"x0 must be an image or latent batch (B, C, H, W), or one (C, H, W); got shape "
                         f"{tuple(x0.shape)}")
    if x0.shape[0] not in (1, b):
        raise ValueError(f"x0 holds {x0.shape[0]} images but num_samples={b}; give one x0 (used for every sample) "
                         f"or one per sample")
    xh, xw = x0.shape[-2:]
    image = encode is not None and f > 1 and (xh, xw) == (big_h, big_w)
    if not image and (xh, xw) != (h, w):
        canvas = (f"latent_size=({xh // f}, {xw // f})" if xh % f == 0 and xw % f == 0
                  else f"a size divisible by f={f}")
        at = f"{big_h}x{big_w} (or its {h}x{w} latent)" if f > 1 else f"{h}x{w}"
        raise ValueError(f"x0 is {xh}x{xw} but this model samples {big_h}x{big_w} images"
                         + (f" ({h}x{w} latents)" if f > 1 else "")
                         + f"; pass x0 at {at}, or sample a canvas of x0's size with {canvas}")
    if not image and x0.shape[1] != zc:
        hint = "" if encode is None else f"; pass the image at {big_h}x{big_w} to have it encoded"
        raise ValueError(f"x0 at the latent size {h}x{w} must have {zc} channels (a latent of this model); got "
                         f"{x0.shape[1]}{hint}")
    if image or image_range:
        # an image in [-1, 1] (a latent has no fixed range); the warning points at the caller of sample
        check_image_range(x0, "x0", stacklevel=5)
    # the mask: (H, W) / (1 or B, H, W) / (1 or B, C, H, W) -> 4-D
    if mask.ndim == 2:
        mask = mask[None, None]
    elif mask.ndim == 3:
        mask = mask[:, None] if mask.shape[0] == b and b != 1 else mask[None]
    elif mask.ndim != 4:
        raise ValueError(f"{name} must be (H, W), (B, H, W) or (B, 1, H, W); got shape {tuple(mask.shape)}")
    if mask.shape[0] not in (1, b):
        raise ValueError(f"{name} holds {mask.shape[0]} masks but num_samples={b}; give one mask (1, 1, H, W) "
                         f"for every sample or one per sample (num_samples, 1, H, W) = ({b}, 1, H, W)")
    mh, mw = mask.shape[-2:]
    at_latent = (mh, mw) == (h, w)
    if at_latent and mask.shape[1] not in (1, zc):
        raise ValueError(f"{name} at the latent size {h}x{w} must have 1 channel (or {zc}, one per latent "
                         f"channel); got {mask.shape[1]}")
    if not at_latent:
        if (mh, mw) != (big_h, big_w):
            raise ValueError(f"{name} is {mh}x{mw}, but matches neither the image size {big_h}x{big_w} nor the "
                             f"latent size {h}x{w} of this sample; give a mask of x0's height and width")
        if mask.shape[1] not in (1, 3):
            raise ValueError(f"{name} at the image size {big_h}x{big_w} must have 1 channel (or 3, one per colour "
                             f"channel); got {mask.shape[1]} channels")
        if mask.shape[1] == 3:  # a pixel is known only where all its channels are
            mask = mask.amin(1, keepdim=True)
    if image:
        # the hole's pixels must never reach the encoder: its receptive field would carry them into
        # the "known" latents around the hole (an unfair advantage, and wrong for object removal)
        pixel_keep = mask if not at_latent else F.interpolate(
            mask if mask.shape[1] == 1 else mask.amin(1, keepdim=True), size=(xh, xw), mode="nearest")
        x0 = encode(x0 * pixel_keep)
    if not at_latent:
        mask = -F.max_pool2d(-mask, f)  # min-pool: keep only fully known latent positions
    if x0.shape[0] != b:
        x0 = x0.expand(b, -1, -1, -1).contiguous()
    check_known_at(x0, mask, shape)
    return mask, x0


def check_sample_condition(cond: Any, c: Any, conditioning_key: str | None, guidance_scale: float) -> None:
    """``sample``'s conditioning arguments: at most one of the raw ``cond`` and the learned ``c``, neither for an
    unconditional model, and no guidance without a condition to guide by."""
    if cond is not None and c is not None:
        raise ValueError("give the raw condition (cond=...) or the learned one (c=...), not both")
    if (cond is not None or c is not None) and conditioning_key is None:
        raise ValueError("this model is unconditional (conditioning_key=None); sample without cond / c")
    if guidance_scale != 1.0 and conditioning_key is None:
        raise ValueError(f"guidance_scale={guidance_scale:g} needs a conditional model; this one is unconditional "
                         "(conditioning_key=None), so guidance would do nothing: sample with guidance_scale=1")


def latent_shape(shape: Sequence[int] | None, num_samples: int | None, channels: int,
                 batch_of_condition: int | None, size: Any) -> tuple[int, int, int, int]:
    """``sample``'s latent shape ``(B, c, h, w)``: ``shape`` as given (4 numbers agreeing with ``num_samples``), or
    ``num_samples`` (default: the condition's batch) latents of ``channels`` at ``size`` (an int or ``(h, w)``: the
    caller's ``latent_size``, a concat condition's or the model's training size)."""
    if shape is not None:
        shape = tuple(int(s) for s in shape)
        if len(shape) != 4:
            raise ValueError(f"shape must be the latent shape (B, c, h, w), got {shape}")
        if num_samples is not None and num_samples != shape[0]:
            raise ValueError(f"num_samples={num_samples} disagrees with shape[0]={shape[0]}")
        return shape
    if num_samples is None and batch_of_condition is None:
        raise ValueError("pass num_samples (or shape=(B, c, h, w), or a batched condition)")
    if size is None:
        raise ValueError("the latent size is unknown (no image_size and no training yet): pass latent_size=(h, w)")
    h, w = (size, size) if isinstance(size, int) else size
    return (batch_of_condition if num_samples is None else int(num_samples), channels, int(h), int(w))
