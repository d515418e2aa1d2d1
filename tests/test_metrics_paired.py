"""Bootstrap intervals that mean what they say: resamples keep their duplicates, paired sets stay paired,
two results sharing a reference are compared by their paired difference, and reconstruction scores are
read against paired anchors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ldm_lite import metrics as M


def _population_kid(d: int, m: float) -> float:
    """MMD^2 of N(0, I_d) and N(mu, I_d), |mu|^2 = m, under KID's kernel k(x, y) = (x.y / d + 1)^3.

    With s = x.y / d, E k = 1 + 3 E[s] + 3 E[s^2] + E[s^3], and given y, x.y is normal:
    x, x' ~ N(0, I):   E[s] = 0, E[s^2] = 1 / d, E[s^3] = 0;
    x ~ N(0, I), y ~ N(mu, I):  E[s] = 0, E[s^2] = (m + d) / d^2, E[s^3] = 0;
    y, y' ~ N(mu, I):  E[s] = m / d, E[s^2] = (m^2 + 2m + d) / d^2, E[s^3] = (m^3 + 6m^2 + 3md + 6m) / d^3.
    """
    exx = 1 + 3 / d
    exy = 1 + 3 * (m + d) / d**2
    eyy = 1 + 3 * m / d + 3 * (m * m + 2 * m + d) / d**2 + (m**3 + 6 * m * m + 3 * m * d + 6 * m) / d**3
    return exx + eyy - 2 * exy


def test_kid_and_precision_recall_intervals_cover_the_population_value():
    """Two Gaussians with a known population KID: the 95 % bootstrap interval covers it in >= 90 % of 200
    independent draws, and its width matches the spread of the estimate over draws (a bootstrap on the
    distinct rows of each resample was 0.73-0.78 x too narrow). One distribution against itself (population
    KID 0) is covered too. Precision / recall: covered their mean over draws in >= 90 % of 100 draws."""
    d, n_a, n_b = 4, 60, 80
    mu = np.array([0.6, 0.6, 0.0, 0.0])
    pop = _population_kid(d, float(mu @ mu))
    rng = np.random.default_rng(0)
    values, intervals, null_cover = [], [], []
    for r in range(200):
        a, b = rng.normal(size=(n_a, d)), rng.normal(size=(n_b, d)) + mu
        res = M.set_metrics_with_intervals(a, b, n_boot=300, metrics=("kid",), seed=r)["kid"]
        values.append(res["value"])
        intervals.append(res["ci95"])
        if r < 100:
            lo, hi = M.set_metrics_with_intervals(a, rng.normal(size=(n_b, d)), n_boot=300, metrics="kid",
                                                  seed=r)["kid"]["ci95"]
            null_cover.append(lo <= 0.0 <= hi)
    values, intervals = np.array(values), np.array(intervals)
    assert abs(values.mean() - pop) < 3 * values.std() / np.sqrt(len(values))  # the closed form is right
    coverage = np.mean((intervals[:, 0] <= pop) & (pop <= intervals[:, 1]))
    width_ratio = np.mean(intervals[:, 1] - intervals[:, 0]) / (2 * 1.96 * values.std())
    assert coverage >= 0.90, coverage
    assert 0.9 <= width_ratio <= 1.4, width_ratio
    assert np.mean(null_cover) >= 0.90, np.mean(null_cover)

    points, boxes = [], []
    for r in range(100):
        a, b = rng.normal(size=(n_a, d)), rng.normal(size=(n_b, d)) + mu
        res = M.set_metrics_with_intervals(a, b, n_boot=200, metrics=("precision", "recall"), seed=r)
        points.append([res["precision"]["value"], res["recall"]["value"]])
        boxes.append([res["precision"]["ci95"], res["recall"]["ci95"]])
    points, boxes = np.array(points), np.array(boxes)
    for i, name in enumerate(("precision", "recall")):
        truth = points[:, i].mean()
        cover = np.mean((boxes[:, i, 0] <= truth) & (truth <= boxes[:, i, 1]))
        assert cover >= 0.90, (name, cover)


def test_paired_difference_resolves_a_shift_that_marginal_intervals_miss():
    """B = A moved a little further from the reference (+0.04, with a little noise, on half of the
    dimensions). A's and B's own intervals overlap; the paired difference, resampling the reference once and
    A and B with the same indices, excludes 0."""
    d, n = 8, 200
    for seed in range(3):
        rng = np.random.default_rng(100 + seed)
        ref = rng.normal(size=(n, d))
        a = rng.normal(size=(n, d))
        a[:, : d // 2] += 0.5
        b = a.copy()
        b[:, : d // 2] += 0.04 + 0.02 * rng.normal(size=(n, d // 2))
        ma = M.set_metrics_with_intervals(ref, a, n_boot=500, metrics=("fid", "kid"), seed=seed)
        mb = M.set_metrics_with_intervals(ref, b, n_boot=500, metrics=("fid", "kid"), seed=seed)
        diff = M.paired_difference(("fid", "kid"), ref, a, b, n_boot=500, seed=seed)
        for m in ("fid", "kid"):
            assert ma[m]["ci95"][1] >= mb[m]["ci95"][0], (m, ma[m], mb[m])  # the marginal intervals overlap
            lo, hi = diff[m]["ci95"]
            assert lo <= diff[m]["value"] <= hi < 0, (m, diff[m])
            assert diff[m]["value"] == pytest.approx(ma[m]["value"] - mb[m]["value"])
            assert diff[m]["reading"] == f"{m}: A lower than B: the interval excludes 0"
            assert (diff[m]["n_ref"], diff[m]["n_a"], diff[m]["n_b"], diff[m]["n_boot"]) == (n, n, n, 500)
    # resampling A and B independently ignores what they share: a wider interval
    indep = M.paired_difference("kid", ref, a, b, n_boot=500, seed=0, paired=False)
    assert np.diff(indep["ci95"])[0] > 3 * np.diff(diff["kid"]["ci95"])[0]
    # a set against itself: no difference, and the reading says so
    same = M.paired_difference("recall", ref, a, a.copy(), n_boot=50)
    assert same["value"] == 0.0 and same["ci95"] == (0.0, 0.0)
    assert same["reading"] == "recall: no difference resolved: the interval includes 0"


def test_several_comparisons_widen_each_interval():
    assert M.bonferroni_level(1) == pytest.approx(0.95)
    assert M.bonferroni_level(5) == pytest.approx(0.99)
    assert M.bonferroni_level(10, level=0.9) == pytest.approx(0.99)
    with pytest.raises(ValueError, match="comparisons must be a positive integer"):
        M.bonferroni_level(0)
    rng = np.random.default_rng(3)
    ref, a = rng.normal(size=(80, 4)), rng.normal(size=(80, 4)) + 0.3
    b = a + 0.05
    one = M.paired_difference("kid", ref, a, b, n_boot=400)
    five = M.paired_difference("kid", ref, a, b, n_boot=400, comparisons=5)
    assert five["level"] == pytest.approx(0.99) and one["level"] == pytest.approx(0.95)
    assert five["ci95"][0] < one["ci95"][0] and five["ci95"][1] > one["ci95"][1]
    with pytest.raises(ValueError, match="paired A and B need one row each"):
        M.paired_difference("kid", ref, a, b[:50])


def _heldout_emoji():
    from ldm_lite.data import load_openmoji

    ds = load_openmoji(64, "test", progress=False)
    return torch.from_numpy(ds.images).permute(0, 3, 1, 2).float() / 127.5 - 1


def test_reconstruction_scores_are_read_against_paired_anchors():
    """The 182 held-out emoji on the course's OpenMoji features. The originals against themselves anchor 0;
    noise, blur and JPEG anchors grow with the amount; a visibly noisy "reconstruction" (noise std 0.05 on
    the [0, 1] scale) lands on the noise-0.05 anchor, clearly above 0 and above the milder noise anchor --
    read as paired. The unpaired KID of the same pairs counts each image's match with its own noisy copy as
    a pair of independent draws and comes out below 0, i.e. "better than real images"."""
    x = _heldout_emoji()
    ext = M.get_feature_extractor("openmoji", announce=False)
    degradations = (("noise", 0.02), ("noise", 0.05), ("noise", 0.1), ("blur", 0.5), ("blur", 1.0),
                    ("blur", 2.0), ("jpeg", 90), ("jpeg", 50), ("jpeg", 20))
    res = M.reconstruction_anchors(x, ext, degradations=degradations, n_boot=200)
    anchors = res["anchors"]
    assert res["n"] == len(x) and next(iter(anchors)) == "originals (self)"
    self_anchor = anchors["originals (self)"]
    assert abs(self_anchor["fid"]["value"]) < 1e-6 and self_anchor["kid"]["value"] == 0.0
    assert self_anchor["kid"]["ci95"] == (0.0, 0.0)
    for kind in ("noise", "blur", "jpeg"):
        rows = [a for a in anchors.values() if a["kind"] == kind]
        assert len(rows) == 3
        for key in ("fid", "kid"):
            vals = [a[key]["value"] for a in rows]
            assert 0 < vals[0] < vals[1] < vals[2], (kind, key, vals)
    # a noisy reconstruction, drawn with other noise than the anchor's
    f_x = M.features_of(ext, x)
    rec = (x + 2 * 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(99))).clamp(-1, 1)
    f_rec = M.features_of(ext, rec)
    paired = M.set_metrics_with_intervals(f_x, f_rec, n_boot=200, metrics=("fid", "kid"), paired=True)
    unpaired = M.set_metrics_with_intervals(f_x, f_rec, n_boot=200, metrics=("fid", "kid"))
    for key in ("fid", "kid"):
        lo, hi = paired[key]["ci95"]
        assert lo > self_anchor[key]["ci95"][1], (key, paired[key])
        assert lo > anchors["noise std 0.02"][key]["ci95"][1], (key, paired[key])
        mid = anchors["noise std 0.05"][key]["ci95"]
        assert lo <= mid[1] and mid[0] <= hi, (key, paired[key], mid)  # it lands on its own anchor
    assert unpaired["kid"]["value"] < 0 < paired["kid"]["value"]
    with pytest.raises(ValueError, match="paired=True needs one row of each set per pair"):
        M.set_metrics_with_intervals(f_x, f_rec[:100], paired=True)
