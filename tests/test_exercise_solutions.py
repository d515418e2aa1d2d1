"""Every notebook exercise check, run against its solution in notebooks/solutions/."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from ldm_lite import metrics as M

SOLUTIONS = Path(__file__).resolve().parent.parent / "notebooks" / "solutions"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, SOLUTIONS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_08_evaluation_solutions_pass_the_notebook_checks():
    """A quick check of notebook 08's solutions on synthetic features; tests/test_exercises_08.py runs the
    notebook's own check cell on them."""
    sol = _load("08_evaluation")
    rng = np.random.default_rng(0)
    f_ref, f_good = rng.normal(size=(60, 16)), rng.normal(size=(80, 16)) + 0.3
    # exercise 1: the paired KID is 0 for a set against itself and equals the package's paired score
    f_rec = f_ref + 0.3 * rng.normal(size=f_ref.shape)
    assert abs(sol.paired_kid(f_ref, f_ref)) < 1e-12
    want = M.set_metrics_with_intervals(f_ref, f_rec, n_boot=1, metrics=("kid",), paired=True)["kid"]["value"]
    assert abs(sol.paired_kid(f_ref, f_rec) - want) < 1e-9 * max(1, abs(want))
    # exercise 2: the difference of the full-set KIDs, inside its own interval
    f_b = f_good + 0.2 * rng.normal(size=f_good.shape)
    value, lo, hi = sol.kid_difference(f_ref, f_good, f_b, n_boot=50)
    assert abs(value - M.paired_difference("kid", f_ref, f_good, f_b, n_boot=1)["value"]) < 1e-9
    assert lo <= value <= hi
    # exercise 3: the copier (training rows with a little noise) is caught, held-out rows are not
    f_train = rng.normal(size=(200, 16))
    f_copy = f_train[:50] + 1e-3 * rng.normal(size=(50, 16))
    f_held = rng.normal(size=(60, 16))
    assert sol.copy_fraction(f_copy, f_train, f_held) >= 0.9 and sol.copy_fraction(f_held, f_train, f_held) <= 0.1


def test_06_conditioning_solutions_pass_the_notebook_checks():
    import math

    import torch

    from ldm_lite.conditioning import fourier_features
    from ldm_lite.diffusion.guidance import cfg_combine

    sol = _load("06_cross_attention_conditioning")
    g = torch.Generator().manual_seed(0)
    e_u, e_c = torch.randn(4, 4, 8, 8, generator=g), torch.randn(4, 4, 8, 8, generator=g)
    for s in (0.0, 1.0, 3.0, 7.5):
        torch.testing.assert_close(sol.my_cfg(e_u, e_c, s), cfg_combine(e_u, e_c, s))
    labels = torch.randint(0, 10, (20_000,), generator=torch.Generator().manual_seed(0))
    out = sol.drop_labels(labels.clone(), 0.1, 10, torch.Generator().manual_seed(1))
    changed = out != labels
    assert bool((out[changed] == 10).all())
    assert abs(float(changed.float().mean()) - 0.1) < 4 * math.sqrt(0.1 * 0.9 / 20_000)
    x = torch.rand(5, 3, 4, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(sol.box_features(x, 6), fourier_features(x, 6))


def test_progress_summary_mode_prints_one_line(monkeypatch, capsys):
    from ldm_lite.progress import progress

    monkeypatch.setenv("LDM_PROGRESS", "summary")
    bar = progress(range(5), desc="train")
    for _ in bar:
        bar.set_postfix(loss="0.1")
    bar.close()
    for _ in progress(range(3), desc="sampling", leave=False):  # transient bars print nothing
        pass
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("train: 5/5 in ") and "loss=0.1" in out[0]
    monkeypatch.setenv("LDM_PROGRESS", "sideways")
    import pytest

    with pytest.raises(ValueError, match="LDM_PROGRESS"):
        progress(range(2))


def test_07_spatial_solutions_pass_the_notebook_checks():
    import torch

    from ldm_lite.autoencoder.tiled import tiled_decode
    from ldm_lite.data import load_openmoji, random_masks
    from ldm_lite.diffusion.samplers import repaint_moves
    from ldm_lite.pretrained import load_ldm

    sol = _load("07_spatial_conditioning")
    inp = load_ldm("ldm_openmoji_inpaint64")
    img = torch.stack([load_openmoji(64, split="test")[i]["image"] for i in range(2)])
    h = random_masks(2, 64, 0.3, seed=5)
    want = inp.get_learned_conditioning({"masked_image": img * (1 - h), "hole_mask": h})["c_concat"]
    torch.testing.assert_close(sol.my_inpaint_condition(inp, img, h), want)
    for args in ((6, 2, 2), (10, 3, 3), (5, 0, 4), (7, 7, 2)):
        assert sol.my_repaint_moves(*args) == repaint_moves(*args)
    z = torch.randn(1, inp.latent_channels, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(sol.my_tiled_decode(inp.first_stage.decode, z, 16),
                                   tiled_decode(inp.first_stage.decode, z, 4, 16, overlap=0))
