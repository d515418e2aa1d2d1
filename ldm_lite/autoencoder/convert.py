"""Load real first-stage weights into ``ldm_lite.autoencoder.AutoencoderKL``.

Two sources, both with internet only (nothing is downloaded here):

* **CompVis / Stable Diffusion checkpoints** (``.ckpt`` or ``.safetensors``): our parameter names *are*
  the CompVis names, so loading means dropping the ``first_stage_model.`` prefix of a full LDM
  checkpoint and the ``loss.*`` entries (LPIPS and discriminator weights saved during training).
* **diffusers** ``AutoencoderKL`` (e.g. ``stabilityai/sd-vae-ft-mse``): the same network under other
  names -- ``down_blocks.i.resnets.j`` is ``down[i].block[j]``, diffusers numbers the decoder's
  ``up_blocks`` from the lowest resolution (ours index ``up[i]`` by level, like CompVis), and its
  mid-block attention uses ``nn.Linear`` where CompVis uses 1x1 convolutions.

Example (online)::

    from diffusers import AutoencoderKL as HF
    ours = autoencoder_from_diffusers(HF.from_pretrained("stabilityai/sd-vae-ft-mse"))
"""

from __future__ import annotations

import re

import torch

from ldm_lite.autoencoder.model import AutoencoderConfig, AutoencoderKL

_RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "conv_shortcut": "nin_shortcut"}
_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out",
         # older diffusers names
         "query": "q", "key": "k", "value": "v", "proj_attn": "proj_out"}


def _map_diffusers_key(key: str, num_levels: int) -> str | None:
    """One diffusers AutoencoderKL key -> our (CompVis) key; None for keys we do not use."""
    part, _, rest = key.partition(".")
    if part in ("quant_conv", "post_quant_conv"):
        return key
    if part not in ("encoder", "decoder"):
        return None
    rest = rest.replace("conv_norm_out", "norm_out")
    m = re.match(r"(down|up)_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)\.(weight|bias)$", rest)
    if m:
        kind, i, j, layer, wb = m.groups()
        level = int(i) if kind == "down" else num_levels - 1 - int(i)
        return f"{part}.{'down' if kind == 'down' else 'up'}.{level}.block.{j}.{_RESNET[layer]}.{wb}"
    m = re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(weight|bias)$", rest)
    if m:
        return f"{part}.down.{m.group(1)}.downsample.conv.{m.group(2)}"
    m = re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(weight|bias)$", rest)
    if m:
        return f"{part}.up.{num_levels - 1 - int(m.group(1))}.upsample.conv.{m.group(2)}"
    m = re.match(r"mid_block\.resnets\.(\d)\.(\w+)\.(weight|bias)$", rest)
    if m:
        return f"{part}.mid.block_{int(m.group(1)) + 1}.{_RESNET[m.group(2)]}.{m.group(3)}"
    m = re.match(r"mid_block\.attentions\.0\.(.+)\.(weight|bias)$", rest)
    if m:
        return f"{part}.mid.attn_1.{_ATTN[m.group(1)]}.{m.group(2)}"
    if rest.split(".")[0] in ("conv_in", "conv_out", "norm_out"):
        return f"{part}.{rest}"
    raise KeyError(f"unrecognised diffusers AutoencoderKL key {key!r}")


def config_from_diffusers(hf_config) -> AutoencoderConfig:
    """Our AutoencoderConfig from a diffusers AutoencoderKL config (dict or FrozenDict)."""
    cfg = dict(hf_config)
    chans = list(cfg["block_out_channels"])
    ch = chans[0]
    if any(c % ch for c in chans):
        raise ValueError(f"block_out_channels {chans} are not multiples of the first; cannot express as ch * ch_mult")
    if cfg.get("norm_num_groups", 32) != 32:
        raise ValueError(f"norm_num_groups={cfg['norm_num_groups']}: ldm_lite uses 32 groups (as LDM); cannot convert")
    if not cfg.get("mid_block_add_attention", True):
        raise ValueError("this diffusers autoencoder has no mid-block attention; set use_mid_attn=False by hand")
    ch_mult = tuple(c // ch for c in chans)
    return AutoencoderConfig(
        f=2 ** (len(chans) - 1), ch=ch, ch_mult=ch_mult, num_res_blocks=cfg["layers_per_block"],
        z_channels=cfg["latent_channels"], embed_dim=cfg["latent_channels"], in_channels=cfg["in_channels"],
        use_mid_attn=True, reg="kl",
    )


def convert_diffusers_state_dict(state_dict: dict, num_levels: int, reference: dict | None = None) -> dict:
    """Rename (and reshape Linear -> 1x1 conv) a diffusers AutoencoderKL state dict to our keys."""
    out = {}
    for key, value in state_dict.items():
        new = _map_diffusers_key(key, num_levels)
        if new is None:
            continue
        if ".attn_1." in new and new.endswith(".weight") and value.dim() == 2:
            value = value[:, :, None, None]  # Linear (C, C) -> Conv2d 1x1 (C, C, 1, 1)
        out[new] = value
    if reference is not None:
        missing = sorted(set(reference) - set(out))
        unexpected = sorted(set(out) - set(reference))
        if missing or unexpected:
            raise KeyError(f"conversion mismatch: missing {missing[:5]}..., unexpected {unexpected[:5]}...")
    return out


def autoencoder_from_diffusers(hf_model) -> AutoencoderKL:
    """Build our AutoencoderKL with the weights of a diffusers ``AutoencoderKL`` instance."""
    cfg = config_from_diffusers(hf_model.config)
    ours = AutoencoderKL(cfg)
    sd = convert_diffusers_state_dict(hf_model.state_dict(), len(cfg.ch_mult), reference=ours.state_dict())
    ours.load_state_dict(sd, strict=True)
    return ours


def first_stage_state_dict(checkpoint: dict) -> dict:
    """The autoencoder's weights from a CompVis checkpoint dict: unwraps ``state_dict``, strips the
    ``first_stage_model.`` prefix of full LDM checkpoints, drops ``loss.*`` (LPIPS + discriminator)."""
    sd = checkpoint.get("state_dict", checkpoint)
    if any(k.startswith("first_stage_model.") for k in sd):
        sd = {k[len("first_stage_model."):]: v for k, v in sd.items() if k.startswith("first_stage_model.")}
    return {k: v for k, v in sd.items() if not k.startswith("loss.")}


def load_compvis_first_stage(path_or_state_dict, config: AutoencoderConfig) -> AutoencoderKL:
    """Load a CompVis first-stage (e.g. ``kl-f8``) or Stable Diffusion checkpoint into our AutoencoderKL.

    ``config`` must match the checkpoint (the SD / LDM kl-f8 VAE is
    ``AutoencoderConfig(f=8, ch=128, ch_mult=(1, 2, 4, 4), num_res_blocks=2, z_channels=4)``).
    ``.ckpt`` files are read with ``torch.load(weights_only=True)``: no pickled code is executed; a
    checkpoint that needs unpickling of arbitrary objects is refused -- convert it to safetensors
    in an environment you trust.
    """
    import pickle

    fix = "download it again (compare its sha256 with the publisher's) or use another copy"
    if isinstance(path_or_state_dict, dict):
        ckpt = path_or_state_dict
    elif str(path_or_state_dict).endswith(".safetensors"):
        from safetensors.torch import load_file

        try:
            ckpt = load_file(str(path_or_state_dict))
        except FileNotFoundError:
            raise
        except Exception as err:  # SafetensorError: truncated file, corrupt header
            raise RuntimeError(
                f"{path_or_state_dict} is corrupt or truncated and cannot be read ({err}); {fix}") from err
    else:
        try:
            ckpt = torch.load(path_or_state_dict, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise
        except pickle.UnpicklingError as err:  # objects beyond tensors and containers: never unpickled here
            raise RuntimeError(
                f"{path_or_state_dict} cannot be loaded without unpickling arbitrary objects ({err}). "
                "Convert it to .safetensors in an environment you trust, then load that file."
            ) from err
        except Exception as err:  # zipfile / "PytorchStreamReader failed", EOFError: a damaged file
            raise RuntimeError(f"{path_or_state_dict} is corrupt or truncated and cannot be read "
                               f"({type(err).__name__}: {err}); {fix}") from err
    model = AutoencoderKL(config)
    sd = first_stage_state_dict(ckpt)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise KeyError(
            f"checkpoint does not match the config: {len(missing)} missing keys (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]}); check f, ch, ch_mult, z_channels"
        )
    return model
