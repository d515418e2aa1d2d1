"""Tests for the autoencoder losses (LDM Sec. 3.1, App. G) and the perceptual distance.

Closed forms and reference implementations, not numbers copied from our own output:
hinge loss values, d(loss)/d(logvar), the adaptive weight recomputed by hand with
``torch.autograd.grad``, PatchGAN sizes and receptive field from the conv arithmetic (and measured
with a gradient), the random-VGG substitute against the ``lpips`` package's own "baseline" mode.
The model classes of ``ldm_lite.autoencoder`` are not needed: tiny stand-ins do their jobs.
"""

from __future__ import annotations

import math
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn
from scipy.ndimage import gaussian_filter

from ldm_lite.autoencoder import perceptual as perc
from ldm_lite.autoencoder.losses import (
    ActNorm,
    LPIPSWithDiscriminator,
    NLayerDiscriminator,
    VQLPIPSWithDiscriminator,
    adopt_weight,
    calculate_adaptive_weight,
    hinge_d_loss,
    patchgan_output_size,
    patchgan_receptive_field,
    vanilla_d_loss,
    weights_init,
)
from ldm_lite.autoencoder.perceptual import (
    PerceptualLoss,
    PerceptualSubstituteWarning,
    get_perceptual_loss,
    lpips_distance,
)

SIZE = 32  # smallest convenient size for the 3-layer PatchGAN (needs >= 24 px)


# ---------------------------------------------------------------------------------------------
# Stand-ins
# ---------------------------------------------------------------------------------------------
class FakePosterior:
    """Stands in for DiagonalGaussianDistribution: ``.kl()`` returns a per-sample KL ``(B,)``."""

    def __init__(self, kl: torch.Tensor):
        self._kl = kl
        self.calls = 0

    def kl(self) -> torch.Tensor:
        self.calls += 1
        return self._kl


class TinyDecoder(nn.Module):
    """A 1x1 conv 'decoder' from a 4-channel latent; its weight plays get_last_layer()."""

    def __init__(self):
        super().__init__()
        self.conv_out = nn.Conv2d(4, 3, 1)

    def forward(self, z):
        return torch.tanh(self.conv_out(z))

    def get_last_layer(self):
        return self.conv_out.weight


def make_batch(b=2, size=SIZE, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 3, size, size, generator=g) * 2 - 1
    z = torch.randn(b, 4, size, size, generator=g)
    return x, z


def kl_loss_fn(**kw):
    kw.setdefault("perceptual", "none")
    return LPIPSWithDiscriminator(**kw)


# ---------------------------------------------------------------------------------------------
# GAN helpers
# ---------------------------------------------------------------------------------------------
def test_hinge_loss_closed_form():
    ones = torch.ones(2, 1, 6, 6)
    assert hinge_d_loss(ones, -ones).item() == 0.0  # confident and right: no loss
    assert hinge_d_loss(0 * ones, 0 * ones).item() == 1.0  # undecided: 0.5 * (1 + 1)
    real, fake = torch.tensor([0.5, 2.0]), torch.tensor([-3.0, 0.25])
    expected = 0.5 * (((1 - 0.5) + 0) / 2 + (0 + (1 + 0.25)) / 2)
    assert hinge_d_loss(real, fake).item() == pytest.approx(expected)
    assert vanilla_d_loss(0 * ones, 0 * ones).item() == pytest.approx(math.log(2))


def test_adopt_weight():
    assert adopt_weight(1.0, 99, threshold=100) == 0.0
    assert adopt_weight(1.0, 100, threshold=100) == 1.0
    assert adopt_weight(0.7, 5, threshold=0) == 0.7


def test_adaptive_weight_free_function_and_clamp():
    w = torch.randn(3, 4, requires_grad=True)
    nll = (w**2).sum()
    g = (w.sin()).sum()
    got = calculate_adaptive_weight(nll, g, w, disc_weight=0.5)
    expected = 0.5 * torch.norm(2 * w.detach()) / (torch.norm(w.detach().cos()) + 1e-4)
    torch.testing.assert_close(got, expected)
    assert not got.requires_grad
    # A vanishing GAN gradient is clamped to 1e4 (times disc_weight).
    huge = calculate_adaptive_weight(1e3 * (w**2).sum(), 1e-12 * w.sum(), w, disc_weight=0.5)
    assert huge.item() == pytest.approx(0.5e4)


# ---------------------------------------------------------------------------------------------
# PatchGAN
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size, side", [(64, 6), (256, 30)])
def test_patchgan_output_shape_and_patch_count(size, side):
    d = NLayerDiscriminator(input_nc=3, ndf=8, n_layers=3).apply(weights_init)
    out = d(torch.randn(2, 3, size, size))
    assert out.shape == (2, 1, side, side)
    assert patchgan_output_size(size, 3) == side
    assert out[0, 0].numel() == side * side  # 36 and 900 patches


def test_patchgan_receptive_field_is_70_measured_by_gradient():
    assert patchgan_receptive_field(3) == 70  # the pix2pix "70x70 PatchGAN"
    d = NLayerDiscriminator(ndf=8).apply(weights_init).eval()
    x = torch.randn(1, 3, 128, 128, requires_grad=True)
    out = d(x)
    i = out.shape[-1] // 2
    out[0, 0, i, i].backward()
    support = x.grad.abs().sum(dim=(0, 1)) > 0
    rows, cols = support.any(dim=1).nonzero(), support.any(dim=0).nonzero()
    assert int(rows.max() - rows.min() + 1) == 70
    assert int(cols.max() - cols.min() + 1) == 70
    assert d.receptive_field == 70


def test_patchgan_layout_and_init():
    d = NLayerDiscriminator(input_nc=3, ndf=64, n_layers=3)
    convs = [m for m in d.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 128, 256, 512, 1]
    assert [c.stride[0] for c in convs] == [2, 2, 2, 1, 1]
    assert all(c.kernel_size == (4, 4) for c in convs)
    assert [c.bias is not None for c in convs] == [True, False, False, False, True]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in d.modules()) == 3
    torch.manual_seed(0)
    d.apply(weights_init)
    w = torch.cat([c.weight.flatten() for c in convs])
    assert w.mean().abs() < 1e-3 and w.std().item() == pytest.approx(0.02, rel=0.05)
    bn = [m for m in d.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(m.bias.abs().max() == 0 for m in bn)
    assert torch.cat([m.weight for m in bn]).mean().item() == pytest.approx(1.0, abs=0.01)


def test_actnorm_data_dependent_init():
    an = ActNorm(5)
    x = torch.randn(8, 5, 6, 6) * 3 + 2
    y = an(x)
    torch.testing.assert_close(y.mean(dim=(0, 2, 3)), torch.zeros(5), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.std(dim=(0, 2, 3)), torch.ones(5), atol=1e-4, rtol=0)
    d = NLayerDiscriminator(ndf=8, use_actnorm=True).apply(weights_init)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in d.modules())
    assert d(torch.randn(2, 3, 64, 64)).shape == (2, 1, 6, 6)


# ---------------------------------------------------------------------------------------------
# LPIPSWithDiscriminator
# ---------------------------------------------------------------------------------------------
def test_adaptive_weight_matches_hand_computation():
    torch.manual_seed(0)
    dec = TinyDecoder()
    x, z = make_batch()
    loss_fn = kl_loss_fn(disc_start=0, disc_weight=0.5, kl_weight=0.0)
    xr = dec(z)
    post = FakePosterior(torch.zeros(2))
    loss, log = loss_fn(x, xr, post, 0, global_step=10, last_layer=dec.get_last_layer())

    # By hand: NLL and generator loss, then the gradient norms at the decoder's last layer.
    last = dec.get_last_layer()
    nll = (torch.abs(x - xr) / torch.exp(loss_fn.logvar) + loss_fn.logvar).sum() / x.shape[0]
    g = -loss_fn.discriminator(xr).mean()
    (gn,) = torch.autograd.grad(nll, last, retain_graph=True)
    (gg,) = torch.autograd.grad(g, last, retain_graph=True)
    lam = 0.5 * torch.clamp(gn.norm() / (gg.norm() + 1e-4), 0, 1e4)
    torch.testing.assert_close(log["train/d_weight"], lam)
    torch.testing.assert_close(log["train/g_loss"], g.detach())
    torch.testing.assert_close(loss, nll + lam * g)
    # The weight is a constant in the backward pass: grad = grad(nll) + lambda * grad(g).
    (gl,) = torch.autograd.grad(loss, last)
    torch.testing.assert_close(gl, gn + lam * gg, rtol=1e-5, atol=1e-4)


def test_disc_start_switches_gan_on_exactly():
    torch.manual_seed(0)
    dec = TinyDecoder()
    x, z = make_batch()
    loss_fn = kl_loss_fn(disc_start=100, kl_weight=1e-6)
    post = FakePosterior(torch.tensor([3.0, 5.0]))

    xr = dec(z)
    loss, log = loss_fn(x, xr, post, 0, global_step=99, last_layer=dec.get_last_layer())
    nll = (torch.abs(x - xr) / torch.exp(loss_fn.logvar) + loss_fn.logvar).sum() / 2
    assert log["train/disc_factor"].item() == 0.0
    assert log["train/g_loss"].item() == 0.0 and log["train/d_weight"].item() == 0.0
    torch.testing.assert_close(loss, nll + 1e-6 * 4.0)  # exactly NLL + KL, no GAN term
    assert not loss_fn.gan_active(99) and loss_fn.gan_active(100)

    d_loss, dlog = loss_fn(x, xr, post, 1, global_step=99)
    assert d_loss.item() == 0.0 and dlog["train/disc_loss"].item() == 0.0
    d_loss.backward()  # a trainer can call backward on it; nothing reaches the discriminator
    assert all(p.grad is None for p in loss_fn.discriminator.parameters())

    xr = dec(z)
    loss, log = loss_fn(x, xr, post, 0, global_step=100, last_layer=dec.get_last_layer())
    assert log["train/disc_factor"].item() == 1.0
    assert log["train/g_loss"].item() != 0.0 and log["train/d_weight"].item() > 0.0
    assert (loss - log["train/nll_loss"] - 1e-6 * 4.0).abs().item() > 0
    d_loss, dlog = loss_fn(x, xr, post, 1, global_step=100)
    assert d_loss.item() > 0.0
    d_loss.backward()
    assert all(p.grad is not None for p in loss_fn.discriminator.parameters())
    assert dec.conv_out.weight.grad is None  # inputs/reconstructions were detached


def test_discriminator_step_is_hinge_on_detached_images():
    torch.manual_seed(0)
    x, z = make_batch()
    xr = TinyDecoder()(z)
    loss_fn = kl_loss_fn(disc_start=0, disc_factor=0.7)
    loss_fn.eval()  # BatchNorm with running stats: D(x) is the same in both calls
    d_loss, log = loss_fn(x, xr, FakePosterior(torch.zeros(2)), 1, global_step=0)
    expected = 0.7 * hinge_d_loss(loss_fn.discriminator(x), loss_fn.discriminator(xr.detach()))
    torch.testing.assert_close(d_loss, expected)
    torch.testing.assert_close(log["train/logits_real"], loss_fn.discriminator(x).mean().detach())


def test_gan_switches_off_with_zero_weight():
    x, z = make_batch()
    dec = TinyDecoder()
    for kw in (dict(disc_start=0, disc_weight=0.0), dict(disc_start=0, disc_factor=0.0), dict(disc_start=10**9)):
        loss_fn = kl_loss_fn(**kw)
        loss, log = loss_fn(x, dec(z), FakePosterior(torch.zeros(2)), 0, 5, last_layer=None)
        torch.testing.assert_close(loss, log["train/nll_loss"])  # no last_layer needed: GAN is off
        assert loss_fn(x, dec(z), FakePosterior(torch.zeros(2)), 1, 5)[0].item() == 0.0


def test_kl_term_uses_posteriors_kl():
    x, z = make_batch(b=3)
    xr = TinyDecoder()(z)
    post = FakePosterior(torch.tensor([1.0, 2.0, 6.0]))  # per-sample KL, already summed over latent dims
    loss_fn = kl_loss_fn(disc_start=10**9, kl_weight=0.5)
    loss, log = loss_fn(x, xr, post, 0, 0)
    assert post.calls == 1
    assert log["train/kl_loss"].item() == pytest.approx(3.0)  # sum over batch / B
    torch.testing.assert_close(loss, log["train/nll_loss"] + 0.5 * 3.0)


def test_nll_logvar_gradient_closed_form():
    x, z = make_batch()
    xr = TinyDecoder()(z).detach()
    loss_fn = kl_loss_fn(disc_start=10**9, kl_weight=0.0, logvar_init=0.3)
    loss, log = loss_fn(x, xr, FakePosterior(torch.zeros(2)), 0, 0)
    (grad,) = torch.autograd.grad(loss, loss_fn.logvar)
    rec = torch.abs(x - xr)
    # d/ds sum(rec * e^-s + s) / B = sum(1 - rec * e^-s) / B
    expected = (1 - rec * math.exp(-0.3)).sum() / 2
    torch.testing.assert_close(grad, expected)
    # The optimum is the Laplace scale: logvar* = log(mean |x - x_hat|).
    best = kl_loss_fn(disc_start=10**9, kl_weight=0.0, logvar_init=float(rec.mean().log()))
    (g0,) = torch.autograd.grad(best(x, xr, FakePosterior(torch.zeros(2)), 0, 0)[0], best.logvar)
    assert abs(g0.item()) < 1e-2 * rec.numel()**0.5
    assert log["train/logvar"].item() == pytest.approx(0.3)


def test_per_pixel_weights_only_scale_the_weighted_nll():
    x, z = make_batch()
    xr = TinyDecoder()(z).detach()
    loss_fn = kl_loss_fn(disc_start=10**9, kl_weight=0.0)
    plain, log = loss_fn(x, xr, FakePosterior(torch.zeros(2)), 0, 0)
    weighted, wlog = loss_fn(x, xr, FakePosterior(torch.zeros(2)), 0, 0, weights=2.0 * torch.ones_like(x))
    torch.testing.assert_close(weighted, 2 * plain)
    torch.testing.assert_close(wlog["train/nll_loss"], log["train/nll_loss"])


def test_validation_without_grads_gives_zero_adaptive_weight_and_prefixed_logs():
    x, z = make_batch()
    dec = TinyDecoder()
    loss_fn = kl_loss_fn(disc_start=0).eval()
    with torch.no_grad():
        loss, log = loss_fn(x, dec(z), FakePosterior(torch.zeros(2)), 0, 10, split="val")
    expected = {"total_loss", "rec_loss", "nll_loss", "kl_loss", "logvar", "d_weight", "disc_factor", "g_loss"}
    assert {k.split("/", 1)[1] for k in log} >= expected
    assert all(k.startswith("val/") for k in log)
    assert log["val/d_weight"].item() == 0.0
    _, dlog = loss_fn(x, dec(z), FakePosterior(torch.zeros(2)), 1, 10, split="val")
    assert set(dlog) >= {"val/disc_loss", "val/logits_real", "val/logits_fake"}


def test_perceptual_weight_zero_skips_the_network_and_perceptual_term_adds():
    loss_fn = LPIPSWithDiscriminator(disc_start=0, perceptual_weight=0.0, perceptual="random-vgg")
    assert loss_fn.perceptual_loss.kind == "none"  # the VGG was never built
    assert sum(t.numel() for t in loss_fn.perceptual_loss.buffers()) == 0

    x, z = make_batch()
    xr = TinyDecoder()(z).detach()
    p = small_substitute()
    loss_fn = LPIPSWithDiscriminator(disc_start=10**9, perceptual_weight=0.5, perceptual=p)
    _, log = loss_fn(x, xr, FakePosterior(torch.zeros(2)), 0, 0)
    d = p(x, xr)
    torch.testing.assert_close(log["train/p_loss"], d.mean())
    torch.testing.assert_close(log["train/rec_loss"], (torch.abs(x - xr) + 0.5 * d).mean())


# ---------------------------------------------------------------------------------------------
# VQ loss
# ---------------------------------------------------------------------------------------------
def test_vq_loss_uses_codebook_weight():
    x, z = make_batch()
    xr = TinyDecoder()(z).detach()
    cb = torch.tensor([0.25, 0.75])
    base = VQLPIPSWithDiscriminator(disc_start=10**9, codebook_weight=0.0, perceptual="none")
    two = VQLPIPSWithDiscriminator(disc_start=10**9, codebook_weight=2.0, perceptual="none")
    l0, log0 = base(cb, x, xr, 0, 0)
    l2, log2 = two(cb, x, xr, 0, 0)
    torch.testing.assert_close(l0, torch.abs(x - xr).mean())  # VQ NLL is a plain mean (taming)
    torch.testing.assert_close(l2 - l0, torch.tensor(2.0 * 0.5))
    assert log2["train/quant_loss"].item() == pytest.approx(0.5)
    assert not hasattr(two, "logvar")


def test_vq_loss_gan_after_disc_start():
    torch.manual_seed(0)
    dec = TinyDecoder()
    x, z = make_batch()
    loss_fn = VQLPIPSWithDiscriminator(disc_start=5, perceptual="none")
    loss, log = loss_fn(torch.tensor(0.0), x, dec(z), 0, 5, last_layer=dec.get_last_layer())
    assert log["train/d_weight"].item() > 0 and log["train/disc_factor"].item() == 1.0
    assert loss_fn(torch.tensor(0.0), x, dec(z), 1, 5)[0].item() > 0


# ---------------------------------------------------------------------------------------------
# Bad inputs
# ---------------------------------------------------------------------------------------------
def test_bad_inputs_raise_helpful_errors():
    x, z = make_batch()
    dec = TinyDecoder()
    post = FakePosterior(torch.zeros(2))
    loss_fn = kl_loss_fn(disc_start=0)
    with pytest.raises(ValueError, match="same shape"):
        loss_fn(x, dec(z)[..., :-1], post, 0, 0)
    with pytest.raises(ValueError, match="same shape"):
        VQLPIPSWithDiscriminator(0, perceptual="none")(torch.tensor(0.0), x, x[:1], 0, 0)
    with pytest.raises(ValueError, match="disc_loss"):
        kl_loss_fn(disc_start=0, disc_loss="wasserstein")
    with pytest.raises(ValueError, match="perceptual loss kind"):
        LPIPSWithDiscriminator(disc_start=0, perceptual="alexnet")
    with pytest.raises(ValueError, match="perceptual loss kind"):
        get_perceptual_loss("vgg19")
    with pytest.raises(ValueError, match="optimizer_idx"):
        loss_fn(x, dec(z), post, 2, 0)
    with pytest.raises(ValueError, match="last_layer"):  # GAN on, training, but no last layer
        loss_fn(x, dec(z), post, 0, 0)
    with pytest.raises(ValueError, match="disc_conditional"):
        loss_fn(x, dec(z), post, 0, 0, last_layer=dec.get_last_layer(), cond=x)
    with pytest.raises(ValueError, match="too small"):
        loss_fn(x[..., :16, :16], dec(z)[..., :16, :16], post, 1, 0)
    with pytest.raises(ValueError, match="at least 16"):
        small_substitute()(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))


# ---------------------------------------------------------------------------------------------
# Perceptual distance
# ---------------------------------------------------------------------------------------------
_SUBSTITUTE: PerceptualLoss | None = None
_SMALL: PerceptualLoss | None = None


def substitute() -> PerceptualLoss:
    global _SUBSTITUTE
    if _SUBSTITUTE is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PerceptualSubstituteWarning)
            _SUBSTITUTE = PerceptualLoss("random-vgg")
    return _SUBSTITUTE


def small_substitute() -> PerceptualLoss:
    """Quarter-width random VGG: the same code path at 1/16 of the cost, for loss plumbing tests."""
    global _SMALL
    if _SMALL is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PerceptualSubstituteWarning)
            _SMALL = PerceptualLoss("random-vgg", width=0.25)
    return _SMALL


def astronaut_crops(size=64):
    skdata = pytest.importorskip("skimage.data")
    img = torch.tensor(skdata.astronaut()).permute(2, 0, 1).float() / 127.5 - 1
    corners = [(0, 0), (100, 200), (200, 150), (300, 300), (50, 400)]
    return torch.stack([img[:, i : i + size, j : j + size] for i, j in corners])


def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    return torch.tensor(np.stack([[gaussian_filter(c.numpy(), sigma) for c in im] for im in x]))


def test_substitute_is_labelled_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # certainly no ImageNet weights here
    monkeypatch.setattr(perc, "_ANNOUNCED", set())
    assert not perc.imagenet_vgg16_weights_available()
    with pytest.warns(PerceptualSubstituteWarning, match="SUBSTITUTE"):
        p = get_perceptual_loss("auto", width=0.25)
    assert p.is_substitute and p.kind == "random-vgg"
    assert p.name.startswith("SUBSTITUTE") and "random-init VGG16" in p.name
    with pytest.raises(FileNotFoundError, match="vgg16-397923af.pth"):
        get_perceptual_loss("lpips")


def test_auto_prefers_real_lpips_when_weights_present(monkeypatch):
    class StubLPIPS(nn.Module):
        def forward(self, x, y):
            return (x - y).abs().mean(dim=(1, 2, 3), keepdim=True)

    monkeypatch.setattr(perc, "imagenet_vgg16_weights_available", lambda: True)
    monkeypatch.setattr(perc.PerceptualLoss, "_build_lpips", staticmethod(lambda: StubLPIPS()))
    monkeypatch.setattr(perc, "_ANNOUNCED", set())
    p = get_perceptual_loss("auto")
    assert p.kind == "lpips" and not p.is_substitute and p.name == "lpips-vgg (ImageNet)"


def test_real_lpips_path_is_wired(monkeypatch, tmp_path):
    """The ``"lpips"`` branch builds ``lpips.LPIPS(net="vgg")`` with the package's linear weights.

    Offline there is no ImageNet VGG16: a placeholder file satisfies the presence check and the
    trunk is torchvision's (randomly initialised) feature stack, so only the wiring is tested.
    """
    lpips = pytest.importorskip("lpips")
    tv_vgg = pytest.importorskip("torchvision.models.vgg")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    (tmp_path / "hub" / "checkpoints" / "vgg16-397923af.pth").write_bytes(b"placeholder")
    monkeypatch.setattr(
        lpips.pretrained_networks.tv,
        "vgg16",
        lambda *a, **k: SimpleNamespace(features=tv_vgg.make_layers(tv_vgg.cfgs["D"])),
    )
    monkeypatch.setattr(perc, "_ANNOUNCED", set())
    p = get_perceptual_loss("auto")
    assert p.kind == "lpips" and not p.is_substitute and p.name == "lpips-vgg (ImageNet)"
    assert isinstance(p.net, lpips.LPIPS)
    assert p.net.lin0.model[-1].weight.abs().sum() > 0  # the calibrated 1x1 weights were loaded
    assert not any(t.requires_grad for t in p.parameters())
    p.train()  # LPIPS has dropout before its linear layers: it must stay off
    assert not any(m.training for m in p.modules())
    x = astronaut_crops(32)[:2]
    with torch.no_grad():
        d1, d2 = p(x, blur(x, 1.0)), p(x, blur(x, 1.0))
    assert d1.shape == (2, 1, 1, 1)
    torch.testing.assert_close(d1, d2, rtol=0, atol=0)


def test_substitute_matches_lpips_package_baseline(monkeypatch):
    """Our module == ``lpips.LPIPS(net='vgg', lpips=False)`` with the same random trunk loaded."""
    lpips = pytest.importorskip("lpips")
    tv_vgg = pytest.importorskip("torchvision.models.vgg")
    # lpips builds torchvision's whole VGG16 (138M parameters, seconds to initialise) and keeps only
    # `.features`; hand it just the feature stack, built by torchvision's own layer factory.
    monkeypatch.setattr(
        lpips.pretrained_networks.tv,
        "vgg16",
        lambda *a, **k: SimpleNamespace(features=tv_vgg.make_layers(tv_vgg.cfgs["D"])),
    )
    p = substitute()
    ref = lpips.LPIPS(net="vgg", lpips=False, pnet_rand=True, verbose=False)
    slices = [(0, 4), (4, 9), (9, 16), (16, 23), (23, 30)]
    state = {}
    for key, value in p.net.net.torchvision_state_dict().items():
        idx = int(key.split(".")[0])
        s = next(n for n, (a, b) in enumerate(slices, 1) if a <= idx < b)
        state[f"net.slice{s}.{key}"] = value
    ref.net.load_state_dict({k[4:]: v for k, v in state.items()})
    x = astronaut_crops(32)[:3]
    y = blur(x, 1.0)
    with torch.no_grad():
        torch.testing.assert_close(p(x, y), ref(x, y), rtol=1e-4, atol=1e-6)


def test_substitute_distance_properties():
    p = substitute()
    x = astronaut_crops(48)
    x_rolled = torch.roll(x, 1, dims=0)
    with torch.no_grad():
        same = p(x[:2], x[:2])
        d = p(x, x_rolled)
        d_back = p(x_rolled, x)
        mild, heavy = p(x, blur(x, 0.5)), p(x, blur(x, 2.0))
    assert same.shape == (2, 1, 1, 1) and d.shape == (5, 1, 1, 1)
    assert same.abs().max() < 1e-6
    assert (d > 0).all()
    torch.testing.assert_close(d, d_back)
    assert (heavy > mild).all(), (mild.flatten(), heavy.flatten())


def test_substitute_is_deterministic_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PerceptualSubstituteWarning)
        a, b = PerceptualLoss("random-vgg", width=0.25), PerceptualLoss("random-vgg", width=0.25)
    torch.testing.assert_close(torch.rand(3), expected)
    x = astronaut_crops(32)
    with torch.no_grad():
        torch.testing.assert_close(a(x, blur(x, 1.0)), b(x, blur(x, 1.0)), rtol=0, atol=0)
    for name, buf in a.named_buffers():
        torch.testing.assert_close(buf, dict(b.named_buffers())[name], rtol=0, atol=0)


def test_substitute_is_frozen_but_passes_gradients_to_its_input():
    p = small_substitute()
    assert not any(t.requires_grad for t in p.parameters())
    p.train()
    assert not p.training  # stays in eval mode
    assert p.state_dict() == {}  # regenerated from its seed, never bloats a checkpoint
    x = astronaut_crops(32)[:2]
    y = blur(x, 1.0).requires_grad_()
    p(x, y).sum().backward()
    assert y.grad is not None and y.grad.abs().sum() > 0


@pytest.mark.parametrize("size", [16, 256])
def test_substitute_works_from_16_to_256_px(size):
    p = substitute()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, size, size, generator=g) * 2 - 1
    with torch.no_grad():
        d = p(x, x.flip(-1))
    assert d.shape == (1, 1, 1, 1) and torch.isfinite(d).all() and d.item() > 0


def test_lpips_distance_for_metrics():
    x = astronaut_crops(32)[:2]
    y = blur(x, 1.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PerceptualSubstituteWarning)
        d = lpips_distance(x, y, kind="random-vgg")
    assert d.shape == (2,) and not d.requires_grad
    with torch.no_grad():
        torch.testing.assert_close(d, substitute()(x, y).flatten())


def test_none_kind_is_zero():
    p = get_perceptual_loss("none")
    assert not p.is_substitute and p.name.startswith("none")
    x = torch.randn(2, 3, 8, 8)
    assert p(x, -x).abs().max() == 0 and p(x, -x).shape == (2, 1, 1, 1)
