"""Reading image and mask files the way a person sees them -- one reader for the whole package.

:func:`read_image` is what the dataset loader (:class:`~ldm_lite.data.ImageFolderDataset`) and the command line
(``ldm-lite upscale`` / ``inpaint``) use, so a file gives the same pixels everywhere:

* **EXIF orientation** is applied (a phone stores a portrait photo landscape plus an "rotate to display" tag);
  the pixels come out upright, as every image viewer shows them;
* **transparency** is composited on white (OpenMoji's PNGs are transparent outside the drawing; PIL's plain
  ``convert("RGB")`` would drop the alpha and show the hidden colour, usually black);
* **16-bit greyscale** (PIL modes ``I;16*``, or ``I`` as older PIL opens 16-bit PNGs) is scaled from 0..65535 to
  0..255 (``convert`` clips instead, so such images come out almost white).

:func:`read_mask` reads an inpainting mask with the same orientation and 16-bit handling. A mask has two ways to
mark the hole:

* **transparency** -- if any pixel of the mask is not fully opaque, the alpha channel is the mask: transparent
  pixels are the hole, opaque ones are kept, whatever their colour. This is what an image editor's "erase to
  transparent" produces (and the convention of OpenAI's image-edit masks);
* **brightness** -- a fully opaque mask is read by the brightest of its R, G, B channels (grey masks: their grey
  level), so a hole painted in any bright colour on black counts as white, not as its darker luminance
  (pure red has a luminance of 76/255 but a brightness of 255/255).
"""

from __future__ import annotations

import os

import numpy as np

__all__ = ["oriented", "read_image", "read_mask", "to_rgb"]

SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def sixteen_bit_to_l(img):
    """A 16-bit greyscale image (``I;16*``, or ``I`` as older PIL opens 16-bit PNGs) -> 8-bit ``L``, scaling
    0..65535 to 0..255. PIL's ``convert("L")`` / ``convert("RGB")`` clip instead, so such images come out white."""
    from PIL import Image

    a = np.asarray(img).astype(np.float64)
    a = np.clip(a, 0.0, 65535.0) / 257.0
    return Image.fromarray(np.round(a).astype(np.uint8))


def _has_alpha(img) -> bool:
    return img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)


def oriented(img):
    """``img`` with its EXIF orientation applied and 16-bit grey scaled to 8 bits (other modes unchanged)."""
    from PIL import ImageOps

    img = ImageOps.exif_transpose(img)
    if img.mode in SIXTEEN_BIT_MODES:
        img = sixteen_bit_to_l(img)
    return img


def to_rgb(img):
    """An open PIL image -> an upright RGB PIL image: EXIF orientation applied, 16-bit grey scaled to 8 bits,
    transparent pixels composited on white."""
    from PIL import Image

    img = oriented(img)
    if _has_alpha(img):
        rgba = img.convert("RGBA")
        img = Image.new("RGB", rgba.size, (255, 255, 255))
        img.paste(rgba, mask=rgba.getchannel("A"))
        return img
    return img.convert("RGB")


def read_image(path: str | os.PathLike) -> np.ndarray:
    """An image file -> uint8 ``(H, W, 3)`` RGB at its own size, as a viewer shows it (module docstring:
    EXIF orientation, transparency on white, 16-bit grey scaled). PIL's errors (``OSError`` for a missing or
    undecodable file, ...) propagate."""
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(to_rgb(img), dtype=np.uint8)


def read_mask(path: str | os.PathLike) -> tuple[np.ndarray, str]:
    """A mask file -> ``(values, kind)``: float32 ``(H, W)`` in [0, 1], upright (EXIF orientation applied).

    ``kind == "alpha"`` when some pixel is not fully opaque: ``values`` is the opacity, so **0 (transparent) is
    the hole** and 1 is kept. ``kind == "brightness"`` for an opaque mask: ``values`` is the brightest of R, G, B
    (the grey level of a grey mask; 16-bit grey scaled), 1 = white; whether white is the hole or the part to
    keep is the caller's convention. Values strictly between 0 and 1 are soft (anti-aliased) edges.
    """
    from PIL import Image

    with Image.open(path) as img:
        img = oriented(img)
        if _has_alpha(img):
            alpha = np.asarray(img.convert("RGBA").getchannel("A"), dtype=np.float32) / 255.0
            if (alpha < 1).any():
                return alpha, "alpha"
        rgb = np.asarray(img.convert("RGB"), dtype=np.float32)
        return rgb.max(axis=-1) / 255.0, "brightness"
