"""The offline real-data loaders: OpenMoji, Fashion-MNIST, image folders, scikit-image photo crops.

Every test writes its caches to a temporary folder (``LDM_LITE_CACHE``), so the user's cache is never
touched and the caching itself is exercised. The full OpenMoji render (~2 s at 64 px) happens once.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import time
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from ldm_lite.data import (
    ArrayImageDataset,
    FASHION_CLASSES,
    ImageFolderDataset,
    OPENMOJI_CREDIT,
    load_fashion_mnist,
    load_openmoji,
    load_photo_crops,
    to_image_tensor,
    to_uint8,
    train_test_split,
)
from ldm_lite.data import emoji as emoji_mod
from ldm_lite.data import fashion as fashion_mod
from ldm_lite.data.common import load_npz, save_npz_atomic, split_mask


@pytest.fixture(autouse=True)
def tmp_cache(tmp_path, monkeypatch):
    """Each test gets its own empty cache folder."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("LDM_LITE_CACHE", str(folder))
    return folder


# ----------------------------------------------------------------------------- ArrayImageDataset
def _toy(n=20, size=8, channels=3, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, size, size, channels), dtype=np.uint8)
    return ArrayImageDataset(
        images,
        captions=[f"item {i}" for i in range(n)],
        labels=np.arange(n) % 3,
        class_names=("a", "b", "c"),
        keys=[f"k{i}" for i in range(n)],
    )


def test_to_image_tensor_range_layout_and_inverse():
    x = np.array([[[0, 128, 255]]], dtype=np.uint8)  # (1, 1, 3)
    t = to_image_tensor(x)
    assert t.shape == (3, 1, 1) and t.dtype == torch.float32
    assert t.flatten().tolist() == pytest.approx([-1.0, 128 / 127.5 - 1, 1.0], abs=1e-6)
    batch = np.random.default_rng(0).integers(0, 256, (4, 5, 6, 3), dtype=np.uint8)
    assert to_image_tensor(batch).shape == (4, 3, 5, 6)
    assert np.array_equal(to_uint8(to_image_tensor(batch)), batch)
    assert to_image_tensor(np.zeros((5, 6), np.uint8)).shape == (1, 5, 6)
    with pytest.raises(TypeError, match="uint8"):
        to_image_tensor(np.zeros((2, 2, 3), np.float32))


def test_array_dataset_samples_and_collate():
    ds = _toy()
    s = ds[3]
    assert set(s) == {"image", "index", "caption", "label"}
    assert s["image"].shape == (3, 8, 8) and s["image"].dtype == torch.float32
    assert -1.0 <= s["image"].min() and s["image"].max() <= 1.0
    assert s["index"] == 3 and s["caption"] == "item 3" and s["label"] == 0
    assert ds[-1]["index"] == len(ds) - 1
    with pytest.raises(IndexError):
        ds[len(ds)]
    batch = next(iter(DataLoader(ds, batch_size=8)))
    assert batch["image"].shape == (8, 3, 8, 8)
    assert batch["label"].dtype == torch.int64 and len(batch["caption"]) == 8
    no_meta = ArrayImageDataset(ds.images)
    assert set(no_meta[0]) == {"image", "index"}


def test_array_dataset_rejects_bad_inputs():
    images = np.zeros((4, 8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="uint8"):
        ArrayImageDataset(images.astype(np.float32))
    with pytest.raises(ValueError, match=r"images\[\.\.\., None\]"):
        ArrayImageDataset(images[..., 0])
    with pytest.raises(ValueError, match="3 captions for 4 images"):
        ArrayImageDataset(images, captions=["a", "b", "c"])
    with pytest.raises(ValueError, match="labels"):
        ArrayImageDataset(images, labels=[0, 1])
    with pytest.raises(ValueError, match="class_names"):
        ArrayImageDataset(images, labels=[0, 1, 2, 5], class_names=("a", "b"))


def test_train_test_split_is_disjoint_deterministic_and_order_independent():
    ds = _toy(n=400)
    train, test = train_test_split(ds, test_fraction=0.2, seed=0)
    assert len(train) + len(test) == len(ds)
    assert not set(train.keys) & set(test.keys)
    assert 0.1 < len(test) / len(ds) < 0.3
    train2, test2 = train_test_split(ds, test_fraction=0.2, seed=0)
    assert test.keys == test2.keys and np.array_equal(test.images, test2.images)
    # membership depends on the key only: a shuffled copy puts the same keys in test
    perm = np.random.default_rng(1).permutation(len(ds))
    _, test_shuffled = train_test_split(ds.subset(perm), test_fraction=0.2, seed=0)
    assert set(test_shuffled.keys) == set(test.keys)
    # and the hash is SHA-256 of "seed:key", the same on every machine
    expected = {k for k in ds.keys if int(hashlib.sha256(f"0:{k}".encode()).hexdigest()[:16], 16) / 2**64 < 0.2}
    assert set(test.keys) == expected
    _, other = train_test_split(ds, test_fraction=0.2, seed=1)
    assert set(other.keys) != set(test.keys)
    # subsets keep captions/labels aligned with images
    i = 5
    assert test.captions[i] == f"item {test.keys[i][1:]}"
    with pytest.raises(ValueError, match="split"):
        split_mask(ds.keys, "val")


def test_npz_cache_is_atomic_and_survives_corruption(tmp_path):
    path = str(tmp_path / "x.npz")
    save_npz_atomic(path, a=np.arange(5), s=np.array(["x", "y"]))
    got = load_npz(path, ("a", "s"))
    assert got["a"].tolist() == list(range(5)) and got["s"].tolist() == ["x", "y"]
    assert sorted(os.listdir(tmp_path)) == ["x.npz"]  # no temporary file left behind
    with open(path, "wb") as f:
        f.write(b"not a zip file")
    with pytest.warns(UserWarning, match="unreadable cache"):
        assert load_npz(path, ("a",)) is None
    assert load_npz(str(tmp_path / "missing.npz"), ("a",)) is None


# ----------------------------------------------------------------------------- OpenMoji
@pytest.fixture(scope="module")
def openmoji(tmp_path_factory):
    """Render all of OpenMoji at 64 px once into a fresh cache, then load it again from the cache."""
    cache = tmp_path_factory.mktemp("openmoji-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LDM_LITE_CACHE", str(cache))
        t0 = time.perf_counter()
        first = load_openmoji(64, progress=False)
        t1 = time.perf_counter()
        second = load_openmoji(64, progress=False)
        t2 = time.perf_counter()
        train = load_openmoji(64, split="train", progress=False)
        test = load_openmoji(64, split="test", progress=False)
    return dict(first=first, second=second, render_s=t1 - t0, cached_s=t2 - t1, train=train, test=test,
                cache=cache)


def test_openmoji_count_captions_and_no_skin_tones(openmoji):
    ds = openmoji["first"]
    assert len(ds) >= 1900, f"only {len(ds)} captioned emoji rendered"
    assert ds.images.shape == (len(ds), 64, 64, 3) and ds.images.dtype == np.uint8
    assert all(isinstance(c, str) and c.strip() for c in ds.captions)
    assert len(set(ds.captions)) == len(ds), "without skin tones every caption should be unique"
    skin = {f"{c:X}" for c in range(0x1F3FB, 0x1F400)}
    assert not any(skin & set(k.split("-")) for k in ds.keys)
    assert not any(0xE000 <= int(k.split("-")[0], 16) <= 0xF8FF for k in ds.keys), "private-use extras"
    caption_of = dict(zip(ds.keys, ds.captions))
    assert caption_of["1F600"] == "grinning face"
    assert caption_of["1F1EF-1F1F5"] == "flag of Japan"
    assert "OpenMoji" in OPENMOJI_CREDIT and "CC BY-SA 4.0" in OPENMOJI_CREDIT


def test_openmoji_white_background_and_value_range(openmoji):
    ds = openmoji["first"]
    corners = ds.images[:, [0, 0, -1, -1], [0, -1, 0, -1]]  # (N, 4, 3)
    assert (corners == 255).all(axis=(1, 2)).mean() > 0.99, "emoji are composited on white"
    assert ds.images.min(axis=(1, 2, 3)).max() < 200, "every emoji draws something dark-ish"
    s = ds[0]
    assert s["image"].shape == (3, 64, 64) and s["image"].dtype == torch.float32
    assert s["image"].min() >= -1.0 and s["image"].max() == 1.0
    assert isinstance(s["caption"], str)


def test_openmoji_cache_is_fast_and_identical(openmoji):
    first, second = openmoji["first"], openmoji["second"]
    assert np.array_equal(first.images, second.images)
    assert first.captions == second.captions and first.keys == second.keys
    assert openmoji["cached_s"] < openmoji["render_s"] / 3, (openmoji["render_s"], openmoji["cached_s"])
    files = os.listdir(openmoji["cache"])
    assert len(files) == 1 and files[0].startswith("openmoji-") and files[0].endswith("-64px-r1.npz")


def test_openmoji_splits_are_disjoint_complete_and_hash_based(openmoji):
    all_, train, test = openmoji["first"], openmoji["train"], openmoji["test"]
    assert not set(train.keys) & set(test.keys)
    assert set(train.keys) | set(test.keys) == set(all_.keys)
    assert 0.05 < len(test) / len(all_) < 0.15
    expected = [k for k in all_.keys if int(hashlib.sha256(f"0:{k}".encode()).hexdigest()[:16], 16) / 2**64 < 0.1]
    assert test.keys == expected
    i = all_.keys.index(test.keys[0])
    assert np.array_equal(test.images[0], all_.images[i]) and test.captions[0] == all_.captions[i]


def test_openmoji_options_and_errors():
    small = load_openmoji(16, limit=12, cache=False, progress=False)
    assert small.images.shape == (12, 16, 16, 3)
    assert len(emoji_mod.openmoji_index(skin_tones=True)) > 1.5 * len(emoji_mod.openmoji_index())
    assert emoji_mod.emoji_caption("1F44D-1F3FB") == "thumbs up light skin tone"
    assert emoji_mod.emoji_caption("E000") is None  # OpenMoji extra, no Unicode name
    with pytest.raises(ValueError, match="size"):
        load_openmoji(0)
    with pytest.raises(ValueError, match="split"):
        load_openmoji(16, split="val")


def test_render_svg_composites_on_white():
    svg = (b'<svg viewBox="0 0 10 10" xmlns="http://www.w3.org/2000/svg">'
           b'<rect x="0" y="0" width="5" height="10" fill="#FF0000"/></svg>')
    img = emoji_mod.render_svg(svg, 10)
    assert img.shape == (10, 10, 3) and img.dtype == np.uint8
    assert img[5, 1].tolist() == [255, 0, 0] and img[5, 8].tolist() == [255, 255, 255]
    assert emoji_mod.render_svg(b"not an svg", 10) is None


# ----------------------------------------------------------------------------- Fashion-MNIST
def _fashion_available():
    return fashion_mod.find_files("test") is not None and fashion_mod.find_files("train") is not None


needs_fashion = pytest.mark.skipif(
    not _fashion_available(),
    reason="Fashion-MNIST not installed: `sudo apt-get install dataset-fashion-mnist` "
    "(or put the idx files in $LDM_LITE_DATA/fashion-mnist/)",
)


def test_read_idx_roundtrip_and_truncation(tmp_path):
    data = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    header = bytes([0, 0, 0x08, 3]) + np.array(data.shape, dtype=">u4").tobytes()
    (tmp_path / "x-idx3-ubyte").write_bytes(header + data.tobytes())
    with gzip.open(tmp_path / "x-idx3-ubyte.gz", "wb") as f:
        f.write(header + data.tobytes())
    assert np.array_equal(fashion_mod.read_idx(tmp_path / "x-idx3-ubyte"), data)
    assert np.array_equal(fashion_mod.read_idx(tmp_path / "x-idx3-ubyte.gz"), data)
    (tmp_path / "short").write_bytes(header + data.tobytes()[:-3])
    with pytest.raises(ValueError, match="truncated"):
        fashion_mod.read_idx(tmp_path / "short")
    (tmp_path / "bad").write_bytes(b"\x12\x34\x08\x01abcd")
    with pytest.raises(ValueError, match="magic"):
        fashion_mod.read_idx(tmp_path / "bad")


@needs_fashion
def test_fashion_mnist_test_split():
    ds = load_fashion_mnist("test")
    assert ds.images.shape == (10_000, 28, 28, 1) and ds.images.dtype == np.uint8
    assert ds.labels.shape == (10_000,) and ds.labels.dtype == np.int64
    assert np.bincount(ds.labels).tolist() == [1000] * 10  # the test set is balanced
    assert ds.class_names == FASHION_CLASSES and len(FASHION_CLASSES) == 10
    assert all(ds.captions[i] == FASHION_CLASSES[ds.labels[i]] for i in range(0, 10_000, 97))
    assert np.median(ds.images[:, 0, 0]) == 0 and ds.images.max() == 255  # white garment on black
    s = ds[0]
    assert s["image"].shape == (1, 28, 28) and s["image"].min() == -1.0 and s["label"] == ds.labels[0]


@needs_fashion
def test_fashion_mnist_resize_channels_and_cache(tmp_cache):
    ds = load_fashion_mnist("test", size=32, channels=3)
    assert ds.images.shape == (10_000, 32, 32, 3)
    assert np.array_equal(ds.images[..., 0], ds.images[..., 2])  # gray repeated
    s = ds[123]
    assert s["image"].shape == (3, 32, 32) and -1.0 <= s["image"].min() and s["image"].max() <= 1.0
    assert "fashion-mnist-test-32px.npz" in os.listdir(tmp_cache)
    again = load_fashion_mnist("test", size=32)
    assert again.images.shape == (10_000, 32, 32, 1)
    assert np.array_equal(again.images[..., 0], ds.images[..., 0])
    # resizing keeps the picture: the 28 px original, upsampled, is close to the cached 32 px one
    small = load_fashion_mnist("test")
    assert np.abs(small.images.astype(float).mean() - again.images.astype(float).mean()) < 2.0


@needs_fashion
def test_fashion_mnist_train_and_all():
    train = load_fashion_mnist("train")
    assert train.images.shape == (60_000, 28, 28, 1)
    assert np.bincount(train.labels).tolist() == [6000] * 10
    both = load_fashion_mnist("all")
    assert len(both) == 70_000 and np.array_equal(both.images[:60_000], train.images)
    assert both.keys[60_000] == "test-0"


def test_fashion_mnist_missing_says_how_to_get_it(monkeypatch, tmp_path):
    monkeypatch.setattr(fashion_mod, "DEBIAN_DIR", str(tmp_path / "nowhere"))
    monkeypatch.delenv("LDM_LITE_DATA", raising=False)
    if fashion_mod.find_files("test") is not None:
        pytest.skip("a copy of Fashion-MNIST outside the Debian folder exists (repo data/ or cache)")
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist("test", download=False)
    with pytest.raises(ValueError, match="channels"):
        load_fashion_mnist("test", channels=2)


# ----------------------------------------------------------------------------- image folders
def _png(path, size=(40, 30), color=(200, 30, 30), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "images"
    _png(root / "a.png")
    _png(root / "sub" / "b.png", size=(30, 60), color=(10, 200, 10))
    _png(root / "sub" / "deeper" / "c.jpg", size=(50, 50), color=(20, 20, 220))
    _png(root / "d.PNG", size=(20, 20), color=(0, 0, 0, 0), mode="RGBA")  # fully transparent
    (root / "notes.txt").write_text("not an image")
    _png(root / ".ipynb_checkpoints" / "hidden.png")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    (root / "sub" / "empty.jpg").write_bytes(b"")
    return root


def test_image_folder_scans_validates_and_resizes(folder):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = ImageFolderDataset(folder, size=16)
    relevant = [w for w in caught if "unreadable" in str(w.message)]
    assert len(relevant) == 1, [str(w.message) for w in caught]
    assert "skipped 2 unreadable" in str(relevant[0].message) and "broken.png" in str(relevant[0].message)
    assert ds.files == ["a.png", "d.PNG", "sub/b.png", "sub/deeper/c.jpg"]  # sorted, recursive
    for i in range(len(ds)):
        s = ds[i]
        assert s["image"].shape == (3, 16, 16) and s["image"].dtype == torch.float32
        assert -1.0 <= s["image"].min() and s["image"].max() <= 1.0
        assert s["path"].endswith(ds.files[i]) and "caption" not in s
    white = to_uint8(ds[1]["image"])
    assert (white == 255).all(), "transparent pixels become white"
    green = to_uint8(ds[2]["image"])
    assert np.abs(green.astype(int) - [10, 200, 10]).max() <= 2
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch["image"].shape == (4, 3, 16, 16) and len(batch["path"]) == 4


def test_image_folder_centre_crop(tmp_path):
    stripes = np.zeros((20, 60, 3), np.uint8)
    stripes[:, :20] = (255, 0, 0)
    stripes[:, 20:40] = (0, 255, 0)
    stripes[:, 40:] = (0, 0, 255)
    (tmp_path / "img").mkdir()
    Image.fromarray(stripes).save(tmp_path / "img" / "wide.png")
    img = to_uint8(ImageFolderDataset(tmp_path / "img", size=10)[0]["image"])
    assert img.shape == (10, 10, 3)
    assert img[:, 2:8, 1].min() > 240 and img[:, 2:8, [0, 2]].max() < 15  # only the green middle third


def test_image_folder_captions_jsonl_and_csv(folder, tmp_path):
    files = ["a.png", "d.PNG", "sub/b.png", "sub/deeper/c.jpg"]
    jsonl = tmp_path / "captions.jsonl"
    jsonl.write_text("\n".join(json.dumps({"file": f, "caption": f"picture {f}"}) for f in files) + "\n")
    csv_path = tmp_path / "captions.csv"
    csv_path.write_text("file,caption\n" + "".join(f'{f},"picture, {f}"\n' for f in files))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = ImageFolderDataset(folder, size=8, captions=jsonl)
        b = ImageFolderDataset(folder, size=8, captions=csv_path)
    assert a.captions == [f"picture {f}" for f in a.files]
    assert b[2]["caption"] == "picture, sub/b.png"
    batch = next(iter(DataLoader(a, batch_size=2)))
    assert batch["caption"] == ["picture a.png", "picture d.PNG"]


def test_image_folder_missing_caption_is_an_error(folder, tmp_path):
    jsonl = tmp_path / "captions.jsonl"
    jsonl.write_text(json.dumps({"file": "a.png", "caption": "x"}) + "\n")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match=r"no caption in .*captions\.jsonl.*d\.PNG"):
            ImageFolderDataset(folder, size=8, captions=jsonl)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"file": "a.png", "caption": "x"}\n{oops\n')
    with pytest.raises(ValueError, match="line 2"):
        ImageFolderDataset(folder, size=8, captions=bad, validate=False)


def test_image_folder_empty_or_missing(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(FileNotFoundError, match=r"no images with extensions \.jpg, \.jpeg, \.png, \.webp"):
        ImageFolderDataset(tmp_path / "empty", size=8)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageFolderDataset(tmp_path / "missing", size=8)


def test_image_folder_labels_from_subfolders(tmp_path):
    for cls in ("dog", "cat"):
        for i in range(2):
            _png(tmp_path / "train" / cls / f"{i}.png")
    ds = ImageFolderDataset(tmp_path / "train", size=8, labels="folder")
    assert ds.class_names == ("cat", "dog") and ds.labels.tolist() == [0, 0, 1, 1]
    assert ds[3]["label"] == 1


# ----------------------------------------------------------------------------- photo crops
def test_photo_crops_shape_range_and_determinism():
    a = load_photo_crops(size=32, n=40, seed=0)
    assert a.images.shape == (40, 32, 32, 3) and a.images.dtype == np.uint8
    assert len(a.class_names) >= 10, "at least ten scikit-image photos load offline"
    assert all(c.endswith(" crop") for c in a.captions)
    assert all(a.captions[i] == f"{a.class_names[a.labels[i]]} crop" for i in range(len(a)))
    assert a.images.std(axis=(1, 2, 3)).min() > 2, "no flat crops"
    s = a[0]
    assert s["image"].shape == (3, 32, 32) and -1.0 <= s["image"].min() and s["image"].max() <= 1.0
    b = load_photo_crops(size=32, n=40, seed=0)
    assert np.array_equal(a.images, b.images)
    c = load_photo_crops(size=32, n=40, seed=1)
    assert not np.array_equal(a.images, c.images)
    one = load_photo_crops(size=16, n=3, photos=["astronaut"])
    assert one.captions == ["astronaut crop"] * 3
    with pytest.raises(ValueError, match="unknown photo"):
        load_photo_crops(size=16, n=2, photos=["lena"])
