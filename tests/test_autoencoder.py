"""The first-stage autoencoder: shapes for every f, the KL term, vector quantisation, conversion."""

import math

import pytest
import torch

from ldm_lite.autoencoder import (
    AutoencoderConfig,
    AutoencoderKL,
    DiagonalGaussianDistribution,
    VectorQuantizer,
    VQModel,
    ch_mult_for_factor,
)

torch.set_num_threads(2)


@pytest.mark.parametrize("f", [1, 2, 4, 8, 16, 32])
def test_shapes_for_every_factor(f):
    torch.manual_seed(0)
    ae = AutoencoderKL(f=f, ch=16, z_channels=3, num_res_blocks=1, use_mid_attn=f >= 4)
    x = torch.randn(2, 3, 32, 32)
    post = ae.encode(x)
    assert post.mean.shape == (2, 3, 32 // f, 32 // f)
    assert ae.latent_shape(32) == (3, 32 // f, 32 // f)
    assert ae.decode(post.sample()).shape == x.shape
    assert len(ae.encoder.down) == int(math.log2(f)) + 1


def test_vq_shapes_and_outputs():
    torch.manual_seed(0)
    vq = VQModel(f=4, ch=16, z_channels=4, n_embed=32, num_res_blocks=1)
    x = torch.randn(2, 3, 16, 16)
    xrec, loss, info = vq(x)
    assert xrec.shape == x.shape and loss.dim() == 0
    assert info["indices"].shape == (2, 4, 4)
    assert 1.0 <= float(info["perplexity"]) <= 32.0
    assert 0.0 < float(info["usage"]) <= 1.0


@pytest.mark.parametrize("bad", [3, 6, 64, 0])
def test_bad_factor_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="power of two"):
        ch_mult_for_factor(bad)


def test_size_not_divisible_by_f():
    ae = AutoencoderKL(f=8, ch=16, num_res_blocks=1)
    with pytest.raises(ValueError, match="not divisible by the downsampling factor f=8"):
        ae.encode(torch.randn(1, 3, 36, 36))


def test_ch_mult_must_match_f():
    with pytest.raises(ValueError, match="gives f=4"):
        AutoencoderConfig(f=8, ch_mult=(1, 2, 4))


def test_wrong_latent_channels():
    ae = AutoencoderKL(f=4, ch=16, z_channels=4, num_res_blocks=1)
    with pytest.raises(ValueError, match=r"\(B, 4, h, w\)"):
        ae.decode(torch.randn(1, 3, 4, 4))


def test_kl_matches_closed_form_and_torch_distributions():
    torch.manual_seed(0)
    params = torch.randn(3, 8, 4, 4)
    q = DiagonalGaussianDistribution(params)
    mu, logvar = params[:, :4], params[:, 4:]
    expected = 0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum(dim=(1, 2, 3))
    torch.testing.assert_close(q.kl(), expected)
    # against torch.distributions, summed over dimensions
    ref = torch.distributions.kl_divergence(
        torch.distributions.Normal(mu, (0.5 * logvar).exp()), torch.distributions.Normal(0.0, 1.0)
    ).sum(dim=(1, 2, 3))
    torch.testing.assert_close(q.kl(), ref, rtol=1e-5, atol=1e-5)
    # KL between two Gaussians
    p = DiagonalGaussianDistribution(torch.randn(3, 8, 4, 4))
    ref2 = torch.distributions.kl_divergence(
        torch.distributions.Normal(q.mean, q.std), torch.distributions.Normal(p.mean, p.std)
    ).sum(dim=(1, 2, 3))
    torch.testing.assert_close(q.kl(p), ref2, rtol=1e-4, atol=1e-4)


def test_gaussian_sampling_reproducible_and_deterministic_mode():
    params = torch.randn(2, 6, 3, 3)
    q = DiagonalGaussianDistribution(params)
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    torch.testing.assert_close(q.sample(g1), q.sample(g2))
    d = DiagonalGaussianDistribution(params, deterministic=True)
    torch.testing.assert_close(d.sample(), d.mode())
    assert float(d.kl().abs().sum()) == 0.0


def test_vq_nearest_code_and_straight_through_gradient():
    torch.manual_seed(0)
    vq = VectorQuantizer(n_e=5, e_dim=2, beta=0.25)
    vq.embedding.weight.data = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    z = torch.tensor([[[[0.9]], [[0.1]]], [[[-0.2]], [[-0.7]]]], requires_grad=True)  # (2, 2, 1, 1)
    z_q, loss, info = vq(z)
    assert info["indices"].flatten().tolist() == [1, 4]
    torch.testing.assert_close(z_q.detach()[:, :, 0, 0], torch.tensor([[1.0, 0.0], [0.0, -1.0]]))
    # straight-through: d(sum(w * z_q))/dz == w (the quantiser passes the gradient unchanged)
    w = torch.randn_like(z_q)
    (g,) = torch.autograd.grad((w * z_q).sum(), z)
    torch.testing.assert_close(g, w)
    # loss = ||sg[z] - e||^2 + beta ||z - sg[e]||^2 (means), both terms equal in value here
    mse = ((z.detach() - z_q.detach()) ** 2).mean()
    torch.testing.assert_close(loss, (1 + 0.25) * mse)
    # the commitment gradient on z is beta * 2 (z - e) / N
    vq.zero_grad()
    z2 = z.detach().clone().requires_grad_(True)
    _, loss2, _ = vq(z2)
    loss2.backward()
    torch.testing.assert_close(z2.grad, 0.25 * 2 * (z2.detach() - z_q.detach()) / z.numel())
    assert vq.embedding.weight.grad is not None


def test_vq_dead_code_restart():
    torch.manual_seed(0)
    vq = VectorQuantizer(n_e=8, e_dim=2, dead_code_threshold=0.5, usage_decay=0.0)
    vq.embedding.weight.data[:] = 100.0  # all codes far away ...
    vq.embedding.weight.data[0] = 0.0  # ... except one, which takes every vector
    vq.train()
    vq(torch.randn(4, 2, 4, 4))
    # the 7 unused codes were moved onto encoder outputs
    assert (vq.embedding.weight.data.abs() < 10).all()


def test_diffusers_conversion_matches():
    diffusers = pytest.importorskip("diffusers")
    from ldm_lite.autoencoder.convert import autoencoder_from_diffusers, convert_diffusers_state_dict

    torch.manual_seed(0)
    hf = diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(32, 64, 64), layers_per_block=2,
        latent_channels=4, norm_num_groups=32,
    ).eval()
    ours = autoencoder_from_diffusers(hf).eval()
    x = torch.randn(2, 3, 32, 32)
    z = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        dist = hf.encode(x).latent_dist
        torch.testing.assert_close(ours.encode(x).mean, dist.mean, atol=1e-5, rtol=0)
        torch.testing.assert_close(ours.encode(x).logvar, dist.logvar, atol=1e-5, rtol=0)
        torch.testing.assert_close(ours.decode(z), hf.decode(z).sample, atol=1e-5, rtol=0)
    with pytest.raises(KeyError, match="unrecognised"):
        convert_diffusers_state_dict({"encoder.strange.weight": torch.zeros(1)}, 3)


def test_compvis_checkpoint_loads_by_name(tmp_path):
    from ldm_lite.autoencoder.convert import load_compvis_first_stage

    torch.manual_seed(0)
    cfg = AutoencoderConfig(f=4, ch=16, num_res_blocks=1, z_channels=4)
    src = AutoencoderKL(cfg)
    full = {f"first_stage_model.{k}": v for k, v in src.state_dict().items()}
    full["model.diffusion_model.x.weight"] = torch.zeros(1)  # the UNet of a full LDM checkpoint is ignored
    full["first_stage_model.loss.logvar"] = torch.zeros(())  # training-loss weights are dropped
    path = tmp_path / "ldm.ckpt"
    torch.save({"state_dict": full}, path)
    loaded = load_compvis_first_stage(path, cfg)
    for k, v in src.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)
    with pytest.raises(KeyError, match="does not match the config"):
        load_compvis_first_stage(path, AutoencoderConfig(f=8, ch=16, num_res_blocks=1, z_channels=4))
