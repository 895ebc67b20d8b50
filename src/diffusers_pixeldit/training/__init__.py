# Copyright 2026 The diffusers-pixeldit authors. Licensed under the Apache License, Version 2.0.
"""Reusable machinery of the PixelDiT training examples (`examples/train_*.py`); needs the `training` extra
(`pip install diffusers-pixeldit[training]`: accelerate, datasets, peft, transformers).

- `data`: dataset loading, image reading and preprocessing, aspect-ratio buckets, the seeded `FlowMatchingDataset`
  and the deterministic `StepBatchSampler`.
- `objective`: `FlowMatchingObjective` (σ sampling, timeshift, loss weighting) and `REPAAlignment`.
- `checkpoints`: atomic checkpoints, resuming, the accelerate save/load hooks.
- `components`: the pretrained or from-scratch transformer and scheduler, LoRA, the saved sampling recipe.
- `loop`: logging set-up, distributed checks, step metrics, EMA weights, the final weights.
- `outputs`: validation grids, the final pipeline, the model card, the Hub upload.

Everything takes explicit parameters; the scripts own their arguments and their training loop.
"""

from .checkpoints import (
    CHECKPOINT_PREFIX,
    EMA_FOLDER,
    LORA_WEIGHT_NAME,
    REPA_PROJECTOR_NAME,
    TMP_CHECKPOINT_PREFIX,
    TRAINING_STATE_NAME,
    TRANSFORMER_FOLDER,
    checkpoint_step,
    find_resume_checkpoint,
    list_checkpoints,
    load_checkpoint,
    register_checkpoint_hooks,
    remove_unfinished_checkpoints,
    run_seed,
    save_checkpoint,
    start_run,
    unwrap_model,
)
from .components import (
    PipelineParts,
    load_or_build_pipeline_parts,
    load_transformer_config,
    prepare_transformer_for_training,
    pretrained_pipeline_class_name,
    sampling_recipe,
)
from .data import (
    IMAGE_MODES,
    FlowMatchingDataset,
    StepBatchSampler,
    aspect_ratio_buckets,
    class_ids,
    group_by_size,
    load_image_dataset,
    open_image,
    preprocess_image,
    sample_seed,
    step_dataloader,
    steps_per_epoch,
)
from .loop import (
    StepMetrics,
    check_distributed_setup,
    configure_accelerator,
    create_ema,
    ema_weights,
    frozen_weight_dtype,
    trained_transformer,
)
from .objective import (
    FlowMatchingObjective,
    REPAAlignment,
    flow_matching_losses,
    grounded_velocity_predictor,
    repa_projector,
    velocity_predictor,
)
from .outputs import (
    UPLOAD_IGNORE_PATTERNS,
    ModelCardText,
    create_hub_repo,
    finish_training,
    launch_command,
    log_images,
    log_validation,
    training_description,
    write_model_card,
)


__all__ = [
    "CHECKPOINT_PREFIX",
    "EMA_FOLDER",
    "IMAGE_MODES",
    "LORA_WEIGHT_NAME",
    "REPA_PROJECTOR_NAME",
    "TMP_CHECKPOINT_PREFIX",
    "TRAINING_STATE_NAME",
    "TRANSFORMER_FOLDER",
    "UPLOAD_IGNORE_PATTERNS",
    "FlowMatchingDataset",
    "FlowMatchingObjective",
    "ModelCardText",
    "PipelineParts",
    "REPAAlignment",
    "StepBatchSampler",
    "StepMetrics",
    "aspect_ratio_buckets",
    "check_distributed_setup",
    "checkpoint_step",
    "class_ids",
    "configure_accelerator",
    "create_ema",
    "create_hub_repo",
    "ema_weights",
    "find_resume_checkpoint",
    "finish_training",
    "flow_matching_losses",
    "grounded_velocity_predictor",
    "frozen_weight_dtype",
    "group_by_size",
    "launch_command",
    "list_checkpoints",
    "load_checkpoint",
    "load_image_dataset",
    "load_or_build_pipeline_parts",
    "load_transformer_config",
    "log_images",
    "log_validation",
    "open_image",
    "prepare_transformer_for_training",
    "pretrained_pipeline_class_name",
    "preprocess_image",
    "register_checkpoint_hooks",
    "remove_unfinished_checkpoints",
    "repa_projector",
    "run_seed",
    "sample_seed",
    "sampling_recipe",
    "save_checkpoint",
    "start_run",
    "step_dataloader",
    "steps_per_epoch",
    "trained_transformer",
    "training_description",
    "unwrap_model",
    "velocity_predictor",
    "write_model_card",
]
