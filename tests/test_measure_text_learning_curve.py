"""data/measurements/measure_text_learning_curve.py: a tiny text model trained 2 steps (a checkpoint per step) is
measured from its run folder and from a copy standing for stage 2; the file has the schema, a second call
skips what is measured, stage-2 steps count after the offset, and the points are paired (same noise)."""

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ldm_lite.autoencoder import AutoencoderKL
from ldm_lite.experiments import LDMRecipe, train_ldm

SCRIPT = Path(__file__).resolve().parents[1] / "data" / "measurements" / "measure_text_learning_curve.py"
TINY = dict(data="shapes", size=16, train_images=8, model_channels=16, channel_mult=(1, 2),
            attention_resolutions=(2,), num_head_channels=8, norm_num_groups=8, steps=2, batch_size=4,
            lr_warmup_steps=0, ema_decay=0.9, eval_images=4, cond="text", cond_dim=16, cond_depth=1)
FAST = ["--captions", "4", "--ddim-steps", "2", "--batch", "3"]  # two batches: seeds 0 and 3


@pytest.fixture(scope="module")
def lc():
    spec = importlib.util.spec_from_file_location("measure_text_learning_curve", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Stage 1: a run folder with checkpoints at steps 1 and 2 (and its export); stage 2: a copy of it."""
    root = tmp_path_factory.mktemp("text_lc")
    torch.manual_seed(0)
    ae = AutoencoderKL(f=2, ch=8, num_res_blocks=1, z_channels=4, use_mid_attn=False).eval()
    train_ldm(LDMRecipe(**dict(TINY, cond=None)), first_stage=ae, progress=False, export=str(root / "ae"),
              command="test")
    recipe = LDMRecipe(**TINY, first_stage=str(root / "ae_first_stage"))
    train_ldm(recipe, out_dir=str(root / "s1"), ckpt_every=1, progress=False, export=str(root / "s1_export"),
              command="test")
    shutil.copytree(root / "s1", root / "s2", ignore=shutil.ignore_patterns("run.lock"))
    return root


def _count_sampling(monkeypatch, lc):
    calls = []
    original = lc.sample

    def counting(model, captions, *a, **k):
        calls.append(len(captions))
        return original(model, captions, *a, **k)

    monkeypatch.setattr(lc, "sample", counting)
    return calls


def test_schema_resume_and_offset(lc, runs, monkeypatch, capsys):
    out = runs / "curve.json"
    calls = _count_sampling(monkeypatch, lc)
    base = ["--run", str(runs / "s1"), "--run", str(runs / "s2"), "--offset", "2", "--out", str(out), *FAST]
    assert lc.main(base + ["--steps", "1,3"]) == 0
    assert calls == [4, 4]
    data = json.loads(out.read_text())
    assert data["format"] == lc.FORMAT
    p = data["protocol"]
    assert p["captions"]["n"] == 4 and p["sampling"]["steps"] == 2 and p["sampling"]["guidance_scale"] == 3.0
    assert p["sampling"]["eta"] == 0.0 and p["sampling"]["batch_generator_seeds"] == [0, 3]
    ceiling = data["ceiling"]
    assert ceiling["attributes"]["n"] == 4 and ceiling["attributes"]["value"] == 1.0  # real renders read right
    assert [(q["source"].split("/")[-1], q["step"], q["offset"], q["total_step"]) for q in data["points"]] == \
        [("s1", 1, 0, 1), ("s2", 1, 2, 3)]
    for q in data["points"]:
        for key in ("attributes", "attributes_with_size", "floor_shuffled_captions"):
            s = q[key]
            assert s["n"] == 4 and 0 <= s["ci95"][0] <= s["value"] <= s["ci95"][1] <= 1
        assert sum(v["n"] for v in q["per_count"].values()) == 4
        two = q["relation_all_two_object_images"]
        if two is not None:
            assert two["n"] == int(p["captions"]["per_count"]["2"])
        assert len(q["per_image"]["attributes"]) == 4
        assert q["per_image"]["attributes"].count("1") / 4 == q["attributes"]["value"]
        assert q["torch_threads"] == 1 and q["command"].startswith("python data/measurements/")
        assert q["date"] and q["wall_time_s"]["total"] >= q["wall_time_s"]["sampling"] > 0
        assert "checkpoints/step_0000000" in q["checkpoint"]

    # again with more steps: the two measured points are skipped, 2 and 4 are added, 5 does not exist yet
    capsys.readouterr()
    assert lc.main(base + ["--steps", "1,2,3,4,5"]) == 0
    assert calls == [4, 4, 4, 4]
    printed = capsys.readouterr().out
    assert "step 5: no checkpoint yet" in printed and printed.count("skipped") == 2
    data2 = json.loads(out.read_text())
    assert [q["total_step"] for q in data2["points"]] == [1, 2, 3, 4]
    assert data2["points"][0] == data["points"][0] and data2["ceiling"] == data["ceiling"]
    # stage 2 step 2 is the same checkpoint as stage 1 step 2: the same noise gives the same outcomes
    assert data2["points"][1]["per_image"] == data2["points"][3]["per_image"]

    assert lc.main(base + ["--steps", "1,2,3,4"]) == 0  # nothing left to do
    assert calls == [4, 4, 4, 4]
    assert all(len(q["ema_sha256"]) == 64 for q in data2["points"])
    # a later stage that has not started yet: reported, nothing measured
    capsys.readouterr()
    assert lc.main(["--run", str(runs / "s1"), "--run", str(runs / "s3"), "--offset", "4", "--steps", "1,5",
                    "--out", str(out), *FAST]) == 0
    printed = capsys.readouterr().out
    assert "s3: no such folder (yet)" in printed and "step 5: no checkpoint yet" in printed
    assert calls == [4, 4, 4, 4]
    with pytest.raises(SystemExit, match="another protocol"):
        lc.main(base[:-len(FAST)] + ["--captions", "5", "--ddim-steps", "2", "--batch", "3", "--steps", "1"])

    # an export: its manifest's steps plus the offset after it
    assert lc.main(["--model", str(runs / "s1_export"), "--offset", "10", "--out", str(out), *FAST]) == 0
    model_points = [q for q in json.loads(out.read_text())["points"] if q["kind"] == "model"]
    assert [(q["step"], q["total_step"]) for q in model_points] == [(2, 12)]
    assert len(model_points[0]["weights_sha256"]) == 64
    assert lc.main(["--model", str(runs / "s1_export"), "--offset", "10", "--out", str(out), *FAST]) == 0
    assert len(calls) == 5


def test_checkpoint_model_has_the_ema_weights_and_samples_are_paired(lc, runs):
    folder = runs / "s1" / "checkpoints" / "step_00000002"
    model = lc.load_checkpoint_model(folder)
    ema = load_file(str(folder / "ema.safetensors"))
    raw = load_file(str(folder / "model.safetensors"))
    own = {**{f"unet.{k}": v for k, v in model.unet.state_dict().items()},
           **{f"cond_stage.{k}": v for k, v in model.cond_stage.state_dict().items()}}
    for k, v in ema.items():
        torch.testing.assert_close(own[k], v, rtol=0, atol=0, msg=k)
    assert any(not torch.equal(raw[k], v) for k, v in ema.items())  # EMA differs from the raw weights
    assert float(model.scale_factor) == float(raw["scale_factor"])  # scale_factor estimated in training
    caps, _ = lc.fixed_captions(4)
    a = lc.sample(model, caps, 2, 3)
    b = lc.sample(lc.load_checkpoint_model(runs / "s2" / "checkpoints" / "step_00000002"), caps, 2, 3)
    c = lc.sample(lc.load_checkpoint_model(runs / "s1" / "checkpoints" / "step_00000001"), caps, 2, 3)
    assert a.shape == (4, 3, 16, 16) and torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(lc.sample(model, caps[:3], 2, 3), a[:3])  # batch 0's noise does not depend on the rest


def test_paired_accuracy_difference(lc):
    a = dict(per_image=dict(attributes="1101", relation="1-01"))
    b = dict(per_image=dict(attributes="0101", relation="0-11"))
    d = lc.paired_accuracy_difference(a, b, n_boot=200)
    assert d["value"] == 0.25 and d["n"] == 4 and d["ci"][0] <= 0.25 <= d["ci"][1]
    r = lc.paired_accuracy_difference(a, b, key="relation", comparisons=5, n_boot=200)
    assert r["n"] == 3 and r["value"] == 0.0 and r["level"] == pytest.approx(0.99)
    with pytest.raises(ValueError, match="not paired"):
        lc.paired_accuracy_difference(a, dict(per_image=dict(attributes="01")))
