# Copyright 2026 The diffusers-pixeldit authors. Licensed under the Apache License, Version 2.0.
"""Atomic, resumable training checkpoints.

`save_checkpoint` has accelerate write the state to `output_dir/.tmp-checkpoint-N`, which is renamed to
`checkpoint-N` once complete, so a run killed at any point (even while writing) leaves only complete checkpoints;
the hooks of `register_checkpoint_hooks` store the transformer as `transformer/` (or its LoRA as
`pytorch_lora_weights.safetensors`), the EMA as `transformer_ema/` and the REPA projector; `training_state.json` holds
the run's seed.
"""

import json
import logging
import os
import re
import shutil
from pathlib import Path

import numpy as np
import torch.nn as nn
from accelerate import Accelerator
from accelerate.utils import DistributedType, broadcast_object_list, set_seed
from diffusers.training_utils import EMAModel
from diffusers.utils.torch_utils import is_compiled_module
from safetensors.torch import load_file, save_file

from ..models import PixelDiTTransformer2DModel


logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
TMP_CHECKPOINT_PREFIX = ".tmp-checkpoint-"
TRANSFORMER_FOLDER = "transformer"
EMA_FOLDER = "transformer_ema"
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
REPA_PROJECTOR_NAME = "repa_projector.safetensors"
TRAINING_STATE_NAME = "training_state.json"
RESUME_LATEST = "latest"
# Distributed types that save (and load) their sharded models themselves.
SELF_SAVING = (DistributedType.FSDP, DistributedType.DEEPSPEED)


def unwrap_model(accelerator: Accelerator, model: nn.Module) -> nn.Module:
    """The model without its accelerate (DDP, ...) and `torch.compile` wrappers."""
    model = accelerator.unwrap_model(model)
    return model._orig_mod if is_compiled_module(model) else model


def checkpoint_step(path: str | os.PathLike) -> int:
    """N of a `checkpoint-N` folder."""
    return int(os.path.basename(os.path.normpath(path))[len(CHECKPOINT_PREFIX) :])


def list_checkpoints(output_dir: str | os.PathLike) -> list[str]:
    """The complete `checkpoint-N` folders of `output_dir`, oldest first."""
    if not os.path.isdir(output_dir):
        return []
    names = [name for name in os.listdir(output_dir) if re.fullmatch(rf"{CHECKPOINT_PREFIX}\d+", name)]
    return [os.path.join(output_dir, name) for name in sorted(names, key=checkpoint_step)]


def find_resume_checkpoint(output_dir: str | os.PathLike, resume_from_checkpoint: str | None) -> str | None:
    """The checkpoint folder to resume from: `None` for none; `"latest"` for the newest complete `checkpoint-N` of
    `output_dir` (`None` when there is none); else a folder, or the name of one in `output_dir`."""
    if resume_from_checkpoint is None:
        return None
    if resume_from_checkpoint == RESUME_LATEST:
        checkpoints = list_checkpoints(output_dir)
        if not checkpoints:
            logger.info("No checkpoint to resume from: starting a new training run.")
        return checkpoints[-1] if checkpoints else None
    for path in (resume_from_checkpoint, os.path.join(output_dir, os.path.basename(resume_from_checkpoint))):
        if os.path.isdir(path):
            return path
    raise ValueError(f"Checkpoint {resume_from_checkpoint!r} does not exist.")


def remove_unfinished_checkpoints(output_dir: str | os.PathLike):
    """Deletes the temporary folders of checkpoints a killed run did not finish writing."""
    for stale in Path(output_dir).glob(f"{TMP_CHECKPOINT_PREFIX}*"):
        logger.info(f"Removing the unfinished checkpoint {stale}.")
        shutil.rmtree(stale)


def run_seed(seed: int | None, checkpoint: str | None) -> int:
    """The run's seed: `seed`, else the seed stored in `checkpoint`, else a random one drawn on the main process and
    broadcast (needs the accelerate state)."""
    if seed is not None:
        return seed
    if checkpoint is not None:
        return json.loads(Path(checkpoint, TRAINING_STATE_NAME).read_text())["seed"]
    seed = broadcast_object_list([int(np.random.SeedSequence().generate_state(1)[0] >> 1)])[0]
    logger.info(f"No seed given; this run's seed is {seed}.")
    return seed


def start_run(
    accelerator: Accelerator, output_dir: str | os.PathLike, seed: int | None, resume_from_checkpoint: str | None
) -> tuple[int, str | None]:
    """Starts or resumes a run in `output_dir` (created; unfinished checkpoints removed): returns the run's seed
    (`run_seed`, also given to `accelerate.utils.set_seed`) and the checkpoint to resume from
    (`find_resume_checkpoint`). Call on every process."""
    checkpoint = find_resume_checkpoint(output_dir, resume_from_checkpoint)
    seed = run_seed(seed, checkpoint)
    set_seed(seed)
    if accelerator.is_main_process:
        os.makedirs(output_dir, exist_ok=True)
        remove_unfinished_checkpoints(output_dir)
    accelerator.wait_for_everyone()
    return seed, checkpoint


def save_checkpoint(
    accelerator: Accelerator, output_dir: str | os.PathLike, step: int, seed: int, total_limit: int | None = None
) -> str:
    """Saves the training state of optimizer step `step` atomically to `output_dir/checkpoint-{step}` (all processes
    call it); then only the newest `total_limit` checkpoints are kept. Returns the checkpoint's path."""
    tmp_dir = os.path.join(output_dir, f"{TMP_CHECKPOINT_PREFIX}{step}")
    save_path = os.path.join(output_dir, f"{CHECKPOINT_PREFIX}{step}")
    accelerator.save_state(tmp_dir)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        Path(tmp_dir, TRAINING_STATE_NAME).write_text(json.dumps({"seed": seed}))
        os.replace(tmp_dir, save_path)
        logger.info(f"Saved state to {save_path}")
        if total_limit is not None:
            for old in list_checkpoints(output_dir)[:-total_limit]:
                logger.info(f"Removing checkpoint {old} (total limit {total_limit}).")
                shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return save_path


def load_checkpoint(accelerator: Accelerator, checkpoint: str) -> int:
    """Restores the training state of a `checkpoint-N` folder; returns N, the optimizer step to continue from."""
    logger.info(f"Resuming from checkpoint {checkpoint}")
    accelerator.load_state(checkpoint)
    return checkpoint_step(checkpoint)


def register_checkpoint_hooks(
    accelerator: Accelerator,
    *,
    ema: EMAModel | None = None,
    lora: bool = False,
    transformer_class: type[nn.Module] = PixelDiTTransformer2DModel,
):
    """Has `accelerator.save_state` / `load_state` store the transformer (an instance of `transformer_class`) as
    `transformer/`, or its LoRA weights only with `lora`, any other prepared model (the REPA projector) as
    `repa_projector.safetensors`, and `ema` as `transformer_ema/`; accelerate adds the optimizer, LR scheduler and
    RNG states."""
    from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

    def save_model_hook(models, weights, output_dir):
        if not accelerator.is_main_process:
            return
        for model in models if accelerator.distributed_type not in SELF_SAVING else []:
            model = unwrap_model(accelerator, model)
            if not isinstance(model, transformer_class):
                save_file(model.state_dict(), os.path.join(output_dir, REPA_PROJECTOR_NAME))
            elif lora:
                save_file(get_peft_model_state_dict(model), os.path.join(output_dir, LORA_WEIGHT_NAME))
            else:
                model.save_pretrained(os.path.join(output_dir, TRANSFORMER_FOLDER))
            if weights:
                weights.pop()
        if ema is not None:
            ema.save_pretrained(os.path.join(output_dir, EMA_FOLDER))

    def load_model_hook(models, input_dir):
        while models:
            model = unwrap_model(accelerator, models.pop())
            if not isinstance(model, transformer_class):
                model.load_state_dict(load_file(os.path.join(input_dir, REPA_PROJECTOR_NAME)))
            elif lora:
                set_peft_model_state_dict(model, load_file(os.path.join(input_dir, LORA_WEIGHT_NAME)))
            else:
                loaded = transformer_class.from_pretrained(input_dir, subfolder=TRANSFORMER_FOLDER)
                model.register_to_config(**loaded.config)
                model.load_state_dict(loaded.state_dict())
                del loaded
        if ema is not None:
            loaded = EMAModel.from_pretrained(os.path.join(input_dir, EMA_FOLDER), transformer_class)
            ema.load_state_dict(loaded.state_dict())
            ema.to(accelerator.device)
            del loaded

    accelerator.register_save_state_pre_hook(save_model_hook)
    accelerator.register_load_state_pre_hook(load_model_hook)
