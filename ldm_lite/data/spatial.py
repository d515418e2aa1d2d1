"""Spatial conditions for chapter 07: degraded images (super-resolution), hole masks (inpainting) and
one-hot segmentation maps (semantic synthesis). Every random choice comes from an explicit seed, so a
mask or a degradation is the same on every machine and in every run.

Mask convention (one for the course). The paper's inpainting *script* marks the hole with 1,
its DDIM *sampler* marks the known region with 1. Here a mask argument always says which it is in its
name -- ``hole_mask`` (1 = missing, to be generated) or ``keep_mask`` (1 = known, kept) -- and
:func:`~ldm_lite.checks.keep_mask_from` (re-exported here) is the one place that converts between them.
"""

from __future__ import annotations

import io
import math
import numbers

import numpy as np
import torch
import torch.nn.functional as F

from ldm_lite.checks import check_image_range, keep_mask_from  # re-exported: their old home

__all__ = ["DEGRADATIONS", "TASKS", "SpatialTaskDataset", "check_image_range", "degrade", "keep_mask_from", "one_hot_segmentation", "random_mask", "random_masks"]

DEGRADATIONS = ("bicubic", "bsr")


def _as_batch(images: torch.Tensor, what: str = "images") -> tuple[torch.Tensor, bool]:
    if not torch.is_tensor(images) or images.ndim not in (3, 4) or images.shape[-3] != 3:
        got = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
        raise ValueError(f"{what} must be an RGB tensor (3, H, W) or (B, 3, H, W) in [-1, 1]; got {got}")
    if not images.is_floating_point():
        raise TypeError(f"{what} must be float in [-1, 1] (ldm_lite.data.to_image_tensor converts uint8); "
                        f"got {images.dtype}")
    single = images.ndim == 3
    return (images[None] if single else images), single


# ----------------------------------------------------------------------------- super-resolution
def degrade(images: torch.Tensor, factor: int = 4, kind: str = "bicubic", seed: int = 0) -> torch.Tensor:
    """The low-resolution input of a super-resolution model: ``images`` (B, 3, H, W) -> (B, 3, H/f, W/f).

    ``kind="bicubic"``: antialiased bicubic downsampling -- the paper's ×4 ImageNet SR setting (Sec. 4.4,
    "bicubic degradation with anti-aliasing"). ``kind="bsr"``: a small version of the paper's BSR
    degradation pipeline (App. D.6.1, after BSRGAN) for models meant for real images: a Gaussian blur of random
    width, a randomly chosen resampling filter, Gaussian noise and JPEG compression at random quality, each
    drawn per image from ``seed + index`` (deterministic). Output in [-1, 1].

    ``images`` are checked where they enter (:func:`check_image_range`): NaN / inf and values beyond [-1.5, 1.5]
    (0..255 images: the output would be all white) are errors; a batch with every value >= 0 gets a warning with
    the conversion ``x * 2 - 1`` -- not an error, since a bright [-1, 1] image (a pale photo, a flat light grey)
    is all >= 0 too.
    """
    x, single = _as_batch(images)
    if not isinstance(factor, int) or factor < 1:
        raise ValueError(f"factor must be a positive int (4 for the paper's ×4 SR), got {factor!r}")
    h, w = x.shape[-2:]
    if h % factor or w % factor:
        raise ValueError(f"image size {h}×{w} is not divisible by factor {factor}; crop to a multiple of {factor}")
    if kind not in DEGRADATIONS:
        raise ValueError(f"unknown degradation {kind!r}; use one of {DEGRADATIONS}")
    check_image_range(x, "images", where="degrade: ")
    size = (h // factor, w // factor)
    if kind == "bicubic":
        out = F.interpolate(x.float(), size=size, mode="bicubic", antialias=True, align_corners=False)
        out = out.clamp(-1, 1)
        return out[0] if single else out
    from PIL import Image

    outs = []
    for i, img in enumerate(x.float()):
        rng = np.random.default_rng([seed, i])
        sigma = rng.uniform(0.2, 0.6 * factor)
        radius = max(1, math.ceil(3 * sigma))
        t = torch.arange(-radius, radius + 1, dtype=torch.float32)
        k = torch.exp(-0.5 * (t / sigma) ** 2)
        k = k / k.sum()
        blurred = F.conv2d(F.pad(img[None], (radius,) * 4, mode="reflect"), k.view(1, 1, 1, -1).expand(3, 1, 1, -1),
                           groups=3)
        blurred = F.conv2d(blurred, k.view(1, 1, -1, 1).expand(3, 1, -1, 1), groups=3)
        mode = ("bilinear", "bicubic", "area")[int(rng.integers(3))]
        small = F.interpolate(blurred, size=size, mode=mode, **({} if mode == "area" else {"antialias": True}))
        small = small + torch.from_numpy(rng.normal(0, rng.uniform(1, 20) / 127.5, small.shape).astype(np.float32))
        arr = small[0].clamp(-1, 1).add(1).mul(127.5).round().byte().permute(1, 2, 0).numpy()
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=int(rng.integers(30, 96)))
        jpg = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
        outs.append(torch.from_numpy(jpg.astype(np.float32)).permute(2, 0, 1).div(127.5).sub(1))
    out = torch.stack(outs).to(images.device)
    return out[0] if single else out


# ----------------------------------------------------------------------------- inpainting masks
def _draw_stroke(mask: np.ndarray, rng: np.random.Generator, target: int) -> None:
    """A thick random polyline, one segment at a time, until ``target`` hole pixels (LaMa-style strokes)."""
    h, w = mask.shape
    side = min(h, w)
    width = rng.uniform(side / 14, side / 7)
    y, x = rng.uniform(0, h), rng.uniform(0, w)
    angle = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    for _ in range(int(rng.integers(2, 7))):
        angle += rng.uniform(-1.2, 1.2)
        length = rng.uniform(side / 10, side / 4)
        y1 = float(np.clip(y + length * math.sin(angle), 0, h))
        x1 = float(np.clip(x + length * math.cos(angle), 0, w))
        dy, dx = y1 - y, x1 - x
        seg2 = dy * dy + dx * dx
        s = np.clip(((yy - y) * dy + (xx - x) * dx) / max(seg2, 1e-9), 0, 1)
        dist2 = (yy - (y + s * dy)) ** 2 + (xx - (x + s * dx)) ** 2
        mask[dist2 <= (width / 2) ** 2] = 1
        y, x = y1, x1
        if mask.sum() >= target:
            return


def _draw_box(mask: np.ndarray, rng: np.random.Generator, target: int) -> None:
    """An axis-aligned box no larger than the area still missing (plus a little), at a random place."""
    h, w = mask.shape
    need = max(target - int(mask.sum()), 1)
    area = min(need * rng.uniform(0.5, 1.0), 0.5 * h * w)
    aspect = rng.uniform(0.5, 2.0)
    bh = int(np.clip(round(math.sqrt(area * aspect)), 2, h))
    bw = int(np.clip(round(area / max(bh, 1)), 2, w))
    y0, x0 = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
    mask[y0 : y0 + bh, x0 : x0 + bw] = 1


def random_mask(size: int | tuple[int, int], fraction: float = 0.3, seed: int = 0,
                kind: str = "mixed") -> torch.Tensor:
    """A **hole mask** (1 = missing) of shape (1, H, W): thick irregular strokes and boxes, as the large
    masks of LaMa (Suvorov et al. 2022) that the paper's inpainting model is trained and evaluated on (Sec. 4.5).

    Shapes are added one stroke segment or box at a time until at least ``fraction`` of the pixels are holes;
    a segment is small, so the result lands within a few points above the target (the tests pin it).
    ``kind``: ``"mixed"`` (strokes and boxes), ``"strokes"`` or ``"boxes"``. Deterministic in ``seed``.
    ``size``: an int or a pair of ints (H, W); ``fraction``: a real number (not a string).
    """
    is_int = lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool)  # noqa: E731
    pair = (not isinstance(size, (str, bytes)) and hasattr(size, "__len__") and len(size) == 2
            and all(is_int(v) for v in size))
    if not (is_int(size) or pair):
        raise TypeError(f"random_mask: size must be an int or a pair of ints (H, W), got {size!r}; e.g. "
                        f"random_mask(64) or random_mask((64, 96))")
    if not isinstance(fraction, numbers.Real) or isinstance(fraction, bool):
        raise TypeError(f"random_mask: fraction must be a number (the share of hole pixels, 0 < fraction < 0.95), "
                        f"got {fraction!r} ({type(fraction).__name__}); e.g. fraction=0.3")
    h, w = (int(size), int(size)) if is_int(size) else (int(size[0]), int(size[1]))
    if min(h, w) < 4:
        raise ValueError(f"mask size must be at least 4×4, got {h}×{w}")
    if not 0.0 < fraction < 0.95:
        raise ValueError(f"fraction is the share of hole pixels, 0 < fraction < 0.95; got {fraction}")
    if kind not in ("mixed", "strokes", "boxes"):
        raise ValueError(f"unknown mask kind {kind!r}; use 'mixed', 'strokes' or 'boxes'")
    rng = np.random.default_rng(seed)
    mask = np.zeros((h, w), dtype=np.float32)
    target = math.ceil(fraction * h * w)
    while mask.sum() < target:
        stroke = kind == "strokes" or (kind == "mixed" and rng.random() < 0.6)
        (_draw_stroke if stroke else _draw_box)(mask, rng, target)
    return torch.from_numpy(mask)[None]


def random_masks(n: int, size: int | tuple[int, int], fraction: float = 0.3, seed: int = 0,
                 kind: str = "mixed") -> torch.Tensor:
    """``n`` hole masks (n, 1, H, W); mask ``i`` is ``random_mask(size, fraction, seed + i, kind)``."""
    return torch.stack([random_mask(size, fraction, seed + i, kind) for i in range(n)])


# ----------------------------------------------------------------------------- semantic maps
def one_hot_segmentation(segmentation: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Label maps (B, H, W) or (H, W) of ints in ``0..num_classes-1`` -> float one-hot (B, C, H, W) or
    (C, H, W): the input of the paper's semantic-synthesis model (Sec. 4.3.2) before its
    :class:`~ldm_lite.conditioning.SpatialRescaler`. ShapesDataset maps use 0 = background, 1 + shape class."""
    seg = torch.as_tensor(segmentation)
    if seg.is_floating_point() or seg.ndim not in (2, 3):
        raise ValueError(f"segmentation must be an integer label map (H, W) or (B, H, W); got "
                         f"{seg.dtype} {tuple(seg.shape)}")
    if seg.numel() and (seg.min() < 0 or seg.max() >= num_classes):
        raise ValueError(f"segmentation labels must lie in 0..{num_classes - 1}; found {int(seg.min())}.."
                         f"{int(seg.max())} (num_classes={num_classes}: background + one per class)")
    out = F.one_hot(seg.long(), num_classes).movedim(-1, -3).float()
    return out


# ----------------------------------------------------------------------------- task datasets
TASKS = ("sr", "inpaint", "semantic")


class SpatialTaskDataset(torch.utils.data.Dataset):
    """A dataset's samples plus the spatial condition of a chapter-07 task, deterministic per index.

    ``task="sr"``: ``lr_image`` = :func:`degrade` (``factor``, ``degradation``; BSR seeded by ``seed`` and the
    index). ``task="inpaint"``: ``hole_mask`` (1, H, W) = :func:`random_mask` (``mask_fraction``, seed
    ``seed * 1_000_003 + index``) and ``masked_image`` = the image with its holes set to 0 (mid-grey).
    ``task="semantic"``: the base dataset's ``segmentation`` map is the condition (ShapesDataset has one).
    Fixed conditions per index let the latent cache hold them (each image keeps one mask / one degradation).
    """

    def __init__(self, base, task: str, factor: int = 4, degradation: str = "bicubic", mask_fraction: float = 0.3,
                 seed: int = 0):
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; use one of {TASKS}")
        if degradation not in DEGRADATIONS:
            raise ValueError(f"unknown degradation {degradation!r}; use one of {DEGRADATIONS}")
        first = base[0]
        if task == "semantic" and "segmentation" not in first:
            raise ValueError(f"task='semantic' needs samples with a 'segmentation' map; {type(base).__name__} has "
                             f"{sorted(first)} (use data='shapes')")
        h, w = first["image"].shape[-2:]
        if task == "sr" and (h % factor or w % factor):
            raise ValueError(f"images of {h}×{w} are not divisible by the SR factor {factor}")
        self.base, self.task, self.factor, self.degradation = base, task, factor, degradation
        self.mask_fraction, self.seed = mask_fraction, seed
        if task == "inpaint":
            random_mask(min(h, w), mask_fraction, 0)  # a bad fraction fails here, not mid-training

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict:
        item = dict(self.base[index])
        image = item["image"]
        if self.task == "sr":
            if self.degradation == "bicubic":
                item["lr_image"] = degrade(image, self.factor)
            else:
                item["lr_image"] = degrade(image[None], self.factor, "bsr", seed=self.seed * 1_000_003 + index)[0]
        elif self.task == "inpaint":
            hole = random_mask(tuple(image.shape[-2:]), self.mask_fraction, seed=self.seed * 1_000_003 + index)
            item["hole_mask"] = hole
            item["masked_image"] = image * (1.0 - hole)
        return item

    def __getattr__(self, name):  # class_names, captions ... of the base dataset
        if name.startswith("__") or name == "base":
            raise AttributeError(name)
        return getattr(self.base, name)
