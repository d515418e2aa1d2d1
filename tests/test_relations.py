"""Relation-aware caption accuracy: the scorer reads "left of / right of / above / below" the way ShapesDataset
writes them, is right on real renders, wrong on renders with the objects swapped, and leaves caption_accuracy's
attribute score as it was."""

import itertools
import re

import numpy as np
import pytest
import torch

from ldm_lite.data.shapes import COLORS, SIZES, ShapesDataset, make_caption, relation
from ldm_lite.metrics.conditional import (
    RELATIONS,
    box_centre,
    caption_accuracy,
    caption_relation_accuracy,
    match_objects,
    parse_caption,
    parse_relations,
    relation_of,
)
from ldm_lite.metrics.evaluators import DetectedObject, load_evaluator

N_RENDERS = 200


def _swapped(ds, i):
    """Render layout ``i`` with the centres of objects 0 and 1 exchanged (kept inside the canvas)."""
    objs = [dict(o) for o in ds.layout(i)]
    (a, b), S = objs[:2], ds.size
    a["cx"], a["cy"], b["cx"], b["cy"] = b["cx"], b["cy"], a["cx"], a["cy"]
    for o in (a, b):
        o["cx"], o["cy"] = (float(np.clip(v, o["r"] + 1, S - o["r"] - 1)) for v in (o["cx"], o["cy"]))
    img, _ = ds.render(objs)
    return torch.from_numpy(img).permute(2, 0, 1) * 2 - 1


@pytest.fixture(scope="module")
def renders(one_thread):
    """200 two-object captions no test elsewhere uses: real renders and renders with the objects swapped."""
    ds = ShapesDataset(64, length=N_RENDERS, seed=52_021, min_objects=2, max_objects=2)
    items = [ds[i] for i in range(N_RENDERS)]
    real = torch.stack([it["image"] for it in items])
    swapped = torch.stack([_swapped(ds, i) for i in range(N_RENDERS)])
    return real, swapped, [it["caption"] for it in items], load_evaluator("shapes")


# ------------------------------------------------------------------------------------------------ parsing
def test_relations_are_the_generators():
    """RELATIONS is exactly the set ShapesDataset's relation() produces: one per direction of the offset."""
    at = lambda x, y: dict(cx=x, cy=y)  # noqa: E731
    produced = {relation(at(10, 30), at(30, 30)), relation(at(50, 30), at(30, 30)),
                relation(at(30, 10), at(30, 30)), relation(at(30, 50), at(30, 30))}
    assert produced == set(RELATIONS) and len(RELATIONS) == 4


def test_parse_every_relation_word_the_generator_writes():
    """Captions of 1-3 objects straight from make_caption: each consecutive pair parsed to the relation the
    generator computed, and every relation word occurs."""
    ds = ShapesDataset(64, length=400, seed=3)
    words = set()
    for i in range(len(ds)):
        objs = ds.layout(i)
        cap = make_caption(objs)
        want = [(k, relation(objs[k], objs[k + 1]), k + 1) for k in range(len(objs) - 1)]
        assert parse_relations(cap) == want, cap
        words |= {r for _, r, _ in want}
    assert words == set(RELATIONS)
    # and by hand, one caption per relation, in two- and three-object chains
    for rel, rel2 in itertools.product(RELATIONS, RELATIONS):
        cap = f"a big red circle {rel} a small blue square, which is {rel2} a small green hexagon"
        assert parse_relations(cap) == [(0, rel, 1), (1, rel2, 2)]
        assert parse_relations(f"A Big Red Circle {rel.upper()} a small blue square.") == [(0, rel, 1)]
    assert parse_relations("a small pink cross") == []


def test_parse_relations_rejects_what_it_cannot_score():
    assert parse_relations("a big red circle and a small blue square") == [(0, None, 1)]
    with pytest.raises(ValueError, match="one relation per pair"):
        parse_relations("a big red circle left of and above a small blue square")
    with pytest.raises(ValueError, match="relates nothing"):
        parse_relations("above a big red circle")
    with pytest.raises(ValueError, match="relates nothing"):
        parse_relations("a big red circle left of")
    with pytest.raises(ValueError, match="unknown word"):
        parse_relations("a big red circle behind a small blue square")


def test_relation_of_is_the_generators_rule():
    rng = np.random.default_rng(0)
    for a, b in rng.uniform(0, 64, (500, 2, 2)):
        assert relation_of(a, b) == relation(dict(cx=a[0], cy=a[1]), dict(cx=b[0], cy=b[1]))
    assert relation_of((10, 10), (20, 20)) == "left of"  # a diagonal tie is horizontal, as in the generator
    assert relation_of((20, 5), (20, 30)) == "above"     # image rows grow downwards
    assert relation_of((12, 0), (0, 11)) == "right of"   # the dominant axis decides, not the sign alone
    assert box_centre((2, 4, 10, 20)) == (6.0, 12.0)


def test_match_objects_by_attributes():
    det = lambda c, s, z, x, area=100: DetectedObject(c, s, z, (x, 10, x + 10, 20), area, 0.9)  # noqa: E731
    want = parse_caption("a big red circle left of a small blue square")
    objs = [det("blue", "square", "small", 40), det("red", "circle", "big", 5), det("red", "circle", "small", 20, 30)]
    assert match_objects(want, objs) == [1, 0]                       # size picks the big red circle
    assert match_objects(want, [det("blue", "hexagon", "small", 40)]) == [None, None]
    assert match_objects(want, [det("blue", "hexagon", "small", 40)], match="loose") == [None, 0]
    # two objects of the same colour and shape: each caption object gets its own
    same = parse_caption("a big red circle above a small red circle")
    assert match_objects(same, [det("red", "circle", "small", 0), det("red", "circle", "big", 30)]) == [1, 0]
    with pytest.raises(ValueError, match="strict"):
        match_objects(want, objs, match="fuzzy")


# ------------------------------------------------------------------------------------------------ scoring
def test_real_renders_score_relations_near_one(renders):
    real, _, caps, ev = renders
    r = caption_relation_accuracy(real, caps, ev)
    assert r["n"] == N_RENDERS and r["found"]["value"] == 1.0
    assert r["relation"]["n"] == N_RENDERS and r["relation"]["value"] >= 0.95
    assert r["attributes"]["value"] >= 0.98 and r["both"]["value"] >= 0.95
    assert set(r["per_relation"]) == set(RELATIONS)
    assert all(v["value"] >= 0.9 and v["n"] >= 30 for v in r["per_relation"].values())
    assert r["chance"] == dict(per_relation=0.25, relation=0.25)
    lo, hi = r["relation"]["ci95"]
    assert lo <= r["relation"]["value"] <= hi
    row = r["per_image"][0]
    assert set(row) >= {"attributes", "relation", "both", "relations", "centres"}
    assert row["relations"][0]["relation"] == parse_relations(caps[0])[0][1]


def test_swapped_renders_score_relations_near_zero(renders):
    real, swapped, caps, ev = renders
    r = caption_relation_accuracy(swapped, caps, ev, real_images=real)
    assert r["relation"]["n"] >= 0.9 * N_RENDERS  # the objects are still found ...
    assert r["relation"]["value"] <= 0.05          # ... on the wrong sides
    assert r["attributes"]["value"] >= 0.9 and r["both"]["value"] <= 0.05
    assert r["ceiling"]["relation"]["value"] >= 0.95  # the real renders of the same captions


def test_missing_object_gives_no_relation(renders):
    real, _, caps, ev = renders
    blank = torch.full_like(real[:2], -0.84)  # the background alone
    r = caption_relation_accuracy(blank, caps[:2], ev)
    assert [row["relation"] for row in r["per_image"]] == [None, None]
    assert r["relation"]["n"] == 0 and r["found"]["value"] == 0.0 and r["both"]["value"] == 0.0
    one = caption_relation_accuracy(real[:1], ["a small red circle"], ev)["per_image"][0]
    assert one["relation"] is None and one["relations"] == [] and one["both"] == one["attributes"]


# ------------------------------------------------------------------------------------------------ unchanged
def _pinned_set():
    """48 fixed renders with captions: 12 right, 8 with the first object's size flipped, 8 with its colour changed,
    8 moved to a neighbour's image, 12 right; images with fixed noise (sigma 0.5)."""
    ds = ShapesDataset(64, length=48, seed=4242)
    items = [ds[i] for i in range(48)]
    x = torch.stack([it["image"] for it in items])
    x = (x + 0.5 * torch.randn(x.shape, generator=torch.Generator().manual_seed(7))).clamp(-1, 1)
    caps = [it["caption"] for it in items]
    first = re.compile(rf"^a ({'|'.join(SIZES)}) ({'|'.join(COLORS)})")
    for i in range(12, 20):
        caps[i] = first.sub(lambda m: f"a {SIZES[1 - SIZES.index(m[1])]} {m[2]}", caps[i])
    for i in range(20, 28):
        caps[i] = first.sub(lambda m: f"a {m[1]} {COLORS[(COLORS.index(m[2]) + 1) % len(COLORS)]}", caps[i])
    caps[28:36] = caps[29:36] + caps[28:29]
    return x, caps


def test_caption_accuracy_attribute_score_unchanged(one_thread):
    """caption_accuracy's numbers on a fixed set, pinned before the relation scorer was added, and the relation
    scorer's ``attributes`` is the same reading image by image."""
    x, caps = _pinned_set()
    ev = load_evaluator("shapes")
    r = caption_accuracy(x, caps, ev)
    assert r["n"] == 48
    assert r["value"] == pytest.approx(PINNED["value"])
    assert r["with_size"]["value"] == pytest.approx(PINNED["with_size"])
    assert {k: v["value"] for k, v in r["per_count"].items()} == pytest.approx(PINNED["per_count"])
    rel = caption_relation_accuracy(x, caps, ev)
    assert rel["attributes"]["value"] == pytest.approx(r["value"])
    assert rel["attributes_with_size"]["value"] == pytest.approx(r["with_size"]["value"])


#: caption_accuracy's numbers on _pinned_set(), computed before the relation scorer was added to its module.
PINNED = dict(value=32 / 48, with_size=24 / 48, per_count={1: 9 / 12, 2: 11 / 16, 3: 12 / 20})
