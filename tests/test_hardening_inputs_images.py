"""Images and masks as users hand them to ``upscale`` / ``inpaint``: transparent PNGs, 16-bit grey, masks erased to
transparent or painted in colour, phone photos with an EXIF orientation; sizes the models cannot take, RePaint values
that never resample, canvases whose self-attention would not fit in memory. CLI cases run the real console script in
a subprocess (as ``test_hardening_cli.py``); every advice an error gives is run to check that it works."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image, ImageOps
from test_hardening_cli import one_line_error, run

INPAINT = "ldm_openmoji_inpaint64"
SR = "ldm_openmoji_sr64"
UNCOND = "ldm_openmoji64"
FAST = ["--steps", "1", "--threads", "1"]


def _summary(res) -> dict:
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


def _hole_mask(w: int, h: int, box=(0, 0, 16, 16)) -> np.ndarray:
    """uint8 (h, w): 255 inside ``box`` (x0, y0, x1, y1), 0 elsewhere."""
    m = np.zeros((h, w), np.uint8)
    m[box[1]:box[3], box[0]:box[2]] = 255
    return m


def _with_orientation(img: Image.Image, path, orientation: int = 6) -> None:
    exif = img.getexif()
    exif[0x0112] = orientation
    img.save(path, exif=exif)


# ----------------------------------------------------------------------------- one image reader
def _old_folder_load(path, size: int) -> np.ndarray:
    """The dataset loader's pixels before the reader was shared (the reference they must keep)."""
    with Image.open(path) as img:
        img = ImageOps.exif_transpose(img)
        if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
            a = np.clip(np.asarray(img).astype(np.float64), 0.0, 65535.0) / 257.0
            img = Image.fromarray(np.round(a).astype(np.uint8))
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")
            img = Image.new("RGB", rgba.size, (255, 255, 255))
            img.paste(rgba, mask=rgba.getchannel("A"))
        else:
            img = img.convert("RGB")
        w, h = img.size
        scale = size / min(w, h)
        new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
        img = img.resize((new_w, new_h), Image.Resampling.LANCZOS, reducing_gap=3.0)
        left, top = (new_w - size) // 2, (new_h - size) // 2
        return np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.uint8)


def _odd_images(root) -> list[str]:
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (24, 24, 4), dtype=np.uint8)
    rgba[:8, :, 3] = 0
    Image.fromarray(rgba, "RGBA").save(root / "rgba.png")
    Image.fromarray(rng.integers(0, 65536, (24, 30), dtype=np.uint16)).save(root / "grey16.png")  # mode I;16
    _with_orientation(Image.fromarray(rng.integers(0, 256, (20, 28, 3), dtype=np.uint8)), root / "rotated.jpg")
    Image.fromarray(rng.integers(0, 256, (24, 24, 2), dtype=np.uint8), "LA").save(root / "la.png")
    pal = Image.fromarray(rng.integers(0, 4, (24, 24), dtype=np.uint8), "P")
    pal.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255])
    pal.save(root / "pal.png", transparency=1)
    Image.fromarray(rng.integers(0, 256, (24, 24), dtype=np.uint8), "L").save(root / "grey.jpg")
    return ["rgba.png", "grey16.png", "rotated.jpg", "la.png", "pal.png", "grey.jpg"]


def test_the_dataset_loader_and_the_cli_share_one_reader_with_unchanged_pixels(tmp_path):
    from ldm_lite.data import ImageFolderDataset
    from ldm_lite.data.common import to_image_tensor
    from ldm_lite.data.images import read_image

    files = _odd_images(tmp_path)
    for size in (16, 24):
        ds = ImageFolderDataset(tmp_path, size=size)
        for i, f in enumerate(ds.files):
            want = to_image_tensor(_old_folder_load(tmp_path / f, size))
            assert np.array_equal(ds[i]["image"].numpy(), want.numpy()), f  # bit-identical
    for f in files:  # no resizing: the image as displayed, alpha on white, 16 bits scaled
        with Image.open(tmp_path / f) as im:
            w, h = ImageOps.exif_transpose(im).size
        got = read_image(tmp_path / f)
        assert got.dtype == np.uint8 and got.shape == (h, w, 3), f
        if w == h:
            assert np.array_equal(got, _old_folder_load(tmp_path / f, w)), f
    assert (read_image(tmp_path / "rgba.png")[:8] == 255).all()  # transparent rows -> white


def _rgba_emoji(path) -> np.ndarray:
    """A red disc on a transparent background (as OpenMoji's PNGs); returns what a user sees (on white)."""
    yy, xx = np.mgrid[:64, :64]
    disc = (yy - 40) ** 2 + (xx - 40) ** 2 < 18 ** 2
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[disc] = (220, 30, 40, 255)
    Image.fromarray(rgba, "RGBA").save(path)
    seen = np.full((64, 64, 3), 255, np.uint8)
    seen[disc] = (220, 30, 40)
    return seen


def test_inpaint_reads_a_transparent_png_on_white_and_16_bit_grey_scaled(tmp_path):
    seen = _rgba_emoji(tmp_path / "emoji.png")
    Image.fromarray(_hole_mask(64, 64)).save(tmp_path / "mask.png")
    _summary(run("inpaint", tmp_path / "emoji.png", tmp_path / "mask.png", tmp_path / "out.png", "--model", INPAINT,
                 *FAST))
    out = np.asarray(Image.open(tmp_path / "out.png"))
    keep = _hole_mask(64, 64) == 0
    assert np.array_equal(out[keep], seen[keep])  # known pixels as the user sees them: background white, not black

    Image.fromarray(np.full((64, 64), 40000, np.uint16)).save(tmp_path / "grey16.png")  # mode I;16
    _summary(run("inpaint", tmp_path / "grey16.png", tmp_path / "mask.png", tmp_path / "out16.png", "--model",
                 INPAINT, *FAST))
    out = np.asarray(Image.open(tmp_path / "out16.png"))
    assert (out[keep] == round(40000 / 257)).all()  # 40000/65535 of full scale, not clipped to white


def test_inpaint_a_mask_erased_to_transparent_marks_the_hole(tmp_path):
    Image.new("RGB", (64, 64), (30, 120, 200)).save(tmp_path / "img.png")
    rgba = np.full((64, 64, 4), 255, np.uint8)  # an opaque white layer ...
    rgba[_hole_mask(64, 64) > 0, 3] = 0  # ... with the hole erased to transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "erased.png")
    s = _summary(run("inpaint", tmp_path / "img.png", tmp_path / "erased.png", tmp_path / "out.png", "--model",
                     INPAINT, *FAST))
    assert s["hole_fraction"] == 0.0625  # the erased 16×16 corner, not "everything" (white)
    out = np.asarray(Image.open(tmp_path / "out.png"))
    assert (out[_hole_mask(64, 64) == 0] == (30, 120, 200)).all()


def test_exif_orientation_applies_to_image_and_mask_and_the_output_is_upright(tmp_path):
    rng = np.random.default_rng(1)
    upright = rng.integers(0, 256, (64, 48, 3), dtype=np.uint8)  # a portrait photo as displayed: 48×64
    hole = _hole_mask(48, 64)  # top-left corner as displayed
    # a phone stores it landscape (64×48) with orientation 6 ("rotate 90° clockwise to display"); the mask too
    _with_orientation(Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90), tmp_path / "photo.png")
    _with_orientation(Image.fromarray(hole).transpose(Image.Transpose.ROTATE_90), tmp_path / "mask.png")
    Image.fromarray(hole).save(tmp_path / "painted.png")  # a mask painted on the displayed photo, no EXIF
    for mask in ("mask.png", "painted.png"):
        _summary(run("inpaint", tmp_path / "photo.png", tmp_path / mask, tmp_path / "out.png", "--model", INPAINT,
                     *FAST))
        out = np.asarray(Image.open(tmp_path / "out.png"))
        assert out.shape == (64, 48, 3), mask  # upright, as the input is displayed
        assert np.array_equal(out[hole == 0], upright[hole == 0]), mask
    small = rng.integers(0, 256, (8, 16, 3), dtype=np.uint8)  # stored 16×8, displayed 8×16
    _with_orientation(Image.fromarray(small), tmp_path / "small.png")
    s = _summary(run("upscale", tmp_path / "small.png", tmp_path / "up.png", "--model", SR, *FAST))
    assert Image.open(tmp_path / "up.png").size == (32, 64) and s["output"] == [64, 32]


# ----------------------------------------------------------------------------- RePaint values
@pytest.mark.parametrize("repaint, steps", [("1000,1000", "50"), ("50,2", "4"), ("1,1", "4"), ("0,5", "4"),
                                            ("1,2", "1")])
def test_repaint_values_that_never_resample_are_refused_before_the_model_loads(repaint, steps, tmp_path):
    Image.new("RGB", (64, 64)).save(tmp_path / "img.png")
    Image.fromarray(_hole_mask(64, 64)).save(tmp_path / "mask.png")
    res = run("inpaint", tmp_path / "img.png", tmp_path / "mask.png", tmp_path / "out.png", "--model", UNCOND,
              "--repaint", repaint, "--steps", steps, "--threads", "1")
    line = one_line_error(res, f"--repaint {repaint}", "never resample")
    assert "JUMP_N_SAMPLE" in line and "JUMP_LENGTH" in line
    assert not (tmp_path / "out.png").exists()
    if steps != "1":  # the example it gives resamples with these --steps
        example = re.search(r"e\.g\. --repaint (\d+,\d+)", line).group(1)
        j, n = (int(v) for v in example.split(","))
        assert 1 <= j < int(steps) and n >= 2


# ----------------------------------------------------------------------------- sizes
def test_inpaint_size_error_names_the_real_multiple_and_its_advice_works(tmp_path):
    Image.new("RGB", (68, 64), (10, 200, 10)).save(tmp_path / "img.png")
    Image.fromarray(_hole_mask(68, 64)).save(tmp_path / "mask.png")
    line = one_line_error(run("inpaint", tmp_path / "img.png", tmp_path / "mask.png", tmp_path / "out.png",
                              "--model", INPAINT, *FAST), "68×64", "multiples of 16")
    w, h = (int(v) for v in re.search(r"crop (?:it|them) to (\d+)×(\d+)", line).groups())
    Image.new("RGB", (w, h), (10, 200, 10)).save(tmp_path / "img.png")
    Image.fromarray(_hole_mask(w, h)).save(tmp_path / "mask.png")
    _summary(run("inpaint", tmp_path / "img.png", tmp_path / "mask.png", tmp_path / "out.png", "--model", INPAINT,
                 *FAST))


def test_upscale_of_a_tiny_image_advises_padding_not_a_zero_size(tmp_path):
    Image.new("RGB", (1, 1), (200, 10, 10)).save(tmp_path / "one.png")
    line = one_line_error(run("upscale", tmp_path / "one.png", tmp_path / "up.png", "--model", SR, *FAST), "1×1",
                          "pad it to at least")
    assert "0×0" not in line and "crop" not in line
    w, h = (int(v) for v in re.search(r"pad it to at least (\d+)×(\d+)", line).groups())
    Image.new("RGB", (w, h), (200, 10, 10)).save(tmp_path / "padded.png")
    _summary(run("upscale", tmp_path / "padded.png", tmp_path / "up.png", "--model", SR, *FAST))


# ----------------------------------------------------------------------------- memory
def test_a_canvas_whose_attention_does_not_fit_is_refused_with_tile_advice(tmp_path):
    Image.new("RGB", (40000, 16), (90, 90, 90)).save(tmp_path / "strip.png")  # valid sides, ~1.6 TB of attention
    line = one_line_error(run("upscale", tmp_path / "strip.png", tmp_path / "up.png", "--model", SR, *FAST),
                          "40000×16", "GB", "self-attention", "tiles")
    assert "--max-memory" in line
    Image.new("RGB", (64, 64)).save(tmp_path / "img.png")
    Image.fromarray(_hole_mask(64, 64)).save(tmp_path / "mask.png")
    line = one_line_error(run("inpaint", tmp_path / "img.png", tmp_path / "mask.png", tmp_path / "out.png", "--model",
                              UNCOND, "--max-memory", "0.0001", *FAST), "64×64", "self-attention", "--max-memory")
    tile = re.search(r"tiles of at most (\d+)×(\d+)", line)
    assert tile and int(tile.group(1)) * int(tile.group(2)) < 64 * 64
    assert not list(p for p in tmp_path.iterdir() if p.name in ("up.png", "out.png"))


# ----------------------------------------------------------------------------- coloured masks
@pytest.mark.parametrize("soft", [False, True], ids=["flat", "anti-aliased"])
def test_a_coloured_mask_works_directly_or_with_the_advice_it_gives(soft, tmp_path):
    Image.new("RGB", (64, 64), (240, 240, 240)).save(tmp_path / "img.png")
    mask = np.zeros((64, 64, 3), np.uint8)
    mask[:16, :16] = (255, 0, 0)  # the hole painted red on black
    mask[:16, 16:32] = (0, 0, 255)  # ... and blue (a luminance of 29/255)
    if soft:
        mask[16, :32] = (110, 0, 0)  # an anti-aliased edge: darker red, outside the hole
    Image.fromarray(mask).save(tmp_path / "mask.png")
    argv = ["inpaint", tmp_path / "img.png", tmp_path / "mask.png", tmp_path / "out.png", "--model", INPAINT, *FAST]
    res = run(*argv)
    if res.returncode != 0:
        line = one_line_error(res, "--threshold")
        res = run(*argv, *re.search(r"(--threshold [0-9.]+)", line).group(1).split())
    assert _summary(res)["hole_fraction"] == 0.125


# ----------------------------------------------------------------------------- steps, seed and model kind up front
def test_upscale_and_inpaint_check_steps_seed_and_model_kind_before_loading(tmp_path):
    Image.new("RGB", (16, 16)).save(tmp_path / "small.png")
    Image.new("RGB", (64, 64)).save(tmp_path / "img.png")
    Image.fromarray(_hole_mask(64, 64)).save(tmp_path / "mask.png")
    up = ["upscale", tmp_path / "small.png", tmp_path / "up.png", "--model", SR, "--threads", "1"]
    fill = ["inpaint", tmp_path / "img.png", tmp_path / "mask.png", tmp_path / "out.png", "--model", UNCOND,
            "--threads", "1"]
    for argv in (up, fill):
        line = one_line_error(run(*argv, "--steps", "1000"), "--steps 1000", "--steps 999 or fewer")
        assert "--sampler" not in line and "--timestep-spacing" not in line  # options these commands lack
        res = run(*argv, "--steps", "1", "--seed", "-1")
        assert res.returncode == 2 and "--seed: must be an integer from 0 to" in res.stderr, res.stderr
    one_line_error(run("upscale", tmp_path / "small.png", tmp_path / "up.png", "--model", "ae_kl_f4_openmoji64",
                       *FAST), "kind 'autoencoder'", "not 'ldm'")
    assert not list(p for p in tmp_path.iterdir() if p.name in ("up.png", "out.png"))
