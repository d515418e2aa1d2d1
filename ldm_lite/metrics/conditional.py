"""Conditional scores: did the sample show what the condition asked for? (chapter 08)

On ShapesDataset the condition is checkable exactly, because the generator knows every object:

* :func:`caption_accuracy` -- every object the caption names is present with the right colour and shape,
  and nothing extra (the multiset of (colour, shape) read from the image equals the caption's).
  Reported overall, per object count, with size as well, and for held-out (colour, shape) pairs apart.
* :func:`layout_accuracy` -- the fraction of requested objects found inside their box (IoU >= 0.5, the
  right shape, and the right colour when given).

Both read the image with the shipped :class:`~ldm_lite.metrics.evaluators.ShapesAttributeNet` and report,
beside the number, a *floor* (the same images scored against shuffled captions / layouts -- what a model
that ignores its condition gets) and, when the real images are passed, a *ceiling* (the evaluator on the
real renders of the same captions). On Fashion-MNIST: :func:`class_accuracy`.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Sequence

import numpy as np
import torch

from ldm_lite.data.augment import random_degrade
from ldm_lite.data.shapes import COLORS, SHAPES, SIZES, ShapesDataset
from ldm_lite.data.spatial import check_image_range
from ldm_lite.metrics.distances import wilson_interval
from ldm_lite.metrics.evaluators import load_evaluator

_OBJECT = re.compile(rf"\ba ({'|'.join(SIZES)}) ({'|'.join(COLORS)}) ({'|'.join(SHAPES)})\b")
# Words a caption may use between its objects: ShapesDataset's relations ("left of", "right of", "above", "below",
# ", which is") and a few plain joiners. Any other word is an error, not skipped: a skipped "a big magenta star"
# would be scored as if the caption had never asked for it.
_LINK_WORDS = frozenset(("a", "an", "the", "which", "is", "left", "right", "of", "above", "below", "and", "next", "to"))
_VOCABULARY = (f"objects read 'a <size> <colour> <shape>' with sizes: {', '.join(SIZES)}; colours: "
               f"{', '.join(COLORS)}; shapes: {', '.join(SHAPES)} (joined by 'left of', 'right of', 'above', 'below', "
               "', which is')")


def parse_caption(caption: str) -> list[tuple[str, str, str]]:
    """``"a big red circle left of a small blue square"`` -> ``[("big", "red", "circle"), ("small", "blue", "square")]``.

    Raises ``ValueError`` for a caption that names no object in ShapesDataset's vocabulary, uses a word the scorer
    does not know (``"magenta"``, ``"star"``: naming it and listing the known sizes, colours and shapes), or names a
    size, colour or shape outside a full ``a <size> <colour> <shape>`` object (``"a blue square"``) -- each would
    otherwise be scored as if the caption had not asked for it.
    """
    if not isinstance(caption, str):
        raise TypeError(f"captions must be strings, got {type(caption).__name__}")
    text = caption.lower()
    objects = _OBJECT.findall(text)
    words = re.findall(r"[a-z]+|[^a-z\s,.;:!?'\"()\-]+", _OBJECT.sub(" ", text))
    known = set(SIZES) | set(COLORS) | set(SHAPES)
    unknown = [w for w in words if w not in _LINK_WORDS and w not in known]
    if not objects:
        also = f" (unknown word {unknown[0]!r})" if unknown else ""
        raise ValueError(f"caption {caption!r} names no ShapesDataset object{also}; {_VOCABULARY}")
    if unknown:
        raise ValueError(f"caption {caption!r}: unknown word {unknown[0]!r}, which the ShapesDataset scorer cannot "
                         f"check; {_VOCABULARY}")
    stray = [w for w in words if w in known]
    if stray:
        raise ValueError(f"caption {caption!r} names an incomplete object: {stray[0]!r} is not part of a full "
                         f"'a <size> <colour> <shape>' (e.g. 'a small blue square'); {_VOCABULARY}")
    return objects


def _evaluator(evaluator):
    if evaluator is None:
        return load_evaluator("shapes")
    if not hasattr(evaluator, "detect"):
        raise TypeError("the evaluator must have a .detect(images) method (a ShapesAttributeNet)")
    return evaluator


def _detect(evaluator, images: torch.Tensor, batch_size: int = 128, what: str = "images") -> list:
    """The attribute network's detections. ``images`` must be ShapesDataset-like renders in [-1, 1]: finite, within
    the range, and not all >= 0 -- every render has a dark background (-0.84 in [-1, 1]), so a batch without a single
    negative value is [0, 1] images (an error naming the conversion ``x * 2 - 1``), not a bright scene."""
    if not torch.is_tensor(images) or images.dim() != 4:
        raise ValueError(f"{what} must be a (B, 3, H, W) tensor in [-1, 1]; got "
                         f"{tuple(images.shape) if torch.is_tensor(images) else type(images).__name__}")
    check_image_range(images, what, all_nonnegative="error",
                      why="ShapesDataset renders have a dark background at -0.84")
    device = next(evaluator.parameters()).device
    out = []
    for i in range(0, len(images), batch_size):
        out += evaluator.detect(images[i : i + batch_size].to(device))
    return out


def _caption_hits(detections: list, captions: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per image: (colour, shape) multiset matches; and the same with size."""
    hit, hit_size = [], []
    for objs, cap in zip(detections, captions):
        want = parse_caption(cap)
        got = [(o.size, o.color, o.shape) for o in objs]
        hit.append(Counter((c, s) for _, c, s in want) == Counter((c, s) for _, c, s in got))
        hit_size.append(Counter(want) == Counter(got))
    return np.array(hit, bool), np.array(hit_size, bool)


def _summary(hits: np.ndarray, seed: int = 0) -> dict:
    """A share of successes with its 95 % Wilson interval (exact enough for the binary outcomes here)."""
    hits = np.asarray(hits, bool)
    lo, hi = wilson_interval(int(hits.sum()), len(hits))
    return dict(value=float(hits.mean()) if len(hits) else float("nan"), ci95=(lo, hi), n=int(len(hits)))


def _shuffled(items: list, seed: int) -> list:
    """Shuffle so that no item keeps its place: walk a random cycle through all positions."""
    n = len(items)
    perm = np.random.default_rng(seed).permutation(n)
    out = list(items)
    for i in range(n):
        out[perm[i]] = items[perm[(i + 1) % n]]
    return out


def caption_accuracy(images: torch.Tensor, captions: Sequence[str], evaluator=None,
                     real_images: torch.Tensor | None = None, holdout: Sequence[tuple[str, str]] = (),
                     seed: int = 0) -> dict:
    """Caption accuracy of generated ShapesDataset images, with a floor and (given real images) a ceiling.

    Args:
        images: ``(B, 3, H, W)`` in [-1, 1], image ``b`` generated for ``captions[b]``.
        captions: ShapesDataset captions ("a big red circle left of a small blue square").
        evaluator: a :class:`ShapesAttributeNet`; default the shipped one.
        real_images: real renders of the same captions (``ShapesDataset`` images) -> ``ceiling``.
        holdout: ``(colour, shape)`` pairs held out of training -> ``holdout`` / ``seen`` scores apart.

    Returns ``dict(value, ci95, n, with_size, per_count={1: {...}, 2: ..., 3: ...}, floor, ceiling?,
    holdout?, seen?, evaluator)``; every score is ``dict(value, ci95, n)`` (bootstrap 95 % over images).
    """
    captions = list(captions)
    if len(captions) != len(images):
        raise ValueError(f"{len(images)} images but {len(captions)} captions; give one caption per image")
    for c in captions:
        parse_caption(c)  # fail on a bad caption before any work
    ev = _evaluator(evaluator)
    det = _detect(ev, images)
    hit, hit_size = _caption_hits(det, captions)
    counts = np.array([len(parse_caption(c)) for c in captions])
    out = dict(_summary(hit, seed), with_size=_summary(hit_size, seed), evaluator=ev.name,
               per_count={int(k): _summary(hit[counts == k], seed) for k in sorted(set(counts))})
    out["floor"] = (_summary(_caption_hits(det, _shuffled(captions, seed))[0], seed) if len(captions) > 1
                    else dict(value=float("nan"), ci95=(float("nan"),) * 2, n=0))  # one image: nothing to shuffle
    if real_images is not None:
        if len(real_images) != len(images):
            raise ValueError(f"real_images must match images one to one; got {len(real_images)} and {len(images)}")
        out["ceiling"] = _summary(_caption_hits(_detect(ev, real_images, what="real_images"), captions)[0], seed)
    if holdout:
        pairs = {(c, s) for c, s in holdout}
        has = np.array([any((c, s) in pairs for _, c, s in parse_caption(cap)) for cap in captions], dtype=bool)
        out["holdout"], out["seen"] = _summary(hit[has], seed), _summary(hit[~has], seed)
    return out


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes ``(N, 4)`` and ``(M, 4)`` in ``(x0, y0, x1, y1)`` -> ``(N, M)``."""
    a, b = np.asarray(a, float).reshape(-1, 4), np.asarray(b, float).reshape(-1, 4)
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = lambda z: (z[:, 2] - z[:, 0]) * (z[:, 3] - z[:, 1])  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-9)


def _layout_hits(detections, boxes, labels, colors, iou_threshold) -> np.ndarray:
    """One bool per requested object: is a detection of its shape (and colour) inside its box?"""
    found = []
    for objs, bx, lb, cl in zip(detections, boxes, labels, colors):
        det_boxes = np.array([o.box for o in objs]) if objs else np.zeros((0, 4))
        for k in np.flatnonzero(lb >= 0):
            ok = False
            if len(objs):
                ious = box_iou(bx[k][None], det_boxes)[0]
                for j in np.flatnonzero(ious >= iou_threshold):
                    if objs[j].shape == SHAPES[lb[k]] and (cl is None or cl[k] < 0 or objs[j].color == COLORS[cl[k]]):
                        ok = True
            found.append(ok)
    return np.array(found, bool)


def layout_accuracy(images: torch.Tensor, boxes, labels, colors=None, evaluator=None,
                    real_images: torch.Tensor | None = None, iou_threshold: float = 0.5, seed: int = 0) -> dict:
    """Layout accuracy: the fraction of requested objects found in their box (IoU >= ``iou_threshold``)
    with the requested shape (and colour, when ``colors`` is given).

    Args:
        boxes: ``(B, M, 4)`` pixel boxes ``(x0, y0, x1, y1)`` in the images' coordinates (ShapesDataset's
            ``boxes``); rows whose label is -1 are padding.
        labels: ``(B, M)`` shape classes (index into ``SHAPES``), -1 for padding.
        colors: ``(B, M)`` colour classes or None.
    Returns ``dict(value, ci95, n (objects), floor (layouts shuffled across images), ceiling?, evaluator)``.
    """
    boxes, labels = np.asarray(boxes, float), np.asarray(labels, np.int64)
    if boxes.ndim != 3 or boxes.shape[-1] != 4 or labels.shape != boxes.shape[:2] or len(boxes) != len(images):
        raise ValueError(f"boxes must be (B, M, 4) and labels (B, M) for B={len(images)} images; "
                         f"got {boxes.shape} and {labels.shape}")
    if labels.max() >= len(SHAPES) or labels.min() < -1:
        raise ValueError(f"labels must be shape classes 0..{len(SHAPES) - 1} (or -1 for padding)")
    colors = [None] * len(images) if colors is None else np.asarray(colors, np.int64)
    ev = _evaluator(evaluator)
    det = _detect(ev, images)
    hit = _layout_hits(det, boxes, labels, colors, iou_threshold)
    out = dict(_summary(hit, seed), evaluator=ev.name, iou_threshold=iou_threshold)
    perm = _shuffled(list(range(len(images))), seed)
    out["floor"] = _summary(_layout_hits(det, boxes[perm], labels[perm],
                                         [colors[p] for p in perm], iou_threshold), seed)
    if real_images is not None:
        if len(real_images) != len(images):
            raise ValueError(f"real_images must match images one to one; got {len(real_images)} and {len(images)}")
        out["ceiling"] = _summary(_layout_hits(_detect(ev, real_images), boxes, labels, colors, iou_threshold), seed)
    return out


def segments_of(segmentation, max_segments: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The segments of label maps ``(B, H, W)`` (0 = background, 1 + shape class): every connected region of
    one class is a segment. Returns ``boxes (B, M, 4)`` (pixel ``x0, y0, x1, y1``, exclusive ends) and
    ``labels (B, M)`` (shape class, -1 padding) in the form :func:`layout_accuracy` takes."""
    from scipy import ndimage

    seg = np.asarray(torch.as_tensor(segmentation).cpu())
    if seg.ndim == 2:
        seg = seg[None]
    if seg.ndim != 3 or not np.issubdtype(seg.dtype, np.integer):
        raise ValueError(f"segmentation must be integer label maps (B, H, W); got {seg.dtype} {seg.shape}")
    found = []
    for m in seg:
        items = []
        for cls in np.unique(m[m > 0]):
            lab, _ = ndimage.label(m == cls)
            for sl in ndimage.find_objects(lab):
                if sl is not None:
                    items.append(((sl[1].start, sl[0].start, sl[1].stop, sl[0].stop), int(cls) - 1))
        found.append(sorted(items, key=lambda it: (it[0][0], it[0][1])))
    m_max = max([len(f) for f in found] + [1]) if max_segments is None else max_segments
    boxes = np.zeros((len(seg), m_max, 4))
    labels = np.full((len(seg), m_max), -1, dtype=np.int64)
    for b, items in enumerate(found):
        for k, (box, cls) in enumerate(items[:m_max]):
            boxes[b, k], labels[b, k] = box, cls
    return boxes, labels


def semantic_accuracy(images: torch.Tensor, segmentation, evaluator=None, real_images: torch.Tensor | None = None,
                      iou_threshold: float = 0.5, seed: int = 0) -> dict:
    """Semantic synthesis accuracy: the share of the map's segments (connected regions of one shape class)
    that the attribute network finds in the generated image with the right shape in the segment's box
    (IoU >= ``iou_threshold``; colour is free -- a map has none). :func:`layout_accuracy` on
    :func:`segments_of`; works for any canvas (the network reads it at 64 px, boxes scale back)."""
    boxes, labels = segments_of(segmentation)
    return layout_accuracy(images, boxes, labels, None, evaluator, real_images=real_images,
                           iou_threshold=iou_threshold, seed=seed)


@torch.no_grad()
def class_accuracy(images: torch.Tensor, labels, classifier=None, min_confidence: float = 0.5,
                   batch_size: int = 256, seed: int = 0) -> dict:
    """Class accuracy of class-conditional Fashion-MNIST samples under the shipped classifier.

    Returns ``dict(value, ci95, n, confident (share classified with probability >= min_confidence as
    any class), floor (labels shuffled), evaluator)``. ``labels=None`` scores only ``confident``
    (for unconditional samples).
    """
    if classifier is None:
        classifier = load_evaluator("fashion")
    classifier.eval()
    device = next(classifier.parameters()).device
    probs = torch.cat([classifier(images[i : i + batch_size].to(device)).softmax(1).cpu()
                       for i in range(0, len(images), batch_size)])
    conf = (probs.max(1).values >= min_confidence).numpy()
    out = dict(confident=_summary(conf, seed), evaluator=getattr(classifier, "name", type(classifier).__name__))
    if labels is not None:
        y = torch.as_tensor(labels).long().view(-1)
        if len(y) != len(images):
            raise ValueError(f"{len(images)} images but {len(y)} labels")
        if y.min() < 0 or y.max() >= probs.shape[1]:
            raise ValueError(f"labels must be classes 0..{probs.shape[1] - 1}")
        pred = probs.argmax(1)
        out.update(_summary((pred == y).numpy(), seed))
        out["floor"] = _summary((pred == y[torch.as_tensor(_shuffled(list(range(len(y))), seed))]).numpy(), seed)
    return out


def shapes_heldout_accuracy(evaluator, n: int = 1000, seed: int = 777, size: int = 64) -> dict:
    """The shapes evaluator on ``n`` fresh renders (a seed training never used): caption accuracy and
    layout accuracy on clean images and on images degraded at the training augmentations' full strength."""
    ds = ShapesDataset(size, length=n, seed=seed)
    items = [ds[i] for i in range(n)]
    x = torch.stack([it["image"] for it in items])
    caps = [it["caption"] for it in items]
    boxes = torch.stack([it["boxes"] for it in items]).numpy()
    labels = torch.stack([it["labels"] for it in items]).numpy()
    colors = torch.stack([it["colors"] for it in items]).numpy()
    xd = random_degrade(x, 1.0, torch.Generator().manual_seed(seed))
    res = {}
    for name, imgs in (("clean", x), ("degraded", xd)):
        cap = caption_accuracy(imgs, caps, evaluator)
        lay = layout_accuracy(imgs, boxes, labels, colors, evaluator)
        res[name] = dict(caption_accuracy=cap["value"], caption_ci95=cap["ci95"], with_size=cap["with_size"]["value"],
                         per_count={k: v["value"] for k, v in cap["per_count"].items()},
                         layout_accuracy=lay["value"], shuffled_caption_floor=cap["floor"]["value"])
    res["n"] = n
    res["seed"] = seed
    return res
