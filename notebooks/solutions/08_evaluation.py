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


# Exercise 3: the copier scores ~0 against the training set, far *below* the report's floor (real images the
# model could have copied, scored against held-out images) -- a model beating real data is the alarm.
