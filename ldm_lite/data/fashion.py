"""Fashion-MNIST (Xiao, Rasul & Vollgraf 2017): 70,000 gray 28 x 28 images of clothing in 10 classes.

A drop-in replacement for MNIST that is harder and more varied, small enough to train a class-
conditional latent diffusion model on a laptop. Licence: MIT (Zalando Research).

Where the files are looked for, in order (the four standard idx files, gzipped or not:
``train-images-idx3-ubyte.gz``, ``train-labels-idx1-ubyte.gz``, ``t10k-images-idx3-ubyte.gz``,
``t10k-labels-idx1-ubyte.gz``):

1. ``/usr/share/datasets/fashion-mnist/`` -- Debian/Ubuntu ``sudo apt-get install dataset-fashion-mnist``;
2. ``$LDM_LITE_DATA`` and ``$LDM_LITE_DATA/fashion-mnist/``;
3. the repository's ``data/fashion-mnist/``;
4. ``<cache_dir>/fashion-mnist/`` (also torchvision's ``FashionMNIST/raw/`` layout inside it);
5. with ``download=True``: torchvision's ``FashionMNIST(download=True)`` into that cache folder (needs
   internet once).

The parsed (and resized) arrays are cached as ``.npz`` so later loads skip the gzip and the resize.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from ldm_lite.config import cache_dir
from ldm_lite.data.common import ArrayImageDataset, load_npz, save_npz_atomic

FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
COUNTS = {"train": 60_000, "test": 10_000}
HOW_TO_GET = (
    "Get Fashion-MNIST in one of these ways:\n"
    "  * Debian/Ubuntu: `sudo apt-get install dataset-fashion-mnist` (files go to "
    f"{DEBIAN_DIR}/);\n"
    "  * run `load_fashion_mnist(download=True)` once on a machine with internet (torchvision "
    "downloads it into the cache folder);\n"
    "  * or copy the four idx files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
    "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) from "
    "https://github.com/zalandoresearch/fashion-mnist into $LDM_LITE_DATA/fashion-mnist/."
)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Parse an idx file (the MNIST format; gzipped if the name ends in ``.gz``) into a uint8 array.

    Layout: two zero bytes, a type code (``0x08`` = unsigned byte), the number of dimensions ``d``,
    then ``d`` big-endian uint32 sizes, then the data in C order.
    """
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path} is not an idx file (bad magic number)")
    if raw[2] != 0x08:
        raise ValueError(f"{path}: idx type code {raw[2]:#04x} is not unsigned byte (0x08)")
    ndim = raw[3]
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says shape {shape} but holds {data.size} bytes (truncated?)")
    return data.reshape(shape).copy()


def search_dirs() -> list[Path]:
    """The folders searched for the idx files, in order."""
    dirs = [Path(DEBIAN_DIR)]
    if os.environ.get("LDM_LITE_DATA"):
        root = Path(os.environ["LDM_LITE_DATA"]).expanduser()
        dirs += [root, root / "fashion-mnist"]
    repo_data = Path(__file__).resolve().parents[2] / "data"
    cache = Path(cache_dir()) / "fashion-mnist"
    dirs += [repo_data / "fashion-mnist", cache, cache / "FashionMNIST" / "raw"]
    return dirs


def find_files(split: str) -> tuple[Path, Path] | None:
    """``(images, labels)`` idx paths of ``split`` in the first folder that has both, else None."""
    for folder in search_dirs():
        found = []
        for stem in FILES[split]:
            hits = [folder / (stem + ext) for ext in (".gz", "") if (folder / (stem + ext)).is_file()]
            found.append(hits[0] if hits else None)
        if all(found):
            return found[0], found[1]
    return None


def _download(split: str) -> tuple[Path, Path] | None:
    """torchvision's downloader (needs internet); None if it fails."""
    try:
        from torchvision.datasets import FashionMNIST

        FashionMNIST(str(Path(cache_dir()) / "fashion-mnist"), train=(split == "train"), download=True)
    except Exception:  # offline, or torchvision missing: the caller raises the helpful error
        return None
    return find_files(split)


def _resize(gray: np.ndarray, size: int) -> np.ndarray:
    """Resize uint8 ``(N, H, W)`` to ``(N, size, size)``: bilinear, antialiased when shrinking (one
    batched ``torch.nn.functional.interpolate`` call; 60,000 images take a fraction of a second)."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(gray).unsqueeze(1).to(torch.float32)
    y = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return y.round_().clamp_(0, 255).to(torch.uint8).squeeze(1).numpy()


def _load_split(split: str, size: int | None, download: bool, cache: bool) -> tuple[np.ndarray, np.ndarray]:
    side = size or 28
    path = os.path.join(cache_dir(), f"fashion-mnist-{split}-{side}px.npz")
    stored = load_npz(path, ("images", "labels")) if cache else None
    if stored is not None:
        return stored["images"], stored["labels"]
    files = find_files(split) or (_download(split) if download else None)
    if files is None:
        searched = "\n".join(f"  {d}" for d in search_dirs())
        raise FileNotFoundError(f"Fashion-MNIST {split} files not found. Searched:\n{searched}\n{HOW_TO_GET}")
    images, labels = read_idx(files[0]), read_idx(files[1]).astype(np.int64)
    if images.shape != (COUNTS[split], 28, 28) or labels.shape != (COUNTS[split],):
        raise ValueError(f"unexpected Fashion-MNIST shapes {images.shape}, {labels.shape} in {files[0].parent}")
    if side != 28:
        images = _resize(images, side)
    if cache:
        save_npz_atomic(path, images=images, labels=labels)
    return images, labels


def load_fashion_mnist(
    split: str = "train",
    size: int | None = None,
    channels: int = 1,
    download: bool = True,
    cache: bool = True,
) -> ArrayImageDataset:
    """Fashion-MNIST as an :class:`ArrayImageDataset` with labels and class-name captions.

    Args:
        split: ``"train"`` (60,000), ``"test"`` (10,000) or ``"all"`` (both, train first).
        size: resize to ``size x size`` (e.g. 32 for a UNet that halves the resolution three times);
            None keeps 28.
        channels: 1 (gray) or 3 (the gray channel repeated, as a read-only broadcast view -- no extra
            memory; ``ds[i]`` copies).
        download: if no local copy is found, try torchvision's download (needs internet).
        cache: read/write the parsed arrays as ``.npz`` under ``cache_dir()``.

    Returns:
        ``ds.images`` uint8 ``(N, S, S, channels)`` (white garment on black), ``ds.labels`` int64
        ``(N,)``, ``ds.captions`` e.g. ``"Ankle boot"``, ``ds.class_names == FASHION_CLASSES``.
    """
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    if size is not None and (not isinstance(size, int) or not 8 <= size <= 512):
        raise ValueError(f"size must be None (28 px) or an int from 8 to 512, got {size!r}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (gray) or 3 (gray repeated as RGB), got {channels!r}")
    parts = ["train", "test"] if split == "all" else [split]
    loaded = [_load_split(s, size, download, cache) for s in parts]
    images = np.concatenate([im for im, _ in loaded]) if len(loaded) > 1 else loaded[0][0]
    labels = np.concatenate([lb for _, lb in loaded]) if len(loaded) > 1 else loaded[0][1]
    keys = [f"{s}-{i}" for s, (im, _) in zip(parts, loaded) for i in range(len(im))]
    images = images[..., None]
    if channels == 3:
        images = np.broadcast_to(images, images.shape[:3] + (3,))
    return ArrayImageDataset(
        images,
        captions=[FASHION_CLASSES[k] for k in labels],
        labels=labels,
        class_names=FASHION_CLASSES,
        keys=keys,
        info=dict(name=f"Fashion-MNIST {split}", licence="MIT (Zalando Research)"),
    )
