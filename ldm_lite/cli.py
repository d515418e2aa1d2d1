"""``ldm-lite``: the course's long runs outside notebooks (same recipes as the notebooks).

    ldm-lite train-ae --data openmoji --size 64 --f 8 --reg kl --steps 4000 --out runs/ae_f8
    ldm-lite train-ldm --data shapes --size 64 --first-stage ae_kl_f4_shapes64 --steps 3000 --export ldm_shapes64
    ldm-lite sample --model ldm_shapes64 --n 16 --steps 50 --out samples.png
    ldm-lite train-evaluator --network shapes-attributes --steps 3000 --export eval_shapes_attributes
    ldm-lite list-pretrained
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys


def _tuple(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers, e.g. 1,2,4") from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _finite_float(low: float | None = None, high: float | None = None, high_open: bool = False,
                  low_open: bool = False):
    """An argparse type: a finite float in [low, high] (open ends where asked); NaN and inf are refused."""
    import math

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        if low is not None and (value < low or (low_open and value == low)):
            raise argparse.ArgumentTypeError(f"must be {'>' if low_open else '>='} {low:g}, got {value:g}")
        if high is not None and (value > high or (high_open and value == high)):
            raise argparse.ArgumentTypeError(f"must be {'<' if high_open else '<='} {high:g}, got {value:g}")
        return value

    return parse


def _set_threads(args) -> None:
    """--threads N (validated by argparse: N >= 1) sets torch's CPU threads; without it torch's default."""
    if getattr(args, "threads", None) is not None:
        import torch

        torch.set_num_threads(args.threads)


def _add_run_args(p, seed: int) -> None:
    """The options every training command shares: seed, run folder, checkpoints, export, threads."""
    p.add_argument("--seed", type=int, default=seed)
    p.add_argument("--out", default=None, help="run folder for checkpoints (resume with --resume)")
    p.add_argument("--ckpt-every", type=_positive_int, default=None)
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="CHECKPOINT",
                   help="continue the run in --out from its latest checkpoint, or from the checkpoint folder given "
                        "(e.g. runs/x/checkpoints/step_00000500)")
    p.add_argument("--export", default=None, help="name under data/pretrained/ or a path for the final weights")
    p.add_argument("--force", action="store_true", help="let --export replace an existing checkpoint of that name")
    p.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads")


def _add_train_ae(sub) -> None:
    from ldm_lite.experiments import AERecipe

    d = AERecipe()
    p = sub.add_parser("train-ae", help="train a first-stage autoencoder (chapter 01)")
    p.add_argument("--data", default=d.data, help="openmoji | shapes | fashion | photos | an image folder")
    p.add_argument("--size", type=int, default=d.size)
    p.add_argument("--f", type=int, default=d.f, help="downsampling factor: 1, 2, 4, 8, 16 or 32")
    p.add_argument("--reg", choices=["kl", "vq"], default=d.reg)
    p.add_argument("--ch", type=int, default=d.ch)
    p.add_argument("--ch-mult", type=_tuple, default=None, help="e.g. 1,2,4 (default from f)")
    p.add_argument("--num-res-blocks", type=int, default=d.num_res_blocks)
    p.add_argument("--z-channels", type=int, default=d.z_channels)
    p.add_argument("--n-embed", type=int, default=d.n_embed, help="VQ codebook size")
    p.add_argument("--crop", type=int, default=None, help="train on random crops of this size (faster)")
    p.add_argument("--lr-schedule", choices=["constant", "cosine"], default="constant")
    p.add_argument("--steps", type=_positive_int, default=d.steps)
    p.add_argument("--batch-size", type=_positive_int, default=d.batch_size)
    p.add_argument("--lr", type=_finite_float(0, low_open=True), default=d.lr)
    p.add_argument("--kl-weight", type=float, default=d.kl_weight)
    p.add_argument("--perceptual-weight", type=float, default=d.perceptual_weight)
    p.add_argument("--perceptual", default=d.perceptual, help="auto | lpips | random-vgg | none")
    p.add_argument("--disc-start", type=int, default=d.disc_start, help="step at which the PatchGAN starts")
    p.add_argument("--disc-weight", type=float, default=d.disc_weight)
    p.add_argument("--ema-decay", type=float, default=None)
    p.add_argument("--eval-every", type=int, default=None, help="report held-out PSNR/SSIM every N steps")
    p.add_argument("--init-from", default=None,
                   help="start from this exported autoencoder's weights (same architecture), e.g. ae_kl_f4_openmoji64")
    p.add_argument("--train-part", choices=["all", "decoder"], default="all",
                   help="decoder: freeze encoder and quantiser so the latents (and the LDMs trained on them) are kept")
    _add_run_args(p, d.seed)


def _run_train_ae(args) -> dict:
    import torch

    from ldm_lite.experiments import AERecipe, train_autoencoder

    _set_threads(args)
    recipe = AERecipe(
        data=args.data, size=args.size, f=args.f, reg=args.reg, ch=args.ch, ch_mult=args.ch_mult,
        num_res_blocks=args.num_res_blocks, z_channels=args.z_channels, n_embed=args.n_embed, steps=args.steps,
        batch_size=args.batch_size, lr=args.lr, kl_weight=args.kl_weight, perceptual_weight=args.perceptual_weight,
        perceptual=args.perceptual, disc_start=args.disc_start, disc_weight=args.disc_weight,
        ema_decay=args.ema_decay, seed=args.seed, crop=args.crop, lr_schedule=args.lr_schedule,
        init_from=args.init_from, train_part=args.train_part,
    )
    result = train_autoencoder(recipe, out_dir=args.out, ckpt_every=args.ckpt_every, resume=args.resume,
                               export=args.export, eval_every=args.eval_every, force=args.force,
                               command="ldm-lite " + " ".join(shlex.quote(a) for a in args.argv))
    summary = dict(metrics=result["metrics"], wall_time_s=round(result["wall_time_s"], 1),
                   perceptual=result["perceptual"], weights=result.get("weights"))
    print(json.dumps(summary, indent=2))
    return summary


def _add_train_ldm(sub) -> None:
    from ldm_lite.experiments import LDMRecipe

    d = LDMRecipe()
    p = sub.add_parser("train-ldm", help="train a latent (or pixel-space) diffusion model (chapters 04, 06)")
    p.add_argument("--data", default=d.data, help="openmoji | shapes | fashion | photos | an image folder")
    p.add_argument("--size", type=int, default=d.size)
    p.add_argument("--first-stage", default=d.first_stage,
                   help="auto | pixel | a shipped autoencoder's name | a checkpoint path")
    p.add_argument("--train-images", type=int, default=d.train_images, help="number of training images")
    p.add_argument("--cond", choices=["none", "class", "class-adm", "text", "text-frozen", "layout"], default="none",
                   help="class: labels via a ClassEmbedder into cross-attention; class-adm: labels added to the time "
                        "embedding; text: captions via a transformer trained with the UNet; text-frozen: captions via "
                        "a frozen encoder (--text-encoder); layout: boxes + classes (shapes)")
    p.add_argument("--task", choices=["none", "sr", "inpaint", "semantic"], default="none",
                   help="spatial conditioning concatenated with z_t (chapter 07): sr = super-resolution from a "
                        "--sr-factor smaller image; inpaint = masked image + hole mask; semantic = segmentation map "
                        "(shapes)")
    p.add_argument("--sr-factor", type=int, default=d.sr_factor, help="--task sr: downsampling factor of the input")
    p.add_argument("--degradation", choices=["bicubic", "bsr"], default=d.degradation,
                   help="--task sr: bicubic (the paper's x4 ImageNet setting) or bsr (blur + noise + JPEG)")
    p.add_argument("--mask-fraction", type=float, default=d.mask_fraction,
                   help="--task inpaint: share of hole pixels in the training masks")
    p.add_argument("--cond-dim", type=int, default=d.cond_dim, help="width of a trained cond stage")
    p.add_argument("--cond-depth", type=int, default=d.cond_depth, help="transformer blocks of a trained cond stage")
    p.add_argument("--text-encoder", default=d.text_encoder,
                   help="--cond text-frozen: minilm (offline) | openai/clip-vit-large-patch14 (if cached) | a folder")
    p.add_argument("--init-from", default=None,
                   help="start the UNet from this exported LDM where shapes match (fine-tune, e.g. ldm_openmoji64)")
    p.add_argument("--holdout", default="", help="shapes: 'colour shape' pairs never trained on, e.g. "
                                                 "'purple triangle,green cross'")
    p.add_argument("--model-channels", type=int, default=d.model_channels)
    p.add_argument("--channel-mult", type=_tuple, default=d.channel_mult, help="e.g. 1,2,2")
    p.add_argument("--num-res-blocks", type=int, default=d.num_res_blocks)
    p.add_argument("--attention-resolutions", type=_tuple, default=d.attention_resolutions,
                   help="downsampling rates with attention, e.g. 2,4")
    p.add_argument("--num-head-channels", type=int, default=d.num_head_channels)
    p.add_argument("--norm-num-groups", type=int, default=d.norm_num_groups,
                   help="GroupNorm groups (must divide every level's channels)")
    p.add_argument("--coord-channels", action="store_true",
                   help="give the UNet two coordinate input channels (x, y in [-1, 1]); helps layout models place "
                        "objects (chapter 06)")
    p.add_argument("--parameterization", choices=["eps", "x0", "v"], default=d.parameterization)
    p.add_argument("--weighting", choices=["none", "min_snr"], default="none")
    p.add_argument("--no-scale-by-std", action="store_true", help="keep scale_factor (default: estimate 1/std)")
    p.add_argument("--scale-factor", type=float, default=d.scale_factor)
    p.add_argument("--cond-drop-prob", type=_finite_float(0, 1, high_open=True), default=d.cond_drop_prob)
    p.add_argument("--lr-schedule", choices=["constant", "cosine"], default="constant")
    p.add_argument("--steps", type=_positive_int, default=d.steps)
    p.add_argument("--batch-size", type=_positive_int, default=d.batch_size)
    p.add_argument("--lr", type=_finite_float(0, low_open=True), default=d.lr)
    p.add_argument("--lr-warmup-steps", type=int, default=d.lr_warmup_steps)
    p.add_argument("--ema-decay", type=float, default=d.ema_decay, help="0 turns the EMA off")
    p.add_argument("--no-cache", action="store_true", help="encode every batch instead of caching latents once")
    _add_run_args(p, d.seed)


def _run_train_ldm(args) -> dict:
    import torch

    from ldm_lite.experiments import LDMRecipe, train_ldm

    _set_threads(args)
    recipe = LDMRecipe(
        data=args.data, size=args.size, first_stage=args.first_stage, train_images=args.train_images,
        cond=None if args.cond == "none" else args.cond, model_channels=args.model_channels,
        channel_mult=args.channel_mult, num_res_blocks=args.num_res_blocks,
        attention_resolutions=args.attention_resolutions, num_head_channels=args.num_head_channels,
        norm_num_groups=args.norm_num_groups, coord_channels=args.coord_channels, parameterization=args.parameterization, weighting=None if args.weighting == "none" else args.weighting,
        scale_by_std=not args.no_scale_by_std, scale_factor=args.scale_factor, cond_drop_prob=args.cond_drop_prob,
        cond_dim=args.cond_dim, cond_depth=args.cond_depth, text_encoder=args.text_encoder,
        holdout=tuple(h.strip() for h in args.holdout.split(",") if h.strip()), init_from=args.init_from,
        task=None if args.task == "none" else args.task, sr_factor=args.sr_factor, degradation=args.degradation,
        mask_fraction=args.mask_fraction,
        steps=args.steps, batch_size=args.batch_size, lr=args.lr, lr_warmup_steps=args.lr_warmup_steps,
        lr_schedule=args.lr_schedule, ema_decay=args.ema_decay or None, seed=args.seed,
    )
    result = train_ldm(recipe, out_dir=args.out, ckpt_every=args.ckpt_every, resume=args.resume, export=args.export,
                       cache_latents=not args.no_cache, force=args.force,
                       command="ldm-lite " + " ".join(shlex.quote(a) for a in getattr(args, "argv", sys.argv[1:])))
    summary = dict(metrics=result["metrics"], first_stage=result["first_stage"],
                   scale_factor=round(result["scale_factor"], 5), wall_time_s=round(result["wall_time_s"], 1),
                   encode_time_s=round(result["encode_time_s"], 1), weights=result.get("weights"))
    print(json.dumps(summary, indent=2))
    return summary


def _add_sample(sub) -> None:
    p = sub.add_parser("sample", help="sample a shipped / exported LDM into a PNG grid")
    p.add_argument("--model", required=True, help="name under data/pretrained/ or a path (manifest kind 'ldm')")
    p.add_argument("--n", type=_positive_int, default=16, help="number of images")
    p.add_argument("--sampler", default="ddim", choices=["ddim", "plms", "dpm", "dpmsolver++", "ddpm"])
    p.add_argument("--timestep-spacing", default="uniform", choices=["uniform", "leading", "trailing", "quadratic"],
                   help="which timesteps a short run visits: uniform (= leading, CompVis / Stable Diffusion; a 5-step "
                        "run starts at t = 801) or trailing (starts at t = 999, Lin et al. 2024)")
    p.add_argument("--steps", type=_positive_int, default=50)
    p.add_argument("--eta", type=_finite_float(0, 1), default=0.0, help="DDIM noise (0 = deterministic)")
    p.add_argument("--guidance", type=_finite_float(0), default=1.0, help="classifier-free guidance scale")
    p.add_argument("--label", type=_tuple, default=None,
                   help="class label(s) for a class-conditional model, e.g. 3 or 0,1,2,3 (repeated to --n)")
    p.add_argument("--prompt", action="append", default=None,
                   help="caption for a text-conditional model, e.g. 'a big red circle left of a small blue square' "
                        "(repeat --prompt for several; repeated to --n)")
    p.add_argument("--layout", default=None,
                   help='JSON file for a layout model: a list of objects {"box": [x0, y0, x1, y1] (fractions), '
                        '"shape": ..., "color": ..., "size": ...}, or a list of such lists (repeated to --n)')
    p.add_argument("--latent-size", type=int, default=None, help="latent side; larger than training = bigger images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--nrow", type=int, default=None)
    p.add_argument("--out", default="samples.png",
                   help="a .png (one grid of all images) or a .npz (uint8 (N, H, W, C) array 'images' + a .json "
                        "manifest beside it: a sample set for the metrics of chapter 08)")
    p.add_argument("--batch-size", type=_positive_int, default=64, help="images sampled at once (memory)")
    p.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads")


def _manifest_of(model: str) -> dict:
    from ldm_lite.pretrained import load_manifest

    return load_manifest(model)


def _run_sample(args) -> dict:
    import time
    from pathlib import Path

    import torch
    from PIL import Image

    from ldm_lite.config import device
    from ldm_lite.io import atomic_write
    from ldm_lite.pretrained import load_ldm
    from ldm_lite.viz import make_grid

    out = Path(args.out)
    if out.suffix.lower() not in (".png", ".npz"):
        raise SystemExit(f"--out {args.out!r}: write a .png (a grid) or a .npz (the images as an array)")
    if args.n < 1 or args.batch_size < 1:
        raise SystemExit(f"--n and --batch-size must be >= 1, got {args.n} and {args.batch_size}")
    _set_threads(args)
    given = [name for name, v in (("--label", args.label), ("--prompt", args.prompt), ("--layout", args.layout))
             if v is not None]
    if len(given) > 1:
        raise SystemExit(f"give one condition, not {' and '.join(given)}")
    layouts = None
    if args.layout is not None:  # read and check the file before loading the model
        from ldm_lite.conditioning import layout_from_objects

        try:
            spec = json.loads(Path(args.layout).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise SystemExit(f"--layout {args.layout!r}: cannot read a JSON layout ({err})") from err
        spec = [spec] if isinstance(spec, dict) or (spec and isinstance(spec[0], dict)) else spec
        try:
            layouts = [layout_from_objects(objs) for objs in spec]
        except (ValueError, TypeError, KeyError) as err:
            raise SystemExit(f"--layout {args.layout!r}: {err}") from err
    manifest = _manifest_of(args.model)
    ldm_cfg = manifest.get("ldm", {})
    key, cond_key = ldm_cfg.get("conditioning_key"), ldm_cfg.get("cond_key")
    if key is None and (given or args.guidance != 1.0):
        raise SystemExit(f"{args.model} is unconditional: sample it without {' '.join(given) or '--guidance'}")
    wants = {"caption": "--prompt", "layout": "--layout", "label": "--label"}.get(cond_key)
    if given and wants and given[0] != wants:
        raise SystemExit(f"{args.model} is conditioned on its {cond_key!r}: use {wants}, not {given[0]}")
    model = load_ldm(args.model, device=device())

    def repeat(items):
        return (list(items) * -(-args.n // len(items)))[: args.n]

    cond = None
    if args.label is not None:
        cond = torch.tensor(repeat(args.label))
    elif args.prompt is not None:
        cond = repeat(args.prompt)
    elif layouts is not None:
        cond = torch.stack(repeat(layouts))
    if cond is not None:
        try:  # an out-of-range label, an over-long prompt ... fails here, before any sampling
            model.get_learned_conditioning(cond)
        except (ValueError, TypeError) as err:
            raise SystemExit(f"{args.model}: {err}") from err
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(args.seed)  # one stream across batches (same --batch-size, same images)
    chunks = []
    for i in range(0, args.n, args.batch_size):
        b = min(args.batch_size, args.n - i)
        chunks.append(model.sample(b, cond=None if cond is None else cond[i : i + b], sampler=args.sampler,
                                   steps=args.steps, eta=args.eta, guidance_scale=args.guidance, generator=gen,
                                   latent_size=args.latent_size, progress=True,
                                   timestep_spacing=args.timestep_spacing))
    images = torch.cat(chunks)
    seconds = time.perf_counter() - t0
    if not torch.isfinite(images).all():
        raise SystemExit("sampling produced NaN or inf; nothing was written (check the model and --guidance)")
    summary = dict(out=str(out), images=list(images.shape), seconds=round(seconds, 2),
                   seconds_per_image=round(seconds / args.n, 3))
    if out.suffix.lower() == ".png":
        grid = Image.fromarray(make_grid(images, nrow=args.nrow))
        atomic_write(out, lambda tmp: grid.save(tmp, format="PNG"))
    else:
        from ldm_lite.data.common import save_npz_atomic, to_uint8

        save_npz_atomic(str(out), compress=True, images=to_uint8(images))
        manifest = dict(kind="samples", model=args.model, n=args.n, sampler=args.sampler, steps=args.steps,
                        timestep_spacing=args.timestep_spacing,
                        prompt=args.prompt, label=list(args.label) if args.label else None, layout=args.layout,
                        eta=args.eta, guidance=args.guidance, seed=args.seed, batch_size=args.batch_size,
                        seconds=summary["seconds"], threads=torch.get_num_threads(),
                        command="ldm-lite " + " ".join(shlex.quote(a) for a in args.argv),
                        model_manifest={k: v for k, v in _manifest_of(args.model).items()
                                        if k in ("steps", "wall_time_s", "metrics", "command", "first_stage",
                                                 "first_stage_trained_on")})
        atomic_write(out.with_suffix(".json"), lambda tmp: Path(tmp).write_text(json.dumps(manifest, indent=2) + "\n"))
    print(json.dumps(summary, indent=2))
    return summary


def _read_image(path: str, what: str):
    """An image file -> (1, 3, H, W) in [-1, 1]; a clear error naming the file."""
    import numpy as np
    from PIL import Image

    from ldm_lite.data.common import to_image_tensor

    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"))
    except (OSError, ValueError) as err:
        raise SystemExit(f"{what} {path!r}: cannot read an image ({err})") from err
    return to_image_tensor(arr)[None]


def _write_image(images, out: str) -> None:
    from pathlib import Path

    import torch
    from PIL import Image

    from ldm_lite.data.common import to_uint8
    from ldm_lite.io import atomic_write

    if not torch.isfinite(images).all():
        raise SystemExit("sampling produced NaN or inf; nothing was written")
    fmt = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}[Path(out).suffix.lower()]
    img = Image.fromarray(to_uint8(images[0]))
    atomic_write(Path(out), lambda tmp: img.save(tmp, format=fmt))


def _check_out(out: str) -> None:
    from pathlib import Path

    if Path(out).suffix.lower() not in (".png", ".jpg", ".jpeg"):
        raise SystemExit(f"{out!r}: write a .png or .jpg")
    parent = Path(out).resolve().parent
    if not parent.is_dir():
        raise SystemExit(f"{out!r}: the folder {str(parent)!r} does not exist")


def _add_upscale(sub) -> None:
    p = sub.add_parser("upscale", help="super-resolve an image with a trained --task sr model (chapter 07)")
    p.add_argument("input", help="the low-resolution image (PNG / JPEG)")
    p.add_argument("output", help="where to write the upscaled image (.png / .jpg)")
    p.add_argument("--model", required=True, help="an exported super-resolution LDM (train-ldm --task sr)")
    p.add_argument("--steps", type=_positive_int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=_positive_int, default=None)


def _run_upscale(args) -> dict:
    import torch

    from ldm_lite.pretrained import load_ldm

    _check_out(args.output)
    manifest = _manifest_of(args.model)
    if manifest.get("recipe", {}).get("task") != "sr":
        raise SystemExit(f"{args.model} is not a super-resolution model (train one with `ldm-lite train-ldm --task sr`)")
    _set_threads(args)
    lr = _read_image(args.input, "input")
    factor = int(manifest["recipe"].get("sr_factor", 4))
    model = load_ldm(args.model)
    f = model.f
    # the latent of the output is (H * factor / f) per side; the UNet needs it divisible by its downsampling
    m = model.unet.downsampling_factor
    lat = [s * factor // f for s in lr.shape[-2:]]
    if any(s * factor % f for s in lr.shape[-2:]) or any(v % m for v in lat):
        step = max(1, m * f // factor)
        raise SystemExit(f"input {args.input!r} is {lr.shape[-1]}×{lr.shape[-2]} px; this model needs sides that are "
                         f"multiples of {step} (crop or pad it, e.g. to "
                         f"{lr.shape[-1] // step * step}×{lr.shape[-2] // step * step})")
    out = model.sample(cond=lr, steps=args.steps, generator=torch.Generator().manual_seed(args.seed), progress=True)
    _write_image(out, args.output)
    summary = dict(out=args.output, input=list(lr.shape[-2:]), output=list(out.shape[-2:]), factor=factor)
    print(json.dumps(summary))
    return summary


def _add_inpaint(sub) -> None:
    p = sub.add_parser("inpaint", help="fill the holes of an image: a trained --task inpaint model, or any "
                                       "unconditional LDM without training (mask blending / RePaint) (chapter 07)")
    p.add_argument("input", help="the image (PNG / JPEG)")
    p.add_argument("mask", help="a black-and-white image of the same size")
    p.add_argument("output", help="where to write the result (.png / .jpg)")
    p.add_argument("--model", required=True,
                   help="an inpainting LDM (train-ldm --task inpaint) or an unconditional LDM (training-free)")
    p.add_argument("--mask-means", choices=["hole", "keep"], default="hole",
                   help="white pixels of the mask are the hole to fill (default, as the paper's inpainting script) "
                        "or the pixels to keep (as its DDIM sampler)")
    p.add_argument("--threshold", type=float, default=None,
                   help="binarise a soft (anti-aliased) mask at this grey level in [0, 1]; without it a mask must be "
                        "pure black and white")
    p.add_argument("--repaint", type=_tuple, default=None,
                   help="training-free only: RePaint resampling JUMP_LENGTH,JUMP_N_SAMPLE, e.g. 5,4 (DDIM)")
    p.add_argument("--steps", type=_positive_int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=_positive_int, default=None)


def _run_inpaint(args) -> dict:
    import numpy as np
    import torch
    from PIL import Image

    from ldm_lite.data.spatial import keep_mask_from
    from ldm_lite.pretrained import load_ldm

    _check_out(args.output)
    image = _read_image(args.input, "input")
    try:
        with Image.open(args.mask) as im:
            m = np.asarray(im.convert("L"), dtype=np.float32) / 255.0
    except (OSError, ValueError) as err:
        raise SystemExit(f"mask {args.mask!r}: cannot read an image ({err})") from err
    if m.shape != tuple(image.shape[-2:]):
        raise SystemExit(f"mask {args.mask!r} is {m.shape[1]}×{m.shape[0]} px but the image is "
                         f"{image.shape[-1]}×{image.shape[-2]}: give a mask of the image's size")
    if args.threshold is not None:
        if not 0 < args.threshold < 1:
            raise SystemExit(f"--threshold must lie in (0, 1), got {args.threshold}")
        m = (m >= args.threshold).astype(np.float32)
    grey = np.unique(m[(m > 0) & (m < 1)])
    if grey.size:
        raise SystemExit(f"mask {args.mask!r} is not black and white ({grey.size} grey levels, e.g. "
                         f"{grey[0] * 255:.0f}/255); pass --threshold 0.5 to binarise it")
    mt = torch.from_numpy(m)[None, None]
    keep = keep_mask_from(**({"hole_mask": mt} if args.mask_means == "hole" else {"keep_mask": mt}), like=image)
    if keep.min() == 1:
        raise SystemExit(f"mask {args.mask!r} has no hole (with --mask-means {args.mask_means}); nothing to fill")
    manifest = _manifest_of(args.model)
    trained = manifest.get("recipe", {}).get("task") == "inpaint"
    key = manifest.get("ldm", {}).get("conditioning_key")
    if not trained and key is not None:
        raise SystemExit(f"{args.model} is conditioned on {manifest['ldm'].get('cond_key')!r}; use an inpainting model "
                         "(train-ldm --task inpaint) or an unconditional one (training-free blending)")
    if trained and args.repaint:
        raise SystemExit("--repaint is for training-free inpainting with an unconditional model; a trained "
                         "inpainter sees the known region already")
    jump = tuple(args.repaint) if args.repaint else (0, 1)
    if len(jump) != 2:
        raise SystemExit(f"--repaint takes JUMP_LENGTH,JUMP_N_SAMPLE, e.g. 5,4; got {args.repaint}")
    _set_threads(args)
    model = load_ldm(args.model)
    gen = torch.Generator().manual_seed(args.seed)
    if trained:
        hole = 1.0 - keep
        out = model.sample(cond={"masked_image": image * keep, "hole_mask": hole}, steps=args.steps, generator=gen)
    else:
        out = model.sample(1, x0=image, keep_mask=keep, latent_size=tuple(s // model.f for s in image.shape[-2:]),
                           steps=args.steps, generator=gen, jump_length=jump[0], jump_n_sample=jump[1])
    out = keep * image + (1 - keep) * out  # known pixels exactly as given (the decoder blurs them a little)
    _write_image(out, args.output)
    summary = dict(out=args.output, method="trained inpainter" if trained else
                   ("RePaint" if args.repaint else "mask blending"), hole_fraction=round(float(1 - keep.mean()), 4))
    print(json.dumps(summary))
    return summary


def _add_train_evaluator(sub) -> None:
    from ldm_lite.evaluator_training import DATASET_OF, EvaluatorRecipe

    d = EvaluatorRecipe("fashion-classifier")
    p = sub.add_parser("train-evaluator", help="train a feature network for the metrics (chapter 08)")
    p.add_argument("--network", required=True, choices=sorted(DATASET_OF))
    p.add_argument("--steps", type=_positive_int, default=d.steps)
    p.add_argument("--batch-size", type=_positive_int, default=d.batch_size)
    p.add_argument("--lr", type=_finite_float(0, low_open=True), default=d.lr)
    p.add_argument("--augment", type=_finite_float(0, 1), default=d.augment, help="augmentation strength in [0, 1]")
    p.add_argument("--ae", default=None, help="autoencoder whose reconstructions join the augmentations")
    p.add_argument("--ae-prob", type=_finite_float(0, 1), default=d.ae_prob)
    p.add_argument("--eval-n", type=int, default=d.eval_n,
                   help="held-out images for the final score (default: 1,000 shapes renders / all Fashion test images)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--export", default=None, help="name under data/pretrained/ or a path")
    p.add_argument("--force", action="store_true", help="let --export replace an existing checkpoint of that name")
    p.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads")


def _run_train_evaluator(args) -> dict:
    import torch

    from ldm_lite.evaluator_training import EvaluatorRecipe, train_evaluator

    _set_threads(args)
    recipe = EvaluatorRecipe(args.network, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                             augment=args.augment, ae=args.ae, ae_prob=args.ae_prob, eval_n=args.eval_n,
                             seed=args.seed)
    command = "ldm-lite " + " ".join(shlex.quote(a) for a in args.argv)
    _, report = train_evaluator(recipe, export=args.export, command=command, force=args.force)
    print(json.dumps(report, indent=2, default=str))
    return report


def _add_execute_notebook(sub) -> None:
    p = sub.add_parser("execute-notebook",
                       help="run a course notebook top to bottom in a fresh kernel and save its outputs in place")
    p.add_argument("notebooks", nargs="+", help="paths of .ipynb files")
    p.add_argument("--scale", default="laptop", choices=["smoke", "laptop", "gpu"])
    p.add_argument("--timeout", type=int, default=1800, help="seconds per cell")


def _run_execute_notebook(args) -> dict:
    """Execute with LDM_SCALE set and record scale, wall time and versions in the notebook's metadata
    (``metadata["ldm_lite"]``), so a reader knows what produced the committed outputs (DESIGN §9)."""
    import datetime
    import os
    import platform
    import time
    from pathlib import Path

    import nbformat
    import torch

    from ldm_lite.io import atomic_write
    from ldm_lite.notebook_exec import notebook_client

    done = {}
    for path in map(Path, args.notebooks):
        if path.suffix != ".ipynb" or not path.exists():
            raise SystemExit(f"{path}: not an existing .ipynb file")
        nb = nbformat.read(path, as_version=4)
        old = {k: os.environ.get(k) for k in ("LDM_SCALE", "LDM_PROGRESS")}
        os.environ["LDM_SCALE"] = args.scale
        # widget bars are never saved (committed outputs would show them frozen at 0/N) and stalled nbclient on
        # long loops (session 1): one summary line per finished bar instead (ldm_lite/progress.py)
        os.environ["LDM_PROGRESS"] = "summary"
        try:
            t0 = time.perf_counter()
            notebook_client(nb, timeout=args.timeout, kernel_name="python3",  # cannot stall on a lost reply
                            resources={"metadata": {"path": str(path.parent)}}).execute()
            wall = time.perf_counter() - t0
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        nb.metadata["ldm_lite"] = dict(scale=args.scale, wall_time_s=round(wall, 1), torch=torch.__version__,
                                       python=platform.python_version(), cpu_threads=torch.get_num_threads(),
                                       date=datetime.date.today().isoformat())
        atomic_write(path, lambda tmp: nbformat.write(nb, tmp))
        done[str(path)] = round(wall, 1)
        print(f"{path}: {args.scale} scale, {wall:.0f} s")
    return done


# API wording in error messages -> the CLI's own options (the message was written for `fit(...)` callers)
_CLI_TERMS = (("fit(resume=True)", "--resume"), ("resume=True", "--resume"), ("force=True", "--force"),
              ("config.out_dir", "--out"), ("out_dir", "--out"))


def _cli_terms(message: str) -> str:
    for api, cli in _CLI_TERMS:
        message = message.replace(api, cli)
    return " ".join(message.split())  # one line


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ldm-lite", description=__doc__.split("\n")[0])
    parser.add_argument("--debug", action="store_true",
                        help="on an error, show the full Python traceback (also: LDM_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train_ae(sub)
    _add_train_ldm(sub)
    _add_sample(sub)
    _add_upscale(sub)
    _add_inpaint(sub)
    _add_train_evaluator(sub)
    _add_execute_notebook(sub)
    p = sub.add_parser("set-first-stage",
                       help="make an exported LDM decode with a decoder-only fine-tune of its first stage (chapter 01)")
    p.add_argument("--model", required=True, help="the LDM: a name under data/pretrained/ or a path")
    p.add_argument("--first-stage", required=True,
                   help="an autoencoder made by `train-ae --init-from <the LDM's first stage> --train-part decoder`")
    sub.add_parser("list-pretrained", help="list the checkpoints shipped in data/pretrained/")
    return parser


def _dispatch(args) -> None:
    from ldm_lite import config

    config.scale()  # an unknown LDM_SCALE is an error here too, before any work
    if args.command == "train-ae":
        _run_train_ae(args)
    elif args.command == "train-ldm":
        _run_train_ldm(args)
    elif args.command == "sample":
        _run_sample(args)
    elif args.command == "upscale":
        _run_upscale(args)
    elif args.command == "inpaint":
        _run_inpaint(args)
    elif args.command == "train-evaluator":
        _run_train_evaluator(args)
    elif args.command == "execute-notebook":
        _run_execute_notebook(args)
    elif args.command == "set-first-stage":
        from ldm_lite.pretrained import set_first_stage

        man = set_first_stage(args.model, args.first_stage)
        print(f"{args.model} now decodes with {man['first_stage']} (trained on {man['first_stage_trained_on']})")
    elif args.command == "list-pretrained":
        from ldm_lite.pretrained import list_pretrained

        for m in list_pretrained():
            print(f"{m['name']:<28} {m.get('kind', '?'):<12} {json.dumps(m.get('metrics', {}))}")


def main(argv=None) -> int:
    """Run one command. An error exits with status 1 and one line in CLI terms on stderr (a ``SystemExit``
    carrying it, so callers and tests can catch it); ``--debug`` or ``LDM_DEBUG=1`` re-raise with the traceback."""
    import os

    argv = list(argv) if argv is not None else sys.argv[1:]
    debug = "--debug" in argv or os.environ.get("LDM_DEBUG", "").strip() not in ("", "0")
    argv = [a for a in argv if a != "--debug"]  # accepted anywhere on the line, not only before the command
    args = _build_parser().parse_args(argv)
    args.argv = argv  # recorded in exported manifests
    try:
        _dispatch(args)
    except KeyboardInterrupt:
        if debug:
            raise
        raise SystemExit(f"ldm-lite {args.command}: interrupted") from None
    except SystemExit as err:  # our own messages: one line, prefixed, in CLI terms
        if debug or err.code is None or isinstance(err.code, int):
            raise
        raise SystemExit(f"ldm-lite {args.command}: error: {_cli_terms(str(err.code))}") from None
    except Exception as err:  # noqa: BLE001 -- every failure becomes one readable line (exit status 1)
        if debug:
            raise
        kind = "" if isinstance(err, (ValueError, FileNotFoundError, FileExistsError)) else f"{type(err).__name__}: "
        raise SystemExit(f"ldm-lite {args.command}: error: {kind}{_cli_terms(str(err))} "
                         "(add --debug for the traceback)") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
