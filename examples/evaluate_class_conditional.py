#!/usr/bin/env python
# Copyright 2026 The diffusers-pixeldit authors. Licensed under the Apache License, Version 2.0.
"""Samples for FID: `--num_samples_per_class` images of every class of a class-conditional PixelDiT or PixelDiT2
pipeline, split across the processes of `accelerate launch`, resumable, merged into the ADM reference-batch layout
(`samples_{N}x{H}x{W}x3.npz`), optionally PNGs, then FID / IS against a reference; the machinery is
`diffusers_pixeldit.evaluation`. See examples/README.md.

    accelerate launch --multi_gpu --num_processes 8 examples/evaluate_class_conditional.py \
        --pretrained_model_name_or_path path/to/pixeldit-xl-256 --seed 5000 --output_dir eval-xl-256 \
        --reference_batch VIRTUAL_imagenet256_labeled.npz
"""

import argparse
import json
import logging
import os
import time

import numpy as np
from accelerate import Accelerator
from accelerate.logging import get_logger
from tqdm.auto import tqdm

from diffusers_pixeldit import PixelDiT2Pipeline, PixelDiTPipeline, evaluation


logger = get_logger(__name__, log_level="INFO")


def parse_args(input_args=None):
    parser = argparse.ArgumentParser(description="Multi-process, resumable class-conditional sampling for FID.")
    parser.add_argument(
        "--pretrained_model_name_or_path",
        type=str,
        required=True,
        help="A PixelDiTPipeline or PixelDiT2Pipeline folder or Hub repo.",
    )
    parser.add_argument("--revision", type=str, default=None)
    parser.add_argument("--variant", type=str, default=None, help="Variant of the weights, e.g. fp16.")
    parser.add_argument("--cache_dir", type=str, default=None)
    parser.add_argument(
        "--class_labels", type=str, nargs="+", default=None, help="Class ids or names (default: every class)."
    )
    parser.add_argument("--num_samples_per_class", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0, help="Seed of the per-sample seeds.")
    parser.add_argument(
        "--batch_size", type=int, default=32, help="Images per pipeline call (a shard); fixes the output bytes."
    )
    parser.add_argument("--resolution", type=int, default=None, help="Image side; default the model's.")
    parser.add_argument("--num_inference_steps", type=int, default=None, help="Default: the pipeline's recipe.")
    parser.add_argument("--guidance_scale", type=float, default=None, help="Default: the pipeline's recipe.")
    parser.add_argument(
        "--guidance_interval",
        type=float,
        nargs=2,
        default=None,
        metavar=("LOW", "HIGH"),
        help="CFG interval in model-card time t = 1 - σ; default: the pipeline's recipe.",
    )
    parser.add_argument("--shift", type=float, default=None, help="Timeshift; default: the scheduler's.")
    parser.add_argument(
        "--mixed_precision",
        type=str,
        default=None,
        choices=["no", "fp16", "bf16"],
        help="Autocast (the official evaluation: fp32 weights under bf16 autocast); default: the accelerate config.",
    )
    parser.add_argument("--output_dir", type=str, required=True, help="Shards, samples, PNGs and metrics.")
    parser.add_argument("--save_png", action="store_true", help="Also write png/{index:06d}.png (torch-fidelity).")
    parser.add_argument(
        "--reference_batch",
        type=str,
        default=None,
        help="FID reference: an .npz batch (arr_0, uint8 N x H x W x 3, at --resolution) or statistics (mu, sigma).",
    )
    parser.add_argument(
        "--feature_extractor",
        type=str,
        default="inception",
        help='"inception" (torch-fidelity\'s InceptionV3), or a transformers vision encoder, e.g. facebook/dinov2-base.',
    )
    parser.add_argument("--feature_resolution", type=int, default=224, help="Input side of a transformers encoder.")
    parser.add_argument(
        "--inception_weights",
        type=str,
        default=None,
        help="A local weights-inception-2015-12-05-6726825d.pth; default: torch-fidelity's cache.",
    )
    parser.add_argument("--inception_score", action="store_true", help="Also compute the Inception Score.")
    parser.add_argument(
        "--digits_metrics",
        action="store_true",
        help="The embedded digits models: classifier accuracy and Fréchet distance (benchmarks/eval_digits.py's).",
    )
    parser.add_argument("--metrics_batch_size", type=int, default=100)
    args = parser.parse_args(input_args)
    if args.num_samples_per_class < 1:
        raise ValueError(f"--num_samples_per_class must be positive, got {args.num_samples_per_class}.")
    return args


def check_digits_metrics(resolution: int, class_ids: list[int]):
    """Raises before any work when the digits metrics cannot judge these samples."""
    import importlib.util

    from diffusers_pixeldit.digits import DIGIT_NAMES, IMAGE_SIZE

    if importlib.util.find_spec("sklearn") is None or importlib.util.find_spec("scipy") is None:
        raise ImportError('--digits_metrics needs scikit-learn and SciPy: pip install "diffusers-pixeldit[digits]".')
    if resolution != IMAGE_SIZE or max(class_ids) >= len(DIGIT_NAMES):
        raise ValueError(
            f"--digits_metrics judges {IMAGE_SIZE}x{IMAGE_SIZE} digits of classes 0-9 (the embedded digits models); "
            f"these samples are {resolution}x{resolution} of classes up to {max(class_ids)}."
        )


def digits_metrics(images: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    from diffusers_pixeldit.digits import DigitClassifier, digits_quality, load_digit_splits

    classifier = DigitClassifier()
    real_features = classifier.features(load_digit_splits()["test"][0])
    return {
        f"digits_{name}": value for name, value in digits_quality(classifier, images, labels, real_features).items()
    }


def main(args):
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    accelerator = Accelerator(mixed_precision=args.mixed_precision)
    pipe = evaluation.load_pipeline(
        args.pretrained_model_name_or_path,
        (PixelDiTPipeline, PixelDiT2Pipeline),
        revision=args.revision,
        variant=args.variant,
        cache_dir=args.cache_dir,
    ).to(accelerator.device)
    pipe.set_progress_bar_config(disable=True)

    # Everything that can be wrong is checked before any sample is generated.
    class_ids = pipe.class_ids(
        [int(label) if label.isdigit() else label for label in args.class_labels]
        if args.class_labels
        else list(range(pipe.transformer.config.num_classes))
    )
    resolution = args.resolution or pipe.transformer.config.sample_size
    if args.reference_batch is not None:
        evaluation.check_reference(args.reference_batch, resolution)
    if args.digits_metrics:
        check_digits_metrics(resolution, class_ids)
    metrics = None  # built on the main process only, which computes them
    if accelerator.is_main_process and (args.reference_batch is not None or args.inception_score):
        metrics = evaluation.GenerativeMetrics(
            args.feature_extractor,
            args.reference_batch,
            resolution=resolution,
            inception_weights=args.inception_weights,
            inception_score=args.inception_score,
            feature_resolution=args.feature_resolution,
            batch_size=args.metrics_batch_size,
            device=accelerator.device,
        )
    sampling = {
        "num_inference_steps": args.num_inference_steps or pipe.config.default_num_inference_steps,
        "guidance_scale": pipe.config.default_guidance_scale if args.guidance_scale is None else args.guidance_scale,
        "guidance_interval": list(args.guidance_interval or pipe.config.default_guidance_interval),
        "shift": args.shift,
        "height": resolution,
        "width": resolution,
    }
    labels = np.repeat(class_ids, args.num_samples_per_class)
    seeds = evaluation.sample_seeds(args.seed, len(labels))
    shards = evaluation.plan_shards(len(labels), args.batch_size)
    manifest = {
        "pipeline": args.pretrained_model_name_or_path,
        "revision": args.revision,
        "variant": args.variant,
        "class_ids": [int(i) for i in class_ids],
        "num_samples_per_class": args.num_samples_per_class,
        "seed": args.seed,
        "batch_size": args.batch_size,
        "mixed_precision": accelerator.mixed_precision,
        "save_png": args.save_png,
        **sampling,
    }
    store = evaluation.ShardStore(os.path.join(args.output_dir, evaluation.SHARDS_FOLDER), ".npz")
    output_npz = os.path.join(args.output_dir, f"samples_{len(labels)}x{resolution}x{resolution}x3.npz")
    png_dir = os.path.join(args.output_dir, "png")
    if accelerator.is_main_process:
        evaluation.check_manifest(args.output_dir, manifest)
        evaluation.remove_unfinished_files([args.output_dir, store.folder, png_dir])
        if args.save_png:
            os.makedirs(png_dir, exist_ok=True)
    accelerator.wait_for_everyone()
    # A finished run (its merged file written atomically) only computes the metrics again.
    done = set(range(len(shards))) if os.path.exists(output_npz) else store.done()
    accelerator.wait_for_everyone()  # every process has seen the same finished shards
    pending = [index for index in range(len(shards)) if index not in done]
    mine = evaluation.assigned_shards(pending, accelerator.process_index, accelerator.num_processes)
    logger.info(
        f"{len(labels)} samples ({len(class_ids)} classes x {args.num_samples_per_class}) in {len(shards)} shards: "
        f"{len(done)} done, {len(pending)} to generate on {accelerator.num_processes} processes.",
        main_process_only=True,
    )

    def finished_samples() -> int:
        return sum(len(shards[index]) for index in store.done())

    progress_bar = tqdm(
        total=len(labels),
        initial=sum(len(shards[index]) for index in done),
        unit="img",
        desc="Sampling (all processes)",
        disable=not accelerator.is_main_process,
    )
    for index in mine:
        samples = shards[index]
        with accelerator.autocast():
            output = pipe(
                class_labels=labels[samples.start : samples.stop].tolist(),
                generator=evaluation.sample_generators(seeds[samples.start : samples.stop]),
                output_type="latent",
                **sampling,
            )
        images = evaluation.to_uint8(output.images)
        if args.save_png:
            for sample, image in zip(samples, images):
                evaluation.save_png(image, os.path.join(png_dir, f"{sample:06d}.png"))
        arrays = dict(
            images=images,
            labels=labels[samples.start : samples.stop],
            seeds=np.asarray(seeds[samples.start : samples.stop], dtype=np.int64),
            indices=np.asarray(samples),
        )
        store.save_arrays(index, arrays)
        if accelerator.is_main_process:
            progress_bar.update(finished_samples() - progress_bar.n)
    accelerator.wait_for_everyone()
    progress_bar.update(len(labels) - progress_bar.n)
    progress_bar.close()

    if accelerator.is_main_process:
        if not os.path.exists(output_npz):
            shape = evaluation.merge_shards(store, shards, labels, output_npz)
            logger.info(f"Wrote {output_npz} ({shape}, classes in order).")
        results = {"num_samples": len(labels), "samples": os.path.basename(output_npz)}
        if metrics is not None:
            start = time.perf_counter()
            results.update(metrics.compute(evaluation.iter_npz_array(output_npz, "arr_0", args.metrics_batch_size)))
            logger.info(f"Metrics in {time.perf_counter() - start:.0f} s.")
        if args.digits_metrics:
            images = np.concatenate(list(evaluation.iter_npz_array(output_npz, "arr_0")))[..., 0]
            results.update(digits_metrics(images, labels))
        results_path = os.path.join(args.output_dir, "metrics.json")
        evaluation.write_text(results_path, json.dumps(results, indent=1))
        logger.info(f"{json.dumps(results)} (written to {results_path})")
    accelerator.wait_for_everyone()
    accelerator.end_training()


if __name__ == "__main__":
    main(parse_args())
