#!/usr/bin/env python
# Copyright 2026 The diffusers-pixeldit authors. Licensed under the Apache License, Version 2.0.
"""Class-conditional PixelDiT and PixelDiT2 training, in the shape of diffusers' `train_text_to_image.py` with the
flow-matching objective of `train_dreambooth_sd3.py`; the reusable parts are in `diffusers_pixeldit.training`. See
examples/README.md.

    accelerate launch examples/train_class_conditional.py --train_data_dir ./imagenet_folder --resolution 256 \
        --preset PixelDiT-B --mixed_precision bf16 --use_ema --output_dir out
    accelerate launch examples/train_class_conditional.py --train_data_dir ./imagenet_folder --resolution 256 \
        --preset PixelDiT2-B/16 --grounding_encoder facebook/dinov3-vits16-pretrain-lvd1689m --use_ema --output_dir out
"""

import argparse
import os
import sys
from functools import partial

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import ProjectConfiguration
from diffusers.optimization import get_scheduler
from diffusers.utils import check_min_version, is_wandb_available
from PIL import Image
from tqdm.auto import tqdm

from diffusers_pixeldit import (
    PIXELDIT2_PRESETS,
    PIXELDIT_PRESETS,
    PixelDiT2Pipeline,
    PixelDiT2Transformer2DModel,
    PixelDiTFlowScheduler,
    PixelDiTPipeline,
    PixelDiTTransformer2DModel,
    training,
)


check_min_version("0.40.0")

logger = get_logger(__name__, log_level="INFO")

LORA_LAYERS = "to_q,to_k,to_v,to_out.0,ff.net.0.proj,ff.net.2"
# The σ density of each family's official training: PixelDiT t ~ sigmoid(N(0, 1)); PixelDiT2 t ~ sigmoid(N(−0.8, 0.8)),
# i.e. σ = 1 − t ~ sigmoid(N(0.8, 0.8)).
LOGIT_NORMAL = {"PixelDiT": (0.0, 1.0), "PixelDiT2": (0.8, 0.8)}
# Classes listed in the model card.
CARD_MAX_CLASSES = 20


def model_card(args, id2label: dict[str, str], objective, max_train_steps: int) -> training.ModelCardText:
    """The model card of the run (see `training.finish_training`)."""
    classes = ", ".join(f"{k}: {v}" for k, v in list(id2label.items())[:CARD_MAX_CLASSES])
    classes += " ..." if len(id2label) > CARD_MAX_CLASSES else ""
    repa = f"REPA with `{args.repa_encoder}` (weight {args.repa_weight}, block {args.repa_layer})"
    description = training.training_description(
        script=__file__,
        base_model=args.pretrained_model_name_or_path,
        lora_rank=args.rank,
        scratch_details=f"preset `{args.preset}`",
        dataset=args.dataset_name or args.train_data_dir,
        resolution=args.resolution,
        steps=max_train_steps,
        objective=objective,
        dropout=f"labels dropped to the null class with probability {args.class_dropout_prob}"
        + (
            f", grounding dropped with probability {args.grounding_dropout_prob}, both with probability "
            f"{args.joint_dropout_prob}"
            if args.pixeldit2
            else ""
        ),
        ema_decay=args.ema_decay if args.use_ema else None,
        repa=repa if args.repa_encoder else None,
    )
    if args.pixeldit2:
        description += (
            "\n\nThe pipeline holds its frozen grounding encoder, Meta's DINOv3, under the DINOv3 licence (gated on "
            "the Hub)."
        )
    return training.ModelCardText(
        title=f"{'PixelDiT2' if args.pixeldit2 else 'PixelDiT'} class-conditional model",
        description=f"{description}\n\nClasses ({len(id2label)}): {classes}",
        pipeline_class=(PixelDiT2Pipeline if args.pixeldit2 else PixelDiTPipeline).__name__,
        example_call="image = pipe(class_labels=[0]).images[0]",
        base_model=args.pretrained_model_name_or_path,
        training_command=training.launch_command(__file__, args.argv),
        tags=["class-conditional", "image-generation"],
    )


def log_validation(pipeline, args, accelerator, seed: int, step: int, is_final_validation: bool = False) -> str:
    """Samples `num_validation_images` per validation class; saves and logs the grid (one row per class); returns
    its path relative to the output folder."""
    logger.info(f"Running validation: {args.num_validation_images} images of classes {args.validation_class_labels}.")
    class_labels = [int(label) if label.isdigit() else label for label in args.validation_class_labels]
    return training.log_validation(
        pipeline,
        accelerator,
        args.output_dir,
        step=step,
        seed=seed,
        num_images=args.num_validation_images,
        num_conditions=len(class_labels),
        is_final_validation=is_final_validation,
        class_labels=class_labels,
        height=args.resolution,
        width=args.resolution,
        num_inference_steps=args.validation_num_inference_steps,
        guidance_scale=args.validation_guidance_scale,
    )


def parse_args(input_args=None):
    parser = argparse.ArgumentParser(description="Class-conditional PixelDiT training.")
    parser.add_argument(
        "--pretrained_model_name_or_path",
        type=str,
        default=None,
        help="A PixelDiTPipeline or PixelDiT2Pipeline folder or Hub repo to fine-tune. Without it a model is trained "
        "from scratch.",
    )
    parser.add_argument("--revision", type=str, default=None, help="Revision of the pretrained pipeline.")
    parser.add_argument("--variant", type=str, default=None, help="Variant of the pretrained weights, e.g. fp16.")
    parser.add_argument(
        "--preset",
        type=str,
        default="PixelDiT-B",
        choices=sorted(PIXELDIT_PRESETS | PIXELDIT2_PRESETS),
        help="Architecture to train from scratch (ignored with --pretrained_model_name_or_path); the PixelDiT2-* ones "
        "train a PixelDiT2.",
    )
    parser.add_argument(
        "--grounding_encoder",
        type=str,
        default=None,
        help="PixelDiT2: the frozen DINOv3 (a transformers DINOv3ViTModel folder or Hub id, e.g. "
        "facebook/dinov3-vits16-pretrain-lvd1689m). Needed from scratch; default the pretrained pipeline's.",
    )
    parser.add_argument(
        "--grounding_dropout_prob",
        type=float,
        default=0.1,
        help="PixelDiT2: probability to drop a sample's grounding (the null conditioning), independently of its label.",
    )
    parser.add_argument(
        "--joint_dropout_prob",
        type=float,
        default=0.0,
        help="PixelDiT2: probability to drop both the label and the grounding (the 512 px release: 0.05).",
    )
    parser.add_argument(
        "--transformer_config",
        type=str,
        default=None,
        help="From scratch: a JSON file or JSON string of transformer config entries overriding the preset.",
    )
    parser.add_argument("--dataset_name", type=str, default=None, help="A Hub dataset or a local dataset folder.")
    parser.add_argument("--dataset_config_name", type=str, default=None, help="The dataset's config name.")
    parser.add_argument(
        "--train_data_dir",
        type=str,
        default=None,
        help="An image folder with one sub-folder per class; with --dataset_name, its `data_dir`.",
    )
    parser.add_argument("--image_column", type=str, default="image", help="The dataset column holding images.")
    parser.add_argument(
        "--label_column",
        type=str,
        default="label",
        help="The class column: a `ClassLabel` (imagefolder class sub-folders), integer ids or class names.",
    )
    parser.add_argument("--cache_dir", type=str, default=None, help="Where downloaded datasets/models are stored.")
    parser.add_argument("--max_train_samples", type=int, default=None, help="Train on this many shuffled samples.")
    parser.add_argument("--resolution", type=int, default=256, help="Training image side in pixels.")
    parser.add_argument("--center_crop", action="store_true", help="Center-crop (random crop otherwise).")
    parser.add_argument("--random_flip", action="store_true", help="Randomly flip images horizontally.")
    parser.add_argument(
        "--image_interpolation_mode",
        type=str,
        default="lanczos",
        choices=[mode.name.lower() for mode in Image.Resampling],
        help="PIL interpolation used to resize images.",
    )
    parser.add_argument("--dataloader_num_workers", type=int, default=0, help="Data-loading worker processes.")
    parser.add_argument("--train_batch_size", type=int, default=16, help="Batch size per device and micro-step.")
    parser.add_argument("--num_train_epochs", type=int, default=100)
    parser.add_argument("--max_train_steps", type=int, default=None, help="Optimizer steps; overrides the epochs.")
    parser.add_argument("--gradient_accumulation_steps", type=int, default=1)
    parser.add_argument("--gradient_checkpointing", action="store_true", help="Trade compute for memory.")
    parser.add_argument("--learning_rate", type=float, default=1e-4)
    parser.add_argument("--scale_lr", action="store_true", help="Multiply the learning rate by the global batch.")
    parser.add_argument("--lr_scheduler", type=str, default="constant", help="A diffusers `get_scheduler` name.")
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
        help="σ density (logit_normal, mode, else uniform) and loss weighting (sigma_sqrt, cosmap).",
    )
    parser.add_argument(
        "--logit_mean",
        type=float,
        default=None,
        help="Mean of the logit-normal σ density (PixelDiT 0, PixelDiT2 0.8).",
    )
    parser.add_argument(
        "--logit_std", type=float, default=None, help="Std of the logit-normal σ density (PixelDiT 1, PixelDiT2 0.8)."
    )
    parser.add_argument("--mode_scale", type=float, default=1.29, help="Scale of the `mode` σ density.")
    parser.add_argument(
        "--training_shift", type=float, default=1.0, help="σ = shift·u / (1 + (shift − 1)·u); 1.0 as the paper."
    )
    parser.add_argument(
        "--noise_outlier_prob",
        type=float,
        default=0.0,
        help="Share of the noise elements scaled by --noise_outlier_scale, so the model learns to cancel extreme noise.",
    )
    parser.add_argument(
        "--noise_outlier_scale", type=float, default=1.0, help="Scale of the outlier noise elements (e.g. 2.5)."
    )
    parser.add_argument(
        "--class_dropout_prob",
        type=float,
        default=0.1,
        help="Probability to replace a label by the null class (id num_classes), for classifier-free guidance.",
    )
    parser.add_argument(
        "--repa_encoder", type=str, default=None, help="REPA: a DINOv2 model, e.g. facebook/dinov2-base."
    )
    parser.add_argument("--repa_weight", type=float, default=0.5, help="Weight of the REPA loss (paper: 0.5).")
    parser.add_argument("--repa_layer", type=int, default=8, help="1-based patch-level block aligned (paper: 8).")
    parser.add_argument("--rank", type=int, default=None, help="Train a LoRA of this rank instead of all weights.")
    parser.add_argument("--lora_alpha", type=int, default=None, help="LoRA alpha (default: the rank).")
    parser.add_argument("--lora_layers", type=str, default=LORA_LAYERS, help="Comma-separated LoRA module names.")
    parser.add_argument("--checkpointing_steps", type=int, default=500, help="Save the training state every N steps.")
    parser.add_argument("--checkpoints_total_limit", type=int, default=None, help="Keep this many checkpoints.")
    parser.add_argument(
        "--resume_from_checkpoint",
        type=str,
        default=None,
        help='A checkpoint folder, or "latest" for the newest `checkpoint-N` of --output_dir.',
    )
    parser.add_argument(
        "--validation_class_labels",
        type=str,
        nargs="+",
        default=None,
        help="Class ids or names sampled every --validation_steps and at the end.",
    )
    parser.add_argument("--validation_steps", type=int, default=500, help="Sample validation images every N steps.")
    parser.add_argument("--num_validation_images", type=int, default=4, help="Images per validation class.")
    parser.add_argument("--validation_num_inference_steps", type=int, default=None, help="Default: the pipeline's.")
    parser.add_argument("--validation_guidance_scale", type=float, default=None, help="Default: the pipeline's.")
    parser.add_argument(
        "--recipe_num_inference_steps", type=int, default=None, help="Sampling steps saved as the pipeline's default."
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
    parser.add_argument("--report_to", type=str, default="tensorboard", help='"tensorboard", "wandb", "all", "none".')
    parser.add_argument("--tracker_project_name", type=str, default="pixeldit")
    parser.add_argument("--push_to_hub", action="store_true", help="Upload the final pipeline to the Hub.")
    parser.add_argument("--hub_token", type=str, default=None)
    parser.add_argument("--hub_model_id", type=str, default=None, help="Default: the name of --output_dir.")

    args = parser.parse_args(input_args)
    args.argv = sys.argv[1:] if input_args is None else list(input_args)
    if args.pretrained_model_name_or_path is None:
        args.pixeldit2 = args.preset in PIXELDIT2_PRESETS
    else:
        pipeline_class = training.pretrained_pipeline_class_name(
            args.pretrained_model_name_or_path, args.revision, args.cache_dir
        )
        args.pixeldit2 = pipeline_class == PixelDiT2Pipeline.__name__
    family = "PixelDiT2" if args.pixeldit2 else "PixelDiT"
    default_mean, default_std = LOGIT_NORMAL[family]
    args.logit_mean = default_mean if args.logit_mean is None else args.logit_mean
    args.logit_std = default_std if args.logit_std is None else args.logit_std
    if args.pixeldit2 and args.pretrained_model_name_or_path is None and args.grounding_encoder is None:
        raise ValueError("Training a PixelDiT2 from scratch needs its --grounding_encoder (a DINOv3).")
    if not args.pixeldit2 and args.grounding_encoder is not None:
        raise ValueError("--grounding_encoder is for PixelDiT2 (a PixelDiT2-* preset or pipeline).")
    if args.dataset_name is None and args.train_data_dir is None:
        raise ValueError("Pass a dataset: --dataset_name or --train_data_dir.")
    if args.rank is not None and args.pretrained_model_name_or_path is None:
        raise ValueError("LoRA (--rank) fine-tunes a pretrained pipeline: pass --pretrained_model_name_or_path.")
    if args.use_ema and args.rank is not None:
        raise ValueError("--use_ema averages full weights; it cannot be combined with LoRA (--rank).")
    if args.report_to in ("wandb", "all") and args.hub_token is not None:
        raise ValueError("Don't use --report_to wandb with --hub_token (security risk); use `hf auth login`.")
    if args.report_to in ("wandb", "all") and not is_wandb_available():
        raise ImportError("Install wandb to use it for logging: `pip install wandb`.")
    return args


def main(args):
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(
            args.output_dir, logging_dir=os.path.join(args.output_dir, args.logging_dir)
        ),
    )
    training.configure_accelerator(accelerator, allow_tf32=args.allow_tf32)
    # The run's seed (stored in its checkpoints) makes every batch and random draw; see examples/README.md.
    seed, checkpoint = training.start_run(accelerator, args.output_dir, args.seed, args.resume_from_checkpoint)
    repo_id = None
    if accelerator.is_main_process and args.push_to_hub:
        repo_id = training.create_hub_repo(args.output_dir, args.hub_model_id, args.hub_token)

    # Data, and the model: a pretrained pipeline's, or a preset's trained from scratch.
    with accelerator.main_process_first():
        dataset = training.load_image_dataset(
            args.dataset_name,
            args.train_data_dir,
            [args.image_column, args.label_column],
            image_column=args.image_column,
            dataset_config_name=args.dataset_config_name,
            cache_dir=args.cache_dir,
            max_train_samples=args.max_train_samples,
            seed=seed,
        )
    labels, names = training.class_ids(dataset, args.label_column)
    scratch_config = {"num_classes": len(names), "sample_size": args.resolution}
    if args.pixeldit2:  # the official grounded Heun sampler, saved with the result
        pipeline_class, transformer_class = PixelDiT2Pipeline, PixelDiT2Transformer2DModel
        scheduler = PixelDiTFlowScheduler(shift=args.training_shift, solver="heun", time_grid="uniform")
    else:
        pipeline_class, transformer_class = PixelDiTPipeline, PixelDiTTransformer2DModel
        scheduler = PixelDiTFlowScheduler(shift=args.training_shift)
    parts = training.load_or_build_pipeline_parts(
        pipeline_class,
        args.pretrained_model_name_or_path,
        preset=args.preset,
        transformer_config={**scratch_config, **training.load_transformer_config(args.transformer_config)},
        scheduler=scheduler,
        revision=args.revision,
        variant=args.variant,
        transformer_class=transformer_class,
    )
    transformer, scheduler = parts.transformer, parts.scheduler
    grounding_encoder = None
    if args.pixeldit2:
        grounding_encoder = parts.grounding_encoder
        if args.grounding_encoder is not None:
            from transformers import DINOv3ViTModel

            grounding_encoder = DINOv3ViTModel.from_pretrained(args.grounding_encoder, cache_dir=args.cache_dir)
        PixelDiT2Pipeline.check_grounding_encoder(transformer, grounding_encoder)
        grounding_encoder.eval().requires_grad_(False).to(accelerator.device)
    # the saved pipeline: its class's components around the (trained) transformer
    pipeline_components = {"grounding_encoder": grounding_encoder} if args.pixeldit2 else {}
    id2label = parts.config.get("id2label") or {str(i): name for i, name in enumerate(names)}
    recipe = training.sampling_recipe(
        parts.config, args.recipe_num_inference_steps, args.recipe_guidance_scale, args.recipe_guidance_interval
    )
    num_classes = transformer.config.num_classes
    if num_classes is None:
        raise ValueError("This is a text-conditional PixelDiT: use train_text_to_image.py.")
    if max(labels) >= num_classes:
        raise ValueError(f"The dataset has class ids up to {max(labels)}; the model has {num_classes} classes.")
    weight_dtype = training.frozen_weight_dtype(accelerator)
    training.prepare_transformer_for_training(
        transformer,
        weight_dtype=weight_dtype,
        gradient_checkpointing=args.gradient_checkpointing,
        lora_rank=args.rank,
        lora_alpha=args.lora_alpha,
        lora_layers=args.lora_layers.split(","),
    )
    patch_size = transformer.config.patch_size
    sizes, groups = training.group_by_size(dataset, args.image_column, args.resolution, patch_size)
    objective = training.FlowMatchingObjective(
        args.weighting_scheme,
        args.logit_mean,
        args.logit_std,
        args.mode_scale,
        args.training_shift,
        # PixelDiT2: its trained noise scale, and the official loss on the clamped velocity
        noise_scale=getattr(transformer.config, "noise_scale", 1.0),
        velocity_clamp_min_sigma=getattr(transformer.config, "velocity_clamp_min_sigma", 0.0),
        noise_outlier_prob=args.noise_outlier_prob,
        noise_outlier_scale=args.noise_outlier_scale,
    )
    train_dataset = training.FlowMatchingDataset(
        dataset,
        labels,
        sizes,
        seed=seed,
        objective=objective,
        drop_probability=args.class_dropout_prob,
        grounding_drop_probability=args.grounding_dropout_prob if args.pixeldit2 else 0.0,
        joint_drop_probability=args.joint_dropout_prob if args.pixeldit2 else 0.0,
        image_column=args.image_column,
        channels=transformer.config.in_channels,
        center_crop=args.center_crop,
        random_flip=args.random_flip,
        resample=Image.Resampling[args.image_interpolation_mode.upper()],
    )

    # EMA, REPA, checkpoint hooks, optimizer and LR schedule.
    ema = training.create_ema(transformer, args.ema_decay, accelerator.device) if args.use_ema else None
    repa, models = None, [transformer]
    if args.repa_encoder is not None:
        repa = training.REPAAlignment.from_pretrained(
            args.repa_encoder, transformer, args.repa_layer, accelerator.device, weight_dtype
        )
        models.append(repa.new_projector())
    training.register_checkpoint_hooks(
        accelerator, ema=ema, lora=args.rank is not None, transformer_class=transformer_class
    )
    validation = training.check_distributed_setup(
        accelerator,
        train_batch_size=args.train_batch_size,
        use_ema=args.use_ema,
        lora=args.rank is not None,
        validation=bool(args.validation_class_labels),
    )
    global_batch_size = args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    params_to_optimize = [p for model in models for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params_to_optimize,
        lr=args.learning_rate * (global_batch_size if args.scale_lr else 1),
        betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.adam_weight_decay,
        eps=args.adam_epsilon,
    )
    steps_per_epoch = training.steps_per_epoch(groups, global_batch_size)
    max_train_steps = args.max_train_steps or args.num_train_epochs * steps_per_epoch
    lr_scheduler = get_scheduler(
        args.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=max_train_steps * accelerator.num_processes,
        num_cycles=args.lr_num_cycles,
        power=args.lr_power,
    )
    *models, optimizer, lr_scheduler = accelerator.prepare(*models, optimizer, lr_scheduler)
    # FSDP2 replaces the parameters by sharded ones: clip the prepared models' parameters
    params_to_optimize = [p for model in models for p in model.parameters() if p.requires_grad]
    transformer, projector = models[0], models[-1] if repa is not None else None
    if accelerator.is_main_process:
        tracker_config = {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))}
        accelerator.init_trackers(args.tracker_project_name, config={**tracker_config, "seed": seed})

    global_step = training.load_checkpoint(accelerator, checkpoint) if checkpoint is not None else 0
    train_dataloader = training.step_dataloader(
        train_dataset,
        groups,
        accelerator,
        args.train_batch_size,
        seed,
        global_step,
        max_train_steps,
        args.dataloader_num_workers,
    )
    progress_bar = tqdm(
        range(max_train_steps), initial=global_step, desc="Steps", disable=not accelerator.is_local_main_process
    )
    metrics = training.StepMetrics(accelerator, global_batch_size)
    for batch in train_dataloader:
        batch = {k: v.to(accelerator.device) if torch.is_tensor(v) else v for k, v in batch.items()}
        with accelerator.accumulate(*models):
            class_labels = torch.where(batch["drop"], num_classes, batch["condition"])
            if args.pixeldit2:
                grounding_mask = ~batch["drop_grounding"] if "drop_grounding" in batch else None
                predict = training.grounded_velocity_predictor(
                    transformer, grounding_encoder, patch_size, class_labels, grounding_mask
                )
            else:
                predict = training.velocity_predictor(transformer, class_labels=class_labels)
            losses = training.flow_matching_losses(objective, predict, batch, repa, projector, args.repa_weight)
            metrics.add(losses)
            accelerator.backward(losses["train_loss"])
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(params_to_optimize, args.max_grad_norm)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad()

        if not accelerator.sync_gradients:
            continue
        if ema is not None:
            ema.step(training.unwrap_model(accelerator, transformer).parameters())
        global_step += 1
        logs = {**metrics.pop(), "lr": lr_scheduler.get_last_lr()[0]}
        accelerator.log(logs, step=global_step)
        progress_bar.update(1)
        progress_bar.set_postfix(
            loss=f"{logs['train_loss']:.4f}", lr=f"{logs['lr']:.2e}", img_s=f"{logs['img_per_sec']:.1f}"
        )

        if global_step % args.checkpointing_steps == 0:
            training.save_checkpoint(accelerator, args.output_dir, global_step, seed, args.checkpoints_total_limit)
        if validation and global_step % args.validation_steps == 0 and accelerator.is_main_process:
            with training.ema_weights(ema, training.unwrap_model(accelerator, transformer)) as model:
                pipeline = pipeline_class(model, scheduler, id2label=id2label, **pipeline_components, **recipe)
                log_validation(pipeline, args, accelerator, seed, global_step)
        metrics.restart_clock()  # the throughput leaves checkpointing and validation out
    progress_bar.close()

    transformer = training.trained_transformer(accelerator, transformer, ema)
    if repa is not None:
        repa.remove()
    if accelerator.is_main_process:
        validate = partial(
            log_validation,
            args=args,
            accelerator=accelerator,
            seed=seed,
            step=max_train_steps,
            is_final_validation=True,
        )
        training.finish_training(
            pipeline_class(transformer, scheduler, id2label=id2label, **pipeline_components, **recipe),
            args.output_dir,
            model_card(args, id2label, objective, max_train_steps),
            lora=args.rank is not None,
            validate=validate if args.validation_class_labels else None,
            repo_id=repo_id,
            hub_token=args.hub_token,
        )
    accelerator.end_training()


if __name__ == "__main__":
    main(parse_args())
