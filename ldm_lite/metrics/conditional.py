"""Conditional scores: did the sample show what the condition asked for? (chapter 08)

On ShapesDataset the condition is checkable exactly, because the generator knows every object:

* :func:`caption_accuracy` -- every object the caption names is present with the right colour and shape,
  and nothing extra (the multiset of (colour, shape) read from the image equals the caption's).
  Reported overall, per object count, with size as well, and for held-out (colour, shape) pairs apart.
* :func:`caption_relation_accuracy` -- the caption's other half: each object found by its attributes, and the
  caption's relations ("left of", "right of", "above", "below") read from the found objects' box centres with
  the generator's own rule (:func:`relation_of`). Attributes, relations and both, per object count and per
  relation, beside the chance level and the real-render ceiling.
* :func:`layout_accuracy` -- the fraction of requested objects found inside their box (IoU >= 0.5, the
  right shape, and the right colour when given).

All three read the image with the shipped :class:`~ldm_lite.metrics.evaluators.ShapesAttributeNet` and report,
beside the number, a *floor* (the same images scored against shuffled captions / layouts -- what a model
that ignores its condition gets; for relations the chance level, 1 in 4) and, when the real images are passed,
a *ceiling* (the evaluator on the real renders of the same captions). On Fashion-MNIST: :func:`class_accuracy`.
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from typing import Sequence

import numpy as np
import torch

from ldm_lite.data.augment import random_degrade
from ldm_lite.data.shapes import COLORS, SHAPES, SIZES, ShapesDataset, relation
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


# ------------------------------------------------------------------------------------------------
# Relations: "a big red circle left of a small blue square" is half about where things are
# ------------------------------------------------------------------------------------------------
#: The relations ShapesDataset's captions use (:func:`ldm_lite.data.shapes.relation`). For any two distinct
#: centres exactly one of them holds, so a model that places objects without reading the relation is right
#: 1 time in 4 per relation.
RELATIONS = ("left of", "right of", "above", "below")
_RELATION_OF_WORD = {"left": "left of", "right": "right of", "above": "above", "below": "below"}


def parse_relations(caption: str) -> list[tuple[int, str | None, int]]:
    """The relations of a caption, one per pair of consecutive objects: ``(i, relation, i + 1)``.

    ShapesDataset chains its objects -- ``"a A left of a B, which is above a C"`` says A is left of B and B is
    above C -- so the words between objects ``i`` and ``i + 1`` relate them. ``relation`` is one of
    :data:`RELATIONS`, or None where the words name none (``"a A and a B"``: nothing to score). A one-object
    caption has no relation (``[]``). Raises ``ValueError`` for what :func:`parse_caption` rejects, for two
    relation words between the same two objects, and for a relation word before the first or after the last
    object (it would relate nothing).
    """
    parse_caption(caption)  # the vocabulary checks
    text = caption.lower()
    spans = [m.span() for m in _OBJECT.finditer(text)]
    gaps = [text[:spans[0][0]], *(text[a[1]:b[0]] for a, b in itertools.pairwise(spans)), text[spans[-1][1]:]]
    words = [[_RELATION_OF_WORD[w] for w in re.findall(r"[a-z]+", g) if w in _RELATION_OF_WORD] for g in gaps]
    for end, side in ((0, "before the first"), (-1, "after the last")):
        if words[end]:
            raise ValueError(f"caption {caption!r}: the relation {words[end][0]!r} stands {side} object and relates "
                             "nothing; write 'a <object> <relation> a <object>'")
    out = []
    for i, found in enumerate(words[1:-1]):
        if len(found) > 1:
            raise ValueError(f"caption {caption!r}: objects {i} and {i + 1} are joined by {len(found)} relations "
                             f"({', '.join(map(repr, found))}); one relation per pair")
        out.append((i, found[0] if found else None, i + 1))
    return out


def box_centre(box) -> tuple[float, float]:
    """Centre ``(x, y)`` of a pixel box ``(x0, y0, x1, y1)``."""
    x0, y0, x1, y1 = (float(v) for v in box)
    return (x0 + x1) / 2, (y0 + y1) / 2


def relation_of(a, b) -> str:
    """Where centre ``a = (x, y)`` lies relative to centre ``b``, by ShapesDataset's own rule
    (:func:`ldm_lite.data.shapes.relation`, which writes the captions): the axis along which the centres are
    further apart decides -- ``|dx| >= |dy|`` gives "left of" (``dx < 0``) or "right of", otherwise "above"
    (``dy < 0``; image rows grow downwards) or "below". An exact tie ``|dx| == |dy|`` is horizontal, as in the
    generator. So exactly one relation holds for two distinct centres: "A left of B" is read as "A is more to the
    left of B than it is above or below it", not merely ``x_A < x_B`` (which a caption-blind placement would meet
    half the time)."""
    return relation(dict(cx=float(a[0]), cy=float(a[1])), dict(cx=float(b[0]), cy=float(b[1])))


def _pair_score(want: tuple[str, str, str], obj, match: str) -> int | None:
    """How well a detection fits a caption object; None if it may not stand for it."""
    size, color, shape = want
    same_color, same_shape = obj.color == color, obj.shape == shape
    if match == "strict" and not (same_color and same_shape):
        return None
    if match == "loose" and not (same_color or same_shape):
        return None
    return 2 * same_color + 2 * same_shape + (obj.size == size)


def match_objects(wanted: Sequence[tuple[str, str, str]], detections: Sequence, match: str = "strict") -> list:
    """Assign each caption object ``(size, colour, shape)`` (:func:`parse_caption`) a distinct detection
    (:meth:`ShapesAttributeNet.detect`); returns, per caption object, the index of its detection or None.

    ``match="strict"``: a detection may stand for a caption object only with the same colour *and* shape (size
    may differ -- it only decides between candidates). ``"loose"``: the same colour *or* shape is enough (a blue
    hexagon drawn for "a small blue square" still says where that object went). Among all assignments the one
    that matches the most attributes wins (colour and shape count 2, size 1), ties broken by the larger total
    detected area (a stray speck does not displace the object).
    """
    if match not in ("strict", "loose"):
        raise ValueError(f"match must be 'strict' (same colour and shape) or 'loose' (same colour or shape), "
                         f"got {match!r}")
    scores = [[_pair_score(w, o, match) for o in detections] for w in wanted]
    best, best_key = [None] * len(wanted), (0, 0)
    options = [[None] + [j for j, sc in enumerate(row) if sc is not None] for row in scores]
    for pick in itertools.product(*options):
        used = [j for j in pick if j is not None]
        if len(used) != len(set(used)):
            continue
        key = (sum(scores[i][j] for i, j in enumerate(pick) if j is not None),
               sum(detections[j].area for j in used))
        if key > best_key:
            best, best_key = list(pick), key
    return best


def _relation_rows(detections: list, captions: Sequence[str], match: str) -> list[dict]:
    """One row per image: attributes / relations read from its detections (see :func:`caption_relation_accuracy`)."""
    attr, attr_size = _caption_hits(detections, captions)
    rows = []
    for objs, cap, a, a_size in zip(detections, captions, attr, attr_size):
        wanted, rels = parse_caption(cap), parse_relations(cap)
        pick = match_objects(wanted, objs, match)
        centres = [None if j is None else box_centre(objs[j].box) for j in pick]
        scored = []
        for i, rel, k in rels:
            if rel is None:
                continue
            seen = relation_of(centres[i], centres[k]) if centres[i] is not None and centres[k] is not None else None
            scored.append(dict(objects=(i, k), relation=rel, seen=seen, correct=None if seen is None else seen == rel))
        if not scored or any(r["correct"] is None for r in scored):
            rel_ok = None
        else:
            rel_ok = all(r["correct"] for r in scored)
        rows.append(dict(caption=cap, objects=len(wanted), attributes=bool(a), attributes_with_size=bool(a_size),
                         relation=rel_ok, both=bool(a) and (rel_ok is True if scored else True),
                         relations=scored, centres=centres, detected=len(objs)))
    return rows


def _relation_report(rows: list[dict], seed: int = 0) -> dict:
    """Aggregate :func:`_relation_rows`: attributes, relation (where found), both; per count and per relation."""
    def block(sub):
        with_rel = [r for r in sub if r["relations"]]
        found = [r for r in with_rel if r["relation"] is not None]
        return dict(attributes=_summary([r["attributes"] for r in sub], seed),
                    relation=_summary([r["relation"] for r in found], seed),
                    both=_summary([r["both"] for r in sub], seed),
                    found=_summary([r["relation"] is not None for r in with_rel], seed),
                    n=len(sub))

    out = block(rows)
    out["attributes_with_size"] = _summary([r["attributes_with_size"] for r in rows], seed)
    out["per_count"] = {k: block([r for r in rows if r["objects"] == k]) for k in sorted({r["objects"] for r in rows})}
    rels = [x for r in rows for x in r["relations"]]
    out["per_relation"] = {}
    for name in RELATIONS:
        asked = [x for x in rels if x["relation"] == name]
        if asked:
            found = [x for x in asked if x["correct"] is not None]
            out["per_relation"][name] = dict(_summary([x["correct"] for x in found], seed), asked=len(asked),
                                             seen_as={s: sum(x["seen"] == s for x in found) for s in RELATIONS})
    found = [r for r in rows if r["relation"] is not None]
    out["chance"] = dict(per_relation=1 / len(RELATIONS),
                         relation=float(np.mean([len(RELATIONS) ** -len(r["relations"]) for r in found]))
                         if found else float("nan"))
    return out


def caption_relation_accuracy(images: torch.Tensor, captions: Sequence[str], evaluator=None,
                              real_images: torch.Tensor | None = None, match: str = "strict", seed: int = 0) -> dict:
    """Caption accuracy with the relations scored: are the objects there, *and* where the caption says?

    Reads every image with the attribute network (:meth:`ShapesAttributeNet.detect`: objects, their colour,
    shape, size and box), assigns each caption object a detection by its attributes (:func:`match_objects`;
    ``match="strict"``: same colour and shape), and checks each relation of the caption (:func:`parse_relations`)
    on the two matched box centres with the generator's rule (:func:`relation_of`: the dominant axis of the
    centres' offset; a tie is horizontal).

    Per image (``per_image``, a list of dicts): ``attributes`` -- exactly :func:`caption_accuracy`'s reading (the
    multiset of (colour, shape) equals the caption's); ``relation`` -- every relation right, ``None`` when the
    caption has none or an object of one of them was not found; ``both`` -- attributes and every relation right
    (for a one-object caption: its attributes); ``relations`` (asked, seen, correct per pair) and ``centres``.

    Aggregated, every score ``dict(value, ci95 (Wilson 95 %), n)``: ``attributes``, ``attributes_with_size``,
    ``relation`` (over the images whose relations could be read, ``n`` says how many), ``found`` (the share of
    relation-bearing images whose objects were found), ``both`` (over all images); the same per object count
    (``per_count``), and per relation word (``per_relation``, with ``asked`` and ``seen_as``: what was drawn
    instead). ``chance``: 1/4 per relation (one of :data:`RELATIONS` holds for any two centres) and the mean
    chance of the scored images (1/4**k for k relations). ``ceiling`` (given ``real_images``, the real renders of
    the same captions): the same report on them -- the scorer's own limit.
    """
    captions = list(captions)
    if len(captions) != len(images):
        raise ValueError(f"{len(images)} images but {len(captions)} captions; give one caption per image")
    for c in captions:
        parse_relations(c)  # fail on a bad caption before any work
    if match not in ("strict", "loose"):
        raise ValueError(f"match must be 'strict' (same colour and shape) or 'loose' (same colour or shape), "
                         f"got {match!r}")
    ev = _evaluator(evaluator)
    rows = _relation_rows(_detect(ev, images), captions, match)
    out = dict(_relation_report(rows, seed), per_image=rows, evaluator=ev.name, match=match,
               rule="dominant axis of the box centres' offset (|dx| >= |dy|: left/right, else above/below)")
    if real_images is not None:
        if len(real_images) != len(images):
            raise ValueError(f"real_images must match images one to one; got {len(real_images)} and {len(images)}")
        ceiling = _relation_report(_relation_rows(_detect(ev, real_images, what="real_images"), captions, match), seed)
        out["ceiling"] = {k: ceiling[k] for k in ("attributes", "relation", "both", "found", "per_count",
                                                  "per_relation")}
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
