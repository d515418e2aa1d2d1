"""Chapter 07's spatial pieces: degradations, hole masks and the mask convention, one-hot maps and the
SpatialRescaler, tiled decoding."""

from __future__ import annotations

import pytest
import torch

from ldm_lite.autoencoder import AutoencoderConfig, build_autoencoder
from ldm_lite.autoencoder.tiled import tile_starts, tiled_decode
from ldm_lite.conditioning import SpatialRescaler
from ldm_lite.data import ShapesDataset, degrade, keep_mask_from, one_hot_segmentation, random_mask, random_masks


@pytest.fixture(scope="module")
def images():
    ds = ShapesDataset(32, length=3, seed=4)
    return torch.stack([ds[i]["image"] for i in range(3)])


def test_bicubic_degradation_is_antialiased_downsampling(images):
    lr = degrade(images, 4)
    assert lr.shape == (3, 3, 8, 8) and lr.min() >= -1 and lr.max() <= 1
    # a flat image stays flat; the mean colour survives (antialiased, not point-sampled)
    flat = torch.full((3, 32, 32), 0.25)
    torch.testing.assert_close(degrade(flat, 4), torch.full((3, 8, 8), 0.25))
    torch.testing.assert_close(lr.mean((2, 3)), images.mean((2, 3)), atol=0.03, rtol=0)
    assert degrade(images[0], 2).shape == (3, 16, 16)  # a single image in, a single image out


def test_bsr_degradation_is_deterministic_and_worse_than_bicubic(images):
    a, b = degrade(images, 4, kind="bsr", seed=7), degrade(images, 4, kind="bsr", seed=7)
    assert torch.equal(a, b) and a.shape == (3, 3, 8, 8)
    assert not torch.equal(a, degrade(images, 4, kind="bsr", seed=8))
    clean = degrade(images, 4)
    assert (a - clean).abs().mean() > 0.01  # blur + noise + JPEG changed it


@pytest.mark.parametrize("bad, match", [
    (dict(images=torch.zeros(3, 30, 32)), "not divisible by factor 4"),
    (dict(images=torch.zeros(1, 32, 32)), "RGB tensor"),
    (dict(images=torch.zeros(3, 32, 32, dtype=torch.uint8)), "float"),
    (dict(images=torch.zeros(3, 32, 32), factor=0), "positive int"),
    (dict(images=torch.zeros(3, 32, 32), kind="jpeg"), "unknown degradation"),
])
def test_degrade_errors(bad, match):
    with pytest.raises((ValueError, TypeError), match=match):
        degrade(**bad)


@pytest.mark.parametrize("fraction", [0.1, 0.3, 0.5])
@pytest.mark.parametrize("kind", ["mixed", "strokes", "boxes"])
def test_random_mask_fraction_and_determinism(fraction, kind):
    masks = random_masks(12, 64, fraction, seed=3, kind=kind)
    assert masks.shape == (12, 1, 64, 64) and set(masks.unique().tolist()) <= {0.0, 1.0}
    got = masks.mean((1, 2, 3))
    assert (got >= fraction).all() and (got <= fraction + 0.08).all(), got
    assert torch.equal(masks[5], random_mask(64, fraction, seed=8, kind=kind))  # mask i = seed + i
    assert not torch.equal(masks[0], masks[1])
    assert random_mask((32, 48), fraction, seed=1, kind=kind).shape == (1, 32, 48)


def test_random_mask_errors():
    for kw, match in [(dict(fraction=0.0), "0 < fraction"), (dict(fraction=1.0), "0 < fraction"),
                      (dict(kind="blobs"), "unknown mask kind"), (dict(size=2), "at least 4")]:
        with pytest.raises(ValueError, match=match):
            random_mask(**{"size": 32, **kw})


def test_keep_mask_from_is_the_one_conversion(images):
    hole = random_masks(3, 32, 0.3, seed=0)
    keep = keep_mask_from(hole_mask=hole, like=images)
    assert torch.equal(keep, 1 - hole) and torch.equal(keep_mask_from(keep_mask=keep, like=images), keep)
    assert keep_mask_from(hole_mask=hole[0, 0], like=images).shape == (1, 1, 32, 32)  # (H, W) broadcasts
    with pytest.raises(ValueError, match="exactly one"):
        keep_mask_from(keep_mask=keep, hole_mask=hole)
    with pytest.raises(ValueError, match="exactly one"):
        keep_mask_from()
    with pytest.raises(ValueError, match="binary"):
        keep_mask_from(hole_mask=hole * 0.5)
    with pytest.raises(ValueError, match="binary"):
        keep_mask_from(keep_mask=torch.full((1, 1, 32, 32), float("nan")))
    with pytest.raises(ValueError, match="height and width"):
        keep_mask_from(hole_mask=random_masks(3, 16, 0.3), like=images)
    with pytest.raises(ValueError, match="does not fit"):
        keep_mask_from(hole_mask=torch.zeros(2, 1, 32, 32), like=images)


def test_one_hot_segmentation_and_spatial_rescaler():
    seg = torch.stack([ShapesDataset(64, length=2, seed=1)[i]["segmentation"] for i in range(2)])
    onehot = one_hot_segmentation(seg, 7)
    assert onehot.shape == (2, 7, 64, 64) and torch.equal(onehot.sum(1), torch.ones(2, 64, 64))
    assert torch.equal(onehot.argmax(1), seg)
    small = SpatialRescaler(n_stages=2, in_channels=7)(onehot)  # f = 4: 64 -> 16, no parameters
    assert small.shape == (2, 7, 16, 16)
    torch.testing.assert_close(small.sum(1), torch.ones(2, 16, 16))  # bilinear keeps a partition of unity
    mapped = SpatialRescaler(n_stages=2, in_channels=7, out_channels=3)
    assert mapped(onehot).shape == (2, 3, 16, 16) and sum(p.numel() for p in mapped.parameters()) == 21
    with pytest.raises(ValueError, match="labels must lie in 0..6"):
        one_hot_segmentation(seg + 1, 7)
    with pytest.raises(ValueError, match="integer label map"):
        one_hot_segmentation(seg.float(), 7)
    with pytest.raises(ValueError, match=r"expects \(B, 7, H, W\)"):
        mapped(onehot[:, :5])


def test_tile_starts_cover_with_overlap():
    assert tile_starts(8, 16, 4) == [0]
    for length, tile, ov in [(32, 16, 4), (33, 8, 2), (40, 12, 6)]:
        s = tile_starts(length, tile, ov)
        assert s[0] == 0 and s[-1] == length - tile
        assert all(b - a <= tile - ov for a, b in zip(s, s[1:]))  # neighbours share >= overlap


def test_tiled_decode_matches_full_decode_where_both_fit():
    """A local decoder (conv -> ×4 upsampling -> conv: receptive field of one latent pixel) is reproduced
    by overlapping tiles up to float error; a latent within one tile is decoded in one call, exactly."""
    torch.manual_seed(0)
    conv1, conv2 = torch.nn.Conv2d(4, 8, 3, padding=1), torch.nn.Conv2d(8, 3, 3, padding=1)

    def decode(z):
        return conv2(torch.nn.functional.interpolate(conv1(z), scale_factor=4, mode="nearest"))

    z = torch.randn(2, 4, 24, 20)
    with torch.no_grad():
        full = decode(z)
        assert torch.equal(tiled_decode(decode, z[..., :8, :8], 4, tile=8), decode(z[..., :8, :8]))
        tiled = tiled_decode(decode, z, 4, tile=12, overlap=6)  # drops 6 px >= the 5 px that saw padding
        assert tiled.shape == full.shape
        torch.testing.assert_close(tiled, full, atol=1e-5, rtol=1e-5)
        # no overlap: the seams show (the tiles saw zero padding)
        assert (tiled_decode(decode, z, 4, tile=10, overlap=0) - full).abs().max() > 0.01
    ae = build_autoencoder(AutoencoderConfig(f=4, ch=16, num_res_blocks=1, z_channels=4)).eval()
    with torch.no_grad():  # a real decoder (GroupNorm, attention) runs tile by tile and keeps its shape
        assert tiled_decode(ae.decode, z, 4, tile=12, overlap=4).shape == (2, 3, 96, 80)
    with pytest.raises(ValueError, match="overlap < tile"):
        tiled_decode(decode, z, 4, tile=8, overlap=8)


# ----------------------------------------------------------------------------- samplers: masks and RePaint
def test_repaint_moves_follow_the_time_travel_schedule():
    from ldm_lite.diffusion.samplers import repaint_moves

    assert repaint_moves(3, 0, 5) == [("down", 0), ("down", 1), ("down", 2)]
    moves = repaint_moves(6, 2, 2)
    assert moves[:6] == [("down", 0), ("down", 1), ("up", 1), ("up", 0), ("down", 0), ("down", 1)]
    assert sum(d == "down" for d, _ in moves) == 6 + 2 * 2  # two inner jump points, each once more
    assert moves[-1] == ("down", 5)
    # every "up" undoes the step just taken: the walk is a valid path through the timesteps
    level = 0
    for d, i in moves:
        assert (i == level) if d == "down" else (i == level - 1)
        level += 1 if d == "down" else -1
    assert level == 6


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_masked_sampling_keeps_the_known_region_exactly(sampler):
    from ldm_lite.diffusion import NoiseSchedule
    from ldm_lite.diffusion.samplers import make_sampler

    sched = NoiseSchedule.from_name("linear", 1000)
    calls = []

    def model(x, t, c):
        calls.append(1)
        return 0.1 * x

    s = make_sampler(sampler, sched)
    x0 = torch.randn(2, 3, 8, 8)
    hole = random_masks(2, 8, 0.4, seed=2)
    out = s.sample(model, (2, 3, 8, 8), 6, x0=x0, hole_mask=hole, generator=torch.Generator().manual_seed(0),
                   progress=False)
    keep = 1 - hole
    assert torch.equal(out * keep, x0 * keep)  # bit-exact where known
    n_plain = len(calls)
    calls.clear()
    out2 = s.sample(model, (2, 3, 8, 8), 6, x0=x0, keep_mask=keep, jump_length=2, jump_n_sample=3,
                    generator=torch.Generator().manual_seed(0), progress=False)
    assert torch.equal(out2 * keep, x0 * keep) and len(calls) == n_plain + 2 * 2 * 2  # 2 jump points x 2 extra x 2
    with pytest.raises(ValueError, match="single-step sampler"):
        make_sampler("plms", sched).sample(model, (2, 3, 8, 8), 6, x0=x0, keep_mask=keep, jump_length=2,
                                           jump_n_sample=2, progress=False)
    with pytest.raises(ValueError, match="binary"):
        s.sample(model, (2, 3, 8, 8), 6, x0=x0, keep_mask=keep * 0.5, progress=False)
    with pytest.raises(ValueError, match="exactly one"):
        s.sample(model, (2, 3, 8, 8), 6, x0=x0, keep_mask=keep, hole_mask=hole, progress=False)
    with pytest.raises(ValueError, match="harmonises a known region"):
        s.sample(model, (2, 3, 8, 8), 6, jump_length=2, jump_n_sample=2, progress=False)


# ----------------------------------------------------------------------------- concat tasks end to end
TASK_EXPORTS: dict = {}  # task -> export path of the module fixture's models (the CLI loads them by path)

@pytest.fixture(scope="module")
def task_models(tmp_path_factory):
    """One tiny model per task on the shipped shapes autoencoder (f = 4), 2 steps, exported and reloaded."""
    from ldm_lite.experiments import LDMRecipe, train_ldm
    from ldm_lite.pretrained import load_ldm

    root = tmp_path_factory.mktemp("task_models")
    models = {}
    TASK_EXPORTS.clear()
    for task in ("sr", "inpaint", "semantic"):
        recipe = LDMRecipe(data="shapes", size=32, first_stage="ae_kl_f4_shapes_fashion", task=task, train_images=8,
                           model_channels=32, channel_mult=(1, 2), attention_resolutions=(2,), num_head_channels=16,
                           steps=2, batch_size=4, eval_images=4, lr_warmup_steps=0)
        train_ldm(recipe, progress=False, export=str(root / task))
        models[task] = load_ldm(root / task)
        TASK_EXPORTS[task] = root / task
    return models


def test_concat_channel_bookkeeping(task_models):
    c = 4  # latent channels of the f = 4 autoencoder
    sr, inp, sem = task_models["sr"], task_models["inpaint"], task_models["semantic"]
    assert sr.conditioning_key == inp.conditioning_key == sem.conditioning_key == "concat"
    assert sr.unet.in_channels == c + 3 and sr.cond_stage is None and sr.cond_key == "lr_image"
    assert inp.unet.in_channels == c + c + 1 and inp.cond_key == ("masked_image", "hole_mask")
    assert sem.unet.in_channels == c + c and sem.cond_key == "segmentation"
    assert sum(p.numel() for p in sem.cond_stage.parameters()) == 7 * c  # the 1×1 convolution, no bias
    ds = ShapesDataset(32, length=2, seed=9)
    x = torch.stack([ds[i]["image"] for i in range(2)])
    hole = random_masks(2, 32, 0.3)
    cc = inp.get_learned_conditioning({"masked_image": x * (1 - hole), "hole_mask": hole})["c_concat"]
    assert cc.shape == (2, c + 1, 8, 8)
    torch.testing.assert_close(cc[:, :c], inp.encode_first_stage(x * (1 - hole)))
    assert torch.equal(cc[:, c:], torch.nn.functional.max_pool2d(hole, 4))  # any hole pixel -> a hole position
    assert sr.get_learned_conditioning(degrade(x, 4))["c_concat"].shape == (2, 3, 8, 8)


def test_concat_models_sample_at_one_and_two_times_the_canvas(task_models):
    ds = ShapesDataset(32, length=2, seed=9)
    x = torch.stack([ds[i]["image"] for i in range(2)])
    seg = torch.stack([ds[i]["segmentation"] for i in range(2)])
    sem, sr = task_models["semantic"], task_models["sr"]
    assert sem.sample(cond=seg, steps=2, progress=False).shape == (2, 3, 32, 32)
    big = seg.repeat_interleave(2, -1).repeat_interleave(2, -2)  # the same map at 2x: a 2x canvas
    assert sem.sample(cond=big, steps=2, progress=False).shape == (2, 3, 64, 64)
    assert sr.sample(cond=degrade(x, 2), steps=2, progress=False).shape == (2, 3, 64, 64)  # a 16² input -> 64²


def test_spatial_condition_errors(task_models):
    ds = ShapesDataset(32, length=2, seed=9)
    x = torch.stack([ds[i]["image"] for i in range(2)])
    inp = task_models["inpaint"]
    with pytest.raises(ValueError, match="give a mask of the image's size"):
        inp.get_learned_conditioning({"masked_image": x, "hole_mask": random_masks(2, 16, 0.3)})
    with pytest.raises(ValueError, match="'hole_mask'"):
        inp.get_learned_conditioning({"masked_image": x})
    with pytest.raises(ValueError, match="latent size"):
        task_models["sr"].sample(cond=degrade(x, 4), latent_size=(16, 16), steps=1, progress=False)
    with pytest.raises(ValueError, match="labels must lie in"):
        task_models["semantic"].get_learned_conditioning(torch.full((1, 32, 32), 9))
    from ldm_lite.experiments import LDMRecipe

    with pytest.raises(ValueError, match="segmentation maps"):
        LDMRecipe(data="openmoji", task="semantic")
    with pytest.raises(ValueError, match="cannot be combined"):
        LDMRecipe(task="sr", cond="text")
    with pytest.raises(ValueError, match="task must be one of"):
        LDMRecipe(task="colorize")


def test_cli_upscale_and_inpaint(task_models, tmp_path):
    import numpy as np
    from PIL import Image

    from ldm_lite import cli
    from ldm_lite.data import to_uint8

    root = tmp_path
    ds = ShapesDataset(32, length=1, seed=9)
    img = ds[0]["image"]
    Image.fromarray(to_uint8(degrade(img, 4))).save(root / "lr.png")
    Image.fromarray(to_uint8(img)).save(root / "img.png")
    hole = (random_mask(32, 0.3, seed=1)[0].numpy() * 255).astype(np.uint8)
    Image.fromarray(hole).save(root / "mask.png")
    models = {t: str(p) for t, p in TASK_EXPORTS.items()}
    cli.main(["upscale", str(root / "lr.png"), str(root / "up.png"), "--model", models["sr"], "--steps", "2"])
    assert Image.open(root / "up.png").size == (32, 32)
    cli.main(["inpaint", str(root / "img.png"), str(root / "mask.png"), str(root / "fill.png"), "--model",
              models["inpaint"], "--steps", "2"])
    out = np.asarray(Image.open(root / "fill.png"))
    keep = hole == 0
    assert np.array_equal(out[keep], np.asarray(Image.open(root / "img.png"))[keep])  # known pixels untouched
    # bad inputs: each a one-line error naming the fix
    Image.fromarray(hole[:16, :16]).save(root / "small.png")
    with pytest.raises(SystemExit, match="give a mask of the image's size"):
        cli.main(["inpaint", str(root / "img.png"), str(root / "small.png"), str(root / "x.png"), "--model",
                  models["inpaint"]])
    soft = hole.copy()
    soft[0, 0] = 128
    Image.fromarray(soft).save(root / "soft.png")
    with pytest.raises(SystemExit, match="--threshold 0.5"):
        cli.main(["inpaint", str(root / "img.png"), str(root / "soft.png"), str(root / "x.png"), "--model",
                  models["inpaint"]])
    Image.fromarray(to_uint8(degrade(img, 4)[:, :7, :7])).save(root / "odd.png")
    with pytest.raises(SystemExit, match="multiples of"):
        cli.main(["upscale", str(root / "odd.png"), str(root / "x.png"), "--model", models["sr"]])
    with pytest.raises(SystemExit, match="not a super-resolution model"):
        cli.main(["upscale", str(root / "lr.png"), str(root / "x.png"), "--model", models["inpaint"]])
    with pytest.raises(SystemExit, match="has no hole"):
        Image.fromarray(np.zeros_like(hole)).save(root / "none.png")
        cli.main(["inpaint", str(root / "img.png"), str(root / "none.png"), str(root / "x.png"), "--model",
                  models["inpaint"]])


def test_cli_training_free_inpainting_and_train_task(tmp_path):
    import numpy as np
    from PIL import Image

    from ldm_lite import cli
    from ldm_lite.data import load_openmoji, to_uint8
    from ldm_lite.pretrained import load_manifest

    img = load_openmoji(64, split="test")[0]["image"]
    Image.fromarray(to_uint8(img)).save(tmp_path / "e.png")
    hole = (random_mask(64, 0.25, seed=3)[0].numpy() * 255).astype(np.uint8)
    Image.fromarray(hole).save(tmp_path / "m.png")
    Image.fromarray(255 - hole).save(tmp_path / "keep.png")
    for extra in ([], ["--repaint", "1,2"]):
        cli.main(["inpaint", str(tmp_path / "e.png"), str(tmp_path / "m.png"), str(tmp_path / "o.png"), "--model",
                  "ldm_openmoji64", "--steps", "2", *extra])
    a = np.asarray(Image.open(tmp_path / "o.png"))
    cli.main(["inpaint", str(tmp_path / "e.png"), str(tmp_path / "keep.png"), str(tmp_path / "o2.png"), "--model",
              "ldm_openmoji64", "--steps", "2", "--mask-means", "keep", "--repaint", "1,2"])
    assert np.array_equal(a, np.asarray(Image.open(tmp_path / "o2.png")))  # the same mask, said the other way
    with pytest.raises(SystemExit, match="trained\\s+inpainter|training-free"):
        cli.main(["inpaint", str(tmp_path / "e.png"), str(tmp_path / "m.png"), str(tmp_path / "o.png"), "--model",
                  "ldm_shapes_text64"])
    cli.main(["train-ldm", "--data", "shapes", "--size", "32", "--task", "semantic", "--first-stage",
              "ae_kl_f4_shapes_fashion", "--train-images", "8", "--model-channels", "32", "--channel-mult", "1,2",
              "--attention-resolutions", "2", "--num-head-channels", "16", "--steps", "1", "--batch-size", "4",
              "--export", str(tmp_path / "sem")])
    assert load_manifest(tmp_path / "sem")["recipe"]["task"] == "semantic"


def test_sample_with_a_tiled_decode(task_models):
    sem = task_models["semantic"]
    seg = torch.stack([ShapesDataset(64, length=1, seed=2)[0]["segmentation"]])
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    full, z = sem.sample(cond=seg, steps=2, generator=gen(), progress=False, return_latents=True)
    tiled = sem.sample(cond=seg, steps=2, generator=gen(), progress=False, decode_tile=8)
    assert tiled.shape == full.shape == (1, 3, 64, 64)
    torch.testing.assert_close(tiled, tiled_decode(sem.first_stage.decode, z / sem.scale_factor, 4, 8, 4).clamp(-1, 1))


def test_masked_l1_scores_only_the_hole():
    from ldm_lite.metrics import masked_l1

    y = torch.zeros(2, 3, 8, 8)
    hole = torch.zeros(2, 1, 8, 8)
    hole[:, :, :4] = 1
    x = y.clone()
    x[:, :, :4] = 1.0  # wrong by 0.5 on the [0, 1] scale inside the hole
    x[:, :, 4:] = -1.0  # wrong outside: must not count
    x[1, :, 4:] = 0.0
    torch.testing.assert_close(masked_l1(x, y, hole, reduction="none"), torch.tensor([0.5, 0.5]))
    with pytest.raises(ValueError, match="empty"):
        masked_l1(x, y, torch.zeros(2, 1, 8, 8))


def test_feature_distance_is_zero_for_identical_pairs_and_grows_with_damage():
    from ldm_lite.data import load_openmoji
    from ldm_lite.metrics import domain_feature_extractor, feature_distance

    ds = load_openmoji(64, split="test")
    x = torch.stack([ds[i]["image"] for i in range(8)])
    ext = domain_feature_extractor("openmoji")
    same = feature_distance(x, x, ext)
    assert same.shape == (8,) and same.abs().max() < 1e-5
    def up(f):
        return torch.nn.functional.interpolate(degrade(x, f), size=64, mode="bicubic").clamp(-1, 1)

    mild = feature_distance(up(2), x, ext, reduction="mean")
    harsh = feature_distance(up(8), x, ext, reduction="mean")
    other = feature_distance(x.roll(1, 0), x, ext, reduction="mean")  # a different emoji
    assert 0 < mild < harsh < other, (mild, harsh, other)
    with pytest.raises(ValueError, match="same shape"):
        feature_distance(x, x[:4], ext)


def test_semantic_accuracy_reads_segments_from_the_map():
    from ldm_lite import metrics as M

    ds = ShapesDataset(64, length=40, seed=10_000)
    x = torch.stack([ds[i]["image"] for i in range(40)])
    seg = torch.stack([ds[i]["segmentation"] for i in range(40)])
    boxes, labels = M.segments_of(seg)
    assert (labels >= 0).sum() == sum(ds[i]["num_objects"] for i in range(40))  # one segment per object
    r = M.semantic_accuracy(x, seg, real_images=x)
    assert r["value"] == 1.0 and r["ceiling"]["value"] == 1.0 and r["floor"]["value"] < 0.1
    # a 2x canvas: the same scene, twice the size, is scored the same
    up = torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest")
    assert M.semantic_accuracy(up, seg.repeat_interleave(2, -1).repeat_interleave(2, -2))["value"] == 1.0
    blank = torch.full_like(x, x[0, :, 0, 0].mean().item())
    assert M.semantic_accuracy(blank, seg)["value"] == 0.0
    with pytest.raises(ValueError, match="integer label maps"):
        M.segments_of(seg.float())


def test_scene_editing_and_generation_from_a_map(task_models):
    from ldm_lite.data.shapes import SHAPES
    from ldm_lite.interactive import edit_scene, generate_from_map, scene_segmentation

    ds = ShapesDataset(32, length=1, seed=5)
    scene = ds.layout(0)
    assert torch.equal(scene_segmentation(scene, 32), ds[0]["segmentation"])  # the same renderer as the data
    moved = edit_scene(scene, "move", 0, dx=3, dy=-2)
    assert moved[0]["cx"] == scene[0]["cx"] + 3 and scene[0]["cx"] == ds.layout(0)[0]["cx"]  # input untouched
    other = [s for s in SHAPES if s != scene[0]["shape"]][0]
    seg = scene_segmentation(edit_scene(scene, "reshape", 0, shape=other), 32)
    assert (seg == 1 + SHAPES.index(other)).any()
    added = edit_scene(scene, "add", shape="cross", cx=8, cy=8, r=5)
    assert len(added) == len(scene) + 1 and len(edit_scene(added, "remove", len(scene))) == len(scene)
    for bad, match in [(dict(op="move", index=9), "index must name"), (dict(op="reshape", index=0, shape="star"),
                       "unknown shape"), (dict(op="add", shape="cross"), "missing"), (dict(op="spin"), "unknown edit")]:
        with pytest.raises(ValueError, match=match):
            edit_scene(scene, **bad)
    images = generate_from_map(task_models["semantic"], scene_segmentation(scene, 32), n=2, steps=2)
    assert images.shape == (2, 3, 32, 32)
    assert generate_from_map(task_models["semantic"], scene_segmentation(scene, 64), n=1, steps=2).shape[-1] == 64
    with pytest.raises(ValueError, match="multiples of"):
        generate_from_map(task_models["semantic"], torch.zeros(30, 30, dtype=torch.long))
    with pytest.raises(ValueError, match="not on a segmentation"):
        generate_from_map(task_models["sr"], scene_segmentation(scene, 32))


def test_map_editor_buttons_edit_and_generate(task_models):
    from ldm_lite.interactive import map_editor

    scene = ShapesDataset(32, length=1, seed=5).layout(0)
    box = map_editor(task_models["semantic"], scene, size=32, n=1, steps=1)
    buttons = {b.description: b for b in box.children[2].children if hasattr(b, "on_click")}
    sliders = box.children[1].children
    sliders[0].value = 2
    buttons["move"].click()
    buttons["add"].click()
    assert box.children[0].children[0].max == len(scene)  # the object picker grew with the scene
    buttons["generate"].click()
    assert not buttons["generate"].disabled


def test_training_free_inpainting_never_sees_the_hole_pixels():
    """x0 is encoded with its hole blanked: the encoder's receptive field must not carry hole content into the
    kept latents (a leak that made blending look better than it is, and that would resurrect a removed object)."""
    from ldm_lite.pretrained import load_ldm

    model = load_ldm("ldm_openmoji64")
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    hole = torch.zeros(1, 1, 64, 64)
    hole[..., 16:40, 20:44] = 1
    other = x.clone()
    other[..., 16:40, 20:44] = -x[..., 16:40, 20:44]  # different content inside the hole only
    a, b = (model.sample(1, x0=img, hole_mask=hole, steps=2, generator=torch.Generator().manual_seed(1),
                         progress=False) for img in (x, other))
    torch.testing.assert_close(a, b)
