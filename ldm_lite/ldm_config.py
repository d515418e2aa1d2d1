"""One serialisable description of a latent diffusion model: :class:`LDMConfig`.

Every setting of :class:`~ldm_lite.ldm.LatentDiffusion` lives in one field of one of the small dataclasses
below, next to its one-line description; the model, a training recipe, the command line and an export's
manifest all read it from there (the idea of nanoGPT's ``GPTConfig``, with parts as in CompVis's YAML files)::

    LDMConfig
    |-- unet           UNetConfig            the denoiser eps_theta (Sec. 3.2)
    |-- first_stage    FirstStageConfig      the frozen autoencoder E / D, or pixel space (Sec. 3.1)
    |-- conditioning   ConditioningConfig    tau_theta and how its output enters the UNet (Sec. 3.3)
    |-- schedule       ScheduleConfig        the forward process q(x_t | x_0) (beta_1 .. beta_T)
    |-- objective      ObjectiveConfig       what the UNet predicts and how the loss is weighted (Eq. 2)
    |-- optimizer      OptimizerConfig       AdamW over the UNet (+ a trainable cond stage)
    `-- scale_factor, scale_by_std, image_size, t_buckets

A field's name is also its keyword in ``LatentDiffusion(first_stage, unet, cond_stage, **settings)`` and
its option on the command line (``cond_drop_prob`` -> ``--cond-drop-prob``), so a new setting is one line
here plus its description. Values are checked once, in ``__post_init__``; whatever reads a config may trust it.

Three settings choose conventions that the CompVis code makes differently or implicitly:

* **Posterior mode, not a sample.** ``encode_first_stage`` returns the *mean* of the KL encoder's
  posterior ``q(z|x)`` by default (``posterior="mode"``); CompVis draws a sample. With the tiny
  KL weight of the first stage (~1e-6) the posterior's standard deviation is ~1e-2 or less of the
  latent's, so the sample adds almost nothing -- and the mode makes encoding deterministic: cached
  latents (:meth:`~ldm_lite.ldm.LatentDiffusion.encode_dataset`) then give exactly the loss of encoding in the
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
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch

from ldm_lite.autoencoder.first_stage import is_pixel_space
from ldm_lite.autoencoder.model import AutoencoderConfig
from ldm_lite.checks import check_scale_factor
from ldm_lite.config import setting
from ldm_lite.diffusion.schedule import PARAMETERIZATIONS, NoiseSchedule
from ldm_lite.unet.model import UNetConfig

__all__ = ["CONDITIONING_KEYS", "ConditioningConfig", "FirstStageConfig", "LDMConfig", "ObjectiveConfig",
           "OptimizerConfig", "ScheduleConfig", "plain_json"]

CONDITIONING_KEYS = (None, "crossattn", "concat", "hybrid", "adm")
SCHEDULES = ("linear", "cosine", "sqrt_linear", "sqrt")


def _need(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


@dataclass
class ScheduleConfig:
    """The forward process: ``beta_t`` for ``t = 1 .. T`` (names as in the CompVis configs)."""

    schedule: str = setting("linear", "beta schedule: linear (linear in sqrt(beta): LDM, Stable Diffusion), cosine, "
                                      "sqrt_linear or sqrt", choices=SCHEDULES)
    timesteps: int = setting(1000, "T, the number of noise levels")
    linear_start: float = setting(0.00085, "beta_1 of the linear schedules (LDM: 0.00085)")
    linear_end: float = setting(0.012, "beta_T of the linear schedules (LDM: 0.012)")
    betas: list[float] | None = setting(None, "a schedule given as its betas (overrides the name)", flag=False)

    def __post_init__(self):
        if self.betas is None:
            _need(self.schedule in SCHEDULES, f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
            _need(isinstance(self.timesteps, int) and self.timesteps >= 1,
                  f"timesteps must be an int >= 1, got {self.timesteps!r}")
            _need(0 < self.linear_start <= self.linear_end < 1,
                  f"the linear schedule needs 0 < linear_start <= linear_end < 1, got {self.linear_start}, "
                  f"{self.linear_end}")
        else:
            self.betas = [float(b) for b in self.betas]

    def build(self) -> NoiseSchedule:
        if self.betas is not None:
            return NoiseSchedule(torch.tensor(self.betas, dtype=torch.float64))
        return NoiseSchedule.from_name(self.schedule, self.timesteps, linear_start=self.linear_start,
                                       linear_end=self.linear_end)

    @classmethod
    def of(cls, schedule: NoiseSchedule) -> "ScheduleConfig":
        """The config of a built schedule: its name and parameters, or its betas when it was given as betas."""
        made = getattr(schedule, "made_from", None)
        if made and set(made) <= {"schedule", "n_timestep", "linear_start", "linear_end"}:
            made = dict(made)
            return cls(schedule=made.pop("schedule"), timesteps=made.pop("n_timestep"), **made)
        return cls(betas=schedule.betas.double().cpu().tolist())


@dataclass
class FirstStageConfig:
    """The frozen first stage: a checkpoint (by name or path) with its architecture, or pixel space."""

    name: str | None = setting(None, "'pixel', a shipped autoencoder's name or a checkpoint path (None: a module "
                                     "handed in)", flag=False)
    autoencoder: AutoencoderConfig | None = setting(None, "its architecture (KL or VQ); None in pixel space",
                                                    flag=False)
    posterior: str = setting("mode", "encode to the KL posterior's mode (deterministic) or a sample (CompVis)",
                             choices=("mode", "sample"))
    latent_channels: int | None = setting(None, "channels of the latent (pixel space: of the image)", flag=False)
    f: int = setting(1, "downsampling factor (1 in pixel space)", flag=False)

    def __post_init__(self):
        if isinstance(self.autoencoder, dict):
            self.autoencoder = AutoencoderConfig(**self.autoencoder)
        if self.autoencoder is not None:
            self.latent_channels, self.f = int(self.autoencoder.embed_dim), int(self.autoencoder.f)
        _need(self.posterior in ("mode", "sample"),
              f"posterior must be 'mode' (deterministic mean) or 'sample' (CompVis), got {self.posterior!r}")

    @property
    def pixel_space(self) -> bool:
        return self.name == "pixel" or (self.autoencoder is None and self.f == 1 and self.name is None
                                        and self.latent_channels is not None)


@dataclass
class ConditioningConfig:
    """tau_theta and the way its output enters the UNet (Sec. 3.3; ``LatentDiffusion``'s module docstring)."""

    conditioning_key: str | None = setting(None, "None (unconditional), crossattn, concat, hybrid or adm",
                                           flag=False)
    cond_key: Any = setting(None, "the batch field(s) holding the raw condition (label, caption, lr_image ...)",
                            flag=False)
    cond_stage: dict | None = setting(None, "the cond stage's config (rebuilds it), or None for the identity",
                                      flag=False)
    cond_stage_trainable: bool = setting(True, "train the cond stage with the UNet (False: frozen)", flag=False)
    unconditional_value: Any = setting(None, "one sample's raw null condition (null class, '', empty layout); "
                                             "None = zeros of the learned condition", flag=False)
    cond_drop_prob: float = setting(0.0, "share of training examples whose condition is replaced by the null one "
                                         "(classifier-free guidance; the paper: 0.1)", type="probability")

    def __post_init__(self):
        key = self.conditioning_key
        _need(key in CONDITIONING_KEYS,
              f"unknown conditioning_key {key!r}; use None (unconditional), 'crossattn' (context for "
              "cross-attention), 'concat' (spatial condition concatenated to z_t), 'hybrid' (both) or 'adm' "
              "(class labels added to the time embedding)")
        p = self.cond_drop_prob
        _need(isinstance(p, (int, float)) and math.isfinite(p) and 0.0 <= p <= 1.0,
              f"cond_drop_prob must lie in [0, 1], got {p!r}")
        self.cond_drop_prob = float(p)
        if isinstance(self.cond_key, list):
            self.cond_key = tuple(self.cond_key)
        ck = self.cond_key
        if key is not None and ck is None:
            raise ValueError(
                f"conditioning_key={key!r} needs cond_key: the batch key of the raw condition, e.g. cond_key='label'"
                + (" (hybrid: cond_key={'c_concat': 'lr_image', 'c_crossattn': 'caption_ids'})" if key == "hybrid"
                   else ""))
        if isinstance(ck, dict):
            _need(key == "hybrid", "a dict cond_key is for conditioning_key='hybrid'; use a single batch key otherwise")
            bad = set(ck) - {"c_concat", "c_crossattn"}
            _need(not bad, f"hybrid cond_key keys must be 'c_concat' and 'c_crossattn', got extra {sorted(bad)}")
        if isinstance(ck, tuple):
            _need(bool(ck) and key not in ("hybrid", None) and all(isinstance(k, str) for k in ck),
                  "a tuple cond_key names several batch fields that together form one raw condition (a dict, e.g. "
                  "('masked_image', 'hole_mask') for inpainting); use it with 'concat' / 'crossattn' cond stages "
                  "that take a dict")
        _need(not (self.cond_drop_prob > 0 and key is None),
              "cond_drop_prob > 0 needs a conditional model (conditioning_key is None: nothing to drop)")
        _need(not (key == "adm" and self.cond_drop_prob > 0 and self.unconditional_value is None),
              "classifier-free guidance with conditioning_key='adm' needs a null class: build the UNet with "
              "num_classes = n + 1 and pass unconditional_value=n (zeros would be class 0)")


@dataclass
class ObjectiveConfig:
    """What the UNet predicts and how :func:`~ldm_lite.diffusion.diffusion_loss` weighs its error (Eq. 2)."""

    parameterization: str = setting("eps", "what the UNet predicts: eps (the paper), x0 or v",
                                    choices=PARAMETERIZATIONS)
    weighting: str | None = setting(None, "loss weighting over t: none (the paper) or min_snr",
                                    choices=("none", "min_snr"))
    min_snr_gamma: float = setting(5.0, "gamma of the min-SNR weighting", type="positive")
    loss_type: str = setting("l2", "l2 (the paper) or l1", choices=("l2", "l1"))

    def __post_init__(self):
        if self.weighting == "none":
            self.weighting = None
        _need(self.parameterization in PARAMETERIZATIONS,
              f"unknown parameterization {self.parameterization!r}; use one of {', '.join(PARAMETERIZATIONS)}")
        _need(self.weighting in (None, "min_snr"), f"unknown weighting {self.weighting!r}; use None (the paper) or "
                                                   "'min_snr'")
        _need(self.loss_type in ("l2", "l1"), f"unknown loss_type {self.loss_type!r}; use 'l2' or 'l1'")
        self.min_snr_gamma = float(self.min_snr_gamma)


@dataclass
class OptimizerConfig:
    """AdamW over the UNet and a trainable cond stage (the first stage is never optimised)."""

    lr: float = setting(1e-4, "learning rate", type="positive")
    weight_decay: float = setting(0.01, "AdamW weight decay (CompVis: PyTorch's default 0.01)", type="non-negative")

    def __post_init__(self):
        _need(isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0,
              f"lr must be a finite number > 0 (e.g. 2e-4), got {self.lr!r}")
        _need(math.isfinite(self.weight_decay) and self.weight_decay >= 0,
              f"weight_decay must be >= 0, got {self.weight_decay!r}")
        self.lr, self.weight_decay = float(self.lr), float(self.weight_decay)


_PARTS = {"first_stage": FirstStageConfig, "conditioning": ConditioningConfig, "schedule": ScheduleConfig,
          "objective": ObjectiveConfig, "optimizer": OptimizerConfig}


@dataclass
class LDMConfig:
    """A latent (or pixel-space) diffusion model, whole: ``LatentDiffusion.from_config(cfg)`` builds it and
    ``cfg.to_dict()`` is what an export's manifest stores (module docstring)."""

    unet: UNetConfig | None = setting(None, "the denoiser (None: a custom module, not described)", flag=False)
    first_stage: FirstStageConfig = setting(FirstStageConfig, "the first stage", flag=False)
    conditioning: ConditioningConfig = setting(ConditioningConfig, "the conditioning", flag=False)
    schedule: ScheduleConfig = setting(ScheduleConfig, "the noise schedule", flag=False)
    objective: ObjectiveConfig = setting(ObjectiveConfig, "the training objective", flag=False)
    optimizer: OptimizerConfig = setting(OptimizerConfig, "the optimiser", flag=False)
    scale_factor: float = setting(1.0, "latents are multiplied by it after encoding (SD's KL-f8: 0.18215)",
                                  type="positive")
    scale_by_std: bool = setting(False, "estimate scale_factor = 1 / std of the first batch's latents", flag=False)
    image_size: tuple[int, int] | None = setting(None, "the training image size (H, W): the default sample size",
                                                 flag=False)
    t_buckets: int = setting(4, "log the training loss in this many timestep ranges (0 = off)", flag=False)

    def __post_init__(self):
        if isinstance(self.unet, dict):
            self.unet = UNetConfig(**self.unet)
        for name, cls in _PARTS.items():
            if isinstance(getattr(self, name), dict):
                setattr(self, name, cls(**getattr(self, name)))
        if isinstance(self.image_size, int):
            self.image_size = (self.image_size, self.image_size)
        if self.image_size is not None:
            self.image_size = tuple(int(s) for s in self.image_size)
        self.scale_factor = check_scale_factor(self.scale_factor)
        _need(isinstance(self.t_buckets, int) and self.t_buckets >= 0, f"t_buckets must be >= 0, got {self.t_buckets}")
        self._check_parts_agree()

    def _check_parts_agree(self) -> None:
        """The parts must fit together: the UNet's channels, context and classes against the first stage and
        the conditioning; the scale estimate against the first stage; the image size against f."""
        fs, cond, unet = self.first_stage, self.conditioning, self.unet
        key, zc = cond.conditioning_key, fs.latent_channels
        where = "the image" if fs.pixel_space else "the autoencoder's latent"
        if unet is not None and zc is not None:
            _need(unet.out_channels == zc, f"the UNet predicts out_channels={unet.out_channels} channels but {where} "
                                           f"has {zc}; build the UNet with out_channels={zc}")
            if key in ("concat", "hybrid"):
                _need(unet.in_channels > zc,
                      f"conditioning_key={key!r} concatenates the condition to z_t, so the UNet needs in_channels = "
                      f"{zc} (latent) + the condition's channels, but it has in_channels={unet.in_channels}")
            else:
                _need(unet.in_channels == zc,
                      f"the UNet has in_channels={unet.in_channels} but {where} has {zc} channels; build it with "
                      f"in_channels={zc}" + (" (or use conditioning_key='concat' if the extra channels are a "
                                             "spatial condition)" if unet.in_channels > zc else ""))
        if unet is not None:
            _need(unet.context_dim is None or key in ("crossattn", "hybrid"),
                  f"the UNet was built with context_dim={unet.context_dim} (cross-attention), so it needs a context: "
                  "use conditioning_key='crossattn' (or 'hybrid'), or build the UNet with context_dim=None")
            _need(key not in ("crossattn", "hybrid") or unet.context_dim is not None,
                  f"conditioning_key={key!r} feeds a context to cross-attention, but the UNet has context_dim=None; "
                  "build it with context_dim=<width of the cond stage's output> (and use_spatial_transformer=True)")
            _need(unet.num_classes is None or key == "adm",
                  f"the UNet was built with num_classes={unet.num_classes} (a class embedding), so it needs labels y:"
                  " use conditioning_key='adm', or build the UNet with num_classes=None")
            _need(key != "adm" or unet.num_classes is not None,
                  "conditioning_key='adm' passes class labels y, but the UNet has num_classes=None; build it with "
                  "num_classes=<number of classes (+1 for a null class)>")
        if self.scale_by_std:
            _need(not fs.pixel_space,
                  "scale_by_std=True estimates the scale of an autoencoder's latents, but this is a pixel-space model "
                  "(first_stage=None): images in [-1, 1] need no rescaling; set scale_by_std=False")
            _need(self.scale_factor == 1.0,
                  f"scale_by_std=True estimates scale_factor itself; pass scale_factor=1.0 (got {self.scale_factor}) "
                  "or scale_by_std=False to keep a known value such as 0.18215")
        if self.image_size is not None:
            h, w = self.image_size
            _need(h % fs.f == 0 and w % fs.f == 0,
                  f"image_size {h}x{w} is not divisible by the autoencoder's downsampling factor f={fs.f}; use a "
                  f"multiple of {fs.f}")

    # ---------------------------------------------------------------- settings by name
    @classmethod
    def settings(cls) -> dict[str, tuple[str | None, dataclasses.Field]]:
        """Every setting by its name: ``name -> (part or None, field)``; the names are unique across parts."""
        out: dict[str, tuple[str | None, dataclasses.Field]] = {}
        for f in dataclasses.fields(cls):
            if f.name in _PARTS:
                for g in dataclasses.fields(_PARTS[f.name]):
                    out[g.name if g.name not in out else f"{f.name}_{g.name}"] = (f.name, g)
            else:
                out[f.name] = (None, f)
        return out

    @classmethod
    def from_settings(cls, unet: UNetConfig | None = None, **settings: Any) -> "LDMConfig":
        """``LDMConfig`` from settings by name (``conditioning_key="crossattn", cond_drop_prob=0.1, ...``)."""
        known = cls.settings()
        # a whole part may be given as its config object (first_stage=FirstStageConfig(...)), settings override it
        base = {p: settings.pop(p) for p, part_cls in _PARTS.items() if isinstance(settings.get(p), part_cls)}
        unknown = sorted(set(settings) - set(known))
        if unknown:
            raise TypeError(f"unknown setting(s) {unknown}; the settings are the fields of LDMConfig and its parts: "
                            f"{', '.join(n for n in known if n != 'unet')}")
        parts: dict[str, dict] = {p: {} for p in _PARTS}
        top: dict[str, Any] = {}
        for name, value in settings.items():
            part, f = known[name]
            (parts[part] if part else top)[f.name] = value
        built = {p: dataclasses.replace(base[p], **kw) if p in base else _PARTS[p](**kw) for p, kw in parts.items()}
        return cls(unet=unet, **built, **top)

    @classmethod
    def from_modules(cls, first_stage, unet, cond_stage, schedule: NoiseSchedule, **settings: Any) -> "LDMConfig":
        """The config of a model built from modules: the parts the modules describe themselves (the first stage's
        architecture, the UNet's config, the schedule, the cond stage's ``config()``) plus ``settings`` by name."""
        ae = getattr(first_stage, "config", None)
        first = FirstStageConfig(name="pixel" if is_pixel_space(first_stage) else None,
                                 autoencoder=ae if isinstance(ae, AutoencoderConfig) else None,
                                 posterior=settings.pop("posterior", "mode"),
                                 latent_channels=int(first_stage.latent_channels), f=int(first_stage.f))
        described = cond_stage.config() if callable(getattr(cond_stage, "config", None)) else None
        if cond_stage is not None and described is None:  # not rebuildable from data: its class is recorded
            described = {"class": f"{type(cond_stage).__module__}.{type(cond_stage).__qualname__}"}
        unet_config = unet.to_config() if callable(getattr(unet, "to_config", None)) else None
        return cls.from_settings(unet=unet_config, first_stage=first, schedule=ScheduleConfig.of(schedule),
                                 cond_stage=described, **settings)

    def get(self, name: str) -> Any:
        """One setting by name (``cfg.get("cond_drop_prob")``)."""
        part, f = self.settings()[name]
        return getattr(getattr(self, part) if part else self, f.name)

    def replace(self, **settings: Any) -> "LDMConfig":
        """A copy with some settings changed by name, checked again."""
        known = self.settings()
        parts: dict[str | None, dict] = {}
        for name, value in settings.items():
            if name not in known:
                raise TypeError(f"unknown setting {name!r}")
            part, f = known[name]
            parts.setdefault(part, {})[f.name] = value
        top = parts.pop(None, {})
        new_parts = {p: dataclasses.replace(getattr(self, p), **kw) for p, kw in parts.items()}
        return dataclasses.replace(self, **new_parts, **top)

    # ---------------------------------------------------------------- JSON
    def to_dict(self) -> dict:
        """Plain JSON values (tuples -> lists, a tensor null condition -> nested lists)."""
        return plain_json(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: dict) -> "LDMConfig":
        d = dict(d)
        cond = dict(d.get("conditioning") or {})
        if isinstance(cond.get("unconditional_value"), list):  # a tensor (an empty layout ...) stored as lists
            cond["unconditional_value"] = torch.tensor(cond["unconditional_value"])
        if isinstance(cond.get("cond_key"), list):
            cond["cond_key"] = tuple(cond["cond_key"])
        d["conditioning"] = cond
        return cls(**d)

    @property
    def f(self) -> int:
        return int(self.first_stage.f)

    @property
    def latent_size(self) -> tuple[int, int] | None:
        return None if self.image_size is None else (self.image_size[0] // self.f, self.image_size[1] // self.f)


def plain_json(value):
    """A config value as JSON keeps it: tuples -> lists, tensors -> nested lists, anything unusual -> its repr."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if torch.is_tensor(value):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [plain_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain_json(v) for k, v in value.items()}
    return repr(value)
