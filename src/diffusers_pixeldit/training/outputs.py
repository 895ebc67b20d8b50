# Copyright 2026 The diffusers-pixeldit authors. Licensed under the Apache License, Version 2.0.
"""What a run leaves: validation grids, the final pipeline (or LoRA), its model card, and the Hub upload."""

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from accelerate import Accelerator
from diffusers import DiffusionPipeline
from diffusers.utils import make_image_grid
from diffusers.utils.hub_utils import populate_model_card
from huggingface_hub import ModelCard, ModelCardData, create_repo, upload_folder
from PIL import Image

from .checkpoints import CHECKPOINT_PREFIX, LORA_WEIGHT_NAME
from .objective import FlowMatchingObjective


VALIDATION_FOLDER = "validation"
MODEL_CARD_NAME = "README.md"
MODEL_CARD_TEMPLATE = "---\n{{ card_data }}\n---\n\n{{ model_description }}\n"
MODEL_CARD_TAGS = ["pixeldit", "diffusers-training", "diffusers"]
# The checkpoints stay out of the upload.
UPLOAD_IGNORE_PATTERNS = [f"{CHECKPOINT_PREFIX}*"]
UPLOAD_COMMIT_MESSAGE = "End of training"
REDACTED = "***"
HUB_TOKEN_FLAG = "--hub_token"


def create_hub_repo(output_dir: str, hub_model_id: str | None = None, token: str | None = None) -> str:
    """Creates (or finds) the Hub repo a run is pushed to, `hub_model_id` or the output folder's name; returns its
    id."""
    return create_repo(repo_id=hub_model_id or Path(output_dir).name, exist_ok=True, token=token).repo_id


def log_images(
    accelerator: Accelerator, output_dir: str, images: list[Image.Image], rows: int, step: int, phase: str
) -> str:
    """Saves `images` as a grid of `rows` rows (one per condition) to `output_dir/validation/{phase}_step_{step}.png`
    and logs them to the TensorBoard / W&B trackers; returns the grid's path relative to `output_dir`."""
    grid = make_image_grid(images, rows=rows, cols=len(images) // rows)
    grid_path = f"{VALIDATION_FOLDER}/{phase}_step_{step}.png"
    Path(output_dir, VALIDATION_FOLDER).mkdir(parents=True, exist_ok=True)
    grid.save(Path(output_dir, grid_path))
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_images(phase, np.stack([np.asarray(i) for i in images]), step, dataformats="NHWC")
        elif tracker.name == "wandb":
            import wandb

            tracker.log({phase: [wandb.Image(grid, caption=f"step {step}")]}, step=step)
    return grid_path


def log_validation(
    pipeline: DiffusionPipeline,
    accelerator: Accelerator,
    output_dir: str,
    *,
    step: int,
    seed: int,
    num_images: int,
    num_conditions: int,
    is_final_validation: bool = False,
    **pipeline_kwargs,
) -> str:
    """Samples `num_images` per condition with `pipeline(**pipeline_kwargs)` (a generator seeded with `seed`, no
    progress bar) and saves and logs them as a grid of one row per condition (`log_images`, phase "test" for the
    final validation, else "validation"). Returns the grid's path relative to `output_dir`."""
    pipeline = pipeline.to(accelerator.device)
    pipeline.set_progress_bar_config(disable=True)
    generator = torch.Generator(device=accelerator.device).manual_seed(seed)
    images = pipeline(num_images_per_prompt=num_images, generator=generator, **pipeline_kwargs).images
    phase = "test" if is_final_validation else "validation"
    return log_images(accelerator, output_dir, images, num_conditions, step, phase)


def launch_command(script: str, argv: list[str]) -> str:
    """`accelerate launch examples/<script> <argv>` for the model card, the Hub token redacted."""
    argv = list(argv)
    for i, arg in enumerate(argv):
        if arg == HUB_TOKEN_FLAG and i + 1 < len(argv):
            argv[i + 1] = REDACTED
        elif arg.startswith(f"{HUB_TOKEN_FLAG}="):
            argv[i] = f"{HUB_TOKEN_FLAG}={REDACTED}"
    return shlex.join(["accelerate", "launch", f"examples/{Path(script).name}", *argv])


def training_description(
    *,
    script: str,
    base_model: str | None,
    lora_rank: int | None,
    scratch_details: str,
    dataset: str,
    resolution: int,
    steps: int,
    objective: FlowMatchingObjective,
    dropout: str,
    ema_decay: float | None,
    repa: str | None = None,
) -> str:
    """Model-card paragraph on what the model is and how it was trained (`scratch_details`: the architecture,
    `dropout`: the condition dropout, `repa`: the REPA set-up, when used)."""
    subject = "A pixel-space PixelDiT (no VAE)"
    if lora_rank is not None:
        subject = f"A rank-{lora_rank} LoRA for a pixel-space PixelDiT (no VAE)"
    origin = f"fine-tuned from `{base_model}`" if base_model else f"trained from scratch ({scratch_details})"
    weights = f"EMA (decay {ema_decay})" if ema_decay is not None else "raw (no EMA)"
    outliers = ""
    if objective.noise_outlier_prob:
        outliers = (
            f", {objective.noise_outlier_prob:.0%} of the noise elements scaled by {objective.noise_outlier_scale}"
        )
    return (
        f"{subject} {origin} with `examples/{Path(script).name}`.\nTrained for {steps} steps at "
        f"{resolution}x{resolution} on `{dataset}` with rectified flow (x_t = (1 - σ)·x0 + σ·ε, the model predicts "
        f"ε - x0; σ ~ {objective.weighting_scheme}, training shift {objective.shift}{outliers}), {dropout}."
        f"{f' {repa}.' if repa else ''} Weights: {weights}."
    )


@dataclass
class ModelCardText:
    """The parts of a model card that depend on the pipeline: `description` (markdown, see
    `training_description`), `example_call` (a line using `pipe`), `tags` beside the common ones."""

    title: str
    description: str
    pipeline_class: str
    example_call: str
    base_model: str | None
    training_command: str
    tags: list[str]


def write_model_card(
    folder: str, card: ModelCardText, *, repo_id: str, lora: bool, grid_path: str | None = None
) -> Path:
    """Writes `folder/README.md`: the description, usage code loading `repo_id` (the base pipeline plus the LoRA with
    `lora`), the samples grid and the training command. Returns its path."""
    if lora:
        loading = (
            f'pipe = {card.pipeline_class}.from_pretrained("{card.base_model}")\n'
            f'pipe.load_lora_weights("{repo_id}", weight_name="{LORA_WEIGHT_NAME}")'
        )
    else:
        loading = f'pipe = {card.pipeline_class}.from_pretrained("{repo_id}")'
    text = (
        f"# {card.title}\n\n{card.description}\n\n## Usage\n\n```python\nfrom diffusers_pixeldit import "
        f"{card.pipeline_class}\n\n{loading}\n{card.example_call}\n```\n\nWithout other arguments the pipeline samples "
        "with the recipe in its config (`default_num_inference_steps`, `default_guidance_scale`,\n"
        "`default_guidance_interval`); each is also a call argument.\n"
    )
    if grid_path is not None:
        text += f"\n## Samples\n\n![samples]({grid_path})\n"
    text += f"\n## Training command\n\n```bash\n{card.training_command}\n```\n"
    model_card = ModelCard.from_template(
        ModelCardData(library_name="diffusers", base_model=card.base_model),
        template_str=MODEL_CARD_TEMPLATE,
        model_description=text,
    )
    tags = [MODEL_CARD_TAGS[0], *card.tags, *(["lora"] if lora else []), *MODEL_CARD_TAGS[1:]]
    path = Path(folder, MODEL_CARD_NAME)
    populate_model_card(model_card, tags=tags).save(path)
    return path


def finish_training(
    pipeline: DiffusionPipeline,
    output_dir: str,
    card: ModelCardText,
    *,
    lora: bool = False,
    validate: Callable[[DiffusionPipeline], str | None] | None = None,
    repo_id: str | None = None,
    hub_token: str | None = None,
    reload_components: dict[str, None] | None = None,
) -> DiffusionPipeline:
    """Saves the result to `output_dir`, writes its model card and uploads it; call on the main process.

    With `lora` only the transformer's adapter is saved (`pytorch_lora_weights.safetensors` in the diffusers layout,
    by the pipeline's `save_lora_weights`; it loads with `load_lora_weights`); otherwise the whole
    `pipeline`, then reloaded from `output_dir` (without `reload_components`, e.g. `text_encoder=None`) for the final
    `validate(pipeline) -> grid path or None`. With `repo_id` the folder goes to the Hub (`upload_folder`, without
    the checkpoints). Returns the pipeline that was validated.
    """
    if lora:
        from peft.utils import get_peft_model_state_dict

        transformer, (adapter,) = pipeline.transformer, pipeline.transformer.active_adapters()
        type(pipeline).save_lora_weights(
            output_dir,
            transformer_lora_layers=get_peft_model_state_dict(transformer, adapter_name=adapter),
            transformer_lora_adapter_metadata=transformer.peft_config[adapter].to_dict(),
            weight_name=LORA_WEIGHT_NAME,
        )
    else:
        pipeline.save_pretrained(output_dir)
        pipeline = type(pipeline).from_pretrained(output_dir, **(reload_components or {}))
    grid_path = validate(pipeline) if validate is not None else None
    write_model_card(output_dir, card, repo_id=repo_id or output_dir, lora=lora, grid_path=grid_path)
    if repo_id is not None:
        upload_folder(
            repo_id=repo_id,
            folder_path=output_dir,
            commit_message=UPLOAD_COMMIT_MESSAGE,
            ignore_patterns=UPLOAD_IGNORE_PATTERNS,
            token=hub_token,
        )
    return pipeline
