"""FID / KID / precision-recall against closed forms and brute-force references, and the feature
extractors behind ``get_feature_extractor`` (random-VGG substitute, Inception code path, classifier)."""

import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn

from ldm_lite import metrics as M
from ldm_lite.data import ShapesDataset


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def vgg():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", M.FeatureSubstituteWarning)
        return M.get_feature_extractor("random-vgg")


def _spd(rng, d):
    a = rng.standard_normal((d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def _sqrt_psd(a):
    w, v = np.linalg.eigh(a)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def _frechet_by_eigh(mu1, s1, mu2, s2):
    """Tr (S1 S2)^(1/2) = Tr (S1^(1/2) S2 S1^(1/2))^(1/2): a symmetric PSD matrix, so eigh suffices."""
    r = _sqrt_psd(s1)
    eig = np.linalg.eigvalsh(r @ s2 @ r)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.clip(eig, 0, None)).sum())


# ---- Fréchet distance ----------------------------------------------------------------------------
def test_frechet_distance_diagonal_closed_form_and_zero():
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.5])
    v1, v2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)
    assert M.frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(expected, rel=1e-10)
    assert M.frechet_distance(mu1, np.diag(v1), mu1, np.diag(v1)) == pytest.approx(0.0, abs=1e-10)


def test_frechet_distance_matches_eigendecomposition_and_is_symmetric():
    rng = np.random.default_rng(0)
    for d in (2, 7, 16):
        mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
        s1, s2 = _spd(rng, d), _spd(rng, d)
        ours = M.frechet_distance(mu1, s1, mu2, s2)
        assert ours == pytest.approx(_frechet_by_eigh(mu1, s1, mu2, s2), rel=1e-8)
        assert M.frechet_distance(mu2, s2, mu1, s1) == pytest.approx(ours, rel=1e-8)
        assert M.frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-8)


def test_frechet_distance_eps_offset_when_sqrtm_fails(monkeypatch):
    from scipy import linalg

    real_sqrtm, calls = linalg.sqrtm, []

    def flaky(a):  # the first call fails as sqrtm does on a badly singular product
        calls.append(a.copy())
        return np.full_like(a, np.nan) if len(calls) == 1 else real_sqrtm(a)

    monkeypatch.setattr(linalg, "sqrtm", flaky)
    s = np.diag([1.0, 0.0, 2.0])  # singular
    with pytest.warns(RuntimeWarning, match="eps|I to both"):
        v = M.frechet_distance(np.zeros(3), s, np.ones(3), s, eps=1e-6)
    assert len(calls) == 2 and np.allclose(calls[1], (s + 1e-6 * np.eye(3)) @ (s + 1e-6 * np.eye(3)))
    assert v == pytest.approx(3.0, abs=1e-5)


def test_feature_statistics_and_fid_from_features():
    rng = np.random.default_rng(1)
    f = rng.standard_normal((50, 4))
    mu, sigma = M.feature_statistics(torch.from_numpy(f).float())
    np.testing.assert_allclose(mu, f.mean(0), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(sigma, np.cov(f, rowvar=False), rtol=1e-5, atol=1e-6)
    # Large samples of N(0, I) and N(m, 4 I): FID -> |m|^2 + d (2 - 1)^2
    a = rng.standard_normal((20000, 3))
    b = 2 * rng.standard_normal((20000, 3)) + np.array([1.0, 0.0, -1.0])
    assert M.fid_from_features(a, b) == pytest.approx(2.0 + 3.0, rel=0.05)
    # fewer samples than dimensions: singular covariances, still finite and ~0 for identical sets
    g = rng.standard_normal((10, 40))
    assert abs(M.fid_from_features(g, g)) < 1e-6 * np.trace(np.cov(g, rowvar=False))
    with pytest.raises(ValueError):
        M.fid_from_features(g, g[:, :5])


# ---- KID -----------------------------------------------------------------------------------------
def _mmd2_brute_force(x, y):
    k = lambda a, b: (a @ b / len(a) + 1.0) ** 3  # noqa: E731
    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def test_kid_matches_brute_force_unbiased_mmd():
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((12, 5)), rng.standard_normal((12, 5)) + 0.3
    mean, std = M.kid_from_features(x, y, num_subsets=3, subset_size=1000)  # capped at 12 = all samples
    assert mean == pytest.approx(_mmd2_brute_force(x, y), rel=1e-10)
    assert std == pytest.approx(0.0, abs=1e-12)  # every subset is the whole set


def test_kid_near_zero_for_same_distribution_and_positive_for_shift():
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((1000, 16)), rng.standard_normal((1000, 16))
    mean, std = M.kid_from_features(a, b, num_subsets=50, subset_size=100, seed=0)
    assert abs(mean) < 2 * std
    shifted = rng.standard_normal((1000, 16)) + 0.5
    mean_s, std_s = M.kid_from_features(a, shifted, num_subsets=50, subset_size=100, seed=0)
    assert mean_s > 5 * std_s and mean_s > 20 * abs(mean)
    # deterministic given the seed
    assert M.kid_from_features(a, b, num_subsets=5, subset_size=50, seed=7) == M.kid_from_features(
        a, b, num_subsets=5, subset_size=50, seed=7)


def test_kid_is_unbiased_where_the_v_statistic_is_not():
    rng = np.random.default_rng(4)
    unbiased, biased = [], []
    for _ in range(200):
        x, y = rng.standard_normal((10, 4)), rng.standard_normal((10, 4))
        unbiased.append(M.kid_from_features(x, y, num_subsets=1, subset_size=10)[0])
        k = lambda a, b: (a @ b.T / 4 + 1) ** 3  # noqa: E731
        biased.append(k(x, x).mean() + k(y, y).mean() - 2 * k(x, y).mean())
    se = np.std(unbiased) / np.sqrt(len(unbiased))
    assert abs(np.mean(unbiased)) < 3 * se
    assert np.mean(biased) > 10 * se


# ---- precision / recall --------------------------------------------------------------------------
def _pr_brute_force(real, fake, k):
    def radii(s):
        d = np.linalg.norm(s[:, None] - s[None], axis=-1)
        return np.sort(d, axis=1)[:, k]

    def inside(q, ref, r):
        return np.mean([(np.linalg.norm(ref - p, axis=1) <= r).any() for p in q])

    return inside(fake, real, radii(real)), inside(real, fake, radii(fake))


def test_precision_recall_identical_far_and_brute_force():
    rng = np.random.default_rng(5)
    real = rng.standard_normal((60, 3))
    assert M.precision_recall(real, real.copy(), k=3) == (1.0, 1.0)
    p, r = M.precision_recall(real, real + 100.0)
    assert p == 0.0 and r == 0.0
    fake = rng.standard_normal((45, 3)) * 1.5 + 0.5
    ours = M.precision_recall(real, fake, k=3, chunk_size=7)  # several chunks
    assert ours == pytest.approx(_pr_brute_force(real, fake, 3))


def test_recall_drops_when_fake_collapses_to_one_mode():
    rng = np.random.default_rng(6)
    centres = np.array([[0.0, 0.0], [20.0, 0.0], [0.0, 20.0]])
    real = np.concatenate([c + rng.standard_normal((100, 2)) for c in centres])
    diverse = np.concatenate([c + rng.standard_normal((100, 2)) for c in centres])
    collapsed = centres[0] + rng.standard_normal((300, 2))
    p_div, r_div = M.precision_recall(real, diverse)
    p_col, r_col = M.precision_recall(real, collapsed)
    assert p_div > 0.9 and r_div > 0.9
    assert p_col > 0.9  # every collapsed sample is realistic...
    assert r_col < 0.4  # ...but two of the three modes are missed


# ---- random-VGG substitute -----------------------------------------------------------------------
def test_random_vgg_is_labelled_deterministic_and_announced():
    M._ANNOUNCED.clear()
    with pytest.warns(M.FeatureSubstituteWarning, match="SUBSTITUTE"):
        a = M.get_feature_extractor("random-vgg")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # announced once per process only
        b = M.get_feature_extractor("random-vgg")
    assert a.is_substitute and "SUBSTITUTE" in a.name and "not comparable" in a.name
    assert a.dim == M.RANDOM_VGG_FEATURE_DIM == 1280
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    fa, fb = a(x), b(x)
    assert fa.shape == (3, 1280) and torch.equal(fa, fb)
    assert not any(p.requires_grad for p in a.parameters())


def test_random_vgg_sizes_and_grey_images(vgg):
    g = torch.Generator().manual_seed(0)
    for size in (28, 32, 64):
        grey = torch.rand(2, 1, size, size, generator=g) * 2 - 1
        f = vgg(grey)
        assert f.shape == (2, vgg.dim) and torch.isfinite(f).all()
        torch.testing.assert_close(f, vgg(grey.repeat(1, 3, 1, 1)))
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        vgg(torch.full((1, 3, 32, 32), 255.0))
    small = M.RandomVGGFeatureExtractor(width=0.25)
    assert small.dim == 64 + 128 + 128 and small(torch.zeros(1, 3, 32, 32)).shape == (1, 320)
    assert "width x0.25" in small.name


def test_fid_on_random_vgg_grows_with_noise(vgg):
    ds = ShapesDataset(size=32, length=32, seed=0)
    x = torch.stack([ds[i]["image"] for i in range(len(ds))])
    g = torch.Generator().manual_seed(0)
    light = (x + 0.05 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    heavy = (x + 0.5 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    r_light = M.fid(ds, light, extractor=vgg, batch_size=16)  # a dataset of dicts and a tensor
    r_heavy = M.sample_quality(x, heavy, extractor=vgg, num_subsets=10)
    assert r_light["feature"] == vgg.name and r_light["is_substitute"]
    assert r_light["n_real"] == r_light["n_fake"] == 32
    assert 0 <= r_light["value"] < r_heavy["fid"]
    k_light = M.kid(x, light, extractor=vgg, num_subsets=10)
    assert k_light["value"] < r_heavy["kid"] and k_light["feature"] == vgg.name
    assert r_heavy["precision"] < 0.5
    assert vgg.name in M.format_metric("FID", r_light)


# ---- Inception: real code path, never downloaded -------------------------------------------------
@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    return tmp_path / "hub" / "checkpoints"


def test_inception_missing_says_where_to_put_weights(empty_hub):
    assert not M.inception_weights_available()
    with pytest.raises(FileNotFoundError) as err:
        M.get_feature_extractor("inception")
    msg = str(err.value)
    assert str(empty_hub) in msg and M.FID_INCEPTION_FILE in msg and M.TORCHVISION_INCEPTION_FILE in msg
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", M.FeatureSubstituteWarning)
        assert isinstance(M.get_feature_extractor("auto"), M.RandomVGGFeatureExtractor)


def test_inception_skips_fid_weights_whose_keys_do_not_match(empty_hub):
    torch.save({"not_inception.weight": torch.zeros(1)}, empty_hub / "pt_inception-2015-12-05-bad.pth")
    assert M.inception_weights_available()
    with pytest.warns(UserWarning, match="skipping the TF-FID variant"), pytest.raises(FileNotFoundError):
        M.get_feature_extractor("inception")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert isinstance(M.get_feature_extractor("auto"), M.RandomVGGFeatureExtractor)


def test_inception_code_path_with_stand_in_weights(empty_hub):
    """Random weights saved under the real file names: both variants load and give 2048-d features."""
    from torchvision.models import inception_v3

    torch.manual_seed(0)
    fid_net = inception_v3(weights=None, num_classes=1008, aux_logits=False, init_weights=False)
    torch.save(fid_net.state_dict(), empty_hub / M.FID_INCEPTION_FILE)
    ext = M.get_feature_extractor("inception", announce=False)  # auto: the package's network first
    assert ext.variant == "torchmetrics" and not ext.is_substitute and "standard FID" in ext.name
    pkg = ext
    ext = M.get_feature_extractor("inception", variant="pytorch-fid", announce=False)
    assert ext.variant == "pytorch-fid" and not ext.is_substitute and "standard FID" in ext.name
    assert type(ext.net.Mixed_7c).__name__.startswith("TFMaxPool")
    f = ext(torch.rand(1, 1, 28, 28) * 2 - 1)
    assert f.shape == (1, M.INCEPTION_DIM) and torch.isfinite(f).all()
    # our TF-pooling build and torchmetrics / torch-fidelity's network agree on the same weights (images at
    # 299 px and on the uint8 grid, so only the input scaling differs: x/127.5 - 1 against (x - 128)/128)
    x = torch.randint(0, 256, (2, 3, 299, 299)).float() / 127.5 - 1
    ours, theirs = ext(x), pkg(x)
    assert theirs.shape == ours.shape
    assert (ours - theirs).norm() / ours.norm() < 0.02

    tv_net = inception_v3(weights=None, aux_logits=True, init_weights=False)
    torch.save(tv_net.state_dict(), empty_hub / M.TORCHVISION_INCEPTION_FILE)
    ext = M.get_feature_extractor("inception", variant="torchvision", announce=False)
    assert ext.variant == "torchvision" and "torchvision" in ext.name and ext.dim == 2048


def test_tf_pool_blocks_pool_as_tensorflow():
    import torch.nn.functional as F
    from torchvision.models.inception import InceptionA, InceptionE

    torch.manual_seed(0)
    x = torch.randn(1, 8, 5, 5)
    for base, pool, kind in ((InceptionA, "avg", dict(pool_features=4)), (InceptionE, "max", {})):
        block = base(8, **kind).eval()
        ref_pool = block.branch_pool(
            F.avg_pool2d(x, 3, 1, 1, count_include_pad=False) if pool == "avg" else F.max_pool2d(x, 3, 1, 1)
        )
        block.__class__ = M._tf_pool_block(base, pool)
        out = block(x)
        torch.testing.assert_close(out[:, -ref_pool.shape[1]:], ref_pool)


# ---- classifier features and feature plumbing ----------------------------------------------------
class TinyClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Dropout(0.5))
        self.head = nn.Linear(6, 10)

    def features(self, x):
        return self.body(x).mean(dim=(2, 3))

    def forward(self, x):
        return self.head(self.features(x))


def test_classifier_features():
    clf = TinyClassifier().train()
    with pytest.warns(M.FeatureSubstituteWarning):
        M._ANNOUNCED.clear()
        ext = M.get_feature_extractor("classifier", classifier=clf, in_channels=1)
    assert "TinyClassifier" in ext.name and ext.is_substitute and ext.dim is None
    x = torch.rand(4, 3, 28, 28) * 2 - 1  # RGB in, averaged to the classifier's one channel
    f = ext(x)
    assert f.shape == (4, 6) and ext.dim == 6
    assert clf.training  # the caller's model is left as it was...
    clf.eval()
    torch.testing.assert_close(f, clf.features(x.mean(1, keepdim=True)))  # ...and features ran in eval mode
    # a plain callable returning a feature map is averaged over space
    fmap = M.get_feature_extractor("classifier", classifier=lambda t: t * 2, announce=False)
    assert fmap(torch.zeros(2, 3, 8, 8)).shape == (2, 3)
    with pytest.raises(ValueError):
        M.get_feature_extractor("classifier")
    with pytest.raises(ValueError):
        M.get_feature_extractor("inception-v4")
    # front door with the classifier as the extractor
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", M.FeatureSubstituteWarning)
        out = M.fid(torch.rand(8, 1, 16, 16) * 2 - 1, torch.rand(8, 1, 16, 16) * 2 - 1, extractor=clf)
    assert "TinyClassifier" in out["feature"] and np.isfinite(out["value"])


def test_compute_features_accepts_tensors_datasets_and_loaders():
    ext = M.get_feature_extractor("classifier", classifier=lambda t: t.mean(dim=(2, 3)), announce=False)
    ds = ShapesDataset(size=16, length=10)
    x = torch.stack([ds[i]["image"] for i in range(10)])
    ref = M.compute_features(ext, x, batch_size=4)
    assert ref.shape == (10, 3) and ref.dtype == torch.float32
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x), batch_size=3)
    for source in (ds, list(x), loader, {"image": x}):
        torch.testing.assert_close(M.compute_features(ext, source, batch_size=4), ref)
    torch.testing.assert_close(M.compute_features(ext, ds, batch_size=4, limit=5), ref[:5])
    torch.testing.assert_close(M.compute_features(ext, loader, limit=5), ref[:5])
