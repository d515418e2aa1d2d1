"""Tests for ldm_lite.diffusion.samplers and .guidance.

Oracles: diffusers' schedulers (DDIMScheduler, DDPMScheduler, PNDMScheduler with skip_prk_steps,
DPMSolverMultistepScheduler) run on the same closed-form "models"; the analytic posterior mean of
noise for Gaussian data (statistical check of whole samplers); and two separate model calls for
classifier-free guidance. Models are tiny closed-form functions so everything runs in seconds.
"""

from __future__ import annotations

import math

import pytest
import torch

from ldm_lite.diffusion import (
    DDIMSampler,
    DDPMSampler,
    DPMSolverSampler,
    NoiseSchedule,
    PLMSSampler,
    batch_conditionings,
    cfg_combine,
    guided_model_fn,
    make_ddim_timesteps,
    make_sampler,
    split_batch,
)

T = 1000
SD = dict(linear_start=0.00085, linear_end=0.012)  # LDM "linear" = diffusers "scaled_linear"
DIFFUSERS_BETAS = dict(num_train_timesteps=T, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
SHAPE = (2, 3, 8, 8)
ALL = [DDPMSampler, DDIMSampler, PLMSSampler, DPMSolverSampler]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def schedulers():
    return pytest.importorskip("diffusers.schedulers")


@pytest.fixture(scope="module")
def sched():
    return NoiseSchedule.from_name("linear", T, **SD)


def linear_model(x, t, cond=None):
    """A fixed, deterministic 'denoiser': linear in x, smooth in t, different per channel."""
    w = torch.tensor([0.9, -0.4, 0.3], dtype=x.dtype).view(1, 3, 1, 1)[:, : x.shape[1]]
    tt = t.to(x.dtype).view(-1, *([1] * (x.ndim - 1))) / T
    return w * x + 0.2 * torch.sin(3 * tt) + 0.1 * tt * x


def close(a, b, atol=2e-5, rtol=1e-4):
    torch.testing.assert_close(a, b, atol=atol, rtol=rtol)


def x_T(seed=0, shape=SHAPE, dtype=torch.float32):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ---- DDIM against diffusers -------------------------------------------------------------------------
def ddim_scheduler(schedulers, steps, set_alpha_to_one=False):
    s = schedulers.DDIMScheduler(
        **DIFFUSERS_BETAS, clip_sample=False, set_alpha_to_one=set_alpha_to_one, steps_offset=1,
        timestep_spacing="leading",
    )
    s.set_timesteps(steps)
    return s


def test_timesteps_equal_diffusers_leading(schedulers, sched):
    for steps in (1, 7, 50):
        ours = DDIMSampler(sched).timesteps(steps)
        assert torch.equal(ours, ddim_scheduler(schedulers, steps).timesteps)
        assert torch.equal(ours, make_ddim_timesteps(steps, T).flip(0))


@pytest.mark.parametrize("eta", [0.0, 0.7])
@pytest.mark.parametrize("final", ["first", "one"])
def test_ddim_step_equals_diffusers(schedulers, sched, eta, final):
    steps = 20
    ref = ddim_scheduler(schedulers, steps, set_alpha_to_one=(final == "one"))
    ours = DDIMSampler(sched, final_alpha_cumprod=final)
    ts = ours.timesteps(steps).tolist()
    x = x_T(1)
    noise = x_T(2)
    for i in (0, 9, steps - 1):  # first, middle and last step (the last uses the final alpha_bar)
        t, t_prev = ts[i], (ts[i + 1] if i + 1 < steps else -1)
        out = linear_model(x, torch.full((2,), t))
        got, got_x0 = ours.step(out, t, t_prev, x, eta=eta, noise=noise)
        exp = ref.step(out, t, x, eta=eta, variance_noise=noise if eta > 0 else None)
        close(got, exp.prev_sample)
        close(got_x0, exp.pred_original_sample)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_trajectory_equals_diffusers_loop(schedulers, sched, eta):
    """A whole 10-step run; with eta > 0 both draw per-step noise from equally seeded generators."""
    steps = 10
    ref = ddim_scheduler(schedulers, steps)
    x = x_T(3)
    g = torch.Generator().manual_seed(7)
    for t in ref.timesteps:
        x = ref.step(linear_model(x, t.expand(2)), t, x, eta=eta, generator=g).prev_sample
    got = DDIMSampler(sched).sample(
        linear_model, SHAPE, steps, x_T=x_T(3), eta=eta, generator=torch.Generator().manual_seed(7),
        progress=False,
    )
    close(got, x, atol=1e-4, rtol=1e-4)


# ---- DDPM against diffusers and q_posterior ----------------------------------------------------------
def test_ddpm_full_chain_step_is_q_posterior(sched):
    ours = DDPMSampler(sched)
    x = x_T(4)
    for t in (999, 500, 1):
        out = linear_model(x, torch.full((2,), t))
        got, x0 = ours.step(out, t, t - 1, x, noise=torch.zeros_like(x))
        mean, _, _ = sched.q_posterior(sched.predict_x0_from_eps(x, t, out), x, t)
        close(got, mean, atol=1e-6, rtol=1e-5)
    # last step: no noise, the posterior mean at t=0 is the predicted x0
    out = linear_model(x, torch.zeros(2, dtype=torch.long))
    got, x0 = ours.step(out, 0, -1, x, noise=torch.full_like(x, 100.0))
    close(got, x0)


@pytest.mark.parametrize("steps", [T, 10])
def test_ddpm_trajectory_equals_diffusers(schedulers, sched, steps):
    """Full chain (diffusers without set_timesteps) and a respaced chain (diffusers custom timesteps)."""
    ours = DDPMSampler(sched)
    ref = schedulers.DDPMScheduler(**DIFFUSERS_BETAS, clip_sample=False, variance_type="fixed_small")
    ts = ours.timesteps(steps)
    if steps != T:
        ref.set_timesteps(timesteps=ts.tolist())
    shape = (2, 3, 2, 2)
    x = x_T(5, shape)
    g = torch.Generator().manual_seed(11)
    for t in ts:
        x = ref.step(linear_model(x, t.expand(2)), t, x, generator=g).prev_sample
    got = ours.sample(
        linear_model, shape, steps, x_T=x_T(5, shape), generator=torch.Generator().manual_seed(11), progress=False
    )
    close(got, x, atol=2e-4, rtol=1e-4)


# ---- PLMS against diffusers' PNDM -------------------------------------------------------------------
@pytest.mark.parametrize("steps", [1, 2, 5, 12])
def test_plms_equals_diffusers_pndm_without_prk(schedulers, sched, steps):
    """diffusers' PNDMScheduler(skip_prk_steps=True) was ported from the LDM plms.py: its first
    "duplicated" timestep is exactly the pseudo-improved-Euler warm-up (a second model call at
    t_prev, averaged with e_t, restarting from x_t), followed by Adams-Bashforth orders 2, 3, 4.
    So the whole trajectory, and the number of model calls (steps + 1), must agree."""
    ref = schedulers.PNDMScheduler(
        **DIFFUSERS_BETAS, skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading"
    )
    ref.set_timesteps(steps)
    x = x_T(6)
    for t in ref.timesteps:
        x = ref.step(linear_model(x, t.expand(2)), t, x).prev_sample
    calls = []

    def counted(x, t, c):
        calls.append(int(t[0]))
        return linear_model(x, t)

    got = PLMSSampler(sched).sample(counted, SHAPE, steps, x_T=x_T(6), progress=False)
    close(got, x, atol=1e-4, rtol=1e-4)
    assert calls == ref.timesteps.tolist()
    assert len(calls) == (steps + 1 if steps > 1 else 1)


def test_plms_combination_coefficients():
    e = [torch.tensor(float(v)) for v in (1.0, 2.0, 4.0, 8.0)]  # oldest first; e_t = 16
    et = torch.tensor(16.0)
    ab = PLMSSampler.adams_bashforth
    assert ab(et, []) == 16
    assert ab(et, e[-1:]) == (3 * 16 - 8) / 2
    assert ab(et, e[-2:]) == (23 * 16 - 16 * 8 + 5 * 4) / 12
    assert ab(et, e[-3:]) == (55 * 16 - 59 * 8 + 37 * 4 - 9 * 2) / 24
    assert ab(et, e) == ab(et, e[-3:])  # only the last three are used


# ---- DPM-Solver++(2M) against diffusers ---------------------------------------------------------------
@pytest.mark.parametrize(
    "steps,final", [(1, "first"), (2, "first"), (10, "first"), (20, "first"), (10, "one"), (20, "one")]
)
def test_dpm_solver_equals_diffusers(schedulers, sched, steps, final):
    """Same timesteps passed to diffusers; 10 steps use lower_order_final, 20 steps end second order
    with "first" (final_sigmas_type="sigma_min"); "one" (final_sigmas_type="zero") ends first order."""
    ours = DPMSolverSampler(sched, final_alpha_cumprod=final)
    ts = ours.timesteps(steps)
    ref = schedulers.DPMSolverMultistepScheduler(
        **DIFFUSERS_BETAS, algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint",
        lower_order_final=True, final_sigmas_type="sigma_min" if final == "first" else "zero",
    )
    ref.set_timesteps(timesteps=ts.tolist())
    x = x_T(8)
    for t in ref.timesteps:
        x = ref.step(linear_model(x, t.expand(2)), t, x).prev_sample
    got = ours.sample(linear_model, SHAPE, steps, x_T=x_T(8), progress=False)
    close(got, x, atol=1e-4, rtol=1e-4)


def test_dpm_first_order_step_is_ddim(sched):
    x = x_T(9)
    out = linear_model(x, torch.full((2,), 501))
    dpm = DPMSolverSampler(sched)
    _, x0 = dpm.eps_and_x0(out, x, 501)
    ddim, _ = DDIMSampler(sched).step(out, 501, 401, x)
    close(dpm.step(x0, 501, 401, x), ddim, atol=1e-5, rtol=1e-5)


# ---- Gaussian data: the oracle denoiser, statistical check of whole samplers ---------------------------
MU, S = 1.5, 0.5


def gaussian_oracle(schedule):
    """For x0 ~ N(MU, S^2) and x_t = a x0 + b eps: E[eps | x_t] = b (x_t - a MU) / (a^2 S^2 + b^2)."""

    def model(x, t, cond=None):
        a = schedule.sqrt_alphas_cumprod[t].view(-1, 1, 1, 1)
        b = schedule.sqrt_one_minus_alphas_cumprod[t].view(-1, 1, 1, 1)
        return (b * (x.double() - a * MU) / (a**2 * S**2 + b**2)).to(x.dtype)

    return model


@pytest.mark.parametrize(
    "cls,steps", [(DDPMSampler, T), (DDIMSampler, 50), (PLMSSampler, 25), (DPMSolverSampler, 20)]
)
def test_samplers_recover_gaussian_data(sched, cls, steps):
    """Start from the exact marginal of x_t at the first timestep, N(a MU, a^2 S^2 + b^2): the LDM
    schedule ends at alpha_bar ~ 0.005, not 0, and a deterministic sampler started from N(0, 1)
    would carry the 0.07 * MU offset of the mean all the way to x_0 (a schedule effect, not a
    sampler error)."""
    n = 2000
    sampler = cls(sched)
    t0 = int(sampler.timesteps(steps)[0])
    a, b = sched.sqrt_alphas_cumprod[t0].item(), sched.sqrt_one_minus_alphas_cumprod[t0].item()
    z = torch.randn(n, 1, 1, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    start = a * MU + math.sqrt(a**2 * S**2 + b**2) * z
    out = sampler.sample(
        gaussian_oracle(sched), (n, 1, 1, 1), steps, x_T=start, generator=torch.Generator().manual_seed(0),
        progress=False,
    )
    # standard errors: 0.011 (mean), 0.008 (std); the std also carries the discretisation bias of
    # the step count (measured on this problem: DDIM-50 -0.02, DPM++-20 +0.05, see the next test)
    assert abs(out.mean().item() - MU) < 0.04
    assert abs(out.std().item() - S) < 0.07


@pytest.mark.parametrize("cls", [DDIMSampler, PLMSSampler, DPMSolverSampler])
def test_deterministic_samplers_converge_to_the_exact_gaussian_map(sched, cls):
    """For Gaussian data the probability-flow ODE is linear: x_0 = MU + S * z when x_T = a MU + sd z.
    With final alpha_bar = 1 the sampled map must approach it as the number of steps grows."""
    z = torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64).view(3, 1, 1, 1)

    def error(steps):
        sampler = cls(sched, final_alpha_cumprod="one")
        t0 = int(sampler.timesteps(steps)[0])
        a, b = sched.sqrt_alphas_cumprod[t0].item(), sched.sqrt_one_minus_alphas_cumprod[t0].item()
        start = a * MU + math.sqrt(a**2 * S**2 + b**2) * z
        out = sampler.sample(gaussian_oracle(sched), (3, 1, 1, 1), steps, x_T=start, progress=False)
        return (out.flatten() - (MU + S * z.flatten())).abs().max().item()

    e10, e100 = error(10), error(100)
    assert e100 < e10 / 3 and e100 < 0.015, (e10, e100)


# ---- classifier-free guidance ----------------------------------------------------------------------
class CondModel:
    """out = 0.5 x + cond[:, :, None, None] + t / T; records the batch size of every call."""

    def __init__(self):
        self.batches = []

    def __call__(self, x, t, cond):
        self.batches.append(x.shape[0])
        c = cond["c_crossattn"].mean(1) if isinstance(cond, dict) else cond
        return 0.5 * x + c[:, :, None, None] + t.view(-1, 1, 1, 1) / T


def test_cfg_scale_one_is_the_conditional_branch():
    m = CondModel()
    x, t = x_T(10), torch.full((2,), 321)
    c, u = torch.randn(2, 3), torch.zeros(2, 3)
    assert guided_model_fn(m, u, 1.0) is m
    assert guided_model_fn(m, None, 7.0) is m
    assert torch.equal(guided_model_fn(m, u, 1.0)(x, t, c), m(x, t, c))
    assert m.batches == [2, 2]


def test_cfg_combines_one_batched_call():
    m = CondModel()
    x, t = x_T(11), torch.full((2,), 321)
    c, u = torch.randn(2, 3), torch.randn(2, 3)
    got = guided_model_fn(m, u, 4.0)(x, t, c)
    assert m.batches == [4]  # one call on the doubled batch
    out_u, out_c = m(x, t, u), m(x, t, c)
    close(got, out_u + 4.0 * (out_c - out_u), atol=1e-6, rtol=1e-6)
    close(cfg_combine(out_u, out_c, 4.0), got, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("cls,calls", [(DDIMSampler, 4), (PLMSSampler, 5), (DPMSolverSampler, 4), (DDPMSampler, 4)])
def test_cfg_in_samplers(sched, cls, calls):
    c, u = torch.randn(2, 3), torch.randn(1, 3)  # uncond with batch 1 is expanded
    m = CondModel()
    kw = dict(x_T=x_T(12), generator=torch.Generator().manual_seed(0), progress=False)
    sampler = cls(sched)
    got = sampler.sample(m, SHAPE, 4, conditioning=c, unconditional_conditioning=u, guidance_scale=3.0, **kw)
    assert m.batches == [4] * calls  # exactly one batched call per model evaluation

    def two_calls(x, t, cond):
        out_u, out_c = linear_cond(x, t, u.expand(2, 3)), linear_cond(x, t, cond)
        return out_u + 3.0 * (out_c - out_u)

    linear_cond = CondModel()
    kw["generator"] = torch.Generator().manual_seed(0)
    close(got, sampler.sample(two_calls, SHAPE, 4, conditioning=c, **kw), atol=1e-5, rtol=1e-5)

    # scale 1 ignores the unconditional input: identical to no guidance, one plain call per evaluation
    m1, m2 = CondModel(), CondModel()
    kw["generator"] = torch.Generator().manual_seed(0)
    a = sampler.sample(m1, SHAPE, 4, conditioning=c, unconditional_conditioning=u, guidance_scale=1.0, **kw)
    kw["generator"] = torch.Generator().manual_seed(0)
    b = sampler.sample(m2, SHAPE, 4, conditioning=c, **kw)
    assert torch.equal(a, b) and m1.batches == [2] * calls


def test_batch_conditionings_dicts_lists_and_split(sched):
    B, L, D = 2, 5, 4
    cond = {
        "c_crossattn": torch.randn(B, L, D),
        "c_concat": torch.randn(B, 1, 8, 8),
        "mask": torch.ones(B, L, dtype=torch.bool),
    }
    uncond = {"c_crossattn": torch.zeros(1, L, D), "mask": torch.zeros(B, L, dtype=torch.bool)}
    both = batch_conditionings(uncond, cond)
    assert both["c_crossattn"].shape == (2 * B, L, D) and both["c_crossattn"][:B].abs().sum() == 0
    assert torch.equal(both["c_concat"], torch.cat([cond["c_concat"]] * 2))  # missing key: shared
    assert both["mask"].dtype == torch.bool and not both["mask"][:B].any() and both["mask"][B:].all()
    u_back, c_back = split_batch(both)
    assert torch.equal(c_back["c_crossattn"], cond["c_crossattn"]) and u_back["c_crossattn"].abs().sum() == 0
    # CompVis style: lists of tensors
    lst = batch_conditionings({"c_crossattn": [torch.zeros(B, L, D)]}, {"c_crossattn": [torch.ones(B, L, D)]})
    assert isinstance(lst["c_crossattn"], list) and lst["c_crossattn"][0].shape == (2 * B, L, D)
    assert batch_conditionings(None, None) is None
    with pytest.raises(ValueError, match="lacks"):
        batch_conditionings({"extra": torch.zeros(B)}, {})
    with pytest.raises(TypeError):
        batch_conditionings(None, torch.zeros(B, 3))
    # a dict conditioning goes through a guided sampler call
    m = CondModel()
    DDIMSampler(sched).sample(
        m, SHAPE, 2, conditioning={"c_crossattn": torch.randn(B, L, 3)},
        unconditional_conditioning={"c_crossattn": torch.zeros(1, L, 3)}, guidance_scale=2.0, progress=False,
        generator=torch.Generator().manual_seed(0),
    )
    assert m.batches == [2 * B] * 2


# ---- masks, generators, callbacks ---------------------------------------------------------------------
@pytest.mark.parametrize("cls", ALL)
def test_mask_keeps_known_region_exactly(sched, cls):
    known = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3))
    mask = torch.zeros(2, 1, 8, 8)
    mask[..., :4] = 1.0  # 1 = known, keep
    sampler = cls(sched)
    out = sampler.sample(
        linear_model, SHAPE, 5, keep_mask=mask, x0=known, generator=torch.Generator().manual_seed(0), progress=False
    )
    assert torch.equal(out[..., :4], known[..., :4])
    assert not torch.allclose(out[..., 4:], known[..., 4:])


@pytest.mark.parametrize(
    "cls,kw", [(DDPMSampler, {}), (DDIMSampler, {"eta": 1.0}), (DPMSolverSampler, {}), (PLMSSampler, {})]
)
def test_generator_reproducibility(sched, cls, kw):
    sampler = cls(sched)
    steps = 10 if cls is DDPMSampler else 5

    def run(seed):
        g = torch.Generator().manual_seed(seed)
        return sampler.sample(linear_model, SHAPE, steps, generator=g, progress=False, **kw)

    rng_before = torch.random.get_rng_state()
    a, b, c = run(0), run(0), run(1)
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # all noise came from the generator
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_callback_and_log_every(sched):
    seen = []
    out, logs = DDIMSampler(sched).sample(
        linear_model, SHAPE, 5, x_T=x_T(13), progress=False, log_every=2,
        callback=lambda i, n, x, x0: seen.append((i, n, x.shape, x0.shape)),
    )
    assert [s[:2] for s in seen] == [(i, 5) for i in range(5)]
    assert logs["t"] == [801, 401, 1] and len(logs["x_inter"]) == len(logs["pred_x0"]) == 3
    assert torch.equal(logs["x_inter"][-1], out) and torch.equal(logs["x_T"], x_T(13))


def test_sample_is_a_loop_of_step(sched):
    """The sampling loop with quadratic spacing equals calling the public DDIM step by hand."""
    sampler = DDIMSampler(sched)
    ts = make_ddim_timesteps(6, T, "quadratic").flip(0).tolist()
    x = x_T(14)
    for t, t_prev in zip(ts, ts[1:] + [-1]):
        x, _ = sampler.step(linear_model(x, torch.full((2,), t)), t, t_prev, x)
    got = sampler.sample(linear_model, SHAPE, 6, x_T=x_T(14), timestep_spacing="quadratic", progress=False)
    assert torch.equal(got, x)


# ---- parameterisations -----------------------------------------------------------------------------
@pytest.mark.parametrize("cls", ALL)
@pytest.mark.parametrize("param", ["x0", "v"])
def test_parameterizations_agree(sched, cls, param):
    """An x0- or v-model that is the exact conversion of an eps-model samples the same trajectory."""

    def eps_model(x, t, cond=None):
        return linear_model(x, t)

    def other_model(x, t, cond=None):
        eps = eps_model(x, t)
        x0 = sched.predict_x0_from_eps(x, t, eps)
        return x0 if param == "x0" else sched.get_v(x0, eps, t)

    kw = dict(x_T=x_T(15, dtype=torch.float64), progress=False)
    steps = 10
    a = cls(sched, "eps").sample(eps_model, SHAPE, steps, generator=torch.Generator().manual_seed(0), **kw)
    b = cls(sched, param).sample(other_model, SHAPE, steps, generator=torch.Generator().manual_seed(0), **kw)
    close(a, b, atol=1e-9, rtol=1e-9)


# ---- errors -------------------------------------------------------------------------------------------
def test_errors(sched):
    with pytest.raises(ValueError, match="parameterization"):
        DDIMSampler(sched, "epsilon")
    with pytest.raises(ValueError, match="final_alpha_cumprod"):
        DDIMSampler(sched, final_alpha_cumprod="zero")
    s = DDIMSampler(sched)
    kw = dict(progress=False)
    for steps in (0, T + 1, 2.5):
        with pytest.raises(ValueError, match="steps must be an integer"):
            s.sample(linear_model, SHAPE, steps, **kw)
    with pytest.raises(ValueError, match="pass x0"):
        s.sample(linear_model, SHAPE, 2, keep_mask=torch.ones(2, 1, 8, 8), **kw)
    with pytest.raises(ValueError, match="pass keep_mask"):
        s.sample(linear_model, SHAPE, 2, x0=torch.ones(SHAPE), **kw)
    with pytest.raises(ValueError, match="x0 must have"):
        s.sample(linear_model, SHAPE, 2, keep_mask=torch.ones(2, 1, 8, 8), x0=torch.ones(2, 3, 4, 4), **kw)
    with pytest.raises(ValueError, match="does not broadcast"):
        s.sample(linear_model, SHAPE, 2, keep_mask=torch.ones(2, 1, 4, 4), x0=torch.ones(SHAPE), **kw)
    with pytest.raises(ValueError, match="x_T must have"):
        s.sample(linear_model, SHAPE, 2, x_T=torch.ones(1, 3, 8, 8), **kw)
    with pytest.raises(ValueError, match="pass\\s+conditioning"):
        s.sample(linear_model, SHAPE, 2, unconditional_conditioning=torch.zeros(2, 3), guidance_scale=5.0, **kw)
    with pytest.raises(ValueError, match="timestep method"):
        s.sample(linear_model, SHAPE, 2, timestep_spacing="linspace", **kw)
    with pytest.raises(ValueError, match="eta"):
        PLMSSampler(sched).sample(linear_model, SHAPE, 2, eta=0.5, **kw)
    with pytest.raises(ValueError, match="eta must be >= 0"):
        s.sample(linear_model, SHAPE, 2, eta=-1.0, **kw)
    with pytest.raises(ValueError, match="variance"):
        s.sample(lambda x, t, c: torch.cat([x, x], 1), SHAPE, 2, **kw)
    with pytest.raises(ValueError, match="unknown sampler"):
        make_sampler("euler", sched)
    assert isinstance(make_sampler("DPM", sched, "v"), DPMSolverSampler)


@pytest.mark.parametrize("cls", [DDIMSampler, PLMSSampler, DPMSolverSampler])
def test_every_sampler_visits_the_trailing_timesteps_from_t_999(cls, sched):
    for spacing, first in (("uniform", 801), ("leading", 801), ("trailing", 999)):
        seen = []

        def model(x, t, cond=None):
            seen.append(int(t.flatten()[0]))
            return linear_model(x, t, cond)

        out = cls(sched).sample(model, SHAPE, 5, generator=torch.Generator().manual_seed(0), progress=False,
                                timestep_spacing=spacing)
        assert torch.isfinite(out).all()
        assert seen[0] == first, (cls.__name__, spacing, seen)
        assert set(seen) <= set(make_ddim_timesteps(5, T, spacing).tolist()), seen
