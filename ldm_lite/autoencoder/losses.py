"""Training losses of the first-stage autoencoders (LDM Sec. 3.1 and App. G).

The paper trains its autoencoders with "a combination of a perceptual loss and a patch-based
adversarial objective", which "ensures that the reconstructions are confined to the image manifold
by enforcing local realism and avoids blurriness introduced by relying solely on pixel-space losses
such as L2 or L1" (Sec. 3.1). App. G gives the full objective for the KL-regularised model:

    L_Autoencoder = min_{E,D} max_psi ( L_rec(x, D(E(x))) - L_adv(D(E(x))) + log D_psi(x)
                                        + L_reg(x; E, D) )

This module holds the pieces, named as in the CompVis / taming code so that code stays readable
after the course:

* :class:`NLayerDiscriminator` — the PatchGAN of Isola et al. (pix2pix, 2017): one real/fake logit
  per overlapping image patch (70x70 px for the default 3 layers).
* :func:`hinge_d_loss`, :func:`vanilla_d_loss`, :func:`adopt_weight` — discriminator losses and the
  "switch the GAN on at step ``disc_start``" helper.
* :class:`LPIPSWithDiscriminator` — the loss of ``AutoencoderKL`` (KL-reg., Sec. 3.1): L1 +
  perceptual reconstruction term, a learned log-variance, a weak KL term, and the adaptive-weight
  GAN of Esser et al. (taming transformers, 2021, Eq. 7).
* :class:`VQLPIPSWithDiscriminator` — the loss of ``VQModel`` (VQ-reg.): the same, with the
  codebook/commitment loss in place of the KL term.

Two optimisers take turns, as in the CompVis code: ``optimizer_idx=0`` is the autoencoder
("generator") step, ``optimizer_idx=1`` the discriminator step.

Switches for the loss ablation of notebook 01 (each one skips the work it turns off):
``perceptual_weight=0`` (no perceptual network is even built), ``disc_weight=0`` or
``disc_factor=0`` or a ``disc_start`` beyond the last step (the discriminator is never run in the
autoencoder step, and the discriminator step returns an exact 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ldm_lite.autoencoder.perceptual import PerceptualLoss, get_perceptual_loss
from ldm_lite.config import setting

__all__ = [
    "AELossConfig",
    "ActNorm",
    "LPIPSWithDiscriminator",
    "NLayerDiscriminator",
    "VQLPIPSWithDiscriminator",
    "adopt_weight",
    "calculate_adaptive_weight",
    "hinge_d_loss",
    "patchgan_output_size",
    "patchgan_receptive_field",
    "vanilla_d_loss",
    "weights_init",
]


# =============================================================================================
# The PatchGAN discriminator
# =============================================================================================
class ActNorm(nn.Module):
    """Per-channel affine normalisation with data-dependent initialisation (Glow, Kingma 2018).

    The first batch seen in training mode sets ``loc = -mean`` and ``scale = 1 / std`` per channel,
    so that batch comes out with zero mean and unit variance; afterwards ``loc`` and ``scale`` are
    ordinary trainable parameters: ``y = scale * (x + loc)``. Unlike BatchNorm the output of a
    sample does not depend on the other samples of its batch. Shapes: ``(B, C, H, W) -> same``.
    """

    def __init__(self, num_features: int):
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(1, num_features, 1, 1))
        self.scale = nn.Parameter(torch.ones(1, num_features, 1, 1))
        self.register_buffer("initialized", torch.tensor(0, dtype=torch.uint8))

    @torch.no_grad()
    def _initialize(self, x: torch.Tensor) -> None:
        flat = x.transpose(0, 1).reshape(x.shape[1], -1)
        self.loc.copy_(-flat.mean(dim=1).view(1, -1, 1, 1))
        self.scale.copy_(1.0 / (flat.std(dim=1).view(1, -1, 1, 1) + 1e-6))
        self.initialized.fill_(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.initialized.item() == 0:
            self._initialize(x)
        return self.scale * (x + self.loc)


class NLayerDiscriminator(nn.Module):
    """PatchGAN discriminator (Isola et al. 2017, as used by taming and LDM, App. G).

    Layers (kernel 4, padding 1 throughout)::

        conv(in_nc -> ndf, stride 2)                       + LeakyReLU(0.2)
        n_layers-1 x conv(stride 2), channels x2 (max 8 ndf) + norm + LeakyReLU(0.2)
        conv(stride 1), channels x2 (max 8 ndf)            + norm + LeakyReLU(0.2)
        conv(-> 1 channel, stride 1)                        # one logit per patch

    ``norm`` is BatchNorm (convs before it have no bias) or, with ``use_actnorm``, :class:`ActNorm`.

    Shapes: ``(B, input_nc, H, W) -> (B, 1, h', w')`` with ``h' = patchgan_output_size(H, n_layers)``:
    for the default 3 layers, 64 px -> 6x6 logits and 256 px -> 30x30 logits, each logit seeing a
    ``patchgan_receptive_field(3) = 70`` px square of the input (the "70x70 PatchGAN").

    Call :func:`weights_init` on it (``NLayerDiscriminator(...).apply(weights_init)``), as the loss
    classes below do.
    """

    def __init__(self, input_nc: int = 3, ndf: int = 64, n_layers: int = 3, use_actnorm: bool = False):
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1; got {n_layers}.")
        self.n_layers = n_layers

        def norm(c: int) -> nn.Module:
            return ActNorm(c) if use_actnorm else nn.BatchNorm2d(c)

        use_bias = use_actnorm  # BatchNorm has its own shift, so the conv before it needs no bias
        layers: list[nn.Module] = [nn.Conv2d(input_nc, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers):  # stride-2 blocks, doubling channels up to 8 * ndf
            prev, mult = mult, min(2**n, 8)
            layers += [
                nn.Conv2d(ndf * prev, ndf * mult, 4, stride=2, padding=1, bias=use_bias),
                norm(ndf * mult),
                nn.LeakyReLU(0.2, True),
            ]
        prev, mult = mult, min(2**n_layers, 8)
        layers += [
            nn.Conv2d(ndf * prev, ndf * mult, 4, stride=1, padding=1, bias=use_bias),
            norm(ndf * mult),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=1),  # 1-channel map of patch logits
        ]
        self.main = nn.Sequential(*layers)

    @property
    def receptive_field(self) -> int:
        """Side of the input square (px) that one output logit sees."""
        return patchgan_receptive_field(self.n_layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W) -> (B, 1, h', w')`` patch logits (real > 0 > fake under the hinge loss)."""
        return self.main(x)


def patchgan_receptive_field(n_layers: int = 3) -> int:
    """Receptive field of one PatchGAN logit: 70 px for 3 layers (Isola et al. 2017).

    Walking back from one output pixel, a conv with kernel ``k`` and stride ``s`` turns a field of
    ``r`` pixels into ``(r - 1) * s + k``. The network has ``n_layers`` stride-2 convs followed by
    two stride-1 convs, all with ``k = 4``.
    """
    r = 1
    for stride in reversed([2] * n_layers + [1, 1]):
        r = (r - 1) * stride + 4
    return r


def patchgan_output_size(size: int, n_layers: int = 3) -> int:
    """Side of the logit map for an input side ``size``: ``floor((n + 2p - k) / s) + 1`` per conv."""
    for stride in [2] * n_layers + [1, 1]:
        size = (size + 2 * 1 - 4) // stride + 1
    return size


def _min_patchgan_size(n_layers: int) -> int:
    size = 1
    while patchgan_output_size(size, n_layers) < 1:
        size += 1
    return size


def weights_init(m: nn.Module) -> None:
    """DCGAN initialisation used by taming/LDM: conv ``N(0, 0.02)``, BatchNorm weight ``N(1, 0.02)``, bias 0."""
    if isinstance(m, nn.Conv2d):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


# =============================================================================================
# GAN losses and helpers
# =============================================================================================
def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Hinge discriminator loss: ``0.5 * (mean relu(1 - D(x)) + mean relu(1 + D(x_hat)))``.

    0 once real logits are >= 1 and fake logits <= -1; exactly 1 for all-zero logits.
    """
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def vanilla_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Non-saturating GAN discriminator loss (binary cross-entropy on logits):
    ``0.5 * (mean softplus(-D(x)) + mean softplus(D(x_hat)))``; ``log 2`` for all-zero logits."""
    return 0.5 * (F.softplus(-logits_real).mean() + F.softplus(logits_fake).mean())


DISC_LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "hinge": hinge_d_loss,
    "vanilla": vanilla_d_loss,
}


def adopt_weight(weight: float, global_step: int, threshold: int = 0, value: float = 0.0) -> float:
    """``value`` (0) before step ``threshold``, ``weight`` from then on: the GAN's ``disc_start``.

    LDM trains the autoencoder on reconstruction (+ KL) alone first and switches the discriminator
    on later, so the GAN meets reasonable reconstructions rather than noise.
    """
    return value if global_step < threshold else weight


def calculate_adaptive_weight(
    nll_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor, disc_weight: float = 1.0
) -> torch.Tensor:
    """Adaptive GAN weight (Esser et al. 2021, Eq. 7; used by LDM, App. G):

        lambda = || grad_{w_L} L_rec || / (|| grad_{w_L} L_GAN || + 1e-4),  clamped to [0, 1e4]

    with ``w_L`` the decoder's last layer (``model.get_last_layer()``), then multiplied by
    ``disc_weight``. It rescales the adversarial gradient to the size of the reconstruction
    gradient at the decoder output, so neither drowns the other whatever their raw scales.
    The result is detached (a constant for the backward pass). Returns a 0-dim tensor.
    """
    nll_grads = torch.autograd.grad(nll_loss, last_layer, retain_graph=True)[0]
    g_grads = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    d_weight = torch.norm(nll_grads) / (torch.norm(g_grads) + 1e-4)
    return torch.clamp(d_weight, 0.0, 1e4).detach() * disc_weight


def _check_pair(inputs: torch.Tensor, reconstructions: torch.Tensor) -> None:
    if inputs.shape != reconstructions.shape:
        raise ValueError(
            f"inputs and reconstructions must have the same shape (B, C, H, W); got {tuple(inputs.shape)} "
            f"and {tuple(reconstructions.shape)}. Did the decoder's output size drift (check the "
            "image size is divisible by the downsampling factor f)?"
        )
    if inputs.dim() != 4:
        raise ValueError(f"expected image batches of shape (B, C, H, W); got {tuple(inputs.shape)}.")


# =============================================================================================
# Shared GAN machinery of both autoencoder losses
# =============================================================================================
class _PerceptualGANLoss(nn.Module):
    """Reconstruction (L1 + perceptual) and PatchGAN parts shared by the KL and VQ losses."""

    def __init__(
        self,
        disc_start: int,
        pixelloss_weight: float,
        disc_num_layers: int,
        disc_in_channels: int,
        disc_ndf: int,
        disc_factor: float,
        disc_weight: float,
        perceptual_weight: float,
        perceptual: str | PerceptualLoss,
        use_actnorm: bool,
        disc_conditional: bool,
        disc_loss: str,
    ):
        super().__init__()
        if disc_loss not in DISC_LOSSES:
            raise ValueError(f"unknown disc_loss {disc_loss!r}; use one of {sorted(DISC_LOSSES)}.")
        if perceptual_weight < 0 or disc_weight < 0 or disc_factor < 0 or pixelloss_weight < 0:
            raise ValueError("loss weights must be >= 0.")
        self.pixel_weight = pixelloss_weight
        self.perceptual_weight = perceptual_weight
        # perceptual_weight=0 switches the term off and skips building the network at all.
        if perceptual_weight == 0:
            perceptual = "none"
        self.perceptual_loss = perceptual if isinstance(perceptual, nn.Module) else get_perceptual_loss(perceptual)

        self.discriminator = NLayerDiscriminator(
            input_nc=disc_in_channels, ndf=disc_ndf, n_layers=disc_num_layers, use_actnorm=use_actnorm
        ).apply(weights_init)
        self.discriminator_iter_start = disc_start
        self.disc_loss_name = disc_loss
        self.disc_loss = DISC_LOSSES[disc_loss]
        self.disc_factor = disc_factor
        self.discriminator_weight = disc_weight
        self.disc_conditional = disc_conditional

    # -- reconstruction -----------------------------------------------------------------------
    def reconstruction_loss(self, inputs: torch.Tensor, reconstructions: torch.Tensor):
        """Per-pixel reconstruction term ``(B, C, H, W)`` and the perceptual distance ``(B,1,1,1)``.

        ``rec = pixel_weight * |x - x_hat| + perceptual_weight * d_perc(x, x_hat)``; the per-sample
        perceptual distance is broadcast over every pixel, as in the CompVis code.
        (CompVis stores ``pixelloss_weight`` but never uses it; here it scales the L1 term, so the
        default 1.0 gives the same loss.)
        """
        _check_pair(inputs, reconstructions)
        inputs, reconstructions = inputs.contiguous(), reconstructions.contiguous()
        rec_loss = torch.abs(inputs - reconstructions)
        if self.pixel_weight != 1.0:
            rec_loss = self.pixel_weight * rec_loss
        if self.perceptual_weight > 0:
            p_loss = self.perceptual_loss(inputs, reconstructions)
            rec_loss = rec_loss + self.perceptual_weight * p_loss
        else:
            p_loss = inputs.new_zeros(inputs.shape[0], 1, 1, 1)
        return rec_loss, p_loss

    # -- GAN ------------------------------------------------------------------------------------
    def gan_active(self, global_step: int) -> bool:
        """Whether the adversarial term can be non-zero at this step.

        False before ``disc_start`` and when ``disc_weight`` or ``disc_factor`` is 0; a trainer may
        then skip the discriminator step entirely (it would return an exact 0 anyway).
        """
        return (
            adopt_weight(self.disc_factor, global_step, threshold=self.discriminator_iter_start) > 0
            and self.discriminator_weight > 0
        )

    def _discriminate(self, images: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        n_layers = self.discriminator.n_layers
        if patchgan_output_size(min(images.shape[-2:]), n_layers) < 1:
            raise ValueError(
                f"images of size {tuple(images.shape[-2:])} are too small for a {n_layers}-layer "
                f"PatchGAN (it needs at least {_min_patchgan_size(n_layers)} px); lower "
                "disc_num_layers or use larger images."
            )
        if cond is None:
            if self.disc_conditional:
                raise ValueError("this loss was built with disc_conditional=True: pass cond=...")
            return self.discriminator(images.contiguous())
        if not self.disc_conditional:
            raise ValueError("cond was given but the loss was built with disc_conditional=False.")
        return self.discriminator(torch.cat((images.contiguous(), cond), dim=1))

    def calculate_adaptive_weight(
        self, nll_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor
    ) -> torch.Tensor:
        """:func:`calculate_adaptive_weight` times this loss's ``disc_weight``."""
        return calculate_adaptive_weight(nll_loss, g_loss, last_layer, self.discriminator_weight)

    def _generator_terms(self, nll_loss, reconstructions, global_step, last_layer, cond):
        """``(g_loss, d_weight, disc_factor)`` of the autoencoder step.

        ``g_loss = -mean D(x_hat)``; ``d_weight`` is the adaptive weight when gradients are
        available (training with ``last_layer``), else 0 (validation / no_grad), as in LDM.
        Before ``disc_start`` (or with the GAN switched off) the discriminator is not run at all
        and all three are exact zeros.
        """
        zero = nll_loss.new_zeros(())
        disc_factor = adopt_weight(self.disc_factor, global_step, threshold=self.discriminator_iter_start)
        if not self.gan_active(global_step):
            return zero, zero, float(disc_factor)
        logits_fake = self._discriminate(reconstructions, cond)
        g_loss = -torch.mean(logits_fake)
        grads_available = torch.is_grad_enabled() and nll_loss.requires_grad and g_loss.requires_grad
        if last_layer is not None and grads_available:
            d_weight = self.calculate_adaptive_weight(nll_loss, g_loss, last_layer)
        elif self.training and grads_available:
            raise ValueError(
                "the adversarial term needs last_layer=model.get_last_layer() for its adaptive weight "
                "(Esser et al. 2021, Eq. 7); pass it, or switch the GAN off (disc_weight=0)."
            )
        else:
            d_weight = zero
        return g_loss, d_weight, float(disc_factor)

    def _discriminator_step(self, inputs, reconstructions, global_step, cond, split):
        """``optimizer_idx=1``: GAN loss of the discriminator on detached real / reconstructed images."""
        _check_pair(inputs, reconstructions)
        disc_factor = adopt_weight(self.disc_factor, global_step, threshold=self.discriminator_iter_start)
        if not self.gan_active(global_step):
            # Exact 0 that still supports .backward() (no discriminator parameter gets a gradient).
            d_loss = inputs.new_zeros((), requires_grad=True)
            zero = inputs.new_zeros(())
            logits_real = logits_fake = zero
        else:
            logits_real = self._discriminate(inputs.detach(), cond)
            logits_fake = self._discriminate(reconstructions.detach(), cond)
            d_loss = disc_factor * self.disc_loss(logits_real, logits_fake)
        log = {
            f"{split}/disc_loss": d_loss.detach().clone(),
            f"{split}/disc_factor": torch.tensor(float(disc_factor)),
            f"{split}/logits_real": logits_real.detach().mean(),
            f"{split}/logits_fake": logits_fake.detach().mean(),
        }
        return d_loss, log


# =============================================================================================
# KL autoencoder loss
# =============================================================================================
class LPIPSWithDiscriminator(_PerceptualGANLoss):
    """Loss of the KL-regularised autoencoder ``AutoencoderKL`` (LDM Sec. 3.1, App. G).

    Autoencoder step (``optimizer_idx=0``)::

        rec   = |x - x_hat| + perceptual_weight * d_perc(x, x_hat)            (B, C, H, W)
        nll   = sum( rec / exp(logvar) + logvar ) / B                         learned scalar logvar
        kl    = sum( posteriors.kl() ) / B          posteriors.kl(): (B,), summed over latent dims
        g     = -mean D(x_hat)
        loss  = nll_w + kl_weight * kl + d_weight * disc_factor * g

    ``nll`` is the negative log-likelihood of a Laplace decoder with one learned scale
    ``exp(logvar)`` (up to constants), summed over pixels and averaged over the batch; ``nll_w`` is
    the same with optional per-pixel ``weights``. Because it is a *sum* over pixels, a
    ``kl_weight`` of 1e-6 (the paper's "very small" weight, Sec. 3.1) still gives the KL a say.
    ``d_weight`` is the adaptive weight (Esser et al. 2021, Eq. 7) computed from the unweighted
    ``nll``; ``disc_factor`` is 0 before ``disc_start``.

    Discriminator step (``optimizer_idx=1``)::

        d_loss = disc_factor * disc_loss(D(x), D(x_hat))        on detached images

    Args:
        disc_start: global step at which the GAN is switched on.
        logvar_init: initial value of the learned log-variance.
        kl_weight: weight of the KL term (LDM configs: 1e-6).
        pixelloss_weight: weight of the L1 term.
        disc_num_layers, disc_in_channels, disc_ndf, use_actnorm: the PatchGAN.
        disc_factor: GAN factor after ``disc_start``.
        disc_weight: multiplies the adaptive weight (LDM configs: 0.5); 0 switches the GAN off.
        perceptual_weight: weight of the perceptual term; 0 switches it off (not computed).
        perceptual: ``"auto" | "lpips" | "random-vgg" | "none"`` or a ready
            :class:`~ldm_lite.autoencoder.perceptual.PerceptualLoss` (share one between losses).
        disc_conditional: the discriminator also sees ``cond`` (concatenated on channels).
        disc_loss: ``"hinge"`` or ``"vanilla"``.
    """

    def __init__(
        self,
        disc_start: int,
        logvar_init: float = 0.0,
        kl_weight: float = 1e-6,
        pixelloss_weight: float = 1.0,
        disc_num_layers: int = 3,
        disc_in_channels: int = 3,
        disc_factor: float = 1.0,
        disc_weight: float = 0.5,
        perceptual_weight: float = 1.0,
        perceptual: str | PerceptualLoss = "auto",
        use_actnorm: bool = False,
        disc_conditional: bool = False,
        disc_loss: str = "hinge",
        disc_ndf: int = 64,
    ):
        super().__init__(
            disc_start=disc_start,
            pixelloss_weight=pixelloss_weight,
            disc_num_layers=disc_num_layers,
            disc_in_channels=disc_in_channels,
            disc_ndf=disc_ndf,
            disc_factor=disc_factor,
            disc_weight=disc_weight,
            perceptual_weight=perceptual_weight,
            perceptual=perceptual,
            use_actnorm=use_actnorm,
            disc_conditional=disc_conditional,
            disc_loss=disc_loss,
        )
        self.kl_weight = kl_weight
        self.logvar = nn.Parameter(torch.ones(()) * logvar_init)

    def forward(
        self,
        inputs: torch.Tensor,
        reconstructions: torch.Tensor,
        posteriors,
        optimizer_idx: int,
        global_step: int,
        last_layer: torch.Tensor | None = None,
        cond: torch.Tensor | None = None,
        split: str = "train",
        weights: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Return ``(loss, log)``; ``log`` maps ``"{split}/name"`` to detached 0-dim tensors.

        Args:
            inputs, reconstructions: ``(B, C, H, W)`` images in [-1, 1].
            posteriors: object with ``.kl() -> (B,)`` (``DiagonalGaussianDistribution``).
            optimizer_idx: 0 = autoencoder step, 1 = discriminator step.
            global_step: training step, compared with ``disc_start``.
            last_layer: decoder's last weight, ``model.get_last_layer()`` (needed while the GAN
                is on and gradients are enabled).
            cond: extra discriminator input when ``disc_conditional``.
            split: log-key prefix, e.g. ``"train"`` or ``"val"``.
            weights: optional per-pixel weights broadcastable to ``(B, C, H, W)``.
        """
        if optimizer_idx == 1:
            return self._discriminator_step(inputs, reconstructions, global_step, cond, split)
        if optimizer_idx != 0:
            raise ValueError(f"optimizer_idx must be 0 (autoencoder) or 1 (discriminator); got {optimizer_idx}.")

        rec_loss, p_loss = self.reconstruction_loss(inputs, reconstructions)
        nll_loss = rec_loss / torch.exp(self.logvar) + self.logvar
        weighted_nll_loss = nll_loss if weights is None else weights * nll_loss
        weighted_nll_loss = torch.sum(weighted_nll_loss) / weighted_nll_loss.shape[0]
        nll_loss = torch.sum(nll_loss) / nll_loss.shape[0]
        kl_loss = posteriors.kl()
        kl_loss = torch.sum(kl_loss) / kl_loss.shape[0]

        g_loss, d_weight, disc_factor = self._generator_terms(
            nll_loss, reconstructions, global_step, last_layer, cond
        )
        loss = weighted_nll_loss + self.kl_weight * kl_loss + d_weight * disc_factor * g_loss

        log = {
            f"{split}/total_loss": loss.detach().clone(),
            f"{split}/logvar": self.logvar.detach().clone(),
            f"{split}/kl_loss": kl_loss.detach(),
            f"{split}/nll_loss": nll_loss.detach(),
            f"{split}/rec_loss": rec_loss.detach().mean(),
            f"{split}/p_loss": p_loss.detach().mean(),
            f"{split}/d_weight": d_weight.detach(),
            f"{split}/disc_factor": torch.tensor(disc_factor),
            f"{split}/g_loss": g_loss.detach(),
        }
        return loss, log


# =============================================================================================
# VQ autoencoder loss
# =============================================================================================
class VQLPIPSWithDiscriminator(_PerceptualGANLoss):
    """Loss of the VQ-regularised autoencoder ``VQModel`` (LDM Sec. 3.1; taming, Esser et al. 2021).

    Autoencoder step (``optimizer_idx=0``)::

        rec   = |x - x_hat| + perceptual_weight * d_perc(x, x_hat)            (B, C, H, W)
        nll   = mean(rec)                                   a plain mean, as in taming
        loss  = nll + d_weight * disc_factor * (-mean D(x_hat)) + codebook_weight * mean(codebook_loss)

    ``codebook_loss`` is the vector quantiser's codebook + commitment loss (VQ-VAE,
    van den Oord et al. 2017). Note the scale difference to :class:`LPIPSWithDiscriminator`, whose
    NLL is summed over pixels: that is how the two CompVis losses are written. There is no learned
    log-variance here. The discriminator step is the same as in the KL loss.
    """

    def __init__(
        self,
        disc_start: int,
        codebook_weight: float = 1.0,
        pixelloss_weight: float = 1.0,
        disc_num_layers: int = 3,
        disc_in_channels: int = 3,
        disc_factor: float = 1.0,
        disc_weight: float = 1.0,
        perceptual_weight: float = 1.0,
        perceptual: str | PerceptualLoss = "auto",
        use_actnorm: bool = False,
        disc_conditional: bool = False,
        disc_ndf: int = 64,
        disc_loss: str = "hinge",
    ):
        super().__init__(
            disc_start=disc_start,
            pixelloss_weight=pixelloss_weight,
            disc_num_layers=disc_num_layers,
            disc_in_channels=disc_in_channels,
            disc_ndf=disc_ndf,
            disc_factor=disc_factor,
            disc_weight=disc_weight,
            perceptual_weight=perceptual_weight,
            perceptual=perceptual,
            use_actnorm=use_actnorm,
            disc_conditional=disc_conditional,
            disc_loss=disc_loss,
        )
        self.codebook_weight = codebook_weight

    def forward(
        self,
        codebook_loss: torch.Tensor,
        inputs: torch.Tensor,
        reconstructions: torch.Tensor,
        optimizer_idx: int,
        global_step: int,
        last_layer: torch.Tensor | None = None,
        cond: torch.Tensor | None = None,
        split: str = "train",
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Return ``(loss, log)``; arguments as in :meth:`LPIPSWithDiscriminator.forward`, with the
        quantiser's ``codebook_loss`` (a scalar or per-sample tensor) in place of ``posteriors``."""
        if optimizer_idx == 1:
            return self._discriminator_step(inputs, reconstructions, global_step, cond, split)
        if optimizer_idx != 0:
            raise ValueError(f"optimizer_idx must be 0 (autoencoder) or 1 (discriminator); got {optimizer_idx}.")

        rec_loss, p_loss = self.reconstruction_loss(inputs, reconstructions)
        nll_loss = torch.mean(rec_loss)
        g_loss, d_weight, disc_factor = self._generator_terms(
            nll_loss, reconstructions, global_step, last_layer, cond
        )
        codebook_loss = codebook_loss.mean()
        loss = nll_loss + d_weight * disc_factor * g_loss + self.codebook_weight * codebook_loss

        log = {
            f"{split}/total_loss": loss.detach().clone(),
            f"{split}/quant_loss": codebook_loss.detach(),
            f"{split}/nll_loss": nll_loss.detach(),
            f"{split}/rec_loss": rec_loss.detach().mean(),
            f"{split}/p_loss": p_loss.detach().mean(),
            f"{split}/d_weight": d_weight.detach(),
            f"{split}/disc_factor": torch.tensor(disc_factor),
            f"{split}/g_loss": g_loss.detach(),
        }
        return loss, log


@dataclass
class AELossConfig:
    """The first-stage loss's settings (Sec. 3.1): reconstruction + perceptual + regulariser + PatchGAN."""

    kl_weight: float = setting(1e-6, "--reg kl: weight of the KL term", type="non-negative")
    codebook_weight: float = setting(1.0, "--reg vq: weight of the codebook + commitment loss", type="non-negative")
    perceptual_weight: float = setting(1.0, "weight of the perceptual loss (0: off)", type="non-negative")
    perceptual: str = setting("auto", "auto | lpips | random-vgg | none (needs --perceptual-weight > 0)")
    disc_start: int = setting(10**9, "step at which the PatchGAN starts", type="count", shown="no GAN")
    disc_weight: float = setting(0.5, "with --disc-start: weight of the GAN loss", type="non-negative")

    def build(self, reg: str, perceptual: str | PerceptualLoss | None = None) -> nn.Module:
        """The loss of a ``reg`` ("kl" / "vq") autoencoder; ``perceptual`` may pass a shared PerceptualLoss."""
        common = dict(disc_start=self.disc_start, disc_weight=self.disc_weight,
                      perceptual_weight=self.perceptual_weight, perceptual=perceptual or self.perceptual)
        if reg == "vq":
            return VQLPIPSWithDiscriminator(codebook_weight=self.codebook_weight, **common)
        return LPIPSWithDiscriminator(kl_weight=self.kl_weight, **common)
