"""Recipes that train the course's evaluators (``ldm_lite.metrics.evaluators``); ``ldm-lite train-evaluator``.

Each recipe is a plain loop (minutes on a CPU, so no checkpointing): AdamW with a cosine learning rate,
augmentations that imitate what a generative model gets wrong, a held-out measurement, and an export
to ``data/pretrained/`` with a manifest that records the exact command, the wall time and the result.

Augmentations (:func:`random_degrade`, used for training and -- at full strength -- for the "degraded" held-out
score): Gaussian blur, Gaussian noise, brightness / contrast / saturation jitter, a trip through a
coarse grid (down to 16-32 px and back, the blur a first stage with f = 2-4 leaves), and optionally a
reconstruction through an autoencoder (``ae=``). Hue is never jittered: colour is a label.
"""

from __future__ import annotations

import datetime
import math
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ldm_lite.data import load_fashion_mnist, load_openmoji
from ldm_lite.data.augment import gaussian_blur, random_affine, random_degrade
from ldm_lite.data.shapes import ShapesDataset
from ldm_lite.experiments import check_checkpoint
from ldm_lite.metrics.conditional import shapes_heldout_accuracy
from ldm_lite.metrics.evaluators import (
    SHAPES_HEADS, EmojiFeatureNet, FashionClassifier, ShapesAttributeNet, build_evaluator, count_parameters,
)
from ldm_lite.pretrained import check_export_target, load_autoencoder, save_pretrained
from ldm_lite.progress import progress as tqdm

DATASET_OF = {"fashion-classifier": "fashion", "shapes-attributes": "shapes", "openmoji-simclr": "openmoji"}


# ------------------------------------------------------------------------------------------------
# The recipe
# ------------------------------------------------------------------------------------------------
@dataclass
class EvaluatorRecipe:
    """How to train one evaluator. ``network``: ``"fashion-classifier"``, ``"shapes-attributes"`` or
    ``"openmoji-simclr"``."""

    network: str
    steps: int = 2000
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    augment: float = 1.0          # strength of :func:`random_degrade` during training (0 = clean images only)
    temperature: float = 0.2      # SimCLR's NT-Xent temperature
    eval_n: int | None = None     # held-out images for the final measurement: None = 1,000 shapes renders /
                                  # all 10,000 Fashion-MNIST test images
    seed: int = 0
    ae: str | None = None         # autoencoder whose reconstructions join the augmentations (shapes-attributes)
    ae_prob: float = 0.25
    config: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.network not in DATASET_OF:
            raise ValueError(f"unknown evaluator network {self.network!r}; choose from {sorted(DATASET_OF)}")
        for name in ("steps", "batch_size", "eval_n"):
            v = getattr(self, name)
            if name == "eval_n" and v is None:
                continue
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive finite number, got {self.lr!r}")
        if not 0 <= self.augment <= 1:
            raise ValueError(f"augment (strength) must lie in [0, 1], got {self.augment!r}")
        if not 0 <= self.ae_prob <= 1:
            raise ValueError(f"ae_prob must lie in [0, 1], got {self.ae_prob!r}")
        if self.network == "openmoji-simclr" and self.batch_size < 8:
            raise ValueError("SimCLR needs batches of at least 8 emoji (the other emoji are its negatives)")
        if self.ae is not None and self.network != "shapes-attributes":
            raise ValueError(f"ae (reconstructions among the augmentations) is used only by network "
                             f"'shapes-attributes'; {self.network!r} would ignore it")
        if self.eval_n is not None and self.network == "openmoji-simclr":
            raise ValueError("eval_n is not used by network 'openmoji-simclr': its held-out retrieval searches all "
                             "held-out emoji")


def _lr_at(step: int, recipe: EvaluatorRecipe) -> float:
    warm = max(1, recipe.steps // 20)
    if step < warm:
        return recipe.lr * (step + 1) / warm
    p = (step - warm) / max(1, recipe.steps - warm)
    return recipe.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * p)))


# ------------------------------------------------------------------ per network: a batch and a loss
def _fashion_data(recipe):
    train = load_fashion_mnist("train")
    test = load_fashion_mnist("test")
    to_t = lambda ds: torch.from_numpy(ds.images).permute(0, 3, 1, 2).float().div(127.5).sub(1)  # noqa: E731
    return dict(x=to_t(train), y=torch.from_numpy(train.labels), x_test=to_t(test), y_test=torch.from_numpy(test.labels))


def _fashion_step(model, data, recipe, g):
    idx = torch.randint(0, len(data["x"]), (recipe.batch_size,), generator=g)
    x = random_affine(data["x"][idx], g, max_shift=0.08, scale=(0.9, 1.0))
    x = random_degrade(x, recipe.augment * 0.6, g)
    return F.cross_entropy(model(x), data["y"][idx], label_smoothing=0.05)


@torch.no_grad()
def evaluate_fashion(model, x_test=None, y_test=None, batch_size: int = 500, degraded: float = 0.0) -> dict:
    """Test-set accuracy (all 10,000 images unless given), optionally on degraded images."""
    if x_test is None:
        d = _fashion_data(None)
        x_test, y_test = d["x_test"], d["y_test"]
    model.eval()
    g = torch.Generator().manual_seed(1234)
    correct = 0
    for i in range(0, len(x_test), batch_size):
        x = x_test[i : i + batch_size]
        if degraded:
            x = random_degrade(x, degraded, g)
        correct += int((model(x).argmax(1) == y_test[i : i + batch_size]).sum())
    return dict(accuracy=correct / len(x_test), n=len(x_test))


def shapes_batch(dataset, indices) -> dict:
    """Images and per-pixel targets of ShapesDataset samples: image (B,3,H,W), object (B,H,W) float,
    and colour / shape / size class per pixel (B,H,W) long (-1 off objects)."""
    items = [dataset[int(i)] for i in indices]
    x = torch.stack([it["image"] for it in items])
    inst = torch.stack([it["instances"] for it in items])                  # 0 = background, 1 + slot
    out = dict(image=x, object=(inst > 0).float())
    for key, name in (("colors", "color"), ("labels", "shape"), ("sizes", "size")):
        table = torch.stack([torch.cat([torch.tensor([-1]), it[key]]) for it in items])  # (B, 1 + M)
        out[name] = torch.gather(table, 1, inst.flatten(1)).view_as(inst)
    return out


def shapes_loss(out: dict, batch: dict) -> torch.Tensor:
    """BCE on the object mask + cross-entropy of colour / shape / size on object pixels."""
    loss = F.binary_cross_entropy_with_logits(out["object"][:, 0], batch["object"])
    for name in ("color", "shape", "size"):
        loss = loss + F.cross_entropy(out[name], batch[name], ignore_index=-1)
    return loss


def _shapes_data(recipe):
    ae = None
    if recipe.ae:
        ae = load_autoencoder(recipe.ae)
    return dict(train=ShapesDataset(64, length=10**9, seed=1000 + recipe.seed), ae=ae)


def _shapes_step(model, data, recipe, g, step):
    b = shapes_batch(data["train"], range(step * recipe.batch_size, (step + 1) * recipe.batch_size))
    x = random_degrade(b["image"], recipe.augment, g, ae=data["ae"], ae_prob=recipe.ae_prob)
    return shapes_loss(model(x), b)


def _emoji_data(recipe):
    train = load_openmoji(64, "train", progress=False)
    test = load_openmoji(64, "test", progress=False)
    to_t = lambda ds: torch.from_numpy(ds.images).permute(0, 3, 1, 2).float().div(127.5).sub(1)  # noqa: E731
    return dict(x=to_t(train), x_test=to_t(test))


def emoji_views(x: torch.Tensor, g: torch.Generator, strength: float = 1.0) -> torch.Tensor:
    """One SimCLR view: a random crop / shift / flip, then :func:`random_degrade`."""
    return random_degrade(random_affine(x, g, max_shift=0.12, scale=(0.7, 1.0)), strength, g)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's loss (Chen et al. 2020, Eq. 1): each view must pick its partner among the 2B - 1 others."""
    z = torch.cat([z1, z2])
    sim = z @ z.T / temperature
    sim.fill_diagonal_(float("-inf"))
    B = len(z1)
    target = torch.cat([torch.arange(B, 2 * B), torch.arange(0, B)])
    return F.cross_entropy(sim, target)


def _emoji_step(model, data, recipe, g):
    idx = torch.randperm(len(data["x"]), generator=g)[: recipe.batch_size]
    x = data["x"][idx]
    return nt_xent(model(emoji_views(x, g, recipe.augment)), model(emoji_views(x, g, recipe.augment)),
                   recipe.temperature)


@torch.no_grad()
def evaluate_emoji(model, x_test=None, seed: int = 1234, strength: float = 1.0) -> dict:
    """Held-out retrieval: for each held-out emoji, does one augmented view (the training views, with
    :func:`random_degrade` at ``strength``) find its own clean image (nearest by cosine) among all
    held-out emoji? (chance: 1 / n)."""
    if x_test is None:
        x_test = _emoji_data(None)["x_test"]
    model.eval()
    g = torch.Generator().manual_seed(seed)
    a = F.normalize(model.features(x_test), dim=1)
    b = F.normalize(model.features(emoji_views(x_test, g, strength)), dim=1)
    top1 = (b @ a.T).argmax(1) == torch.arange(len(x_test))
    return dict(retrieval_top1=float(top1.float().mean()), n=len(x_test), chance=1 / len(x_test), view_strength=strength)


# ------------------------------------------------------------------ the loop
def train_evaluator(recipe: EvaluatorRecipe, export: str | None = None, progress: bool = True,
                    command: str | None = None, log_every: int = 100,
                    force: bool = False) -> tuple[torch.nn.Module, dict]:
    """Train the recipe's network; measure it on held-out data; export it (``export=`` a name for
    ``data/pretrained/`` or a path). Returns ``(model, report)``. An existing checkpoint of the export's name is
    replaced only with ``force=True``; that, and that its folder is writable, are checked before training."""
    path = check_export_target(export, force) if export else None
    if recipe.ae is not None:  # a missing name or another kind of checkpoint is found before any work
        check_checkpoint(recipe.ae, "autoencoder", f"ae={recipe.ae!r}")
    torch.manual_seed(recipe.seed)
    g = torch.Generator().manual_seed(recipe.seed)
    model = build_evaluator(recipe.network, **recipe.config)
    data = {"fashion-classifier": _fashion_data, "shapes-attributes": _shapes_data,
            "openmoji-simclr": _emoji_data}[recipe.network](recipe)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    t0, losses = time.time(), []
    bar = tqdm(range(recipe.steps), desc=f"train {recipe.network}", disable=not progress)
    for step in bar:
        model.train()
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, recipe)
        if recipe.network == "fashion-classifier":
            loss = _fashion_step(model, data, recipe, g)
        elif recipe.network == "shapes-attributes":
            loss = _shapes_step(model, data, recipe, g, step)
        else:
            loss = _emoji_step(model, data, recipe, g)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at step {step}; lower --lr (now {recipe.lr})")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step % log_every == 0 or step == recipe.steps - 1:
            bar.set_postfix(loss=f"{np.mean(losses[-log_every:]):.4f}")
    wall = time.time() - t0
    model.eval()
    report = dict(network=recipe.network, steps=recipe.steps, wall_time_s=round(wall, 1),
                  final_loss=float(np.mean(losses[-log_every:])), metrics=None,
                  parameters=count_parameters(model), threads=torch.get_num_threads())

    def save(replace: bool):  # the weights are written before the (slower) held-out measurement: nothing is lost
        manifest = dict(report, kind="evaluator", config=recipe.config, dataset=DATASET_OF[recipe.network],
                        recipe=asdict(recipe),
                        command=command or "python " + " ".join(shlex.quote(a) for a in sys.argv),
                        date=datetime.date.today().isoformat(), torch=torch.__version__)
        save_pretrained(model, path, manifest, dtype=torch.float16, force=replace)
        return str(path)

    if export:
        save(replace=force)
    if recipe.network == "fashion-classifier":
        xt, yt = data["x_test"][: recipe.eval_n], data["y_test"][: recipe.eval_n]
        metrics = dict(test=evaluate_fashion(model, xt, yt), test_degraded=evaluate_fashion(model, xt, yt, degraded=1.0))
    elif recipe.network == "shapes-attributes":
        metrics = shapes_heldout_accuracy(model, n=recipe.eval_n or 1000)
    else:
        metrics = dict(heldout=evaluate_emoji(model, data["x_test"], strength=recipe.augment))
    report["metrics"] = metrics
    if export:
        report["exported"] = save(replace=True)  # the same export, now with the held-out metrics
    return model, report


__all__ = [
    "EvaluatorRecipe", "train_evaluator", "random_degrade", "gaussian_blur", "random_affine", "nt_xent",
    "shapes_batch", "shapes_loss", "evaluate_fashion", "evaluate_emoji", "emoji_views",
    "FashionClassifier", "ShapesAttributeNet", "EmojiFeatureNet", "SHAPES_HEADS",
]
