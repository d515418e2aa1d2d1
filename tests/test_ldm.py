"""Tests of LatentDiffusion (ldm_lite.ldm; paper Sec. 3.2-3.3, Eq. 2-3), its recipe, export and CLI.

Everything is tiny (16 px images, f=2 -> 8x8 latents, 16-channel UNets) and runs on one thread.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from ldm_lite import cli
from ldm_lite.autoencoder.model import AutoencoderKL, VQModel
from ldm_lite.latents import LatentDataset
from ldm_lite.ldm import LatentDiffusion
from ldm_lite.train import TrainConfig, Trainer
from ldm_lite.unet import UNetModel

CTX = 24  # context width of the toy text encoder


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_ae(seed: int = 0, vq: bool = False):
    torch.manual_seed(seed)
    cls = VQModel if vq else AutoencoderKL
    kw = dict(n_embed=16) if vq else {}
    return cls(f=2, ch=8, num_res_blocks=1, z_channels=4, use_mid_attn=False, **kw).eval()


def tiny_unet(in_channels=4, out_channels=4, seed: int = 0, **kw) -> UNetModel:
    torch.manual_seed(seed)
    args = dict(model_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(2,),
                num_head_channels=8, norm_num_groups=8)
    args.update(kw)
    unet = UNetModel(in_channels, out_channels, **args)
    nn.init.normal_(unet.out[-1].weight, std=0.02)  # the zero-initialised output would hide the input
    return unet


class TokenEmbedder(nn.Module):
    """A toy tau_theta: token ids (B, L) -> (B, L, CTX)."""

    def __init__(self, vocab: int = 10):
        super().__init__()
        self.emb = nn.Embedding(vocab, CTX)

    def forward(self, ids):
        return self.emb(ids)


def batch(n: int = 4, size: int = 16, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "image": torch.rand(n, 3, size, size, generator=g) * 2 - 1,
        "label": torch.randint(0, 5, (n,), generator=g),
        "caption_ids": torch.randint(1, 10, (n, 5), generator=g),
        "lr": torch.randn(n, 2, size // 2, size // 2, generator=g),
    }


def make_model(kind: str, **kw) -> LatentDiffusion:
    """One tiny model per conditioning mode ("pixel" = pixel space, unconditional)."""
    if kind == "pixel":
        return LatentDiffusion(None, tiny_unet(3, 3), **kw)
    if kind == "none":
        return LatentDiffusion(tiny_ae(), tiny_unet(), **kw)
    if kind == "crossattn":
        return LatentDiffusion(tiny_ae(), tiny_unet(context_dim=CTX), TokenEmbedder(),
                               conditioning_key="crossattn", cond_key="caption_ids", **kw)
    if kind == "concat":
        return LatentDiffusion(tiny_ae(), tiny_unet(in_channels=6), conditioning_key="concat", cond_key="lr", **kw)
    if kind == "hybrid":
        return LatentDiffusion(tiny_ae(), tiny_unet(in_channels=6, context_dim=CTX), TokenEmbedder(),
                               conditioning_key="hybrid", cond_key={"c_concat": "lr", "c_crossattn": "caption_ids"},
                               **kw)
    if kind == "adm":
        return LatentDiffusion(tiny_ae(), tiny_unet(num_classes=6), conditioning_key="adm", cond_key="label",
                               unconditional_value=5, **kw)
    raise ValueError(kind)


def capture_unet_inputs(model: LatentDiffusion) -> list[dict]:
    """Record what the UNet is called with (x, context, y, context_mask) on every forward."""
    seen = []

    def hook(module, args, kwargs):
        seen.append(dict(x=args[0], **{k: kwargs.get(k) for k in ("context", "y", "context_mask")}))

    model.unet.register_forward_pre_hook(hook, with_kwargs=True)
    return seen


# --------------------------------------------------------------------------------------------------
# Training step
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["none", "pixel", "crossattn", "concat", "hybrid", "adm"])
def test_training_step_for_each_conditioning_key(kind):
    model = make_model(kind).train()
    seen = capture_unet_inputs(model)
    b = batch(size=8 if kind == "pixel" else 16)
    torch.manual_seed(0)
    loss, logs = model.training_step(b, 0, "ldm")
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert logs["loss"] == pytest.approx(loss.item()) and any(k.startswith("loss_t/") for k in logs)
    x = seen[0]["x"]
    want_channels = {"pixel": 3, "concat": 6, "hybrid": 6}.get(kind, 4)
    assert x.shape == (4, want_channels, 8, 8)  # 8x8 latents (f=2 on 16 px), or 8 px images in pixel space
    assert (seen[0]["context"] is not None) == (kind in ("crossattn", "hybrid"))
    assert (seen[0]["y"] is not None) == (kind == "adm")
    if kind in ("concat", "hybrid"):
        torch.testing.assert_close(x[:, 4:], b["lr"])  # the condition, concatenated on the channel axis
    loss.backward()
    assert model.unet.out[-1].weight.grad is not None
    if kind in ("crossattn", "hybrid"):
        assert model.cond_stage.emb.weight.grad is not None  # a trainable cond stage learns with the UNet
    opt = model.configure_optimizers()
    assert list(opt) == ["ldm"]
    n_opt = sum(p.numel() for g in opt["ldm"].param_groups for p in g["params"])
    n_train = sum(p.numel() for p in model.unet.parameters()) + (
        sum(p.numel() for p in model.cond_stage.parameters()) if model.cond_stage is not None else 0)
    assert n_opt == n_train


def test_first_stage_is_frozen_and_stays_in_eval_mode():
    model = LatentDiffusion(tiny_ae(), tiny_unet(context_dim=CTX), TokenEmbedder(), conditioning_key="crossattn",
                            cond_key="caption_ids", cond_stage_trainable=False)
    model.train()
    assert model.unet.training and not model.first_stage.training and not model.cond_stage.training
    assert not any(p.requires_grad for p in model.first_stage.parameters())
    loss, _ = model.training_step(batch(), 0, "ldm")
    loss.backward()
    assert all(p.grad is None for p in model.first_stage.parameters())
    assert all(p.grad is None for p in model.cond_stage.parameters())
    params = {id(p) for g in model.configure_optimizers()["ldm"].param_groups for p in g["params"]}
    assert params == {id(p) for p in model.unet.parameters()}
    assert model.ema_module() is model.unet
    assert set(make_model("crossattn").ema_module()) == {"unet", "cond_stage"}


# --------------------------------------------------------------------------------------------------
# scale_factor
# --------------------------------------------------------------------------------------------------
def test_encode_decode_use_scale_factor():
    ae = tiny_ae()
    model = LatentDiffusion(ae, tiny_unet(), scale_factor=0.5)
    x = batch()["image"]
    with torch.no_grad():
        z = model.encode_first_stage(x)
        torch.testing.assert_close(z, 0.5 * ae.encode(x).mode())  # posterior mode, then scaled
        torch.testing.assert_close(model.decode_first_stage(z), ae(x, sample_posterior=False)[0])
    vq = tiny_ae(vq=True)
    model = LatentDiffusion(vq, tiny_unet(), scale_factor=2.0)
    with torch.no_grad():
        z = model.encode_first_stage(x)
        torch.testing.assert_close(z, 2.0 * vq.encode_pre_quant(x))  # VQ: the pre-quantisation latent
        torch.testing.assert_close(model.decode_first_stage(z), vq(x)[0])  # quantised inside decode
    pixel = LatentDiffusion(None, tiny_unet(3, 3))
    torch.testing.assert_close(pixel.decode_first_stage(pixel.encode_first_stage(x)), x)


def test_scale_by_std_estimate_and_checkpoint_round_trip(tmp_path):
    ae = tiny_ae()
    images = batch(4)["image"]
    data = [{"image": im} for im in images]  # one batch of 4 = the whole dataset, so the first batch is known
    model = LatentDiffusion(ae, tiny_unet(), scale_by_std=True)
    cfg = TrainConfig(max_steps=1, batch_size=4, out_dir=str(tmp_path / "run"), progress=False)
    Trainer(model, data, cfg).fit()
    with torch.no_grad():
        manual = 1.0 / ae.encode(images).mode().flatten().std()
    assert float(model.scale_factor) == pytest.approx(float(manual), rel=1e-5)
    assert "scale_factor" in model.state_dict()

    fresh = LatentDiffusion(tiny_ae(seed=0), tiny_unet(seed=1), scale_by_std=True)
    assert float(fresh.scale_factor) == 1.0
    Trainer(fresh, data, TrainConfig(max_steps=2, batch_size=4, out_dir=str(tmp_path / "run"), progress=False)).fit(
        resume=True)
    assert float(fresh.scale_factor) == pytest.approx(float(manual), rel=1e-6)  # restored, not re-estimated
    loaded = Trainer.load_weights(tmp_path / "run", LatentDiffusion(tiny_ae(), tiny_unet(seed=2), scale_by_std=True))
    assert float(loaded.scale_factor) == pytest.approx(float(manual), rel=1e-6)


# --------------------------------------------------------------------------------------------------
# Classifier-free guidance dropout
# --------------------------------------------------------------------------------------------------
def test_cond_drop_prob_one_always_feeds_the_unconditional_value():
    b = batch()
    null_ids = torch.zeros(5, dtype=torch.long)
    model = make_model("crossattn", cond_drop_prob=1.0, unconditional_value=null_ids).train()
    seen = capture_unet_inputs(model)
    model.training_step(b, 0, "ldm")
    want = model.cond_stage(null_ids[None]).expand(4, -1, -1)
    torch.testing.assert_close(seen[-1]["context"], want)

    zeros = make_model("crossattn", cond_drop_prob=1.0).train()  # no unconditional_value: a zero context
    seen = capture_unet_inputs(zeros)
    zeros.training_step(b, 0, "ldm")
    assert seen[-1]["context"].abs().max() == 0 and seen[-1]["context"].shape == (4, 5, CTX)

    adm = make_model("adm", cond_drop_prob=1.0).train()
    seen = capture_unet_inputs(adm)
    adm.training_step(b, 0, "ldm")
    assert seen[-1]["y"].tolist() == [5, 5, 5, 5]  # the null class

    hybrid = make_model("hybrid", cond_drop_prob=1.0).train()
    seen = capture_unet_inputs(hybrid)
    hybrid.training_step(b, 0, "ldm")
    assert seen[-1]["context"].abs().max() == 0
    torch.testing.assert_close(seen[-1]["x"][:, 4:], b["lr"])  # the spatial part is never dropped

    keep = make_model("crossattn", cond_drop_prob=0.0).train()
    seen = capture_unet_inputs(keep)
    keep.training_step(b, 0, "ldm")
    torch.testing.assert_close(seen[-1]["context"], keep.cond_stage(b["caption_ids"]))
    keep.eval()  # no dropout outside training, whatever the probability
    assert keep.get_condition(b) is not None


# --------------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------------
def test_sample_shape_range_larger_latents_and_determinism():
    model = make_model("none", image_size=16)
    gen = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    a = model.sample(2, steps=3, generator=gen(0), progress=False)
    assert a.shape == (2, 3, 16, 16) and a.min() >= -1 and a.max() <= 1
    torch.testing.assert_close(a, model.sample(2, steps=3, generator=gen(0), progress=False))
    assert not torch.allclose(a, model.sample(2, steps=3, generator=gen(1), progress=False))
    big, z = model.sample(1, steps=2, latent_size=16, generator=gen(0), progress=False, return_latents=True)
    assert big.shape == (1, 3, 32, 32) and z.shape == (1, 4, 16, 16)  # beyond the training resolution
    assert model.training  # sample() runs in eval mode and restores the mode it found

    adm = make_model("adm", image_size=16)
    raw = adm.sample(steps=2, cond=[1, 2], guidance_scale=3.0, generator=gen(0), progress=False, sampler="dpm")
    learned = adm.sample(steps=2, c=adm.get_learned_conditioning(torch.tensor([1, 2])), guidance_scale=3.0,
                         generator=gen(0), progress=False, sampler="dpm")
    assert raw.shape == (2, 3, 16, 16)
    torch.testing.assert_close(raw, learned)
    one = adm.sample(3, steps=2, cond=4, generator=gen(0), progress=False)  # one label, repeated
    assert one.shape == (3, 3, 16, 16)

    cross = make_model("crossattn", image_size=16, cond_drop_prob=0.1)
    img = cross.sample(steps=2, cond=torch.randint(1, 10, (2, 5)), guidance_scale=2.0, progress=False)
    assert img.shape == (2, 3, 16, 16)

    # inpainting: the known half is kept exactly (in latent space) -- the latent of the image with its hole blanked,
    # so that no hole pixel reaches the encoder
    x0 = batch(2)["image"]
    mask = torch.zeros(2, 1, 16, 16)
    mask[..., :8] = 1
    _, z = model.sample(2, steps=2, x0=x0, keep_mask=mask, generator=gen(0), progress=False, return_latents=True)
    torch.testing.assert_close(z[..., :4], model.encode_first_stage(x0 * mask)[..., :4])


# --------------------------------------------------------------------------------------------------
# Latent caching
# --------------------------------------------------------------------------------------------------
def test_cached_latents_give_the_loss_of_encoding_in_the_loop(tmp_path):
    b = batch(8)
    data = [{"image": b["image"][i], "label": int(b["label"][i])} for i in range(8)]
    model = make_model("adm", scale_by_std=True).train()
    cache = model.encode_dataset(data, batch_size=4, progress=False)
    assert isinstance(cache, LatentDataset) and len(cache) == 8 and set(cache[0]) == {"latent", "label"}
    assert model.scale_estimated and cache.scale_factor == pytest.approx(float(model.scale_factor))
    with torch.no_grad():  # estimated from the first batch of 4 images, in dataset order
        manual = 1.0 / model.first_stage.encode(b["image"][:4]).mode().flatten().std()
    assert float(model.scale_factor) == pytest.approx(float(manual), rel=1e-5)

    cached = torch.utils.data.default_collate([cache[i] for i in range(8)])
    images = {"image": b["image"], "label": b["label"]}
    torch.manual_seed(3)
    loss_cached, _ = model.training_step(cached, 0, "ldm")
    torch.manual_seed(3)
    loss_images, _ = model.training_step(images, 0, "ldm")
    torch.testing.assert_close(loss_cached, loss_images)

    cache.save(tmp_path / "cache")
    again = LatentDataset.load(tmp_path / "cache")
    torch.testing.assert_close(again.latents, cache.latents)
    assert again.fields["label"].tolist() == cache.fields["label"].tolist()

    # a scale_by_std model fed cached latents before any estimate cannot guess the scale
    with pytest.raises(ValueError, match="encode_dataset"):
        make_model("none", scale_by_std=True).on_train_start({"latent": cache.latents[:4]})


# --------------------------------------------------------------------------------------------------
# Errors that name the fix
# --------------------------------------------------------------------------------------------------
def test_errors_name_the_fix():
    ae = tiny_ae()
    with pytest.raises(ValueError, match="unknown conditioning_key 'cross'"):
        LatentDiffusion(ae, tiny_unet(), conditioning_key="cross", cond_key="y")
    with pytest.raises(ValueError, match="conditioning_key='crossattn'"):
        LatentDiffusion(ae, tiny_unet(context_dim=CTX))  # the UNet needs a context
    with pytest.raises(ValueError, match="context_dim=None"):
        LatentDiffusion(ae, tiny_unet(), conditioning_key="crossattn", cond_key="caption_ids")
    with pytest.raises(ValueError, match="conditioning_key='adm'"):
        LatentDiffusion(ae, tiny_unet(num_classes=3))
    with pytest.raises(ValueError, match="needs cond_key"):
        LatentDiffusion(ae, tiny_unet(num_classes=3), conditioning_key="adm")
    with pytest.raises(ValueError, match="in_channels = 4"):
        LatentDiffusion(ae, tiny_unet(), conditioning_key="concat", cond_key="lr")
    with pytest.raises(ValueError, match="out_channels=4"):
        LatentDiffusion(ae, tiny_unet(3, 3))
    with pytest.raises(ValueError, match="pixel-space"):
        LatentDiffusion(None, tiny_unet(3, 3), scale_by_std=True)
    with pytest.raises(ValueError, match="null class"):
        LatentDiffusion(ae, tiny_unet(num_classes=3), conditioning_key="adm", cond_key="label", cond_drop_prob=0.1)

    b = batch()
    cross = make_model("crossattn")
    with pytest.raises(KeyError, match="caption_ids"):
        cross.training_step({"image": b["image"]}, 0, "ldm")
    with pytest.raises(ValueError, match="cond=None"):
        cross.apply_model(torch.randn(4, 4, 8, 8), torch.zeros(4, dtype=torch.long), None)
    concat = make_model("concat")
    t = torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match="in_channels=6"):
        concat.apply_model(torch.randn(4, 4, 8, 8), t, torch.randn(4, 3, 8, 8))
    with pytest.raises(ValueError, match="latent size"):
        concat.apply_model(torch.randn(4, 4, 8, 8), t, torch.randn(4, 2, 16, 16))
    with pytest.raises(ValueError, match="not divisible by the autoencoder's downsampling factor f=2"):
        make_model("none").encode_first_stage(torch.randn(1, 3, 15, 15))
    with pytest.raises(ValueError, match="latent_size"):
        make_model("none").sample(1, steps=1, progress=False)


# --------------------------------------------------------------------------------------------------
# Recipe, export / load, CLI
# --------------------------------------------------------------------------------------------------
TINY = dict(data="shapes", size=16, train_images=8, model_channels=16, channel_mult=(1, 2), attention_resolutions=(2,),
            num_head_channels=8, norm_num_groups=8, steps=2, batch_size=4, lr_warmup_steps=0, ema_decay=0.9,
            eval_images=4)


def test_train_ldm_exports_a_loadable_checkpoint(tmp_path):
    from ldm_lite.experiments import LDMRecipe, train_ldm
    from ldm_lite.pretrained import load_ldm, load_manifest

    out = train_ldm(LDMRecipe(**TINY), first_stage=tiny_ae(), progress=False, export=str(tmp_path / "tiny_ldm"),
                    command="test")
    man = load_manifest(tmp_path / "tiny_ldm")
    assert man["kind"] == "ldm" and man["first_stage"] == "tiny_ldm_first_stage" and man["steps"] == 2
    assert man["config"]["scale_factor"] == pytest.approx(out["scale_factor"]) and out["scale_factor"] != 1.0
    assert "val_loss" in man["metrics"] and out["history"][-1]["step"] == 2
    loaded = load_ldm(tmp_path / "tiny_ldm")
    assert float(loaded.scale_factor) == pytest.approx(out["scale_factor"])
    a = out["model"].sample(2, steps=2, generator=torch.Generator().manual_seed(0), progress=False)
    b = loaded.sample(2, steps=2, generator=torch.Generator().manual_seed(0), progress=False)
    torch.testing.assert_close(a, b, atol=2e-2, rtol=0)  # float16 weights


def test_recipe_errors_name_the_fix():
    from ldm_lite.experiments import LDMRecipe, find_autoencoder

    with pytest.raises(FileNotFoundError, match="ldm-lite train-ae --data nope --size 64"):
        find_autoencoder("nope", 64)
    with pytest.raises(ValueError, match="cond_stage"):
        LDMRecipe(cond="concat")
    with pytest.raises(ValueError, match="data='shapes'"):
        LDMRecipe(cond="layout", data="fashion")


def test_cli_train_ldm_and_sample(tmp_path, capsys):
    cli.main(["train-ldm", "--data", "shapes", "--size", "16", "--first-stage", "pixel", "--train-images", "8",
              "--model-channels", "32", "--channel-mult", "1,2", "--attention-resolutions", "2", "--steps", "3",
              "--batch-size", "4", "--lr-warmup-steps", "0", "--lr", "1e-3", "--lr-schedule", "cosine",
              "--export", str(tmp_path / "cli_ldm")])
    assert '"val_loss"' in capsys.readouterr().out
    man = json.loads((tmp_path / "cli_ldm.json").read_text())
    assert man["recipe"]["lr_schedule"] == "cosine"  # the flag reaches the Trainer ...
    assert man["final_train_logs"]["lr/ldm"] < 1e-3  # ... and the learning rate has decayed
    assert man["first_stage"] == "pixel" and man["config"]["scale_factor"] == 1.0
    assert man["command"].startswith("ldm-lite train-ldm")
    png = tmp_path / "grid.png"
    cli.main(["sample", "--model", str(tmp_path / "cli_ldm"), "--n", "2", "--steps", "2", "--out", str(png)])
    assert png.stat().st_size > 0 and '"seconds_per_image"' in capsys.readouterr().out
