"""Calibrates MagCache's `mag_ratios` for a pipeline folder at its recipe and writes them beside it (`mag_ratios.json`).

    python scripts/calibrate_mag_cache.py --digits c2i                   # the embedded digits models, as shipped
    python scripts/calibrate_mag_cache.py --digits t2i
    python scripts/calibrate_mag_cache.py path/to/pixeldit-xl-256 --class_labels 207 360 387 974 88 979 417 279

The ratios (`diffusers_pixeldit.caching.calibrate_mag_ratios`, those of `MagCacheConfig(calibrate=True)`) are
measured over one call of the pipeline's default recipe (steps, scheduler, CFG scale and interval) unless the options
below change it, on a batch of the given conditions (the digits: one per class, seeds 0–9). Use them with
`pipe.transformer.enable_cache(mag_cache_config(folder))`.
"""

import argparse
import json
from pathlib import Path

import torch

import diffusers_pixeldit
from diffusers_pixeldit.caching import calibrate_mag_ratios, num_model_evaluations, save_mag_ratios
from diffusers_pixeldit.digits import DIGIT_NAMES, pretrained_digits_path


def load(folder: Path, digits: str | None):
    if digits == "t2i":
        from transformers import AutoModel, AutoTokenizer

        from diffusers_pixeldit import PixelDiTT2IPipeline
        from diffusers_pixeldit.digits import minilm_path

        return PixelDiTT2IPipeline.from_pretrained(
            folder, tokenizer=AutoTokenizer.from_pretrained(minilm_path()), text_encoder=AutoModel.from_pretrained(minilm_path())
        )  # fmt: skip
    pipeline_class = getattr(diffusers_pixeldit, json.loads((folder / "model_index.json").read_text())["_class_name"])
    return pipeline_class.from_pretrained(folder)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", nargs="?", type=Path, help="A pipeline folder (written into).")
    parser.add_argument("--digits", choices=["c2i", "t2i"], help="An embedded digits model (its package folder).")
    parser.add_argument("--class_labels", nargs="+", help="Class ids or names of the calibration batch.")
    parser.add_argument("--prompts", nargs="+", help="Prompts of the calibration batch (text-to-image).")
    parser.add_argument("--num_inference_steps", type=int)
    parser.add_argument("--guidance_scale", type=float)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if (args.folder is None) == (args.digits is None):
        parser.error("give a pipeline folder or --digits")
    folder = pretrained_digits_path(args.digits) if args.digits else args.folder
    pipe = load(folder, args.digits)
    pipe.set_progress_bar_config(disable=True)

    if args.digits == "c2i":
        condition = {"class_labels": list(range(10))}
    elif args.digits == "t2i":
        condition = {"prompt": [f"a handwritten digit {name}" for name in DIGIT_NAMES]}
    elif args.prompts:
        condition = {"prompt": args.prompts}
    elif args.class_labels:
        condition = {"class_labels": [int(c) if c.isdigit() else c for c in args.class_labels]}
    else:
        parser.error("give --class_labels or --prompts")
    recipe = {
        "num_inference_steps": args.num_inference_steps or pipe.config.default_num_inference_steps,
        "guidance_scale": args.guidance_scale or pipe.config.default_guidance_scale,
        "guidance_interval": list(pipe.config.default_guidance_interval),
    }
    batch_size = len(next(iter(condition.values())))
    generators = [torch.Generator().manual_seed(args.seed + i) for i in range(batch_size)]
    ratios = calibrate_mag_ratios(pipe, **condition, **recipe, generator=generators)
    evaluations = num_model_evaluations(pipe, recipe["num_inference_steps"])
    stored = {
        # MagCache counts transformer evaluations (`num_inference_steps` of MagCacheConfig), not sampler steps.
        "num_inference_steps": evaluations,
        "sampler_steps": recipe["num_inference_steps"],
        "scheduler": pipe.scheduler.__class__.__name__,
        "guidance_scale": recipe["guidance_scale"],
        "guidance_interval": recipe["guidance_interval"],
        "calibration_batch": batch_size,
    }
    path = save_mag_ratios(folder, ratios, stored)
    print(f"wrote {len(ratios)} ratios to {path}: {[round(r, 4) for r in ratios]}")


if __name__ == "__main__":
    main()
