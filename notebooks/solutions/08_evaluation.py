"""Solutions to the exercises of notebook 08_evaluation (checked by tests/test_exercise_solutions.py)."""

import numpy as np


def kid_unbiased(a, b):
    """Exercise 1: unbiased MMD^2 with the cubic polynomial kernel k(x, y) = (x.y / d + 1)^3."""
    d = a.shape[1]
    kxx = (a @ a.T / d + 1) ** 3
    kyy = (b @ b.T / d + 1) ** 3
    kxy = (a @ b.T / d + 1) ** 3
    m, n = len(a), len(b)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                 - 2 * kxy.mean())


def my_recall(real, fake, k=3):
    """Exercise 2: the share of real points inside the union of the generated points' k-NN balls."""
    radii = np.sort(np.linalg.norm(fake[:, None] - fake[None], axis=-1), axis=1)[:, k]
    dist = np.linalg.norm(real[:, None] - fake[None], axis=-1)
    return float((dist <= radii[None]).any(1).mean())


def copy_fraction(f_gen, f_train, f_heldout, q=0.05):
    """Exercise 3: the share of generated rows closer to the training set than the q-quantile of the held-out
    rows' nearest-training distances -- a copier is ~1, real unseen images ~q, an honest model near 0..q."""
    train = np.asarray(f_train, dtype=np.float64)

    def nearest(a):  # distance of each row of a to its nearest training row (|a|^2 + |t|^2 - 2 a.t)
        a = np.asarray(a, dtype=np.float64)
        d2 = (a ** 2).sum(1)[:, None] + (train ** 2).sum(1)[None] - 2 * a @ train.T
        return np.sqrt(np.maximum(d2, 0)).min(1)

    return float((nearest(f_gen) < np.quantile(nearest(f_heldout), q)).mean())
