"""Perceptual distance for the first-stage autoencoder (LDM Sec. 3.1, App. G).

The LDM autoencoder is trained with "a combination of a perceptual loss [Zhang et al. 2018] and a
patch-based adversarial objective" (Sec. 3.1). The perceptual loss in the CompVis code is LPIPS
with a VGG16 trunk: both images go through a frozen ImageNet-trained VGG16, the five feature maps
``relu1_2 … relu5_3`` are unit-normalised along channels, their squared differences are weighted
per channel by small learned 1x1 "linear" layers, averaged over space and summed over the five
stages.

Front door
----------
``get_perceptual_loss(kind)`` (or ``PerceptualLoss(kind)``) returns a frozen module
``d = loss(x, y)`` with ``x, y`` of shape ``(B, 3, H, W)`` in ``[-1, 1]`` and ``d`` of shape
``(B, 1, 1, 1)`` — the same contract as ``lpips.LPIPS``. ``kind`` is one of

* ``"lpips"``      the real ``lpips.LPIPS(net="vgg")``. Needs the torchvision VGG16 ImageNet weights
  ``vgg16-397923af.pth`` in the torch hub cache (``$TORCH_HOME/hub/checkpoints`` or
  ``~/.cache/torch/hub/checkpoints``); the linear-layer weights ship inside the ``lpips`` package.
* ``"random-vgg"`` a clearly labelled SUBSTITUTE for machines that cannot download ImageNet
  weights (see below).
* ``"auto"``       ``"lpips"`` when the VGG16 weights are on disk, otherwise ``"random-vgg"``.
* ``"none"``       always 0 (pixel loss only; used by the loss ablation of notebook 01).

Which one is in use is printed once per process (the substitute as a ``warnings.warn``, so it is
never silent) and is available as ``loss.name`` and ``loss.is_substitute``.

The offline substitute, and why
-------------------------------
Without the ImageNet VGG16 weights we keep LPIPS's *architecture and distance* and replace only the
trunk's weights by a fixed-seed random initialisation: the LPIPS input scaling, the VGG16 conv
stack tapped at ``relu1_2, relu2_2, relu3_3, relu4_3, relu5_3``, unit-normalised channel features,
squared differences summed over channels, averaged over space, and summed over the five stages with
uniform weights. This is exactly the "baseline" variant of the ``lpips`` package
(``lpips.LPIPS(net="vgg", lpips=False, pnet_rand=True)``, no learned linear layers, which are only
meaningful on top of ImageNet features) — the tests check our module against it number for number.

Why this and not something else:

* Amir & Weiss, "Understanding and Simplifying Perceptual Distances" (CVPR 2021), show that deep
  CNN features with *random* filters already give perceptual losses with "similar success" to
  trained ones, and explain why: in the wide limit the distance compares local patch statistics
  (an MMD between patch distributions). He, Wang & Hopcroft (NeurIPS 2016) likewise invert images,
  synthesise textures and transfer style with untrained, random-weight VGGs.
* Zhang et al. 2018 (the LPIPS paper, Sec. 4) include randomly initialised networks in their
  comparison only as a baseline: trained networks, whatever their supervision, agree with human
  judgements clearly better. As a *metric* the substitute is therefore weaker than LPIPS, so it is
  labelled and never reported as "LPIPS".
* It keeps the real code path intact: with the weights present, the same call gives real LPIPS,
  and every number reported by the course names the distance that produced it.

Alternatives considered: a pixel-space multi-scale SSIM (no deep features at all; it is a
different loss, not a stand-in for LPIPS) and features of a classifier trained on the course's own
data (circular when that data is also what the autoencoder reconstructs). Nothing in the installed
packages ships ImageNet-trained image weights.

Cost: a VGG16 stack is not cheap on a CPU. One forward+backward at 64 px, batch 16 (target image
without a graph, reconstruction with one) is about 60 G multiply-adds: ~1.2 s of one core here.
For CPU-bound runs ``width=0.5`` (~0.37 s) or ``width=0.25`` (~0.13 s) keep the same layout with
fewer channels, or the ablation can set ``perceptual_weight=0``.

The random trunk itself (:class:`RandomVGG16Features`, its seed and the LPIPS input scaling) is defined in
:mod:`ldm_lite.metrics.features`, whose substitute sample-quality features use the same network; the names are
importable from here too.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from ldm_lite.metrics.features import (  # the random VGG16 trunk, shared with the metrics' substitute features
    _LPIPS_SCALE,
    _LPIPS_SHIFT,
    _STAGE_NAMES,  # noqa: F401
    _VGG16_STAGES,  # noqa: F401
    RANDOM_VGG_SEED,
    RandomVGG16Features,
)
from ldm_lite.notices import announce_once

__all__ = [
    "KINDS",
    "PerceptualLoss",
    "PerceptualSubstituteWarning",
    "RandomVGG16Features",
    "get_perceptual_loss",
    "imagenet_vgg16_weights_path",
    "imagenet_vgg16_weights_available",
    "lpips_distance",
]

logger = logging.getLogger(__name__)

KINDS = ("auto", "lpips", "random-vgg", "none")

#: File name torchvision gives the ImageNet VGG16 weights (``VGG16_Weights.IMAGENET1K_V1``).
VGG16_IMAGENET_FILE = "vgg16-397923af.pth"

#: Smallest image side: four 2x2 max-pools before relu5_3 leave a 1x1 map at 16 px.
MIN_SIZE = 16


class PerceptualSubstituteWarning(UserWarning):
    """Issued (once per process) when a substitute for the real LPIPS is in use."""


# --------------------------------------------------------------------------------------------
# Where the real weights would be
# --------------------------------------------------------------------------------------------
def imagenet_vgg16_weights_path() -> Path:
    """Where torchvision looks for the ImageNet VGG16 weights, without downloading anything.

    ``torch.hub.get_dir()`` honours ``$TORCH_HOME`` (then ``$XDG_CACHE_HOME``, then
    ``~/.cache/torch``); torchvision keeps its checkpoints in ``<hub dir>/checkpoints``.
    """
    return Path(torch.hub.get_dir()) / "checkpoints" / VGG16_IMAGENET_FILE


def imagenet_vgg16_weights_available() -> bool:
    """True when the real LPIPS can be built offline (VGG16 weights on disk, ``lpips`` importable)."""
    if not imagenet_vgg16_weights_path().is_file():
        return False
    try:
        import lpips  # noqa: F401
    except ImportError:
        return False
    return True


# --------------------------------------------------------------------------------------------
# The pieces of LPIPS
# --------------------------------------------------------------------------------------------
def normalize_channels(feat: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Unit-normalise a feature map along channels: ``(B, C, h, w) -> (B, C, h, w)``.

    As in LPIPS (Zhang et al. 2018, Eq. 1): every spatial position becomes a unit vector, so the
    distance compares feature *directions*, not magnitudes.
    """
    return feat / (feat.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


class _RandomVGGDistance(nn.Module):
    """LPIPS distance without learned linear layers on a random VGG16 (the offline substitute).

    ``d(x, y) = sum_l mean_{h,w} || n(f_l(x))_{hw} - n(f_l(y))_{hw} ||^2`` over the five stages
    ``l``, with ``n`` the channel-wise unit normalisation. Each stage contributes
    ``2 (1 - cos)`` in ``[0, 4]``, so ``d`` lies in ``[0, 20]``.
    """

    def __init__(self, seed: int = RANDOM_VGG_SEED, width: float = 1.0):
        super().__init__()
        self.register_buffer("shift", torch.tensor(_LPIPS_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_LPIPS_SCALE).view(1, 3, 1, 1), persistent=False)
        self.net = RandomVGG16Features(seed, width)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The five unit-normalised feature maps of ``x`` (``(B, 3, H, W)`` in [-1, 1]).

        Runs without building an autograd graph when ``x`` does not need one (the target image of
        a reconstruction loss): that halves the backward pass.
        """
        with torch.set_grad_enabled(torch.is_grad_enabled() and x.requires_grad):
            # Normalise in float32: under fp16 autocast the eps would underflow to 0 (0/0 = NaN).
            return [normalize_channels(f.float()) for f in self.net((x - self.shift) / self.scale)]

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        d = x.new_zeros(x.shape[0], 1, 1, 1)
        for fx, fy in zip(self.features(x), self.features(y)):
            d = d + (fx - fy).pow(2).sum(dim=1, keepdim=True).mean(dim=(2, 3), keepdim=True)
        return d


class _ZeroDistance(nn.Module):
    """``kind="none"``: a distance that is always 0, shape ``(B, 1, 1, 1)``."""

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(x.shape[0], 1, 1, 1)


# --------------------------------------------------------------------------------------------
# The front door
# --------------------------------------------------------------------------------------------
_ANNOUNCED: set[str] = set()


def _announce(name: str, substitute: bool) -> None:
    """Say once per process which perceptual distance is in use (never silently)."""
    msg = f"ldm_lite perceptual loss: {name}"
    if substitute:
        msg += (
            f". The real LPIPS needs the ImageNet VGG16 weights at {imagenet_vgg16_weights_path()} "
            "(download them once with `torchvision.models.vgg16(weights='IMAGENET1K_V1')` on a "
            "machine with internet, or copy the file there); numbers from this substitute are not "
            "comparable with published LPIPS values."
        )
    announce_once(_ANNOUNCED, name, msg, substitute, PerceptualSubstituteWarning, logger)


def _resolve(kind: str) -> str:
    if not isinstance(kind, str) or kind not in KINDS:
        raise ValueError(f"unknown perceptual loss kind {kind!r}; use one of {', '.join(map(repr, KINDS))}.")
    if kind == "auto":
        return "lpips" if imagenet_vgg16_weights_available() else "random-vgg"
    return kind


class PerceptualLoss(nn.Module):
    """Frozen perceptual distance ``d(x, y)``: ``(B,3,H,W), (B,3,H,W) -> (B,1,1,1)``.

    Inputs in ``[-1, 1]``, any size from 16 px up (the VGG16 stack pools four times). The module is
    always in eval mode (``.train()`` is a no-op, so ``LPIPS``'s dropout can never switch on when
    the surrounding loss is put in training mode) and has no trainable parameters. Gradients flow
    to its *inputs*, which is what a perceptual loss needs.

    Attributes:
        kind: the resolved kind (``"lpips"``, ``"random-vgg"`` or ``"none"``).
        name: human-readable description, e.g. ``"lpips-vgg (ImageNet)"`` or
            ``"SUBSTITUTE: random-init VGG16 features (no ImageNet weights offline)"``.
        is_substitute: True unless this is the real LPIPS (or ``"none"``).
    """

    def __init__(
        self, kind: str = "auto", seed: int = RANDOM_VGG_SEED, width: float = 1.0, announce: bool = True
    ):
        super().__init__()
        self.kind = _resolve(kind)
        if self.kind == "lpips":
            self.net = self._build_lpips()
            self.name = "lpips-vgg (ImageNet)"
            self.is_substitute = False
        elif self.kind == "random-vgg":
            self.net = _RandomVGGDistance(seed, width)
            self.name = "SUBSTITUTE: random-init VGG16 features (no ImageNet weights offline)"
            if seed != RANDOM_VGG_SEED:
                self.name += f" [seed {seed}]"
            if width != 1.0:
                self.name += f" [width x{width:g}]"
            self.is_substitute = True
        else:  # "none"
            self.net = _ZeroDistance()
            self.name = "none (pixel loss only)"
            self.is_substitute = False
        for p in self.parameters():
            p.requires_grad_(False)
        super().train(False)
        if announce and self.kind != "none":
            _announce(self.name, self.is_substitute)

    @staticmethod
    def _build_lpips() -> nn.Module:
        path = imagenet_vgg16_weights_path()
        if not path.is_file():
            raise FileNotFoundError(
                f"perceptual='lpips' needs the ImageNet VGG16 weights at {path}, which are not there "
                "(this machine may have no internet). Fetch them once with "
                "`torchvision.models.vgg16(weights='IMAGENET1K_V1')` where there is internet, set "
                "TORCH_HOME to a folder holding hub/checkpoints/" + VGG16_IMAGENET_FILE + ", or use "
                "perceptual='auto' / 'random-vgg' for the labelled offline substitute."
            )
        try:
            import lpips
        except ImportError as err:  # pragma: no cover - lpips is in requirements.txt
            raise ImportError("perceptual='lpips' needs the `lpips` package: pip install lpips") from err
        with warnings.catch_warnings():  # lpips passes torchvision's deprecated `pretrained=`
            warnings.simplefilter("ignore", UserWarning)
            return lpips.LPIPS(net="vgg", verbose=False)

    def train(self, mode: bool = True) -> "PerceptualLoss":
        """Stay in eval mode whatever the caller asks (the network is frozen)."""
        return super().train(False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-sample distance ``(B, 1, 1, 1)`` between images ``x`` and ``y`` in ``[-1, 1]``."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"perceptual loss expects images of shape (B, 3, H, W); got {tuple(x.shape)}.")
        if x.shape != y.shape:
            raise ValueError(
                f"perceptual loss: the two images must have the same shape; got {tuple(x.shape)} and "
                f"{tuple(y.shape)}."
            )
        if min(x.shape[-2:]) < MIN_SIZE and self.kind != "none":
            raise ValueError(
                f"perceptual loss needs images of at least {MIN_SIZE}x{MIN_SIZE} px (VGG16 pools 4 "
                f"times); got {tuple(x.shape[-2:])}. Upsample first or use perceptual='none'."
            )
        return self.net(x, y)

    def extra_repr(self) -> str:
        return f"name={self.name!r}"


def get_perceptual_loss(kind: str = "auto", seed: int = RANDOM_VGG_SEED, width: float = 1.0) -> PerceptualLoss:
    """Build the perceptual distance: ``"auto" | "lpips" | "random-vgg" | "none"``.

    ``"auto"`` picks the real LPIPS when the ImageNet VGG16 weights are on disk, otherwise the
    labelled random-VGG substitute. ``seed`` and ``width`` (fraction of VGG16's channels, for
    CPU-bound runs) only affect the substitute; the real LPIPS is fixed. Unknown kinds raise ``ValueError``; ``"lpips"`` without the
    weights raises ``FileNotFoundError`` saying where to put them.
    """
    return PerceptualLoss(kind, seed=seed, width=width)


_METRIC_CACHE: dict[tuple[str, str], PerceptualLoss] = {}


@torch.no_grad()
def lpips_distance(x: torch.Tensor, y: torch.Tensor, kind: str = "auto") -> torch.Tensor:
    """Perceptual distance for evaluation: ``(B,3,H,W), (B,3,H,W) in [-1,1] -> (B,)``.

    Uses (and caches, per kind and device) the same front door as the training loss; read
    ``get_perceptual_loss(kind).name`` to report *which* distance produced the numbers.
    """
    resolved = _resolve(kind)
    key = (resolved, str(x.device))
    if key not in _METRIC_CACHE:
        _METRIC_CACHE[key] = PerceptualLoss(resolved).to(x.device)
    return _METRIC_CACHE[key](x, y).flatten()
