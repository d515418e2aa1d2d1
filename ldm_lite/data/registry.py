"""The datasets by name: ``load_dataset("shapes", 32)``, mixtures such as ``"shapes+fashion@32"``, image folders.

The recipes (:mod:`ldm_lite.experiments`), the command line and the evaluators' training all name their data
through :func:`load_dataset`; :func:`check_dataset` raises its error for an unknown name without loading anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from ldm_lite.data.emoji import load_openmoji
from ldm_lite.data.fashion import load_fashion_mnist
from ldm_lite.data.folder import ImageFolderDataset
from ldm_lite.data.photos import load_photo_crops
from ldm_lite.data.shapes import COLORS, SHAPES, ShapesDataset

__all__ = ["DATASETS", "ImageMixture", "check_dataset", "load_dataset", "parse_holdout"]

DATASETS = ("openmoji", "shapes", "fashion", "photos")


def load_dataset(name: str, size: int, split: str = "train", seed: int = 0, length: int | None = None,
                 holdout: Sequence[str] = (), captions=None):
    """A dataset by name -- ``openmoji``, ``shapes``, ``fashion``, ``photos`` -- a mixture such as
    ``"shapes+fashion@32"``, or a folder path.

    ``split`` is ``"train"`` or ``"test"`` (held out: OpenMoji's fixed 10 %, Fashion-MNIST's test set,
    another seed of shapes / photo crops). Every sample is a dict with ``image`` in [-1, 1].
    ``length``: how many images procedural data (shapes, photo crops) generate; None = their default
    (50,000 shapes / 4,000 crops for training). ``holdout`` (shapes, and the shapes parts of a mixture):
    ``"colour shape"`` pairs, e.g. ``("purple triangle", "green cross")``, that never appear in the training
    split (the test split keeps them, to test new compositions). ``captions`` (an image folder only): a captions
    file (``.jsonl`` / ``.csv``, see :mod:`ldm_lite.data.folder`) or a dict; the built-in datasets bring their own.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if length is not None and (not isinstance(length, int) or isinstance(length, bool) or length < 1):
        raise ValueError(f"length (the number of images to generate) must be at least 1, got {length!r}; "
                         "None gives the dataset's default")
    pairs = parse_holdout(holdout)
    if "+" in name:
        if captions is not None:
            raise ValueError(f"captions are for an image folder; the mixture {name!r} keeps only images")
        return _load_mixture(name, size, split, seed, length, pairs)
    if pairs and name != "shapes":
        raise ValueError(f"holdout pairs need (colour, shape) labels: use data 'shapes' or a mixture with a shapes "
                         f"part (e.g. 'shapes+fashion'); {name!r} has no such labels")
    if captions is not None and name in DATASETS:
        raise ValueError(f"captions files are for image folders; {name!r} brings its own captions")
    if name == "openmoji":
        return load_openmoji(size=size, split=split)
    if name == "shapes":
        return ShapesDataset(size=size, length=length if length is not None else (50_000 if split == "train"
                                                                                   else 1_000),
                             seed=seed if split == "train" else seed + 10_000,
                             holdout=pairs if split == "train" else ())
    if name == "fashion":
        return load_fashion_mnist(split, size=size, channels=3)
    if name == "photos":
        return load_photo_crops(size=size, n=length if length is not None else (4_000 if split == "train"
                                                                                else 256),
                                seed=seed if split == "train" else seed + 10_000)
    path = Path(name).expanduser()
    if path.is_dir():
        return ImageFolderDataset(path, size=size, split=split, captions=captions)
    raise _no_such_dataset(name)


def _no_such_dataset(name: str) -> Exception:
    """The error for a dataset name that is neither built in nor an existing folder: a name that looks like a path
    is a folder that does not exist (not a checkpoint to train, say)."""
    choices = f"{', '.join(DATASETS)}, a mixture such as shapes+fashion@32, or the path of an existing image folder"
    path = Path(name).expanduser()
    if path.exists():
        return ValueError(f"{name!r} is a file, not an image folder; a dataset is one of {choices}")
    if any(c in name for c in "/\\") or name.startswith((".", "~")):
        return FileNotFoundError(f"the image folder {name!r} does not exist; a dataset is one of {choices}")
    return ValueError(f"unknown dataset {name!r}: use one of {choices}")


def check_dataset(name: str) -> None:
    """Raise the error :func:`load_dataset` would, for an unknown name or a missing folder, without loading."""
    names = [_parse_part(p, 0)[0] for p in name.split("+")] if "+" in name else [name]
    for n in names:
        if n not in DATASETS and not Path(n).expanduser().is_dir():
            raise _no_such_dataset(n)


def parse_holdout(holdout: Sequence[str]) -> list[tuple[str, str]]:
    """``["purple triangle", ...]`` (or ``("purple", "triangle")`` pairs) -> ``[("purple", "triangle"), ...]``."""
    out = []
    for item in holdout or ():
        pair = tuple(item.split()) if isinstance(item, str) else tuple(item)
        if len(pair) != 2 or pair[0] not in COLORS or pair[1] not in SHAPES:
            raise ValueError(f"holdout pair {item!r} must be 'colour shape' with colour in {COLORS} and shape in {SHAPES}")
        out.append(pair)
    return out


def _parse_part(part: str, size: int) -> tuple[str, int]:
    name, _, at = part.partition("@")
    if at and not at.isdigit():
        raise ValueError(f"dataset part {part!r}: write name@size with an integer size, e.g. fashion@32")
    return name, int(at) if at else size


class ImageMixture(torch.utils.data.Dataset):
    """Several image datasets one after another, each item reduced to ``{"image", "index"}`` (their other
    fields differ, and a batch mixing them must collate). Used to train *one* first stage for several
    datasets -- the paper's point that a first stage is trained once and reused (Sec. 3.1)."""

    def __init__(self, parts: dict):
        self.parts = parts
        self.offsets, total = [], 0
        for ds in parts.values():
            self.offsets.append(total)
            total += len(ds)
        self.total = total

    def __len__(self):
        return self.total

    def __getitem__(self, i):
        if not 0 <= i < self.total:
            raise IndexError(f"index {i} out of range for a mixture of {self.total} images")
        k = max(j for j, off in enumerate(self.offsets) if off <= i)
        ds = list(self.parts.values())[k]
        return {"image": ds[i - self.offsets[k]]["image"], "index": i}

    def __repr__(self):
        return "ImageMixture(" + ", ".join(f"{k}: {len(v)}" for k, v in self.parts.items()) + ")"


def _load_mixture(name: str, size: int, split: str, seed: int, length: int | None, holdout=()):
    """``"shapes+fashion@32"``: shapes at ``size`` and Fashion-MNIST at 32 px, as one training set. The held-out
    split of a mixture is its *first* part's (image sizes may differ, and evaluation stacks images). ``holdout``
    pairs are kept out of every shapes part."""
    parts = [_parse_part(p, size) for p in name.split("+")]
    if holdout and not any(n == "shapes" for n, _ in parts):
        raise ValueError(f"holdout pairs need (colour, shape) labels: the mixture {name!r} has no shapes part")
    if split == "test":
        first, first_size = parts[0]
        return load_dataset(first, first_size, "test", seed=seed, length=length)
    return ImageMixture({f"{n}@{s}": load_dataset(n, s, "train", seed=seed, length=length,
                                                  holdout=holdout if n == "shapes" else ())
                         for n, s in parts})


def _has_shapes(data: str) -> bool:
    """Whether ``data`` is shapes or a mixture with a shapes part (the data with (colour, shape) labels)."""
    return data == "shapes" or ("+" in data and any(_parse_part(p, 0)[0] == "shapes" for p in data.split("+")))
