"""Sanity tests every sample-quality metric passes before a notebook uses it.

Closed forms and a reference package (torchmetrics) on synthetic features first; then the shipped
evaluators on real images: monotone under degradation, and held-out real < shipped LDM < 600-step LDM.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ldm_lite import metrics as M
from ldm_lite.data.augment import random_degrade
from ldm_lite.metrics.distances import StreamingFeatureStats, feature_statistics

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "data" / "reference_samples"


# ------------------------------------------------------------------------------------------------
# Closed forms and the reference package, on synthetic features
# ------------------------------------------------------------------------------------------------
def test_fid_of_a_set_with_itself_is_zero():
    f = np.random.default_rng(0).normal(size=(300, 8))
    assert abs(M.fid_from_features(f, f)) < 1e-6


def test_fid_of_shifted_gaussians_matches_closed_form():
    """N(0, diag(a)) vs N(mu, diag(b)): FID = |mu|^2 + sum (sqrt a - sqrt b)^2 (Dowson & Landau)."""
    rng = np.random.default_rng(1)
    d, n = 4, 200_000
    a, b, mu = np.array([1.0, 2.0, 0.5, 1.0]), np.array([1.0, 1.0, 2.0, 0.25]), np.array([1.0, -0.5, 0.0, 2.0])
    x = rng.normal(size=(n, d)) * np.sqrt(a)
    y = rng.normal(size=(n, d)) * np.sqrt(b) + mu
    closed = mu @ mu + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert M.fid_from_features(x, y) == pytest.approx(closed, rel=0.02)


def test_hand_written_fid_equals_torchmetrics_on_the_same_features():
    from torchmetrics.image.fid import FrechetInceptionDistance

    class Identity(torch.nn.Module):  # torchmetrics takes a feature module; ours are already features
        num_features = 32

        def forward(self, x):
            return x

    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(400, 32)), rng.normal(size=(350, 32)) * 1.3 + 0.2
    tm = FrechetInceptionDistance(feature=Identity())
    tm.update(torch.tensor(x), real=True)
    tm.update(torch.tensor(y), real=False)
    assert M.fid_from_features(x, y) == pytest.approx(float(tm.compute()), rel=1e-3)


def test_kid_is_unbiased_for_equal_distributions():
    """E[KID] = 0 when both sets come from one distribution: the mean over many draws is within 3 SE
    of 0 (FID, biased, is clearly positive on the same draws)."""
    rng = np.random.default_rng(3)
    kids, fids = [], []
    for _ in range(60):
        x, y = rng.normal(size=(60, 6)), rng.normal(size=(60, 6))
        kids.append(M.kid_from_features(x, y, num_subsets=1, subset_size=60)[0])
        fids.append(M.fid_from_features(x, y))
    kids = np.array(kids)
    assert abs(kids.mean()) < 3 * kids.std() / np.sqrt(len(kids))
    assert np.mean(fids) > 10 * kids.std() / np.sqrt(len(kids))


def test_streaming_statistics_equal_batch_statistics():
    rng = np.random.default_rng(4)
    f = rng.normal(size=(1000, 12)) * 3 + 1
    s = StreamingFeatureStats(keep=100, seed=0)
    for i in range(0, len(f), 77):  # uneven batches
        s.update(torch.tensor(f[i : i + 77]))
    mu, cov = feature_statistics(f)
    np.testing.assert_allclose(s.mean, mu, rtol=0, atol=1e-12)
    np.testing.assert_allclose(s.cov, cov, rtol=1e-9, atol=1e-10)
    assert s.n == 1000 and s.sample.shape == (100, 12)
    # the reservoir is a uniform subsample: its mean is close to the stream's
    assert np.abs(s.sample.mean(0) - mu).max() < 4 * 3 / np.sqrt(100)


def test_stream_features_never_holds_the_images():
    """stream_features consumes a generator of batches; the result equals the batch computation."""
    ext = M.get_feature_extractor("random-vgg", announce=False, width=0.25)
    x = torch.rand(40, 3, 32, 32) * 2 - 1
    stats = M.stream_features(ext, (x[i : i + 8] for i in range(0, 40, 8)), keep=40)
    mu, cov = feature_statistics(M.compute_features(ext, x))
    np.testing.assert_allclose(stats.mean, mu, atol=1e-6)
    np.testing.assert_allclose(stats.cov, cov, atol=1e-6)


def test_bootstrap_intervals_contain_the_estimate_and_shrink_with_n():
    rng = np.random.default_rng(5)
    widths = []
    for n in (60, 600):
        r = M.set_metrics_with_intervals(rng.normal(size=(n, 8)), rng.normal(size=(n, 8)) + 0.5, n_boot=40)
        for key in ("fid", "kid", "precision", "recall"):
            lo, hi = r[key]["ci95"]
            assert lo <= r[key]["value"] <= hi, (key, r[key])
        widths.append(np.diff(r["fid"]["ci95"])[0])
    assert widths[1] < widths[0] / 2


def test_paired_sets_are_resampled_as_pairs_and_no_interval_is_cut():
    """Near-perfect reconstructions (the rFID case) are paired with their originals. Resampled as pairs (one index
    per replicate for both sets) the FID interval sits tightly around the estimate, above 0 with nothing cut.
    Resampled independently, the pairing is broken: the bootstrap describes two unrelated sets, its spread swamps
    the estimate and the interval -- shown, not cut -- reaches below 0. KID, unbiased, may be negative: the paired
    interval straddles 0 (the two distributions are almost the same), while the unpaired formula counts each
    image and its own near-copy as independent draws and comes out clearly below 0."""
    rng = np.random.default_rng(7)
    real = rng.normal(size=(100, 8))
    fake = real + 0.05 * rng.normal(size=(100, 8))
    p = M.set_metrics_with_intervals(real, fake, n_boot=200, metrics=("fid", "kid"), paired=True)
    u = M.set_metrics_with_intervals(real, fake, n_boot=200, metrics=("fid", "kid"))
    assert p["paired"] and not u["paired"] and p["fid"]["value"] == u["fid"]["value"]
    lo, hi = p["fid"]["ci95"]
    assert 0 < lo <= p["fid"]["value"] <= hi < 3 * p["fid"]["value"], p["fid"]
    assert u["fid"]["ci95"][0] < 0 < u["fid"]["ci95"][1], u["fid"]
    assert p["kid"]["ci95"][0] < 0 < p["kid"]["ci95"][1], p["kid"]
    assert u["kid"]["ci95"][1] < p["kid"]["ci95"][0], (u["kid"], p["kid"])
    # a set against itself, paired: 0 by construction, and so is its interval
    same = M.set_metrics_with_intervals(real, real, n_boot=50, metrics=("fid", "kid"), paired=True)
    assert same["kid"] == dict(value=0.0, ci95=(0.0, 0.0)) and abs(same["fid"]["value"]) < 1e-9


def test_streamed_fid_interval_is_the_kept_rows_spread_around_the_stream_estimate():
    """quality_report on a stream: FID from the moments of the whole stream, its interval the kept rows' bootstrap
    spread placed around that value -- not cut at 0."""
    from ldm_lite.metrics.distances import frechet_distance

    rng = np.random.default_rng(7)
    ref = rng.normal(size=(100, 8))
    stream = M.StreamingFeatureStats(keep=100)
    for _ in range(3):
        stream.update(ref + 0.05 * rng.normal(size=ref.shape))
    ext = M.get_feature_extractor("random-vgg", announce=False, width=0.25)
    fid = M.quality_report(stream, ref, extractor=ext, n_boot=20)["samples"]["fid"]
    kept = M.set_metrics_with_intervals(ref, stream.sample, n_boot=20, metrics="fid")["fid"]
    full = frechet_distance(stream.mean, stream.cov, *feature_statistics(ref))
    assert fid["value"] == pytest.approx(full)
    assert fid["ci95"] == pytest.approx((full - (kept["value"] - kept["ci95"][0]), full + (kept["ci95"][1] - kept["value"])))
    assert fid["ci95"][0] < 0 < fid["value"] <= fid["ci95"][1], fid


def test_interval_of_one_metric_equals_the_full_call():
    """metrics=("kid",) skips FID and precision/recall but draws the same resamples: the same KID and interval."""
    rng = np.random.default_rng(6)
    real, fake = rng.normal(size=(80, 8)), rng.normal(size=(50, 8)) + 0.3
    full = M.set_metrics_with_intervals(real, fake, n_boot=20)
    kid_only = M.set_metrics_with_intervals(real, fake, n_boot=20, metrics=("kid",))
    assert set(kid_only) == {"kid", "n_real", "n_fake", "n_boot", "paired"}
    assert kid_only["kid"] == full["kid"]
    assert M.set_metrics_with_intervals(real, fake, n_boot=5, metrics="recall")["recall"] == \
        M.set_metrics_with_intervals(real, fake, n_boot=5)["recall"]
    with pytest.raises(ValueError, match="metrics must name some of fid, kid"):
        M.set_metrics_with_intervals(real, fake, metrics=("KID",))


def test_bootstrap_interval_of_a_proportion():
    lo, hi = M.bootstrap_interval(np.r_[np.ones(80), np.zeros(20)], n_boot=2000)
    assert lo < 0.8 < hi and 0.05 < hi - lo < 0.25  # binomial: 1.96 * 0.04 * 2 = 0.157


# ------------------------------------------------------------------------------------------------
# The shipped evaluators
# ------------------------------------------------------------------------------------------------
def _manifest(name):
    return json.loads((REPO / "data" / "pretrained" / f"{name}.json").read_text())


def test_fashion_classifier_meets_its_bar_and_its_manifest():
    from ldm_lite.data import load_fashion_mnist

    try:
        test = load_fashion_mnist("test", download=False)
    except (FileNotFoundError, RuntimeError) as exc:
        pytest.skip(f"Fashion-MNIST not installed: {exc}")
    net = M.load_evaluator("fashion")
    x = torch.from_numpy(test.images).permute(0, 3, 1, 2).float() / 127.5 - 1
    acc = M.class_accuracy(x, test.labels, classifier=net)
    assert acc["value"] >= 0.90
    assert acc["value"] == pytest.approx(_manifest("eval_fashion_classifier")["metrics"]["test"]["accuracy"], abs=0.003)
    assert acc["floor"]["value"] < 0.2  # shuffled labels: chance is 0.1


def test_shapes_evaluator_reads_captions_and_layouts():
    res = M.shapes_heldout_accuracy(M.load_evaluator("shapes"), n=300, seed=4242)
    assert res["clean"]["caption_accuracy"] >= 0.99
    assert res["degraded"]["caption_accuracy"] >= 0.95
    assert res["clean"]["layout_accuracy"] >= 0.97
    assert res["clean"]["shuffled_caption_floor"] < 0.2


def test_caption_accuracy_floor_ceiling_and_holdout():
    from ldm_lite.data import ShapesDataset

    ds = ShapesDataset(64, length=64, seed=99)
    x = torch.stack([ds[i]["image"] for i in range(64)])
    caps = [ds[i]["caption"] for i in range(64)]
    ev = M.load_evaluator("shapes")
    res = M.caption_accuracy(x, caps, ev, real_images=x, holdout=[("red", "circle")])
    assert res["value"] == res["ceiling"]["value"] and res["value"] > 0.95
    assert res["floor"]["value"] < 0.3
    assert set(res["per_count"]) <= {1, 2, 3} and res["n"] == 64
    assert res["holdout"]["n"] + res["seen"]["n"] == 64
    # a blank image shows nothing: every caption fails
    assert M.caption_accuracy(torch.full_like(x[:4], -0.84), caps[:4], ev)["value"] == 0.0


def test_conditional_scores_reject_bad_input():
    ev = M.load_evaluator("shapes")
    x = torch.zeros(2, 3, 64, 64)
    with pytest.raises(ValueError, match="names no ShapesDataset object"):
        M.caption_accuracy(x, ["a big red circle", "a dog"], ev)
    with pytest.raises(ValueError, match="one caption per image"):
        M.caption_accuracy(x, ["a big red circle"], ev)
    with pytest.raises(ValueError, match=r"\(B, M, 4\)"):
        M.layout_accuracy(x, np.zeros((2, 4)), np.zeros((2, 1)), evaluator=ev)
    with pytest.raises(ValueError, match="1 or 3 channels"):
        ev.features(torch.zeros(2, 64, 64, 3))


def _heldout_and_train():
    from ldm_lite.data import load_openmoji

    def t(ds):
        return torch.from_numpy(ds.images).permute(0, 3, 1, 2).float() / 127.5 - 1

    return t(load_openmoji(64, "test", progress=False)), t(load_openmoji(64, "train", progress=False))


def test_domain_features_grow_monotonically_worse_under_blur_and_noise():
    from ldm_lite.data.augment import gaussian_blur

    ref, train = _heldout_and_train()
    ext = M.get_feature_extractor("openmoji", announce=False)
    fref = M.features_of(ext, ref)
    real = train[torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:182]]
    kid = lambda x: M.kid_from_features(fref, M.features_of(ext, x), num_subsets=20)[0]  # noqa: E731
    blurred = [kid(gaussian_blur(real, torch.full((len(real),), s))) for s in (0.0, 1.0, 2.0, 3.0)]
    g = torch.Generator().manual_seed(1)
    noised = [kid((real + 2 * s * torch.randn(real.shape, generator=g)).clamp(-1, 1)) for s in (0.0, 0.05, 0.1, 0.2)]
    mixed = [kid(random_degrade(real, s, torch.Generator().manual_seed(1))) for s in (0.0, 0.5, 1.0)]
    for name, kids in (("blur", blurred), ("noise", noised), ("random_degrade", mixed)):
        assert all(a < b for a, b in zip(kids, kids[1:])), (name, kids)


def _sample_set(name):
    path = SAMPLES / f"{name}.npz"
    return torch.from_numpy(np.load(path)["images"]).permute(0, 3, 1, 2).float() / 127.5 - 1


def test_openmoji_features_rank_real_above_shipped_above_600_step_model():
    """Held-out real < shipped LDM < 600-step LDM, with non-overlapping KID and FID intervals."""
    ref, train = _heldout_and_train()
    shipped, weak = _sample_set("ldm_openmoji64_ddim50"), _sample_set("ldm600_openmoji64_ddim50")
    n = min(len(shipped), len(weak))
    rep = M.quality_report(shipped[:n], ref, train=train, extractor="openmoji", n_boot=30)
    rep_weak = M.quality_report(weak[:n], ref, extractor="openmoji", n_boot=30)
    for key in ("kid", "fid"):
        floor, good, bad = rep["floor"][key], rep["samples"][key], rep_weak["samples"][key]
        assert floor["ci95"][1] < good["ci95"][0], (key, floor, good)
        assert good["ci95"][1] < bad["ci95"][0], (key, good, bad)
        assert floor["ci95"][1] < rep["ceiling"][key]["ci95"][0], (key, floor, rep["ceiling"][key])  # sees degradation


def test_shipped_sample_set_is_what_the_shipped_model_draws():
    """The stored sample set is the shipped model's: its first batch, redrawn with the manifest's settings
    (same seed, same batch size), gives the same images up to uint8 rounding."""
    from ldm_lite.pretrained import load_ldm

    man = json.loads((SAMPLES / "ldm_openmoji64_ddim50.json").read_text())
    assert man["batch_size"] <= 16, "store sample sets in batches of <= 16 so this check stays cheap"
    model = load_ldm(man["model"])
    with torch.no_grad():
        x = model.sample(man["batch_size"], sampler=man["sampler"], steps=man["steps"], eta=man["eta"],
                         generator=torch.Generator().manual_seed(man["seed"]), progress=False)
    stored = _sample_set("ldm_openmoji64_ddim50")[: man["batch_size"]]
    assert (x.clamp(-1, 1) - stored).abs().max() < 2 / 127.5 + 1e-4


def test_low_rank_fid_equals_the_matrix_square_root():
    """Fewer samples than dimensions: the nuclear-norm FID equals the sqrtm formula."""
    from ldm_lite.metrics.distances import _fid_low_rank, frechet_distance

    rng = np.random.default_rng(6)
    a, b = rng.normal(size=(40, 90)), rng.normal(size=(60, 90)) * 1.1 + 0.2
    assert M.fid_from_features(a, b) == pytest.approx(
        frechet_distance(*feature_statistics(a), *feature_statistics(b)), rel=1e-6)
    assert _fid_low_rank(a, b) == pytest.approx(frechet_distance(*feature_statistics(a), *feature_statistics(b)),
                                                rel=1e-6)
