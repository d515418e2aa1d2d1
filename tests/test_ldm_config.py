"""LDMConfig: one serialisable description of a latent diffusion model, and every setting written in one place.

A setting is a field of one of ``LDMConfig``'s parts (or of ``UNetConfig`` / ``TrainConfig``); from there it
reaches ``LatentDiffusion``'s keywords and attributes, ``LDMRecipe``'s fields, the command line's options and an
export's manifest without another line. These tests enumerate the fields, so a new setting is covered by them too.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import pytest
import torch

from ldm_lite import cli
from ldm_lite.autoencoder.losses import AELossConfig
from ldm_lite.autoencoder.model import AutoencoderConfig
from ldm_lite.conditioning import ClassEmbedder
from ldm_lite.experiments import AERecipe, LDMRecipe
from ldm_lite.ldm import LatentDiffusion
from ldm_lite.ldm_config import (
    ConditioningConfig, FirstStageConfig, LDMConfig, ObjectiveConfig, OptimizerConfig, ScheduleConfig,
)
from ldm_lite.pretrained import PRETRAINED_DIR, ldm_config_of, list_pretrained, load_ldm, load_manifest
from ldm_lite.train import TrainConfig
from ldm_lite.unet import UNetConfig, UNetModel

# the fields a model or a recipe fills in from its parts rather than from a setting of its own
DERIVED = {"in_channels", "out_channels", "context_dim", "num_classes", "name", "autoencoder", "latent_channels", "f",
           "cond_stage", "betas", "unet", "first_stage", "conditioning", "schedule", "objective", "optimizer",
           "image_size", "max_steps", "out_dir", "ckpt_every", "progress", "device", "ddp", "find_unused_parameters"}


def _options(command: str) -> set[str]:
    parser = cli._build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    return {a.dest for a in sub._actions}


def tiny_model(**settings) -> LatentDiffusion:
    unet = UNetModel(in_channels=3, out_channels=3, model_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                     attention_resolutions=(2,), num_head_channels=8, norm_num_groups=8, context_dim=16)
    return LatentDiffusion(None, unet, ClassEmbedder(5, 16), conditioning_key="crossattn", cond_key="label",
                           unconditional_value=5, image_size=16, **settings)


def test_every_model_setting_reaches_the_model_the_recipe_and_the_command_line():
    settings = LDMConfig.settings()
    recipe = {f.name for f in dataclasses.fields(LDMRecipe)}
    options = _options("train-ldm")
    model = tiny_model()
    for name, (part, f) in settings.items():
        if name in DERIVED:
            continue
        assert hasattr(model, name), f"LatentDiffusion has no attribute for the setting {name!r}"
        assert name in recipe, f"LDMRecipe has no field for the setting {name!r} ({part})"
        if f.metadata.get("cli", {}).get("flag", True) is not False:
            assert name in options, f"train-ldm has no option for the setting {name!r}"
    for cls in (UNetConfig, TrainConfig):
        for f in dataclasses.fields(cls):
            if f.name not in DERIVED:
                assert f.name in recipe and f.name in options, f"{cls.__name__}.{f.name} is not reachable"
    # what could not be reached from a recipe or the command line before: precision, num_workers, grad_clip
    assert {"precision", "num_workers", "grad_clip"} <= options
    assert LDMRecipe(precision="fp32", num_workers=1, grad_clip=0.5).train_config().grad_clip == 0.5


def test_every_autoencoder_setting_reaches_the_recipe_and_the_command_line():
    recipe = {f.name for f in dataclasses.fields(AERecipe)}
    options = _options("train-ae")
    for cls in (AutoencoderConfig, AELossConfig, TrainConfig):
        for f in dataclasses.fields(cls):
            if f.name in DERIVED or f.metadata.get("cli", {}).get("flag", True) is False:
                continue
            assert f.name in recipe and f.name in options, f"{cls.__name__}.{f.name} is not reachable"
    r = AERecipe(reg="vq", n_embed=64, codebook_weight=0.5)
    assert r.autoencoder_config().n_embed == 64 and r.loss_config().codebook_weight == 0.5


def test_a_setting_is_described_once_and_shown_by_help():
    for name, (_, f) in LDMConfig.settings().items():
        assert f.metadata.get("doc"), f"the setting {name!r} has no description"
    helps = {a.dest: a.help for a in cli._build_parser()._subparsers._group_actions[0].choices["train-ldm"]._actions}
    assert helps["cond_drop_prob"].startswith(ConditioningConfig.__dataclass_fields__["cond_drop_prob"].metadata["doc"])


def test_settings_by_name_and_config_agree_and_round_trip_through_json():
    model = tiny_model(cond_drop_prob=0.2, lr=3e-4, loss_type="l1", posterior="sample")
    cfg = model.config
    assert (cfg.conditioning.cond_drop_prob, cfg.optimizer.lr, cfg.objective.loss_type, cfg.first_stage.posterior) == \
        (0.2, 3e-4, "l1", "sample")
    assert model.cond_drop_prob == 0.2 and model.loss_type == "l1" and model.pixel_space
    assert cfg.conditioning.cond_stage == {"type": "class", "num_classes": 5, "embed_dim": 16}
    back = LDMConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg
    rebuilt = LatentDiffusion.from_config(back)
    assert rebuilt.config == cfg and isinstance(rebuilt.cond_stage, ClassEmbedder)
    assert sum(p.numel() for p in rebuilt.parameters()) == sum(p.numel() for p in model.parameters())


def test_a_value_is_checked_once_where_it_enters_with_the_setting_named():
    for bad, phrase in [(dict(cond_drop_prob=1.5), "cond_drop_prob"), (dict(parameterization="score"),
                        "parameterization"), (dict(lr=float("nan")), "lr"), (dict(scale_factor=0.0), "scale_factor"),
                        (dict(posterior="median"), "posterior"), (dict(t_buckets=-1), "t_buckets")]:
        with pytest.raises(ValueError, match=phrase):
            tiny_model(**bad)
    with pytest.raises(TypeError, match="unknown setting"):
        tiny_model(cond_drop=0.1)
    with pytest.raises(ValueError, match="out_channels"):  # the parts must fit together
        LDMConfig(unet=UNetConfig(4, 3, 16), first_stage=FirstStageConfig(latent_channels=4, f=4))
    with pytest.raises(ValueError, match="context_dim"):
        LDMConfig(unet=UNetConfig(3, 3, 16, context_dim=8), first_stage=FirstStageConfig(name="pixel",
                                                                                         latent_channels=3))
    with pytest.raises(ValueError, match="LDMRecipe: .*timesteps"):  # a recipe checks its parts when made
        LDMRecipe(timesteps=0)


@pytest.mark.parametrize("name", [m["name"] for m in list_pretrained() if m.get("kind") == "ldm"])
def test_shipped_manifests_store_the_config_and_load_from_it(name):
    man = load_manifest(name)
    assert {"ldm", "unet_config", "schedule", "cond_stage"}.isdisjoint(man), "an old-format manifest"
    cfg = ldm_config_of(man)
    assert cfg.to_dict() == man["config"]
    model = load_ldm(name)
    assert model.unet.to_config() == cfg.unet and float(model.scale_factor) == pytest.approx(cfg.scale_factor)
    assert model.config.to_dict()["conditioning"] == man["config"]["conditioning"] and model.latent_size == cfg.latent_size


def test_an_export_in_the_older_manifest_format_still_loads():
    """Exports written before manifests stored the config keep loading: their ``ldm`` / ``unet_config`` /
    ``schedule`` / ``cond_stage`` entries are read into the same LDMConfig."""
    man = load_manifest("ldm_fashion_class32")
    cfg = ldm_config_of(man)
    old = {k: v for k, v in man.items() if k != "config"}
    old.update(unet_config=dataclasses.asdict(cfg.unet),
               schedule=dict(schedule="linear", n_timestep=1000, linear_start=0.00085, linear_end=0.012),
               cond_stage=dict(cls="ldm_lite.conditioning.embedders.ClassEmbedder", trainable=True, exported=True,
                               config=cfg.conditioning.cond_stage),
               ldm=dict(conditioning_key="crossattn", cond_key="label", parameterization="eps",
                        scale_factor=cfg.scale_factor, scale_by_std=True, posterior="mode", image_size=32,
                        latent_size=[8, 8], latent_channels=4, unconditional_value=10, cond_drop_prob=0.1,
                        num_classes=10))
    legacy = ldm_config_of(old)
    assert legacy.unet == cfg.unet and legacy.conditioning == cfg.conditioning and legacy.schedule == cfg.schedule
    assert legacy.scale_factor == cfg.scale_factor and legacy.image_size == cfg.image_size
    assert legacy.first_stage.f == 4 and legacy.first_stage.latent_channels == 4


def test_the_schedule_is_recorded_by_name_or_by_its_betas():
    named = ScheduleConfig.of(ScheduleConfig(timesteps=50).build())
    assert named == ScheduleConfig(timesteps=50)
    custom = torch.linspace(1e-4, 0.02, 10, dtype=torch.float64)
    from ldm_lite.diffusion import NoiseSchedule

    cfg = ScheduleConfig.of(NoiseSchedule(custom))
    assert cfg.betas is not None and torch.equal(cfg.build().betas.double().cpu(), custom)
    assert ObjectiveConfig(weighting="none").weighting is None and OptimizerConfig().weight_decay == 0.01
    assert (PRETRAINED_DIR / "ldm_openmoji64.json").is_file()
