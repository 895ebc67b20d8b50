# Copyright 2026 The diffusers-pixeldit authors. Licensed under the Apache License, Version 2.0.
"""Pieces of an accelerate training loop: logging set-up, distributed checks, per-step metrics, EMA weights for
validation, and the final weights."""

import contextlib
import logging
import time

import datasets
import diffusers
import torch
import torch.nn as nn
import transformers
from accelerate import Accelerator
from accelerate.utils import DistributedType
from diffusers.training_utils import EMAModel

from .checkpoints import unwrap_model


logger = logging.getLogger(__name__)

PACKAGE_LOGGER = "diffusers_pixeldit"
LOG_FORMAT = "%(asctime)s - %(levelname)s - %(name)s - %(message)s"
LOG_DATE_FORMAT = "%m/%d/%Y %H:%M:%S"
# The dtype of frozen models (text encoder, REPA encoder, LoRA base weights) by accelerate's mixed precision.
MIXED_PRECISION_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def configure_accelerator(accelerator: Accelerator, allow_tf32: bool = False):
    """Per-process logging (INFO on the local main process, errors only elsewhere, for diffusers, transformers,
    datasets and this package), no native AMP on Apple MPS, TF32 matmuls on CUDA with `allow_tf32`; logs the
    accelerate state."""
    logging.basicConfig(format=LOG_FORMAT, datefmt=LOG_DATE_FORMAT, level=logging.INFO)
    if accelerator.is_local_main_process:
        datasets.utils.logging.set_verbosity_warning()
        transformers.utils.logging.set_verbosity_warning()
        diffusers.utils.logging.set_verbosity_info()
        logging.getLogger(PACKAGE_LOGGER).setLevel(logging.INFO)
    else:
        datasets.utils.logging.set_verbosity_error()
        transformers.utils.logging.set_verbosity_error()
        diffusers.utils.logging.set_verbosity_error()
        logging.getLogger(PACKAGE_LOGGER).setLevel(logging.ERROR)
    logger.info(accelerator.state)
    if torch.backends.mps.is_available():
        accelerator.native_amp = False
    if allow_tf32 and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True


def frozen_weight_dtype(accelerator: Accelerator) -> torch.dtype:
    """The dtype of the frozen models under the run's mixed precision (float32 without)."""
    return MIXED_PRECISION_DTYPES.get(accelerator.mixed_precision, torch.float32)


def check_distributed_setup(
    accelerator: Accelerator, *, train_batch_size: int, use_ema: bool, lora: bool, validation: bool
) -> bool:
    """Refuses what FSDP can't do (EMA and LoRA need unsharded weights), gives DeepSpeed its micro-batch size (the
    data loader is not prepared by accelerate), and returns whether validation can run during training (not under
    FSDP: it needs unsharded weights; the final validation always runs)."""
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        accelerator.state.deepspeed_plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = train_batch_size
    if accelerator.distributed_type != DistributedType.FSDP:
        return validation
    if use_ema or lora:
        raise ValueError("EMA and LoRA need unsharded weights: use DDP, not FSDP.")
    if validation:
        logger.warning("With FSDP only the final validation runs (it needs unsharded weights).")
    return False


class StepMetrics:
    """The losses of an optimizer step, averaged over its micro-steps and processes, and the global throughput.

    `add` after every micro-step's forward (it gathers across processes); `pop` after the optimizer step returns the
    mean losses and `img_per_sec`, and starts the next step's clock; `restart_clock` leaves time (checkpointing,
    validation) out of the throughput.
    """

    def __init__(self, accelerator: Accelerator, global_batch_size: int):
        self.accelerator = accelerator
        self.global_batch_size = global_batch_size
        self.names: list[str] = []
        self.totals: torch.Tensor | None = None
        self.restart_clock()

    def add(self, losses: dict[str, torch.Tensor]):
        """Adds a micro-step's losses (0-d tensors, the same names every micro-step); stays on the device."""
        gathered = self.accelerator.gather(torch.stack(list(losses.values())).detach()[None]).mean(0)
        gathered = gathered / self.accelerator.gradient_accumulation_steps
        self.names = list(losses)
        self.totals = gathered if self.totals is None else self.totals + gathered

    def pop(self) -> dict[str, float]:
        """`{loss name: mean, ..., "img_per_sec": images per second}` of the step; resets."""
        logs = dict(zip(self.names, self.totals.tolist()))
        logs["img_per_sec"] = self.global_batch_size / (time.perf_counter() - self.start)
        self.totals = None
        self.restart_clock()
        return logs

    def restart_clock(self):
        self.start = time.perf_counter()


@contextlib.contextmanager
def ema_weights(ema: EMAModel | None, model: nn.Module):
    """Within the block `model` holds the EMA weights (unchanged without `ema`); its own weights come back after."""
    if ema is None:
        yield model
        return
    ema.store(model.parameters())
    ema.copy_to(model.parameters())
    try:
        yield model
    finally:
        ema.restore(model.parameters())


def create_ema(transformer: nn.Module, decay: float, device: torch.device) -> EMAModel:
    """An EMA of the transformer's parameters on `device`, restorable by the checkpoint hooks (model class and config
    recorded)."""
    ema = EMAModel(transformer.parameters(), decay=decay, model_cls=type(transformer), model_config=transformer.config)
    ema.to(device)
    return ema


def trained_transformer(accelerator: Accelerator, transformer: nn.Module, ema: EMAModel | None) -> nn.Module:
    """The plain transformer holding the final weights (the EMA's with `ema`); under FSDP the sharded weights are
    gathered into a new model on the main process. Call on every process after the loop."""
    accelerator.wait_for_everyone()
    model = unwrap_model(accelerator, transformer)
    if accelerator.distributed_type == DistributedType.FSDP:
        state_dict = accelerator.get_state_dict(transformer)
        model = type(model).from_config(model.config)
        if accelerator.is_main_process:
            model.load_state_dict(state_dict)
    if ema is not None:
        ema.copy_to(model.parameters())
    return model
