"""Feature networks ("embeddings") for the sample-quality metrics: Inception-v3 when its weights are
present, labelled substitutes otherwise (a random VGG, any classifier, the course's trained evaluators).
"""

from __future__ import annotations

import glob
import logging
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from ldm_lite.notices import announce_once
from ldm_lite.metrics.evaluators import load_evaluator
from ldm_lite.progress import progress as tqdm

logger = logging.getLogger("ldm_lite.metrics")

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
FEATURE_KINDS = ("auto", "inception", "random-vgg", "classifier", "fashion", "shapes", "openmoji")
#: Kinds served by the course's own trained evaluators (``ldm_lite.metrics.evaluators``).
DOMAIN_KINDS = ("fashion", "shapes", "openmoji")

#: torchvision's ImageNet Inception-v3 (``Inception_V3_Weights.IMAGENET1K_V1``).
TORCHVISION_INCEPTION_FILE = "inception_v3_google-0cc3c7bd.pth"
TORCHVISION_INCEPTION_GLOB = "inception_v3_google-*.pth"
#: The TF-ported Inception of the original FID code, as shipped by pytorch-fid.
FID_INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"
FID_INCEPTION_GLOB = "pt_inception-2015-12-05-*.pth"
#: The same TF-ported weights under torch-fidelity's name (what torchmetrics' FID loads).
FIDELITY_INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
FIDELITY_INCEPTION_GLOB = "weights-inception-2015-12-05-*.pth"
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
    """The Inception weight files present in the hub cache:
    ``{"torch-fidelity": path|None, "pytorch-fid": path|None, "torchvision": path|None}``."""
    d = hub_checkpoints_dir()
    found = {}
    for variant, pattern in (("torch-fidelity", FIDELITY_INCEPTION_GLOB), ("pytorch-fid", FID_INCEPTION_GLOB),
                             ("torchvision", TORCHVISION_INCEPTION_GLOB)):
        hits = sorted(glob.glob(str(d / pattern)))
        found[variant] = Path(hits[0]) if hits else None
    return found


def inception_weights_available() -> bool:
    """True when some Inception-v3 weight file is in the hub cache (see :func:`inception_weights_paths`)."""
    return any(p is not None for p in inception_weights_paths().values())


def _where_to_put_inception() -> str:
    d = hub_checkpoints_dir()
    return (
        f"For the standard FID put the TF-ported weights at {d / FIDELITY_INCEPTION_FILE} (torchmetrics / "
        f"torch-fidelity) or {d / FID_INCEPTION_FILE} "
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


# The fixed-seed random VGG16 trunk: the features of the random-VGG substitute below, and the trunk of the
# perceptual loss's offline substitute (ldm_lite.autoencoder.perceptual, whose docstring explains the choice).

#: Seed of the substitute's random VGG16; changing it changes every substitute number.
RANDOM_VGG_SEED = 0

#: LPIPS v0.1 input scaling: ImageNet mean/std expressed for images in [-1, 1].
_LPIPS_SHIFT = (-0.030, -0.088, -0.188)
_LPIPS_SCALE = (0.458, 0.448, 0.450)

#: VGG16 ``features`` up to relu5_3: conv widths per stage; a max-pool sits between stages.
_VGG16_STAGES = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
_STAGE_NAMES = ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")


class RandomVGG16Features(nn.Module):
    """VGG16 convolutional stack (up to relu5_3) with fixed-seed random weights.

    Same layer layout as ``torchvision.models.vgg16().features[:30]``: 13 3x3 convolutions
    (padding 1) with ReLU, a 2x2 max-pool between the five stages. Weights are drawn from
    He-normal ``N(0, 2 / fan_in)`` with a private ``torch.Generator(seed)``, biases are 0, so the
    network is identical on every machine and in every process, and the global RNG is untouched.

    The weights are *non-persistent buffers*: they follow ``.to(device)`` but are not written into
    checkpoints (they are regenerated from the seed) and no optimiser can ever pick them up.

    ``forward(x)`` takes ``(B, 3, H, W)`` (already LPIPS-scaled) and returns the five feature maps
    ``[(B, 64, H, W), (B, 128, H/2, W/2), (B, 256, H/4, W/4), (B, 512, H/8, W/8),
    (B, 512, H/16, W/16)]``.

    ``width`` < 1 scales every channel count (e.g. 0.25 gives 16…128 channels and costs about
    1/16 of the multiply-adds) for CPU-bound runs; ``width=1`` is the exact VGG16 layout.
    """

    def __init__(self, seed: int = RANDOM_VGG_SEED, width: float = 1.0):
        super().__init__()
        if not width > 0:
            raise ValueError(f"width must be > 0 (a fraction of VGG16's channels); got {width}.")
        self.seed, self.width = seed, width
        gen = torch.Generator().manual_seed(seed)
        self.layout: list[list[str]] = []  # buffer names, stage by stage
        c_in = 3
        for s, widths in enumerate(_VGG16_STAGES):
            names = []
            for j, c_full in enumerate(widths):
                c_out = max(8, round(c_full * width))
                fan_in = c_in * 9
                w = torch.randn(c_out, c_in, 3, 3, generator=gen) * (2.0 / fan_in) ** 0.5
                name = f"conv{s + 1}_{j + 1}"
                self.register_buffer(f"{name}_weight", w, persistent=False)
                self.register_buffer(f"{name}_bias", torch.zeros(c_out), persistent=False)
                names.append(name)
                c_in = c_out
            self.layout.append(names)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        h = x
        for s, names in enumerate(self.layout):
            if s > 0:
                h = F.max_pool2d(h, kernel_size=2, stride=2)
            for name in names:
                h = F.relu(F.conv2d(h, getattr(self, f"{name}_weight"), getattr(self, f"{name}_bias"), padding=1))
            feats.append(h)
        return feats

    def torchvision_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights under ``torchvision.models.vgg16().features`` keys (``"0.weight"``, …).

        Lets the tests load this network into ``lpips``'s own VGG and compare outputs.
        """
        out, idx = {}, 0
        for s, names in enumerate(self.layout):
            if s > 0:
                idx += 1  # max-pool
            for name in names:
                out[f"{idx}.weight"] = getattr(self, f"{name}_weight")
                out[f"{idx}.bias"] = getattr(self, f"{name}_bias")
                idx += 2  # conv, relu
        return out


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
        # The same random trunk and input scaling as the perceptual substitute.
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
    * ``variant="torchmetrics"``: the same TF-ported weights (torch-fidelity's
      ``weights-inception-2015-12-05-*.pth``, or pytorch-fid's file) run by torchmetrics' own
      ``NoTrainInceptionV3`` -- the network of a maintained package rather than ours, fed uint8 images
      as the package expects. Preferred by ``"auto"`` when torchmetrics and torch-fidelity are installed.

    ``variant="auto"`` takes the first that loads. Missing files raise ``FileNotFoundError``
    saying where to put them.
    """

    def __init__(self, variant: str = "auto"):
        super().__init__()
        if variant not in ("auto", "torchmetrics", "pytorch-fid", "torchvision"):
            raise ValueError(f"unknown Inception variant {variant!r}; use 'auto', 'torchmetrics', 'pytorch-fid' or "
                             "'torchvision'")
        paths = inception_weights_paths()
        net = None
        self.uint8_input = False
        tf_path = paths["torch-fidelity"] or paths["pytorch-fid"]
        if variant in ("auto", "torchmetrics") and tf_path is not None:
            try:
                from torchmetrics.image.fid import NoTrainInceptionV3

                tm = NoTrainInceptionV3(name="inception-v3-compat", features_list=[str(INCEPTION_DIM)],
                                        feature_extractor_weights_path=str(tf_path))
                self.net, self.variant, self.weights_path, self.uint8_input = tm, "torchmetrics", tf_path, True
                self.name = "Inception-v3 pool3 (torchmetrics / torch-fidelity, TF FID weights; standard FID)"
                for p in tm.parameters():
                    p.requires_grad_(False)
                self.dim, self.is_substitute, self.in_channels = INCEPTION_DIM, False, 3
                super().train(False)
                return
            except (ImportError, ModuleNotFoundError, RuntimeError, OSError) as err:
                err = str(err).strip().splitlines()[0][:300]
                if variant == "torchmetrics":
                    raise FileNotFoundError(f"torchmetrics' Inception could not load {tf_path}: {err}. "
                                            + _missing_inception_message()) from None
                warnings.warn(f"torchmetrics' Inception could not load {tf_path} ({err}); trying the others",
                              UserWarning, stacklevel=2)
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
        if self.uint8_input:  # torchmetrics' network resizes itself and takes 0..255 bytes, like saved images
            return self.net(((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)).reshape(len(x), -1)
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


def domain_feature_extractor(dataset: str) -> "ClassifierFeatureExtractor":
    """Features of the course's shipped evaluator for ``dataset`` (``"fashion"``, ``"shapes"``, ``"openmoji"``).

    Labelled with the network's name and held-out score from its manifest; these are the numbers the
    course trusts for its own data (chapter 08), and they are not comparable with Inception FIDs.
    """
    net = load_evaluator(dataset)
    ext = ClassifierFeatureExtractor(net, dim=net.feature_dim)
    ext.name = (f"{net.name} (course-trained {dataset} features, data/pretrained/{net.manifest.get('weights', '?')}; "
                "not comparable with Inception FID)")
    return ext


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
        kind: ``"fashion"`` / ``"shapes"`` / ``"openmoji"`` (the course's trained evaluators, see
            :func:`domain_feature_extractor`), ``"inception"`` (Inception-v3 pool3, 2048-d; needs the weights in the hub cache, else
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
    if kind in DOMAIN_KINDS:
        ext: FeatureExtractor = domain_feature_extractor(kind)
    elif kind == "classifier":
        ext = ClassifierFeatureExtractor(classifier, **kwargs)
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
        batches = tqdm(batches, desc=f"features ({extractor.name[:40]})", leave=False)
    device = _module_device(extractor, "cpu")
    out = [extractor(x.to(device)).cpu() for x in batches]
    if not out:
        raise ValueError("no images to embed (empty tensor or dataset, or limit=0)")
    return torch.cat(out).float()
