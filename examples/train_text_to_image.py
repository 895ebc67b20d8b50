#!/usr/bin/env python
# Copyright 2026 The diffusers-pixeldit authors. Licensed under the Apache License, Version 2.0.
"""Text-to-image PixelDiT training, in the shape of diffusers' `train_text_to_image.py` with the flow-matching
objective of `train_dreambooth_sd3.py`. See examples/README.md.

    accelerate launch examples/train_text_to_image.py --dataset_name my/captioned-dataset --caption_column text \
        --text_encoder_name_or_path google/gemma-2-2b-it --resolution 512 --mixed_precision bf16 --output_dir out
"""

import argparse
import sys

import pixeldit_train_utils as utils
import torch
from accelerate.logging import get_logger
from diffusers import DPMSolverMultistepScheduler
from diffusers.training_utils import free_memory, generate_aspect_ratio_buckets, parse_buckets_string
from diffusers.utils import check_min_version
from tqdm.auto import tqdm
from transformers import AutoModel, AutoTokenizer

from diffusers_pixeldit import PIXELDIT_COMPLEX_HUMAN_INSTRUCTION, PixelDiTT2IPipeline, PixelDiTTransformer2DModel


check_min_version("0.40.0")

logger = get_logger(__name__, log_level="INFO")

LORA_LAYERS = "to_q,to_k,to_v,to_out.0,ff.net.0.proj,ff.net.2,add_q_proj,add_k_proj,add_v_proj,to_add_out"


def save_model_card(args, repo_id: str, grid_path: str | None, repo_folder: str):
    scratch = f"preset `{args.preset}`, text encoder `{args.text_encoder_name_or_path}`"
    buckets = f", aspect-ratio buckets `{args.aspect_ratio_buckets}`" if args.aspect_ratio_buckets else ""
    prompt = (args.validation_prompts or ["a photo of a cat"])[0]
    dropout = f'captions dropped to the "" embedding with probability {args.proportion_empty_prompts}{buckets}'
    model_description = f"""# PixelDiT text-to-image model - {repo_id}

{utils.model_summary(args, scratch)} with `examples/train_text_to_image.py`.
{utils.training_summary(args, dropout)} Text: {args.max_sequence_length} tokens, with
{"the release's complex human instruction" if args.complex_human_instruction else "no complex human instruction"};
the pipeline config carries both.

## Usage

```python
from diffusers_pixeldit import PixelDiTT2IPipeline

{utils.loading_code(args, repo_id, "PixelDiTT2IPipeline")}
image = pipe("{prompt}").images[0]
```

Without other arguments the pipeline samples with the recipe in its config (`default_num_inference_steps`,
`default_guidance_scale`, `default_guidance_interval`); each is also a call argument.
"""
    if grid_path is not None:
        model_description += f"\n## Samples\n\n![samples]({grid_path})\n"
    utils.write_model_card(args, model_description, ["text-to-image"], repo_folder)


def log_validation(pipeline, args, accelerator, prompt_embeds, step: int, is_final_validation: bool = False):
    """Samples `num_validation_images` per validation prompt (from their pre-computed `encode_prompt` outputs); saves
    and logs the grid (one row per prompt)."""
    logger.info(f"Running validation: {args.num_validation_images} images of prompts {args.validation_prompts}.")
    pipeline = pipeline.to(accelerator.device)
    pipeline.set_progress_bar_config(disable=True)
    embeds, mask, negative_embeds, negative_mask = prompt_embeds
    images = pipeline(
        prompt_embeds=embeds,
        prompt_attention_mask=mask,
        negative_prompt=None,
        negative_prompt_embeds=negative_embeds,
        negative_prompt_attention_mask=negative_mask,
        num_images_per_prompt=args.num_validation_images,
        height=args.resolution,
        width=args.resolution,
        num_inference_steps=args.validation_num_inference_steps,
        guidance_scale=args.validation_guidance_scale,
        generator=torch.Generator(device=accelerator.device).manual_seed(args.seed),
    ).images
    phase = "test" if is_final_validation else "validation"
    return utils.log_images(accelerator, args, images, len(args.validation_prompts), step, phase)


def load_text_components(args):
    """Tokenizer (right padding) and text encoder, from --text_encoder_name_or_path or the pretrained pipeline."""
    if args.text_encoder_name_or_path is not None:
        path, subfolders, revision = args.text_encoder_name_or_path, ("", ""), None
    else:
        path, subfolders, revision = args.pretrained_model_name_or_path, ("tokenizer", "text_encoder"), args.revision
    tokenizer = AutoTokenizer.from_pretrained(
        path, subfolder=subfolders[0], revision=revision, cache_dir=args.cache_dir
    )
    tokenizer.padding_side = "right"
    text_encoder = AutoModel.from_pretrained(
        path, subfolder=subfolders[1], revision=revision, variant=args.variant, cache_dir=args.cache_dir
    )
    return tokenizer, text_encoder.eval()


def parse_args(input_args=None):
    parser = argparse.ArgumentParser(description="Text-to-image PixelDiT training.")
    utils.add_training_arguments(parser, default_preset="PixelDiT-T2I", lora_layers=LORA_LAYERS)
    parser.add_argument("--caption_column", type=str, default="text", help="The caption column (str or list).")
    parser.add_argument(
        "--proportion_empty_prompts",
        type=float,
        default=0.1,
        help='Probability to replace a caption by the "" prompt embedding (not zeros), for classifier-free guidance.',
    )
    parser.add_argument(
        "--text_encoder_name_or_path",
        type=str,
        default=None,
        help="A transformers text encoder (+ tokenizer) whose width becomes `text_embed_dim`, e.g. "
        "google/gemma-2-2b-it. Default: the pretrained pipeline's.",
    )
    parser.add_argument("--max_sequence_length", type=int, default=300, help="Text tokens per caption.")
    parser.add_argument(
        "--complex_human_instruction",
        action="store_true",
        help="Prefix captions with the release's complex human instruction (as the pipeline does by default). "
        "Off: None.",
    )
    parser.add_argument(
        "--precompute_text_embeddings",
        action="store_true",
        help="Encode every caption once before training (kept in CPU memory) and free the text encoder.",
    )
    parser.add_argument(
        "--aspect_ratio_buckets",
        type=str,
        default=None,
        help='Multi-aspect training: "auto" (buckets of about resolution² pixels, sides multiples of the patch '
        'size) or "h1,w1;h2,w2;...". Each image goes to the bucket nearest its aspect ratio; each batch comes from '
        "one bucket.",
    )
    parser.add_argument(
        "--validation_prompts", type=str, nargs="+", default=None, help="Prompts sampled every --validation_steps."
    )
    args = parser.parse_args(input_args)
    utils.check_training_arguments(args)
    if args.pretrained_model_name_or_path is None and args.text_encoder_name_or_path is None:
        raise ValueError("Training from scratch needs --text_encoder_name_or_path.")
    args.training_command = utils.training_command(__file__, sys.argv[1:] if input_args is None else input_args)
    return args


def main(args):
    # The text stream of the last joint block does not reach the output: DDP must allow unused parameters.
    accelerator = utils.create_accelerator(args, find_unused_parameters=True)
    weight_dtype = utils.weight_dtype_of(accelerator)
    if accelerator.is_main_process and args.push_to_hub:
        repo_id = utils.create_hub_repo(args)

    with accelerator.main_process_first():
        dataset = utils.load_image_dataset(args, [args.image_column, args.caption_column])
    captions = list(dataset[args.caption_column])

    tokenizer, text_encoder = load_text_components(args)
    pipeline_config = None
    if args.pretrained_model_name_or_path is not None:
        pipeline = PixelDiTT2IPipeline.from_pretrained(
            args.pretrained_model_name_or_path,
            tokenizer=None,
            text_encoder=None,
            revision=args.revision,
            variant=args.variant,
        )
        transformer, scheduler = pipeline.transformer, pipeline.scheduler
        pipeline_config = pipeline.config
        del pipeline
    else:
        config = {
            "num_classes": None,
            "text_embed_dim": text_encoder.config.hidden_size,
            "max_text_length": args.max_sequence_length,
            "sample_size": args.resolution,
            **utils.transformer_overrides(args),
        }
        transformer = PixelDiTTransformer2DModel.from_preset(args.preset, **config)
        scheduler = DPMSolverMultistepScheduler(
            use_flow_sigmas=True,
            flow_shift=args.training_shift,
            prediction_type="flow_prediction",
            solver_order=2,
            algorithm_type="dpmsolver++",
            lower_order_final=True,
        )
    if transformer.config.text_embed_dim != text_encoder.config.hidden_size:
        raise ValueError(
            f"The text encoder's width {text_encoder.config.hidden_size} is not the transformer's text_embed_dim "
            f"{transformer.config.text_embed_dim}."
        )
    patch_size = transformer.config.patch_size
    if args.resolution % patch_size:
        raise ValueError(f"--resolution must be a multiple of the patch size {patch_size}.")
    utils.prepare_transformer(args, transformer, weight_dtype)

    # Text embeddings: the pipeline's `encode_prompt`; dropped captions get the "" (negative prompt) embedding.
    text_encoder.requires_grad_(False).to(accelerator.device, dtype=weight_dtype)
    text_pipeline = PixelDiTT2IPipeline(tokenizer, text_encoder, transformer=None, scheduler=None)
    instruction = PIXELDIT_COMPLEX_HUMAN_INSTRUCTION if args.complex_human_instruction else None
    # The saved pipeline encodes prompts as the training did.
    pipeline_defaults = {**utils.sampling_recipe(args, pipeline_config), "complex_human_instruction": instruction}
    encode_kwargs = dict(
        device=accelerator.device,
        max_sequence_length=args.max_sequence_length,
        complex_human_instruction=instruction,
    )

    @torch.no_grad()
    def encode(texts):
        return text_pipeline.encode_prompt(texts, do_classifier_free_guidance=False, **encode_kwargs)[0]

    with torch.no_grad():
        null_embeds = text_pipeline.encode_prompt("", True, negative_prompt="", **encode_kwargs)[2]
        validation_embeds = None
        if args.validation_prompts:
            validation_embeds = text_pipeline.encode_prompt(args.validation_prompts, True, **encode_kwargs)

    if args.precompute_text_embeddings:
        unique = sorted({text for entry in captions for text in ([entry] if isinstance(entry, str) else entry)})
        table = torch.cat(
            [
                encode(unique[i : i + 64]).cpu()
                for i in tqdm(
                    range(0, len(unique), 64), desc="Encoding captions", disable=not accelerator.is_local_main_process
                )
            ]
        )
        rows = {text: i for i, text in enumerate(unique)}
        del text_pipeline, text_encoder
        free_memory()

        def text_embeddings(texts):
            return table[[rows[text] for text in texts]].to(accelerator.device)

    else:
        text_embeddings = encode

    def condition_fn(batch):
        embeds = text_embeddings(batch["condition"])
        return {"encoder_hidden_states": torch.where(batch["drop"].view(-1, 1, 1), null_embeds, embeds)}

    if args.aspect_ratio_buckets is None:
        sizes = [(args.resolution, args.resolution)] * len(dataset)
        groups = [list(range(len(dataset)))]
    else:
        if args.aspect_ratio_buckets == "auto":
            buckets = generate_aspect_ratio_buckets(args.resolution, divisibility=patch_size)
        else:
            buckets = parse_buckets_string(args.aspect_ratio_buckets)
        if any(side % patch_size for bucket in buckets for side in bucket):
            raise ValueError(f"Bucket sides must be multiples of the patch size {patch_size}, got {buckets}.")
        sizes = utils.bucket_sizes(dataset, args.image_column, buckets)
        groups = [[i for i, size in enumerate(sizes) if size == bucket] for bucket in buckets]
        logger.info(
            "Aspect-ratio buckets (height, width): images " + str({b: len(g) for b, g in zip(buckets, groups)})
        )
    train_dataset = utils.FlowMatchingDataset(
        dataset, captions, sizes, args, args.proportion_empty_prompts, transformer.config.in_channels
    )

    def validation_fn(model, step):
        pipeline = PixelDiTT2IPipeline(None, None, model, scheduler, **pipeline_defaults)
        log_validation(pipeline, args, accelerator, validation_embeds, step)

    transformer = utils.train(
        args,
        accelerator,
        transformer,
        train_dataset,
        groups,
        condition_fn,
        validation_fn if args.validation_prompts else None,
    )

    if accelerator.is_main_process:
        if args.rank is not None:
            transformer.save_lora_adapter(args.output_dir)
            pipeline = PixelDiTT2IPipeline(None, None, transformer, scheduler, **pipeline_defaults)
        else:
            # The text encoder is saved as loaded (not in the training's weight dtype).
            tokenizer, text_encoder = load_text_components(args)
            pipeline = PixelDiTT2IPipeline(tokenizer, text_encoder, transformer, scheduler, **pipeline_defaults)
            pipeline.save_pretrained(args.output_dir)
            del pipeline, text_encoder
            pipeline = PixelDiTT2IPipeline.from_pretrained(args.output_dir, tokenizer=None, text_encoder=None)
        grid_path = None
        if args.validation_prompts:
            grid_path = log_validation(
                pipeline, args, accelerator, validation_embeds, args.max_train_steps, is_final_validation=True
            )
        save_model_card(args, repo_id if args.push_to_hub else args.output_dir, grid_path, args.output_dir)
        if args.push_to_hub:
            utils.upload_output_dir(args, repo_id)
    accelerator.end_training()


if __name__ == "__main__":
    main(parse_args())
