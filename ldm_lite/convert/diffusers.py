"""The course's models <-> Hugging Face diffusers, both ways, where diffusers has the parts.

What maps onto what
-------------------

==========================================  ==========================================================
ldm-lite (CompVis names)                     diffusers
==========================================  ==========================================================
:class:`~ldm_lite.unet.UNetModel`, with       ``UNet2DConditionModel`` (CrossAttn*Block2D +
``SpatialTransformer`` attention              ``Transformer2DModel``)
``UNetModel(use_spatial_transformer=False)``  ``UNet2DModel`` (Attn*Block2D, the ADM attention)
:class:`~ldm_lite.autoencoder.AutoencoderKL`  ``AutoencoderKL``
:class:`~ldm_lite.autoencoder.VQModel`        ``VQModel``
:class:`~ldm_lite.diffusion.NoiseSchedule`    ``DDIMScheduler(trained_betas=...)``
+ :class:`~ldm_lite.diffusion.DDIMSampler`
cond stages (ClassEmbedder, text encoders)    not converted: compute the context with the course's cond
                                              stage and hand it to diffusers as ``encoder_hidden_states``
==========================================  ==========================================================

The UNet: the same network under two naming schemes
----------------------------------------------------
The course (like CompVis' ``openaimodel.py``) keeps the UNet as three flat lists of
``TimestepEmbedSequential`` blocks, each a small list of layers; diffusers groups the same layers by
resolution level. With ``L`` levels and ``N = num_res_blocks`` (a level has ``N`` ResBlocks in the
encoder, ``N + 1`` in the decoder)::

    input_blocks.0.0                        conv_in
    input_blocks.{1 + l(N+1) + r}.0         down_blocks.l.resnets.r              r < N
    input_blocks.{1 + l(N+1) + r}.1         down_blocks.l.attentions.r           (attention levels only)
    input_blocks.{1 + l(N+1) + N}.0         down_blocks.l.downsamplers.0         (l < L - 1)
    middle_block.0 / .1 / .2                mid_block.resnets.0 / attentions.0 / resnets.1
    output_blocks.{u(N+1) + r}.0            up_blocks.u.resnets.r                r <= N; u = 0 is the
    output_blocks.{u(N+1) + r}.1            up_blocks.u.attentions.r             LOWEST resolution
    output_blocks.{u(N+1) + N}.last         up_blocks.u.upsamplers.0             (u < L - 1)
    time_embed.0 / time_embed.2             time_embedding.linear_1 / linear_2
    label_emb                               class_embedding                      ("adm" class labels)
    out.0 / out.2                           conv_norm_out / conv_out

Inside the blocks (:data:`LEAF_NAMES`): a ResBlock's ``in_layers.0 / in_layers.2 / emb_layers.1 /
out_layers.0 / out_layers.3 / skip_connection`` are a ResnetBlock2D's ``norm1 / conv1 / time_emb_proj /
norm2 / conv2 / conv_shortcut``; a Downsample's ``op`` is ``conv``. The SpatialTransformer and diffusers'
Transformer2DModel use the *same* names (``norm, proj_in, transformer_blocks.k.{attn1, attn2, ff, norm1..3},
proj_out``; diffusers took them from CompVis), so those keys only change their block prefix. The ADM
:class:`~ldm_lite.unet.AttentionBlock` differs in layout, not just name: one fused 1x1 ``Conv1d`` ``qkv``
(3C -> C) whose output channels are ordered head by head, ``[q_h, k_h, v_h]`` for h = 0, 1, ... (the "legacy"
order of the CompVis checkpoints), becomes three ``nn.Linear`` ``to_q / to_k / to_v``; ``proj_out`` (Conv1d)
becomes ``to_out.0`` (Linear) and ``norm`` becomes ``group_norm``.

Configuration: diffusers calls ``model_channels * channel_mult`` ``block_out_channels`` and
``num_res_blocks`` ``layers_per_block``; attention levels are block *types* (``CrossAttnDownBlock2D`` vs
``DownBlock2D``) instead of a set of downsampling rates. In ``UNet2DConditionModel`` the argument
``attention_head_dim`` is (for historical reasons) the *number of heads* per level; in ``UNet2DModel`` it is
the head *width*. A UNet without cross-attention conditioning (``context_dim=None``) still has LDM's
SpatialTransformers, whose ``attn2`` then attends to the image tokens themselves; diffusers expresses that
with a per-level ``cross_attention_dim`` equal to the level's width and ``encoder_hidden_states=None``.
Calling conventions: ours ``unet(x, t, context=c, y=labels, context_mask=m)``, diffusers
``unet(x, t, encoder_hidden_states=c, class_labels=labels, encoder_attention_mask=m).sample`` -- context masks
map (diffusers adds -10000 where ours adds -inf: the same softmax in float32).

What does NOT map (refused with :class:`NotConvertibleError`, a ``ValueError`` naming the feature)
-----------------------------------------------------------------------------------------------
course -> diffusers:

* ``coord_channels=True`` -- ldm-lite's CoordConv input channels (chapter 06); diffusers' UNets have none.
* ``conv_resample=False`` -- parameter-free (avg-pool / nearest) resampling; diffusers' cross-attention
  UNet always resamples with a convolution.
* ``channel_mult[0] != 1`` -- diffusers widens the stem (``conv_in``) to ``block_out_channels[0]``, LDM
  widens inside the first ResBlock: different shapes.
* ``resblock_updown=True`` with SpatialTransformers -- no CrossAttn block of diffusers resamples with a
  ResBlock (``UNet2DModel`` has it, for the ADM-attention UNets).
* ADM attention (``use_spatial_transformer=False``) with ``num_heads`` whose head width differs between
  attention levels -- ``UNet2DModel`` has one head width for all levels; use ``num_head_channels``.
* first stage: GroupNorms with different group counts (ldm-lite uses ``gcd(32, C)`` groups per layer, so
  widths 16 and 32 give 16 and 32 groups; diffusers has one ``norm_num_groups``), ``ch_mult[0] != 1``, and a
  KL model whose ``z_channels != embed_dim`` (diffusers' ``latent_channels`` is both).

Carried over without weights: ``use_checkpoint`` <-> diffusers' gradient checkpointing flag, ``dropout``.
Lost: a VQ model's training bookkeeping (``quantize.usage``, ``dead_code_threshold``) and ``beta``
(diffusers' VQModel fixes beta=0.25 and puts it on the codebook term); they change training only, not
encode / decode. diffusers -> course refuses every option that changes the computation and has no course
equivalent (class / addition embeddings other than a label table, ``only_cross_attention``, other kernel
sizes, activation functions, time-embedding types, epsilons, ...): see :func:`unet_config_from_diffusers`.
``upcast_attention`` (Stable Diffusion 2.x) is accepted: it only changes float16 precision.

Example::

    from ldm_lite.pretrained import load_ldm
    from ldm_lite.convert import ldm_to_diffusers
    parts = ldm_to_diffusers(load_ldm("ldm_shapes_text64"))   # {"unet", "vae", "scheduler"}
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import torch
from torch import nn

from ldm_lite.autoencoder.convert import _map_diffusers_key, convert_diffusers_state_dict
from ldm_lite.autoencoder.model import VALID_FACTORS, AutoencoderConfig, AutoencoderKL, VQModel
from ldm_lite.unet.model import UNetConfig, UNetModel, diffusers_equivalent

__all__ = [
    "NotConvertibleError",
    "LEAF_NAMES",
    "UNetBlock",
    "unet_block_table",
    "unet_config_to_diffusers",
    "unet_config_from_diffusers",
    "unet_state_dict_to_diffusers",
    "unet_state_dict_from_diffusers",
    "unet_to_diffusers",
    "unet_from_diffusers",
    "first_stage_config_to_diffusers",
    "first_stage_config_from_diffusers",
    "first_stage_state_dict_to_diffusers",
    "first_stage_to_diffusers",
    "first_stage_from_diffusers",
    "ddim_scheduler_from_schedule",
    "ldm_to_diffusers",
]


class NotConvertibleError(ValueError):
    """A model uses a feature that the other library does not have; the message names the feature."""


def _refuse(feature: str, why: str) -> None:
    raise NotConvertibleError(f"cannot convert: {feature} -- {why}")


def _diffusers():
    try:
        import diffusers
    except ImportError as err:  # pragma: no cover - diffusers is an optional dependency
        raise ImportError("ldm_lite.convert needs diffusers (pip install diffusers)") from err
    return diffusers


# ==============================================================================================
# The UNet: key tables
# ==============================================================================================
#: Inside one block: our (CompVis) leaf name -> diffusers' leaf name, per kind of block.
LEAF_NAMES: dict[str, dict[str, str]] = {
    # conv_in, time_embed.0/.2, label_emb, out.0/.2: the block prefix is the whole story
    "plain": {},
    # ResBlock -> ResnetBlock2D (also the resampling ResBlocks of resblock_updown=True)
    "resblock": {
        "in_layers.0": "norm1",  # GroupNorm
        "in_layers.2": "conv1",  # 3x3 conv
        "emb_layers.1": "time_emb_proj",  # Linear(time embedding -> C_out or 2 C_out)
        "out_layers.0": "norm2",
        "out_layers.3": "conv2",  # zero-initialised 3x3 conv
        "skip_connection": "conv_shortcut",  # 1x1 conv when the channel count changes
    },
    # SpatialTransformer -> Transformer2DModel: identical names (norm, proj_in, transformer_blocks.k.*, proj_out)
    "transformer": {},
    # AttentionBlock (ADM) -> Attention; "qkv" is split into to_q / to_k / to_v (see _split_qkv)
    "attention": {"norm": "group_norm", "proj_out": "to_out.0"},
    "downsample": {"op": "conv"},  # Downsample (stride-2 conv) -> Downsample2D
    "upsample": {"conv": "conv"},  # Upsample (nearest x2 + conv) -> Upsample2D
}


class UNetBlock(NamedTuple):
    """One row of :func:`unet_block_table`: a block under both names, its kind (a key of :data:`LEAF_NAMES`)
    and, for an ADM attention block, its number of heads (needed to split the fused qkv)."""

    ours: str
    theirs: str
    kind: str
    heads: int | None = None


def _as_config(unet_or_config) -> UNetConfig:
    if isinstance(unet_or_config, UNetModel):
        return unet_or_config.to_config()
    if isinstance(unet_or_config, dict):
        return UNetConfig(**unet_or_config)
    if isinstance(unet_or_config, UNetConfig):
        return unet_or_config
    raise TypeError(f"expected a UNetModel, UNetConfig or its dict, got {type(unet_or_config).__name__}")


def _heads(cfg: UNetConfig, ch: int) -> int:
    return ch // cfg.num_head_channels if cfg.num_head_channels != -1 else cfg.num_heads


def unet_block_table(config: UNetConfig | UNetModel) -> list[UNetBlock]:
    """Every block of the UNet ``config`` under our name and diffusers' name (module docstring's table).

    Follows :class:`~ldm_lite.unet.UNetModel`'s construction loop: the encoder level by level, the middle,
    the decoder from the lowest resolution up (which is also diffusers' ``up_blocks`` order).
    """
    cfg = _as_config(config)
    n, levels = cfg.num_res_blocks, len(cfg.channel_mult)
    attn_kind = "transformer" if cfg.use_spatial_transformer else "attention"
    resample = "resblock" if cfg.resblock_updown else None

    def attn(ours: str, theirs: str, ch: int) -> UNetBlock:
        return UNetBlock(ours, theirs, attn_kind, None if cfg.use_spatial_transformer else _heads(cfg, ch))

    rows = [
        UNetBlock("time_embed.0", "time_embedding.linear_1", "plain"),
        UNetBlock("time_embed.2", "time_embedding.linear_2", "plain"),
        UNetBlock("input_blocks.0.0", "conv_in", "plain"),
        UNetBlock("out.0", "conv_norm_out", "plain"),
        UNetBlock("out.2", "conv_out", "plain"),
    ]
    if cfg.num_classes is not None:
        rows.append(UNetBlock("label_emb", "class_embedding", "plain"))
    for level, mult in enumerate(cfg.channel_mult):
        ch, attends = cfg.model_channels * mult, 2 ** level in cfg.attention_resolutions
        for r in range(n):
            i = 1 + level * (n + 1) + r
            rows.append(UNetBlock(f"input_blocks.{i}.0", f"down_blocks.{level}.resnets.{r}", "resblock"))
            if attends:
                rows.append(attn(f"input_blocks.{i}.1", f"down_blocks.{level}.attentions.{r}", ch))
        if level < levels - 1:
            i = 1 + level * (n + 1) + n
            rows.append(UNetBlock(f"input_blocks.{i}.0", f"down_blocks.{level}.downsamplers.0",
                                  resample or "downsample"))
    ch = cfg.model_channels * cfg.channel_mult[-1]
    rows += [UNetBlock("middle_block.0", "mid_block.resnets.0", "resblock"),
             attn("middle_block.1", "mid_block.attentions.0", ch),
             UNetBlock("middle_block.2", "mid_block.resnets.1", "resblock")]
    for u in range(levels):
        level = levels - 1 - u
        ch, attends = cfg.model_channels * cfg.channel_mult[level], 2 ** level in cfg.attention_resolutions
        for r in range(n + 1):
            i = u * (n + 1) + r
            rows.append(UNetBlock(f"output_blocks.{i}.0", f"up_blocks.{u}.resnets.{r}", "resblock"))
            if attends:
                rows.append(attn(f"output_blocks.{i}.1", f"up_blocks.{u}.attentions.{r}", ch))
            if level > 0 and r == n:
                rows.append(UNetBlock(f"output_blocks.{i}.{1 + attends}", f"up_blocks.{u}.upsamplers.0",
                                      resample or "upsample"))
    return rows


def _rename_leaf(rest: str, kind: str, to_diffusers: bool) -> str:
    table = LEAF_NAMES[kind] if to_diffusers else {v: k for k, v in LEAF_NAMES[kind].items()}
    for a, b in table.items():
        if rest.startswith(a + "."):
            return b + rest[len(a):]
    return rest


def _match(key: str, prefixes: dict[str, UNetBlock]) -> tuple[UNetBlock, str]:
    """The block whose prefix is the longest one ``key`` starts with, and the rest of the key."""
    parts = key.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        block = prefixes.get(".".join(parts[:cut]))
        if block is not None:
            return block, ".".join(parts[cut:])
    raise KeyError(key)


def _split_qkv(qkv: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fused legacy qkv (3C, C, 1) weight or (3C,) bias, head-major ``[q_h, k_h, v_h]`` -> q, k, v as
    Linear weights (C, C) / biases (C,)."""
    three_c = qkv.shape[0]
    c = three_c // 3
    per_head = qkv.reshape(heads, 3, c // heads, *qkv.shape[1:])  # (heads, q/k/v, head width, ...)
    q, k, v = per_head.unbind(1)
    return tuple(t.reshape(c, *qkv.shape[1:2]) for t in (q, k, v))  # drop the trailing 1 of Conv1d


def _fuse_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """The inverse of :func:`_split_qkv`: three Linear weights (C, C) / biases (C,) -> (3C, C, 1) / (3C,)."""
    c = q.shape[0]
    per_head = torch.stack([t.reshape(heads, c // heads, *t.shape[1:]) for t in (q, k, v)], dim=1)
    fused = per_head.reshape(3 * c, *q.shape[1:])
    return fused[..., None] if q.ndim == 2 else fused


def unet_state_dict_to_diffusers(state_dict: dict[str, torch.Tensor], config: UNetConfig | UNetModel) -> dict:
    """Our UNet state dict (CompVis names) -> the state dict of the diffusers model of the same config."""
    table = {row.ours: row for row in unet_block_table(config)}
    out = {}
    for key, value in state_dict.items():
        try:
            block, rest = _match(key, table)
        except KeyError:
            msg = f"unrecognised ldm-lite UNet key {key!r} (does the state dict match the config?)"
            raise KeyError(msg) from None
        if block.kind == "attention" and rest.startswith("qkv."):
            for name, part in zip(("to_q", "to_k", "to_v"), _split_qkv(value, block.heads)):
                out[f"{block.theirs}.{name}.{rest[4:]}"] = part
            continue
        if block.kind == "attention" and rest == "proj_out.weight":
            value = value[..., 0]  # Conv1d (C, C, 1) -> Linear (C, C)
        out[f"{block.theirs}.{_rename_leaf(rest, block.kind, True)}"] = value
    return out


def unet_state_dict_from_diffusers(state_dict: dict[str, torch.Tensor], config: UNetConfig | UNetModel) -> dict:
    """A diffusers UNet state dict -> ours (CompVis names) for the UNet ``config``."""
    table = {row.theirs: row for row in unet_block_table(config)}
    out, qkv_parts = {}, {}
    for key, value in state_dict.items():
        try:
            block, rest = _match(key, table)
        except KeyError:
            raise KeyError(f"unrecognised diffusers UNet key {key!r} (does the model match the config?)") from None
        if block.kind == "attention" and rest.split(".")[0] in ("to_q", "to_k", "to_v"):
            name, wb = rest.split(".", 1)
            qkv_parts.setdefault((block, wb), {})[name] = value
            continue
        if block.kind == "attention" and rest == "to_out.0.weight":
            value = value[..., None]  # Linear (C, C) -> Conv1d (C, C, 1)
        out[f"{block.ours}.{_rename_leaf(rest, block.kind, False)}"] = value
    for (block, wb), parts in qkv_parts.items():
        if set(parts) != {"to_q", "to_k", "to_v"}:
            raise KeyError(f"{block.theirs}: found {sorted(parts)} of to_q / to_k / to_v {wb}; need all three")
        out[f"{block.ours}.qkv.{wb}"] = _fuse_qkv(parts["to_q"], parts["to_k"], parts["to_v"], block.heads)
    return out


# ==============================================================================================
# The UNet: configurations
# ==============================================================================================
def _adm_head_width(cfg: UNetConfig) -> int:
    """The one head width a UNet2DModel needs: equal at every ADM attention level (and the middle)."""
    if cfg.num_head_channels != -1:
        return cfg.num_head_channels
    levels = {len(cfg.channel_mult) - 1}  # the middle block
    levels |= {lev for lev in range(len(cfg.channel_mult)) if 2 ** lev in cfg.attention_resolutions}
    widths = sorted({cfg.model_channels * cfg.channel_mult[lev] // cfg.num_heads for lev in levels})
    if len(widths) > 1:
        _refuse(f"num_heads={cfg.num_heads} with ADM attention (use_spatial_transformer=False)",
                f"it gives head widths {widths} at the attention levels, but diffusers' UNet2DModel has one head "
                "width (attention_head_dim) for every level; build the UNet with num_head_channels instead")
    return widths[0]


def unet_config_to_diffusers(config: UNetConfig | UNetModel) -> tuple[str, dict]:
    """The diffusers class name (``"UNet2DConditionModel"`` or ``"UNet2DModel"``) and keyword arguments of the
    same network as ``config``; refuses (:class:`NotConvertibleError`) what diffusers cannot express.

    The keyword arguments are :func:`ldm_lite.unet.diffusers_equivalent`'s (the mapping the parameter-count
    tests and the throughput benchmark use), checked here to be exact for the weights as well.
    """
    cfg = _as_config(config)
    if cfg.coord_channels:
        _refuse("coord_channels=True", "ldm-lite's coordinate input channels (CoordConv, chapter 06) have no "
                "counterpart in diffusers' UNets, whose conv_in sees only the latent (+ concatenated condition)")
    if not cfg.conv_resample:
        _refuse("conv_resample=False", "diffusers' UNets resample with a (learned) convolution; parameter-free "
                "average-pool / nearest resampling has no diffusers option")
    if cfg.channel_mult[0] != 1:
        _refuse(f"channel_mult[0]={cfg.channel_mult[0]}", "diffusers widens the stem (conv_in, time embedding) to "
                "block_out_channels[0] while LDM widens inside the first ResBlock, so the weights have other "
                "shapes; use channel_mult starting with 1 and a larger model_channels")
    if cfg.use_spatial_transformer and cfg.resblock_updown:
        _refuse("resblock_updown=True with SpatialTransformers", "diffusers' cross-attention blocks "
                "(CrossAttnDownBlock2D / CrossAttnUpBlock2D) resample with a convolution, never with a ResBlock")
    name, kwargs = diffusers_equivalent(cfg)
    if name == "UNet2DModel":
        kwargs["attention_head_dim"] = _adm_head_width(cfg)
    return name, kwargs


def _get(config, key, default=None):
    return config.get(key, default) if isinstance(config, dict) else getattr(config, key, default)


def _uniform(value, what: str, levels: list[int] | None = None):
    """An int, or a per-level tuple whose entries (at ``levels``) are all equal -> that int."""
    if isinstance(value, (list, tuple)):
        picked = [value[i] for i in levels] if levels is not None else list(value)
        if any(isinstance(v, (list, tuple)) for v in picked) or len(set(picked)) > 1:
            _refuse(f"{what}={tuple(value)}", f"ldm-lite uses one {what} for every level")
        return picked[0] if picked else value[0]
    return value


def _expect(config, what: str, allowed: tuple, meaning: str) -> None:
    value = _get(config, what)
    if value not in allowed:
        _refuse(f"{what}={value!r}", f"ldm-lite's UNet has no such option ({meaning}); only "
                + " / ".join(repr(a) for a in allowed) + " map")


def _levels_from_widths(chans: list[int]) -> tuple[int, tuple[int, ...]]:
    mc = chans[0]
    if any(c % mc for c in chans):
        _refuse(f"block_out_channels={tuple(chans)}", "ldm-lite's widths are model_channels * channel_mult with "
                "integer multipliers of the first width")
    return mc, tuple(c // mc for c in chans)


def _common_unet_checks(config) -> None:
    _expect(config, "center_input_sample", (False,), "mapping [0, 1] inputs to [-1, 1] inside the UNet")
    _expect(config, "flip_sin_to_cos", (True,), "LDM's time embedding is [cos | sin]")
    _expect(config, "freq_shift", (0,), "LDM's time frequencies are 10000 ** (-i / half)")
    _expect(config, "time_embedding_type", ("positional",), "LDM's time embedding is sinusoidal")
    _expect(config, "time_embedding_dim", (None,), "LDM's time embedding is 4 * model_channels wide")
    _expect(config, "act_fn", ("silu",), "LDM's activation is SiLU")
    _expect(config, "norm_eps", (1e-5,), "LDM's ResBlock GroupNorms use eps=1e-5")
    _expect(config, "downsample_padding", (1,), "LDM's downsampling conv pads by 1")
    _expect(config, "mid_block_scale_factor", (1, 1.0), "rescaling the middle block's residuals")
    _expect(config, "class_embed_type", (None,), "LDM's class conditioning ('adm') is a label table, "
            "num_class_embeds")
    _expect(config, "resnet_time_scale_shift", ("default", "scale_shift"),
            "LDM's ResBlocks add the time embedding or use it as scale and shift (use_scale_shift_norm)")
    if _get(config, "norm_num_groups") is None:
        _refuse("norm_num_groups=None", "ldm-lite's UNet always normalises with GroupNorm(norm_num_groups)")


def unet_config_from_diffusers(model_or_config, class_name: str | None = None) -> UNetConfig:
    """The :class:`~ldm_lite.unet.UNetConfig` of a diffusers ``UNet2DConditionModel`` / ``UNet2DModel`` (an
    instance, or its config with ``class_name``); refuses every option the course's UNet does not have.

    Heads: when the head width is the same at every attention level the config gets ``num_head_channels``
    (the course's convention), otherwise ``num_heads`` (Stable Diffusion's 8 heads everywhere).
    """
    if class_name is None:
        class_name = type(model_or_config).__name__
        config = dict(model_or_config.config)
    else:
        config = dict(model_or_config)
    if class_name == "UNet2DConditionModel":
        return _cond_unet_config(config)
    if class_name == "UNet2DModel":
        return _adm_unet_config(config)
    raise NotConvertibleError(f"cannot convert: a diffusers {class_name} -- ldm-lite's UNet corresponds to "
                              "UNet2DConditionModel and UNet2DModel only")


def _cond_unet_config(config: dict) -> UNetConfig:
    _common_unet_checks(config)
    _expect(config, "mid_block_type", ("UNetMidBlock2DCrossAttn",), "LDM's middle block is ResBlock, "
            "SpatialTransformer, ResBlock")
    for key, meaning in [("encoder_hid_dim", "a projection of the encoder states before the UNet"),
                         ("encoder_hid_dim_type", "a projection of the encoder states before the UNet"),
                         ("addition_embed_type", "extra (text / image / time) embeddings, as in SDXL"),
                         ("time_cond_proj_dim", "a guidance-scale embedding (LCM)"),
                         ("time_embedding_act_fn", "an activation after the time embedding"),
                         ("timestep_post_act", "an activation after the time MLP"),
                         ("projection_class_embeddings_input_dim", "projected class embeddings"),
                         ("cross_attention_norm", "a norm on the encoder states in cross-attention"),
                         ("reverse_transformer_layers_per_block", "per-block transformer depths in the decoder"),
                         ("num_attention_heads", "see diffusers issue #2011")]:
        _expect(config, key, (None,), meaning)
    _expect(config, "dual_cross_attention", (False,), "two cross-attention transformers per block")
    _expect(config, "resnet_skip_time_act", (False,), "skipping the SiLU before time_emb_proj")
    _expect(config, "resnet_out_scale_factor", (1, 1.0), "rescaling ResBlock outputs")
    _expect(config, "conv_in_kernel", (3,), "LDM's conv_in is 3x3")
    _expect(config, "conv_out_kernel", (3,), "LDM's conv_out is 3x3")
    _expect(config, "attention_type", ("default",), "gated (GLIGEN) attention")
    _expect(config, "class_embeddings_concat", (False,), "LDM adds the class embedding to the time embedding")
    _expect(config, "mid_block_only_cross_attention", (None, False), "cross-attention only in the middle block")
    only = _get(config, "only_cross_attention", False)
    if any(only) if isinstance(only, (list, tuple)) else only:
        _refuse(f"only_cross_attention={only!r}", "in ldm-lite's transformer blocks attn1 is self-attention")

    down, up = list(config["down_block_types"]), list(config["up_block_types"])
    if set(down) - {"CrossAttnDownBlock2D", "DownBlock2D"} or set(up) - {"CrossAttnUpBlock2D", "UpBlock2D"}:
        _refuse(f"down_block_types={tuple(down)}, up_block_types={tuple(up)}", "ldm-lite maps CrossAttnDownBlock2D "
                "/ DownBlock2D and CrossAttnUpBlock2D / UpBlock2D")
    attends = [t == "CrossAttnDownBlock2D" for t in down]
    if [t == "CrossAttnUpBlock2D" for t in reversed(up)] != attends:
        _refuse(f"up_block_types={tuple(up)}", "the decoder must have attention exactly at the encoder's attention "
                f"levels (down_block_types={tuple(down)})")
    chans = list(config["block_out_channels"])
    mc, mult = _levels_from_widths(chans)
    att_levels = [lev for lev, a in enumerate(attends) if a] + [len(chans) - 1]  # + the middle block

    heads = config["attention_head_dim"]
    heads = list(heads) if isinstance(heads, (list, tuple)) else [heads] * len(chans)
    for lev in att_levels:
        if chans[lev] % heads[lev]:
            _refuse(f"attention_head_dim (number of heads) {heads[lev]} at width {chans[lev]}",
                    "the width is not divisible by the number of heads")
    widths = {chans[lev] // heads[lev] for lev in att_levels}
    if len(widths) == 1:
        head_kw = dict(num_head_channels=widths.pop())
    elif len({heads[lev] for lev in att_levels}) == 1:
        head_kw = dict(num_heads=heads[att_levels[0]])
    else:
        _refuse(f"attention_head_dim={tuple(heads)}", "ldm-lite has either one number of heads or one head width "
                "for every attention level")

    cad = config["cross_attention_dim"]
    if isinstance(cad, (list, tuple)):
        if [cad[lev] for lev in att_levels] == [chans[lev] for lev in att_levels]:
            context_dim = None  # attn2 attends to the level's own tokens: an unconditional LDM
        else:
            context_dim = _uniform(cad, "cross_attention_dim", att_levels)
    else:
        context_dim = cad

    return UNetConfig(
        in_channels=config["in_channels"], out_channels=config["out_channels"], model_channels=mc,
        channel_mult=mult, num_res_blocks=_uniform(config["layers_per_block"], "layers_per_block"),
        attention_resolutions=tuple(2 ** lev for lev, a in enumerate(attends) if a), **head_kw,
        context_dim=context_dim,
        transformer_depth=_uniform(config.get("transformer_layers_per_block", 1), "transformer_layers_per_block",
                                   att_levels),
        use_spatial_transformer=True, use_scale_shift_norm=config["resnet_time_scale_shift"] == "scale_shift",
        resblock_updown=False, dropout=float(config.get("dropout", 0.0)), num_classes=config.get("num_class_embeds"),
        use_linear_in_transformer=bool(config.get("use_linear_projection", False)),
        norm_num_groups=config["norm_num_groups"],
    )


def _adm_unet_config(config: dict) -> UNetConfig:
    _common_unet_checks(config)
    _expect(config, "mid_block_type", ("UNetMidBlock2D",), "LDM's middle block is ResBlock, attention, ResBlock")
    _expect(config, "add_attention", (True,), "LDM's middle block always has attention")
    down, up = list(config["down_block_types"]), list(config["up_block_types"])
    known_down = {"AttnDownBlock2D", "DownBlock2D", "ResnetDownsampleBlock2D"}
    known_up = {"AttnUpBlock2D", "UpBlock2D", "ResnetUpsampleBlock2D"}
    if set(down) - known_down or set(up) - known_up:
        _refuse(f"down_block_types={tuple(down)}, up_block_types={tuple(up)}",
                f"ldm-lite maps {sorted(known_down)} and {sorted(known_up)}")
    attends = [t == "AttnDownBlock2D" for t in down]
    if [t == "AttnUpBlock2D" for t in reversed(up)] != attends:
        _refuse(f"up_block_types={tuple(up)}", "the decoder must have attention exactly at the encoder's attention "
                f"levels (down_block_types={tuple(down)})")
    # how each level resamples: DownBlock2D always by conv, Resnet*Block2D by a ResBlock, Attn* as configured
    down_kind = ["resnet" if t == "ResnetDownsampleBlock2D" else "conv" if t == "DownBlock2D"
                 else config.get("downsample_type", "conv") for t in down[:-1]]
    up_kind = ["resnet" if t == "ResnetUpsampleBlock2D" else "conv" if t == "UpBlock2D"
               else config.get("upsample_type", "conv") for t in up[:-1]]
    kinds = set(down_kind + up_kind)
    if len(kinds) > 1 or kinds - {"conv", "resnet"}:
        _refuse(f"resampling {sorted(kinds)} (down_block_types / downsample_type / upsample_type)",
                "ldm-lite resamples every level the same way: by convolution, or by ResBlocks (resblock_updown)")
    chans = list(config["block_out_channels"])
    mc, mult = _levels_from_widths(chans)
    groups = config["norm_num_groups"]
    attn_groups = config.get("attn_norm_num_groups")
    if attn_groups is None and config["resnet_time_scale_shift"] != "default":
        _refuse("attn_norm_num_groups=None with resnet_time_scale_shift='scale_shift'",
                "diffusers then builds the middle attention without a GroupNorm; ldm-lite's attention always has one")
    if attn_groups is not None and attn_groups != groups:
        _refuse(f"attn_norm_num_groups={attn_groups}", f"ldm-lite's attention GroupNorms use norm_num_groups={groups}")
    att_levels = [lev for lev, a in enumerate(attends) if a] + [len(chans) - 1]
    width = config.get("attention_head_dim")
    if width is None:
        head_kw = dict(num_heads=1)  # diffusers: head width = the level's width, i.e. one head
    else:
        bad = [chans[lev] for lev in att_levels if chans[lev] % width]
        if bad:
            _refuse(f"attention_head_dim={width}", f"attention widths {bad} are not divisible by the head width")
        head_kw = dict(num_head_channels=width)
    return UNetConfig(
        in_channels=config["in_channels"], out_channels=config["out_channels"], model_channels=mc,
        channel_mult=mult, num_res_blocks=config["layers_per_block"],
        attention_resolutions=tuple(2 ** lev for lev, a in enumerate(attends) if a), **head_kw, context_dim=None,
        use_spatial_transformer=False, use_scale_shift_norm=config["resnet_time_scale_shift"] == "scale_shift",
        resblock_updown=kinds == {"resnet"}, dropout=float(config.get("dropout", 0.0)),
        num_classes=config.get("num_class_embeds"), norm_num_groups=groups,
    )


# ==============================================================================================
# The UNet: models
# ==============================================================================================
def _place_like(target: nn.Module, source: nn.Module) -> nn.Module:
    """Move ``target`` to ``source``'s device and floating dtype and copy its train / eval mode."""
    p, q = next(source.parameters(), None), next(target.parameters(), None)
    if p is not None and q is not None and (p.device, p.dtype) != (q.device, q.dtype):
        target = target.to(device=p.device, dtype=p.dtype)
    return target.train(source.training)


def unet_to_diffusers(unet: UNetModel):
    """Our UNet -> a diffusers ``UNet2DConditionModel`` (SpatialTransformer UNets) or ``UNet2DModel`` (ADM
    attention) with the same weights, on the same device and dtype, in the same train / eval mode.

    Call it as ``model(x, t, encoder_hidden_states=context, class_labels=y, encoder_attention_mask=mask).sample``
    (``encoder_hidden_states=None`` for a UNet without context; ``UNet2DModel``: ``model(x, t, class_labels=y)``).
    Raises :class:`NotConvertibleError` for options diffusers lacks (module docstring).
    """
    name, kwargs = unet_config_to_diffusers(unet)
    theirs = getattr(_diffusers(), name)(**kwargs)
    sd = unet_state_dict_to_diffusers(unet.state_dict(), unet.config)
    _load_exactly(theirs, sd, f"diffusers {name}")
    if unet.config.use_checkpoint:
        theirs.enable_gradient_checkpointing()
    return _place_like(theirs, unet)


def unet_from_diffusers(model) -> UNetModel:
    """A diffusers ``UNet2DConditionModel`` / ``UNet2DModel`` -> our :class:`~ldm_lite.unet.UNetModel` with the
    same weights (device, dtype and mode copied). Raises :class:`NotConvertibleError` for options the course's
    UNet does not have (:func:`unet_config_from_diffusers`)."""
    cfg = unet_config_from_diffusers(model)
    if getattr(model, "is_gradient_checkpointing", False):
        cfg = dataclasses.replace(cfg, use_checkpoint=True)
    ours = UNetModel.from_config(cfg)
    _load_exactly(ours, unet_state_dict_from_diffusers(model.state_dict(), cfg), "ldm-lite UNetModel")
    return _place_like(ours, model)


def _load_exactly(model: nn.Module, state_dict: dict, what: str) -> None:
    """``load_state_dict(strict=True)`` with a message that lists what did not map."""
    want = model.state_dict()
    missing = sorted(set(want) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(want))
    shapes = [k for k in set(want) & set(state_dict) if want[k].shape != state_dict[k].shape]
    if missing or unexpected or shapes:
        raise KeyError(f"the converted weights do not fit the {what}: missing {missing[:4]}, unexpected "
                       f"{unexpected[:4]}, other shapes {sorted(shapes)[:4]} (a bug in the key map, or a model "
                       "that does not match its config)")
    model.load_state_dict(state_dict, strict=True)


# ==============================================================================================
# The first stage
# ==============================================================================================
def _group_count(widths: list[int]) -> int:
    """The one GroupNorm group count of an autoencoder with these widths (ldm-lite: gcd(32, C) per layer)."""
    groups = {math.gcd(32, c) for c in widths}
    if len(groups) > 1:
        per = ", ".join(f"{c} -> {math.gcd(32, c)}" for c in widths)
        _refuse(f"GroupNorm group counts {sorted(groups)} (width -> groups: {per})",
                "ldm-lite's autoencoder uses gcd(32, C) groups at width C, diffusers' one norm_num_groups for every "
                "layer; an autoencoder whose widths are all multiples of 32 (e.g. ch=32) converts")
    return groups.pop()


def first_stage_config_to_diffusers(config: AutoencoderConfig | AutoencoderKL | VQModel,
                                    scaling_factor: float = 1.0) -> tuple[str, dict]:
    """The diffusers class name (``"AutoencoderKL"`` / ``"VQModel"``) and keyword arguments of our first stage.

    ``scaling_factor`` goes into diffusers' config (its pipelines multiply latents by it after encoding and
    divide before decoding): pass the LDM's ``scale_factor``.
    """
    cfg = config.config if isinstance(config, (AutoencoderKL, VQModel)) else config
    if cfg.ch_mult[0] != 1:
        _refuse(f"ch_mult[0]={cfg.ch_mult[0]}", "diffusers' encoder widens in conv_in to block_out_channels[0], "
                "ldm-lite's in the first ResnetBlock; use ch_mult starting with 1 and a larger ch")
    widths = [cfg.ch * m for m in cfg.ch_mult]
    common = dict(
        in_channels=cfg.in_channels, out_channels=cfg.in_channels,
        down_block_types=("DownEncoderBlock2D",) * len(widths), up_block_types=("UpDecoderBlock2D",) * len(widths),
        block_out_channels=tuple(widths), layers_per_block=cfg.num_res_blocks, act_fn="silu",
        latent_channels=cfg.z_channels, norm_num_groups=_group_count(widths), scaling_factor=float(scaling_factor),
        mid_block_add_attention=bool(cfg.use_mid_attn),
    )
    if cfg.reg == "kl":
        if cfg.z_channels != cfg.embed_dim:
            _refuse(f"z_channels={cfg.z_channels} != embed_dim={cfg.embed_dim}", "diffusers' AutoencoderKL has one "
                    "latent_channels for the encoder output and the latent (its quant_conv keeps the width)")
        return "AutoencoderKL", common
    return "VQModel", dict(common, vq_embed_dim=cfg.embed_dim, num_vq_embeddings=cfg.n_embed, norm_type="group")


def first_stage_config_from_diffusers(model_or_config, class_name: str | None = None) -> AutoencoderConfig:
    """The :class:`~ldm_lite.autoencoder.AutoencoderConfig` of a diffusers ``AutoencoderKL`` / ``VQModel``."""
    if class_name is None:
        class_name = type(model_or_config).__name__
        config = dict(model_or_config.config)
    else:
        config = dict(model_or_config)
    if class_name not in ("AutoencoderKL", "VQModel"):
        raise NotConvertibleError(f"cannot convert: a diffusers {class_name} -- ldm-lite's first stages correspond "
                                  "to AutoencoderKL and VQModel")
    levels = len(config["block_out_channels"])
    down, up = set(config["down_block_types"]), set(config["up_block_types"])
    if down != {"DownEncoderBlock2D"} or up != {"UpDecoderBlock2D"}:
        _refuse(f"down_block_types={tuple(config['down_block_types'])}, up_block_types="
                f"{tuple(config['up_block_types'])}", "ldm-lite's autoencoder is DownEncoderBlock2D / UpDecoderBlock2D")
    _expect(config, "act_fn", ("silu",), "LDM's autoencoder uses SiLU")
    if config.get("out_channels", config["in_channels"]) != config["in_channels"]:
        _refuse(f"out_channels={config['out_channels']} != in_channels={config['in_channels']}",
                "ldm-lite's autoencoder decodes to the channels it encodes")
    if class_name == "AutoencoderKL":
        _expect(config, "use_quant_conv", (True, None), "ldm-lite's autoencoder always has quant_conv")
        _expect(config, "use_post_quant_conv", (True, None), "ldm-lite's autoencoder always has post_quant_conv")
    else:
        _expect(config, "norm_type", ("group",), "MoVQ's spatial norm in the decoder")
    if 2 ** (levels - 1) not in VALID_FACTORS:
        _refuse(f"{levels} levels", f"ldm-lite's factors are f in {VALID_FACTORS}")
    chans = list(config["block_out_channels"])
    ch, ch_mult = _levels_from_widths(chans)
    groups = config.get("norm_num_groups", 32)
    if _group_count(chans) != groups:
        _refuse(f"norm_num_groups={groups}", f"ldm-lite's autoencoder uses gcd(32, C) = {_group_count(chans)} groups "
                f"at the widths {chans}")
    z = config["latent_channels"]
    kw = dict(f=2 ** (levels - 1), ch=ch, ch_mult=ch_mult, num_res_blocks=config["layers_per_block"], z_channels=z,
              in_channels=config["in_channels"], use_mid_attn=bool(config.get("mid_block_add_attention", True)))
    if class_name == "AutoencoderKL":
        return AutoencoderConfig(embed_dim=z, reg="kl", **kw)
    return AutoencoderConfig(embed_dim=config.get("vq_embed_dim") or z, reg="vq",
                             n_embed=config["num_vq_embeddings"], beta=0.25, **kw)


def first_stage_state_dict_to_diffusers(state_dict: dict, target_state_dict: dict, num_levels: int) -> dict:
    """Our first-stage state dict -> diffusers', keyed and shaped like ``target_state_dict`` (a diffusers model's).

    The names come from the course's existing diffusers -> CompVis key map
    (:mod:`ldm_lite.autoencoder.convert`), read backwards: each diffusers key is mapped to ours and fetched.
    """
    out = {}
    for key, ref in target_state_dict.items():
        ours = key if key == "quantize.embedding.weight" else _map_diffusers_key(key, num_levels)
        if ours is None or ours not in state_dict:
            raise KeyError(f"diffusers key {key!r} has no ldm-lite counterpart ({ours!r})")
        out[key] = state_dict[ours].reshape(ref.shape)  # 1x1 conv (C, C, 1, 1) -> Linear (C, C) in the attention
    return out


def first_stage_to_diffusers(ae: AutoencoderKL | VQModel, scaling_factor: float = 1.0):
    """Our ``AutoencoderKL`` / ``VQModel`` -> diffusers' ``AutoencoderKL`` / ``VQModel``, same weights.

    ``scaling_factor``: stored in diffusers' config (pass an LDM's ``scale_factor``). Our
    ``ae.encode(x).mean`` / ``.logvar`` equal diffusers' ``encode(x).latent_dist.mean`` / ``.logvar``;
    ``ae.encode_pre_quant(x)`` equals ``VQModel.encode(x).latents``; ``ae.decode(z)`` equals ``decode(z).sample``.
    Not carried over (training only): a VQ model's ``quantize.usage`` / ``dead_code_threshold`` and ``beta``.
    """
    if not isinstance(ae, (AutoencoderKL, VQModel)):
        raise TypeError(f"expected ldm-lite's AutoencoderKL or VQModel, got {type(ae).__name__}")
    name, kwargs = first_stage_config_to_diffusers(ae, scaling_factor)
    theirs = getattr(_diffusers(), name)(**kwargs)
    sd = first_stage_state_dict_to_diffusers(ae.state_dict(), theirs.state_dict(), len(ae.config.ch_mult))
    _load_exactly(theirs, sd, f"diffusers {name}")
    return _place_like(theirs, ae)


def first_stage_from_diffusers(model) -> AutoencoderKL | VQModel:
    """A diffusers ``AutoencoderKL`` / ``VQModel`` -> ours, same weights (names via the course's key map in
    :mod:`ldm_lite.autoencoder.convert`). A VQ model's usage statistics start fresh (all ones)."""
    cfg = first_stage_config_from_diffusers(model)
    ours = AutoencoderKL(cfg) if cfg.reg == "kl" else VQModel(cfg)
    sd = convert_diffusers_state_dict(model.state_dict(), len(cfg.ch_mult))
    if cfg.reg == "vq":
        sd["quantize.embedding.weight"] = model.state_dict()["quantize.embedding.weight"]
        sd["quantize.usage"] = torch.ones_like(ours.quantize.usage)
    _load_exactly(ours, sd, f"ldm-lite {type(ours).__name__}")
    return _place_like(ours, model)


# ==============================================================================================
# The schedule and a whole LDM
# ==============================================================================================
_PREDICTION_TYPES = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}
_SPACINGS = {"uniform": "leading", "leading": "leading", "trailing": "trailing"}


def ddim_scheduler_from_schedule(schedule, parameterization: str = "eps", timestep_spacing: str = "uniform",
                                 final_alpha_cumprod: str = "first", steps_offset: int = 1):
    """A diffusers ``DDIMScheduler`` that takes the steps of the course's :class:`~ldm_lite.diffusion.DDIMSampler`.

    The betas are passed as ``trained_betas`` (diffusers keeps them in float32, ours are float64: the step
    coefficients agree to ~1e-7). ``timestep_spacing="uniform"`` (CompVis, Stable Diffusion) is diffusers'
    ``"leading"`` with ``steps_offset=1``; ``final_alpha_cumprod="first"`` is ``set_alpha_to_one=False``;
    no clipping of x0. ``"quadratic"`` spacing has no diffusers equivalent.
    """
    if timestep_spacing not in _SPACINGS:
        _refuse(f"timestep_spacing={timestep_spacing!r}", "diffusers' DDIMScheduler has 'leading' (our 'uniform') "
                "and 'trailing'; CompVis' quadratic spacing is not among them")
    if parameterization not in _PREDICTION_TYPES:
        raise ValueError(f"unknown parameterization {parameterization!r}; use one of {sorted(_PREDICTION_TYPES)}")
    if final_alpha_cumprod not in ("first", "one"):
        raise ValueError(f"final_alpha_cumprod must be 'first' or 'one', got {final_alpha_cumprod!r}")
    betas = schedule.betas.detach().double().cpu().numpy()
    return _diffusers().DDIMScheduler(
        num_train_timesteps=len(betas), trained_betas=betas, clip_sample=False,
        set_alpha_to_one=final_alpha_cumprod == "one", steps_offset=steps_offset,
        prediction_type=_PREDICTION_TYPES[parameterization], timestep_spacing=_SPACINGS[timestep_spacing],
    )


def ldm_to_diffusers(model) -> dict[str, Any]:
    """A :class:`~ldm_lite.ldm.LatentDiffusion` -> ``{"unet", "vae", "scheduler"}`` in diffusers.

    ``vae`` is ``None`` for a pixel-space model; its config's ``scaling_factor`` is the LDM's ``scale_factor``.
    The cond stage is not converted: compute the condition with ``model.get_learned_conditioning(y)`` and
    pass its ``c_crossattn`` / ``context_mask`` / ``y`` as ``encoder_hidden_states`` / ``encoder_attention_mask``
    / ``class_labels`` (a ``c_concat`` image is concatenated to the latent on the channel axis, as ours).
    A first stage diffusers cannot express (e.g. mixed GroupNorm groups) raises :class:`NotConvertibleError`;
    decode with the course's first stage then: ``model.decode_first_stage(z)``.
    """
    first_stage = model.first_stage
    vae = None
    if first_stage is not None and not getattr(first_stage, "pixel_space", False):  # pixel space: no autoencoder
        vae = first_stage_to_diffusers(first_stage, scaling_factor=float(model.scale_factor))
    return dict(unet=unet_to_diffusers(model.unet), vae=vae,
                scheduler=ddim_scheduler_from_schedule(model.schedule, model.parameterization))
