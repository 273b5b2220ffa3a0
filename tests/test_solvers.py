"""Few-step samplers (``ddpm_ref.solvers``): DPM-Solver++(2M) and Heun/Euler in Karras' σ-parametrisation.

What is proved here:

- **Against diffusers** (schedulers built from a config, nothing downloaded): ``dpm_solver_pp_2m_sample`` follows
  ``DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2, final_sigmas_type="zero")`` and
  ``karras_heun_sample`` follows ``HeunDiscreteScheduler``, state after state, to float32 tolerance (diffusers keeps
  its tables in float32), with and without x̂0 clipping, for every spacing and for 1 to 25 steps.
- **Identities**: Euler in (x̄, σ̄) is DDIM with η = 0; the first step of DPM-Solver++(2M) is a DDIM step.
- **Orders** on the exact ε* of known data (``GaussianMixtureOracle``): the error of the final sample shrinks like
  NFE⁻¹ for DDIM and like NFE⁻² for DPM-Solver++(2M) and Heun (fitted log-log slopes).
- **Usage**: determinism and the generator, inputs left alone, batch 1 and 1–2 steps, the number of model calls,
  one-line errors.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor

import ddpm_ref as R
from ddpm_ref import solvers as S
from tests._asserts import Recorder
from tests._fixtures import fixed_eps, gen, seed_schedule

T = 400


def mixture_oracle(s: R.NoiseSchedule) -> R.GaussianMixtureOracle:
    """Two overlapping Gaussian components of constant images: −0.4 (std 0.3, weight 0.4), +0.4 (std 0.4, 0.6)."""
    return R.GaussianMixtureOracle(s, [-0.4, 0.4], [0.3, 0.4], [0.4, 0.6])


def close(a: Tensor, b: Tensor, atol: float, rtol: float = 1e-4) -> None:
    torch.testing.assert_close(a.double(), b.double(), atol=atol, rtol=rtol)


# ------------------------------------------------------------------------------------------------ diffusers

diffusers = pytest.importorskip("diffusers")
MODELS = {"fixed": fixed_eps, "oracle": mixture_oracle(seed_schedule())}


def dpm_scheduler(spacing: str, clip: bool) -> diffusers.DPMSolverMultistepScheduler:
    """The configuration our sampler equals: data prediction (dpmsolver++), 2nd order, midpoint form, last jump to
    σ = 0; ``thresholding`` with ``sample_max_value=1`` is clipping to [−1, 1] (the quantile is clamped to 1)."""
    return diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=T, beta_start=1e-4, beta_end=0.02, beta_schedule="linear", prediction_type="epsilon",
        algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint", lower_order_final=True,
        final_sigmas_type="zero", timestep_spacing=spacing, thresholding=clip, sample_max_value=1.0)


@pytest.mark.parametrize("model", sorted(MODELS))
@pytest.mark.parametrize("spacing", ["trailing", "linspace", "leading"])
def test_dpm_solver_pp_2m_matches_diffusers(spacing: str, model: str) -> None:
    """Every state of the chain equals DPMSolverMultistepScheduler's to 1.5e-4 (states up to 8.4 in size).

    The worst difference seen, 8.8e-5, is diffusers' float32 rounding: its σ_0 = √(1 − ᾱ_0) comes from ᾱ_0 = 0.9999
    held in float32, which loses three of its seven digits to the cancellation (ours is float64); elsewhere ≤ 1.3e-5.

    diffusers' own "linspace" and "leading" grids differ from DDIM's, so those run on our timesteps
    (``set_timesteps(timesteps=...)``); "trailing" is the same grid and is checked with diffusers' own.
    """
    s, eps_model = seed_schedule(), MODELS[model]
    for clip in (False, True):
        for steps in (1, 2, 3, 10, 25):
            sched = dpm_scheduler(spacing, clip)
            ts = R.ddim_timesteps(T, steps, spacing)
            if spacing == "trailing":
                sched.set_timesteps(steps)
            else:
                sched.set_timesteps(timesteps=ts)
            assert sched.timesteps.tolist() == ts
            x_T = 1.5 * torch.randn(4, 3, 8, 8, generator=gen(steps))
            ours, frames = S.dpm_solver_pp_2m_sample(eps_model, s, x_T.shape, steps=steps, spacing=spacing, x_T=x_T,
                                                     clip_x0=clip, progress=False, return_intermediates=True)
            x = x_T.clone()
            for i, t in enumerate(sched.timesteps.tolist()):
                close(frames[t], x, atol=1.5e-4)
                x = sched.step(eps_model(x, torch.full((4,), t)), t, x).prev_sample
                if i == 0:  # the first step is first order: a DDIM step
                    close(x, R.ddim_step(eps_model, x_T, t, ts[1] if steps > 1 else -1, s, clip_x0=clip), atol=1.5e-4)
            close(ours, x, atol=1.5e-4)


@pytest.mark.parametrize("spacing", ["trailing", "linspace", "leading"])
def test_karras_heun_matches_diffusers(spacing: str) -> None:
    """Every Heun state equals HeunDiscreteScheduler's, 2·steps − 1 model calls at the same timesteps.

    diffusers integrates x̄ = x/√ᾱ from ``init_noise_sigma`` · noise, which for "trailing" is σ̄_max, not
    √(σ̄_max² + 1) = 1/√ᾱ_{ts[0]}: the check starts it from our x_T/√ᾱ_{ts[0]} instead.
    """
    s = seed_schedule()
    model = mixture_oracle(s)
    for clip in (False, True):
        for steps in (1, 2, 5, 20):
            sched = diffusers.HeunDiscreteScheduler(num_train_timesteps=T, beta_start=1e-4, beta_end=0.02,
                                                    beta_schedule="linear", timestep_spacing=spacing, clip_sample=clip)
            ts = R.ddim_timesteps(T, steps, spacing)
            if spacing == "trailing":
                sched.set_timesteps(steps)
            else:
                sched.set_timesteps(timesteps=ts)
            x_T = 1.5 * torch.randn(4, 3, 8, 8, generator=gen(steps))
            x_bar = x_T / float(s.sqrt_alpha_bars[ts[0]])
            calls = []
            for t in sched.timesteps:
                x = sched.scale_model_input(x_bar, t)  # x̄/√(σ̄² + 1) = x
                calls.append(int(t))
                x_bar = sched.step(model(x, torch.full((4,), int(t))), t, x_bar).prev_sample
            recorder = Recorder(model)
            ours = S.karras_heun_sample(recorder, s, x_T.shape, steps=steps, spacing=spacing, x_T=x_T, clip_x0=clip,
                                        progress=False)
            assert recorder.ts() == calls and len(calls) == 2 * steps - 1
            close(ours, x_bar, atol=5e-5)


# ------------------------------------------------------------------------------------------------ identities


@pytest.mark.parametrize("spacing", ["trailing", "linspace", "leading"])
def test_karras_euler_is_ddim(spacing: str) -> None:
    """x̄ + (σ̄' − σ̄)·ε̂ = x̂0 + σ̄'·ε̂: Euler's method in (x̄, σ̄) is DDIM with η = 0, clipped or not, to rounding."""
    s = seed_schedule()
    x_T = torch.randn(6, 1, 4, 4, generator=gen(3))
    for model in (fixed_eps, mixture_oracle(s)):
        for clip in (False, True):
            a = S.karras_euler_sample(model, s, x_T.shape, steps=12, spacing=spacing, x_T=x_T, clip_x0=clip,
                                      progress=False)
            b = R.ddim_sample(model, s, x_T.shape, steps=12, spacing=spacing, x_T=x_T, clip_x0=clip, progress=False)
            close(a, b, atol=1e-5)


def test_one_step_of_each_is_ddim() -> None:
    """With one step every sampler returns x̂0(x_T, T − 1), as one DDIM step to ᾱ = 1 does."""
    s = seed_schedule()
    x_T = torch.randn(3, 1, 4, 4, generator=gen(4))
    ddim = R.ddim_sample(fixed_eps, s, x_T.shape, steps=1, x_T=x_T, progress=False)
    for fn in (S.dpm_solver_pp_2m_sample, S.karras_heun_sample, S.karras_euler_sample):
        close(fn(fixed_eps, s, x_T.shape, steps=1, x_T=x_T, progress=False), ddim, atol=1e-6)


# ------------------------------------------------------------------------------------------------ orders

ORDER_T = 1000  # the paper's linear schedule (β 1e-4 … 0.02): ᾱ_{T−1} = 4e-5, pure noise
#: steps per sampler, chosen where each is in its asymptotic regime (DPM-Solver++(2M) on a grid uniform in t
#: overshoots at 16–32 steps, where its x̂0 extrapolation in λ straddles the data's scale)
ORDER_STEPS = {"DDIM": (16, 32, 64, 128, 256), "DPM-Solver++(2M)": (64, 128, 256), "Heun": (8, 16, 32, 64, 128)}


def _samplers(model, s, x_T: Tensor, spacing: str = "linspace") -> dict:
    kw = dict(x_T=x_T, clip_x0=False, progress=False, spacing=spacing)
    return {"DDIM": lambda n: R.ddim_sample(model, s, x_T.shape, steps=n, **kw),
            "DPM-Solver++(2M)": lambda n: S.dpm_solver_pp_2m_sample(model, s, x_T.shape, steps=n, **kw),
            "Heun": lambda n: S.karras_heun_sample(model, s, x_T.shape, steps=n, **kw)}


def _rmse(a: Tensor, b: Tensor) -> float:
    return float((a - b).pow(2).mean().sqrt())


def _slope(nfe: list[int], err: list[float]) -> float:
    """The least-squares slope of log(error) against log(NFE)."""
    return float(np.polyfit(np.log(nfe), np.log(err), 1)[0])


def _errors(model, s, x_T: Tensor, ref: Tensor) -> dict[str, tuple[list[int], list[float]]]:
    out = {}
    for name, fn in _samplers(model, s, x_T).items():
        steps = ORDER_STEPS[name]
        nfe = [2 * n - 1 if name == "Heun" else n for n in steps]
        out[name] = (nfe, [_rmse(fn(n), ref) for n in steps])
    return out


def _expect_orders(errors: dict[str, tuple[list[int], list[float]]]) -> None:
    slopes = {name: _slope(*v) for name, v in errors.items()}
    report = {name: (round(slopes[name], 3), [f"{e:.2e}" for e in v[1]]) for name, v in errors.items()}
    assert -1.1 < slopes["DDIM"] < -0.9, report
    assert -2.2 < slopes["DPM-Solver++(2M)"] < -1.8, report
    assert -2.2 < slopes["Heun"] < -1.85, report
    # at about 255 model calls the second-order solvers are ahead of DDIM by far
    ddim_255 = errors["DDIM"][1][-1]
    assert errors["DPM-Solver++(2M)"][1][-1] < ddim_255 / 3 and errors["Heun"][1][-1] < ddim_255 / 15, report


def test_orders_on_gaussian_data_against_the_exact_solution() -> None:
    """Data N(0.3, 0.5²) per pixel: the probability-flow ODE is solved in closed form,
    x̄(σ̄) = μ + (x̄_T − μ)·√(s² + σ̄²)/√(s² + σ̄_T²), so the reference is exact: x at t = 0, then the jump to ᾱ = 1
    that every sampler takes from there (x̂0 at t = 0; "linspace" ends every grid at t = 0).

    Measured (256 samples × 4 pixels, float64): DDIM slope −0.99 (NFE 16–256), DPM-Solver++(2M) −2.03 (64–256),
    Heun −2.03 (NFE 15–255).
    """
    s = R.NoiseSchedule(R.linear_beta_schedule(ORDER_T))
    mu, std = 0.3, 0.5
    model = R.GaussianMixtureOracle(s, [mu], [std])
    x_T = torch.randn(256, 4, generator=gen(0), dtype=torch.float64)
    sig = S.karras_sigmas(s)
    x_bar_0 = mu + (x_T / s.sqrt_alpha_bars[-1] - mu) * (std**2 + sig[0] ** 2).sqrt() / (std**2 + sig[-1] ** 2).sqrt()
    x_0 = s.sqrt_alpha_bars[0] * x_bar_0
    exact = R.predict_x0(x_0, 0, model(x_0, torch.zeros(256, dtype=torch.long)), s)
    # the fine solution used as the reference for mixtures below is itself this close to the exact one
    fine = S.karras_heun_sample(model, s, x_T.shape, steps=ORDER_T, x_T=x_T, clip_x0=False, progress=False,
                                spacing="linspace")
    assert _rmse(fine, exact) < 1e-5
    _expect_orders(_errors(model, s, x_T, exact))


def test_orders_on_a_mixture_against_a_fine_solution() -> None:
    """Data = a two-component mixture (``mixture_oracle``): no closed form, so the reference is Heun over all
    T = 1000 timesteps (1999 calls; on Gaussian data it is within 1e-5 of the exact solution, and here within 1e-4 of
    DPM-Solver++(2M) over all timesteps, 10× below the smallest error fitted).

    Measured: DDIM slope −0.99, DPM-Solver++(2M) −1.95 (64–256 steps), Heun −2.0 (NFE 15–255).
    """
    s = R.NoiseSchedule(R.linear_beta_schedule(ORDER_T))
    model = mixture_oracle(s)
    x_T = torch.randn(256, 4, generator=gen(0), dtype=torch.float64)
    kw = dict(x_T=x_T, clip_x0=False, progress=False, spacing="linspace")
    ref = S.karras_heun_sample(model, s, x_T.shape, steps=ORDER_T, **kw)
    errors = _errors(model, s, x_T, ref)
    assert _rmse(S.dpm_solver_pp_2m_sample(model, s, x_T.shape, steps=ORDER_T, **kw), ref) < 1e-4
    assert min(e for _, err in errors.values() for e in err) > 2e-4
    _expect_orders(errors)


def test_trailing_grid_makes_the_last_jump_first_order() -> None:
    """With "trailing" the last visited timestep is T/steps − 1, and the jump from there to ᾱ = 1 costs O(1/steps):
    against the ODE's exact end point (σ̄ = 0), Heun's error falls like steps^−1.2 from 125 to 500 steps, where on
    "linspace" (the test above) it falls like NFE⁻²."""
    s = R.NoiseSchedule(R.linear_beta_schedule(ORDER_T))
    mu, std = 0.3, 0.5
    model = R.GaussianMixtureOracle(s, [mu], [std])
    x_T = torch.randn(256, 4, generator=gen(0), dtype=torch.float64)
    sig = float(S.karras_sigmas(s)[-1])
    exact = mu + (x_T / s.sqrt_alpha_bars[-1] - mu) * std / (std**2 + sig**2) ** 0.5
    heun = _samplers(model, s, x_T, spacing="trailing")["Heun"]
    steps = [125, 250, 500]
    errors = [_rmse(heun(n), exact) for n in steps]
    assert -1.4 < _slope(steps, errors) < -0.9, errors


# ------------------------------------------------------------------------------------------------ usage

SAMPLERS = {"dpm_solver_pp_2m_sample": S.dpm_solver_pp_2m_sample, "karras_heun_sample": S.karras_heun_sample,
            "karras_euler_sample": S.karras_euler_sample}


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_generator_determinism_and_inputs_left_alone(name: str) -> None:
    """Same seed, same samples; another seed, others; torch's global random state untouched; x_T not changed."""
    fn, s = SAMPLERS[name], seed_schedule()
    state = torch.random.get_rng_state()
    a = fn(fixed_eps, s, (3, 1, 4, 4), steps=5, generator=gen(0), progress=False)
    b = fn(fixed_eps, s, (3, 1, 4, 4), steps=5, generator=gen(0), progress=False)
    c = fn(fixed_eps, s, (3, 1, 4, 4), steps=5, generator=gen(1), progress=False)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(a, b) and not torch.equal(a, c)
    x_T = torch.randn(3, 1, 4, 4, generator=gen(2))
    kept = x_T.clone()
    d = fn(fixed_eps, s, x_T.shape, steps=5, x_T=x_T, progress=False)
    assert torch.equal(x_T, kept) and torch.equal(d, fn(fixed_eps, s, x_T.shape, steps=5, x_T=kept, progress=False))
    assert torch.equal(torch.random.get_rng_state(), state)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_small_inputs_and_model_calls(name: str) -> None:
    """Batch 1 and 1–2 steps work; the model is called at ddim_timesteps (Heun: again at each next one, but not at
    the clean end); NFE: steps for DPM-Solver++ and Euler, 2·steps − 1 for Heun."""
    fn, s = SAMPLERS[name], seed_schedule()
    for steps in (1, 2, 7):
        model = Recorder(fixed_eps)
        x, frames = fn(model, s, (1, 1, 2, 2), steps=steps, generator=gen(steps), progress=False,
                       return_intermediates=True)
        assert x.shape == (1, 1, 2, 2) and x.dtype == torch.float32 and bool(torch.isfinite(x).all())
        ts = R.ddim_timesteps(T, steps)
        assert list(frames) == ts
        expected = [ts[0]] + [t for t in ts[1:] for _ in range(2)] if name == "karras_heun_sample" else ts
        assert model.ts() == expected, (model.ts(), expected)


def test_step_functions() -> None:
    """The multistep state: ``last=(t, x̂0)`` from the step before gives the second-order step, and without it the
    step is DDIM's; the Heun step without its corrector is DDIM's step too."""
    s = seed_schedule()
    x = 2 * torch.randn(2, 1, 4, 4, generator=gen(7))
    first, x0 = S.dpm_solver_pp_2m_step(fixed_eps, x, 399, 299, s)
    close(first, R.ddim_step(fixed_eps, x, 399, 299, s), atol=1e-5)
    close(S.karras_heun_step(fixed_eps, x, 399, 299, s, second_order=False), R.ddim_step(fixed_eps, x, 399, 299, s),
          atol=1e-5)
    second, _ = S.dpm_solver_pp_2m_step(fixed_eps, first, 299, 199, s, last=(399, x0))
    plain, _ = S.dpm_solver_pp_2m_step(fixed_eps, first, 299, 199, s)
    assert not torch.allclose(second, plain)
    final, x0_last = S.dpm_solver_pp_2m_step(fixed_eps, second, 199, -1, s, last=(299, x0))
    assert torch.equal(final, x0_last) and float(final.abs().max()) <= 1.0


@pytest.mark.parametrize("call, error, match", [
    (lambda s: S.dpm_solver_pp_2m_sample(fixed_eps, s, (1, 1, 2, 2), steps=0), ValueError, "between 1 and T=400"),
    (lambda s: S.karras_heun_sample(fixed_eps, s, (1, 1, 2, 2), steps=401), ValueError, "between 1 and T=400"),
    (lambda s: S.karras_euler_sample(fixed_eps, s, (1, 1, 2, 2), steps=2.5), TypeError, "steps must be an int"),
    (lambda s: S.dpm_solver_pp_2m_sample(fixed_eps, s, (1, 1, 2, 2), steps=True), TypeError, "steps must be an int"),
    (lambda s: S.karras_heun_sample(fixed_eps, s, (1, 1, 2, 2), spacing="uniform"), ValueError, "spacing must be"),
    (lambda s: S.dpm_solver_pp_2m_step(fixed_eps, torch.zeros(1, 1, 2, 2), 10, 10, s), ValueError, "t_prev < t"),
    (lambda s: S.karras_heun_step(fixed_eps, torch.zeros(1, 1, 2, 2), 400, 3, s), ValueError, "t_prev < t"),
    (lambda s: S.dpm_solver_pp_2m_step(fixed_eps, torch.zeros(1, 1, 2, 2), 10, 5, s, last=(8, torch.zeros(1))),
     ValueError, "last step's timestep"),
])
def test_bad_arguments_raise_one_line_errors(call, error, match: str) -> None:
    with pytest.raises(error, match=match) as info:
        call(seed_schedule())
    assert "\n" not in str(info.value)
