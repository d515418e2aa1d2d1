"""Recipes shared by the notebooks and the command line.

A notebook's full-size run and ``ldm-lite train-ae ...`` call the same function, so they cannot drift
apart. Each recipe builds the data, the model and its loss, trains with :class:`ldm_lite.train.Trainer`,
evaluates on held-out data, and (optionally) exports a small checkpoint with a manifest.
"""

from __future__ import annotations

import datetime
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ldm_lite.autoencoder.model import AutoencoderConfig, build_autoencoder
from ldm_lite.autoencoder.training import AutoencoderModule, evaluate_reconstruction
from ldm_lite.train import TrainConfig, Trainer

DATASETS = ("openmoji", "shapes", "fashion", "photos")


def load_dataset(name: str, size: int, split: str = "train", seed: int = 0, length: int | None = None):
    """A dataset by name -- ``openmoji``, ``shapes``, ``fashion``, ``photos`` -- or a folder path.

    ``split`` is ``"train"`` or ``"test"`` (held out: OpenMoji's fixed 10 %, Fashion-MNIST's test set,
    another seed of shapes / photo crops). Every sample is a dict with ``image`` in [-1, 1].
    """
    from ldm_lite import data

    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if name == "openmoji":
        return data.load_openmoji(size=size, split=split)
    if name == "shapes":
        return data.ShapesDataset(size=size, length=length or (50_000 if split == "train" else 1_000),
                                  seed=seed if split == "train" else seed + 10_000)
    if name == "fashion":
        return data.load_fashion_mnist(split, size=size, channels=3)
    if name == "photos":
        return data.load_photo_crops(size=size, n=length or (4_000 if split == "train" else 256),
                                     seed=seed if split == "train" else seed + 10_000)
    path = Path(name)
    if path.is_dir():
        return data.ImageFolderDataset(path, size=size)
    raise ValueError(f"unknown dataset {name!r}: use one of {DATASETS} or the path of an image folder")


def stack_images(dataset, limit: int | None = None) -> torch.Tensor:
    """The first ``limit`` images of a dataset as one (N, C, H, W) tensor."""
    if hasattr(dataset, "tensors"):
        return dataset.tensors(limit)
    n = len(dataset) if limit is None else min(limit, len(dataset))
    return torch.stack([dataset[i]["image"] for i in range(n)])


@dataclass
class AERecipe:
    """Hyper-parameters of a first-stage run (model, loss, optimisation). Defaults: small, CPU-friendly."""

    data: str = "openmoji"
    size: int = 64
    f: int = 4
    reg: str = "kl"
    ch: int = 32
    ch_mult: tuple[int, ...] | None = None
    num_res_blocks: int = 2
    z_channels: int = 4
    n_embed: int = 256
    use_mid_attn: bool = True
    steps: int = 2000
    batch_size: int = 16
    lr: float = 4e-4
    kl_weight: float = 1e-6
    perceptual_weight: float = 1.0
    perceptual: str = "auto"
    disc_start: int = 10**9  # GAN off unless asked for
    disc_weight: float = 0.5
    codebook_weight: float = 1.0
    ema_decay: float | None = None
    seed: int = 0
    eval_images: int = 256

    def autoencoder_config(self) -> AutoencoderConfig:
        return AutoencoderConfig(f=self.f, ch=self.ch, ch_mult=self.ch_mult, num_res_blocks=self.num_res_blocks,
                                 z_channels=self.z_channels, reg=self.reg, n_embed=self.n_embed,
                                 use_mid_attn=self.use_mid_attn,
                                 dead_code_threshold=0.01 if self.reg == "vq" else 0.0)


def make_ae_loss(recipe: AERecipe, perceptual=None):
    """The first-stage loss of a recipe (``perceptual`` may pass a shared PerceptualLoss object)."""
    from ldm_lite.autoencoder.losses import LPIPSWithDiscriminator, VQLPIPSWithDiscriminator

    common = dict(disc_start=recipe.disc_start, disc_weight=recipe.disc_weight,
                  perceptual_weight=recipe.perceptual_weight, perceptual=perceptual or recipe.perceptual)
    if recipe.reg == "vq":
        return VQLPIPSWithDiscriminator(codebook_weight=recipe.codebook_weight, **common)
    return LPIPSWithDiscriminator(kl_weight=recipe.kl_weight, **common)


def _eval_callback(autoencoder, images: torch.Tensor, every: int):
    """A Trainer callback: every ``every`` steps, held-out PSNR/SSIM into the step's logs (and printed)."""
    from tqdm.auto import tqdm

    def callback(trainer, logs):
        if logs["step"] % every == 0 or logs["step"] == trainer.config.max_steps:
            m = evaluate_reconstruction(autoencoder, images)
            logs["val/psnr"], logs["val/ssim"] = m["psnr"], m["ssim"]
            if trainer.config.progress:
                tqdm.write(f"step {logs['step']}: held-out PSNR {m['psnr']:.2f} dB, SSIM {m['ssim']:.3f}")

    return callback


def train_autoencoder(recipe: AERecipe, out_dir: str | None = None, ckpt_every: int | None = None,
                      resume: bool = False, progress: bool = True, export: str | None = None,
                      perceptual=None, callbacks=(), command: str | None = None, eval_every: int | None = None) -> dict:
    """Train a first-stage autoencoder with the recipe; evaluate PSNR/SSIM on held-out images.

    ``eval_every``: also measure held-out PSNR/SSIM (on up to 64 test images) every that many steps,
    logged as ``val/psnr`` and ``val/ssim`` in the history.

    Returns dict(autoencoder (eval mode, EMA weights if used), history, metrics, wall_time_s, recipe).
    With ``export`` (a path or a name under ``data/pretrained/``) the weights are saved in float16 with
    a JSON manifest recording data, command, steps, wall time and held-out metrics.
    """
    torch.manual_seed(recipe.seed)
    train_set = load_dataset(recipe.data, recipe.size, "train", seed=recipe.seed)
    test_images = stack_images(load_dataset(recipe.data, recipe.size, "test", seed=recipe.seed), recipe.eval_images)
    autoencoder = build_autoencoder(recipe.autoencoder_config())
    loss = make_ae_loss(recipe, perceptual)
    module = AutoencoderModule(autoencoder, loss, lr=recipe.lr)
    cfg = TrainConfig(max_steps=recipe.steps, batch_size=recipe.batch_size, seed=recipe.seed,
                      ema_decay=recipe.ema_decay, out_dir=out_dir, ckpt_every=ckpt_every, progress=progress,
                      find_unused_parameters=recipe.disc_start < recipe.steps)
    callbacks = list(callbacks)
    if eval_every:
        callbacks.append(_eval_callback(autoencoder, test_images[:64], eval_every))
    trainer = Trainer(module, train_set, cfg, callbacks=callbacks)
    t0 = time.perf_counter()
    history = trainer.fit(resume=resume)
    wall = time.perf_counter() - t0
    if recipe.ema_decay is not None:
        with trainer.swap_ema():
            metrics = evaluate_reconstruction(autoencoder, test_images)
            state = {k: v.clone() for k, v in autoencoder.state_dict().items()}
        autoencoder.load_state_dict(state)
    else:
        metrics = evaluate_reconstruction(autoencoder, test_images)
    metrics.pop("reconstructions")
    result = dict(autoencoder=autoencoder.eval(), history=history, metrics=metrics, wall_time_s=wall,
                  recipe=recipe, perceptual=loss.perceptual_loss.name if recipe.perceptual_weight > 0 else "none")
    if export:
        from ldm_lite.pretrained import PRETRAINED_DIR, save_pretrained

        target = Path(export) if ("/" in export or export.endswith(".safetensors")) else PRETRAINED_DIR / export
        manifest = dict(
            kind="autoencoder", config=recipe.autoencoder_config().to_dict(),
            data=dict(name=recipe.data, size=recipe.size, train_images=len(train_set),
                      eval=f"first {len(test_images)} images of the held-out split"),
            recipe={k: (list(v) if isinstance(v, tuple) else v) for k, v in recipe.__dict__.items()},
            command=command or " ".join(shlex.quote(a) for a in sys.argv),
            steps=recipe.steps, wall_time_s=round(wall, 1),
            device=str(trainer.device), torch_threads=torch.get_num_threads(), torch=torch.__version__,
            perceptual=result["perceptual"],
            metrics={k: round(v, 4) for k, v in metrics.items()},
            final_train_logs={k: round(v, 5) for k, v in history[-1].items()} if history else {},
            date=datetime.date.today().isoformat(),
        )
        result["weights"] = str(save_pretrained(autoencoder, target, manifest))
    return result
