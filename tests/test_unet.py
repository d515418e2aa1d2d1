"""Tests of the time-conditional UNet with cross-attention (ldm_lite.unet; paper Sec. 3.3, Eq. 3, App. E).

Equations are checked against closed forms (timestep embedding), a naive reference implementation
(attention), and diffusers as an oracle for the whole architecture (same parameter counts for the
paper's configurations; same outputs after copying our weights into diffusers' UNets).
"""

from __future__ import annotations

import math

import pytest
import torch

from ldm_lite.unet import (
    PAPER_CONFIGS,
    AttentionBlock,
    CrossAttention,
    ResBlock,
    SpatialTransformer,
    UNetConfig,
    UNetModel,
    count_parameters,
    diffusers_equivalent,
    record_attention,
    timestep_embedding,
)

diffusers = pytest.importorskip("diffusers")


pytestmark = pytest.mark.usefixtures("one_thread")


def small_unet(**kw) -> UNetModel:
    args = dict(in_channels=4, out_channels=4, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                attention_resolutions=(2,), num_head_channels=16, context_dim=24)
    args.update(kw)
    return UNetModel(**args)


@torch.no_grad()
def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every parameter (including the zero-initialised ones) a random value."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if "norm" in name and name.endswith("weight") and p.ndim == 1:
            p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
        else:
            p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(max(p[0].numel(), 1)) if p.ndim > 1
                    else 0.1 * torch.randn(p.shape, generator=g))
    return model


# ----------------------------------------------------------------------------------------------
# timestep embedding
# ----------------------------------------------------------------------------------------------
def test_timestep_embedding_closed_form():
    t = torch.tensor([0.0, 1.0, 10.0, 999.5])
    dim, half = 8, 4
    emb = timestep_embedding(t, dim)
    assert emb.shape == (4, dim)
    for b, tb in enumerate(t.tolist()):
        for i in range(half):
            w = 10000 ** (-i / half)
            assert emb[b, i].item() == pytest.approx(math.cos(tb * w), abs=1e-5)  # cos half first
            assert emb[b, half + i].item() == pytest.approx(math.sin(tb * w), abs=1e-5)
    odd = timestep_embedding(t, 9)
    assert odd.shape == (4, 9) and torch.all(odd[:, -1] == 0)
    torch.testing.assert_close(odd[:, :8], emb)


def test_timestep_embedding_matches_diffusers_sd_convention():
    from diffusers.models.embeddings import get_timestep_embedding

    t = torch.tensor([0, 3, 250, 999])
    ref = get_timestep_embedding(t, 64, flip_sin_to_cos=True, downscale_freq_shift=0)
    torch.testing.assert_close(timestep_embedding(t, 64), ref)


# ----------------------------------------------------------------------------------------------
# attention
# ----------------------------------------------------------------------------------------------
def naive_attention(attn: CrossAttention, x, context=None, mask=None):
    """softmax(Q Kᵀ / √d) V per head, with plain matmuls and loops (Eq. 3)."""
    c = x if context is None else context
    q, k, v = attn.to_q(x), attn.to_k(c), attn.to_v(c)
    outs = []
    for h in range(attn.heads):
        sl = slice(h * attn.dim_head, (h + 1) * attn.dim_head)
        s = q[..., sl] @ k[..., sl].transpose(1, 2) / math.sqrt(attn.dim_head)  # (B, N, M)
        if mask is not None:
            s = s.masked_fill(~mask[:, None, :], float("-inf"))
        outs.append(torch.softmax(s, dim=-1) @ v[..., sl])
    return attn.to_out(torch.cat(outs, dim=-1))


@pytest.mark.parametrize("store", [False, True])
def test_cross_attention_matches_naive_reference(store):
    torch.manual_seed(0)
    attn = CrossAttention(query_dim=32, context_dim=20, heads=4, dim_head=8)
    attn.store_attention = store
    x, c = torch.randn(2, 10, 32), torch.randn(2, 7, 20)
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[0, 4:] = False
    torch.testing.assert_close(attn(x, c), naive_attention(attn, x, c), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(attn(x, c, mask=mask), naive_attention(attn, x, c, mask), atol=1e-5, rtol=1e-5)
    if store:
        p = attn.last_attention
        assert p.shape == (2, 4, 10, 7)
        torch.testing.assert_close(p.sum(-1), torch.ones(2, 4, 10))
        assert torch.all(p[0, :, :, 4:] == 0)
    # no context: self-attention
    self_attn = CrossAttention(query_dim=32, heads=2, dim_head=16)
    torch.testing.assert_close(self_attn(x), naive_attention(self_attn, x), atol=1e-5, rtol=1e-5)


def test_masked_tokens_are_ignored_by_attention_and_unet():
    torch.manual_seed(0)
    attn = CrossAttention(16, context_dim=12, heads=2, dim_head=8)
    x, c = torch.randn(2, 5, 16), torch.randn(2, 6, 12)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0]], dtype=torch.bool)
    c2 = c.clone()
    c2[~mask] = 100 * torch.randn(int((~mask).sum()), 12)
    torch.testing.assert_close(attn(x, c, mask=mask), attn(x, c2, mask=mask))
    assert not torch.allclose(attn(x, c), attn(x, c2))

    unet = randomize(small_unet()).eval()
    z, t = torch.randn(2, 4, 8, 8), torch.tensor([3, 700])
    c, c2 = torch.randn(2, 6, 24), None
    c2 = c.clone()
    c2[~mask] = torch.randn(int((~mask).sum()), 24)
    with torch.no_grad():
        a = unet(z, t, context=c, context_mask=mask)
        b = unet(z, t, context=c2, context_mask=mask)
        unmasked = unet(z, t, context=c2)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, unmasked)


def test_mask_errors():
    attn = CrossAttention(16, context_dim=12, heads=2, dim_head=8)
    x, c = torch.randn(2, 5, 16), torch.randn(2, 6, 12)
    with pytest.raises(ValueError, match=r"shape \(B, N_ctx\)"):
        attn(x, c, mask=torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="every token"):
        attn(x, c, mask=torch.zeros(2, 6, dtype=torch.bool))


def test_record_attention_maps():
    unet = randomize(small_unet()).eval()
    z, c = torch.randn(2, 4, 8, 8), torch.randn(2, 5, 24)
    with torch.no_grad():
        ref = unet(z, 10, context=c)
        with record_attention(unet) as maps:
            out = unet(z, 10, context=c)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert set(maps) and all(name.endswith("attn2") for name in maps)
    a = maps["middle_block.1.transformer_blocks.0.attn2"][-1]
    heads = 64 // 16
    assert a.shape == (2, heads, 4 * 4, 5)  # middle block is at 4×4 for an 8×8 input
    torch.testing.assert_close(a.sum(-1), torch.ones_like(a.sum(-1)))
    assert all(not m.store_attention for m in unet.modules() if isinstance(m, CrossAttention))


def test_spatial_transformer_identity_at_init_and_context_errors():
    st = SpatialTransformer(32, n_heads=2, d_head=16, context_dim=8)
    x = torch.randn(2, 32, 4, 6)
    torch.testing.assert_close(st(x, context=torch.randn(2, 3, 8)), x)  # zero-initialised proj_out
    with pytest.raises(ValueError, match=r"context_dim=8"):
        st(x, context=torch.randn(2, 3, 9))
    lin = SpatialTransformer(32, n_heads=2, d_head=16, use_linear=True)
    conv = SpatialTransformer(32, n_heads=2, d_head=16)
    assert count_parameters(lin) == count_parameters(conv)
    torch.testing.assert_close(lin(x), x)


def test_resblock_and_attention_block_shapes():
    rb = ResBlock(32, 64, out_channels=64, use_scale_shift_norm=True, down=True)
    assert rb(torch.randn(2, 32, 8, 8), torch.randn(2, 64)).shape == (2, 64, 4, 4)
    rb = ResBlock(32, 64, up=True)
    assert rb(torch.randn(2, 32, 8, 8), torch.randn(2, 64)).shape == (2, 32, 16, 16)
    ab = AttentionBlock(64, num_head_channels=32)
    x = torch.randn(2, 64, 4, 4)
    torch.testing.assert_close(ab(x), x)
    with pytest.raises(ValueError, match="divisible by 32"):
        ResBlock(48, 64)


# ----------------------------------------------------------------------------------------------
# UNetModel
# ----------------------------------------------------------------------------------------------
CONFIGS = {
    "crossattn": dict(),
    "uncond-transformer": dict(context_dim=None),
    "class": dict(num_classes=5),
    "updown+scaleshift": dict(resblock_updown=True, use_scale_shift_norm=True),
    "adm-attention": dict(context_dim=None, use_spatial_transformer=False, num_head_channels=-1, num_heads=2),
    "3-levels-linear-depth2": dict(channel_mult=(1, 2, 2), attention_resolutions=(1, 4), transformer_depth=2,
                                   use_linear_in_transformer=True, num_res_blocks=2),
    "1-level": dict(channel_mult=(1,), attention_resolutions=(1,)),
    "wider-first-level": dict(channel_mult=(2, 4), attention_resolutions=(2,)),  # channel_mult[0] != 1
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_output_shape_and_zero_output_at_init(name):
    kw = CONFIGS[name]
    unet = small_unet(**kw)
    b = 2
    x = torch.randn(b, 4, 8, 12)  # non-square on purpose
    args = {}
    if unet.context_dim is not None:
        args["context"] = torch.randn(b, 3, unet.context_dim)
    if unet.num_classes is not None:
        args["y"] = torch.tensor([0, 4])
    out = unet(x, torch.tensor([1, 999]), **args)
    assert out.shape == (b, 4, 8, 12)
    assert torch.all(out == 0)  # the output conv is zero-initialised (as in LDM)
    out = randomize(unet)(x, torch.tensor([1, 999]), **args)
    assert out.shape == (b, 4, 8, 12) and torch.isfinite(out).all() and out.abs().sum() > 0


def test_gradient_flows_through_context_and_class():
    unet = randomize(small_unet(num_classes=3))
    x = torch.randn(2, 4, 8, 8)
    c = torch.randn(2, 3, 24, requires_grad=True)
    unet(x, torch.tensor([5, 6]), context=c, y=torch.tensor([0, 2])).square().mean().backward()
    assert c.grad is not None and c.grad.abs().sum() > 0
    assert unet.label_emb.weight.grad[[0, 2]].abs().sum() > 0
    assert unet.label_emb.weight.grad[1].abs().sum() == 0


def test_use_checkpoint_gives_same_output_and_gradients():
    torch.manual_seed(0)
    a = randomize(small_unet())
    b = randomize(small_unet(use_checkpoint=True))
    x, c, t = torch.randn(2, 4, 8, 8), torch.randn(2, 3, 24), torch.tensor([1, 2])
    la, lb = a(x, t, c).square().mean(), b(x, t, c).square().mean()
    torch.testing.assert_close(la, lb)
    la.backward()
    lb.backward()
    for (n, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, msg=n)


def test_channels_last_and_scalar_timestep():
    unet = randomize(small_unet()).eval()
    x, c = torch.randn(2, 4, 8, 8), torch.randn(2, 3, 24)
    with torch.no_grad():
        ref = unet(x, torch.tensor([7, 7]), c)
        torch.testing.assert_close(unet(x, 7, c), ref)
        cl = unet.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last), 7, c)
    torch.testing.assert_close(cl, ref, atol=1e-5, rtol=1e-4)


def test_bfloat16_model_runs_and_agrees():
    unet = randomize(small_unet()).eval()
    x, c = torch.randn(2, 4, 8, 8), torch.randn(2, 3, 24)
    with torch.no_grad():
        ref = unet(x, 3, c)
        out = unet.to(torch.bfloat16)(x.bfloat16(), 3, c.bfloat16())  # GroupNorm32 computes in float32
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, atol=0.05, rtol=0.05)


def test_errors_name_the_problem():
    unet = small_unet(channel_mult=(1, 2, 2))
    c = torch.randn(1, 3, 24)
    with pytest.raises(ValueError, match=r"10×12 is not divisible by 4"):
        unet(torch.randn(1, 4, 10, 12), 1, c)
    with pytest.raises(ValueError, match=r"last dimension 32.*context_dim=24.*context_dim=32"):
        unet(torch.randn(1, 4, 8, 8), 1, torch.randn(1, 3, 32))
    with pytest.raises(ValueError, match=r"context_dim=24"):
        unet(torch.randn(1, 4, 8, 8), 1)
    with pytest.raises(ValueError, match=r"timesteps must have shape \(B,\)"):
        unet(torch.randn(2, 4, 8, 8), torch.tensor([1, 2, 3]), torch.randn(2, 3, 24))
    with pytest.raises(ValueError, match="not class-conditional"):
        unet(torch.randn(1, 4, 8, 8), 1, c, y=torch.tensor([0]))
    with pytest.raises(ValueError, match="in_channels=4"):
        unet(torch.randn(1, 3, 8, 8), 1, c)
    cls = small_unet(num_classes=10)
    with pytest.raises(ValueError, match=r"class-conditional \(num_classes=10\)"):
        cls(torch.randn(1, 4, 8, 8), 1, c)
    with pytest.raises(ValueError, match="no cross-attention"):
        small_unet(context_dim=None)(torch.randn(1, 4, 8, 8), 1, c)
    with pytest.raises(ValueError, match="exactly one of num_heads"):
        small_unet(num_heads=4)
    with pytest.raises(ValueError, match="exactly one of num_heads"):
        small_unet(num_head_channels=-1)
    with pytest.raises(ValueError, match=r"contains \[8\]"):
        small_unet(attention_resolutions=(8,))
    with pytest.raises(ValueError, match="use_spatial_transformer=True"):
        small_unet(use_spatial_transformer=False)


def test_config_roundtrip_and_shape_trace():
    unet = small_unet(num_classes=3)
    cfg = unet.to_config()
    assert isinstance(cfg, UNetConfig) and cfg.num_classes == 3
    clone = UNetModel.from_config(cfg)
    clone.load_state_dict(unet.state_dict())  # same architecture, same keys
    rows = unet.shape_trace(torch.randn(2, 4, 8, 8), 5, torch.randn(2, 3, 24), y=torch.tensor([0, 1]))
    names = [r.name for r in rows]
    assert names[0] == "time_embed" and names[-1] == "out" and "middle_block" in names
    assert len(rows) == 1 + len(unet.input_blocks) + 1 + len(unet.output_blocks) + 1
    shapes = dict((r.name, r.shape) for r in rows)
    assert shapes["time_embed"] == (2, 128)
    assert shapes["middle_block"] == (2, 64, 4, 4)
    assert shapes["out"] == (2, 4, 8, 8)
    assert "SpatialTransformer" in dict((r.name, r.layers) for r in rows)["middle_block"]


# ----------------------------------------------------------------------------------------------
# the paper's configurations, and diffusers as an oracle
# ----------------------------------------------------------------------------------------------
# N_params reported in the paper (App. E, Tab. 12 unconditional; Tab. 3 ImageNet LDM-4; the f-ablation
# models of Sec. 4.1 are "391-395M"). Printed, not asserted: the paper rounds and its text-to-image number
# (1.45B) includes the 32-layer text transformer.
PAPER_NPARAMS = {
    "celebahq-ldm-vq-4": "274M", "ffhq-ldm-vq-4": "274M", "lsun_bedrooms-ldm-vq-4": "274M",
    "lsun_churches-ldm-kl-8": "294M", "cin256-v2": "400M", "cin-ldm-vq-f8": "391-395M",
    "txt2img-1p4B": "1.45B incl. text encoder", "stable-diffusion-v1": "859.52M (SD model card)",
}


@pytest.mark.parametrize("name", ["celebahq-ldm-vq-4", "lsun_churches-ldm-kl-8", "cin-ldm-vq-f8",
                                  "cin256-v2", "stable-diffusion-v1"])
def test_paper_configs_on_meta_device_match_diffusers_parameter_counts(name):
    cfg = PAPER_CONFIGS[name]
    with torch.device("meta"):
        ours = UNetModel.from_config(cfg)
        cls_name, kw = diffusers_equivalent(cfg)
        ref = getattr(diffusers, cls_name)(**kw)
    assert next(ours.parameters()).device.type == "meta"
    n_ours, n_ref = count_parameters(ours), count_parameters(ref)
    print(f"{name}: ours {n_ours:,}  diffusers {cls_name} {n_ref:,}  paper {PAPER_NPARAMS[name]}")
    assert n_ours == n_ref
    if name == "celebahq-ldm-vq-4":
        assert round(n_ours / 1e6) == 274  # App. E, Tab. 12
    if name == "stable-diffusion-v1":
        assert n_ours == 859_520_964


def to_diffusers_state_dict(unet: UNetModel) -> dict[str, torch.Tensor]:
    """Rename our (CompVis) keys to diffusers' UNet2DConditionModel / UNet2DModel keys."""
    cfg = unet.config
    nrb, levels = cfg.num_res_blocks, len(cfg.channel_mult)
    res = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
           "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}
    prefix = {"time_embed.0": "time_embedding.linear_1", "time_embed.2": "time_embedding.linear_2",
              "label_emb": "class_embedding", "input_blocks.0.0": "conv_in", "out.0": "conv_norm_out",
              "out.2": "conv_out", "middle_block.0": "mid_block.resnets.0", "middle_block.1": "mid_block.attentions.0",
              "middle_block.2": "mid_block.resnets.1"}
    for level in range(levels):
        for r in range(nrb):
            i = 1 + level * (nrb + 1) + r
            prefix[f"input_blocks.{i}.0"] = f"down_blocks.{level}.resnets.{r}"
            prefix[f"input_blocks.{i}.1"] = f"down_blocks.{level}.attentions.{r}"
        if level < levels - 1:
            i = 1 + level * (nrb + 1) + nrb
            prefix[f"input_blocks.{i}.0.op"] = f"down_blocks.{level}.downsamplers.0.conv"
            prefix[f"input_blocks.{i}.0"] = f"down_blocks.{level}.downsamplers.0"
    for up in range(levels):
        for r in range(nrb + 1):
            i = up * (nrb + 1) + r
            prefix[f"output_blocks.{i}.0"] = f"up_blocks.{up}.resnets.{r}"
            block = unet.output_blocks[i]
            for j in range(1, len(block)):
                if isinstance(block[j], (SpatialTransformer, AttentionBlock)):
                    prefix[f"output_blocks.{i}.{j}"] = f"up_blocks.{up}.attentions.{r}"
                else:
                    prefix[f"output_blocks.{i}.{j}"] = f"up_blocks.{up}.upsamplers.0"
    out = {}
    for key, value in unet.state_dict().items():
        pre = max((p for p in prefix if key.startswith(p + ".")), key=len)
        rest = key[len(pre) + 1:]
        for a, b in res.items():
            if rest.startswith(a + "."):
                rest = b + rest[len(a):]
        mod = unet.get_submodule(pre)
        if isinstance(mod, AttentionBlock):  # fused legacy qkv conv → diffusers' to_q / to_k / to_v linears
            if rest.startswith("norm."):
                rest = "group_norm." + rest[5:]
            elif rest.startswith("proj_out."):
                rest, value = "to_out.0." + rest[9:], value.squeeze(-1)
            elif rest.startswith("qkv."):
                c, nh = mod.channels, mod.num_heads
                parts = value.reshape(nh, 3, c // nh, *value.shape[1:]).unbind(1)  # head-major [q, k, v]
                for name, part in zip(("to_q", "to_k", "to_v"), parts):
                    out[f"{prefix[pre]}.{name}.{rest[4:]}"] = part.reshape(c, *value.shape[1:]).squeeze(-1)
                continue
        if rest.startswith("op."):
            rest = "conv." + rest[3:]
        out[f"{prefix[pre]}.{rest}"] = value
    return out


def test_diffusers_equivalent_refuses_a_wider_first_level():
    unet = small_unet(channel_mult=(2, 4), attention_resolutions=(2,), context_dim=None)
    with pytest.raises(ValueError, match=r"channel_mult\[0\] = 2.*raise model_channels"):
        diffusers_equivalent(unet.config)


@pytest.mark.parametrize("kind", ["crossattn-class-mask", "adm-updown-scaleshift", "uncond-transformer"])
def test_outputs_match_diffusers_with_copied_weights(kind):
    if kind == "crossattn-class-mask":
        unet = small_unet(channel_mult=(1, 2, 2), attention_resolutions=(2, 4), num_classes=4, transformer_depth=2,
                          use_linear_in_transformer=True)
    elif kind == "adm-updown-scaleshift":
        unet = small_unet(channel_mult=(1, 2, 2), attention_resolutions=(1, 4), context_dim=None,
                          use_spatial_transformer=False, use_scale_shift_norm=True, resblock_updown=True)
    else:
        unet = small_unet(context_dim=None)
    randomize(unet).eval()
    cls_name, kw = diffusers_equivalent(unet.config)
    ref = getattr(diffusers, cls_name)(**kw).eval()
    ref.load_state_dict(to_diffusers_state_dict(unet), strict=True)
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([10, 900])
    with torch.no_grad():
        if kind == "crossattn-class-mask":
            c, y = torch.randn(2, 5, 24), torch.tensor([1, 3])
            mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
            ours = unet(x, t, context=c, y=y, context_mask=mask)
            theirs = ref(x, t, encoder_hidden_states=c, class_labels=y, encoder_attention_mask=mask.float()).sample
        elif kind == "adm-updown-scaleshift":
            ours, theirs = unet(x, t), ref(x, t).sample
        else:
            ours, theirs = unet(x, t), ref(x, t, encoder_hidden_states=None).sample
    assert ours.abs().mean() > 0.1
    torch.testing.assert_close(ours, theirs, atol=2e-4, rtol=2e-4)


def test_coordinate_channels():
    """coord_channels appends x and y in [-1, 1]; the latent's in_channels stay as they are; position
    becomes visible to the network (a constant input gives a position-dependent first feature map)."""
    from ldm_lite.unet import UNetModel

    x = torch.zeros(2, 4, 8, 6)
    grid = UNetModel.coordinates(x)
    assert grid.shape == (2, 2, 8, 6)
    torch.testing.assert_close(grid[0, 0, 0], torch.linspace(-1, 1, 6))  # x runs along a row
    torch.testing.assert_close(grid[0, 1, :, 0], torch.linspace(-1, 1, 8))  # y down a column
    unet = UNetModel(in_channels=4, out_channels=4, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                     attention_resolutions=(2,), num_head_channels=16, coord_channels=True)
    assert unet.in_channels == 4 and unet.input_blocks[0][0].in_channels == 6
    h = unet.input_blocks[0][0](torch.cat([x, grid], 1))
    assert h[:, :, 2:-2, 2:-2].std(dim=(2, 3)).max() > 0  # varies with position away from the padding
    assert unet(torch.randn(2, 4, 8, 8), torch.tensor([1, 2])).shape == (2, 4, 8, 8)
    assert UNetModel.from_config(unet.to_config()).input_blocks[0][0].in_channels == 6
    with pytest.raises(ValueError, match="coordinate channels"):
        diffusers_equivalent(unet.to_config())
