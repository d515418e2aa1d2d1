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


# ------------------------------------------------------------------------------------------------
# Bootstrap resamples as multiplicity weights
# ------------------------------------------------------------------------------------------------
# A resample of n rows drawn with replacement is stored as counts ``c`` (how often each original row was
# drawn; sum n). Every metric below is computed on the resample *with* its duplicates, from these counts, so
# a resample describes a sample of n, not of the ~63 % distinct rows: FID and KID weight each row by its
# count, precision / recall count each drawn query row (their manifolds: see _radii_weighted).
def _resample_counts(rng: np.random.Generator, n: int, n_boot: int) -> np.ndarray:
    """``(n_boot, n)`` counts: row b says how often each of n rows was drawn in resample b."""
    idx = rng.integers(0, n, (n_boot, n))
    flat = (idx + n * np.arange(n_boot)[:, None]).ravel()
    return np.bincount(flat, minlength=n_boot * n).reshape(n_boot, n).astype(np.float64)


def _kernel_forms(x: np.ndarray, y: np.ndarray, cx: np.ndarray, cy: np.ndarray, block: int = 1024) -> np.ndarray:
    """``cx[b] @ K(x, y) @ cy[b]`` for every row b, KID's polynomial kernel computed ``block`` columns at a
    time (memory ``len(x) * block``, never the whole matrix for large sets)."""
    out = np.zeros(len(cx))
    for j in range(0, len(y), block):
        kj = _polynomial_kernel(x, y[j : j + block])
        out += ((cx @ kj) * cy[:, j : j + block]).sum(1)
    return out


def _kid_weighted(x: np.ndarray, y: np.ndarray, cx: np.ndarray, cy: np.ndarray, paired: bool) -> np.ndarray:
    """Unbiased MMD^2 (KID) of resamples given as counts ``cx`` ``(B, n_x)``, ``cy`` ``(B, n_y)``; all ones = the
    complete U-statistic of the sets themselves.

    Within a set, pairs of *different* original rows are averaged with weight ``c_i c_j``; the pairs of a row
    with its own copies (``i = j``) are left out, as the diagonal is in the unbiased estimate. ``paired``
    (``x[i]`` and ``y[i]`` belong together, ``cx is cy``): the cross term leaves out ``k(x_i, y_i)`` too -- the
    U-statistic of the pairs ``z_i = (x_i, y_i)`` with ``h(z_i, z_j) = k(x_i, x_j) + k(y_i, y_j) - k(x_i, y_j) -
    k(x_j, y_i)``, unbiased for the MMD^2 of the two marginal distributions however strongly x_i and y_i are
    related. The unpaired formula would count every ``k(x_i, y_i)`` -- a point and its reconstruction, nearly
    equal -- as a pair of independent draws and come out below 0 for a set against itself.
    """
    d = x.shape[1]
    dx, dy = ((x * x).sum(1) / d + 1.0) ** 3, ((y * y).sum(1) / d + 1.0) ** 3  # diagonals k(x_i, x_i)
    nx, ny = cx.sum(1), cy.sum(1)
    sx, sy = (cx * cx).sum(1), (cy * cy).sum(1)
    xx = (_kernel_forms(x, x, cx, cx) - (cx * cx) @ dx) / (nx * nx - sx)
    yy = (_kernel_forms(y, y, cy, cy) - (cy * cy) @ dy) / (ny * ny - sy)
    if paired:
        dxy = ((x * y).sum(1) / d + 1.0) ** 3
        xy = (_kernel_forms(x, y, cx, cx) - (cx * cx) @ dxy) / (nx * nx - sx)
    else:
        xy = _kernel_forms(x, y, cx, cy) / (nx * ny)
    return xx + yy - 2.0 * xy


def _fid_weighted(x: np.ndarray, y: np.ndarray, cx: np.ndarray, cy: np.ndarray) -> np.ndarray:
    """FID of resamples given as counts (rows repeated ``c_i`` times), one per row of ``cx`` / ``cy``.

    With ``A`` the weighted, centred rows (``sigma = A^T A``), ``Tr (sigma_x sigma_y)^(1/2)`` is the sum of the
    singular values of ``A_x A_y^T`` (see :func:`_fid_low_rank`); a QR factor first shrinks ``A`` to at most d
    rows, so the matrix whose singular values are taken is at most ``min(n, d)`` square.
    """
    def factor(z, c):
        keep = c > 0
        z, c = z[keep], c[keep]
        n = c.sum()
        mu = c @ z / n
        a = np.sqrt(c / (n - 1.0))[:, None] * (z - mu)
        return mu, (np.linalg.qr(a, mode="r") if a.shape[0] > a.shape[1] else a)

    out = np.empty(len(cx))
    for b in range(len(cx)):
        mx, ax = factor(x, cx[b])
        my, ay = factor(y, cy[b])
        diff = mx - my
        tr_sqrt = np.linalg.svd(ax @ ay.T, compute_uv=False).sum()
        out[b] = diff @ diff + (ax * ax).sum() + (ay * ay).sum() - 2.0 * tr_sqrt
    return out


def _distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return torch.cdist(torch.from_numpy(a), torch.from_numpy(b)).numpy()


def _radii_weighted(d_self: np.ndarray, c: np.ndarray, k: int) -> np.ndarray:
    """k-th nearest-neighbour radius of every row in each resample ``(B, n)``: the distance to the k-th nearest
    *other* original row present in the resample. A row's own copies never count (they sit at distance 0 and
    would shrink its ball to a point), and a neighbour drawn twice is still one point of the manifold: counting
    its copies separately shrinks every ball, and the union of the ~63 % distinct rows' balls then covers
    too little (precision and recall biased low by 1-2 x their standard deviation in simulations).
    Rows absent from a resample get radius -1 (no ball); rows with fewer than k others present: NaN."""
    present = c > 0
    n = len(d_self)
    d = d_self.copy()
    np.fill_diagonal(d, np.inf)
    order = np.argsort(d, axis=1, kind="stable")[:, : n - 1]          # each row's others, nearest first
    sorted_d = np.take_along_axis(d, order, axis=1)
    # the k-th present neighbour nearly always sits among the nearest few dozen (each row is present with
    # probability ~0.63): look there first, and through all n - 1 only for the rows where it does not
    width = min(n - 1, max(8 * k, 32))
    out = np.empty(c.shape)
    step = max(1, int(4_000_000 // (n * width)))
    for s in range(0, len(c), step):
        pc = present[s : s + step]
        cum = np.cumsum(pc[:, order[:, :width]], axis=2, dtype=np.int32)   # (b, n, width)
        reached = cum[:, :, -1] >= k
        pos = np.argmax(cum >= k, axis=2)
        r = np.where(reached, sorted_d[np.arange(n)[None, :], pos], np.nan)
        for b, i in zip(*np.nonzero(~reached & pc)):                    # rare: search the rest of the row
            full = np.cumsum(pc[b][order[i]])
            if full[-1] >= k:
                r[b, i] = sorted_d[i, int(np.argmax(full >= k))]
        out[s : s + step] = np.where(pc, r, -1.0)
    return out


def _inside_weighted(d_ref_query: np.ndarray, radii: np.ndarray, c_query: np.ndarray) -> np.ndarray:
    """Share (weighted by ``c_query``) of query rows inside the union of the reference balls, per resample.
    ``d_ref_query`` ``(n_ref, n_query)``; ``radii`` ``(B, n_ref)`` (-1: absent; NaN: too few neighbours)."""
    out = np.empty(len(radii))
    n_ref, n_q = d_ref_query.shape
    step = max(1, int(4_000_000 // (n_ref * n_q)))
    for s in range(0, len(radii), step):
        r = radii[s : s + step]
        inside = (d_ref_query[None] <= r[:, :, None]).any(axis=1)     # (b, n_query)
        cq = c_query[s : s + step]
        out[s : s + step] = (inside * cq).sum(1) / cq.sum(1)
        out[s : s + step][np.isnan(r).any(axis=1)] = np.nan
    return out


def _pr_weighted(r: np.ndarray, g: np.ndarray, cr: np.ndarray, cg: np.ndarray, k: int,
                 dists: tuple | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Improved precision and recall (as :func:`precision_recall`) of resamples given as counts: each set's
    manifold from the distinct rows present (:func:`_radii_weighted`), each drawn row of the other set counted
    with its multiplicity when the share inside is taken."""
    drr, dgg, drg = dists if dists is not None else (_distances(r, r), _distances(g, g), _distances(r, g))
    precision = _inside_weighted(drg, _radii_weighted(drr, cr, k), cg)
    recall = _inside_weighted(drg.T, _radii_weighted(dgg, cg, k), cr)
    return precision, recall


class _SetPair:
    """Two feature sets and the pairwise distances they share, to score many resamples of them."""

    def __init__(self, a: np.ndarray, b: np.ndarray, paired: bool, k: int):
        self.a, self.b, self.paired, self.k = a, b, paired, k
        self._dists = None

    def scores(self, metrics, ca: np.ndarray, cb: np.ndarray) -> dict:
        out = {}
        if "fid" in metrics:
            out["fid"] = _fid_weighted(self.a, self.b, ca, cb)
        if "kid" in metrics:
            out["kid"] = _kid_weighted(self.a, self.b, ca, cb, self.paired)
        if "precision" in metrics or "recall" in metrics:
            if self._dists is None:
                a, b = self.a, self.b
                self._dists = (_distances(a, a), _distances(b, b), _distances(a, b))
            p, rc = _pr_weighted(self.a, self.b, ca, cb, self.k, self._dists)
            out.update({m: v for m, v in (("precision", p), ("recall", rc)) if m in metrics})
        return out

    def point(self, metrics) -> dict:
        """The estimates on the sets as given: FID and precision / recall as their own functions compute
        them, KID as the complete U-statistic (all pairs)."""
        out = {}
        if "fid" in metrics:
            out["fid"] = fid_from_features(self.a, self.b)
        if "kid" in metrics:
            ones_a, ones_b = np.ones((1, len(self.a))), np.ones((1, len(self.b)))
            out["kid"] = float(_kid_weighted(self.a, self.b, ones_a, ones_b, self.paired)[0])
        if "precision" in metrics or "recall" in metrics:
            p, rc = precision_recall(self.a, self.b, k=self.k)
            out.update({m: v for m, v in (("precision", p), ("recall", rc)) if m in metrics})
        return out


def _check_metrics(metrics: Any) -> tuple[str, ...]:
    if isinstance(metrics, str):
        metrics = (metrics,)
    metrics = tuple(metrics)
    unknown = [m for m in metrics if m not in SET_METRICS]
    if unknown or not metrics:
        raise ValueError(f"metrics must name some of {', '.join(SET_METRICS)}; got {list(metrics)!r}")
    return metrics


def _interval(key: str, point: float, boots: np.ndarray, level: float) -> tuple[float, float]:
    """The interval of one metric from its bootstrap replicates (see :func:`set_metrics_with_intervals`)."""
    a = (1 - level) / 2
    if np.isnan(boots).all():
        return (float("nan"), float("nan"))
    lo, hi = float(np.nanquantile(boots, a)), float(np.nanquantile(boots, 1 - a))
    if key == "fid":
        med = float(np.nanmedian(boots))
        lo, hi = point - (med - lo), point + (hi - med)
    # with few resamples a percentile interval can miss its own estimate: never report one that does
    return min(lo, point), max(hi, point)


def set_metrics_with_intervals(real_feats: Any, fake_feats: Any, n_boot: int = 1000, k: int = 3,
                               kid_subsets: int = 50, kid_subset_size: int = 1000, seed: int = 0,
                               level: float = 0.95, metrics: Any = SET_METRICS, paired: bool = False) -> dict:
    """FID, KID and precision / recall of two feature sets, each with a bootstrap interval.

    The interval resamples the sets with replacement ``n_boot`` times and recomputes every metric: it says how
    much the number would move with another draw of the same number of real and generated images.

    * ``paired=False`` (two independent samples: generated images against held-out real ones): the two sets
      are resampled independently.
    * ``paired=True`` (row i of one set belongs with row i of the other: reconstructions and their own
      originals, two renderings of the same images): both sets must have the same length, and each resample
      draws *one* set of indices for both, so a pair stays a pair. Resampling them independently would break
      the pairing -- a resample of the reconstructions no longer matches the resample of the originals -- and
      the bootstrap would describe two unrelated sets. KID then uses the paired U-statistic (it leaves out the
      ``k(x_i, y_i)`` of each pair, see :func:`_kid_weighted`), which is exactly 0 for a set against itself.
      Read a paired score against paired anchors (:func:`ldm_lite.metrics.reconstruction_anchors`), never
      against a train-vs-held-out floor: that floor compares *other* images and is not a paired quantity.

    Each resample keeps its duplicates: every metric is computed on the n rows drawn, with multiplicity
    weights, so the interval describes a sample of n (not of the ~63 % distinct rows; computing on the
    distinct rows made KID's bootstrap spread too narrow, 0.73-0.78 x the true spread in simulations, and its
    95 % intervals covered the true value 82-85 % of the time; now 1.01-1.05 x and 95 %). KID averages the
    pairs of *different* original rows (a row's pairs with its own copies are left out, as the diagonal is in
    the unbiased estimate). Precision / recall count every drawn row of the query set with its multiplicity,
    and build each ball from the k-th nearest *other* distinct row present: a row never counts its own copies
    as its nearest neighbours (see :func:`_radii_weighted`).

    The intervals, at ``level`` (in (0, 1); the key is ``ci95`` whatever the level):

    * KID, precision, recall: the percentile interval of the resamples. It is not cut at 0: KID is an
      unbiased estimate of MMD^2, so for two samples of one distribution it is negative about half the time,
      and its interval can reach below 0 -- a lower end below 0 says the two distributions are not resolved
      from each other at this n.
    * FID is biased upwards by a bootstrap resample (a noisier covariance), so the plain percentile interval
      would sit above the estimate. FID's interval is the bootstrap's spread placed around the estimate:
      ``(F - (m - q_lo), F + (q_hi - m))`` with ``m`` the bootstrap median. It is not cut at 0 either: a lower
      end below 0 means the difference between the sets is not resolved from 0 at this n (with paired sets
      resampled independently it is also the sign of a broken pairing).

    KID is the complete unbiased MMD^2 over all pairs (the value that :func:`kid_from_features`' average
    over random subsets estimates, equal to it when both sets have the same size <= ``kid_subset_size``);
    ``kid_subsets`` and ``kid_subset_size`` are accepted so that calls written for that protocol still run.

    ``metrics`` picks which of ``"fid", "kid", "precision", "recall"`` to compute (default all; precision
    and recall come as a pair). The resamples do not depend on the choice, so ``metrics=("kid",)`` returns
    exactly the KID of the full call. Cost per 1,000 resamples at n = 256 per set, one CPU thread (measured
    at d = 64, 128, 256, 512): KID 0.02-0.04 s, precision + recall 0.2-0.4 s, FID 0.9 s (d = 64) to 2.7 s
    (d = 512) -- 1,000 resamples or more are cheap enough for every headline interval. KID and precision /
    recall grow as n^2 (precision / recall hold three n x n distance matrices: 200 MB each at n = 5,000),
    FID as n d min(n, d) per resample.

    Returns ``{"fid": dict(value, ci95), "kid": ..., "precision": ..., "recall": ..., "n_real", "n_fake",
    "n_boot", "paired"}`` (the metrics asked for). ``level`` is checked first, before any metric is computed.
    """
    level = _check_level(level)
    metrics = _check_metrics(metrics)
    r, g = _as_features(real_feats, "real_feats", min_n=k + 2), _as_features(fake_feats, "fake_feats", min_n=k + 2)
    if r.shape[1] != g.shape[1]:
        raise ValueError(f"feature dimensions differ: {r.shape[1]} and {g.shape[1]}")
    if paired and len(r) != len(g):
        raise ValueError(f"paired=True needs one row of each set per pair; got {len(r)} and {len(g)} rows")
    n_boot = int(n_boot)
    sets = _SetPair(r, g, bool(paired), k)
    point = sets.point(metrics)
    rng = np.random.default_rng(seed)
    cr = _resample_counts(rng, len(r), n_boot)
    cg = cr if paired else _resample_counts(rng, len(g), n_boot)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        boots = sets.scores(metrics, cr, cg) if n_boot > 0 else {m: np.full(0, np.nan) for m in point}
        out = {key: dict(value=point[key], ci95=_interval(key, point[key], boots[key], level)) for key in point}
    out.update(n_real=len(r), n_fake=len(g), n_boot=n_boot, paired=bool(paired))
    return out


# ------------------------------------------------------------------------------------------------
# Comparing two results: the paired difference
# ------------------------------------------------------------------------------------------------
def bonferroni_level(comparisons: int, level: float = 0.95) -> float:
    """The level at which to compute each of ``comparisons`` intervals so that all of them together hold at
    ``level``: ``1 - (1 - level) / comparisons`` (Bonferroni).

    Why: each 95 % interval misses its true value 5 % of the time, so among 10 comparisons read at 95 %
    one or more "differences" appear by chance alone up to 40 % of the time (1 - 0.95^10). Computing each at
    ``bonferroni_level(10)`` = 0.995 keeps the chance that *any* of the 10 excludes 0 by chance at <= 5 %,
    whatever their dependence -- the price is wider intervals. Decide the comparisons before looking.
    """
    level = _check_level(level)
    if isinstance(comparisons, bool) or not isinstance(comparisons, numbers.Integral) or comparisons < 1:
        raise ValueError(f"comparisons must be a positive integer, got {comparisons!r}")
    return 1.0 - (1.0 - level) / int(comparisons)


def paired_difference(metric: Any, ref_feats: Any, feats_a: Any, feats_b: Any, n_boot: int = 1000, seed: int = 0,
                      paired: bool = True, reference_paired: bool = False, level: float = 0.95,
                      comparisons: int = 1, k: int = 3) -> dict:
    """metric(A) - metric(B), both against the same reference, with a bootstrap interval of the *difference*.

    Two results that share a reference (and often their inputs) are correlated: whatever a draw of the
    reference does to A's score it does to B's. Two marginal intervals ignore that and overlap long after
    the difference itself is resolved. Here each resample draws the reference once and uses it for both, and
    with ``paired=True`` (row i of A and row i of B come from the same input: two decoders on the same
    latents, PNG and JPEG of the same images, two samplers from the same seeds) one set of indices for A and B
    together; ``paired=False`` resamples A and B independently (two unrelated sample sets, any sizes).
    ``reference_paired=True``: row i of the reference belongs with row i of A and B as well (reconstruction
    scores of two autoencoders on the same originals): one index per replicate for all three, and KID uses
    the paired U-statistic (see :func:`set_metrics_with_intervals`).

    ``metric``: ``"fid"``, ``"kid"``, ``"precision"`` or ``"recall"``, or a sequence of them (then a dict of
    results keyed by metric, from the same resamples). The interval is the percentile interval of the
    replicate differences (FID: their spread placed around the estimate, as in
    :func:`set_metrics_with_intervals`), at ``level``; ``comparisons`` > 1 widens it to
    :func:`bonferroni_level` ``(comparisons, level)`` when several differences are read together.

    Returns ``dict(metric, value, ci95, a, b, n_ref, n_a, n_b, n_boot, paired, reference_paired, level,
    reading)``: ``value`` the difference of the point estimates ``a`` and ``b``, ``reading`` one line --
    "A lower than B: the interval excludes 0", "A higher than B: ..." or "no difference resolved: the
    interval includes 0" (lower is better for FID and KID, higher for precision and recall).
    """
    level = bonferroni_level(comparisons, level)
    single = isinstance(metric, str)
    metrics = _check_metrics(metric)
    ref = _as_features(ref_feats, "ref_feats", min_n=k + 2)
    a = _as_features(feats_a, "feats_a", min_n=k + 2)
    b = _as_features(feats_b, "feats_b", min_n=k + 2)
    if not ref.shape[1] == a.shape[1] == b.shape[1]:
        raise ValueError(f"feature dimensions differ: {ref.shape[1]}, {a.shape[1]} and {b.shape[1]}")
    if (paired or reference_paired) and len(a) != len(b):
        raise ValueError(f"paired A and B need one row each per input; got {len(a)} and {len(b)} rows "
                         "(pass paired=False for independent sets)")
    if reference_paired and len(ref) != len(a):
        raise ValueError(f"reference_paired=True needs as many reference rows as A and B; got {len(ref)} "
                         f"and {len(a)}")
    n_boot = int(n_boot)
    rng = np.random.default_rng(seed)
    c_ref = _resample_counts(rng, len(ref), n_boot)
    c_a = c_ref if reference_paired else _resample_counts(rng, len(a), n_boot)
    c_b = c_a if (paired or reference_paired) else _resample_counts(rng, len(b), n_boot)
    set_a, set_b = _SetPair(ref, a, bool(reference_paired), k), _SetPair(ref, b, bool(reference_paired), k)
    point_a, point_b = set_a.point(metrics), set_b.point(metrics)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        boot_a, boot_b = set_a.scores(metrics, c_ref, c_a), set_b.scores(metrics, c_ref, c_b)
        results = {}
        for m in metrics:
            diff = point_a[m] - point_b[m]
            lo, hi = _interval(m, diff, boot_a[m] - boot_b[m], level)
            if hi < 0:
                reading = f"{m}: A lower than B: the interval excludes 0"
            elif lo > 0:
                reading = f"{m}: A higher than B: the interval excludes 0"
            else:
                reading = f"{m}: no difference resolved: the interval includes 0"
            results[m] = dict(metric=m, value=diff, ci95=(lo, hi), a=point_a[m], b=point_b[m], n_ref=len(ref),
                              n_a=len(a), n_b=len(b), n_boot=n_boot, paired=bool(paired or reference_paired),
                              reference_paired=bool(reference_paired), level=level, reading=reading)
    return results[metrics[0]] if single else results
