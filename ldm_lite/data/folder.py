"""Your own images: a folder (searched recursively) of JPEG/PNG/WebP files, optionally captioned.

This is how the paper's datasets are used with the course code -- CelebA-HQ, FFHQ, LSUN, ImageNet
(``data/README.md`` shows the layouts). Each image is converted to RGB (transparent pixels on white),
its shorter side resized to ``size`` with an antialiasing filter, and the centre ``size x size``
cropped -- the preprocessing of the LDM paper's unconditional models.

Two problems that would otherwise surface hours into a training run are caught on construction:

* unreadable files: every file is checked cheaply with PIL's ``verify()`` (reads the header and, for
  PNG, the chunk checksums, without decoding the pixels); bad ones are skipped with ONE warning that
  counts them;
* missing captions: with a captions file, every image must have an entry, else ``ValueError``.

Captions files map paths relative to ``root`` (with ``/``) to text, as JSON Lines::

    {"file": "people/0001.jpg", "caption": "a smiling woman with red hair"}

or CSV with a header row ``file,caption``. (Hugging Face's ``metadata.jsonl`` keys ``file_name`` and
``text`` are accepted too.)
"""

from __future__ import annotations

import csv
import json
import os
import warnings
from pathlib import Path, PurePosixPath
from typing import Mapping, Sequence

import numpy as np
from torch.utils.data import Dataset

from ldm_lite.data.common import to_image_tensor

EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
_FILE_KEYS = ("file", "file_name", "path")
_CAPTION_KEYS = ("caption", "text")


def scan_images(root: Path, extensions: Sequence[str]) -> list[str]:
    """Relative POSIX paths of the image files under ``root``, recursively, sorted.

    Hidden files and folders (names starting with ".", e.g. ``.ipynb_checkpoints``) are ignored.
    Sorting makes the order -- and so every index -- the same on every machine.
    """
    exts = tuple(e.lower() for e in extensions)
    found = []
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if not name.startswith(".") and name.lower().endswith(exts):
                found.append(Path(folder, name).relative_to(root).as_posix())
    return sorted(found)


def read_captions(path: str | os.PathLike) -> dict[str, str]:
    """Read a captions file (``.jsonl`` / ``.json`` lines, or ``.csv``) into ``{relative path: caption}``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"captions file {path} does not exist")
    entries: list[tuple[int, dict]] = []
    if path.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    entries.append((lineno, json.loads(line)))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}, line {lineno}: not valid JSON ({exc.msg}); expected "
                                     '{"file": "relative/path.jpg", "caption": "..."}') from None
    elif path.suffix.lower() in (".csv", ".tsv"):
        with open(path, encoding="utf-8-sig", newline="") as f:  # -sig: tolerate Excel's BOM
            reader = csv.DictReader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
            entries = [(lineno, row) for lineno, row in enumerate(reader, 2)]
    else:
        raise ValueError(f"captions file {path} must end in .jsonl or .csv, got {path.suffix!r}")
    captions: dict[str, str] = {}
    for lineno, row in entries:
        file = next((row[k] for k in _FILE_KEYS if isinstance(row, dict) and row.get(k) is not None), None)
        text = next((row[k] for k in _CAPTION_KEYS if isinstance(row, dict) and row.get(k) is not None), None)
        if file is None or text is None:
            raise ValueError(f"{path}, line {lineno}: needs a 'file' and a 'caption' entry, got {row!r}")
        key = PurePosixPath(str(file).replace("\\", "/")).as_posix().removeprefix("./")
        if key in captions and captions[key] != text:
            raise ValueError(f"{path}, line {lineno}: {key!r} has two different captions")
        captions[key] = str(text)
    return captions


def load_image(path: str | os.PathLike, size: int) -> np.ndarray:
    """Open an image as uint8 RGB ``(size, size, 3)``: EXIF rotation applied, alpha composited on
    white, shorter side resized to ``size`` (Lanczos, antialiased), centre crop."""
    from PIL import Image, ImageOps

    with Image.open(path) as img:
        img = ImageOps.exif_transpose(img)
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")
            img = Image.new("RGB", rgba.size, (255, 255, 255))
            img.paste(rgba, mask=rgba.getchannel("A"))
        else:
            img = img.convert("RGB")
        w, h = img.size
        scale = size / min(w, h)
        new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
        img = img.resize((new_w, new_h), Image.Resampling.LANCZOS, reducing_gap=3.0)
        left, top = (new_w - size) // 2, (new_h - size) // 2
        img = img.crop((left, top, left + size, top + size))
        return np.asarray(img, dtype=np.uint8)


def _is_readable(path: Path) -> bool:
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.verify()
        return True
    except Exception:
        return False


class ImageFolderDataset(Dataset):
    """Images under ``root`` (recursive), resized and centre-cropped to ``size``, with optional captions.

    Args:
        root: the folder to scan.
        size: output side in pixels.
        captions: a captions file (``.jsonl`` or ``.csv``, see the module docstring), a dict
            ``{relative path: caption}``, or None.
        extensions: file endings to include (case-insensitive).
        labels: ``"folder"`` gives each image the class of its top-level sub-folder (ImageNet layout,
            ``ds.class_names`` sorted); None for no labels.
        validate: check every file with PIL's ``verify()`` on construction and skip bad ones (one
            warning). Cheap: headers only. Set False for huge folders you trust.

    ``ds[i]`` is ``dict(image=float32 (3, size, size) in [-1, 1], index=i, path=str, caption=str?,
    label=int?)``. ``ds.files`` (relative paths), ``ds.captions`` and ``ds.labels`` are public.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        size: int = 64,
        captions: str | os.PathLike | Mapping[str, str] | None = None,
        extensions: Sequence[str] = EXTENSIONS,
        labels: str | None = None,
        validate: bool = True,
    ):
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be a positive int, got {size!r}")
        if labels not in (None, "folder"):
            raise ValueError(f"labels must be None or 'folder', got {labels!r}")
        self.root = Path(root).expanduser()
        self.size = size
        self.extensions = tuple(extensions)
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"image folder {self.root} does not exist (or is not a folder); put images with "
                f"extensions {', '.join(self.extensions)} there (sub-folders are searched too)"
            )
        files = scan_images(self.root, self.extensions)
        if not files:
            raise FileNotFoundError(
                f"no images with extensions {', '.join(self.extensions)} found under {self.root} "
                "(sub-folders included, hidden ones skipped)"
            )
        if validate:
            bad = [f for f in files if not _is_readable(self.root / f)]
            if bad:
                shown = ", ".join(bad[:5]) + (", ..." if len(bad) > 5 else "")
                warnings.warn(
                    f"skipped {len(bad)} unreadable image file(s) of {len(files)} under {self.root}: "
                    f"{shown}",
                    stacklevel=2,
                )
                bad_set = set(bad)
                files = [f for f in files if f not in bad_set]
            if not files:
                raise ValueError(f"none of the image files under {self.root} could be read")
        self.files = files

        self.captions: list[str] | None = None
        self.captions_source = None
        if captions is not None:
            table = dict(captions) if isinstance(captions, Mapping) else read_captions(captions)
            self.captions_source = "a dict" if isinstance(captions, Mapping) else str(captions)
            missing = [f for f in files if f not in table]
            if missing:
                shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
                raise ValueError(
                    f"{len(missing)} image(s) under {self.root} have no caption in "
                    f"{self.captions_source}: {shown}. Add a line per image "
                    '({"file": "relative/path.jpg", "caption": "..."}) or remove the image.'
                )
            self.captions = [table[f] for f in files]

        self.labels: np.ndarray | None = None
        self.class_names: tuple[str, ...] | None = None
        if labels == "folder":
            tops = [f.split("/")[0] if "/" in f else "" for f in files]
            if "" in tops:
                raise ValueError(f"labels='folder' needs every image inside a class sub-folder of {self.root}; "
                                 f"{files[tops.index('')]!r} is not")
            self.class_names = tuple(sorted(set(tops)))
            self.labels = np.array([self.class_names.index(t) for t in tops], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for a folder of {n} images")
        index = int(index) % n
        path = self.root / self.files[index]
        try:
            array = load_image(path, self.size)
        except Exception as exc:
            raise OSError(f"could not decode {path} ({type(exc).__name__}: {exc}); it passed the header "
                          "check, so the file is probably truncated -- delete or re-download it") from exc
        sample = dict(image=to_image_tensor(array), index=index, path=str(path))
        if self.captions is not None:
            sample["caption"] = self.captions[index]
        if self.labels is not None:
            sample["label"] = int(self.labels[index])
        return sample

    def __repr__(self) -> str:
        extra = f", captions from {self.captions_source}" if self.captions is not None else ""
        return f"ImageFolderDataset({str(self.root)!r}, n={len(self)}, size={self.size}{extra})"
