# Copyright 2026 The diffusers-pixeldit authors. Licensed under the Apache License, Version 2.0.
"""Sampling helpers shared by the PixelDiT pipelines: timestep grids, per-call timeshift, the CFG interval."""

import inspect

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin


# The config key holding the timeshift, by scheduler family.
_SHIFT_KEYS = ("shift", "flow_shift")


def scheduler_with_shift(scheduler: SchedulerMixin, shift: float | None) -> SchedulerMixin:
    """`scheduler` itself, or (for a per-call `shift`) a copy of it with that timeshift; the pipeline's own scheduler
    is left untouched."""
    if shift is None:
        return scheduler
    key = next((key for key in _SHIFT_KEYS if key in scheduler.config), None)
    if key is None:
        raise ValueError(f"{type(scheduler).__name__} has no timeshift setting (`shift` or `flow_shift`).")
    if shift <= 0:
        raise ValueError(f"`shift` must be positive, got {shift}.")
    return type(scheduler).from_config(scheduler.config, **{key: shift})


def set_flow_timesteps(
    scheduler: SchedulerMixin,
    num_inference_steps: int,
    device: torch.device,
    sigmas: list[float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sets the scheduler's grid and returns `(timesteps, sigmas)`, `sigmas[i]` being the σ of `timesteps[i]`.

    Without custom `sigmas`, `FlowMatchEulerDiscreteScheduler` gets the unshifted uniform grid
    `linspace(1, 1/N, N)` and applies its own shift: the official PixelDiT Euler grid. Other schedulers build their
    own grid (`PixelDiTFlowScheduler`: the official one).
    """
    accepts_sigmas = "sigmas" in inspect.signature(scheduler.set_timesteps).parameters
    if sigmas is not None and not accepts_sigmas:
        raise ValueError(f"{type(scheduler).__name__} does not accept custom `sigmas`.")
    if sigmas is None and isinstance(scheduler, FlowMatchEulerDiscreteScheduler):
        sigmas = np.linspace(1.0, 1 / num_inference_steps, num_inference_steps)
    if sigmas is not None:
        scheduler.set_timesteps(sigmas=sigmas, device=device)
    else:
        scheduler.set_timesteps(num_inference_steps, device=device)
    return scheduler.timesteps, scheduler.sigmas


def check_guidance_interval(guidance_interval) -> tuple[float, float]:
    if len(guidance_interval) != 2 or not 0 <= guidance_interval[0] <= guidance_interval[1]:
        raise ValueError(f"`guidance_interval` must be (low, high) with 0 <= low <= high, got {guidance_interval}.")
    return float(guidance_interval[0]), float(guidance_interval[1])


def in_guidance_interval(sigma: torch.Tensor | float, guidance_interval: tuple[float, float]) -> bool:
    """Whether CFG applies at noise level σ: `low < t < high` (strict) with the model-card time `t = 1 − σ`.

    As in the official samplers, the bounds are rounded to float32; `1 − σ` is formed in float64, which is exact for
    float32 grids and for `PixelDiTFlowScheduler`'s float64 complement of the official float32 grid, so decisions on
    grid points equal the official ones.
    """
    low, high = (float(np.float32(bound)) for bound in guidance_interval)
    return low < 1.0 - float(sigma) < high
