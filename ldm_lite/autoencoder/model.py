"""The perceptual autoencoder of the first stage (paper Sec. 3.1, App. G).

An encoder E maps an image x (B, 3, H, W) to a latent z (B, c, h, w) with h = H/f, w = W/f, and a
decoder D maps it back. The downsampling factor f = 2^m comes from m = len(ch_mult) - 1 resolution
levels, each halving the size once -- so f = 1, 2, 4, 8, 16, 32 are ch_mult of length 1..6.

The module and parameter names follow the CompVis code (``encoder.down[i].block[j]``,
``mid.attn_1``, ``quant_conv``, ...), so the original LDM first-stage checkpoints load by name and a
learner can read that code after the course (``convert.py`` maps diffusers' names onto ours).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ldm_lite.config import setting
from ldm_lite.autoencoder.regularizers import DiagonalGaussianDistribution, VectorQuantizer

VALID_FACTORS = (1, 2, 4, 8, 16, 32)


def check_image_size(h: int, w: int, f: int, what: str = "the downsampling factor") -> None:
    """Raise a ``ValueError`` that says how to fix it unless ``h`` and ``w`` are multiples of ``f``."""
    if h % f or w % f:
        raise ValueError(
            f"image size {h}x{w} is not divisible by {what} f={f}; resize or crop to a multiple of {f} "
            f"(e.g. {max(f, h // f * f)})"
        )


def check_image_channels(x: torch.Tensor, channels: int, what: str = "the autoencoder") -> None:
    """Raise a ``ValueError`` that says how to fix it unless ``x`` is ``(B, channels, H, W)``.

    Recognises the usual mistakes: channels-last images ``(B, H, W, C)`` (from PIL / NumPy), grey images given
    to an RGB model and RGBA images with their alpha channel.
    """
    if not torch.is_tensor(x) or x.dim() != 4:
        shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
        hint = " (a single image: add the batch axis with x[None])" if torch.is_tensor(x) and x.dim() == 3 else ""
        raise ValueError(f"expected images of shape (B, C, H, W) with C = {channels}, got {shape}{hint}")
    c = int(x.shape[1])
    if c == channels:
        return
    shape = tuple(x.shape)
    if int(x.shape[-1]) == channels:
        fix = "this looks channels-last (B, H, W, C); convert with x.permute(0, 3, 1, 2)"
    elif c == 1 and channels == 3:
        fix = "grey images: repeat the channel with x.expand(-1, 3, -1, -1) (or use a 1-channel autoencoder)"
    elif c == 4 and channels == 3:
        fix = "RGBA images: drop the alpha channel with x[:, :3] (or composite it on a background first)"
    elif c == 3 and channels == 1:
        fix = "RGB images for a grey model: average the channels with x.mean(1, keepdim=True)"
    else:
        fix = f"give {channels}-channel images, or build the model with in_channels={c}"
    raise ValueError(
        f"{what} takes images of shape (B, {channels}, H, W) (in_channels={channels}), got {shape} with "
        f"{c} channels: {fix}"
    )


def check_positive_sizes(owner: str, **sizes) -> None:
    """Raise a ``ValueError`` naming the first size that is not a positive int (``ch=0`` would build a model
    with empty convolutions that fails only later, in the first forward pass)."""
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"{owner}: {name} must be a positive int (>= 1), got {value!r}; "
                             f"e.g. {name}={_TYPICAL_SIZES.get(name, 2)}")


_TYPICAL_SIZES = {"ch": 64, "z_channels": 4, "embed_dim": 4, "in_channels": 3, "out_ch": 3, "n_embed": 512}


def Normalize(channels: int) -> nn.GroupNorm:
    """GroupNorm with 32 groups as in LDM (fewer when the channel count is small or not divisible)."""
    return nn.GroupNorm(num_groups=math.gcd(32, channels), num_channels=channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """norm -> SiLU -> conv3x3 -> norm -> SiLU -> dropout -> conv3x3, plus a (1x1) shortcut."""

    def __init__(self, in_channels: int, out_channels: int | None = None, dropout: float = 0.0):
        super().__init__()
        out_channels = out_channels or in_channels
        self.in_channels, self.out_channels = in_channels, out_channels
        self.norm1 = Normalize(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = Normalize(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        if self.in_channels != self.out_channels:
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all h*w positions (used once, in the middle block)."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = Normalize(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        B, C, H, W = x.shape
        h = self.norm(x)
        q, k, v = (m(h).reshape(B, 1, C, H * W).transpose(2, 3) for m in (self.q, self.k, self.v))
        h = F.scaled_dot_product_attention(q, k, v)  # (B, 1, HW, C), softmax(q k^T / sqrt(C)) v
        h = h.transpose(2, 3).reshape(B, C, H, W)
        return x + self.proj_out(h)


class Downsample(nn.Module):
    """Halve the resolution with a stride-2 3x3 conv (asymmetric zero padding, as in LDM)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Double the resolution: nearest-neighbour upsampling, then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """One resolution level: ``block`` (ResnetBlocks), ``attn`` (unused here, kept for key names)."""

    def __init__(self):
        super().__init__()
        self.block = nn.ModuleList()
        self.attn = nn.ModuleList()


class _Mid(nn.Module):
    def __init__(self, channels: int, dropout: float, use_attn: bool):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, dropout)
        self.attn_1 = AttnBlock(channels) if use_attn else nn.Identity()
        self.block_2 = ResnetBlock(channels, channels, dropout)

    def forward(self, x):
        return self.block_2(self.attn_1(self.block_1(x)))


def _check_ch_mult(ch_mult) -> None:
    if len(ch_mult) < 1 or len(ch_mult) > len(VALID_FACTORS):
        raise ValueError(
            f"ch_mult {tuple(ch_mult)} gives {len(ch_mult)} levels; use 1 to {len(VALID_FACTORS)} levels "
            f"(f = 2**(len(ch_mult) - 1) in {VALID_FACTORS})"
        )
    bad = [m for m in ch_mult if isinstance(m, bool) or not isinstance(m, numbers.Integral) or m < 1]
    if bad:
        raise ValueError(f"ch_mult {tuple(ch_mult)} has {bad[0]!r}; every multiplier must be a positive int "
                         "(level width = ch * multiplier), e.g. (1, 2, 4)")


def _check_coder(owner: str, ch, num_res_blocks, z_channels, image_channels, dropout) -> None:
    check_positive_sizes(owner, ch=ch, num_res_blocks=num_res_blocks, z_channels=z_channels)
    check_positive_sizes(owner, **image_channels)
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"{owner}: dropout must lie in [0, 1), got {dropout!r}")


class Encoder(nn.Module):
    """x (B, in_channels, H, W) -> moments (B, 2*z_channels if double_z else z_channels, H/f, W/f).

    Sizes (``ch``, ``num_res_blocks``, ``z_channels``, ``in_channels``, ``ch_mult``) must be positive ints;
    ``forward`` names channels-last or wrong-channel images (:func:`check_image_channels`)."""

    def __init__(
        self,
        ch: int = 64,
        ch_mult=(1, 2, 4),
        num_res_blocks: int = 2,
        in_channels: int = 3,
        z_channels: int = 4,
        double_z: bool = True,
        dropout: float = 0.0,
        use_mid_attn: bool = True,
    ):
        super().__init__()
        _check_ch_mult(ch_mult)
        _check_coder("Encoder", ch, num_res_blocks, z_channels, dict(in_channels=in_channels), dropout)
        self.num_resolutions, self.num_res_blocks = len(ch_mult), num_res_blocks
        self.f = 2 ** (len(ch_mult) - 1)
        self.in_channels = in_channels
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        in_mult = (1,) + tuple(ch_mult)
        self.down = nn.ModuleList()
        for i, mult in enumerate(ch_mult):
            level = _Level()
            block_in, block_out = ch * in_mult[i], ch * mult
            for _ in range(num_res_blocks):
                level.block.append(ResnetBlock(block_in, block_out, dropout))
                block_in = block_out
            if i != self.num_resolutions - 1:
                level.downsample = Downsample(block_in)
            self.down.append(level)
        self.mid = _Mid(block_in, dropout, use_mid_attn)
        self.norm_out = Normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, 2 * z_channels if double_z else z_channels, 3, padding=1)

    def forward(self, x):
        check_image_channels(x, self.in_channels, "the encoder")  # before the size: (B, H, W, C) fails here
        check_image_size(*x.shape[-2:], self.f)
        h = self.conv_in(x)
        for i, level in enumerate(self.down):
            for block in level.block:
                h = block(h)
            if i != self.num_resolutions - 1:
                h = level.downsample(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """z (B, z_channels, h, w) -> x_hat (B, out_ch, h*f, w*f). Mirrors the encoder, one more block per level."""

    def __init__(
        self,
        ch: int = 64,
        ch_mult=(1, 2, 4),
        num_res_blocks: int = 2,
        out_ch: int = 3,
        z_channels: int = 4,
        dropout: float = 0.0,
        use_mid_attn: bool = True,
    ):
        super().__init__()
        _check_ch_mult(ch_mult)
        _check_coder("Decoder", ch, num_res_blocks, z_channels, dict(out_ch=out_ch), dropout)
        self.num_resolutions, self.num_res_blocks = len(ch_mult), num_res_blocks
        self.f = 2 ** (len(ch_mult) - 1)
        block_in = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, padding=1)
        self.mid = _Mid(block_in, dropout, use_mid_attn)
        up = []
        for i in reversed(range(self.num_resolutions)):
            level = _Level()
            block_out = ch * ch_mult[i]
            for _ in range(num_res_blocks + 1):
                level.block.append(ResnetBlock(block_in, block_out, dropout))
                block_in = block_out
            if i != 0:
                level.upsample = Upsample(block_in)
            up.insert(0, level)  # keep ``up[i]`` at resolution level i, as in the CompVis checkpoints
        self.up = nn.ModuleList(up)
        self.norm_out = Normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, out_ch, 3, padding=1)

    def forward(self, z):
        h = self.mid(self.conv_in(z))
        for i in reversed(range(self.num_resolutions)):
            for block in self.up[i].block:
                h = block(h)
            if i != 0:
                h = self.up[i].upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


def ch_mult_for_factor(f: int, pattern=(1, 2, 4, 4, 4, 4)) -> tuple[int, ...]:
    """The channel multipliers for a downsampling factor f: one level per factor of two."""
    if f not in VALID_FACTORS:
        raise ValueError(
            f"downsampling factor f={f!r} is not supported; f must be a power of two in {VALID_FACTORS}"
        )
    return tuple(pattern[: int(math.log2(f)) + 1])


@dataclass
class AutoencoderConfig:
    """Everything needed to rebuild an autoencoder (stored in checkpoint manifests)."""

    f: int = setting(4, "downsampling factor: 1, 2, 4, 8, 16 or 32", type="int")
    ch: int = setting(64, "base width of encoder and decoder")
    ch_mult: tuple[int, ...] | None = setting(None, "width multiplier per level, e.g. 1,2,4 (default from f)")
    num_res_blocks: int = setting(2, "ResBlocks per level")
    z_channels: int = setting(3, "channels of the encoder's output")
    embed_dim: int | None = setting(None, "channels of the latent (default: z_channels)", flag=False)
    in_channels: int = setting(3, "image channels", flag=False)
    dropout: float = setting(0.0, "dropout in the ResBlocks", type="probability")
    use_mid_attn: bool = setting(True, "self-attention in the middle (lowest-resolution) block")
    reg: str = setting("kl", "regulariser of the latent: kl or vq", choices=("kl", "vq"))
    n_embed: int = setting(512, "--reg vq: codebook size")
    beta: float = setting(0.25, "--reg vq: commitment weight", flag=False)
    dead_code_threshold: float = setting(0.0, "--reg vq: restart codes used less than this share", flag=False)

    def __post_init__(self):
        if self.reg not in ("kl", "vq"):
            raise ValueError(f"reg must be 'kl' or 'vq', got {self.reg!r}")
        check_positive_sizes("AutoencoderConfig", ch=self.ch, num_res_blocks=self.num_res_blocks,
                             z_channels=self.z_channels, in_channels=self.in_channels)
        if self.embed_dim is not None:
            check_positive_sizes("AutoencoderConfig", embed_dim=self.embed_dim)
        if self.reg == "vq":
            check_positive_sizes("AutoencoderConfig", n_embed=self.n_embed)
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"AutoencoderConfig: dropout must lie in [0, 1), got {self.dropout!r}")
        if self.ch_mult is None:
            self.ch_mult = ch_mult_for_factor(self.f)
        self.ch_mult = tuple(self.ch_mult)
        _check_ch_mult(self.ch_mult)
        if 2 ** (len(self.ch_mult) - 1) != self.f:
            raise ValueError(
                f"ch_mult {self.ch_mult} gives f={2 ** (len(self.ch_mult) - 1)}, but f={self.f} was asked for"
            )
        if self.embed_dim is None:
            self.embed_dim = self.z_channels

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ch_mult"] = list(self.ch_mult)
        return d


def _coder_kwargs(cfg: AutoencoderConfig) -> dict:
    return dict(ch=cfg.ch, ch_mult=cfg.ch_mult, num_res_blocks=cfg.num_res_blocks, z_channels=cfg.z_channels,
                dropout=cfg.dropout, use_mid_attn=cfg.use_mid_attn)


class _FirstStage(nn.Module):
    """What AutoencoderKL and VQModel share: the config, the factor f, latent shapes and the GAN's layer."""

    reg: str

    def __init__(self, config: AutoencoderConfig | None, kwargs: dict):
        super().__init__()
        cfg = config or AutoencoderConfig(**{"reg": self.reg, **kwargs})
        if cfg.reg != self.reg:
            other = "VQModel" if cfg.reg == "vq" else "AutoencoderKL"
            raise ValueError(f"{type(self).__name__} needs reg={self.reg!r}; use {other} for reg={cfg.reg!r}")
        self.config = cfg
        self.f, self.embed_dim = cfg.f, cfg.embed_dim

    def _check_latent(self, z: torch.Tensor) -> None:
        if z.dim() != 4 or z.shape[1] != self.embed_dim:
            raise ValueError(f"expected latents of shape (B, {self.embed_dim}, h, w), got {tuple(z.shape)}")

    def get_last_layer(self) -> torch.Tensor:
        """The decoder's last conv weight: the adaptive GAN weight compares gradients there (App. G)."""
        return self.decoder.conv_out.weight

    # the first-stage protocol (ldm_lite/autoencoder/first_stage.py): what a latent diffusion model asks
    @property
    def latent_channels(self) -> int:
        """Channels of the latent (``embed_dim``)."""
        return self.embed_dim

    @property
    def in_channels(self) -> int:
        """Channels of the images it encodes."""
        return self.config.in_channels

    def latent_shape(self, size: int | tuple[int, int]) -> tuple[int, int, int]:
        """(embed_dim, H/f, W/f) for an input of the given size."""
        H, W = (size, size) if isinstance(size, int) else size
        if H % self.f or W % self.f:
            raise ValueError(f"size {H}x{W} is not divisible by f={self.f}")
        return (self.embed_dim, H // self.f, W // self.f)


class AutoencoderKL(_FirstStage):
    """KL-regularised autoencoder: ``encode`` -> DiagonalGaussianDistribution, ``decode`` -> image.

    ``quant_conv`` (1x1) maps the encoder's moments to 2*embed_dim channels, ``post_quant_conv`` maps
    the latent back to the decoder's z_channels (names as in the LDM code).
    """

    reg = "kl"

    def __init__(self, config: AutoencoderConfig | None = None, **kwargs):
        super().__init__(config, kwargs)
        cfg = self.config
        self.encoder = Encoder(in_channels=cfg.in_channels, double_z=True, **_coder_kwargs(cfg))
        self.decoder = Decoder(out_ch=cfg.in_channels, **_coder_kwargs(cfg))
        self.quant_conv = nn.Conv2d(2 * cfg.z_channels, 2 * cfg.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.z_channels, 1)

    def encode(self, x: torch.Tensor) -> DiagonalGaussianDistribution:
        """x (B, 3, H, W) in [-1, 1] -> q(z|x) over z of shape (B, embed_dim, H/f, W/f)."""
        return DiagonalGaussianDistribution(self.quant_conv(self.encoder(x)))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, embed_dim, h, w) -> x_hat (B, 3, h*f, w*f)."""
        self._check_latent(z)
        return self.decoder(self.post_quant_conv(z))

    def encode_latent(self, x: torch.Tensor, sample: bool = False,
                      generator: torch.Generator | None = None) -> torch.Tensor:
        """The latent a diffusion model is trained on: the posterior mode, or a draw from q(z|x) (``sample``)."""
        posterior = self.encode(x)
        return posterior.sample(generator) if sample else posterior.mode()

    def decode_latent(self, z: torch.Tensor, force_quantize: bool = True) -> torch.Tensor:
        """Same as :meth:`decode` (``force_quantize`` is for the protocol; a KL latent has no codebook)."""
        return self.decode(z)

    def forward(self, x: torch.Tensor, sample_posterior: bool = True, generator: torch.Generator | None = None):
        """Returns (x_hat, posterior). Training samples z ~ q(z|x); evaluation uses the mean."""
        posterior = self.encode(x)
        z = posterior.sample(generator) if sample_posterior else posterior.mode()
        return self.decode(z), posterior



class VQModel(_FirstStage):
    """VQ-regularised autoencoder: encoder -> quant_conv -> VectorQuantizer -> post_quant_conv -> decoder."""

    reg = "vq"

    def __init__(self, config: AutoencoderConfig | None = None, **kwargs):
        super().__init__(config, kwargs)
        cfg = self.config
        self.encoder = Encoder(in_channels=cfg.in_channels, double_z=False, **_coder_kwargs(cfg))
        self.decoder = Decoder(out_ch=cfg.in_channels, **_coder_kwargs(cfg))
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.embed_dim, 1)
        self.quantize = VectorQuantizer(cfg.n_embed, cfg.embed_dim, beta=cfg.beta,
                                        dead_code_threshold=cfg.dead_code_threshold)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.z_channels, 1)

    def encode_pre_quant(self, x: torch.Tensor) -> torch.Tensor:
        """The continuous latent before quantisation, (B, embed_dim, h, w). The LDM trains its diffusion
        model on this and quantises inside the decoder ("absorbing the quantisation layer", Sec. 3.1)."""
        return self.quant_conv(self.encoder(x))

    def encode(self, x: torch.Tensor):
        """x -> (z_q, vq_loss, info) with z_q (B, embed_dim, h, w)."""
        return self.quantize(self.encode_pre_quant(x))

    def decode(self, z: torch.Tensor, force_quantize: bool = True) -> torch.Tensor:
        """Decode a latent; by default it is quantised first, so a diffusion model's continuous output is
        snapped to the codebook as in the LDM code."""
        self._check_latent(z)
        if force_quantize:
            z, _, _ = self.quantize(z)
        return self.decoder(self.post_quant_conv(z))

    def encode_latent(self, x: torch.Tensor, sample: bool = False,
                      generator: torch.Generator | None = None) -> torch.Tensor:
        """The latent a diffusion model is trained on: the continuous pre-quantisation latent (``sample`` has no
        meaning for a VQ model and is ignored)."""
        return self.encode_pre_quant(x)

    def decode_latent(self, z: torch.Tensor, force_quantize: bool = True) -> torch.Tensor:
        """Same as :meth:`decode`: quantise (by default), then decode."""
        return self.decode(z, force_quantize=force_quantize)

    def forward(self, x: torch.Tensor):
        """Returns (x_hat, vq_loss, info)."""
        z_q, loss, info = self.encode(x)
        return self.decoder(self.post_quant_conv(z_q)), loss, info


def build_autoencoder(config: AutoencoderConfig) -> AutoencoderKL | VQModel:
    """AutoencoderKL or VQModel, by ``config.reg``."""
    return AutoencoderKL(config) if config.reg == "kl" else VQModel(config)
