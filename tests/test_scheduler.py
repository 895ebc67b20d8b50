import json

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from pixeldit_testing import FIXTURES

from diffusers_pixeldit import PixelDiTFlowScheduler
from diffusers_pixeldit.pipelines.denoising import check_guidance_interval, in_guidance_interval


def guided_steps(scheduler, interval):
    return [i for i, sigma in enumerate(scheduler.sigmas[:-1]) if in_guidance_interval(sigma, interval)]


@pytest.mark.parametrize(
    "num_steps, interval, first, last",
    [(100, (0.1, 0.9), 11, 89), (100, (0.1, 1.0), 11, 99), (50, (0.1, 0.9), 6, 44), (20, (0.1, 0.9), 3, 17),
     (10, (0.1, 0.9), 2, 8)],
)  # fmt: skip
def test_cfg_interval_decisions_match_the_official_float32_grid(num_steps, interval, first, last):
    # The guided step indices the official C2I sampler produces with shift 1 (its float32 grid and strict tests).
    scheduler = PixelDiTFlowScheduler(shift=1.0)
    scheduler.set_timesteps(num_steps)
    assert guided_steps(scheduler, interval) == list(range(first, last + 1))


def test_float64_grid_would_decide_differently():
    # 1 - σ from a float64 σ grid puts t_18 just below 0.9: the official float32 grid does not guide step 18.
    sigmas = np.linspace(1.0, 1 / 20, 20)
    naive = [i for i, sigma in enumerate(sigmas) if 0.1 < 1 - sigma < 0.9]
    assert naive == list(range(3, 19))
    scheduler = PixelDiTFlowScheduler()
    scheduler.set_timesteps(20)
    assert guided_steps(scheduler, (0.1, 0.9)) == list(range(3, 18))


def test_grid_is_the_official_shifted_float32_grid():
    scheduler = PixelDiTFlowScheduler(shift=3.0)
    scheduler.set_timesteps(8)
    t = torch.cat([torch.linspace(0.0, 1 - 1 / 8, 8), torch.ones(1)])
    t = t / (t + (1 - t) * 3.0)
    assert scheduler.sigmas.dtype == torch.float64
    assert torch.equal(1 - scheduler.sigmas, t.double())  # exact complement of the float32 grid
    assert torch.equal(scheduler.timesteps, (scheduler.sigmas[:-1] * 1000).float())
    assert scheduler.sigmas[0] == 1 and scheduler.sigmas[-1] == 0
    # the same grid in σ: shift·σ / (1 + (shift − 1)·σ) of linspace(1, 1/N, N), as diffusers' FlowMatch schedulers
    euler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    euler.set_timesteps(sigmas=np.linspace(1.0, 1 / 8, 8))
    torch.testing.assert_close(euler.sigmas.double(), scheduler.sigmas, rtol=0, atol=2e-7)


def test_no_float64_on_the_device():
    # Devices without float64 (MPS): the exact float64 σ grid stays on the CPU; what the step uses is float32.
    scheduler = PixelDiTFlowScheduler(shift=2.0)
    scheduler.set_timesteps(4, device="meta")
    assert scheduler.sigmas.device.type == "cpu" and scheduler.sigmas.dtype == torch.float64
    assert scheduler.timesteps.device.type == "meta" and scheduler.timesteps.dtype == torch.float32
    scheduler.set_begin_index(0)
    sample = torch.empty(1, 3, 4, 4, device="meta")
    assert scheduler.step(sample, scheduler.timesteps[0], sample).prev_sample.device.type == "meta"


def test_shift_takes_effect_and_round_trips(tmp_path):
    scheduler = PixelDiTFlowScheduler()
    scheduler.set_timesteps(4)
    unshifted = scheduler.sigmas.clone()
    scheduler.set_shift(2.0)
    scheduler.set_timesteps(4)
    assert scheduler.shift == 2.0 and (scheduler.sigmas[1:-1] > unshifted[1:-1]).all()

    PixelDiTFlowScheduler(shift=2.5, solver="euler").save_pretrained(tmp_path)
    loaded = PixelDiTFlowScheduler.from_pretrained(tmp_path)
    assert (loaded.shift, loaded.config.solver) == (2.5, "euler")
    assert PixelDiTFlowScheduler.from_config(loaded.config, shift=4.0).shift == 4.0


@pytest.mark.parametrize("solver", ["adams_bashforth", "euler"])
def test_step_rule(solver):
    scheduler = PixelDiTFlowScheduler(shift=2.0, solver=solver)
    scheduler.set_timesteps(5)
    t = (1 - scheduler.sigmas).float()  # the official float32 grid, exactly
    x = torch.randn(2, 3, 4, 4)
    velocities = [torch.randn(2, 3, 4, 4) for _ in range(3)]
    expected, previous = x.clone(), None
    for i, (timestep, velocity) in enumerate(zip(scheduler.timesteps, velocities)):
        dt = t[i + 1] - t[i]
        # official: x += dt · v_official with v_official = x0 - noise = -velocity
        if solver == "euler" or previous is None:
            expected = expected + (-velocity) * dt
        else:
            expected = expected + dt * (1.5 * (-velocity) - 0.5 * (-previous))
        previous = velocity
        x = scheduler.step(velocity, timestep, x).prev_sample
        assert torch.equal(x, expected)
    assert scheduler.step_index == 3


def test_custom_sigmas_and_invalid_arguments():
    scheduler = PixelDiTFlowScheduler()
    scheduler.set_timesteps(sigmas=[1.0, 0.5, 0.25])
    torch.testing.assert_close(scheduler.sigmas, torch.tensor([1.0, 0.5, 0.25, 0.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="`solver` must be one of"):
        PixelDiTFlowScheduler(solver="dpm")
    with pytest.raises(ValueError, match="`time_grid` must be one of"):
        PixelDiTFlowScheduler(time_grid="cosine")
    with pytest.raises(ValueError, match="positive"):
        PixelDiTFlowScheduler(shift=0.0)
    with pytest.raises(ValueError, match="positive integer"):
        scheduler.set_timesteps(0)
    with pytest.raises(ValueError, match=r"values in \(0, 1\]"):
        scheduler.set_timesteps(sigmas=[1.5, 0.5])
    with pytest.raises(ValueError, match="set_timesteps"):
        PixelDiTFlowScheduler().step(torch.zeros(1), 1000.0, torch.zeros(1))
    with pytest.raises(ValueError, match="low <= high"):
        check_guidance_interval((0.9, 0.1))


def test_uniform_grid_is_the_pixeldit2_float32_grid():
    # PixelDiT2: linspace(0, 1, N + 1) in float32 with no timeshift (the fixture's own grid)
    meta = json.loads((FIXTURES / "pixeldit2_tiny" / "meta.json").read_text())
    scheduler = PixelDiTFlowScheduler(solver="euler", time_grid="uniform")
    scheduler.set_timesteps(meta["sampler"]["num_steps"])
    assert torch.equal((1 - scheduler.sigmas).float(), torch.tensor(meta["time_grid"]))
    assert torch.equal(1 - scheduler.sigmas, torch.linspace(0.0, 1.0, 25).double())
    shifted = PixelDiTFlowScheduler(solver="euler", time_grid="uniform", shift=2.0)
    shifted.set_timesteps(24)
    assert (shifted.sigmas[1:-1] > scheduler.sigmas[1:-1]).all()


def test_heun_step_rule_with_a_final_euler_step():
    scheduler = PixelDiTFlowScheduler(solver="heun", time_grid="uniform")
    scheduler.set_timesteps(3)
    t = torch.linspace(0.0, 1.0, 4)
    # one entry per model evaluation: t0, t1 (corrector), t1, t2 (corrector), t2 (final Euler)
    assert scheduler.order == 2 and len(scheduler.timesteps) == 5
    assert torch.equal(scheduler.timesteps, ((1 - t[[0, 1, 1, 2, 2]].double()) * 1000).float())
    assert torch.equal(scheduler.sigmas, 1 - t[[0, 1, 1, 2, 2, 3]].double())
    x = torch.randn(2, 3, 4, 4)
    velocities = [torch.randn(2, 3, 4, 4) for _ in range(5)]
    sample, expected, start = x, x, x
    for k, (timestep, velocity) in enumerate(zip(scheduler.timesteps, velocities)):
        sample = scheduler.step(velocity, timestep, sample).prev_sample
        i, corrector = divmod(k, 2)
        dt = t[i + 1] - t[i]
        # official (v_official = −velocity): x + dt·v, then x + dt·0.5·(v + v_next) from the start of the step
        if corrector:
            expected = start + dt * 0.5 * (-velocities[k - 1] - velocity)
        else:
            start = expected
            expected = start + dt * -velocity
        assert torch.equal(sample, expected), k
