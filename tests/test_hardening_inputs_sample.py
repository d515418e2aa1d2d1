"""``ldm-lite sample`` given bad input: every refusal is one line in CLI terms, made before the model is loaded or
anything is sampled, and the command never writes a file it was not asked to write. CLI cases run the real console
script in a subprocess (``test_hardening_cli.run``)."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_hardening_cli import one_line_error, run

REPO = Path(__file__).resolve().parents[1]
PRETRAINED = REPO / "data" / "pretrained"
QUICK = ["--n", "1", "--steps", "1", "--threads", "1"]


def _copy_model(name: str, dest: Path) -> Path:
    for suffix in (".json", ".safetensors"):
        shutil.copyfile(PRETRAINED / f"{name}{suffix}", dest.with_suffix(suffix))
    return dest


# ----------------------------------------------------------------------------- --out and the files beside it
def test_npz_out_never_replaces_a_model_manifest_even_with_force(tmp_path):
    model = _copy_model("ldm_openmoji64", tmp_path / "mine")
    before = model.with_suffix(".json").read_bytes()
    for extra in ([], ["--force"]):
        res = run("sample", "--model", "ldm_openmoji64", *QUICK, "--out", model.with_suffix(".npz"), *extra)
        line = one_line_error(res, "mine.json", "not a sample-set manifest")
        assert "--out" in line
    assert model.with_suffix(".json").read_bytes() == before
    assert not model.with_suffix(".npz").exists()


def test_npz_out_never_replaces_the_layout_file_it_reads(tmp_path):
    layout = tmp_path / "boxes.json"
    layout.write_text(json.dumps([{"box": [0.1, 0.1, 0.6, 0.5], "shape": "circle", "color": "red"}]))
    before = layout.read_bytes()
    res = run("sample", "--model", "ldm_shapes_layout64", "--layout", layout, *QUICK, "--out", tmp_path / "boxes.npz",
              "--force")
    one_line_error(res, "boxes.json", "not a sample-set manifest")
    assert layout.read_bytes() == before and not (tmp_path / "boxes.npz").exists()


@pytest.fixture
def shipped_guard():
    """The shipped model's files as they were; put back (and a stray .npz removed) if a regression touched them,
    so a failing run of this test never leaves the checkout broken."""
    files = [PRETRAINED / "ldm_openmoji64.json", PRETRAINED / "ldm_openmoji64.safetensors"]
    saved = {p: p.read_bytes() for p in files}
    stray = PRETRAINED / "ldm_openmoji64.npz"
    existed = stray.exists()
    yield saved
    for p, b in saved.items():
        if p.read_bytes() != b:
            p.write_bytes(b)
    if stray.exists() and not existed:
        stray.unlink()


def test_shipped_files_are_never_replaced_by_sample(tmp_path, shipped_guard):
    for extra in ([], ["--force"]):
        res = run("sample", "--model", "ldm_openmoji64", *QUICK, "--out", PRETRAINED / "ldm_openmoji64.npz", *extra)
        one_line_error(res, "ldm_openmoji64.json")
        assert not (PRETRAINED / "ldm_openmoji64.npz").exists()
        assert all(p.read_bytes() == b for p, b in shipped_guard.items())


def test_png_out_into_the_shipped_folder_needs_force(tmp_path, monkeypatch, capsys):
    from ldm_lite import cli, pretrained

    folder = tmp_path / "pretrained"
    folder.mkdir()
    monkeypatch.setattr(pretrained, "PRETRAINED_DIR", folder)
    grid = folder / "grid.png"
    grid.write_bytes(b"a shipped picture")
    with pytest.raises(SystemExit, match="--force"):
        cli.main(["sample", "--model", str(PRETRAINED / "ldm_openmoji64"), *QUICK, "--out", str(grid)])
    assert grid.read_bytes() == b"a shipped picture"


def test_a_sample_set_is_replaced_only_with_force(tmp_path):
    out = tmp_path / "set.npz"
    first = run("sample", "--model", "ldm_openmoji64", *QUICK, "--out", out)
    assert first.returncode == 0, first.stderr
    before = out.read_bytes(), out.with_suffix(".json").read_bytes()
    again = run("sample", "--model", "ldm_openmoji64", *QUICK, "--seed", "3", "--out", out)
    one_line_error(again, "set.npz", "--force")
    assert (out.read_bytes(), out.with_suffix(".json").read_bytes()) == before
    forced = run("sample", "--model", "ldm_openmoji64", *QUICK, "--seed", "3", "--out", out, "--force")
    assert forced.returncode == 0, forced.stderr
    assert json.loads(out.with_suffix(".json").read_text())["seed"] == 3


# ----------------------------------------------------------------------------- spatial (concat) models
@pytest.mark.parametrize("model, needle", [("ldm_openmoji_sr64", "ldm-lite upscale"),
                                           ("ldm_openmoji_inpaint64", "ldm-lite inpaint")])
def test_sr_and_inpaint_models_point_to_their_commands(model, needle, tmp_path):
    res = run("sample", "--model", model, *QUICK, "--out", tmp_path / "s.png")
    one_line_error(res, needle, model)
    assert not list(tmp_path.iterdir())


def _shapes_map(size: int = 64, mode: str = "L") -> Image.Image:
    from ldm_lite.data.shapes import ShapesDataset

    seg = ShapesDataset(size, length=1, seed=10_000)[0]["segmentation"].numpy().astype(np.uint8)
    return Image.fromarray(seg, mode="L").convert(mode)


def test_semantic_model_samples_from_a_map(tmp_path):
    seg = tmp_path / "seg.png"
    _shapes_map().save(seg)
    res = run("sample", "--model", "ldm_shapes_semantic64", "--map", seg, *QUICK, "--out", tmp_path / "s.png")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["images"] == [1, 3, 64, 64]
    none = run("sample", "--model", "ldm_shapes_semantic64", *QUICK, "--out", tmp_path / "t.png")
    one_line_error(none, "--map")
    assert not (tmp_path / "t.png").exists()


def test_semantic_map_is_checked_before_sampling(tmp_path):
    bad_class = tmp_path / "nine.png"
    Image.fromarray(np.full((64, 64), 9, np.uint8), mode="L").save(bad_class)
    one_line_error(run("sample", "--model", "ldm_shapes_semantic64", "--map", bad_class, *QUICK,
                       "--out", tmp_path / "s.png"), "--map", "0..6")
    bad_size = tmp_path / "small.png"
    Image.fromarray(np.zeros((50, 50), np.uint8), mode="L").save(bad_size)
    one_line_error(run("sample", "--model", "ldm_shapes_semantic64", "--map", bad_size, *QUICK,
                       "--out", tmp_path / "s.png"), "--map", "50", "16")
    colour = tmp_path / "colour.png"
    Image.fromarray(np.dstack([np.zeros((64, 64), np.uint8), np.full((64, 64), 200, np.uint8),
                               np.zeros((64, 64), np.uint8)])).save(colour)
    one_line_error(run("sample", "--model", "ldm_shapes_semantic64", "--map", colour, *QUICK,
                       "--out", tmp_path / "s.png"), "--map", "class")
    one_line_error(run("sample", "--model", "ldm_openmoji64", "--map", bad_size, *QUICK,
                       "--out", tmp_path / "s.png"), "--map")
    assert not (tmp_path / "s.png").exists()


# ----------------------------------------------------------------------------- guidance
def test_huge_guidance_warns_and_the_summary_gives_it(tmp_path):
    res = run("sample", "--model", "ldm_fashion_class32", "--label", "1", "--guidance", "1e6", *QUICK,
              "--out", tmp_path / "s.png")
    assert res.returncode == 0, res.stderr
    warning = [ln for ln in res.stderr.splitlines() if "--guidance" in ln and "warning" in ln]
    assert warning and "1e+06" in warning[0], res.stderr
    assert json.loads(res.stdout)["guidance"] == 1e6
    calm = run("sample", "--model", "ldm_fashion_class32", "--label", "1", "--guidance", "3", *QUICK,
               "--out", tmp_path / "t.png")
    assert calm.returncode == 0 and "--guidance" not in calm.stderr, calm.stderr
    assert json.loads(calm.stdout)["guidance"] == 3.0


# ----------------------------------------------------------------------------- words a text model never saw
def test_unknown_words_are_listed_by_the_text_encoders():
    from ldm_lite.conditioning import FrozenTextEncoder, TransformerEmbedder, UnknownWordsWarning

    kept = TransformerEmbedder(embed_dim=16, depth=1, heads=2,
                               vocabulary=TransformerEmbedder.vocabulary_of(["a big red circle"]))
    assert kept.unknown_words("a purple unicorn") == ["purple", "unicorn"]
    assert kept.unknown_words(["a big red circle", "un Cercle rouge 🦄"]) == ["un", "Cercle", "rouge", "🦄"]
    with pytest.warns(UnknownWordsWarning, match="unicorn"):
        kept(["a big unicorn"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kept(["a big red circle"])  # known words: no warning
    full = TransformerEmbedder(embed_dim=16, depth=1, heads=2)
    assert full.unknown_words("a purple unicorn 🦄") == ["🦄"]
    frozen = FrozenTextEncoder("minilm")
    assert frozen.unknown_words("a purple unicorn") == [] and frozen.unknown_words("a big 🦄") == ["🦄"]
    with pytest.warns(UnknownWordsWarning, match="🦄"):
        frozen(["a big 🦄"])


def test_sample_warns_about_words_the_model_never_saw(tmp_path):
    res = run("sample", "--model", "ldm_shapes_text64", "--prompt", "a purple unicorn", "--prompt",
              "a big red circle", *QUICK, "--out", tmp_path / "s.png")
    assert res.returncode == 0, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if "unicorn" in ln]
    assert len(lines) == 1 and "warning" in lines[0] and "'purple'" not in lines[0], res.stderr
    assert "[UNK]" in lines[0] and "Traceback" not in res.stderr


def test_an_over_long_prompt_is_not_echoed_whole(tmp_path):
    prompt = " ".join(["circle"] * 500)
    line = one_line_error(run("sample", "--model", "ldm_shapes_text64", "--prompt", prompt, *QUICK,
                              "--out", tmp_path / "s.png"), "--prompt", "32")
    assert len(line) < 400 and "…" in line


# ----------------------------------------------------------------------------- steps the sampler cannot take
@pytest.mark.parametrize("extra, needles", [
    (["--steps", "1000"], ["999", "--sampler ddpm"]),
    (["--steps", "1000", "--sampler", "plms"], ["999", "--sampler ddpm"]),
    (["--steps", "1001", "--sampler", "ddpm"], ["1000"]),
    (["--steps", "100", "--timestep-spacing", "quadratic"], ["--timestep-spacing"]),
])
def test_steps_beyond_the_sampler_are_refused_in_cli_terms(extra, needles, tmp_path):
    res = run("sample", "--model", "ldm_openmoji64", "--n", "1", "--threads", "1", *extra, "--out", tmp_path / "s.png")
    line = one_line_error(res, "--steps", *needles)
    assert "steps_offset" not in line and "num_ddim_timesteps" not in line
    assert not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------- the output path
def test_bad_out_paths_are_refused_before_sampling(tmp_path):
    folder = tmp_path / "outdir.png"
    folder.mkdir()
    line = one_line_error(run("sample", "--model", "ldm_openmoji64", *QUICK, "--out", folder), "outdir.png", "folder")
    assert ".tmp" not in line and not list(folder.iterdir())
    line = one_line_error(run("sample", "--model", "ldm_openmoji64", *QUICK, "--out", tmp_path / "nope" / "s.png"),
                          "nope", "does not exist")
    assert not (tmp_path / "nope").exists()
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    one_line_error(run("sample", "--model", "ldm_openmoji64", *QUICK, "--out", blocker / "s.npz"), "a_file")


# ----------------------------------------------------------------------------- --layout files of the wrong shape
@pytest.mark.parametrize("content", ["[]", "5", "null", "[[1, 2]]", '{"box": 3}', '[{"box": [0, 0, 1], '
                                     '"shape": "circle", "color": "red"}]', b"\x89PNG\r\n\x1a\n\x00\x00"])
def test_layout_files_of_the_wrong_shape_say_the_format(content, tmp_path):
    spec = tmp_path / "layout.json"
    spec.write_bytes(content if isinstance(content, bytes) else content.encode())
    res = run("sample", "--model", "ldm_shapes_layout64", "--layout", spec, *QUICK, "--out", tmp_path / "s.png")
    line = one_line_error(res, "--layout", '"box": [x0, y0, x1, y1]')
    assert "Error" not in line
    assert not (tmp_path / "s.png").exists()


# ----------------------------------------------------------------------------- unchecked options
@pytest.mark.parametrize("argv, needle", [
    (["--nrow", "-1"], "--nrow: must be at least 1"),
    (["--latent-size", "0"], "--latent-size: must be at least 1"),
    (["--seed", str(2 ** 64)], "--seed: must be"),
    (["--seed", "-1"], "--seed: must be"),
])
def test_sample_option_values_are_refused_by_the_parser(argv, needle, tmp_path):
    res = run("sample", "--model", "ldm_openmoji64", *argv, "--out", tmp_path / "s.png")
    assert res.returncode == 2 and needle in res.stderr, res.stderr
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("argv, needles", [
    (["--model", "ldm_openmoji64", "--latent-size", "3"], ["--latent-size 3", "multiple of 4"]),
    (["--model", "ldm_fashion_class32", "--label", str(2 ** 70)], ["--label", "0..9"]),
    (["--model", "ldm_fashion_class32", "--label", "3,10"], ["--label", "0..9"]),
    (["--model", "ldm_fashion_class32", "--label", "-1"], ["--label", "0..9"]),
])
def test_sample_options_are_checked_against_the_model(argv, needles, tmp_path):
    line = one_line_error(run("sample", *argv, *QUICK, "--out", tmp_path / "s.png"), *needles)
    assert "Overflow" not in line
    assert not list(tmp_path.iterdir())
