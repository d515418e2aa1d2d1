"""The training set's latents are kept in the run folder: a resumed run, or a run given a copy of the file,
trains on exactly the same latents without running the encoder; a file that does not match is rebuilt."""

import shutil

import torch

from ldm_lite.autoencoder import AutoencoderKL
from ldm_lite.experiments import LDMRecipe, train_ldm
from ldm_lite.ldm import LatentDiffusion

TINY = dict(data="shapes", size=16, train_images=8, model_channels=16, channel_mult=(1, 2),
            attention_resolutions=(2,), num_head_channels=8, norm_num_groups=8, steps=2, batch_size=4,
            lr_warmup_steps=0, ema_decay=0.9, eval_images=4)


def _exported_first_stage(root):
    torch.manual_seed(0)
    ae = AutoencoderKL(f=2, ch=8, num_res_blocks=1, z_channels=4, use_mid_attn=False).eval()
    train_ldm(LDMRecipe(**TINY), first_stage=ae, progress=False, export=str(root / "m"), command="test")
    return str(root / "m_first_stage")


def _count_encodes(monkeypatch):
    calls = []
    original = LatentDiffusion.encode_dataset

    def counting(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(LatentDiffusion, "encode_dataset", counting)
    return calls


def test_cached_latents_are_reused_and_train_the_same_model(tmp_path, monkeypatch):
    fs = _exported_first_stage(tmp_path)
    calls = _count_encodes(monkeypatch)
    a = train_ldm(LDMRecipe(**TINY), first_stage=fs, out_dir=str(tmp_path / "a"), progress=False)
    assert calls == [1]
    assert (tmp_path / "a" / "latents.safetensors").is_file() and (tmp_path / "a" / "latents.json").is_file()

    (tmp_path / "b").mkdir()
    for name in ("latents.safetensors", "latents.json"):
        shutil.copy(tmp_path / "a" / name, tmp_path / "b" / name)
    b = train_ldm(LDMRecipe(**TINY), first_stage=fs, out_dir=str(tmp_path / "b"), progress=False)
    assert calls == [1]  # the encoder did not run again
    assert float(b["model"].scale_factor) == float(a["model"].scale_factor)
    for (k, va), vb in zip(a["model"].state_dict().items(), b["model"].state_dict().values()):
        torch.testing.assert_close(va, vb, rtol=0, atol=0, msg=k)


def test_a_cache_that_does_not_match_the_run_is_rebuilt(tmp_path, monkeypatch):
    fs = _exported_first_stage(tmp_path)
    calls = _count_encodes(monkeypatch)
    train_ldm(LDMRecipe(**TINY), first_stage=fs, out_dir=str(tmp_path / "a"), progress=False)
    for change, folder in ((dict(seed=1), "seed"), (dict(train_images=12), "count")):
        (tmp_path / folder).mkdir()
        for name in ("latents.safetensors", "latents.json"):
            shutil.copy(tmp_path / "a" / name, tmp_path / folder / name)
        train_ldm(LDMRecipe(**dict(TINY, **change)), first_stage=fs, out_dir=str(tmp_path / folder), progress=False)
    assert calls == [1, 1, 1]
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "latents.safetensors").write_bytes(b"not a tensor file")
    shutil.copy(tmp_path / "a" / "latents.json", tmp_path / "broken" / "latents.json")
    train_ldm(LDMRecipe(**TINY), first_stage=fs, out_dir=str(tmp_path / "broken"), progress=False)
    assert calls == [1, 1, 1, 1]


def test_an_in_memory_first_stage_is_not_cached_to_disk(tmp_path):
    torch.manual_seed(0)
    ae = AutoencoderKL(f=2, ch=8, num_res_blocks=1, z_channels=4, use_mid_attn=False).eval()
    train_ldm(LDMRecipe(**TINY), first_stage=ae, out_dir=str(tmp_path / "run"), progress=False)
    assert not (tmp_path / "run" / "latents.safetensors").exists()
