# Copyright 2026 The diffusers-pixeldit authors. Licensed under the Apache License, Version 2.0.
"""Training machinery shared by `train_class_conditional.py` and `train_text_to_image.py`.

Determinism: the global batch of optimizer step `s` is a pure function of `(seed, s)` (`StepBatchSampler`), and every
per-sample random draw (σ, CFG dropout, crop, flip, caption choice, noise) comes from a generator seeded with
`(seed, s, position of the sample in the global batch)` (`FlowMatchingDataset`). A run's math therefore does not
depend on how the global batch is split over processes and gradient-accumulation micro-steps, and a resumed run
replays exactly what an uninterrupted run does.
"""

import argparse
import io
import json
import logging
import math
import os
import re
import shlex
import shutil
import time
from pathlib import Path
from typing import Callable

import datasets
import diffusers
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import transformers
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import (
    DistributedDataParallelKwargs,
    DistributedType,
    ProjectConfiguration,
    broadcast_object_list,
    set_seed,
)
from diffusers.optimization import get_scheduler
from diffusers.training_utils import (
    EMAModel,
    cast_training_params,
    compute_density_for_timestep_sampling,
    compute_loss_weighting_for_sd3,
    find_nearest_bucket,
)
from diffusers.utils import is_wandb_available, make_image_grid
from diffusers.utils.hub_utils import populate_model_card
from diffusers.utils.torch_utils import is_compiled_module
from huggingface_hub import ModelCard, ModelCardData, create_repo, upload_folder
from PIL import Image
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from diffusers_pixeldit import PIXELDIT_PRESETS, PixelDiTTransformer2DModel


logger = get_logger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
TMP_CHECKPOINT_PREFIX = ".tmp-checkpoint-"
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
REPA_PROJECTOR_NAME = "repa_projector.safetensors"
TRAINING_STATE_NAME = "training_state.json"
SELF_SAVING = (DistributedType.FSDP, DistributedType.DEEPSPEED)
# Never uploaded with the final pipeline.
UPLOAD_IGNORE_PATTERNS = ["step_*", "epoch_*", f"{CHECKPOINT_PREFIX}*", f"{TMP_CHECKPOINT_PREFIX}*"]
MODEL_CARD_TEMPLATE = "---\n{{ card_data }}\n---\n\n{{ model_description }}\n"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ----------------------------------------------------------------------------------------------------- arguments


def add_training_arguments(parser: argparse.ArgumentParser, default_preset: str, lora_layers: str):
    """The arguments both scripts share (diffusers' names and defaults unless the PixelDiT recipe says otherwise)."""
    parser.add_argument(
        "--pretrained_model_name_or_path",
        type=str,
        default=None,
        help="A PixelDiT pipeline folder or Hub repo to fine-tune. Without it a model is trained from scratch.",
    )
    parser.add_argument("--revision", type=str, default=None, help="Revision of the pretrained pipeline.")
    parser.add_argument("--variant", type=str, default=None, help="Variant of the pretrained weights, e.g. fp16.")
    parser.add_argument(
        "--preset",
        type=str,
        default=default_preset,
        choices=sorted(PIXELDIT_PRESETS),
        help="Architecture to train from scratch (ignored with --pretrained_model_name_or_path).",
    )
    parser.add_argument(
        "--transformer_config",
        type=str,
        default=None,
        help="From scratch: a JSON file or JSON string of `PixelDiTTransformer2DModel` config entries overriding the "
        "preset, e.g. '{\"num_layers\": 2}'.",
    )
    parser.add_argument(
        "--dataset_name",
        type=str,
        default=None,
        help="A Hub dataset, a local dataset folder, or a folder written by `datasets.Dataset.save_to_disk`.",
    )
    parser.add_argument("--dataset_config_name", type=str, default=None, help="The dataset's config name.")
    parser.add_argument(
        "--train_data_dir",
        type=str,
        default=None,
        help="An image folder (`imagefolder`: class sub-folders and/or a metadata.jsonl/.csv file). With "
        "--dataset_name it is passed as `data_dir`.",
    )
    parser.add_argument("--image_column", type=str, default="image", help="The dataset column holding images.")
    parser.add_argument("--cache_dir", type=str, default=None, help="Where downloaded datasets/models are stored.")
    parser.add_argument(
        "--max_train_samples", type=int, default=None, help="Train on this many (shuffled) samples only."
    )
    parser.add_argument("--resolution", type=int, default=256, help="Training image side in pixels.")
    parser.add_argument(
        "--center_crop", action="store_true", help="Center-crop the resized images (random crop otherwise)."
    )
    parser.add_argument("--random_flip", action="store_true", help="Randomly flip images horizontally.")
    parser.add_argument(
        "--image_interpolation_mode",
        type=str,
        default="lanczos",
        choices=[mode.name.lower() for mode in Image.Resampling],
        help="PIL interpolation used to resize images.",
    )
    parser.add_argument("--dataloader_num_workers", type=int, default=0, help="Data-loading worker processes.")
    parser.add_argument("--train_batch_size", type=int, default=16, help="Batch size per device (per micro-step).")
    parser.add_argument("--num_train_epochs", type=int, default=100)
    parser.add_argument(
        "--max_train_steps",
        type=int,
        default=None,
        help="Total optimizer steps; overrides --num_train_epochs.",
    )
    parser.add_argument("--gradient_accumulation_steps", type=int, default=1)
    parser.add_argument("--gradient_checkpointing", action="store_true", help="Trade compute for memory.")
    parser.add_argument("--learning_rate", type=float, default=1e-4)
    parser.add_argument(
        "--scale_lr",
        action="store_true",
        help="Scale the learning rate by the number of processes, accumulation steps and batch size.",
    )
    parser.add_argument(
        "--lr_scheduler",
        type=str,
        default="constant",
        help='One of "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup".',
    )
    parser.add_argument("--lr_warmup_steps", type=int, default=500)
    parser.add_argument("--lr_num_cycles", type=int, default=1, help="Hard resets of cosine_with_restarts.")
    parser.add_argument("--lr_power", type=float, default=1.0, help="Power of the polynomial scheduler.")
    parser.add_argument("--adam_beta1", type=float, default=0.9)
    parser.add_argument("--adam_beta2", type=float, default=0.999)
    parser.add_argument("--adam_weight_decay", type=float, default=0.0, help="0 as the paper (diffusers: 1e-2).")
    parser.add_argument("--adam_epsilon", type=float, default=1e-8)
    parser.add_argument("--max_grad_norm", type=float, default=1.0)
    parser.add_argument("--allow_tf32", action="store_true", help="Allow TF32 matmuls on Ampere GPUs.")
    parser.add_argument(
        "--mixed_precision",
        type=str,
        default=None,
        choices=["no", "fp16", "bf16"],
        help="Defaults to the accelerate config. The trained weights stay in float32 (autocast).",
    )
    parser.add_argument("--use_ema", action="store_true", help="Keep an EMA of the weights; it is what is saved.")
    parser.add_argument("--ema_decay", type=float, default=0.9999)
    parser.add_argument(
        "--weighting_scheme",
        type=str,
        default="logit_normal",
        choices=["sigma_sqrt", "logit_normal", "mode", "cosmap", "none"],
        help="σ sampling density (logit_normal, mode, else uniform) and loss weighting (sigma_sqrt, cosmap).",
    )
    parser.add_argument("--logit_mean", type=float, default=0.0, help="Mean of the logit-normal σ density.")
    parser.add_argument("--logit_std", type=float, default=1.0, help="Std of the logit-normal σ density.")
    parser.add_argument("--mode_scale", type=float, default=1.29, help="Scale of the `mode` σ density.")
    parser.add_argument(
        "--training_shift",
        type=float,
        default=1.0,
        help="Timeshift of the sampled σ: σ = shift·u / (1 + (shift − 1)·u). 1.0 (σ = u) as the paper.",
    )
    parser.add_argument(
        "--repa_encoder",
        type=str,
        default=None,
        help="REPA: a transformers `Dinov2Model` (folder or Hub id), e.g. facebook/dinov2-base. Off when unset.",
    )
    parser.add_argument("--repa_weight", type=float, default=0.5, help="Weight of the REPA loss (paper: 0.5).")
    parser.add_argument(
        "--repa_layer", type=int, default=8, help="1-based patch-level block whose output is aligned (paper: 8)."
    )
    parser.add_argument("--rank", type=int, default=None, help="Train a LoRA of this rank instead of all weights.")
    parser.add_argument("--lora_alpha", type=int, default=None, help="LoRA alpha (default: the rank).")
    parser.add_argument(
        "--lora_layers", type=str, default=lora_layers, help="Comma-separated module names that get a LoRA."
    )
    parser.add_argument("--checkpointing_steps", type=int, default=500, help="Save the training state every N steps.")
    parser.add_argument(
        "--checkpoints_total_limit", type=int, default=None, help="Keep at most this many checkpoints."
    )
    parser.add_argument(
        "--resume_from_checkpoint",
        type=str,
        default=None,
        help='A checkpoint folder, or "latest" for the newest `checkpoint-N` of --output_dir.',
    )
    parser.add_argument("--validation_steps", type=int, default=500, help="Sample validation images every N steps.")
    parser.add_argument("--num_validation_images", type=int, default=4, help="Images per validation condition.")
    parser.add_argument("--validation_num_inference_steps", type=int, default=None, help="Default: the pipeline's.")
    parser.add_argument("--validation_guidance_scale", type=float, default=None, help="Default: the pipeline's.")
    parser.add_argument(
        "--recipe_num_inference_steps",
        type=int,
        default=None,
        help="Sampling steps saved as the pipeline's default (model_index.json). Default: the pretrained pipeline's.",
    )
    parser.add_argument(
        "--recipe_guidance_scale", type=float, default=None, help="CFG scale saved as the pipeline's default."
    )
    parser.add_argument(
        "--recipe_guidance_interval",
        type=float,
        nargs=2,
        default=None,
        metavar=("LOW", "HIGH"),
        help="CFG interval (model-card time t = 1 - σ) saved as the pipeline's default.",
    )
    parser.add_argument("--output_dir", type=str, default="pixeldit-model")
    parser.add_argument("--seed", type=int, default=None, help="Seed of the whole run (random when unset).")
    parser.add_argument("--logging_dir", type=str, default="logs", help="Tracker folder, inside --output_dir.")
    parser.add_argument(
        "--report_to", type=str, default="tensorboard", help='"tensorboard", "wandb", "all" or "none".'
    )
    parser.add_argument("--tracker_project_name", type=str, default="pixeldit")
    parser.add_argument("--push_to_hub", action="store_true", help="Upload the final pipeline to the Hub.")
    parser.add_argument("--hub_token", type=str, default=None)
    parser.add_argument("--hub_model_id", type=str, default=None, help="Default: the name of --output_dir.")


def check_training_arguments(args: argparse.Namespace):
    if args.dataset_name is None and args.train_data_dir is None:
        raise ValueError("Pass a dataset: --dataset_name or --train_data_dir.")
    if args.rank is not None and args.pretrained_model_name_or_path is None:
        raise ValueError("LoRA (--rank) fine-tunes a pretrained pipeline: pass --pretrained_model_name_or_path.")
    if args.use_ema and args.rank is not None:
        raise ValueError("--use_ema averages full weights; it cannot be combined with LoRA (--rank).")
    if args.report_to in ("wandb", "all") and args.hub_token is not None:
        raise ValueError("Don't use --report_to wandb with --hub_token (security risk); use `hf auth login`.")
    if args.repa_encoder is not None and args.repa_layer < 1:
        raise ValueError(f"--repa_layer is 1-based, got {args.repa_layer}.")


def create_hub_repo(args: argparse.Namespace) -> str:
    """Creates (or finds) the Hub repo the run is pushed to; returns its id."""
    return create_repo(
        repo_id=args.hub_model_id or Path(args.output_dir).name, exist_ok=True, token=args.hub_token
    ).repo_id


def upload_output_dir(args: argparse.Namespace, repo_id: str):
    """Pushes the output folder (without checkpoints and validation images) to the Hub repo."""
    upload_folder(
        repo_id=repo_id,
        folder_path=args.output_dir,
        commit_message="End of training",
        ignore_patterns=UPLOAD_IGNORE_PATTERNS,
        token=args.hub_token,
    )


def training_command(script: str, argv: list[str]) -> str:
    """The launch command, for the model card (the Hub token redacted)."""
    argv = list(argv)
    for i, arg in enumerate(argv):
        if arg == "--hub_token" and i + 1 < len(argv):
            argv[i + 1] = "***"
        elif arg.startswith("--hub_token="):
            argv[i] = "--hub_token=***"
    return shlex.join(["accelerate", "launch", f"examples/{Path(script).name}"] + argv)


def model_summary(args: argparse.Namespace, scratch_details: str) -> str:
    """A model-card sentence on what the model is."""
    subject = "A pixel-space PixelDiT (no VAE)"
    if args.rank is not None:
        subject = f"A rank-{args.rank} LoRA for a pixel-space PixelDiT (no VAE)"
    if args.pretrained_model_name_or_path is None:
        return f"{subject} trained from scratch ({scratch_details})"
    return f"{subject} fine-tuned from `{args.pretrained_model_name_or_path}`"


def loading_code(args: argparse.Namespace, repo_id: str, pipeline_class: str) -> str:
    """Model-card code that loads the result: the pipeline, or the base pipeline plus the LoRA."""
    if args.rank is None:
        return f'pipe = {pipeline_class}.from_pretrained("{repo_id}")'
    return (
        f'pipe = {pipeline_class}.from_pretrained("{args.pretrained_model_name_or_path}")\n'
        f'pipe.transformer.load_lora_adapter("{repo_id}", weight_name="{LORA_WEIGHT_NAME}", prefix=None)'
    )


def training_summary(args: argparse.Namespace, dropout: str) -> str:
    """A model-card paragraph on how the model was trained."""
    repa = (
        f" REPA with `{args.repa_encoder}` (weight {args.repa_weight}, block {args.repa_layer})."
        if args.repa_encoder
        else ""
    )
    return (
        f"Trained for {args.max_train_steps} steps at {args.resolution}x{args.resolution} on "
        f"`{args.dataset_name or args.train_data_dir}` with rectified flow (x_t = (1 - σ)·x0 + σ·ε, the model "
        f"predicts ε - x0; σ ~ {args.weighting_scheme}, training shift {args.training_shift}), {dropout}."
        f"{repa} Weights: {'EMA (decay ' + str(args.ema_decay) + ')' if args.use_ema else 'raw (no EMA)'}."
    )


def write_model_card(args: argparse.Namespace, model_description: str, tags: list[str], repo_folder: str):
    """Writes `repo_folder/README.md`: the description followed by the training command."""
    model_description += f"\n\n## Training command\n\n```bash\n{args.training_command}\n```\n"
    card = ModelCard.from_template(
        ModelCardData(library_name="diffusers", base_model=args.pretrained_model_name_or_path),
        template_str=MODEL_CARD_TEMPLATE,
        model_description=model_description,
    )
    tags = ["pixeldit"] + tags + (["lora"] if args.rank is not None else []) + ["diffusers-training", "diffusers"]
    populate_model_card(card, tags=tags).save(os.path.join(repo_folder, "README.md"))


def transformer_overrides(args: argparse.Namespace) -> dict:
    """The --transformer_config entries (a JSON file, e.g. a saved config.json, or a JSON string)."""
    if args.transformer_config is None:
        return {}
    if os.path.isfile(args.transformer_config):
        config = json.loads(Path(args.transformer_config).read_text())
    else:
        config = json.loads(args.transformer_config)
    return {key: value for key, value in config.items() if not key.startswith("_")}


# --------------------------------------------------------------------------------------------------- accelerator


def create_accelerator(args: argparse.Namespace, find_unused_parameters: bool = False) -> Accelerator:
    """Accelerator, logging and the run's seed; resolves `args.resume_from_checkpoint` to a folder (or None)."""
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(
            project_dir=args.output_dir, logging_dir=os.path.join(args.output_dir, args.logging_dir)
        ),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=find_unused_parameters)],
    )
    if torch.backends.mps.is_available():
        accelerator.native_amp = False
    if args.report_to in ("wandb", "all") and not is_wandb_available():
        raise ImportError("Install wandb to use it for logging: `pip install wandb`.")
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%m/%d/%Y %H:%M:%S", level=logging.INFO
    )
    logger.info(accelerator.state, main_process_only=False)
    if accelerator.is_local_main_process:
        datasets.utils.logging.set_verbosity_warning()
        transformers.utils.logging.set_verbosity_warning()
        diffusers.utils.logging.set_verbosity_info()
    else:
        datasets.utils.logging.set_verbosity_error()
        transformers.utils.logging.set_verbosity_error()
        diffusers.utils.logging.set_verbosity_error()

    args.resume_from_checkpoint = find_resume_checkpoint(args)
    if args.seed is None and args.resume_from_checkpoint is not None:
        args.seed = json.loads(Path(args.resume_from_checkpoint, TRAINING_STATE_NAME).read_text())["seed"]
    if args.seed is None:
        seed = [int(np.random.SeedSequence().generate_state(1)[0] >> 1)]
        args.seed = broadcast_object_list(seed)[0]
        logger.info(f"No --seed given; this run's seed is {args.seed}.")
    set_seed(args.seed)
    if args.allow_tf32 and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True

    if accelerator.is_main_process:
        os.makedirs(args.output_dir, exist_ok=True)
        for stale in Path(args.output_dir).glob(f"{TMP_CHECKPOINT_PREFIX}*"):
            logger.info(f"Removing the unfinished checkpoint {stale}.")
            shutil.rmtree(stale)
    accelerator.wait_for_everyone()
    return accelerator


def weight_dtype_of(accelerator: Accelerator) -> torch.dtype:
    """The dtype of the frozen models (text encoder, DINOv2) under the run's mixed precision."""
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)


def unwrap_model(accelerator: Accelerator, model: nn.Module) -> nn.Module:
    model = accelerator.unwrap_model(model)
    return model._orig_mod if is_compiled_module(model) else model


def prepare_transformer(args: argparse.Namespace, transformer: PixelDiTTransformer2DModel, weight_dtype):
    """Gradient checkpointing, and LoRA adapters (the base weights frozen in `weight_dtype`) when --rank is set."""
    if args.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    if args.rank is not None:
        from peft import LoraConfig

        transformer.requires_grad_(False).to(dtype=weight_dtype)
        transformer.add_adapter(
            LoraConfig(
                r=args.rank,
                lora_alpha=args.lora_alpha or args.rank,
                init_lora_weights="gaussian",
                target_modules=[name.strip() for name in args.lora_layers.split(",")],
            )
        )
        cast_training_params(transformer, dtype=torch.float32)
    transformer.train()


# ---------------------------------------------------------------------------------------------------------- data


def load_image_dataset(args: argparse.Namespace, columns: list[str]) -> datasets.Dataset:
    """The training split with undecoded images (`{"path", "bytes"}`, decoded by `FlowMatchingDataset`)."""
    # Folders written by `save_to_disk` hold a state.json (Dataset) or a dataset_dict.json (DatasetDict).
    if args.dataset_name is not None and Path(args.dataset_name, "state.json").is_file():
        dataset = datasets.load_from_disk(args.dataset_name)
    elif args.dataset_name is not None and Path(args.dataset_name, "dataset_dict.json").is_file():
        dataset = datasets.load_from_disk(args.dataset_name)["train"]
    elif args.dataset_name is not None:
        dataset = datasets.load_dataset(
            args.dataset_name, args.dataset_config_name, cache_dir=args.cache_dir, data_dir=args.train_data_dir
        )["train"]
    else:
        dataset = datasets.load_dataset("imagefolder", data_dir=args.train_data_dir, cache_dir=args.cache_dir)["train"]
    for column in columns:
        if column not in dataset.column_names:
            raise ValueError(f"Column {column!r} is not in the dataset; its columns are {dataset.column_names}.")
    if args.max_train_samples is not None:
        dataset = dataset.shuffle(seed=args.seed).select(range(min(args.max_train_samples, len(dataset))))
    return dataset.cast_column(args.image_column, datasets.Image(decode=False))


IMAGE_MODES = {1: "L", 3: "RGB", 4: "RGBA"}  # by the model's input channels


def open_image(value: dict, index: int, mode: str | None = "RGB") -> Image.Image:
    """Opens a dataset image, converted to `mode` (`None`: not decoded); a file that can't be read raises an
    `OSError` naming it."""
    path = value.get("path")
    try:
        image = Image.open(io.BytesIO(value["bytes"]) if value.get("bytes") else path)
        return image.convert(mode) if mode else image
    except Exception as error:
        raise OSError(
            f"Cannot read training image {path or '<embedded bytes>'} (dataset row {index}): {error}"
        ) from error


def bucket_sizes(dataset: datasets.Dataset, image_column: str, buckets: list[tuple[int, int]]) -> list[tuple]:
    """The (height, width) bucket of every image: the one nearest its aspect ratio (reads image headers only)."""
    sizes = []
    for index, row in enumerate(dataset.select_columns([image_column])):
        with open_image(row[image_column], index, mode=None) as image:
            sizes.append(buckets[find_nearest_bucket(image.height, image.width, buckets)])
    return sizes


def preprocess_image(image, size, center_crop, random_flip, resample, generator) -> torch.Tensor:
    """Resizes `image` to cover `size` (height, width) keeping its aspect ratio, crops, flips; (C, H, W) in [-1, 1]."""
    height, width = size
    scale = max(height / image.height, width / image.width)
    resized = (max(width, round(image.width * scale)), max(height, round(image.height * scale)))
    if resized != image.size:
        image = image.resize(resized, resample=resample)
    if center_crop:
        top, left = round((resized[1] - height) / 2), round((resized[0] - width) / 2)
    else:
        top = int(torch.randint(resized[1] - height + 1, (), generator=generator))
        left = int(torch.randint(resized[0] - width + 1, (), generator=generator))
    image = image.crop((left, top, left + width, top + height))
    if random_flip and torch.rand((), generator=generator) < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    pixels = np.asarray(image, dtype=np.float32).reshape(height, width, -1)
    return torch.from_numpy(pixels / 127.5 - 1.0).permute(2, 0, 1).contiguous()


def sample_seed(seed: int, step: int, position: int) -> int:
    """Seed of the random draws of the sample at `position` of the global batch of optimizer step `step`."""
    return int(np.random.SeedSequence([seed, step, position]).generate_state(1, np.uint64)[0] >> 1)


class FlowMatchingDataset(torch.utils.data.Dataset):
    """Training samples with their random draws, indexed by `(row, step, position)` keys (see `StepBatchSampler`).

    An item holds `pixel_values` (C, H, W) in [-1, 1] (C = `channels`: grey, RGB or RGBA), the flow-matching `noise` (same shape), `u` (the σ density
    sample, see `sigmas_from_u`), `drop` (CFG dropout of the condition) and `condition` (the row's entry of
    `conditions`: a class id or a caption; one caption is picked when a row has several).
    """

    def __init__(
        self, dataset, conditions, sizes, args: argparse.Namespace, drop_probability: float, channels: int = 3
    ):
        if channels not in IMAGE_MODES:
            raise ValueError(f"Images can be read with {sorted(IMAGE_MODES)} channels, the model takes {channels}.")
        self.image_mode = IMAGE_MODES[channels]
        self.dataset = dataset
        self.conditions = conditions
        self.sizes = sizes
        self.image_column = args.image_column
        self.seed = args.seed
        self.center_crop = args.center_crop
        self.random_flip = args.random_flip
        self.resample = Image.Resampling[args.image_interpolation_mode.upper()]
        self.density = dict(
            weighting_scheme=args.weighting_scheme,
            logit_mean=args.logit_mean,
            logit_std=args.logit_std,
            mode_scale=args.mode_scale,
        )
        self.drop_probability = drop_probability

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int, int]) -> dict:
        index, step, position = key
        generator = torch.Generator().manual_seed(sample_seed(self.seed, step, position))
        u = compute_density_for_timestep_sampling(batch_size=1, generator=generator, **self.density)[0]
        drop = bool(torch.rand((), generator=generator) < self.drop_probability)
        condition = self.conditions[index]
        if isinstance(condition, (list, tuple)):
            condition = condition[int(torch.randint(len(condition), (), generator=generator))]
        image = open_image(self.dataset[index][self.image_column], index, self.image_mode)
        pixel_values = preprocess_image(
            image, self.sizes[index], self.center_crop, self.random_flip, self.resample, generator
        )
        noise = torch.randn(pixel_values.shape, generator=generator)
        return {"pixel_values": pixel_values, "noise": noise, "u": u, "drop": drop, "condition": condition}


def count_steps_per_epoch(groups: list[list[int]], global_batch_size: int) -> int:
    """Optimizer steps per epoch: the full global batches of all size groups."""
    steps = sum(len(group) // global_batch_size for group in groups)
    if steps == 0:
        raise ValueError(
            f"No size group has a full global batch of {global_batch_size} images (group sizes "
            f"{[len(group) for group in groups]}): lower the batch size."
        )
    return steps


class StepBatchSampler(torch.utils.data.Sampler):
    """Deterministic, resumable batches; each global batch comes from one size group (aspect-ratio bucket).

    Epoch `e` shuffles every group with `default_rng([seed, e])`, cuts it into global batches of
    `batch_size × num_processes × gradient_accumulation_steps` rows (dropping the remainder) and shuffles the batch
    order. For optimizer steps `start_step … max_steps − 1` this process yields its micro-batches; the sample at
    `position` p of a global batch goes to micro-step `p // (batch_size · num_processes)`, process
    `(p // batch_size) % num_processes`. Each item is the dataset key `(row, step, position)`.
    """

    def __init__(self, groups, batch_size, num_processes, process_index, accumulation, seed, start_step, max_steps):
        self.groups = [np.asarray(group, dtype=np.int64) for group in groups]
        self.batch_size = batch_size
        self.num_processes = num_processes
        self.process_index = process_index
        self.accumulation = accumulation
        self.seed = seed
        self.start_step = start_step
        self.max_steps = max_steps
        self.global_batch_size = batch_size * num_processes * accumulation
        self.steps_per_epoch = count_steps_per_epoch(groups, self.global_batch_size)

    def epoch_batches(self, epoch: int) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, epoch])
        size, batches = self.global_batch_size, []
        for group in self.groups:
            rows = rng.permutation(group)
            batches += [rows[i * size : (i + 1) * size] for i in range(len(rows) // size)]
        return [batches[i] for i in rng.permutation(len(batches))]

    def __iter__(self):
        epoch, batches = None, None
        for step in range(self.start_step, self.max_steps):
            if step // self.steps_per_epoch != epoch:
                epoch = step // self.steps_per_epoch
                batches = self.epoch_batches(epoch)
            rows = batches[step % self.steps_per_epoch]
            for micro_step in range(self.accumulation):
                start = (micro_step * self.num_processes + self.process_index) * self.batch_size
                yield [(int(rows[p]), step, p) for p in range(start, start + self.batch_size)]

    def __len__(self):
        return max(self.max_steps - self.start_step, 0) * self.accumulation


# ---------------------------------------------------------------------------------------------------- objective


def sigmas_from_u(u: torch.Tensor, shift: float) -> torch.Tensor:
    """σ from the density sample u: σ = shift·u / (1 + (shift − 1)·u), i.e. σ = u for shift 1."""
    return shift * u / (1 + (shift - 1) * u)


def repa_projector(dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, out_dim))


class REPA:
    """REPA representation alignment with a frozen DINOv2.

    A forward hook keeps the output tokens of patch-level block `layer` (1-based); `loss` maps them through the
    projector and returns `mean(1 − cos)` against the DINOv2 patch features (`last_hidden_state[:, 1:]`) of the clean
    images, which are ImageNet-normalised and resized (bicubic) to 14/16 of their size first. The DINOv2 token grid is
    resized (bilinear) to the transformer's patch grid when they differ.
    """

    def __init__(self, encoder_name_or_path: str, transformer: PixelDiTTransformer2DModel, layer: int, device, dtype):
        from transformers import Dinov2Model

        if layer > len(transformer.transformer_blocks):
            raise ValueError(f"--repa_layer {layer} > the {len(transformer.transformer_blocks)} patch-level blocks.")
        self.encoder = Dinov2Model.from_pretrained(encoder_name_or_path).eval().requires_grad_(False)
        self.encoder.to(device, dtype=dtype)
        self.dtype = dtype
        self.patch_size = transformer.config.patch_size
        self.mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
        self.tokens = None
        self.hook = transformer.transformer_blocks[layer - 1].register_forward_hook(self._keep_tokens)

    @property
    def feature_dim(self) -> int:
        return self.encoder.config.hidden_size

    def _keep_tokens(self, module, inputs, output):
        # Joint (text-to-image) blocks return (text tokens, image tokens).
        self.tokens = output[1] if isinstance(output, tuple) else output

    @torch.no_grad()
    def features(self, pixel_values: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        height, width = pixel_values.shape[-2:]
        images = ((pixel_values.float() + 1) / 2 - self.mean) / self.std
        images = F.interpolate(images, size=(height * 14 // 16, width * 14 // 16), mode="bicubic", align_corners=False)
        features = self.encoder(pixel_values=images.to(self.dtype)).last_hidden_state[:, 1:].float()
        patch = self.encoder.config.patch_size
        encoder_grid = (images.shape[-2] // patch, images.shape[-1] // patch)
        if encoder_grid != grid:
            features = features.transpose(1, 2).unflatten(2, encoder_grid)
            features = F.interpolate(features, size=grid, mode="bilinear", align_corners=False)
            features = features.flatten(2).transpose(1, 2)
        return features

    def loss(self, projector: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
        grid = (pixel_values.shape[-2] // self.patch_size, pixel_values.shape[-1] // self.patch_size)
        tokens, self.tokens = self.tokens, None
        projected = projector(tokens).float()
        return (1 - F.cosine_similarity(projected, self.features(pixel_values, grid), dim=-1)).mean()


def flow_matching_loss(transformer, batch: dict, condition_kwargs: dict, args, repa=None, projector=None):
    """Rectified flow in diffusers' convention: x_t = (1 − σ)·x0 + σ·ε, the model (fed σ·1000) predicts ε − x0.

    Returns `(loss, flow_loss, repa_loss)`; loss = flow_loss + repa_weight · repa_loss.
    """
    pixel_values, noise = batch["pixel_values"], batch["noise"]
    sigmas = sigmas_from_u(batch["u"], args.training_shift)
    sigmas_4d = sigmas.view(-1, 1, 1, 1)
    noisy = (1 - sigmas_4d) * pixel_values + sigmas_4d * noise
    model_pred = transformer(noisy, timestep=sigmas * 1000, **condition_kwargs, return_dict=False)[0]
    weighting = compute_loss_weighting_for_sd3(args.weighting_scheme, sigmas).view(-1, 1, 1, 1)
    squared_error = weighting.float() * (model_pred.float() - (noise - pixel_values).float()) ** 2
    flow_loss = squared_error.flatten(1).mean(1).mean()
    if repa is None:
        return flow_loss, flow_loss, torch.zeros_like(flow_loss)
    repa_loss = repa.loss(projector, pixel_values)
    return flow_loss + args.repa_weight * repa_loss, flow_loss, repa_loss


# -------------------------------------------------------------------------------------------------- checkpoints


def find_resume_checkpoint(args: argparse.Namespace) -> str | None:
    if args.resume_from_checkpoint is None:
        return None
    if args.resume_from_checkpoint != "latest":
        path = args.resume_from_checkpoint
        if not os.path.isdir(path):
            path = os.path.join(args.output_dir, os.path.basename(path))
        if not os.path.isdir(path):
            raise ValueError(f"Checkpoint {args.resume_from_checkpoint!r} does not exist.")
        return path
    checkpoints = list_checkpoints(args.output_dir)
    if not checkpoints:
        logger.info("No checkpoint to resume from: starting a new training run.")
        return None
    return checkpoints[-1]


def list_checkpoints(output_dir: str) -> list[str]:
    """The complete `checkpoint-N` folders of `output_dir`, oldest first."""
    if not os.path.isdir(output_dir):
        return []
    names = [name for name in os.listdir(output_dir) if re.fullmatch(rf"{CHECKPOINT_PREFIX}\d+", name)]
    return [os.path.join(output_dir, name) for name in sorted(names, key=checkpoint_step)]


def checkpoint_step(path: str) -> int:
    return int(os.path.basename(os.path.normpath(path))[len(CHECKPOINT_PREFIX) :])


def save_checkpoint(accelerator: Accelerator, args: argparse.Namespace, global_step: int):
    """Saves the training state atomically: written to a temporary folder renamed to `checkpoint-N` once complete;
    then only the newest `checkpoints_total_limit` checkpoints are kept."""
    tmp_dir = os.path.join(args.output_dir, f"{TMP_CHECKPOINT_PREFIX}{global_step}")
    accelerator.save_state(tmp_dir)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        Path(tmp_dir, TRAINING_STATE_NAME).write_text(json.dumps({"seed": args.seed, "global_step": global_step}))
        save_path = os.path.join(args.output_dir, f"{CHECKPOINT_PREFIX}{global_step}")
        os.replace(tmp_dir, save_path)
        logger.info(f"Saved state to {save_path}")
        if args.checkpoints_total_limit is not None:
            for old in list_checkpoints(args.output_dir)[: -args.checkpoints_total_limit]:
                logger.info(f"Removing checkpoint {old} (--checkpoints_total_limit {args.checkpoints_total_limit}).")
                shutil.rmtree(old)
    accelerator.wait_for_everyone()


def register_checkpoint_hooks(accelerator: Accelerator, args: argparse.Namespace, ema: EMAModel | None):
    """Checkpoints hold the transformer as `transformer/` (or its LoRA as `pytorch_lora_weights.safetensors`), the
    EMA as `transformer_ema/` and the REPA projector; accelerate adds optimizer, scheduler and RNG states."""
    from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

    def save_model_hook(models, weights, output_dir):
        if not accelerator.is_main_process:
            return
        # FSDP and DeepSpeed save (and load) their sharded models themselves.
        for model in models if accelerator.distributed_type not in SELF_SAVING else []:
            model = unwrap_model(accelerator, model)
            if not isinstance(model, PixelDiTTransformer2DModel):
                save_file(model.state_dict(), os.path.join(output_dir, REPA_PROJECTOR_NAME))
            elif args.rank is not None:
                save_file(get_peft_model_state_dict(model), os.path.join(output_dir, LORA_WEIGHT_NAME))
            else:
                model.save_pretrained(os.path.join(output_dir, "transformer"))
            if weights:
                weights.pop()
        if ema is not None:
            ema.save_pretrained(os.path.join(output_dir, "transformer_ema"))

    def load_model_hook(models, input_dir):
        while models:
            model = unwrap_model(accelerator, models.pop())
            if not isinstance(model, PixelDiTTransformer2DModel):
                model.load_state_dict(load_file(os.path.join(input_dir, REPA_PROJECTOR_NAME)))
            elif args.rank is not None:
                set_peft_model_state_dict(model, load_file(os.path.join(input_dir, LORA_WEIGHT_NAME)))
            else:
                loaded = PixelDiTTransformer2DModel.from_pretrained(input_dir, subfolder="transformer")
                model.register_to_config(**loaded.config)
                model.load_state_dict(loaded.state_dict())
                del loaded
        if ema is not None:
            loaded = EMAModel.from_pretrained(os.path.join(input_dir, "transformer_ema"), PixelDiTTransformer2DModel)
            ema.load_state_dict(loaded.state_dict())
            ema.to(accelerator.device)
            del loaded

    accelerator.register_save_state_pre_hook(save_model_hook)
    accelerator.register_load_state_pre_hook(load_model_hook)


# -------------------------------------------------------------------------------------------------------- loop


def train(
    args: argparse.Namespace,
    accelerator: Accelerator,
    transformer: PixelDiTTransformer2DModel,
    train_dataset: FlowMatchingDataset,
    groups: list[list[int]],
    condition_fn: Callable[[dict], dict],
    validation_fn: Callable[[PixelDiTTransformer2DModel, int], None] | None,
) -> PixelDiTTransformer2DModel:
    """Runs the training loop; returns the unwrapped transformer holding the final (EMA, with --use_ema) weights.

    `groups` lists the dataset rows of each size group; `condition_fn(batch)` gives the transformer's conditioning
    kwargs (class labels or text embeddings, CFG dropout applied); `validation_fn(transformer, step)` runs on the
    main process every --validation_steps steps (with the EMA weights swapped in).
    """
    if accelerator.distributed_type == DistributedType.FSDP:
        if args.use_ema or args.rank is not None:
            raise ValueError("--use_ema and LoRA (--rank) need unsharded weights: use DDP, not FSDP.")
        if validation_fn is not None:
            logger.warning("With FSDP only the final validation runs (it needs unsharded weights).")
            validation_fn = None
    weight_dtype = weight_dtype_of(accelerator)
    ema = None
    if args.use_ema:
        ema = EMAModel(
            transformer.parameters(),
            decay=args.ema_decay,
            model_cls=PixelDiTTransformer2DModel,
            model_config=transformer.config,
        )
        ema.to(accelerator.device)
    repa = projector = None
    models = [transformer]
    if args.repa_encoder is not None:
        repa = REPA(args.repa_encoder, transformer, args.repa_layer, accelerator.device, weight_dtype)
        projector = repa_projector(transformer.inner_dim, repa.feature_dim)
        models.append(projector)
    register_checkpoint_hooks(accelerator, args, ema)

    if args.scale_lr:
        args.learning_rate *= args.gradient_accumulation_steps * args.train_batch_size * accelerator.num_processes
    params_to_optimize = [p for model in models for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params_to_optimize,
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.adam_weight_decay,
        eps=args.adam_epsilon,
    )
    global_batch_size = args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    steps_per_epoch = count_steps_per_epoch(groups, global_batch_size)
    if args.max_train_steps is None:
        args.max_train_steps = args.num_train_epochs * steps_per_epoch
    args.num_train_epochs = math.ceil(args.max_train_steps / steps_per_epoch)
    lr_scheduler = get_scheduler(
        args.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=args.max_train_steps * accelerator.num_processes,
        num_cycles=args.lr_num_cycles,
        power=args.lr_power,
    )
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        # The data loader is not prepared by accelerate, which otherwise takes the micro-batch size from it.
        accelerator.state.deepspeed_plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = args.train_batch_size
    *models, optimizer, lr_scheduler = accelerator.prepare(*models, optimizer, lr_scheduler)
    transformer = models[0]
    projector = models[1] if repa is not None else None

    if accelerator.is_main_process:
        tracker_config = {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))}
        accelerator.init_trackers(args.tracker_project_name, config=tracker_config)

    global_step = 0
    if args.resume_from_checkpoint is not None:
        logger.info(f"Resuming from checkpoint {args.resume_from_checkpoint}")
        accelerator.load_state(args.resume_from_checkpoint)
        global_step = checkpoint_step(args.resume_from_checkpoint)

    sampler = StepBatchSampler(
        groups,
        args.train_batch_size,
        accelerator.num_processes,
        accelerator.process_index,
        args.gradient_accumulation_steps,
        args.seed,
        global_step,
        args.max_train_steps,
    )
    train_dataloader = torch.utils.data.DataLoader(
        train_dataset,
        batch_sampler=sampler,
        num_workers=args.dataloader_num_workers,
        pin_memory=accelerator.device.type == "cuda",
    )
    logger.info("***** Running training *****")
    logger.info(f"  Num examples = {len(train_dataset)}")
    logger.info(f"  Num epochs = {args.num_train_epochs}")
    logger.info(f"  Instantaneous batch size per device = {args.train_batch_size}")
    logger.info(f"  Total train batch size (w. parallel, distributed & accumulation) = {sampler.global_batch_size}")
    logger.info(f"  Gradient accumulation steps = {args.gradient_accumulation_steps}")
    logger.info(f"  Total optimization steps = {args.max_train_steps}, starting at step {global_step}")

    progress_bar = tqdm(
        range(args.max_train_steps),
        initial=global_step,
        desc="Steps",
        disable=not accelerator.is_local_main_process,
    )
    step_losses = torch.zeros(3, device=accelerator.device)
    step_start = time.perf_counter()
    for batch in train_dataloader:
        batch = {k: v.to(accelerator.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
        with accelerator.accumulate(*models):
            loss, flow_loss, repa_loss = flow_matching_loss(
                transformer, batch, condition_fn(batch), args, repa, projector
            )
            losses = accelerator.gather(torch.stack([loss, flow_loss, repa_loss]).detach()[None]).mean(0)
            step_losses += losses / args.gradient_accumulation_steps
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(params_to_optimize, args.max_grad_norm)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad()

        if not accelerator.sync_gradients:
            continue
        if ema is not None:
            ema.step(unwrap_model(accelerator, transformer).parameters())
        global_step += 1
        logs = {
            "train_loss": step_losses[0].item(),
            "flow_loss": step_losses[1].item(),
            "lr": lr_scheduler.get_last_lr()[0],
            "img_per_sec": sampler.global_batch_size / (time.perf_counter() - step_start),
        }
        if repa is not None:
            logs["repa_loss"] = step_losses[2].item()
        step_losses.zero_()
        accelerator.log(logs, step=global_step)
        progress_bar.update(1)
        progress_bar.set_postfix(
            loss=f"{logs['train_loss']:.4f}", lr=f"{logs['lr']:.2e}", img_s=f"{logs['img_per_sec']:.1f}"
        )

        if global_step % args.checkpointing_steps == 0:
            save_checkpoint(accelerator, args, global_step)
        if validation_fn is not None and global_step % args.validation_steps == 0 and accelerator.is_main_process:
            run_validation(accelerator, transformer, ema, validation_fn, global_step)
        step_start = time.perf_counter()  # img/s excludes checkpointing and validation

    progress_bar.close()
    accelerator.wait_for_everyone()
    if accelerator.distributed_type == DistributedType.FSDP:
        # Gather the sharded weights into a plain model on the main process.
        state_dict = accelerator.get_state_dict(transformer)
        transformer = PixelDiTTransformer2DModel.from_config(unwrap_model(accelerator, transformer).config)
        if accelerator.is_main_process:
            transformer.load_state_dict(state_dict)
    else:
        transformer = unwrap_model(accelerator, transformer)
    if ema is not None:
        ema.copy_to(transformer.parameters())
    if repa is not None:
        repa.hook.remove()
    return transformer


def run_validation(accelerator, transformer, ema, validation_fn, global_step):
    transformer = unwrap_model(accelerator, transformer)
    if ema is not None:
        ema.store(transformer.parameters())
        ema.copy_to(transformer.parameters())
    validation_fn(transformer, global_step)
    if ema is not None:
        ema.restore(transformer.parameters())


def log_images(accelerator: Accelerator, args, images: list[Image.Image], rows: int, step: int, phase: str) -> str:
    """Saves the images as a grid (one row per condition) to `output_dir/validation/` and logs them to the trackers;
    returns the grid's path relative to `output_dir`."""
    grid = make_image_grid(images, rows=rows, cols=len(images) // rows)
    grid_path = f"validation/{phase}_step_{step}.png"
    Path(args.output_dir, "validation").mkdir(exist_ok=True)
    grid.save(Path(args.output_dir, grid_path))
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_images(phase, np.stack([np.asarray(i) for i in images]), step, dataformats="NHWC")
        elif tracker.name == "wandb":
            import wandb

            tracker.log({phase: [wandb.Image(grid, caption=f"step {step}")]}, step=step)
    return grid_path


PIPELINE_DEFAULTS = ("default_num_inference_steps", "default_guidance_scale", "default_guidance_interval")


def sampling_recipe(args: argparse.Namespace, pretrained_config=None) -> dict:
    """The sampling defaults of the saved pipeline: the pretrained pipeline's, overridden by the --recipe_* arguments."""
    recipe = {key: pretrained_config[key] for key in PIPELINE_DEFAULTS} if pretrained_config is not None else {}
    given = (args.recipe_num_inference_steps, args.recipe_guidance_scale, args.recipe_guidance_interval)
    recipe.update({key: value for key, value in zip(PIPELINE_DEFAULTS, given) if value is not None})
    return recipe
