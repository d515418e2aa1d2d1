"""Latent diffusion: a frozen first stage, a UNet denoiser and a conditioning mechanism (Sec. 3.2-3.3).

The paper's model in one class, :class:`LatentDiffusion`, built from the parts of the earlier chapters:

* the **first stage** (Sec. 3.1): a trained, *frozen* :class:`~ldm_lite.autoencoder.AutoencoderKL` or
  :class:`~ldm_lite.autoencoder.VQModel`. ``encode_first_stage`` maps images ``x (B, 3, H, W)`` to
  latents ``z (B, c, H/f, W/f)``; ``decode_first_stage`` maps latents back. With ``first_stage=None``
  the same class is a *pixel-space* diffusion model (encode and decode are the identity), which is
  how chapters 02 and 04 compare the two at equal code;
* the **denoiser** ``eps_theta(z_t, t, c)``: a :class:`~ldm_lite.unet.UNetModel`, trained with the
  LDM objective (Eq. 2; Eq. 3 with a condition) through :func:`~ldm_lite.diffusion.diffusion_loss`::

      L_LDM = E_{E(x), y, eps ~ N(0, I), t} || eps - eps_theta(z_t, t, tau_theta(y)) ||^2

* the **conditioning** (Sec. 3.3): a ``cond_stage`` ``tau_theta`` maps the raw condition ``y`` (class
  labels, token ids, boxes, a low-resolution image ...) to what the UNet consumes, and
  ``conditioning_key`` says how it enters the UNet (names as in the CompVis code):

  ============== ================================================================================
  ``None``       unconditional: ``unet(z_t, t)``
  ``"crossattn"``  ``c`` (B, M, context_dim) is the key/value sequence of every cross-attention
                   layer: ``unet(z_t, t, context=c)`` (Eq. 3)
  ``"concat"``   ``c`` (B, C_c, h, w) at the *latent* size is concatenated to ``z_t`` on the
                   channel axis: ``unet(cat([z_t, c], 1), t)`` -- super-resolution, inpainting,
                   semantic maps (Sec. 4.4-4.5). The UNet's ``in_channels`` is ``c + C_c``
  ``"hybrid"``   both: ``c = {"c_concat": ..., "c_crossattn": ...}``
  ``"adm"``      a class label ``c`` (B,) long, embedded and added to the time embedding
                   (``unet(z_t, t, y=c)``; the ADM way, Dhariwal & Nichol 2021)
  ============== ================================================================================

Conventions of this module (each is a choice the CompVis code makes differently or implicitly):

* **Posterior mode, not a sample.** ``encode_first_stage`` returns the *mean* of the KL encoder's
  posterior ``q(z|x)`` by default (``posterior="mode"``); CompVis draws a sample. With the tiny
  KL weight of the first stage (~1e-6) the posterior's standard deviation is ~1e-2 or less of the
  latent's, so the sample adds almost nothing -- and the mode makes encoding deterministic: cached
  latents (:meth:`LatentDiffusion.encode_dataset`) then give exactly the loss of encoding in the
  loop. ``posterior="sample"`` restores the CompVis behaviour. A VQ first stage is always encoded
  to its *pre-quantisation* latent (``VQModel.encode_pre_quant``), and ``decode_first_stage``
  quantises before decoding (the quantiser is "absorbed into the decoder", Sec. 3.1).
* **scale_factor.** The diffusion model sees ``z = scale_factor * E(x)``; ``decode_first_stage``
  divides by it first. It is a registered buffer, so it is saved in every checkpoint. With
  ``scale_by_std=True`` it is estimated once, at the start of training, as ``1 / std`` of the first
  batch's (unscaled) latents (all elements pooled), so the latents the UNet sees have unit variance
  like the noise -- Stable Diffusion's ``0.18215`` is such an estimate for its KL-f8 autoencoder.
* **Conditioning dropout for classifier-free guidance.** The CompVis training code never drops the
  condition. Here ``cond_drop_prob = p`` replaces each sample's condition by the *unconditional
  conditioning* with probability ``p`` (Ho & Salimans 2021), so the same network can be guided at
  sampling time. The unconditional conditioning is ``get_learned_conditioning(unconditional_value)``
  when an ``unconditional_value`` is given (a *raw* condition of one sample: the null class index,
  the token ids of the empty caption ...; the cond stage learns its embedding), otherwise **zeros**
  of the learned conditioning's shape (a zero context / zero concat image). ``"adm"`` needs a null
  class: build the UNet with ``num_classes = n + 1`` and pass ``unconditional_value=n``. In
  ``"hybrid"`` mode only the cross-attention part is dropped; the spatial ``c_concat`` part (the
  image being completed or upscaled) is always kept.

**The condition has one form inside the model** (:mod:`ldm_lite.conditioning.condition`): a dict with
the keys of CompVis's ``DiffusionWrapper`` -- ``c_crossattn`` (+ ``context_mask``, True = real token),
``c_concat``, ``y`` -- built once by ``get_learned_conditioning`` (or by ``as_condition`` where a learned
condition is handed in). Dropout, guidance and the UNet call read only that dict.

The class reads in the paper's order: Sec. 3.1 (``encode_first_stage`` / ``decode_first_stage`` with the
scale factor), Sec. 3.3 (``get_learned_conditioning``, the null condition, dropout), Eq. 2 / Eq. 3
(``apply_model``, ``p_losses``, ``training_step``), then the Trainer protocol and ``sample``. The latent
cache lives in :mod:`ldm_lite.latents`, the export format in :mod:`ldm_lite.pretrained`.

Names, here and in the CompVis code (``ldm/models/diffusion/ddpm.py``, class ``LatentDiffusion``):

=============================  ==========================================  ==================================
here                           CompVis                                     note
=============================  ==========================================  ==================================
``first_stage``                ``first_stage_model``                       frozen autoencoder
``cond_stage``                 ``cond_stage_model``                        ``tau_theta``
``unet``                       ``model.diffusion_model``                   CompVis wraps it in a
                                                                           ``DiffusionWrapper``
``cond_stage_trainable``       ``cond_stage_trainable``
``conditioning_key``           ``conditioning_key`` (of the wrapper)
``cond_key``                   ``cond_stage_key``                          the batch field of ``y``
``scale_factor``               ``scale_factor``
``get_learned_conditioning``   ``get_learned_conditioning``
``apply_model``, ``p_losses``  ``apply_model``, ``p_losses``
``cond_drop_prob``             (none: never dropped, issue #139)
``unconditional_value``        ``unconditional_guidance_label`` (sampling)  a raw null condition
=============================  ==========================================  ==================================

The class follows :mod:`ldm_lite.train.loop`'s module protocol, so ``Trainer(ldm, dataset, cfg).fit()``
trains it: ``configure_optimizers`` (one AdamW over the UNet and a trainable cond stage; the first
stage is frozen), ``training_step``, ``ema_module`` and ``on_train_start`` (the scale estimate).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ldm_lite.autoencoder.first_stage import IdentityFirstStage, is_pixel_space
from ldm_lite.autoencoder.model import check_image_channels, check_image_size
from ldm_lite.autoencoder.tiled import tiled_decode
from ldm_lite.conditioning.condition import (
    as_condition,
    batch_size_of,
    check_class_labels,
    expand_batch,
    raw_batch,
    to_device,
    where_dropped,
)
from ldm_lite.data.spatial import check_image_range, keep_mask_from
from ldm_lite.diffusion.samplers import SAMPLERS, Sampler, check_eta, check_finite, check_guidance_scale, make_sampler
from ldm_lite.diffusion.schedule import PARAMETERIZATIONS, NoiseSchedule, diffusion_loss
from ldm_lite.latents import encode_dataset
from ldm_lite.unet.model import UNetModel

__all__ = ["CONDITIONING_KEYS", "LatentDiffusion", "default_schedule"]

CONDITIONING_KEYS = (None, "crossattn", "concat", "hybrid", "adm")


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


def default_schedule() -> NoiseSchedule:
    """The LDM / Stable Diffusion schedule: ``"linear"`` (linear in sqrt(beta)), T=1000, 0.00085-0.012."""
    return NoiseSchedule.from_name("linear", 1000, linear_start=0.00085, linear_end=0.012)


class LatentDiffusion(nn.Module):
    """A latent (or pixel-space) diffusion model: frozen first stage + UNet + conditioning (Sec. 3.2-3.3).

    Args:
        first_stage: a trained ``AutoencoderKL`` / ``VQModel`` (frozen here: ``requires_grad_(False)``
            and kept in eval mode), or ``None`` for a diffusion model in pixel space.
        unet: the denoiser; ``out_channels`` = latent channels, ``in_channels`` = latent channels
            (+ the channels of a concatenated condition for ``"concat"`` / ``"hybrid"``).
        cond_stage: ``tau_theta``, maps the raw condition ``y`` to the UNet's context / concat image /
            class labels; ``None`` = identity (e.g. raw class labels for ``"adm"``, a low-resolution
            image already at the latent size for ``"concat"``). In ``"hybrid"`` mode it is applied
            to the ``"c_crossattn"`` part only. It may return a tensor, ``(context, mask)`` or a dict
            with the keys ``c_crossattn`` / ``context_mask`` / ``c_concat`` / ``y``.
        conditioning_key: ``None``, ``"crossattn"``, ``"concat"``, ``"hybrid"`` or ``"adm"`` (module
            docstring).
        cond_key: the batch key of the raw condition (``"label"``, ``"caption_ids"``, ``"lr_image"`` ...);
            for ``"hybrid"`` a dict ``{"c_concat": batch_key, "c_crossattn": batch_key}``. Required when
            ``conditioning_key`` is set.
        cond_stage_trainable: train the cond stage with the UNet (a text transformer from scratch, a
            class embedding) or keep it frozen (a pre-trained text encoder).
        schedule: the :class:`NoiseSchedule` (default :func:`default_schedule`).
        parameterization: what the UNet predicts: ``"eps"`` (the paper), ``"x0"`` or ``"v"``.
        scale_factor: latents are multiplied by it after encoding (divided before decoding).
        scale_by_std: estimate ``scale_factor = 1 / std(first batch's latents)`` in
            :meth:`on_train_start` (needs a first stage and ``scale_factor=1.0``).
        posterior: ``"mode"`` (default; deterministic) or ``"sample"`` (CompVis) for a KL first stage.
        lr, weight_decay: AdamW over the UNet (+ trainable cond stage); CompVis uses AdamW with
            PyTorch's default ``weight_decay=0.01``.
        weighting, min_snr_gamma, loss_type: passed to :func:`diffusion_loss` (``None`` = the paper).
        cond_drop_prob: probability of replacing a sample's condition by the unconditional one in
            training (classifier-free guidance; 0 = never, as the original code).
        unconditional_value: one sample's *raw* unconditional condition (the null class, the token
            ids of ``""``), or a callable ``batch_size -> raw batch``; ``None`` = zeros of the
            learned conditioning (module docstring).
        image_size: the training image size (int or (H, W)); sets the default latent size of
            :meth:`sample`. Without it the size of the first training batch is used.
        t_buckets: log the loss per timestep range, ``loss_t/<lo>-<hi>``, in this many equal ranges
            (0 = off).
    """

    def __init__(
        self,
        first_stage: nn.Module | None,
        unet: UNetModel,
        cond_stage: nn.Module | None = None,
        *,
        conditioning_key: str | None = None,
        cond_key: str | dict[str, str] | None = None,
        cond_stage_trainable: bool = True,
        schedule: NoiseSchedule | None = None,
        parameterization: str = "eps",
        scale_factor: float = 1.0,
        scale_by_std: bool = False,
        posterior: str = "mode",
        lr: float = 1e-4,
        weight_decay: float = 0.01,
        weighting: str | None = None,
        min_snr_gamma: float = 5.0,
        loss_type: str = "l2",
        cond_drop_prob: float = 0.0,
        unconditional_value: Any = None,
        image_size: int | tuple[int, int] | None = None,
        t_buckets: int = 4,
    ):
        super().__init__()
        if conditioning_key not in CONDITIONING_KEYS:
            raise ValueError(
                f"unknown conditioning_key {conditioning_key!r}; use None (unconditional), 'crossattn' "
                "(context for cross-attention), 'concat' (spatial condition concatenated to z_t), 'hybrid' "
                "(both) or 'adm' (class labels added to the time embedding)"
            )
        if parameterization not in PARAMETERIZATIONS:
            raise ValueError(f"unknown parameterization {parameterization!r}; use one of {', '.join(PARAMETERIZATIONS)}")
        if posterior not in ("mode", "sample"):
            raise ValueError(f"posterior must be 'mode' (deterministic mean) or 'sample' (CompVis), got {posterior!r}")
        if weighting not in (None, "min_snr"):
            raise ValueError(f"unknown weighting {weighting!r}; use None (the paper) or 'min_snr'")
        if not 0.0 <= cond_drop_prob <= 1.0:
            raise ValueError(f"cond_drop_prob must lie in [0, 1], got {cond_drop_prob}")
        if not isinstance(unet, nn.Module):
            raise TypeError(f"unet must be an nn.Module (a UNetModel), got {type(unet).__name__}")

        # pixel space is a first stage too (f = 1, the image is its own latent): nothing below asks whether there is one
        self.first_stage = first_stage if first_stage is not None else IdentityFirstStage(unet.out_channels)
        self.unet = unet
        self.cond_stage = cond_stage
        self.conditioning_key = conditioning_key
        self.cond_key = cond_key
        self.cond_stage_trainable = bool(cond_stage_trainable)
        self.schedule = schedule if schedule is not None else default_schedule()
        if not isinstance(self.schedule, NoiseSchedule):
            raise TypeError(f"schedule must be a NoiseSchedule, got {type(self.schedule).__name__}")
        self.parameterization = parameterization
        self.scale_by_std = bool(scale_by_std)
        self.posterior = posterior
        self.lr, self.weight_decay = float(lr), float(weight_decay)
        self.weighting, self.min_snr_gamma, self.loss_type = weighting, float(min_snr_gamma), loss_type
        self.cond_drop_prob = float(cond_drop_prob)
        self.unconditional_value = unconditional_value
        self.t_buckets = int(t_buckets)
        self.register_buffer("scale_factor", torch.tensor(float(scale_factor), dtype=torch.float32))
        self.scale_estimated = False  # set by estimate_scale_factor (a resumed run restores the buffer)

        self.first_stage.eval()
        self.first_stage.requires_grad_(False)
        if cond_stage is not None and not self.cond_stage_trainable:
            cond_stage.eval()
            cond_stage.requires_grad_(False)

        self._validate(scale_factor)
        self.image_size = None if image_size is None else self._pair(image_size)
        self.latent_size: tuple[int, int] | None = None
        if self.image_size is not None:
            h, w = self.image_size
            if h % self.f or w % self.f:
                raise ValueError(
                    f"image_size {h}x{w} is not divisible by the autoencoder's downsampling factor f={self.f}; "
                    f"use a multiple of {self.f}"
                )
            self.latent_size = (h // self.f, w // self.f)

    # ------------------------------------------------------------------ construction checks
    @staticmethod
    def _pair(size) -> tuple[int, int]:
        if isinstance(size, int):
            return (size, size)
        h, w = size
        return (int(h), int(w))

    @property
    def f(self) -> int:
        """The first stage's downsampling factor (1 in pixel space)."""
        return int(self.first_stage.f)

    @property
    def latent_channels(self) -> int:
        """Channels of the diffusion model's sample: the autoencoder's ``embed_dim`` (pixel space: image channels)."""
        return int(self.first_stage.latent_channels)

    @property
    def pixel_space(self) -> bool:
        """True for a diffusion model on the images themselves (``first_stage=None`` at construction)."""
        return is_pixel_space(self.first_stage)

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def _validate(self, scale_factor: float) -> None:
        check_scale_factor(scale_factor)
        self.register_load_state_dict_post_hook(LatentDiffusion._check_loaded_scale)
        key, unet = self.conditioning_key, self.unet
        zc = self.latent_channels
        u_in, u_out = getattr(unet, "in_channels", None), getattr(unet, "out_channels", None)
        context_dim, num_classes = getattr(unet, "context_dim", None), getattr(unet, "num_classes", None)
        where = "the image" if self.pixel_space else "the autoencoder's latent"
        if u_out is not None and u_out != zc:
            raise ValueError(
                f"the UNet predicts out_channels={u_out} channels but {where} has {zc}; build the UNet with "
                f"out_channels={zc}"
            )
        if u_in is not None:
            if key in ("concat", "hybrid"):
                if u_in <= zc:
                    raise ValueError(
                        f"conditioning_key={key!r} concatenates the condition to z_t, so the UNet needs in_channels = "
                        f"{zc} (latent) + the condition's channels, but it has in_channels={u_in}"
                    )
            elif u_in != zc:
                raise ValueError(
                    f"the UNet has in_channels={u_in} but {where} has {zc} channels; build it with in_channels={zc}"
                    + (" (or use conditioning_key='concat' if the extra channels are a spatial condition)"
                       if u_in > zc else "")
                )
        if context_dim is not None and key not in ("crossattn", "hybrid"):
            raise ValueError(
                f"the UNet was built with context_dim={context_dim} (cross-attention), so it needs a context: use "
                "conditioning_key='crossattn' (or 'hybrid'), or build the UNet with context_dim=None"
            )
        if key in ("crossattn", "hybrid") and context_dim is None:
            raise ValueError(
                f"conditioning_key={key!r} feeds a context to cross-attention, but the UNet has context_dim=None; "
                "build it with context_dim=<width of the cond stage's output> (and use_spatial_transformer=True)"
            )
        if num_classes is not None and key != "adm":
            raise ValueError(
                f"the UNet was built with num_classes={num_classes} (a class embedding), so it needs labels y: "
                "use conditioning_key='adm', or build the UNet with num_classes=None"
            )
        if key == "adm" and num_classes is None:
            raise ValueError("conditioning_key='adm' passes class labels y, but the UNet has num_classes=None; "
                             "build it with num_classes=<number of classes (+1 for a null class)>")
        if key is not None and self.cond_key is None:
            raise ValueError(
                f"conditioning_key={key!r} needs cond_key: the batch key of the raw condition, e.g. cond_key='label'"
                + (" (hybrid: cond_key={'c_concat': 'lr_image', 'c_crossattn': 'caption_ids'})" if key == "hybrid" else "")
            )
        if isinstance(self.cond_key, dict):
            if key != "hybrid":
                raise ValueError("a dict cond_key is for conditioning_key='hybrid'; use a single batch key otherwise")
            bad = set(self.cond_key) - {"c_concat", "c_crossattn"}
            if bad:
                raise ValueError(f"hybrid cond_key keys must be 'c_concat' and 'c_crossattn', got extra {sorted(bad)}")
        if isinstance(self.cond_key, list):
            self.cond_key = tuple(self.cond_key)
        if isinstance(self.cond_key, tuple) and (not self.cond_key or key in ("hybrid", None)
                                                 or not all(isinstance(k, str) for k in self.cond_key)):
            raise ValueError("a tuple cond_key names several batch fields that together form one raw condition (a "
                             "dict, e.g. ('masked_image', 'hole_mask') for inpainting); use it with 'concat' / "
                             "'crossattn' cond stages that take a dict")
        if self.cond_drop_prob > 0 and key is None:
            raise ValueError("cond_drop_prob > 0 needs a conditional model (conditioning_key is None: nothing to drop)")
        if key == "adm" and self.cond_drop_prob > 0 and self.unconditional_value is None:
            raise ValueError(
                "classifier-free guidance with conditioning_key='adm' needs a null class: build the UNet with "
                "num_classes = n + 1 and pass unconditional_value=n (zeros would be class 0)"
            )
        if self.scale_by_std:
            if self.pixel_space:
                raise ValueError(
                    "scale_by_std=True estimates the scale of an autoencoder's latents, but this is a pixel-space "
                    "model (first_stage=None): images in [-1, 1] need no rescaling; set scale_by_std=False"
                )
            if float(scale_factor) != 1.0:
                raise ValueError(
                    f"scale_by_std=True estimates scale_factor itself; pass scale_factor=1.0 (got {scale_factor}) "
                    "or scale_by_std=False to keep a known value such as 0.18215"
                )
        if self.t_buckets < 0:
            raise ValueError(f"t_buckets must be >= 0, got {self.t_buckets}")

    @staticmethod
    def _check_loaded_scale(module: "LatentDiffusion", incompatible_keys) -> None:
        """After ``load_state_dict``: a checkpoint's ``scale_factor`` must be finite and > 0."""
        check_scale_factor(module.scale_factor, " (loaded from the checkpoint)")

    # ------------------------------------------------------------------ Sec. 3.1: the first stage and the scale factor
    @torch.no_grad()
    def estimate_scale_factor(self, images: torch.Tensor) -> float:
        """Set ``scale_factor = 1 / std(E(images))`` (all elements of the unscaled latents pooled); return it."""
        if self.pixel_space:
            raise ValueError("estimate_scale_factor needs a first stage; a pixel-space model keeps scale_factor=1")
        self.scale_factor.fill_(1.0)
        z = self.encode_first_stage(images.to(self.scale_factor.device))
        std = z.float().flatten().std()
        if not torch.isfinite(std) or std <= 0:
            raise ValueError(f"cannot estimate scale_factor: the latents' std is {float(std)}")
        self.scale_factor.fill_(float(1.0 / std))
        self.scale_estimated = True
        return float(self.scale_factor)

    def encode_first_stage(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Images ``x (B, 3, H, W)`` in [-1, 1] -> scaled latents ``scale_factor * E(x)``, ``(B, c, H/f, W/f)``.

        KL: the posterior mode (default) or a sample (``posterior="sample"``, from ``generator``);
        VQ: the pre-quantisation latent. Pixel space: ``x`` itself (times ``scale_factor``, i.e. 1).
        Runs without gradients (the first stage is frozen).
        """
        # before the size: (B, H, W, C) is named here
        check_image_channels(x, self.first_stage.in_channels,
                             "this pixel-space model" if self.pixel_space else "the autoencoder")
        check_image_size(*x.shape[-2:], self.f, what="the autoencoder's downsampling factor")
        with torch.no_grad():  # KL: the posterior mode or a draw; VQ: the latent before quantisation
            z = self.first_stage.encode_latent(x, sample=self.posterior == "sample", generator=generator)
        return z.float() * self.scale_factor

    def decode_first_stage(self, z: torch.Tensor, force_quantize: bool = True, tile: int | None = None,
                           overlap: int = 4) -> torch.Tensor:
        """Scaled latents ``(B, c, h, w)`` -> images ``D(z / scale_factor)`` ``(B, 3, h f, w f)`` (not clamped).

        A VQ first stage quantises first (``force_quantize``). Gradients flow if ``z`` requires them.
        ``tile``: decode in overlapping ``tile × tile`` latent tiles (:func:`~ldm_lite.autoencoder.tiled.tiled_decode`)
        -- constant memory for large canvases, at the price of per-tile normalisation statistics.
        """
        z = z / self.scale_factor.to(z.dtype)

        def decode(zz):
            return self.first_stage.decode_latent(zz, force_quantize=force_quantize)

        if tile is not None:
            return tiled_decode(decode, z, self.f, tile, overlap)
        return decode(z)

    # ------------------------------------------------------------------ Sec. 3.3: conditioning
    def get_learned_conditioning(self, y: Any) -> dict[str, torch.Tensor] | None:
        """The raw condition ``y`` -> ``tau_theta(y)`` in the canonical form (a dict, see
        :mod:`ldm_lite.conditioning.condition`): ``c_crossattn`` (+ ``context_mask``), ``c_concat`` or ``y``.

        Without a cond stage ``y`` passes through (raw labels for ``"adm"``, an image at the latent size for
        ``"concat"``). In ``"hybrid"`` mode ``y`` is a dict ``{"c_concat": ..., "c_crossattn": ...}`` and the
        cond stage sees only ``"c_crossattn"``. A frozen cond stage runs without gradients.
        """
        if y is None:
            return None
        key = self.conditioning_key
        if key is None:
            raise ValueError("this model is unconditional (conditioning_key=None); it takes no condition")
        if key == "hybrid":
            if not isinstance(y, dict) or not set(y) <= {"c_concat", "c_crossattn"}:
                raise ValueError("conditioning_key='hybrid' takes a raw condition {'c_concat': image at the latent "
                                 "size, 'c_crossattn': the cond stage's input}")
            cond = {}
            if "c_crossattn" in y:
                cond.update(as_condition(self._cond_stage_forward(y["c_crossattn"]), "crossattn"))
            if "c_concat" in y:
                cond["c_concat"] = to_device(y["c_concat"], self.device)
            return cond
        return as_condition(self._cond_stage_forward(y), key)

    def _cond_stage_forward(self, y: Any) -> Any:
        if isinstance(y, int) and not isinstance(y, bool):
            y = torch.tensor([y])  # one class label
        elif isinstance(y, (list, tuple)) and y and all(isinstance(v, int) and not isinstance(v, bool) for v in y):
            y = torch.tensor(list(y))  # a batch of class labels
        if self.conditioning_key == "adm" and self.cond_stage is None:  # raw labels go straight to the UNet
            y = self._check_labels(y)
        y = to_device(y, self.device)
        encode = getattr(self.cond_stage, "encode_fields", None)  # image fields the cond stage wants as latents
        if encode and isinstance(y, dict):
            y = dict(y)
            for field, latent_field in encode.items():
                if field in y:
                    with torch.no_grad():
                        y[latent_field] = self.encode_first_stage(y.pop(field).float())
        if self.cond_stage is None:
            return y
        if self.cond_stage_trainable:
            return self.cond_stage(y)
        with torch.no_grad():
            return self.cond_stage(y)

    def _check_labels(self, y: Any, what: str = "class labels") -> torch.Tensor:
        """Labels for an ``"adm"`` UNet: integers in ``0..num_classes - 1`` (checked once, where they enter)."""
        null = self.unconditional_value
        null = null if isinstance(null, int) and not isinstance(null, bool) else None
        return check_class_labels(y, int(self.unet.num_classes), null_class=null, what=what)

    def get_unconditional_conditioning(self, batch_size: int, like: Any = None,
                                       latent_size: int | tuple[int, int] | None = None) -> dict | None:
        """The null condition for ``batch_size`` samples: what guidance contrasts with, and what training drops to.

        With ``unconditional_value`` (a raw condition: the null class, ``""``, the empty layout): its learned
        conditioning, repeated. Without: zeros shaped like ``like`` (a learned condition) or, lacking it, a zero
        context ``(B, 1, context_dim)`` / a zero concat image at ``latent_size``. ``"hybrid"`` returns only the
        cross-attention part (the concat image is kept from the condition when guiding). ``None`` for an
        unconditional model.
        """
        key = self.conditioning_key
        if key is None:
            return None
        if self.unconditional_value is not None:
            v = self.unconditional_value
            raw = v(1) if callable(v) else raw_batch(v, 1)
            learned = as_condition(self._cond_stage_forward(raw), "crossattn" if key == "hybrid" else key)
            return expand_batch(learned, batch_size)
        if key == "adm":
            raise ValueError(
                "conditioning_key='adm' has no unconditional conditioning: zeros would be class 0. Build the UNet "
                "with num_classes = n + 1 and pass unconditional_value=n (a null class)"
            )
        like = as_condition(like, key) if like is not None else {}
        dev = self.device
        if key in ("crossattn", "hybrid"):
            ref = like.get("c_crossattn")
            if ref is not None:
                ctx = torch.zeros(batch_size, *ref.shape[1:], device=ref.device, dtype=ref.dtype)
            else:
                ctx = torch.zeros(batch_size, 1, self.unet.context_dim, device=dev)
            u = {"c_crossattn": ctx}
            if "context_mask" in like:
                u["context_mask"] = torch.ones(batch_size, ctx.shape[1], dtype=torch.bool, device=ctx.device)
            return u
        ref = like.get("c_concat")
        if ref is not None:
            return {"c_concat": torch.zeros(batch_size, *ref.shape[1:], device=ref.device, dtype=ref.dtype)}
        size = latent_size if latent_size is not None else self.latent_size
        if size is None:
            raise ValueError("the zero concat condition needs its size: pass latent_size=(h, w) (or like=a condition)")
        h, w = self._pair(size)
        return {"c_concat": torch.zeros(batch_size, self.unet.in_channels - self.latent_channels, h, w, device=dev)}

    def get_condition(self, batch, drop: bool | None = None) -> dict | None:
        """The learned condition of a batch (``None`` if unconditional), with dropout for guidance in training.

        ``drop``: apply ``cond_drop_prob`` (default: in train mode). Each sample is dropped independently with
        probability ``cond_drop_prob`` (drawn from torch's global generator) and gets the null condition.
        """
        if self.conditioning_key is None:
            return None
        if not isinstance(batch, dict):
            raise KeyError(f"a conditional model needs dict batches with the condition under {self.cond_key!r}")
        if isinstance(self.cond_key, dict):
            missing = [k for k in self.cond_key.values() if k not in batch]
            y = {part: batch[k] for part, k in self.cond_key.items() if k in batch}
        elif isinstance(self.cond_key, tuple):  # several fields form one raw condition (a dict)
            encoded = getattr(self.cond_stage, "encode_fields", {})
            y, missing = {}, []
            for k in self.cond_key:
                if k in batch:
                    y[k] = batch[k]
                elif k in encoded and encoded[k] in batch:  # the latent cache holds the field already encoded
                    y[encoded[k]] = batch[encoded[k]]
                else:
                    missing.append(k)
        else:
            missing = [] if self.cond_key in batch else [self.cond_key]
            y = batch.get(self.cond_key)
        if missing:
            raise KeyError(
                f"the batch has no {missing} (cond_key of this {self.conditioning_key!r} model); batch keys: "
                f"{sorted(batch)}. Pass cond_key=<the dataset's field>, or keep it when caching latents "
                "(encode_dataset(..., keys=[...]))"
            )
        c = self.get_learned_conditioning(y)
        drop = self.training if drop is None else drop
        if drop and self.cond_drop_prob > 0:
            b = batch_size_of(c)
            dropped = torch.rand(b, device=self.device) < self.cond_drop_prob
            c = where_dropped(dropped, self.get_unconditional_conditioning(b, like=c), c)
        return c

    # ------------------------------------------------------------------ Eq. 2 / Eq. 3: the denoiser and its loss
    def apply_model(self, x_t: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor:
        """``eps_theta(x_t, t, c)``: route the learned conditioning ``cond`` into the UNet by ``conditioning_key``.

        ``x_t`` ``(B, c, h, w)``, ``t`` ``(B,)`` long; ``cond``: ``None`` (unconditional), a tensor (crossattn
        ``(B, M, D)``, concat ``(B, C_c, h, w)``, adm ``(B,)``) or a dict with keys ``c_concat``,
        ``c_crossattn``, ``context_mask``, ``y``. Returns the UNet output ``(B, c, h, w)``.
        """
        key = self.conditioning_key
        if key is None:
            if cond is not None:
                raise ValueError("this model is unconditional (conditioning_key=None); call it with cond=None")
            return self.unet(x_t, t)
        if cond is None:
            raise ValueError(
                f"this model is conditional (conditioning_key={key!r}) and got cond=None; pass the learned "
                "conditioning (get_learned_conditioning(y)) or get_unconditional_conditioning(batch_size)"
            )
        parts = as_condition(cond, key)  # a no-op for a condition built by get_learned_conditioning
        x_in, context, y, mask = x_t, None, None, None
        if key in ("concat", "hybrid"):
            cc = parts.get("c_concat")
            if cc is None:
                raise ValueError(f"conditioning_key={key!r} needs a 'c_concat' tensor (B, C, h, w) at the latent size")
            if cc.ndim != 4 or cc.shape[0] != x_t.shape[0]:
                raise ValueError(f"c_concat must have shape (B={x_t.shape[0]}, C, h, w), got {tuple(cc.shape)}")
            if cc.shape[-2:] != x_t.shape[-2:]:
                raise ValueError(
                    f"the concat condition is {cc.shape[-2]}x{cc.shape[-1]} but z_t is {x_t.shape[-2]}x{x_t.shape[-1]}; "
                    "give the condition at the latent size (resize it, e.g. F.interpolate(c, size=z.shape[-2:]), or "
                    "use a cond stage that does, such as a SpatialRescaler)"
                )
            if x_t.shape[1] + cc.shape[1] != self.unet.in_channels:
                raise ValueError(
                    f"z_t has {x_t.shape[1]} channels and the concat condition {cc.shape[1]}, {x_t.shape[1] + cc.shape[1]} "
                    f"in all, but the UNet has in_channels={self.unet.in_channels}; build it with in_channels="
                    f"{x_t.shape[1] + cc.shape[1]} or give a condition with {self.unet.in_channels - x_t.shape[1]} channels"
                )
            x_in = torch.cat([x_t, cc.to(x_t.dtype)], dim=1)
        if key in ("crossattn", "hybrid"):
            context = parts.get("c_crossattn")
            if context is None:
                raise ValueError(f"conditioning_key={key!r} needs a context 'c_crossattn' of shape (B, M, D)")
            mask = parts.get("context_mask")
        if key == "adm":
            y = parts.get("y")
            if y is None:
                raise ValueError("conditioning_key='adm' needs class labels y (B,)")
        return self.unet(x_in, t, context=context, y=y, context_mask=mask)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor:
        """Same as :meth:`apply_model`."""
        return self.apply_model(x_t, t, cond)

    def get_input(self, batch) -> torch.Tensor:
        """The scaled latents of a batch: ``batch["latent"]`` as it is (pre-encoded, already scaled) or
        ``encode_first_stage(batch["image"])``. A bare tensor is taken as images."""
        if torch.is_tensor(batch):
            batch = {"image": batch}
        if not isinstance(batch, dict):
            raise TypeError(f"a batch must be a dict with 'image' or 'latent', got {type(batch).__name__}")
        if "latent" in batch:
            z = batch["latent"].to(self.device).float()
        elif "image" in batch:
            z = self.encode_first_stage(batch["image"].to(self.device))
        else:
            raise KeyError(f"the batch has neither 'image' nor 'latent' (keys: {sorted(batch)})")
        if z.ndim != 4 or z.shape[1] != self.latent_channels:
            raise ValueError(f"expected latents of shape (B, {self.latent_channels}, h, w), got {tuple(z.shape)}")
        if self.latent_size is None:
            self.latent_size = (int(z.shape[-2]), int(z.shape[-1]))
        return z

    def p_losses(self, z0: torch.Tensor, cond: Any = None, t: torch.Tensor | None = None,
                 noise: torch.Tensor | None = None, generator: torch.Generator | None = None):
        """The LDM loss (Eq. 2 / Eq. 3) on scaled latents ``z0 (B, c, h, w)`` with learned conditioning
        ``cond``; ``t`` / ``noise`` are drawn when omitted. Returns :func:`diffusion_loss`'s ``(loss, logs)``."""
        return diffusion_loss(
            lambda x, tt: self.apply_model(x, tt, cond), z0, self.schedule, t=t, noise=noise,
            parameterization=self.parameterization, weighting=self.weighting, min_snr_gamma=self.min_snr_gamma,
            loss_type=self.loss_type, generator=generator,
        )

    def training_step(self, batch, step: int = 0, optimizer_name: str = "ldm"):
        """One step of the Trainer protocol: ``(loss, logs)``.

        ``batch``: a dict with ``"image"`` ``(B, 3, H, W)`` in [-1, 1] or ``"latent"`` (pre-encoded by
        :meth:`encode_dataset`, already scaled), plus the condition under ``cond_key``. Logs ``loss``,
        ``loss_simple`` and the loss per timestep range ``loss_t/<lo>-<hi>`` (present when the batch
        has a timestep in that range).
        """
        if optimizer_name != "ldm":
            raise ValueError(f"unknown optimizer {optimizer_name!r}; LatentDiffusion has one optimiser, 'ldm'")
        z = self.get_input(batch)
        c = self.get_condition(batch)
        loss, logs = self.p_losses(z, c)
        out = {"loss": float(logs["loss"]), "loss_simple": float(logs["loss_simple"])}
        if self.t_buckets:
            T = self.schedule.num_timesteps
            edges = [round(i * T / self.t_buckets) for i in range(self.t_buckets + 1)]
            t, per = logs["t"], logs["loss_per_sample"]
            for lo, hi in zip(edges[:-1], edges[1:]):
                sel = (t >= lo) & (t < hi)
                if bool(sel.any()):
                    out[f"loss_t/{lo}-{hi - 1}"] = float(per[sel].mean())
        return loss, out

    # ------------------------------------------------------------------ modes and the Trainer protocol
    def train(self, mode: bool = True) -> "LatentDiffusion":
        """Train mode for the UNet (and a trainable cond stage); the frozen parts stay in eval mode."""
        super().train(mode)
        self.first_stage.eval()
        if self.cond_stage is not None and not self.cond_stage_trainable:
            self.cond_stage.eval()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        params = list(self.unet.parameters())
        if self.cond_stage is not None and self.cond_stage_trainable:
            params += [p for p in self.cond_stage.parameters() if p.requires_grad]
        return params

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """``{"ldm": AdamW(UNet + trainable cond stage, lr)}`` -- the first stage is never optimised."""
        return {"ldm": torch.optim.AdamW(self.trainable_parameters(), lr=self.lr, weight_decay=self.weight_decay)}

    def ema_module(self) -> nn.Module:
        """What the EMA tracks: the UNet, or ``ModuleDict(unet=..., cond_stage=...)`` with a trainable cond stage."""
        if self.cond_stage is not None and self.cond_stage_trainable:
            return nn.ModuleDict({"unet": self.unet, "cond_stage": self.cond_stage})
        return self.unet

    @torch.no_grad()
    def on_train_start(self, first_batch) -> None:
        """Called once by the Trainer at the start of a fresh run: ``scale_by_std`` estimates ``scale_factor``."""
        if not self.scale_by_std or self.scale_estimated:
            return
        if isinstance(first_batch, dict) and "image" in first_batch:
            self.estimate_scale_factor(first_batch["image"])
        elif torch.is_tensor(first_batch):
            self.estimate_scale_factor(first_batch)
        else:
            raise ValueError(
                "scale_by_std=True needs images to estimate scale_factor, but the first batch has only "
                f"{sorted(first_batch) if isinstance(first_batch, dict) else type(first_batch).__name__}; cache "
                "the latents with this model's encode_dataset(...) (it estimates the scale before encoding)"
            )

    def encode_dataset(self, dataset, batch_size: int = 64, keys: Sequence[str] | None = None,
                       progress: bool = True, num_workers: int = 0, collate_fn: Callable | None = None):
        """Encode a dataset once into a :class:`~ldm_lite.latents.LatentDataset` (see
        :func:`ldm_lite.latents.encode_dataset`); training on it skips the encoder."""
        return encode_dataset(self, dataset, batch_size=batch_size, keys=keys, progress=progress,
                              num_workers=num_workers, collate_fn=collate_fn)

    # ------------------------------------------------------------------ sampling (chapter 05)
    @torch.no_grad()
    def sample(
        self,
        num_samples: int | None = None,
        *,
        shape: Sequence[int] | None = None,
        cond: Any = None,
        c: Any = None,
        unconditional_conditioning: Any = None,
        guidance_scale: float = 1.0,
        sampler: str | Sampler = "ddim",
        steps: int | None = 50,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
        keep_mask: torch.Tensor | None = None,
        x0: torch.Tensor | None = None,
        x_T: torch.Tensor | None = None,
        callback: Callable | None = None,
        progress: bool = True,
        return_latents: bool = False,
        latent_size: int | tuple[int, int] | None = None,
        hole_mask: torch.Tensor | None = None,
        jump_length: int = 0,
        jump_n_sample: int = 1,
        decode_tile: int | None = None,
        timestep_spacing: str = "uniform",
        **sampler_kwargs,
    ):
        """Generate images: sample latents with a sampler, then decode them. Returns ``(B, 3, H, W)`` in [-1, 1].

        Conditioning, two ways (give at most one):

        * ``cond``: the *raw* condition (labels, token ids, captions for a text encoder ...), passed
          through :meth:`get_learned_conditioning`;
        * ``c``: an *already learned* conditioning (the output of ``get_learned_conditioning``), e.g.
          computed once and reused, or edited by hand.

        A conditioning with batch size 1 is repeated to ``num_samples``. Without either, a conditional
        model samples with its unconditional conditioning. ``guidance_scale != 1`` applies classifier-free
        guidance against ``unconditional_conditioning`` (default :meth:`get_unconditional_conditioning`).

        Size: ``shape = (B, c, h, w)`` of the latents, or ``num_samples`` with ``latent_size`` (default:
        the training latent size). A larger ``latent_size`` samples beyond the training resolution (the
        UNet is convolutional; Sec. 4.3.2). ``keep_mask`` (1 = known, kept) or ``hole_mask`` (1 = generated) with
        ``x0``: keep a known region -- training-free inpainting (chapter 05's blending; ``jump_length`` /
        ``jump_n_sample`` add RePaint's resampling); ``x0`` may be an image (it is encoded) or a latent, the mask
        at the latent size or the image size (then a latent position is kept only where all its f x f pixels
        are known); a 2-D ``(H, W)`` mask is broadcast over the batch, and one ``x0`` over ``num_samples``.
        ``sampler``: a name (``"ddim"``,
        ``"plms"``, ``"dpm"``, ``"ddpm"``) or a :class:`Sampler`; extra keyword arguments go to its constructor.
        ``decode_tile``: decode the latents in overlapping tiles of this side (large canvases, chapter 07).
        ``timestep_spacing``: which timesteps a ``steps``-step run visits -- ``"uniform"`` (= ``"leading"``,
        CompVis / Stable Diffusion: a 5-step run starts at t = 801), ``"trailing"`` (starts at t = T - 1, Lin et
        al. 2024) or ``"quadratic"`` (:func:`~ldm_lite.diffusion.schedule.make_ddim_timesteps`).

        ``return_latents=True`` returns ``(images, latents)``.

        Checked once, before sampling: ``sampler`` a known name or a :class:`Sampler`; ``guidance_scale`` finite
        and ``>= 0`` (1 = no guidance, 0 = the unconditional model, ``0 < s < 1`` interpolates towards it, ``> 1``
        is the usual guidance -- Ho & Salimans' ``out_u + s (out_c - out_u)``), and ``!= 1`` only for a conditional
        model with a null condition; ``eta`` finite in [0, 1]; ``scale_factor`` finite and > 0; ``x_T`` finite;
        class labels of an ``"adm"`` model in range; ``x0`` and its mask in the shapes above, an image ``x0`` finite
        and in [-1, 1] (0..255 values raise; an image with every value >= 0 warns: [0, 1] images convert with
        ``x * 2 - 1``, but a bright [-1, 1] image can be all >= 0 too). If the decoded images contain NaN / inf, a
        ``FloatingPointError`` is raised instead of returning them.
        """
        # ---- arguments, checked once here (nothing is checked inside the sampling loop)
        if not isinstance(sampler, (str, Sampler)):
            raise TypeError(f"sampler must be a name, one of {', '.join(SAMPLERS)}, or a Sampler instance, got "
                            f"{sampler!r}; pass e.g. sampler='ddim'")
        if isinstance(sampler, str) and sampler.lower() not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; use one of {', '.join(SAMPLERS)}")
        guidance_scale = check_guidance_scale(guidance_scale)
        eta = check_eta(eta)
        check_scale_factor(self.scale_factor, " of this model")
        if x_T is not None:
            check_finite("x_T (the starting noise)", x_T,
                         "Pass finite noise, e.g. torch.randn(shape, generator=g), or omit x_T to draw it from generator.")
        if cond is not None and c is not None:
            raise ValueError("give the raw condition (cond=...) or the learned one (c=...), not both")
        if (cond is not None or c is not None) and self.conditioning_key is None:
            raise ValueError("this model is unconditional (conditioning_key=None); sample without cond / c")
        if guidance_scale != 1.0 and self.conditioning_key is None:
            raise ValueError(f"guidance_scale={guidance_scale:g} needs a conditional model; this one is unconditional "
                             "(conditioning_key=None), so guidance would do nothing: sample with guidance_scale=1")
        if c is None and cond is not None:
            c = self.get_learned_conditioning(cond)
        elif c is not None and self.conditioning_key == "adm":
            parts = as_condition(c, "adm")
            if parts.get("y") is not None:
                self._check_labels(parts["y"], what="class labels y of c")
        # ---- batch size and latent shape
        if shape is not None:
            shape = tuple(int(s) for s in shape)
            if len(shape) != 4:
                raise ValueError(f"shape must be the latent shape (B, c, h, w), got {shape}")
            b = shape[0]
            if num_samples is not None and num_samples != b:
                raise ValueError(f"num_samples={num_samples} disagrees with shape[0]={b}")
        else:
            if num_samples is None:
                if c is None:
                    raise ValueError("pass num_samples (or shape=(B, c, h, w), or a batched condition)")
                num_samples = batch_size_of(as_condition(c, self.conditioning_key))
            b = int(num_samples)
            size = latent_size if latent_size is not None else self.latent_size
            concat = as_condition(c, self.conditioning_key).get("c_concat") if c is not None else None
            if latent_size is None and concat is not None:
                size = tuple(concat.shape[-2:])  # a spatial condition fixes the canvas (2x condition, 2x canvas)
            if size is None:
                raise ValueError("the latent size is unknown (no image_size and no training yet): pass latent_size=(h, w)")
            h, w = self._pair(size)
            shape = (b, self.latent_channels, h, w)
        if c is not None:
            c = expand_batch(as_condition(c, self.conditioning_key), b)
        elif self.conditioning_key is not None:
            if self.conditioning_key == "adm" and self.unconditional_value is None:
                raise ValueError("this class-conditional model has no null class: pass cond=<labels (B,)>")
            c = self.get_unconditional_conditioning(b, latent_size=shape[-2:])
            if guidance_scale != 1.0:
                raise ValueError("guidance_scale != 1 needs a condition (cond=... or c=...) to guide towards")
        uc = None
        if guidance_scale != 1.0 and self.conditioning_key is not None:
            uc = unconditional_conditioning
            if uc is None:
                uc = self.get_unconditional_conditioning(b, like=c, latent_size=shape[-2:])
            uc = expand_batch(as_condition(uc, self.conditioning_key), b)
        # ---- a known region (inpainting / keeping x0)
        mask, x0 = self._known_region(x0, keep_mask, hole_mask, shape)
        # ---- sample
        if isinstance(sampler, str):
            sampler_kwargs.setdefault("clip_denoised", self.pixel_space and float(self.scale_factor) == 1.0)
            sampler = make_sampler(sampler, self.schedule, self.parameterization, **sampler_kwargs)
        elif sampler_kwargs:
            raise ValueError(f"sampler options {sorted(sampler_kwargs)} only apply when sampler is a name")
        was_training = self.training
        self.eval()
        try:
            z = sampler.sample(
                lambda x, t, cc: self.apply_model(x, t, cc), shape, steps, conditioning=c,
                unconditional_conditioning=uc, guidance_scale=guidance_scale, eta=eta, x_T=x_T, keep_mask=mask,
                x0=x0, generator=generator, callback=callback, progress=progress, device=self.device,
                jump_length=jump_length, jump_n_sample=jump_n_sample, timestep_spacing=timestep_spacing,
            )
            images = self.decode_first_stage(z, tile=decode_tile)
        finally:
            self.train(was_training)
        self._check_finite_sample(z, images, guidance_scale)
        images = images.clamp(-1.0, 1.0)
        return (images, z) if return_latents else images

    def _known_region(self, x0, keep_mask, hole_mask, shape) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """:meth:`sample`'s known region, checked where it enters: returns ``(keep mask, x0)`` at the latent size
        (``x0`` encoded when it is an image), or ``(None, None)`` without one.

        Accepted shapes: ``x0`` ``(B, C, H, W)`` or one ``(C, H, W)``, an image at the model's image size (encoded;
        values in [-1, 1], checked by :func:`~ldm_lite.data.spatial.check_image_range`) or a latent at the latent
        size, with ``B`` = 1 (used for every sample) or ``num_samples``. The mask: ``(H, W)``, ``(1, H, W)``,
        ``(B, H, W)`` or ``(1 or B, C, H, W)``, at the image size (``C`` = 1, or 3: a pixel is then known only where
        all its channels are) or at the latent size (``C`` = 1 or the latent channels). A 2-D mask -- what a
        greyscale mask file reads as -- is broadcast over the batch and channels rather than refused. Anything
        else is a ``ValueError`` naming the argument and the fix.
        """
        has_mask = keep_mask is not None or hole_mask is not None
        if x0 is None and not has_mask:
            return None, None
        if x0 is None:
            raise ValueError("a mask was given without x0: pass x0 (the known image or latent) together with "
                             "keep_mask (1 = keep x0 there) or hole_mask (1 = generate there)")
        if not has_mask:
            raise ValueError("x0 given without a mask: pass keep_mask (1 = keep x0 there) or hole_mask (1 = generate "
                             "there); to start from a noised x0 instead (img2img), pass x_T=schedule.q_sample(x0, "
                             "t_start) and fewer steps")
        name = "keep_mask" if keep_mask is not None else "hole_mask"
        mask = keep_mask_from(keep_mask, hole_mask).to(self.device)  # exactly one, binary
        if not torch.is_tensor(x0):
            raise TypeError(f"x0 must be a tensor (B, C, H, W): the known image in [-1, 1] or its latent; got "
                            f"{type(x0).__name__}")
        x0 = x0.to(self.device).float()
        b, zc, h, w = shape
        f = self.f
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
        image = not self.pixel_space and f > 1 and (xh, xw) == (big_h, big_w)
        if not image and (xh, xw) != (h, w):
            canvas = (f"latent_size=({xh // f}, {xw // f})" if xh % f == 0 and xw % f == 0
                      else f"a size divisible by f={f}")
            at = f"{big_h}x{big_w} (or its {h}x{w} latent)" if f > 1 else f"{h}x{w}"
            raise ValueError(f"x0 is {xh}x{xw} but this model samples {big_h}x{big_w} images"
                             + (f" ({h}x{w} latents)" if f > 1 else "")
                             + f"; pass x0 at {at}, or sample a canvas of x0's size with {canvas}")
        if not image and x0.shape[1] != zc:
            encode = "" if self.pixel_space else f"; pass the image at {big_h}x{big_w} to have it encoded"
            raise ValueError(f"x0 at the latent size {h}x{w} must have {zc} channels (a latent of this model); got "
                             f"{x0.shape[1]}{encode}")
        if image or (self.pixel_space and float(self.scale_factor) == 1.0):
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
            x0 = self.encode_first_stage(x0 * pixel_keep)
        if not at_latent:
            mask = -F.max_pool2d(-mask, f)  # min-pool: keep only fully known latent positions
        if x0.shape[0] != b:
            x0 = x0.expand(b, -1, -1, -1).contiguous()
        return mask, x0

    @staticmethod
    def _check_finite_sample(z: torch.Tensor, images: torch.Tensor, guidance_scale: float) -> None:
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

    def extra_repr(self) -> str:
        return (f"conditioning_key={self.conditioning_key!r}, parameterization={self.parameterization!r}, "
                f"f={self.f}, scale_factor={float(self.scale_factor):.5g}, cond_drop_prob={self.cond_drop_prob}")
