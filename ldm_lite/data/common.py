"""Shared pieces of the real-data loaders: an in-memory image dataset, conversions, splits, caching.

Every loader in :mod:`ldm_lite.data` returns samples in one convention, the one the models expect::

    image    float32 (C, H, W) in [-1, 1]     (uint8 0 -> -1, uint8 255 -> +1)
    index    int, the sample's position in its dataset
    caption  str             (when the dataset has captions)
    label    int             (when the dataset has class labels)

Small datasets (OpenMoji, Fashion-MNIST, photo crops) live in memory as one uint8 array
``(N, H, W, C)``: 1,918 emoji at 64 px are 24 MB, and reading a sample is a slice, not a file decode.
:class:`ArrayImageDataset` wraps such an array; its ``images``, ``captions`` and ``labels`` stay public
so a notebook can show a grid of ``ds.images[:64]`` without going through ``__getitem__``.

Splits are decided by a hash of a stable key (an emoji's code points, a file name), not by a random
permutation of the current list, so a held-out image stays held out when the dataset grows or a
package version adds entries -- and the same on every machine.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ldm_lite.io import atomic_write

SPLITS = ("all", "train", "test")


# ----------------------------------------------------------------------------- conversions
def to_image_tensor(array: np.ndarray) -> torch.Tensor:
    """uint8 images -> float32 tensors in [-1, 1], channels first.

    ``(H, W, C) -> (C, H, W)`` and ``(N, H, W, C) -> (N, C, H, W)``; a 2-D ``(H, W)`` gray image gives
    ``(1, H, W)``. The array is copied, so read-only or broadcast views are fine.
    """
    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise TypeError(f"expected a uint8 image array, got dtype {array.dtype}; convert with "
                        "np.clip(x * 255, 0, 255).round().astype(np.uint8) first")
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim not in (3, 4):
        raise ValueError(f"expected (H, W), (H, W, C) or (N, H, W, C), got shape {array.shape}")
    t = torch.from_numpy(array.astype(np.float32))  # a fresh, writable copy
    t = t.movedim(-1, -3)  # channels first
    return t.div_(127.5).sub_(1.0).contiguous()


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """The inverse of :func:`to_image_tensor`: ``(C, H, W)`` or ``(N, C, H, W)`` in [-1, 1] -> uint8
    ``(H, W, C)`` or ``(N, H, W, C)``. Values outside [-1, 1] are clipped; NaN / inf raise a ``ValueError``."""
    if images.ndim not in (3, 4):
        raise ValueError(f"expected (C, H, W) or (N, C, H, W), got shape {tuple(images.shape)}")
    x = images.detach().to("cpu", torch.float32)
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        raise ValueError(
            f"cannot convert images with NaN / inf to uint8: {int(bad.sum())} of {x.numel()} values are not finite "
            f"({int(torch.isnan(x).sum())} NaN); they would be saved as black pixels. Fix where they arise, or "
            "replace them deliberately with torch.nan_to_num(images)"
        )
    x = x.add(1.0).mul(127.5).round().clamp(0, 255)
    return x.to(torch.uint8).movedim(-3, -1).numpy()


# ----------------------------------------------------------------------------- splits
def stable_fraction(key: str, seed: int = 0) -> float:
    """A number in [0, 1) fixed by ``(seed, key)`` alone: the same on every machine and Python
    version (SHA-256, not Python's salted ``hash``)."""
    digest = hashlib.sha256(f"{seed}:{key}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def is_test_key(key: str, test_fraction: float = 0.1, seed: int = 0) -> bool:
    """Whether the item named ``key`` belongs to the test split (about ``test_fraction`` of keys)."""
    return stable_fraction(key, seed) < test_fraction


def split_mask(keys: Sequence[str], split: str, test_fraction: float = 0.1, seed: int = 0) -> np.ndarray:
    """Boolean mask over ``keys`` selecting ``split`` (``"all"``, ``"train"`` or ``"test"``)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not 0.0 <= test_fraction <= 1.0:
        raise ValueError(f"test_fraction must be in [0, 1], got {test_fraction}")
    if split == "all":
        return np.ones(len(keys), dtype=bool)
    test = np.array([is_test_key(str(k), test_fraction, seed) for k in keys], dtype=bool)
    return test if split == "test" else ~test


# ----------------------------------------------------------------------------- dataset
class ArrayImageDataset(Dataset):
    """Images held in memory as one uint8 array, with optional captions and labels.

    Args:
        images: uint8 ``(N, H, W, C)`` with C = 1 (gray) or 3 (RGB).
        captions: ``N`` strings, or None.
        labels: ``N`` integer class labels, or None.
        class_names: names of the label classes (``class_names[label]``), or None.
        keys: ``N`` stable identifiers (emoji code points, file names) used by
            :func:`train_test_split`; defaults to the positions ``"0" .. "N-1"``.
        info: free-form provenance (source, licence, credit), shown in ``repr``.

    ``ds[i]`` is ``dict(image=float32 (C, H, W) in [-1, 1], index=i, caption=str?, label=int?)``, which
    ``torch.utils.data.default_collate`` batches into ``image (B, C, H, W)``, ``caption`` list of str,
    ``label (B,)`` int64.
    """

    def __init__(
        self,
        images: np.ndarray,
        captions: Sequence[str] | None = None,
        labels: np.ndarray | Sequence[int] | None = None,
        class_names: Sequence[str] | None = None,
        keys: Sequence[str] | None = None,
        info: dict | None = None,
    ):
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
            raise ValueError(
                f"images must be uint8 (N, H, W, C) with C in (1, 3); got dtype {images.dtype}, "
                f"shape {images.shape}. Gray (N, H, W) arrays: add a channel with images[..., None]."
            )
        n = len(images)
        if captions is not None:
            captions = [str(c) for c in captions]
            if len(captions) != n:
                raise ValueError(f"{len(captions)} captions for {n} images; give one caption per image")
        if labels is not None:
            labels = np.asarray(labels, dtype=np.int64)
            if labels.shape != (n,):
                raise ValueError(f"labels must have shape ({n},), got {labels.shape}")
            if class_names is not None and n and not 0 <= labels.min() <= labels.max() < len(class_names):
                raise ValueError(f"labels must index class_names (0 .. {len(class_names) - 1}), "
                                 f"got range {labels.min()} .. {labels.max()}")
        if keys is not None:
            keys = [str(k) for k in keys]
            if len(keys) != n:
                raise ValueError(f"{len(keys)} keys for {n} images; give one key per image")
        self.images = images
        self.captions = captions
        self.labels = labels
        self.class_names = tuple(class_names) if class_names is not None else None
        self.keys = keys
        self.info = dict(info or {})

    def __len__(self) -> int:
        return len(self.images)

    @property
    def size(self) -> int:
        """Image side in pixels (images are square in every loader here; this is the height)."""
        return int(self.images.shape[1])

    @property
    def channels(self) -> int:
        return int(self.images.shape[-1])

    def __getitem__(self, index: int) -> dict:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for a dataset of {n} images")
        index = int(index) % n
        sample = dict(image=to_image_tensor(self.images[index]), index=index)
        if self.captions is not None:
            sample["caption"] = self.captions[index]
        if self.labels is not None:
            sample["label"] = int(self.labels[index])
        return sample

    def subset(self, indices) -> "ArrayImageDataset":
        """A new dataset holding the given positions (an index array or a boolean mask)."""
        idx = np.asarray(indices)
        idx = np.flatnonzero(idx) if idx.dtype == bool else idx.astype(np.int64).reshape(-1)
        return ArrayImageDataset(
            self.images[idx],
            captions=None if self.captions is None else [self.captions[i] for i in idx],
            labels=None if self.labels is None else self.labels[idx],
            class_names=self.class_names,
            keys=None if self.keys is None else [self.keys[i] for i in idx],
            info=self.info,
        )

    def tensors(self, limit: int | None = None) -> torch.Tensor:
        """The first ``limit`` images (all by default) as one float32 ``(N, C, H, W)`` tensor in [-1, 1]."""
        return to_image_tensor(self.images[:limit])

    def __repr__(self) -> str:
        n, h, w, c = self.images.shape
        parts = [f"n={n}", f"size={h}x{w}", f"channels={c}"]
        if self.captions is not None:
            parts.append("captions")
        if self.labels is not None:
            parts.append(f"labels({len(self.class_names) if self.class_names else '?'} classes)")
        if "name" in self.info:
            parts.insert(0, repr(self.info["name"]))
        return f"ArrayImageDataset({', '.join(parts)})"


def train_test_split(
    dataset: ArrayImageDataset, test_fraction: float = 0.1, seed: int = 0
) -> tuple[ArrayImageDataset, ArrayImageDataset]:
    """Split into ``(train, test)`` by a hash of each image's key (see :func:`stable_fraction`).

    Deterministic across machines and independent of the dataset's order; the test part holds about
    ``test_fraction`` of the images (exactly that only on average). Without ``keys`` the positions
    are the keys, which is still deterministic for a fixed dataset.
    """
    keys = dataset.keys if dataset.keys is not None else [str(i) for i in range(len(dataset))]
    test = split_mask(keys, "test", test_fraction, seed)
    return dataset.subset(~test), dataset.subset(test)


# ----------------------------------------------------------------------------- cache files
def save_npz_atomic(path: str, compress: bool = False, **arrays) -> None:
    """``np.savez`` (``np.savez_compressed`` with ``compress=True``) to a temporary file in the same
    folder, then ``os.replace``: readers never see a half-written cache, and two processes rendering
    at once cannot corrupt it."""
    def write(tmp):
        with open(tmp, "wb") as f:
            (np.savez_compressed if compress else np.savez)(f, **arrays)

    atomic_write(path, write)


def load_npz(path: str, names: Sequence[str]) -> dict | None:
    """Load arrays ``names`` from a cache file; None (with a warning) if it is missing or unreadable.

    Cache files hold plain arrays only (``allow_pickle=False``), so a tampered cache cannot run code.
    """
    if not os.path.exists(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            return {name: z[name] for name in names}
    except Exception as exc:  # truncated / corrupt / old layout: rebuild it
        warnings.warn(f"ignoring unreadable cache file {path} ({type(exc).__name__}: {exc}); rebuilding it")
        return None
