"""Recipes shared by the notebooks and the command line.

A notebook's full-size run and ``ldm-lite train-ae ...`` call the same function, so they cannot drift
apart. Each recipe builds the data, the model and its loss, trains with :class:`ldm_lite.train.Trainer`,
evaluates on held-out data, and (optionally) exports a small checkpoint with a manifest.
"""

from __future__ import annotations

import contextlib
import datetime
import math
import shlex
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Sequence

import torch

from ldm_lite.autoencoder.losses import AELossConfig
from ldm_lite.autoencoder.model import AutoencoderConfig, build_autoencoder
from ldm_lite.autoencoder.training import AutoencoderModule, evaluate_reconstruction
from ldm_lite.config import recipe_dataclass, setting
from ldm_lite.conditioning import (
    ClassEmbedder, FrozenTextEncoder, InpaintConcat, LayoutEmbedder, SemanticEncoder, SpatialRescaler,
    TransformerEmbedder,
)
from ldm_lite.data.folder import read_captions
from ldm_lite.data.registry import (  # the dataset registry; its names stay importable from here
    DATASETS,
    ImageMixture,  # noqa: F401
    _has_shapes,
    _parse_part,
    check_dataset,
    load_dataset,
    parse_holdout,
)
from ldm_lite.data.shapes import MAX_OBJECTS, SHAPES, make_caption
from ldm_lite.data.spatial import DEGRADATIONS, TASKS, SpatialTaskDataset
from ldm_lite.io import check_writable_dir, sha256_file, shown_path
from ldm_lite.latents import LatentDataset
from ldm_lite.ldm import LatentDiffusion
from ldm_lite.ldm_config import (
    ConditioningConfig, FirstStageConfig, LDMConfig, ObjectiveConfig, OptimizerConfig, ScheduleConfig,
)
from ldm_lite.ldm_config import plain_json as _jsonable
from ldm_lite.pretrained import (
    PRETRAINED_DIR, ExistingExportError, check_export_target, first_stage_record, ldm_export_module,
    ldm_manifest, list_pretrained, load_autoencoder, load_manifest, load_state_dict, resolve,
    save_pretrained,
)
from ldm_lite.progress import write
from ldm_lite.train import TrainConfig, Trainer
from ldm_lite.train.lock import acquire_run_lock, check_run_lock
from ldm_lite.unet import UNetConfig, UNetModel


class RandomCrops(torch.utils.data.Dataset):
    """Random ``crop`` x ``crop`` windows of another dataset's images (a fully convolutional autoencoder
    trains as well on crops -- and ``(H / crop)^2`` times faster per step). Draws from torch's global
    generator, so the Trainer's saved RNG state makes it reproducible."""

    def __init__(self, dataset, crop: int):
        self.dataset, self.crop = dataset, crop

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        item = dict(self.dataset[i])
        img = item["image"]
        H, W = img.shape[-2:]
        if self.crop > min(H, W):
            raise ValueError(f"crop {self.crop} is larger than the images ({H}x{W})")
        y = int(torch.randint(0, H - self.crop + 1, ()))
        x = int(torch.randint(0, W - self.crop + 1, ()))
        item["image"] = img[:, y:y + self.crop, x:x + self.crop]
        return {k: v for k, v in item.items() if k in ("image", "index", "label", "caption")}


def stack_images(dataset, limit: int | None = None) -> torch.Tensor:
    """The first ``limit`` images of a dataset as one (N, C, H, W) tensor."""
    if hasattr(dataset, "tensors"):
        return dataset.tensors(limit)
    n = len(dataset) if limit is None else min(limit, len(dataset))
    return torch.stack([dataset[i]["image"] for i in range(n)])


@contextlib.contextmanager
def _run_folder(out_dir: str | None, resume):
    """Hold ``out_dir`` for one run: its checks and run lock (:func:`_preflight`) on entry; on exit the lock is
    released and a folder this run created is removed again if it stayed empty (a run that failed early)."""
    created = out_dir is not None and not Path(out_dir).exists()
    lock = _preflight(out_dir, resume)
    try:
        yield
    finally:
        if lock is not None:
            lock.release()
        if created:
            _remove_if_empty(out_dir)


def _preflight(out_dir: str | None, resume):
    """What a run can know before loading data and training: no other process trains in ``out_dir`` (its run
    lock, :func:`ldm_lite.train.lock.acquire_run_lock`), the folder can be written, and holds a run to resume exactly
    when ``resume`` says so (the Trainer checks the same, but only after the data are ready). Returns the run lock,
    which the caller releases when the run ends (or None without ``out_dir``)."""
    if out_dir is None:
        return None
    check_run_lock(out_dir)  # a live run there: say so, not "pass --resume" (its latest.json is still moving)
    latest = Path(out_dir) / "latest.json"
    if resume is True and not latest.is_file():
        raise FileNotFoundError(f"resume=True but {shown_path(out_dir)} holds no run (no latest.json); train without "
                                "--resume first, or pass the --out folder of the run to continue")
    if not resume and latest.is_file():
        raise FileExistsError(f"{shown_path(out_dir)} already holds checkpoints (latest.json); pass resume=True to "
                              "continue that run, or choose another --out folder (or delete it) to start fresh")
    check_writable_dir(out_dir, "--out folder")
    lock = acquire_run_lock(out_dir)
    if not resume and latest.is_file():  # a run that finished between the check above and taking the lock
        lock.release()
        raise FileExistsError(f"{shown_path(out_dir)} already holds checkpoints (latest.json); pass resume=True to "
                              "continue that run, or choose another --out folder (or delete it) to start fresh")
    return lock


def _remove_if_empty(folder) -> None:
    """Remove ``folder`` if it is empty (the ``out_dir`` a run created before it failed, with nothing in it)."""
    import os

    try:
        os.rmdir(folder)
    except OSError:
        pass


_KIND_WORDS = {"autoencoder": "an autoencoder", "ldm": "an LDM", "evaluator": "an evaluator"}


def check_checkpoint(name, kind: str, shown: str | None = None) -> Path:
    """The base path of the checkpoint ``name`` (a shipped name or a path), checked to be of manifest ``kind``
    (``"autoencoder"``, ``"ldm"``, ``"evaluator"``) by reading its manifest only -- before a run loads or trains
    anything. Errors call it ``shown`` (e.g. ``"first_stage='x'"``, or ``"--first-stage x"`` on the command
    line) and name the shipped checkpoints of that kind."""
    shown = shown or repr(str(name))
    want = _KIND_WORDS.get(kind, f"a {kind!r} checkpoint")

    def shipped() -> str:
        names = sorted(m["name"] for m in list_pretrained() if m.get("kind") == kind)
        some = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
        return (f"shipped: {some}; " if names else "") + "`ldm-lite list-pretrained` lists every checkpoint"

    try:
        base = resolve(name)
    except FileNotFoundError as err:
        if str(err).startswith("no exported checkpoint at"):  # a path to something else, with its own advice
            raise FileNotFoundError(f"{shown}: {err}") from None
        raise FileNotFoundError(f"{shown}: no checkpoint of that name or path; pass {want} ({shipped()})") from None
    have = load_manifest(base).get("kind")
    if have != kind:
        what = _KIND_WORDS.get(have, f"a checkpoint of kind {have!r}")
        raise ValueError(f"{shown} is {what} (manifest kind {have!r}), not {want}; pass {want} ({shipped()})")
    return base


def _check_ldm_inputs(recipe: "LDMRecipe", first_stage) -> None:
    """What :func:`train_ldm` can check before it writes, loads or trains anything: the data exist, text
    conditioning has captions, and the first stage and ``init_from`` are checkpoints of the right kind."""
    check_dataset(recipe.data)
    if recipe.cond in ("text", "text-frozen"):
        if "+" in recipe.data:
            raise ValueError(f"cond={recipe.cond!r} trains on captions, and a mixture ({recipe.data!r}) keeps only "
                             "the images of its parts; train on one dataset")
        folder = recipe.data not in DATASETS
        if folder and recipe.captions is None:
            raise ValueError(
                f"cond={recipe.cond!r} trains on captions, and the image folder {recipe.data!r} has none: pass "
                "LDMRecipe(captions=...), a .jsonl file with a line {\"file\": \"relative/path.png\", \"caption\": "
                "\"...\"} per image or a .csv file with the header row file,caption")
        if not folder and recipe.captions is not None:
            raise ValueError(f"LDMRecipe.captions is for an image-folder data; {recipe.data!r} brings its own captions")
        if recipe.captions is not None:
            read_captions(recipe.captions)  # a missing or malformed file is found now
    choice = recipe.first_stage if first_stage is None else first_stage
    f = 1
    if isinstance(choice, (str, Path)) and str(choice) != "pixel":
        name = find_autoencoder(recipe.data, recipe.size) if choice == "auto" else choice
        base = check_checkpoint(name, "autoencoder", f"first_stage={str(name)!r}")
        f = int((load_manifest(base).get("config") or {}).get("f", 1))
    elif isinstance(choice, torch.nn.Module):
        f = int(getattr(getattr(choice, "config", None), "f", 1))
    m = 2 ** (len(recipe.channel_mult) - 1)
    if recipe.size % (f * m):  # found now, not at the first step after the training set is encoded
        step = f * m
        near = max(step, round(recipe.size / step) * step)
        raise ValueError(f"image size {recipe.size} is not a multiple of {step} (the first stage's f={f} times the "
                         f"UNet's downsampling {m} = 2**(len(channel_mult)-1) for channel_mult "
                         f"{','.join(map(str, recipe.channel_mult))}); use e.g. size {near}")
    if recipe.init_from:
        check_checkpoint(recipe.init_from, "ldm", f"init_from={recipe.init_from!r}")


def _trainer_recipe(recipe) -> dict:
    """A recipe's fields for the Trainer's checkpoints (compared on resume)."""
    return {k: (list(v) if isinstance(v, tuple) else _jsonable(v)) for k, v in recipe.__dict__.items()}


def _command(command: str | None) -> str:
    return command or " ".join(shlex.quote(a) for a in sys.argv)


def _save_export(model, target: Path, manifest: dict, force: bool, **kw) -> Path:
    """``save_pretrained`` after training; if ``target`` appeared *while* this run trained (checked free before),
    save next to it under a free name instead of losing the run, and say so."""
    import warnings

    try:
        return save_pretrained(model, target, manifest, force=force, **kw)
    except ExistingExportError as err:
        i = 2
        while target.with_name(f"{target.name}_{i}").with_suffix(".json").exists():
            i += 1
        other = target.with_name(f"{target.name}_{i}")
        warnings.warn(f"{err} -- it was created while this run trained; saved this run as {other} instead")
        return save_pretrained(model, other, manifest, force=False, **kw)


@dataclass
class _AERecipeOwn:
    """The settings a first-stage recipe adds to the autoencoder's, its loss's and the training's."""

    data: str = setting("openmoji", "openmoji | shapes | fashion | photos | a mixture such as shapes+fashion@32 | "
                                    "an image folder")
    size: int = setting(64, "image size (side, px)")
    steps: int = setting(2000, "optimisation steps")
    lr: float = setting(4e-4, "learning rate (Adam)", type="positive")
    eval_images: int = setting(256, "held-out images of the final PSNR / SSIM")
    crop: int | None = setting(None, "train on random crops of this size (faster; evaluation uses whole images)")
    init_from: str | None = setting(None, "start from this exported autoencoder's weights (same architecture), e.g. "
                                          "ae_kl_f4_openmoji64")
    train_part: str = setting("all", "decoder: freeze encoder and quantiser so the latents (and the LDMs trained on "
                                     "them) are kept", choices=("all", "decoder"))

    def __post_init__(self):
        if self.ch_mult is not None:
            self.ch_mult = tuple(self.ch_mult)
        if self.ema_decay == 0:
            self.ema_decay = None  # 0 turns the EMA off
        if self.train_part not in ("all", "decoder"):
            raise ValueError(f"train_part must be 'all' or 'decoder', got {self.train_part!r}")
        if self.train_part == "decoder" and not self.init_from:
            raise ValueError("train_part='decoder' fine-tunes the decoder of an existing autoencoder: pass init_from "
                             "(--init-from NAME) too; a fresh encoder would stay random")

    def settings_of(self, part: str) -> dict:
        """The recipe's fields that come from the config class named ``part``, by name."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.metadata.get("part") == part}

    def autoencoder_config(self) -> AutoencoderConfig:
        return AutoencoderConfig(**self.settings_of("AutoencoderConfig"),
                                 dead_code_threshold=0.01 if self.reg == "vq" else 0.0)

    def loss_config(self) -> AELossConfig:
        return AELossConfig(**self.settings_of("AELossConfig"))

    def train_config(self, out_dir: str | None = None, ckpt_every: int | None = None,
                     progress: bool = True) -> TrainConfig:
        return TrainConfig(max_steps=self.steps, out_dir=out_dir, ckpt_every=ckpt_every, progress=progress,
                           find_unused_parameters=self.disc_start < self.steps, **self.settings_of("TrainConfig"))


AERecipe = recipe_dataclass(
    "AERecipe", _AERecipeOwn,
    parts={AutoencoderConfig: ("embed_dim", "in_channels", "beta", "dead_code_threshold"), AELossConfig: (),
           TrainConfig: ("max_steps", "out_dir", "ckpt_every", "progress", "device", "ddp", "find_unused_parameters")},
    defaults=dict(ch=32, z_channels=4, n_embed=256, batch_size=16),
    doc="""Hyper-parameters of a first-stage run: the data (``data`` ... ``train_part``), then the settings of
    :class:`~ldm_lite.autoencoder.AutoencoderConfig` (the architecture), :class:`~ldm_lite.autoencoder.losses.AELossConfig`
    (the loss) and :class:`~ldm_lite.train.TrainConfig` (``steps`` is its ``max_steps``), each described where it is
    defined. Defaults: small, CPU-friendly.""")


def make_ae_loss(recipe: AERecipe, perceptual=None):
    """The first-stage loss of a recipe (``perceptual`` may pass a shared PerceptualLoss object)."""
    return recipe.loss_config().build(recipe.reg, perceptual)


def _eval_callback(autoencoder, images: torch.Tensor, every: int):
    """A Trainer callback: every ``every`` steps, held-out PSNR/SSIM into the step's logs (and printed)."""
    def callback(trainer, logs):
        if logs["step"] % every == 0 or logs["step"] == trainer.config.max_steps:
            m = evaluate_reconstruction(autoencoder, images)
            logs["val/psnr"], logs["val/ssim"] = m["psnr"], m["ssim"]
            if trainer.config.progress:
                write(f"step {logs['step']}: held-out PSNR {m['psnr']:.2f} dB, SSIM {m['ssim']:.3f}")

    return callback


def train_autoencoder(recipe: AERecipe, out_dir: str | None = None, ckpt_every: int | None = None,
                      resume: bool = False, progress: bool = True, export: str | None = None,
                      perceptual=None, callbacks=(), command: str | None = None, eval_every: int | None = None,
                      force: bool = False) -> dict:
    """Train a first-stage autoencoder with the recipe; evaluate PSNR/SSIM on held-out images.

    ``eval_every``: also measure held-out PSNR/SSIM (on up to 64 test images) every that many steps,
    logged as ``val/psnr`` and ``val/ssim`` in the history.

    Returns dict(autoencoder (eval mode, EMA weights if used), history, metrics, wall_time_s, recipe).
    With ``export`` (a path or a name under ``data/pretrained/``) the weights are saved in float16 with
    a JSON manifest recording data, command, steps, wall time and held-out metrics; an existing checkpoint of
    that name is replaced only with ``force=True``. Both ``out_dir`` and ``export`` are checked (writable, not
    taken) before any data are loaded, as are the data name and ``init_from`` (kind and architecture). While the
    run trains it holds ``out_dir``'s run lock (:func:`ldm_lite.train.lock.acquire_run_lock`): a second run on the same
    folder is refused, naming this one's pid.
    """
    check_dataset(recipe.data)
    if recipe.init_from:
        _check_ae_init(recipe)
    with _run_folder(out_dir, resume):
        return _train_autoencoder(recipe, out_dir, ckpt_every, resume, progress, export, perceptual, callbacks,
                                  command, eval_every, force)


def _train_autoencoder(recipe, out_dir, ckpt_every, resume, progress, export, perceptual, callbacks, command,
                       eval_every, force) -> dict:
    """:func:`train_autoencoder` after its checks, with the run lock held."""
    target = check_export_target(export, force) if export else None
    torch.manual_seed(recipe.seed)
    train_set = load_dataset(recipe.data, recipe.size, "train", seed=recipe.seed)
    if recipe.crop:
        train_set = RandomCrops(train_set, recipe.crop)
    test_images = stack_images(load_dataset(recipe.data, recipe.size, "test", seed=recipe.seed), recipe.eval_images)
    autoencoder = build_autoencoder(recipe.autoencoder_config())
    init_report = init_autoencoder_from(autoencoder, recipe) if recipe.init_from else None
    loss = make_ae_loss(recipe, perceptual)
    module = AutoencoderModule(autoencoder, loss, lr=recipe.lr)
    cfg = recipe.train_config(out_dir=out_dir, ckpt_every=ckpt_every, progress=progress)
    callbacks = list(callbacks)
    if eval_every:
        callbacks.append(_eval_callback(autoencoder, test_images[:64], eval_every))
    trainer = Trainer(module, train_set, cfg, callbacks=callbacks, recipe=_trainer_recipe(recipe),
                      command=_command(command))
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
        if init_report:
            manifest["init_from"] = init_report
        result["weights"] = str(_save_export(autoencoder, target, manifest, force))
    return result


def _check_ae_init(recipe: AERecipe) -> Path:
    """``recipe.init_from``'s base path, checked from its manifest alone: an autoencoder with the recipe's
    architecture."""
    base = check_checkpoint(recipe.init_from, "autoencoder", f"init_from={recipe.init_from!r}")
    want = recipe.autoencoder_config().to_dict()
    have = load_manifest(base)["config"]
    diffs = [f"{k}: {have.get(k)!r} there, {v!r} here" for k, v in want.items() if k in have and have[k] != v]
    if diffs:
        raise ValueError(f"init_from={recipe.init_from!r} has a different architecture ({'; '.join(diffs)}); pass "
                         "the same --f / --reg / --ch / --num-res-blocks / --z-channels as that model")
    return base


def init_autoencoder_from(autoencoder, recipe: AERecipe) -> dict:
    """Load ``recipe.init_from``'s weights into ``autoencoder`` (configs must match); with
    ``recipe.train_part == "decoder"`` freeze everything that makes the latent: encoder, ``quant_conv`` and,
    for VQ, the codebook. The latents then stay bit-identical, so diffusion models trained on the source
    autoencoder keep working with the fine-tuned decoder (the Stable Diffusion VAE decoders "ft-EMA" /
    "ft-MSE" were made this way). Returns a record for the manifest (source, its sha256, what was frozen)."""
    base = _check_ae_init(recipe)
    autoencoder.load_state_dict(load_state_dict(base))
    frozen = []
    if recipe.train_part == "decoder":
        for name, module in autoencoder.named_children():
            if name in ("encoder", "quant_conv", "quantize"):
                module.requires_grad_(False)
                frozen.append(name)
    return dict(name=str(recipe.init_from), sha256=sha256_file(base.with_suffix(".safetensors")),
                train_part=recipe.train_part, frozen=frozen)


# --------------------------------------------------------------------------------------------------
# Latent diffusion (chapters 04, 06, 07): a UNet trained in the latent space of a frozen autoencoder
# --------------------------------------------------------------------------------------------------
CONDS = (None, "class", "class-adm", "text", "text-frozen", "layout")


@dataclass
class _LDMRecipeOwn:
    """The settings a latent diffusion recipe adds to the model's and the training's: data, conditioning presets
    and evaluation."""

    data: str = setting("shapes", "openmoji | shapes | fashion | photos | a mixture such as shapes+fashion@32 | an "
                                  "image folder")
    size: int = setting(64, "image size (side, px)")
    first_stage: str = setting("auto", "auto | pixel | a shipped autoencoder's name | a checkpoint path")
    train_images: int | None = setting(None, "number of training images (default: all; shapes: 50,000)")
    cond: str | None = setting(None, "class: labels via a ClassEmbedder into cross-attention; class-adm: labels added "
                                     "to the time embedding; text: captions via a transformer trained with the UNet; "
                                     "text-frozen: captions via a frozen encoder (--text-encoder); layout: boxes + "
                                     "classes (shapes)", choices=CONDS[1:])
    num_classes: int | None = setting(None, "cond class: number of classes (default: the dataset's)", flag=False)
    context_dim: int | None = setting(None, "width of a custom cond stage's output", flag=False)
    cond_dim: int = setting(128, "--cond class / text / layout: width of the trained cond stage")
    cond_depth: int = setting(2, "--cond text / layout: transformer blocks of the trained cond stage")
    text_encoder: str = setting("minilm", "--cond text-frozen: minilm (offline, the default) | "
                                          "openai/clip-vit-large-patch14 (if cached) | a folder")
    max_length: int = setting(32, "tokens per caption")
    holdout: tuple[str, ...] = setting((), "--data shapes (or a mixture with shapes): 'colour shape' pairs never "
                                           "trained on, e.g. 'purple triangle,green cross'", type="list")
    captions: str | None = setting(None, "--cond text / text-frozen on an image folder: its captions, a .jsonl file "
                                         'with a line {"file": "relative/path.png", "caption": "..."} per image, or a '
                                         ".csv with the header file,caption", metavar="FILE")
    init_from: str | None = setting(None, "start the UNet from this exported LDM where shapes match (fine-tune, e.g. "
                                          "ldm_openmoji64)")
    task: str | None = setting(None, "spatial conditioning concatenated with z_t (chapter 07): sr = super-resolution "
                                     "from a --sr-factor smaller image; inpaint = masked image + hole mask; semantic = "
                                     "segmentation map (shapes)", choices=TASKS)
    sr_factor: int = setting(4, "--task sr: downsampling factor of the input, a power of two", type="power2")
    degradation: str = setting("bicubic", "--task sr: bicubic (the paper's x4 ImageNet setting) or bsr (blur + noise "
                                          "+ JPEG)", choices=DEGRADATIONS)
    mask_fraction: float = setting(0.3, "--task inpaint: share of hole pixels in the training masks, in (0, 0.95)",
                                   type="float", low=0, high=0.95, open=True)
    steps: int = setting(3000, "optimisation steps")
    eval_images: int = setting(64, "held-out images of the final val_loss")

    def __post_init__(self):
        self.channel_mult = tuple(self.channel_mult)
        self.attention_resolutions = tuple(self.attention_resolutions)
        self.holdout = tuple(self.holdout)
        if self.weighting == "none":
            self.weighting = None
        if self.ema_decay == 0:
            self.ema_decay = None  # 0 turns the EMA off
        if self.cond not in CONDS:
            raise ValueError(
                f"LDMRecipe.cond must be one of {CONDS}, got {self.cond!r}; for spatial conditions (concat) "
                "pass cond_stage=... to train_ldm and set conditioning_key / cond_key"
            )
        if self.task is not None:
            if self.task not in TASKS:
                raise ValueError(f"LDMRecipe.task must be one of {TASKS} (or None), got {self.task!r}")
            if self.cond is not None:
                raise ValueError(f"task={self.task!r} conditions on a spatial map by concatenation; it cannot be "
                                 f"combined with cond={self.cond!r} here (leave cond=None)")
            if self.task == "semantic" and self.data != "shapes":
                raise ValueError(f"task='semantic' needs segmentation maps: use data='shapes' (got {self.data!r})")
            if self.degradation not in DEGRADATIONS:
                raise ValueError(f"degradation must be one of {DEGRADATIONS}, got {self.degradation!r}")
            if self.sr_factor < 1 or self.sr_factor & (self.sr_factor - 1):
                raise ValueError(f"sr_factor must be a power of two (4 for the paper's ×4 SR), got {self.sr_factor}")
        if self.cond == "layout" and self.data != "shapes":
            raise ValueError(f"cond='layout' needs boxes with classes: use data='shapes' (got {self.data!r})")
        if not (isinstance(self.cond_drop_prob, (int, float)) and math.isfinite(self.cond_drop_prob)
                and 0 <= self.cond_drop_prob < 1):
            raise ValueError(f"LDMRecipe.cond_drop_prob must be in [0, 1) -- the share of training examples whose "
                             f"condition is dropped for classifier-free guidance (the paper: 0.1) -- got "
                             f"{self.cond_drop_prob!r}")
        for name in ("steps", "batch_size", "size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"LDMRecipe.{name} must be a positive int, got {value!r}")
        if self.train_images is not None and (not isinstance(self.train_images, int) or self.train_images < 1):
            raise ValueError(f"LDMRecipe.train_images must be at least 1 (None = the whole dataset, 50,000 for "
                             f"shapes), got {self.train_images!r}")
        if self.task == "inpaint" and not (isinstance(self.mask_fraction, (int, float))
                                           and 0 < self.mask_fraction < 0.95):
            raise ValueError(f"LDMRecipe.mask_fraction (the share of hole pixels in the training masks) must lie "
                             f"in (0, 0.95), got {self.mask_fraction!r}")
        parse_holdout(self.holdout)  # 'colour shape' pairs, checked now rather than when the data are loaded
        if self.holdout and not _has_shapes(self.data):
            raise ValueError(f"LDMRecipe.holdout keeps (colour, shape) pairs out of shapes images: use data='shapes' "
                             f"or a mixture with a shapes part (e.g. 'shapes+fashion'); {self.data!r} has no such "
                             "labels")
        if self.captions is not None and self.cond not in ("text", "text-frozen"):
            raise ValueError(f"LDMRecipe.captions are read for cond='text' or 'text-frozen' only (cond={self.cond!r})")
        try:  # every part checks its own values now, not when the model is built after the data are loaded
            self.part("ScheduleConfig"), self.part("ObjectiveConfig"), self.part("OptimizerConfig")
            self.train_config()
        except ValueError as err:
            raise ValueError(f"LDMRecipe: {err}") from None

    def part(self, name: str) -> object:
        """The recipe's values for one config part (``"ScheduleConfig"``, ``"ObjectiveConfig"`` ...), built."""
        return _RECIPE_PARTS[name](**self.settings_of(name))

    def settings_of(self, part: str) -> dict:
        """The recipe's fields that come from the config class named ``part``, by name."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.metadata.get("part") == part}

    def unet_config(self, in_channels: int, out_channels: int, num_classes: int | None = None,
                    context_dim: int | None = None) -> UNetConfig:
        return UNetConfig(in_channels=in_channels, out_channels=out_channels, num_classes=num_classes,
                          context_dim=context_dim, **self.settings_of("UNetConfig"))

    def train_config(self, out_dir: str | None = None, ckpt_every: int | None = None,
                     progress: bool = True) -> TrainConfig:
        return TrainConfig(max_steps=self.steps, out_dir=out_dir, ckpt_every=ckpt_every, progress=progress,
                           **self.settings_of("TrainConfig"))


_RECIPE_PARTS = {cls.__name__: cls for cls in (UNetConfig, ScheduleConfig, ObjectiveConfig, OptimizerConfig,
                                               FirstStageConfig, ConditioningConfig, LDMConfig, TrainConfig)}

LDMRecipe = recipe_dataclass(
    "LDMRecipe", _LDMRecipeOwn,
    parts={UNetConfig: ("in_channels", "out_channels", "context_dim", "num_classes"),
           ScheduleConfig: ("betas",), ObjectiveConfig: (), OptimizerConfig: (),
           FirstStageConfig: ("name", "autoencoder", "latent_channels", "f"),
           ConditioningConfig: ("cond_stage",),
           LDMConfig: ("unet", "first_stage", "conditioning", "schedule", "objective", "optimizer", "image_size"),
           TrainConfig: ("max_steps", "out_dir", "ckpt_every", "progress", "device", "ddp", "find_unused_parameters")},
    defaults=dict(model_channels=64, channel_mult=(1, 2, 2), num_res_blocks=2, attention_resolutions=(2, 4),
                  num_head_channels=32, scale_by_std=True, cond_drop_prob=0.1, lr=2e-4, batch_size=32,
                  lr_warmup_steps=100, ema_decay=0.999),
    doc="""Hyper-parameters of a latent (or pixel-space) diffusion run. Defaults: small, CPU-friendly.

    A recipe is the data and conditioning choices of its own (``data`` ... ``eval_images``), followed by the
    settings of the model's config parts -- :class:`~ldm_lite.unet.UNetConfig` (less the channels the data and the
    conditioning fix), :class:`~ldm_lite.ldm_config.ScheduleConfig`, ``ObjectiveConfig``, ``OptimizerConfig``,
    ``posterior``, ``ConditioningConfig``, ``scale_factor`` / ``scale_by_std`` / ``t_buckets`` -- and of
    :class:`~ldm_lite.train.TrainConfig` (``steps`` is its ``max_steps``), each described where it is defined.

    ``first_stage``: a shipped / exported autoencoder (name or path), ``"pixel"`` (a pixel-space DM,
    same code) or ``"auto"`` (the shipped autoencoder trained on ``data`` at ``size``, KL f=4 preferred).
    ``train_images``: how many training images (procedural data: how many are generated; other
    datasets: the first N); ``None`` = the dataset's own size (50,000 for shapes).
    ``cond`` -- what the model is conditioned on (Sec. 3.3), with the null condition of classifier-free
    guidance dropped in with probability ``cond_drop_prob``:

    ================  ======================================================================================
    ``None``          unconditional
    ``"class"``       the dataset's ``label`` through a :class:`~ldm_lite.conditioning.ClassEmbedder` into
                      cross-attention (the paper's ImageNet model); null = an extra class
    ``"class-adm"``   the label through the UNet's class embedding added to the time embedding (ADM)
    ``"text"``        the ``caption`` through a :class:`~ldm_lite.conditioning.TransformerEmbedder` trained
                      with the UNet (the paper's text-to-image model); null = ``""``
    ``"text-frozen"`` the ``caption`` through a frozen :class:`~ldm_lite.conditioning.FrozenTextEncoder`
                      (``text_encoder``: MiniLM offline, or CLIP when present); null = ``""``
    ``"layout"``      the ``layout`` (boxes + classes) through a :class:`~ldm_lite.conditioning.LayoutEmbedder`
                      (the paper's layout-to-image model); null = the empty layout
    ================  ======================================================================================

    ``cond_dim`` / ``cond_depth``: width and depth of a trained cond stage. ``holdout``: ``"colour shape"``
    pairs kept out of the shapes training set (also of the shapes part of a mixture such as ``shapes+fashion``).
    ``captions``: the captions file of an image-folder ``data`` for text conditioning (``.jsonl`` lines
    ``{"file": "relative/path.png", "caption": "..."}`` or ``.csv`` with a header ``file,caption``).
    Other conditionings (concat ...) pass a ``cond_stage`` to :func:`train_ldm` and set ``conditioning_key`` /
    ``cond_key`` / ``context_dim`` / ``unconditional_value``.
    """)


def find_autoencoder(data: str, size: int) -> str:
    """The name of the shipped autoencoder trained on ``data`` at ``size`` (KL f=4 preferred)."""
    def trained_on(m) -> bool:
        d = m.get("data", {})
        parts = [_parse_part(p, d.get("size")) for p in str(d.get("name", "")).split("+")]
        return (data, size) in parts

    found = [m for m in list_pretrained() if m.get("kind") == "autoencoder" and trained_on(m)]
    if not found:
        import re

        stem = re.sub(r"[^A-Za-z0-9]+", "_", Path(data).name or data).strip("_") or "data"  # a folder: its name
        raise FileNotFoundError(
            f"no shipped autoencoder for data={data!r} at size {size} in data/pretrained/; train one with "
            f"`ldm-lite train-ae --data {shlex.quote(data)} --size {size} --f 4 --export ae_kl_f4_{stem}{size}`, or "
            "choose another first stage (the name or path of an autoencoder checkpoint, or 'pixel')"
        )
    found.sort(key=lambda m: (m["config"].get("reg") != "kl", m["config"].get("f") != 4, m["name"]))
    return found[0]["name"]


def _resolve_first_stage(recipe: LDMRecipe, first_stage):
    """-> (autoencoder module or None, the name recorded in the manifest or None for an in-memory model)."""
    choice = recipe.first_stage if first_stage is None else first_stage
    if isinstance(choice, torch.nn.Module):
        return choice, None
    if choice in (None, "pixel"):
        return None, "pixel"
    if choice == "auto":
        choice = find_autoencoder(recipe.data, recipe.size)
    base = resolve(choice)
    name = base.name if base.parent == PRETRAINED_DIR else str(base.resolve())
    return load_autoencoder(base), name


def make_cond_stage(recipe: LDMRecipe, num_classes: int | None = None, vocabulary: Sequence[int] | None = None):
    """The cond stage of ``recipe.cond`` and how it enters the model: ``(module, settings)`` with settings
    ``conditioning_key``, ``cond_key``, ``context_dim``, ``unconditional_value``, ``cond_stage_trainable``."""
    cond = recipe.cond
    if cond == "class":
        if num_classes is None:
            raise ValueError("cond='class' needs the number of classes: set LDMRecipe.num_classes")
        module = ClassEmbedder(num_classes, recipe.cond_dim)
        return module, dict(conditioning_key="crossattn", cond_key=recipe.cond_key or "label",
                            context_dim=recipe.cond_dim, unconditional_value=module.null_class,
                            cond_stage_trainable=True)
    if cond == "text":
        module = TransformerEmbedder(recipe.cond_dim, depth=recipe.cond_depth, max_length=recipe.max_length,
                                     vocabulary=vocabulary)
        return module, dict(conditioning_key="crossattn", cond_key=recipe.cond_key or "caption",
                            context_dim=recipe.cond_dim, unconditional_value="", cond_stage_trainable=True)
    if cond == "text-frozen":
        module = FrozenTextEncoder(recipe.text_encoder, max_length=recipe.max_length, cache_size=20_000)
        return module, dict(conditioning_key="crossattn", cond_key=recipe.cond_key or "caption",
                            context_dim=module.embed_dim, unconditional_value="", cond_stage_trainable=False)
    if cond == "layout":
        module = LayoutEmbedder(embed_dim=recipe.cond_dim, depth=max(1, recipe.cond_depth - 1))
        return module, dict(conditioning_key="crossattn", cond_key=recipe.cond_key or "layout",
                            context_dim=recipe.cond_dim, unconditional_value=LayoutEmbedder.empty(MAX_OBJECTS),
                            cond_stage_trainable=True)
    raise ValueError(f"recipe.cond={cond!r} has no cond stage")


def make_spatial_stage(recipe: LDMRecipe, first_stage=None):
    """The cond stage of a spatial ``recipe.task`` (concatenated with z_t, Sec. 3.3): ``(module or None,
    settings, extra input channels of the UNet)``.

    ============  ==========================================================================================
    ``"sr"``      ``lr_image`` (×``sr_factor`` smaller) at the latent size: no cond stage when the factor is
                  f (the paper's LDM-SR: f = 4, ×4), else a parameter-free :class:`SpatialRescaler`; +3 ch.
    ``"inpaint"`` ``masked_image`` (encoded by the first stage) + ``hole_mask`` (max-pooled to the latent
                  size): :class:`InpaintConcat`; + c + 1 channels (c latent channels).
    ``"semantic"`` ``segmentation`` -> one-hot (background + 6 shapes) -> :class:`SemanticEncoder` (bilinear
                  to the latent size + a learned 1×1 convolution to c channels); + c channels.
    ============  ==========================================================================================
    Concatenated conditions are never dropped (no guidance), as in the paper's SR / inpainting / semantic models.
    """
    f = int(first_stage.config.f) if first_stage is not None else 1
    latent_ch = first_stage.embed_dim if first_stage is not None else 3
    base = dict(conditioning_key="concat", unconditional_value=None)
    if recipe.task == "sr":
        ratio = recipe.sr_factor / f  # the LR image is ratio times smaller than the latent
        if ratio == 1:
            module = None
        else:
            stages = int(round(abs(math.log2(ratio))))
            module = SpatialRescaler(stages, 3, None, method="bicubic" if ratio > 1 else "area",
                                     multiplier=2.0 if ratio > 1 else 0.5)
        return module, dict(base, cond_key=recipe.cond_key or "lr_image", cond_stage_trainable=False), 3
    if recipe.task == "inpaint":
        if first_stage is None:
            raise ValueError("task='inpaint' here encodes the masked image with the first stage; use an autoencoder "
                             "(first_stage='auto' or a name), not 'pixel'")
        return (InpaintConcat(f), dict(base, cond_key=("masked_image", "hole_mask"), cond_stage_trainable=False),
                latent_ch + 1)
    stages = int(round(math.log2(f)))
    module = SemanticEncoder(1 + len(SHAPES), stages, latent_ch)
    return module, dict(base, cond_key=recipe.cond_key or "segmentation", cond_stage_trainable=True), latent_ch


def build_ldm(recipe: LDMRecipe, first_stage=None, cond_stage: torch.nn.Module | None = None,
              num_classes: int | None = None, vocabulary: Sequence[int] | None = None):
    """The :class:`~ldm_lite.ldm.LatentDiffusion` of a recipe: first stage (module, ``"pixel"``, name),
    a UNet sized for its latents, the conditioning and the schedule. ``num_classes`` for ``cond="class"``;
    ``vocabulary`` (WordPiece ids to keep) for ``cond="text"``."""
    ae = first_stage if isinstance(first_stage, torch.nn.Module) or first_stage is None else None
    if ae is None and first_stage is not None:
        raise TypeError("build_ldm takes an autoencoder module or None; resolve names with train_ldm / load_autoencoder")
    latent_ch = ae.embed_dim if ae is not None else 3
    kw = dict(conditioning_key=recipe.conditioning_key, cond_key=recipe.cond_key,
              unconditional_value=recipe.unconditional_value, cond_stage_trainable=recipe.cond_stage_trainable)
    unet_classes, context_dim, in_ch = None, recipe.context_dim, latent_ch
    if recipe.cond in ("class", "text", "text-frozen", "layout"):
        if cond_stage is not None:
            raise ValueError(f"recipe.cond={recipe.cond!r} builds its own cond stage; pass cond_stage=None "
                             "(or recipe.cond=None with conditioning_key / cond_key / context_dim for your own)")
        cond_stage, settings = make_cond_stage(recipe, num_classes, vocabulary)
        kw.update({k: settings[k] for k in ("conditioning_key", "cond_key", "unconditional_value",
                                            "cond_stage_trainable")})
        context_dim = settings["context_dim"]
    if recipe.task is not None:
        if cond_stage is not None:
            raise ValueError(f"recipe.task={recipe.task!r} builds its own cond stage; pass cond_stage=None")
        cond_stage, settings, extra_ch = make_spatial_stage(recipe, ae)
        kw.update({k: settings[k] for k in ("conditioning_key", "cond_key", "unconditional_value",
                                            "cond_stage_trainable")})
        in_ch = latent_ch + extra_ch
    if recipe.cond == "class-adm":
        if num_classes is None:
            raise ValueError("cond='class-adm' needs the number of classes: set LDMRecipe.num_classes")
        unet_classes = num_classes + 1  # the last class is the null class of classifier-free guidance
        kw.update(conditioning_key="adm", cond_key=recipe.cond_key or "label", unconditional_value=num_classes)
    if kw["conditioning_key"] in ("concat", "hybrid") and recipe.task is None:
        raise ValueError("concat / hybrid recipes need the condition's channels; build the LatentDiffusion by hand "
                         "(UNetModel(in_channels=latent + condition channels, ...))")
    if kw["conditioning_key"] not in ("crossattn", "hybrid"):
        context_dim = None
    elif context_dim is None:
        raise ValueError(f"conditioning_key={kw['conditioning_key']!r} needs LDMRecipe.context_dim (the cond stage's width)")
    unet = UNetModel.from_config(recipe.unet_config(in_ch, latent_ch, unet_classes, context_dim))
    return LatentDiffusion(
        ae, unet, cond_stage, schedule=recipe.part("ScheduleConfig").build(),
        **recipe.settings_of("ObjectiveConfig"), **recipe.settings_of("OptimizerConfig"), posterior=recipe.posterior,
        scale_factor=recipe.scale_factor, scale_by_std=recipe.scale_by_std and ae is not None,
        cond_drop_prob=recipe.cond_drop_prob if kw["conditioning_key"] not in (None, "concat") else 0.0,
        image_size=recipe.size, t_buckets=recipe.t_buckets, **kw,
    )


@torch.no_grad()
def _task_kwargs(recipe) -> dict:
    return dict(factor=recipe.sr_factor, degradation=recipe.degradation, mask_fraction=recipe.mask_fraction)


def recipe_test_set(recipe):
    """The held-out set a recipe's ``val_loss`` is measured on: the dataset's test split, and for a spatial
    ``task`` each image with its condition (low-resolution image / hole mask / segmentation) drawn from
    ``seed + 1``. ``recipe`` is an :class:`LDMRecipe` or a manifest's ``"recipe"`` dict."""
    if isinstance(recipe, dict):
        known = {f.name for f in fields(LDMRecipe)}
        recipe = LDMRecipe(**{k: v for k, v in recipe.items() if k in known})
    is_procedural = recipe.data in ("shapes", "photos")
    test_set = load_dataset(recipe.data, recipe.size, "test", seed=recipe.seed,
                            length=recipe.eval_images if is_procedural else None, captions=recipe.captions)
    if recipe.task is not None:
        test_set = SpatialTaskDataset(test_set, recipe.task, seed=recipe.seed + 1, **_task_kwargs(recipe))
    return test_set


def evaluate_ldm_loss(model, dataset, n: int = 64, batch_size: int = 32, seed: int = 0) -> float:
    """The diffusion loss (Eq. 2, unweighted) on the first ``n`` samples of ``dataset``, at fixed timesteps
    and noise drawn from ``seed`` (no condition dropout): comparable across runs and checkpoints."""
    from torch.utils.data import DataLoader, Subset

    was = model.training
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    total, count = 0.0, 0
    try:
        for batch in DataLoader(Subset(dataset, range(min(n, len(dataset)))), batch_size=batch_size):
            z = model.get_input(batch)
            c = model.get_condition(batch, drop=False)
            t = torch.randint(0, model.schedule.num_timesteps, (z.shape[0],), generator=gen)
            noise = torch.randn(z.shape, generator=gen).to(z)
            _, logs = model.p_losses(z, c, t=t.to(z.device), noise=noise)
            total += float(logs["loss_per_sample"].sum())
            count += z.shape[0]
    finally:
        model.train(was)
    return total / max(count, 1)


def train_ldm(recipe: LDMRecipe, first_stage=None, out_dir: str | None = None, ckpt_every: int | None = None,
              resume: bool = False, progress: bool = True, export: str | None = None, cache_latents: bool = True,
              callbacks=(), command: str | None = None, cond_stage: torch.nn.Module | None = None,
              force: bool = False) -> dict:
    """Train a latent diffusion model (or a pixel-space one) with the recipe.

    ``first_stage``: overrides ``recipe.first_stage``: a shipped checkpoint's name or a path, ``"pixel"``,
    ``"auto"``, or an autoencoder module. ``cache_latents``: encode the training set once
    (:meth:`LatentDiffusion.encode_dataset`) and train on the latents, skipping the encoder each step.
    ``cond_stage``: a conditioning module for text / layout (with the recipe's ``conditioning_key``,
    ``cond_key``, ``context_dim``).

    Returns dict(model (eval mode, EMA weights if used), history, metrics (held-out ``val_loss``),
    wall_time_s (training), encode_time_s (caching), recipe, first_stage (its name)). With ``export`` (a
    path or a name under ``data/pretrained/``) the UNet (+ trainable cond stage) and the scale factor are
    saved in float16 with a manifest ``kind="ldm"`` naming the first-stage checkpoint; an in-memory first
    stage is exported next to it as ``<export>_first_stage``. Load with :func:`ldm_lite.pretrained.load_ldm`.
    The manifest records the first stage's f, latent channels and the sha256 of its weights (as they were when
    training started), which ``load_ldm`` checks. An existing checkpoint of the export's name is replaced only
    with ``force=True``; it, and a writable ``out_dir``, are checked before any data are loaded, as are the
    data name, the captions of text conditioning and the kinds of the first stage and ``init_from``. While the run
    trains it holds ``out_dir``'s run lock (:func:`ldm_lite.train.lock.acquire_run_lock`): a second run on the same
    folder is refused, naming this one's pid.
    """
    _check_ldm_inputs(recipe, first_stage)
    with _run_folder(out_dir, resume):
        return _train_ldm(recipe, first_stage, out_dir, ckpt_every, resume, progress, export, cache_latents,
                          callbacks, command, cond_stage, force)


def _train_ldm(recipe, first_stage, out_dir, ckpt_every, resume, progress, export, cache_latents, callbacks,
               command, cond_stage, force) -> dict:
    """:func:`train_ldm` after its checks, with the run lock held."""

    from torch.utils.data import Subset

    export_base = fs_target = None
    if export:
        export_base = check_export_target(export, force)
        if isinstance(first_stage, torch.nn.Module):  # exported alongside
            fs_target = check_export_target(export_base.with_name(export_base.name + "_first_stage"), force)
    torch.manual_seed(recipe.seed)
    ae, fs_name = _resolve_first_stage(recipe, first_stage)
    fs_record = first_stage_record(fs_name) if fs_name not in (None, "pixel") else {}
    is_procedural = recipe.data in ("shapes", "photos")
    train_set = load_dataset(recipe.data, recipe.size, "train", seed=recipe.seed,
                             length=recipe.train_images if is_procedural else None, holdout=recipe.holdout,
                             captions=recipe.captions)
    if recipe.train_images is not None and not is_procedural and len(train_set) > recipe.train_images:
        train_set = Subset(train_set, range(recipe.train_images))
    test_set = recipe_test_set(recipe)
    if recipe.task is not None:  # each image with its low-resolution version / hole mask / segmentation
        train_set = SpatialTaskDataset(train_set, recipe.task, seed=recipe.seed, **_task_kwargs(recipe))
    num_classes = recipe.num_classes
    if recipe.cond in ("class", "class-adm") and num_classes is None:
        names = getattr(getattr(train_set, "dataset", train_set), "class_names", None)
        if not names:
            raise ValueError(
                f"cond='class' needs a dataset with a 'label' field and class names; {recipe.data!r} has none "
                "(use data='fashion', an image folder with labels, or set LDMRecipe.num_classes)"
            )
        num_classes = len(names)
    vocabulary = None
    if recipe.cond == "text":
        vocabulary = _training_vocabulary(train_set, recipe.max_length)
    model = build_ldm(recipe, ae, cond_stage, num_classes, vocabulary)
    init_report = None
    if recipe.init_from:
        init_report = init_unet_from(model, recipe.init_from)

    encode_time = 0.0
    data = train_set
    if cache_latents:
        t0 = time.perf_counter()
        data = _cached_latents(model, train_set, recipe, fs_name, fs_record, out_dir, progress)
        encode_time = time.perf_counter() - t0
    cfg = recipe.train_config(out_dir=out_dir, ckpt_every=ckpt_every, progress=progress)
    trainer = Trainer(model, data, cfg, callbacks=list(callbacks), recipe=_trainer_recipe(recipe),
                      command=_command(command))
    t0 = time.perf_counter()
    history = trainer.fit(resume=resume)
    wall = time.perf_counter() - t0
    if recipe.ema_decay is not None:
        target = model.ema_module()
        with trainer.swap_ema():
            state = {k: v.clone() for k, v in target.state_dict().items()}
        target.load_state_dict(state)
    model.eval()
    metrics = dict(val_loss=evaluate_ldm_loss(model, test_set, n=recipe.eval_images, seed=recipe.seed))
    result = dict(model=model, history=history, metrics=metrics, wall_time_s=wall, encode_time_s=encode_time,
                  recipe=recipe, first_stage=fs_name, scale_factor=float(model.scale_factor))
    if export:
        import warnings

        if ae is not None and fs_name is None:  # an in-memory first stage: export it alongside
            if fs_target is None:  # (checked before training when it was passed as first_stage=)
                fs_target = check_export_target(export_base.with_name(export_base.name + "_first_stage"), force,
                                                note="")
            fs_target = _save_export(ae, fs_target, dict(
                kind="autoencoder", config=ae.config.to_dict(), data=dict(name=recipe.data, size=recipe.size),
                note=f"first stage of the LDM {export_base.name}", date=datetime.date.today().isoformat()), force)
            fs_target = fs_target.with_suffix("")
            fs_name = fs_target.name
            fs_record = first_stage_record(fs_target)
        elif fs_record and first_stage_record(fs_name) != fs_record:
            warnings.warn(
                f"the first stage {fs_name} was replaced while this LDM trained; the manifest records the weights it "
                "was trained on, so load_ldm will refuse the new ones until the original first stage is restored")
        if fs_name not in (None, "pixel") and Path(fs_name).is_absolute():
            try:  # a path next to the export travels with it
                fs_name = str(Path(fs_name).relative_to(export_base.parent.resolve()))
            except ValueError:
                pass
        manifest = dict(
            ldm_manifest(model, fs_name, fs_record),
            data=dict(name=recipe.data, size=recipe.size, train_images=len(train_set),
                      eval=f"diffusion loss on the first {recipe.eval_images} held-out images, fixed t and noise"),
            recipe={k: (list(v) if isinstance(v, tuple) else _jsonable(v)) for k, v in recipe.__dict__.items()},
            command=command or " ".join(shlex.quote(a) for a in sys.argv),
            steps=recipe.steps, wall_time_s=round(wall, 1), encode_time_s=round(encode_time, 1),
            init_from=init_report, cached_latents=bool(cache_latents), device=str(trainer.device), torch_threads=torch.get_num_threads(),
            torch=torch.__version__, metrics={k: round(v, 5) for k, v in metrics.items()},
            final_train_logs={k: round(v, 5) for k, v in history[-1].items()} if history else {},
            date=datetime.date.today().isoformat(),
        )
        result["weights"] = str(_save_export(ldm_export_module(model), export_base, manifest, force))
    return result


def init_unet_from(model, source: str) -> dict:
    """Start ``model`` from an exported LDM (``source``: shipped name or path): every UNet tensor whose name
    and shape match is copied; so is every tensor of a trainable cond stage (the text transformer, the layout
    embedder) when the source has the same one -- a UNet whose cross-attention was trained against one text
    encoder is of little use beside a freshly initialised one. The rest (e.g. the key/value projections of
    cross-attention layers that were self-attention in an unconditional model) keep their fresh
    initialisation. A first convolution with more input channels than the source's (``coord_channels``) gets
    the source's weights on the old channels and zeros on the new ones, so the run starts exactly where the
    source model ended. Returns what was done. Fine-tuning a trained model is far cheaper than training
    from zero."""
    if load_manifest(source).get("kind") != "ldm":
        raise ValueError(f"init_from={source!r} is not an LDM checkpoint (manifest kind 'ldm')")
    state = load_state_dict(resolve(source))
    src = {k[len("unet."):]: v for k, v in state.items() if k.startswith("unet.")}
    own = model.unet.state_dict()
    copied = {k: v for k, v in src.items() if k in own and own[k].shape == v.shape}
    widened = []
    for k, v in src.items():  # a first convolution with extra input channels: old channels copied, new zeroed
        if (k in own and k not in copied and v.ndim == 4 and own[k].ndim == 4 and own[k].shape[1] > v.shape[1]
                and own[k].shape[0] == v.shape[0] and own[k].shape[2:] == v.shape[2:]):
            w = torch.zeros_like(own[k])
            w[:, : v.shape[1]] = v
            copied[k] = w
            widened.append(k)
    if not copied:
        raise ValueError(f"no UNet tensor of {source!r} matches this model's shapes; build the same UNet "
                         "(model_channels, channel_mult, attention_resolutions ...) as the source")
    own.update(copied)
    model.unet.load_state_dict(own)
    fresh = sorted(set(own) - set(copied))
    report = dict(source=str(source), copied=len(copied), fresh=len(fresh), fresh_examples=fresh[:6],
                  widened_zero_init=widened, cond_stage_copied=0)
    cs = getattr(model, "cond_stage", None)
    if cs is not None and getattr(model, "cond_stage_trainable", False):
        src_cs = {k[len("cond_stage."):]: v for k, v in state.items() if k.startswith("cond_stage.")}
        own_cs = cs.state_dict()
        if (src_cs and set(src_cs) == set(own_cs) and all(own_cs[k].shape == v.shape for k, v in src_cs.items())
                and all(torch.equal(own_cs[k], v) for k, v in src_cs.items() if not v.is_floating_point())):
            cs.load_state_dict(src_cs)  # all or nothing: half a text encoder is worse than a fresh one
            report["cond_stage_copied"] = len(src_cs)
    return report


def _latent_cache_key(model, train_set, recipe, fs_name, fs_record) -> dict:
    """What the cached latents of a run depend on: the images (data, size, count, seed, holdout, captions, task),
    the first stage (name and weights' sha256) and how they were encoded (posterior, scale rule, stored fields)."""
    keys = model.cond_key
    if isinstance(keys, dict):
        keys = sorted(keys.values())
    return dict(data=recipe.data, size=recipe.size, images=len(train_set), seed=recipe.seed,
                holdout=sorted(recipe.holdout or []), captions=str(recipe.captions) if recipe.captions else None,
                task=recipe.task, task_kwargs=_jsonable(_task_kwargs(recipe)) if recipe.task else None,
                first_stage=str(fs_name), first_stage_sha256=fs_record.get("first_stage_sha256"),
                posterior=model.posterior, scale_by_std=bool(model.scale_by_std),
                scale_factor=None if model.scale_by_std else float(model.scale_factor),
                fields=keys if isinstance(keys, (list, tuple)) else ([keys] if keys else []))


def _cached_latents(model, train_set, recipe, fs_name, fs_record, out_dir, progress):
    """The training set's latents: encoded once per run folder and kept there as ``latents.safetensors`` (+ .json),
    so a resumed run -- or another run pointed at a copy of the file -- skips the encoder. The file is used only
    when everything the latents depend on matches (:func:`_latent_cache_key`); otherwise it is rebuilt. An
    in-memory first stage (no name, no sha256) is never cached to disk."""
    path = Path(out_dir) / "latents.safetensors" if out_dir else None
    cacheable = path is not None and fs_name is not None and (fs_name == "pixel" or fs_record.get("first_stage_sha256"))
    key = _latent_cache_key(model, train_set, recipe, fs_name, fs_record) if cacheable else None
    if cacheable and path.exists() and path.with_suffix(".json").exists():
        try:
            cached = LatentDataset.load(path)
        except Exception:  # a damaged file is rebuilt, not trusted
            cached = None
        if cached is not None and cached.info.get("key") == _jsonable(key) and len(cached) == len(train_set):
            if model.scale_by_std:
                model.scale_factor.fill_(cached.scale_factor)
                model.scale_estimated = True
            elif abs(cached.scale_factor - float(model.scale_factor)) > 1e-12:
                cached = None
            if cached is not None:
                return cached
    data = model.encode_dataset(train_set, batch_size=64, progress=progress)
    if cacheable:
        data.info["key"] = _jsonable(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        data.save(path)
    return data


def _training_vocabulary(train_set, max_length: int, limit: int = 5000) -> list[int]:
    """The WordPiece ids of (up to ``limit``) training captions: the rows a from-scratch text encoder keeps."""
    base = getattr(train_set, "dataset", train_set)
    if hasattr(base, "layout") and hasattr(base, "render"):  # ShapesDataset: captions without rendering
        captions = [make_caption(base.layout(i)) for i in range(min(limit, len(base)))]
    elif getattr(base, "captions", None) is not None:
        captions = list(base.captions)[:limit]
    else:
        captions = [base[i]["caption"] for i in range(min(limit, len(base)))]
    return TransformerEmbedder.vocabulary_of(captions, max_length)
