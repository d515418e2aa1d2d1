"""Learning curve of a text-to-image LDM on shapes: caption accuracy of its checkpoints, on paired samples.

Run from the repository root on one CPU thread, e.g. the two stages of a run (stage 2's steps counted after
stage 1's 3,500)::

    OMP_NUM_THREADS=1 PYTHONPATH=. python data/measurements/measure_text_learning_curve.py \\
        --run runs/text120k_s1 --run runs/text120k_s2 --offset 3500 \\
        --steps 1000,2000,3000,3500,5000,6500,8000,9500 --out data/measurements/text120k_learning_curve.json

or one exported model (``--model``: a shipped name or an export path; its step is the manifest's ``total_steps``,
else its ``steps`` plus ``--offset``)::

    OMP_NUM_THREADS=1 PYTHONPATH=. python data/measurements/measure_text_learning_curve.py \\
        --model ldm_shapes_text64 --out /tmp/text64_final.json

``--offset N`` belongs to the ``--run`` / ``--model`` before it (default 0). ``--steps`` are *total* steps (offset +
the run's own); a step is measured from the run whose checkpoint ``step_<total - offset>`` exists (the first such
run listed). Without ``--steps`` every checkpoint found is measured. A step whose checkpoint does not exist yet
(the run is still training) is reported and left for a later call.

Protocol -- the one of ``ldm_shapes_text64``'s ``learning_curve`` (its manifest: "caption accuracy at guidance 3,
200 captions of ShapesDataset(64, seed=10000), 25 DDIM steps, EMA weights"), with what the manifest leaves open
fixed as follows:

* captions: items 0 .. n-1 of ``ShapesDataset(64, seed=10000)`` (n = 200: 59 one-, 71 two-, 70 three-object
  captions; held-out pairs included, as in the manifest's per-count numbers 59 / 71 / 70);
* DDIM, 25 steps, ``eta = 0`` (deterministic given the starting noise), uniform timestep spacing, classifier-free
  guidance scale 3 against the empty caption;
* starting noise: the captions in batches of 50, batch ``b`` (captions ``50 b`` .. ``50 b + 49``) drawn from
  ``torch.Generator().manual_seed(50 b)`` (notebook 06's ``sample_captions`` seeding, ``seed + i``, with seed 0).
  The same captions and the same noise for every checkpoint and every run: the points are paired;
* weights: the checkpoint's EMA weights (``ema.safetensors`` over ``model.safetensors``; the first stage and
  ``scale_factor`` from ``model.safetensors``), in float32; an export (``--model``) holds the EMA weights in float16.

The manifest does not record the batching, the seeds or eta; this rule is the one that reproduces it. On the shipped
model (``--model ldm_shapes_text64``, float16 EMA export, 9,500 steps) it gives 106 / 200 = 0.530 [0.461, 0.598]
(one object 59 / 59, two 34 / 71, three 13 / 70) -- the manifest's final point exactly, count by count -- and at
guidance 5 (same noise) 0.565 [0.496, 0.632] (59 / 37 / 17), its ``final_at_guidance_5`` exactly. Other seed rules
give other draws of the same model: batches of 100 seeded 0 and 100 give 0.555 (59 / 40 / 12), one batch of 200
seeded 0 gives 0.530 (59 / 37 / 10): a few points of noise-to-noise spread, which is why every point here uses the
same noise. (1 CPU thread: about 150 s per point, 144 s of it sampling, on a machine shared with a training run.)

Scored with the shipped attribute network (``ldm_lite.metrics.load_evaluator("shapes")``):

* ``attributes``: :func:`ldm_lite.metrics.caption_accuracy` -- every object's colour and shape, nothing extra
  (95 % Wilson interval over the n images), per object count, with the size too, and its floor (the same images
  read against shuffled captions);
* ``relation_two_objects``: :func:`ldm_lite.metrics.caption_relation_accuracy` on the two-object captions -- the
  relation right (dominant axis of the matched box centres), over the images where both named objects were found
  (its n says how many; chance 1/4); ``relation_all_two_object_images``: the same over all two-object images (an
  image whose objects were not found counts as wrong); ``two_objects_found`` and ``both_two_objects`` beside them;
* ``ceiling``: the same scores on the real renders of the same captions, once per file.

Per point the per-image outcomes are kept (``per_image``: one character per caption, ``1`` / ``0``, ``-`` where
not scored), so two points -- two checkpoints, or two runs at the same step -- are compared on their paired images
with :func:`paired_accuracy_difference` (a bootstrap over the shared captions), not by their intervals.

The file is written after every point (atomically) and read back on the next call: a checkpoint already in it is
skipped, so the measurement resumes. A file written with another protocol is refused. Each point records the
command, the date, torch's thread count and its wall time (load, sampling, scoring).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ldm_lite.metrics.distances import bonferroni_level, bootstrap_interval

REPO = Path(__file__).resolve().parents[2]
SCRIPT = "data/measurements/measure_text_learning_curve.py"
FORMAT = "ldm_lite.text_learning_curve/1"

CAPTION_SIZE, CAPTION_SEED = 64, 10_000
N_CAPTIONS, GUIDANCE, DDIM_STEPS, ETA, BATCH = 200, 3.0, 25, 0.0, 50


# --------------------------------------------------------------------------------------------------
# The fixed inputs: captions, their real renders, the starting noise
# --------------------------------------------------------------------------------------------------
def fixed_captions(n: int = N_CAPTIONS) -> tuple[list[str], torch.Tensor]:
    """Items 0 .. n-1 of ``ShapesDataset(64, seed=10000)``: their captions and real renders (in [-1, 1])."""
    from ldm_lite.data.shapes import ShapesDataset

    ds = ShapesDataset(CAPTION_SIZE, length=max(n, 1), seed=CAPTION_SEED)
    items = [ds[i] for i in range(n)]
    return [it["caption"] for it in items], torch.stack([it["image"] for it in items])


def batch_seeds(n: int, batch: int) -> list[int]:
    """The generator seed of each batch: the index of its first caption (``sample_captions(..., seed=0)``)."""
    return list(range(0, n, batch))


def protocol(n: int, ddim_steps: int = DDIM_STEPS, batch: int = BATCH) -> dict:
    """Everything the points of one file share; a file with another protocol is refused."""
    captions, _ = fixed_captions(n)
    return dict(
        captions=dict(source=f"ShapesDataset({CAPTION_SIZE}, seed={CAPTION_SEED}), items 0..{n - 1}", n=n,
                      per_count={str(k): sum(_count(c) == k for c in captions) for k in (1, 2, 3)},
                      sha256=hashlib.sha256("\n".join(captions).encode()).hexdigest()),
        sampling=dict(sampler="ddim", steps=ddim_steps, eta=ETA, timestep_spacing="uniform",
                      guidance_scale=GUIDANCE, unconditional="the empty caption", batch_size=batch,
                      batch_generator_seeds=batch_seeds(n, batch),
                      generator="torch.Generator().manual_seed(seed) per batch (CPU), the starting noise x_T"),
        weights="EMA (a checkpoint: ema.safetensors over model.safetensors, float32; an export: float16)",
    )


def _count(caption: str) -> int:
    from ldm_lite.metrics.conditional import parse_caption

    return len(parse_caption(caption))


# --------------------------------------------------------------------------------------------------
# Models: a checkpoint's EMA weights, or an export
# --------------------------------------------------------------------------------------------------
def run_checkpoints(run: str | Path) -> dict[int, Path]:
    """``{step: folder}`` of a run folder's complete checkpoints (``checkpoints/step_XXXXXXXX`` with its files)."""
    out = {}
    for d in sorted((Path(run) / "checkpoints").glob("step_*")):
        if d.name[5:].isdigit() and all((d / f).is_file() for f in ("trainer.json", "model.safetensors",
                                                                     "ema.safetensors")):
            out[int(d.name[5:])] = d
    return out


def load_checkpoint_model(folder: str | Path, first_stage: str | None = None):
    """The LDM of a ``train-ldm`` checkpoint with its EMA weights, in eval mode.

    Built from the recipe in its ``trainer.json`` (``first_stage``: override the recipe's autoencoder name / path);
    the text encoder's kept vocabulary is read back from the checkpoint's ``cond_stage.lookup`` (the rows of the
    training captions' WordPiece ids), then :func:`ldm_lite.train.Trainer.load_weights` loads every weight and
    buffer (first stage and ``scale_factor`` included, sha256-checked) and the EMA weights over the UNet and the
    text encoder.
    """
    from dataclasses import fields

    from safetensors import safe_open

    from ldm_lite.experiments import LDMRecipe, build_ldm
    from ldm_lite.pretrained import load_autoencoder
    from ldm_lite.train import Trainer

    folder = Path(folder)
    info = json.loads((folder / "trainer.json").read_text())
    known = {f.name for f in fields(LDMRecipe)}
    recipe = LDMRecipe(**{k: v for k, v in (info.get("recipe") or {}).items() if k in known})
    if recipe.cond != "text":
        raise SystemExit(f"{folder}: a checkpoint of a cond={recipe.cond!r} model; this script measures text models")
    fs = first_stage or recipe.first_stage
    if fs in (None, "auto", "pixel"):
        raise SystemExit(f"{folder}: its recipe names no exported first stage ({fs!r}); pass --first-stage")
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        lookup = f.get_tensor("cond_stage.lookup").long()
    vocabulary = torch.nonzero(lookup < lookup.max()).flatten().tolist()  # the last row is [UNK]
    model = build_ldm(recipe, load_autoencoder(fs), vocabulary=vocabulary)
    Trainer.load_weights(folder, model, ema=True)
    return model.eval()


def load_export_model(name_or_path: str):
    from ldm_lite.pretrained import load_ldm

    return load_ldm(name_or_path).eval()


# --------------------------------------------------------------------------------------------------
# Sampling and scoring
# --------------------------------------------------------------------------------------------------
@torch.no_grad()
def sample(model, captions: list[str], ddim_steps: int = DDIM_STEPS, batch: int = BATCH) -> torch.Tensor:
    """The protocol's samples of ``captions`` (see the module docstring)."""
    out = []
    for seed, i in zip(batch_seeds(len(captions), batch), range(0, len(captions), batch)):
        part = captions[i: i + batch]
        out.append(model.sample(len(part), cond=part, guidance_scale=GUIDANCE, sampler="ddim", steps=ddim_steps,
                                eta=ETA, generator=torch.Generator().manual_seed(seed), progress=False).cpu())
    return torch.cat(out)


def _score(s: dict) -> dict:
    return dict(value=s["value"], ci95=list(s["ci95"]), n=s["n"])


def _char(x) -> str:
    return "-" if x is None else ("1" if x else "0")


def score(images: torch.Tensor, captions: list[str], evaluator) -> dict:
    """Attribute caption accuracy (overall, per count, with size, floor) and relation accuracy of the two-object
    captions, each ``dict(value, ci95, n)``; ``per_image`` outcomes as strings (one character per caption)."""
    from ldm_lite.metrics.conditional import caption_accuracy, caption_relation_accuracy
    from ldm_lite.metrics.distances import wilson_interval

    acc = caption_accuracy(images, captions, evaluator)
    rel = caption_relation_accuracy(images, captions, evaluator)
    rows = rel["per_image"]
    two = [r for r in rows if r["objects"] == 2]
    right = sum(r["relation"] is True for r in two)
    attributes = "".join(_char(r["attributes"]) for r in rows)
    if not np.isclose(attributes.count("1") / len(rows), acc["value"]):  # the two scorers read the same hits
        raise RuntimeError("caption_accuracy and caption_relation_accuracy disagree on the attribute hits")
    out = dict(
        attributes=_score(acc),
        per_count={str(k): _score(v) for k, v in acc["per_count"].items()},
        attributes_with_size=_score(acc["with_size"]),
        floor_shuffled_captions=_score(acc["floor"]),
        relation_two_objects=_score(rel["per_count"][2]["relation"]) if 2 in rel["per_count"] else None,
        relation_all_two_object_images=(dict(value=right / len(two), ci95=list(wilson_interval(right, len(two))),
                                             n=len(two)) if two else None),
        two_objects_found=_score(rel["per_count"][2]["found"]) if 2 in rel["per_count"] else None,
        both_two_objects=_score(rel["per_count"][2]["both"]) if 2 in rel["per_count"] else None,
        relation_per_count={str(k): _score(v["relation"]) for k, v in rel["per_count"].items() if k > 1},
        relation_chance=0.25,
        per_image=dict(attributes=attributes, relation="".join(_char(r["relation"]) for r in rows),
                       both="".join(_char(r["both"]) for r in rows)),
    )
    return out


def ceiling(reals: torch.Tensor, captions: list[str], evaluator) -> dict:
    """The same scores on the real renders of the captions: the scorer's own limit."""
    s = score(reals, captions, evaluator)
    s.pop("floor_shuffled_captions")
    s["what"] = "the real ShapesDataset renders of the same captions, scored the same way"
    return s


def paired_accuracy_difference(a: dict, b: dict, key: str = "attributes", comparisons: int = 1,
                               n_boot: int = 1000, seed: int = 0) -> dict:
    """Point ``a`` minus point ``b`` on their paired images (same captions, same starting noise): the mean of the
    per-image differences of ``key`` (``"attributes"``, ``"both"``, or ``"relation"`` -- images scored in both),
    with a bootstrap interval over the shared images at the Bonferroni level for ``comparisons``."""
    xa, xb = a["per_image"][key], b["per_image"][key]
    if len(xa) != len(xb):
        raise ValueError(f"the points have {len(xa)} and {len(xb)} images: not paired")
    d = np.array([int(p) - int(q) for p, q in zip(xa, xb) if p != "-" and q != "-"], dtype=float)
    level = bonferroni_level(comparisons)
    lo, hi = bootstrap_interval(d, n_boot=n_boot, seed=seed, level=level) if len(d) else (float("nan"),) * 2
    return dict(value=float(d.mean()) if len(d) else float("nan"), ci=[float(lo), float(hi)], level=level,
                n=int(len(d)), key=key)


# --------------------------------------------------------------------------------------------------
# The results file
# --------------------------------------------------------------------------------------------------
def _shown(path: str | Path) -> str:
    """A path relative to the repository when inside it (no machine paths in the file)."""
    p = Path(path).resolve()
    try:
        return str(p.relative_to(REPO))
    except ValueError:
        return str(path)


def _clean(x):
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return None if not np.isfinite(x) else round(float(x), 4)
    if isinstance(x, np.integer):
        return int(x)
    return x


def read_results(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def write_results(path: Path, data: dict) -> None:
    from ldm_lite.io import atomic_write

    text = json.dumps(_clean(data), indent=1, allow_nan=False) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} in the file, {b!r} now")
    return out


# --------------------------------------------------------------------------------------------------
# The command line
# --------------------------------------------------------------------------------------------------
class _Source(argparse.Action):
    """``--run`` / ``--model`` append a source; ``--offset`` sets the offset of the source before it."""

    def __call__(self, parser, namespace, value, option_string=None):
        sources = getattr(namespace, "sources", None) or []
        if self.dest == "offset":
            if not sources:
                parser.error("--offset follows the --run or --model it belongs to")
            if sources[-1]["offset_given"]:
                parser.error(f"two --offset values for {sources[-1]['path']}")
            sources[-1].update(offset=value, offset_given=True)
        else:
            sources.append(dict(kind=self.dest, path=value, offset=0, offset_given=False))
        namespace.sources = sources


def _steps(text: str) -> list[int]:
    try:
        steps = sorted({int(s) for s in text.split(",") if s.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"--steps takes comma-separated integers, got {text!r}") from None
    if not steps or steps[0] < 1:
        raise argparse.ArgumentTypeError(f"--steps must be positive, got {text!r}")
    return steps


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", dest="run", action=_Source, help="a train-ldm run folder (repeat for later stages)")
    p.add_argument("--model", dest="model", action=_Source, help="an exported LDM: shipped name or export path")
    p.add_argument("--offset", dest="offset", action=_Source, type=int,
                   help="steps before this source (stage 1's steps for stage 2); follows its --run / --model")
    p.add_argument("--steps", type=_steps, default=None, help="total steps to measure, e.g. 1000,2000,3500")
    p.add_argument("--out", required=True, help="the results file (JSON; read back and extended)")
    p.add_argument("--captions", type=int, default=N_CAPTIONS, help=f"captions (default {N_CAPTIONS})")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--ddim-steps", type=int, default=DDIM_STEPS, help=f"DDIM steps (default {DDIM_STEPS}; tests)")
    p.add_argument("--batch", type=int, default=BATCH, help=f"captions per sampling batch (default {BATCH})")
    p.add_argument("--first-stage", default=None, help="override a checkpoint recipe's first stage")
    return p


def _plan(sources: list[dict], steps: list[int] | None) -> tuple[list[dict], list[int]]:
    """The points to measure, in order of total step, and the requested steps no source has (yet)."""
    from ldm_lite.exports import load_manifest, resolve
    from ldm_lite.io import sha256_file

    candidates = []
    for src in sources:
        if src["kind"] == "run":
            if not Path(src["path"]).is_dir():  # a later stage that has not started: nothing to measure yet
                print(f"--run {src['path']}: no such folder (yet)", flush=True)
            for s, folder in run_checkpoints(src["path"]).items():
                files = json.loads((folder / "trainer.json").read_text()).get("files", {})
                candidates.append(dict(source=_shown(src["path"]), kind="run", checkpoint=_shown(folder),
                                       step=s, offset=src["offset"], total_step=src["offset"] + s,
                                       ema_sha256=files.get("ema.safetensors"), folder=folder))
        else:
            man = load_manifest(src["path"])
            base = resolve(src["path"])
            own = int(man.get("total_steps") or man["steps"])
            total = own if man.get("total_steps") and not src["offset_given"] else src["offset"] + int(man["steps"])
            candidates.append(dict(source=_shown(base) if str(src["path"]) != base.name else base.name,
                                   kind="model", step=int(man["steps"]), offset=total - int(man["steps"]),
                                   total_step=total, model=str(src["path"]),
                                   weights_sha256=man.get("weights_sha256") or sha256_file(
                                       base.with_suffix(".safetensors"))))
    if steps is None:
        chosen = candidates
        missing = []
    else:
        chosen, missing = [], []
        for t in steps:
            hit = [c for c in candidates if c["total_step"] == t]
            if hit:
                chosen.append(hit[0])
            else:
                missing.append(t)
        if any(c["kind"] == "model" for c in candidates):  # an export is measured whatever its step
            chosen += [c for c in candidates if c["kind"] == "model" and c not in chosen]
    return sorted(chosen, key=lambda c: (c["total_step"], c["source"])), missing


def _key(point: dict) -> tuple:
    """What makes a point the same point: its source, its own step and the weights measured (the EMA file's sha256
    as its checkpoint recorded it; an export's weights sha256)."""
    return (point["source"], point["step"], point.get("ema_sha256") or point.get("weights_sha256"))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser().parse_args(argv)
    sources = getattr(args, "sources", None) or []
    if not sources:
        parser().error("give at least one --run or --model")
    if args.captions < 2 or args.threads < 1 or args.ddim_steps < 1 or args.batch < 1:
        parser().error("--captions >= 2, --threads, --ddim-steps and --batch >= 1")
    torch.set_num_threads(args.threads)
    command = " ".join(shlex.quote(a) for a in ["python", SCRIPT, *argv])
    out = Path(args.out)

    proto = protocol(args.captions, args.ddim_steps, args.batch)
    data = read_results(out)
    if data is None:
        data = dict(format=FORMAT, what="caption accuracy of text-to-image LDM checkpoints on fixed, paired captions "
                                        "and starting noise (see the script's docstring)",
                    script=SCRIPT, protocol=proto, ceiling=None, points=[])
    elif data.get("format") != FORMAT:
        raise SystemExit(f"{out}: not a file of this script (format {data.get('format')!r})")
    elif data["protocol"] != json.loads(json.dumps(_clean(proto))):
        diff = _differences(data["protocol"], json.loads(json.dumps(_clean(proto))))
        raise SystemExit(f"{out} was measured with another protocol ({'; '.join(diff[:4])}); use another --out")

    plan, missing = _plan(sources, args.steps)
    done = {_key(p) for p in data["points"]}
    todo = [c for c in plan if _key(c) not in done]
    for t in missing:
        print(f"step {t}: no checkpoint yet in {', '.join(s['path'] for s in sources)} -- run again later", flush=True)
    for c in plan:
        if _key(c) in done:
            print(f"step {c['total_step']} ({c['source']} step {c['step']}): already in {out.name}, skipped",
                  flush=True)

    from ldm_lite.metrics import load_evaluator

    evaluator = load_evaluator("shapes")
    captions, reals = fixed_captions(args.captions)
    if data["ceiling"] is None:
        t0 = time.perf_counter()
        data["ceiling"] = dict(ceiling(reals, captions, evaluator), evaluator=evaluator.name,
                               wall_time_s=round(time.perf_counter() - t0, 1))
        data["evaluator"] = evaluator.name
        write_results(out, data)

    for c in todo:
        t0 = time.perf_counter()
        model = load_checkpoint_model(c["folder"], args.first_stage) if c["kind"] == "run" else \
            load_export_model(c["model"])
        t1 = time.perf_counter()
        images = sample(model, captions, args.ddim_steps, args.batch)
        t2 = time.perf_counter()
        result = score(images, captions, evaluator)
        t3 = time.perf_counter()
        point = {k: v for k, v in c.items() if k not in ("folder", "model")}
        point.update(result, command=command, date=datetime.datetime.now().isoformat(timespec="seconds"),
                     torch_threads=torch.get_num_threads(), torch=torch.__version__,
                     python=platform.python_version(), device="cpu",
                     wall_time_s=dict(load=round(t1 - t0, 1), sampling=round(t2 - t1, 1),
                                      scoring=round(t3 - t2, 1), total=round(t3 - t0, 1)))
        data["points"].append(point)
        data["points"].sort(key=lambda p: (p["total_step"], p["source"]))
        write_results(out, data)
        a = result["attributes"]
        r = result["relation_two_objects"] or {"value": float("nan"), "n": 0}
        print(f"step {c['total_step']} ({c['source']} step {c['step']}): caption accuracy {a['value']:.3f} "
              f"[{a['ci95'][0]:.3f}, {a['ci95'][1]:.3f}] n={a['n']}; per count "
              + ", ".join(f"{k}: {v['value']:.3f}" for k, v in result["per_count"].items())
              + f"; relation (2 objects, found) {r['value']:.3f} n={r['n']}; {t3 - t0:.0f} s", flush=True)
        del model, images
    return 0


if __name__ == "__main__":
    sys.exit(main())
