"""Image-quality metrics.

Reconstruction metrics (chapter 01): PSNR and SSIM on images in [-1, 1], computed on the [0, 1] scale
per image and averaged. The LPIPS distance lives in ``ldm_lite.autoencoder.perceptual`` (real LPIPS when
its ImageNet backbone is present, a labelled substitute otherwise).

Sample-quality metrics (chapters 05 and 08) compare a set of real images with a set of generated ones
through a feature network ("embedding"): FID, KID and precision/recall. They live in the second half
of this module, after PSNR and SSIM; see the section "Sample quality on pluggable features".
"""

from __future__ import annotations

import glob
import logging
import warnings
from pathlib import Path
from functools import lru_cache
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ldm_lite.notices import announce_once

logger = logging.getLogger(__name__)


def _to_unit(x: torch.Tensor) -> torch.Tensor:
    return ((x.float().clamp(-1, 1) + 1) / 2)


def _check_pair(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.shape != y.shape:
        raise ValueError(f"images must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.dim() != 4:
        raise ValueError(f"expected (B, C, H, W) images, got {tuple(x.shape)}")


def psnr(x: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Peak signal-to-noise ratio in dB, per image on the [0, 1] scale: 10 log10(1 / MSE).

    x, y: (B, C, H, W) in [-1, 1]. ``reduction="none"`` returns (B,).
    """
    _check_pair(x, y)
    mse = (_to_unit(x) - _to_unit(y)).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    out = 10 * torch.log10(1.0 / mse)
    return out.mean() if reduction == "mean" else out


def _gaussian_window(size: int, sigma: float, channels: int, device, dtype) -> torch.Tensor:
    coords = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()


def ssim(x: torch.Tensor, y: torch.Tensor, window: int = 7, sigma: float = 1.5, reduction: str = "mean",
         gaussian: bool = True) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004) on the [0, 1] scale, averaged over channels and the
    valid (unpadded) window positions.

    Defaults: a 7x7 Gaussian window with sigma 1.5 (a 7-pixel window suits 32-64 px images better than
    the original 11), K1 = 0.01, K2 = 0.03 -- within ~1e-3 of
    ``skimage.metrics.structural_similarity(..., gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=1)``, which truncates its Gaussian at 11 px.
    """
    _check_pair(x, y)
    a, b = _to_unit(x), _to_unit(y)
    C = a.shape[1]
    if min(a.shape[-2:]) < window:
        raise ValueError(f"images of size {tuple(a.shape[-2:])} are smaller than the SSIM window ({window})")
    if gaussian:
        w = _gaussian_window(window, sigma, C, a.device, a.dtype)
    else:
        w = torch.full((C, 1, window, window), 1.0 / window**2, device=a.device, dtype=a.dtype)
    conv = lambda t: F.conv2d(t, w, groups=C)  # noqa: E731  valid positions only
    mu_a, mu_b = conv(a), conv(b)
    var_a = conv(a * a) - mu_a**2
    var_b = conv(b * b) - mu_b**2
    cov = conv(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    out = s.flatten(1).mean(1)
    return out.mean() if reduction == "mean" else out


# ================================================================================================
# Sample quality on pluggable features (chapters 05 and 08)
# ================================================================================================
#
# Every sample-quality metric here has two halves:
#
#   1. an *embedding*: a frozen network phi maps each image to a feature vector, giving a real set
#      R = {phi(x_i)} of shape (N_r, d) and a generated set G = {phi(y_j)} of shape (N_g, d);
#   2. a *comparison* of the two point clouds: FID (two Gaussians), KID (a kernel two-sample
#      statistic), precision / recall (k-NN manifold estimates).
#
# The LDM paper (Rombach et al. 2022, Sec. 4) reports FID, together with precision and recall, on
# Inception-v3 features. Inception's ImageNet weights cannot be downloaded on an offline machine, so
# the embedding is pluggable (``get_feature_extractor``): the real Inception when its weights are in
# the torch hub cache, otherwise a clearly labelled SUBSTITUTE. Every front-door result carries the
# feature's name, and the notebooks print it next to every number.
#
# Two facts a learner must keep in mind when reading these numbers:
#   * A value is only comparable with values computed with the *same* features (and, for FID, the
#     same number of samples: FID is biased upwards at small N, Chong & Forsyth 2020). KID is
#     unbiased, which is why it is the better choice for the few hundred samples a CPU can afford.
#   * Numbers on substitute features are NOT comparable with published FIDs.


class FeatureSubstituteWarning(UserWarning):
    """Issued (once per process and feature) when a substitute for the Inception features is in use."""


#: Kinds accepted by :func:`get_feature_extractor`.
FEATURE_KINDS = ("auto", "inception", "random-vgg", "classifier")

#: torchvision's ImageNet Inception-v3 (``Inception_V3_Weights.IMAGENET1K_V1``).
TORCHVISION_INCEPTION_FILE = "inception_v3_google-0cc3c7bd.pth"
TORCHVISION_INCEPTION_GLOB = "inception_v3_google-*.pth"
#: The TF-ported Inception of the original FID code, as shipped by pytorch-fid.
FID_INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"
FID_INCEPTION_GLOB = "pt_inception-2015-12-05-*.pth"
FID_INCEPTION_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + FID_INCEPTION_FILE
)
#: Inception-v3's input side; images are resized to it bilinearly, as pytorch-fid does.
INCEPTION_SIZE = 299
INCEPTION_DIM = 2048

#: Stages of the random VGG16 whose globally averaged activations form the substitute's features.
RANDOM_VGG_FEATURE_LAYERS = ("relu3_3", "relu4_3", "relu5_3")
#: Side the substitute resizes every image to (so 28, 32 and 64 px images share one embedding).
RANDOM_VGG_FEATURE_SIZE = 64
#: Feature dimension of the full-width substitute: 256 + 512 + 512.
RANDOM_VGG_FEATURE_DIM = 1280


# ------------------------------------------------------------------------------------------------
# Where the Inception weights would be (checked without downloading anything)
# ------------------------------------------------------------------------------------------------
def hub_checkpoints_dir() -> Path:
    """``torch.hub.get_dir()/checkpoints``: where torchvision (and pytorch-fid) cache weights.

    ``torch.hub.get_dir()`` honours ``$TORCH_HOME`` (then ``$XDG_CACHE_HOME``, then ``~/.cache/torch``).
    """
    return Path(torch.hub.get_dir()) / "checkpoints"


def inception_weights_paths() -> dict[str, Path | None]:
    """The Inception weight files present in the hub cache: ``{"pytorch-fid": path|None, "torchvision": path|None}``."""
    d = hub_checkpoints_dir()
    found = {}
    for variant, pattern in (("pytorch-fid", FID_INCEPTION_GLOB), ("torchvision", TORCHVISION_INCEPTION_GLOB)):
        hits = sorted(glob.glob(str(d / pattern)))
        found[variant] = Path(hits[0]) if hits else None
    return found


def inception_weights_available() -> bool:
    """True when some Inception-v3 weight file is in the hub cache (see :func:`inception_weights_paths`)."""
    return any(p is not None for p in inception_weights_paths().values())


def _where_to_put_inception() -> str:
    d = hub_checkpoints_dir()
    return (
        f"For the standard FID put pytorch-fid's TF-ported weights at {d / FID_INCEPTION_FILE} "
        f"(from {FID_INCEPTION_URL}), or torchvision's ImageNet weights at {d / TORCHVISION_INCEPTION_FILE} "
        "(run `torchvision.models.inception_v3(weights='IMAGENET1K_V1')` once on a machine with internet "
        "and copy the file, or set TORCH_HOME to a folder holding hub/checkpoints/)."
    )


def _missing_inception_message() -> str:
    return (
        f"Inception-v3 weights are not in the torch hub cache {hub_checkpoints_dir()} (this machine may "
        f"have no internet). {_where_to_put_inception()} Without them use extractor='auto' / 'random-vgg' "
        "(the labelled substitute) or 'classifier'."
    )


# ------------------------------------------------------------------------------------------------
# Feature extractors
# ------------------------------------------------------------------------------------------------
def _prepare_images(images: torch.Tensor, channels: int | None) -> torch.Tensor:
    """Check a ``(B, C, H, W)`` batch in [-1, 1], clamp it, and adapt grey <-> RGB to ``channels``."""
    if not torch.is_tensor(images) or images.dim() != 4:
        shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
        raise ValueError(f"feature extractors take image batches (B, C, H, W) in [-1, 1]; got {shape}")
    x = images.float()
    if x.numel() and x.abs().max() > 2:
        raise ValueError(
            f"images must lie in [-1, 1]; got values up to {x.abs().max().item():.3g}. uint8 images "
            "(0..255) convert with x / 127.5 - 1."
        )
    x = x.clamp(-1, 1)  # samples overshoot a little; saved images would be clipped the same way
    c = x.shape[1]
    if channels is None or c == channels:
        return x
    if c == 1 and channels == 3:
        return x.expand(-1, 3, -1, -1)
    if c == 3 and channels == 1:
        return x.mean(dim=1, keepdim=True)
    raise ValueError(f"cannot turn {c}-channel images into the {channels} channels this feature network takes")


def _resize(x: torch.Tensor, size: int | None) -> torch.Tensor:
    if size is None or tuple(x.shape[-2:]) == (size, size):
        return x
    shrink = min(x.shape[-2:]) > size
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink)


class FeatureExtractor(nn.Module):
    """A frozen embedding ``(B, C, H, W) in [-1, 1] -> (B, dim)`` with a name that says what it is.

    Attributes:
        name: human-readable description, printed next to every number computed with it.
        is_substitute: False only for Inception-v3 (the network of published FIDs).
        dim: feature dimension (for ``"classifier"`` it may be ``None`` until the first call).

    Subclasses implement ``embed(x)`` on images already checked and clamped to [-1, 1], with the
    channel count in ``self.in_channels`` (None: leave as given). ``forward`` runs without autograd.
    The module is always in eval mode.
    """

    name: str = "features"
    is_substitute: bool = True
    dim: int | None = None
    in_channels: int | None = 3

    def embed(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        feats = self.embed(_prepare_images(images, self.in_channels).to(_module_device(self, images.device)))
        return feats.float()

    def train(self, mode: bool = True) -> "FeatureExtractor":
        """Stay in eval mode (the network is frozen; BatchNorm and dropout must not switch)."""
        return super().train(False)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, dim={self.dim}"


def _module_device(module: Any, default: torch.device | str = "cpu") -> torch.device:
    if isinstance(module, nn.Module):
        for t in module.parameters():
            return t.device
        for t in module.buffers():
            return t.device
    return torch.device(default)


class RandomVGGFeatureExtractor(FeatureExtractor):
    """The offline SUBSTITUTE for Inception features: pooled activations of a random VGG16.

    Definition. Images are resized to ``size`` x ``size`` (64 px by default, bilinear), scaled with
    ImageNet mean/std exactly as the perceptual substitute (``ldm_lite.autoencoder.perceptual``), and
    passed through the same fixed-seed random VGG16 trunk (:class:`RandomVGG16Features`, He-normal
    weights from ``torch.Generator(seed)``). The activations at ``relu3_3``, ``relu4_3`` and
    ``relu5_3`` are *averaged over space* and concatenated: ``(B, 3, H, W) -> (B, 256 + 512 + 512 =
    1280)`` (``width`` scales the channel counts).

    Why this definition:

    * Random convolutional features are a known weak but non-trivial embedding. Naeem et al.
      (ICML 2020) recommend randomly initialised VGG16 embeddings for data far from ImageNet,
      where ImageNet features carry their own bias; Amir & Weiss (CVPR 2021) and He, Wang & Hopcroft
      (NeurIPS 2016) show that random deep features already capture local image statistics
      (colours, edges, textures). They do not encode ImageNet semantics, so they are blind to much
      of what Inception features see: expect the substitute to separate clearly different sample
      sets (the tests check that it orders noise levels) but to be a weaker judge of small,
      semantic differences.
    * Global *average* pooling mirrors Inception's pool3 (itself a global average of the last conv
      block), and makes the feature independent of the image size. Max pooling was left out: on
      random ReLU maps the spatial maximum follows single outlier pixels (noise, aliasing) and at
      64 px ``relu5_3`` is only 4x4, where max and mean carry nearly the same information, while
      doubling ``dim`` doubles the samples a well-conditioned covariance needs.
    * Three depths (receptive fields of about 40, 90 and 200 px at 64 px input) mix texture-level and
      layout-level statistics; the two shallow stages (``relu1_2``, ``relu2_2``) mostly measure
      colour and pixel noise, which pixel-space metrics already cover.
    * A fixed resize to 64 px gives 28 px Fashion-MNIST, 32 px shapes and 64 px emoji the same
      embedding, so a model's samples and its data can be compared even when generated at another
      resolution; the deepest stage keeps a 4x4 map instead of collapsing to 1x1.

    FID values on these features are NOT comparable with published (Inception) FIDs, only with
    other values computed on the same features and the same sample counts.
    """

    def __init__(self, seed: int | None = None, width: float = 1.0, size: int = RANDOM_VGG_FEATURE_SIZE):
        super().__init__()
        # The same random trunk and input scaling as the perceptual substitute. Imported here, not at
        # the top: ldm_lite.autoencoder.training imports this module (no import cycle, ever).
        from ldm_lite.autoencoder.perceptual import (
            _LPIPS_SCALE,
            _LPIPS_SHIFT,
            _STAGE_NAMES,
            RANDOM_VGG_SEED,
            RandomVGG16Features,
        )

        seed = RANDOM_VGG_SEED if seed is None else seed
        if size < 16:
            raise ValueError(f"size must be at least 16 px (VGG16 pools four times); got {size}")
        self.seed, self.width, self.size = seed, width, size
        self.net = RandomVGG16Features(seed, width)
        self.register_buffer("shift", torch.tensor(_LPIPS_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_LPIPS_SCALE).view(1, 3, 1, 1), persistent=False)
        self.stages = [_STAGE_NAMES.index(layer) for layer in RANDOM_VGG_FEATURE_LAYERS]
        self.dim = sum(getattr(self.net, f"{self.net.layout[s][-1]}_weight").shape[0] for s in self.stages)
        self.name = "SUBSTITUTE: random-init VGG16 features (FID not comparable to Inception FID)"
        extras = [f"seed {seed}"] if seed != RANDOM_VGG_SEED else []
        extras += [f"width x{width:g}"] if width != 1.0 else []
        extras += [f"{size} px"] if size != RANDOM_VGG_FEATURE_SIZE else []
        if extras:
            self.name += " [" + ", ".join(extras) + "]"
        self.is_substitute = True
        self.in_channels = 3
        super().train(False)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.net((_resize(x, self.size) - self.shift) / self.scale)
        return torch.cat([maps[s].mean(dim=(2, 3)) for s in self.stages], dim=1)


@lru_cache(maxsize=None)
def _tf_pool_block(base: type, pool: str) -> type:
    """A torchvision Inception block whose pooling branch pools as TensorFlow's FID graph does.

    The FID Inception (TF graph ``inception-2015-12-05``) differs from torchvision's Inception-v3 in
    its pooling branches (facts from pytorch-fid's ``inception.py``): the 3x3 average pools exclude
    the zero padding from the mean (``count_include_pad=False``) in the A, C and first E blocks, and
    the last E block (``Mixed_7c``) max-pools instead. The parameters, and so the state-dict keys,
    are unchanged. The parent's last output is the pooling branch; we recompute it (one extra 1x1
    conv, a few percent of the block's cost) instead of copying the whole block.
    """

    def _forward(self, x):
        outputs = base._forward(self, x)
        if pool == "max":
            pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        else:
            pooled = F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)
        outputs[-1] = self.branch_pool(pooled)
        return outputs

    return type(f"TF{pool.capitalize()}Pool{base.__name__}", (base,), {"_forward": _forward})


def _build_fid_inception(path: Path) -> nn.Module:
    """torchvision's Inception-v3 with TF pooling, loaded with pytorch-fid's ``pt_inception`` weights.

    Raises ``RuntimeError`` when the file's keys do not match the architecture.
    """
    from torchvision.models import inception as tvi

    net = tvi.inception_v3(weights=None, num_classes=1008, aux_logits=False, init_weights=False)
    # Swap the classes of the A (5b-5d), C (6b-6e) and E (7b, 7c) blocks in place: same parameters.
    for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e", "Mixed_7b"):
        block = getattr(net, name)
        block.__class__ = _tf_pool_block(type(block), "avg")
    net.Mixed_7c.__class__ = _tf_pool_block(tvi.InceptionE, "max")
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    return net


def _build_torchvision_inception(path: Path) -> nn.Module:
    from torchvision.models import inception_v3

    net = inception_v3(weights=None, aux_logits=True, init_weights=False, transform_input=False)
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    return net


class InceptionFeatureExtractor(FeatureExtractor):
    """Inception-v3 pool3 features (2048-d), the embedding of FID (Heusel et al. 2017).

    Images are resized to 299 x 299 (bilinear, as pytorch-fid) and fed in [-1, 1], the range both
    weight sets expect (so torchvision's ``transform_input`` stays off). The output is the global
    average pool before the classifier: ``(B, 3, H, W) -> (B, 2048)``.

    Weights are looked up in ``torch.hub.get_dir()/checkpoints`` and never downloaded:

    * ``pt_inception-2015-12-05-*.pth`` -- the TF-ported weights of the original FID code, shipped
      by pytorch-fid. *This is the network of the original FID code*, the one published FIDs are
      computed with (torch-fidelity ports the same TF graph). It is loaded into torchvision's
      architecture with TF-style pooling (see :func:`_tf_pool_block`) only if its keys match
      exactly; otherwise it is skipped with a warning saying so.
    * ``inception_v3_google-*.pth`` -- torchvision's ImageNet weights: the same architecture with
      different weights; FIDs are close to but not identical with the standard ones.

    ``variant="auto"`` takes the first that loads. Missing files raise ``FileNotFoundError``
    saying where to put them.
    """

    def __init__(self, variant: str = "auto"):
        super().__init__()
        if variant not in ("auto", "pytorch-fid", "torchvision"):
            raise ValueError(f"unknown Inception variant {variant!r}; use 'auto', 'pytorch-fid' or 'torchvision'")
        paths = inception_weights_paths()
        net = None
        if variant in ("auto", "pytorch-fid") and paths["pytorch-fid"] is not None:
            try:
                net = _build_fid_inception(paths["pytorch-fid"])
                self.variant, self.weights_path = "pytorch-fid", paths["pytorch-fid"]
                self.name = "Inception-v3 pool3 (TF FID weights pt_inception-2015-12-05; standard FID)"
            except RuntimeError as err:
                first = str(err).strip().splitlines()[0]
                msg = (
                    f"{paths['pytorch-fid']} does not load into torchvision's Inception-v3 (keys do not "
                    f"match: {first}); skipping the TF-FID variant"
                )
                if variant == "pytorch-fid":
                    raise FileNotFoundError(msg + ". " + _missing_inception_message()) from err
                warnings.warn(msg + ".", UserWarning, stacklevel=2)
        if net is None and variant in ("auto", "torchvision") and paths["torchvision"] is not None:
            net = _build_torchvision_inception(paths["torchvision"])
            self.variant, self.weights_path = "torchvision", paths["torchvision"]
            self.name = (
                "Inception-v3 pool3 (torchvision ImageNet weights; close to, not identical with, "
                "the standard TF-Inception FID)"
            )
        if net is None:
            raise FileNotFoundError(_missing_inception_message())
        net.fc = nn.Identity()  # the pooled 2048-d vector is the output (dropout is off in eval)
        net.AuxLogits = None
        net.aux_logits = False
        for p in net.parameters():
            p.requires_grad_(False)
        self.net = net
        self.dim, self.is_substitute, self.in_channels = INCEPTION_DIM, False, 3
        super().train(False)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", align_corners=False)
        return self.net(x)


class ClassifierFeatureExtractor(FeatureExtractor):
    """Features of a user-supplied trained network (e.g. the classifier notebook 08 trains).

    ``classifier.features(x)`` is used when the object has such a method, otherwise
    ``classifier(x)``; either must return ``(B, d)`` (a ``(B, C, h, w)`` map is averaged over space,
    other shapes are flattened). The classifier runs in eval mode and without autograd; its own
    training flag is restored afterwards, and it is not registered as a submodule, so this wrapper
    never changes the caller's model.

    Args:
        classifier: the trained ``nn.Module`` or callable.
        in_channels: channels the classifier takes; 1 <-> 3 channel images are converted (grey
            repeated, RGB averaged). ``None`` passes images through unchanged.
        image_size: resize images to this side first (``None``: no resizing).
        dim: feature dimension, if known; otherwise ``classifier.feature_dim`` when present, else
            set on the first call.

    Labelled a SUBSTITUTE: its numbers mean something only for the data the classifier was trained
    on, and only next to numbers from the same classifier.
    """

    def __init__(self, classifier: Any, in_channels: int | None = None, image_size: int | None = None,
                 dim: int | None = None):
        super().__init__()
        if classifier is None:
            raise ValueError("extractor kind 'classifier' needs classifier=<a trained nn.Module or callable>")
        fn = getattr(classifier, "features", None)
        if not callable(fn):
            if not callable(classifier):
                raise TypeError(f"classifier must expose .features(x) or be callable; got {type(classifier).__name__}")
            fn = classifier
        object.__setattr__(self, "classifier", classifier)  # not a submodule: leave its mode alone
        object.__setattr__(self, "_fn", fn)
        self.in_channels, self.image_size = in_channels, image_size
        self.dim = dim if dim is not None else getattr(classifier, "feature_dim", None)
        self.name = (
            f"SUBSTITUTE: features of {type(classifier).__name__} (a classifier trained on the course's data; "
            "FID not comparable to Inception FID)"
        )
        self.is_substitute = True

    def _apply(self, fn, *args, **kwargs):  # .to(device) also moves the wrapped classifier
        if isinstance(self.classifier, nn.Module):
            self.classifier._apply(fn, *args, **kwargs)
        return super()._apply(fn, *args, **kwargs)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        x = _resize(x, self.image_size).to(_module_device(self.classifier, x.device))
        clf = self.classifier
        was_training = isinstance(clf, nn.Module) and clf.training
        if was_training:
            clf.eval()
        try:
            out = self._fn(x)
        finally:
            if was_training:
                clf.train(True)
        if not torch.is_tensor(out):
            raise TypeError(f"the classifier's features must be a tensor; got {type(out).__name__}")
        if out.dim() == 4:
            out = out.mean(dim=(2, 3))
        elif out.dim() != 2:
            out = out.flatten(1)
        if self.dim is None:
            self.dim = int(out.shape[1])
        elif out.shape[1] != self.dim:
            raise ValueError(f"the classifier returned {out.shape[1]} features, expected {self.dim}")
        return out


_ANNOUNCED: set[str] = set()


def _announce(extractor: FeatureExtractor) -> None:
    """Say once per process which features the sample-quality metrics use (never silently)."""
    name = extractor.name
    msg = f"ldm_lite sample-quality features: {name}"
    if extractor.is_substitute:
        if isinstance(extractor, RandomVGGFeatureExtractor):
            msg += f". No Inception-v3 weights in {hub_checkpoints_dir()}. " + _where_to_put_inception()
        else:
            msg += "."
        msg += (
            " Numbers on these features compare only with numbers on the same features and sample counts, "
            "never with published FIDs."
        )
    announce_once(_ANNOUNCED, name, msg, extractor.is_substitute, FeatureSubstituteWarning, logger)


def get_feature_extractor(kind: str = "auto", classifier: Any = None, announce: bool = True,
                          **kwargs) -> FeatureExtractor:
    """Build the embedding for FID / KID / precision-recall: one front door for all kinds.

    Args:
        kind: ``"inception"`` (Inception-v3 pool3, 2048-d; needs the weights in the hub cache, else
            ``FileNotFoundError`` saying where to put them), ``"random-vgg"`` (the labelled offline
            SUBSTITUTE, 1280-d, see :class:`RandomVGGFeatureExtractor`), ``"classifier"`` (features
            of ``classifier``, see :class:`ClassifierFeatureExtractor`), or ``"auto"``: Inception
            when its weights are present, otherwise random-vgg (``"classifier"`` when a classifier is
            given). A :class:`FeatureExtractor` is returned as it is.
        classifier: the trained network for ``kind="classifier"``.
        announce: print (real Inception) or ``warnings.warn`` (substitutes) the choice, once per process.
        **kwargs: passed to the extractor (``seed``, ``width``, ``size`` for random-vgg; ``variant``
            for inception; ``in_channels``, ``image_size``, ``dim`` for classifier).

    Returns a frozen module ``ext`` with ``ext.name``, ``ext.is_substitute``, ``ext.dim`` and
    ``ext(images)``: ``(B, C, H, W)`` in [-1, 1] -> ``(B, ext.dim)``.
    """
    if isinstance(kind, FeatureExtractor):
        return kind
    if not isinstance(kind, str) or kind not in FEATURE_KINDS:
        raise ValueError(f"unknown feature kind {kind!r}; use one of {', '.join(map(repr, FEATURE_KINDS))}")
    if kind == "auto" and classifier is not None:
        kind = "classifier"
    if classifier is not None and kind != "classifier":
        raise ValueError(f"classifier= is only used by kind='classifier', not {kind!r}")
    if kind == "classifier":
        ext: FeatureExtractor = ClassifierFeatureExtractor(classifier, **kwargs)
    elif kind == "inception":
        ext = InceptionFeatureExtractor(**kwargs)
    elif kind == "random-vgg":
        ext = RandomVGGFeatureExtractor(**kwargs)
    else:  # auto
        ext = None
        if inception_weights_available():
            try:
                ext = InceptionFeatureExtractor(**{k: v for k, v in kwargs.items() if k == "variant"})
            except FileNotFoundError:  # only an unusable pt_inception file was there
                ext = None
        if ext is None:
            ext = RandomVGGFeatureExtractor(**{k: v for k, v in kwargs.items() if k in ("seed", "width", "size")})
    if announce:
        _announce(ext)
    return ext


# ------------------------------------------------------------------------------------------------
# Images -> features
# ------------------------------------------------------------------------------------------------
def _image_of(sample: Any) -> torch.Tensor:
    if isinstance(sample, dict):
        if "image" not in sample:
            raise KeyError(f"dataset samples must hold an 'image'; got keys {sorted(sample)}")
        sample = sample["image"]
    elif isinstance(sample, (tuple, list)):
        sample = sample[0]
    if not torch.is_tensor(sample):
        raise TypeError(f"expected image tensors; got {type(sample).__name__}")
    return sample


def _iter_image_batches(source: Any, batch_size: int, limit: int | None) -> Iterator[torch.Tensor]:
    """Yield ``(b, C, H, W)`` batches from a tensor, a dataset (``ds[i]`` a dict with ``"image"``,
    a tuple or a tensor), a collated batch dict, or an iterable of batches (a DataLoader)."""
    n_left = float("inf") if limit is None else int(limit)
    if isinstance(source, dict):
        source = _image_of(source)
    if torch.is_tensor(source):
        if source.dim() == 3:
            source = source[None]
        for i in range(0, min(len(source), n_left), batch_size):
            yield source[i : min(i + batch_size, n_left)]
        return
    if hasattr(source, "__getitem__") and hasattr(source, "__len__"):  # map-style dataset, list
        n = min(len(source), n_left)
        for i in range(0, n, batch_size):
            items = [_image_of(source[j]) for j in range(i, min(i + batch_size, n))]
            yield torch.cat([t if t.dim() == 4 else t[None] for t in items])
        return
    for batch in source:  # DataLoader or generator of batches
        if n_left <= 0:
            return
        x = _image_of(batch)
        x = x if x.dim() == 4 else x[None]
        x = x[: int(min(len(x), n_left))]
        n_left -= len(x)
        yield x


@torch.no_grad()
def compute_features(extractor: FeatureExtractor | str, images_or_dataset: Any, batch_size: int = 64,
                     limit: int | None = None, progress: bool = False) -> torch.Tensor:
    """Embed a set of images: ``-> (N, extractor.dim)`` float32 on the CPU.

    ``images_or_dataset``: a ``(N, C, H, W)`` tensor in [-1, 1], a dataset whose samples are dicts
    with ``"image"`` (every ``ldm_lite.data`` dataset), tuples or tensors, or an iterable of batches
    (a DataLoader). ``limit`` embeds only the first ``limit`` images. Batches are moved to the
    extractor's device. ``extractor`` may also be a kind string (see :func:`get_feature_extractor`).
    """
    extractor = get_feature_extractor(extractor) if isinstance(extractor, str) else extractor
    batches = _iter_image_batches(images_or_dataset, batch_size, limit)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc=f"features ({extractor.name[:40]})", leave=False)
    device = _module_device(extractor, "cpu")
    out = [extractor(x.to(device)).cpu() for x in batches]
    if not out:
        raise ValueError("no images to embed (empty tensor or dataset, or limit=0)")
    return torch.cat(out).float()


# ------------------------------------------------------------------------------------------------
# Features -> numbers
# ------------------------------------------------------------------------------------------------
def _as_features(f: Any, what: str = "features", min_n: int = 2) -> np.ndarray:
    a = f.detach().cpu().double().numpy() if torch.is_tensor(f) else np.asarray(f, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"{what} must be a 2-D (N, d) array; got shape {a.shape}")
    if len(a) < min_n:
        raise ValueError(f"{what}: need at least {min_n} samples, got {len(a)}")
    if not np.isfinite(a).all():
        raise ValueError(f"{what} contain NaN or inf")
    return a


def feature_statistics(features: Any) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(d,)`` and covariance ``(d, d)`` (unbiased, divisor N-1) of ``(N, d)`` features, float64."""
    a = _as_features(features)
    return a.mean(axis=0), np.cov(a, rowvar=False).reshape(a.shape[1], a.shape[1])


def frechet_distance(mu1: Any, sigma1: Any, mu2: Any, sigma2: Any, eps: float = 1e-6) -> float:
    """Fréchet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2): the FID formula.

    ``d^2 = ||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2))`` (Heusel et al. 2017,
    Eq. 6; Dowson & Landau 1982). Computed in float64 with ``scipy.linalg.sqrtm``, as the reference
    implementations do:

    * ``sigma1 sigma2`` is not symmetric, and with fewer samples than dimensions it is singular;
      when its square root comes out non-finite, both covariances get ``eps * I`` added first.
    * Round-off makes the square root slightly complex; imaginary parts on its diagonal up to 1e-3
      are dropped, larger ones raise ``ValueError`` (the inputs were not covariance matrices).

    The result may be a tiny negative number (about -1e-10 relative) for identical statistics.
    """
    from scipy import linalg

    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu1.shape != mu2.shape or mu1.ndim != 1:
        raise ValueError(f"mean vectors must have the same shape (d,); got {mu1.shape} and {mu2.shape}")
    if s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(f"covariances must be ({d}, {d}); got {s1.shape} and {s2.shape}")
    diff = mu1 - mu2
    with warnings.catch_warnings():  # "singular matrix" is expected with fewer samples than dimensions
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(s1 @ s2)
        if not np.isfinite(covmean).all():
            warnings.warn(f"frechet_distance: sqrtm(sigma1 @ sigma2) is not finite; adding {eps:g} * I to both "
                          "covariances", RuntimeWarning, stacklevel=2)
            offset = np.eye(d) * eps
            covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        max_imag = np.abs(np.diagonal(covmean).imag).max()
        if max_imag > 1e-3:
            raise ValueError(f"frechet_distance: the matrix square root has imaginary part {max_imag:.3g}; "
                             "are sigma1 and sigma2 covariance (symmetric PSD) matrices?")
        covmean = covmean.real
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))


def fid_from_features(f1: Any, f2: Any) -> float:
    """FID between two feature sets ``(N1, d)`` and ``(N2, d)``: Fréchet distance of their Gaussian fits.

    Biased upwards at small N (the covariance estimates are noisy): compare FIDs only at equal N.
    """
    a, b = _as_features(f1, "f1"), _as_features(f2, "f2")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: {a.shape[1]} and {b.shape[1]}")
    return frechet_distance(*feature_statistics(a), *feature_statistics(b))


def _polynomial_kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """KID's kernel ``k(x, y) = (x.y / d + 1)^3`` for all pairs: ``(m, d), (n, d) -> (m, n)``."""
    return (a @ b.T / a.shape[1] + 1.0) ** 3


def _mmd2_unbiased(kxx: np.ndarray, kyy: np.ndarray, kxy: np.ndarray) -> float:
    """Unbiased MMD^2 from kernel matrices (Gretton et al. 2012, Eq. 3): diagonals left out."""
    m, n = kxx.shape[0], kyy.shape[0]
    xx = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    yy = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(xx + yy - 2.0 * kxy.mean())


def kid_from_features(f1: Any, f2: Any, num_subsets: int = 100, subset_size: int = 1000,
                      seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance (Bińkowski et al. 2018, Sec. 3) between ``(N1, d)`` and ``(N2, d)`` features.

    The unbiased estimate of the squared MMD with the cubic polynomial kernel
    ``k(x, y) = (x.y / d + 1)^3``, averaged over ``num_subsets`` random subsets of
    ``m = min(subset_size, N1, N2)`` samples drawn without replacement from each set (a NumPy
    generator seeded with ``seed``). Returns ``(mean, std)`` over the subsets.

    Unbiased: its expectation is 0 when both sets come from the same distribution, so small or
    negative values are normal there, and it can be compared across sample sizes (unlike FID).
    Published KIDs are often reported x 1000.
    """
    a, b = _as_features(f1, "f1"), _as_features(f2, "f2")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: {a.shape[1]} and {b.shape[1]}")
    if num_subsets < 1:
        raise ValueError(f"num_subsets must be >= 1, got {num_subsets}")
    m = min(int(subset_size), len(a), len(b))
    if m < 2:
        raise ValueError(f"KID needs subsets of at least 2 samples; got subset_size={subset_size}")
    rng = np.random.default_rng(seed)
    # Compute each kernel matrix once and index it per subset when that is cheaper and fits in memory.
    n_max = max(len(a), len(b))
    full = n_max**2 <= min(num_subsets * m * m, 2500**2)
    if full:
        kaa, kbb, kab = _polynomial_kernel(a, a), _polynomial_kernel(b, b), _polynomial_kernel(a, b)
    values = np.empty(num_subsets)
    for s in range(num_subsets):
        i = rng.choice(len(a), m, replace=False)
        j = rng.choice(len(b), m, replace=False)
        if full:
            values[s] = _mmd2_unbiased(kaa[np.ix_(i, i)], kbb[np.ix_(j, j)], kab[np.ix_(i, j)])
        else:
            x, y = a[i], b[j]
            values[s] = _mmd2_unbiased(_polynomial_kernel(x, x), _polynomial_kernel(y, y), _polynomial_kernel(x, y))
    return float(values.mean()), float(values.std())


def _kth_neighbour_radii(feats: torch.Tensor, k: int, chunk_size: int) -> torch.Tensor:
    """Distance from each point to its k-th nearest *other* point of the same set: ``(N, d) -> (N,)``."""
    radii = []
    for i in range(0, len(feats), chunk_size):
        d = torch.cdist(feats[i : i + chunk_size], feats)
        radii.append(d.kthvalue(k + 1, dim=1).values)  # the point itself sits at distance 0
    return torch.cat(radii)


def _inside_manifold(query: torch.Tensor, ref: torch.Tensor, radii: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """For each query point: does it lie within ``radii[j]`` of some reference point ``j``?  ``-> (Nq,)`` bool."""
    inside = []
    for i in range(0, len(query), chunk_size):
        d = torch.cdist(query[i : i + chunk_size], ref)
        inside.append((d <= radii[None, :]).any(dim=1))
    return torch.cat(inside)


def precision_recall(real_feats: Any, fake_feats: Any, k: int = 3, chunk_size: int = 1024) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al., NeurIPS 2019, Sec. 2).

    Each set's manifold is estimated as the union of balls around its points, the ball of point
    ``phi`` having the radius of ``phi``'s k-th nearest neighbour within its own set (k = 3 in the
    paper). Then

    * precision = fraction of *generated* points inside the *real* manifold (fidelity),
    * recall    = fraction of *real* points inside the *generated* manifold (coverage / diversity).

    Pairwise distances are computed in float64, ``chunk_size`` rows at a time (memory
    ``chunk_size * N``). Returns ``(precision, recall)`` in [0, 1]. Both sets need more than ``k`` points.
    """
    r = torch.from_numpy(_as_features(real_feats, "real_feats", min_n=k + 1))
    g = torch.from_numpy(_as_features(fake_feats, "fake_feats", min_n=k + 1))
    if r.shape[1] != g.shape[1]:
        raise ValueError(f"feature dimensions differ: {r.shape[1]} and {g.shape[1]}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    precision = _inside_manifold(g, r, _kth_neighbour_radii(r, k, chunk_size), chunk_size).double().mean()
    recall = _inside_manifold(r, g, _kth_neighbour_radii(g, k, chunk_size), chunk_size).double().mean()
    return float(precision), float(recall)


# ------------------------------------------------------------------------------------------------
# Front doors: images or datasets in, labelled numbers out
# ------------------------------------------------------------------------------------------------
_EXTRACTOR_CACHE: dict[str, FeatureExtractor] = {}


def _resolve_extractor(extractor: Any) -> FeatureExtractor:
    if isinstance(extractor, FeatureExtractor):
        return extractor
    if isinstance(extractor, str):
        if extractor == "classifier":
            raise ValueError("extractor='classifier' needs the classifier itself: pass extractor=<your model>")
        if extractor not in _EXTRACTOR_CACHE:
            _EXTRACTOR_CACHE[extractor] = get_feature_extractor(extractor)
        return _EXTRACTOR_CACHE[extractor]
    if callable(extractor) or hasattr(extractor, "features"):
        return get_feature_extractor("classifier", classifier=extractor)
    raise TypeError(
        f"extractor must be a kind string, a FeatureExtractor or a classifier; got {type(extractor).__name__}"
    )


def _features_pair(real: Any, fake: Any, extractor: Any, batch_size: int, limit: int | None,
                   progress: bool) -> tuple[FeatureExtractor, torch.Tensor, torch.Tensor]:
    ext = _resolve_extractor(extractor)
    fr = compute_features(ext, real, batch_size=batch_size, limit=limit, progress=progress)
    ff = compute_features(ext, fake, batch_size=batch_size, limit=limit, progress=progress)
    return ext, fr, ff


def _label(ext: FeatureExtractor, n_real: int, n_fake: int) -> dict:
    return dict(feature=ext.name, is_substitute=ext.is_substitute, n_real=n_real, n_fake=n_fake)


def fid(real: Any, fake: Any, extractor: Any = "auto", batch_size: int = 64, limit: int | None = None,
        progress: bool = False) -> dict:
    """FID between real and generated images: ``dict(value, feature, is_substitute, n_real, n_fake)``.

    ``real``/``fake``: image tensors ``(N, C, H, W)`` in [-1, 1] or datasets of dicts with
    ``"image"``. ``extractor``: a kind (``"auto"``, ``"inception"``, ``"random-vgg"``), a
    :class:`FeatureExtractor`, or a trained classifier. Print ``feature`` next to ``value``
    (:func:`format_metric` does): values on substitute features are not published-FID values.
    """
    ext, fr, ff = _features_pair(real, fake, extractor, batch_size, limit, progress)
    return dict(value=fid_from_features(fr, ff), **_label(ext, len(fr), len(ff)))


def kid(real: Any, fake: Any, extractor: Any = "auto", batch_size: int = 64, num_subsets: int = 100,
        subset_size: int = 1000, seed: int = 0, limit: int | None = None, progress: bool = False) -> dict:
    """KID between real and generated images: ``dict(value, std, feature, is_substitute, n_real, n_fake)``.

    ``value`` is the mean unbiased MMD^2 over subsets, ``std`` its spread (see :func:`kid_from_features`).
    Inputs and ``extractor`` as in :func:`fid`.
    """
    ext, fr, ff = _features_pair(real, fake, extractor, batch_size, limit, progress)
    mean, std = kid_from_features(fr, ff, num_subsets=num_subsets, subset_size=subset_size, seed=seed)
    return dict(value=mean, std=std, **_label(ext, len(fr), len(ff)))


def sample_quality(real: Any, fake: Any, extractor: Any = "auto", batch_size: int = 64, k: int = 3,
                   num_subsets: int = 100, subset_size: int = 1000, seed: int = 0, limit: int | None = None,
                   progress: bool = False) -> dict:
    """FID, KID and precision/recall from one pass of the feature network.

    Returns ``dict(fid, kid, kid_std, precision, recall, feature, is_substitute, n_real, n_fake)``.
    """
    ext, fr, ff = _features_pair(real, fake, extractor, batch_size, limit, progress)
    kid_mean, kid_std = kid_from_features(fr, ff, num_subsets=num_subsets, subset_size=subset_size, seed=seed)
    p, r = precision_recall(fr, ff, k=k)
    return dict(fid=fid_from_features(fr, ff), kid=kid_mean, kid_std=kid_std, precision=p, recall=r,
                **_label(ext, len(fr), len(ff)))


def format_metric(name: str, result: dict) -> str:
    """One printable line with the number *and* the features it was computed on.

    ``format_metric("FID", fid(real, fake))`` -> ``"FID = 12.34  [n_real=500, n_fake=500; SUBSTITUTE: ...]"``.
    """
    value = f"{result['value']:.4g}"
    if "std" in result:
        value += f" ± {result['std']:.2g}"
    return f"{name} = {value}  [n_real={result['n_real']}, n_fake={result['n_fake']}; {result['feature']}]"
