#!/usr/bin/env python
# Copyright 2026 The diffusers-pixeldit authors. Licensed under the Apache License, Version 2.0.
"""Text-to-image PixelDiT training, in the shape of diffusers' `train_text_to_image.py` with the flow-matching
objective of `train_dreambooth_sd3.py`; the reusable parts are in `diffusers_pixeldit.training`. See
examples/README.md.

    accelerate launch examples/train_text_to_image.py --dataset_name my/captioned-dataset --caption_column text \
        --text_encoder_name_or_path google/gemma-2-2b-it --resolution 512 --mixed_precision bf16 --output_dir out
"""

import argparse
import os
import sys
from functools import partial

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration
from diffusers.optimization import get_scheduler
from diffusers.training_utils import free_memory
from diffusers.utils import check_min_version, is_wandb_available
from PIL import Image
from tqdm.auto import tqdm
from transformers import AutoModel, AutoTokenizer

from diffusers_pixeldit import (
    PIXELDIT_COMPLEX_HUMAN_INSTRUCTION,
    PIXELDIT_PRESETS,
    PixelDiTT2IPipeline,
    release_dpm_solver_scheduler,
    training,
)


check_min_version("0.40.0")

logger = get_logger(__name__, log_level="INFO")

LORA_LAYERS = "to_q,to_k,to_v,to_out.0,ff.net.0.proj,ff.net.2,add_q_proj,add_k_proj,add_v_proj,to_add_out"
# --complex_human_instruction choices: the release's prefix, or none.
INSTRUCTIONS = {"release": PIXELDIT_COMPLEX_HUMAN_INSTRUCTION, "none": []}
# Captions encoded per text-encoder call by --precompute_text_embeddings.
ENCODE_BATCH_SIZE = 64
DEFAULT_CARD_PROMPT = "a photo of a cat"


def instruction_description(instruction: list[str]) -> str:
    """The model card's words for the instruction prefix trained with."""
    if not instruction:
        return "no complex human instruction"
    if instruction == PIXELDIT_COMPLEX_HUMAN_INSTRUCTION:
        return "the release's complex human instruction"
    return "a custom complex human instruction"


def model_card(args, objective, max_train_steps: int, text: dict) -> training.ModelCardText:
    """The model card of the run (see `training.finish_training`); `text` holds the text settings trained with."""
    buckets = f", aspect-ratio buckets `{args.aspect_ratio_buckets}`" if args.aspect_ratio_buckets else ""
    length = text["max_sequence_length"]
    sampling_length = "" if length == text["max_text_length"] else f" (sample with `max_sequence_length={length}`)"
    repa = f"REPA with `{args.repa_encoder}` (weight {args.repa_weight}, block {args.repa_layer})"
    description = training.training_description(
        script=__file__,
        base_model=args.pretrained_model_name_or_path,
        lora_rank=args.rank,
        scratch_details=f"preset `{args.preset}`, text encoder `{args.text_encoder_name_or_path}`",
        dataset=args.dataset_name or args.train_data_dir,
        resolution=args.resolution,
        steps=max_train_steps,
        objective=objective,
        dropout=f'captions dropped to the "" embedding with probability {args.proportion_empty_prompts}{buckets}',
        ema_decay=args.ema_decay if args.use_ema else None,
        repa=repa if args.repa_encoder else None,
    )
    description += (
        f"\nText: {length} tokens{sampling_length}, with {instruction_description(text['instruction'])} (in the "
        "pipeline config)."
    )
    prompt = (args.validation_prompts or [DEFAULT_CARD_PROMPT])[0]
    return training.ModelCardText(
        title="PixelDiT text-to-image model",
        description=description,
        pipeline_class=PixelDiTT2IPipeline.__name__,
        example_call=f'image = pipe("{prompt}").images[0]',
        base_model=args.pretrained_model_name_or_path,
        training_command=training.launch_command(__file__, args.argv),
        tags=["text-to-image"],
    )


def log_validation(
    pipeline, args, accelerator, prompt_embeds, seed: int, step: int, is_final_validation: bool = False
) -> str:
    """Samples `num_validation_images` per validation prompt from their `encode_prompt` outputs (`prompt_embeds`);
    saves and logs the grid (one row per prompt); returns its path relative to the output folder."""
    logger.info(f"Running validation: {args.num_validation_images} images of prompts {args.validation_prompts}.")
    embeds, mask, negative_embeds, negative_mask = prompt_embeds
    return training.log_validation(
        pipeline,
        accelerator,
        args.output_dir,
        step=step,
        seed=seed,
        num_images=args.num_validation_images,
        num_conditions=len(args.validation_prompts),
        is_final_validation=is_final_validation,
        prompt_embeds=embeds,
        prompt_attention_mask=mask,
        negative_prompt=None,
        negative_prompt_embeds=negative_embeds,
        negative_prompt_attention_mask=negative_mask,
        height=args.resolution,
        width=args.resolution,
        num_inference_steps=args.validation_num_inference_steps,
        guidance_scale=args.validation_guidance_scale,
    )


def load_text_components(args):
    """Tokenizer and text encoder (eval mode), from --text_encoder_name_or_path or the pretrained pipeline."""
    if args.text_encoder_name_or_path is not None:
        path, subfolders, revision = args.text_encoder_name_or_path, ("", ""), None
    else:
        path, subfolders, revision = args.pretrained_model_name_or_path, ("tokenizer", "text_encoder"), args.revision
    tokenizer = AutoTokenizer.from_pretrained(
        path, subfolder=subfolders[0], revision=revision, cache_dir=args.cache_dir
    )
    text_encoder = AutoModel.from_pretrained(
        path, subfolder=subfolders[1], revision=revision, variant=args.variant, cache_dir=args.cache_dir
    )
    return tokenizer, text_encoder.eval()


def caption_embeddings(text_pipeline, captions, max_sequence_length: int, precompute: bool, accelerator):
    """`embed(texts) -> (B, max_sequence_length, D)` of the pipeline's `encode_prompt`: online, or from a table of
    every distinct caption encoded once (kept in CPU memory; the text encoder is then freed)."""
    device = accelerator.device

    @torch.no_grad()
    def encode(texts):
        return text_pipeline.encode_prompt(
            texts, do_classifier_free_guidance=False, device=device, max_sequence_length=max_sequence_length
        )[0]

    if not precompute:
        return encode
    unique = sorted({text for entry in captions for text in ([entry] if isinstance(entry, str) else entry)})
    starts = tqdm(
        range(0, len(unique), ENCODE_BATCH_SIZE),
        desc="Encoding captions",
        disable=not accelerator.is_local_main_process,
    )
    table = torch.cat([encode(unique[i : i + ENCODE_BATCH_SIZE]).cpu() for i in starts])
    rows = {text: i for i, text in enumerate(unique)}
    text_pipeline.text_encoder = None
    free_memory()
    return lambda texts: table[[rows[text] for text in texts]].to(device)


def parse_args(input_args=None):
    parser = argparse.ArgumentParser(description="Text-to-image PixelDiT training.")
    parser.add_argument(
        "--pretrained_model_name_or_path",
        type=str,
        default=None,
        help="A PixelDiTT2IPipeline folder or Hub repo to fine-tune. Without it a model is trained from scratch.",
    )
    parser.add_argument("--revision", type=str, default=None, help="Revision of the pretrained pipeline.")
    parser.add_argument("--variant", type=str, default=None, help="Variant of the pretrained weights, e.g. fp16.")
    parser.add_argument(
        "--preset",
        type=str,
        default="PixelDiT-T2I",
        choices=sorted(PIXELDIT_PRESETS),
        help="Architecture to train from scratch (ignored with --pretrained_model_name_or_path).",
    )
    parser.add_argument(
        "--transformer_config",
        type=str,
        default=None,
        help="From scratch: a JSON file or JSON string of transformer config entries overriding the preset.",
    )
    parser.add_argument(
        "--text_encoder_name_or_path",
        type=str,
        default=None,
        help="A transformers text encoder (+ tokenizer) whose width becomes `text_embed_dim`, e.g. "
        "google/gemma-2-2b-it. Default: the pretrained pipeline's.",
    )
    parser.add_argument(
        "--max_sequence_length",
        type=int,
        default=None,
        help="Text tokens per caption. Default: the transformer's `max_text_length` (the pretrained one's; 300 from "
        "scratch, which then takes this length).",
    )
    parser.add_argument(
        "--complex_human_instruction",
        type=str,
        default=None,
        choices=sorted(INSTRUCTIONS),
        help="Prefix captions with the release's complex human instruction, or none. Default: the pretrained "
        "pipeline's; none from scratch.",
    )
    parser.add_argument(
        "--precompute_text_embeddings",
        action="store_true",
        help="Encode every caption once before training (kept in CPU memory) and free the text encoder.",
    )
    parser.add_argument("--dataset_name", type=str, default=None, help="A Hub dataset or a local dataset folder.")
    parser.add_argument("--dataset_config_name", type=str, default=None, help="The dataset's config name.")
    parser.add_argument(
        "--train_data_dir",
        type=str,
        default=None,
        help="An image folder with a metadata.jsonl/.csv of captions; with --dataset_name, its `data_dir`.",
    )
    parser.add_argument("--image_column", type=str, default="image", help="The dataset column holding images.")
    parser.add_argument("--caption_column", type=str, default="text", help="The caption column (str or list).")
    parser.add_argument("--cache_dir", type=str, default=None, help="Where downloaded datasets/models are stored.")
    parser.add_argument("--max_train_samples", type=int, default=None, help="Train on this many shuffled samples.")
    parser.add_argument("--resolution", type=int, default=256, help="Training image side (bucket area) in pixels.")
    parser.add_argument(
        "--aspect_ratio_buckets",
        type=str,
        default=None,
        help='Multi-aspect training: "auto" (buckets of about resolution² pixels, sides multiples of the patch '
        'size) or "h1,w1;h2,w2;...". Each image goes to the bucket nearest its aspect ratio; each batch comes from '
        "one bucket.",
    )
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
    parser.add_argument("--logit_mean", type=float, default=0.0, help="Mean of the logit-normal σ density.")
    parser.add_argument("--logit_std", type=float, default=1.0, help="Std of the logit-normal σ density.")
    parser.add_argument("--mode_scale", type=float, default=1.29, help="Scale of the `mode` σ density.")
    parser.add_argument(
        "--training_shift",
        type=float,
        default=1.0,
        help="σ = shift·u / (1 + (shift − 1)·u); the release: 3.0 at 512², 4.0 at 1024².",
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
        "--proportion_empty_prompts",
        type=float,
        default=0.1,
        help='Probability to replace a caption by the "" prompt embedding (not zeros), for classifier-free guidance.',
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
        "--validation_prompts", type=str, nargs="+", default=None, help="Prompts sampled every --validation_steps."
    )
    parser.add_argument("--validation_steps", type=int, default=500, help="Sample validation images every N steps.")
    parser.add_argument("--num_validation_images", type=int, default=4, help="Images per validation prompt.")
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
    parser.add_argument("--output_dir", type=str, default="pixeldit-t2i-model")
    parser.add_argument("--seed", type=int, default=None, help="Seed of the whole run (random when unset).")
    parser.add_argument("--logging_dir", type=str, default="logs", help="Tracker folder, inside --output_dir.")
    parser.add_argument("--report_to", type=str, default="tensorboard", help='"tensorboard", "wandb", "all", "none".')
    parser.add_argument("--tracker_project_name", type=str, default="pixeldit-t2i")
    parser.add_argument("--push_to_hub", action="store_true", help="Upload the final pipeline to the Hub.")
    parser.add_argument("--hub_token", type=str, default=None)
    parser.add_argument("--hub_model_id", type=str, default=None, help="Default: the name of --output_dir.")

    args = parser.parse_args(input_args)
    args.argv = sys.argv[1:] if input_args is None else list(input_args)
    if args.dataset_name is None and args.train_data_dir is None:
        raise ValueError("Pass a dataset: --dataset_name or --train_data_dir.")
    if args.pretrained_model_name_or_path is None and args.text_encoder_name_or_path is None:
        raise ValueError("Training from scratch needs --text_encoder_name_or_path.")
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
        # The text stream of the last joint block does not reach the output: DDP must allow unused parameters.
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
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
            [args.image_column, args.caption_column],
            image_column=args.image_column,
            dataset_config_name=args.dataset_config_name,
            cache_dir=args.cache_dir,
            max_train_samples=args.max_train_samples,
            seed=seed,
        )
    captions = list(dataset[args.caption_column])
    tokenizer, text_encoder = load_text_components(args)
    scratch_config = {"num_classes": None, "text_embed_dim": text_encoder.config.hidden_size}
    scratch_config["sample_size"] = args.resolution
    if args.max_sequence_length is not None:
        scratch_config["max_text_length"] = args.max_sequence_length
    parts = training.load_or_build_pipeline_parts(
        PixelDiTT2IPipeline,
        args.pretrained_model_name_or_path,
        preset=args.preset,
        transformer_config={**training.load_transformer_config(args.transformer_config), **scratch_config},
        scheduler=release_dpm_solver_scheduler(flow_shift=args.training_shift),
        revision=args.revision,
        variant=args.variant,
        tokenizer=None,
        text_encoder=None,
    )
    transformer, scheduler = parts.transformer, parts.scheduler
    if transformer.config.text_embed_dim != text_encoder.config.hidden_size:
        raise ValueError(
            f"The text encoder's width {text_encoder.config.hidden_size} is not the transformer's text_embed_dim "
            f"{transformer.config.text_embed_dim}."
        )
    # Text as the pretrained pipeline encodes it (its instruction prefix, its transformer's text length) unless
    # overridden; the saved pipeline encodes prompts as the training did.
    max_text_length = transformer.config.max_text_length
    max_sequence_length = args.max_sequence_length or max_text_length
    if max_sequence_length > max_text_length:
        raise ValueError(f"--max_sequence_length {max_sequence_length} > the transformer's {max_text_length} texts.")
    instruction = INSTRUCTIONS.get(args.complex_human_instruction, parts.config.get("complex_human_instruction", []))
    text = {"max_sequence_length": max_sequence_length, "max_text_length": max_text_length, "instruction": instruction}
    recipe = training.sampling_recipe(
        parts.config, args.recipe_num_inference_steps, args.recipe_guidance_scale, args.recipe_guidance_interval
    )
    recipe["complex_human_instruction"] = instruction
    weight_dtype = training.frozen_weight_dtype(accelerator)
    training.prepare_transformer_for_training(
        transformer,
        weight_dtype=weight_dtype,
        gradient_checkpointing=args.gradient_checkpointing,
        lora_rank=args.rank,
        lora_alpha=args.lora_alpha,
        lora_layers=args.lora_layers.split(","),
    )

    # Captions through the pipeline's `encode_prompt`; dropped ones get the "" (negative prompt) embedding.
    text_encoder.requires_grad_(False).to(accelerator.device, dtype=weight_dtype)
    text_pipeline = PixelDiTT2IPipeline(tokenizer, text_encoder, None, None, complex_human_instruction=instruction)
    encode_kwargs = {"device": accelerator.device, "max_sequence_length": max_sequence_length}
    with torch.no_grad():
        null_embeds = text_pipeline.encode_prompt("", True, negative_prompt="", **encode_kwargs)[2]
        validation_embeds = None
        if args.validation_prompts:
            validation_embeds = text_pipeline.encode_prompt(args.validation_prompts, True, **encode_kwargs)
    embed = caption_embeddings(
        text_pipeline, captions, max_sequence_length, args.precompute_text_embeddings, accelerator
    )
    del text_encoder

    patch_size = transformer.config.patch_size
    buckets = None
    if args.aspect_ratio_buckets is not None:
        buckets = training.aspect_ratio_buckets(args.aspect_ratio_buckets, args.resolution, patch_size)
    sizes, groups = training.group_by_size(dataset, args.image_column, args.resolution, patch_size, buckets)
    objective = training.FlowMatchingObjective(
        args.weighting_scheme,
        args.logit_mean,
        args.logit_std,
        args.mode_scale,
        args.training_shift,
        noise_outlier_prob=args.noise_outlier_prob,
        noise_outlier_scale=args.noise_outlier_scale,
    )
    train_dataset = training.FlowMatchingDataset(
        dataset,
        captions,
        sizes,
        seed=seed,
        objective=objective,
        drop_probability=args.proportion_empty_prompts,
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
    training.register_checkpoint_hooks(accelerator, ema=ema, lora=args.rank is not None)
    validation = training.check_distributed_setup(
        accelerator,
        train_batch_size=args.train_batch_size,
        use_ema=args.use_ema,
        lora=args.rank is not None,
        validation=bool(args.validation_prompts),
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
            text_embeds = torch.where(batch["drop"].view(-1, 1, 1), null_embeds, embed(batch["condition"]))
            predict = training.velocity_predictor(transformer, encoder_hidden_states=text_embeds)
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
                pipeline = PixelDiTT2IPipeline(None, None, model, scheduler, **recipe)
                log_validation(pipeline, args, accelerator, validation_embeds, seed, global_step)
        metrics.restart_clock()  # the throughput leaves checkpointing and validation out
    progress_bar.close()

    transformer = training.trained_transformer(accelerator, transformer, ema)
    if repa is not None:
        repa.remove()
    if accelerator.is_main_process:
        # A full pipeline is saved with its text encoder as loaded (not in the training's weight dtype).
        tokenizer, text_encoder = load_text_components(args) if args.rank is None else (None, None)
        validate = partial(
            log_validation,
            args=args,
            accelerator=accelerator,
            prompt_embeds=validation_embeds,
            seed=seed,
            step=max_train_steps,
            is_final_validation=True,
        )
        training.finish_training(
            PixelDiTT2IPipeline(tokenizer, text_encoder, transformer, scheduler, **recipe),
            args.output_dir,
            model_card(args, objective, max_train_steps, text),
            lora=args.rank is not None,
            validate=validate if args.validation_prompts else None,
            repo_id=repo_id,
            hub_token=args.hub_token,
            reload_components={"tokenizer": None, "text_encoder": None},
        )
    accelerator.end_training()


if __name__ == "__main__":
    main(parse_args())
