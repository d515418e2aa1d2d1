"""Training throughput of ldm_lite's UNetModel vs diffusers' UNet2DConditionModel at an equal configuration.

One training step = forward + MSE loss against a random target + backward + AdamW step, on a batch of
latents ``(B, 4, S, S)`` with random timesteps and a random cross-attention context ``(B, M, 384)``.
Both models have the same architecture (built from one :class:`ldm_lite.unet.UNetConfig` via
``diffusers_equivalent``; parameter counts are printed and must agree within 2%). They are timed in
one process, in alternating order, after warm-up, and the result is printed as a ratio ours/diffusers
of the median images per second.

    python benchmarks/unet_throughput.py                  # defaults: batch 32, 2 threads, 16×16 latents
    python benchmarks/unet_throughput.py --channels-last  # also time both models in channels_last
    python benchmarks/unet_throughput.py --compile        # also time torch.compile'd models (slow to start)

The default configuration is the course's small text-conditional latent UNet: model_channels 64,
channel_mult (1, 2, 2), two ResBlocks per level, SpatialTransformers at ds 2 and 4 (and the middle),
32-channel heads, context_dim 384 (MiniLM) -- 10.8 M parameters.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from ldm_lite.unet import UNetConfig, UNetModel, count_parameters, diffusers_equivalent  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=12, help="timed training steps per model")
    p.add_argument("--block", type=int, default=1,
                   help="steps per model before switching to the next model (models alternate A B B A ...)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per model before timing")
    p.add_argument("--size", type=int, default=16, help="latent height = width")
    p.add_argument("--ctx-len", type=int, default=16, help="context tokens M")
    p.add_argument("--context-dim", type=int, default=384)
    p.add_argument("--model-channels", type=int, default=64)
    p.add_argument("--channels-last", action="store_true", help="also time both models in channels_last")
    p.add_argument("--compile", action="store_true", help="also time torch.compile'd versions of both models")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def build(args):
    cfg = UNetConfig(in_channels=4, out_channels=4, model_channels=args.model_channels, channel_mult=(1, 2, 2),
                     num_res_blocks=2, attention_resolutions=(2, 4), num_head_channels=32,
                     context_dim=args.context_dim)
    torch.manual_seed(args.seed)
    ours = UNetModel.from_config(cfg)
    import diffusers

    cls_name, kw = diffusers_equivalent(cfg)
    theirs = getattr(diffusers, cls_name)(**kw)
    return cfg, ours, theirs


class Runner:
    """One model + optimiser + fixed batch; ``step()`` is one full training step."""

    def __init__(self, name, model, batch, is_diffusers, channels_last=False, compile_=False):
        self.name = name
        self.model = model.train()
        x, t, c, target = batch
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        self.batch = (x, t, c, target)
        # the same optimiser for both; fused (one kernel for all tensors) where this torch has it on CPU
        try:
            self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4, fused=True)
        except (RuntimeError, TypeError):
            self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4)
        self.is_diffusers = is_diffusers
        self.fn = torch.compile(self.model) if compile_ else self.model
        self.times: list[float] = []  # wall-clock seconds per step, one entry per round
        self.cpu: list[float] = []  # process CPU seconds per step (all threads), one entry per round

    def forward(self):
        x, t, c, _ = self.batch
        if self.is_diffusers:
            return self.fn(x, t, encoder_hidden_states=c).sample
        return self.fn(x, t, context=c)

    def step(self):
        target = self.batch[3]
        loss = torch.nn.functional.mse_loss(self.forward(), target)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss

    def timed(self, n):
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(n):
            self.step()
        self.times.append((time.perf_counter() - t0) / n)
        self.cpu.append((time.process_time() - c0) / n)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    cfg, ours, theirs = build(args)
    n_ours, n_theirs = count_parameters(ours), count_parameters(theirs)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch {args.batch}, "
          f"latent 4×{args.size}×{args.size}, context {args.ctx_len}×{args.context_dim}")
    print(f"config: {cfg}")
    print(f"parameters: ours {n_ours:,}   diffusers {n_theirs:,}   ({100 * (n_ours / n_theirs - 1):+.2f}%)")
    if abs(n_ours / n_theirs - 1) > 0.02:
        raise SystemExit("parameter counts differ by more than 2%: the configurations are not equal")
    g = torch.Generator().manual_seed(args.seed)
    b = args.batch
    batch = (torch.randn(b, 4, args.size, args.size, generator=g), torch.randint(0, 1000, (b,), generator=g),
             torch.randn(b, args.ctx_len, args.context_dim, generator=g),
             torch.randn(b, 4, args.size, args.size, generator=g))

    import copy

    runners = [Runner("ours", ours, batch, False), Runner("diffusers", theirs, batch, True)]
    if args.channels_last:
        runners += [Runner("ours channels_last", copy.deepcopy(ours), batch, False, channels_last=True),
                    Runner("diffusers channels_last", copy.deepcopy(theirs), batch, True, channels_last=True)]
    if args.compile:
        runners += [Runner("ours compiled", copy.deepcopy(ours), batch, False, compile_=True),
                    Runner("diffusers compiled", copy.deepcopy(theirs), batch, True, compile_=True)]

    for r in runners:  # warm-up (oneDNN primitive creation, allocator, compilation)
        t0 = time.perf_counter()
        for _ in range(args.warmup):
            r.step()
        print(f"warm-up {r.name:26s} {time.perf_counter() - t0:6.1f} s")
    rounds = max(1, args.steps // args.block)
    for rep in range(rounds):  # alternate the order every round: A B, B A, A B, ...
        order = runners if rep % 2 == 0 else runners[::-1]
        for r in order:
            r.timed(args.block)
        print(f"round {rep + 1:2d}: " + "  ".join(f"{r.name} {b / r.times[-1]:5.1f}" for r in runners) + "  img/s",
              flush=True)

    print(f"\n{'model':26s} {'median img/s':>12s} {'best img/s':>10s} {'CPU s/step':>10s}")
    for r in runners:
        ips = [b / t for t in r.times]
        print(f"{r.name:26s} {statistics.median(ips):12.1f} {max(ips):10.1f} {statistics.median(r.cpu):10.2f}")
    pairs = [("ours", "diffusers")]
    if args.channels_last:
        pairs += [("ours channels_last", "diffusers channels_last"), ("ours channels_last", "diffusers")]
    if args.compile:
        pairs += [("ours compiled", "diffusers compiled")]
    byname = {r.name: r for r in runners}
    print()
    for a, c in pairs:
        ra, rc = byname[a], byname[c]
        # neighbouring steps of the two models see the same machine load: per-round ratios are robust
        per_round = [tc / ta for ta, tc in zip(ra.times, rc.times)]
        print(f"ratio {a} / {c} (img/s): {statistics.median(per_round):.3f} median of {len(per_round)} rounds "
              f"[{min(per_round):.2f}-{max(per_round):.2f}]; best-step ratio {min(rc.times) / min(ra.times):.3f}; "
              f"CPU-time ratio {statistics.median(rc.cpu) / statistics.median(ra.cpu):.3f}")

if __name__ == "__main__":
    main()
