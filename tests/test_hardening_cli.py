"""The ``ldm-lite`` console script as a user meets it: bad options and failures give one line in CLI
terms on stderr and a non-zero exit, before any work is lost and without writing anything. Each case runs the real
console script in a subprocess."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TINY_AE = ["train-ae", "--data", "shapes", "--size", "32", "--f", "8", "--ch", "8", "--num-res-blocks", "1",
           "--batch-size", "4", "--perceptual-weight", "0", "--threads", "1"]


def _script() -> list[str]:
    exe = Path(sys.executable).with_name("ldm-lite")
    return [str(exe)] if exe.exists() else ([shutil.which("ldm-lite")] if shutil.which("ldm-lite")
                                             else [sys.executable, "-m", "ldm_lite.cli"])


def run(*args, env=None, cwd=None):
    full_env = {k: v for k, v in os.environ.items() if k not in ("LDM_DEBUG", "LDM_SCALE")}
    full_env.update({"LDM_PROGRESS": "off", **(env or {})})
    return subprocess.run(_script() + [str(a) for a in args], capture_output=True, text=True, env=full_env,
                          cwd=cwd, timeout=300)


def one_line_error(res, *needles):
    """A failure: non-zero exit, no traceback, the message on one stderr line containing every needle."""
    assert res.returncode != 0, res.stdout
    assert "Traceback" not in res.stderr, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip() and not ln.startswith(("usage:", " "))
             and "Warning" not in ln and not ln.startswith("warnings.warn")]
    hits = [ln for ln in lines if all(n in ln for n in needles)]
    assert hits, f"no stderr line contains {needles}: {res.stderr}"
    return hits[0]


def test_unknown_ldm_scale_is_an_error_in_the_cli():
    res = run("list-pretrained", env={"LDM_SCALE": "huge"})
    line = one_line_error(res, "LDM_SCALE='huge'", "smoke, laptop, gpu")
    assert line.startswith("ldm-lite list-pretrained: error:")
    assert run("list-pretrained", env={"LDM_SCALE": "smoke"}).returncode == 0


@pytest.mark.parametrize("argv, needle", [
    (["train-ldm", "--threads", "0"], "--threads: must be at least 1, got 0"),
    (["train-ae", "--threads", "-2"], "--threads: must be at least 1, got -2"),
    (["upscale", "a.png", "b.png", "--model", "m", "--threads", "0"], "--threads: must be at least 1"),
    (["train-ldm", "--cond-drop-prob", "1.5"], "--cond-drop-prob: must be < 1, got 1.5"),
    (["sample", "--model", "ldm_openmoji64", "--guidance", "nan"], "--guidance: must be a finite number"),
    (["sample", "--model", "ldm_openmoji64", "--guidance", "-1"], "--guidance: must be >= 0"),
    (["sample", "--model", "ldm_openmoji64", "--eta", "nan"], "--eta: must be a finite number"),
    (["sample", "--model", "ldm_openmoji64", "--steps", "0"], "--steps: must be at least 1"),
    (["train-ldm", "--lr", "inf"], "--lr: must be a finite number"),
])
def test_bad_option_values_are_refused_before_any_work(argv, needle, tmp_path):
    res = run(*argv, cwd=tmp_path)
    assert res.returncode == 2 and needle in res.stderr, res.stderr
    assert not list(tmp_path.iterdir())


def test_sample_refuses_a_jpeg_name_and_guidance_on_an_unconditional_model(tmp_path):
    one_line_error(run("sample", "--model", "ldm_openmoji64", "--out", tmp_path / "s.jpg"), ".png", ".npz")
    one_line_error(run("sample", "--model", "ldm_openmoji64", "--guidance", "7.5", "--steps", "1", "--n", "1",
                       "--out", tmp_path / "s.png"), "unconditional")
    assert not list(tmp_path.iterdir())


def test_a_library_error_is_one_line_and_debug_shows_the_traceback(tmp_path):
    res = run(*TINY_AE, "--steps", "1", "--f", "3", cwd=tmp_path)
    one_line_error(res, "ldm-lite train-ae: error:", "power of two")
    debug = run("--debug", *TINY_AE, "--steps", "1", "--f", "3", cwd=tmp_path)
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "power of two" in debug.stderr
    also = run(*TINY_AE, "--steps", "1", "--f", "3", env={"LDM_DEBUG": "1"}, cwd=tmp_path)
    assert "Traceback" in also.stderr


def test_rerunning_into_a_used_folder_speaks_of_the_resume_option(tmp_path):
    out = tmp_path / "run"
    first = run(*TINY_AE, "--steps", "2", "--ckpt-every", "1", "--out", out)
    assert first.returncode == 0, first.stderr
    again = run(*TINY_AE, "--steps", "2", "--ckpt-every", "1", "--out", out)
    line = one_line_error(again, "--resume")
    assert "fit(" not in line and "resume=True" not in line


def test_an_unwritable_out_or_export_is_found_before_training(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    res = run(*TINY_AE, "--steps", "200", "--out", blocker / "run")
    one_line_error(res, str(blocker))
    assert "step" not in res.stdout  # nothing trained
    res = run(*TINY_AE, "--steps", "200", "--export", blocker / "ae")
    one_line_error(res, str(blocker))


def test_export_refuses_an_existing_checkpoint_unless_forced(tmp_path):
    first = run(*TINY_AE, "--steps", "1", "--export", tmp_path / "ae")
    assert first.returncode == 0, first.stderr
    before = (tmp_path / "ae.json").read_text()
    again = run(*TINY_AE, "--steps", "1", "--seed", "5", "--export", tmp_path / "ae")
    one_line_error(again, "--force")
    assert (tmp_path / "ae.json").read_text() == before  # untouched
    forced = run(*TINY_AE, "--steps", "1", "--seed", "5", "--export", tmp_path / "ae", "--force")
    assert forced.returncode == 0, forced.stderr
    assert json.loads((tmp_path / "ae.json").read_text())["recipe"]["seed"] == 5


def test_sample_pointed_at_a_run_folder_says_how_to_export(tmp_path):
    out = tmp_path / "run"
    assert run(*TINY_AE, "--steps", "1", "--ckpt-every", "1", "--out", out).returncode == 0
    res = run("sample", "--model", out, "--out", tmp_path / "s.png")
    one_line_error(res, "export")
    assert not (tmp_path / "s.png").exists()
