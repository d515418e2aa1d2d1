"""What every shipped model computes, pinned: a guard for refactors of the model code.

For each LDM in ``data/pretrained/``: a 3-step DDIM sample from a fixed seed (latents and decoded images, guided
where the model has a null condition) and one training loss on a fixed batch with a fixed global seed. For each
autoencoder: the reconstruction of fixed images through the posterior mean (KL) or the quantised code (VQ). For each
evaluator: its features of fixed images.

``python tests/golden_outputs.py`` records them into ``tests/golden/shipped_outputs.npz`` (float16 copies, for a
tolerance check on other machines) and ``shipped_outputs.json`` (the sha256 of every float32 array, for the exact
check on a machine like the one that recorded them: same torch version and CPU capability).
``tests/test_golden_outputs.py`` recomputes and compares.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
GOLDEN = HERE / "golden"
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from ldm_lite.conditioning import layout_from_objects  # noqa: E402
from ldm_lite.data.shapes import ShapesDataset  # noqa: E402
from ldm_lite.pretrained import PRETRAINED_DIR, load_autoencoder, load_ldm, load_manifest  # noqa: E402

PROMPTS = {"ldm_shapes_text64": "a big red circle left of a small blue square",
           "ldm_openmoji_text64": "grinning face with big eyes"}


def shipped(kind: str) -> list[str]:
    """Names of the shipped checkpoints of one manifest kind."""
    return [p.stem for p in sorted(PRETRAINED_DIR.glob("*.json")) if load_manifest(p.stem).get("kind") == kind]


def images(size: int, n: int = 2) -> torch.Tensor:
    """``n`` fixed shapes renders (B, 3, size, size) in [-1, 1]: deterministic from the generator's seed."""
    ds = ShapesDataset(size=size, length=n, seed=1234)
    return torch.stack([ds[i]["image"] for i in range(n)])


def _batch(model, name: str) -> dict:
    """A fixed training batch of two shapes renders with the condition this LDM reads."""
    size = model.latent_size[0] * model.f
    ds = ShapesDataset(size=size, length=2, seed=1234)
    items = [ds[i] for i in range(2)]
    image = torch.stack([it["image"] for it in items])
    batch = {"image": image}
    key = model.cond_key
    if model.conditioning_key is None:
        return batch
    if key == "label":
        batch["label"] = torch.tensor([3, 7])
    elif key == "caption":
        batch["caption"] = [it["caption"] for it in items]
    elif key == "layout":
        batch["layout"] = torch.stack([it["layout"] for it in items])
    elif key == "segmentation":
        batch["segmentation"] = torch.stack([it["segmentation"] for it in items])
    elif key == "lr_image":
        batch["lr_image"] = F.interpolate(image, scale_factor=0.25, mode="area")
    elif isinstance(key, (tuple, list)) and "hole_mask" in key:
        hole = torch.zeros(2, 1, size, size)
        hole[:, :, size // 4: size // 2, size // 4: 3 * size // 4] = 1.0
        batch["masked_image"] = image * (1 - hole)
        batch["hole_mask"] = hole
    else:
        raise ValueError(f"{name}: no golden batch for cond_key {key!r}")
    return batch


def _sample_cond(model, name: str, batch: dict):
    """The raw condition and guidance a golden sample of this LDM uses (one image)."""
    key = model.cond_key
    if model.conditioning_key is None:
        return None, 1.0
    if key == "caption":
        return [PROMPTS.get(name, batch["caption"][0])], 3.0
    if key == "layout":
        return layout_from_objects([{"box": [0.1, 0.1, 0.5, 0.5], "shape": "circle", "color": "red"},
                                    {"box": [0.55, 0.5, 0.9, 0.9], "shape": "square", "color": "blue",
                                     "size": "small"}])[None], 3.0
    if isinstance(key, (tuple, list)):
        return {k: batch[k][:1] for k in key}, 1.0
    return batch[key][:1], (3.0 if key == "label" else 1.0)


@torch.no_grad()
def ldm_outputs(name: str) -> dict[str, np.ndarray]:
    model = load_ldm(name)
    batch = _batch(model, name)
    cond, guidance = _sample_cond(model, name, batch)
    z, x = None, None
    out = model.sample(1, cond=cond, steps=3, guidance_scale=guidance, generator=torch.Generator().manual_seed(0),
                       progress=False, return_latents=True)
    x, z = out
    model.train()
    torch.manual_seed(0)
    loss, _ = model.training_step(batch)
    model.eval()
    return {"sample_latent": z.float().numpy(), "sample_image": x.float().numpy(),
            "training_loss": np.array([float(loss)], dtype=np.float32)}


@torch.no_grad()
def autoencoder_outputs(name: str) -> dict[str, np.ndarray]:
    model = load_autoencoder(name)
    size = int(load_manifest(name)["data"]["size"])
    x = images(size)
    if hasattr(model, "quantize"):
        rec = model.decode(model.encode(x)[0])
    else:
        rec = model.decode(model.encode(x).mode())
    return {"reconstruction": rec.float().numpy()}


@torch.no_grad()
def evaluator_outputs(name: str) -> dict[str, np.ndarray]:
    from ldm_lite.metrics.evaluators import load_evaluator

    net = load_evaluator(name)
    size = int(getattr(net, "image_size", 0) or load_manifest(name).get("size") or 32)
    return {"features": net.features(images(size)).float().numpy()}


def compute_all() -> dict[str, np.ndarray]:
    out = {}
    torch.set_num_threads(1)
    for kind, fn in (("ldm", ldm_outputs), ("autoencoder", autoencoder_outputs), ("evaluator", evaluator_outputs)):
        for name in shipped(kind):
            for key, arr in fn(name).items():
                out[f"{name}/{key}"] = arr
    return out


def sha(arr: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(arr, dtype=np.float32).tobytes()).hexdigest()


def machine() -> dict:
    return {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def record() -> None:
    out = compute_all()
    GOLDEN.mkdir(exist_ok=True)
    np.savez_compressed(GOLDEN / "shipped_outputs.npz", **{k: v.astype(np.float16) for k, v in out.items()})
    meta = dict(machine(), threads=1, sha256={k: sha(v) for k, v in out.items()},
                shapes={k: list(v.shape) for k, v in out.items()})
    (GOLDEN / "shipped_outputs.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"recorded {len(out)} arrays of {len(shipped('ldm'))} LDMs, {len(shipped('autoencoder'))} autoencoders, "
          f"{len(shipped('evaluator'))} evaluators")


if __name__ == "__main__":
    record()
