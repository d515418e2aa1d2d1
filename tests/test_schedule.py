"""Tests for ldm_lite.diffusion.schedule: against closed forms and against diffusers as an oracle."""

from __future__ import annotations

import math

import pytest
import torch

from ldm_lite.diffusion import (
    NoiseSchedule,
    diffusion_loss,
    make_beta_schedule,
    make_ddim_timesteps,
    min_snr_weight,
)

SD = dict(linear_start=0.00085, linear_end=0.012)  # Stable Diffusion / LDM's "linear"


@pytest.fixture(scope="module")
def diffusers():
    return pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def sched():
    return NoiseSchedule.from_name("linear", 1000, **SD)


def f64(values):
    return torch.tensor(values, dtype=torch.float64)


# ---- beta schedules: closed forms ------------------------------------------------------------------
@pytest.mark.parametrize("T", [1, 2, 10, 1000])
def test_schedules_match_closed_forms(T):
    s, e = 1e-4, 2e-2

    def lin(i):  # linspace(s, e, T)[i] written out
        return s + (e - s) * i / (T - 1) if T > 1 else s

    def lin_sqrt(i):
        return math.sqrt(s) + (math.sqrt(e) - math.sqrt(s)) * i / (T - 1) if T > 1 else math.sqrt(s)

    torch.testing.assert_close(make_beta_schedule("linear", T), f64([lin_sqrt(i) ** 2 for i in range(T)]))
    torch.testing.assert_close(make_beta_schedule("sqrt_linear", T), f64([lin(i) for i in range(T)]))
    torch.testing.assert_close(make_beta_schedule("sqrt", T), f64([math.sqrt(lin(i)) for i in range(T)]))

    cs = 8e-3

    def abar(u):  # Nichol & Dhariwal Eq. 17, unnormalised (f(0) cancels in the ratio)
        return math.cos((u + cs) / (1 + cs) * math.pi / 2) ** 2

    cos = [min(1 - abar((i + 1) / T) / abar(i / T), 0.999) for i in range(T)]
    torch.testing.assert_close(make_beta_schedule("cosine", T, cosine_s=cs), f64(cos))


def test_schedules_are_float64_and_shaped():
    for name in ("linear", "sqrt_linear", "cosine", "sqrt"):
        b = make_beta_schedule(name, 37)
        assert b.dtype == torch.float64 and b.shape == (37,)
        assert bool(((b > 0) & (b < 1)).all())


def test_linear_is_linear_in_sqrt_beta_not_in_beta():
    b = make_beta_schedule("linear", 100, **SD)
    assert torch.allclose(b.sqrt().diff(), b.sqrt().diff()[:1].expand(99), atol=1e-14)
    assert not torch.allclose(b.diff(), b.diff()[:1].expand(99))


def test_cosine_is_clipped_at_0_999():
    b = make_beta_schedule("cosine", 1000)
    assert b.max().item() == pytest.approx(0.999)


def test_unknown_schedule_lists_valid_ones():
    with pytest.raises(ValueError, match="linear, sqrt_linear, cosine, sqrt"):
        make_beta_schedule("scaled_linear")
    with pytest.raises(ValueError, match="n_timestep"):
        make_beta_schedule("linear", 0)
    with pytest.raises(ValueError, match="linear_start"):
        make_beta_schedule("linear", 10, linear_start=0.1, linear_end=0.01)


# ---- beta schedules: diffusers oracle --------------------------------------------------------------
@pytest.mark.parametrize(
    "ours, theirs, kwargs",
    [
        ("linear", "scaled_linear", SD),
        ("sqrt_linear", "linear", dict(linear_start=1e-4, linear_end=2e-2)),
        ("cosine", "squaredcos_cap_v2", {}),
    ],
)
def test_schedules_match_diffusers(diffusers, ours, theirs, kwargs):
    ref = diffusers.DDPMScheduler(
        num_train_timesteps=1000,
        beta_schedule=theirs,
        beta_start=kwargs.get("linear_start", 1e-4),
        beta_end=kwargs.get("linear_end", 2e-2),
    )
    betas = make_beta_schedule(ours, 1000, **kwargs)
    # diffusers builds its betas in float32; ours are float64.
    torch.testing.assert_close(betas.float(), ref.betas, rtol=1e-5, atol=1e-7)
    ab = NoiseSchedule(betas).alphas_cumprod
    torch.testing.assert_close(ab.float(), ref.alphas_cumprod, rtol=1e-4, atol=1e-7)


# ---- NoiseSchedule buffers ---------------------------------------------------------------------------
def test_buffers_match_closed_forms(sched):
    b = sched.betas
    ab = [1.0]
    for beta in b.tolist():
        ab.append(ab[-1] * (1 - beta))
    ab_t, ab_prev = f64(ab[1:]), f64(ab[:-1])
    torch.testing.assert_close(sched.alphas, 1 - b)
    torch.testing.assert_close(sched.alphas_cumprod, ab_t)
    torch.testing.assert_close(sched.alphas_cumprod_prev, ab_prev)
    torch.testing.assert_close(sched.sqrt_alphas_cumprod, ab_t.sqrt())
    torch.testing.assert_close(sched.sqrt_one_minus_alphas_cumprod, (1 - ab_t).sqrt())
    var = b * (1 - ab_prev) / (1 - ab_t)
    torch.testing.assert_close(sched.posterior_variance, var)
    assert sched.posterior_variance[0].item() == 0.0
    torch.testing.assert_close(sched.posterior_log_variance_clipped[1:], var[1:].log())
    assert sched.posterior_log_variance_clipped[0] == sched.posterior_log_variance_clipped[1]
    torch.testing.assert_close(sched.posterior_mean_coef1, b * ab_prev.sqrt() / (1 - ab_t))
    torch.testing.assert_close(sched.posterior_mean_coef2, (1 - ab_prev) * (1 - b).sqrt() / (1 - ab_t))
    torch.testing.assert_close(sched.log_snr, (ab_t / (1 - ab_t)).log())
    torch.testing.assert_close(sched.snr(torch.arange(1000), dtype=torch.float64), ab_t / (1 - ab_t))
    assert len(sched) == 1000


def test_dtype_and_device_conventions():
    s = NoiseSchedule.from_name("cosine", 50)
    assert s.betas.dtype == torch.float64
    assert s.state_dict() == {}  # rebuilt from config, not checkpointed
    model = torch.nn.Module()
    model.layer = torch.nn.Linear(2, 2)
    model.schedule = s
    model.half()
    assert model.layer.weight.dtype == torch.float16 and s.alphas_cumprod.dtype == torch.float64
    model.to("cpu")
    assert s.betas.device.type == "cpu"
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        x = torch.randn(2, 3, 4, 4).to(dtype)
        t = torch.tensor([0, 49])
        assert s.q_sample(x, t, torch.randn_like(x)).dtype == dtype
        assert s.predict_x0_from_eps(x, t, x).dtype == dtype
        assert s.q_posterior(x, x, t)[0].dtype == dtype


def test_bad_betas():
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        NoiseSchedule(torch.tensor([0.1, 1.0]))
    with pytest.raises(ValueError, match="1-D"):
        NoiseSchedule(torch.ones(2, 2) * 0.1)


# ---- forward process -------------------------------------------------------------------------------
def test_q_sample_closed_form_and_broadcast(sched):
    x0, noise = torch.randn(3, 2, 5, 5), torch.randn(3, 2, 5, 5)
    t = torch.tensor([0, 500, 999])
    xt = sched.q_sample(x0, t, noise)
    for i, ti in enumerate(t.tolist()):
        ab = sched.alphas_cumprod[ti].item()
        torch.testing.assert_close(xt[i], math.sqrt(ab) * x0[i] + math.sqrt(1 - ab) * noise[i])
    # works for any number of trailing dims, and an int t means "this t for every sample"
    assert sched.q_sample(torch.randn(4, 7), 3, torch.randn(4, 7)).shape == (4, 7)
    torch.testing.assert_close(sched.q_sample(x0, 500, noise)[1], xt[1])


@pytest.mark.parametrize(
    "schedule, theirs, kwargs", [("linear", "scaled_linear", SD), ("cosine", "squaredcos_cap_v2", {})]
)
def test_q_sample_matches_diffusers_add_noise(diffusers, schedule, theirs, kwargs):
    ref = diffusers.DDPMScheduler(
        num_train_timesteps=1000, beta_schedule=theirs,
        beta_start=kwargs.get("linear_start", 1e-4), beta_end=kwargs.get("linear_end", 2e-2),
    )
    ours = NoiseSchedule.from_name(schedule, 1000, **kwargs)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(6, 4, 8, 8, generator=g), torch.randn(6, 4, 8, 8, generator=g)
    t = torch.tensor([0, 1, 250, 500, 998, 999])
    torch.testing.assert_close(ours.q_sample(x0, t, noise), ref.add_noise(x0, noise, t), rtol=1e-4, atol=1e-5)


def test_q_sample_draws_noise_with_generator(sched):
    x0, t = torch.randn(2, 3, 4, 4), torch.tensor([10, 20])
    a = sched.q_sample(x0, t, generator=torch.Generator().manual_seed(1))
    b = sched.q_sample(x0, t, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b)


def test_q_posterior_closed_form(sched):
    x0, xt = torch.randn(3, 2, 4, 4, dtype=torch.float64), torch.randn(3, 2, 4, 4, dtype=torch.float64)
    t = torch.tensor([0, 1, 700])
    mean, var, log_var = sched.q_posterior(x0, xt, t)
    assert var.shape == log_var.shape == (3, 1, 1, 1)
    for i, ti in enumerate(t.tolist()):
        b, ab = sched.betas[ti].item(), sched.alphas_cumprod[ti].item()
        ab_prev = sched.alphas_cumprod[ti - 1].item() if ti > 0 else 1.0
        coef1 = math.sqrt(ab_prev) * b / (1 - ab)
        coef2 = math.sqrt(1 - b) * (1 - ab_prev) / (1 - ab)
        want_mean = coef1 * x0[i] + coef2 * xt[i]
        torch.testing.assert_close(mean[i], want_mean)
        assert var[i].item() == pytest.approx((1 - ab_prev) / (1 - ab) * b, rel=1e-12)
    # at t=0 the posterior is the point mass at x0
    torch.testing.assert_close(mean[0], x0[0])


def test_q_posterior_matches_diffusers_ddpm_step(diffusers):
    # diffusers' DDPM step with prediction_type="sample" returns mean + sqrt(var) * z, z ~ N(0, I)
    # drawn from the generator; replaying the generator recovers the mean.
    ref = diffusers.DDPMScheduler(
        num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
        prediction_type="sample", clip_sample=False, variance_type="fixed_small",
    )
    ours = NoiseSchedule.from_name("linear", 1000, **SD)
    g = torch.Generator().manual_seed(0)
    for ti in (0, 1, 37, 500, 999):
        x0, xt = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 4, 8, 8, generator=g)
        mean, var, _ = ours.q_posterior(x0, xt, torch.tensor([ti]))
        want_var = ref._get_variance(ti).reshape(1)
        torch.testing.assert_close(var.float().flatten(), want_var, rtol=1e-4, atol=1e-12)
        prev = ref.step(x0, ti, xt, generator=torch.Generator().manual_seed(ti)).prev_sample
        z = torch.randn(x0.shape, generator=torch.Generator().manual_seed(ti)) if ti > 0 else 0.0
        # diffusers forms 1 - alpha_bar in float32, where alpha_bar ~ 0.998 near t=1: that cancellation
        # costs it ~1e-4 (we keep float64), hence the float32-sized tolerance.
        torch.testing.assert_close(prev, mean + var.sqrt() * z, rtol=1e-3, atol=2e-4)


# ---- parameterisations ---------------------------------------------------------------------------------
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_parameterisation_round_trips(schedule):
    s = NoiseSchedule.from_name(schedule, 1000)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(5, 3, 4, 4, generator=g, dtype=torch.float64)
    eps = torch.randn(5, 3, 4, 4, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 10, 400, 900, 990])  # cosine's last steps have alpha_bar ~ 0: ill-conditioned
    xt = s.q_sample(x0, t, eps)
    torch.testing.assert_close(s.predict_x0_from_eps(xt, t, eps), x0)
    torch.testing.assert_close(s.predict_eps_from_x0(xt, t, x0), eps)
    v = s.get_v(x0, eps, t)
    torch.testing.assert_close(s.predict_x0_from_v(xt, t, v), x0)
    torch.testing.assert_close(s.predict_eps_from_v(xt, t, v), eps)
    # v = sqrt(ab) eps - sqrt(1 - ab) x0, written out
    ab = s.alphas_cumprod[t].view(-1, 1, 1, 1)
    torch.testing.assert_close(v, ab.sqrt() * eps - (1 - ab).sqrt() * x0)
    # float32 round trip at a sensible tolerance
    x32, e32, t32 = x0[:4].float(), eps[:4].float(), t[:4]
    xt32 = s.q_sample(x32, t32, e32)
    torch.testing.assert_close(s.predict_x0_from_eps(xt32, t32, e32), x32, rtol=1e-4, atol=1e-4)


# ---- timestep validation ---------------------------------------------------------------------------------
def test_bad_timesteps_raise_clear_errors(sched):
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match=r"0\.\.999"):
        sched.q_sample(x, torch.tensor([0, 1000]), x)
    with pytest.raises(ValueError, match=r"0\.\.999"):
        sched.q_sample(x, torch.tensor([-1, 3]), x)
    with pytest.raises(TypeError, match="integer"):
        sched.q_sample(x, torch.tensor([0.5, 0.1]), x)
    with pytest.raises(ValueError, match=r"shape \(B,\)"):
        sched.q_sample(x, torch.tensor([1, 2, 3]), x)
    with pytest.raises(ValueError, match="same shape"):
        sched.q_sample(x, torch.tensor([1, 2]), torch.randn(2, 3, 4, 5))
    with pytest.raises(ValueError, match="same shape"):
        sched.q_posterior(x, x[:1], torch.tensor([1, 2]))


# ---- DDIM timesteps ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("T, S", [(1000, 50), (1000, 20), (1000, 3), (1000, 7), (100, 30), (1000, 999)])
def test_ddim_timesteps_match_diffusers_leading(diffusers, T, S):
    ref = diffusers.DDIMScheduler(num_train_timesteps=T, timestep_spacing="leading", steps_offset=1)
    ref.set_timesteps(S)
    ours = make_ddim_timesteps(S, T, "uniform")
    assert ours.dtype == torch.long and ours.shape == (S,)
    assert torch.equal(ours.flip(0), ref.timesteps)


@pytest.mark.parametrize("T, S", [(1000, 5), (1000, 50), (1000, 3), (1000, 7), (100, 30), (1000, 1000)])
def test_ddim_timesteps_match_diffusers_trailing(diffusers, T, S):
    ref = diffusers.DDIMScheduler(num_train_timesteps=T, timestep_spacing="trailing")
    ref.set_timesteps(S)
    ours = make_ddim_timesteps(S, T, "trailing")
    assert ours.dtype == torch.long and ours.shape == (S,) and int(ours[-1]) == T - 1
    assert torch.equal(ours.flip(0), ref.timesteps)


def test_trailing_spacing_starts_where_training_noise_is():
    assert make_ddim_timesteps(5, 1000, "trailing").tolist() == [199, 399, 599, 799, 999]
    assert make_ddim_timesteps(5, 1000, "leading").tolist() == [1, 201, 401, 601, 801]  # CompVis / SD
    sched = NoiseSchedule.from_name("linear", 1000, linear_start=0.00085, linear_end=0.012)  # the LDM / SD schedule
    first_leading = float(sched.alphas_cumprod[801])
    assert 0.03 < first_leading < 0.045  # the 5-step leading run starts far from pure noise (alpha_bar ~ 0.037)
    assert float(sched.alphas_cumprod[999]) < first_leading / 5


def test_ddim_timesteps_closed_forms():
    assert make_ddim_timesteps(4, 100).tolist() == [1, 26, 51, 76]
    assert make_ddim_timesteps(4, 100, steps_offset=0).tolist() == [0, 25, 50, 75]
    # CompVis quadratic: floor(linspace(0, sqrt(0.8 T), S)^2) + 1
    want = [int((i * math.sqrt(800) / 9) ** 2) + 1 for i in range(10)]
    got = make_ddim_timesteps(10, 1000, "quadratic").tolist()
    assert max(abs(a - b) for a, b in zip(got, want)) <= 1 and got[0] == 1 and got[-1] == 801
    assert make_ddim_timesteps(10, 1000, "quad").tolist() == got
    assert torch.equal(NoiseSchedule.from_name("linear", 1000).ddim_timesteps(50), make_ddim_timesteps(50))


def test_ddim_timesteps_bad_inputs():
    with pytest.raises(ValueError, match="steps_offset=0"):
        make_ddim_timesteps(1000, 1000)  # 1..1000 would index past T-1
    assert make_ddim_timesteps(1000, 1000, steps_offset=0).tolist() == list(range(1000))
    with pytest.raises(ValueError, match="repeats"):
        make_ddim_timesteps(50, 1000, "quadratic")
    with pytest.raises(ValueError, match="uniform"):
        make_ddim_timesteps(10, 1000, "linspace")
    with pytest.raises(ValueError, match="1..1000"):
        make_ddim_timesteps(0, 1000)


# ---- the loss -------------------------------------------------------------------------------------------
def _batch(seed=0, shape=(4, 3, 8, 8)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g), torch.randn(shape, generator=g), torch.tensor([0, 5, 500, 999])


@pytest.mark.parametrize("parameterization", ["eps", "x0", "v"])
@pytest.mark.parametrize("weighting", [None, "min_snr"])
@pytest.mark.parametrize("loss_type", ["l2", "l1"])
def test_loss_is_zero_for_a_perfect_model(sched, parameterization, weighting, loss_type):
    x0, noise, t = _batch()
    target = {"eps": noise, "x0": x0, "v": sched.get_v(x0, noise, t)}[parameterization]
    loss, logs = diffusion_loss(
        lambda xt, tt: target, x0, sched, t=t, noise=noise, parameterization=parameterization,
        weighting=weighting, loss_type=loss_type,
    )
    assert loss.item() == 0.0
    assert logs["loss_per_sample"].shape == (4,) and torch.equal(logs["t"], t)


def test_loss_matches_hand_computation(sched):
    x0 = torch.full((2, 1, 2, 2), 0.5)
    noise = torch.full((2, 1, 2, 2), -1.0)
    noise[1] = 2.0
    t = torch.tensor([100, 800])
    ab = [sched.alphas_cumprod[100].item(), sched.alphas_cumprod[800].item()]
    eps_val = [-1.0, 2.0]

    # eps-prediction, model returns x_t itself: per-sample error (x_t - eps)^2, constant over pixels
    per = [((math.sqrt(a) * 0.5 + math.sqrt(1 - a) * e) - e) ** 2 for a, e in zip(ab, eps_val)]
    loss, logs = diffusion_loss(lambda xt, tt: xt, x0, sched, t=t, noise=noise)
    assert loss.item() == pytest.approx(sum(per) / 2, rel=1e-5)
    torch.testing.assert_close(logs["loss_per_sample"], torch.tensor(per), rtol=1e-5, atol=0)

    # x0-prediction, model returns zeros, L1: |0 - 0.5|
    loss, _ = diffusion_loss(lambda xt, tt: torch.zeros_like(xt), x0, sched, t=t, noise=noise,
                             parameterization="x0", loss_type="l1")
    assert loss.item() == pytest.approx(0.5)

    # v-prediction, model returns zeros: mean of v^2, v = sqrt(ab) eps - sqrt(1 - ab) x0
    per_v = [(math.sqrt(a) * e - math.sqrt(1 - a) * 0.5) ** 2 for a, e in zip(ab, eps_val)]
    zero = lambda xt, tt: torch.zeros_like(xt)  # noqa: E731
    loss, _ = diffusion_loss(zero, x0, sched, t=t, noise=noise, parameterization="v")
    assert loss.item() == pytest.approx(sum(per_v) / 2, rel=1e-5)

    # min-SNR-5 on eps: weight min(snr, 5) / snr
    snr = [a / (1 - a) for a in ab]
    w = [min(s, 5.0) / s for s in snr]
    loss, logs = diffusion_loss(lambda xt, tt: xt, x0, sched, t=t, noise=noise, weighting="min_snr")
    assert loss.item() == pytest.approx(sum(wi * p for wi, p in zip(w, per)) / 2, rel=1e-5)
    torch.testing.assert_close(logs["weights"], torch.tensor(w), rtol=1e-6, atol=0)
    assert logs["loss_simple"].item() == pytest.approx(sum(per) / 2, rel=1e-5)


def test_min_snr_weights():
    snr = torch.tensor([1e-3, 0.5, 5.0, 80.0, 1e3], dtype=torch.float64)
    torch.testing.assert_close(min_snr_weight(snr, "eps", 5.0), snr.clamp(max=5) / snr)
    torch.testing.assert_close(min_snr_weight(snr, "v", 5.0), snr.clamp(max=5) / (snr + 1))
    torch.testing.assert_close(min_snr_weight(snr, "x0", 5.0), snr.clamp(max=5))
    # gamma -> infinity: eps weights become constant (plain L_simple); v -> SNR/(SNR+1) = alpha_bar;
    # x0 -> SNR. All three are then the eps-loss expressed for another target (see next test).
    torch.testing.assert_close(min_snr_weight(snr, "eps", 1e12), torch.ones_like(snr))
    torch.testing.assert_close(min_snr_weight(snr, "v", 1e12), snr / (snr + 1))
    torch.testing.assert_close(min_snr_weight(snr, "x0", 1e12), snr)
    with pytest.raises(ValueError, match="gamma"):
        min_snr_weight(snr, "eps", 0.0)


def test_min_snr_with_huge_gamma_is_plain_eps_loss(sched):
    x0, noise, t = _batch(1)
    model = lambda xt, tt: 0.3 * xt  # noqa: E731 -- any deterministic model
    plain, _ = diffusion_loss(model, x0, sched, t=t, noise=noise)
    big, logs = diffusion_loss(model, x0, sched, t=t, noise=noise, weighting="min_snr", min_snr_gamma=1e12)
    torch.testing.assert_close(big, plain)
    torch.testing.assert_close(logs["weights"], torch.ones(4))


@pytest.mark.parametrize("gamma", [1.0, 5.0, 1e12])
def test_min_snr_is_the_same_objective_for_every_parameterization(sched, gamma):
    # One underlying x0-predictor, expressed as an eps-, x0- or v-predictor: min-SNR weighting makes
    # the three losses identical (it weights the x0 error by min(SNR, gamma) in every case).
    x0, noise, t = _batch(2)
    t = torch.tensor([3, 60, 400, 900])
    x0_hat = lambda xt, tt: torch.tanh(xt)  # noqa: E731
    s = NoiseSchedule(sched.betas)  # float64 copy so the comparison is exact
    x0, noise = x0.double(), noise.double()
    fns = {
        "x0": x0_hat,
        "eps": lambda xt, tt: s.predict_eps_from_x0(xt, tt, x0_hat(xt, tt)),
        "v": lambda xt, tt: s.get_v(x0_hat(xt, tt), s.predict_eps_from_x0(xt, tt, x0_hat(xt, tt)), tt),
    }
    losses = {}
    for p, fn in fns.items():
        _, logs = diffusion_loss(fn, x0, s, t=t, noise=noise, parameterization=p, weighting="min_snr",
                                 min_snr_gamma=gamma)
        losses[p] = logs["weights"] * logs["loss_per_sample"]
    torch.testing.assert_close(losses["eps"], losses["x0"], rtol=1e-4, atol=1e-8)
    torch.testing.assert_close(losses["v"], losses["x0"], rtol=1e-4, atol=1e-8)


def test_loss_draws_t_and_noise_reproducibly(sched):
    x0 = torch.randn(8, 3, 4, 4)
    model = lambda xt, tt: xt * 0.1  # noqa: E731
    a, la = diffusion_loss(model, x0, sched, generator=torch.Generator().manual_seed(3))
    b, lb = diffusion_loss(model, x0, sched, generator=torch.Generator().manual_seed(3))
    assert a.item() == b.item() and torch.equal(la["t"], lb["t"])
    assert la["t"].dtype == torch.long and int(la["t"].min()) >= 0 and int(la["t"].max()) < 1000


def test_loss_passes_gradients_and_computes_in_float32(sched):
    net = torch.nn.Conv2d(3, 3, 1)
    x0, noise, t = _batch(shape=(4, 3, 4, 4))
    loss, _ = diffusion_loss(lambda xt, tt: net(xt), x0, sched, t=t, noise=noise)
    loss.backward()
    assert net.weight.grad is not None and loss.dtype == torch.float32
    x16, n16 = x0.to(torch.bfloat16), noise.to(torch.bfloat16)
    loss16, _ = diffusion_loss(lambda xt, tt: xt, x16, sched, t=t, noise=n16)
    assert loss16.dtype == torch.float32


def test_loss_bad_inputs(sched):
    x0, noise, t = _batch()
    ok = lambda xt, tt: xt  # noqa: E731
    with pytest.raises(ValueError, match="eps, x0, v"):
        diffusion_loss(ok, x0, sched, parameterization="epsilon")
    with pytest.raises(ValueError, match="weighting"):
        diffusion_loss(ok, x0, sched, weighting="snr")
    with pytest.raises(ValueError, match="loss_type"):
        diffusion_loss(ok, x0, sched, loss_type="huber")
    with pytest.raises(ValueError, match=r"0\.\.999"):
        diffusion_loss(ok, x0, sched, t=torch.tensor([0, 1, 2, 1000]))
    with pytest.raises(ValueError, match=r"shape \(B,\)"):
        diffusion_loss(ok, x0, sched, t=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="same shape"):
        diffusion_loss(ok, x0, sched, noise=noise[:, :2])
    with pytest.raises(ValueError, match="model_fn returned"):
        diffusion_loss(lambda xt, tt: torch.cat([xt, xt], 1), x0, sched, t=t, noise=noise)
    with pytest.raises(ValueError, match="floating-point"):
        diffusion_loss(ok, torch.zeros(4, 3, dtype=torch.long), sched)
