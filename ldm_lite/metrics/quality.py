"""Front doors: images or datasets in, labelled numbers out."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ldm_lite.data.augment import gaussian_blur, random_degrade
from ldm_lite.metrics.distances import (
    StreamingFeatureStats, fid_from_features, kid_from_features, precision_recall, set_metrics_with_intervals,
)
from ldm_lite.metrics.distances import feature_statistics, frechet_distance
from ldm_lite.metrics.features import FeatureExtractor, _image_of, compute_features, get_feature_extractor
from ldm_lite.progress import progress as tqdm

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


# ------------------------------------------------------------------------------------------------
# The report a reader can trust: n, interval, floor and ceiling beside every number
# ------------------------------------------------------------------------------------------------
def _is_features(x: Any) -> bool:
    return (torch.is_tensor(x) or isinstance(x, np.ndarray)) and np.ndim(x) == 2


def features_of(extractor: Any, images_or_features: Any, batch_size: int = 64, progress: bool = False) -> np.ndarray:
    """Features ``(N, d)`` of images (tensor, dataset or iterable of batches), or the array itself when
    it already is ``(N, d)`` features, or a :class:`StreamingFeatureStats`' kept subsample."""
    if isinstance(images_or_features, StreamingFeatureStats):
        return images_or_features.sample
    if _is_features(images_or_features):
        a = images_or_features
        return a.detach().cpu().double().numpy() if torch.is_tensor(a) else np.asarray(a, np.float64)
    ext = _resolve_extractor(extractor)
    return compute_features(ext, images_or_features, batch_size=batch_size, progress=progress).double().numpy()


def feature_distance(x: torch.Tensor, y: torch.Tensor, extractor: Any = "auto", batch_size: int = 64,
                     reduction: str = "none") -> torch.Tensor:
    """Paired perceptual distance: ``1 - cos(phi(x_i), phi(y_i))`` per image pair, in a feature space
    (chapter 07 compares super-resolved or inpainted images with their originals). 0 for identical
    images, up to 2. Unlike PSNR it does not punish a crisp edge one pixel off as hard as a wrong colour.

    x, y: ``(B, C, H, W)`` images in [-1, 1] of the same shape; ``extractor`` as in :func:`fid`
    (``M.domain_feature_extractor("openmoji")`` for emoji). ``reduction="mean"`` returns a scalar.
    """
    if not (torch.is_tensor(x) and torch.is_tensor(y)) or x.dim() != 4 or x.shape != y.shape:
        raise ValueError(
            "feature_distance compares image pairs: give two (B, C, H, W) tensors of the same shape; got "
            f"{tuple(getattr(x, 'shape', ()))} and {tuple(getattr(y, 'shape', ()))}"
        )
    if reduction not in ("none", "mean"):
        raise ValueError(f"reduction must be 'none' or 'mean'; got {reduction!r}")
    fx = torch.as_tensor(features_of(extractor, x, batch_size=batch_size))
    fy = torch.as_tensor(features_of(extractor, y, batch_size=batch_size))
    d = (1.0 - torch.nn.functional.cosine_similarity(fx, fy, dim=1)).float()
    return d.mean() if reduction == "mean" else d


def _device_of(module) -> torch.device:
    p = next(iter(module.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def stream_features(extractor: Any, batches, keep: int = 5000, seed: int = 0,
                    progress: bool = False) -> StreamingFeatureStats:
    """Embed an iterable of image batches (e.g. a generator that samples a model batch by batch) into
    running statistics: mean, covariance and a uniform subsample of ``keep`` rows. 50,000 samples cost
    O(d^2 + keep d) memory, never 50,000 images or feature rows."""
    ext = _resolve_extractor(extractor)
    stats = StreamingFeatureStats(keep=keep, seed=seed)
    if progress:
        batches = tqdm(batches, desc="streaming features", leave=False)
    with torch.no_grad():
        for x in batches:
            x = _image_of(x)  # tensors, or dict batches from a DataLoader over an ldm_lite dataset
            stats.update(ext(x.to(_device_of(ext))).cpu())
    return stats


def quality_report(samples: Any, reference: Any, train: Any = None, extractor: Any = "auto",
                   n_boot: int = 1000, ceiling_strength: float = 1.0, k: int = 3, seed: int = 0,
                   batch_size: int = 64, progress: bool = False) -> dict:
    """FID, KID and precision / recall of ``samples`` against held-out ``reference`` images, each with a
    bootstrap 95 % interval, and beside them what real images score:

    * ``floor``: real images the model could have copied -- ``train`` images, as many as there are
      samples -- against the same held-out reference. A model scoring *better* than the floor means the
      metric is broken (or too few samples to tell), not that the model beats real data.
    * ``ceiling``: the same train images degraded (:func:`ldm_lite.data.augment.random_degrade` at
      ``ceiling_strength``): what clearly worse images score.

    Floor and ceiling are for samples: sets unpaired with the reference. Reconstructions scored against
    their own originals are paired; read them against :func:`reconstruction_anchors` instead.

    ``samples``, ``reference`` and ``train`` are image tensors ``(N, C, H, W)`` in [-1, 1], datasets,
    ``(N, d)`` feature arrays already computed with ``extractor``, or (samples, reference) a
    :class:`StreamingFeatureStats`: FID then uses the moments of the whole stream, KID and precision /
    recall its kept uniform subsample. The floor and ceiling use as many training images as samples (all
    of them when the training set is smaller; their n is in the result).
    Returns ``dict(samples={fid, kid, precision, recall: dict(value, ci95)}, floor=..., ceiling=...,
    feature, is_substitute, n_samples, n_reference, n_boot)``.
    """
    ext = _resolve_extractor(extractor)
    ref = features_of(ext, reference, batch_size, progress)
    fake = features_of(ext, samples, batch_size, progress)
    scores = set_metrics_with_intervals(ref, fake, n_boot=n_boot, k=k, seed=seed)
    n_samples = len(fake)
    if isinstance(samples, StreamingFeatureStats) and samples.n > len(fake):
        # FID from the moments of the whole stream; its interval is the kept subsample's spread placed around
        # it (wider than the stream's own: conservative). KID and precision / recall use the subsample.
        # (not cut at 0: a lower end below 0 says the difference from the reference is not resolved)
        full = frechet_distance(samples.mean, samples.cov, *feature_statistics(ref))
        lo, hi = scores["fid"]["ci95"]
        scores["fid"] = dict(value=full, ci95=(full - (scores["fid"]["value"] - lo),
                                             full + (hi - scores["fid"]["value"])),
                             note=f"moments of all {samples.n}; interval and KID / P / R from {len(fake)} kept rows")
        n_samples = samples.n
    out = dict(feature=ext.name, is_substitute=ext.is_substitute, n_samples=n_samples, n_reference=len(ref),
               n_boot=n_boot, samples=scores)
    if train is not None:
        if _is_features(train):
            raise ValueError("train must be images (the ceiling degrades them), not features")
        real = _take(train, min(n_samples, len(train)) if n_samples > len(train) else n_samples, seed)
        out["floor"] = set_metrics_with_intervals(ref, features_of(ext, real, batch_size), n_boot=n_boot, k=k, seed=seed)
        worse = random_degrade(real, ceiling_strength, torch.Generator().manual_seed(seed))
        out["ceiling"] = set_metrics_with_intervals(ref, features_of(ext, worse, batch_size), n_boot=n_boot, k=k,
                                                    seed=seed)
        out["ceiling_strength"] = ceiling_strength
    return out


def _take(images: Any, n: int, seed: int) -> torch.Tensor:
    """``n`` images drawn without replacement (seeded) from a tensor or dataset, as one tensor."""
    size = len(images)
    if size < n:
        raise ValueError(f"train has {size} images but the floor needs {n} (as many as the samples); "
                         "evaluate fewer samples or pass more training images")
    idx = np.random.default_rng(seed).choice(size, n, replace=False)
    if torch.is_tensor(images):
        return images[torch.as_tensor(idx)]
    return torch.stack([_image_of(images[int(i)]) for i in idx])


def format_report(report: dict, kid_scale: float = 1000.0) -> str:
    """The report as a small table: one row per image set, each metric as ``value [lo, hi]``."""
    def cell(m, scale=1.0, fmt=".3g"):
        lo, hi = m["ci95"]
        return f"{m['value'] * scale:{fmt}} [{lo * scale:{fmt}}, {hi * scale:{fmt}}]"

    rows = [("samples", report["samples"])]
    if "floor" in report:
        rows += [("floor: train real", report["floor"]), ("ceiling: degraded real", report["ceiling"])]
    lines = [f"features: {report['feature']}",
             f"reference: {report['n_reference']} held-out real images; n = {report['n_samples']} per row; "
             f"bootstrap 95% intervals ({report['n_boot']} resamples)",
             f"{'':<24}{'FID':<24}{f'KID x{kid_scale:g}':<24}{'precision':<22}{'recall':<22}"]
    for name, m in rows:
        lines.append(f"{name:<24}{cell(m['fid']):<24}{cell(m['kid'], kid_scale):<24}"
                     f"{cell(m['precision'], fmt='.2f'):<22}{cell(m['recall'], fmt='.2f'):<22}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# Paired anchors: what a reconstruction score should be read against
# ------------------------------------------------------------------------------------------------
RECONSTRUCTION_DEGRADATIONS = (("noise", 0.02), ("noise", 0.05), ("noise", 0.1),
                               ("blur", 0.5), ("blur", 1.0), ("blur", 2.0),
                               ("jpeg", 90), ("jpeg", 50), ("jpeg", 20))
"""``(kind, amount)`` of the default anchors, mildest first within each kind: Gaussian noise of std ``amount``
on the [0, 1] scale, Gaussian blur of ``amount`` pixels, JPEG at quality ``amount``."""


def _jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    from io import BytesIO

    from PIL import Image

    u8 = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    out = []
    for img in u8:
        buf = BytesIO()
        Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(buf, format="JPEG", quality=int(quality))
        buf.seek(0)
        out.append(np.asarray(Image.open(buf)).reshape(img.shape))
    return (torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float() / 127.5 - 1).to(x.device)


def degrade_images(images: torch.Tensor, kind: str, amount: float, seed: int = 0) -> torch.Tensor:
    """One fixed degradation of every image ``(B, C, H, W)`` in [-1, 1] (C = 1 or 3 for JPEG):

    * ``"noise"``: add Gaussian noise of std ``amount`` on the [0, 1] scale (seeded by ``seed``), clamped;
    * ``"blur"``: Gaussian blur of std ``amount`` pixels;
    * ``"jpeg"``: save as JPEG at quality ``amount`` (1-95) and read back (8-bit rounding included).
    """
    if not torch.is_tensor(images) or images.dim() != 4:
        raise ValueError(f"degrade_images needs a (B, C, H, W) image tensor; got {type(images).__name__} "
                         f"{tuple(getattr(images, 'shape', ()))}")
    x = images.detach().float()
    if kind == "noise":
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed)).to(x.device)
        return (x + 2.0 * float(amount) * noise).clamp(-1, 1)
    if kind == "blur":
        return gaussian_blur(x, torch.full((len(x),), float(amount)))
    if kind == "jpeg":
        if not 1 <= amount <= 95:
            raise ValueError(f"JPEG quality must be in 1..95; got {amount}")
        return _jpeg(x, int(amount))
    raise ValueError(f"kind must be 'noise', 'blur' or 'jpeg'; got {kind!r}")


def _anchor_name(kind: str, amount: float) -> str:
    return {"noise": f"noise std {amount:g}", "blur": f"blur {amount:g} px", "jpeg": f"JPEG q{amount:g}"}[kind]


def reconstruction_anchors(originals: Any, extractor: Any = "auto", degradations=RECONSTRUCTION_DEGRADATIONS,
                           reference: Any = None, n_boot: int = 1000, metrics: Any = ("fid", "kid"), k: int = 3,
                           seed: int = 0, level: float = 0.95, batch_size: int = 64, progress: bool = False) -> dict:
    """What a paired reconstruction score (rFID, rKID) should be read against.

    A reconstruction score compares the reconstructions with *their own* originals:
    ``set_metrics_with_intervals(f_orig, f_rec, paired=True)``. Its anchors must be paired the same way:

    * ``originals (self)``: the originals against themselves -- 0 by construction (FID exactly, KID by the
      paired U-statistic), a sanity anchor: a perfect reconstruction;
    * one anchor per ``(kind, amount)`` of ``degradations`` (:func:`degrade_images`; default
      :data:`RECONSTRUCTION_DEGRADATIONS`): the originals degraded, against the originals, so a reader sees
      where "visibly noisy", "slightly blurred" or "JPEG at quality 50" would land. Within a kind the anchors
      grow with the amount.

    Which to use when:

    * *How faithful are the reconstructions?* (the autoencoder question): read the paired score against
      these anchors. Do not read it against a train-vs-held-out "floor": that compares *other* images, an
      unpaired quantity that includes the difference between two sets of emoji -- a visibly noisy
      reconstruction can sit far below it, and "below the floor" then means nothing.
    * *Do the reconstructions look like real images of the domain?* (a sample-quality question): score them
      *unpaired* against a disjoint reference split -- images that were not reconstructed,
      ``set_metrics_with_intervals(f_reference, f_rec)`` -- and read that against the originals scored the
      same way, which ``reference=`` (images or features of that split) adds as ``"reference"``: the floor
      for that reading.

    Returns ``dict(anchors={name: dict(kind, amount, fid=dict(value, ci95), kid=...)}, reference=... (if
    given), feature, is_substitute, n, n_boot)``; intervals as in :func:`set_metrics_with_intervals` (paired).
    """
    if not torch.is_tensor(originals) or originals.dim() != 4:
        raise ValueError("originals must be an image tensor (B, C, H, W) in [-1, 1]: the anchors degrade them")
    ext = _resolve_extractor(extractor)
    f0 = features_of(ext, originals, batch_size, progress)

    def paired_scores(f):
        return set_metrics_with_intervals(f0, f, n_boot=n_boot, k=k, seed=seed, level=level, metrics=metrics,
                                          paired=True)

    anchors = {"originals (self)": dict(kind="self", amount=0.0, **_scores_only(paired_scores(f0)))}
    for i, (kind, amount) in enumerate(degradations):
        worse = degrade_images(originals, kind, amount, seed=seed + i)
        anchors[_anchor_name(kind, amount)] = dict(kind=kind, amount=amount,
                                                   **_scores_only(paired_scores(features_of(ext, worse, batch_size))))
    out = dict(anchors=anchors, feature=ext.name, is_substitute=ext.is_substitute, n=len(f0), n_boot=n_boot)
    if reference is not None:
        f_ref = features_of(ext, reference, batch_size, progress)
        out["reference"] = dict(n_reference=len(f_ref), **_scores_only(set_metrics_with_intervals(
            f_ref, f0, n_boot=n_boot, k=k, seed=seed, level=level, metrics=metrics)))
    return out


def _scores_only(result: dict) -> dict:
    return {key: v for key, v in result.items() if isinstance(v, dict)}
