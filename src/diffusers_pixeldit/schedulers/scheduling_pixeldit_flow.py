# Copyright 2026 The diffusers-pixeldit authors. Licensed under the Apache License, Version 2.0.
"""The samplers of the official PixelDiT and PixelDiT2 class-conditional releases, as a diffusers scheduler."""

from dataclasses import dataclass

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput


SOLVERS = ("adams_bashforth", "euler", "heun")
TIME_GRIDS = ("pixeldit", "uniform")


@dataclass
class PixelDiTFlowSchedulerOutput(BaseOutput):
    """prev_sample (`torch.Tensor` of shape `(B, C, H, W)`): the sample at the next (less noisy) grid point, or Heun's
    predictor point."""

    prev_sample: torch.Tensor


class PixelDiTFlowScheduler(SchedulerMixin, ConfigMixin):
    """Flow-matching ODE sampler on the official PixelDiT / PixelDiT2 grids.

    Solvers:
    - `"adams_bashforth"`: the PixelDiT ImageNet model cards' "FlowDPMSolver": a first Euler step, then the 2-step
      Adams–Bashforth update `x += dt · (1.5 v_i − 0.5 v_{i−1})` with constant coefficients;
    - `"euler"`: Euler steps;
    - `"heun"`: Heun's predictor–corrector (trapezoidal) steps and a final Euler step, the PixelDiT2 model cards'
      sampler (`GroundedHeunSampler`): 2N − 1 model evaluations for N steps. Like diffusers'
      `FlowMatchHeunDiscreteScheduler`, `timesteps` then lists each evaluation (`[t0, t1, t1, …, t_{N−1}, t_{N−1}]`)
      and `sigmas` is aligned with it.

    Grids, built in float32 in the data time `t = 1 − σ`: `time_grid="pixeldit"` (PixelDiT): `linspace(0, 1 − 1/N, N)`
    then 1.0 appended, then always the timeshift `t' = t / (t + (1 − t) · shift)` (σ' = shift·σ / (1 + (shift − 1)·σ));
    `"uniform"` (PixelDiT2): `linspace(0, 1, N + 1)`, shifted the same way only when `shift` ≠ 1 (its official sampler
    has no timeshift). The `sigmas` are `1 − t'` held in float64 on the CPU (as diffusers' schedulers keep theirs;
    devices without float64, such as MPS, never hold them), which is exact, so that the strict CFG-interval tests
    `lo < 1 − σ < hi` reproduce the official float32 decisions on grid points. `timesteps` (σ·1000) and the float32
    step sizes of the official samplers are on `device`.

    Args:
        num_train_timesteps (`int`, defaults to 1000): scale of the model's time input (`timestep = σ · 1000`).
        shift (`float`, defaults to 1.0): the timeshift; changeable with `set_shift`.
        solver (`str`, defaults to `"adams_bashforth"`): one of `SOLVERS`.
        time_grid (`str`, defaults to `"pixeldit"`): one of `TIME_GRIDS`.
    """

    _compatibles = []

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        shift: float = 1.0,
        solver: str = "adams_bashforth",
        time_grid: str = "pixeldit",
    ):
        if solver not in SOLVERS:
            raise ValueError(f"`solver` must be one of {SOLVERS}, got {solver!r}.")
        if time_grid not in TIME_GRIDS:
            raise ValueError(f"`time_grid` must be one of {TIME_GRIDS}, got {time_grid!r}.")
        if shift <= 0:
            raise ValueError(f"`shift` must be positive, got {shift}.")
        self._shift = shift
        self.num_inference_steps = None
        self.timesteps = None
        self.sigmas = None
        self._step_index = None
        self._begin_index = None
        self._previous_velocity = None
        self._previous_sample = None

    @property
    def order(self) -> int:
        """Model evaluations per step (2 for Heun)."""
        return 2 if self.config.solver == "heun" else 1

    @property
    def shift(self) -> float:
        return self._shift

    @property
    def step_index(self) -> int | None:
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        return self._begin_index

    def set_shift(self, shift: float):
        """Sets the timeshift used by the next `set_timesteps`."""
        if shift <= 0:
            raise ValueError(f"`shift` must be positive, got {shift}.")
        self._shift = shift

    def set_begin_index(self, begin_index: int = 0):
        self._begin_index = begin_index

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        sigmas: list[float] | None = None,
    ):
        """Builds the shifted grid of `num_inference_steps` steps, or from custom unshifted `sigmas` (descending, in
        (0, 1]; a final σ = 0 is appended and the shift applied as for the default grid)."""
        if sigmas is not None:
            data_time = 1 - torch.as_tensor(sigmas, dtype=torch.float32)
            if num_inference_steps is not None and num_inference_steps != len(data_time):
                raise ValueError(f"{len(data_time)} sigmas given for num_inference_steps={num_inference_steps}.")
            if data_time.ndim != 1 or not ((data_time >= 0) & (data_time < 1)).all():
                raise ValueError(f"`sigmas` must be a 1-D list of values in (0, 1], got {sigmas}.")
            data_time = torch.cat([data_time, torch.ones(1)])
        elif num_inference_steps is None or num_inference_steps < 1:
            raise ValueError(f"`num_inference_steps` must be a positive integer, got {num_inference_steps}.")
        elif self.config.time_grid == "uniform":
            data_time = torch.linspace(0.0, 1.0, num_inference_steps + 1)
        else:
            data_time = torch.cat(
                [torch.linspace(0.0, 1 - 1 / num_inference_steps, num_inference_steps), torch.ones(1)]
            )
        if self.config.time_grid == "pixeldit" or self.shift != 1:
            data_time = data_time / (data_time + (1 - data_time) * self.shift)

        self.num_inference_steps = len(data_time) - 1
        grid_sigmas = 1 - data_time.double()
        if self.config.solver == "heun":  # one entry per model evaluation, as FlowMatchHeunDiscreteScheduler
            grid_sigmas = torch.cat([grid_sigmas[:1], grid_sigmas[1:-1].repeat_interleave(2), grid_sigmas[-1:]])
        self.sigmas = grid_sigmas
        self.timesteps = (self.sigmas[:-1] * self.config.num_train_timesteps).float().to(device)
        self._step_sizes = (data_time[1:] - data_time[:-1]).to(device)  # float32 dt of the official samplers
        self._step_index = None
        self._begin_index = None
        self._previous_velocity = None
        self._previous_sample = None

    def index_for_timestep(self, timestep: float | torch.Tensor) -> int:
        indices = (self.timesteps == torch.as_tensor(timestep, device=self.timesteps.device)).nonzero()
        if len(indices) == 0:
            raise ValueError(f"Timestep {timestep} is not on the grid {self.timesteps.tolist()}.")
        return indices[0].item()

    def scale_noise(self, sample: torch.Tensor, timestep: float | torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The flow's forward process `σ · noise + (1 − σ) · sample` at the σ of `timestep`, as diffusers'
        `FlowMatchEulerDiscreteScheduler.scale_noise`: before the first step the σ of the begin index (img2img's
        starting point), after a step the σ of the current index (an inpainting pipeline's known region), and
        without a begin index the σ of `timestep` on the grid.

        Args:
            sample (`torch.Tensor` of shape `(B, C, H, W)`): the clean images.
            timestep (`float` or `torch.Tensor`): an entry of `timesteps` (only looked up without a begin index).
            noise (`torch.Tensor` of shape `(B, C, H, W)`): the noise.
        """
        if self.timesteps is None:
            raise ValueError("Call `set_timesteps` before `scale_noise`.")
        if self._step_index is not None:
            index = self._step_index
        elif self._begin_index is not None:
            index = self._begin_index
        else:
            index = self.index_for_timestep(torch.as_tensor(timestep).flatten()[0])
        # the σ of the grid, held in float64 on the CPU: cast on the CPU, then moved (no read back from a device)
        sigma = self.sigmas[index].to(sample.dtype).to(sample.device)
        return sigma * noise + (1.0 - sigma) * sample

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        return_dict: bool = True,
    ) -> PixelDiTFlowSchedulerOutput | tuple[torch.Tensor]:
        """One step from grid point i to i + 1 (for Heun: to the predictor point, then with the corrector).

        Args:
            model_output (`torch.Tensor` of shape `(B, C, H, W)`): the (guided) velocity `noise − x0` at `timestep`.
            timestep: the current entry of `timesteps`.
            sample (`torch.Tensor` of shape `(B, C, H, W)`): the sample `timestep` belongs to.

        Returns:
            The next sample, computed in float32 and returned in `sample`'s dtype.
        """
        if self.timesteps is None:
            raise ValueError("Call `set_timesteps` before `step`.")
        if self._step_index is None:
            self._step_index = self.index_for_timestep(timestep) if self._begin_index is None else self._begin_index
        velocity = model_output.float()
        # The official samplers move along x0 − noise = −velocity with dt = t'_{i+1} − t'_i > 0.
        if self.config.solver == "heun":
            interval, corrector = divmod(self._step_index, 2)
            step_size = self._step_sizes[interval]
            if corrector:
                prev_sample = self._previous_sample - (step_size * 0.5) * (self._previous_velocity + velocity)
                self._previous_sample = self._previous_velocity = None
            else:  # the predictor, or the final Euler step
                prev_sample = sample.float() - velocity * step_size
                self._previous_sample, self._previous_velocity = sample.float(), velocity
        else:
            step_size = self._step_sizes[self._step_index]
            if self.config.solver == "euler" or self._previous_velocity is None:
                prev_sample = sample.float() - velocity * step_size
            else:
                prev_sample = sample.float() - step_size * (1.5 * velocity - 0.5 * self._previous_velocity)
            self._previous_velocity = velocity
        self._step_index += 1
        prev_sample = prev_sample.to(sample.dtype)
        if not return_dict:
            return (prev_sample,)
        return PixelDiTFlowSchedulerOutput(prev_sample=prev_sample)

    def __len__(self) -> int:
        return self.config.num_train_timesteps
