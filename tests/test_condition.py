"""The learned condition (:class:`Condition`), its one routing point (``LatentDiffusion.apply_model``) and the shared
checks of :mod:`ldm_lite.checks`: conversion of the old forms, batching for guidance, dropout, and checks made once,
where a value enters."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
import torch

from ldm_lite import checks
from ldm_lite.conditioning.condition import Condition, raw_condition
from ldm_lite.diffusion import samplers
from ldm_lite.diffusion.guidance import batch_conditionings, split_batch
from ldm_lite.ldm import LatentDiffusion
from ldm_lite.unet.model import UNetModel

B, M, D = 2, 5, 8


def unet(**kw) -> UNetModel:
    torch.manual_seed(0)
    args = dict(in_channels=3, out_channels=3, model_channels=8, channel_mult=(1,), attention_resolutions=(),
                num_heads=1, norm_num_groups=8, use_spatial_transformer=False)
    args.update(kw)
    return UNetModel(**args)


def test_of_converts_the_old_forms_once():
    ctx, mask = torch.randn(B, M, D), torch.ones(B, M, dtype=torch.bool)
    c = Condition.of({"c_crossattn": [ctx[:, :2], ctx[:, 2:]], "context_mask": mask}, "crossattn")  # CompVis lists
    assert torch.equal(c.context, ctx) and c.context_mask is mask and c.concat is None and c.y is None
    assert Condition.of(c, "crossattn") is c and Condition.of(None, "crossattn") is None
    assert Condition.of((ctx, mask), "crossattn").context_mask is mask  # a text encoder's (context, mask)
    assert Condition.of(torch.randn(B, 3, 4, 4), "concat").concat.shape == (B, 3, 4, 4)
    assert Condition.of(torch.tensor([1, 2]), "adm").y.tolist() == [1, 2]
    assert Condition.of({"c_crossattn": ctx, "y": torch.tensor([1, 2])}, "crossattn").y is None  # not routed
    with pytest.raises(ValueError, match="unknown condition keys"):
        Condition.of({"mask": mask}, "crossattn")
    with pytest.raises(ValueError, match="'hybrid' needs a dict"):
        Condition.of(ctx, "hybrid")
    with pytest.raises(TypeError, match="get_learned_conditioning first"):
        Condition.of(["a caption"], "crossattn")
    with pytest.raises(ValueError, match="unconditional"):
        Condition.of(ctx, None)


def test_reads_like_the_old_dict():
    ctx, mask = torch.randn(B, M, D), torch.ones(B, M, dtype=torch.bool)
    c = Condition(context=ctx, context_mask=mask)
    assert c["c_crossattn"] is ctx and c.get("context_mask") is mask and c.get("c_concat") is None
    assert [k for k, _ in c.items()] == ["c_crossattn", "context_mask"] and "c_concat" not in c
    assert c.batch_size == B and "context=(2, 5, 8) float32" in repr(c)
    with pytest.raises(KeyError, match="c_concat"):
        c["c_concat"]
    with pytest.raises(ValueError, match="needs a 'c_concat'"):
        c.check_parts("hybrid")


def test_expand_cat_chunk_and_zeros():
    cond = Condition(context=torch.randn(B, M, D), concat=torch.randn(B, 3, 4, 4))
    null = Condition(context=torch.zeros(1, M, D))
    assert null.expand(B).context.shape == (B, M, D)
    with pytest.raises(ValueError, match="holds 2 samples but 3"):
        cond.expand(3)
    both = null.cat(cond)  # [uncond, cond]; the concat image it lacks is shared
    assert both.batch_size == 2 * B and both.context[:B].abs().sum() == 0
    assert torch.equal(both.concat, torch.cat([cond.concat] * 2))
    u, c = both.chunk(2)
    assert torch.equal(c.context, cond.context) and u.context.abs().sum() == 0
    with pytest.raises(ValueError, match="lacks"):
        cond.cat(null)
    z = Condition(context=cond.context, context_mask=torch.zeros(B, M, dtype=torch.bool)).zeros_like(3)
    assert z.context.shape == (3, M, D) and z.context.abs().sum() == 0 and z.context_mask.all()
    with pytest.raises(ValueError, match="null class"):
        Condition(y=torch.tensor([1])).zeros_like()
    # the guidance helpers take a Condition as one object
    assert torch.equal(batch_conditionings(null, cond).context, both.context)
    assert torch.equal(split_batch(both)[1].concat, cond.concat)


def test_where_drops_per_sample_and_keeps_the_concat_image():
    cond = Condition(context=torch.ones(B, M, D), context_mask=torch.tensor([[True] * 3 + [False] * 2] * B),
                     concat=torch.ones(B, 3, 4, 4))
    null = Condition(context=torch.zeros(B, M, D))  # no mask: all tokens real
    out = cond.where(torch.tensor([True, False]), null)
    assert out.context[0].abs().sum() == 0 and torch.equal(out.context[1], cond.context[1])
    assert out.context_mask[0].all() and torch.equal(out.context_mask[1], cond.context_mask[1])
    assert torch.equal(out.concat, cond.concat)
    with pytest.raises(ValueError, match="same form"):
        cond.where(torch.tensor([True, False]), Condition(context=torch.zeros(B, M + 1, D)))


def test_raw_condition_of_a_batch():
    batch = {"label": torch.tensor([1, 2]), "masked_latent": torch.zeros(2, 4, 2, 2), "hole_mask": torch.ones(2)}
    assert raw_condition(batch, "label") is batch["label"]
    got = raw_condition(batch, ("masked_image", "hole_mask"), {"masked_image": "masked_latent"})
    assert set(got) == {"masked_latent", "hole_mask"}  # the cache holds the image already encoded
    assert set(raw_condition(batch, {"c_crossattn": "label"})) == {"c_crossattn"}
    with pytest.raises(KeyError, match="caption"):
        raw_condition(batch, "caption", conditioning_key="crossattn")


def test_apply_model_routes_concat_and_checks_raw_forms_only():
    torch.manual_seed(0)
    model = LatentDiffusion(None, unet(in_channels=5), conditioning_key="concat", cond_key="lr", image_size=8).eval()
    x, t, cc = torch.randn(B, 3, 8, 8), torch.tensor([10, 500]), torch.randn(B, 2, 8, 8)
    want = model.unet(torch.cat([x, cc], 1), t)
    torch.testing.assert_close(model.apply_model(x, t, Condition(concat=cc)), want)
    torch.testing.assert_close(model.apply_model(x, t, {"c_concat": [cc]}), want)  # a raw form: converted here
    with pytest.raises(ValueError, match="latent size"):
        model.apply_model(x, t, torch.randn(B, 2, 4, 4))
    with pytest.raises(ValueError, match="in_channels=5"):
        model.apply_model(x, t, torch.randn(B, 1, 8, 8))
    with pytest.raises(ValueError, match="cond=None"):
        model.apply_model(x, t, None)


def test_sample_checks_once_and_the_sampler_loop_does_not(monkeypatch):
    torch.manual_seed(0)
    model = LatentDiffusion(None, unet(num_classes=3), conditioning_key="adm", cond_key="label",
                            unconditional_value=2, image_size=8)
    calls = []
    for name in ("check_guidance", "check_known_at", "check_start_noise"):  # the sampler's own entry checks
        monkeypatch.setattr(samplers, name, lambda *a, _n=name, **k: calls.append(_n))
    x0, keep = torch.full((1, 3, 8, 8), -0.5), torch.ones(8, 8)
    out = model.sample(2, cond=torch.tensor([0, 1]), guidance_scale=2.0, steps=2, x0=x0, keep_mask=keep,
                       x_T=torch.randn(2, 3, 8, 8), progress=False, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 3, 8, 8) and calls == []  # LatentDiffusion.sample checked; Sampler.run trusted it
    samplers.DDIMSampler(model.schedule).sample(lambda x, t, c: x, (1, 3, 8, 8), 2, progress=False)
    assert calls == ["check_guidance"]  # Sampler.sample is an entry point of its own


def test_known_region_and_mask_pairing():
    shape = (2, 3, 8, 8)
    mask, x0 = checks.known_region(torch.zeros(3, 8, 8), None, torch.zeros(8, 8), shape)
    assert mask.shape == (1, 1, 8, 8) and mask.all() and x0.shape == shape
    assert checks.known_region(None, None, None, shape) == (None, None)
    with pytest.raises(ValueError, match="pass x0"):
        checks.known_region(None, torch.ones(8, 8), None, shape)
    with pytest.raises(ValueError, match="pass keep_mask"):
        checks.known_region(torch.zeros(shape), None, None, shape)
    with pytest.raises(ValueError, match="holds 3 masks"):
        checks.known_region(torch.zeros(shape), torch.ones(3, 1, 8, 8), None, shape)


def test_checks_module_needs_only_torch_and_the_standard_library():
    tree = ast.parse(Path(checks.__file__).read_text())
    roots = {(n.module if isinstance(n, ast.ImportFrom) else a.name).split(".")[0]
             for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names}
    assert roots - {"torch", "__future__"} <= set(sys.stdlib_module_names)
