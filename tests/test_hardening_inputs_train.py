"""Bad input to the training commands (``train-ae``, ``train-ldm``, ``train-evaluator``) and ``execute-notebook``:
options the chosen network or dataset would not use are refused instead of being recorded in a manifest, held-out
pairs never reach training, a count of 0 is not "the default", one run writes to an ``--out`` folder at a time, and
missing captions, misspelt folders, wrong checkpoint kinds and non-notebooks are one line in CLI terms before any
work. CLI cases run the real console script in a subprocess (as test_hardening_cli.py does)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image
from test_hardening_cli import TINY_AE, _script, one_line_error, run

TINY_LDM = ["train-ldm", "--size", "16", "--first-stage", "pixel", "--train-images", "8", "--model-channels", "16",
            "--channel-mult", "1,2", "--attention-resolutions", "2", "--num-head-channels", "8",
            "--norm-num-groups", "8", "--batch-size", "4", "--lr-warmup-steps", "0", "--threads", "1"]


# ---------------------------------------------------------------- options the run would not use
@pytest.mark.parametrize("argv, needles", [
    (["train-evaluator", "--network", "fashion-classifier", "--ae", "no_such_ae"], ("--ae", "shapes-attributes")),
    (["train-evaluator", "--network", "openmoji-simclr", "--ae", "ae_kl_f4_openmoji64"], ("--ae", "shapes-attributes")),
    (["train-evaluator", "--network", "fashion-classifier", "--ae-prob", "0.5"], ("--ae-prob", "--ae")),
    (["train-evaluator", "--network", "openmoji-simclr", "--eval-n", "50"], ("--eval-n", "openmoji-simclr")),
    (["train-evaluator", "--network", "shapes-attributes", "--ae", "no_such_ae"], ("no_such_ae", "list-pretrained")),
    (["train-evaluator", "--network", "shapes-attributes", "--ae", "ldm_openmoji64"], ("--ae", "not an autoencoder")),
    ([*TINY_LDM, "--data", "openmoji", "--holdout", "purple triangle"], ("--holdout", "shapes")),
    ([*TINY_LDM, "--data", "fashion+photos", "--holdout", "purple triangle"], ("--holdout", "shapes")),
    ([*TINY_LDM, "--data", "shapes", "--sr-factor", "2"], ("--sr-factor", "--task sr")),
    ([*TINY_LDM, "--data", "shapes", "--degradation", "bsr"], ("--degradation", "--task sr")),
    ([*TINY_LDM, "--data", "shapes", "--mask-fraction", "0.5"], ("--mask-fraction", "--task inpaint")),
    ([*TINY_LDM, "--data", "shapes", "--cond", "text", "--text-encoder", "minilm"], ("--text-encoder", "text-frozen")),
    ([*TINY_LDM, "--data", "shapes", "--cond-dim", "64"], ("--cond-dim", "--cond")),
    ([*TINY_LDM, "--data", "shapes", "--cond-drop-prob", "0.2"], ("--cond-drop-prob", "--cond")),
])
def test_options_the_run_would_not_use_are_refused_before_any_work(argv, needles, tmp_path):
    res = run(*argv, "--steps", "1", "--threads", "1", "--export", tmp_path / "m", cwd=tmp_path)
    line = one_line_error(res, *needles)
    assert "PosixPath" not in line
    assert not list(tmp_path.iterdir())  # nothing trained, nothing exported


def test_holdout_pairs_never_reach_a_mixture_training_set():
    """The pairs are filtered out of every shapes part of a mixture (counted over the data the Trainer saw);
    a dataset without (colour, shape) labels refuses them."""
    from ldm_lite.data.shapes import make_caption
    from ldm_lite.experiments import LDMRecipe, load_dataset, train_ldm

    seen = {}

    def grab(trainer, logs):
        seen["data"] = trainer.dataset

    recipe = LDMRecipe(data="shapes+fashion", size=16, first_stage="pixel", train_images=400, model_channels=16,
                       channel_mult=(1, 2), attention_resolutions=(2,), num_head_channels=8, norm_num_groups=8,
                       steps=1, batch_size=4, lr_warmup_steps=0, ema_decay=None, eval_images=4,
                       holdout=("purple triangle", "green cross"))
    train_ldm(recipe, progress=False, cache_latents=False, callbacks=[grab])
    subset = seen["data"]
    mixture = subset.dataset
    shapes = mixture.parts["shapes@16"]
    indices = [i for i in subset.indices if i < len(shapes)]
    assert len(indices) == 400
    captions = [make_caption(shapes.layout(i)) for i in indices]
    assert sum(("purple triangle" in c) or ("green cross" in c) for c in captions) == 0
    plain = load_dataset("shapes", 16, "train", length=400)  # the same seed without the holdout has them
    assert sum("purple triangle" in make_caption(plain.layout(i)) for i in range(400)) > 0
    for data in ("openmoji", "fashion+photos", "photos"):
        with pytest.raises(ValueError, match="shapes"):
            load_dataset(data, 16, "train", length=8, holdout=["purple triangle"])


# ---------------------------------------------------------------- counts: 0 is not "the default"
def test_zero_or_negative_train_images_is_refused_not_read_as_the_default(tmp_path):
    from ldm_lite.experiments import LDMRecipe, load_dataset

    for data in ("shapes", "photos"):
        with pytest.raises(ValueError, match="at least 1"):
            load_dataset(data, 16, "train", length=0)
    assert len(load_dataset("shapes", 16, "train", length=None)) == 50_000  # None is the default
    with pytest.raises(ValueError, match="train_images"):
        LDMRecipe(train_images=0)
    for bad in ("0", "-3"):
        res = run(*TINY_LDM, "--data", "shapes", "--train-images", bad, "--steps", "1", cwd=tmp_path)
        assert res.returncode == 2 and f"--train-images: must be at least 1, got {bad}" in res.stderr, res.stderr
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("argv, needle", [
    ([*TINY_LDM, "--task", "inpaint", "--mask-fraction", "0"], "--mask-fraction: must be > 0"),
    ([*TINY_LDM, "--task", "inpaint", "--mask-fraction", "1.5"], "--mask-fraction: must be <"),
    ([*TINY_LDM, "--task", "sr", "--sr-factor", "3"], "--sr-factor: must be a power of two"),
    ([*TINY_LDM, "--task", "sr", "--sr-factor", "1"], "--sr-factor: must be a power of two"),
    ([*TINY_LDM, "--size", "0"], "--size: must be at least 1"),
    ([*TINY_LDM, "--model-channels", "0"], "--model-channels: must be at least 1"),
    ([*TINY_LDM, "--lr-warmup-steps", "-1"], "--lr-warmup-steps: must be at least 0"),
    ([*TINY_LDM, "--ema-decay", "1.5"], "--ema-decay: must be < 1"),
    ([*TINY_LDM, "--scale-factor", "0"], "--scale-factor: must be > 0"),
    (["train-evaluator", "--network", "fashion-classifier", "--eval-n", "-1"], "--eval-n: must be at least 1"),
    ([*TINY_AE, "--crop", "0"], "--crop: must be at least 1"),
    ([*TINY_AE, "--eval-every", "0"], "--eval-every: must be at least 1"),
    ([*TINY_AE, "--kl-weight", "-1"], "--kl-weight: must be >= 0"),
    ([*TINY_AE, "--disc-start", "-5"], "--disc-start: must be at least 0"),
])
def test_nonsense_numbers_are_refused_by_the_option_parser(argv, needle, tmp_path):
    res = run(*argv, "--steps", "1", cwd=tmp_path)
    assert res.returncode == 2 and needle in res.stderr, res.stderr
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------- one run per --out folder
def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_second_run_on_a_busy_out_folder_is_refused_and_a_dead_runs_lock_is_taken_over(tmp_path):
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k not in ("LDM_DEBUG", "LDM_SCALE")}
    first = subprocess.Popen(_script() + [*TINY_AE, "--steps", "100000", "--ckpt-every", "1", "--out", str(out)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             env={**env, "LDM_PROGRESS": "off"})
    try:
        deadline = time.time() + 240
        while not (out / "latest.json").exists():  # the first run is writing checkpoints
            assert first.poll() is None, first.stderr.read()
            assert time.time() < deadline, "the first run wrote no checkpoint"
            time.sleep(0.2)
        for extra in ([], ["--resume"]):
            res = run(*TINY_AE, "--steps", "2", "--ckpt-every", "1", "--out", out, *extra)
            line = one_line_error(res, f"another run (pid {first.pid}) is writing to --out", str(out.name),
                                  "choose another --out")
            assert "resume" not in line.split("error:", 1)[1]
        assert first.poll() is None  # the running one was not disturbed
    finally:
        first.kill()
        first.wait()
    # the killed run left its lock behind; a new run on the folder takes it over, and removes only temp folders
    # of dead processes (this test's own process is alive)
    ckdir = out / "checkpoints"
    dead, live = ckdir / f".tmp-step_99999999-{_dead_pid()}", ckdir / f".tmp-step_99999999-{os.getpid()}"
    dead.mkdir()
    live.mkdir()
    step = json.loads((out / "latest.json").read_text())["step"]
    res = run(*TINY_AE, "--steps", step + 1, "--ckpt-every", "1", "--out", out, "--resume")
    assert res.returncode == 0, res.stderr
    assert json.loads((out / "latest.json").read_text())["step"] == step + 1
    assert not dead.exists() and live.is_dir()
    assert not [p for p in out.iterdir() if "lock" in p.name]  # released at the end


# ---------------------------------------------------------------- clear errors instead of raw exceptions
def _image_folder(root, n=8):
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / f"img{i}.png")
    return root


def test_text_conditioning_on_a_folder_needs_captions_and_says_how_to_give_them(tmp_path):
    folder = _image_folder(tmp_path / "imgs")
    res = run(*TINY_LDM, "--data", folder, "--cond", "text", "--steps", "1", "--out", tmp_path / "run")
    line = one_line_error(res, "caption", "--captions", ".jsonl")
    assert "KeyError" not in line
    assert not (tmp_path / "run").exists()
    caps = tmp_path / "caps.jsonl"
    caps.write_text("".join(json.dumps({"file": f"img{i}.png", "caption": f"picture number {i}"}) + "\n"
                            for i in range(8)))
    res = run(*TINY_LDM, "--data", folder, "--cond", "text", "--captions", caps, "--steps", "1", "--cond-dim", "16",
              "--cond-depth", "1", "--export", tmp_path / "m")
    assert res.returncode == 0, res.stderr
    assert json.loads((tmp_path / "m.json").read_text())["recipe"]["captions"] == str(caps)
    one_line_error(run(*TINY_LDM, "--data", "shapes", "--cond", "text", "--captions", caps, "--steps", "1"),
                   "--captions", "folder")
    one_line_error(run(*TINY_LDM, "--data", folder, "--captions", caps, "--steps", "1"), "--captions", "--cond text")


@pytest.mark.parametrize("command", [TINY_LDM, TINY_AE])
@pytest.mark.parametrize("data", ["data/shapess", "./my_images"])
def test_a_misspelt_data_folder_is_named_with_the_dataset_names(command, data, tmp_path):
    res = run(*command, "--data", data, "--steps", "1", "--out", tmp_path / "run", cwd=tmp_path)
    line = one_line_error(res, data, "does not exist", "openmoji, shapes, fashion, photos")
    assert "--export" not in line
    assert not list(tmp_path.iterdir())


def test_execute_notebook_refuses_json_that_is_not_a_notebook(tmp_path):
    for name, text in (("a.ipynb", '{"cells": 3}'), ("b.ipynb", "[1, 2]"), ("c.ipynb", "not json at all")):
        (tmp_path / name).write_text(text)
        res = run("execute-notebook", tmp_path / name)
        one_line_error(res, name, "not a Jupyter notebook")
        assert (tmp_path / name).read_text() == text


@pytest.mark.parametrize("argv, needles", [
    ([*TINY_LDM[:3], "--first-stage", "ldm_openmoji64"], ("--first-stage ldm_openmoji64", "not an autoencoder")),
    ([*TINY_LDM, "--init-from", "ae_kl_f4_openmoji64"], ("--init-from ae_kl_f4_openmoji64", "not an LDM")),
    ([*TINY_AE, "--init-from", "ldm_openmoji64"], ("--init-from ldm_openmoji64", "not an autoencoder")),
])
def test_a_wrong_checkpoint_kind_is_named_in_cli_terms(argv, needles, tmp_path):
    res = run(*argv, "--steps", "1", "--out", tmp_path / "run", cwd=tmp_path)
    line = one_line_error(res, *needles)
    assert "PosixPath" not in line and "init_from=" not in line
    assert not list(tmp_path.iterdir())


def test_an_ldm_size_its_models_cannot_divide_is_refused_before_encoding(tmp_path):
    res = run(*TINY_LDM, "--data", "shapes", "--size", "20", "--first-stage", "ae_kl_f4_shapes_fashion", "--steps", "1",
              "--out", tmp_path / "run", cwd=tmp_path)
    one_line_error(res, "image size 20 is not a multiple of 8", "f=4", "use e.g. size 16")
    assert not list(tmp_path.iterdir())  # no --out folder left behind either
