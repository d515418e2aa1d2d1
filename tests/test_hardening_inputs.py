"""Bad inputs fail early, with the value received, the valid range and the fix (sampling, image folders, shapes).

Each test here failed before the corresponding check existed: NaN guidance turned every sample into NaN and a
black PNG, a truncated JPEG passed the folder check and stopped training later, a folder's "held-out" split was
its training split, label 99 reached ``nn.Embedding`` ... Tiny models, a few milliseconds each.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from ldm_lite.autoencoder.model import AutoencoderConfig, AutoencoderKL, Decoder, Encoder
from ldm_lite.data import ImageFolderDataset
from ldm_lite.data.common import to_uint8 as data_to_uint8
from ldm_lite.diffusion import DDIMSampler, DDPMSampler, NoiseSchedule, make_sampler
from ldm_lite.ldm import LatentDiffusion
from ldm_lite.unet import UNetConfig, UNetModel
from ldm_lite.viz import make_grid, to_uint8

torch.set_num_threads(1)
SHAPE = (2, 3, 8, 8)


def tiny_unet(**kw) -> UNetModel:
    args = dict(in_channels=3, out_channels=3, model_channels=8, channel_mult=(1,), attention_resolutions=(),
                num_heads=1, norm_num_groups=8, use_spatial_transformer=False)
    args.update(kw)
    return UNetModel(**args)


def pixel_ldm(**kw) -> LatentDiffusion:
    torch.manual_seed(0)
    return LatentDiffusion(None, tiny_unet(), image_size=8, **kw)


def adm_ldm() -> LatentDiffusion:
    torch.manual_seed(0)
    return LatentDiffusion(None, tiny_unet(num_classes=11), conditioning_key="adm", cond_key="label",
                           unconditional_value=10, image_size=8)


def schedule() -> NoiseSchedule:
    return NoiseSchedule.from_name("linear", 100)


def model_fn(x, t, c):
    return 0.1 * x


# ============================================================== case 2: sampling arguments and non-finite output
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, -1.0])
def test_sampler_rejects_non_finite_or_negative_guidance(bad):
    u = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"guidance_scale must be a finite number >= 0, got .*1 = no guidance"):
        DDIMSampler(schedule()).sample(model_fn, SHAPE, 2, conditioning=u, unconditional_conditioning=u,
                                       guidance_scale=bad, progress=False)


@pytest.mark.parametrize("bad", [math.nan, math.inf, 1.5, -0.1])
def test_sampler_rejects_eta_outside_0_1(bad):
    with pytest.raises(ValueError, match=r"eta must be >= 0 and <= 1 .*got .*pass eta in \[0, 1\]"):
        DDIMSampler(schedule()).sample(model_fn, SHAPE, 2, eta=bad, progress=False)


def test_sampler_rejects_non_finite_start_noise():
    x_T = torch.randn(SHAPE)
    x_T[0, 0, 0, 0] = math.nan
    with pytest.raises(ValueError, match=r"x_T \(the starting noise\) contains 1 non-finite values \(1 NaN, 0 inf\)"):
        DDIMSampler(schedule()).sample(model_fn, SHAPE, 2, x_T=x_T, progress=False)


def test_sampler_guidance_without_unconditional_is_an_error_not_a_no_op():
    with pytest.raises(ValueError, match=r"guidance_scale=7.5 asks for classifier-free guidance.*silently do nothing"
                                         r".*unconditional model cannot be guided"):
        DDPMSampler(schedule()).sample(model_fn, SHAPE, 2, guidance_scale=7.5, progress=False)


def test_guidance_between_0_and_1_is_allowed():
    u, c = torch.zeros(2, 3), torch.ones(2, 3)
    for s in (0.0, 0.5):
        out = DDIMSampler(schedule()).sample(lambda x, t, cc: 0.1 * x, SHAPE, 2, conditioning=c,
                                             unconditional_conditioning=u, guidance_scale=s, progress=False,
                                             generator=torch.Generator().manual_seed(0))
        assert torch.isfinite(out).all()


def test_ldm_sample_validates_guidance_eta_noise_and_sampler():
    ldm = adm_ldm()
    labels = torch.tensor([1, 2])
    with pytest.raises(ValueError, match="guidance_scale must be a finite number >= 0, got nan"):
        ldm.sample(2, cond=labels, guidance_scale=math.nan, steps=2, progress=False)
    with pytest.raises(ValueError, match="eta must be >= 0 and <= 1"):
        ldm.sample(2, cond=labels, eta=math.nan, steps=2, progress=False)
    with pytest.raises(ValueError, match=r"x_T \(the starting noise\) contains 384 non-finite values"):
        ldm.sample(2, cond=labels, x_T=torch.full(SHAPE, math.nan), steps=2, progress=False)
    with pytest.raises(TypeError, match=r"sampler must be a name, one of ddpm, ddim, plms, dpm.*got None"):
        ldm.sample(2, cond=labels, sampler=None, steps=2, progress=False)
    with pytest.raises(ValueError, match=r"unknown sampler 'ddmi'; use one of ddpm, ddim"):
        ldm.sample(2, cond=labels, sampler="ddmi", steps=2, progress=False)
    with pytest.raises(TypeError, match="sampler must be a name"):
        make_sampler(None, schedule())
    with pytest.raises(ValueError, match="needs a conditional model.*guidance would do nothing"):
        pixel_ldm().sample(2, guidance_scale=7.5, steps=2, progress=False)


@pytest.mark.parametrize("bad", [math.nan, 0.0, -0.18215, math.inf])
def test_scale_factor_must_be_finite_and_positive(bad):
    with pytest.raises(ValueError, match=r"scale_factor must be a finite number > 0, got .*0\.18215"):
        pixel_ldm(scale_factor=bad)


def test_scale_factor_checked_when_loaded_and_when_sampling():
    ldm = pixel_ldm()
    state = ldm.state_dict()
    state["scale_factor"] = torch.tensor(math.nan)
    with pytest.raises(ValueError, match=r"scale_factor \(loaded from the checkpoint\) must be a finite number > 0"):
        pixel_ldm().load_state_dict(state)
    ldm.scale_factor.fill_(0.0)  # as a loader that sets the buffer directly would
    with pytest.raises(ValueError, match="scale_factor of this model must be a finite number > 0, got 0.0"):
        ldm.sample(2, steps=2, progress=False)


def test_ldm_sample_never_returns_nan_images():
    ldm = pixel_ldm()
    with torch.no_grad():
        ldm.unet.out[-1].bias.fill_(math.nan)  # a corrupt checkpoint
    with pytest.raises(FloatingPointError, match=r"sampling produced NaN / inf: 384 of 384 latent values; no image"):
        ldm.sample(2, steps=2, progress=False)


def test_image_helpers_refuse_non_finite():
    images = torch.zeros(3, 3, 4, 4)
    images[1, 0, 0, 0] = math.nan
    with pytest.raises(ValueError, match=r"cannot draw or save images with NaN / inf: 1 of 144.*image\(s\) \[1\]"):
        make_grid(images)
    with pytest.raises(ValueError, match="NaN / inf"):
        to_uint8(images)
    with pytest.raises(ValueError, match="cannot convert images with NaN / inf to uint8"):
        data_to_uint8(images)


# ============================================================== case 3: image folders -- 16 bit, encodings, truncation
def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    (tmp_path / "img").mkdir()
    Image.fromarray(np.full((8, 8), 32768, np.uint16)).save(tmp_path / "img" / "grey16.png")
    assert Image.open(tmp_path / "img" / "grey16.png").mode in ("I;16", "I")
    x = ImageFolderDataset(tmp_path / "img", size=8)[0]["image"]
    assert x.shape == (3, 8, 8)
    assert abs(float(x.mean())) < 0.01, "mid grey (32768 of 65535) must load as ~0 in [-1, 1], not white"


def test_latin1_captions_name_the_file_and_the_fix(tmp_path):
    (tmp_path / "img").mkdir()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(tmp_path / "img" / "a.png")
    cap = tmp_path / "captions.csv"
    cap.write_bytes("file,caption\na.png,un café crème\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"captions file .*captions\.csv is not UTF-8: line 2.*0xe9.*Re-save it as "
                                         r"UTF-8.*iconv -f latin1"):
        ImageFolderDataset(tmp_path / "img", size=8, captions=cap)
    cap.write_bytes("file,caption\na.png,un café crème\n".encode("utf-8-sig"))  # Excel's BOM is fine
    assert ImageFolderDataset(tmp_path / "img", size=8, captions=cap)[0]["caption"] == "un café crème"


def _jpeg(path, seed=0, size=64):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path, quality=95)


def test_truncated_jpeg_is_found_when_the_folder_is_indexed(tmp_path):
    root = tmp_path / "img"
    root.mkdir()
    _jpeg(root / "good.jpg")
    _jpeg(root / "cut.jpg", seed=1)
    data = (root / "cut.jpg").read_bytes()
    (root / "cut.jpg").write_bytes(data[: len(data) // 2])
    with Image.open(root / "cut.jpg") as img:
        img.verify()  # the header check alone passes it -- why the old check missed it
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable image file\(s\) of 2 .*cut\.jpg \(OSError: .*truncated"):
        ds = ImageFolderDataset(root, size=16)
    assert ds.files == ["good.jpg"] and set(ds.skipped) == {"cut.jpg"}
    # the cheap check keeps it; reading it then names the file instead of killing the run anonymously
    fast = ImageFolderDataset(root, size=16, validate="header")
    assert fast.files == ["cut.jpg", "good.jpg"]
    with pytest.raises(OSError, match=r"could not decode .*cut\.jpg .*truncated.*validate='header'"):
        fast[0]


# ============================================================== case 4: a real held-out split for folders
def _folder(root, n):
    root.mkdir(parents=True)
    for i in range(n):
        Image.new("RGB", (8, 8), (i * 9 % 256, 40, 90)).save(root / f"img_{i:03d}.png")


def test_folder_train_and_test_are_disjoint_deterministic_and_cover_the_folder(tmp_path):
    _folder(tmp_path / "img", 40)
    train = ImageFolderDataset(tmp_path / "img", size=8, split="train", validate=False)
    test = ImageFolderDataset(tmp_path / "img", size=8, split="test", validate=False)
    every = ImageFolderDataset(tmp_path / "img", size=8, validate=False)
    assert set(train.files).isdisjoint(test.files)
    assert sorted(train.files + test.files) == every.files and 1 <= len(test) < len(train)
    assert ImageFolderDataset(tmp_path / "img", size=8, split="test", validate=False).files == test.files
    half = ImageFolderDataset(tmp_path / "img", size=8, split="test", test_fraction=0.5, validate=False)
    assert set(test.files) <= set(half.files) and len(half) > len(test)  # a file keeps its side
    assert "split='test'" in repr(test)
    with pytest.raises(ValueError, match=r"split must be one of \('all', 'train', 'test'\).*got 'val'"):
        ImageFolderDataset(tmp_path / "img", size=8, split="val")
    with pytest.raises(ValueError, match=r"test_fraction must be a number in \[0, 1\].*got 1.5"):
        ImageFolderDataset(tmp_path / "img", size=8, split="test", test_fraction=1.5)


def test_small_folder_split_rule(tmp_path):
    _folder(tmp_path / "three", 3)
    with pytest.warns(UserWarning, match=r"has only 3 images: split='test' holds 1 of them.*Add images \(>= 10\)"):
        test = ImageFolderDataset(tmp_path / "three", size=8, split="test", validate=False)
    with pytest.warns(UserWarning, match="only 3 images"):
        train = ImageFolderDataset(tmp_path / "three", size=8, split="train", validate=False)
    assert len(test) == 1 and len(train) == 2 and set(test.files).isdisjoint(train.files)
    _folder(tmp_path / "one", 1)
    with pytest.raises(ValueError, match=r"has 1 image, which cannot be split.*use split='all'"):
        ImageFolderDataset(tmp_path / "one", size=8, split="test")
    assert len(ImageFolderDataset(tmp_path / "one", size=8)) == 1  # split="all" as before


# ============================================================== case 7: boundary checks that name the valid range
@pytest.mark.parametrize("label", [99, -1, [1, 99]])
def test_adm_labels_out_of_range(label):
    with pytest.raises(ValueError, match=r"label (99|-1) is out of range; valid labels are 0\.\.10 \(10 = the null class"):
        adm_ldm().sample(cond=label, steps=1, progress=False)


@pytest.mark.parametrize("label", [2.5, torch.tensor([1.0, 2.0])])
def test_adm_labels_must_be_integers(label):
    with pytest.raises(TypeError, match=r"class labels must be integers in 0\.\.10"):
        adm_ldm().get_learned_conditioning(label)


def test_unet_labels_name_the_range():
    unet = tiny_unet(num_classes=5)
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([1, 2])
    with pytest.raises(ValueError, match=r"y holds 0\.\.99, but the UNet has num_classes=5.*0\.\.4"):
        unet(x, t, y=torch.tensor([0, 99]))
    with pytest.raises(TypeError, match=r"class labels y must be integers in 0\.\.4, got dtype torch.float32"):
        unet(x, t, y=torch.tensor([0.0, 1.0]))


def test_autoencoder_names_wrong_channels_and_channels_last():
    torch.manual_seed(0)
    ae = AutoencoderKL(f=2, ch=8, num_res_blocks=1, z_channels=2)
    with pytest.raises(ValueError, match=r"got \(1, 32, 32, 3\) .*channels-last \(B, H, W, C\).*permute\(0, 3, 1, 2\)"):
        ae.encode(torch.randn(1, 32, 32, 3))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\) \(in_channels=3\), got \(1, 1, 32, 32\).*expand\(-1, 3, -1, -1\)"):
        ae.encode(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match=r"4 channels: RGBA images: drop the alpha channel with x\[:, :3\]"):
        ae.encode(torch.randn(1, 4, 32, 32))
    ldm = LatentDiffusion(ae, tiny_unet(in_channels=2, out_channels=2), image_size=32)
    with pytest.raises(ValueError, match=r"the autoencoder takes images of shape \(B, 3, H, W\).*permute\(0, 3, 1, 2\)"):
        ldm.encode_first_stage(torch.randn(2, 32, 32, 3))
    with pytest.raises(ValueError, match=r"this pixel-space model takes images of shape \(B, 3, H, W\).*permute"):
        pixel_ldm().encode_first_stage(torch.randn(2, 8, 8, 3))


@pytest.mark.parametrize("field", ["ch", "z_channels", "num_res_blocks", "in_channels", "embed_dim"])
def test_autoencoder_sizes_must_be_positive(field):
    with pytest.raises(ValueError, match=rf"AutoencoderConfig: {field} must be a positive int \(>= 1\), got 0; e\.g\."):
        AutoencoderConfig(**{field: 0})
    with pytest.raises(ValueError, match=r"every multiplier must be a positive int"):
        AutoencoderConfig(f=2, ch_mult=(1, 0))
    with pytest.raises(ValueError, match=r"Encoder: ch must be a positive int"):
        Encoder(ch=0)
    with pytest.raises(ValueError, match=r"Decoder: z_channels must be a positive int"):
        Decoder(z_channels=0)


@pytest.mark.parametrize("field", ["in_channels", "out_channels", "model_channels", "num_res_blocks",
                                   "transformer_depth", "norm_num_groups"])
def test_unet_sizes_must_be_positive(field):
    with pytest.raises(ValueError, match=rf"UNetConfig: {field} must be a positive int \(>= 1\), got 0"):
        tiny_unet(**{field: 0})
    with pytest.raises(ValueError, match=r"every channel_mult entry must be a positive int.*got channel_mult=\(1, 0\)"):
        UNetConfig(in_channels=3, out_channels=3, model_channels=8, channel_mult=(1, 0))
    with pytest.raises(ValueError, match=r"context_dim must be a positive int"):
        UNetConfig(in_channels=3, out_channels=3, model_channels=8, context_dim=0)


def test_valid_calls_still_work():
    """The checks cost nothing on valid input: the same samples as before, guidance and all."""
    ldm = adm_ldm()
    g = torch.Generator().manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        images = ldm.sample(cond=[1, 2], guidance_scale=3.0, steps=2, eta=0.5, generator=g, progress=False)
    assert images.shape == SHAPE and torch.isfinite(images).all()
    assert make_grid(images).dtype == np.uint8


@pytest.mark.parametrize("field, value, needle", [
    ("cond_drop_prob", 1.5, "cond_drop_prob must be in \\[0, 1\\)"),
    ("cond_drop_prob", float("nan"), "cond_drop_prob must be in \\[0, 1\\)"),
    ("steps", 0, "steps must be a positive int"),
    ("lr", float("inf"), "lr must be a finite number > 0"),
])
def test_ldm_recipe_refuses_out_of_range_values(field, value, needle):
    from ldm_lite.experiments import LDMRecipe

    with pytest.raises(ValueError, match=needle):
        LDMRecipe(**{field: value})


def test_recipe_loads_a_folder_with_a_real_held_out_split(tmp_path):
    import numpy as np
    from PIL import Image

    from ldm_lite.experiments import load_dataset

    for i in range(30):
        Image.fromarray(np.full((8, 8, 3), i * 8, np.uint8)).save(tmp_path / f"{i:02d}.png")
    train, test = load_dataset(str(tmp_path), 8, "train"), load_dataset(str(tmp_path), 8, "test")
    names = lambda ds: set(map(str, ds.files))  # noqa: E731
    assert len(train) + len(test) == 30 and len(test) >= 1 and not names(train) & names(test)
