"""``ldm-lite``: the course's long runs outside notebooks (same recipes as the notebooks).

    ldm-lite train-ae --data openmoji --size 64 --f 8 --reg kl --steps 4000 --out runs/ae_f8
    ldm-lite list-pretrained
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys


def _tuple(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


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
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--kl-weight", type=float, default=d.kl_weight)
    p.add_argument("--perceptual-weight", type=float, default=d.perceptual_weight)
    p.add_argument("--perceptual", default=d.perceptual, help="auto | lpips | random-vgg | none")
    p.add_argument("--disc-start", type=int, default=d.disc_start, help="step at which the PatchGAN starts")
    p.add_argument("--disc-weight", type=float, default=d.disc_weight)
    p.add_argument("--ema-decay", type=float, default=None)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--out", default=None, help="run folder for checkpoints (resume with --resume)")
    p.add_argument("--ckpt-every", type=int, default=None)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--export", default=None, help="name under data/pretrained/ or a path for the final weights")
    p.add_argument("--eval-every", type=int, default=None, help="report held-out PSNR/SSIM every N steps")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")


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
        ema_decay=args.ema_decay, seed=args.seed,
    )
    result = train_autoencoder(recipe, out_dir=args.out, ckpt_every=args.ckpt_every, resume=args.resume,
                               export=args.export, eval_every=args.eval_every, command="ldm-lite " + " ".join(shlex.quote(a) for a in sys.argv[1:]))
    summary = dict(metrics=result["metrics"], wall_time_s=round(result["wall_time_s"], 1),
                   perceptual=result["perceptual"], weights=result.get("weights"))
    print(json.dumps(summary, indent=2))
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="ldm-lite", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train_ae(sub)
    sub.add_parser("list-pretrained", help="list the checkpoints shipped in data/pretrained/")
    args = parser.parse_args(argv)
    if args.command == "train-ae":
        _run_train_ae(args)
    elif args.command == "list-pretrained":
        from ldm_lite.pretrained import list_pretrained

        for m in list_pretrained():
            print(f"{m['name']:<28} {m.get('kind', '?'):<12} {json.dumps(m.get('metrics', {}))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
