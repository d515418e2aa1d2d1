"""Held-out validation of the course's sample-quality feature networks (chapter 08, section 2.5): models and
degradations that played no part in choosing them.

* **OpenMoji** (``openmoji-simclr``, the chosen network, and ``eval_openmoji_simclr_augmented``, the twin it was
  chosen over, for contrast): the shipped ``ldm_openmoji64`` sampled with DDIM at 5, 10 and 20 steps from the
  starting noise of the stored 50-step set ``data/reference_samples/ldm_openmoji64_ddim50.npz`` (seed 0, batches
  of 16, eta 0: row i of every set starts from the same noise, so the sets are paired), against the 182 held-out
  emoji, with the floor (256 training emoji, the draw ``M.quality_report`` makes).
* **Fashion-MNIST** (``fashion-classifier`` features at the 32 px chapter 02 scores at): 500 held-out test images
  degraded in four ways the chapter never used to choose or validate the network -- JPEG, lower contrast,
  translation, cutout -- at three strengths each; the class-conditional ``ldm_fashion_class32`` sampled with DDIM
  at 5, 10 and 50 steps from shared starting noise (guidance 1, 50 images of each class); and its first stage's
  reconstructions of the 500 images. Reference: 1,000 other test images. The 500 clean images are the floor.

Every set gets FID and KID with 95 % bootstrap intervals; each planned comparison is a paired difference
(``ldm_lite.metrics.paired_difference``; ``paired=True`` where row i of both sets comes from the same image or
starting noise), all comparisons of one family at the Bonferroni level.

Run from the repository root (1 CPU thread; 28 minutes on a busy 2-core machine)::

    OMP_NUM_THREADS=1 PYTHONPATH=. python data/measurements/measure_feature_validation.py

Writes ``data/measurements/feature_validation.json`` next to this file.
"""

from __future__ import annotations

import datetime
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ldm_lite import metrics as M
from ldm_lite.data import load_fashion_mnist, load_openmoji
from ldm_lite.data.common import to_uint8
from ldm_lite.pretrained import load_autoencoder, load_ldm, load_manifest

REPO = Path(__file__).resolve().parents[2]
OUT = Path(__file__).with_name("feature_validation.json")
COMMAND = "OMP_NUM_THREADS=1 PYTHONPATH=. python data/measurements/measure_feature_validation.py"
N_BOOT = 1000
EMOJI_STEPS = (20, 10, 5)            # the stored set has 50
FASHION_STEPS = (50, 10, 5)
FASHION_REF, FASHION_N, FASHION_BATCH = 1000, 500, 50
FASHION_DEGRADATIONS = {             # kind: strengths, mildest first
    "jpeg": (75, 30, 10),            # quality
    "contrast": (0.75, 0.5, 0.25),   # contrast kept (1 = unchanged)
    "translate": (1, 2, 4),          # pixels right and down, border replicated
    "cutout": (4, 8, 12),            # side of a mid-grey square, pixels
}


# ------------------------------------------------------------------ degradations the choice never used
def contrast(x: torch.Tensor, keep: float) -> torch.Tensor:
    m = x.mean(dim=(1, 2, 3), keepdim=True)
    return (m + keep * (x - m)).clamp(-1, 1)


def translate(x: torch.Tensor, px: int) -> torch.Tensor:
    H, W = x.shape[-2:]
    return F.pad(x, (px, 0, px, 0), mode="replicate")[..., :H, :W]


def cutout(x: torch.Tensor, side: int, seed: int = 0) -> torch.Tensor:
    """A mid-grey square of ``side`` pixels per image, at a seeded position in the middle half of the image."""
    g = torch.Generator().manual_seed(seed)
    H, W = x.shape[-2:]
    y = x.clone()
    lo_h, hi_h, lo_w, hi_w = (H - side) // 4, 3 * (H - side) // 4, (W - side) // 4, 3 * (W - side) // 4
    for i in range(len(y)):
        t = int(torch.randint(lo_h, hi_h + 1, (1,), generator=g))
        l = int(torch.randint(lo_w, hi_w + 1, (1,), generator=g))
        y[i, :, t : t + side, l : l + side] = 0.0
    return y


def degrade(x: torch.Tensor, kind: str, amount) -> torch.Tensor:
    if kind == "jpeg":
        return M.degrade_images(x, "jpeg", amount)
    if kind == "contrast":
        return contrast(x, amount)
    if kind == "translate":
        return translate(x, int(amount))
    if kind == "cutout":
        return cutout(x, int(amount))
    raise ValueError(kind)


# ------------------------------------------------------------------ scoring
def quantise(x: torch.Tensor) -> torch.Tensor:
    """Through uint8 and back, as a stored sample set is (section 3.3: the file format moves the score)."""
    return torch.from_numpy(to_uint8(x)).permute(0, 3, 1, 2).float() / 127.5 - 1


def interval(r: dict) -> dict:
    return dict(value=float(r["value"]), ci95=[float(v) for v in r["ci95"]])


def score(ref: np.ndarray, f: np.ndarray) -> dict:
    r = M.set_metrics_with_intervals(ref, f, n_boot=N_BOOT, metrics=("fid", "kid"))
    return dict(n=len(f), fid=interval(r["fid"]), kid=interval(r["kid"]),
                fid_singular=bool(len(f) <= f.shape[1]))


def compare(ref, feats: dict, pairs, comparisons: int) -> list[dict]:
    out = []
    for a, b, paired in pairs:
        d = M.paired_difference(("fid", "kid"), ref, feats[a], feats[b], n_boot=N_BOOT, paired=paired,
                                comparisons=comparisons)
        out.append(dict(a=a, b=b, paired=paired, level=float(d["kid"]["level"]),
                        **{m: dict(value=float(d[m]["value"]), ci95=[float(v) for v in d[m]["ci95"]],
                                   reading=d[m]["reading"]) for m in ("fid", "kid")}))
        print(f"  {a} - {b}: KID x1000 {1e3 * d['kid']['value']:.2f} [{1e3 * d['kid']['ci95'][0]:.2f}, "
              f"{1e3 * d['kid']['ci95'][1]:.2f}], FID {d['fid']['value']:.2f} [{d['fid']['ci95'][0]:.2f}, "
              f"{d['fid']['ci95'][1]:.2f}]", flush=True)
    return out


def sample_set(model, n: int, batch: int, steps: int, seed: int, labels=None) -> torch.Tensor:
    """As ``ldm-lite sample`` draws: one generator across batches; with DDIM eta 0 it draws only the starting
    noise, so batch i starts from the same noise whatever the number of steps."""
    gen = torch.Generator().manual_seed(seed)
    chunks = []
    for i in range(0, n, batch):
        cond = None if labels is None else labels[i : i + batch]
        with torch.no_grad():
            chunks.append(model.sample(min(batch, n - i), cond=cond, sampler="ddim", steps=steps, eta=0.0,
                                       guidance_scale=1.0, generator=gen, progress=False).cpu())
    return quantise(torch.cat(chunks))


def to_tensor(u8: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(u8)).permute(0, 3, 1, 2).float() / 127.5 - 1


# ------------------------------------------------------------------ the two domains
def openmoji() -> dict:
    stored_path = REPO / "data" / "reference_samples" / "ldm_openmoji64_ddim50.npz"
    stored_man = json.loads(stored_path.with_suffix(".json").read_text())
    stored = to_tensor(np.load(stored_path)["images"])
    n, batch, seed = stored_man["n"], stored_man["batch_size"], stored_man["seed"]
    model = load_ldm("ldm_openmoji64")
    t0 = time.time()
    check = sample_set(model, batch, batch, stored_man["steps"], seed)  # the pairing: batch 0 redrawn at 50 steps
    pairing_err = float((check - stored[:batch]).abs().max())
    assert pairing_err < 2 / 127.5 + 1e-4, f"the redrawn first batch differs from the stored set by {pairing_err}"
    images = {f"DDIM {stored_man['steps']} steps (stored set)": stored}
    times = {}
    for steps in EMOJI_STEPS:
        t = time.time()
        images[f"DDIM {steps} steps"] = sample_set(model, n, batch, steps, seed)
        times[steps] = round(time.time() - t, 1)
        print(f"openmoji: DDIM {steps} steps, {n} images in {times[steps]:.0f} s", flush=True)
    held = to_tensor(load_openmoji(64, "test", progress=False).images)
    train = to_tensor(load_openmoji(64, "train", progress=False).images)
    floor = train[torch.as_tensor(np.random.default_rng(0).choice(len(train), n, replace=False))]
    names = list(images)
    pairs = [("floor (real train)", names[0], False)] + [(names[i], names[i + 1], True) for i in range(len(names) - 1)]
    nets = {"openmoji-simclr (chosen)": M.get_feature_extractor("openmoji", announce=False),
            "openmoji-simclr-augmented (the twin)": M.get_feature_extractor(
                "classifier", classifier=M.load_evaluator("eval_openmoji_simclr_augmented"), announce=False)}
    out = {}
    for net, ext in nets.items():
        ref = M.features_of(ext, held)
        feats = {"floor (real train)": M.features_of(ext, floor), **{k: M.features_of(ext, v) for k, v in images.items()}}
        print(f"openmoji, {net}:", flush=True)
        out[net] = dict(sets={k: score(ref, f) for k, f in feats.items()},
                        comparisons=compare(ref, feats, pairs, comparisons=len(pairs)))
    return dict(
        what="the shipped ldm_openmoji64 at fewer DDIM steps, from the stored 50-step set's starting noise",
        reference=f"{len(held)} held-out OpenMoji emoji (64 px)", n=n,
        floor=f"{n} training emoji, np.random.default_rng(0).choice (the draw M.quality_report makes)",
        sampling=dict(model="ldm_openmoji64", model_sha256=load_manifest("ldm_openmoji64").get("weights_sha256"),
                      sampler="ddim", eta=0.0, guidance=1.0, seed=seed, batch_size=batch, steps=list(EMOJI_STEPS),
                      stored_set="data/reference_samples/ldm_openmoji64_ddim50.npz", stored_steps=stored_man["steps"],
                      pairing_check_max_abs_diff=pairing_err, seconds=times,
                      pairing="row i of every set starts from the same noise (paired=True between step counts)",
                      quantised="every set through uint8, as the stored set"),
        comparisons_note=f"{len(pairs)} comparisons per network, each at the Bonferroni level",
        networks=out, seconds=round(time.time() - t0, 1))


def fashion() -> dict:
    t0 = time.time()
    test = load_fashion_mnist("test", size=32)
    x_all = to_tensor(test.images[: FASHION_REF + FASHION_N])
    ref_x, clean = x_all[:FASHION_REF], x_all[FASHION_REF:]
    ext = M.get_feature_extractor("fashion", announce=False)
    ref = M.features_of(ext, ref_x)
    images = {"clean (floor)": clean}
    for kind, amounts in FASHION_DEGRADATIONS.items():
        for a in amounts:
            images[f"{kind} {a:g}"] = degrade(clean, kind, a)
    ae = load_autoencoder("ae_kl_f4_shapes_fashion")
    with torch.no_grad():
        rec = torch.cat([ae(clean[i : i + 100].expand(-1, 3, -1, -1))[0] for i in range(0, len(clean), 100)])
    models = {"first-stage reconstructions": quantise(rec.clamp(-1, 1).mean(1, keepdim=True))}
    model = load_ldm("ldm_fashion_class32")
    labels = torch.arange(10).repeat(FASHION_N // 10)   # every batch of 50 holds 5 of each class
    times = {}
    for steps in FASHION_STEPS:
        t = time.time()
        models[f"DDIM {steps} steps"] = sample_set(model, FASHION_N, FASHION_BATCH, steps, 0, labels).mean(1, keepdim=True)
        times[steps] = round(time.time() - t, 1)
        print(f"fashion: DDIM {steps} steps, {FASHION_N} images in {times[steps]:.0f} s", flush=True)
    feats = {k: M.features_of(ext, v) for k, v in {**images, **models}.items()}
    sets = {k: score(ref, f) for k, f in feats.items()}
    deg_pairs = []
    for kind, amounts in FASHION_DEGRADATIONS.items():
        chain = ["clean (floor)"] + [f"{kind} {a:g}" for a in amounts]
        deg_pairs += [(chain[i], chain[i + 1], True) for i in range(len(chain) - 1)]
    s = [f"DDIM {k} steps" for k in FASHION_STEPS]
    model_pairs = [("clean (floor)", "first-stage reconstructions", True), ("first-stage reconstructions", s[0], False),
                   (s[0], s[1], True), (s[1], s[2], True)]
    print("fashion, degradations:", flush=True)
    deg = compare(ref, feats, deg_pairs, comparisons=len(deg_pairs))
    print("fashion, models:", flush=True)
    mod = compare(ref, feats, model_pairs, comparisons=len(model_pairs))
    return dict(
        what="held-out degradations and models for the Fashion-MNIST classifier's features",
        feature=ext.name, reference=f"Fashion-MNIST test images 0-{FASHION_REF - 1} (32 px)",
        scored=f"test images {FASHION_REF}-{FASHION_REF + FASHION_N - 1} (n = {FASHION_N}): clean = the floor",
        degradations={k: list(v) for k, v in FASHION_DEGRADATIONS.items()},
        degradation_notes=dict(jpeg="quality", contrast="share of contrast kept about each image's mean",
                               translate="pixels right and down, border replicated",
                               cutout="side of a mid-grey square at a seeded position in the middle half (seed 0)"),
        sampling=dict(model="ldm_fashion_class32",
                      model_sha256=load_manifest("ldm_fashion_class32").get("weights_sha256"), sampler="ddim",
                      eta=0.0, guidance=1.0, labels="torch.arange(10).repeat(50)", seed=0, batch_size=FASHION_BATCH,
                      steps=list(FASHION_STEPS), seconds=times,
                      pairing="row i of every set starts from the same noise and label (paired=True)",
                      quantised="every sample set through uint8; grey = mean of the 3 decoded channels"),
        first_stage="ae_kl_f4_shapes_fashion (the LDM's first stage), reconstructions of the 500 clean images",
        sets=sets, degradation_comparisons=deg, model_comparisons=mod,
        comparisons_note=f"{len(deg_pairs)} degradation steps at their Bonferroni level, {len(model_pairs)} model "
                         "comparisons at theirs",
        seconds=round(time.time() - t0, 1))


def main() -> None:
    torch.set_num_threads(1)
    t0 = time.time()
    result = dict(what=__doc__.split("\n\n")[0].replace("\n", " "), n_boot=N_BOOT,
                  openmoji=openmoji(), fashion=fashion())
    result.update(wall_time_s=round(time.time() - t0, 1), threads=torch.get_num_threads(), torch=torch.__version__,
                  python=platform.python_version(), device="cpu", command=COMMAND,
                  date=datetime.date.today().isoformat())
    OUT.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {OUT.relative_to(REPO)} in {result['wall_time_s']:.0f} s")


if __name__ == "__main__":
    main()
