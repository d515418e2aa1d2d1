"""Peak memory and time of a tiled decode vs one full decode (chapter 07, images larger than memory allows).

The latents are those of a sheet of held-out OpenMoji emoji (64 px each, 2×2 of them on a 128 px canvas,
8×8 on 512 px) encoded once by the shipped ``ae_kl_f4_openmoji64`` (trained on single 64 px emoji). Each decode runs in a fresh Python process (its peak
resident memory above the resident memory just before, from ``/proc/self/status`` after resetting the
high-water mark -- Linux only), alternating full and tiled, so the machine's load affects both alike. Prints, per canvas, the
ratios tiled / full of peak memory and of time, and the PSNR of each decode against the sheet.

    python benchmarks/tiled_decode.py [--sizes 128,256,512] [--tile 16] [--overlap 4] [--rounds 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

CHILD = r"""
import json, sys, time, torch
torch.set_num_threads(int(sys.argv[4]))
from ldm_lite.pretrained import load_autoencoder
from ldm_lite.autoencoder.tiled import tiled_decode
size, mode, tile, overlap = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[5])
ae = load_autoencoder("ae_kl_f4_openmoji64").eval()
z = torch.load(sys.argv[7])
with torch.no_grad():
    ae.decode(torch.randn(1, 4, 8, 8))  # warm-up at a tiny size: loads kernels, allocator pools
    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1])  # kB
    base = status("VmRSS:")
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # reset the high-water mark VmHWM to the current RSS (Linux)
    t0 = time.perf_counter()
    x = ae.decode(z) if mode == "full" else tiled_decode(ae.decode, z, 4, tile, overlap)
    dt = time.perf_counter() - t0
peak = status("VmHWM:")
torch.save(x, sys.argv[6])
print(json.dumps(dict(mb=(peak - base) / 1024, s=dt)))
"""


def run(size: int, mode: str, tile: int, overlap: int, threads: int, out: str, latent: str) -> dict:
    res = subprocess.run([sys.executable, "-c", CHILD, str(size), mode, str(tile), str(threads), str(overlap), out,
                          latent], capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    import tempfile

    import torch

    from ldm_lite.data import load_openmoji
    from ldm_lite.metrics.reconstruction import psnr
    from ldm_lite.pretrained import load_autoencoder

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="128,256,512", help="canvas sides, multiples of 64")
    ap.add_argument("--tile", type=int, default=16, help="latent tile side (16 = the autoencoder's 64 px)")
    ap.add_argument("--overlap", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ae = load_autoencoder("ae_kl_f4_openmoji64").eval()
    print(f"{'canvas':>8} {'full MB':>9} {'tiled MB':>9} {'mem ratio':>10} {'full s':>8} {'tiled s':>8} "
          f"{'time ratio':>10} {'PSNR full':>10} {'PSNR tiled':>11}")
    with tempfile.TemporaryDirectory() as tmp:
        for size in (int(s) for s in args.sizes.split(",")):
            k = size // 64
            emoji = load_openmoji(64, split="test")
            tiles = torch.stack([emoji[i % len(emoji)]["image"] for i in range(k * k)])
            image = tiles.view(k, k, 3, 64, 64).permute(2, 0, 3, 1, 4).reshape(1, 3, size, size)
            with torch.no_grad():
                torch.save(ae.encode(image).mode(), f"{tmp}/z.pt")
            rows = {"full": [], "tiled": []}
            for r in range(args.rounds):
                order = ("full", "tiled") if r % 2 == 0 else ("tiled", "full")
                for mode in order:
                    rows[mode].append(run(size, mode, args.tile, args.overlap, args.threads, f"{tmp}/{mode}.pt",
                                         f"{tmp}/z.pt"))
            full, tiled = torch.load(f"{tmp}/full.pt"), torch.load(f"{tmp}/tiled.pt")
            fm, tm = (statistics.median(x["mb"] for x in rows[k]) for k in ("full", "tiled"))
            fs, ts = (statistics.median(x["s"] for x in rows[k]) for k in ("full", "tiled"))
            pf, pt = (float(psnr(x.clamp(-1, 1), image)) for x in (full, tiled))
            print(f"{size:>6}px {fm:>9.0f} {tm:>9.0f} {tm / fm:>10.2f} {fs:>8.2f} {ts:>8.2f} {ts / fs:>10.2f} "
                  f"{pf:>7.1f} dB {pt:>8.1f} dB")


if __name__ == "__main__":
    main()
