"""Samplers: turn a trained denoiser into samples, from pure noise ``x_T`` to ``x_0``.

Read this module top to bottom; it follows chapter 05 of the course. Four samplers share one interface:

* :class:`DDPMSampler` -- ancestral sampling (Ho et al. 2020, Alg. 2), over all T steps or a subset.
* :class:`DDIMSampler` -- Song et al. 2021, Eq. 12, with the noise knob ``eta`` (0 = deterministic).
  The sampler of the LDM paper (its samples use 50--250 DDIM steps, Sec. 4, App. D/E).
* :class:`PLMSSampler` -- pseudo linear multistep (Liu et al. 2022), as in the LDM code's ``plms.py``.
* :class:`DPMSolverSampler` -- DPM-Solver++(2M) (Lu et al. 2022b), a second-order multistep solver.

Every sampler is used the same way::

    sampler = DDIMSampler(schedule, parameterization="eps")
    z0 = sampler.sample(model_fn, (B, C, H, W), steps=50, conditioning=c,
                        unconditional_conditioning=c_empty, guidance_scale=5.0, generator=g)
    images = autoencoder.decode(z0 / scale_factor)        # decoding is the caller's job

``model_fn(x_t, t, cond) -> output``: ``x_t`` ``(B, C, H, W)`` (any ``(B, ...)`` works), ``t`` long
``(B,)``, ``cond`` whatever was passed as ``conditioning`` (``None``, a tensor, a dict ...).
``parameterization`` says how to read the output: ``"eps"`` (the noise, the LDM default),
``"x0"`` (the clean sample) or ``"v"`` (``sqrt(a_bar) eps - sqrt(1 - a_bar) x0``).

Conventions (the same in all samplers)
--------------------------------------
* **Timesteps.** A sampler with ``S`` steps visits ``make_ddim_timesteps(S, T, spacing, steps_offset)``
  from the noisiest down: with T=1000, S=50 and the default ``steps_offset=1`` these are
  981, 961, ..., 21, 1 -- CompVis' ``uniform`` DDIM timesteps and diffusers' ``"leading"`` spacing with
  ``steps_offset=1`` (Stable Diffusion). ``timestep_spacing="quadratic"`` is denser near t=0.
  :class:`DDPMSampler` uses ``steps_offset=0``, so ``steps=T`` is the full chain T-1, ..., 0.
* **The last step** goes from the smallest timestep to the clean sample. DDIM/PLMS/DPM-Solver use
  ``alpha_bar = alphas_cumprod[0]`` there (``final_alpha_cumprod="first"``, as CompVis and Stable
  Diffusion; diffusers ``set_alpha_to_one=False`` / ``final_sigmas_type="sigma_min"``), or
  ``alpha_bar = 1`` (``"one"``; diffusers ``set_alpha_to_one=True`` / ``final_sigmas_type="zero"``), in
  which case the output *is* the last predicted x0. DDPM always ends at ``alpha_bar = 1``.
* **Inpainting / keeping known regions** (``keep_mask`` or ``hole_mask``, ``x0``): ``keep_mask`` is 1 on
  the **known** pixels to keep (the CompVis sampler's ``mask``), ``hole_mask`` 1 where the sampler generates
  (the paper's inpainting script); :func:`ldm_lite.checks.keep_mask_from` converts, in one place. The known
  region is reset to the noised known image ``q_sample(x0, t)`` before the first step and after every step, and
  to ``x0`` itself after the last one, so the output equals ``x0`` exactly where ``mask == 1``.
* **Randomness.** All noise (``x_T``, per-step noise, noise for the known region) is drawn from
  ``generator``: the same seed gives the same samples.
* **Guidance.** With ``unconditional_conditioning`` and ``guidance_scale != 1`` every step makes one
  model call on a doubled batch (:mod:`ldm_lite.diffusion.guidance`).
* **Validation, once per call.** ``sample`` checks its arguments before the loop with the shared checks of
  :mod:`ldm_lite.checks`: ``guidance_scale`` finite and ``>= 0`` (``!= 1`` only with an
  ``unconditional_conditioning``), ``eta`` finite in [0, 1], ``x_T`` / ``x0`` finite and of the sampling shape.
  :meth:`Sampler.run` is the loop without those checks, for a caller that made them
  (``LatentDiffusion.sample``); it checks only the sampler's own settings (steps, spacing, RePaint's jumps).
  Nothing is checked inside the loop.
* **Outputs.** ``sample`` returns the final ``x_0`` ``shape``-shaped tensor; with ``log_every=k`` it
  returns ``(x_0, intermediates)`` where ``intermediates = {"x_T": x_T, "t": [...], "x_inter":
  [...], "pred_x0": [...]}`` records, after every k-th step and after the last, the timestep the
  model was evaluated at, the sample after the step and the predicted x0 of that step.
* ``clip_denoised=False`` by default: latents are not in [-1, 1]. Set it for a pixel-space model
  trained on [-1, 1] images to clamp every predicted x0.
* Arithmetic on the schedule is float64 (Python floats); tensors keep the dtype of ``x_T``.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch
from ldm_lite.progress import progress as tqdm

from ldm_lite.checks import (  # noqa: F401  (check_eta, check_finite, check_guidance_scale: re-exported)
    check_eta,
    check_finite,
    check_guidance,
    check_guidance_scale,
    check_known_at,
    check_start_noise,
    check_steps,
    paired_mask,
)
from ldm_lite.diffusion.guidance import guided_model_fn
from ldm_lite.diffusion.schedule import PARAMETERIZATIONS, NoiseSchedule, make_ddim_timesteps

__all__ = [
    "Sampler",
    "DDPMSampler",
    "DDIMSampler",
    "PLMSSampler",
    "DPMSolverSampler",
    "SAMPLERS",
    "make_sampler",
    "repaint_moves",
    "check_guidance_scale",
    "check_eta",
    "check_finite",
    "max_steps",
]

ModelFn = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]
FINAL_ALPHAS = ("first", "one")


def _randn(shape, generator: torch.Generator | None, device, dtype) -> torch.Tensor:
    """``N(0, I)`` noise drawn on the generator's device (a CPU generator cannot fill a CUDA tensor)."""
    gen_device = generator.device if generator is not None else device
    return torch.randn(tuple(shape), generator=generator, device=gen_device, dtype=dtype).to(device)


def max_steps(num_timesteps: int = 1000, spacing: str = "uniform", steps_offset: int = 1) -> int:
    """The most steps a run over ``num_timesteps`` training timesteps can take with this ``spacing`` and
    ``steps_offset`` (:func:`~ldm_lite.diffusion.schedule.make_ddim_timesteps`): ``T`` for the full chain
    (``steps_offset=0`` as DDPM, or ``"trailing"``), ``T - 1`` for ``"uniform"`` with offset 1 (``T`` steps
    would end at timestep ``T``, one past the last), 29 for ``"quadratic"`` over T=1000 (more repeat timesteps).
    The valid step counts are ``1..max_steps``."""
    def ok(s: int) -> bool:
        try:
            make_ddim_timesteps(s, num_timesteps, spacing, steps_offset)
        except ValueError:
            return False
        return True

    if ok(num_timesteps):
        return num_timesteps
    lo, hi = 0, num_timesteps  # ok(lo) (or lo = 0), not ok(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return lo


def _as_int(t) -> int | None:
    """A timestep given as int / 0-d tensor -> int; ``None`` stays ``None`` (the clean end)."""
    if t is None:
        return None
    return int(t.item()) if isinstance(t, torch.Tensor) else int(t)


# --------------------------------------------------------------------------------------------------
# The shared machinery
# --------------------------------------------------------------------------------------------------
class Sampler:
    """Base class: timesteps, reading the model output, and the sampling loop of :meth:`sample`.

    Subclasses implement :meth:`_sample_step` (one step of the loop) and a public ``step``.

    Args:
        schedule: the :class:`NoiseSchedule` the model was trained with.
        parameterization: ``"eps"``, ``"x0"`` or ``"v"`` -- what the model predicts.
        final_alpha_cumprod: ``"first"`` (``alpha_bar`` after the last step = ``alphas_cumprod[0]``,
            CompVis / SD) or ``"one"`` (= 1, the exact clean sample).
        steps_offset: added to the evenly spaced timesteps (1 for CompVis / SD).
        clip_denoised: clamp every predicted x0 to [-1, 1] (pixel-space models only).
    """

    name = "sampler"
    default_steps = 50

    def __init__(
        self,
        schedule: NoiseSchedule,
        parameterization: str = "eps",
        *,
        final_alpha_cumprod: str = "first",
        steps_offset: int = 1,
        clip_denoised: bool = False,
    ):
        if not isinstance(schedule, NoiseSchedule):
            raise TypeError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}")
        if parameterization not in PARAMETERIZATIONS:
            raise ValueError(
                f"unknown parameterization {parameterization!r}; use one of {', '.join(PARAMETERIZATIONS)} "
                "(what the model predicts: the noise 'eps', the clean sample 'x0' or the velocity 'v')"
            )
        if final_alpha_cumprod not in FINAL_ALPHAS:
            raise ValueError(
                f"final_alpha_cumprod must be 'first' (alphas_cumprod[0], CompVis/SD) or 'one' "
                f"(diffusers set_alpha_to_one=True), got {final_alpha_cumprod!r}"
            )
        self.schedule = schedule
        self.parameterization = parameterization
        self.final_alpha_cumprod = final_alpha_cumprod
        self.steps_offset = int(steps_offset)
        self.clip_denoised = bool(clip_denoised)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(T={self.schedule.num_timesteps}, parameterization={self.parameterization!r}, "
            f"final_alpha_cumprod={self.final_alpha_cumprod!r}, steps_offset={self.steps_offset})"
        )

    # ---- the schedule at the sampler's timesteps -------------------------------------------------
    def alpha_bar(self, t) -> float:
        """``alpha_bar_t`` as a Python float (float64); ``t=None`` or ``t<0`` is the clean end."""
        t = _as_int(t)
        if t is None or t < 0:
            return 1.0 if self.final_alpha_cumprod == "one" else float(self.schedule.alphas_cumprod[0])
        if t >= self.schedule.num_timesteps:
            raise ValueError(f"timestep {t} is outside 0..{self.schedule.num_timesteps - 1}")
        return float(self.schedule.alphas_cumprod[t])

    def timesteps(self, steps: int, spacing: str = "uniform") -> torch.Tensor:
        """The timesteps visited by a ``steps``-step run, **descending** (noisiest first), long ``(steps,)``."""
        T = self.schedule.num_timesteps
        check_steps(steps, T)
        try:
            return make_ddim_timesteps(steps, T, spacing, self.steps_offset).flip(0)
        except ValueError:
            if spacing not in ("uniform", "leading", "quadratic", "quad"):
                raise
            most = max_steps(T, spacing, self.steps_offset)
            if steps <= most:
                raise
        alternatives = (" or timestep_spacing='uniform'" if spacing in ("quadratic", "quad") else
                        f", timestep_spacing='trailing', or sampler='ddpm' (steps_offset=0) for the full {T}-step chain")
        raise ValueError(f"{self.name} with timestep_spacing={spacing!r} and steps_offset={self.steps_offset} takes at "
                         f"most {most} of the T={T} timesteps, got steps={steps}: use steps <= {most}{alternatives}")

    # ---- reading the model output ----------------------------------------------------------------
    def eps_and_x0(self, model_output: torch.Tensor, x_t: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor]:
        """Convert a model output (in ``self.parameterization``) to ``(eps, x0)``; shapes of ``x_t``.

        Uses the conversions of :class:`NoiseSchedule` (``x_t = sqrt(a) x0 + sqrt(1-a) eps``). With
        ``clip_denoised`` the returned x0 is clamped to [-1, 1] (eps is left as predicted, as in
        diffusers' DDIM with ``use_clipped_model_output=False``).
        """
        if not isinstance(model_output, torch.Tensor) or model_output.shape != x_t.shape:
            got = tuple(model_output.shape) if isinstance(model_output, torch.Tensor) else type(model_output).__name__
            raise ValueError(
                f"the model returned {got}, expected the shape of x_t {tuple(x_t.shape)} (a model that "
                "also predicts a variance must be split before sampling)"
            )
        t = _as_int(t)
        s = self.schedule
        if self.parameterization == "eps":
            eps, x0 = model_output, s.predict_x0_from_eps(x_t, t, model_output)
        elif self.parameterization == "x0":
            eps, x0 = s.predict_eps_from_x0(x_t, t, model_output), model_output
        else:
            eps, x0 = s.predict_eps_from_v(x_t, t, model_output), s.predict_x0_from_v(x_t, t, model_output)
        if self.clip_denoised:
            x0 = x0.clamp(-1.0, 1.0)
        return eps, x0

    @staticmethod
    def _call(model_fn: ModelFn, x: torch.Tensor, t: int, cond: Any) -> torch.Tensor:
        """Call the model with the same integer timestep ``t`` for every sample: ``t`` long ``(B,)``."""
        t_batch = torch.full((x.shape[0],), int(t), dtype=torch.long, device=x.device)
        return model_fn(x, t_batch, cond)

    # ---- one step of the loop (subclasses) -------------------------------------------------------
    def _sample_step(
        self,
        model_fn: ModelFn,
        x: torch.Tensor,
        t: int,
        t_prev: int,
        cond: Any,
        *,
        index: int,
        num_steps: int,
        state: dict,
        eta: float,
        generator: torch.Generator | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(x_prev, pred_x0)``; ``t_prev = -1`` on the last step. ``state`` persists across steps."""
        raise NotImplementedError

    def _check_eta(self, eta: float) -> None:
        if eta != 0:
            raise ValueError(f"eta is a DDIM parameter; {type(self).__name__} is deterministic, pass eta=0")

    # ---- the entry point and the loop ---------------------------------------------------------------
    @torch.no_grad()
    def sample(
        self,
        model_fn: ModelFn,
        shape: Sequence[int],
        steps: int | None = None,
        *,
        conditioning: Any = None,
        unconditional_conditioning: Any = None,
        guidance_scale: float = 1.0,
        eta: float = 0.0,
        x_T: torch.Tensor | None = None,
        keep_mask: torch.Tensor | None = None,
        x0: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        callback: Callable[[int, int, torch.Tensor, torch.Tensor], Any] | None = None,
        progress: bool = True,
        timestep_spacing: str = "uniform",
        log_every: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        hole_mask: torch.Tensor | None = None,
        jump_length: int = 0,
        jump_n_sample: int = 1,
    ):
        """Draw samples ``(B, C, H, W) = shape``; returns the final ``x_0`` (latents: decoding is the caller's job).

        Args:
            model_fn: ``(x_t (B, ...), t long (B,), cond) -> output (B, ...)`` in ``parameterization``.
            shape: ``(B, C, H, W)`` (any ``(B, ...)``).
            steps: number of model timesteps visited; default 50 (DDPM: T, the full chain).
            conditioning: passed to ``model_fn`` as ``cond`` (None, tensor, list or dict of tensors).
            unconditional_conditioning, guidance_scale: classifier-free guidance, ``out_u + s (out_c - out_u)``;
                ``s`` finite and ``>= 0`` (1 = no guidance; :func:`check_guidance_scale`). ``s != 1`` needs
                ``unconditional_conditioning`` (without it guidance would be a silent no-op, so it is an error).
            eta: DDIM's noise scale in [0, 1] (0 = deterministic DDIM, 1 = DDPM-like); DDIM only.
            x_T: the starting noise ``shape`` (finite); drawn from ``generator`` when omitted.
            keep_mask / hole_mask, x0: keep a known region. Give one mask (broadcastable to ``shape``, e.g.
                ``(B, 1, H, W)``, binary): ``keep_mask`` is **1 where x0 is known and kept** (CompVis's
                sampler ``mask``), ``hole_mask`` 1 where the sampler generates (the paper's inpainting script).
            jump_length, jump_n_sample: RePaint's resampling (Lugmayr et al. 2022): after every
                ``jump_length`` steps go back up ``jump_length`` steps by re-noising the whole sample
                (``q(x_t | x_{t_prev})``), ``jump_n_sample - 1`` times, so that the generated region
                harmonises with the known one. DDPM and DDIM only (the multistep samplers keep a history
                that a jump would invalidate); needs a mask. ``jump_length=0`` (default): no resampling.
            generator: ``torch.Generator`` for all noise; same seed -> same samples.
            callback: ``callback(i, num_steps, x, pred_x0)`` after step ``i`` (``x`` is the sample after
                the step, ``pred_x0`` the step's predicted clean sample).
            progress: show a ``tqdm`` progress bar.
            timestep_spacing: ``"uniform"`` (= ``"leading"``, CompVis / SD), ``"trailing"`` (starts at t = T - 1,
                Lin et al. 2024) or ``"quadratic"`` (:func:`make_ddim_timesteps`).
            log_every: if set, return ``(x_0, intermediates)`` (see the module docstring).
            device, dtype: where and in which dtype to sample when ``x_T`` is not given (default device:
                that of ``x0``, else the schedule's).
        """
        # ---- the entry point's checks (LatentDiffusion.sample makes its own and calls run) ---------
        shape = tuple(int(s) for s in shape)
        if len(shape) < 1 or any(s < 1 for s in shape):
            raise ValueError(f"shape must be (B, C, H, W) with positive sizes, got {shape}")
        guidance_scale = check_guidance(guidance_scale, conditioning, unconditional_conditioning)
        eta = check_eta(eta)
        mask = paired_mask(x0, keep_mask, hole_mask)
        if mask is not None:
            check_known_at(x0, mask, shape)
        if x_T is not None:
            check_start_noise(x_T, shape)
        return self.run(
            model_fn, shape, steps, conditioning=conditioning, unconditional_conditioning=unconditional_conditioning,
            guidance_scale=guidance_scale, eta=eta, x_T=x_T, keep_mask=mask, x0=x0, generator=generator,
            callback=callback, progress=progress, timestep_spacing=timestep_spacing, log_every=log_every,
            device=device, dtype=dtype, jump_length=jump_length, jump_n_sample=jump_n_sample,
        )

    def _plan(self, steps: int | None, spacing: str, eta: float, jump_length: int, jump_n_sample: int,
              has_mask: bool, log_every: int | None) -> tuple[torch.Tensor, bool]:
        """The sampler's own settings, checked where they enter: returns the timesteps to visit and whether
        to resample (RePaint)."""
        if steps is None:
            steps = self.default_steps if self.default_steps is not None else self.schedule.num_timesteps
        timesteps = self.timesteps(steps, spacing)  # validates steps and spacing
        self._check_eta(eta)
        if not isinstance(jump_length, int) or jump_length < 0 or not isinstance(jump_n_sample, int) or jump_n_sample < 1:
            raise ValueError(f"need integers jump_length >= 0 and jump_n_sample >= 1, got {jump_length!r}, "
                             f"{jump_n_sample!r}")
        resample = jump_length > 0 and jump_n_sample > 1
        if resample and not has_mask:
            raise ValueError("RePaint resampling (jump_length, jump_n_sample) harmonises a known region: pass x0 and "
                             "a keep_mask / hole_mask")
        if resample and self.name not in ("DDPM", "DDIM"):
            raise ValueError(f"RePaint resampling needs a single-step sampler (DDPM or DDIM); {self.name} keeps a "
                             "history of earlier steps that jumping back would invalidate")
        if log_every is not None and (not isinstance(log_every, int) or log_every < 1):
            raise ValueError(f"log_every must be a positive integer or None, got {log_every!r}")
        return timesteps, resample

    @torch.no_grad()
    def run(
        self, model_fn: ModelFn, shape: tuple[int, ...], steps: int | None = None, *, conditioning: Any = None,
        unconditional_conditioning: Any = None, guidance_scale: float = 1.0, eta: float = 0.0,
        x_T: torch.Tensor | None = None, keep_mask: torch.Tensor | None = None, x0: torch.Tensor | None = None,
        generator: torch.Generator | None = None, callback: Callable | None = None, progress: bool = True,
        timestep_spacing: str = "uniform", log_every: int | None = None, device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32, jump_length: int = 0, jump_n_sample: int = 1,
    ):
        """The loop of :meth:`sample` for a caller that checked the arguments (``LatentDiffusion.sample``):
        ``shape`` a tuple, ``guidance_scale`` / ``eta`` / ``x_T`` valid, ``keep_mask`` the float keep mask (1 = keep)
        broadcastable to ``shape`` and ``x0`` of ``shape``. Only the sampler's own settings are checked here."""
        timesteps, resample = self._plan(steps, timestep_spacing, eta, jump_length, jump_n_sample, x0 is not None,
                                         log_every)
        # ---- set up -------------------------------------------------------------------------------
        if x_T is not None:
            device, dtype = x_T.device, x_T.dtype
            x = x_T
        else:
            if device is None:
                device = x0.device if x0 is not None else self.schedule.betas.device
            x = _randn(shape, generator, device, dtype)
        x_start = x
        if x0 is not None:
            x0 = x0.to(device=device, dtype=x.dtype)
            mask = keep_mask.to(device=device, dtype=x.dtype)

        def keep_known(x: torch.Tensor, t: int) -> torch.Tensor:
            """x = mask * q_sample(x0, t) + (1 - mask) * x; at the clean end (t < 0) q_sample -> x0."""
            if t < 0:
                known = x0
            else:
                known = self.schedule.q_sample(x0, t, noise=_randn(shape, generator, device, x.dtype))
            return mask * known + (1.0 - mask) * x

        model = guided_model_fn(model_fn, unconditional_conditioning, guidance_scale)
        ts = [int(t) for t in timesteps]
        prevs = ts[1:] + [-1]
        num_steps = len(ts)
        state: dict = {}
        logs = {"x_T": x_start, "t": [], "x_inter": [], "pred_x0": []}

        if x0 is not None:
            x = keep_known(x, ts[0])
        moves = repaint_moves(num_steps, jump_length, jump_n_sample) if resample else [("down", i) for i in
                                                                                       range(num_steps)]
        bar = tqdm(moves, desc=f"{self.name} sampling", disable=not progress, leave=False)
        for direction, i in bar:
            if direction == "up":  # RePaint: undo step i, re-noising from its end prevs[i] back to ts[i]
                a_lo = 1.0 if prevs[i] < 0 else float(self.schedule.alphas_cumprod[prevs[i]])
                a_hi = float(self.schedule.alphas_cumprod[ts[i]])
                x = math.sqrt(a_hi / a_lo) * x + math.sqrt(1.0 - a_hi / a_lo) * _randn(shape, generator, device,
                                                                                       x.dtype)
                continue
            t, t_prev = ts[i], prevs[i]
            x, pred_x0 = self._sample_step(
                model, x, t, t_prev, conditioning,
                index=i, num_steps=num_steps, state=state, eta=eta, generator=generator,
            )
            if x0 is not None:
                x = keep_known(x, t_prev)
            if callback is not None:
                callback(i, num_steps, x, pred_x0)
            if log_every is not None and (i % log_every == 0 or i == num_steps - 1):
                logs["t"].append(t)
                logs["x_inter"].append(x)
                logs["pred_x0"].append(pred_x0)
        bar.close()
        return (x, logs) if log_every is not None else x


def repaint_moves(num_steps: int, jump_length: int, jump_n_sample: int) -> list[tuple[str, int]]:
    """RePaint's walk over the step indices 0..num_steps-1: ``("down", i)`` takes step i (ts[i] -> its
    successor), ``("up", i)`` undoes it by re-noising from the successor back to ts[i]. After every ``jump_length`` down-steps (not at the very
    end) the walk goes back up ``jump_length`` steps, ``jump_n_sample - 1`` times per position (Lugmayr et al.
    2022, Alg. 1 with their time-travel schedule)."""
    moves, jumps, i = [], {}, 0
    while i < num_steps:
        moves.append(("down", i))
        i += 1
        if jump_length and i % jump_length == 0 and i < num_steps and jumps.get(i, 0) < jump_n_sample - 1:
            jumps[i] = jumps.get(i, 0) + 1
            moves += [("up", k) for k in range(i - 1, i - 1 - jump_length, -1)]
            i -= jump_length
    return moves


# --------------------------------------------------------------------------------------------------
# DDPM: ancestral sampling
# --------------------------------------------------------------------------------------------------
class DDPMSampler(Sampler):
    """Ancestral sampling (Ho et al. 2020, Alg. 2): ``x_{t-1} ~ q(x_{t-1} | x_t, x0 = x0_hat(x_t, t))``.

    Each step replaces the unknown x0 in the true posterior (DDPM Eq. 6-7) by the model's prediction:

        ``mean = sqrt(a_prev) beta / (1 - a_t) * x0_hat + sqrt(1 - beta) (1 - a_prev) / (1 - a_t) * x_t``
        ``var  = (1 - a_prev) / (1 - a_t) * beta``      with ``beta = 1 - a_t / a_prev``

    (``a = alpha_bar``). For the full chain (``t_prev = t - 1``) ``beta`` is ``beta_t`` and this is
    exactly ``schedule.q_posterior``; with fewer steps it is the same formula between the visited
    timesteps ("respacing", Nichol & Dhariwal 2021, Sec. 4; diffusers' DDPMScheduler with custom
    timesteps). The variance is the posterior one (``beta_tilde``, DDPM's "fixed small"). No noise is
    added on the last step, which ends at ``alpha_bar = 1``: it returns the predicted x0.

    The default is the full chain (``steps=T``, timesteps T-1, ..., 0; ``steps_offset=0``).
    """

    name = "DDPM"
    default_steps = None  # -> T

    def __init__(
        self,
        schedule: NoiseSchedule,
        parameterization: str = "eps",
        *,
        steps_offset: int = 0,
        clip_denoised: bool = False,
    ):
        super().__init__(
            schedule, parameterization, final_alpha_cumprod="one", steps_offset=steps_offset,
            clip_denoised=clip_denoised,
        )

    def step(
        self,
        model_output: torch.Tensor,
        t,
        t_prev,
        x_t: torch.Tensor,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One ancestral step from ``x_t`` to ``x_{t_prev}``; returns ``(x_prev, pred_x0)``, shapes of ``x_t``.

        ``t_prev=None`` or ``-1`` is the clean end (no noise). ``noise`` (like ``x_t``) is drawn from
        ``generator`` when omitted.
        """
        t, t_prev = _as_int(t), _as_int(t_prev)
        t_prev = -1 if t_prev is None else t_prev
        _, x0 = self.eps_and_x0(model_output, x_t, t)
        a_t, a_prev = self.alpha_bar(t), self.alpha_bar(t_prev)
        beta = 1.0 - a_t / a_prev
        coef_x0 = math.sqrt(a_prev) * beta / (1.0 - a_t)
        coef_xt = math.sqrt(1.0 - beta) * (1.0 - a_prev) / (1.0 - a_t)
        mean = coef_x0 * x0 + coef_xt * x_t
        if t_prev < 0:
            return mean, x0
        var = (1.0 - a_prev) / (1.0 - a_t) * beta
        if noise is None:
            noise = _randn(x_t.shape, generator, x_t.device, x_t.dtype)
        return mean + math.sqrt(var) * noise, x0

    def _sample_step(self, model_fn, x, t, t_prev, cond, *, index, num_steps, state, eta, generator):
        out = self._call(model_fn, x, t, cond)
        return self.step(out, t, t_prev, x, generator=generator)


# --------------------------------------------------------------------------------------------------
# DDIM
# --------------------------------------------------------------------------------------------------
class DDIMSampler(Sampler):
    """DDIM (Song et al. 2021), Eq. 12, the LDM paper's sampler. With ``a = alpha_bar``:

        ``x_prev = sqrt(a_prev) x0_hat  +  sqrt(1 - a_prev - sigma^2) eps_hat  +  sigma z``
        ``sigma  = eta * sqrt((1 - a_prev) / (1 - a_t)) * sqrt(1 - a_t / a_prev)``     (Eq. 16)

    "predicted x0" + "direction pointing to x_t" + noise. ``eta=0`` is deterministic (an ODE solver);
    ``eta=1`` has DDPM's posterior variance. Matches CompVis ``ddim.py`` and diffusers' DDIMScheduler
    (``timestep_spacing="leading"``, ``steps_offset=1``, ``set_alpha_to_one=False``).
    """

    name = "DDIM"

    def step(
        self,
        model_output: torch.Tensor,
        t,
        t_prev,
        x_t: torch.Tensor,
        eta: float = 0.0,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One DDIM step from ``x_t`` (timestep ``t``) to ``t_prev``; returns ``(x_prev, pred_x0)``.

        ``model_output``, ``x_t``: ``(B, ...)``. ``t_prev=None`` or ``-1`` is the clean end
        (``alpha_bar`` given by ``final_alpha_cumprod``). ``noise`` is used when ``eta > 0`` (drawn
        from ``generator`` when omitted).
        """
        if not 0 <= eta <= 1:  # also False for NaN
            check_eta(eta)
        eps, x0 = self.eps_and_x0(model_output, x_t, t)
        a_t, a_prev = self.alpha_bar(t), self.alpha_bar(t_prev)
        sigma = eta * math.sqrt((1.0 - a_prev) / (1.0 - a_t)) * math.sqrt(1.0 - a_t / a_prev)
        direction = math.sqrt(max(1.0 - a_prev - sigma**2, 0.0)) * eps
        x_prev = math.sqrt(a_prev) * x0 + direction
        if sigma > 0:
            if noise is None:
                noise = _randn(x_t.shape, generator, x_t.device, x_t.dtype)
            x_prev = x_prev + sigma * noise
        return x_prev, x0

    def _check_eta(self, eta: float) -> None:
        pass  # DDIM takes any eta >= 0

    def _sample_step(self, model_fn, x, t, t_prev, cond, *, index, num_steps, state, eta, generator):
        out = self._call(model_fn, x, t, cond)
        return self.step(out, t, t_prev, x, eta=eta, generator=generator)


# --------------------------------------------------------------------------------------------------
# PLMS
# --------------------------------------------------------------------------------------------------
class PLMSSampler(Sampler):
    """Pseudo linear multistep sampling (Liu et al. 2022, "PNDM"), as in the LDM code's ``plms.py``.

    DDIM's deterministic step is the "transfer" ``phi(x_t, eps, t -> t_prev)``. PLMS keeps it but
    feeds it a better noise estimate: a linear multistep (Adams-Bashforth) combination of the
    current and the last three noise predictions (newest first):

        1 step of history:  ``(3 e_t - e_1) / 2``
        2 steps:            ``(23 e_t - 16 e_1 + 5 e_2) / 12``
        3 or more:          ``(55 e_t - 59 e_1 + 37 e_2 - 9 e_3) / 24``

    On the first step there is no history; the LDM code then takes a "pseudo improved Euler" step:
    it transfers with ``e_t``, evaluates the model again at the result (timestep ``t_prev``), and
    transfers from ``x_t`` again with the average of the two predictions. So ``S`` steps cost
    ``S + 1`` model calls. (With a single step there is no next timestep to evaluate at, and the
    step is a plain DDIM step, as diffusers' PNDMScheduler does.) This equals diffusers'
    ``PNDMScheduler(skip_prk_steps=True)``, which was ported from the same code.
    """

    name = "PLMS"

    @staticmethod
    def adams_bashforth(e_t: torch.Tensor, old_eps: Sequence[torch.Tensor]) -> torch.Tensor:
        """The multistep noise estimate from ``e_t`` and earlier predictions ``old_eps`` (oldest first)."""
        n = len(old_eps)
        if n == 0:
            return e_t
        if n == 1:
            return (3 * e_t - old_eps[-1]) / 2
        if n == 2:
            return (23 * e_t - 16 * old_eps[-1] + 5 * old_eps[-2]) / 12
        return (55 * e_t - 59 * old_eps[-1] + 37 * old_eps[-2] - 9 * old_eps[-3]) / 24

    def transfer(self, eps: torch.Tensor, t, t_prev, x_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Deterministic DDIM step with noise estimate ``eps``: returns ``(x_prev, pred_x0)``."""
        a_t, a_prev = self.alpha_bar(t), self.alpha_bar(t_prev)
        x0 = (x_t - math.sqrt(1.0 - a_t) * eps) / math.sqrt(a_t)
        if self.clip_denoised:
            x0 = x0.clamp(-1.0, 1.0)
        return math.sqrt(a_prev) * x0 + math.sqrt(1.0 - a_prev) * eps, x0

    def step(
        self,
        model_fn: ModelFn,
        x_t: torch.Tensor,
        t,
        t_prev,
        old_eps: Sequence[torch.Tensor] = (),
        cond: Any = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One PLMS step; returns ``(x_prev, pred_x0, e_t)``.

        ``model_fn(x, t (B,), cond)`` is called once (twice on the first step, ``old_eps`` empty).
        ``old_eps``: earlier noise predictions, oldest first; append the returned ``e_t`` for the
        next step (the LDM code keeps the last three). ``t_prev=None`` or ``-1`` is the clean end.
        """
        t = _as_int(t)
        t_prev = -1 if t_prev is None else _as_int(t_prev)
        e_t, _ = self.eps_and_x0(self._call(model_fn, x_t, t, cond), x_t, t)
        if len(old_eps) == 0 and t_prev >= 0:
            # pseudo improved Euler: average the slopes at both ends of a plain DDIM step
            x_euler, _ = self.transfer(e_t, t, t_prev, x_t)
            e_next, _ = self.eps_and_x0(self._call(model_fn, x_euler, t_prev, cond), x_euler, t_prev)
            e_prime = (e_t + e_next) / 2
        else:
            e_prime = self.adams_bashforth(e_t, old_eps)
        x_prev, pred_x0 = self.transfer(e_prime, t, t_prev, x_t)
        return x_prev, pred_x0, e_t

    def _sample_step(self, model_fn, x, t, t_prev, cond, *, index, num_steps, state, eta, generator):
        old_eps = state.setdefault("old_eps", [])
        x_prev, pred_x0, e_t = self.step(model_fn, x, t, t_prev, old_eps, cond)
        old_eps.append(e_t)
        if len(old_eps) > 3:
            old_eps.pop(0)
        return x_prev, pred_x0


# --------------------------------------------------------------------------------------------------
# DPM-Solver++(2M)
# --------------------------------------------------------------------------------------------------
class DPMSolverSampler(Sampler):
    """DPM-Solver++(2M) (Lu et al. 2022b, Alg. 2): a second-order multistep ODE solver on x0 predictions.

    Write ``alpha_t = sqrt(alpha_bar_t)``, ``sigma_t = sqrt(1 - alpha_bar_t)`` and the half
    log-SNR ``lambda_t = log(alpha_t / sigma_t)``. The probability-flow ODE, written in ``lambda``
    with the data prediction ``D = x0_hat``, integrates exactly except for the integral of ``D``;
    taking ``D`` constant over a step (``h = lambda_prev - lambda_t``) gives the first-order update

        ``x_prev = (sigma_prev / sigma_t) x_t + alpha_prev (1 - e^{-h}) D_t``          (= DDIM, eta=0)

    and extrapolating ``D`` linearly in ``lambda`` from the previous step's prediction ``D_last``
    (at ``lambda_last``, ``r = (lambda_t - lambda_last) / h``) gives the second-order update

        ``x_prev = (sigma_prev / sigma_t) x_t + alpha_prev (1 - e^{-h}) (D_t + (D_t - D_last) / (2 r))``.

    The first step has no history and is first order; so is the last step when ``steps < 15`` and
    ``lower_order_final`` (more stable for few steps; diffusers' default), and always when it ends at
    ``alpha_bar = 1`` (``sigma = 0``, ``lambda = inf``; the output is then ``D``). Matches diffusers'
    ``DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2)`` given the same
    timesteps (``final_sigmas_type="sigma_min"`` for ``"first"``, ``"zero"`` for ``"one"``).
    """

    name = "DPM-Solver++(2M)"

    def __init__(
        self,
        schedule: NoiseSchedule,
        parameterization: str = "eps",
        *,
        final_alpha_cumprod: str = "first",
        steps_offset: int = 1,
        clip_denoised: bool = False,
        lower_order_final: bool = True,
    ):
        super().__init__(
            schedule, parameterization, final_alpha_cumprod=final_alpha_cumprod,
            steps_offset=steps_offset, clip_denoised=clip_denoised,
        )
        self.lower_order_final = bool(lower_order_final)

    def _alpha_sigma_lambda(self, t) -> tuple[float, float, float]:
        a = self.alpha_bar(t)
        alpha, sigma = math.sqrt(a), math.sqrt(1.0 - a)
        lam = math.inf if sigma == 0 else math.log(alpha) - math.log(sigma)
        return alpha, sigma, lam

    def step(
        self,
        x0_pred: torch.Tensor,
        t,
        t_prev,
        x_t: torch.Tensor,
        x0_pred_last: torch.Tensor | None = None,
        t_last=None,
    ) -> torch.Tensor:
        """One DPM-Solver++ step from ``x_t`` at ``t`` to ``t_prev``; returns ``x_prev`` (shape of ``x_t``).

        ``x0_pred``: the data prediction at ``(x_t, t)`` (use :meth:`eps_and_x0` on a model output).
        ``x0_pred_last``, ``t_last``: the data prediction of the previous (noisier) step and its
        timestep; give both for the second-order update, neither for the first-order one.
        ``t_prev=None`` or ``-1`` is the clean end.
        """
        if (x0_pred_last is None) != (t_last is None):
            raise ValueError("pass both x0_pred_last and t_last (second order) or neither (first order)")
        _, sigma_t, lam_t = self._alpha_sigma_lambda(t)
        alpha_p, sigma_p, lam_p = self._alpha_sigma_lambda(-1 if t_prev is None else t_prev)
        if sigma_p == 0:  # the limit h -> inf: x_prev = D_t
            return x0_pred
        h = lam_p - lam_t
        if h == 0:  # a zero-length step (e.g. timestep 0 followed by alpha_bar_0)
            return x_t
        d = x0_pred
        if x0_pred_last is not None:
            _, _, lam_last = self._alpha_sigma_lambda(t_last)
            r = (lam_t - lam_last) / h
            d = x0_pred + (x0_pred - x0_pred_last) / (2 * r)
        return (sigma_p / sigma_t) * x_t + (alpha_p * -math.expm1(-h)) * d

    def _sample_step(self, model_fn, x, t, t_prev, cond, *, index, num_steps, state, eta, generator):
        _, x0 = self.eps_and_x0(self._call(model_fn, x, t, cond), x, t)
        last = state.get("last")  # (x0_pred, t) of the previous step
        first_order = (
            last is None
            or (index == num_steps - 1 and self.lower_order_final and num_steps < 15)
        )
        if first_order:
            x_prev = self.step(x0, t, t_prev, x)
        else:
            x_prev = self.step(x0, t, t_prev, x, x0_pred_last=last[0], t_last=last[1])
        state["last"] = (x0, t)
        return x_prev, x0


# --------------------------------------------------------------------------------------------------
# By name
# --------------------------------------------------------------------------------------------------
SAMPLERS = {
    "ddpm": DDPMSampler,
    "ddim": DDIMSampler,
    "plms": PLMSSampler,
    "dpm": DPMSolverSampler,
    "dpmsolver++": DPMSolverSampler,
}


def make_sampler(name: str | Sampler, schedule: NoiseSchedule, parameterization: str = "eps", **kwargs) -> Sampler:
    """``SAMPLERS[name](schedule, parameterization, **kwargs)``; names: ddpm, ddim, plms, dpm (= dpmsolver++).
    A :class:`Sampler` instance is returned as it is (options ``kwargs`` are then an error)."""
    if isinstance(name, Sampler):
        if kwargs:
            raise ValueError(f"sampler options {sorted(kwargs)} only apply when sampler is a name")
        return name
    if not isinstance(name, str):
        raise TypeError(f"sampler must be a name, one of {', '.join(SAMPLERS)}, or a Sampler instance, got {name!r} "
                        f"({type(name).__name__}); pass e.g. sampler='ddim'")
    key = name.lower()
    if key not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; use one of {', '.join(SAMPLERS)}")
    return SAMPLERS[key](schedule, parameterization, **kwargs)
