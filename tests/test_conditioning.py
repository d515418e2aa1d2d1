"""The conditioning encoders (chapter 06): tokenizer, class / text / layout embedders, dropout, guidance."""

import math

import pytest
import torch

from ldm_lite.conditioning import (
    ClassEmbedder,
    FrozenTextEncoder,
    LayoutEmbedder,
    TransformerEmbedder,
    WordPieceTokenizer,
    build_cond_stage,
    layout_from_objects,
)
from ldm_lite.diffusion.guidance import cfg_combine
from ldm_lite.ldm import LatentDiffusion
from ldm_lite.unet import UNetModel
from ldm_lite.unet.attention import record_attention

CAPTIONS = ["a big red circle left of a small blue square", "a small purple triangle",
            "a big green cross above a small yellow hexagon, which is right of a big cyan diamond"]


def tiny_ldm(cond_stage, context_dim, unconditional_value, cond_key, p=0.0, trainable=True):
    unet = UNetModel(in_channels=3, out_channels=3, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                     attention_resolutions=(1, 2), num_head_channels=16, context_dim=context_dim)
    return LatentDiffusion(None, unet, cond_stage, conditioning_key="crossattn", cond_key=cond_key,
                           cond_drop_prob=p, unconditional_value=unconditional_value,
                           cond_stage_trainable=trainable, image_size=16)


def test_tokenizer_round_trip_and_padding():
    tok = WordPieceTokenizer(max_length=32)
    ids, mask = tok(CAPTIONS)
    assert ids.shape == mask.shape == (3, 32)
    assert tok.decode(ids) == CAPTIONS  # lower-case captions survive exactly
    assert (ids[:, 0] == tok.cls_id).all()
    assert (ids[~mask] == tok.pad_id).all() and mask.sum(1).tolist() == [len(tok.tokens(c)) for c in CAPTIONS]
    empty_ids, empty_mask = tok("")
    assert empty_mask.sum() == 2 and empty_ids[0, :2].tolist() == [tok.cls_id, tok.sep_id]  # the null caption
    assert tok.tokens("a big purple diamond") == ["[CLS]", "a", "big", "purple", "diamond", "[SEP]"]
    with pytest.raises(ValueError, match="max_length >= "):
        WordPieceTokenizer(max_length=6)(CAPTIONS[0])
    with pytest.raises(TypeError, match="strings"):
        tok([3])


def test_class_embedder_null_class_and_range():
    emb = ClassEmbedder(10, 16)
    c, mask = emb(torch.tensor([0, 9, 10]))
    assert c.shape == (3, 1, 16) and mask.all() and emb.null_class == 10
    for bad in (torch.tensor([11]), torch.tensor([-1])):
        with pytest.raises(ValueError, match=r"out of range: use 0\.\.9, or 10 for the null class"):
            emb(bad)
    with pytest.raises(TypeError, match="integers"):
        emb(torch.tensor([1.5]))


def test_transformer_embedder_vocabulary_and_ids():
    vocab = TransformerEmbedder.vocabulary_of(CAPTIONS)
    emb = TransformerEmbedder(32, depth=1, heads=4, vocabulary=vocab)
    assert emb.transformer.token_embedding.num_embeddings == len(set(vocab) | {0, 101, 102}) + 1
    h, mask = emb(CAPTIONS)
    assert h.shape == (3, 32, 32) and mask.dtype == torch.bool
    # a word outside the vocabulary shares the [UNK] row: "orange" and "pink" give the same tokens
    a, _ = emb(["a big orange circle"])
    b, _ = emb(["a big pink circle"])
    torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="token id 40000 is out of range"):
        emb(torch.tensor([[101, 40000, 102]]))
    # build_cond_stage round trip (what load_ldm does from a manifest)
    again = build_cond_stage(emb.config())
    again.load_state_dict(emb.state_dict())
    torch.testing.assert_close(again(CAPTIONS)[0], h)


def test_padded_tokens_get_zero_attention_and_change_nothing():
    torch.manual_seed(0)
    emb = TransformerEmbedder(32, depth=1, heads=4)
    ids, mask = emb.tokenize(CAPTIONS[:2])
    h, _ = emb((ids, mask))
    other = ids.clone()
    other[~mask] = 2000  # garbage in the padding
    h2, _ = emb((other, mask))
    torch.testing.assert_close(h[mask], h2[mask])  # real tokens never look at padding
    ldm = tiny_ldm(emb, 32, "", "caption")
    c = ldm.get_learned_conditioning(CAPTIONS[:2])
    z = torch.randn(2, 3, 16, 16)
    with record_attention(ldm.unet) as maps:
        ldm.apply_model(z, torch.tensor([10, 500]), c)
    assert maps
    for name, calls in maps.items():
        a = calls[-1]  # (B, heads, N, M)
        pad = ~mask[:, None, None, :].expand_as(a)
        assert float(a[pad].abs().max()) == 0.0, name
        torch.testing.assert_close(a.sum(-1), torch.ones_like(a.sum(-1)))


def test_cond_drop_rate_and_null_condition():
    torch.manual_seed(0)
    emb = ClassEmbedder(4, 8)
    ldm = tiny_ldm(emb, 8, emb.null_class, "label", p=0.25)
    ldm.train()
    labels = torch.randint(0, 4, (4000,))
    c = ldm.get_condition({"label": labels})
    null = emb(torch.tensor([4]))[0][0]
    dropped = c["c_crossattn"][:, 0].eq(null[0]).all(-1)
    rate = float(dropped.float().mean())
    assert abs(rate - 0.25) < 4 * math.sqrt(0.25 * 0.75 / 4000), rate
    ldm.eval()
    c_eval = ldm.get_condition({"label": labels[:64]})
    kept = c_eval["c_crossattn"][:, 0]
    torch.testing.assert_close(kept, emb(labels[:64])[0][:, 0])  # no dropout outside training


def test_cfg_combination_in_sampling():
    """Guidance s gives eps_u + s (eps_c - eps_u): check the sampler's first model call against it."""
    torch.manual_seed(0)
    emb = ClassEmbedder(3, 16)
    ldm = tiny_ldm(emb, 16, emb.null_class, "label").eval()
    z = torch.randn(2, 3, 16, 16)
    t = torch.tensor([700, 700])
    c = ldm.get_learned_conditioning(torch.tensor([0, 2]))
    u = ldm.get_unconditional_conditioning(2, like=c)
    e_c, e_u = ldm.apply_model(z, t, c), ldm.apply_model(z, t, u)
    torch.testing.assert_close(cfg_combine(e_u, e_c, 3.0), e_u + 3.0 * (e_c - e_u))
    calls, seen = [], []
    inner = ldm.apply_model

    def spy(x, tt, cc):
        calls.append(tt.clone())
        return inner(x, tt, cc)

    ldm.apply_model = spy
    ldm.sample(2, cond=torch.tensor([0, 2]), guidance_scale=3.0, steps=1, x_T=z, progress=False, sampler="ddim",
               callback=lambda i, n, x, pred_x0: seen.append(pred_x0))
    ldm.apply_model = inner
    t_used = calls[0][:1].expand(2)
    e_c, e_u = ldm.apply_model(z, t_used, c), ldm.apply_model(z, t_used, u)
    eps = e_u + 3.0 * (e_c - e_u)
    ab = ldm.schedule.alphas_cumprod[int(t_used[0])].float()
    expected_x0 = ((z - (1 - ab).sqrt() * eps) / ab.sqrt()).clamp(-1, 1)  # a pixel-space model clips x0
    torch.testing.assert_close(seen[0], expected_x0, atol=1e-4, rtol=1e-4)


def test_guidance_on_unconditional_model_is_an_error():
    unet = UNetModel(in_channels=3, out_channels=3, model_channels=32, channel_mult=(1,), num_res_blocks=1,
                     attention_resolutions=(), num_head_channels=32)
    ldm = LatentDiffusion(None, unet, image_size=8)
    with pytest.raises(ValueError, match="needs a conditional model"):
        ldm.sample(1, guidance_scale=3.0, steps=1, progress=False)


def test_frozen_text_encoder_is_frozen():
    enc = FrozenTextEncoder("minilm")
    assert not any(p.requires_grad for p in enc.parameters())
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    h, mask = enc(CAPTIONS[:2])
    assert h.shape == (2, 32, 384) and mask.sum(1).tolist() == [12, 6]
    ldm = tiny_ldm(enc, 384, "", "caption", p=0.1, trainable=False)
    opt = ldm.configure_optimizers()["ldm"]
    assert all(p.data_ptr() not in {q.data_ptr() for q in enc.parameters()}
               for g in opt.param_groups for p in g["params"])
    ldm.train()
    assert not enc.training  # dropout stays off
    loss, _ = ldm.training_step({"image": torch.randn(2, 3, 16, 16), "caption": CAPTIONS[:2]})
    loss.backward()
    opt.step()
    after = enc.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(FileNotFoundError, match="not in the Hugging Face cache"):
        FrozenTextEncoder("openai/clip-vit-large-patch14-not-cached-here")


def test_layout_tokens_shapes_and_errors():
    emb = LayoutEmbedder(embed_dim=32, depth=1)
    one = layout_from_objects([{"box": [0.1, 0.1, 0.5, 0.4], "shape": "circle", "color": "red", "size": "big"},
                               {"box": [0.6, 0.6, 0.9, 0.9], "shape": "cross", "color": "blue"}])
    batch = torch.stack([one, LayoutEmbedder.empty(3)])
    tokens, mask = emb(batch)
    assert tokens.shape == (2, 4, 32)
    assert mask.tolist() == [[True, True, True, False], [True, False, False, False]]  # start token always there
    bad = one.clone()
    bad[0, 4] = 6
    with pytest.raises(ValueError, match=r"shape class 6 is out of range: use an integer in 0\.\.5"):
        emb(bad[None])
    bad = one.clone()
    bad[0, 2] = 1.5
    with pytest.raises(ValueError, match="fractions of the image side"):
        emb(bad[None])
    with pytest.raises(ValueError, match="colour|color"):
        layout_from_objects([{"box": [0, 0, 1, 1], "shape": "circle", "color": "mauve"}])


def test_layout_field_of_shapes_matches_boxes():
    from ldm_lite.data import ShapesDataset

    item = ShapesDataset(size=64, length=4, seed=3)[1]
    n = item["num_objects"]
    torch.testing.assert_close(item["layout"][:n, :4], item["boxes"][:n] / 64)
    assert item["layout"][:n, 4].tolist() == item["labels"][:n].tolist()
    assert (item["layout"][n:, 4:] == -1).all()
    LayoutEmbedder()(item["layout"][None])  # a dataset layout is valid input


@pytest.fixture(scope="module")
def tiny_exports(tmp_path_factory):
    """A text and a layout model (pixel space, 3 steps), exported as the CLI would find them."""
    from ldm_lite.experiments import LDMRecipe, train_ldm

    root = tmp_path_factory.mktemp("cond_models")
    paths = {}
    for cond in ("text", "layout"):
        recipe = LDMRecipe(data="shapes", size=16, first_stage="pixel", cond=cond, train_images=16, model_channels=32,
                           channel_mult=(1, 2), attention_resolutions=(2,), num_head_channels=16, steps=3, batch_size=4,
                           eval_images=4, lr_warmup_steps=0, cond_dim=32, holdout=("purple triangle",))
        train_ldm(recipe, progress=False, export=str(root / cond))
        paths[cond] = str(root / cond)
    return paths


def test_generate_is_deterministic_and_refuses_bad_prompts(tiny_exports):
    from ldm_lite.interactive import generate
    from ldm_lite.pretrained import load_ldm, load_manifest

    model = load_ldm(tiny_exports["text"])
    assert load_manifest(tiny_exports["text"])["recipe"]["holdout"] == ["purple triangle"]
    a = generate(model, "a big red circle", guidance=3.0, seed=1, n=2, steps=2)
    b = generate(model, "a big red circle", guidance=3.0, seed=1, n=2, steps=2)
    assert a.shape == (2, 3, 16, 16) and torch.equal(a, b)
    assert not torch.equal(a, generate(model, "a big red circle", guidance=3.0, seed=2, n=2, steps=2))
    with pytest.raises(ValueError, match="write a prompt"):
        generate(model, "   ")
    with pytest.raises(ValueError, match="max_length"):
        generate(model, " ".join(["a big red circle left of"] * 8))
    with pytest.raises(ValueError, match="not on a caption"):
        generate(load_ldm(tiny_exports["layout"]), "a big red circle")


def test_cli_samples_prompts_and_layouts(tiny_exports, tmp_path, capsys):
    import json

    from ldm_lite import cli

    out = tmp_path / "t.png"
    cli.main(["sample", "--model", tiny_exports["text"], "--prompt", "a big red circle", "--prompt",
              "a small blue square", "--n", "3", "--steps", "2", "--guidance", "3", "--out", str(out)])
    assert out.exists()
    spec = tmp_path / "layout.json"
    spec.write_text(json.dumps([{"box": [0.1, 0.1, 0.6, 0.5], "shape": "circle", "color": "red", "size": "big"}]))
    npz = tmp_path / "l.npz"
    cli.main(["sample", "--model", tiny_exports["layout"], "--layout", str(spec), "--n", "2", "--steps", "2",
              "--out", str(npz)])
    assert json.loads(npz.with_suffix(".json").read_text())["layout"] == str(spec)
    spec.write_text(json.dumps([{"box": [0.1, 0.1, 0.6, 0.5], "shape": "circle", "color": "mauve"}]))
    with pytest.raises(SystemExit, match="mauve"):
        cli.main(["sample", "--model", tiny_exports["layout"], "--layout", str(spec), "--out", str(out)])
    spec.write_text(json.dumps([{"box": [0.1, 0.1, 0.6, 0.5], "shape": "circle", "color": "red"}]))
    with pytest.raises(SystemExit, match="use --prompt, not --layout"):
        cli.main(["sample", "--model", tiny_exports["text"], "--layout", str(spec), "--out", str(out)])
    with pytest.raises(SystemExit, match="max_length"):
        cli.main(["sample", "--model", tiny_exports["text"], "--prompt", "a big red circle left of " * 8,
                  "--out", str(out)])


def test_frozen_encoder_cache_is_exact_and_bounded():
    plain, cached = FrozenTextEncoder("minilm"), FrozenTextEncoder("minilm", cache_size=2)
    caps = ["a red heart", "grinning face", "a red heart", "a rocket"]
    h, m = plain(caps)
    for _ in range(2):  # first call fills the cache (2 of 3 captions fit), the second reads it
        hc, mc = cached(caps)
        torch.testing.assert_close(hc, h)
        assert torch.equal(mc, m)
    assert len(cached._cache) == 2


def test_init_from_copies_matching_unet_weights(tiny_exports):
    from ldm_lite.experiments import LDMRecipe, build_ldm, init_unet_from
    from ldm_lite.pretrained import load_ldm

    src = load_ldm(tiny_exports["text"])
    recipe = LDMRecipe(data="shapes", size=16, first_stage="pixel", cond="layout", model_channels=32,
                       channel_mult=(1, 2), attention_resolutions=(2,), num_head_channels=16, cond_dim=32)
    model = build_ldm(recipe, None)
    report = init_unet_from(model, tiny_exports["text"])
    own, theirs = model.unet.state_dict(), src.unet.state_dict()
    assert report["copied"] == len(own) and report["fresh"] == 0  # same UNet, same context width: all copied
    assert all(torch.allclose(own[k], theirs[k]) for k in own)
    wider = build_ldm(LDMRecipe(data="shapes", size=16, first_stage="pixel", cond="layout", model_channels=32,
                                channel_mult=(1, 2), attention_resolutions=(2,), num_head_channels=16, cond_dim=64),
                      None)
    report = init_unet_from(wider, tiny_exports["text"])
    assert report["fresh"] > 0 and all("attn2.to_k" in k or "attn2.to_v" in k for k in report["fresh_examples"])
    with pytest.raises(ValueError, match="not an LDM"):
        init_unet_from(model, "ae_kl_f4_openmoji64")


def test_init_from_copies_the_cond_stage_and_widens_to_coordinate_channels(tiny_exports):
    """A continuation starts exactly at its source: same text encoder weights, and a layout model given
    coordinate channels (zero weights on them) predicts the same ε as the model it starts from."""
    import dataclasses

    from ldm_lite.experiments import LDMRecipe, build_ldm, init_unet_from
    from ldm_lite.pretrained import load_ldm, load_manifest

    for name, extra in (("text", {}), ("layout", {"coord_channels": True})):
        src = load_ldm(tiny_exports[name]).eval()
        fields = {f.name for f in dataclasses.fields(LDMRecipe)}
        rec = {k: tuple(v) if isinstance(v, list) else v
               for k, v in load_manifest(tiny_exports[name])["recipe"].items() if k in fields}
        rec.update(extra)
        vocab = torch.nonzero(src.cond_stage.lookup < src.cond_stage.lookup.max()).flatten().tolist() \
            if name == "text" else None  # the kept WordPiece ids (every id not on the [UNK] row)
        model = build_ldm(LDMRecipe(**rec), None, vocabulary=vocab).eval()
        report = init_unet_from(model, tiny_exports[name])
        assert report["cond_stage_copied"] == len(model.cond_stage.state_dict()) > 0
        assert report["widened_zero_init"] == (["input_blocks.0.0.weight"] if extra else [])
        if extra:
            assert model.unet.input_blocks[0][0].in_channels == src.unet.input_blocks[0][0].in_channels + 2
        if name == "text":
            raw = ["a big red circle", "a small blue square"]
        else:
            from ldm_lite.data import ShapesDataset

            raw = torch.stack([torch.as_tensor(ShapesDataset(16, length=2, seed=3)[i]["layout"]) for i in range(2)])
        c_new, c_old = model.get_learned_conditioning(raw), src.get_learned_conditioning(raw)
        x, t = torch.randn(2, 3, 16, 16), torch.tensor([5, 700])
        with torch.no_grad():
            torch.testing.assert_close(model.apply_model(x, t, c_new), src.apply_model(x, t, c_old))
