"""Your own images: a folder (searched recursively) of JPEG/PNG/WebP files, optionally captioned.

This is how the paper's datasets are used with the course code -- CelebA-HQ, FFHQ, LSUN, ImageNet
(``data/README.md`` shows the layouts). Each image is read upright (EXIF orientation) and converted to RGB
(transparent pixels on white) by the reader ``ldm-lite upscale`` / ``inpaint`` use too
(:func:`ldm_lite.data.images.read_image`), its shorter side resized to ``size`` with an antialiasing filter, and
the centre ``size x size`` cropped -- the preprocessing of the LDM paper's unconditional models.

Problems that would otherwise surface hours into a training run are caught on construction:

* unreadable files: by default every file is *decoded* once (PIL's ``load()``; JPEGs at a reduced
  draft scale, which still reads the whole file), so a truncated JPEG -- whose header passes PIL's
  cheap ``verify()`` -- is found here and not at step 54 of 300. Bad files are skipped with ONE warning
  that counts them and names each with its reason. ``validate="header"`` keeps the cheap header check
  (much faster on huge folders, misses truncation); ``validate=False`` checks nothing. A file that still
  fails to decode in ``ds[i]`` raises an ``OSError`` naming it;
* missing captions: with a captions file, every image must have an entry, else ``ValueError``;
* a captions file that is not UTF-8 (e.g. Latin-1 from an old spreadsheet) is a ``ValueError`` naming the
  file, line and byte, and how to re-save it -- no guessing of the encoding (a wrong guess would silently
  garble the captions the model is conditioned on).

16-bit greyscale PNGs (PIL modes ``I;16`` / ``I``) are scaled from 0..65535 to 0..255 before the usual
conversion (PIL's own ``convert("RGB")`` clips them, so they would load almost white).

**Held-out split.** ``split="train"`` / ``"test"`` divide the folder by a hash of each file's relative path
(:func:`ldm_lite.data.common.split_mask`, as OpenMoji's split by code points): disjoint, the same on every
machine and for every file order, and a file stays on its side when images are added. ``test_fraction``
(default 0.1) is the share held out on average. Small folders: a split needs at least 2 images; when the hash
puts none of them in the test split (or all of them), the file with the lowest (highest) hash is moved
over, so both splits are non-empty; below :data:`MIN_SPLIT_IMAGES` images a warning says that held-out
numbers from so few images are noise. ``split="all"`` (the default) is every image, as before.

Captions files map paths relative to ``root`` (with ``/``) to text, as JSON Lines::

    {"file": "people/0001.jpg", "caption": "a smiling woman with red hair"}

or CSV with a header row ``file,caption``. (Hugging Face's ``metadata.jsonl`` keys ``file_name`` and
``text`` are accepted too.)
"""

from __future__ import annotations

import csv
import io
import json
import os
import warnings
from pathlib import Path, PurePosixPath
from typing import Mapping, Sequence

import numpy as np
from torch.utils.data import Dataset

from ldm_lite.data.common import SPLITS, split_mask, stable_fraction, to_image_tensor
from ldm_lite.data.images import to_rgb

EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
TEST_FRACTION = 0.1  # share of a folder held out for split="test", chosen by a hash of the relative path
MIN_SPLIT_IMAGES = 10  # below this a held-out split still works, with a warning that its numbers are noise
VALIDATE_MODES = (True, "full", "header", False)
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
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".json", ".ndjson", ".csv", ".tsv"):
        raise ValueError(f"captions file {path} must end in .jsonl or .csv, got {path.suffix!r}")
    text = _read_utf8(path)
    entries: list[tuple[int, dict]] = []
    if suffix in (".jsonl", ".json", ".ndjson"):
        for lineno, line in enumerate(io.StringIO(text, newline=None), 1):  # \n, \r\n or \r, as open() reads
            if not line.strip():
                continue
            try:
                entries.append((lineno, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}, line {lineno}: not valid JSON ({exc.msg}); expected "
                                 '{"file": "relative/path.jpg", "caption": "..."}') from None
    else:
        reader = csv.DictReader(io.StringIO(text, newline=""), delimiter="\t" if suffix == ".tsv" else ",")
        entries = [(lineno, row) for lineno, row in enumerate(reader, 2)]
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


def _read_utf8(path: Path) -> str:
    """The text of ``path`` decoded as UTF-8 (a leading BOM, as Excel writes it, is dropped), or a ``ValueError``
    that names the file, the line and the byte that is not UTF-8, and says how to re-save the file."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ValueError(
            f"captions file {path} is not UTF-8: line {line}, byte {exc.start} is 0x{raw[exc.start]:02x} "
            f"({exc.reason}); it was probably saved as Latin-1 / Windows-1252. Re-save it as UTF-8 (in a spreadsheet: "
            f"'CSV UTF-8'; on the command line: iconv -f latin1 -t utf-8 {path.name} > utf8_{path.name})"
        ) from None


def load_image(path: str | os.PathLike, size: int) -> np.ndarray:
    """Open an image as uint8 RGB ``(size, size, 3)``: EXIF rotation applied, alpha composited on
    white, 16-bit greyscale scaled to 8 bits, shorter side resized to ``size`` (Lanczos, antialiased),
    centre crop. A file that cannot be decoded raises an ``OSError`` naming it."""
    try:
        return _load_image(path, size)
    except Exception as exc:
        raise OSError(f"could not decode image {path} ({type(exc).__name__}: {exc})") from exc


def _load_image(path, size: int) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        img = to_rgb(img)  # the package's one reader: EXIF orientation, alpha on white, 16-bit grey scaled
        w, h = img.size
        scale = size / min(w, h)
        new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
        img = img.resize((new_w, new_h), Image.Resampling.LANCZOS, reducing_gap=3.0)
        left, top = (new_w - size) // 2, (new_h - size) // 2
        img = img.crop((left, top, left + size, top + size))
        return np.asarray(img, dtype=np.uint8)


def image_problem(path: Path, size: int | None = None, full: bool = True) -> str | None:
    """Why ``path`` cannot be used (``"OSError: image file is truncated ..."``), or ``None`` if it decodes.

    ``full=True`` decodes the pixels (PIL's ``load()``), the only way to find a truncated JPEG; with ``size``
    a JPEG is decoded at the smallest DCT scale that still covers ``size`` (``draft``: several times faster,
    still reads every byte). ``full=False`` is PIL's cheap ``verify()`` (header and PNG checksums only).
    """
    from PIL import Image

    try:
        with Image.open(path) as img:
            if not full:
                img.verify()
                return None
            if size is not None and img.format == "JPEG":
                img.draft(img.mode, (size, size))
            img.load()
        return None
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError ... for bad files
        return f"{type(exc).__name__}: {exc}"


def split_files(files: Sequence[str], split: str, test_fraction: float = TEST_FRACTION,
                where: str = "the folder") -> list[str]:
    """The files of ``split`` (``"all"``, ``"train"`` or ``"test"``): a hash split of the relative paths
    (:func:`~ldm_lite.data.common.split_mask`), both sides non-empty for 2 or more files (module docstring)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS} ('all' = every image, 'train' / 'test' = a held-out split "
                         f"by a hash of the file path), got {split!r}")
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)) or not 0.0 <= test_fraction <= 1.0:
        raise ValueError(f"test_fraction must be a number in [0, 1] (the share of images held out for split='test'), "
                         f"got {test_fraction!r}; e.g. test_fraction=0.1")
    if split == "all":
        return list(files)
    n = len(files)
    if n < 2:
        raise ValueError(
            f"{where} has {n} image, which cannot be split into disjoint train and test sets; add images "
            f"(>= {MIN_SPLIT_IMAGES} for held-out numbers that mean something) or use split='all'"
        )
    if split == "test" and test_fraction == 0:
        raise ValueError("test_fraction=0 holds out no images, so split='test' would be empty; use test_fraction > 0")
    if split == "train" and test_fraction == 1:
        raise ValueError("test_fraction=1 holds out every image, so split='train' would be empty; use test_fraction < 1")
    test = split_mask(list(files), "test", test_fraction)
    if 0 < test_fraction < 1 and (not test.any() or test.all()):
        fractions = [stable_fraction(f) for f in files]
        if not test.any():  # the file closest to the test side goes there
            test[int(np.argmin(fractions))] = True
        else:
            test[int(np.argmax(fractions))] = False
    if n < MIN_SPLIT_IMAGES:
        warnings.warn(
            f"{where} has only {n} images: split='{split}' holds {int((test if split == 'test' else ~test).sum())} "
            f"of them ({int(test.sum())} held out for 'test', {int((~test).sum())} for 'train'); held-out numbers "
            f"from so few images are noise. Add images (>= {MIN_SPLIT_IMAGES}).",
            stacklevel=3,
        )
    keep = test if split == "test" else ~test
    return [f for f, k in zip(files, keep) if k]


class ImageFolderDataset(Dataset):
    """Images under ``root`` (recursive), resized and centre-cropped to ``size``, with optional captions.

    Args:
        root: the folder to scan.
        size: output side in pixels.
        captions: a captions file (``.jsonl`` or ``.csv``, see the module docstring), a dict
            ``{relative path: caption}``, or None.
        extensions: file endings to include (case-insensitive).
        labels: ``"folder"`` gives each image the class of its top-level sub-folder (ImageNet layout,
            ``ds.class_names`` sorted, from every sub-folder of ``root``, so train and test agree); None for
            no labels.
        validate: ``True`` / ``"full"`` (default): decode every file of the split once on construction and
            skip bad ones (one warning naming them); finds truncated files. ``"header"``: PIL's cheap
            ``verify()`` only (headers; misses truncation). ``False``: no check (huge folders you trust).
        split: ``"all"`` (default: every image), ``"train"`` or ``"test"``: a deterministic held-out split by a
            hash of the relative path (module docstring).
        test_fraction: the share of images in ``split="test"`` (on average), in [0, 1].

    ``ds[i]`` is ``dict(image=float32 (3, size, size) in [-1, 1], index=i, path=str, caption=str?,
    label=int?)``. ``ds.files`` (relative paths), ``ds.captions``, ``ds.labels`` and ``ds.skipped``
    (``{relative path: reason}`` of the files validation dropped) are public.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        size: int = 64,
        captions: str | os.PathLike | Mapping[str, str] | None = None,
        extensions: Sequence[str] = EXTENSIONS,
        labels: str | None = None,
        validate: bool | str = True,
        split: str = "all",
        test_fraction: float = TEST_FRACTION,
    ):
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be a positive int, got {size!r}")
        if labels not in (None, "folder"):
            raise ValueError(f"labels must be None or 'folder', got {labels!r}")
        if not any(validate is m or (isinstance(m, str) and validate == m) for m in VALIDATE_MODES):
            raise ValueError(f"validate must be True / 'full' (decode every file), 'header' (PIL verify(), fast, "
                             f"misses truncated files) or False (no check), got {validate!r}")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS} ('all' = every image, 'train' / 'test' = a held-out "
                             f"split by a hash of the file path), got {split!r}")
        self.root = Path(root).expanduser()
        self.size = size
        self.split, self.test_fraction = split, test_fraction
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
        all_files = files
        files = split_files(files, split, test_fraction, where=f"the image folder {self.root}")
        self.skipped: dict[str, str] = {}
        if validate:
            full = validate != "header"
            for f in files:
                problem = image_problem(self.root / f, size, full=full)
                if problem is not None:
                    self.skipped[f] = problem
            if self.skipped:
                bad = list(self.skipped)
                shown = "; ".join(f"{f} ({self.skipped[f]})" for f in bad[:5]) + ("; ..." if len(bad) > 5 else "")
                warnings.warn(
                    f"skipped {len(bad)} unreadable image file(s) of {len(files)} under {self.root}: "
                    f"{shown}. Delete or re-download them (ds.skipped lists them all)",
                    stacklevel=2,
                )
                files = [f for f in files if f not in self.skipped]
            if not files:
                raise ValueError(f"none of the {len(self.skipped)} image files under {self.root}"
                                 f"{'' if split == 'all' else f' (split={split!r})'} could be read: "
                                 f"{next(iter(self.skipped.items()))}")
        self.files = files
        self.validate = validate

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
            all_tops = [f.split("/")[0] if "/" in f else "" for f in all_files]
            if "" in all_tops:
                raise ValueError(f"labels='folder' needs every image inside a class sub-folder of {self.root}; "
                                 f"{all_files[all_tops.index('')]!r} is not")
            self.class_names = tuple(sorted(set(all_tops)))  # of the whole folder: train and test agree
            index = {name: i for i, name in enumerate(self.class_names)}
            self.labels = np.array([index[f.split("/")[0]] for f in files], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for a folder of {n} images")
        index = int(index) % n
        path = self.root / self.files[index]
        try:
            array = _load_image(path, self.size)
        except Exception as exc:
            checked = {"header": "it passed the header check (validate='header')",
                       False: "the folder was not validated (validate=False)"}.get(
                self.validate, "it decoded when the folder was indexed, so it changed since")
            raise OSError(f"could not decode {path} ({type(exc).__name__}: {exc}); {checked} -- the file is "
                          "probably truncated or corrupt: delete or re-download it") from exc
        sample = dict(image=to_image_tensor(array), index=index, path=str(path))
        if self.captions is not None:
            sample["caption"] = self.captions[index]
        if self.labels is not None:
            sample["label"] = int(self.labels[index])
        return sample

    def __repr__(self) -> str:
        extra = f", captions from {self.captions_source}" if self.captions is not None else ""
        split = f", split={self.split!r}" if self.split != "all" else ""
        return f"ImageFolderDataset({str(self.root)!r}, n={len(self)}, size={self.size}{split}{extra})"
