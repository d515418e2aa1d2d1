"""ShapesDataset: determinism, exact labels (captions, boxes, segmentation), hold-out splits, errors."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from ldm_lite.data import COLORS, SHAPES, SIZES, ShapesDataset
from ldm_lite.data.shapes import MAX_OBJECTS

OBJECT_RE = re.compile(rf"\b({'|'.join(SIZES)}) ({'|'.join(COLORS)}) ({'|'.join(SHAPES)})\b")
RELATION_RE = re.compile(r"(left of|right of|above|below)")


def _objects_from_labels(sample) -> Counter:
    n = sample["num_objects"]
    return Counter(
        (SIZES[int(s)], COLORS[int(c)], SHAPES[int(l)])
        for s, c, l in zip(sample["sizes"][:n], sample["colors"][:n], sample["labels"][:n])
    )


def test_same_seed_same_sample_different_seed_different():
    a, b, c = ShapesDataset(size=32, seed=3), ShapesDataset(size=32, seed=3), ShapesDataset(size=32, seed=4)
    for i in (0, 7, 123):
        sa, sb = a[i], b[i]
        for key, value in sa.items():
            if torch.is_tensor(value):
                assert torch.equal(value, sb[key]), key
            else:
                assert value == sb[key], key
    assert not torch.equal(a[0]["image"], c[0]["image"])
    assert not torch.equal(a[0]["image"], a[1]["image"])
    assert torch.equal(a[-1]["image"], a[len(a) - 1]["image"])


@pytest.mark.parametrize("size, indices", [(16, range(20)), (64, range(20)), (512, [0])])
def test_dtypes_shapes_and_range(size, indices):
    ds = ShapesDataset(size=size, length=50, seed=1)
    for i in indices:
        s = ds[i]
        assert s["image"].shape == (3, size, size) and s["image"].dtype == torch.float32
        assert s["image"].min() >= -1.0 and s["image"].max() <= 1.0
        assert s["boxes"].shape == (MAX_OBJECTS, 4) and s["boxes"].dtype == torch.float32
        for key in ("labels", "colors", "sizes"):
            assert s[key].shape == (MAX_OBJECTS,) and s[key].dtype == torch.int64
        for key in ("segmentation", "instances"):
            assert s[key].shape == (size, size) and s[key].dtype == torch.int64
        assert 1 <= s["num_objects"] <= MAX_OBJECTS
        n = s["num_objects"]
        assert (s["labels"][n:] == -1).all() and (s["colors"][n:] == -1).all() and (s["sizes"][n:] == -1).all()
        assert (s["boxes"][n:] == 0).all()
        boxes = s["boxes"][:n]
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
        assert (boxes[:, 2] <= size).all() and (boxes[:, 3] <= size).all()
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()


@pytest.mark.parametrize("size", [16, 64])
def test_instances_inside_boxes_and_segmentation_consistent(size):
    ds = ShapesDataset(size=size, length=40, seed=2)
    for i in range(40):
        s = ds[i]
        n, inst, seg = s["num_objects"], s["instances"], s["segmentation"]
        assert int(inst.max()) <= n
        for k in range(n):
            ys, xs = torch.nonzero(inst == k + 1, as_tuple=True)
            assert len(ys) > 0, f"sample {i}: object {k} covers no pixel at size {size}"
            x0, y0, x1, y1 = s["boxes"][k].tolist()
            assert xs.min() >= x0 and xs.max() < x1 and ys.min() >= y0 and ys.max() < y1
        # segmentation = 1 + shape class of the instance there, background 0
        lut = torch.cat([torch.zeros(1, dtype=torch.int64), 1 + s["labels"][:n]])
        assert torch.equal(seg, lut[inst])


def test_objects_are_drawn_in_their_colour():
    ds = ShapesDataset(size=64, length=20, seed=5)
    from ldm_lite.data.shapes import RGB

    for i in range(20):
        s = ds[i]
        img = (s["image"] + 1) / 2  # [0, 1]
        for k in range(s["num_objects"]):
            mask = s["instances"] == k + 1
            mean = img[:, mask].mean(dim=1)
            want = torch.tensor(RGB[COLORS[int(s["colors"][k])]])
            assert (mean - want).abs().max() < 0.12, (i, k, mean, want)


def test_caption_names_exactly_the_objects_present():
    ds = ShapesDataset(size=32, length=200, seed=0)
    for i in range(0, 200, 4):
        s = ds[i]
        named = Counter(OBJECT_RE.findall(s["caption"]))
        assert named == _objects_from_labels(s), (s["caption"], _objects_from_labels(s))
        assert s["caption"].count(" a ") + s["caption"].startswith("a ") == s["num_objects"]


def test_caption_relations_match_the_layout():
    ds = ShapesDataset(size=64, length=100, seed=0)
    for i in range(100):
        objects = ds.layout(i)
        relations = RELATION_RE.findall(ds[i]["caption"]) if len(objects) > 1 else []
        assert len(relations) == len(objects) - 1
        for rel, a, b in zip(relations, objects[:-1], objects[1:]):
            dx, dy = a["cx"] - b["cx"], a["cy"] - b["cy"]
            expected = {"left of": dx < 0, "right of": dx > 0, "above": dy < 0, "below": dy > 0}[rel]
            assert expected, (ds[i]["caption"], a, b)
            assert (abs(dx) >= abs(dy)) == (rel in ("left of", "right of"))


def test_holdout_pairs_never_in_train_always_in_holdout():
    held = [("purple", "triangle"), ("cyan", "circle")]
    train = ShapesDataset(size=32, length=300, seed=0, holdout=held, split="train")
    hold = ShapesDataset(size=32, length=300, seed=0, holdout=held, split="holdout")
    for i in range(300):
        assert not {(o["color"], o["shape"]) for o in train.layout(i)} & set(held), i
        assert {(o["color"], o["shape"]) for o in hold.layout(i)} & set(held), i
    # the rendered labels agree with the layout
    s = hold[0]
    pairs = {(COLORS[int(c)], SHAPES[int(l)]) for c, l in zip(s["colors"][: s["num_objects"]], s["labels"])}
    assert pairs & set(held)


def test_object_count_bounds():
    ds = ShapesDataset(size=32, length=100, seed=0, min_objects=2, max_objects=2)
    assert all(len(ds.layout(i)) == 2 for i in range(100))
    ds = ShapesDataset(size=32, length=300, seed=0)
    assert {len(ds.layout(i)) for i in range(300)} == {1, 2, 3}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(size=8), "size must be an int from 16 to 512"),
        (dict(size=600), "size must be an int from 16 to 512"),
        (dict(size=64.0), "size must be an int"),
        (dict(length=0), "length must be at least 1"),
        (dict(min_objects=0), "min_objects"),
        (dict(max_objects=4), "max_objects"),
        (dict(min_objects=3, max_objects=2), "min_objects"),
        (dict(split="val"), "split must be 'train' or 'holdout'"),
        (dict(holdout=[("magenta", "circle")]), "colour in"),
        (dict(holdout=[("red", "star")]), "shape in"),
        (dict(split="holdout"), "needs at least one holdout"),
        (dict(holdout=[(c, s) for c in COLORS for s in SHAPES]), "nothing is left to train on"),
    ],
)
def test_bad_arguments_raise_helpful_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ShapesDataset(**kwargs)


def test_index_out_of_range():
    ds = ShapesDataset(size=16, length=5)
    with pytest.raises(IndexError, match="out of range"):
        ds[5]


def test_default_collate_batches_every_field():
    loader = DataLoader(ShapesDataset(size=32, length=16, seed=0), batch_size=8)
    batch = next(iter(loader))
    assert batch["image"].shape == (8, 3, 32, 32)
    assert batch["boxes"].shape == (8, MAX_OBJECTS, 4)
    assert batch["labels"].shape == (8, MAX_OBJECTS) and batch["segmentation"].shape == (8, 32, 32)
    assert batch["num_objects"].shape == (8,) and len(batch["caption"]) == 8
