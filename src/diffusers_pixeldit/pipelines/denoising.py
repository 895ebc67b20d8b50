# Copyright 2026 The diffusers-pixeldit authors. Licensed under the Apache License, Version 2.0.
"""The sampling loop shared by every PixelDiT pipeline.

Why a mixin rather than diffusers' "# Copied from" copies: in-tree, diffusers keeps one self-contained file per
pipeline and its `make fix-copies` tooling keeps the copies identical. This package is out of tree, without that
tooling, and its most delicate logic — the official float32 CFG-interval decisions, skipping the unconditional
branch outside the interval, the float32 state under a half-precision transformer, the per-call timeshift — must
not drift between pipelines. So it is written once here; each pipeline inherits it and keeps only what is its own:
how its condition is encoded (class labels, prompts, grounding) and how the two CFG branches are fed.
"""

import contextlib
import inspect
import textwrap
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.hooks import (
    FasterCacheConfig,
    FirstBlockCacheConfig,
    MagCacheConfig,
    PyramidAttentionBroadcastConfig,
    TaylorSeerCacheConfig,
)
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import logging
from diffusers.utils.torch_utils import randn_tensor


if TYPE_CHECKING:
    from .editing import ImageEdit


logger = logging.get_logger(__name__)

# The `cache_context` names of the two batch layouts the loop feeds the transformer, as diffusers' pipelines that
# batch CFG name theirs: `[unconditional, conditional]` and conditional only.
CFG_BATCH_CONTEXT = "cond_uncond"
CONDITIONAL_CONTEXT = "cond"
# The caches whose state is dropped when the batch layout changes mid-call (entering or leaving the CFG interval), so
# that the call keeps the interval's saving: the steps after the change are computed in full until the cache has a
# history again (TaylorSeer's `disable_cache_before_step` / `disable_cache_after_step` then count from the change).
# The others keep one layout for the whole call: MagCache (its `mag_ratios` are per step of the call), FasterCache
# (it takes every batch for `[unconditional, conditional]`) and caches unknown here.
LAYOUT_RESETTABLE_CACHES = (FirstBlockCacheConfig, PyramidAttentionBroadcastConfig, TaylorSeerCacheConfig)

# The config key holding the timeshift, by scheduler family.
SHIFT_KEYS = ("shift", "flow_shift")

# The `callback_on_step_end` of every pipeline: `callback(pipe, step_index, timestep, callback_kwargs) -> dict`.
StepEndCallback = Callable[[Any, int, torch.Tensor, dict], dict] | PipelineCallback | MultiPipelineCallbacks

# The documentation of the call arguments every PixelDiT pipeline takes, inserted in each `__call__` docstring where
# it says `{sampling_arguments}` (see `document_sampling_arguments`).
SAMPLING_ARGUMENTS_DOC = """\
height (`int`, *optional*), width (`int`, *optional*): image size in pixels, multiples of the patch size;
    default `transformer.config.sample_size`.
num_inference_steps (`int`, *optional*): number of sampling steps; default from the pipeline config.
sigmas (`list[float]`, *optional*): custom unshifted noise levels, for schedulers that accept them.
guidance_scale (`float`, *optional*): classifier-free guidance scale; default from the pipeline config.
guidance_interval (`tuple[float, float]`, *optional*): `(low, high)` in the model-card time t = 1 − σ
    (0 = noise, 1 = image): guidance applies while `low < t < high` (strict, on the shifted grid); outside it
    the unconditional branch is not computed. Default from the pipeline config.
shift (`float`, *optional*): timeshift for this call (the scheduler's own is used otherwise and restored after).
num_images_per_prompt (`int`, defaults to 1): images per condition.
generator (`torch.Generator` or a list, one per image, *optional*): for reproducible noise.
latents (`torch.Tensor` of shape `(B, C, H, W)`, *optional*): the initial (unit-variance) noise.
output_type (`str`, defaults to `"pil"`): `"pil"`, `"np"` or `"pt"` (in [0, 1]), or `"latent"` (the raw [-1, 1]
    pixels).
return_dict (`bool`, defaults to True): return an `ImagePipelineOutput` instead of a tuple.
attention_kwargs (`dict`, *optional*): passed to the transformer (e.g. `{"scale": 0.5}` for LoRA).
callback_on_step_end (`Callable`, *optional*): called after each step as
    `callback_on_step_end(self, i, t, callback_kwargs)`; tensors it returns replace the pipeline's.
callback_on_step_end_tensor_inputs (`list[str]`, defaults to `["latents"]`): tensors passed to it (any of the
    pipeline's `_callback_tensor_inputs`)."""


def document_sampling_arguments(call: Callable) -> Callable:
    """Inserts `SAMPLING_ARGUMENTS_DOC` at the `{sampling_arguments}` line of a `__call__` docstring."""
    marker = next(line for line in call.__doc__.splitlines() if line.strip() == "{sampling_arguments}")
    indent = marker[: len(marker) - len(marker.lstrip())]
    call.__doc__ = call.__doc__.replace(marker, textwrap.indent(SAMPLING_ARGUMENTS_DOC, indent))
    return call


# `model_inputs(state, guided)`: the transformer's conditioning kwargs for one step; with `guided` the batch holds the
# unconditional branch then the conditional one.
ModelInputs = Callable[[dict[str, Any], bool], dict[str, Any]]


def check_guidance_interval(guidance_interval) -> tuple[float, float]:
    if len(guidance_interval) != 2 or not 0 <= guidance_interval[0] <= guidance_interval[1]:
        raise ValueError(f"`guidance_interval` must be (low, high) with 0 <= low <= high, got {guidance_interval}.")
    return float(guidance_interval[0]), float(guidance_interval[1])


def in_guidance_interval(
    sigma: float, guidance_interval: tuple[float, float], zero_low_is_unbounded: bool = False
) -> bool:
    """Whether CFG applies at noise level σ: `low < t < high` (strict) with the model-card time `t = 1 − σ`.

    As in the official samplers, the bounds are rounded to float32; `1 − σ` is formed in float64, which is exact for
    float32 grids and for `PixelDiTFlowScheduler`'s float64 complement of the official float32 grid, so decisions on
    grid points equal the official ones. `zero_low_is_unbounded` (PixelDiT2's rule): `low = 0` means no lower bound.
    """
    low, high = (float(np.float32(bound)) for bound in guidance_interval)
    t = 1.0 - float(sigma)
    return (low < t or (zero_low_is_unbounded and low == 0)) and t < high


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
    if hasattr(scheduler, "set_begin_index"):
        # Sampling starts at the grid's first point: the scheduler need not search its grid for the first timestep
        # (a search whose answer the host reads: a device synchronisation at the first step).
        scheduler.set_begin_index(0)
    return scheduler.timesteps, scheduler.sigmas


def strength_start_step(num_inference_steps: int, strength: float) -> int:
    """The grid step image-to-image and inpainting start from, as diffusers' `get_timesteps`: the last
    `strength · num_inference_steps` steps run (rounded up, so that any `strength > 0` keeps a step)."""
    return int(max(num_inference_steps - min(num_inference_steps * strength, num_inference_steps), 0))


@contextlib.contextmanager
def scheduler_shift(scheduler: SchedulerMixin, shift: float | None) -> Iterator[SchedulerMixin]:
    """Gives `scheduler` the timeshift `shift` for the duration of the block (nothing for `None`), then its own back.

    The shift is set on the scheduler itself, so that the scheduler the loop steps with is `pipe.scheduler`, the one
    callbacks see; its config is what it was once the call ends.
    """
    if shift is None:
        yield scheduler
        return
    key = next((key for key in SHIFT_KEYS if key in scheduler.config), None)
    if key is None:
        raise ValueError(f"{type(scheduler).__name__} has no timeshift setting (`shift` or `flow_shift`).")
    if shift <= 0:
        raise ValueError(f"`shift` must be positive, got {shift}.")
    if hasattr(scheduler, "set_shift"):  # schedulers whose shift lives outside their config
        original, set_shift = scheduler.shift, scheduler.set_shift
    else:
        original = scheduler.config[key]

        def set_shift(value):
            scheduler.register_to_config(**{key: value})

    set_shift(shift)
    try:
        yield scheduler
    finally:
        set_shift(original)


class PixelDiTDenoisingMixin:
    """Latents, timesteps, the guided denoising loop and post-processing of the PixelDiT pipelines.

    A pipeline using it has `transformer` (taking `hidden_states`, `timestep` = σ·1000 and its conditioning kwargs,
    returning the velocity `noise − x0`), `scheduler`, `image_processor` and `_callback_tensor_inputs`, and sets the
    per-call state with `_start_call` before `denoise`.
    """

    # PixelDiT2's official sampler reads a guidance interval (0, high) as "no lower bound".
    _zero_low_is_unbounded = False
    # Whether the loop casts the (float32) latents to the transformer's dtype, or the transformer takes them as they
    # are (PixelDiT2 casts inside and keeps float32 for its velocity).
    _cast_model_input = True

    @property
    def guidance_scale(self):
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self):
        return self._guidance_scale > 1

    @property
    def attention_kwargs(self):
        return self._attention_kwargs

    @property
    def num_timesteps(self):
        return self._num_timesteps

    @property
    def current_timestep(self) -> float | None:
        """The timestep of the step being computed, the scheduler's (σ·1000, from 1000 at pure noise down to 0), as a
        Python float: what diffusers' caches expect from `current_timestep_callback=lambda: pipe.current_timestep`,
        read without a device synchronisation. None outside a call."""
        return self._current_timestep

    @property
    def interrupt(self):
        return self._interrupt

    def _start_call(self, guidance_scale: float | None, attention_kwargs: dict[str, Any] | None):
        """Sets the per-call state behind the properties (guidance scale, attention kwargs, interrupt flag)."""
        self._guidance_scale = self.config.default_guidance_scale if guidance_scale is None else guidance_scale
        self._attention_kwargs = attention_kwargs
        self._num_timesteps = None
        self._current_timestep = None
        self._interrupt = False

    def _start_cache(self, guided_steps: list[bool]) -> list[bool]:
        """Starts the transformer's cache (`transformer.enable_cache`), if any, for a call with these guided steps;
        returns, per step, whether the transformer gets the `[unconditional, conditional]` batch.

        Without a cache that is the guided steps: outside the CFG interval only the conditional branch runs. Cache
        states hold per-row tensors of the previous steps, so a cache must not see the batch size change under it:
        the caches of `LAYOUT_RESETTABLE_CACHES` are reset where it changes (in `denoise`), the others get the CFG
        batch at every step of a guided call, and only its conditional half is used outside the interval (which
        costs the unconditional rows of those steps).
        """
        cache_config = getattr(self.transformer, "_cache_config", None)
        if cache_config is None:
            return guided_steps
        self._reset_cache()  # a fresh state, also after an interrupted or failed call
        batched_steps = guided_steps
        if any(guided_steps) and not isinstance(cache_config, LAYOUT_RESETTABLE_CACHES):
            batched_steps = [True] * len(guided_steps)
        if isinstance(cache_config, FasterCacheConfig) and not cache_config.is_guidance_distilled:
            if not any(batched_steps):
                raise ValueError(
                    "FasterCache approximates the unconditional CFG branch, and this call has none (guidance_scale "
                    "<= 1 or no step in the guidance interval): enable it with `is_guidance_distilled=True`."
                )
        if isinstance(cache_config, MagCacheConfig) and cache_config.num_inference_steps != len(guided_steps):
            logger.warning(
                f"MagCacheConfig(num_inference_steps={cache_config.num_inference_steps}) but this call evaluates the "
                f"transformer {len(guided_steps)} times: its `mag_ratios` do not line up with the steps."
            )
        return batched_steps

    def _reset_cache(self):
        """Drops the state the transformer's cache hooks hold (diffusers' `_reset_stateful_cache`)."""
        if getattr(self.transformer, "_cache_config", None) is not None:
            self.transformer._reset_stateful_cache()

    def sampling_arguments(
        self, height, width, num_inference_steps, guidance_interval, callback_on_step_end_tensor_inputs
    ) -> tuple[int, int, int, tuple[float, float]]:
        """`(height, width, num_inference_steps, guidance_interval)` with the defaults of the transformer and the
        pipeline config filled in, checked."""
        height = height or self.transformer.config.sample_size
        width = width or self.transformer.config.sample_size
        num_inference_steps = num_inference_steps or self.config.default_num_inference_steps
        guidance_interval = guidance_interval or self.config.default_guidance_interval
        patch_size = self.transformer.config.patch_size
        if height % patch_size or width % patch_size:
            raise ValueError(
                f"`height` and `width` must be multiples of the patch size {patch_size}, got {height}x{width}."
            )
        check_guidance_interval(guidance_interval)
        unknown = [k for k in callback_on_step_end_tensor_inputs or [] if k not in self._callback_tensor_inputs]
        if unknown:
            raise ValueError(f"Callback tensor inputs {unknown} are not in {self._callback_tensor_inputs}.")
        return height, width, num_inference_steps, check_guidance_interval(guidance_interval)

    def get_timesteps(self, num_inference_steps: int, strength: float) -> tuple[torch.Tensor, int]:
        """diffusers' `get_timesteps`: the timesteps of the scheduler's grid from `strength_start_step` on, and the
        number of steps they make; the scheduler's begin index is set there (each step being `scheduler.order`
        entries of `timesteps`)."""
        start_step = strength_start_step(num_inference_steps, strength)
        start = start_step * self.scheduler.order
        if hasattr(self.scheduler, "set_begin_index"):
            self.scheduler.set_begin_index(start)
        return self.scheduler.timesteps[start:], num_inference_steps - start_step

    def prepare_latents(
        self, batch_size, height, width, device, generator, latents=None, noise_scale: float = 1.0
    ) -> torch.Tensor:
        """The float32 starting noise `(B, C, H, W)`: drawn with `generator`, or the given unit-variance `latents`,
        times `noise_scale` (the noise scale the model was trained with)."""
        shape = (batch_size, self.transformer.config.in_channels, height, width)
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(f"{len(generator)} generators were given for a batch of {batch_size} images.")
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"`latents` must have shape {shape}, got {tuple(latents.shape)}.")
        latents = latents.to(device=device, dtype=torch.float32)
        return latents * noise_scale if noise_scale != 1 else latents

    def denoise(
        self,
        state: dict[str, Any],
        model_inputs: ModelInputs,
        device: torch.device,
        num_inference_steps: int,
        guidance_interval: tuple[float, float],
        sigmas: list[float] | None = None,
        shift: float | None = None,
        callback_on_step_end: StepEndCallback | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ("latents",),
        edit: "ImageEdit | None" = None,
    ) -> torch.Tensor:
        """Integrates the flow from `state["latents"]` (σ = 1) to the image; returns the final latents.

        Args:
            state (`dict`): `latents` (`(B, C, H, W)`, float32) and the other tensors callbacks may read and replace
                (the pipeline's `_callback_tensor_inputs`); `model_inputs` reads the conditioning from it.
            model_inputs (`Callable[[dict, bool], dict]`): the transformer's conditioning kwargs for a step,
                for the batch `[unconditional, conditional]` when its second argument (guided) is True.
            num_inference_steps, sigmas, shift: the grid (custom unshifted `sigmas` for schedulers that accept
                them) and this call's timeshift.
            guidance_interval (`tuple[float, float]`): CFG applies where `low < 1 − σ < high` (see
                `in_guidance_interval`); elsewhere only the conditional branch is computed (except under a cache
                that needs the CFG batch at every step, see `_start_cache`).
            edit (`ImageEdit`, *optional*): image-to-image and inpainting: the loop runs the last `edit.strength` of
                the grid (`get_timesteps`), from `edit.initial_latents` (replacing `state["latents"]`), and after
                each step `edit.keep_known_region` restores the region an inpainting mask keeps.

        Each transformer call runs in `transformer.cache_context` ("cond_uncond" for the CFG batch, "cond" for the
        conditional branch alone), as diffusers' pipelines do, for the caches of `transformer.enable_cache`.
        """
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        with scheduler_shift(self.scheduler, shift) as scheduler:
            timesteps, step_sigmas = set_flow_timesteps(scheduler, num_inference_steps, device, sigmas)
            if edit is not None:
                timesteps, num_inference_steps = self.get_timesteps(scheduler.num_inference_steps, edit.strength)
                state["latents"] = edit.initial_latents(scheduler, timesteps[:1])
            begin = len(scheduler.timesteps) - len(timesteps)
            # Decided once per call, on the host, before the loop: the loop itself never waits for the device.
            step_sigmas = step_sigmas[begin : begin + len(timesteps)].cpu()
            host_timesteps = timesteps.tolist()
            guided_steps = [
                self.do_classifier_free_guidance
                and in_guidance_interval(sigma, guidance_interval, self._zero_low_is_unbounded)
                for sigma in step_sigmas.tolist()
            ]
            batched_steps = self._start_cache(guided_steps)
            # The model's time input: σ·1000 as a float (the int64 timesteps of some schedulers are rounded).
            model_timesteps = (step_sigmas * scheduler.config.num_train_timesteps).to(device, torch.float32)
            num_warmup_steps = max(len(timesteps) - num_inference_steps * scheduler.order, 0)
            self._num_timesteps = len(timesteps)
            model_dtype = self.transformer.dtype if self._cast_model_input else torch.float32

            previous_batched = None
            with self.progress_bar(total=num_inference_steps) as progress_bar:
                for i, t in enumerate(timesteps):
                    if self.interrupt:
                        continue
                    self._current_timestep = host_timesteps[i]
                    latents = state["latents"]
                    batched = batched_steps[i]
                    if previous_batched is not None and batched != previous_batched:
                        self._reset_cache()  # a cache tolerant of the reset: drop the states of the other batch size
                    previous_batched = batched
                    model_input = torch.cat([latents, latents]) if batched else latents
                    with self.transformer.cache_context(CFG_BATCH_CONTEXT if batched else CONDITIONAL_CONTEXT):
                        velocity = self.transformer(
                            hidden_states=model_input.to(model_dtype),
                            # a tensor of its own (not a view at offset i): torch.compile guards storage offsets
                            timestep=model_timesteps[i].repeat(model_input.shape[0]),
                            **model_inputs(state, batched),
                            attention_kwargs=self.attention_kwargs,
                            return_dict=False,
                        )[0].float()
                    if batched:
                        velocity_uncond, velocity_cond = velocity.chunk(2)
                        velocity = (
                            velocity_uncond + self.guidance_scale * (velocity_cond - velocity_uncond)
                            if guided_steps[i]
                            else velocity_cond
                        )
                    state["latents"] = scheduler.step(velocity, t, latents, return_dict=False)[0]
                    if edit is not None:  # the next step's timestep; none after the last one
                        state["latents"] = edit.keep_known_region(
                            scheduler, state["latents"], timesteps[i + 1 : i + 2]
                        )

                    if callback_on_step_end is not None:
                        callback_kwargs = {k: state[k] for k in callback_on_step_end_tensor_inputs}
                        callback_outputs = callback_on_step_end(self, i, t, callback_kwargs)
                        for k in callback_on_step_end_tensor_inputs:
                            state[k] = callback_outputs.pop(k, state[k])

                    if i == len(timesteps) - 1 or ((i + 1) > num_warmup_steps and (i + 1) % scheduler.order == 0):
                        progress_bar.update()
        self._current_timestep = None
        return state["latents"]

    def postprocess(self, latents: torch.Tensor, output_type: str, return_dict: bool) -> ImagePipelineOutput | tuple:
        """`latents` ([-1, 1] pixels) as `output_type` images; frees the offload hooks."""
        image = latents if output_type == "latent" else self.image_processor.postprocess(latents, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (image,)
        return ImagePipelineOutput(images=image)
