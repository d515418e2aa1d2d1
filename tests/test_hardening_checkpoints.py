"""Checkpoints that cannot silently go wrong: exports that refuse to replace a checkpoint, LDMs that refuse a
replaced first stage, resumes that refuse changed settings, corrupt / NaN checkpoints, unwritable outputs found
before training, run folders passed where an export is expected, and real ``kill -9`` during checkpoint writes."""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import time
from pathlib import Path

import pytest
import safetensors.torch
import torch
import torch.nn.functional as F
from torch import nn

import ldm_lite.train.checkpoint as checkpoint_mod
from ldm_lite.autoencoder.model import AutoencoderKL
from ldm_lite.io import sha256_file
from ldm_lite.pretrained import (
    PRETRAINED_DIR, CorruptCheckpointError, ExistingExportError, FirstStageMismatchError, list_pretrained,
    load_autoencoder, load_ldm, load_manifest, load_state_dict, save_pretrained,
)
from ldm_lite.train import CheckpointError, NonFiniteLossError, ResumeMismatchError, TrainConfig, Trainer

pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------------------------------
# A tiny module: noise in training_step (the RNG matters for exact resume); optionally an infinite gradient
# with a finite loss at one step (the weights turn NaN without the loss noticing).
# --------------------------------------------------------------------------------------------------
class Tiny(nn.Module):
    def __init__(self, lr=1e-2, inf_grad_at=None, sleep=0.0, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.lin = nn.Linear(4, 4)
        self.lr, self.inf_grad_at, self.sleep = lr, inf_grad_at, sleep
        self.steps_run = 0

    def configure_optimizers(self):
        return {"opt": torch.optim.Adam(self.parameters(), lr=self.lr)}

    def training_step(self, batch, step, name):
        self.steps_run += 1
        if self.sleep:
            time.sleep(self.sleep)
        x = batch[0]
        loss = F.mse_loss(self.lin(x + 0.1 * torch.randn_like(x)), x)
        if self.inf_grad_at == step:  # sqrt at 0: value 0, gradient inf
            loss = loss + torch.sqrt((self.lin.weight - self.lin.weight.detach()).sum().abs())
        return loss, {}


def data(n=16):
    return torch.utils.data.TensorDataset(torch.randn(n, 4, generator=torch.Generator().manual_seed(3)))


def config(out=None, **kw):
    base = dict(max_steps=4, batch_size=4, progress=False, device="cpu", out_dir=None if out is None else str(out),
                ckpt_every=2 if out is not None else None, grad_clip=None, ema_decay=0.9)
    base.update(kw)
    return TrainConfig(**base)


def weights(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def flip_last_byte(path: Path):
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))


# --------------------------------------------------------------------------------------------------
# Case 1a: exports refuse an existing checkpoint unless force=True -- checked before any training
# --------------------------------------------------------------------------------------------------
AE_TINY = dict(data="shapes", size=32, f=4, ch=8, num_res_blocks=1, z_channels=3, steps=2, batch_size=4,
               perceptual_weight=0.0, eval_images=8)


def _no_training(*a, **k):
    raise AssertionError("training started although the export target was taken")


def test_save_pretrained_refuses_to_replace_unless_forced(tmp_path):
    save_pretrained(nn.Linear(2, 2), tmp_path / "m", dict(kind="test"))
    before = sha256_file(tmp_path / "m.safetensors")
    with pytest.raises(ExistingExportError, match=r"m\.json exists; choose another export .*force=True"):
        save_pretrained(nn.Linear(3, 3), tmp_path / "m", dict(kind="test"))
    assert sha256_file(tmp_path / "m.safetensors") == before
    save_pretrained(nn.Linear(3, 3), tmp_path / "m", dict(kind="test"), force=True)
    assert load_state_dict(tmp_path / "m")["weight"].shape == (3, 3)
    assert load_manifest(tmp_path / "m")["weights_sha256"] == sha256_file(tmp_path / "m.safetensors")
    bad = nn.Linear(2, 2)
    with torch.no_grad():
        bad.weight[0, 0] = 1e6  # overflows float16
    with pytest.raises(ValueError, match="NaN or inf"):
        save_pretrained(bad, tmp_path / "overflow", dict(kind="test"))


def test_train_autoencoder_export_refuses_existing_before_training(tmp_path, monkeypatch):
    from ldm_lite import experiments
    from ldm_lite.experiments import AERecipe, train_autoencoder

    save_pretrained(AutoencoderKL(f=2, ch=8, num_res_blocks=1, z_channels=4, use_mid_attn=False), tmp_path / "ae",
                    dict(kind="autoencoder", config={}))
    with monkeypatch.context() as m:
        m.setattr(experiments, "load_dataset", _no_training)
        with pytest.raises(ExistingExportError, match="ae.json exists.*force=True to replace it"):
            train_autoencoder(AERecipe(**AE_TINY), progress=False, export=str(tmp_path / "ae"))
    out = train_autoencoder(AERecipe(**AE_TINY), progress=False, export=str(tmp_path / "ae"), force=True)
    assert load_autoencoder(tmp_path / "ae").config.f == 4 and out["weights"].endswith("ae.safetensors")


def test_train_evaluator_export_refuses_existing_before_training(tmp_path, monkeypatch):
    from ldm_lite import evaluator_training
    from ldm_lite.evaluator_training import EvaluatorRecipe, train_evaluator

    save_pretrained(nn.Linear(2, 2), tmp_path / "ev", dict(kind="evaluator"))
    monkeypatch.setattr(evaluator_training, "build_evaluator", _no_training)
    with pytest.raises(ExistingExportError, match="ev.json exists"):
        train_evaluator(EvaluatorRecipe("shapes-attributes", steps=1, batch_size=2), export=str(tmp_path / "ev"),
                        progress=False)
    with pytest.raises(OSError, match="blocker is a file, not a folder"):  # an export path that cannot be written
        (tmp_path / "blocker").write_text("a file, not a folder")
        train_evaluator(EvaluatorRecipe("shapes-attributes", steps=1, batch_size=2),
                        export=str(tmp_path / "blocker" / "ev"), progress=False)


# --------------------------------------------------------------------------------------------------
# Case 1b: an LDM refuses a first stage other than the one it was trained on
# --------------------------------------------------------------------------------------------------
LDM_TINY = dict(data="shapes", size=16, train_images=8, model_channels=16, channel_mult=(1, 2),
                attention_resolutions=(2,), num_head_channels=8, norm_num_groups=8, steps=2, batch_size=4,
                lr_warmup_steps=0, ema_decay=0.9, eval_images=4)


def tiny_ae(f=2, seed=0):
    torch.manual_seed(seed)
    return AutoencoderKL(f=f, ch=8, num_res_blocks=1, z_channels=4, use_mid_attn=False).eval()


@pytest.fixture(scope="module")
def tiny_ldm(tmp_path_factory):
    from ldm_lite.experiments import LDMRecipe, train_ldm

    root = tmp_path_factory.mktemp("ldm")
    train_ldm(LDMRecipe(**LDM_TINY), first_stage=tiny_ae(), progress=False, export=str(root / "tiny_ldm"),
              command="test")
    return root


def _copy_export(src: Path, dst: Path):
    dst.mkdir()
    for p in src.iterdir():
        if p.is_file():
            (dst / p.name).write_bytes(p.read_bytes())
    return dst


def test_ldm_export_records_and_checks_its_first_stage(tiny_ldm, tmp_path, monkeypatch):
    from ldm_lite import experiments
    from ldm_lite.experiments import LDMRecipe, train_ldm

    man = load_manifest(tiny_ldm / "tiny_ldm")
    fs_file = tiny_ldm / "tiny_ldm_first_stage.safetensors"
    assert man["first_stage_f"] == 2 and man["first_stage_channels"] == 4
    assert man["first_stage_sha256"] == sha256_file(fs_file)
    load_ldm(tiny_ldm / "tiny_ldm")  # untouched: loads

    # the bug: an f=8 (here f=4) autoencoder exported over the first stage's name; the LDM used to decode through it
    root = _copy_export(tiny_ldm, tmp_path / "a")
    save_pretrained(tiny_ae(f=4), root / "tiny_ldm_first_stage",
                    dict(kind="autoencoder", config=tiny_ae(f=4).config.to_dict()), force=True)
    with pytest.raises(FirstStageMismatchError,
                       match=r"f=4 instead of f=2 .*2 x the trained size.*Restore the original"):
        load_ldm(root / "tiny_ldm")
    # same shape, other weights: only the hash can tell
    root = _copy_export(tiny_ldm, tmp_path / "b")
    save_pretrained(tiny_ae(seed=5), root / "tiny_ldm_first_stage",
                    dict(kind="autoencoder", config=tiny_ae().config.to_dict()), force=True)
    with pytest.raises(FirstStageMismatchError, match="other weights"):
        load_ldm(root / "tiny_ldm")
    # ... unless the new weights are a decoder-only fine-tune of the recorded ones (same encoder, same latents)
    for part, loads in (("decoder", True), ("all", False)):
        root = _copy_export(tiny_ldm, tmp_path / f"ft_{part}")
        save_pretrained(tiny_ae(seed=5), root / "tiny_ldm_first_stage",
                        dict(kind="autoencoder", config=tiny_ae().config.to_dict(),
                             init_from=dict(name="tiny_ldm_first_stage", sha256=man["first_stage_sha256"],
                                            train_part=part)), force=True)
        if loads:
            load_ldm(root / "tiny_ldm")
        else:
            with pytest.raises(FirstStageMismatchError, match="other weights"):
                load_ldm(root / "tiny_ldm")
    # set_first_stage: an LDM switches to a decoder-only fine-tune saved beside it; anything else is refused untouched
    from ldm_lite.pretrained import set_first_stage

    root = _copy_export(tiny_ldm, tmp_path / "switch")
    for part in ("decoder", "all"):
        save_pretrained(tiny_ae(seed=6), root / f"ae_{part}",
                        dict(kind="autoencoder", config=tiny_ae().config.to_dict(),
                             init_from=dict(name="tiny_ldm_first_stage", sha256=man["first_stage_sha256"],
                                            train_part=part)))
    before = (root / "tiny_ldm.json").read_text()
    with pytest.raises(FirstStageMismatchError, match="ae_all.json is not a decoder-only fine-tune of "
                                                      "'tiny_ldm_first_stage'.*Nothing was changed.*--train-part decoder"):
        set_first_stage(root / "tiny_ldm", root / "ae_all")
    assert (root / "tiny_ldm.json").read_text() == before
    with pytest.raises(ValueError, match="not an LDM"):
        set_first_stage(root / "ae_decoder", root / "ae_decoder")
    new = set_first_stage(root / "tiny_ldm", root / "ae_decoder")
    assert new["first_stage"] == "ae_decoder" and new["first_stage_trained_on"] == "tiny_ldm_first_stage"
    assert new["first_stage_sha256"] == man["first_stage_sha256"] and "measured_with_first_stage" not in new
    switched = load_ldm(root / "tiny_ldm")
    # image-space numbers in a manifest were decoded by the old first stage: the switch records which one
    m = json.loads(before)
    (root / "tiny_ldm.json").write_text(json.dumps(dict(m, measured={"psnr": 20.0})))
    assert set_first_stage(root / "tiny_ldm", root / "ae_decoder")["measured_with_first_stage"] == "tiny_ldm_first_stage"
    z = torch.randn(1, switched.first_stage.embed_dim, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(switched.first_stage.decode(z), load_autoencoder(root / "ae_decoder").decode(z))

    # an LDM manifest from before the record (the shipped ones were): f and channels come from its ldm section
    root = _copy_export(tiny_ldm, tmp_path / "c")
    legacy = {k: v for k, v in man.items() if not k.startswith("first_stage_")}
    (root / "tiny_ldm.json").write_text(json.dumps(legacy))
    save_pretrained(tiny_ae(f=4), root / "tiny_ldm_first_stage",
                    dict(kind="autoencoder", config=tiny_ae(f=4).config.to_dict()), force=True)
    with pytest.raises(FirstStageMismatchError, match="f=4 instead of f=2"):
        load_ldm(root / "tiny_ldm")
    with pytest.raises(FirstStageMismatchError, match="f=4 instead of f=2"):  # a module passed in is checked too
        load_ldm(tiny_ldm / "tiny_ldm", first_stage=tiny_ae(f=4))

    # train_ldm refuses an existing export (and its _first_stage companion) before loading any data
    monkeypatch.setattr(experiments, "load_dataset", _no_training)
    with pytest.raises(ExistingExportError, match="tiny_ldm.json exists"):
        train_ldm(LDMRecipe(**LDM_TINY), first_stage=tiny_ae(), progress=False, export=str(tiny_ldm / "tiny_ldm"))
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x_first_stage.json").write_text("{}")
    with pytest.raises(ExistingExportError, match="x_first_stage.json exists"):
        train_ldm(LDMRecipe(**LDM_TINY), first_stage=tiny_ae(), progress=False, export=str(tmp_path / "d" / "x"))


@pytest.mark.parametrize("name", [m["name"] for m in list_pretrained() if m.get("kind") == "ldm"])
def test_shipped_ldm_manifests_record_their_first_stage(name):
    man = load_manifest(name)
    fs = load_manifest(man["first_stage"])
    cfg = man["config"]
    assert man["first_stage_f"] == fs["config"]["f"] == cfg["first_stage"]["f"] == cfg["first_stage"]["autoencoder"]["f"]
    assert (man["first_stage_channels"] == fs["config"]["embed_dim"] == cfg["unet"]["out_channels"]
            == cfg["first_stage"]["latent_channels"])
    from ldm_lite.pretrained import _decoder_fine_tune_of

    assert (man["first_stage_sha256"] == sha256_file(PRETRAINED_DIR / fs["weights"])
            or _decoder_fine_tune_of(PRETRAINED_DIR / man["first_stage"], man["first_stage_sha256"]))
    load_ldm(name)  # and so it loads


@pytest.mark.parametrize("name", [m["name"] for m in list_pretrained()])
def test_shipped_manifest_commands_rebuild_the_file_under_its_own_name(name):
    """A manifest's "command" is how a reader re-creates this file: it must export under this file's name."""
    import re
    import shlex

    cmd = load_manifest(name)["command"]
    assert cmd.startswith("ldm-lite "), cmd
    exports = re.findall(r"--export (\S+)", cmd)
    assert [Path(shlex.split(e)[0]).name for e in exports] == [name], f"{name}: command exports {exports}"


# --------------------------------------------------------------------------------------------------
# Case 5: resume refuses settings that break an exact continuation; NaN weights are never saved or resumed
# --------------------------------------------------------------------------------------------------
def test_resume_refuses_changed_settings_naming_old_and_new(tmp_path):
    Trainer(Tiny(), data(), config(tmp_path)).fit()
    cases = [
        (dict(module=Tiny(lr=2e-2)), r"lr of optimiser 'opt': saved 0\.01, now 0\.02"),
        (dict(cfg=dict(batch_size=2)), "batch_size: saved 4, now 2"),
        (dict(cfg=dict(seed=1)), "seed: saved 0, now 1"),
        (dict(dataset=data(12)), "dataset length: saved 16, now 12"),
        (dict(cfg=dict(max_steps=2)), r"(?s)max_steps: saved '4 steps already done', now 2.*--steps 4 or more"),
    ]
    for change, pattern in cases:
        t = Trainer(change.get("module", Tiny()), change.get("dataset", data()),
                    config(tmp_path, **change.get("cfg", {})))
        with pytest.raises(ResumeMismatchError, match=pattern) as info:
            t.fit(resume=True)
        assert "new --out folder" in str(info.value) and "allow_changes=True" in str(info.value)
        assert t.step == 0 and t.module.steps_run == 0  # nothing loaded, nothing trained

    # harmless: a longer run continues, with a warning naming the change
    with pytest.warns(UserWarning, match=r"max_steps: 4 -> 6"):
        hist = Trainer(Tiny(), data(), config(tmp_path, max_steps=6)).fit(resume=True)
    assert hist[-1]["step"] == 6
    # knowingly: the new learning rate is used (it used to be overwritten by the saved optimiser state)
    with pytest.warns(UserWarning, match="lr of optimiser 'opt'"):
        hist = Trainer(Tiny(lr=5e-3), data(), config(tmp_path, max_steps=7)).fit(resume=True, allow_changes=True)
    assert hist[-1]["lr/opt"] == 5e-3


def test_nan_weights_are_not_saved_and_not_resumed(tmp_path):
    with pytest.raises(NonFiniteLossError,
                       match=r"refusing to save a checkpoint at step 3: .*NaN or inf .*lin\.") as info:
        Trainer(Tiny(inf_grad_at=2), data(), config(tmp_path, max_steps=6, ckpt_every=1)).fit()
    assert info.value.checkpoint == str(tmp_path / "checkpoints" / "step_00000002")
    assert json.loads((tmp_path / "latest.json").read_text())["step"] == 2
    assert not (tmp_path / "checkpoints" / "step_00000003").exists()

    # a checkpoint whose weights are NaN (with a consistent sha256 record) is refused on resume
    folder = tmp_path / "checkpoints" / "step_00000002"
    sd = safetensors.torch.load_file(folder / "model.safetensors")
    sd["lin.bias"][0] = float("nan")
    safetensors.torch.save_file(sd, folder / "model.safetensors")
    state = json.loads((folder / "trainer.json").read_text())
    state["files"]["model.safetensors"] = sha256_file(folder / "model.safetensors")
    (folder / "trainer.json").write_text(json.dumps(state))
    with pytest.raises(CheckpointError, match=r"model\.safetensors holds NaN / inf weights \(lin\.bias\).*step 1"):
        Trainer(Tiny(), data(), config(tmp_path, max_steps=6, ckpt_every=1)).fit(resume=True)


# --------------------------------------------------------------------------------------------------
# Case 8: corrupt / truncated files name themselves and the checkpoint to use instead
# --------------------------------------------------------------------------------------------------
def test_corrupt_checkpoint_files_are_named_with_the_previous_checkpoint(tmp_path):
    Trainer(Tiny(), data(), config(tmp_path)).fit()  # step_2 and step_4
    step4 = tmp_path / "checkpoints" / "step_00000004"
    prev = str(tmp_path / "checkpoints" / "step_00000002")
    pristine = {p.name: p.read_bytes() for p in step4.iterdir()}

    def resume():
        return Trainer(Tiny(), data(), config(tmp_path, max_steps=6)).fit(resume=True)

    for name in ("model.safetensors", "ema.safetensors", "optim.pt", "rng.json"):
        flip_last_byte(step4 / name)  # loads without complaint unless the hash is checked
        with pytest.raises(CheckpointError,
                           match=rf"{name} does not match the sha256 .*previous checkpoint, step 2") as info:
            resume()
        assert prev in str(info.value) and info.value.path == str(step4 / name)
        (step4 / name).write_bytes(pristine[name])
    with pytest.raises(CheckpointError, match=r"model\.safetensors does not match the sha256"):
        flip_last_byte(step4 / "model.safetensors")
        Trainer.load_weights(tmp_path, Tiny())
    (step4 / "model.safetensors").write_bytes(pristine["model.safetensors"])

    # truncated files of a checkpoint without the sha256 record (older format): the reader's error, wrapped
    state = json.loads(pristine["trainer.json"])
    (step4 / "trainer.json").write_text(json.dumps({k: v for k, v in state.items() if k != "files"}))
    for name, what in (("model.safetensors", "corrupt or truncated"), ("optim.pt", "corrupt or truncated"),
                       ("rng.json", "not valid JSON")):
        (step4 / name).write_bytes(pristine[name][: len(pristine[name]) // 2])
        with pytest.raises(CheckpointError, match=rf"{name} .*{what}.*previous checkpoint, step 2"):
            resume()
        (step4 / name).write_bytes(pristine[name])
    (step4 / "trainer.json").write_text(pristine["trainer.json"].decode()[:40])
    with pytest.raises(CheckpointError, match=r"trainer\.json is corrupt or truncated .*step 2"):
        resume()
    (step4 / "trainer.json").write_bytes(pristine["trainer.json"])
    (tmp_path / "latest.json").write_text('{"step": 4, "checkp')
    with pytest.raises(CheckpointError, match=r"latest\.json is corrupt .*newest complete checkpoint, step 4"):
        resume()


def test_corrupt_exports_name_the_file_and_the_fix(tmp_path):
    from ldm_lite.autoencoder.convert import load_compvis_first_stage

    ae = tiny_ae()
    save_pretrained(ae, tmp_path / "ae", dict(kind="autoencoder", config=ae.config.to_dict()))
    good = {s: (tmp_path / f"ae{s}").read_bytes() for s in (".json", ".safetensors")}
    flip_last_byte(tmp_path / "ae.safetensors")
    with pytest.raises(CorruptCheckpointError, match=r"ae\.safetensors does not match the sha256 .*export it again"):
        load_autoencoder(tmp_path / "ae")
    man = {k: v for k, v in json.loads(good[".json"]).items() if k != "weights_sha256"}
    (tmp_path / "ae.json").write_text(json.dumps(man))
    (tmp_path / "ae.safetensors").write_bytes(good[".safetensors"][:100])
    with pytest.raises(CorruptCheckpointError, match=r"ae\.safetensors is corrupt or truncated"):
        load_autoencoder(tmp_path / "ae")
    (tmp_path / "ae.json").write_text(good[".json"].decode()[:50])
    with pytest.raises(CorruptCheckpointError, match=r"ae\.json is corrupt or truncated \(not valid JSON"):
        load_manifest(tmp_path / "ae")

    torch.save({"state_dict": ae.state_dict()}, tmp_path / "kl.ckpt")
    (tmp_path / "kl.ckpt").write_bytes((tmp_path / "kl.ckpt").read_bytes()[:500])
    with pytest.raises(RuntimeError, match=r"kl\.ckpt is corrupt or truncated"):
        load_compvis_first_stage(tmp_path / "kl.ckpt", ae.config)
    (tmp_path / "kl.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(RuntimeError, match=r"kl\.safetensors is corrupt or truncated"):
        load_compvis_first_stage(tmp_path / "kl.safetensors", ae.config)


# --------------------------------------------------------------------------------------------------
# Case 9: an output that cannot be written is found before training
# --------------------------------------------------------------------------------------------------
def test_unwritable_out_dir_and_export_fail_before_training(tmp_path, monkeypatch):
    from ldm_lite import experiments
    from ldm_lite.experiments import AERecipe, train_autoencoder

    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder should be")
    t = Trainer(Tiny(), data(), config(blocker / "run", ckpt_every=None))
    with pytest.raises(PermissionError, match=r"out_dir .*blocker/run.*nothing was trained"):
        t.fit()
    assert t.module.steps_run == 0  # it used to train every step, then fail at the first save
    with pytest.raises(NotADirectoryError, match="blocker is a file, not a folder"):
        Trainer(Tiny(), data(), config(blocker, ckpt_every=None)).fit()

    monkeypatch.setattr(experiments, "load_dataset", _no_training)
    with pytest.raises(PermissionError, match=r"--out folder .*blocker/run"):
        train_autoencoder(AERecipe(**AE_TINY), out_dir=str(blocker / "run"), progress=False)
    with pytest.raises(NotADirectoryError, match=r"folder of the export ae .*blocker is a file"):
        train_autoencoder(AERecipe(**AE_TINY), export=str(blocker / "ae"), progress=False)


# --------------------------------------------------------------------------------------------------
# Case 10: a run folder or a bare weights file where an export is expected
# --------------------------------------------------------------------------------------------------
def test_loading_a_run_folder_says_how_to_export_it(tmp_path):
    from ldm_lite.experiments import AERecipe, train_autoencoder

    run = tmp_path / "run"
    cmd = f"ldm-lite train-ae --data shapes --size 32 --steps 2 --out {run}"
    train_autoencoder(AERecipe(**AE_TINY), out_dir=str(run), progress=False, command=cmd)
    step = run / "checkpoints" / "step_00000002"
    for where in (run, step, step / "model.safetensors"):
        with pytest.raises(FileNotFoundError, match="is a training run folder") as info:
            load_autoencoder(where)
        assert f"`ldm-lite train-ae --data shapes --size 32 --out {run} --steps 2 --resume --export NAME`" \
            in str(info.value)
    # ... and that really exports it, training nothing more
    out = train_autoencoder(AERecipe(**AE_TINY), out_dir=str(run), resume=True, progress=False,
                            export=str(tmp_path / "exported"))
    assert len(out["history"]) == 2 and load_autoencoder(tmp_path / "exported").config.f == 4

    with pytest.raises(FileNotFoundError, match="training run folder.*Trainer.load_weights"):
        Trainer(Tiny(), data(), config(tmp_path / "toy")).fit()
        load_ldm(tmp_path / "toy")
    safetensors.torch.save_file({"w": torch.zeros(2)}, tmp_path / "bare.safetensors")
    with pytest.raises(FileNotFoundError, match="bare weights file without its manifest"):
        load_ldm(tmp_path / "bare.safetensors")


# --------------------------------------------------------------------------------------------------
# kill -9 while checkpoints are being written: the last checkpoint stays loadable, resume stays exact
# --------------------------------------------------------------------------------------------------
KILL_STEPS = 40


def _kill_cfg(out):
    return config(out, max_steps=KILL_STEPS, ckpt_every=1, keep_last=2)


def _child(out: str, pause: str | None, pause_step: int | None, marker: str):
    """Train (resuming when there is a checkpoint); optionally stop dead inside one checkpoint write."""
    torch.set_num_threads(1)
    if pause == "trainer.json":  # model / EMA / optimiser / RNG files written, trainer.json not yet
        real = checkpoint_mod._write_json

        def slow(path, obj, indent=1):
            if Path(path).name == "trainer.json" and f".tmp-{checkpoint_mod._ckpt_name(pause_step)}" in str(path):
                Path(marker).write_text("pausing")
                time.sleep(60)
            return real(path, obj, indent)

        checkpoint_mod._write_json = slow
    elif pause == "latest.json":  # the folder renamed into place, latest.json not updated yet
        real_atomic = checkpoint_mod._atomic_write_json

        def slow_latest(path, obj):
            if obj.get("step") == pause_step:
                Path(marker).write_text("pausing")
                time.sleep(60)
            return real_atomic(path, obj)

        checkpoint_mod._atomic_write_json = slow_latest

    def started(trainer, logs):
        if not os.path.exists(marker):
            Path(marker).write_text("training")

    resume = (Path(out) / "latest.json").is_file()
    Trainer(Tiny(sleep=0.01), data(), _kill_cfg(out), callbacks=[started]).fit(resume=resume)
    os._exit(0)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL") or "fork" not in multiprocessing.get_all_start_methods(),
                    reason="needs SIGKILL and fork (POSIX)")
def test_sigkill_during_checkpoint_writes_keeps_the_last_checkpoint_and_exact_resume(tmp_path):
    """Real ``kill -9`` of a training process: twice inside a checkpoint write (before trainer.json; between the
    folder's rename and latest.json), three times at random moments. After each, the latest checkpoint loads
    (every file against its sha256) and no half-written ``step_*`` folder is visible; the final resume matches
    an uninterrupted run bit for bit."""
    ref = Trainer(Tiny(), data(), _kill_cfg(tmp_path / "ref"))
    ref_hist = ref.fit()
    out = tmp_path / "killed"
    ctx = multiprocessing.get_context("fork")
    rnd = random.Random(0)
    plan = [("trainer.json", 3), ("latest.json", 3), (None, None), (None, None), ("trainer.json", 2)]
    last_step = 0
    for i, (pause, ahead) in enumerate(plan):
        pause_step = None if pause is None else last_step + ahead  # a checkpoint this child will write
        marker = tmp_path / f"marker{i}"
        p = ctx.Process(target=_child, args=(str(out), pause, pause_step, str(marker)))
        p.start()
        deadline = time.time() + 30
        want = "pausing" if pause else "training"
        while not (marker.exists() and marker.read_text() == want) and time.time() < deadline and p.is_alive():
            time.sleep(0.01)
        assert marker.exists() and marker.read_text() == want, f"child {i} never reached {want!r}"
        if pause is None:
            time.sleep(rnd.uniform(0.02, 0.15))  # somewhere in steps / checkpoint writes
        os.kill(p.pid, signal.SIGKILL)
        p.join(10)
        assert p.exitcode == -signal.SIGKILL, f"child {i} was not killed (exit code {p.exitcode})"

        # the last checkpoint loads (its sha256 record checks every file) and every visible folder is complete
        folder = Path(Trainer.latest_checkpoint(out))
        step = json.loads((out / "latest.json").read_text())["step"]
        assert folder.name == checkpoint_mod._ckpt_name(step) and step >= last_step
        if pause == "trainer.json":
            assert step == pause_step - 1 and not (out / "checkpoints" / checkpoint_mod._ckpt_name(pause_step)).exists()
        if pause == "latest.json":
            assert step == pause_step - 1 and (out / "checkpoints" / checkpoint_mod._ckpt_name(pause_step)).is_dir()
        Trainer.load_weights(out, Tiny(), ema=True)
        for d in (out / "checkpoints").glob("step_*"):
            assert (d / "trainer.json").is_file(), d
        last_step = step

    t = Trainer(Tiny(seed=9), data(), _kill_cfg(out))
    hist = t.fit(resume=True)
    assert [h["loss/opt"] for h in hist] == [h["loss/opt"] for h in ref_hist]
    for k, v in weights(ref.module).items():
        assert torch.equal(weights(t.module)[k], v), k
    for k, v in ref.ema_state.items():
        assert torch.equal(t.ema_state[k], v), k
