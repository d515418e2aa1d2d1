"""Latent vs pixel-space diffusion: training throughput and sampling time at 64 px (paper Sec. 4.1, Fig. 6-7).

The paper's claim is that a diffusion model in the latent space of an f=4 or f=8 autoencoder costs a
fraction of one in pixel space. This measures it for the course's models, with the real code path
(:class:`ldm_lite.ldm.LatentDiffusion.training_step` and ``.sample``), in one process:

* **latent, cached** -- training on latents encoded once beforehand (``encode_dataset``; batches hold
  ``"latent"``), the way the course trains;
* **latent, encoder in the loop** -- training on images: the frozen KL f=4 encoder runs every step;
* **pixel** -- the same class with ``first_stage=None``, trained on the 64×64×3 images.

What "comparable" means here: the **same UNet configuration** (``LDMRecipe``'s: model_channels,
channel_mult, num_res_blocks, attention_resolutions, head width -- only in/out channels differ, 4 vs 3),
applied to 16×16×4 latents and to 64×64×3 pixels. This is the paper's LDM-1 vs LDM-4 comparison
(same architecture, different f). It means the pixel model's levels, including its attention levels
(downsampling rates 2 and 4), run on grids 16× larger -- attention at 32×32 = 1024 tokens instead of
8×8 = 64 -- which is exactly the cost the first stage removes. ``--deep-pixel`` adds a pixel variant
with two more downsampling levels (attention at the latent model's token counts, more parameters), to
show that even a pixel UNet shaped for the larger input stays far behind.

Training: forward + backward + AdamW step of ``training_step`` (batch ``--batch``). Sampling: DDIM
``--sample-steps`` steps for ``--sample-batch`` images, including the decoder for the latent model.
Variants are timed in interleaved rounds (the order rotates each round) after one warm-up each, and
the medians are printed with ratios. The autoencoder is the shipped KL f=4 checkpoint when
``data/pretrained/`` has one (``*f4*``), else a freshly initialised one of the same configuration
(``AERecipe()``'s; the weights do not change the timings).

    python benchmarks/latent_vs_pixel.py --threads 1
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from ldm_lite.autoencoder.model import build_autoencoder  # noqa: E402
from ldm_lite.experiments import AERecipe, LDMRecipe  # noqa: E402
from ldm_lite.ldm import LatentDiffusion  # noqa: E402
from ldm_lite.pretrained import PRETRAINED_DIR, load_autoencoder  # noqa: E402
from ldm_lite.unet import UNetModel, count_parameters  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--size", type=int, default=64, help="image side in pixels")
    p.add_argument("--batch", type=int, default=8, help="training batch")
    p.add_argument("--train-steps", type=int, default=2, help="timed training steps per variant and round")
    p.add_argument("--sample-steps", type=int, default=10, help="DDIM steps")
    p.add_argument("--sample-batch", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    p.add_argument("--deep-pixel", action="store_true", help="also time a pixel UNet with 2 extra levels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    return p.parse_args(argv)


def first_stage():
    """The shipped KL f=4 autoencoder if present, else a fresh one of the default f=4 configuration."""
    for path in sorted(glob.glob(str(PRETRAINED_DIR / "*f4*.json"))):
        with open(path) as f:
            man = json.load(f)
        if man.get("kind") == "autoencoder" and man["config"].get("f") == 4 and man["config"].get("reg") == "kl":
            return load_autoencoder(path), os.path.basename(path)[:-5]
    return build_autoencoder(AERecipe().autoencoder_config()).eval(), "fresh AutoencoderKL (AERecipe() f=4 config)"


def unet_for(recipe: LDMRecipe, channels: int, extra_levels: int = 0) -> UNetModel:
    mult = tuple(recipe.channel_mult) + (recipe.channel_mult[-1],) * extra_levels
    attn = tuple(a * 2 ** extra_levels for a in recipe.attention_resolutions)
    cfg = recipe.unet_config(channels, channels)
    cfg.channel_mult, cfg.attention_resolutions = mult, attn
    return UNetModel.from_config(cfg)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    recipe = LDMRecipe(size=args.size)
    ae, ae_name = first_stage()
    models = {
        "latent": LatentDiffusion(ae, unet_for(recipe, ae.embed_dim), image_size=args.size),
        "pixel": LatentDiffusion(None, unet_for(recipe, 3), image_size=args.size),
    }
    if args.deep_pixel:
        models["pixel, 2 extra levels"] = LatentDiffusion(None, unet_for(recipe, 3, extra_levels=2), image_size=args.size)
    for m in models.values():
        m.scale_factor.fill_(1.0)

    images = torch.rand(args.batch, 3, args.size, args.size) * 2 - 1
    with torch.no_grad():
        latents = models["latent"].encode_first_stage(images)
    batches = {"latent, cached": ("latent", {"latent": latents}), "latent, encoder in loop": ("latent", {"image": images})}
    for name in models:
        if name != "latent":
            batches[name] = (name, {"image": images})
    optims = {name: m.configure_optimizers()["ldm"] for name, m in models.items()}

    def train(variant: str) -> float:
        name, batch = batches[variant]
        model, opt = models[name], optims[name]
        model.train()
        t0 = time.perf_counter()
        for step in range(args.train_steps):
            loss, _ = model.training_step(batch, step, "ldm")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return args.train_steps * args.batch / (time.perf_counter() - t0)  # images / s

    def sample(name: str) -> float:
        gen = torch.Generator().manual_seed(args.seed)
        t0 = time.perf_counter()
        models[name].sample(args.sample_batch, steps=args.sample_steps, generator=gen, progress=False)
        return (time.perf_counter() - t0) / args.sample_batch  # s / image

    @torch.no_grad()
    def encode_only() -> float:
        t0 = time.perf_counter()
        models["latent"].encode_first_stage(images)
        return args.batch / (time.perf_counter() - t0)

    @torch.no_grad()
    def decode_only() -> float:
        z = latents[: args.sample_batch]
        t0 = time.perf_counter()
        models["latent"].decode_first_stage(z)
        return (time.perf_counter() - t0) / args.sample_batch

    print(f"threads={args.threads}  images {args.size}x{args.size}x3  latents {tuple(latents.shape[1:])}  "
          f"first stage: {ae_name}")
    for name, m in models.items():
        c = m.unet.config
        print(f"  {name:<24} UNet {count_parameters(m.unet) / 1e6:.2f} M params, model_channels={c.model_channels}, "
              f"channel_mult={c.channel_mult}, num_res_blocks={c.num_res_blocks}, "
              f"attention_resolutions={c.attention_resolutions}, head width {c.num_head_channels}")

    jobs = [(f"train: {v}", lambda v=v: train(v)) for v in batches]
    jobs += [(f"sample: {n}", lambda n=n: sample(n)) for n in models]
    jobs += [("encoder only", encode_only), ("decoder only", decode_only)]
    for _, fn in jobs:  # warm-up
        fn()
    results: dict[str, list[float]] = {name: [] for name, _ in jobs}
    for r in range(args.rounds):
        order = jobs[r % len(jobs):] + jobs[: r % len(jobs)]
        for name, fn in order:
            results[name].append(fn())
    med = {k: statistics.median(v) for k, v in results.items()}

    print(f"\nmedians of {args.rounds} interleaved rounds (training batch {args.batch}, {args.train_steps} steps per "
          f"round; sampling DDIM {args.sample_steps} steps, batch {args.sample_batch})")
    for k, v in med.items():
        unit = "images/s" if (k.startswith("train") or k == "encoder only") else "s/image"
        spread = f"(min {min(results[k]):.4g}, max {max(results[k]):.4g})"
        print(f"  {k:<36} {v:10.4g} {unit:<9} {spread}")
    ratios = {
        "training, latent cached / pixel": med["train: latent, cached"] / med["train: pixel"],
        "training, latent with encoder / pixel": med["train: latent, encoder in loop"] / med["train: pixel"],
        "training, cached / encoder in loop": med["train: latent, cached"] / med["train: latent, encoder in loop"],
        "sampling, pixel / latent (s per image)": med["sample: pixel"] / med["sample: latent"],
        "sampling: decoder share of latent time": med["decoder only"] / med["sample: latent"],
    }
    if args.deep_pixel:
        ratios["training, latent cached / deep pixel"] = med["train: latent, cached"] / med["train: pixel, 2 extra levels"]
        ratios["sampling, deep pixel / latent"] = med["sample: pixel, 2 extra levels"] / med["sample: latent"]
    print("\nratios (> 1: latent is faster)")
    for k, v in ratios.items():
        print(f"  {k:<44} {v:8.2f}" + ("x" if "share" not in k else ""))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(args=vars(args), first_stage=ae_name, medians=med, rounds=results, ratios=ratios), f,
                      indent=1)
    return med, ratios


if __name__ == "__main__":
    main()
