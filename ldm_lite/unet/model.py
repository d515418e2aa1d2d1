"""The time-conditional UNet ε_θ(z_t, t, τ_θ(y)) of latent diffusion (paper Sec. 3.3, Eq. 3; App. E).

A UNet (Ronneberger et al.) in the ADM variant (Dhariwal & Nichol) with the LDM additions:

* an **encoder** of ``len(channel_mult)`` levels; level ``l`` has ``num_res_blocks`` :class:`ResBlock`\\ s
  with ``model_channels · channel_mult[l]`` channels, followed (except at the last level) by a
  downsampling by 2. The "downsampling rate" ``ds`` of level ``l`` is ``2**l``;
* at every level whose ``ds`` is in ``attention_resolutions`` each ResBlock is followed by a
  :class:`SpatialTransformer` (self-attention + cross-attention to the conditioning ``τ_θ(y)``, Eq. 3)
  -- or, with ``use_spatial_transformer=False``, by the ADM :class:`AttentionBlock` (no conditioning;
  the paper's unconditional models);
* a **middle block** ResBlock → attention → ResBlock at the lowest resolution;
* a **decoder** mirroring the encoder with ``num_res_blocks + 1`` ResBlocks per level, each taking the
  matching encoder activation concatenated on the channel axis (the skip connections);
* the diffusion step ``t`` enters every ResBlock through a sinusoidal embedding and a 2-layer MLP
  (width ``4 · model_channels``); a class label ``y`` (``num_classes``) is added to it;
* the output conv is zero-initialised, so a fresh model predicts exactly 0.

Argument names and module names are those of ``openaimodel.py`` in the CompVis code
(``input_blocks``, ``middle_block``, ``output_blocks``, ``out``, ``time_embed``, ``label_emb``), so its
checkpoints map onto this model key by key. The paper's UNet hyper-parameters (App. E, Tab. 12-15)
are in :data:`PAPER_CONFIGS`.
"""

from __future__ import annotations

import dataclasses
import numbers
from dataclasses import MISSING, dataclass
from typing import NamedTuple, Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ldm_lite.config import setting
from ldm_lite.unet.attention import AttentionBlock, SpatialTransformer
from ldm_lite.unet.blocks import (
    Downsample,
    ResBlock,
    TimestepEmbedSequential,
    Upsample,
    normalization,
    timestep_embedding,
    zero_module,
)

__all__ = ["UNetConfig", "UNetModel", "ShapeRow", "count_parameters", "diffusers_equivalent", "PAPER_CONFIGS"]


@dataclass
class UNetConfig:
    """Every constructor argument of :class:`UNetModel` (``UNetModel(**dataclasses.asdict(cfg))``).

    See :class:`UNetModel` for the meaning of each field.
    """

    in_channels: int = setting(MISSING, "channels of the (latent) input (+ a concatenated condition's)", flag=False)
    out_channels: int = setting(MISSING, "channels predicted (the latent's)", flag=False)
    model_channels: int = setting(MISSING, "base width C; level l has C * channel_mult[l] channels")
    channel_mult: tuple[int, ...] = setting((1, 2, 4, 8), "width multiplier per level (len - 1 downsamplings), e.g. 1,2,2")
    num_res_blocks: int = setting(2, "ResBlocks per level in the encoder (the decoder has one more)")
    attention_resolutions: tuple[int, ...] = setting((4, 2, 1), "downsampling rates with attention, e.g. 2,4")
    num_heads: int = setting(-1, "attention heads (-1: from num_head_channels)", type="int")
    num_head_channels: int = setting(-1, "channels per attention head (-1: from num_heads)", type="int")
    context_dim: int | None = setting(None, "width of the cross-attention context (None: no cross-attention)",
                                      flag=False)
    transformer_depth: int = setting(1, "transformer blocks per attention level")
    use_spatial_transformer: bool = setting(True, "spatial transformers (with cross-attention) at attention levels")
    use_scale_shift_norm: bool = setting(False, "FiLM-style time conditioning in the ResBlocks")
    resblock_updown: bool = setting(False, "resample with ResBlocks instead of Up/Downsample")
    dropout: float = setting(0.0, "dropout in the ResBlocks", type="probability")
    num_classes: int | None = setting(None, "classes of a label embedding added to the time embedding", flag=False)
    use_checkpoint: bool = setting(False, "gradient checkpointing (saves memory, costs a re-forward)")
    use_linear_in_transformer: bool = setting(False, "linear instead of 1x1-conv projections in the transformers")
    conv_resample: bool = setting(True, "learned (conv) instead of fixed resampling")
    norm_num_groups: int = setting(32, "GroupNorm groups (must divide every level's channels)")
    coord_channels: bool = setting(False, "two coordinate input channels (x, y in [-1, 1]); helps layout models "
                                          "place objects")

    def __post_init__(self):
        self.channel_mult = tuple(self.channel_mult)
        self.attention_resolutions = tuple(self.attention_resolutions)
        # sizes first: a zero width builds (PyTorch allows empty convolutions) and fails only in forward
        for name in ("in_channels", "out_channels", "model_channels", "num_res_blocks", "transformer_depth",
                     "norm_num_groups"):
            _check_positive(name, getattr(self, name))
        if not self.channel_mult:
            raise ValueError("UNetConfig: channel_mult needs at least one level, e.g. channel_mult=(1, 2, 4)")
        for m in self.channel_mult:
            _check_positive("every channel_mult entry", m, f"(got channel_mult={self.channel_mult}; e.g. (1, 2, 4))")
        for r in self.attention_resolutions:
            _check_positive("every attention_resolutions entry", r,
                            f"(got {self.attention_resolutions}; downsampling rates such as (4, 2, 1), or () for none)")
        if self.context_dim is not None:
            _check_positive("context_dim", self.context_dim, "(or None for no cross-attention)")
        if self.num_classes is not None:
            _check_positive("num_classes", self.num_classes, "(or None for no class labels)")
        for name in ("num_heads", "num_head_channels"):
            v = getattr(self, name)
            if v != -1:
                _check_positive(name, v, "(or -1 = unset; give exactly one of num_heads / num_head_channels)")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"UNetConfig: dropout must lie in [0, 1), got {self.dropout!r}")


def _check_positive(name: str, value, note: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"UNetConfig: {name} must be a positive int (>= 1), got {value!r} {note}".rstrip())


class ShapeRow(NamedTuple):
    """One row of :meth:`UNetModel.shape_trace`: block name, the layers inside it, output shape."""

    name: str
    layers: str
    shape: tuple[int, ...]


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of ``module`` (works for models on the ``meta`` device)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


class UNetModel(nn.Module):
    """The LDM denoiser ε_θ(x_t, t, c) (Sec. 3.3; architecture of App. E).

    Args:
        in_channels: channels of the (latent) input, e.g. 4 for a KL-f8 autoencoder; add the
            channels of a concatenated condition here (``conditioning_key="concat"``).
        out_channels: channels predicted (usually ``in_channels`` of the latent).
        model_channels: base width C; level ``l`` has ``C · channel_mult[l]`` channels.
        channel_mult: width multiplier per level; ``len(channel_mult) - 1`` downsamplings, so
            H and W must be divisible by ``2 ** (len(channel_mult) - 1)``.
        num_res_blocks: ResBlocks per level in the encoder (the decoder has one more).
        attention_resolutions: downsampling rates ``ds`` (1, 2, 4, ...) at which attention layers
            are added -- not pixel resolutions (``ds = 4`` on a 32×32 latent is the 8×8 level).
        num_heads / num_head_channels: give exactly one; either a fixed number of heads or a fixed
            head width (heads = channels // num_head_channels).
        context_dim: width of the cross-attention conditioning τ_θ(y) (B, M, context_dim);
            ``None`` = no cross-attention conditioning.
        transformer_depth: BasicTransformerBlocks per SpatialTransformer.
        use_spatial_transformer: SpatialTransformer (with cross-attention) at the attention levels;
            ``False`` = the ADM self-attention block (paper's unconditional models; no context).
            The CompVis default is ``False``; ours is ``True`` because the course is about conditioning.
        use_scale_shift_norm: FiLM-style time conditioning in the ResBlocks.
        resblock_updown: resample with ResBlocks(up/down) instead of Up/Downsample.
        dropout: dropout in the ResBlocks (the transformers have none, as in LDM).
        num_classes: class-conditional via a label embedding added to the time embedding;
            ``y`` (B,) is then required.
        use_checkpoint: gradient checkpointing of every block (saves memory, costs a re-forward).
        use_linear_in_transformer: linear instead of 1×1-conv projections in SpatialTransformers.
        conv_resample: learned (conv) instead of fixed (avg-pool / nearest) resampling.
        norm_num_groups: GroupNorm groups (32 in LDM); every level width must be divisible by it.
        coord_channels: append two fixed channels, x and y running from -1 to 1 across the canvas, to the
            input before the first convolution (CoordConv, Liu et al. 2018). Not in LDM: a convolution is
            translation-equivariant and knows where it is only through the zero padding at the border, which
            on a 16×16 latent is a weak signal; a layout model whose boxes arrive through cross-attention
            needs "where am I" at every position (chapter 06). ``in_channels`` stays the latent's; the
            coordinates span the canvas actually sampled, so a 2× canvas stretches them.

    ``forward(x, timesteps, context=None, y=None, context_mask=None)``:
    ``x`` (B, in_channels, H, W), ``timesteps`` (B,) or a scalar, ``context`` (B, M, context_dim),
    ``y`` (B,) long, ``context_mask`` (B, M) bool (True = real token) → (B, out_channels, H, W).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        model_channels: int,
        channel_mult: Sequence[int] = (1, 2, 4, 8),
        num_res_blocks: int = 2,
        attention_resolutions: Sequence[int] = (4, 2, 1),
        num_heads: int = -1,
        num_head_channels: int = -1,
        context_dim: int | None = None,
        transformer_depth: int = 1,
        use_spatial_transformer: bool = True,
        use_scale_shift_norm: bool = False,
        resblock_updown: bool = False,
        dropout: float = 0.0,
        num_classes: int | None = None,
        use_checkpoint: bool = False,
        use_linear_in_transformer: bool = False,
        conv_resample: bool = True,
        norm_num_groups: int = 32,
        coord_channels: bool = False,
    ):
        super().__init__()
        cfg = UNetConfig(
            in_channels=in_channels, out_channels=out_channels, model_channels=model_channels,
            channel_mult=tuple(channel_mult), num_res_blocks=num_res_blocks,
            attention_resolutions=tuple(attention_resolutions), num_heads=num_heads,
            num_head_channels=num_head_channels, context_dim=context_dim, transformer_depth=transformer_depth,
            use_spatial_transformer=use_spatial_transformer, use_scale_shift_norm=use_scale_shift_norm,
            resblock_updown=resblock_updown, dropout=dropout, num_classes=num_classes,
            use_checkpoint=use_checkpoint, use_linear_in_transformer=use_linear_in_transformer,
            conv_resample=conv_resample, norm_num_groups=norm_num_groups, coord_channels=coord_channels,
        )
        self._validate(cfg)
        self.config = cfg
        self.in_channels, self.out_channels, self.model_channels = in_channels, out_channels, model_channels
        self.channel_mult = cfg.channel_mult
        self.num_classes = num_classes
        self.context_dim = context_dim
        self.use_checkpoint = use_checkpoint
        self.coord_channels = bool(coord_channels)

        emb_dim = 4 * model_channels
        # t ↦ sinusoidal(t) (B, C) ↦ MLP ↦ (B, 4C)
        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if num_classes is not None:
            self.label_emb = nn.Embedding(num_classes, emb_dim)

        def res(ch_in, ch_out, **kw):
            return ResBlock(ch_in, emb_dim, dropout, out_channels=ch_out, use_scale_shift_norm=use_scale_shift_norm,
                            norm_num_groups=norm_num_groups, **kw)

        def attn(ch):
            heads, d_head = self._heads(ch)
            if use_spatial_transformer:
                # as in LDM (and diffusers) the transformers get no dropout
                return SpatialTransformer(ch, heads, d_head, depth=transformer_depth, context_dim=context_dim,
                                          use_linear=use_linear_in_transformer, norm_num_groups=norm_num_groups)
            return AttentionBlock(ch, num_heads=heads, norm_num_groups=norm_num_groups)

        # ---- encoder -------------------------------------------------------------------------
        conv_in = nn.Conv2d(in_channels + 2 * self.coord_channels, model_channels, 3, padding=1)
        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(conv_in)])
        skip_chans = [model_channels]  # channels of every activation the decoder will concatenate
        ch, ds = model_channels, 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [res(ch, mult * model_channels)]
                ch = mult * model_channels
                if ds in cfg.attention_resolutions:
                    layers.append(attn(ch))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skip_chans.append(ch)
            if level != len(cfg.channel_mult) - 1:
                down = res(ch, ch, down=True) if resblock_updown else Downsample(ch, conv_resample)
                self.input_blocks.append(TimestepEmbedSequential(down))
                skip_chans.append(ch)
                ds *= 2

        # ---- middle --------------------------------------------------------------------------
        self.middle_block = TimestepEmbedSequential(res(ch, ch), attn(ch), res(ch, ch))

        # ---- decoder -------------------------------------------------------------------------
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = [res(ch + skip_chans.pop(), model_channels * mult)]
                ch = model_channels * mult
                if ds in cfg.attention_resolutions:
                    layers.append(attn(ch))
                if level and i == num_res_blocks:
                    layers.append(res(ch, ch, up=True) if resblock_updown else Upsample(ch, conv_resample))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        self.out = nn.Sequential(
            normalization(ch, norm_num_groups),
            nn.SiLU(),
            zero_module(nn.Conv2d(ch, out_channels, 3, padding=1)),
        )

    # ------------------------------------------------------------------------------------------
    @staticmethod
    def _validate(cfg: UNetConfig) -> None:
        if (cfg.num_heads == -1) == (cfg.num_head_channels == -1):
            raise ValueError(
                "give exactly one of num_heads (a fixed number of heads) or num_head_channels (a fixed "
                f"head width); got num_heads={cfg.num_heads}, num_head_channels={cfg.num_head_channels}"
            )
        if len(cfg.channel_mult) < 1:
            raise ValueError("channel_mult needs at least one level")
        rates = [2 ** i for i in range(len(cfg.channel_mult))]
        unreachable = sorted(set(cfg.attention_resolutions) - set(rates))
        if unreachable:
            raise ValueError(
                f"attention_resolutions {list(cfg.attention_resolutions)} contains {unreachable}, but with "
                f"channel_mult={list(cfg.channel_mult)} the levels have downsampling rates {rates}; "
                "attention_resolutions are downsampling rates ds (1 = full resolution), not pixel sizes."
            )
        if cfg.context_dim is not None and not cfg.use_spatial_transformer:
            raise ValueError(
                "context_dim needs use_spatial_transformer=True: the ADM AttentionBlock has no cross-attention"
            )
        if cfg.num_classes is not None and cfg.num_classes < 1:
            raise ValueError(f"num_classes must be a positive int or None, got {cfg.num_classes}")

    def _heads(self, ch: int) -> tuple[int, int]:
        """(number of heads, head width) for an attention layer with ``ch`` channels."""
        nh, nhc = self.config.num_heads, self.config.num_head_channels
        if nhc != -1:
            if ch % nhc:
                raise ValueError(f"{ch} channels at an attention level are not divisible by num_head_channels={nhc}")
            return ch // nhc, nhc
        if ch % nh:
            raise ValueError(f"{ch} channels at an attention level are not divisible by num_heads={nh}")
        return nh, ch // nh

    def to_config(self) -> UNetConfig:
        """A copy of the constructor arguments (``UNetModel.from_config(m.to_config())`` rebuilds it)."""
        return dataclasses.replace(self.config)

    @classmethod
    def from_config(cls, config: UNetConfig | dict) -> "UNetModel":
        """Build a model from a :class:`UNetConfig` (or a dict of its fields)."""
        if isinstance(config, UNetConfig):
            config = dataclasses.asdict(config)
        return cls(**config)

    @property
    def downsampling_factor(self) -> int:
        """H and W of the input must be multiples of this (``2 ** (len(channel_mult) - 1)``)."""
        return 2 ** (len(self.channel_mult) - 1)

    # ------------------------------------------------------------------------------------------
    def _check_inputs(self, x, timesteps, context, y, context_mask) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"x must have shape (B, in_channels={self.in_channels}, H, W), got {tuple(x.shape)}"
            )
        b, _, hh, ww = x.shape
        m = self.downsampling_factor
        if hh % m or ww % m:
            raise ValueError(
                f"input size {hh}×{ww} is not divisible by {m} = 2**(len(channel_mult)-1) "
                f"(channel_mult={list(self.channel_mult)}); pad or crop to a multiple of {m}, "
                "e.g. via the autoencoder's image size."
            )
        if not torch.is_tensor(timesteps):
            timesteps = torch.tensor(timesteps, device=x.device)
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(b)
        elif timesteps.shape != (b,):
            raise ValueError(f"timesteps must have shape (B,) = ({b},) or be a scalar, got {tuple(timesteps.shape)}")
        if self.num_classes is None and y is not None:
            raise ValueError("y was given but the model is not class-conditional; build it with num_classes=...")
        if self.num_classes is not None:
            if y is None:
                raise ValueError(
                    f"the model is class-conditional (num_classes={self.num_classes}); pass labels y of shape (B,)"
                )
            if not torch.is_tensor(y) or y.shape != (b,):
                raise ValueError(f"y must have shape (B,) = ({b},), got {tuple(getattr(y, 'shape', ())) or y!r}")
            if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
                raise TypeError(f"class labels y must be integers in 0..{self.num_classes - 1}, got dtype {y.dtype}; "
                                "pass a long tensor, e.g. y.long() or torch.tensor([3])")
        if self.context_dim is None:
            if context is not None:
                raise ValueError(
                    "a context was passed but the model has no cross-attention conditioning; build it with "
                    f"context_dim={context.shape[-1]}" + (" (and use_spatial_transformer=True)"
                                                         if not self.config.use_spatial_transformer else "")
                )
            if context_mask is not None:
                raise ValueError("context_mask was given but the model has no cross-attention conditioning")
        else:
            if context is None:
                raise ValueError(
                    f"the model was built with context_dim={self.context_dim}; pass context of shape "
                    f"(B, N_ctx, {self.context_dim}) (for unconditional samples: the embedding of the empty condition)"
                )
            if context.ndim != 3 or context.shape[0] != b:
                raise ValueError(
                    f"context must have shape (B={b}, N_ctx, {self.context_dim}), got {tuple(context.shape)}"
                )
            if context.shape[-1] != self.context_dim:
                raise ValueError(
                    f"context has last dimension {context.shape[-1]}, but the UNet was built with "
                    f"context_dim={self.context_dim}; build it with context_dim={context.shape[-1]} or "
                    f"project the conditioning to {self.context_dim} features."
                )
        return timesteps

    def _run(self, block: nn.Module, h, emb, context, context_mask):
        if self.use_checkpoint and self.training and torch.is_grad_enabled():
            return checkpoint(block, h, emb, context, context_mask, use_reentrant=False)
        return block(h, emb, context, context_mask)

    def forward(self, x: torch.Tensor, timesteps, context: torch.Tensor | None = None,
                y: torch.Tensor | None = None, context_mask: torch.Tensor | None = None) -> torch.Tensor:
        """ε_θ(x_t, t, c): (B, in_channels, H, W) → (B, out_channels, H, W). See the class docstring."""
        timesteps = self._check_inputs(x, timesteps, context, y, context_mask)
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels).to(x.dtype))  # (B, 4C)
        if self.num_classes is not None:
            try:  # the range is checked where labels enter (LatentDiffusion); here only the error is translated
                emb = emb + self.label_emb(y)
            except IndexError:
                raise ValueError(
                    f"class label out of range: y holds {int(y.min())}..{int(y.max())}, but the UNet has "
                    f"num_classes={self.num_classes}, so labels must lie in 0..{self.num_classes - 1}; fix the labels "
                    "or build the UNet with more classes"
                ) from None
        hs = []
        h = torch.cat([x, self.coordinates(x)], dim=1) if self.coord_channels else x
        for block in self.input_blocks:
            h = self._run(block, h, emb, context, context_mask)
            hs.append(h)
        h = self._run(self.middle_block, h, emb, context, context_mask)
        for block in self.output_blocks:
            h = torch.cat([h, hs.pop()], dim=1)
            h = self._run(block, h, emb, context, context_mask)
        return self.out(h)

    @staticmethod
    def coordinates(x: torch.Tensor) -> torch.Tensor:
        """The two coordinate channels of ``coord_channels=True`` for an input like ``x``: (B, 2, H, W),
        channel 0 = x (column) and channel 1 = y (row), each running linearly from -1 to 1."""
        b, _, hh, ww = x.shape
        ys = torch.linspace(-1.0, 1.0, hh, device=x.device, dtype=x.dtype)
        xs = torch.linspace(-1.0, 1.0, ww, device=x.device, dtype=x.dtype)
        grid = torch.stack([xs[None, :].expand(hh, ww), ys[:, None].expand(hh, ww)])
        return grid[None].expand(b, 2, hh, ww)

    # ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def shape_trace(self, x: torch.Tensor, timesteps, context: torch.Tensor | None = None,
                    y: torch.Tensor | None = None, context_mask: torch.Tensor | None = None) -> list[ShapeRow]:
        """Run one forward pass and return the output shape of every block, in execution order.

        Rows are ``ShapeRow(name, layers, shape)``: ``time_embed``, ``input_blocks.i``,
        ``middle_block``, ``output_blocks.i`` (after the skip concat), ``out``. E.g.::

            for name, layers, shape in unet.shape_trace(z, t, c):
                print(f"{name:18s} {layers:40s} {shape}")
        """
        rows: list[ShapeRow] = []
        named = [("time_embed", self.time_embed)]
        named += [(f"input_blocks.{i}", b) for i, b in enumerate(self.input_blocks)]
        named += [("middle_block", self.middle_block)]
        named += [(f"output_blocks.{i}", b) for i, b in enumerate(self.output_blocks)]
        named += [("out", self.out)]

        def describe(mod: nn.Module) -> str:
            if isinstance(mod, TimestepEmbedSequential):
                parts = []
                for layer in mod:
                    name = type(layer).__name__
                    if isinstance(layer, ResBlock) and layer.updown:
                        name += "(up)" if isinstance(layer.h_upd, Upsample) else "(down)"
                    parts.append(name)
                return " + ".join(parts)
            if mod is self.out:
                return "GroupNorm + SiLU + Conv2d"
            return "Linear + SiLU + Linear"

        handles = []
        for name, mod in named:
            def hook(module, args, output, _name=name, _layers=describe(mod)):
                rows.append(ShapeRow(_name, _layers, tuple(output.shape)))
            handles.append(mod.register_forward_hook(hook))
        was_ckpt = self.use_checkpoint
        self.use_checkpoint = False
        try:
            self(x, timesteps, context=context, y=y, context_mask=context_mask)
        finally:
            self.use_checkpoint = was_ckpt
            for hd in handles:
                hd.remove()
        return rows


def diffusers_equivalent(config: UNetConfig) -> tuple[str, dict]:
    """The diffusers class name and keyword arguments of the same architecture as ``config``.

    ``UNet2DConditionModel`` for SpatialTransformer UNets, ``UNet2DModel`` for ADM-attention ones.
    Used by the tests (identical parameter counts and outputs) and the throughput benchmark; this
    module does not import diffusers. Notes on the mapping: diffusers calls the LDM
    ``model_channels · channel_mult`` ``block_out_channels``, ``num_res_blocks`` ``layers_per_block``;
    in ``UNet2DConditionModel`` ``attention_head_dim`` is (for historical reasons) the number of
    heads, in ``UNet2DModel`` it is the head width. Both use ``[cos | sin]`` time embeddings with
    ``flip_sin_to_cos=True, freq_shift=0`` like LDM.
    """
    cfg = config
    if cfg.coord_channels:
        raise ValueError("diffusers' UNets have no coordinate channels (coord_channels=True is ldm-lite's addition)")
    if not cfg.conv_resample:
        raise ValueError("diffusers' UNets have no conv_resample=False option")
    if cfg.channel_mult[0] != 1:
        raise ValueError(
            f"channel_mult[0] = {cfg.channel_mult[0]}: diffusers' UNets widen the stem (conv_in, time embedding) "
            "to block_out_channels[0], LDM's widens inside the first ResBlock, so the weights do not map; use "
            "channel_mult starting with 1 and raise model_channels instead"
        )
    chans = [cfg.model_channels * m for m in cfg.channel_mult]
    attn = [2 ** level in cfg.attention_resolutions for level in range(len(chans))]
    common = dict(
        in_channels=cfg.in_channels, out_channels=cfg.out_channels, block_out_channels=tuple(chans),
        layers_per_block=cfg.num_res_blocks, norm_num_groups=cfg.norm_num_groups, dropout=cfg.dropout,
        resnet_time_scale_shift="scale_shift" if cfg.use_scale_shift_norm else "default",
        num_class_embeds=cfg.num_classes, flip_sin_to_cos=True, freq_shift=0,
    )

    def heads(ch):
        return ch // cfg.num_head_channels if cfg.num_head_channels != -1 else cfg.num_heads

    if cfg.use_spatial_transformer:
        if cfg.resblock_updown:
            raise ValueError("diffusers' UNet2DConditionModel has no resblock_updown option")
        return "UNet2DConditionModel", dict(
            common,
            down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn),
            up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
            mid_block_type="UNetMidBlock2DCrossAttn",
            # no context: per-level "context" width = the level's width, i.e. attn2 is self-attention
            cross_attention_dim=cfg.context_dim if cfg.context_dim is not None else tuple(chans),
            attention_head_dim=tuple(heads(c) for c in chans),
            transformer_layers_per_block=cfg.transformer_depth,
            use_linear_projection=cfg.use_linear_in_transformer,
        )
    updown = "resnet" if cfg.resblock_updown else "conv"
    return "UNet2DModel", dict(
        common,
        down_block_types=tuple(
            "AttnDownBlock2D" if a else ("ResnetDownsampleBlock2D" if cfg.resblock_updown else "DownBlock2D")
            for a in attn),
        up_block_types=tuple(
            "AttnUpBlock2D" if a else ("ResnetUpsampleBlock2D" if cfg.resblock_updown else "UpBlock2D")
            for a in reversed(attn)),
        # head width; exact for num_head_channels, only the parameter count is exact for num_heads
        attention_head_dim=cfg.num_head_channels if cfg.num_head_channels != -1 else chans[0] // cfg.num_heads,
        downsample_type=updown, upsample_type=updown,
        attn_norm_num_groups=cfg.norm_num_groups,  # else diffusers drops the mid-block GroupNorm with scale_shift
    )


# ----------------------------------------------------------------------------------------------
# The paper's UNets (App. E) as configs. Source: the configs of CompVis/latent-diffusion.
# ----------------------------------------------------------------------------------------------
PAPER_CONFIGS: dict[str, UNetConfig] = {
    # Tab. 12 (unconditional): CelebA-HQ / FFHQ / LSUN-Bedrooms 256², LDM-4 on a VQ-f4 latent 64×64×3.
    "celebahq-ldm-vq-4": UNetConfig(
        in_channels=3, out_channels=3, model_channels=224, channel_mult=(1, 2, 3, 4), num_res_blocks=2,
        attention_resolutions=(8, 4, 2), num_head_channels=32, use_spatial_transformer=False),
    # Tab. 12: LSUN-Churches 256², LDM-8 on a KL-f8 latent 32×32×4.
    "lsun_churches-ldm-kl-8": UNetConfig(
        in_channels=4, out_channels=4, model_channels=192, channel_mult=(1, 2, 2, 4, 4), num_res_blocks=2,
        attention_resolutions=(1, 2, 4, 8), num_heads=8, use_scale_shift_norm=True, resblock_updown=True,
        use_spatial_transformer=False),
    # ImageNet class-conditional LDM-8 (VQ-f8, 32×32×4); the class embedding (512) enters by cross-attention.
    "cin-ldm-vq-f8": UNetConfig(
        in_channels=4, out_channels=4, model_channels=256, channel_mult=(1, 2, 4), num_res_blocks=2,
        attention_resolutions=(4, 2, 1), num_head_channels=32, context_dim=512),
    # ImageNet class-conditional LDM-4 (cin256-v2, VQ-f4 64×64×3), Tab. 3 / Tab. 15.
    "cin256-v2": UNetConfig(
        in_channels=3, out_channels=3, model_channels=192, channel_mult=(1, 2, 3, 5), num_res_blocks=2,
        attention_resolutions=(8, 4, 2), num_heads=1, context_dim=512),
    # Text-to-image LDM-KL-8 on LAION (txt2img-1p4B): this UNet + a 32-layer BERT-like text encoder (1280).
    "txt2img-1p4B": UNetConfig(
        in_channels=4, out_channels=4, model_channels=320, channel_mult=(1, 2, 4, 4), num_res_blocks=2,
        attention_resolutions=(4, 2, 1), num_heads=8, context_dim=1280, use_checkpoint=True),
    # Stable Diffusion v1.x: the same UNet with CLIP ViT-L/14 text features (768).
    "stable-diffusion-v1": UNetConfig(
        in_channels=4, out_channels=4, model_channels=320, channel_mult=(1, 2, 4, 4), num_res_blocks=2,
        attention_resolutions=(4, 2, 1), num_heads=8, context_dim=768, use_checkpoint=True),
}
# FFHQ and LSUN-Bedrooms use the CelebA-HQ UNet.
PAPER_CONFIGS["ffhq-ldm-vq-4"] = dataclasses.replace(PAPER_CONFIGS["celebahq-ldm-vq-4"])
PAPER_CONFIGS["lsun_bedrooms-ldm-vq-4"] = dataclasses.replace(PAPER_CONFIGS["celebahq-ldm-vq-4"])
