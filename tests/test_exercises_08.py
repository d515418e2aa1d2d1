"""The exercise checks of notebook 08, run as the notebook runs them.

The notebook has a cell tagged ``exercise-stub`` (functions that raise ``NotImplementedError``) and a cell tagged
``exercise-check`` (a ``check(name, run)`` per exercise, self-contained: it loads the OpenMoji features and the
stored sample set it needs). The check cell is executed here in a fresh namespace, from the ``notebooks/`` folder
as Jupyter runs it, with

* the stub cell: every exercise must report "not solved yet" (and the cell must not raise);
* the functions of ``notebooks/solutions/08_evaluation.py``: every exercise must report "correct";
* the solution with one function replaced by a typical mistake: that exercise must report "wrong" with a hint,
  the others "correct" (a wrong answer never stops the later checks).

The notebook is read from ``$NOTEBOOK_DIR`` (default ``notebooks/``), the solutions always from
``notebooks/solutions/``.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import numpy as np
import pytest
from exercise_harness import load_solution, run_check_cell, tagged_cell

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = Path(os.environ.get("NOTEBOOK_DIR", REPO / "notebooks"))
NOTEBOOK = NOTEBOOK_DIR / "08_evaluation.ipynb"
SOLUTION = REPO / "notebooks" / "solutions" / "08_evaluation.py"
EXERCISES = 3

pytestmark = pytest.mark.usefixtures("one_thread")


def _cell(tag: str) -> str:
    return tagged_cell(NOTEBOOK, tag)


def _solution():
    return load_solution(SOLUTION, "solution_08")


@pytest.fixture(scope="module")
def cached_features():
    """The check cell computes the same OpenMoji features on every run; remember them across this module's runs
    (keyed by the images' bytes, so a different input is never served a cached answer)."""
    from ldm_lite import metrics as M

    original, cache = M.features_of, {}

    def features_of(extractor, images, *args, **kwargs):
        arr = images.detach().cpu().numpy()
        key = (getattr(extractor, "name", id(extractor)), arr.shape, hashlib.sha1(arr.tobytes()).hexdigest(),
               args, tuple(sorted(kwargs.items())))
        if key not in cache:
            cache[key] = original(extractor, images, *args, **kwargs)
        return cache[key].copy()

    M.features_of = features_of
    yield
    M.features_of = original


@pytest.fixture
def run_checks(cached_features, monkeypatch):
    monkeypatch.chdir(REPO / "notebooks")   # the check cell reads ../data/reference_samples, as the notebook does

    def run(namespace: dict) -> dict[int, tuple[str, str]]:
        return run_check_cell(_cell("exercise-check"), "<08_evaluation exercise-check>", namespace, EXERCISES)

    return run


def _solution_namespace(**replace) -> dict:
    module = _solution()
    names = re.findall(r"^def (\w+)\(", _cell("exercise-stub"), flags=re.MULTILINE)
    missing = [n for n in names if not callable(getattr(module, n, None))]
    assert not missing, f"notebooks/solutions/08_evaluation.py lacks {missing}"
    namespace = {n: getattr(module, n) for n in names}
    namespace.update(replace)
    return namespace


def test_the_stub_does_not_solve_an_exercise():
    names = re.findall(r"^def (\w+)\(", _cell("exercise-stub"), flags=re.MULTILINE)
    assert names == ["paired_kid", "kid_difference", "copy_fraction"]
    namespace: dict = {}
    exec(compile(_cell("exercise-stub"), "<08_evaluation exercise-stub>", "exec"), namespace)  # noqa: S102
    args = {"paired_kid": 2, "kid_difference": 3, "copy_fraction": 3}
    for name in names:
        with pytest.raises(NotImplementedError):
            namespace[name](*([np.zeros((4, 2))] * args[name]))


def test_stubs_report_not_solved_yet(run_checks):
    namespace: dict = {}
    exec(compile(_cell("exercise-stub"), "<08_evaluation exercise-stub>", "exec"), namespace)  # noqa: S102
    for k, (mark, message) in run_checks(namespace).items():
        assert mark == "✗" and message.startswith("not solved yet"), f"exercise {k} on its stub: {mark} {message}"


def test_solutions_pass_every_check(run_checks):
    for k, (mark, message) in run_checks(_solution_namespace()).items():
        assert mark == "✓", f"exercise {k} with its solution: {mark} {message}"


# ---- typical mistakes, one function each: the check must say "wrong" -----------------------------------------
def _unpaired_kid():
    """Section 1's unbiased KID, which counts k(x_i, y_i) -- an image and its own reconstruction -- as a pair of
    independent draws."""
    sol = _solution()
    return {"paired_kid": lambda f_orig, f_rec: sol._kid(f_orig, f_rec)}


def _paired_kid_over_n_squared():
    sol = _solution()

    def paired_kid(f_orig, f_rec):
        n = len(f_orig)
        return sol.paired_kid(f_orig, f_rec) * (n - 1) / n

    return {"paired_kid": paired_kid}


def _resample(ref, a, b, n_boot, seed, same_indices=True, reference=True):
    sol = _solution()
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(n_boot):
        r = ref[rng.integers(0, len(ref), len(ref))] if reference else ref
        i = rng.integers(0, len(a), len(a))
        j = i if same_indices else rng.integers(0, len(b), len(b))
        diffs.append(sol._kid(r, a[i]) - sol._kid(r, b[j]))
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    return sol._kid(ref, a) - sol._kid(ref, b), lo, hi


def _independent_indices():
    """A and B resampled independently: the pairing is broken, the interval far too wide."""
    return {"kid_difference": lambda f_ref, f_a, f_b, n_boot=500, seed=0: _resample(
        np.asarray(f_ref, float), np.asarray(f_a, float), np.asarray(f_b, float), n_boot, seed, same_indices=False)}


def _reference_held_fixed():
    """Only A and B resampled: the reference's own sampling noise is left out, the interval too narrow."""
    return {"kid_difference": lambda f_ref, f_a, f_b, n_boot=500, seed=0: _resample(
        np.asarray(f_ref, float), np.asarray(f_a, float), np.asarray(f_b, float), n_boot, seed, reference=False)}


def _closer_than_any_heldout():
    """The threshold "closer than any held-out image" (q = 0): 6 held-out emoji duplicate a training emoji, so
    it is 0 and nothing is ever flagged."""
    sol = _solution()
    return {"copy_fraction": lambda f_gen, f_train, f_heldout, q=0.05: sol.copy_fraction(f_gen, f_train, f_heldout,
                                                                                         q=0.0)}


def _farther_not_closer():
    sol = _solution()
    return {"copy_fraction": lambda f_gen, f_train, f_heldout, q=0.05: 1.0 - sol.copy_fraction(f_gen, f_train,
                                                                                               f_heldout, q)}


MISTAKES = [(1, _unpaired_kid), (1, _paired_kid_over_n_squared), (2, _independent_indices),
            (2, _reference_held_fixed), (3, _closer_than_any_heldout), (3, _farther_not_closer)]


@pytest.mark.parametrize("exercise, mistake", MISTAKES, ids=[m.__name__[1:] for _, m in MISTAKES])
def test_a_typical_mistake_is_reported_wrong(run_checks, exercise, mistake):
    results = run_checks(_solution_namespace(**mistake()))
    mark, message = results[exercise]
    assert mark == "✗" and message.startswith("wrong -- ") and len(message) > len("wrong -- ") + 10, (
        f"exercise {exercise} with {mistake.__name__}: {mark} {message}")
    for k, (other, text) in results.items():
        if k != exercise:
            assert other == "✓", f"exercise {k} should still pass: {other} {text}"


def test_a_broken_attempt_does_not_stop_the_later_checks(run_checks):
    def crashes(*args, **kwargs):
        raise IndexError("index 3 is out of bounds")

    results = run_checks(_solution_namespace(paired_kid=crashes))
    assert results[1][0] == "✗" and results[1][1].startswith("wrong -- ") and "IndexError" in results[1][1]
    assert results[2][0] == "✓" and results[3][0] == "✓"
