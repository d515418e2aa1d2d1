"""Solutions to the exercises of notebook 08_evaluation (checked by tests/test_exercises_08.py, which runs the
notebook's own check cell on them)."""

import numpy as np


def _kernel(a, b):
    """KID's cubic polynomial kernel k(x, y) = (x.y / d + 1)^3, every pair of rows."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a @ b.T / a.shape[1] + 1.0) ** 3


def paired_kid(f_orig, f_rec):
    """Exercise 1: the paired KID (rKID) of reconstructions against their own originals.

    Row i of both sets belongs together. The U-statistic of the pairs z_i = (x_i, y_i) with
    h(z_i, z_j) = k(x_i, x_j) + k(y_i, y_j) - k(x_i, y_j) - k(x_j, y_i), averaged over i != j: every term that
    involves one pair only (k(x_i, x_i), k(y_i, y_i) and k(x_i, y_i), an image and its own reconstruction) is
    left out, so a set against itself scores exactly 0.
    """
    x, y = np.asarray(f_orig, np.float64), np.asarray(f_rec, np.float64)
    n = len(x)
    kxx, kyy, kxy = _kernel(x, x), _kernel(y, y), _kernel(x, y)
    off = lambda k: k.sum() - np.trace(k)  # noqa: E731  the sum over i != j
    return float((off(kxx) + off(kyy) - 2 * off(kxy)) / (n * (n - 1)))


def _kid(ref, f):
    """The unbiased (unpaired) KID of two sets: within-set pairs i != j, every cross pair."""
    m, n = len(ref), len(f)
    kxx, kyy = _kernel(ref, ref), _kernel(f, f)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                 - 2 * _kernel(ref, f).mean())


def kid_difference(f_ref, f_a, f_b, n_boot=500, seed=0):
    """Exercise 2: KID(A) - KID(B) against one reference, with a 95 % bootstrap interval of the difference.

    Row i of A and row i of B come from the same input (paired). Each replicate draws the reference rows once
    and one set of indices for A and B together, scores both on that one draw and keeps the difference.
    Returns (difference on the full sets, lower end, upper end).
    """
    ref, a, b = (np.asarray(f, np.float64) for f in (f_ref, f_a, f_b))
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(n_boot):
        r = ref[rng.integers(0, len(ref), len(ref))]
        i = rng.integers(0, len(a), len(a))       # the same indices for A and B: a pair stays a pair
        diffs.append(_kid(r, a[i]) - _kid(r, b[i]))
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    return _kid(ref, a) - _kid(ref, b), float(lo), float(hi)


def copy_fraction(f_gen, f_train, f_heldout, q=0.05):
    """Exercise 3: the share of generated rows closer to the training set than the q-quantile of the held-out
    rows' nearest-training distances -- a copier is ~1, real unseen images ~q, an honest model near 0..q."""
    train = np.asarray(f_train, dtype=np.float64)

    def nearest(a):  # distance of each row of a to its nearest training row (|a|^2 + |t|^2 - 2 a.t)
        a = np.asarray(a, dtype=np.float64)
        d2 = (a ** 2).sum(1)[:, None] + (train ** 2).sum(1)[None] - 2 * a @ train.T
        return np.sqrt(np.maximum(d2, 0)).min(1)

    return float((nearest(f_gen) < np.quantile(nearest(f_heldout), q)).mean())
