"""Front doors: images or datasets in, labelled numbers out."""

from __future__ import annotations

from typing import Any

import torch

from ldm_lite.metrics.distances import fid_from_features, kid_from_features, precision_recall
from ldm_lite.metrics.features import FeatureExtractor, compute_features, get_feature_extractor

# ------------------------------------------------------------------------------------------------
# Front doors: images or datasets in, labelled numbers out
# ------------------------------------------------------------------------------------------------
_EXTRACTOR_CACHE: dict[str, FeatureExtractor] = {}


def _resolve_extractor(extractor: Any) -> FeatureExtractor:
    if isinstance(extractor, FeatureExtractor):
        return extractor
    if isinstance(extractor, str):
        if extractor == "classifier":
            raise ValueError("extractor='classifier' needs the classifier itself: pass extractor=<your model>")
        if extractor not in _EXTRACTOR_CACHE:
            _EXTRACTOR_CACHE[extractor] = get_feature_extractor(extractor)
        return _EXTRACTOR_CACHE[extractor]
    if callable(extractor) or hasattr(extractor, "features"):
        return get_feature_extractor("classifier", classifier=extractor)
    raise TypeError(
        f"extractor must be a kind string, a FeatureExtractor or a classifier; got {type(extractor).__name__}"
    )


def _features_pair(real: Any, fake: Any, extractor: Any, batch_size: int, limit: int | None,
                   progress: bool) -> tuple[FeatureExtractor, torch.Tensor, torch.Tensor]:
    ext = _resolve_extractor(extractor)
    fr = compute_features(ext, real, batch_size=batch_size, limit=limit, progress=progress)
    ff = compute_features(ext, fake, batch_size=batch_size, limit=limit, progress=progress)
    return ext, fr, ff


def _label(ext: FeatureExtractor, n_real: int, n_fake: int) -> dict:
    return dict(feature=ext.name, is_substitute=ext.is_substitute, n_real=n_real, n_fake=n_fake)


def fid(real: Any, fake: Any, extractor: Any = "auto", batch_size: int = 64, limit: int | None = None,
        progress: bool = False) -> dict:
    """FID between real and generated images: ``dict(value, feature, is_substitute, n_real, n_fake)``.

    ``real``/``fake``: image tensors ``(N, C, H, W)`` in [-1, 1] or datasets of dicts with
    ``"image"``. ``extractor``: a kind (``"auto"``, ``"inception"``, ``"random-vgg"``), a
    :class:`FeatureExtractor`, or a trained classifier. Print ``feature`` next to ``value``
    (:func:`format_metric` does): values on substitute features are not published-FID values.
    """
    ext, fr, ff = _features_pair(real, fake, extractor, batch_size, limit, progress)
    return dict(value=fid_from_features(fr, ff), **_label(ext, len(fr), len(ff)))


def kid(real: Any, fake: Any, extractor: Any = "auto", batch_size: int = 64, num_subsets: int = 100,
        subset_size: int = 1000, seed: int = 0, limit: int | None = None, progress: bool = False) -> dict:
    """KID between real and generated images: ``dict(value, std, feature, is_substitute, n_real, n_fake)``.

    ``value`` is the mean unbiased MMD^2 over subsets, ``std`` its spread (see :func:`kid_from_features`).
    Inputs and ``extractor`` as in :func:`fid`.
    """
    ext, fr, ff = _features_pair(real, fake, extractor, batch_size, limit, progress)
    mean, std = kid_from_features(fr, ff, num_subsets=num_subsets, subset_size=subset_size, seed=seed)
    return dict(value=mean, std=std, **_label(ext, len(fr), len(ff)))


def sample_quality(real: Any, fake: Any, extractor: Any = "auto", batch_size: int = 64, k: int = 3,
                   num_subsets: int = 100, subset_size: int = 1000, seed: int = 0, limit: int | None = None,
                   progress: bool = False) -> dict:
    """FID, KID and precision/recall from one pass of the feature network.

    Returns ``dict(fid, kid, kid_std, precision, recall, feature, is_substitute, n_real, n_fake)``.
    """
    ext, fr, ff = _features_pair(real, fake, extractor, batch_size, limit, progress)
    kid_mean, kid_std = kid_from_features(fr, ff, num_subsets=num_subsets, subset_size=subset_size, seed=seed)
    p, r = precision_recall(fr, ff, k=k)
    return dict(fid=fid_from_features(fr, ff), kid=kid_mean, kid_std=kid_std, precision=p, recall=r,
                **_label(ext, len(fr), len(ff)))


def format_metric(name: str, result: dict) -> str:
    """One printable line with the number *and* the features it was computed on.

    ``format_metric("FID", fid(real, fake))`` -> ``"FID = 12.34  [n_real=500, n_fake=500; SUBSTITUTE: ...]"``.
    """
    value = f"{result['value']:.4g}"
    if "std" in result:
        value += f" ± {result['std']:.2g}"
    return f"{name} = {value}  [n_real={result['n_real']}, n_fake={result['n_fake']}; {result['feature']}]"
