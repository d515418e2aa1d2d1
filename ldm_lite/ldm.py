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

Three conventions differ from the CompVis code -- the posterior's mode rather than a sample, the scale factor
estimated as ``1 / std``, and the condition dropped for classifier-free guidance -- and are described with the
settings that choose them, in :mod:`ldm_lite.ldm_config`.

**The condition has one form inside the model**: a :class:`~ldm_lite.conditioning.condition.Condition` with
the parts CompVis's ``DiffusionWrapper`` routes -- ``context`` (+ ``context_mask``, True = real token),
``concat``, ``y`` -- built once by ``get_learned_conditioning`` (or by ``Condition.of`` where a learned
condition is handed in) and checked where it enters (``sample``, ``training_step``). Dropout, guidance and
``apply_model``, the one routing point into the UNet, read only that.

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

from typing import Any, Callable, Sequence

import torch
from torch import nn

from ldm_lite.autoencoder.first_stage import IdentityFirstStage, is_pixel_space
from ldm_lite.autoencoder.model import build_autoencoder, check_image_channels, check_image_size
from ldm_lite.autoencoder.tiled import tiled_decode
from ldm_lite.conditioning.embedders import build_cond_stage
from ldm_lite.checks import (
    check_scale_factor,
    check_class_labels,
    check_concat,
    check_eta,
    check_finite_sample,
    check_guidance_scale,
    check_sample_condition,
    check_start_noise,
    known_region,
    latent_shape,
)
from ldm_lite.conditioning.condition import Condition, raw_batch, raw_condition, to_device
from ldm_lite.diffusion.samplers import Sampler, make_sampler
from ldm_lite.diffusion.schedule import NoiseSchedule, diffusion_loss, loss_by_timestep
from ldm_lite.latents import encode_dataset, latents_of_batch
from ldm_lite.ldm_config import CONDITIONING_KEYS, LDMConfig, ScheduleConfig
from ldm_lite.unet.model import UNetModel

__all__ = ["CONDITIONING_KEYS", "LatentDiffusion", "default_schedule"]

def default_schedule() -> NoiseSchedule:
    """The LDM / Stable Diffusion schedule: ``"linear"`` (linear in sqrt(beta)), T=1000, 0.00085-0.012."""
    return ScheduleConfig().build()


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
            to the ``"c_crossattn"`` part only.
        schedule: the :class:`NoiseSchedule` (default :func:`default_schedule`).
        config: an :class:`~ldm_lite.ldm_config.LDMConfig` holding every setting, or the settings by name instead
            (``conditioning_key="crossattn", cond_key="caption", cond_drop_prob=0.1, ...``: the fields of its parts,
            described there). Each reads as an attribute too (``model.cond_drop_prob``).
    """

    def __init__(self, first_stage: nn.Module | None, unet: UNetModel, cond_stage: nn.Module | None = None, *,
                 schedule: NoiseSchedule | None = None, config: LDMConfig | None = None, **settings):
        super().__init__()
        if not isinstance(unet, nn.Module):
            raise TypeError(f"unet must be an nn.Module (a UNetModel), got {type(unet).__name__}")
        # pixel space is a first stage too (f = 1, the image is its own latent): nothing below asks whether there is one
        self.first_stage = first_stage if first_stage is not None else IdentityFirstStage(unet.out_channels)
        self.unet = unet
        self.cond_stage = cond_stage
        self.schedule = schedule if schedule is not None else (config.schedule.build() if config else default_schedule())
        if not isinstance(self.schedule, NoiseSchedule):
            raise TypeError(f"schedule must be a NoiseSchedule, got {type(self.schedule).__name__}")
        if config is None:
            config = LDMConfig.from_modules(self.first_stage, unet, cond_stage, self.schedule, **settings)
        elif settings:
            raise TypeError(f"give the settings in config or by name, not both (got config and {sorted(settings)})")
        self.config = config
        self.register_buffer("scale_factor", torch.tensor(config.scale_factor, dtype=torch.float32))
        self.register_load_state_dict_post_hook(LatentDiffusion._check_loaded_scale)
        self.scale_estimated = False  # set by estimate_scale_factor (a resumed run restores the buffer)
        self.image_size, self.latent_size = config.image_size, config.latent_size
        self.first_stage.eval()
        self.first_stage.requires_grad_(False)
        if cond_stage is not None and not self.cond_stage_trainable:
            cond_stage.eval()
            cond_stage.requires_grad_(False)

    @classmethod
    def from_config(cls, config: LDMConfig | dict, first_stage: nn.Module | None = None,
                    cond_stage: nn.Module | None = None) -> "LatentDiffusion":
        """Build the model a config describes (fresh weights): the UNet from ``config.unet``, the schedule, the cond
        stage from its recorded config and the first stage from its architecture -- or pass trained ``first_stage``
        / ``cond_stage`` modules (``ldm_lite.pretrained.load_ldm`` does, with the weights)."""
        config = LDMConfig.from_dict(config) if isinstance(config, dict) else config
        if config.unet is None:
            raise ValueError("this config does not describe its UNet (config.unet is None); build the model with "
                             "LatentDiffusion(first_stage, unet, ...)")
        fs_cfg = config.first_stage
        if first_stage is None and not fs_cfg.pixel_space:
            if fs_cfg.autoencoder is None:
                raise ValueError("the config names no autoencoder architecture; pass first_stage=<the autoencoder>")
            first_stage = build_autoencoder(fs_cfg.autoencoder)
        cs = config.conditioning.cond_stage
        if cond_stage is None and cs is not None:
            if "type" not in cs:
                raise ValueError(f"the cond stage {cs.get('class')} is not described by its config; build it as in "
                                 "training and pass cond_stage=...")
            cond_stage = build_cond_stage(cs)
        return cls(first_stage, UNetModel.from_config(config.unet), cond_stage, config=config)

    def export_config(self) -> LDMConfig:
        """``config`` as the model stands now: the estimated ``scale_factor`` fixed (``scale_by_std`` off)."""
        return self.config.replace(scale_factor=float(self.scale_factor), scale_by_std=False)

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

    device = property(lambda self: next(self.unet.parameters()).device, doc="Where the UNet's weights are.")

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
    def get_learned_conditioning(self, y: Any) -> Condition | None:
        """The raw condition ``y`` -> ``tau_theta(y)`` as a :class:`~ldm_lite.conditioning.condition.Condition`:
        a context (+ mask) for cross-attention, a concat image or class labels.

        Without a cond stage ``y`` passes through (raw labels for ``"adm"``, an image at the latent size for
        ``"concat"``). In ``"hybrid"`` mode ``y`` is a dict ``{"c_concat": ..., "c_crossattn": ...}`` and the
        cond stage sees only ``"c_crossattn"``. A frozen cond stage runs without gradients.
        """
        if y is None:
            return None
        key = self.conditioning_key
        if key is None:
            raise ValueError("this model is unconditional (conditioning_key=None); it takes no condition")
        if key != "hybrid":
            return Condition.of(self._cond_stage_forward(y), key)
        if not isinstance(y, dict) or not set(y) <= {"c_concat", "c_crossattn"}:
            raise ValueError("conditioning_key='hybrid' takes a raw condition {'c_concat': image at the latent "
                             "size, 'c_crossattn': the cond stage's input}")
        cross = self._cond_stage_forward(y["c_crossattn"]) if "c_crossattn" in y else None
        parts = {} if cross is None else Condition.of(cross, "crossattn").parts()
        if "c_concat" in y:
            parts["concat"] = to_device(y["c_concat"], self.device)
        return Condition(**parts)

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
                                       latent_size: int | tuple[int, int] | None = None) -> Condition | None:
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
            null = Condition.of(self._cond_stage_forward(raw), "crossattn" if key == "hybrid" else key)
            return null.expand(batch_size)
        if key == "adm":
            raise ValueError(
                "conditioning_key='adm' has no unconditional conditioning: zeros would be class 0. Build the UNet "
                "with num_classes = n + 1 and pass unconditional_value=n (a null class)"
            )
        size = latent_size if latent_size is not None else self.latent_size
        return Condition.zeros(key, batch_size, Condition.of(like, key), self.unet.context_dim,
                               self.unet.in_channels - self.latent_channels, size, self.device)

    def get_condition(self, batch, drop: bool | None = None) -> Condition | None:
        """The learned condition of a batch (``None`` if unconditional), with dropout for guidance in training.

        ``drop``: apply ``cond_drop_prob`` (default: in train mode). Each sample is dropped independently with
        probability ``cond_drop_prob`` (drawn from torch's global generator) and gets the null condition.
        """
        if self.conditioning_key is None:
            return None
        y = raw_condition(batch, self.cond_key, getattr(self.cond_stage, "encode_fields", None), self.conditioning_key)
        c = self.get_learned_conditioning(y)
        drop = self.training if drop is None else drop
        if drop and self.cond_drop_prob > 0:
            b = c.batch_size
            dropped = torch.rand(b, device=self.device) < self.cond_drop_prob
            c = c.where(dropped, self.get_unconditional_conditioning(b, like=c))
        return c

    def _check_condition(self, c: Condition | None, z_shape: Sequence[int], complete: bool = True) -> Condition | None:
        """A learned condition where it enters (``sample``, ``training_step``, a direct ``apply_model`` call): given
        exactly when the model is conditional, with the parts ``conditioning_key`` routes (``complete``), and a
        concat image that fits ``z_t`` of shape ``z_shape``. Nothing below the entry checks it again."""
        key = self.conditioning_key
        if (c is None) != (key is None):
            raise ValueError("this model is unconditional (conditioning_key=None); call it with cond=None"
                             if key is None else f"this model is conditional (conditioning_key={key!r}) and got "
                             "cond=None; pass the learned conditioning (get_learned_conditioning(y)) or "
                             "get_unconditional_conditioning(B)")
        if c is not None and complete:
            c.check_parts(key)
        if c is not None and c.concat is not None:
            check_concat(c.concat, z_shape, self.unet.in_channels)
        return c

    # ------------------------------------------------------------------ Eq. 2 / Eq. 3: the denoiser and its loss
    def apply_model(self, x_t: torch.Tensor, t: torch.Tensor, cond: Condition | None = None) -> torch.Tensor:
        """``eps_theta(x_t, t, c)``: route the learned condition into the UNet, as CompVis's ``DiffusionWrapper``:
        ``concat`` joins ``x_t`` on the channel axis, ``context`` (+ ``context_mask``) feeds cross-attention, ``y``
        the class embedding. ``x_t`` ``(B, c, h, w)``, ``t`` ``(B,)`` long; returns the UNet output ``(B, c, h, w)``.

        ``cond``: a :class:`~ldm_lite.conditioning.condition.Condition` (checked where it entered), or from a direct
        caller ``None`` or any form :meth:`Condition.of` takes (a tensor, a dict ...), converted and checked here.
        """
        if not isinstance(cond, Condition):
            cond = self._check_condition(Condition.of(cond, self.conditioning_key), x_t.shape)
        if cond is None:
            return self.unet(x_t, t)
        x_in = x_t if cond.concat is None else torch.cat([x_t, cond.concat.to(x_t.dtype)], dim=1)
        return self.unet(x_in, t, context=cond.context, y=cond.y, context_mask=cond.context_mask)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor:
        """Same as :meth:`apply_model`."""
        return self.apply_model(x_t, t, cond)

    def get_input(self, batch) -> torch.Tensor:
        """The scaled latents of a batch: ``batch["latent"]`` as it is (pre-encoded, already scaled) or
        ``encode_first_stage(batch["image"])``. A bare tensor is taken as images."""
        z = latents_of_batch(batch, self.encode_first_stage, self.latent_channels, self.device)
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
        c = self._check_condition(self.get_condition(batch), z.shape)
        loss, logs = self.p_losses(z, c)
        out = {"loss": float(logs["loss"]), "loss_simple": float(logs["loss_simple"])}
        if self.t_buckets:
            out.update(loss_by_timestep(logs["t"], logs["loss_per_sample"], self.schedule.num_timesteps, self.t_buckets))
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
            raise ValueError(f"scale_by_std=True needs images to estimate scale_factor, but the first batch has only "
                             f"{sorted(first_batch) if isinstance(first_batch, dict) else type(first_batch).__name__};"
                             " cache the latents with this model's encode_dataset(...) (it estimates the scale first)")

    def encode_dataset(self, dataset, batch_size: int = 64, keys: Sequence[str] | None = None,
                       progress: bool = True, num_workers: int = 0, collate_fn: Callable | None = None):
        """Encode a dataset once (:func:`ldm_lite.latents.encode_dataset`); training on it skips the encoder."""
        return encode_dataset(self, dataset, batch_size=batch_size, keys=keys, progress=progress,
                              num_workers=num_workers, collate_fn=collate_fn)

    # ------------------------------------------------------------------ sampling (chapter 05)
    @torch.no_grad()
    def sample(
        self, num_samples: int | None = None, *, shape: Sequence[int] | None = None, cond: Any = None, c: Any = None,
        unconditional_conditioning: Any = None, guidance_scale: float = 1.0, sampler: str | Sampler = "ddim",
        steps: int | None = 50, eta: float = 0.0, generator: torch.Generator | None = None,
        keep_mask: torch.Tensor | None = None, x0: torch.Tensor | None = None, x_T: torch.Tensor | None = None,
        callback: Callable | None = None, progress: bool = True, return_latents: bool = False,
        latent_size: int | tuple[int, int] | None = None, hole_mask: torch.Tensor | None = None, jump_length: int = 0,
        jump_n_sample: int = 1, decode_tile: int | None = None, timestep_spacing: str = "uniform", **sampler_kwargs,
    ):
        """Generate images: sample latents with a sampler, then decode them. Returns ``(B, 3, H, W)`` in [-1, 1].

        Conditioning (at most one): ``cond``, the *raw* condition (labels, token ids, captions ...), passed through
        :meth:`get_learned_conditioning`; or ``c``, an *already learned* one (computed once and reused, or edited by
        hand). A condition of batch size 1 is repeated to ``num_samples``; without either, a conditional model
        samples with its unconditional conditioning. ``guidance_scale != 1`` applies classifier-free guidance
        against ``unconditional_conditioning`` (default :meth:`get_unconditional_conditioning`).

        Size: ``shape = (B, c, h, w)`` of the latents, or ``num_samples`` with ``latent_size`` (default: the training
        latent size, or a concat condition's); a larger one samples beyond the training resolution (Sec. 4.3.2).
        ``keep_mask`` (1 = known, kept) or ``hole_mask`` (1 = generated) with ``x0``: keep a known region --
        training-free inpainting (``jump_length`` / ``jump_n_sample`` add RePaint's resampling); ``x0`` an image
        (encoded) or a latent, the mask at either size (:func:`~ldm_lite.checks.known_region`). ``sampler``: a name
        (``"ddim"``, ``"plms"``, ``"dpm"``, ``"ddpm"``) or a :class:`Sampler`; extra keyword arguments go to its
        constructor. ``timestep_spacing``: ``"uniform"`` (= ``"leading"``, CompVis / SD: 5 steps start at t = 801),
        ``"trailing"`` (starts at t = T - 1) or ``"quadratic"``. ``decode_tile``: decode in overlapping tiles of this
        side (large canvases). ``return_latents=True`` returns ``(images, latents)``.

        Every argument is checked once, here, by :mod:`ldm_lite.checks` (one valid range per value; nothing in the
        loop checks again): ``guidance_scale >= 0`` (1 = none, 0 = the unconditional model, ``> 1`` the usual
        ``out_u + s (out_c - out_u)``), ``eta`` in [0, 1], finite ``x_T``, labels, masks, an image ``x0`` in [-1, 1].
        Decoded images with NaN / inf raise a ``FloatingPointError`` instead of being returned.
        """
        if isinstance(sampler, str):
            sampler_kwargs.setdefault("clip_denoised", self.pixel_space and float(self.scale_factor) == 1.0)
        sampler = make_sampler(sampler, self.schedule, self.parameterization, **sampler_kwargs)
        guidance_scale, eta = check_guidance_scale(guidance_scale), check_eta(eta)
        check_scale_factor(self.scale_factor, " of this model")
        # 1. condition: the learned condition, the latent shape and the null condition of guidance
        c, uc, shape = self._sampling_condition(cond, c, unconditional_conditioning, guidance_scale, num_samples,
                                                shape, latent_size)
        if x_T is not None:
            check_start_noise(x_T, shape)
        # 2. known region: the keep mask and x0 at the latent size (an image x0 is encoded)
        mask, x0 = known_region(x0, keep_mask, hole_mask, shape, f=self.f, device=self.device,
                                encode=None if self.pixel_space else self.encode_first_stage,
                                image_range=self.pixel_space and float(self.scale_factor) == 1.0)
        # 3. sampler: the latents, in eval mode
        was_training = self.training
        self.eval()
        try:
            z = sampler.run(
                lambda x, t, cc: self.apply_model(x, t, cc), shape, steps, conditioning=c,
                unconditional_conditioning=uc, guidance_scale=guidance_scale, eta=eta, x_T=x_T, keep_mask=mask,
                x0=x0, generator=generator, callback=callback, progress=progress, device=self.device,
                jump_length=jump_length, jump_n_sample=jump_n_sample, timestep_spacing=timestep_spacing,
            )
            # 4. decode: images in [-1, 1], never NaN
            images = self.decode_first_stage(z, tile=decode_tile)
        finally:
            self.train(was_training)
        check_finite_sample(z, images, guidance_scale)
        images = images.clamp(-1.0, 1.0)
        return (images, z) if return_latents else images

    def _sampling_condition(self, cond, c, uc, guidance_scale: float, num_samples, shape, latent_size):
        """Step 1 of :meth:`sample`: the learned condition ``c`` (from ``cond``, or given), the latent ``shape`` and
        the null condition ``uc`` of guidance (``None`` without guidance), each checked once, here."""
        key = self.conditioning_key
        check_sample_condition(cond, c, key, guidance_scale)
        c = self.get_learned_conditioning(cond) if cond is not None else Condition.of(c, key)
        if cond is None and key == "adm" and c is not None and c.y is not None:
            self._check_labels(c.y, what="class labels y of c")
        size = latent_size if latent_size is not None else self.latent_size
        if latent_size is None and c is not None and c.concat is not None:
            size = tuple(c.concat.shape[-2:])  # a spatial condition fixes the canvas (2x condition, 2x canvas)
        shape = latent_shape(shape, num_samples, self.latent_channels, None if c is None else c.batch_size, size)
        b = shape[0]
        if c is None and key is not None:
            if key == "adm" and self.unconditional_value is None:
                raise ValueError("this class-conditional model has no null class: pass cond=<labels (B,)>")
            if guidance_scale != 1.0:
                raise ValueError("guidance_scale != 1 needs a condition (cond=... or c=...) to guide towards")
            c = self.get_unconditional_conditioning(b, latent_size=shape[-2:])
        c = self._check_condition(None if c is None else c.expand(b), shape)
        if guidance_scale == 1.0:
            return c, None, shape
        if uc is None:
            uc = self.get_unconditional_conditioning(b, like=c, latent_size=shape[-2:])
        return c, self._check_condition(Condition.of(uc, key).expand(b), shape, complete=False), shape

    def extra_repr(self) -> str:
        return (f"conditioning_key={self.conditioning_key!r}, parameterization={self.parameterization!r}, "
                f"f={self.f}, scale_factor={float(self.scale_factor):.5g}, cond_drop_prob={self.cond_drop_prob}")


def _setting_property(name: str) -> property:
    def get(self):
        return self.config.get(name)
    get.__doc__ = f"``config``'s setting ``{name}``."
    return property(get)


# every setting of the config reads as an attribute: model.cond_drop_prob is model.config.conditioning.cond_drop_prob
for _name in LDMConfig.settings():
    if not hasattr(LatentDiffusion, _name) and _name not in ("unet", "name", "autoencoder", "schedule", "scale_factor", "cond_stage",
                                                              "image_size"):
        setattr(LatentDiffusion, _name, _setting_property(_name))
