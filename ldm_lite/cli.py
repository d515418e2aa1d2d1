"""``ldm-lite``: the course's long runs outside notebooks (same recipes as the notebooks).

    ldm-lite train-ae --data openmoji --size 64 --f 8 --reg kl --steps 4000 --out runs/ae_f8
    ldm-lite train-ldm --data shapes --size 64 --first-stage ae_kl_f4_shapes64 --steps 3000 --export ldm_shapes64
    ldm-lite sample --model ldm_shapes64 --n 16 --steps 50 --out samples.png
    ldm-lite list-pretrained
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys


def _tuple(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


def _add_run_args(p, seed: int) -> None:
    """The options every training command shares: seed, run folder, checkpoints, export, threads."""
    p.add_argument("--seed", type=int, default=seed)
    p.add_argument("--out", default=None, help="run folder for checkpoints (resume with --resume)")
    p.add_argument("--ckpt-every", type=int, default=None)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--export", default=None, help="name under data/pretrained/ or a path for the final weights")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")


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
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--kl-weight", type=float, default=d.kl_weight)
    p.add_argument("--perceptual-weight", type=float, default=d.perceptual_weight)
    p.add_argument("--perceptual", default=d.perceptual, help="auto | lpips | random-vgg | none")
    p.add_argument("--disc-start", type=int, default=d.disc_start, help="step at which the PatchGAN starts")
    p.add_argument("--disc-weight", type=float, default=d.disc_weight)
    p.add_argument("--ema-decay", type=float, default=None)
    p.add_argument("--eval-every", type=int, default=None, help="report held-out PSNR/SSIM every N steps")
    _add_run_args(p, d.seed)


def _run_train_ae(args) -> dict:
    import torch

    from ldm_lite.experiments import AERecipe, train_autoencoder

    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = AERecipe(
        data=args.data, size=args.size, f=args.f, reg=args.reg, ch=args.ch, ch_mult=args.ch_mult,
        num_res_blocks=args.num_res_blocks, z_channels=args.z_channels, n_embed=args.n_embed, steps=args.steps,
        batch_size=args.batch_size, lr=args.lr, kl_weight=args.kl_weight, perceptual_weight=args.perceptual_weight,
        perceptual=args.perceptual, disc_start=args.disc_start, disc_weight=args.disc_weight,
        ema_decay=args.ema_decay, seed=args.seed, crop=args.crop, lr_schedule=args.lr_schedule,
    )
    result = train_autoencoder(recipe, out_dir=args.out, ckpt_every=args.ckpt_every, resume=args.resume,
                               export=args.export, eval_every=args.eval_every, command="ldm-lite " + " ".join(shlex.quote(a) for a in sys.argv[1:]))
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
    p.add_argument("--cond", choices=["none", "class"], default="none", help="class: the dataset's labels (adm)")
    p.add_argument("--model-channels", type=int, default=d.model_channels)
    p.add_argument("--channel-mult", type=_tuple, default=d.channel_mult, help="e.g. 1,2,2")
    p.add_argument("--num-res-blocks", type=int, default=d.num_res_blocks)
    p.add_argument("--attention-resolutions", type=_tuple, default=d.attention_resolutions,
                   help="downsampling rates with attention, e.g. 2,4")
    p.add_argument("--num-head-channels", type=int, default=d.num_head_channels)
    p.add_argument("--parameterization", choices=["eps", "x0", "v"], default=d.parameterization)
    p.add_argument("--weighting", choices=["none", "min_snr"], default="none")
    p.add_argument("--no-scale-by-std", action="store_true", help="keep scale_factor (default: estimate 1/std)")
    p.add_argument("--scale-factor", type=float, default=d.scale_factor)
    p.add_argument("--cond-drop-prob", type=float, default=d.cond_drop_prob)
    p.add_argument("--lr-schedule", choices=["constant", "cosine"], default="constant")
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--lr-warmup-steps", type=int, default=d.lr_warmup_steps)
    p.add_argument("--ema-decay", type=float, default=d.ema_decay, help="0 turns the EMA off")
    p.add_argument("--no-cache", action="store_true", help="encode every batch instead of caching latents once")
    _add_run_args(p, d.seed)


def _run_train_ldm(args) -> dict:
    import torch

    from ldm_lite.experiments import LDMRecipe, train_ldm

    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = LDMRecipe(
        data=args.data, size=args.size, first_stage=args.first_stage, train_images=args.train_images,
        cond=None if args.cond == "none" else args.cond, model_channels=args.model_channels,
        channel_mult=args.channel_mult, num_res_blocks=args.num_res_blocks,
        attention_resolutions=args.attention_resolutions, num_head_channels=args.num_head_channels,
        parameterization=args.parameterization, weighting=None if args.weighting == "none" else args.weighting,
        scale_by_std=not args.no_scale_by_std, scale_factor=args.scale_factor, cond_drop_prob=args.cond_drop_prob,
        steps=args.steps, batch_size=args.batch_size, lr=args.lr, lr_warmup_steps=args.lr_warmup_steps,
        lr_schedule=args.lr_schedule, ema_decay=args.ema_decay or None, seed=args.seed,
    )
    result = train_ldm(recipe, out_dir=args.out, ckpt_every=args.ckpt_every, resume=args.resume, export=args.export,
                       cache_latents=not args.no_cache,
                       command="ldm-lite " + " ".join(shlex.quote(a) for a in getattr(args, "argv", sys.argv[1:])))
    summary = dict(metrics=result["metrics"], first_stage=result["first_stage"],
                   scale_factor=round(result["scale_factor"], 5), wall_time_s=round(result["wall_time_s"], 1),
                   encode_time_s=round(result["encode_time_s"], 1), weights=result.get("weights"))
    print(json.dumps(summary, indent=2))
    return summary


def _add_sample(sub) -> None:
    p = sub.add_parser("sample", help="sample a shipped / exported LDM into a PNG grid")
    p.add_argument("--model", required=True, help="name under data/pretrained/ or a path (manifest kind 'ldm')")
    p.add_argument("--n", type=int, default=16, help="number of images")
    p.add_argument("--sampler", default="ddim", help="ddim | plms | dpm | ddpm")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--eta", type=float, default=0.0, help="DDIM noise (0 = deterministic)")
    p.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale")
    p.add_argument("--label", type=_tuple, default=None,
                   help="class label(s) for a class-conditional model, e.g. 3 or 0,1,2,3 (repeated to --n)")
    p.add_argument("--latent-size", type=int, default=None, help="latent side; larger than training = bigger images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--nrow", type=int, default=None)
    p.add_argument("--out", default="samples.png", help="PNG file to write")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def _run_sample(args) -> dict:
    import time
    from pathlib import Path

    import torch
    from PIL import Image

    from ldm_lite.config import device
    from ldm_lite.pretrained import _atomic_write, load_ldm
    from ldm_lite.viz import make_grid

    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_ldm(args.model, device=device())
    cond = None
    if args.label is not None:
        reps = -(-args.n // len(args.label))
        cond = torch.tensor((list(args.label) * reps)[: args.n])
    t0 = time.perf_counter()
    images = model.sample(args.n, cond=cond, sampler=args.sampler, steps=args.steps, eta=args.eta,
                          guidance_scale=args.guidance, generator=torch.Generator().manual_seed(args.seed),
                          latent_size=args.latent_size, progress=True)
    seconds = time.perf_counter() - t0
    out = Path(args.out)
    grid = Image.fromarray(make_grid(images, nrow=args.nrow))
    _atomic_write(out, lambda tmp: grid.save(tmp, format="PNG"))
    summary = dict(out=str(out), images=list(images.shape), seconds=round(seconds, 2),
                   seconds_per_image=round(seconds / args.n, 3))
    print(json.dumps(summary, indent=2))
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="ldm-lite", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train_ae(sub)
    _add_train_ldm(sub)
    _add_sample(sub)
    sub.add_parser("list-pretrained", help="list the checkpoints shipped in data/pretrained/")
    args = parser.parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]  # recorded in exported manifests
    if args.command == "train-ae":
        _run_train_ae(args)
    elif args.command == "train-ldm":
        _run_train_ldm(args)
    elif args.command == "sample":
        _run_sample(args)
    elif args.command == "list-pretrained":
        from ldm_lite.pretrained import list_pretrained

        for m in list_pretrained():
            print(f"{m['name']:<28} {m.get('kind', '?'):<12} {json.dumps(m.get('metrics', {}))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
