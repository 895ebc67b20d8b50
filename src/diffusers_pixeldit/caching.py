# Copyright 2026 The diffusers-pixeldit authors. Licensed under the Apache License, Version 2.0.
"""diffusers' caches on the PixelDiT pipelines: configs wired to a pipeline, MagCache calibration, shipped ratios.

Every diffusers cache runs through `pipe.transformer.enable_cache(config)` / `disable_cache()`; the pipelines call
the transformer inside `cache_context` and reset the cache state at each call (`PixelDiTDenoisingMixin`). What is
PixelDiT-specific is gathered here:
- `faster_cache_config` and `pyramid_attention_broadcast_config`: the configs with `pipe.current_timestep` wired in
  and, for FasterCache, the transformer inputs that carry the `[unconditional, conditional]` CFG batch;
- `whole_step_cache_config`: TaylorSeer's lite mode with the settings measured here, the one cache that skips both
  pathways (patch and pixel blocks), hence the one that can double the sampling throughput;
- `calibrate_mag_ratios`: MagCache's `mag_ratios` for a model at a sampling recipe, as `MagCacheConfig(calibrate=True)`
  measures them; `save_mag_ratios` / `mag_cache_config` keep them beside the model (`mag_ratios.json` in the
  pipeline folder, as the two embedded digits models ship them).
"""

import contextlib
import copy
import io
import json
from pathlib import Path
from typing import Any

import torch
from diffusers.hooks import FasterCacheConfig, MagCacheConfig, PyramidAttentionBroadcastConfig, TaylorSeerCacheConfig

from .pipelines.denoising import scheduler_shift, set_flow_timesteps


# The transformer inputs that hold the CFG batch `[unconditional, conditional]` row-wise in the PixelDiT pipelines
# (class-conditional, text-to-image and PixelDiT2 models): FasterCache keeps their conditional half when it skips
# the unconditional branch.
CFG_BATCH_INPUTS = (
    "hidden_states",
    "timestep",
    "class_labels",
    "encoder_hidden_states",
    "grounding_hidden_states",
    "grounding_mask",
)
# The file beside a pipeline's `model_index.json` that holds its MagCache ratios.
MAG_RATIOS_FILE = "mag_ratios.json"


def faster_cache_config(pipe, **kwargs) -> FasterCacheConfig:
    """A `FasterCacheConfig` for a PixelDiT pipeline; `kwargs` override or add any of its fields.

    Wired in: `current_timestep_callback=lambda: pipe.current_timestep` (σ·1000, decreasing from 1000, the scale of
    its timestep ranges), `tensor_format="BCHW"` (the transformer returns `(B, C, H, W)` velocities) and the inputs
    that carry the CFG batch (`CFG_BATCH_INPUTS`). FasterCache approximates the unconditional branch from the
    conditional one, so it needs CFG (`guidance_scale > 1`) unless `is_guidance_distilled=True`; the pipelines then
    feed it the `[unconditional, conditional]` batch at every step, also outside the CFG interval (where only the
    conditional half is used). With `is_guidance_distilled=True`, keep the first timestep (1000) out of
    `spatial_attention_timestep_skip_range`, as its default `(-1, 681)` does: diffusers 0.42.1 would otherwise
    approximate the first step's attention from an empty cache (a `TypeError`).
    """
    defaults = {
        "current_timestep_callback": lambda: pipe.current_timestep,
        "tensor_format": "BCHW",
        "_unconditional_conditional_input_kwargs_identifiers": list(CFG_BATCH_INPUTS),
    }
    return FasterCacheConfig(**{**defaults, **kwargs})


def pyramid_attention_broadcast_config(pipe, **kwargs) -> PyramidAttentionBroadcastConfig:
    """A `PyramidAttentionBroadcastConfig` for a PixelDiT pipeline; `kwargs` override or add any of its fields.

    Wired in: `current_timestep_callback=lambda: pipe.current_timestep` (its timestep ranges are in σ·1000),
    `spatial_attention_block_skip_range=2`, and the attention of the patch-level blocks only
    (`spatial_attention_block_identifiers=("transformer_blocks",)`). diffusers' default identifiers also match the
    pixel blocks' attention (and PixelDiT2's grounding projection); broadcasting it saves little and costs accuracy:
    on the class-conditional digits model the pixel attention is 4.7 % of the forward time (3.4 % at PixelDiT-XL
    256 px), and including it doubles the largest pixel deviation from the uncached digits (0.077 against 0.039,
    `benchmarks/bench_caches.py`).
    """
    defaults = {
        "current_timestep_callback": lambda: pipe.current_timestep,
        "spatial_attention_block_skip_range": 2,
        "spatial_attention_block_identifiers": ("transformer_blocks",),
    }
    return PyramidAttentionBroadcastConfig(**{**defaults, **kwargs})


def whole_step_cache_config(**kwargs) -> TaylorSeerCacheConfig:
    """A `TaylorSeerCacheConfig` that skips whole transformer evaluations; `kwargs` override or add any of its fields.

    TaylorSeer's lite mode (`use_lite_mode=True`) on a PixelDiT transformer: at a cached step every block of both
    pathways (`transformer_blocks.*` and `pixel_blocks.*`, whose outputs are discarded) returns at once and the
    output projection `proj_out` is predicted by a Taylor expansion, in the step index, of its outputs at the last
    computed steps; only the embeddings and the output norm run (< 1 % of a forward). With order 1 the projection of a
    cached step is `p_k + o·(p_k − p_j)/(k − j)`, extrapolated from the last two computed evaluations `j < k` (`o`
    steps after `k`): the velocity itself for PixelDiT, the clean image for PixelDiT2 (whose velocity then follows from
    the current noisy image). Defaults, measured on the digits models and PixelDiT-XL (`benchmarks/README.md`):
    `cache_interval=2` (one evaluation in two computed), `max_order=1`, `disable_cache_before_step=3` (the first
    three evaluations computed) and float32 Taylor factors (diffusers' default bfloat16 factors cost accuracy for no
    speed on a model this size). The block caches (FirstBlockCache, MagCache, ...) skip the patch pathway only.

    On PixelDiT2 the grounding projection and the pipeline's DINOv3 still run at every step. As with TaylorSeer in
    general, the state restarts where the CFG interval changes the batch size (the step options count from there).
    """
    defaults = {
        "cache_interval": 2,
        "max_order": 1,
        "disable_cache_before_step": 3,
        "taylor_factors_dtype": torch.float32,
        "use_lite_mode": True,
    }
    return TaylorSeerCacheConfig(**{**defaults, **kwargs})


def _hidden_states_argument(args: tuple, kwargs: dict) -> torch.Tensor:
    return kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]


def num_model_evaluations(pipe, num_inference_steps: int | None = None, **call_kwargs) -> int:
    """How many times a call of `pipe` with these arguments evaluates the transformer (Heun: 2N − 1 for N steps), the
    `num_inference_steps` MagCache counts in."""
    scheduler = copy.deepcopy(pipe.scheduler)
    num_inference_steps = num_inference_steps or pipe.config.default_num_inference_steps
    with scheduler_shift(scheduler, call_kwargs.get("shift")):
        timesteps, _ = set_flow_timesteps(
            scheduler, num_inference_steps, torch.device("cpu"), call_kwargs.get("sigmas")
        )
    return len(timesteps)


@torch.no_grad()
def calibrate_mag_ratios(pipe, **call_kwargs) -> list[float]:
    """MagCache's `mag_ratios` of `pipe`'s transformer for one sampling recipe: `pipe(**call_kwargs)` runs once.

    The ratios are those `MagCacheConfig(calibrate=True)` measures, one per transformer evaluation: the first 1.0, then
    the token-wise mean of `‖r_i‖ / ‖r_{i−1}‖`, `r_i` being the residual of the patch-level blocks (output of the last
    `transformer_blocks` minus input of the first) at evaluation i, over the whole batch. The call runs under
    diffusers' calibration mode, so it sees the batch layout MagCache will see (the CFG batch at every step of a
    guided call); the ratios are read with forward hooks rather than from its printout. Calibrate with the
    sampling recipe (steps, scheduler, shift, CFG scale and interval) MagCache will be used at, on a batch of a few
    conditions; `MagCacheConfig(num_inference_steps=...)` interpolates them to other step counts.

    Returns:
        `list[float]`, one ratio per transformer evaluation (`num_model_evaluations`).
    """
    transformer = pipe.transformer
    if transformer.is_cache_enabled:
        raise ValueError("Disable the transformer's cache (`pipe.transformer.disable_cache()`) before calibrating.")
    blocks = transformer.transformer_blocks
    residuals, ratios, block_input = [], [], {}

    def keep_input(module, args, kwargs):
        block_input["hidden_states"] = _hidden_states_argument(args, kwargs)

    def ratio_of_output(module, args, kwargs, output):
        hidden_states = output[1] if isinstance(output, tuple) else output
        residual = (hidden_states - block_input.pop("hidden_states")).float()
        if residuals:
            previous = residuals[-1]
            ratio = (torch.linalg.norm(residual, dim=-1) / (torch.linalg.norm(previous, dim=-1) + 1e-8)).mean()
            ratios.append(ratio.item())
        else:
            ratios.append(1.0)
        residuals[:] = [residual]

    num_evaluations = num_model_evaluations(pipe, **call_kwargs)
    hooks = [
        blocks[0].register_forward_pre_hook(keep_input, with_kwargs=True),
        blocks[-1].register_forward_hook(ratio_of_output, with_kwargs=True),
    ]
    transformer.enable_cache(MagCacheConfig(calibrate=True, num_inference_steps=num_evaluations))
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # diffusers prints the ratios it measured
            pipe(**{"output_type": "latent", **call_kwargs})
    finally:
        transformer.disable_cache()
        for hook in hooks:
            hook.remove()
    return ratios


def save_mag_ratios(folder: str | Path, mag_ratios: list[float], recipe: dict[str, Any]) -> Path:
    """Writes `mag_ratios` and the sampling `recipe` they were calibrated at (at least `num_inference_steps`, the
    number of transformer evaluations) to `folder/mag_ratios.json`; returns the file."""
    if "num_inference_steps" not in recipe:
        raise ValueError("The recipe must give `num_inference_steps` (the transformer evaluations per call).")
    path = Path(folder) / MAG_RATIOS_FILE
    path.write_text(json.dumps({**recipe, "mag_ratios": [round(r, 6) for r in mag_ratios]}, indent=2) + "\n")
    return path


def load_mag_ratios(folder: str | Path) -> dict[str, Any]:
    """The content of `folder/mag_ratios.json`: `mag_ratios`, `num_inference_steps` and the rest of the recipe."""
    path = Path(folder) / MAG_RATIOS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"No {MAG_RATIOS_FILE} in {folder}: calibrate with `calibrate_mag_ratios`.")
    return json.loads(path.read_text())


def mag_cache_config(folder: str | Path, **kwargs) -> MagCacheConfig:
    """A `MagCacheConfig` with the `mag_ratios` (and their `num_inference_steps`) stored in pipeline `folder`;
    `kwargs` override or add fields (e.g. `threshold`, or `num_inference_steps` to interpolate the ratios)."""
    stored = load_mag_ratios(folder)
    defaults = {"mag_ratios": stored["mag_ratios"], "num_inference_steps": stored["num_inference_steps"]}
    return MagCacheConfig(**{**defaults, **kwargs})
