"""Solutions to the exercises of notebook 00 (setup and data)."""

import re

from ldm_lite.data import SHAPES


def relation_from_boxes(box_a, box_b):
    """Where object a is relative to object b, from their (x0, y0, x1, y1) pixel boxes.

    The offset of the box centres decides along the axis where it is larger; image rows grow downwards,
    so a smaller centre y means higher up ("above")."""
    ax0, ay0, ax1, ay1 = (float(v) for v in box_a)
    bx0, by0, bx1, by1 = (float(v) for v in box_b)
    dx = (ax0 + ax1 - bx0 - bx1) / 2
    dy = (ay0 + ay1 - by0 - by1) / 2
    if abs(dy) > abs(dx):
        return "below" if dy > 0 else "above"
    return "right of" if dx > 0 else "left of"


_NAMED = re.compile(r"\ba (small|big) (\w+) (\w+)")


def objects_in_caption(caption):
    """Every "a <size> <colour> <shape>" in the caption, in the order it names them."""
    return [(size, colour, shape) for size, colour, shape in _NAMED.findall(caption)]


def shape_counts(dataset, n):
    """Objects per shape (in SHAPES order) in the first n images; layouts only, nothing is rendered."""
    counts = dict.fromkeys(SHAPES, 0)
    for index in range(n):
        for obj in dataset.layout(index):
            counts[obj["shape"]] += 1
    return [counts[s] for s in SHAPES]
