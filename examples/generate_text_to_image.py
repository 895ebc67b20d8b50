#!/usr/bin/env python
# Copyright 2026 The diffusers-pixeldit authors. Licensed under the Apache License, Version 2.0.
"""Images for GenEval or DPG-Bench: `--num_images_per_prompt` images of every prompt of a prompts file (one prompt
per line, or GenEval's `evaluation_metadata.jsonl`) with a `PixelDiTT2IPipeline`, split across the processes of
`accelerate launch`, resumable, in GenEval's folder layout (`<index:05d>/metadata.jsonl`,
`<index:05d>/samples/<k:05d>.png`); the machinery is `diffusers_pixeldit.evaluation`. See examples/README.md.

    accelerate launch --multi_gpu --num_processes 8 examples/generate_text_to_image.py \
        --pretrained_model_name_or_path path/to/pixeldit-t2i --prompts geneval/prompts/evaluation_metadata.jsonl \
        --num_images_per_prompt 4 --output_dir geneval-samples
"""

import argparse
import json
import logging
import os

from accelerate import Accelerator
from accelerate.logging import get_logger
from tqdm.auto import tqdm

from diffusers_pixeldit import PixelDiTT2IPipeline, evaluation


logger = get_logger(__name__, log_level="INFO")


def parse_args(input_args=None):
    parser = argparse.ArgumentParser(description="Multi-process, resumable text-to-image sampling for GenEval.")
    parser.add_argument("--pretrained_model_name_or_path", type=str, required=True, help="A PixelDiTT2IPipeline.")
    parser.add_argument("--revision", type=str, default=None)
    parser.add_argument("--variant", type=str, default=None)
    parser.add_argument("--cache_dir", type=str, default=None)
    parser.add_argument(
        "--text_encoder_name_or_path",
        type=str,
        default=None,
        help="A tokenizer and text encoder (transformers folder or Hub id) replacing the pipeline's.",
    )
    parser.add_argument(
        "--prompts", type=str, required=True, help="A .txt file (a prompt per line) or GenEval's .jsonl metadata."
    )
    parser.add_argument("--num_images_per_prompt", type=int, default=4, help="GenEval: 4.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the per-sample seeds.")
    parser.add_argument("--batch_size", type=int, default=8, help="Images per pipeline call (a shard).")
    parser.add_argument("--resolution", type=int, default=None, help="Image side; default the model's.")
    parser.add_argument("--num_inference_steps", type=int, default=None, help="Default: the pipeline's recipe.")
    parser.add_argument("--guidance_scale", type=float, default=None, help="Default: the pipeline's recipe.")
    parser.add_argument(
        "--guidance_interval", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"), help="Default: the recipe."
    )
    parser.add_argument("--shift", type=float, default=None, help="Timeshift; default: the scheduler's.")
    parser.add_argument("--negative_prompt", type=str, default="")
    parser.add_argument("--max_sequence_length", type=int, default=None, help="Default: the transformer's.")
    parser.add_argument("--mixed_precision", type=str, default=None, choices=["no", "fp16", "bf16"])
    parser.add_argument("--output_dir", type=str, required=True)
    args = parser.parse_args(input_args)
    if args.num_images_per_prompt < 1:
        raise ValueError(f"--num_images_per_prompt must be positive, got {args.num_images_per_prompt}.")
    return args


def main(args):
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    accelerator = Accelerator(mixed_precision=args.mixed_precision)
    prompts = evaluation.read_prompts(args.prompts)
    if not prompts:
        raise ValueError(f"{args.prompts} holds no prompt.")
    text_components = {}
    if args.text_encoder_name_or_path is not None:
        from transformers import AutoModel, AutoTokenizer

        text_components = {
            "tokenizer": AutoTokenizer.from_pretrained(args.text_encoder_name_or_path),
            "text_encoder": AutoModel.from_pretrained(args.text_encoder_name_or_path),
        }
    pipe = evaluation.load_pipeline(
        args.pretrained_model_name_or_path,
        (PixelDiTT2IPipeline,),
        revision=args.revision,
        variant=args.variant,
        cache_dir=args.cache_dir,
        **text_components,
    ).to(accelerator.device)
    pipe.set_progress_bar_config(disable=True)

    resolution = args.resolution or pipe.transformer.config.sample_size
    sampling = {
        "num_inference_steps": args.num_inference_steps or pipe.config.default_num_inference_steps,
        "guidance_scale": pipe.config.default_guidance_scale if args.guidance_scale is None else args.guidance_scale,
        "guidance_interval": list(args.guidance_interval or pipe.config.default_guidance_interval),
        "shift": args.shift,
        "height": resolution,
        "width": resolution,
        "negative_prompt": args.negative_prompt,
        "max_sequence_length": args.max_sequence_length,
    }
    per_prompt = args.num_images_per_prompt
    num_samples = len(prompts) * per_prompt
    seeds = evaluation.sample_seeds(args.seed, num_samples)
    shards = evaluation.plan_shards(num_samples, args.batch_size)
    manifest = {
        "pipeline": args.pretrained_model_name_or_path,
        "revision": args.revision,
        "variant": args.variant,
        "text_encoder": args.text_encoder_name_or_path,
        "prompts": [row["prompt"] for row in prompts],
        "num_images_per_prompt": per_prompt,
        "seed": args.seed,
        "batch_size": args.batch_size,
        "mixed_precision": accelerator.mixed_precision,
        **sampling,
    }
    # A shard is done when its record (the files it wrote, their seeds) exists; its PNGs were written before it.
    store = evaluation.ShardStore(os.path.join(args.output_dir, evaluation.SHARDS_FOLDER), ".json")

    def sample_path(sample: int) -> str:
        return os.path.join(
            args.output_dir, f"{sample // per_prompt:05d}", "samples", f"{sample % per_prompt:05d}.png"
        )

    if accelerator.is_main_process:
        evaluation.check_manifest(args.output_dir, manifest)
        prompt_folders = [os.path.join(args.output_dir, f"{index:05d}") for index in range(len(prompts))]
        evaluation.remove_unfinished_files(
            [args.output_dir, store.folder, *prompt_folders, *(os.path.join(f, "samples") for f in prompt_folders)]
        )
        for folder, metadata in zip(prompt_folders, prompts):
            os.makedirs(os.path.join(folder, "samples"), exist_ok=True)
            evaluation.write_text(os.path.join(folder, "metadata.jsonl"), json.dumps(metadata))
    accelerator.wait_for_everyone()
    done = store.done()
    accelerator.wait_for_everyone()  # every process has seen the same finished shards
    pending = [index for index in range(len(shards)) if index not in done]
    mine = evaluation.assigned_shards(pending, accelerator.process_index, accelerator.num_processes)
    logger.info(
        f"{num_samples} images ({len(prompts)} prompts x {per_prompt}) in {len(shards)} shards: {len(done)} done, "
        f"{len(pending)} to generate on {accelerator.num_processes} processes.",
        main_process_only=True,
    )

    def finished_samples() -> int:
        return sum(len(shards[index]) for index in store.done())

    progress_bar = tqdm(
        total=num_samples,
        initial=finished_samples(),
        unit="img",
        desc="Sampling (all processes)",
        disable=not accelerator.is_main_process,
    )
    for index in mine:
        samples = shards[index]
        with accelerator.autocast():
            output = pipe(
                prompt=[prompts[sample // per_prompt]["prompt"] for sample in samples],
                generator=evaluation.sample_generators(seeds[samples.start : samples.stop]),
                output_type="latent",
                **sampling,
            )
        for sample, image in zip(samples, evaluation.to_uint8(output.images)):
            evaluation.save_png(image, sample_path(sample))
        record = {
            "files": [os.path.relpath(sample_path(sample), args.output_dir) for sample in samples],
            "seeds": seeds[samples.start : samples.stop],
        }
        store.save_text(index, json.dumps(record))
        if accelerator.is_main_process:
            progress_bar.update(finished_samples() - progress_bar.n)
    accelerator.wait_for_everyone()
    progress_bar.update(num_samples - progress_bar.n)
    progress_bar.close()

    if accelerator.is_main_process:
        missing = [sample for sample in range(num_samples) if not os.path.isfile(sample_path(sample))]
        unfinished = sorted(set(range(len(shards))) - store.done())
        if missing or unfinished:
            raise RuntimeError(f"After sampling, shards {unfinished} are unfinished and images {missing} missing.")
        logger.info(f"{num_samples} images in {args.output_dir} (GenEval layout).")
    accelerator.wait_for_everyone()
    accelerator.end_training()


if __name__ == "__main__":
    main(parse_args())
