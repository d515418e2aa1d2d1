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


def _int_at_least(low: int):
    """An argparse type: an integer >= ``low`` (e.g. 0 for a step count that may be zero)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    return parse


def _power_of_two(text: str) -> int:
    """An argparse type: 2, 4, 8, ... (a down- or upsampling factor)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 2 or value & (value - 1):
        raise argparse.ArgumentTypeError(f"must be a power of two >= 2 (e.g. 4), got {value}")
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


def _add_run_args(p, seed: int | None) -> None:
    """The options every training command shares: seed (None: the command's settings have it), run folder,
    checkpoints, export, threads."""
    if seed is not None:
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

    p = sub.add_parser("train-ae", help="train a first-stage autoencoder (chapter 01)")
    _add_settings(p, AERecipe)  # every recipe setting: the data, the autoencoder's, its loss's, the training's
    p.add_argument("--eval-every", type=_positive_int, default=None, help="report held-out PSNR/SSIM every N steps")
    _add_run_args(p, None)


def _run_train_ae(args) -> dict:
    from ldm_lite.experiments import AERecipe, check_checkpoint, check_dataset, train_autoencoder

    given = _given_settings(args, AERecipe)
    d = AERecipe()
    reg = given.get("reg", d.reg)
    unused = [("--n-embed", reg != "vq", "is the VQ codebook size: used only with --reg vq"),
              ("--kl-weight", reg != "kl", "weighs the KL term: used only with --reg kl"),
              ("--codebook-weight", reg != "vq", "weighs the codebook loss: used only with --reg vq"),
              ("--disc-weight", "disc_start" not in given,
               "weighs the PatchGAN loss, and the GAN is off unless --disc-start N is given"),
              ("--perceptual", given.get("perceptual_weight", d.perceptual_weight) == 0
               and args.perceptual != "none", "chooses the perceptual loss, which --perceptual-weight 0 turns off")]
    for option, idle, why in unused:
        if given.get(option[2:].replace("-", "_")) is not None and idle:
            raise SystemExit(f"{option} {why}")
    check_dataset(given.get("data", d.data))
    if given.get("init_from"):
        check_checkpoint(given["init_from"], "autoencoder", f"--init-from {given['init_from']}")
    _set_threads(args)
    recipe = AERecipe(**given)
    result = train_autoencoder(recipe, out_dir=args.out, ckpt_every=args.ckpt_every, resume=args.resume,
                               export=args.export, eval_every=args.eval_every, force=args.force,
                               command="ldm-lite " + " ".join(shlex.quote(a) for a in args.argv))
    summary = dict(metrics=result["metrics"], wall_time_s=round(result["wall_time_s"], 1),
                   perceptual=result["perceptual"], weights=result.get("weights"))
    print(json.dumps(summary, indent=2))
    return summary


def _option_type(f):
    """The argparse type of a config field: from its ``cli`` hints (``setting(...)``), else from its annotation."""
    cli, t = f.metadata.get("cli", {}), str(f.type)
    kind = cli.get("type")
    is_float = t.startswith("float")
    kinds = {"positive": _finite_float(0, low_open=True) if is_float else _positive_int,
             "count": _int_at_least(0), "non-negative": _finite_float(0),
             "probability": _finite_float(0, 1, high_open=True), "power2": _power_of_two, "int": int,
             "float": _finite_float(cli.get("low"), cli.get("high"), low_open=bool(cli.get("open")),
                                    high_open=bool(cli.get("open"))),
             "list": lambda text: tuple(v.strip() for v in text.split(",") if v.strip())}
    if kind in kinds:
        return kinds[kind]
    if t.startswith("tuple[int"):
        return _tuple
    if t.startswith("int"):
        return _positive_int
    return _finite_float() if is_float else str


def _add_settings(p, recipe_cls, skip: tuple[str, ...] = ()) -> None:
    """One option per field of ``recipe_cls`` (``--field-name``; a bool that defaults to True: ``--no-field-name``),
    with the field's description as help. Every option defaults to None (= not given, the recipe's default)."""
    import dataclasses

    for f in dataclasses.fields(recipe_cls):
        cli = f.metadata.get("cli", {})
        if f.name in skip or cli.get("flag", True) is False:
            continue
        doc, default = f.metadata.get("doc", ""), f.default
        if str(f.type) == "bool":
            flag = f"--no-{f.name.replace('_', '-')}" if default else f"--{f.name.replace('_', '-')}"
            p.add_argument(flag, dest=f.name, action="store_const", const=not default, default=None, help=doc)
            continue
        shown = cli.get("shown", ",".join(map(str, default)) if isinstance(default, tuple) else default)
        help_text = doc + (f" (default {shown})" if shown not in (None, "", ()) else "")
        choices = cli.get("choices")
        if choices is not None:
            choices = (["none"] if default is None and "none" not in choices else []) + list(choices)
        p.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=None if choices else _option_type(f),
                       choices=choices, default=None, metavar=cli.get("metavar"), help=help_text)


def _given_settings(args, recipe_cls) -> dict:
    """The options of :func:`_add_settings` that were given (``none`` of a choice = None = the default)."""
    import dataclasses

    given = {}
    for f in dataclasses.fields(recipe_cls):
        value, choices = getattr(args, f.name, None), f.metadata.get("cli", {}).get("choices")
        if value is None or (value == "none" and f.default is None and choices and "none" not in choices):
            continue  # not given, or the "none" _add_settings offers for a choice whose default is None
        given[f.name] = value
    return given


def _add_train_ldm(sub) -> None:
    from ldm_lite.experiments import LDMRecipe

    p = sub.add_parser("train-ldm", help="train a latent (or pixel-space) diffusion model (chapters 04, 06)")
    _add_settings(p, LDMRecipe)  # every recipe setting: the data, the model's config parts, the training's
    p.add_argument("--no-cache", action="store_true", help="encode every batch instead of caching latents once")
    _add_run_args(p, None)


def _run_train_ldm(args) -> dict:
    from pathlib import Path

    from ldm_lite.experiments import DATASETS, LDMRecipe, check_checkpoint, check_dataset, train_ldm

    given = _given_settings(args, LDMRecipe)
    d = LDMRecipe()
    data, cond, task = given.get("data", d.data), given.get("cond"), given.get("task")
    first_stage = given.get("first_stage", d.first_stage)
    parts = [part.partition("@")[0] for part in data.split("+")] if "+" in data else [data]
    texts = ("text", "text-frozen")
    # options the chosen task / conditioning / data would not use are refused (not recorded as if they had acted)
    unused = [("--sr-factor", task != "sr", "is used only with --task sr"),
              ("--degradation", task != "sr", "is used only with --task sr"),
              ("--mask-fraction", task != "inpaint", "is used only with --task inpaint"),
              ("--text-encoder", cond != "text-frozen",
               "is used only with --cond text-frozen (the encoder of --cond text is trained: --cond-dim, "
               "--cond-depth)"),
              ("--cond-dim", cond not in ("class", "text", "layout"),
               "is the width of a trained cond stage: used only with --cond class, text or layout"),
              ("--cond-depth", cond not in ("text", "layout"),
               "is the depth of a trained cond stage: used only with --cond text or layout"),
              ("--cond-drop-prob", cond is None,
               "drops the condition for classifier-free guidance: used only with --cond"),
              ("--holdout", "shapes" not in parts,
               f"keeps (colour, shape) pairs out of shapes images: used only with --data shapes or a mixture with "
               f"a shapes part (e.g. shapes+fashion); {data} has no such labels"),
              ("--captions", cond not in texts, "is read for --cond text or text-frozen only")]
    for option, idle, why in unused:
        if given.get(option[2:].replace("-", "_")) not in (None, ()) and idle:
            raise SystemExit(f"{option} {why}")
    check_dataset(data)
    folder = "+" not in data and data not in DATASETS
    captions = given.get("captions")
    if captions is not None and not folder:
        raise SystemExit(f"--captions is for an image-folder --data; {data} brings its own captions")
    if cond in texts and "+" in data:
        raise SystemExit(f"--cond {cond} trains on captions, and a mixture ({data}) keeps only the images "
                         "of its parts; train on one dataset")
    if cond in texts and folder and captions is None:
        raise SystemExit(f"--cond {cond} trains on captions, and the image folder {data} has none: pass "
                         "--captions FILE, a .jsonl file with a line {\"file\": \"relative/path.png\", \"caption\": "
                         "\"...\"} per image (paths relative to the folder) or a .csv file with the header row "
                         "file,caption")
    if captions is not None and not Path(captions).is_file():
        raise SystemExit(f"--captions {captions}: no such file")
    if first_stage not in ("auto", "pixel"):
        check_checkpoint(first_stage, "autoencoder", f"--first-stage {first_stage}")
    if given.get("init_from"):
        check_checkpoint(given["init_from"], "ldm", f"--init-from {given['init_from']}")
    _set_threads(args)
    recipe = LDMRecipe(**given)
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
    p.add_argument("--steps", type=_positive_int, default=50,
                   help="sampling steps: at most 999 of the 1000 timesteps with ddim / plms / dpm and uniform spacing "
                        "(1000 with --timestep-spacing trailing or --sampler ddpm, the full chain)")
    p.add_argument("--eta", type=_finite_float(0, 1), default=0.0, help="DDIM noise (0 = deterministic)")
    p.add_argument("--guidance", type=_finite_float(0), default=1.0,
                   help="classifier-free guidance scale: 1 = none, usually 1 to 15 (3 suits the shipped models); "
                        "above 20 a warning")
    p.add_argument("--label", type=_tuple, default=None,
                   help="class label(s) for a class-conditional model, e.g. 3 or 0,1,2,3 (repeated to --n)")
    p.add_argument("--prompt", action="append", default=None,
                   help="caption for a text-conditional model, e.g. 'a big red circle left of a small blue square' "
                        "(repeat --prompt for several; repeated to --n)")
    p.add_argument("--layout", default=None,
                   help='JSON file for a layout model: a list of 1 to 3 objects {"box": [x0, y0, x1, y1] (fractions '
                        'of the image side), "shape": ..., "color": ..., "size": ...}, or a list of such lists '
                        '(repeated to --n)')
    p.add_argument("--map", default=None, metavar="SEG.PNG",
                   help="segmentation map for a semantic-synthesis model (train-ldm --task semantic): a greyscale or "
                        "palette PNG whose pixel values are class indices (shapes: 0 = background, 1 circle, "
                        "2 square, 3 triangle, 4 diamond, 5 hexagon, 6 cross), the model's image size (64×64 for "
                        "ldm_shapes_semantic64; a larger map, sides a multiple of 16, draws a larger image); the "
                        "same map for all --n images")
    p.add_argument("--latent-size", type=_positive_int, default=None,
                   help="latent side; larger than training = bigger images (a multiple of the UNet's downsampling "
                        "factor, 4 for the shipped models)")
    p.add_argument("--seed", type=_seed_int, default=0, help=f"0 to {2 ** 63 - 1}")
    p.add_argument("--nrow", type=_positive_int, default=None, help="images per row of the .png grid")
    p.add_argument("--out", default="samples.png",
                   help="a .png (one grid of all images) or a .npz (uint8 (N, H, W, C) array 'images' + a .json "
                        "manifest beside it: a sample set for the metrics of chapter 08)")
    p.add_argument("--force", action="store_true",
                   help="let --out replace an existing sample set (the .npz and its .json) or a file in "
                        "data/pretrained/; a .json beside the .npz that is not a sample-set manifest is never replaced")
    p.add_argument("--batch-size", type=_positive_int, default=64, help="images sampled at once (memory)")
    p.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads")


def _seed_int(text: str) -> int:
    """An argparse type: a random seed, an integer in 0 .. 2**63 - 1 (what torch.Generator.manual_seed takes)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{_shown(text)} is not an integer") from None
    if not 0 <= value <= 2 ** 63 - 1:
        raise argparse.ArgumentTypeError(f"must be an integer from 0 to {2 ** 63 - 1}, got {_shown(text, 30)}")
    return value


def _shown(text, limit: int = 60) -> str:
    """User input quoted in a message: ``repr``, cut to ``limit`` characters + "…"."""
    text = str(text)
    return repr(text if len(text) <= limit else text[:limit] + "…")


def _path(path) -> str:
    """A path quoted in a message, relative to the working folder when inside it (never cut)."""
    from ldm_lite.io import shown_path

    return repr(shown_path(path))


def _manifest_of(model: str, kind: str | None = None) -> dict:
    """The manifest of ``--model``; with ``kind``, refuse (before loading anything) a checkpoint of another kind."""
    from ldm_lite.pretrained import load_manifest

    manifest = load_manifest(model)
    if kind is not None and manifest.get("kind") != kind:
        raise SystemExit(f"--model {_shown(model)} is a checkpoint of kind {manifest.get('kind', 'unknown')!r}, "
                         f"not {kind!r}: pass an exported LDM, e.g. ldm_openmoji64")
    return manifest


def _ldm_config(manifest: dict):
    """The LDMConfig an LDM manifest describes, read before the model is loaded (None if it describes none)."""
    from ldm_lite.pretrained import ldm_config_of

    try:
        return ldm_config_of(manifest)
    except (KeyError, TypeError, ValueError):
        return None


def _sample_task(manifest: dict) -> str | None:
    """What an LDM's condition is, read from its manifest: None (unconditional / label / prompt / layout) or the
    spatial task whose condition is concatenated with z_t ("sr", "inpaint", "semantic", or "concat" otherwise)."""
    cfg = _ldm_config(manifest)
    if cfg is None or cfg.conditioning.conditioning_key not in ("concat", "hybrid"):
        return None
    task = (manifest.get("recipe") or {}).get("task")
    if task in ("sr", "inpaint", "semantic"):
        return task
    cond_key = cfg.conditioning.cond_key
    if cond_key == "lr_image":
        return "sr"
    if isinstance(cond_key, (list, tuple)) and "hole_mask" in cond_key:
        return "inpaint"
    return "semantic" if cond_key == "segmentation" else "concat"


def _sample_num_classes(manifest: dict) -> int | None:
    """The number of real classes of a class-conditional LDM (labels 0 .. n - 1), from its manifest."""
    cfg = _ldm_config(manifest)
    if cfg is None:
        return None
    stage = cfg.conditioning.cond_stage or {}
    if stage.get("type") == "class" and isinstance(stage.get("num_classes"), int):
        return stage["num_classes"]
    n = cfg.unet.num_classes if cfg.unet is not None else None
    if isinstance(n, int):
        null = cfg.conditioning.unconditional_value
        return n - 1 if isinstance(null, int) and not isinstance(null, bool) else n
    return None


def _sample_downsampling(manifest: dict) -> int:
    """How many times the LDM's UNet halves its input: latent sides must be multiples of this."""
    cfg = _ldm_config(manifest)
    mult = cfg.unet.channel_mult if cfg is not None and cfg.unet is not None else [1]
    return 2 ** (len(mult) - 1)


def _timesteps(manifest: dict) -> int:
    """T, the number of noise levels of an LDM, from its manifest."""
    cfg = _ldm_config(manifest)
    sched = cfg.schedule if cfg is not None else None
    return (len(sched.betas) if sched.betas is not None else int(sched.timesteps)) if sched is not None else 1000


def _check_sample_steps(args, manifest: dict) -> None:
    """--steps against the sampler and the model's T, in CLI terms, before the model is loaded."""
    import inspect

    from ldm_lite.diffusion.samplers import SAMPLERS, max_steps

    T = _timesteps(manifest)
    offset = inspect.signature(SAMPLERS[args.sampler]).parameters["steps_offset"].default
    most = max_steps(T, args.timestep_spacing, offset)
    if args.steps <= most:
        return
    if args.steps > T:
        raise SystemExit(f"--steps {args.steps}: the model was trained with {T} diffusion timesteps, so a run takes "
                         f"at most {T} steps (--sampler ddpm --steps {T} is the full chain)")
    if args.timestep_spacing == "quadratic":
        raise SystemExit(f"--steps {args.steps}: --timestep-spacing quadratic repeats timesteps beyond {most} steps; "
                         f"use --steps {most} or fewer, or --timestep-spacing uniform")
    raise SystemExit(f"--steps {args.steps}: --sampler {args.sampler} with --timestep-spacing {args.timestep_spacing} "
                     f"visits at most {most} of the {T} timesteps (they are shifted by one, so {T} steps would need "
                     f"timestep {T}); use --steps {most} or fewer, --timestep-spacing trailing, or --sampler ddpm for "
                     f"the full {T}-step chain")


def _check_steps_of(args, manifest: dict) -> None:
    """--steps of upscale / inpaint, which sample with DDIM and uniform spacing (LatentDiffusion.sample's defaults;
    neither command has --sampler or --timestep-spacing, so the only fix to offer is fewer steps)."""
    import inspect

    from ldm_lite.diffusion.samplers import SAMPLERS, max_steps

    T = _timesteps(manifest)
    most = max_steps(T, "uniform", inspect.signature(SAMPLERS["ddim"]).parameters["steps_offset"].default)
    if args.steps > most:
        raise SystemExit(f"--steps {args.steps}: {args.command} samples with DDIM, which visits at most {most} of the "
                         f"model's {T} timesteps; use --steps {most} or fewer (50 is the usual choice)")


def _check_sample_set_out(out, force: bool) -> None:
    """A .npz sample set is written with a .json manifest beside it: never replace a .json that is not a sample-set
    manifest (a --layout file, a model's manifest), and an existing sample set only with --force."""
    side = out.with_suffix(".json")
    if side.is_dir():
        raise SystemExit(f"--out {_path(out)} would write its manifest {_path(side)}, which is a folder: choose "
                         "another --out name")
    if side.exists():
        try:
            man = json.loads(side.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            man = None
        if not (isinstance(man, dict) and man.get("kind") == "samples"):
            what = (f"a {man['kind']!r} manifest" if isinstance(man, dict) and isinstance(man.get("kind"), str)
                    else "a file of yours")
            raise SystemExit(f"--out {_path(out)} would replace {_path(side)} beside it with the sample set's "
                             f"manifest, but that file is {what}, not a sample-set manifest (kind 'samples'); it is "
                             "never replaced, even with --force: choose another --out name")
    existing = [p for p in (out, side) if p.exists()]
    if existing and not force:
        raise SystemExit(f"--out {_path(out)}: {_path(existing[0])} exists (a sample set); pass --force to replace "
                         f"{out.name} and {side.name}, or choose another --out name")


def _read_layouts(path: str) -> list:
    """A --layout file -> a list of (3, 7) layouts; any other content is one line saying the expected format."""
    from pathlib import Path

    from ldm_lite.conditioning import layout_from_objects
    from ldm_lite.conditioning.embedders import LAYOUT_OBJECT

    fmt = (f"write a JSON list of 1 to 3 objects {LAYOUT_OBJECT} (box corners as fractions of the image side; one "
           "layout for every image) or a list of such lists (one layout per image)")
    where = f"--layout {_path(path)}"
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SystemExit(f"{where} is not a text file (an image?); {fmt}") from None
    except OSError as err:
        raise SystemExit(f"{where}: cannot read it ({err.strerror or err}); {fmt}") from None
    try:
        spec = json.loads(text)
    except ValueError as err:
        raise SystemExit(f"{where} is not valid JSON ({getattr(err, 'msg', err)}); {fmt}") from None
    if isinstance(spec, dict):
        spec = [spec]
    if not isinstance(spec, list) or not spec:
        raise SystemExit(f"{where} holds {_shown(json.dumps(spec), 40)}, not a layout; {fmt}")
    per_image = [spec] if all(isinstance(o, dict) for o in spec) else spec
    try:
        return [layout_from_objects(objs) for objs in per_image]
    except (ValueError, TypeError, KeyError) as err:
        msg = " ".join(str(err).split())
        raise SystemExit(f"{where}: {msg}" + ("" if '"box": [x0, y0, x1, y1]' in msg else f"; {fmt}")) from None


def _read_map(path: str, manifest: dict, model: str):
    """A --map PNG -> an integer label map (H, W), checked against the semantic model's classes and sizes."""
    import numpy as np
    import torch
    from PIL import Image

    cfg = _ldm_config(manifest)
    n = int(((cfg.conditioning.cond_stage if cfg is not None else None) or {}).get("num_classes") or 2)
    legend = ""
    if (manifest.get("recipe") or {}).get("data") == "shapes":
        from ldm_lite.data.shapes import SHAPES

        if n == 1 + len(SHAPES):
            legend = " (" + ", ".join(f"{i} = {name}" for i, name in enumerate(("background",) + tuple(SHAPES))) + ")"
    size = int(cfg.image_size[0]) if cfg is not None and cfg.image_size else 64
    step = int(manifest.get("first_stage_f") or 1) * _sample_downsampling(manifest)
    fmt = (f"a map is a greyscale or palette PNG whose pixel values are the class indices 0..{n - 1}{legend}, "
           f"{size}×{size} px (or larger, sides a multiple of {step})")
    where = f"--map {_path(path)}"
    try:
        with Image.open(path) as im:
            mode = im.mode
            if mode in ("L", "P", "I", "I;16", "1"):
                arr = np.asarray(im).astype(np.int64)
            elif mode in ("RGB", "RGBA", "LA"):
                rgb = np.asarray(im.convert("RGB")).astype(np.int64)
                if not ((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()):
                    raise SystemExit(f"{where} is a colour image ({mode}), not a map of class indices; {fmt}")
                arr = rgb[..., 0]
            else:
                raise SystemExit(f"{where} is a {mode} image, not a map of class indices; {fmt}")
    except (OSError, ValueError) as err:
        raise SystemExit(f"{where}: cannot read an image ({err}); {fmt}") from None
    h, w = arr.shape
    if h % step or w % step:
        raise SystemExit(f"{where} is {w}×{h} px; {model} needs sides that are multiples of {step}: resize it with "
                         f"nearest-neighbour resampling to {size}×{size} (its training size) or crop it to "
                         f"{max(step, w // step * step)}×{max(step, h // step * step)}")
    bad = sorted(int(v) for v in np.unique(arr) if not 0 <= v < n)
    if bad:
        raise SystemExit(f"{where} has pixel values {bad[:5]}{' …' if len(bad) > 5 else ''} but {model} knows the "
                         f"classes 0..{n - 1}; {fmt}")
    return torch.from_numpy(arr)


def _run_sample(args) -> dict:
    import time
    import warnings
    from pathlib import Path

    import torch
    from PIL import Image

    from ldm_lite.config import device
    from ldm_lite.io import atomic_write
    from ldm_lite.pretrained import load_ldm
    from ldm_lite.viz import make_grid

    # ---- everything is checked before the model is loaded: the output first, then the options against the manifest
    out = Path(args.out)
    if out.suffix.lower() not in (".png", ".npz"):
        raise SystemExit(f"--out {_path(args.out)}: write a .png (a grid) or a .npz (the images as an array)")
    _check_out(args.out, suffixes=(".png", ".npz"), force=args.force, option="--out")
    if out.suffix.lower() == ".npz":
        _check_sample_set_out(out, args.force)
    if args.n < 1 or args.batch_size < 1:
        raise SystemExit(f"--n and --batch-size must be >= 1, got {args.n} and {args.batch_size}")
    _set_threads(args)
    given = [name for name, v in (("--label", args.label), ("--prompt", args.prompt), ("--layout", args.layout),
                                  ("--map", args.map)) if v is not None]
    if len(given) > 1:
        raise SystemExit(f"give one condition, not {' and '.join(given)}")
    layouts = _read_layouts(args.layout) if args.layout is not None else None
    manifest = _manifest_of(args.model, kind="ldm")
    cfg = _ldm_config(manifest)
    key, cond_key = (cfg.conditioning.conditioning_key, cfg.conditioning.cond_key) if cfg is not None else (None, None)
    task = _sample_task(manifest)
    if task == "sr":
        raise SystemExit(f"{args.model} is a super-resolution model: it upscales an image you give it rather than "
                         f"drawing new ones; use `ldm-lite upscale LOW_RES.png OUT.png --model {args.model}`")
    if task == "inpaint":
        raise SystemExit(f"{args.model} is an inpainting model: it fills the holes of an image you give it; use "
                         f"`ldm-lite inpaint IMAGE.png MASK.png OUT.png --model {args.model}`")
    if task == "concat":
        raise SystemExit(f"{args.model} is conditioned on a spatial {cond_key!r} concatenated with its latents, "
                         "which `ldm-lite sample` cannot supply (it takes --label, --prompt, --layout or --map)")
    if args.map is not None and task != "semantic":
        raise SystemExit(f"--map is the segmentation map of a semantic-synthesis model (train-ldm --task semantic); "
                         f"{args.model} is not one")
    seg = None
    if task == "semantic":
        if args.map is None:
            raise SystemExit(f"{args.model} draws an image for a segmentation map: give one with --map SEG.PNG (a "
                             "greyscale PNG of class indices; see `ldm-lite sample --help`)")
        if args.guidance != 1.0:
            raise SystemExit(f"{args.model} was trained without dropping its map, so it has no unconditional mode "
                             "to guide against: sample it without --guidance")
        if args.latent_size is not None:
            raise SystemExit("--latent-size does not apply with --map: the map's size sets the image size (a larger "
                             "map draws a larger image)")
        seg = _read_map(args.map, manifest, args.model)
    if key is None and (given or args.guidance != 1.0):
        raise SystemExit(f"{args.model} is unconditional: sample it without {' '.join(given) or '--guidance'}")
    wants = {"caption": "--prompt", "layout": "--layout", "label": "--label",
             "segmentation": "--map"}.get(cond_key) if isinstance(cond_key, str) else None
    if given and wants and given[0] != wants:
        raise SystemExit(f"{args.model} is conditioned on its {cond_key!r}: use {wants}, not {given[0]}")
    if key is not None and task is None and not given and args.guidance != 1.0:
        raise SystemExit(f"--guidance {args.guidance:g} needs a condition to guide towards: give "
                         f"{wants or '--label, --prompt or --layout'}")
    if args.label is not None:
        n_classes = _sample_num_classes(manifest)
        bad = [v for v in args.label if n_classes is not None and not 0 <= v < n_classes]
        if bad:
            names = ""
            if (manifest.get("recipe") or {}).get("data") == "fashion":
                from ldm_lite.data.fashion import FASHION_CLASSES

                if len(FASHION_CLASSES) == n_classes:
                    names = " (" + ", ".join(f"{i} = {c}" for i, c in enumerate(FASHION_CLASSES)) + ")"
            label = _shown(bad[0], 30).strip("'")
            raise SystemExit(f"--label {label}: {args.model} has the classes 0..{n_classes - 1}{names}; sample "
                             "without --label for its unconditional images")
    if args.latent_size is not None:
        m = _sample_downsampling(manifest)
        if args.latent_size % m:
            trained = ((cfg.latent_size if cfg is not None else None) or [None])[0]
            near = sorted({max(m, args.latent_size // m * m), -(-args.latent_size // m) * m})
            raise SystemExit(f"--latent-size {args.latent_size}: {args.model}'s UNet needs a multiple of {m} (it was "
                             f"trained at {trained}); e.g. {' or '.join(map(str, near))}")
    _check_sample_steps(args, manifest)
    if args.guidance > 20:
        print(f"ldm-lite sample: warning: --guidance {args.guidance:g} is far above the usual range (classifier-free "
              "guidance is used at 1 to 15; 3 suits the shipped models): expect saturated, blown-out images",
              file=sys.stderr)
    model = load_ldm(args.model, device=device())

    def repeat(items):
        return (list(items) * -(-args.n // len(items)))[: args.n]

    cond = None
    if args.label is not None:
        cond = torch.tensor(repeat(args.label))
    elif args.prompt is not None:
        tok = getattr(model.cond_stage, "tokenizer", None)
        if hasattr(tok, "max_length") and hasattr(tok, "tokenizer"):
            for prompt in args.prompt:
                need = len(tok.tokenizer(prompt)["input_ids"])
                if need > tok.max_length:
                    raise SystemExit(f"--prompt {_shown(prompt)} needs {need} tokens but {args.model} reads at most "
                                     f"{tok.max_length} (its max_length, [CLS] and [SEP] included): shorten it")
        if hasattr(model.cond_stage, "unknown_words"):
            from ldm_lite.conditioning.tokenizer import unknown_words_message

            words = model.cond_stage.unknown_words(args.prompt)
            if words:
                kept = ("; it knows only the words of its training captions"
                        if getattr(model.cond_stage, "vocabulary", None) is not None else "")
                them = "it" if len(words) == 1 else "them"
                print(f"ldm-lite sample: warning: {args.model} has no embedding for {unknown_words_message(words)} "
                      f"(in --prompt): it reads {them} as [UNK] (unknown) and the images will ignore or misread "
                      f"{them}{kept}", file=sys.stderr)
        cond = repeat(args.prompt)
    elif layouts is not None:
        cond = torch.stack(repeat(layouts))
    elif seg is not None:
        cond = seg[None].expand(args.n, *seg.shape).contiguous()
    from ldm_lite.conditioning import UnknownWordsWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnknownWordsWarning)  # said once above, in CLI terms
        if cond is not None:
            try:  # a condition the cond stage refuses fails here, before any sampling
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
    summary = dict(out=str(out), images=list(images.shape), guidance=args.guidance, seconds=round(seconds, 2),
                   seconds_per_image=round(seconds / args.n, 3))
    if out.suffix.lower() == ".png":
        grid = Image.fromarray(make_grid(images, nrow=args.nrow))
        atomic_write(out, lambda tmp: grid.save(tmp, format="PNG"))
    else:
        from ldm_lite.data.common import save_npz_atomic, to_uint8

        save_npz_atomic(str(out), compress=True, images=to_uint8(images))
        sample_manifest = dict(kind="samples", model=args.model, n=args.n, sampler=args.sampler, steps=args.steps,
                               timestep_spacing=args.timestep_spacing,
                               prompt=args.prompt, label=list(args.label) if args.label else None, layout=args.layout,
                               map=args.map, eta=args.eta, guidance=args.guidance, seed=args.seed,
                               batch_size=args.batch_size, seconds=summary["seconds"], threads=torch.get_num_threads(),
                               command="ldm-lite " + " ".join(shlex.quote(a) for a in args.argv),
                               model_manifest={k: v for k, v in manifest.items()
                                               if k in ("steps", "wall_time_s", "metrics", "command", "first_stage",
                                                        "first_stage_trained_on")})
        atomic_write(out.with_suffix(".json"),
                     lambda tmp: Path(tmp).write_text(json.dumps(sample_manifest, indent=2) + "\n"))
    print(json.dumps(summary, indent=2))
    return summary


def _read_image(path: str, what: str):
    """An image file -> (1, 3, H, W) in [-1, 1], as a viewer shows it (the package's one reader,
    :func:`ldm_lite.data.images.read_image`: EXIF orientation, transparency on white, 16-bit grey scaled);
    a clear error naming the file."""
    from ldm_lite.data.common import to_image_tensor
    from ldm_lite.data.images import read_image

    try:
        arr = read_image(path)
    except (OSError, ValueError) as err:
        raise SystemExit(f"{what} {_path(path)}: cannot read an image ({err})") from err
    return to_image_tensor(arr)[None]


def _read_mask(path: str):
    """A mask file -> (values float32 (H, W) in [0, 1], kind) via :func:`ldm_lite.data.images.read_mask`: kind
    "alpha" (values = opacity, transparent = hole) or "brightness" (values = brightest of R, G, B, 1 = white)."""
    from ldm_lite.data.images import read_mask

    try:
        return read_mask(path)
    except (OSError, ValueError) as err:
        raise SystemExit(f"mask {_path(path)}: cannot read an image ({err})") from err


def _size_advice(w: int, h: int, step: int) -> str:
    """How to bring a w×h px image to sides that are multiples of ``step``: crop (when something is left) or pad."""
    up_w, up_h = -(-w // step) * step, -(-h // step) * step
    down_w, down_h = w // step * step, h // step * step
    if not down_w or not down_h:  # cropping would leave nothing
        return f"pad it to at least {up_w}×{up_h}"
    return f"crop it to {down_w}×{down_h} or pad it to {up_w}×{up_h}"


def _check_repaint(repaint, steps: int) -> tuple[int, int]:
    """--repaint JUMP_LENGTH,JUMP_N_SAMPLE -> (jump_length, jump_n_sample), refusing values that never resample.

    The sampler (:func:`ldm_lite.diffusion.samplers.repaint_moves`) jumps back after step i when i is a multiple of
    JUMP_LENGTH and i < --steps, JUMP_N_SAMPLE - 1 times: it resamples at all only for 1 <= JUMP_LENGTH < --steps
    and JUMP_N_SAMPLE >= 2. Other values would give plain mask blending while reporting RePaint."""
    if repaint is None:
        return 0, 1
    if len(repaint) != 2:
        raise SystemExit(f"--repaint takes JUMP_LENGTH,JUMP_N_SAMPLE, e.g. 5,4; got {','.join(map(str, repaint))}")
    j, n = repaint
    if steps < 2:
        raise SystemExit(f"--repaint {j},{n} would never resample with --steps {steps}: RePaint jumps back between "
                         "steps, so it needs --steps 2 or more, JUMP_LENGTH from 1 to --steps - 1 and JUMP_N_SAMPLE "
                         "of at least 2 (e.g. --steps 50 --repaint 5,4); leave --repaint out for plain mask blending")
    if not (1 <= j < steps and n >= 2):
        example = f"{max(1, min(10, steps // 10))},4"
        raise SystemExit(f"--repaint {j},{n} would never resample with --steps {steps} (the result would be plain mask "
                         f"blending): JUMP_LENGTH must be 1 to {steps - 1} (fewer than --steps) and JUMP_N_SAMPLE at "
                         f"least 2 (1 = no resampling), e.g. --repaint {example}; leave --repaint out for plain "
                         "mask blending")
    return j, n


def _attention_peak(model, latent_hw, batch: int = 1) -> tuple[int, str, int]:
    """The largest self-attention a sampling run (UNet) and its encode / decode (the autoencoder's mid-block) hold at
    the latent size ``latent_hw``: ``(bytes, which layer, tokens)``. A layer whose attention is computed explicitly
    holds the scores and their softmax at once: 2 × batch × heads × tokens² floats (measured on the autoencoder's
    single-head attention, which PyTorch computes that way on CPU; the UNet's fused kernel may need less)."""
    h, w = latent_hw
    unet = model.unet
    cfg = unet.config
    size = next(unet.parameters()).element_size()
    layers = []  # (tokens, heads, name)
    last = len(cfg.channel_mult) - 1
    for level, mult in enumerate(cfg.channel_mult):
        ds = 2 ** level
        if ds in cfg.attention_resolutions or level == last:  # the middle block always attends, at the last level
            heads, _ = unet._heads(cfg.model_channels * mult)
            layers.append(((h // ds) * (w // ds), heads, f"the UNet's self-attention at 1/{ds} of the latent"))
    fs = getattr(model, "first_stage", None)
    if fs is not None and getattr(getattr(fs, "config", None), "use_mid_attn", False):
        layers.append((h * w, 1, "the autoencoder's self-attention"))
    tokens, heads, name = max(layers, key=lambda t: t[1] * t[0] ** 2)
    return 2 * batch * heads * tokens ** 2 * size, name, tokens


def _memory_budget(max_memory: float | None, device) -> tuple[float | None, str]:
    """Bytes a run may use for its largest attention, and how that limit was set (for messages): --max-memory GB,
    else half the memory available now (free GPU memory on CUDA, else the RAM the system reports as available;
    None where it cannot tell)."""
    if max_memory is not None:
        return max_memory * 1e9, f"--max-memory {max_memory:g} GB"
    available = None
    if getattr(device, "type", str(device)) == "cuda":
        import torch

        available = float(torch.cuda.mem_get_info(device)[0])
    if available is None:
        try:
            with open("/proc/meminfo") as fh:
                info = dict(line.split(":", 1) for line in fh)
            available = float(info["MemAvailable"].split()[0]) * 1024
        except (OSError, KeyError, ValueError):
            import os

            try:
                available = float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
            except (ValueError, OSError, AttributeError):
                return None, ""
    return 0.5 * available, (f"half the {available / 1e9:.1f} GB available now: the rest of the run needs room too; "
                             "set a limit with --max-memory GB")


def _check_attention_memory(model, image_wh, latent_hw, step: int, max_memory: float | None, doing: str,
                            tile_verb: str) -> None:
    """Refuse, before sampling, a canvas whose largest self-attention would not fit in memory (the allocator would
    fail, or the machine swap, minutes into the run), with the largest tiles of sides that are multiples of
    ``step`` px that fit."""
    import math

    need, name, tokens = _attention_peak(model, latent_hw)
    budget, how = _memory_budget(max_memory, model.device)
    if budget is None or need <= budget:
        return
    w, h = image_wh
    area = w * h * math.sqrt(budget / need)  # every attention's memory grows with the square of the area
    short, long_ = sorted((w, h))
    other = min(long_, int(area // short) // step * step)  # keep the shorter side whole
    if other >= step:
        tile = (short, other) if w <= h else (other, short)
    else:
        side = math.isqrt(int(area)) // step * step
        tile = (side, side) if side >= step else None
    advice = (f"{tile_verb} tiles of at most {tile[0]}×{tile[1]} px" if tile else
              f"even a {step}×{step} px tile would not fit")

    def gb(n: float) -> str:
        x = n / 1e9
        return f"{x:,.0f} GB" if x >= 100 else f"{x:.1f} GB" if x >= 0.1 else f"{x:.2g} GB"

    raise SystemExit(f"{doing} needs about {gb(need)} for {name} over {tokens:,} positions, more than the "
                     f"{gb(budget)} this run may use ({how}): {advice}, or run on a machine with more memory")


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


def _check_out(out: str, suffixes: tuple[str, ...] = (".png", ".jpg", ".jpeg"), force: bool | None = None,
               option: str | None = None) -> None:
    """Refuse, before any work, an output path that cannot be written or must not be replaced: another suffix, an
    existing folder, a parent folder that is missing, not a folder or not writable, or an existing file in
    data/pretrained/ (the shipped checkpoints): replaced only with --force (``force``; ``None`` for a command
    without --force). ``option`` names the output in messages (e.g. "--out")."""
    import os
    from pathlib import Path

    from ldm_lite.pretrained import PRETRAINED_DIR

    path = Path(out)
    shown = f"{option} {_path(out)}" if option else _path(out)
    if path.suffix.lower() not in suffixes:
        kinds = " or ".join(s for s in suffixes if s != ".jpeg")
        raise SystemExit(f"{shown}: write a {kinds}")
    if path.is_dir():
        raise SystemExit(f"{shown} is an existing folder, not a file: name a file, e.g. "
                         f"{_path(path / ('samples' + suffixes[0]))}")
    parent = path.absolute().parent
    if not parent.exists():
        raise SystemExit(f"{shown}: the folder {_path(parent)} does not exist; create it first or choose "
                         "another path")
    if not parent.is_dir():
        raise SystemExit(f"{shown}: {_path(parent)} is a file, not a folder; choose another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise SystemExit(f"{shown}: cannot write to the folder {_path(parent)} (permission denied); choose "
                         "another path or fix its permissions")
    if path.exists() and not force:
        try:
            path.resolve().relative_to(PRETRAINED_DIR.resolve())
        except ValueError:
            return
        fix = "pass --force to replace it" if force is False else "choose another path"
        raise SystemExit(f"{shown} exists among the checkpoints shipped in data/pretrained/; {fix}")


def _spatial_multiple(manifest: dict) -> tuple[int | None, int]:
    """(f, m) from an LDM's manifest, before loading it: the first stage's downsampling f (None when the manifest
    does not say) and how many times the UNet halves the latent (its sides must be multiples of m)."""
    f = manifest.get("first_stage_f")
    if f is None and manifest.get("first_stage") in (None, "pixel"):
        f = 1
    return (int(f) if f is not None else None), _sample_downsampling(manifest)


def _add_upscale(sub) -> None:
    p = sub.add_parser("upscale", help="super-resolve an image with a trained --task sr model (chapter 07)")
    p.add_argument("input", help="the low-resolution image (PNG / JPEG; read as displayed: EXIF orientation applied, "
                                 "transparency on white)")
    p.add_argument("output", help="where to write the upscaled image (.png / .jpg)")
    p.add_argument("--model", required=True, help="an exported super-resolution LDM (train-ldm --task sr)")
    p.add_argument("--steps", type=_positive_int, default=50, help="DDIM steps (at most 999)")
    p.add_argument("--seed", type=_seed_int, default=0, help=f"0 to {2 ** 63 - 1}")
    p.add_argument("--threads", type=_positive_int, default=None)
    p.add_argument("--max-memory", type=_finite_float(0, low_open=True), default=None, metavar="GB",
                   help="refuse inputs whose largest self-attention would need more than this (default: half of "
                        "the memory available)")


def _run_upscale(args) -> dict:
    import math

    import torch

    from ldm_lite.pretrained import load_ldm

    _check_out(args.output)
    manifest = _manifest_of(args.model, kind="ldm")
    _check_steps_of(args, manifest)
    if manifest.get("recipe", {}).get("task") != "sr":
        raise SystemExit(f"{args.model} is not a super-resolution model (train one with `ldm-lite train-ldm --task sr`)")
    _set_threads(args)
    lr = _read_image(args.input, "input")
    factor = int(manifest["recipe"].get("sr_factor", 4))
    h, w = lr.shape[-2:]

    def check_size(f: int, m: int) -> None:
        # the latent of the output is (side * factor / f); the UNet needs it divisible by its downsampling m
        step = f * m // math.gcd(f * m, factor)
        if h % step or w % step:
            raise SystemExit(f"input {_path(args.input)} is {w}×{h} px; this model needs sides that are multiples "
                             f"of {step}: {_size_advice(w, h, step)}")

    f, m = _spatial_multiple(manifest)
    if f is not None:
        check_size(f, m)  # before loading the model
    model = load_ldm(args.model)
    f, m = model.f, model.unet.downsampling_factor
    check_size(f, m)
    step = f * m // math.gcd(f * m, factor)
    _check_attention_memory(model, (w, h), (h * factor // f, w * factor // f), step, args.max_memory,
                            f"upscaling the {w}×{h} px input to {w * factor}×{h * factor} px", "upscale it in")
    out = model.sample(cond=lr, steps=args.steps, generator=torch.Generator().manual_seed(args.seed), progress=True)
    _write_image(out, args.output)
    summary = dict(out=args.output, input=list(lr.shape[-2:]), output=list(out.shape[-2:]), factor=factor)
    print(json.dumps(summary))
    return summary


def _add_inpaint(sub) -> None:
    p = sub.add_parser("inpaint", help="fill the holes of an image: a trained --task inpaint model, or any "
                                       "unconditional LDM without training (mask blending / RePaint) (chapter 07)")
    p.add_argument("input", help="the image (PNG / JPEG; read as displayed: EXIF orientation applied, transparency "
                                 "on white)")
    p.add_argument("mask", help="an image of the same size (as displayed) marking the hole: black and white (white = "
                                "the hole, see --mask-means; a coloured pixel counts by its brightest channel, so a "
                                "hole painted in any bright colour on black works), or with transparency: then the "
                                "transparent pixels are the hole and the opaque ones are kept, whatever their colour "
                                "(an image editor's 'erase to transparent')")
    p.add_argument("output", help="where to write the result (.png / .jpg)")
    p.add_argument("--model", required=True,
                   help="an inpainting LDM (train-ldm --task inpaint) or an unconditional LDM (training-free)")
    p.add_argument("--mask-means", choices=["hole", "keep"], default="hole",
                   help="for an opaque mask: white pixels are the hole to fill (default, as the paper's inpainting "
                        "script) or the pixels to keep (as its DDIM sampler); a mask with transparency always has "
                        "its hole where it is transparent")
    p.add_argument("--threshold", type=_finite_float(0, 1, low_open=True, high_open=True), default=None,
                   help="binarise a soft (anti-aliased) mask at this level in (0, 1): a pixel counts as white when its "
                        "brightest channel reaches it (as opaque when its opacity does, for a mask with "
                        "transparency); without it a mask must be pure black and white (or fully transparent and "
                        "opaque)")
    p.add_argument("--repaint", type=_tuple, default=None,
                   help="training-free only: RePaint resampling JUMP_LENGTH,JUMP_N_SAMPLE, e.g. 5,4 (DDIM): after "
                        "every JUMP_LENGTH steps jump back JUMP_LENGTH steps, JUMP_N_SAMPLE - 1 times; needs "
                        "1 <= JUMP_LENGTH < --steps and JUMP_N_SAMPLE >= 2")
    p.add_argument("--steps", type=_positive_int, default=50, help="DDIM steps (at most 999)")
    p.add_argument("--seed", type=_seed_int, default=0, help=f"0 to {2 ** 63 - 1}")
    p.add_argument("--threads", type=_positive_int, default=None)
    p.add_argument("--max-memory", type=_finite_float(0, low_open=True), default=None, metavar="GB",
                   help="refuse images whose largest self-attention would need more than this (default: half of "
                        "the memory available)")


def _run_inpaint(args) -> dict:
    import numpy as np
    import torch

    from ldm_lite.data.spatial import keep_mask_from
    from ldm_lite.pretrained import load_ldm

    jump = _check_repaint(args.repaint, args.steps)  # pure arguments: first
    _check_out(args.output)
    image = _read_image(args.input, "input")
    values, kind = _read_mask(args.mask)
    h, w = image.shape[-2:]
    if values.shape != (h, w):
        raise SystemExit(f"mask {_path(args.mask)} is {values.shape[1]}×{values.shape[0]} px but the image is "
                         f"{w}×{h} (both as displayed, EXIF orientation applied): give a mask of the image's size")
    if args.threshold is not None:
        values = (values >= args.threshold).astype(np.float32)
    soft = np.unique(values[(values > 0) & (values < 1)])
    if soft.size:
        levels = f"{soft.size} level{'s' if soft.size > 1 else ''}"
        what = (f"has partly transparent pixels ({levels} of opacity, e.g. {soft[0] * 255:.0f}/255)"
                if kind == "alpha" else
                f"is not black and white ({levels} of grey, e.g. {soft[0] * 255:.0f}/255 as the brightest of R, G, "
                "B)")
        raise SystemExit(f"mask {_path(args.mask)} {what}; pass --threshold 0.5 to binarise it")
    mt = torch.from_numpy(values)[None, None]
    if kind == "alpha":
        keep, reading = keep_mask_from(keep_mask=mt, like=image), "transparent = hole"
    else:
        keep = keep_mask_from(**({"hole_mask": mt} if args.mask_means == "hole" else {"keep_mask": mt}), like=image)
        reading = f"{'white' if args.mask_means == 'hole' else 'black'} = hole, --mask-means {args.mask_means}"
    if keep.min() == 1:
        raise SystemExit(f"mask {_path(args.mask)} has no hole ({reading}); nothing to fill")
    manifest = _manifest_of(args.model, kind="ldm")
    _check_steps_of(args, manifest)
    trained = manifest.get("recipe", {}).get("task") == "inpaint"
    cfg = _ldm_config(manifest)
    key = cfg.conditioning.conditioning_key if cfg is not None else None
    if not trained and key is not None:
        raise SystemExit(f"{args.model} is conditioned on {cfg.conditioning.cond_key!r}; use an inpainting model "
                         "(train-ldm --task inpaint) or an unconditional one (training-free blending)")
    if trained and args.repaint:
        raise SystemExit("--repaint is for training-free inpainting with an unconditional model; a trained "
                         "inpainter sees the known region already")

    def check_size(f: int, m: int) -> None:
        # the image is encoded to a latent of side / f, which the UNet halves m times
        if h % (f * m) or w % (f * m):
            raise SystemExit(f"input {_path(args.input)} is {w}×{h} px; this model needs sides that are multiples of "
                             f"{f * m}: {_size_advice(w, h, f * m)} (the mask too)")

    f, m = _spatial_multiple(manifest)
    if f is not None:
        check_size(f, m)  # before loading the model
    _set_threads(args)
    model = load_ldm(args.model)
    check_size(model.f, model.unet.downsampling_factor)
    _check_attention_memory(model, (w, h), (h // model.f, w // model.f), model.f * model.unet.downsampling_factor,
                            args.max_memory, f"inpainting the {w}×{h} px image", "inpaint a crop around the hole, or")
    gen = torch.Generator().manual_seed(args.seed)
    if trained:
        hole = 1.0 - keep
        out = model.sample(cond={"masked_image": image * keep, "hole_mask": hole}, steps=args.steps, generator=gen)
    else:
        out = model.sample(1, x0=image, keep_mask=keep, latent_size=(h // model.f, w // model.f),
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
    p.add_argument("--ae", default=None,
                   help="--network shapes-attributes: autoencoder whose reconstructions join the augmentations")
    p.add_argument("--ae-prob", type=_finite_float(0, 1), default=None,
                   help=f"with --ae: share of batches passed through it (default {d.ae_prob:g})")
    p.add_argument("--eval-n", type=_positive_int, default=d.eval_n,
                   help="held-out images for the final score (default: 1,000 shapes renders / all Fashion test "
                        "images; openmoji-simclr always retrieves among all held-out emoji)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--export", default=None, help="name under data/pretrained/ or a path")
    p.add_argument("--force", action="store_true", help="let --export replace an existing checkpoint of that name")
    p.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads")


def _run_train_evaluator(args) -> dict:
    import torch

    from ldm_lite.evaluator_training import EvaluatorRecipe, train_evaluator
    from ldm_lite.experiments import check_checkpoint

    d = EvaluatorRecipe(args.network)
    if args.ae is not None and args.network != "shapes-attributes":  # it would be ignored, yet recorded
        raise SystemExit(f"--ae is used only by --network shapes-attributes (its augmentations); {args.network} "
                         "would ignore it")
    if args.ae_prob is not None and args.ae is None:
        raise SystemExit("--ae-prob is the share of batches passed through the --ae autoencoder: give --ae too")
    if args.eval_n is not None and args.network == "openmoji-simclr":
        raise SystemExit("--eval-n is not used by --network openmoji-simclr: its held-out retrieval searches all "
                         "held-out emoji")
    if args.ae is not None:
        check_checkpoint(args.ae, "autoencoder", f"--ae {args.ae}")
    _set_threads(args)
    recipe = EvaluatorRecipe(args.network, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                             augment=args.augment, ae=args.ae,
                             ae_prob=d.ae_prob if args.ae_prob is None else args.ae_prob, eval_n=args.eval_n,
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
    p.add_argument("--timeout", type=_positive_int, default=1800, help="seconds per cell")


def _run_execute_notebook(args) -> dict:
    """Execute with LDM_SCALE set and record scale, wall time and versions in the notebook's metadata
    (``metadata["ldm_lite"]``), so a reader knows what produced the committed outputs. Every file is read and
    checked to be a Jupyter notebook before the first one runs."""
    import datetime
    import os
    import platform
    import time
    from pathlib import Path

    import nbformat
    import torch

    from ldm_lite.io import atomic_write
    from ldm_lite.notebook_exec import notebook_client, tidy_outputs

    notebooks = []
    for path in map(Path, args.notebooks):
        if path.suffix != ".ipynb" or not path.is_file():
            raise SystemExit(f"{path}: not an existing .ipynb file")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise SystemExit(f"{path}: cannot read it as a UTF-8 text file ({err})") from None
        try:
            raw = json.loads(text)
        except ValueError as err:
            raise SystemExit(f"{path}: not a Jupyter notebook (not JSON: {err}); pass a .ipynb file saved by "
                             "Jupyter") from None
        if not (isinstance(raw, dict) and isinstance(raw.get("nbformat"), int)
                and isinstance(raw.get("cells", raw.get("worksheets")), list)):
            raise SystemExit(f"{path}: not a Jupyter notebook (JSON without a notebook's 'nbformat' and 'cells'); "
                             "pass a .ipynb file saved by Jupyter")
        try:
            nb = nbformat.reads(text, as_version=4)
        except Exception as err:  # noqa: BLE001 -- nbformat's errors vary by version
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise SystemExit(f"{path}: not a Jupyter notebook nbformat can read ({first})") from None
        notebooks.append((path, nb))
    done = {}
    for path, nb in notebooks:
        old = {k: os.environ.get(k) for k in ("LDM_SCALE", "LDM_PROGRESS")}
        os.environ["LDM_SCALE"] = args.scale
        # widget bars are never saved (committed outputs would show them frozen at 0/N) and stalled nbclient on
        # long loops: one summary line per finished bar instead (ldm_lite/progress.py)
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
        tidy_outputs(nb, Path(__file__).resolve().parent.parent)  # no machine paths, no raw widget reprs
        atomic_write(path, lambda tmp: nbformat.write(nb, tmp))
        done[str(path)] = round(wall, 1)
        print(f"{path}: {args.scale} scale, {wall:.0f} s")
    return done


# API wording in error messages -> the CLI's own options (the message was written for `fit(...)` callers)
_CLI_TERMS = (("fit(resume=True)", "--resume"), ("resume=True", "--resume"), ("force=True", "--force"),
              ("config.out_dir", "--out"), ("out_dir", "--out"), ("init_from=", "--init-from "))


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
    from ldm_lite.convert.compvis import add_convert_compvis

    add_convert_compvis(sub)
    p = sub.add_parser("set-first-stage",
                       help="make an exported LDM decode with a decoder-only fine-tune of its first stage (chapter 01)")
    p.add_argument("--model", required=True, help="the LDM: a name under data/pretrained/ or a path")
    p.add_argument("--first-stage", required=True,
                   help="an autoencoder made by `train-ae --init-from <the LDM's first stage> --train-part decoder`")
    p.add_argument("--force", action="store_true",
                   help="allow changing the manifest of an LDM shipped in data/pretrained/ (without it, only copies "
                        "elsewhere are changed)")
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
    elif args.command == "convert-compvis":
        from ldm_lite.convert.compvis import run_convert_compvis

        run_convert_compvis(args)
    elif args.command == "set-first-stage":
        from ldm_lite.pretrained import set_first_stage

        man = set_first_stage(args.model, args.first_stage, force=args.force)
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
