"""ldm_lite.convert.compvis: the released CompVis/latent-diffusion checkpoints in the course's modules, and back.

The original ``ldm`` package (CompVis/latent-diffusion) cannot be installed here (offline; it is not on the package
index either), so the checkpoints "written by the original code" are built in this file: their state dicts take
the original's key names and shapes from a *transcription* of its module structure --
``openaimodel.UNetModel.__init__`` (:func:`openaimodel_shapes`), ``diffusionmodules/model.py``'s Encoder / Decoder
with ``VQModel`` / ``AutoencoderKL`` (:func:`autoencoder_shapes`), ``x_transformer.TransformerWrapper`` +
``Encoder`` (:func:`xtransformer_shapes`) and ``DDPM.register_schedule`` (:func:`register_schedule`) -- filled with
random values, independently of the converter (which maps the course's modules' own names). Outputs are checked
against independent implementations:

* UNets with cross-attention and the KL first stage: diffusers' *own* CompVis conversion
  (``diffusers.loaders.single_file_utils.convert_ldm_unet_checkpoint`` / ``convert_ldm_vae_checkpoint``) into
  ``UNet2DConditionModel`` / ``AutoencoderKL``; float32, atol 1e-5 (UNet) and 1e-4 (autoencoder);
* the ADM-attention UNets (unconditional models): diffusers' ``UNet2DModel`` through the course's converter
  (itself tested against diffusers in test_convert_diffusers.py), atol 1e-5;
* the VQ first stage: a transcription of taming's ``VectorQuantizer2`` lookup (exact indices) and diffusers'
  ``VQModel`` decode, atol 1e-4;
* the text / layout encoder: a transcription of x_transformers' ``TransformerWrapper`` + ``Encoder`` forward,
  atol 1e-5, with token ids from transformers' ``BertTokenizerFast`` as the original's ``BERTTokenizer`` makes them;
* the spatial cond stages: transcriptions of ``SpatialRescaler.forward`` and of ``scripts/inpaint.py``'s
  condition.

Tiny sizes throughout (widths 32 or 64: the original normalises with 32 groups).
"""

from __future__ import annotations

import argparse
import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ldm_lite.conditioning import ClassEmbedder, InpaintConcat, SemanticEncoder, SpatialRescaler, XTransformerEmbedder
from ldm_lite.conditioning.tokenizer import minilm_dir
from ldm_lite.convert.compvis import (
    SCHEDULE_BUFFERS,
    CompVisConversionError,
    UnsafeCheckpointError,
    add_convert_compvis,
    compvis_family,
    load_compvis_ldm,
    read_compvis_config,
    run_convert_compvis,
    save_compvis,
)

pytestmark = pytest.mark.usefixtures("one_thread")

G = torch.Generator().manual_seed(0)


# ----------------------------------------------------------------------------------------------------------------
# Transcriptions of the original's module structure: parameter names and shapes
# ----------------------------------------------------------------------------------------------------------------
def openaimodel_shapes(p: dict) -> dict[str, tuple]:
    """Transcription of CompVis ``openaimodel.UNetModel.__init__`` (dims=2): every parameter name and shape."""
    mc, nrb, mult, ar = p["model_channels"], p["num_res_blocks"], p["channel_mult"], p["attention_resolutions"]
    emb, ss, updown = 4 * mc, p.get("use_scale_shift_norm", False), p.get("resblock_updown", False)
    spatial, ctx, depth = p.get("use_spatial_transformer", False), p.get("context_dim"), p.get("transformer_depth", 1)
    shapes: dict[str, tuple] = {}

    def conv(n, cin, cout, k=3, dims=2):
        shapes[n + ".weight"], shapes[n + ".bias"] = (cout, cin) + (k,) * dims, (cout,)

    def lin(n, cin, cout, bias=True):
        shapes[n + ".weight"] = (cout, cin)
        if bias:
            shapes[n + ".bias"] = (cout,)

    def norm(n, c):
        shapes[n + ".weight"], shapes[n + ".bias"] = (c,), (c,)

    def res(n, cin, cout):  # ResBlock: in_layers (norm, SiLU, conv), emb_layers (SiLU, linear), out_layers
        norm(f"{n}.in_layers.0", cin)
        conv(f"{n}.in_layers.2", cin, cout)
        lin(f"{n}.emb_layers.1", emb, 2 * cout if ss else cout)
        norm(f"{n}.out_layers.0", cout)
        conv(f"{n}.out_layers.3", cout, cout)
        if cin != cout:
            conv(f"{n}.skip_connection", cin, cout, 1)

    def heads(ch):  # the legacy rule of the original
        nh, nhc = p.get("num_heads", -1), p.get("num_head_channels", -1)
        if nhc == -1:
            dh = ch // nh
        else:
            nh, dh = ch // nhc, nhc
        if p.get("legacy", True):
            dh = ch // nh if spatial else nhc
        return nh, dh

    def attn(n, ch):
        nh, dh = heads(ch)
        norm(f"{n}.norm", ch)
        if not spatial:  # AttentionBlock: qkv and proj_out are 1-D convolutions
            conv(f"{n}.qkv", ch, 3 * ch, 1, dims=1)
            conv(f"{n}.proj_out", ch, ch, 1, dims=1)
            return
        inner = nh * dh
        conv(f"{n}.proj_in", ch, inner, 1)
        for d in range(depth):
            b = f"{n}.transformer_blocks.{d}"
            for a, kv in (("attn1", inner), ("attn2", ctx or inner)):
                lin(f"{b}.{a}.to_q", inner, inner, bias=False)
                lin(f"{b}.{a}.to_k", kv, inner, bias=False)
                lin(f"{b}.{a}.to_v", kv, inner, bias=False)
                lin(f"{b}.{a}.to_out.0", inner, inner)
            lin(f"{b}.ff.net.0.proj", inner, inner * 4 * 2)  # GEGLU
            lin(f"{b}.ff.net.2", inner * 4, inner)
            for k in (1, 2, 3):
                norm(f"{b}.norm{k}", inner)
        conv(f"{n}.proj_out", inner, ch, 1)

    lin("time_embed.0", mc, emb)
    lin("time_embed.2", emb, emb)
    conv("input_blocks.0.0", p["in_channels"], mc)
    chans, ch, ds, i = [mc], mc, 1, 1
    for level, m in enumerate(mult):
        for _ in range(nrb):
            res(f"input_blocks.{i}.0", ch, m * mc)
            ch = m * mc
            if ds in ar:
                attn(f"input_blocks.{i}.1", ch)
            chans.append(ch)
            i += 1
        if level != len(mult) - 1:
            if updown:
                res(f"input_blocks.{i}.0", ch, ch)
            else:
                conv(f"input_blocks.{i}.0.op", ch, ch)
            chans.append(ch)
            ds *= 2
            i += 1
    res("middle_block.0", ch, ch)
    attn("middle_block.1", ch)
    res("middle_block.2", ch, ch)
    i = 0
    for level, m in list(enumerate(mult))[::-1]:
        for j in range(nrb + 1):
            res(f"output_blocks.{i}.0", ch + chans.pop(), mc * m)
            ch, k = mc * m, 1
            if ds in ar:
                attn(f"output_blocks.{i}.1", ch)
                k = 2
            if level and j == nrb:
                if updown:
                    res(f"output_blocks.{i}.{k}", ch, ch)
                else:
                    conv(f"output_blocks.{i}.{k}.conv", ch, ch)
                ds //= 2
            i += 1
    norm("out.0", ch)
    conv("out.2", mc, p["out_channels"])
    return shapes


def autoencoder_shapes(fs_params: dict, reg: str) -> dict[str, tuple]:
    """Transcription of ``diffusionmodules/model.py`` Encoder + Decoder and ``VQModel`` / ``AutoencoderKL``."""
    dd = fs_params["ddconfig"]
    ch, mult, nrb, zc = dd["ch"], dd["ch_mult"], dd["num_res_blocks"], dd["z_channels"]
    mid_attn = dd.get("attn_type", "vanilla") != "none"
    shapes: dict[str, tuple] = {}

    def conv(n, cin, cout, k=3):
        shapes[n + ".weight"], shapes[n + ".bias"] = (cout, cin, k, k), (cout,)

    def norm(n, c):
        shapes[n + ".weight"], shapes[n + ".bias"] = (c,), (c,)

    def resnet(n, cin, cout):  # temb_ch = 0 in the autoencoder
        norm(f"{n}.norm1", cin)
        conv(f"{n}.conv1", cin, cout)
        norm(f"{n}.norm2", cout)
        conv(f"{n}.conv2", cout, cout)
        if cin != cout:
            conv(f"{n}.nin_shortcut", cin, cout, 1)

    def mid(n, c):
        resnet(f"{n}.mid.block_1", c, c)
        if mid_attn:
            norm(f"{n}.mid.attn_1.norm", c)
            for q in ("q", "k", "v", "proj_out"):
                conv(f"{n}.mid.attn_1.{q}", c, c, 1)
        resnet(f"{n}.mid.block_2", c, c)

    conv("encoder.conv_in", dd["in_channels"], ch)
    in_mult = (1,) + tuple(mult)
    for i in range(len(mult)):
        bi, bo = ch * in_mult[i], ch * mult[i]
        for j in range(nrb):
            resnet(f"encoder.down.{i}.block.{j}", bi, bo)
            bi = bo
        if i != len(mult) - 1:
            conv(f"encoder.down.{i}.downsample.conv", bi, bi)
    mid("encoder", bi)
    norm("encoder.norm_out", bi)
    conv("encoder.conv_out", bi, 2 * zc if dd["double_z"] else zc)
    bi = ch * mult[-1]
    conv("decoder.conv_in", zc, bi)
    mid("decoder", bi)
    for i in reversed(range(len(mult))):
        bo = ch * mult[i]
        for j in range(nrb + 1):
            resnet(f"decoder.up.{i}.block.{j}", bi, bo)
            bi = bo
        if i != 0:
            conv(f"decoder.up.{i}.upsample.conv", bi, bi)
    norm("decoder.norm_out", bi)
    conv("decoder.conv_out", bi, dd["out_ch"])
    e = fs_params["embed_dim"]
    if reg == "kl":
        conv("quant_conv", 2 * zc, 2 * e, 1)
    else:
        conv("quant_conv", zc, e, 1)
        shapes["quantize.embedding.weight"] = (fs_params["n_embed"], e)
    conv("post_quant_conv", e, zc, 1)
    return shapes


def xtransformer_shapes(n_embed, n_layer, vocab_size, max_seq_len) -> dict[str, tuple]:
    """Transcription of x_transformer ``TransformerWrapper(attn_layers=Encoder(dim, depth))``: 8 heads x 64."""
    d, inner = n_embed, 8 * 64
    shapes = {"transformer.token_emb.weight": (vocab_size, d), "transformer.pos_emb.emb.weight": (max_seq_len, d)}
    for i in range(n_layer):
        a, f = f"transformer.attn_layers.layers.{2 * i}", f"transformer.attn_layers.layers.{2 * i + 1}"
        for n in (a, f):
            shapes[f"{n}.0.weight"], shapes[f"{n}.0.bias"] = (d,), (d,)
        for q in ("to_q", "to_k", "to_v"):
            shapes[f"{a}.1.{q}.weight"] = (inner, d)
        shapes[f"{a}.1.to_out.weight"], shapes[f"{a}.1.to_out.bias"] = (d, inner), (d,)
        shapes[f"{f}.1.net.0.0.weight"], shapes[f"{f}.1.net.0.0.bias"] = (4 * d, d), (4 * d,)
        shapes[f"{f}.1.net.2.weight"], shapes[f"{f}.1.net.2.bias"] = (d, 4 * d), (d,)
    shapes["transformer.norm.weight"], shapes["transformer.norm.bias"] = (d,), (d,)
    shapes["transformer.to_logits.weight"], shapes["transformer.to_logits.bias"] = (vocab_size, d), (vocab_size,)
    return shapes


def register_schedule(params: dict) -> dict[str, torch.Tensor]:
    """Transcription of ``make_beta_schedule("linear")`` + ``DDPM.register_schedule`` (v_posterior = 0)."""
    T, start, end = params["timesteps"], params["linear_start"], params["linear_end"]
    betas = (torch.linspace(start ** 0.5, end ** 0.5, T, dtype=torch.float64) ** 2).numpy()
    alphas = 1.0 - betas
    ac = np.cumprod(alphas, axis=0)
    ac_prev = np.append(1.0, ac[:-1])
    pv = betas * (1.0 - ac_prev) / (1.0 - ac)
    out = dict(betas=betas, alphas_cumprod=ac, alphas_cumprod_prev=ac_prev, sqrt_alphas_cumprod=np.sqrt(ac),
               sqrt_one_minus_alphas_cumprod=np.sqrt(1.0 - ac), log_one_minus_alphas_cumprod=np.log(1.0 - ac),
               sqrt_recip_alphas_cumprod=np.sqrt(1.0 / ac), sqrt_recipm1_alphas_cumprod=np.sqrt(1.0 / ac - 1),
               posterior_variance=pv, posterior_log_variance_clipped=np.log(np.maximum(pv, 1e-20)),
               posterior_mean_coef1=betas * np.sqrt(ac_prev) / (1.0 - ac),
               posterior_mean_coef2=(1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac))
    return {k: torch.tensor(v, dtype=torch.float32) for k, v in out.items()}


def random_tensors(shapes: dict[str, tuple], prefix: str, g: torch.Generator) -> dict[str, torch.Tensor]:
    """Random values of a realistic scale (norm weights near 1), so every layer matters."""
    out = {}
    for name, shape in shapes.items():
        if len(shape) > 1:
            v = torch.randn(shape, generator=g) / math.sqrt(math.prod(shape[1:]))
        else:
            base = 1.0 if ("norm" in name or name.split(".")[-2:-1] == ["0"]) and name.endswith("weight") else 0.0
            v = base + 0.1 * torch.randn(shape, generator=g)
        out[prefix + name] = v
    return out


# ----------------------------------------------------------------------------------------------------------------
# Tiny configs in the original's format (as yaml.safe_load reads models/ldm/*/config.yaml)
# ----------------------------------------------------------------------------------------------------------------
def vq_stage(ch_mult=(1, 2), attn_type=None) -> dict:
    dd = dict(double_z=False, z_channels=3, resolution=16, in_channels=3, out_ch=3, ch=32, ch_mult=list(ch_mult),
              num_res_blocks=1, attn_resolutions=[], dropout=0.0)
    if attn_type:
        dd["attn_type"] = attn_type
    return {"target": "ldm.models.autoencoder.VQModelInterface",
            "params": dict(embed_dim=3, n_embed=16, ddconfig=dd, lossconfig={"target": "torch.nn.Identity"})}


def kl_stage(ch_mult=(1, 2)) -> dict:
    dd = dict(double_z=True, z_channels=4, resolution=16, in_channels=3, out_ch=3, ch=32, ch_mult=list(ch_mult),
              num_res_blocks=1, attn_resolutions=[], dropout=0.0)
    return {"target": "ldm.models.autoencoder.AutoencoderKL",
            "params": dict(embed_dim=4, monitor="val/rec_loss", ddconfig=dd,
                           lossconfig={"target": "torch.nn.Identity"})}


def unet(in_ch, out_ch, **kw) -> dict:
    p = dict(image_size=8, in_channels=in_ch, out_channels=out_ch, model_channels=32, attention_resolutions=[2],
             num_res_blocks=1, channel_mult=[1, 2], num_heads=2)
    p.update(kw)
    return {"target": "ldm.modules.diffusionmodules.openaimodel.UNetModel", "params": p}


def ldm_config(unet_cfg, first_stage, cond_stage, **params) -> dict:
    p = dict(linear_start=0.0015, linear_end=0.0195, num_timesteps_cond=1, log_every_t=200, timesteps=1000,
             first_stage_key="image", image_size=8, channels=first_stage["params"]["embed_dim"], monitor="val/loss",
             unet_config=unet_cfg, first_stage_config=first_stage, cond_stage_config=cond_stage)
    p.update(params)
    return {"model": {"base_learning_rate": 1e-4, "target": "ldm.models.diffusion.ddpm.LatentDiffusion", "params": p}}


def original_state_dict(config: dict, seed: int = 0, cond_shapes: dict | None = None) -> dict[str, torch.Tensor]:
    """A state dict as the original's LatentDiffusion writes it, from the transcriptions above."""
    g = torch.Generator().manual_seed(seed)
    p = config["model"]["params"]
    fs = p["first_stage_config"]
    reg = "kl" if fs["target"].endswith("AutoencoderKL") else "vq"
    sd = random_tensors(openaimodel_shapes(p["unet_config"]["params"]), "model.diffusion_model.", g)
    sd.update(random_tensors(autoencoder_shapes(fs["params"], reg), "first_stage_model.", g))
    if reg == "vq":  # codebook entries at the scale of the latents
        sd["first_stage_model.quantize.embedding.weight"] *= 3.0
    if cond_shapes:
        sd.update(random_tensors(cond_shapes, "cond_stage_model.", g))
    sd.update(register_schedule(p))
    return sd


CIN = ldm_config(unet(3, 3, use_spatial_transformer=True, transformer_depth=1, context_dim=32), vq_stage(),
                 {"target": "ldm.modules.encoders.modules.ClassEmbedder",
                  "params": dict(n_classes=11, embed_dim=32, key="class_label")},
                 cond_stage_key="class_label", cond_stage_trainable=True, conditioning_key="crossattn")
CIN_COND = {"embedding.weight": (11, 32)}


# ----------------------------------------------------------------------------------------------------------------
# Independent implementations
# ----------------------------------------------------------------------------------------------------------------
def diffusers_cond_unet(config: dict, sd: dict, extract_ema: bool = False):
    """The UNet through diffusers' own CompVis conversion (``single_file_utils``)."""
    diffusers = pytest.importorskip("diffusers")
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, create_unet_diffusers_config_from_ldm

    with _quiet():
        cfg = create_unet_diffusers_config_from_ldm(config, sd, image_size=16)
    model = diffusers.UNet2DConditionModel(**cfg)
    converted = convert_ldm_unet_checkpoint(sd, cfg, extract_ema=extract_ema)
    missing, unexpected = model.load_state_dict(converted, strict=False)
    assert not missing and not unexpected, (missing[:4], unexpected[:4])
    return model.eval()


def diffusers_vae(config: dict, sd: dict):
    diffusers = pytest.importorskip("diffusers")
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint, create_vae_diffusers_config_from_ldm

    with _quiet():
        cfg = create_vae_diffusers_config_from_ldm(config, sd, image_size=16)
    model = diffusers.AutoencoderKL(**cfg)
    missing, unexpected = model.load_state_dict(convert_ldm_vae_checkpoint(sd, cfg), strict=False)
    assert not missing and not unexpected, (missing[:4], unexpected[:4])
    return model.eval()


class _quiet:
    def __enter__(self):
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore")

    def __exit__(self, *exc):
        self._w.__exit__(*exc)
        return False


def vq_lookup_transcription(z: torch.Tensor, codebook: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Transcription of taming's ``VectorQuantizer2.forward`` lookup: nearest codebook entry per position.
    Returns ``(z_q (B, C, h, w), indices (B, h, w))``."""
    b, c, h, w = z.shape
    zf = z.permute(0, 2, 3, 1).reshape(-1, c)
    d = (zf ** 2).sum(1, keepdim=True) + (codebook ** 2).sum(1) - 2 * torch.einsum("bd,dn->bn", zf, codebook.t())
    idx = d.argmin(1)
    return codebook[idx].view(b, h, w, c).permute(0, 3, 1, 2), idx.view(b, h, w)


def xtransformer_transcription(sd: dict, ids: torch.Tensor, n_layer: int, prefix="cond_stage_model.") -> torch.Tensor:
    """Transcription of x_transformers' ``TransformerWrapper.forward(return_embeddings=True)`` over an ``Encoder``
    (pre-norm, ``('a', 'f') * depth``, 8 heads of 64, no mask, exact GELU)."""
    w = {k[len(prefix) + len("transformer."):]: v for k, v in sd.items() if k.startswith(prefix + "transformer.")}
    x = w["token_emb.weight"][ids] + w["pos_emb.emb.weight"][: ids.shape[1]][None]
    b, n, _ = x.shape
    for i in range(n_layer):
        a, f = f"attn_layers.layers.{2 * i}", f"attn_layers.layers.{2 * i + 1}"
        h = F.layer_norm(x, x.shape[-1:], w[f"{a}.0.weight"], w[f"{a}.0.bias"])
        q, k, v = (h @ w[f"{a}.1.to_{m}.weight"].t() for m in ("q", "k", "v"))
        q, k, v = (t.reshape(b, n, 8, 64).permute(0, 2, 1, 3) for t in (q, k, v))
        dots = torch.einsum("bhid,bhjd->bhij", q, k) * 64 ** -0.5
        out = torch.einsum("bhij,bhjd->bhid", dots.softmax(-1), v).permute(0, 2, 1, 3).reshape(b, n, 512)
        x = x + out @ w[f"{a}.1.to_out.weight"].t() + w[f"{a}.1.to_out.bias"]
        h = F.layer_norm(x, x.shape[-1:], w[f"{f}.0.weight"], w[f"{f}.0.bias"])
        h = F.gelu(h @ w[f"{f}.1.net.0.0.weight"].t() + w[f"{f}.1.net.0.0.bias"])
        x = x + h @ w[f"{f}.1.net.2.weight"].t() + w[f"{f}.1.net.2.bias"]
    return F.layer_norm(x, x.shape[-1:], w["norm.weight"], w["norm.bias"])


def bert_ids(captions, max_length: int) -> torch.Tensor:
    """Token ids as the original's ``BERTTokenizer`` makes them (``BertTokenizerFast``, bert-base-uncased vocabulary,
    padded to ``max_length``); the vocabulary file is the one shipped with MiniLM (the same 30522 pieces)."""
    from transformers import BertTokenizerFast

    vocab = str(minilm_dir() / "vocab.txt")
    tok = BertTokenizerFast(vocab=vocab, do_lower_case=True)
    if tok.convert_tokens_to_ids("the") == tok.unk_token_id:  # transformers < 5 reads vocab_file=
        tok = BertTokenizerFast(vocab_file=vocab, do_lower_case=True)
    enc = tok(captions, truncation=True, max_length=max_length, padding="max_length", return_tensors="pt")
    return enc["input_ids"]


def assert_same_state_dict(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert torch.equal(a[k].float(), b[k].float()), k


# ----------------------------------------------------------------------------------------------------------------
# cin256-v2: a class-conditional checkpoint "written by the original code"
# ----------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cin():
    sd = original_state_dict(CIN, seed=1, cond_shapes=CIN_COND)
    return sd, load_compvis_ldm(CIN, sd)


def test_cin_loads_and_matches_diffusers_and_the_vq_transcription(cin):
    sd, model = cin
    assert compvis_family(CIN) == "class-conditional"
    assert model.conditioning_key == "crossattn" and model.cond_key == "class_label" and model.cond_stage_trainable
    assert isinstance(model.cond_stage, ClassEmbedder) and model.cond_stage.num_classes == 10
    assert model.unconditional_value is None  # only the 1001-row table of cin256-v2 has a null class
    assert model.image_size == (16, 16) and model.f == 2 and float(model.scale_factor) == 1.0
    torch.testing.assert_close(model.schedule.alphas_cumprod.float(), sd["alphas_cumprod"], atol=1e-6, rtol=0)
    assert set(SCHEDULE_BUFFERS) == set(register_schedule(CIN["model"]["params"]))

    # the class embedding: one token, row `label` of the table
    labels = torch.tensor([3, 10])
    cond = model.get_learned_conditioning(labels)
    torch.testing.assert_close(cond["c_crossattn"], sd["cond_stage_model.embedding.weight"][labels][:, None])

    # the UNet against diffusers' own CompVis conversion, through the whole LDM (apply_model)
    theirs = diffusers_cond_unet(CIN, sd)
    g = torch.Generator().manual_seed(2)
    z, t = torch.randn(2, 3, 8, 8, generator=g), torch.tensor([5, 900])
    with torch.no_grad():
        ours = model.apply_model(z, t, cond)
        ref = theirs(z, t, encoder_hidden_states=sd["cond_stage_model.embedding.weight"][labels][:, None]).sample
    assert ours.abs().mean() > 0.05
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)

    # VQ: encode = the pre-quantisation latent; decode quantises with VectorQuantizer2's lookup
    x = torch.rand(2, 3, 16, 16, generator=g) * 2 - 1
    with torch.no_grad():
        lat = model.encode_first_stage(x)
        torch.testing.assert_close(lat, model.first_stage.quant_conv(model.first_stage.encoder(x)), atol=0, rtol=0)
        codebook = sd["first_stage_model.quantize.embedding.weight"]
        lat = torch.randn(2, 3, 8, 8, generator=g) * codebook.std()  # latents at the codebook's scale
        zq_ref, idx_ref = vq_lookup_transcription(lat, codebook)
        zq, _, info = model.first_stage.quantize(lat)
    assert torch.equal(info["indices"], idx_ref)
    torch.testing.assert_close(zq, zq_ref, atol=1e-6, rtol=0)  # straight-through z + (z_q - z): rounding only
    assert len(torch.unique(idx_ref)) > 4  # several codes in use


def test_cin_vq_first_stage_matches_diffusers_vqmodel(cin):
    pytest.importorskip("diffusers")
    from ldm_lite.convert import first_stage_to_diffusers

    _, model = cin
    vq = model.first_stage
    theirs = first_stage_to_diffusers(vq)
    g = torch.Generator().manual_seed(3)
    x = torch.rand(1, 3, 16, 16, generator=g) * 2 - 1
    with torch.no_grad():
        h = theirs.quant_conv(theirs.encoder(x))
        torch.testing.assert_close(model.encode_first_stage(x), h, atol=1e-4, rtol=0)
        torch.testing.assert_close(model.decode_first_stage(h), theirs.decode(h).sample, atol=1e-4, rtol=0)


def test_cin256_v2_null_class():
    """cin256-v2's table has 1001 rows: the course's ClassEmbedder(1000) with class 1000 as the null class."""
    cfg = ldm_config(unet(3, 3, use_spatial_transformer=True, context_dim=32), vq_stage(),
                     {"target": "ldm.modules.encoders.modules.ClassEmbedder",
                      "params": dict(n_classes=1001, embed_dim=32, key="class_label")},
                     cond_stage_key="class_label", cond_stage_trainable=True, conditioning_key="crossattn")
    model = load_compvis_ldm(cfg, original_state_dict(cfg, cond_shapes={"embedding.weight": (1001, 32)}))
    assert model.cond_stage.num_classes == 1000 and model.unconditional_value == 1000
    u = model.get_unconditional_conditioning(2)
    torch.testing.assert_close(u["c_crossattn"][0, 0], model.cond_stage.embedding.weight[1000])


def test_ckpt_files_weights_only_and_pickles(tmp_path, cin):
    sd, model = cin
    plain = tmp_path / "plain.ckpt"
    torch.save({"state_dict": sd, "global_step": 7, "epoch": 1}, plain)
    loaded = load_compvis_ldm(CIN, plain)  # weights_only=True: tensors and containers only
    assert_same_state_dict(loaded.unet.state_dict(), model.unet.state_dict())

    risky = tmp_path / "with_namespace.ckpt"
    torch.save({"state_dict": sd, "hyper_parameters": argparse.Namespace(lr=1e-4)}, risky)
    with pytest.raises(UnsafeCheckpointError, match=r"(?s)runs code.*trust_pickle=True.*--trust-pickle"):
        load_compvis_ldm(CIN, risky)
    trusted = load_compvis_ldm(CIN, risky, trust_pickle=True)
    assert_same_state_dict(trusted.unet.state_dict(), model.unet.state_dict())

    from safetensors.torch import save_file

    st = tmp_path / "model.safetensors"
    save_file(sd, str(st))
    assert_same_state_dict(load_compvis_ldm(CIN, st).first_stage.state_dict(), model.first_stage.state_dict())


def test_refusals(cin):
    sd, _ = cin
    bad = dict(sd, **{"model.foo.weight": torch.zeros(1)})
    with pytest.raises(CompVisConversionError, match=r"1 unknown keys: model.foo.weight"):
        load_compvis_ldm(CIN, bad)
    gone = {k: v for k, v in sd.items() if "output_blocks.1.0.in_layers" not in k}
    with pytest.raises(CompVisConversionError, match=r"4 missing keys: model.diffusion_model.output_blocks.1.0.in_"):
        load_compvis_ldm(CIN, gone)
    shifted = dict(sd, alphas_cumprod=sd["alphas_cumprod"] * (1 + 1e-4))
    with pytest.raises(CompVisConversionError, match=r"alphas_cumprod differs from the schedule of the config"):
        load_compvis_ldm(CIN, shifted)
    other = ldm_config(**_cin_parts(), linear_end=0.012)
    with pytest.raises(CompVisConversionError, match="schedule of the config"):
        load_compvis_ldm(other, sd)
    attn = ldm_config(**_cin_parts())
    attn["model"]["params"]["first_stage_config"]["params"]["ddconfig"]["attn_resolutions"] = [8]
    with pytest.raises(CompVisConversionError, match="attn_resolutions"):
        load_compvis_ldm(attn, sd)
    hybrid = ldm_config(**dict(_cin_parts(), conditioning_key="hybrid"))
    with pytest.raises(CompVisConversionError, match="hybrid"):
        load_compvis_ldm(hybrid, sd)


def _cin_parts() -> dict:
    p = CIN["model"]["params"]
    return dict(unet_cfg=copy.deepcopy(p["unet_config"]), first_stage=copy.deepcopy(p["first_stage_config"]),
                cond_stage=copy.deepcopy(p["cond_stage_config"]), cond_stage_key="class_label",
                cond_stage_trainable=True, conditioning_key="crossattn")


def test_ema_weights(cin):
    """use_ema=True reads LitEma's buffers (the UNet's names with the dots removed), as diffusers' converter does."""
    sd, model = cin
    g = torch.Generator().manual_seed(5)
    unet_keys = [k for k in sd if k.startswith("model.diffusion_model.")]
    ema = {"model_ema." + ("diffusion_model." + k[len("model.diffusion_model."):]).replace(".", ""):
           sd[k] + 0.01 * torch.randn(sd[k].shape, generator=g) for k in unet_keys}
    full = dict(sd, **ema, **{"model_ema.decay": torch.tensor(0.9999), "model_ema.num_updates": torch.tensor(10)})
    raw = load_compvis_ldm(CIN, full)  # EMA ignored by default
    assert_same_state_dict(raw.unet.state_dict(), model.unet.state_dict())
    smooth = load_compvis_ldm(CIN, full, use_ema=True)
    assert not torch.equal(smooth.unet.out[2].weight, model.unet.out[2].weight)
    assert len(ema) > 100  # diffusers extracts EMA weights only from checkpoints with > 100 of them
    theirs = diffusers_cond_unet(CIN, full, extract_ema=True)
    x, t, c = torch.randn(1, 3, 8, 8, generator=g), torch.tensor([300]), torch.randn(1, 1, 32, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(smooth.unet(x, t, context=c), theirs(x, t, encoder_hidden_states=c).sample,
                                   atol=1e-5, rtol=0)
    with pytest.raises(CompVisConversionError, match="no EMA weights"):
        load_compvis_ldm(CIN, sd, use_ema=True)
    partial = {k: v for k, v in full.items() if k != "model_ema.diffusion_modelout2weight"}
    with pytest.raises(CompVisConversionError, match=r"1 missing keys: model_ema.diffusion_modelout2weight"):
        load_compvis_ldm(CIN, partial, use_ema=True)


# ----------------------------------------------------------------------------------------------------------------
# txt2img-f8-large: KL first stage + BERTEmbedder (x-transformer over BERT WordPiece tokens)
# ----------------------------------------------------------------------------------------------------------------
TXT = ldm_config(unet(4, 4, use_spatial_transformer=True, transformer_depth=1, context_dim=32, legacy=False,
                      num_heads=2), kl_stage(),
                 {"target": "ldm.modules.encoders.modules.BERTEmbedder",
                  "params": dict(n_embed=32, n_layer=2, max_seq_len=16)},
                 cond_stage_key="caption", cond_stage_trainable=True, conditioning_key="crossattn",
                 scale_factor=0.18215, linear_start=0.00085, linear_end=0.012, image_size=8)


@pytest.fixture(scope="module")
def txt():
    sd = original_state_dict(TXT, seed=3, cond_shapes=xtransformer_shapes(32, 2, 30522, 16))
    return sd, load_compvis_ldm(TXT, sd)


def test_txt2img_text_encoder_unet_and_kl(txt):
    sd, model = txt
    assert compvis_family(TXT) == "text-to-image"
    assert isinstance(model.cond_stage, XTransformerEmbedder) and model.unconditional_value == ""
    assert float(model.scale_factor) == pytest.approx(0.18215)
    captions = ["a red circle on a blue square", ""]
    ids = bert_ids(captions, 16)
    with torch.no_grad():
        cond = model.get_learned_conditioning(captions)
        ref = xtransformer_transcription(sd, ids, n_layer=2)
    assert cond.get("context_mask") is None  # the original attends to every token, [PAD] included
    torch.testing.assert_close(cond["c_crossattn"], ref, atol=1e-5, rtol=0)
    assert torch.equal(model.cond_stage.tokenize(captions), ids)

    theirs = diffusers_cond_unet(TXT, sd)
    g = torch.Generator().manual_seed(4)
    z, t = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([1, 999])
    with torch.no_grad():
        torch.testing.assert_close(model.apply_model(z, t, cond), theirs(z, t, encoder_hidden_states=ref).sample,
                                   atol=1e-5, rtol=0)

    vae = diffusers_vae(TXT, sd)  # diffusers' own conversion of the first_stage_model.* keys
    x = torch.rand(2, 3, 16, 16, generator=g) * 2 - 1
    with torch.no_grad():
        lat = model.encode_first_stage(x)
        torch.testing.assert_close(lat, vae.encode(x).latent_dist.mode() * 0.18215, atol=1e-4, rtol=0)
        torch.testing.assert_close(model.decode_first_stage(lat), vae.decode(lat / 0.18215).sample, atol=1e-4, rtol=0)


# ----------------------------------------------------------------------------------------------------------------
# Unconditional (CelebA-HQ / FFHQ / LSUN): ADM attention UNets, VQ-f4 and KL-f8 (scale_by_std)
# ----------------------------------------------------------------------------------------------------------------
CELEBA = ldm_config(unet(3, 3, num_heads=-1, num_head_channels=32, attention_resolutions=[1, 2]), vq_stage(),
                    "__is_unconditional__", cond_stage_key="class_label", cond_stage_trainable=False,
                    concat_mode=False)
CHURCHES = ldm_config(unet(4, 4, num_heads=2, use_scale_shift_norm=True, resblock_updown=True,
                           attention_resolutions=[2, 4], channel_mult=[1, 2, 2]), kl_stage(),
                      "__is_unconditional__", cond_stage_key="image", cond_stage_trainable=False, concat_mode=False,
                      scale_by_std=True, loss_type="l1", linear_end=0.0155)


@pytest.mark.parametrize("name", ["celeba", "churches"])
def test_unconditional(name):
    pytest.importorskip("diffusers")
    from ldm_lite.convert import unet_to_diffusers

    cfg = {"celeba": CELEBA, "churches": CHURCHES}[name]
    sd = original_state_dict(cfg, seed=7)
    if name == "churches":
        with pytest.raises(CompVisConversionError, match="scale_by_std"):
            load_compvis_ldm(cfg, sd)  # the estimated scale is a buffer of the checkpoint
        sd["scale_factor"] = torch.tensor(0.2345)
    model = load_compvis_ldm(cfg, sd)
    assert compvis_family(cfg) == "unconditional" and model.conditioning_key is None and model.cond_stage is None
    assert float(model.scale_factor) == pytest.approx(0.2345 if name == "churches" else 1.0)
    assert model.loss_type == ("l1" if name == "churches" else "l2")
    assert not model.unet.config.use_spatial_transformer
    theirs = unet_to_diffusers(model.unet)
    g = torch.Generator().manual_seed(8)
    z, t = torch.randn(2, model.latent_channels, 8, 8, generator=g), torch.tensor([10, 600])
    with torch.no_grad():
        ours = model.apply_model(z, t, None)
        assert ours.abs().mean() > 0.05
        torch.testing.assert_close(ours, theirs(z, t).sample, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------------------------------------------
# bsr_sr, inpainting_big, semantic synthesis: spatial conditions concatenated with z_t
# ----------------------------------------------------------------------------------------------------------------
BSR = ldm_config(unet(6, 3, num_heads=-1, num_head_channels=32), vq_stage(), {"target": "torch.nn.Identity"},
                 cond_stage_key="LR_image", concat_mode=True, cond_stage_trainable=False, loss_type="l2",
                 linear_end=0.0155)
INPAINT = ldm_config(unet(7, 3, num_heads=2, resblock_updown=True), vq_stage(attn_type="none"),
                     "__is_first_stage__", cond_stage_key="masked_image", concat_mode=True, loss_type="l1",
                     linear_end=0.0205)
SEMANTIC = ldm_config(unet(6, 3, num_heads=2), vq_stage(),
                      {"target": "ldm.modules.encoders.modules.SpatialRescaler",
                       "params": dict(n_stages=2, in_channels=5, out_channels=3)},
                      cond_stage_key="segmentation", concat_mode=True, cond_stage_trainable=True, loss_type="l1")


def test_super_resolution():
    model = load_compvis_ldm(BSR, original_state_dict(BSR, seed=9))
    assert compvis_family(BSR) == "super-resolution" and model.conditioning_key == "concat"
    assert model.cond_stage is None and model.cond_key == "LR_image"
    g = torch.Generator().manual_seed(10)
    z, lr, t = torch.randn(1, 3, 8, 8, generator=g), torch.rand(1, 3, 8, 8, generator=g) * 2 - 1, torch.tensor([40])
    with torch.no_grad():  # DiffusionWrapper 'concat': unet(cat([x] + c_concat, 1), t)
        out = model.apply_model(z, t, model.get_learned_conditioning(lr))
        torch.testing.assert_close(out, model.unet(torch.cat([z, lr], 1), t), atol=0, rtol=0)


def test_inpainting():
    sd = original_state_dict(INPAINT, seed=11)
    # the cond stage *is* the first stage: Lightning saves it twice
    sd.update({"cond_stage_model." + k[len("first_stage_model."):]: v.clone() for k, v in sd.items()
               if k.startswith("first_stage_model.")})
    model = load_compvis_ldm(INPAINT, sd)
    assert compvis_family(INPAINT) == "inpainting"
    assert isinstance(model.cond_stage, InpaintConcat) and model.cond_key == ("masked_image", "hole_mask")
    assert not model.first_stage.config.use_mid_attn  # attn_type: none
    g = torch.Generator().manual_seed(12)
    image = torch.rand(1, 3, 16, 16, generator=g)
    hole = torch.zeros(1, 1, 16, 16)
    hole[..., 3:11, 5:13] = 1
    masked = (1 - hole) * image * 2 - 1  # scripts/inpaint.py: holes at -1
    with torch.no_grad():
        cond = model.get_learned_conditioning({"masked_image": masked, "hole_mask": hole})
        # transcription of scripts/inpaint.py: c = encode(masked_image); cc = interpolate(mask * 2 - 1); cat
        c = model.first_stage.quant_conv(model.first_stage.encoder(masked))
        cc = F.interpolate(hole * 2 - 1, size=c.shape[-2:])
        torch.testing.assert_close(cond["c_concat"], torch.cat([c, cc], 1), atol=1e-6, rtol=0)
    sd["cond_stage_model.encoder.conv_in.bias"] = sd["cond_stage_model.encoder.conv_in.bias"] + 1
    with pytest.raises(CompVisConversionError, match="differ from first_stage_model"):
        load_compvis_ldm(INPAINT, sd)


@pytest.mark.parametrize("key", ["segmentation", "depth"])
def test_semantic_synthesis(key):
    cfg = SEMANTIC if key == "segmentation" else RESCALER
    sd = original_state_dict(cfg, seed=13, cond_shapes={"channel_mapper.weight": (3, 5, 1, 1)})
    model = load_compvis_ldm(cfg, sd)
    labels = torch.randint(0, 5, (1, 32, 32), generator=torch.Generator().manual_seed(14))
    seg = F.one_hot(labels, 5).permute(0, 3, 1, 2).float()  # what the original is fed
    if key == "segmentation":
        assert compvis_family(cfg) == "semantic-synthesis" and isinstance(model.cond_stage, SemanticEncoder)
        raw = labels  # the course's SemanticEncoder takes the label map and one-hot encodes it
    else:  # another spatial condition: the SpatialRescaler itself, fed what the original is fed
        assert isinstance(model.cond_stage, SpatialRescaler)
        raw = seg
    with torch.no_grad():
        cond = model.get_learned_conditioning(raw)
    ref = seg  # transcription of SpatialRescaler.forward: n_stages x interpolate(scale 0.5, bilinear), 1x1 conv
    for _ in range(2):
        ref = F.interpolate(ref, scale_factor=0.5, mode="bilinear")
    ref = F.conv2d(ref, sd["cond_stage_model.channel_mapper.weight"])
    torch.testing.assert_close(cond["c_concat"], ref, atol=1e-6, rtol=0)

RESCALER = copy.deepcopy(SEMANTIC)  # the same cond stage for another spatial condition
RESCALER["model"]["params"]["cond_stage_key"] = "depth"


# ----------------------------------------------------------------------------------------------------------------
# layout2img: the x-transformer over box tokens (no tokenizer)
# ----------------------------------------------------------------------------------------------------------------
LAYOUT = ldm_config(unet(3, 3, num_heads=-1, num_head_channels=32, use_spatial_transformer=True, transformer_depth=2,
                         context_dim=32), vq_stage(),
                    {"target": "ldm.modules.encoders.modules.BERTEmbedder",
                     "params": dict(n_embed=32, n_layer=1, vocab_size=50, max_seq_len=12, use_tokenizer=False)},
                    cond_stage_key="coordinates_bbox", conditioning_key="crossattn", cond_stage_trainable=True)


def test_layout_tokens():
    sd = original_state_dict(LAYOUT, seed=15, cond_shapes=xtransformer_shapes(32, 1, 50, 12))
    model = load_compvis_ldm(LAYOUT, sd)
    assert compvis_family(LAYOUT) == "layout-to-image" and model.unconditional_value is None
    ids = torch.randint(0, 50, (2, 12), generator=torch.Generator().manual_seed(16))
    with torch.no_grad():
        got = model.get_learned_conditioning(ids)["c_crossattn"]
    torch.testing.assert_close(got, xtransformer_transcription(sd, ids, n_layer=1), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="token ids"):
        model.cond_stage("a caption")


# ----------------------------------------------------------------------------------------------------------------
# Back to CompVis: save_compvis round trips every family
# ----------------------------------------------------------------------------------------------------------------
FAMILIES = {"cin": (CIN, CIN_COND), "txt": (TXT, xtransformer_shapes(32, 2, 30522, 16)), "celeba": (CELEBA, None),
            "churches": (CHURCHES, None), "bsr": (BSR, None), "inpaint": (INPAINT, None),
            "semantic": (SEMANTIC, {"channel_mapper.weight": (3, 5, 1, 1)}),
            "rescaler": (RESCALER, {"channel_mapper.weight": (3, 5, 1, 1)}),
            "layout": (LAYOUT, xtransformer_shapes(32, 1, 50, 12))}


@pytest.mark.parametrize("name", list(FAMILIES))
def test_save_compvis_round_trip(name, tmp_path):
    cfg, cond = FAMILIES[name]
    sd = original_state_dict(cfg, seed=17, cond_shapes=cond)
    if name == "churches":
        sd["scale_factor"] = torch.tensor(0.5)
    if name == "inpaint":
        sd.update({"cond_stage_model." + k[len("first_stage_model."):]: v.clone() for k, v in sd.items()
                   if k.startswith("first_stage_model.")})
    model = load_compvis_ldm(cfg, sd)
    out = save_compvis(model)
    written = dict(out["state_dict"])
    expected = {k: v for k, v in sd.items() if k != "scale_factor"}  # written into the config instead
    assert sorted(written) == sorted(expected)
    for k in expected:
        torch.testing.assert_close(written[k], expected[k], atol=1e-6, rtol=0, msg=k)
    assert compvis_family(out["config"]) == compvis_family(cfg)
    again = load_compvis_ldm(out["config"], written)
    assert_same_state_dict(again.state_dict(), model.state_dict())
    for attr in ("conditioning_key", "cond_key", "cond_stage_trainable", "parameterization", "image_size",
                 "unconditional_value", "loss_type"):
        assert getattr(again, attr) == getattr(model, attr), attr
    assert float(again.scale_factor) == float(model.scale_factor)
    assert again.unet.config == model.unet.config and again.first_stage.config == model.first_stage.config
    if name == "cin":  # files: a .ckpt (weights_only) + the YAML config
        save_compvis(model, tmp_path / "m.ckpt")
        back = load_compvis_ldm(tmp_path / "m.yaml", tmp_path / "m.ckpt")
        assert_same_state_dict(back.state_dict(), model.state_dict())
        assert read_compvis_config(tmp_path / "m.yaml")["params"]["cond_stage_config"]["params"]["n_classes"] == 11


def test_save_compvis_refuses_what_the_original_lacks():
    from ldm_lite.autoencoder import AutoencoderKL
    from ldm_lite.ldm import LatentDiffusion
    from ldm_lite.unet import UNetModel

    ae = AutoencoderKL(f=2, ch=16, ch_mult=(1, 2), num_res_blocks=1, z_channels=4)
    u = UNetModel(4, 4, 32, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(2,), num_heads=2)
    with pytest.raises(CompVisConversionError, match="multiple of 32"):
        save_compvis(LatentDiffusion(ae, u))
    with pytest.raises(CompVisConversionError, match="CompVis's LatentDiffusion predicts eps or x0"):
        save_compvis(LatentDiffusion(None, u, parameterization="v"))


# ----------------------------------------------------------------------------------------------------------------
# The command line: convert-compvis -> an export that load_ldm and sample use
# ----------------------------------------------------------------------------------------------------------------
def test_cli_export_load_and_sample(tmp_path, cin):
    import yaml

    from ldm_lite.pretrained import load_ldm

    sd, model = cin
    cfg_path, ckpt = tmp_path / "config.yaml", tmp_path / "model.ckpt"
    cfg_path.write_text(yaml.safe_dump(CIN))
    torch.save({"state_dict": sd, "hyper_parameters": argparse.Namespace(lr=1.0)}, ckpt)
    parser = argparse.ArgumentParser()
    add_convert_compvis(parser.add_subparsers(dest="command"))
    target = tmp_path / "exports" / "cin_tiny"
    args = parser.parse_args(["convert-compvis", str(cfg_path), str(ckpt), "--export", str(target)])
    with pytest.raises(UnsafeCheckpointError):
        run_convert_compvis(args)
    args = parser.parse_args(["convert-compvis", str(cfg_path), str(ckpt), "--export", str(target), "--trust-pickle"])
    summary = run_convert_compvis(args)
    assert summary["family"] == "class-conditional"
    assert (target.parent / "cin_tiny.json").exists() and (target.parent / "cin_tiny_first_stage.json").exists()
    with pytest.raises(FileExistsError):
        run_convert_compvis(args)  # no --force: nothing replaced

    loaded = load_ldm(str(target))
    assert loaded.cond_key == "class_label" and loaded.conditioning_key == "crossattn"
    g = torch.Generator().manual_seed(6)
    z, t = torch.randn(1, 3, 8, 8, generator=g), torch.tensor([100])
    with torch.no_grad():  # float16 weights in the export
        a = loaded.apply_model(z, t, loaded.get_learned_conditioning(torch.tensor([4])))
        b = model.apply_model(z, t, model.get_learned_conditioning(torch.tensor([4])))
    torch.testing.assert_close(a, b, atol=2e-2, rtol=2e-2)
    images = loaded.sample(cond=torch.tensor([1, 2]), steps=2, generator=torch.Generator().manual_seed(0),
                           progress=False)
    assert images.shape == (2, 3, 16, 16) and torch.isfinite(images).all()


# ----------------------------------------------------------------------------------------------------------------
# The released models' sizes: key names and shapes at full size (built on the meta device: no memory)
# ----------------------------------------------------------------------------------------------------------------
RELEASED_UNETS = {  # unet_config.params of the released configs (configs/latent-diffusion, models/ldm/*/config.yaml)
    "cin256-v2": dict(in_channels=3, out_channels=3, model_channels=192, attention_resolutions=[8, 4, 2],
                      num_res_blocks=2, channel_mult=[1, 2, 3, 5], num_heads=1, use_spatial_transformer=True,
                      transformer_depth=1, context_dim=512),
    "txt2img-f8-large": dict(in_channels=4, out_channels=4, model_channels=320, attention_resolutions=[4, 2, 1],
                             num_res_blocks=2, channel_mult=[1, 2, 4, 4], num_heads=8, use_spatial_transformer=True,
                             transformer_depth=1, context_dim=1280, use_checkpoint=True, legacy=False),
    "celeba256": dict(in_channels=3, out_channels=3, model_channels=224, attention_resolutions=[8, 4, 2],
                      num_res_blocks=2, channel_mult=[1, 2, 3, 4], num_head_channels=32),
    "lsun_churches256": dict(in_channels=4, out_channels=4, model_channels=192, attention_resolutions=[1, 2, 4, 8],
                             num_res_blocks=2, channel_mult=[1, 2, 2, 4, 4], num_heads=8, use_scale_shift_norm=True,
                             resblock_updown=True),
    "bsr_sr": dict(in_channels=6, out_channels=3, model_channels=160, attention_resolutions=[16, 8], num_res_blocks=2,
                   channel_mult=[1, 2, 2, 4], num_head_channels=32),
    "inpainting_big": dict(in_channels=7, out_channels=3, model_channels=256, attention_resolutions=[8, 4, 2],
                           num_res_blocks=2, channel_mult=[1, 2, 3, 4], num_heads=8, resblock_updown=True),
    "layout2img": dict(in_channels=3, out_channels=3, model_channels=128, attention_resolutions=[8, 4, 2],
                       num_res_blocks=2, channel_mult=[1, 2, 3, 4], num_head_channels=32, use_spatial_transformer=True,
                       transformer_depth=3, context_dim=512),
    "semantic_synthesis256": dict(in_channels=6, out_channels=3, model_channels=128, attention_resolutions=[32, 16, 8],
                                  num_res_blocks=2, channel_mult=[1, 4, 8], num_heads=8),
}


@pytest.mark.parametrize("name", list(RELEASED_UNETS))
def test_released_unet_layouts(name):
    from ldm_lite.convert.compvis import unet_config_from_compvis
    from ldm_lite.unet import UNetModel

    p = RELEASED_UNETS[name]
    with torch.device("meta"):
        ours = UNetModel.from_config(unet_config_from_compvis(p))
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == openaimodel_shapes(p)


def test_released_first_stage_and_text_encoder_layouts():
    from ldm_lite.autoencoder import build_autoencoder
    from ldm_lite.convert.compvis import first_stage_config_from_compvis

    vq_f4 = dict(embed_dim=3, n_embed=8192, ddconfig=dict(double_z=False, z_channels=3, resolution=256, in_channels=3,
                                                         out_ch=3, ch=128, ch_mult=[1, 2, 4], num_res_blocks=2,
                                                         attn_resolutions=[], dropout=0.0))
    kl_f8 = dict(embed_dim=4, ddconfig=dict(double_z=True, z_channels=4, resolution=256, in_channels=3, out_ch=3,
                                            ch=128, ch_mult=[1, 2, 4, 4], num_res_blocks=2, attn_resolutions=[],
                                            dropout=0.0))
    vq_noattn = dict(vq_f4, ddconfig=dict(vq_f4["ddconfig"], attn_type="none"))  # inpainting_big
    for target, params, reg in (("VQModelInterface", vq_f4, "vq"), ("AutoencoderKL", kl_f8, "kl"),
                                ("VQModelInterface", vq_noattn, "vq")):
        cfg = first_stage_config_from_compvis({"target": f"ldm.models.autoencoder.{target}", "params": params})
        with torch.device("meta"):
            ae = build_autoencoder(cfg)
        got = {k: tuple(v.shape) for k, v in ae.state_dict().items() if k != "quantize.usage"}
        assert got == autoencoder_shapes(params, reg)
    with torch.device("meta"):
        bert = XTransformerEmbedder(1280, 32, use_tokenizer=False)  # txt2img-f8-large's BERTEmbedder
    assert {k: tuple(v.shape) for k, v in bert.state_dict().items()} == xtransformer_shapes(1280, 32, 30522, 77)
