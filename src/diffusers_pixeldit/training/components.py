# Copyright 2026 The diffusers-pixeldit authors. Licensed under the Apache License, Version 2.0.
"""What a run trains: a pretrained pipeline's transformer, scheduler and config, or a transformer built from a preset;
LoRA adapters and gradient checkpointing; the sampling recipe saved with the result."""

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn
from diffusers import DiffusionPipeline, SchedulerMixin
from diffusers.training_utils import cast_training_params

from ..models import PixelDiTTransformer2DModel


# The pipeline config entries that make the sampling recipe (the defaults of `pipe(...)`).
RECIPE_KEYS = ("default_num_inference_steps", "default_guidance_scale", "default_guidance_interval")


@dataclass
class PipelineParts:
    """The transformer and scheduler a run starts from, and the pretrained pipeline's config entries (empty when
    training from scratch)."""

    transformer: nn.Module
    scheduler: SchedulerMixin
    config: dict[str, Any] = field(default_factory=dict)
    # PixelDiT2: the pretrained pipeline's frozen grounding encoder
    grounding_encoder: nn.Module | None = None


def pretrained_pipeline_class_name(
    pretrained_model_name_or_path: str, revision: str | None = None, cache_dir: str | None = None
) -> str:
    """The pipeline class a pipeline folder or Hub repo names in its `model_index.json`."""
    return DiffusionPipeline.load_config(pretrained_model_name_or_path, revision=revision, cache_dir=cache_dir)[
        "_class_name"
    ]


def load_transformer_config(spec: str | None) -> dict[str, Any]:
    """Transformer config entries from a JSON file (e.g. a saved config.json; `_`-prefixed keys dropped) or a JSON
    string; `{}` for `None`."""
    if spec is None:
        return {}
    config = json.loads(Path(spec).read_text() if os.path.isfile(spec) else spec)
    return {key: value for key, value in config.items() if not key.startswith("_")}


def load_or_build_pipeline_parts(
    pipeline_class: type[DiffusionPipeline],
    pretrained_model_name_or_path: str | None,
    *,
    preset: str,
    transformer_config: dict[str, Any],
    scheduler: SchedulerMixin,
    revision: str | None = None,
    variant: str | None = None,
    transformer_class: type[nn.Module] = PixelDiTTransformer2DModel,
    **skipped_components: None,
) -> PipelineParts:
    """Fine-tuning: the transformer, scheduler and config of the pretrained `pipeline_class` folder or Hub repo
    (`skipped_components`, e.g. `text_encoder=None`, are not loaded), weights as saved. From scratch
    (`pretrained_model_name_or_path` None): `transformer_class.from_preset(preset, **transformer_config)` with the
    official initialisation (`initialize_weights()`), and `scheduler`, the sampler to save with it.
    """
    if pretrained_model_name_or_path is None:
        transformer = transformer_class.from_preset(preset, **transformer_config).initialize_weights()
        return PipelineParts(transformer, scheduler)
    pipeline = pipeline_class.from_pretrained(
        pretrained_model_name_or_path, revision=revision, variant=variant, **skipped_components
    )
    encoder = getattr(pipeline, "grounding_encoder", None)
    return PipelineParts(pipeline.transformer, pipeline.scheduler, dict(pipeline.config), encoder)


def sampling_recipe(
    pretrained_config: dict[str, Any],
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    guidance_interval: Sequence[float] | None = None,
) -> dict[str, Any]:
    """The sampling defaults of the saved pipeline: the pretrained pipeline's (none from scratch: the pipeline class's
    apply), overridden by the given values."""
    recipe = {key: pretrained_config[key] for key in RECIPE_KEYS if key in pretrained_config}
    given = (num_inference_steps, guidance_scale, guidance_interval)
    recipe.update({key: value for key, value in zip(RECIPE_KEYS, given) if value is not None})
    return recipe


def prepare_transformer_for_training(
    transformer: nn.Module,
    *,
    weight_dtype: torch.dtype,
    gradient_checkpointing: bool = False,
    lora_rank: int | None = None,
    lora_alpha: int | None = None,
    lora_layers: Sequence[str] = (),
):
    """Enables gradient checkpointing; with `lora_rank`, freezes the base weights in `weight_dtype` and adds PEFT LoRA
    adapters (`lora_alpha`, default the rank; Gaussian init; fp32) on the `lora_layers` modules. Sets train mode."""
    if gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    if lora_rank is not None:
        from peft import LoraConfig

        transformer.requires_grad_(False).to(dtype=weight_dtype)
        transformer.add_adapter(
            LoraConfig(
                r=lora_rank,
                lora_alpha=lora_alpha or lora_rank,
                init_lora_weights="gaussian",
                target_modules=[name.strip() for name in lora_layers],
            )
        )
        cast_training_params(transformer, dtype=torch.float32)
    transformer.train()
