"""Features -> numbers: Fréchet distance (FID), KID, improved precision / recall (chapters 05 and 08)."""

from __future__ import annotations

import numbers
import warnings
from typing import Any

import numpy as np
import torch

# ------------------------------------------------------------------------------------------------
# Features -> numbers
# ------------------------------------------------------------------------------------------------
def _as_features(f: Any, what: str = "features", min_n: int = 2) -> np.ndarray:
    a = f.detach().cpu().double().numpy() if torch.is_tensor(f) else np.asarray(f, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"{what} must be a 2-D (N, d) array; got shape {a.shape}")
    if len(a) < min_n:
        raise ValueError(f"{what}: need at least {min_n} samples, got {len(a)}")
    if not np.isfinite(a).all():
        raise ValueError(f"{what} contain NaN or inf")
    return a


def feature_statistics(features: Any) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(d,)`` and covariance ``(d, d)`` (unbiased, divisor N-1) of ``(N, d)`` features, float64."""
    a = _as_features(features)
    return a.mean(axis=0), np.cov(a, rowvar=False).reshape(a.shape[1], a.shape[1])


def frechet_distance(mu1: Any, sigma1: Any, mu2: Any, sigma2: Any, eps: float = 1e-6) -> float:
    """Fréchet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2): the FID formula.

    ``d^2 = ||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2))`` (Heusel et al. 2017,
    Eq. 6; Dowson & Landau 1982). Computed in float64 with ``scipy.linalg.sqrtm``, as the reference
    implementations do:

    * ``sigma1 sigma2`` is not symmetric, and with fewer samples than dimensions it is singular;
      when its square root comes out non-finite, both covariances get ``eps * I`` added first.
    * Round-off makes the square root slightly complex; imaginary parts on its diagonal up to 1e-3
      are dropped, larger ones raise ``ValueError`` (the inputs were not covariance matrices).

    The result may be a tiny negative number (about -1e-10 relative) for identical statistics.
    """
    from scipy import linalg

    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu1.shape != mu2.shape or mu1.ndim != 1:
        raise ValueError(f"mean vectors must have the same shape (d,); got {mu1.shape} and {mu2.shape}")
    if s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(f"covariances must be ({d}, {d}); got {s1.shape} and {s2.shape}")
    diff = mu1 - mu2
    with warnings.catch_warnings():  # "singular matrix" is expected with fewer samples than dimensions
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(s1 @ s2)
        if not np.isfinite(covmean).all():
            warnings.warn(f"frechet_distance: sqrtm(sigma1 @ sigma2) is not finite; adding {eps:g} * I to both "
                          "covariances", RuntimeWarning, stacklevel=2)
            offset = np.eye(d) * eps
            covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        max_imag = np.abs(np.diagonal(covmean).imag).max()
        if max_imag > 1e-3:
            raise ValueError(f"frechet_distance: the matrix square root has imaginary part {max_imag:.3g}; "
                             "are sigma1 and sigma2 covariance (symmetric PSD) matrices?")
        covmean = covmean.real
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))


def fid_from_features(f1: Any, f2: Any) -> float:
    """FID between two feature sets ``(N1, d)`` and ``(N2, d)``: Fréchet distance of their Gaussian fits.

    Biased upwards at small N (the covariance estimates are noisy): compare FIDs only at equal N.
    """
    a, b = _as_features(f1, "f1"), _as_features(f2, "f2")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: {a.shape[1]} and {b.shape[1]}")
    if a.shape[1] > max(len(a), len(b)):
        return _fid_low_rank(a, b)
    return frechet_distance(*feature_statistics(a), *feature_statistics(b))


def _fid_low_rank(a: np.ndarray, b: np.ndarray) -> float:
    """FID when there are fewer samples than dimensions (e.g. 256 samples of 1,280-d features).

    With centred, scaled data matrices ``A = (a - mu_a)^T / sqrt(n_a - 1)`` (d x n_a) and ``B`` likewise,
    ``sigma_a = A A^T`` and ``sigma_b = B B^T``. The non-zero eigenvalues of ``sigma_a sigma_b`` are those
    of ``(A^T B)(A^T B)^T``, so ``Tr (sigma_a sigma_b)^(1/2)`` is the sum of the singular values of the
    small n_a x n_b matrix ``A^T B`` (its nuclear norm): exact, and an n x n SVD instead of a d x d
    matrix square root (seconds -> milliseconds at d = 1,280).
    """
    A = (a - a.mean(0)) / np.sqrt(len(a) - 1)
    B = (b - b.mean(0)) / np.sqrt(len(b) - 1)
    diff = a.mean(0) - b.mean(0)
    tr_sqrt = np.linalg.svd(A @ B.T, compute_uv=False).sum()
    return float(diff @ diff + (A * A).sum() + (B * B).sum() - 2.0 * tr_sqrt)


def _polynomial_kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """KID's kernel ``k(x, y) = (x.y / d + 1)^3`` for all pairs: ``(m, d), (n, d) -> (m, n)``."""
    return (a @ b.T / a.shape[1] + 1.0) ** 3


def _mmd2_unbiased(kxx: np.ndarray, kyy: np.ndarray, kxy: np.ndarray) -> float:
    """Unbiased MMD^2 from kernel matrices (Gretton et al. 2012, Eq. 3): diagonals left out."""
    m, n = kxx.shape[0], kyy.shape[0]
    xx = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    yy = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(xx + yy - 2.0 * kxy.mean())


def kid_from_features(f1: Any, f2: Any, num_subsets: int = 100, subset_size: int = 1000,
                      seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance (Bińkowski et al. 2018, Sec. 3) between ``(N1, d)`` and ``(N2, d)`` features.

    The unbiased estimate of the squared MMD with the cubic polynomial kernel
    ``k(x, y) = (x.y / d + 1)^3``, averaged over ``num_subsets`` random subsets of
    ``m = min(subset_size, N1, N2)`` samples drawn without replacement from each set (a NumPy
    generator seeded with ``seed``). Returns ``(mean, std)`` over the subsets.

    Unbiased: its expectation is 0 when both sets come from the same distribution, so small or
    negative values are normal there, and it can be compared across sample sizes (unlike FID).
    Published KIDs are often reported x 1000.
    """
    a, b = _as_features(f1, "f1"), _as_features(f2, "f2")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: {a.shape[1]} and {b.shape[1]}")
    if num_subsets < 1:
        raise ValueError(f"num_subsets must be >= 1, got {num_subsets}")
    m = min(int(subset_size), len(a), len(b))
    if m < 2:
        raise ValueError(f"KID needs subsets of at least 2 samples; got subset_size={subset_size}")
    rng = np.random.default_rng(seed)
    # Compute each kernel matrix once and index it per subset when that is cheaper and fits in memory.
    n_max = max(len(a), len(b))
    full = n_max**2 <= min(num_subsets * m * m, 2500**2)
    if full:
        kaa, kbb, kab = _polynomial_kernel(a, a), _polynomial_kernel(b, b), _polynomial_kernel(a, b)
    values = np.empty(num_subsets)
    for s in range(num_subsets):
        i = rng.choice(len(a), m, replace=False)
        j = rng.choice(len(b), m, replace=False)
        if full:
            values[s] = _mmd2_unbiased(kaa[np.ix_(i, i)], kbb[np.ix_(j, j)], kab[np.ix_(i, j)])
        else:
            x, y = a[i], b[j]
            values[s] = _mmd2_unbiased(_polynomial_kernel(x, x), _polynomial_kernel(y, y), _polynomial_kernel(x, y))
    return float(values.mean()), float(values.std())


def _kth_neighbour_radii(feats: torch.Tensor, k: int, chunk_size: int) -> torch.Tensor:
    """Distance from each point to its k-th nearest *other* point of the same set: ``(N, d) -> (N,)``."""
    radii = []
    for i in range(0, len(feats), chunk_size):
        d = torch.cdist(feats[i : i + chunk_size], feats)
        radii.append(d.kthvalue(k + 1, dim=1).values)  # the point itself sits at distance 0
    return torch.cat(radii)


def _inside_manifold(query: torch.Tensor, ref: torch.Tensor, radii: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """For each query point: does it lie within ``radii[j]`` of some reference point ``j``?  ``-> (Nq,)`` bool."""
    inside = []
    for i in range(0, len(query), chunk_size):
        d = torch.cdist(query[i : i + chunk_size], ref)
        inside.append((d <= radii[None, :]).any(dim=1))
    return torch.cat(inside)


def precision_recall(real_feats: Any, fake_feats: Any, k: int = 3, chunk_size: int = 1024) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al., NeurIPS 2019, Sec. 2).

    Each set's manifold is estimated as the union of balls around its points, the ball of point
    ``phi`` having the radius of ``phi``'s k-th nearest neighbour within its own set (k = 3 in the
    paper). Then

    * precision = fraction of *generated* points inside the *real* manifold (fidelity),
    * recall    = fraction of *real* points inside the *generated* manifold (coverage / diversity).

    Pairwise distances are computed in float64, ``chunk_size`` rows at a time (memory
    ``chunk_size * N``). Returns ``(precision, recall)`` in [0, 1]. Both sets need more than ``k`` points.
    """
    r = torch.from_numpy(_as_features(real_feats, "real_feats", min_n=k + 1))
    g = torch.from_numpy(_as_features(fake_feats, "fake_feats", min_n=k + 1))
    if r.shape[1] != g.shape[1]:
        raise ValueError(f"feature dimensions differ: {r.shape[1]} and {g.shape[1]}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    precision = _inside_manifold(g, r, _kth_neighbour_radii(r, k, chunk_size), chunk_size).double().mean()
    recall = _inside_manifold(r, g, _kth_neighbour_radii(g, k, chunk_size), chunk_size).double().mean()
    return float(precision), float(recall)


# ------------------------------------------------------------------------------------------------
# Streaming statistics: 50,000 samples never sit in memory at once
# ------------------------------------------------------------------------------------------------
class StreamingFeatureStats:
    """Running mean and covariance of features, fed batch by batch (float64 sums: exact up to round-off).

    ``update(f)`` with ``(b, d)`` features; ``mean``, ``cov`` (divisor N - 1, as :func:`feature_statistics`)
    and ``n``. A uniform random subsample of at most ``keep`` rows (reservoir sampling, Vitter's
    algorithm R, seeded) is kept for the metrics that need points rather than moments (KID, precision /
    recall, bootstrap intervals); memory is O(d^2 + keep * d) whatever the number of samples.
    """

    def __init__(self, dim: int | None = None, keep: int = 5000, seed: int = 0):
        self.n, self.keep = 0, int(keep)
        self._sum = self._outer = None
        self._rng = np.random.default_rng(seed)
        self.reservoir: np.ndarray | None = None
        self._filled = 0
        if dim is not None:
            self._init(dim)

    def _init(self, dim: int) -> None:
        self.dim = dim
        self._sum = np.zeros(dim)
        self._outer = np.zeros((dim, dim))
        self.reservoir = np.empty((self.keep, dim))

    def update(self, features: Any) -> "StreamingFeatureStats":
        a = _as_features(features, "features", min_n=1)
        if self._sum is None:
            self._init(a.shape[1])
        if a.shape[1] != self.dim:
            raise ValueError(f"feature dimension changed from {self.dim} to {a.shape[1]}")
        self._sum += a.sum(0)
        self._outer += a.T @ a
        for row in a:  # reservoir sampling: row i of the stream is kept with probability keep / i
            if self._filled < self.keep:
                self.reservoir[self._filled] = row
                self._filled += 1
            else:
                j = self._rng.integers(0, self.n + 1)
                if j < self.keep:
                    self.reservoir[j] = row
            self.n += 1
        return self

    @property
    def mean(self) -> np.ndarray:
        self._check()
        return self._sum / self.n

    @property
    def cov(self) -> np.ndarray:
        self._check()
        mu = self.mean
        return (self._outer - self.n * np.outer(mu, mu)) / (self.n - 1)

    @property
    def sample(self) -> np.ndarray:
        """The kept uniform subsample, ``(min(n, keep), d)``."""
        self._check()
        return self.reservoir[: self._filled]

    def _check(self) -> None:
        if self.n < 2:
            raise ValueError(f"need at least 2 feature rows, have {self.n}")


# ------------------------------------------------------------------------------------------------
# Intervals: how sure is a number computed from n samples?
# ------------------------------------------------------------------------------------------------
def wilson_interval(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion (Wilson 1927): unlike the bootstrap it is not zero-width
    when every trial succeeds (50 / 50 correct gives [0.93, 1.0], not [1.0, 1.0]). ``level`` in (0, 1)."""
    from scipy.stats import norm

    level = _check_level(level)
    if n == 0:
        return (float("nan"), float("nan"))
    z = float(norm.ppf(1 - (1 - level) / 2))
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def _check_level(level) -> float:
    """A confidence level: a real number strictly between 0 and 1 (0.95, not 95)."""
    if isinstance(level, bool) or not isinstance(level, numbers.Real):
        raise TypeError(f"level must be a number strictly between 0 and 1 (the interval's coverage, e.g. 0.95), got "
                        f"{level!r} ({type(level).__name__})")
    if not 0.0 < float(level) < 1.0:  # NaN fails too
        hint = f"; for {level:g} % pass level={level / 100:g}" if 1 < level < 100 else ""
        raise ValueError(f"level must be a number strictly between 0 and 1 (the interval's coverage, e.g. 0.95), got "
                         f"{level!r}{hint}")
    return float(level)


def bootstrap_interval(values: Any, stat=np.mean, n_boot: int = 1000, seed: int = 0,
                       level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of ``stat`` over per-item ``values`` (resampled with replacement);
    ``level`` in (0, 1)."""
    level = _check_level(level)
    v = np.asarray(values, dtype=np.float64)
    if len(v) == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    boots = np.array([stat(v[rng.integers(0, len(v), len(v))]) for _ in range(n_boot)])
    a = (1 - level) / 2
    return float(np.quantile(boots, a)), float(np.quantile(boots, 1 - a))


SET_METRICS = ("fid", "kid", "precision", "recall")


def set_metrics_with_intervals(real_feats: Any, fake_feats: Any, n_boot: int = 100, k: int = 3,
                               kid_subsets: int = 50, kid_subset_size: int = 1000, seed: int = 0,
                               level: float = 0.95, metrics: Any = SET_METRICS) -> dict:
    """FID, KID and precision / recall of two feature sets, each with a bootstrap interval.

    The interval resamples *both* sets with replacement ``n_boot`` times and recomputes every metric: it
    says how much the number would move with another draw of the same number of real and generated
    images. Two details keep it honest:

    * A resample repeats about a third of its rows. Repeats are zero-distance neighbours for precision /
      recall and inflate KID's within-set term, so KID and precision / recall use the distinct rows of
      each resample (KID is unbiased at any n, precision / recall are fractions).
    * FID is biased upwards by a bootstrap resample (fewer distinct points, noisier covariance), so the
      plain percentile interval would sit above the estimate, sometimes without containing it. FID's
      interval is the bootstrap's spread placed around the estimate: ``(F - (m - q_lo), F + (q_hi - m))``
      with ``m`` the bootstrap median, cut at 0 (FID is a squared distance; the shift alone can cross 0 for
      near-identical sets); the others use the percentile interval.

    ``metrics`` picks which of ``"fid", "kid", "precision", "recall"`` to compute (default all; precision
    and recall come as a pair). The resamples and KID's subsets do not depend on the choice, so
    ``metrics=("kid",)`` returns exactly the KID of the full call, in a fifth of the time.

    Returns ``{"fid": dict(value, ci95), "kid": ..., "precision": ..., "recall": ..., "n_real", "n_fake"}``
    (the metrics asked for). ``level`` (in (0, 1)) is checked first, before any metric is computed.
    """
    level = _check_level(level)
    if isinstance(metrics, str):
        metrics = (metrics,)
    unknown = [m for m in metrics if m not in SET_METRICS]
    if unknown or not metrics:
        raise ValueError(f"metrics must name some of {', '.join(SET_METRICS)}; got {list(metrics)!r}")
    want_pr = "precision" in metrics or "recall" in metrics
    r, g = _as_features(real_feats, "real_feats", min_n=k + 2), _as_features(fake_feats, "fake_feats", min_n=k + 2)
    if r.shape[1] != g.shape[1]:
        raise ValueError(f"feature dimensions differ: {r.shape[1]} and {g.shape[1]}")

    def all_metrics(a, b, s, dedup=True):
        ua, ub = (np.unique(a, axis=0), np.unique(b, axis=0)) if dedup else (a, b)
        out = {}
        if "fid" in metrics:
            out["fid"] = fid_from_features(a, b)
        if "kid" in metrics:
            out["kid"] = (kid_from_features(ua, ub, num_subsets=kid_subsets, subset_size=kid_subset_size, seed=s)[0]
                          if min(len(ua), len(ub)) >= 2 else float("nan"))
        if want_pr:
            p, rc = precision_recall(ua, ub, k=k) if min(len(ua), len(ub)) >= k + 1 else (float("nan"),) * 2
            out.update({m: v for m, v in (("precision", p), ("recall", rc)) if m in metrics})
        return out

    point = all_metrics(r, g, seed, dedup=False)  # the estimate itself: the sets as given
    rng = np.random.default_rng(seed)
    boots = {key: [] for key in point}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for i in range(n_boot):
            m = all_metrics(r[rng.integers(0, len(r), len(r))], g[rng.integers(0, len(g), len(g))], seed + 1 + i)
            for key, v in m.items():
                boots[key].append(v)
    a = (1 - level) / 2
    out = {}
    for key in point:
        lo, hi = float(np.nanquantile(boots[key], a)), float(np.nanquantile(boots[key], 1 - a))
        if key == "fid":
            med = float(np.nanmedian(boots[key]))
            # a squared distance cannot be negative: the shifted interval is cut at 0 (KID, an unbiased
            # estimate of MMD^2, can be, and is left alone)
            lo, hi = max(point[key] - (med - lo), 0.0), point[key] + (hi - med)
        # with few resamples a percentile interval can miss its own estimate: never report one that does
        lo, hi = min(lo, point[key]), max(hi, point[key])
        out[key] = dict(value=point[key], ci95=(lo, hi))
    out.update(n_real=len(r), n_fake=len(g), n_boot=n_boot)
    return out
