"""Bad inputs to the Python API and to shipped checkpoints: each fails where the value enters, naming the argument
and the fix -- not deep inside torch / numpy, and never with a silently wrong result.

Checkpoints: every shipped manifest records the sha256 of its weights (flipped bytes are refused), a renamed copy of
an export loads, and ``set-first-stage`` changes a shipped manifest only with ``--force``. Shapes: masks and ``x0``
for ``LatentDiffusion.sample``, ``random_mask``'s arguments, empty checkpoint names, the bootstrap level. Ranges:
images outside [-1, 1] (or NaN) are refused by ``degrade``, ``caption_accuracy`` and ``sample(x0=...)``, and a
caption word the scorer does not know is an error instead of being skipped.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from ldm_lite.autoencoder.model import AutoencoderKL
from ldm_lite.data import ShapesDataset, degrade, random_mask
from ldm_lite.io import sha256_file
from ldm_lite.ldm import LatentDiffusion
from ldm_lite.pretrained import (
    PRETRAINED_DIR, CorruptCheckpointError, ExistingExportError, list_pretrained, load_autoencoder, load_ldm,
    load_manifest, save_pretrained,
)
from ldm_lite.unet import UNetModel

torch.set_num_threads(1)


def _copy_shipped(name: str, dst: Path, new_name: str | None = None) -> Path:
    """Copy a shipped checkpoint's manifest and weights into ``dst`` (optionally renamed); returns the base path."""
    dst.mkdir(parents=True, exist_ok=True)
    new_name = new_name or name
    for suffix in (".json", ".safetensors"):
        shutil.copyfile(PRETRAINED_DIR / f"{name}{suffix}", dst / f"{new_name}{suffix}")
    return dst / new_name


def _flip_bytes(path: Path, n: int = 64) -> None:
    """Flip ``n`` bytes in the middle of a file (inside the tensor data, past the safetensors header)."""
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    for i in range(mid, mid + n):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


# --------------------------------------------------------------------------------------------------
# Shipped weights carry their own sha256; a corrupt copy is refused, a manifest without one warns
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", [m["name"] for m in list_pretrained()])
def test_every_shipped_manifest_records_the_sha256_of_its_weights(name):
    man = load_manifest(name)
    assert man.get("weights_sha256") == sha256_file(PRETRAINED_DIR / man["weights"]), name


@pytest.mark.parametrize("name, load", [
    ("ldm_shapes_text64", load_ldm),
    ("ae_kl_f4_openmoji64", load_autoencoder),
    ("eval_shapes_attributes", "evaluator"),
])
def test_flipped_bytes_in_a_copy_of_shipped_weights_are_refused(name, load, tmp_path):
    if load == "evaluator":
        from ldm_lite.metrics import load_evaluator as load
    base = _copy_shipped(name, tmp_path)
    load(base)  # the intact copy loads
    _flip_bytes(base.with_suffix(".safetensors"))
    with pytest.raises(CorruptCheckpointError, match=rf"{name}\.safetensors does not match the sha256"):
        load(base if load is not load_ldm else str(base))


def test_a_manifest_without_weights_sha256_warns_naming_the_file(tmp_path):
    base = _copy_shipped("ae_kl_f4_openmoji64_gan", tmp_path, "old_export")
    man = json.loads(base.with_suffix(".json").read_text())
    del man["weights_sha256"]
    base.with_suffix(".json").write_text(json.dumps(man, indent=2) + "\n")
    with pytest.warns(UserWarning, match=r"old_export\.json records no weights_sha256"):
        load_autoencoder(base)


# --------------------------------------------------------------------------------------------------
# A renamed copy of an export loads (its manifest still names the original weights file)
# --------------------------------------------------------------------------------------------------
def test_a_renamed_copy_of_an_export_loads_and_is_still_checked(tmp_path):
    base = _copy_shipped("ae_kl_f4_openmoji64_gan", tmp_path, "new")
    assert load_manifest(base)["weights"] == "ae_kl_f4_openmoji64_gan.safetensors"
    ref = load_autoencoder("ae_kl_f4_openmoji64_gan")
    got = load_autoencoder(base)
    for (k, a), (_, b) in zip(ref.state_dict().items(), got.state_dict().items()):
        assert torch.equal(a, b), k
    _flip_bytes(base.with_suffix(".safetensors"))  # the base name's file is checked by the recorded sha256 too
    with pytest.raises(CorruptCheckpointError, match=r"new\.safetensors does not match the sha256"):
        load_autoencoder(base)


def test_a_renamed_copy_uses_its_own_weights_not_another_file_under_the_original_name(tmp_path):
    base = _copy_shipped("ae_kl_f4_openmoji64_gan", tmp_path, "new")
    # another model's weights left beside the copy under the file name the manifest still records
    shutil.copyfile(PRETRAINED_DIR / "ae_kl_f4_openmoji64.safetensors", tmp_path / "ae_kl_f4_openmoji64_gan.safetensors")
    ref = load_autoencoder("ae_kl_f4_openmoji64_gan")
    for (k, a), (_, b) in zip(ref.state_dict().items(), load_autoencoder(base).state_dict().items()):
        assert torch.equal(a, b), k


def test_weights_under_another_name_say_what_to_rename_not_to_retrain(tmp_path):
    base = _copy_shipped("ae_kl_f4_openmoji64_gan", tmp_path, "new")
    base.with_suffix(".safetensors").rename(tmp_path / "my_weights.safetensors")
    with pytest.raises(CorruptCheckpointError) as err:
        load_autoencoder(base)
    msg = str(err.value)
    assert "my_weights.safetensors" in msg and "rename it to new.safetensors" in msg, msg
    assert "export it again" not in msg and "trained" not in msg, msg


# --------------------------------------------------------------------------------------------------
# set-first-stage: a shipped manifest is changed only with --force
# --------------------------------------------------------------------------------------------------
def test_set_first_stage_refuses_a_shipped_manifest_without_force(tmp_path):
    from test_hardening_cli import one_line_error, run

    shipped = PRETRAINED_DIR / "ldm_openmoji64.json"
    before = shipped.read_bytes()
    try:
        # a valid switch (back to the first stage it was trained on), so only --force is missing
        res = run("set-first-stage", "--model", "ldm_openmoji64", "--first-stage", "ae_kl_f4_openmoji64")
        line = one_line_error(res, "data/pretrained/ldm_openmoji64.json", "--force")
        assert "nothing was changed" in line, line
    finally:
        if shipped.read_bytes() != before:  # never leave a shipped file changed, even when the check fails
            shipped.write_bytes(before)
    assert shipped.read_bytes() == before
    assert "--force" in run("set-first-stage", "--help").stdout
    base = _copy_shipped("ldm_openmoji64", tmp_path)  # a copy elsewhere is the user's own: no --force needed
    res = run("set-first-stage", "--model", base, "--first-stage", "ae_kl_f4_openmoji64")
    assert res.returncode == 0, res.stderr
    assert load_manifest(base)["first_stage"] == "ae_kl_f4_openmoji64"


# --------------------------------------------------------------------------------------------------
# API shapes: masks and x0 in sample(), random_mask, checkpoint names, the bootstrap level
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def latent_model():
    """A tiny f=2 latent model: 16 px images, 8 x 8 x 4 latents."""
    torch.manual_seed(0)
    ae = AutoencoderKL(f=2, ch=8, num_res_blocks=1, z_channels=4, use_mid_attn=False).eval()
    unet = UNetModel(in_channels=4, out_channels=4, model_channels=8, channel_mult=(1,), attention_resolutions=(),
                     num_heads=1, norm_num_groups=8, use_spatial_transformer=False)
    return LatentDiffusion(ae, unet, image_size=16)


def _image(b=1, size=16, seed=0):
    return torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _sample(model, *args, **kw):
    return model.sample(*args, steps=2, progress=False, generator=torch.Generator().manual_seed(0), **kw)


@pytest.mark.parametrize("kw, match", [
    (dict(x0=_image()), r"x0 given without a mask: pass keep_mask .* or hole_mask"),
    (dict(x0=_image(), hole_mask=torch.stack([random_mask(16), random_mask(16, seed=1)])),
     r"hole_mask holds 2 masks but num_samples=1"),
    (dict(x0=_image(), hole_mask=random_mask(12)), r"hole_mask is 12x12.*image size 16x16 .*latent size 8x8"),
    (dict(x0=_image(size=32), hole_mask=random_mask(32)), r"x0 is 32x32 .*16x16 images.*latent_size=\(16, 16\)"),
    (dict(x0=_image(3), hole_mask=random_mask(16)), r"x0 holds 3 images but num_samples=1"),
    (dict(x0=torch.randn(1, 3, 8, 8), hole_mask=random_mask(8)), r"x0 at the latent size 8x8 must have 4 channels"),
    (dict(x0=_image(), hole_mask=random_mask(16)[None].repeat(1, 2, 1, 1)), r"hole_mask at the image size .*channels"),
])
def test_sample_names_the_argument_at_fault(latent_model, kw, match):
    with pytest.raises(ValueError, match=match):
        _sample(latent_model, 1, **kw)


def test_sample_accepts_2d_and_per_channel_pixel_masks(latent_model):
    x0, mask = _image(), random_mask(16, seed=3)  # (1, H, W)
    ref = _sample(latent_model, 1, x0=x0, hole_mask=mask)
    torch.testing.assert_close(_sample(latent_model, 1, x0=x0, hole_mask=mask[0]), ref, rtol=0, atol=0)  # (H, W)
    rgb = mask[None].repeat(1, 3, 1, 1)  # a mask read from an RGB file: a pixel is a hole in all its channels
    torch.testing.assert_close(_sample(latent_model, 1, x0=x0, hole_mask=rgb), ref, rtol=0, atol=0)


@pytest.mark.parametrize("call, exc, match", [
    (lambda: random_mask(64.5), TypeError, r"random_mask: size must be an int .* got 64\.5"),
    (lambda: random_mask((64, "64")), TypeError, r"random_mask: size must be an int"),
    (lambda: random_mask(64, "0.3"), TypeError, r"random_mask: fraction must be a number .* got '0\.3'"),
    (lambda: load_ldm(""), ValueError, r"an empty checkpoint name.*shipped checkpoints: .*ldm_openmoji64"),
    (lambda: load_ldm(None), TypeError, r"name_or_path must be a checkpoint name or a path, got None"),
    (lambda: load_autoencoder(None), TypeError, r"name_or_path must be a checkpoint name or a path"),
])
def test_bad_api_arguments_name_themselves(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


@pytest.mark.parametrize("level", [1.5, 0, 95, float("nan"), "0.95"])
def test_bootstrap_level_is_checked(level):
    from ldm_lite.metrics import bootstrap_interval, set_metrics_with_intervals, wilson_interval

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(20, 4)), rng.normal(size=(20, 4))
    with pytest.raises((ValueError, TypeError), match=r"level must be a number strictly between 0 and 1"):
        set_metrics_with_intervals(a, b, n_boot=3, level=level)
    with pytest.raises((ValueError, TypeError), match=r"level must be a number strictly between 0 and 1"):
        bootstrap_interval(a[:, 0], level=level)
    with pytest.raises((ValueError, TypeError), match=r"level must be a number strictly between 0 and 1"):
        wilson_interval(5, 10, level=level)


# --------------------------------------------------------------------------------------------------
# API value ranges: images in [-1, 1], no NaN; caption words the scorer knows
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shapes_images():
    ds = ShapesDataset(32, length=4, seed=4)
    return torch.stack([ds[i]["image"] for i in range(4)]), [ds[i]["caption"] for i in range(4)]


def test_degrade_refuses_out_of_range_and_nan_images(shapes_images):
    x, _ = shapes_images
    with pytest.raises(ValueError, match=r"degrade: images must lie in \[-1, 1\].*x / 127\.5 - 1"):
        degrade(x * 255)
    with pytest.raises(ValueError, match=r"degrade: images must lie in \[-1, 1\]"):
        degrade(x * 127.5 + 127.5, kind="bsr")
    nan = x.clone()
    nan[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"degrade: images contain NaN or inf"):
        degrade(nan)
    with pytest.warns(UserWarning, match=r"degrade: every value of images is >= 0.*x \* 2 - 1"):
        degrade((x + 1) / 2)  # [0, 1] images: a warning, since a bright [-1, 1] image can be all >= 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        degrade(x)  # [-1, 1] images: silent


def test_caption_accuracy_refuses_unit_range_images_and_unknown_words(shapes_images):
    from ldm_lite.metrics import caption_accuracy, parse_caption

    x, caps = shapes_images
    with pytest.raises(ValueError, match=r"every value of images is >= 0.*x \* 2 - 1"):
        caption_accuracy((x + 1) / 2, caps)
    with pytest.raises(ValueError, match=r"images contain NaN"):
        caption_accuracy(x * float("nan"), caps)
    with pytest.raises(ValueError, match=r"unknown word 'magenta'.*colours: red, green"):
        parse_caption("a big red circle left of a small magenta square")
    with pytest.raises(ValueError, match=r"unknown word 'star'.*shapes: circle, square"):
        caption_accuracy(x[:1], ["a big red star"])
    with pytest.raises(ValueError, match=r"incomplete object.*'blue'.*a <size> <colour> <shape>"):
        parse_caption("a big red circle left of a blue square")
    assert parse_caption("A big red circle left of a small blue square, which is above a small cyan cross.") == [
        ("big", "red", "circle"), ("small", "blue", "square"), ("small", "cyan", "cross")]


def test_sample_refuses_x0_outside_minus_one_to_one(latent_model):
    x0, mask = _image(), random_mask(16)
    with pytest.raises(ValueError, match=r"x0 must lie in \[-1, 1\].*x / 127\.5 - 1"):
        _sample(latent_model, 1, x0=x0 * 127.5 + 127.5, hole_mask=mask)
    nan = x0.clone()
    nan[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"x0 contains NaN or inf"):
        _sample(latent_model, 1, x0=nan, hole_mask=mask)
    with pytest.warns(UserWarning, match=r"every value of x0 is >= 0.*x \* 2 - 1"):
        _sample(latent_model, 1, x0=(x0 + 1) / 2, hole_mask=mask)
