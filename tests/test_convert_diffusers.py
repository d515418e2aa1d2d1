"""ldm_lite.convert.diffusers: the course's models <-> diffusers, both ways, and an end-to-end oracle.

* Round trips at tiny size: a random course UNet / first stage -> diffusers -> back gives the identical state
  dict and config, and diffusers' forward equals ours (float32, CPU).
* Refusals: every course option diffusers lacks (and the diffusers options the course lacks) raise
  NotConvertibleError naming the feature.
* The oracle: the shipped text-to-image LDM ``ldm_shapes_text64`` copied into diffusers' UNet2DConditionModel +
  AutoencoderKL + DDIMScheduler, sampled by a hand-written diffusers loop (5 guided DDIM steps), gives the
  images of the course's ``model.sample``.
"""

from __future__ import annotations

import math

import pytest
import torch

from ldm_lite.autoencoder import AutoencoderConfig, AutoencoderKL, VQModel
from ldm_lite.unet import UNetModel

diffusers = pytest.importorskip("diffusers")

from ldm_lite.convert import (  # noqa: E402
    NotConvertibleError,
    ddim_scheduler_from_schedule,
    first_stage_config_to_diffusers,
    first_stage_from_diffusers,
    first_stage_to_diffusers,
    ldm_to_diffusers,
    unet_config_from_diffusers,
    unet_config_to_diffusers,
    unet_from_diffusers,
    unet_to_diffusers,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@torch.no_grad()
def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random values for every parameter, the zero-initialised output layers included (a fresh UNet predicts 0)."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if p.ndim > 1:
            p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p[0].numel()))
        else:
            one = 1.0 if "norm" in name and name.endswith("weight") else 0.0
            p.copy_(one + 0.1 * torch.randn(p.shape, generator=g))
    return model


def assert_same_state_dict(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ----------------------------------------------------------------------------------------------
# UNet
# ----------------------------------------------------------------------------------------------
BASE = dict(in_channels=4, out_channels=4, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
            attention_resolutions=(2,), num_head_channels=16, context_dim=24)
UNET_CASES = {
    # text-to-image style: cross-attention to a (B, M, 24) context, with a padding mask
    "crossattn": ("UNet2DConditionModel", dict(attention_resolutions=(1, 2))),
    # unconditional LDM (ldm_openmoji64): SpatialTransformers whose attn2 attends to the image itself
    "unconditional": ("UNet2DConditionModel", dict(context_dim=None)),
    # super-resolution / inpainting: a condition concatenated on the channel axis (in 7 = 4 latent + 3)
    "concat": ("UNet2DConditionModel", dict(in_channels=7, context_dim=None)),
    # "adm": class labels added to the time embedding (label_emb <-> class_embedding), FiLM ResBlocks,
    # linear transformer projections, two transformer blocks per level
    "adm-crossattn": ("UNet2DConditionModel", dict(num_classes=5, use_scale_shift_norm=True,
                                                   use_linear_in_transformer=True, transformer_depth=2)),
    # Stable Diffusion's way of counting heads: a fixed number (head width varies by level); 3 levels, 2 blocks
    "num-heads": ("UNet2DConditionModel", dict(num_head_channels=-1, num_heads=2, num_res_blocks=2,
                                               channel_mult=(1, 2, 2), attention_resolutions=(1, 4))),
    # the paper's unconditional ADM UNets: AttentionBlock (fused legacy qkv), ResBlock resampling, labels
    "adm-attention": ("UNet2DModel", dict(context_dim=None, use_spatial_transformer=False, resblock_updown=True,
                                          use_scale_shift_norm=True, num_classes=3, attention_resolutions=(1,),
                                          norm_num_groups=16)),
}


@pytest.mark.parametrize("case", list(UNET_CASES))
def test_unet_round_trip_and_forward(case):
    cls_name, kw = UNET_CASES[case]
    unet = randomize(UNetModel(**{**BASE, **kw})).eval()
    theirs = unet_to_diffusers(unet)
    assert type(theirs).__name__ == cls_name
    assert not theirs.training

    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(2, unet.in_channels, 8, 8, generator=g), torch.tensor([3, 700])
    context = torch.randn(2, 5, 24, generator=g) if unet.context_dim else None
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool) if unet.context_dim else None
    y = torch.tensor([1, 2]) if unet.num_classes else None
    with torch.no_grad():
        ours = unet(x, t, context=context, y=y, context_mask=mask)
        if cls_name == "UNet2DModel":
            ref = theirs(x, t, class_labels=y).sample
        else:
            ref = theirs(x, t, encoder_hidden_states=context, class_labels=y, encoder_attention_mask=mask).sample
    assert ours.abs().mean() > 0.02  # not a trivially zero network
    torch.testing.assert_close(ref, ours, atol=1e-5, rtol=0)

    back = unet_from_diffusers(theirs)
    assert back.config == unet.config
    assert_same_state_dict(back.state_dict(), unet.state_dict())


def test_unet_mask_matters_and_maps():
    """The padding mask changes the output (so the test above compares something) in both libraries alike."""
    unet = randomize(UNetModel(**BASE)).eval()
    theirs = unet_to_diffusers(unet)
    x, t, c = torch.randn(1, 4, 8, 8), torch.tensor([500]), torch.randn(1, 6, 24)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0]], dtype=torch.bool)
    with torch.no_grad():
        masked = unet(x, t, context=c, context_mask=mask)
        assert (masked - unet(x, t, context=c)).abs().max() > 1e-3
        torch.testing.assert_close(theirs(x, t, encoder_hidden_states=c, encoder_attention_mask=mask).sample, masked,
                                   atol=1e-5, rtol=0)


def test_unet_conversion_keeps_dtype_mode_and_checkpointing():
    unet = UNetModel(**{**BASE, "use_checkpoint": True}).train().to(torch.float64)
    theirs = unet_to_diffusers(unet)
    assert theirs.training and theirs.dtype == torch.float64 and theirs.is_gradient_checkpointing
    back = unet_from_diffusers(theirs)
    assert back.training and back.config.use_checkpoint and next(back.parameters()).dtype == torch.float64


@pytest.mark.parametrize("kw, feature", [
    (dict(coord_channels=True), "coord_channels=True"),
    (dict(conv_resample=False), "conv_resample=False"),
    (dict(channel_mult=(2, 4)), r"channel_mult\[0\]=2"),
    (dict(resblock_updown=True), "resblock_updown=True with SpatialTransformers"),
    # ADM attention with a fixed number of heads: widths 32 / 64 give head widths 16 / 32
    (dict(context_dim=None, use_spatial_transformer=False, num_head_channels=-1, num_heads=2,
          attention_resolutions=(1, 2)), r"num_heads=2 with ADM attention.*head widths \[16, 32\]"),
])
def test_unet_options_without_diffusers_equivalent_are_refused(kw, feature):
    unet = UNetModel(**{**BASE, **kw})
    with pytest.raises(NotConvertibleError, match=feature):
        unet_to_diffusers(unet)
    assert issubclass(NotConvertibleError, ValueError)


@pytest.fixture(scope="module")
def diffusers_unet_config():
    name, kw = unet_config_to_diffusers(UNetModel(**{**BASE, "attention_resolutions": (1, 2)}).config)
    return dict(getattr(diffusers, name)(**kw).config)


@pytest.mark.parametrize("change, feature", [
    (dict(class_embed_type="timestep"), "class_embed_type='timestep'"),
    (dict(only_cross_attention=True), "only_cross_attention=True"),
    (dict(time_cond_proj_dim=8), "time_cond_proj_dim=8"),
    (dict(addition_embed_type="text"), "addition_embed_type='text'"),
    (dict(conv_in_kernel=1), "conv_in_kernel=1"),
    (dict(act_fn="gelu"), "act_fn='gelu'"),
    (dict(flip_sin_to_cos=False), "flip_sin_to_cos=False"),
    (dict(transformer_layers_per_block=(1, 2)), r"transformer_layers_per_block=\(1, 2\)"),
    (dict(block_out_channels=(32, 48)), r"block_out_channels=\(32, 48\)"),
    (dict(mid_block_type="UNetMidBlock2DSimpleCrossAttn"), "mid_block_type"),
])
def test_diffusers_options_without_course_equivalent_are_refused(diffusers_unet_config, change, feature):
    unet_config_from_diffusers(diffusers_unet_config, "UNet2DConditionModel")  # the unchanged config maps
    with pytest.raises(NotConvertibleError, match=feature):
        unet_config_from_diffusers({**diffusers_unet_config, **change}, "UNet2DConditionModel")
    with pytest.raises(NotConvertibleError, match="UNet1DModel"):
        unet_config_from_diffusers(diffusers_unet_config, "UNet1DModel")


def test_a_diffusers_made_unet_converts():
    """A model built by diffusers itself (SD-style: 8 heads at every level, no attention at the lowest level)."""
    theirs = randomize(diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, attention_head_dim=8, norm_num_groups=8, upcast_attention=True)).eval()
    ours = unet_from_diffusers(theirs)
    assert ours.config.num_heads == 8 and ours.config.attention_resolutions == (1,) and ours.config.context_dim == 16
    x, t, c = torch.randn(2, 4, 8, 8), torch.tensor([10, 990]), torch.randn(2, 3, 16)
    with torch.no_grad():
        torch.testing.assert_close(ours(x, t, context=c), theirs(x, t, encoder_hidden_states=c).sample,
                                   atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------------------------
# First stage
# ----------------------------------------------------------------------------------------------
FIRST_STAGES = {
    "kl": AutoencoderConfig(f=2, ch=32, ch_mult=(1, 2), num_res_blocks=1, z_channels=4),
    "kl-no-mid-attention": AutoencoderConfig(f=2, ch=32, ch_mult=(1, 2), num_res_blocks=1, z_channels=4,
                                             use_mid_attn=False),
    "vq": AutoencoderConfig(f=4, ch=32, ch_mult=(1, 1, 2), num_res_blocks=2, z_channels=3, embed_dim=4, reg="vq",
                            n_embed=16),
}


@pytest.mark.parametrize("case", list(FIRST_STAGES))
def test_first_stage_round_trip_encode_decode(case):
    cfg = FIRST_STAGES[case]
    ae = randomize(AutoencoderKL(cfg) if cfg.reg == "kl" else VQModel(cfg)).eval()
    theirs = first_stage_to_diffusers(ae, scaling_factor=0.5)
    assert type(theirs).__name__ == ("AutoencoderKL" if cfg.reg == "kl" else "VQModel")
    assert theirs.config.scaling_factor == 0.5
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        if cfg.reg == "kl":
            ours, ref = ae.encode(x), theirs.encode(x).latent_dist
            torch.testing.assert_close(ref.mean, ours.mean, atol=1e-5, rtol=0)
            torch.testing.assert_close(ref.logvar, ours.logvar, atol=1e-5, rtol=0)
            z = ours.mean
        else:
            z = ae.encode_pre_quant(x)
            torch.testing.assert_close(theirs.encode(x).latents, z, atol=1e-5, rtol=0)
        decoded = ae.decode(z)  # VQ: quantised first, by both
        assert decoded.abs().mean() > 0.05
        torch.testing.assert_close(theirs.decode(z).sample, decoded, atol=1e-5, rtol=0)
    back = first_stage_from_diffusers(theirs)
    assert type(back) is type(ae) and back.config == ae.config
    assert_same_state_dict(back.state_dict(), ae.state_dict())


@pytest.mark.parametrize("cfg, feature", [
    # the shipped openmoji autoencoders: ch=16 -> 16 groups at width 16, 32 at widths 32 and 64
    (AutoencoderConfig(f=4, ch=16, ch_mult=(1, 2, 4), num_res_blocks=1, z_channels=4),
     r"GroupNorm group counts \[16, 32\]"),
    (AutoencoderConfig(f=2, ch=32, ch_mult=(2, 2), num_res_blocks=1, z_channels=4), r"ch_mult\[0\]=2"),
    (AutoencoderConfig(f=2, ch=32, ch_mult=(1, 2), num_res_blocks=1, z_channels=4, embed_dim=3),
     "z_channels=4 != embed_dim=3"),
])
def test_first_stage_options_without_diffusers_equivalent_are_refused(cfg, feature):
    with pytest.raises(NotConvertibleError, match=feature):
        first_stage_config_to_diffusers(cfg)


def test_ddim_scheduler_visits_our_timesteps():
    from ldm_lite.diffusion import DDIMSampler
    from ldm_lite.ldm import default_schedule

    schedule = default_schedule()
    for spacing in ("uniform", "trailing"):
        sched = ddim_scheduler_from_schedule(schedule, timestep_spacing=spacing)
        sched.set_timesteps(7)
        assert sched.timesteps.tolist() == DDIMSampler(schedule).timesteps(7, spacing).tolist()
        torch.testing.assert_close(sched.alphas_cumprod.double(), schedule.alphas_cumprod, atol=1e-6, rtol=0)
    with pytest.raises(NotConvertibleError, match="quadratic"):
        ddim_scheduler_from_schedule(schedule, timestep_spacing="quadratic")


# ----------------------------------------------------------------------------------------------
# The oracle: a shipped text-to-image LDM sampled by diffusers
# ----------------------------------------------------------------------------------------------
# images in [-1, 1]; measured 1.0e-5 (text model) and 2.7e-6 (class model): float32, CPU, torch 2.14.1, diffusers 0.42.1
ORACLE_ATOL = 2e-4


@pytest.mark.parametrize("name, raw_condition, size", [
    # text transformer trained with the LDM -> context + padding mask; KL-f4 first stage with ch=32
    ("ldm_shapes_text64", ["a small orange triangle above a big blue circle"], 64),  # words of its captions
    # class labels through a ClassEmbedder into cross-attention (no mask); the same first stage
    ("ldm_fashion_class32", [7], 32),
])
def test_oracle_shipped_ldm_sampled_by_diffusers(name, raw_condition, size):
    """A shipped conditional LDM copied into diffusers -- UNet2DConditionModel + AutoencoderKL + a DDIMScheduler
    on its betas -- and sampled by a hand-written diffusers loop (5 DDIM steps, guidance 3, eta 0, the same
    starting noise) gives the images of the course's ``model.sample``.

    The cond stages have no diffusers counterpart: the context (and padding mask) is computed by the course and
    passed as ``encoder_hidden_states`` (``encoder_attention_mask``). The UNet calls agree exactly; what remains
    comes from DDIMScheduler's float32 step coefficients (ours are float64), amplified by guidance 3 over five
    steps.
    """
    from ldm_lite.pretrained import load_ldm

    model = load_ldm(name)
    parts = ldm_to_diffusers(model)
    unet, vae, scheduler = parts["unet"], parts["vae"], parts["scheduler"]
    assert type(unet).__name__ == "UNet2DConditionModel" and type(vae).__name__ == "AutoencoderKL"
    assert vae.config.scaling_factor == pytest.approx(float(model.scale_factor))

    cond = model.get_learned_conditioning(raw_condition)
    uncond = model.get_unconditional_conditioning(1)  # the learned null condition ("" / the null class)
    x_T = torch.randn(1, 4, size // 4, size // 4, generator=torch.Generator().manual_seed(0))
    ours, z_ours = model.sample(cond=raw_condition, sampler="ddim", steps=5, guidance_scale=3.0, eta=0.0, x_T=x_T,
                                progress=False, return_latents=True)

    # ---- the diffusers loop
    scheduler.set_timesteps(5)
    x = x_T.clone()
    with torch.no_grad():
        for t in scheduler.timesteps:  # 801, 601, 401, 201, 1
            eps_c = unet(x, t, encoder_hidden_states=cond["c_crossattn"],
                         encoder_attention_mask=cond.get("context_mask")).sample
            eps_u = unet(x, t, encoder_hidden_states=uncond["c_crossattn"],
                         encoder_attention_mask=uncond.get("context_mask")).sample
            x = scheduler.step(eps_u + 3.0 * (eps_c - eps_u), t, x, eta=0.0).prev_sample
        images = vae.decode(x / vae.config.scaling_factor).sample.clamp(-1, 1)

    assert scheduler.timesteps.tolist() == [801, 601, 401, 201, 1]
    assert ours.shape == images.shape == (1, 3, size, size)
    assert ours.std() > 0.1  # a picture, not a flat field
    diff = (images - ours).abs().max().item()
    print(f"oracle {name}: max |diffusers - ldm-lite| = {diff:.2e} on images in [-1, 1] "
          f"(latents {(x - z_ours).abs().max():.2e})")
    torch.testing.assert_close(x, z_ours, atol=ORACLE_ATOL, rtol=0)
    torch.testing.assert_close(images, ours, atol=ORACLE_ATOL, rtol=0)
