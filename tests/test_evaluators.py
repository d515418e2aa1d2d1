"""The evaluators' building blocks: augmentations, targets, losses, recipes and the CLI's checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ldm_lite.data import ShapesDataset
from ldm_lite.data.augment import gaussian_blur, random_affine, random_degrade
from ldm_lite.data.shapes import COLORS, SHAPES
from ldm_lite.evaluator_training import EvaluatorRecipe, nt_xent, shapes_batch, shapes_loss
from ldm_lite.metrics import build_evaluator, box_iou, parse_caption
from ldm_lite.metrics.conditional import _shuffled


def test_gaussian_blur_per_image_sigma():
    x = torch.zeros(2, 1, 15, 15)
    x[:, :, 7, 7] = 1
    y = gaussian_blur(x, torch.tensor([0.0, 1.5]))
    torch.testing.assert_close(y[0], x[0])              # sigma 0: unchanged
    assert y[1].sum().item() == pytest.approx(1.0, abs=1e-5) and y[1, 0, 7, 7] < 0.2  # mass kept, spread out


def test_random_degrade_is_deterministic_bounded_and_grows_with_strength():
    x = ShapesDataset(32, length=16, seed=0)
    x = torch.stack([x[i]["image"] for i in range(16)])
    a = random_degrade(x, 0.5, torch.Generator().manual_seed(0))
    b = random_degrade(x, 0.5, torch.Generator().manual_seed(0))
    torch.testing.assert_close(a, b)
    assert a.min() >= -1 and a.max() <= 1
    err = [(random_degrade(x, s, torch.Generator().manual_seed(1)) - x).abs().mean().item() for s in (0.0, 0.5, 1.0)]
    assert err[0] < 1e-6 < err[1] < err[2]


def test_random_degrade_keeps_hue():
    """Colour is a label: a pure red image stays reddest in its red channel at full strength."""
    x = torch.tensor([0.9, -0.8, -0.8]).view(1, 3, 1, 1).expand(8, 3, 16, 16).contiguous()
    y = random_degrade(x, 1.0, torch.Generator().manual_seed(0)).mean(dim=(2, 3))
    assert (y.argmax(1) == 0).all()


def test_random_affine_shape_and_identity_at_zero():
    x = torch.rand(3, 3, 16, 16)
    g = torch.Generator().manual_seed(0)
    torch.testing.assert_close(random_affine(x, g, max_shift=0.0, scale=(1.0, 1.0), flip=False), x, atol=1e-5, rtol=0)


def test_shapes_batch_targets_match_the_objects():
    ds = ShapesDataset(64, length=4, seed=5)
    b = shapes_batch(ds, range(4))
    for i in range(4):
        it = ds[i]
        for k in range(it["num_objects"]):
            pix = it["instances"] == k + 1
            assert (b["color"][i][pix] == it["colors"][k]).all()
            assert (b["shape"][i][pix] == it["labels"][k]).all()
        assert (b["color"][i][it["instances"] == 0] == -1).all()
    out = build_evaluator("shapes-attributes")(b["image"])
    assert out["color"].shape == (4, len(COLORS), 64, 64) and out["shape"].shape[1] == len(SHAPES)
    loss = shapes_loss(out, b)
    assert torch.isfinite(loss) and loss.item() > 1.0  # untrained: about ln 8 + ln 6 + ln 2 + ln 2


def test_nt_xent_matches_its_closed_form():
    """Orthonormal embeddings, views identical: each view's partner has similarity 1/tau, the 2B - 2 others 0,
    so the loss is log(1 + (2B - 2) e^(-1/tau))."""
    B, tau = 8, 0.1
    z = torch.eye(B)
    assert nt_xent(z, z, tau).item() == pytest.approx(np.log(1 + (2 * B - 2) * np.exp(-1 / tau)), rel=1e-4)
    rand = nt_xent(z, torch.nn.functional.normalize(torch.randn(B, B), dim=1), tau).item()
    assert rand > 1.0


def test_parse_caption_and_box_iou():
    assert parse_caption("a big red circle left of a small blue square, which is above a small cyan cross") == [
        ("big", "red", "circle"), ("small", "blue", "square"), ("small", "cyan", "cross")]
    np.testing.assert_allclose(box_iou([[0, 0, 2, 2]], [[1, 1, 3, 3], [0, 0, 2, 2], [5, 5, 6, 6]]),
                               [[1 / 7, 1.0, 0.0]])


def test_shuffled_moves_every_item():
    items = list(range(10))
    out = _shuffled(items, seed=3)
    assert sorted(out) == items and all(a != b for a, b in zip(out, items))


def test_evaluator_recipe_rejects_bad_settings():
    with pytest.raises(ValueError, match="unknown evaluator network"):
        EvaluatorRecipe("inception")
    with pytest.raises(ValueError, match="steps must be a positive int"):
        EvaluatorRecipe("fashion-classifier", steps=0)
    with pytest.raises(ValueError, match=r"augment \(strength\) must lie in \[0, 1\]"):
        EvaluatorRecipe("fashion-classifier", augment=1.5)
    with pytest.raises(ValueError, match="lr must be a positive finite"):
        EvaluatorRecipe("fashion-classifier", lr=float("nan"))


def test_evaluators_reject_bad_images():
    net = build_evaluator("fashion-classifier")
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        net.features(torch.full((1, 1, 28, 28), 255.0))
    with pytest.raises(ValueError, match="NaN or inf"):
        net.features(torch.full((1, 1, 28, 28), float("nan")))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        net.features(torch.zeros(28, 28))


def test_cli_refuses_bad_sample_outputs_and_threads(tmp_path, capsys):
    from ldm_lite.cli import main

    with pytest.raises(SystemExit, match=r"\.png .* or a \.npz"):
        main(["sample", "--model", "ldm_openmoji64", "--out", str(tmp_path / "s.jpg")])
    for argv in (["sample", "--model", "ldm_openmoji64", "--threads", "0", "--out", str(tmp_path / "s.png")],
                 ["train-evaluator", "--network", "fashion-classifier", "--threads", "0"]):
        with pytest.raises(SystemExit) as err:
            main(argv)
        assert err.value.code == 2 and "--threads: must be at least 1, got 0" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
