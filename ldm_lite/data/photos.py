"""Texture-rich photo crops from the sample images bundled with scikit-image (no download needed).

Emoji and Fashion-MNIST are flat; an autoencoder that only ever sees flat colour learns nothing
about fur, gravel or star fields. These crops are the course's stand-in for natural images when
measuring what a first stage keeps and loses (App. G of the paper shows the same comparison on
ImageNet). Every crop is a pure function of ``(seed, index)``.

Only images that ship inside the scikit-image wheel are used (others need the optional ``pooch``
downloader) and whose docstrings state a permissive licence (public domain, CC0, or no known
copyright restrictions; see ``data/README.md``); gray ones are repeated to RGB.
"""

from __future__ import annotations

import numpy as np

from ldm_lite.data.common import ArrayImageDataset

# skimage.data function -> caption stem. All load offline from the scikit-image wheel (0.22-0.26),
# and all are public domain, CC0 or "no known copyright restrictions" per their docstrings. (``moon``,
# whose licence is not stated, and ``stereo_motorcycle``, from the Middlebury benchmark, are left out.)
PHOTOS = {
    "astronaut": "astronaut",  # NASA, public domain
    "camera": "cameraman",  # CC0, Lav Varshney
    "chelsea": "cat",  # CC0, Stefan van der Walt
    "coffee": "coffee cup",  # CC0, Rachel Michetti
    "rocket": "rocket",  # SpaceX, public domain
    "hubble_deep_field": "galaxies",  # NASA, public domain
    "immunohistochemistry": "stained tissue",  # no known copyright restrictions
    "retina": "retina",  # CC0
    "brick": "brick wall",  # CC0 Textures
    "grass": "grass",  # CC0 Textures
    "gravel": "gravel",  # CC0 Textures
    "coins": "coins",  # Brooklyn Museum, no known copyright restrictions
}
_MIN_STD = 6.0  # reject near-constant crops (black borders of the retina and Hubble images)


def load_photo(name: str) -> np.ndarray:
    """One of :data:`PHOTOS` as uint8 RGB ``(H, W, 3)``."""
    if name not in PHOTOS:
        raise ValueError(f"unknown photo {name!r}; choose from {sorted(PHOTOS)}")
    import skimage.data

    img = getattr(skimage.data, name)()
    img = np.asarray(img)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    return np.ascontiguousarray(img[:, :, :3].astype(np.uint8))


def load_photos(names: list[str] | None = None) -> dict[str, np.ndarray]:
    """``{name: uint8 RGB (H, W, 3)}`` for ``names``, or for every :data:`PHOTOS` entry that loads on
    this installation (all of them on scikit-image 0.22-0.26; a future version may move one behind
    its downloader, and it is then left out rather than failing)."""
    if names is not None:
        return {name: load_photo(name) for name in names}
    loaded = {}
    for name in PHOTOS:
        try:
            loaded[name] = load_photo(name)
        except Exception:
            pass
    if not loaded:
        raise FileNotFoundError("no scikit-image sample photo could be loaded; `pip install scikit-image`")
    return loaded


def load_photo_crops(
    size: int = 64,
    n: int = 1024,
    seed: int = 0,
    photos: list[str] | None = None,
    max_fraction: float = 0.5,
) -> ArrayImageDataset:
    """``n`` random square crops of the scikit-image photographs, resized to ``size``.

    Crop ``i`` picks a photo (cycling through them, so each appears ``n / len(photos)`` times), a side
    between ``size`` and ``max_fraction`` of the photo's shorter side (so scales vary), a position and
    a horizontal flip, all from ``np.random.default_rng([seed, i])``; crops that are nearly constant
    (std < 6 grey levels) are redrawn. The crop is resized with PIL's Lanczos filter (antialiased).

    Returns:
        ``ds.images`` uint8 ``(n, size, size, 3)``, ``ds.captions`` like ``"astronaut crop"``,
        ``ds.labels`` the photo index into ``ds.class_names``.
    """
    from PIL import Image

    if not isinstance(size, int) or not 8 <= size <= 512:
        raise ValueError(f"size must be an int from 8 to 512 pixels, got {size!r}")
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if not 0.0 < max_fraction <= 1.0:
        raise ValueError(f"max_fraction must be in (0, 1], got {max_fraction}")
    loaded = load_photos(photos)
    if not loaded:
        raise ValueError(f"photos must name at least one of {sorted(PHOTOS)}, got {photos!r}")
    names, sources = list(loaded), list(loaded.values())
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    labels = np.empty(n, dtype=np.int64)
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        k = i % len(sources)
        src = sources[k]
        h, w = src.shape[:2]
        lo = min(size, h, w)  # smallest crop: the output size (or the whole photo if it is smaller)
        hi = max(lo, int(min(h, w) * max_fraction))
        for _attempt in range(20):
            side = int(rng.integers(lo, hi + 1))
            top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
            crop = src[top : top + side, left : left + side]
            if crop.std() >= _MIN_STD:
                break
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        pil = Image.fromarray(np.ascontiguousarray(crop))
        images[i] = np.asarray(pil.resize((size, size), Image.Resampling.LANCZOS))
        labels[i] = k
    return ArrayImageDataset(
        images,
        captions=[f"{PHOTOS[names[k]]} crop" for k in labels],
        labels=labels,
        class_names=[PHOTOS[name] for name in names],
        keys=[f"{seed}-{i}" for i in range(n)],
        info=dict(name="scikit-image photo crops", source="skimage.data"),
    )
