"""The paper's released checkpoints (CompVis/latent-diffusion) in the course's own modules, and back.

:func:`load_compvis_ldm` reads a CompVis ``LatentDiffusion`` -- its YAML config and its Lightning ``.ckpt`` (or a
``.safetensors`` / state dict) -- into a :class:`~ldm_lite.ldm.LatentDiffusion`; :func:`save_compvis` writes one
back in CompVis's key layout with a config the original code (and :func:`load_compvis_ldm`) reads;
``ldm-lite convert-compvis`` (:func:`run_convert_compvis`) turns a checkpoint into an export that
``ldm_lite.pretrained.load_ldm`` and ``ldm-lite sample`` use like a shipped model.

Where each part of a CompVis checkpoint goes
-------------------------------------------
===============================  ==================================  ==========================================
CompVis state-dict key           here                                note
===============================  ==================================  ==========================================
``model.diffusion_model.*``      ``unet`` (:class:`UNetModel`)       same names (``openaimodel.py``)
``model_ema.*``                  ``unet`` with ``use_ema=True``      LitEma: the UNet's names with the dots
                                                                     removed (``model_ema.diffusion_modelout0weight``)
``first_stage_model.*``          ``first_stage`` (AutoencoderKL /    same names; ``loss.*`` (LPIPS, discriminator)
                                 VQModel)                            is ignored
``cond_stage_model.*``           ``cond_stage``                      ClassEmbedder / SpatialRescaler: same names;
                                                                     BERTEmbedder -> XTransformerEmbedder (same)
``betas``, ``alphas_cumprod``    ``schedule``                        rebuilt from the config and *checked*
... (12 buffers)                 (:class:`NoiseSchedule`)            against the stored ones (1e-6)
``scale_factor``                 ``scale_factor``                    a buffer when ``scale_by_std``, else config
``logvar``, ``lvlb_weights``     --                                  training-only loss weights, ignored
===============================  ==================================  ==========================================

The released models (README of CompVis/latent-diffusion) and what they become:

==========================  =====================  ==================================================================
model                       first stage            conditioning here
==========================  =====================  ==================================================================
cin256-v2 (ImageNet)        VQ-f4                  :class:`ClassEmbedder` (1001 rows; class 1000 = the null class of
                                                   guidance), cross-attention
celeba / ffhq / lsun_beds   VQ-f4                  unconditional (``__is_unconditional__``), ADM attention UNet
lsun_churches               KL-f8                  unconditional; ``scale_factor`` buffer (``scale_by_std``)
txt2img-f8-large            KL-f8                  ``BERTEmbedder`` -> :class:`XTransformerEmbedder` (BERT WordPiece
                                                   tokens, 32 x-transformer layers), cross-attention
layout2img-openimages256    VQ-f4                  ``BERTEmbedder`` over box tokens (``use_tokenizer: false``)
bsr_sr                      VQ-f4                  ``torch.nn.Identity``: the low-resolution image (at the latent
                                                   size) concatenated with z_t. (Its attention rate 16, which no
                                                   level reaches, adds no layer in the original either; likewise
                                                   semantic synthesis' 8, 16, 32.)
inpainting_big              VQ-f4 (no mid attn)    ``__is_first_stage__`` -> :class:`InpaintConcat` with CompVis's
                                                   mask (``2 * hole - 1``, nearest-neighbour to the latent size):
                                                   ``cat(E(masked_image), mask)``; cond_key ``("masked_image",
                                                   "hole_mask")``. The original fills the hole of ``masked_image``
                                                   with -1 (black): pass it so.
semantic_synthesis256/512   VQ-f4                  ``SpatialRescaler`` -> :class:`SemanticEncoder` (its ``rescaler``):
                                                   the label map (B, H, W), one-hot encoded, halved ``n_stages``
                                                   times, ``channel_mapper`` (1x1 conv); the original is fed the
                                                   one-hot map itself
==========================  =====================  ==================================================================

Refused (``CompVisConversionError``, naming the option): what the course's modules do not compute the same way --
first stages with attention at a resolution level (``attn_resolutions``: the older ``cin256`` model's VQ-f8 and the
stand-alone vq-f8 / vq-f16 / kl-f16 / kl-f32 autoencoders), linear attention or ``remap``; UNets
with ``use_new_attention_order``, ``n_embed`` (codebook prediction), ``dims != 2`` ... (see
:func:`unet_config_from_compvis`); ``conditioning_key`` ``hybrid`` / ``adm``; ``cond_stage_forward``;
``v_posterior != 0``; other cond stages (CLIP, ``FrozenClipImageEmbedder``).

Safety: a ``.ckpt`` is a pickle, and unpickling can run code. It is read with ``torch.load(weights_only=True)``,
which unpickles tensors and containers only; a checkpoint that also holds other objects (Lightning's
``hyper_parameters`` often do) is refused unless ``trust_pickle=True`` (``--trust-pickle``) -- for a file whose
origin you trust.

Example::

    from ldm_lite.convert.compvis import load_compvis_ldm
    model = load_compvis_ldm("configs/latent-diffusion/cin256-v2.yaml", "models/ldm/cin256-v2/model.ckpt")
    images = model.sample(cond=torch.tensor([88, 88]), steps=50, guidance_scale=3.0)
"""

from __future__ import annotations

import argparse
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ldm_lite.autoencoder.model import AutoencoderConfig, AutoencoderKL, VQModel, build_autoencoder
from ldm_lite.conditioning.embedders import ClassEmbedder
from ldm_lite.conditioning.spatial import InpaintConcat, SemanticEncoder, SpatialRescaler
from ldm_lite.conditioning.xtransformer import XTransformerEmbedder
from ldm_lite.diffusion.schedule import BETA_SCHEDULES, NoiseSchedule, make_beta_schedule
from ldm_lite.io import sha256_file, shown_path
from ldm_lite.ldm import LatentDiffusion
from ldm_lite.pretrained import PRETRAINED_DIR, check_export_target, export_ldm, export_target, save_pretrained
from ldm_lite.unet.model import UNetConfig, UNetModel

__all__ = ["CompVisConversionError", "UnsafeCheckpointError", "SCHEDULE_BUFFERS", "read_compvis_config",
           "read_compvis_checkpoint", "unet_config_from_compvis", "first_stage_config_from_compvis",
           "compvis_family", "load_compvis_ldm", "compvis_config_from_ldm", "save_compvis", "add_convert_compvis",
           "run_convert_compvis"]

# The schedule buffers of CompVis's DDPM.register_schedule (float32), in its order.
SCHEDULE_BUFFERS = ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
                    "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
                    "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
                    "posterior_mean_coef1", "posterior_mean_coef2")
_IGNORED_KEYS = ("logvar", "lvlb_weights")  # the learned / fixed log-variance and ELBO weights: training only
_SCHEDULE_TOLERANCE = 1e-6
_SHOWN = 8  # keys listed in an error

_TARGETS = dict(
    ldm="ldm.models.diffusion.ddpm.LatentDiffusion",
    unet="ldm.modules.diffusionmodules.openaimodel.UNetModel",
    vq="ldm.models.autoencoder.VQModelInterface",
    kl="ldm.models.autoencoder.AutoencoderKL",
    identity="torch.nn.Identity",
    cls="ldm.modules.encoders.modules.ClassEmbedder",
    bert="ldm.modules.encoders.modules.BERTEmbedder",
    rescaler="ldm.modules.encoders.modules.SpatialRescaler",
)


class CompVisConversionError(ValueError):
    """A CompVis config or checkpoint the course's modules cannot hold exactly (the message names why)."""


class UnsafeCheckpointError(CompVisConversionError):
    """A pickled checkpoint that holds more than tensors: loading it could run code (``trust_pickle=True``)."""


def _refuse(msg: str) -> None:
    raise CompVisConversionError(msg)


def _num(value, what: str) -> float:
    """A number from YAML (PyYAML reads ``1e-4``, without a dot, as a string)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        raise CompVisConversionError(f"{what} must be a number, got {value!r}") from None


def _kind(target: str | None) -> str:
    """The class name of a ``target`` (``ldm.models.autoencoder.VQModelInterface`` -> ``VQModelInterface``)."""
    return str(target or "").rsplit(".", 1)[-1]


# ----------------------------------------------------------------------------------------------------------------
# Reading the files
# ----------------------------------------------------------------------------------------------------------------
def read_compvis_config(config: str | os.PathLike | dict) -> dict:
    """The ``model`` section (``target`` + ``params``) of a CompVis config: a YAML path or its parsed dict (the
    whole file, or the ``model`` section itself). Read with ``yaml.safe_load`` (no omegaconf needed)."""
    if isinstance(config, (str, os.PathLike)):
        import yaml

        path = Path(config)
        try:
            text = path.read_text()
        except OSError as err:
            raise FileNotFoundError(f"cannot read the config {shown_path(path)} ({err.strerror or err})") from err
        try:
            config = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise CompVisConversionError(f"{shown_path(path)} is not valid YAML ({err})") from err
    if not isinstance(config, dict):
        _refuse(f"a CompVis config is a mapping with a 'model' section, got {type(config).__name__}")
    model = config.get("model", config)
    if not isinstance(model, dict) or "params" not in model:
        _refuse("the config has no 'model: {target: ..., params: ...}' section; pass a CompVis LDM config "
                "(configs/latent-diffusion/*.yaml or models/ldm/*/config.yaml)")
    if _kind(model.get("target")) != "LatentDiffusion":
        _refuse(f"model.target is {model.get('target')!r}; only ldm.models.diffusion.ddpm.LatentDiffusion configs "
                "are converted (a first-stage config alone loads with "
                "ldm_lite.autoencoder.convert.load_compvis_first_stage)")
    return model


def _why_unpicklable(err: Exception) -> str:
    """The object ``weights_only`` refused (``argparse.Namespace`` ...), from torch's message."""
    import re

    found = re.search(r"GLOBAL ([\w.]+)", str(err))
    if found:
        return f"e.g. {found.group(1)}"
    lines = str(err).strip().splitlines()
    return (lines[0] if lines else type(err).__name__)[:200]


def read_compvis_checkpoint(source: str | os.PathLike | dict, trust_pickle: bool = False) -> dict[str, torch.Tensor]:
    """The state dict of a CompVis checkpoint: a dict (a Lightning checkpoint or the state dict itself), a
    ``.safetensors`` file or a ``.ckpt`` (a pickle; read with ``weights_only=True`` unless ``trust_pickle``).
    Lightning's ``{"state_dict": ...}`` is unwrapped; entries that are not tensors are an error."""
    if isinstance(source, dict):
        ckpt = source
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"no checkpoint at {shown_path(path)}")
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            try:
                ckpt = load_file(str(path))
            except Exception as err:  # SafetensorError: a truncated file, a corrupt header
                raise CompVisConversionError(f"{shown_path(path)} is corrupt or truncated ({err}); download it "
                                             "again") from err
        else:
            try:
                ckpt = torch.load(path, map_location="cpu", weights_only=True)
            except pickle.UnpicklingError as err:
                if not trust_pickle:
                    raise UnsafeCheckpointError(
                        f"{shown_path(path)} holds objects beyond tensors ({_why_unpicklable(err)}), so "
                        "torch.load(weights_only=True) refused it. A .ckpt is a pickle, and unpickling such objects "
                        "runs code named in the file (any code, if the file was tampered with). If you trust where "
                        "the file comes from (e.g. you checked its sha256 against the publisher's), pass "
                        "trust_pickle=True (ldm-lite convert-compvis --trust-pickle), which loads it with "
                        "weights_only=False; or convert it to .safetensors in an environment you trust"
                    ) from err
                ckpt = torch.load(path, map_location="cpu", weights_only=False)
            except Exception as err:  # zip errors, EOFError: a damaged file
                raise CompVisConversionError(f"{shown_path(path)} is corrupt or truncated and cannot be read "
                                             f"({type(err).__name__}: {err}); download it again") from err
    if not isinstance(ckpt, dict):
        _refuse(f"a checkpoint is a dict of tensors (or Lightning's {{'state_dict': ...}}), got {type(ckpt).__name__}")
    sd = ckpt.get("state_dict", ckpt) if isinstance(ckpt.get("state_dict"), dict) else ckpt
    bad = [k for k, v in sd.items() if not torch.is_tensor(v)]
    if bad:
        _refuse(f"the state dict has entries that are not tensors: {bad[:_SHOWN]} (a Lightning checkpoint keeps its "
                "weights under 'state_dict')")
    return sd


# ----------------------------------------------------------------------------------------------------------------
# Configs: CompVis -> the course
# ----------------------------------------------------------------------------------------------------------------
def _compvis_heads(p: dict, ch: int) -> tuple[int, int]:
    """(heads, head width) of an attention layer with ``ch`` channels, as openaimodel.UNetModel computes them."""
    nh, nhc = int(p.get("num_heads", -1)), int(p.get("num_head_channels", -1))
    spatial, legacy = bool(p.get("use_spatial_transformer", False)), bool(p.get("legacy", True))
    if nhc == -1:
        dim_head = ch // nh
    else:
        nh, dim_head = ch // nhc, nhc
    if legacy:
        dim_head = ch // nh if spatial else nhc
    if not spatial:  # AttentionBlock(num_heads=nh, num_head_channels=dim_head)
        return (nh, ch // nh) if dim_head == -1 else (ch // dim_head, dim_head)
    return nh, dim_head


def _course_heads(cfg: UNetConfig, ch: int) -> tuple[int, int]:
    """(heads, head width) of the course's UNet at ``ch`` channels (``UNetModel._heads``)."""
    if cfg.num_head_channels != -1:
        return ch // cfg.num_head_channels, cfg.num_head_channels
    return cfg.num_heads, ch // cfg.num_heads


def unet_config_from_compvis(params: dict) -> UNetConfig:
    """``unet_config.params`` of a CompVis config -> :class:`UNetConfig` (refusing what the course's UNet does not
    compute the same way). ``image_size`` and ``use_fp16`` do not change the network and are dropped."""
    p = dict(params)
    checks = [
        (int(p.get("dims", 2)) == 2, "dims", "only 2-D UNets"),
        (p.get("n_embed") is None, "n_embed", "a UNet predicting codebook ids has another output head"),
        (not p.get("use_new_attention_order", False), "use_new_attention_order",
         "the course's AttentionBlock has the legacy qkv order of the released checkpoints"),
        (not p.get("disable_self_attentions"), "disable_self_attentions", "no such option here"),
        (p.get("num_attention_blocks") is None, "num_attention_blocks", "no such option here"),
        (not isinstance(p.get("transformer_depth", 1), (list, tuple)), "transformer_depth",
         "one depth for every level"),
        (not isinstance(p.get("context_dim"), (list, tuple)), "context_dim", "one context width for every level"),
        (p.get("num_classes") is None or isinstance(p.get("num_classes"), int), "num_classes",
         "'sequential' (SDXL) class embeddings"),
        (p.get("adm_in_channels") is None, "adm_in_channels", "no such option here"),
    ]
    for ok, name, why in checks:
        if not ok:
            _refuse(f"unet_config.params.{name}={p.get(name)!r} cannot be converted: {why}")
    nh, nhc = int(p.get("num_heads", -1)), int(p.get("num_head_channels", -1))
    nhu = int(p.get("num_heads_upsample", -1))
    if nhu not in (-1, nh) and nhc == -1:
        _refuse(f"unet_config.params.num_heads_upsample={nhu} differs from num_heads={nh}: the course's UNet uses one "
                "head count for the whole network")
    if nh == -1 and nhc == -1:
        _refuse("unet_config.params needs num_heads or num_head_channels")
    spatial = bool(p.get("use_spatial_transformer", False))
    mult = tuple(int(m) for m in p.get("channel_mult", (1, 2, 4, 8)))
    # a rate no level reaches (bsr_sr's 16 with 4 levels, semantic synthesis' 8, 16, 32 with 3) adds no layer in
    # the original; the course's config names only the rates that do
    rates = tuple(int(r) for r in p["attention_resolutions"] if int(r) in [2 ** i for i in range(len(mult))])
    cfg = UNetConfig(
        in_channels=int(p["in_channels"]), out_channels=int(p["out_channels"]), model_channels=int(p["model_channels"]),
        channel_mult=mult, num_res_blocks=int(p["num_res_blocks"]), attention_resolutions=rates,
        num_heads=-1 if nhc != -1 else nh, num_head_channels=nhc, context_dim=p.get("context_dim"),
        transformer_depth=int(p.get("transformer_depth", 1)), use_spatial_transformer=spatial,
        use_scale_shift_norm=bool(p.get("use_scale_shift_norm", False)),
        resblock_updown=bool(p.get("resblock_updown", False)), dropout=float(p.get("dropout", 0.0)),
        num_classes=p.get("num_classes"), use_checkpoint=bool(p.get("use_checkpoint", False)),
        use_linear_in_transformer=bool(p.get("use_linear_in_transformer", False)),
        conv_resample=bool(p.get("conv_resample", True)),
    )
    # the heads of every attention layer must come out as the original's (its ``legacy`` rule included)
    widths = [cfg.model_channels * m for level, m in enumerate(cfg.channel_mult) if 2 ** level in rates]
    for ch in widths + [cfg.model_channels * cfg.channel_mult[-1]]:  # + the middle block
        theirs, ours = _compvis_heads(p, ch), _course_heads(cfg, ch)
        if theirs != ours:
            _refuse(f"at {ch} channels the original UNet has {theirs[0]} heads of width {theirs[1]} (legacy="
                    f"{p.get('legacy', True)}), the course's would have {ours[0]} of width {ours[1]}")
    return cfg


def first_stage_config_from_compvis(fs: dict) -> AutoencoderConfig:
    """``first_stage_config`` of a CompVis config -> :class:`AutoencoderConfig` (KL or VQ)."""
    if not isinstance(fs, dict):
        _refuse(f"first_stage_config must be a target + params mapping, got {fs!r}")
    kind = _kind(fs.get("target"))
    reg = {"VQModelInterface": "vq", "VQModel": "vq", "AutoencoderKL": "kl"}.get(kind)
    if reg is None:
        _refuse(f"first_stage_config.target {fs.get('target')!r} is not converted; supported: VQModelInterface / "
                "VQModel and AutoencoderKL (an IdentityFirstStage model is a pixel-space DDPM)")
    p = dict(fs.get("params") or {})
    dd = dict(p.get("ddconfig") or {})
    for name in ("remap", "colorize_nlabels"):
        if p.get(name) is not None:
            _refuse(f"first_stage_config.params.{name}={p[name]!r} is not converted")
    checks = [
        (not dd.get("attn_resolutions"), "attn_resolutions",
         "the course's autoencoder has attention only in the middle block"),
        (dd.get("attn_type", "vanilla") in ("vanilla", "none"), "attn_type", "only 'vanilla' and 'none'"),
        (not dd.get("use_linear_attn", False), "use_linear_attn", "no linear attention here"),
        (dd.get("resamp_with_conv", True), "resamp_with_conv", "resampling is always a convolution here"),
        (not dd.get("give_pre_end", False) and not dd.get("tanh_out", False), "give_pre_end / tanh_out",
         "no such option here"),
        (int(dd.get("out_ch", dd.get("in_channels", 3))) == int(dd.get("in_channels", 3)), "out_ch",
         "the course's decoder outputs in_channels channels"),
        (bool(dd.get("double_z", True)) == (reg == "kl"), "double_z",
         "a KL model has double_z: true, a VQ model double_z: false"),
    ]
    for ok, name, why in checks:
        if not ok:
            _refuse(f"first_stage_config.params.ddconfig.{name}={dd.get(name.split(' ')[0])!r} cannot be converted: "
                    f"{why}")
    ch_mult = tuple(int(m) for m in dd.get("ch_mult", (1, 2, 4, 8)))
    return AutoencoderConfig(
        f=2 ** (len(ch_mult) - 1), ch=int(dd["ch"]), ch_mult=ch_mult, num_res_blocks=int(dd["num_res_blocks"]),
        z_channels=int(dd["z_channels"]), embed_dim=int(p["embed_dim"]), in_channels=int(dd.get("in_channels", 3)),
        dropout=float(dd.get("dropout", 0.0)), use_mid_attn=dd.get("attn_type", "vanilla") != "none", reg=reg,
        n_embed=int(p.get("n_embed", 512)),
    )


def _conditioning_key(params: dict) -> str | None:
    """``conditioning_key`` as CompVis's LatentDiffusion resolves it (``concat_mode``, ``__is_unconditional__``)."""
    if params.get("cond_stage_config") == "__is_unconditional__":
        return None
    key = params.get("conditioning_key")
    if key is None:
        key = "concat" if params.get("concat_mode", True) else "crossattn"
    return key


def compvis_family(config: str | os.PathLike | dict) -> str:
    """Which kind of released model a config describes: ``class-conditional``, ``unconditional``,
    ``text-to-image``, ``layout-to-image``, ``super-resolution``, ``inpainting``, ``semantic-synthesis`` (or
    ``crossattn`` / ``concat`` for another cond stage of a known type)."""
    params = read_compvis_config(config)["params"]
    cs, key = params.get("cond_stage_config"), _conditioning_key(params)
    if key is None:
        return "unconditional"
    if cs == "__is_first_stage__":
        return "inpainting"
    kind = _kind(cs.get("target")) if isinstance(cs, dict) else ""
    if kind == "ClassEmbedder":
        return "class-conditional"
    if kind in ("BERTEmbedder", "TransformerEmbedder"):
        use_tok = kind == "BERTEmbedder" and (cs.get("params") or {}).get("use_tokenizer", True)
        return "text-to-image" if use_tok else "layout-to-image"
    if kind == "SpatialRescaler":
        return "semantic-synthesis"
    if kind == "Identity" and key == "concat":
        return "super-resolution"
    return key


def schedule_from_compvis(params: dict) -> NoiseSchedule:
    """The :class:`NoiseSchedule` of the config's ``beta_schedule`` / ``timesteps`` / ``linear_start`` /
    ``linear_end`` / ``cosine_s`` (the defaults of CompVis's DDPM), or its ``given_betas``."""
    if float(params.get("v_posterior", 0.0) or 0.0) != 0.0:
        _refuse(f"v_posterior={params['v_posterior']} changes the posterior variance; the course's schedule has "
                "v_posterior = 0")
    if params.get("given_betas") is not None:
        return NoiseSchedule(torch.tensor([float(b) for b in params["given_betas"]], dtype=torch.float64))
    name = params.get("beta_schedule", "linear")
    if name not in BETA_SCHEDULES:
        _refuse(f"beta_schedule {name!r} is not one of {BETA_SCHEDULES}")
    timesteps = int(params.get("timesteps", 1000))
    if name == "cosine":
        kw = dict(cosine_s=_num(params.get("cosine_s", 8e-3), "cosine_s"))
        sched = NoiseSchedule(make_beta_schedule("cosine", timesteps, **kw))
        sched.made_from = dict(schedule="cosine", n_timestep=timesteps, **kw)
        return sched
    return NoiseSchedule.from_name(name, timesteps, linear_start=_num(params.get("linear_start", 1e-4), "linear_start"),
                                   linear_end=_num(params.get("linear_end", 2e-2), "linear_end"))


def _compvis_schedule_buffers(betas: torch.Tensor) -> dict[str, torch.Tensor]:
    """The 12 buffers of CompVis's ``DDPM.register_schedule`` for ``betas`` (numpy float64, stored float32)."""
    b = betas.double().cpu().numpy()
    alphas = 1.0 - b
    ac = np.cumprod(alphas, axis=0)
    ac_prev = np.append(1.0, ac[:-1])
    post_var = b * (1.0 - ac_prev) / (1.0 - ac)
    out = dict(
        betas=b, alphas_cumprod=ac, alphas_cumprod_prev=ac_prev, sqrt_alphas_cumprod=np.sqrt(ac),
        sqrt_one_minus_alphas_cumprod=np.sqrt(1.0 - ac), log_one_minus_alphas_cumprod=np.log(1.0 - ac),
        sqrt_recip_alphas_cumprod=np.sqrt(1.0 / ac), sqrt_recipm1_alphas_cumprod=np.sqrt(1.0 / ac - 1),
        posterior_variance=post_var, posterior_log_variance_clipped=np.log(np.maximum(post_var, 1e-20)),
        posterior_mean_coef1=b * np.sqrt(ac_prev) / (1.0 - ac),
        posterior_mean_coef2=(1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac),
    )
    return {k: torch.tensor(out[k], dtype=torch.float32) for k in SCHEDULE_BUFFERS}


def _check_schedule(schedule: NoiseSchedule, sd: dict) -> None:
    """The stored ``betas`` / ``alphas_cumprod`` must be the schedule the config describes (to 1e-6)."""
    for name in ("alphas_cumprod", "betas"):
        if name not in sd:
            continue
        stored = sd[name].double().cpu().flatten()
        ours = getattr(schedule, name).double().cpu()
        if stored.numel() != ours.numel():
            _refuse(f"the checkpoint's {name} has {stored.numel()} timesteps but the config's schedule has "
                    f"{ours.numel()} (timesteps); is this the config of this checkpoint?")
        err = float((stored - ours).abs().max())
        if not err <= _SCHEDULE_TOLERANCE:
            t = int((stored - ours).abs().argmax())
            _refuse(f"the checkpoint's {name} differs from the schedule of the config (beta_schedule / timesteps / "
                    f"linear_start / linear_end) by up to {err:.3g} (t={t}: stored {float(stored[t]):.8g}, config "
                    f"{float(ours[t]):.8g}; tolerance {_SCHEDULE_TOLERANCE}); use the config the model was trained "
                    "with")


# ----------------------------------------------------------------------------------------------------------------
# The cond stage
# ----------------------------------------------------------------------------------------------------------------
def _cond_stage_from_compvis(params: dict, key: str | None, fs_cfg: AutoencoderConfig, unet_cfg: UNetConfig,
                             sd_cond_keys: set[str]) -> tuple[nn.Module | None, Any, Any]:
    """(cond stage module or None, cond_key, unconditional_value) of a CompVis config."""
    cs = params.get("cond_stage_config")
    cond_key = params.get("cond_stage_key", "image")
    if key is None:
        return None, None, None
    if key not in ("crossattn", "concat"):
        _refuse(f"conditioning_key={key!r} is not converted (no released model uses it); supported: crossattn, "
                "concat and unconditional models")
    if params.get("cond_stage_forward") is not None:
        _refuse(f"cond_stage_forward={params['cond_stage_forward']!r} is not converted")
    if cs == "__is_first_stage__":
        zc = fs_cfg.embed_dim
        if key != "concat" or unet_cfg.in_channels != 2 * zc + 1:
            _refuse(f"cond_stage_config __is_first_stage__ is converted for the inpainting model (concat, UNet "
                    f"in_channels = 2 x {zc} latent + 1 mask = {2 * zc + 1}); this one has conditioning_key={key!r} "
                    f"and in_channels={unet_cfg.in_channels}")
        return (InpaintConcat(fs_cfg.f, mask_resize="nearest", mask_values=(-1.0, 1.0)),
                ("masked_image", "hole_mask"), None)
    if not isinstance(cs, dict):
        _refuse(f"cond_stage_config {cs!r} is not converted")
    kind, p = _kind(cs.get("target")), dict(cs.get("params") or {})
    if kind == "Identity":
        return None, cond_key, None
    if kind == "ClassEmbedder":
        n = int(p.get("n_classes", 1000))
        if n < 2:
            _refuse(f"ClassEmbedder n_classes={n}: need at least 2 rows")
        # CompVis's table has n rows; the course's has num_classes + 1 (the last one: the null class of guidance).
        # cin256-v2 was trained with 1001 rows, and its sampling notebook guides with class 1000 as "no class".
        return ClassEmbedder(n - 1, int(p["embed_dim"])), cond_key, (n - 1 if n == 1001 else None)
    if kind in ("BERTEmbedder", "TransformerEmbedder"):
        use_tok = kind == "BERTEmbedder" and bool(p.get("use_tokenizer", True))
        module = XTransformerEmbedder(
            int(p["n_embed"]), int(p["n_layer"]), vocab_size=int(p.get("vocab_size", 30522)),
            max_seq_len=int(p.get("max_seq_len", 77)), use_tokenizer=use_tok,
            logits="transformer.to_logits.weight" in sd_cond_keys)
        return module, cond_key, ("" if use_tok else None)  # txt2img.py guides with the embedding of ""
    if kind == "SpatialRescaler":
        method = p.get("method", "bilinear")
        if method not in SpatialRescaler.METHODS:
            _refuse(f"SpatialRescaler method={method!r} is not converted; supported: {SpatialRescaler.METHODS}")
        if (cond_key == "segmentation" and p.get("out_channels") is not None and method == "bilinear"
                and float(p.get("multiplier", 0.5)) == 0.5 and not p.get("bias") and int(p.get("in_channels", 3)) > 1):
            # semantic synthesis: the original is fed one-hot maps; the course's SemanticEncoder takes the label map
            # (B, H, W) and one-hot encodes it first -- the same computation, and what `sample --map` passes
            return (SemanticEncoder(int(p["in_channels"]), int(p.get("n_stages", 1)), int(p["out_channels"])),
                    cond_key, None)
        return (SpatialRescaler(int(p.get("n_stages", 1)), int(p.get("in_channels", 3)), p.get("out_channels"),
                                method=method, multiplier=float(p.get("multiplier", 0.5)), bias=bool(p.get("bias"))),
                cond_key, None)
    _refuse(f"cond_stage_config.target {cs.get('target')!r} is not converted; supported: ClassEmbedder, "
            "BERTEmbedder, TransformerEmbedder, SpatialRescaler, torch.nn.Identity, __is_first_stage__ (inpainting), "
            "__is_unconditional__")


# ----------------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------------
def _ema_name(unet_key: str) -> str:
    """LitEma's buffer name for a UNet parameter: ``diffusion_model.<key>`` with the dots removed."""
    return "model_ema." + ("diffusion_model." + unet_key).replace(".", "")


def _match(module: nn.Module, part: dict[str, torch.Tensor], prefix: str, problems: dict, skip=()) -> None:
    """Compare ``part`` (keys without ``prefix``) with ``module``'s state dict; note missing / unexpected keys
    and shape mismatches under their CompVis names."""
    own = module.state_dict()
    problems["missing"] += [prefix + k for k in own if k not in part and k not in skip]
    problems["unexpected"] += [prefix + k for k in part if k not in own]
    problems["shape"] += [f"{prefix}{k} {tuple(v.shape)} (the config gives {tuple(own[k].shape)})"
                          for k, v in part.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]


def _raise_problems(problems: dict) -> None:
    parts = []
    for what, keys in (("unknown keys", problems["unexpected"]), ("missing keys", problems["missing"]),
                       ("shapes that differ", problems["shape"])):
        if keys:
            more = f" (and {len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else ""
            parts.append(f"{len(keys)} {what}: {', '.join(keys[:_SHOWN])}{more}")
    if parts:
        _refuse("the checkpoint does not fit its config: " + "; ".join(parts) + ". Is this the config of this "
                "checkpoint (configs/latent-diffusion/ or models/ldm/<name>/config.yaml)?")


def _inner_prefix(cond_stage: nn.Module) -> str:
    """Where the original's cond-stage keys sit inside the course's module (``rescaler.`` in a SemanticEncoder)."""
    return "rescaler." if isinstance(cond_stage, SemanticEncoder) else ""


def _load(module: nn.Module, part: dict[str, torch.Tensor]) -> None:
    """Copy ``part`` into ``module`` (its keys checked by :func:`_match`; skipped buffers keep their values)."""
    module.load_state_dict(part, strict=False)


def load_compvis_ldm(config: str | os.PathLike | dict, state_dict: str | os.PathLike | dict, *,
                     trust_pickle: bool = False, device: str | torch.device = "cpu",
                     use_ema: bool = False) -> LatentDiffusion:
    """A CompVis ``LatentDiffusion`` (config + checkpoint) as the course's :class:`~ldm_lite.ldm.LatentDiffusion`.

    ``config``: a YAML path or its parsed dict. ``state_dict``: a dict, a ``.safetensors`` path or a Lightning
    ``.ckpt`` (module docstring: ``trust_pickle``). ``use_ema``: load the UNet's EMA weights (``model_ema.*``)
    instead of the raw ones; without it they are ignored. Every key of the checkpoint must find its place and
    every weight of the model must be in the checkpoint (else :class:`CompVisConversionError` lists them); the
    stored noise schedule must be the config's (1e-6). Returns the model in eval mode on ``device``.
    """
    model_cfg = read_compvis_config(config)
    params = dict(model_cfg["params"])
    sd = read_compvis_checkpoint(state_dict, trust_pickle=trust_pickle)

    key = _conditioning_key(params)
    if "unet_config" not in params or "first_stage_config" not in params:
        _refuse("the config lacks unet_config or first_stage_config")
    unet_cfg = unet_config_from_compvis((params["unet_config"] or {}).get("params") or {})
    fs_cfg = first_stage_config_from_compvis(params["first_stage_config"])
    schedule = schedule_from_compvis(params)
    _check_schedule(schedule, sd)

    groups: dict[str, dict[str, torch.Tensor]] = {"unet": {}, "ema": {}, "fs": {}, "cs": {}}
    prefixes = {"model.diffusion_model.": "unet", "model_ema.": "ema", "first_stage_model.": "fs",
                "cond_stage_model.": "cs"}
    unknown = []
    for k, v in sd.items():
        for prefix, g in prefixes.items():
            if k.startswith(prefix):
                groups[g][k[len(prefix):]] = v
                break
        else:
            if k not in SCHEDULE_BUFFERS and k not in _IGNORED_KEYS and k != "scale_factor":
                unknown.append(k)
    groups["fs"] = {k: v for k, v in groups["fs"].items() if not k.startswith("loss.")}  # LPIPS + discriminator

    unet = UNetModel.from_config(unet_cfg)
    first_stage = build_autoencoder(fs_cfg)
    cond_stage, cond_key, uncond = _cond_stage_from_compvis(params, key, fs_cfg, unet_cfg, set(groups["cs"]))
    problems = {"missing": [], "unexpected": list(unknown), "shape": []}
    if use_ema:
        unet_params = dict(unet.named_parameters())
        names = {k: _ema_name(k)[len("model_ema."):] for k in unet_params}
        if len(set(names.values())) != len(names):
            _refuse("two UNet parameters share one EMA name (LitEma removes the dots); cannot tell them apart")
        if not groups["ema"]:
            _refuse("use_ema=True, but the checkpoint has no EMA weights (model_ema.*); load it without use_ema")
        ema = {k: groups["ema"][n] for k, n in names.items() if n in groups["ema"]}
        extra = set(groups["ema"]) - set(names.values()) - {"decay", "num_updates"}
        problems["unexpected"] += sorted("model_ema." + n for n in extra)
        problems["missing"] += [_ema_name(k) for k in names if k not in ema]
        problems["shape"] += [f"{_ema_name(k)} {tuple(v.shape)} (the config gives {tuple(unet_params[k].shape)})"
                              for k, v in ema.items() if v.shape != unet_params[k].shape]
    if groups["unet"] or not use_ema:  # the raw weights (optional in an EMA-only checkpoint read with use_ema)
        _match(unet, groups["unet"], "model.diffusion_model.", problems)
    unet_weights = dict(groups["unet"], **ema) if use_ema else groups["unet"]
    fs_skip = ("quantize.usage",) if isinstance(first_stage, VQModel) else ()  # bookkeeping of the course's VQ
    _match(first_stage, groups["fs"], "first_stage_model.", problems, skip=fs_skip)
    if params.get("cond_stage_config") == "__is_first_stage__":
        # the cond stage *is* the first stage: Lightning saves its weights twice; they must be the same
        differ = [f"cond_stage_model.{k}" for k, v in groups["cs"].items()
                  if k not in groups["fs"] or groups["fs"][k].shape != v.shape or not torch.equal(groups["fs"][k], v)]
        if differ:
            _refuse(f"the config says the cond stage is the first stage (__is_first_stage__), but "
                    f"{len(differ)} cond_stage_model.* weights differ from first_stage_model.*: {differ[:_SHOWN]}")
    elif cond_stage is not None:
        inner = _inner_prefix(cond_stage)  # SemanticEncoder keeps the rescaler one level down
        groups["cs"] = {inner + k: v for k, v in groups["cs"].items()}
        _match(cond_stage, groups["cs"], "cond_stage_model." + (f"({inner})" if inner else ""), problems)
    elif groups["cs"]:
        problems["unexpected"] += ["cond_stage_model." + k for k in groups["cs"]]
    _raise_problems(problems)

    _load(unet, unet_weights)
    _load(first_stage, groups["fs"])
    if cond_stage is not None and params.get("cond_stage_config") != "__is_first_stage__":
        _load(cond_stage, groups["cs"])

    if "scale_factor" in sd:
        scale = float(sd["scale_factor"])
    elif params.get("scale_by_std", False):
        _refuse("the config estimates scale_factor (scale_by_std: true) but the checkpoint has no scale_factor "
                "buffer; the latent scale of this model is unknown")
    else:
        scale = _num(params.get("scale_factor", 1.0), "scale_factor")
    if params.get("cond_stage_config") == "__is_first_stage__" and scale != 1.0:
        _refuse(f"the cond stage is the first stage (unscaled latents in the original) but scale_factor={scale}; "
                "the course's model would scale the condition too")
    parameterization = params.get("parameterization", "eps")
    loss_type = params.get("loss_type", "l2")
    model = LatentDiffusion(
        first_stage, unet, cond_stage, conditioning_key=key, cond_key=cond_key,
        cond_stage_trainable=bool(params.get("cond_stage_trainable", False)), schedule=schedule,
        parameterization=parameterization, scale_factor=scale, unconditional_value=uncond,
        image_size=int(params.get("image_size", 64)) * fs_cfg.f,
        **({"loss_type": loss_type} if loss_type in ("l1", "l2") else {}),
    )
    return model.to(device).eval()


# ----------------------------------------------------------------------------------------------------------------
# Saving: the course -> CompVis
# ----------------------------------------------------------------------------------------------------------------
def _check_groups(widths: list[int], what: str) -> None:
    bad = [w for w in widths if w % 32]
    if bad:
        _refuse(f"{what} has layers {sorted(set(bad))} channels wide; the original normalises with 32 groups, so "
                "every width must be a multiple of 32")


def _unet_params(cfg: UNetConfig, latent_size: int | None) -> dict:
    for ok, name in ((not cfg.coord_channels, "coord_channels"), (cfg.norm_num_groups == 32, "norm_num_groups"),
                     (not cfg.use_linear_in_transformer, "use_linear_in_transformer")):
        if not ok:
            _refuse(f"the UNet's {name}={getattr(cfg, name)!r} has no counterpart in CompVis's openaimodel.UNetModel")
    p = dict(in_channels=cfg.in_channels, out_channels=cfg.out_channels, model_channels=cfg.model_channels,
             attention_resolutions=list(cfg.attention_resolutions), num_res_blocks=cfg.num_res_blocks,
             channel_mult=list(cfg.channel_mult), use_spatial_transformer=cfg.use_spatial_transformer,
             transformer_depth=cfg.transformer_depth, context_dim=cfg.context_dim,
             use_scale_shift_norm=cfg.use_scale_shift_norm, resblock_updown=cfg.resblock_updown,
             dropout=cfg.dropout, use_checkpoint=cfg.use_checkpoint, conv_resample=cfg.conv_resample)
    if latent_size is not None:
        p = dict(image_size=latent_size, **p)
    p.update({"num_head_channels": cfg.num_head_channels} if cfg.num_head_channels != -1 else
             {"num_heads": cfg.num_heads})
    if cfg.num_classes is not None:
        p["num_classes"] = cfg.num_classes
    return p


def _first_stage_config(ae: nn.Module, image_size: int | None) -> dict:
    if not isinstance(ae, (AutoencoderKL, VQModel)):
        _refuse(f"the first stage is a {type(ae).__name__}; CompVis's LatentDiffusion needs an AutoencoderKL or a "
                "VQModel (a pixel-space model has no CompVis LDM counterpart)")
    c = ae.config
    _check_groups([c.ch * m for m in c.ch_mult], "the first stage")
    dd = dict(double_z=c.reg == "kl", z_channels=c.z_channels, resolution=image_size or 256,
              in_channels=c.in_channels, out_ch=c.in_channels, ch=c.ch, ch_mult=list(c.ch_mult),
              num_res_blocks=c.num_res_blocks, attn_resolutions=[], dropout=c.dropout)
    if not c.use_mid_attn:
        dd["attn_type"] = "none"
    params = dict(embed_dim=c.embed_dim, ddconfig=dd, lossconfig={"target": _TARGETS["identity"]})
    if c.reg == "vq":
        params = dict(embed_dim=c.embed_dim, n_embed=c.n_embed, **{k: v for k, v in params.items() if k != "embed_dim"})
    return {"target": _TARGETS[c.reg], "params": params}


def _cond_stage_config(model) -> Any:
    cs, key = model.cond_stage, model.conditioning_key
    if key is None:
        return "__is_unconditional__"
    if key not in ("crossattn", "concat"):
        _refuse(f"conditioning_key={key!r} has no released CompVis counterpart here; supported: crossattn, concat, "
                "unconditional")
    if cs is None:
        return {"target": _TARGETS["identity"]}
    if isinstance(cs, InpaintConcat):
        if cs.mask_resize != "nearest" or cs.mask_values != (-1.0, 1.0):
            _refuse("an InpaintConcat cond stage is written as CompVis's __is_first_stage__ only with the original's "
                    "mask (mask_resize='nearest', mask_values=(-1, 1)); the original computes the mask channel "
                    "outside the model (scripts/inpaint.py) in exactly that way")
        if float(model.scale_factor) != 1.0:
            _refuse("__is_first_stage__ conditions on unscaled latents; this model's scale_factor is not 1")
        return "__is_first_stage__"
    if isinstance(cs, ClassEmbedder):
        return {"target": _TARGETS["cls"], "params": dict(embed_dim=cs.embed_dim, n_classes=cs.num_classes + 1,
                                                          key=_first_key(model.cond_key))}
    if isinstance(cs, XTransformerEmbedder):
        if (cs.heads, cs.dim_head) != (8, 64):
            _refuse(f"CompVis's BERTEmbedder has 8 heads of width 64; this encoder has {cs.heads} of {cs.dim_head}")
        return {"target": _TARGETS["bert"], "params": dict(n_embed=cs.n_embed, n_layer=cs.n_layer,
                                                           vocab_size=cs.vocab_size, max_seq_len=cs.max_seq_len,
                                                           use_tokenizer=cs.use_tokenizer)}
    if isinstance(cs, SemanticEncoder):
        cs = cs.rescaler  # label map -> one-hot happens before; the original is fed the one-hot map
    if isinstance(cs, SpatialRescaler):
        p = dict(n_stages=cs.n_stages, method=cs.method, multiplier=cs.multiplier, in_channels=cs.in_channels,
                 out_channels=None if cs.channel_mapper is None else cs.out_channels,
                 bias=cs.channel_mapper is not None and cs.channel_mapper.bias is not None)
        return {"target": _TARGETS["rescaler"], "params": p}
    _refuse(f"the cond stage {type(cs).__name__} has no counterpart among CompVis's released encoders (ClassEmbedder, "
            "BERTEmbedder, SpatialRescaler, the first stage for inpainting, identity)")


def _first_key(cond_key) -> str:
    return cond_key[0] if isinstance(cond_key, (list, tuple)) else (cond_key or "image")


def _schedule_params(schedule: NoiseSchedule) -> dict:
    made = getattr(schedule, "made_from", None) or {}
    name = made.get("schedule")
    if name in BETA_SCHEDULES and set(made) <= {"schedule", "n_timestep", "linear_start", "linear_end", "cosine_s"}:
        p = dict(beta_schedule=name, timesteps=int(made["n_timestep"]))
        if name == "cosine":
            p["cosine_s"] = float(made.get("cosine_s", 8e-3))
        else:
            p.update(linear_start=float(made.get("linear_start", 1e-4)), linear_end=float(made.get("linear_end", 2e-2)))
        return p
    return dict(timesteps=schedule.num_timesteps, given_betas=schedule.betas.double().cpu().tolist())


def compvis_config_from_ldm(model: LatentDiffusion) -> dict:
    """The CompVis config (``{"model": {"target": ..., "params": ...}}``) of a course ``LatentDiffusion``."""
    if model.parameterization not in ("eps", "x0"):
        _refuse(f"parameterization={model.parameterization!r}: CompVis's LatentDiffusion predicts eps or x0")
    latent = None if model.latent_size is None else int(model.latent_size[0])
    image = None if model.image_size is None else int(model.image_size[0])
    if model.latent_size is not None and model.latent_size[0] != model.latent_size[1]:
        _refuse(f"image size {model.image_size}: CompVis configs describe square images")
    unet_cfg = model.unet.to_config() if isinstance(model.unet, UNetModel) else None
    if unet_cfg is None:
        _refuse(f"the UNet is a {type(model.unet).__name__}, not the course's UNetModel")
    _check_groups([unet_cfg.model_channels * m for m in unet_cfg.channel_mult], "the UNet")
    params = dict(
        **_schedule_params(model.schedule), loss_type=getattr(model, "loss_type", "l2"),
        first_stage_key="image", cond_stage_key=_first_key(model.cond_key),
        image_size=latent if latent is not None else 64, channels=model.latent_channels,
        cond_stage_trainable=bool(model.cond_stage_trainable), conditioning_key=model.conditioning_key,
        parameterization=model.parameterization, scale_factor=float(model.scale_factor),
        unet_config={"target": _TARGETS["unet"], "params": _unet_params(unet_cfg, latent)},
        first_stage_config=_first_stage_config(model.first_stage, image),
        cond_stage_config=_cond_stage_config(model),
    )
    if model.conditioning_key == "concat":
        params["concat_mode"] = True
    return {"model": {"target": _TARGETS["ldm"], "params": params}}


def save_compvis(model: LatentDiffusion, path: str | os.PathLike | None = None) -> dict:
    """A course ``LatentDiffusion`` in CompVis's layout: ``{"state_dict": ..., "config": ...}`` -- the state dict
    with CompVis's keys (UNet, first stage, cond stage, the 12 schedule buffers) and the config (a dict as
    ``yaml.safe_load`` reads the original's YAML). :func:`load_compvis_ldm` reads both back.

    ``path``: also write them: ``<path>`` as a Lightning-style ``.ckpt`` (``{"state_dict": ...}``, loadable with
    ``weights_only=True``) or as ``.safetensors`` (by its suffix), and the config next to it as ``<stem>.yaml``.
    """
    config = compvis_config_from_ldm(model)
    sd: dict[str, torch.Tensor] = {}

    def put(prefix: str, module: nn.Module, skip=()):
        for k, v in module.state_dict().items():
            if k not in skip:
                sd[prefix + k] = v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).clone()

    put("model.diffusion_model.", model.unet)
    put("first_stage_model.", model.first_stage, skip=("quantize.usage",))
    cs = model.cond_stage
    if isinstance(cs, InpaintConcat):
        put("cond_stage_model.", model.first_stage, skip=("quantize.usage",))  # Lightning saves the shared module twice
    elif isinstance(cs, XTransformerEmbedder) and not cs.logits:
        put("cond_stage_model.", cs)
        d, n = cs.n_embed, cs.vocab_size  # the original always has the (unused) language-model head: zeros
        sd["cond_stage_model.transformer.to_logits.weight"] = torch.zeros(n, d)
        sd["cond_stage_model.transformer.to_logits.bias"] = torch.zeros(n)
    elif isinstance(cs, SemanticEncoder):
        put("cond_stage_model.", cs.rescaler)
    elif cs is not None:
        put("cond_stage_model.", cs)
    sd.update(_compvis_schedule_buffers(model.schedule.betas))
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file(sd, str(path))
        else:
            torch.save({"state_dict": sd}, path)
        import yaml

        path.with_suffix(".yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return {"state_dict": sd, "config": config}


# ----------------------------------------------------------------------------------------------------------------
# The command line: ldm-lite convert-compvis CONFIG.yaml MODEL.ckpt --export NAME
# ----------------------------------------------------------------------------------------------------------------
def add_convert_compvis(sub) -> argparse.ArgumentParser:
    """Add ``convert-compvis`` to an argparse subparsers object; returns its parser."""
    p = sub.add_parser(
        "convert-compvis",
        help="turn a released CompVis LDM (config + .ckpt) into an export that load_ldm / `sample --model` use",
        description="Convert a CompVis/latent-diffusion LatentDiffusion (cin256-v2, txt2img-f8-large, celeba256, "
                    "ffhq256, lsun_*, bsr_sr, inpainting_big, layout2img, semantic_synthesis) into an export: "
                    "NAME_first_stage (its autoencoder) and NAME (the LDM), float16 safetensors + JSON manifests.")
    p.add_argument("config", help="the model's CompVis config (models/ldm/<name>/config.yaml)")
    p.add_argument("checkpoint", help="its checkpoint (.ckpt as released, or .safetensors)")
    p.add_argument("--export", required=True,
                   help="NAME (written to data/pretrained/) or a path; the first stage goes to NAME_first_stage")
    p.add_argument("--force", action="store_true", help="replace existing exports of these names")
    p.add_argument("--trust-pickle", action="store_true",
                   help="load a .ckpt that holds more than tensors with weights_only=False: unpickling can run code "
                        "stored in the file, so only for a file whose origin you trust")
    p.add_argument("--use-ema", action="store_true", help="export the UNet's EMA weights (model_ema.*)")
    return p


def run_convert_compvis(args) -> dict:
    """Run ``convert-compvis``: load (:func:`load_compvis_ldm`), export the first stage as ``NAME_first_stage`` and
    the LDM as ``NAME``; returns (and prints) a summary."""
    import json

    target = export_target(args.export)
    fs_target = target.with_name(target.name + "_first_stage")
    force = bool(getattr(args, "force", False))
    for t in (target, fs_target):  # before the (long) load: no work lost to an existing name
        check_export_target(t, force=force, note="nothing was converted")
    family = compvis_family(args.config)
    model = load_compvis_ldm(args.config, args.checkpoint, trust_pickle=bool(getattr(args, "trust_pickle", False)),
                             use_ema=bool(getattr(args, "use_ema", False)))
    cs = model.cond_stage
    if cs is not None and not model.cond_stage_trainable and any(True for _ in cs.parameters()):
        _refuse(f"the cond stage {type(cs).__name__} is frozen (cond_stage_trainable: false) but has weights, which "
                "an export does not store; load it in memory with load_compvis_ldm instead")
    source = dict(format="compvis", config=str(Path(args.config).resolve()),
                  checkpoint=str(Path(args.checkpoint).resolve()), checkpoint_sha256=sha256_file(args.checkpoint),
                  family=family, use_ema=bool(getattr(args, "use_ema", False)))
    command = "ldm-lite " + " ".join(getattr(args, "argv", None) or ["convert-compvis", str(args.config),
                                                                       str(args.checkpoint), "--export",
                                                                       str(args.export)])
    ae = model.first_stage
    save_pretrained(ae, fs_target, dict(kind="autoencoder", config=ae.config.to_dict(), source=source,
                                        command=command), force=force)
    near = target.parent.resolve() == PRETRAINED_DIR.resolve()
    fs_name = fs_target.name if near else str(fs_target.resolve())
    extra = dict(source=source, command=command)
    if family == "super-resolution":  # what `ldm-lite upscale` reads
        extra["recipe"] = dict(task="sr", sr_factor=model.f)
    elif family == "inpainting":  # what `ldm-lite inpaint` reads
        extra["recipe"] = dict(task="inpaint")
    weights = export_ldm(model, target, first_stage=fs_name, extra=extra, force=force)
    summary = dict(export=str(target), first_stage=str(fs_target), family=family, weights=str(weights),
                   image_size=list(model.image_size) if model.image_size else None,
                   parameters=sum(p.numel() for p in model.unet.parameters()))
    print(json.dumps(summary))
    return summary
