"""Procedural shapes: images with exact captions, boxes and segmentation maps.

Every sample is a pure function of ``(seed, index)``: 1-3 non-overlapping objects, each with a shape,
a colour, a size and a free position, rendered anti-aliased at any resolution from 16 to 512 px.
Because the labels are exact, conditional models trained on it can be *measured*: does the sample
show the captioned objects (caption accuracy), in the right boxes (layout IoU)?

Rendering uses signed distance functions (SDFs): for each pixel centre ``p`` an object's SDF ``d(p)``
is negative inside and positive outside, in pixels, and the pixel's coverage is
``clip(0.5 - d, 0, 1)`` -- a one-pixel-wide linear ramp across the edge, which is what anti-aliasing
by area sampling gives for straight edges.

A sample is a dict::

    image      float32 (3, H, W) in [-1, 1]
    caption    str, e.g. "a big red circle left of a small blue triangle"
    boxes      float32 (MAX_OBJECTS, 4) pixel boxes (x0, y0, x1, y1), exclusive ends; padding rows are 0
    labels     int64 (MAX_OBJECTS,) shape class (index into SHAPES), -1 for padding
    colors     int64 (MAX_OBJECTS,) colour class (index into COLORS), -1 for padding
    sizes      int64 (MAX_OBJECTS,) 0 = small, 1 = big, -1 for padding
    num_objects int
    segmentation int64 (H, W): 0 = background, 1 + shape class where an object covers >= half a pixel
    instances  int64 (H, W): 0 = background, 1 + object slot
    layout     float32 (MAX_OBJECTS, 7): (x0, y0, x1, y1) as fractions of the side, shape, colour, size; -1 classes pad

Fixed-size padded fields make the default ``torch.utils.data.default_collate`` work.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

SHAPES = ("circle", "square", "triangle", "diamond", "hexagon", "cross")
COLORS = ("red", "green", "blue", "yellow", "purple", "orange", "cyan", "pink")
RGB = {
    "red": (0.90, 0.12, 0.14),
    "green": (0.15, 0.72, 0.20),
    "blue": (0.16, 0.30, 0.95),
    "yellow": (0.98, 0.88, 0.12),
    "purple": (0.60, 0.20, 0.80),
    "orange": (1.00, 0.55, 0.05),
    "cyan": (0.10, 0.85, 0.90),
    "pink": (1.00, 0.50, 0.75),
}
SIZES = ("small", "big")
MAX_OBJECTS = 3
BACKGROUND = (0.08, 0.08, 0.10)
# Object radius as a fraction of the image side, per size class (a range, so sizes vary a little).
_RADIUS = {0: (0.11, 0.14), 1: (0.19, 0.23)}


def _polygon_sdf(px, py, cx, cy, r, n, rot):
    """SDF of a regular n-gon of circumradius r: max over edges of the distance to the edge line.

    Exact on edges (where anti-aliasing matters), slightly under-estimates near corners.
    """
    apothem = r * math.cos(math.pi / n)
    d = None
    for k in range(n):
        a = rot + (2 * k + 1) * math.pi / n  # direction of the k-th edge normal
        dk = (px - cx) * math.cos(a) + (py - cy) * math.sin(a) - apothem
        d = dk if d is None else np.maximum(d, dk)
    return d


def _box_sdf(px, py, cx, cy, hw, hh):
    return np.maximum(np.abs(px - cx) - hw, np.abs(py - cy) - hh)


def shape_sdf(shape: str, px, py, cx: float, cy: float, r: float):
    """Signed distance (pixels) from pixel centres ``(px, py)`` to a shape centred at (cx, cy).

    ``r`` is the shape's radius: half the side of the bounding square the shape (nearly) fills.
    """
    if shape == "circle":
        return np.sqrt((px - cx) ** 2 + (py - cy) ** 2) - r
    if shape == "square":
        return _box_sdf(px, py, cx, cy, 0.85 * r, 0.85 * r)
    if shape == "triangle":
        # upright equilateral triangle, centred so it fills the box [cy - r, cy + r] vertically
        return _polygon_sdf(px, py, cx, cy + 0.25 * r, 1.15 * r, 3, math.pi / 2 + math.pi / 3)
    if shape == "diamond":
        return _polygon_sdf(px, py, cx, cy, r, 4, 0.0)
    if shape == "hexagon":
        return _polygon_sdf(px, py, cx, cy, r, 6, 0.0)
    if shape == "cross":
        arm = 0.33 * r
        return np.minimum(_box_sdf(px, py, cx, cy, r, arm), _box_sdf(px, py, cx, cy, arm, r))
    raise ValueError(f"unknown shape {shape!r}; choose from {SHAPES}")


def describe(obj: dict) -> str:
    """"big red circle" for an object dict with keys size, color, shape (names)."""
    return f"{obj['size']} {obj['color']} {obj['shape']}"


def relation(a: dict, b: dict) -> str:
    """Where object ``a`` is relative to object ``b``: the dominant axis of their centres' offset."""
    dx, dy = a["cx"] - b["cx"], a["cy"] - b["cy"]
    if abs(dx) >= abs(dy):
        return "left of" if dx < 0 else "right of"
    return "above" if dy < 0 else "below"


def make_caption(objects: Sequence[dict]) -> str:
    """Caption naming every object's size, colour and shape and their relative positions.

    Objects are chained in order: "a big red circle left of a small blue triangle, which is above a
    small green square". Every object appears exactly once as "a <size> <colour> <shape>".
    """
    if not objects:
        raise ValueError("an image needs at least one object to caption")
    parts = [f"a {describe(objects[0])}"]
    for prev, obj in zip(objects[:-1], objects[1:]):
        link = " " if len(parts) == 1 else ", which is "
        parts.append(f"{link}{relation(prev, obj)} a {describe(obj)}")
    return "".join(parts)


def layout_rows(boxes: np.ndarray, labels: np.ndarray, colors: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """One layout per image for layout-to-image models: ``(MAX_OBJECTS, 7)`` float32 rows
    ``(x0, y0, x1, y1, shape, color, size)``, boxes as fractions of the image side, classes ``-1`` for padding
    (:class:`ldm_lite.conditioning.LayoutEmbedder` reads them)."""
    rows = np.zeros((len(labels), 7), dtype=np.float32)
    rows[:, :4] = boxes
    rows[:, 4], rows[:, 5], rows[:, 6] = labels, colors, sizes
    rows[labels < 0, :4] = 0
    return rows


class ShapesDataset(Dataset):
    """Procedural images of 1-3 coloured shapes with captions, boxes and segmentation maps.

    Args:
        size: image side in pixels, 16-512.
        length: number of samples (indices 0 .. length-1).
        seed: dataset seed; sample ``i`` is a pure function of ``(seed, i)``.
        min_objects, max_objects: how many objects per image (1-3).
        holdout: ``(colour, shape)`` pairs, e.g. ``[("purple", "triangle")]``, held out for
            generalisation tests. With ``split="train"`` such objects never appear; with
            ``split="holdout"`` every image contains at least one of them.
        split: ``"train"`` or ``"holdout"``.
    """

    def __init__(
        self,
        size: int = 64,
        length: int = 10_000,
        seed: int = 0,
        min_objects: int = 1,
        max_objects: int = MAX_OBJECTS,
        holdout: Iterable[tuple[str, str]] = (),
        split: str = "train",
    ):
        if not isinstance(size, int) or not 16 <= size <= 512:
            raise ValueError(f"size must be an int from 16 to 512 pixels, got {size!r}")
        if length < 1:
            raise ValueError(f"length must be at least 1, got {length}")
        if not 1 <= min_objects <= max_objects <= MAX_OBJECTS:
            raise ValueError(
                f"need 1 <= min_objects <= max_objects <= {MAX_OBJECTS}, got {min_objects}, {max_objects}"
            )
        if split not in ("train", "holdout"):
            raise ValueError(f"split must be 'train' or 'holdout', got {split!r}")
        self.holdout = set()
        for pair in holdout:
            color, shape = pair
            if color not in COLORS or shape not in SHAPES:
                raise ValueError(
                    f"holdout pair {pair!r} must be (colour, shape) with colour in {COLORS} "
                    f"and shape in {SHAPES}"
                )
            self.holdout.add((color, shape))
        if split == "holdout" and not self.holdout:
            raise ValueError("split='holdout' needs at least one holdout (colour, shape) pair")
        if len(self.holdout) == len(COLORS) * len(SHAPES) and split == "train":
            raise ValueError("every (colour, shape) pair is held out; nothing is left to train on")
        self.size, self.length, self.seed = size, length, seed
        self.min_objects, self.max_objects, self.split = min_objects, max_objects, split
        ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
        self._px, self._py = xs, ys
        self._allowed = [(c, s) for c in COLORS for s in SHAPES if (c, s) not in self.holdout]

    def __len__(self) -> int:
        return self.length

    # ------------------------------------------------------------------ layout
    def layout(self, index: int) -> list[dict]:
        """The objects of sample ``index`` (no rendering): shape, colour, size, centre, radius."""
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for ShapesDataset of length {self.length}")
        rng = np.random.default_rng([self.seed, index])
        n = int(rng.integers(self.min_objects, self.max_objects + 1))
        S = self.size
        objects: list[dict] = []
        attempts = 0
        while len(objects) < n:
            attempts += 1
            if attempts > 200:  # crowded: start over with the same rng stream (still deterministic)
                objects, attempts = [], 0
            size_cls = int(rng.integers(0, 2)) if len(objects) == 0 or attempts < 100 else 0
            lo, hi = _RADIUS[size_cls]
            r = float(rng.uniform(lo, hi)) * S
            cx = float(rng.uniform(r + 1, S - r - 1))
            cy = float(rng.uniform(r + 1, S - r - 1))
            # non-overlapping bounding squares (with a one-pixel gap for the anti-aliased rim)
            if any(abs(cx - o["cx"]) < r + o["r"] + 2 and abs(cy - o["cy"]) < r + o["r"] + 2 for o in objects):
                continue
            if self.split == "holdout" and not objects:
                color, shape = sorted(self.holdout)[int(rng.integers(0, len(self.holdout)))]
            else:
                color, shape = self._allowed[int(rng.integers(0, len(self._allowed)))]
            objects.append(dict(shape=shape, color=color, size=SIZES[size_cls], cx=cx, cy=cy, r=r))
        return objects

    # ------------------------------------------------------------------ render
    def render(self, objects: Sequence[dict]):
        """Render objects: (image HxWx3 float32 in [0, 1], coverage list of HxW arrays)."""
        S = self.size
        img = np.empty((S, S, 3), dtype=np.float32)
        img[:] = BACKGROUND
        coverages = []
        for o in objects:
            # only evaluate the SDF inside the object's window (+2 px for the rim): much faster
            r = o["r"]
            x0, x1 = max(int(o["cx"] - r) - 2, 0), min(int(o["cx"] + r) + 3, S)
            y0, y1 = max(int(o["cy"] - r) - 2, 0), min(int(o["cy"] + r) + 3, S)
            d = shape_sdf(o["shape"], self._px[y0:y1, x0:x1], self._py[y0:y1, x0:x1], o["cx"], o["cy"], r)
            a = np.clip(0.5 - d, 0.0, 1.0)
            cov = np.zeros((S, S), dtype=np.float32)
            cov[y0:y1, x0:x1] = a
            col = np.asarray(RGB[o["color"]], dtype=np.float32)
            win = img[y0:y1, x0:x1]
            win += a[..., None] * (col - win)
            coverages.append(cov)
        return img, coverages

    def __getitem__(self, index: int) -> dict:
        if index < 0:
            index += self.length
        objects = self.layout(index)
        img, coverages = self.render(objects)
        S, M = self.size, MAX_OBJECTS
        boxes = np.zeros((M, 4), dtype=np.float32)
        labels = np.full(M, -1, dtype=np.int64)
        colors = np.full(M, -1, dtype=np.int64)
        sizes = np.full(M, -1, dtype=np.int64)
        seg = np.zeros((S, S), dtype=np.int64)
        inst = np.zeros((S, S), dtype=np.int64)
        for k, (o, cov) in enumerate(zip(objects, coverages)):
            ys, xs = np.nonzero(cov > 0)
            boxes[k] = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)  # tight box of every touched pixel
            labels[k] = SHAPES.index(o["shape"])
            colors[k] = COLORS.index(o["color"])
            sizes[k] = SIZES.index(o["size"])
            solid = cov >= 0.5
            seg[solid] = 1 + labels[k]
            inst[solid] = 1 + k
        image = torch.from_numpy(img).permute(2, 0, 1).mul(2).sub(1).contiguous()
        return dict(
            image=image,
            caption=make_caption(objects),
            boxes=torch.from_numpy(boxes),
            labels=torch.from_numpy(labels),
            colors=torch.from_numpy(colors),
            sizes=torch.from_numpy(sizes),
            num_objects=len(objects),
            segmentation=torch.from_numpy(seg),
            instances=torch.from_numpy(inst),
            layout=torch.from_numpy(layout_rows(boxes / S, labels, colors, sizes)),
        )

    def objects(self, index: int) -> list[dict]:
        """Public alias of :meth:`layout` (the ground truth a caption-accuracy metric compares to)."""
        return self.layout(index)

    def __repr__(self) -> str:
        extra = f", holdout={sorted(self.holdout)}, split={self.split!r}" if self.holdout else ""
        return f"ShapesDataset(size={self.size}, length={self.length}, seed={self.seed}{extra})"
