"""Attention layers of the LDM UNet: the cross-attention conditioning mechanism (paper Sec. 3.3, Eq. 3).

The paper conditions the UNet on an input ``y`` (a caption, a class, a layout, ...) by encoding it
with a domain-specific encoder ``τ_θ(y) ∈ R^{M × d_τ}`` and letting the UNet's flattened feature
maps ``φ_i(z_t) ∈ R^{N × d_ε^i}`` attend to it (Eq. 3)::

    Attention(Q, K, V) = softmax(Q Kᵀ / √d) · V,
    Q = W_Q^(i) · φ_i(z_t),   K = W_K^(i) · τ_θ(y),   V = W_V^(i) · τ_θ(y).

In the code this lives in a small transformer that sits inside the UNet at selected resolutions
(:class:`SpatialTransformer`): the feature map (B, C, H, W) is normalised, projected and flattened
to a sequence of ``N = H·W`` tokens, passed through :class:`BasicTransformerBlock`\\ s (self-attention,
then cross-attention to the context, then a GEGLU feed-forward; each pre-LayerNorm with a residual),
and projected back onto the feature map with a zero-initialised projection.

:class:`AttentionBlock` is the older, context-free self-attention block of the ADM UNet (Dhariwal &
Nichol) that the paper's *unconditional* models use (``use_spatial_transformer=False`` in their
configs, e.g. CelebA-HQ LDM-4). It is kept so those configurations, and their parameter counts,
can be built exactly.

Names follow ``ldm/modules/attention.py`` of the CompVis code (``to_q``, ``to_k``, ``to_v``,
``to_out.0``, ``attn1``, ``attn2``, ``ff.net.0.proj``, ``proj_in``, ``proj_out``), which are also the
names diffusers uses inside its ``Transformer2DModel``.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from ldm_lite.unet.blocks import normalization, zero_module

__all__ = [
    "CrossAttention",
    "GEGLU",
    "FeedForward",
    "BasicTransformerBlock",
    "SpatialTransformer",
    "AttentionBlock",
    "record_attention",
]


def _check_context(context: torch.Tensor, expected_dim: int, batch: int, where: str) -> None:
    if context.ndim != 3:
        hint = " (add a token axis with context[:, None, :])" if context.ndim == 2 else ""
        raise ValueError(
            f"{where}: context must have shape (B, N_ctx, context_dim), got shape {tuple(context.shape)}{hint}"
        )
    if context.shape[-1] != expected_dim:
        raise ValueError(
            f"{where}: context has last dimension {context.shape[-1]}, but the layer was built for "
            f"context_dim={expected_dim}; build the model with context_dim={context.shape[-1]} "
            f"or project the conditioning to {expected_dim} features."
        )
    if context.shape[0] != batch:
        raise ValueError(
            f"{where}: context batch size {context.shape[0]} does not match the input's batch size {batch}"
        )


def _check_mask(mask: torch.Tensor, batch: int, n_ctx: int) -> torch.Tensor:
    if mask.shape != (batch, n_ctx):
        raise ValueError(
            f"context mask must have shape (B, N_ctx) = ({batch}, {n_ctx}), got {tuple(mask.shape)}"
        )
    if mask.dtype != torch.bool:
        if mask.is_floating_point():
            raise TypeError("context mask must be a bool (or integer 0/1) tensor with True = keep the token")
        mask = mask.bool()
    if not bool(mask.any(dim=-1).all()):
        raise ValueError("context mask hides every token of some sample; keep at least one token (e.g. BOS/CLS)")
    return mask


# ----------------------------------------------------------------------------------------------
# Cross-attention (Eq. 3)
# ----------------------------------------------------------------------------------------------
class CrossAttention(nn.Module):
    """Multi-head (cross-)attention, Eq. 3 of the paper.

    ``softmax(Q Kᵀ / √d_head) V`` with ``Q = x W_Q`` from the image tokens and ``K = c W_K``,
    ``V = c W_V`` from the context ``c`` (``c = x`` when no context is given: self-attention).
    Computed with :func:`torch.nn.functional.scaled_dot_product_attention` (fused kernels on CPU
    and GPU). Set ``store_attention = True`` to compute the softmax explicitly instead and keep the
    attention probabilities in ``last_attention`` (B, heads, N, M) for visualisation.

    Args:
        query_dim: feature width of ``x``.
        context_dim: feature width of the context (default: ``query_dim``, i.e. self-attention).
        heads, dim_head: number and width of the heads; inner width ``heads · dim_head``.
        dropout: dropout on the output projection (as in LDM).

    Shapes: ``x`` (B, N, query_dim), ``context`` (B, M, context_dim), ``mask`` (B, M) bool with
    ``True`` = attend to this token (False for padding) → (B, N, query_dim).
    """

    def __init__(self, query_dim: int, context_dim: int | None = None, heads: int = 8, dim_head: int = 64,
                 dropout: float = 0.0):
        super().__init__()
        inner_dim = heads * dim_head
        self.query_dim = query_dim
        self.context_dim = context_dim if context_dim is not None else query_dim
        self.heads = heads
        self.dim_head = dim_head
        self.scale = dim_head ** -0.5
        self.to_q = nn.Linear(query_dim, inner_dim, bias=False)
        self.to_k = nn.Linear(self.context_dim, inner_dim, bias=False)
        self.to_v = nn.Linear(self.context_dim, inner_dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner_dim, query_dim), nn.Dropout(dropout))
        self.store_attention = False
        self.last_attention: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, _ = x.shape
        if context is None:
            if self.context_dim != self.query_dim:
                raise ValueError(
                    f"CrossAttention: this layer was built for a context of dim {self.context_dim} "
                    f"(context_dim={self.context_dim}) but context=None was passed; pass the conditioning "
                    "(B, N_ctx, context_dim), e.g. the embedding of an empty prompt for unconditional samples."
                )
            context = x
        else:
            _check_context(context, self.context_dim, b, "CrossAttention")
        m = context.shape[1]
        h, d = self.heads, self.dim_head
        # (B, N, h·d) → (B, h, N, d)
        q = self.to_q(x).view(b, n, h, d).transpose(1, 2)
        k = self.to_k(context).view(b, m, h, d).transpose(1, 2)
        v = self.to_v(context).view(b, m, h, d).transpose(1, 2)
        attn_mask = None
        if mask is not None:
            attn_mask = _check_mask(mask, b, m)[:, None, None, :]  # (B, 1, 1, M), broadcast over heads, queries

        if self.store_attention:
            sim = torch.matmul(q, k.transpose(-1, -2)) * self.scale  # (B, h, N, M)
            if attn_mask is not None:
                sim = sim.masked_fill(~attn_mask, float("-inf"))
            probs = sim.softmax(dim=-1)
            self.last_attention = probs.detach()
            out = torch.matmul(probs, v)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        out = out.transpose(1, 2).reshape(b, n, h * d)  # (B, N, h·d)
        return self.to_out(out)


@contextmanager
def record_attention(model: nn.Module, kind: str = "cross"):
    """Record the attention probabilities of every :class:`CrossAttention` in ``model``.

    ``kind``: ``"cross"`` (the ``attn2`` layers that look at the context), ``"self"`` (``attn1``) or
    ``"all"``. Yields a dict ``{module name: [tensor (B, heads, N, M), one per call]}``::

        with record_attention(unet) as maps:
            unet(z, t, context=c)
        a = maps["middle_block.1.transformer_blocks.0.attn2"][-1]   # (B, heads, H·W, N_ctx)

    ``N = H·W`` of that level (row-major), so ``a.mean(1)[b, :, token].view(H, W)`` is the map of one
    context token. The explicit softmax is slower than the fused kernel; the flag is reset on exit.
    """
    if kind not in ("cross", "self", "all"):
        raise ValueError(f"kind must be 'cross', 'self' or 'all', got {kind!r}")
    suffix = {"cross": "attn2", "self": "attn1", "all": None}[kind]
    records: dict[str, list[torch.Tensor]] = {}
    handles, mods = [], []
    for name, mod in model.named_modules():
        if isinstance(mod, CrossAttention) and (suffix is None or name.rsplit(".", 1)[-1] == suffix):
            records[name] = []
            mod.store_attention = True
            mods.append(mod)

            def hook(module, args, output, _name=name):
                records[_name].append(module.last_attention)

            handles.append(mod.register_forward_hook(hook))
    try:
        yield records
    finally:
        for hd in handles:
            hd.remove()
        for mod in mods:
            mod.store_attention = False
            mod.last_attention = None


# ----------------------------------------------------------------------------------------------
# Feed-forward with a gated GELU
# ----------------------------------------------------------------------------------------------
class GEGLU(nn.Module):
    """Gated GELU (Shazeer, 2020): ``a · GELU(g)`` with ``[a, g] = Linear(x)``. (…, d_in) → (…, d_out)."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, gate = self.proj(x).chunk(2, dim=-1)
        return a * F.gelu(gate)


class FeedForward(nn.Module):
    """Transformer MLP: ``Linear(GEGLU(x))`` (or ``Linear(GELU(Linear(x)))`` with ``glu=False``).

    Width ``mult · dim`` inside; (…, dim) → (…, dim_out or dim).
    """

    def __init__(self, dim: int, dim_out: int | None = None, mult: int = 4, glu: bool = True,
                 dropout: float = 0.0):
        super().__init__()
        inner = int(dim * mult)
        project_in = GEGLU(dim, inner) if glu else nn.Sequential(nn.Linear(dim, inner), nn.GELU())
        self.net = nn.Sequential(project_in, nn.Dropout(dropout), nn.Linear(inner, dim_out or dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


# ----------------------------------------------------------------------------------------------
# Transformer block and the SpatialTransformer
# ----------------------------------------------------------------------------------------------
class BasicTransformerBlock(nn.Module):
    """Self-attention → cross-attention → feed-forward, each ``x = x + f(LayerNorm(x))``.

    ``attn1`` is self-attention over the image tokens; ``attn2`` attends to the context (Eq. 3),
    or -- when the block has no ``context_dim`` and no context is passed -- is a second
    self-attention, as in the LDM code. Shapes: ``x`` (B, N, dim), ``context`` (B, M, context_dim),
    ``context_mask`` (B, M) bool → (B, N, dim).
    """

    def __init__(self, dim: int, n_heads: int, d_head: int, dropout: float = 0.0,
                 context_dim: int | None = None, gated_ff: bool = True):
        super().__init__()
        self.attn1 = CrossAttention(dim, heads=n_heads, dim_head=d_head, dropout=dropout)
        self.ff = FeedForward(dim, dropout=dropout, glu=gated_ff)
        self.attn2 = CrossAttention(dim, context_dim=context_dim, heads=n_heads, dim_head=d_head, dropout=dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context=context, mask=context_mask)
        x = x + self.ff(self.norm3(x))
        return x


class SpatialTransformer(nn.Module):
    """A transformer applied to a feature map: where the UNet meets the conditioning (Sec. 3.3).

    ::

        (B, C, H, W) ─GroupNorm─ proj_in ─flatten→ (B, H·W, n_heads·d_head)
                     ─ depth × BasicTransformerBlock(context) ─ proj_out (zero-init) ─→ (B, C, H, W) + input

    ``proj_in``/``proj_out`` are 1×1 convs (LDM, SD 1.x) or, with ``use_linear=True``, linear
    layers applied after flattening (SD 2.x); both have the same parameter count. Since
    ``proj_out`` starts at zero, a fresh SpatialTransformer is the identity.

    Args:
        in_channels: C.
        n_heads, d_head: attention heads and their width (inner width ``n_heads · d_head``).
        depth: number of transformer blocks. The arguments after it are keyword-only.
        dropout: dropout inside attention outputs and the MLP.
        context_dim: width of the conditioning tokens; ``None`` = no conditioning (the "cross"
            attention then attends to the image tokens themselves).
        use_linear: linear instead of 1×1-conv projections.
        norm_num_groups: GroupNorm groups (32).

    Shapes: ``x`` (B, C, H, W), ``context`` (B, M, context_dim), ``context_mask`` (B, M) bool.
    """

    takes_context = True

    def __init__(self, in_channels: int, n_heads: int, d_head: int, depth: int = 1, *, dropout: float = 0.0,
                 context_dim: int | None = None, use_linear: bool = False, norm_num_groups: int = 32):
        super().__init__()
        self.in_channels = in_channels
        self.context_dim = context_dim
        self.use_linear = use_linear
        inner_dim = n_heads * d_head
        self.inner_dim = inner_dim
        self.norm = normalization(in_channels, norm_num_groups, eps=1e-6)
        if use_linear:
            self.proj_in = nn.Linear(in_channels, inner_dim)
        else:
            self.proj_in = nn.Conv2d(in_channels, inner_dim, kernel_size=1)
        self.transformer_blocks = nn.ModuleList(
            [BasicTransformerBlock(inner_dim, n_heads, d_head, dropout=dropout, context_dim=context_dim)
             for _ in range(depth)]
        )
        if use_linear:
            self.proj_out = zero_module(nn.Linear(inner_dim, in_channels))
        else:
            self.proj_out = zero_module(nn.Conv2d(inner_dim, in_channels, kernel_size=1))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, c, hh, ww = x.shape
        if context is not None:
            if self.context_dim is None:
                raise ValueError(
                    "SpatialTransformer was built without context_dim but a context was passed; "
                    f"build it (or the UNet) with context_dim={context.shape[-1]}."
                )
            _check_context(context, self.context_dim, b, "SpatialTransformer")
        elif self.context_dim is not None and self.context_dim != self.inner_dim:
            raise ValueError(
                f"SpatialTransformer was built with context_dim={self.context_dim} and needs a context of "
                f"shape (B, N_ctx, {self.context_dim}); got context=None."
            )
        x_in = x
        x = self.norm(x)
        if not self.use_linear:
            x = self.proj_in(x)
        # (B, C', H, W) → (B, H·W, C'); free when x is channels_last
        x = x.permute(0, 2, 3, 1).reshape(b, hh * ww, x.shape[1])
        if self.use_linear:
            x = self.proj_in(x)
        for block in self.transformer_blocks:
            x = block(x, context=context, context_mask=context_mask)
        if self.use_linear:
            x = self.proj_out(x)
        x = x.reshape(b, hh, ww, x.shape[-1]).permute(0, 3, 1, 2)  # (B, C', H, W), channels_last strides
        if not self.use_linear:
            x = self.proj_out(x)
        return x + x_in


# ----------------------------------------------------------------------------------------------
# The ADM self-attention block (unconditional LDMs)
# ----------------------------------------------------------------------------------------------
class AttentionBlock(nn.Module):
    """Spatial self-attention of the ADM/openai UNet, used by the paper's unconditional LDMs.

    ``x + proj_out(Attention(qkv(GroupNorm(x))))`` over the ``H·W`` positions, with a single 1×1
    conv ``qkv`` (C → 3C) and a zero-initialised 1×1 conv ``proj_out``. The qkv channels are laid
    out head by head, ``[q_h, k_h, v_h]`` for each head ``h`` (the "legacy" order of
    ``QKVAttentionLegacy``, which the CompVis checkpoints use). No context.

    ``num_head_channels`` (if not -1) fixes the head width and overrides ``num_heads``.
    Shapes: (B, C, H, W) → (B, C, H, W).
    """

    def __init__(self, channels: int, num_heads: int = 1, num_head_channels: int = -1, norm_num_groups: int = 32):
        super().__init__()
        if num_head_channels != -1:
            if channels % num_head_channels:
                raise ValueError(f"{channels} channels are not divisible by num_head_channels={num_head_channels}")
            num_heads = channels // num_head_channels
        elif channels % num_heads:
            raise ValueError(f"{channels} channels are not divisible by num_heads={num_heads}")
        self.channels = channels
        self.num_heads = num_heads
        self.norm = normalization(channels, norm_num_groups)
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        self.proj_out = zero_module(nn.Conv1d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, hh, ww = x.shape
        t, nh = hh * ww, self.num_heads
        qkv = self.qkv(self.norm(x).reshape(b, c, t))  # (B, 3C, T)
        q, k, v = qkv.reshape(b, nh, 3 * (c // nh), t).transpose(-1, -2).chunk(3, dim=-1)  # (B, h, T, d) each
        out = F.scaled_dot_product_attention(q, k, v)  # (B, h, T, d)
        out = out.transpose(-1, -2).reshape(b, c, t)
        return x + self.proj_out(out).reshape(b, c, hh, ww)
