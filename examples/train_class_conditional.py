#!/usr/bin/env python
# Copyright 2026 The diffusers-pixeldit authors. Licensed under the Apache License, Version 2.0.
"""Class-conditional PixelDiT training, in the shape of diffusers' `train_text_to_image.py` with the flow-matching
objective of `train_dreambooth_sd3.py`. See examples/README.md.

    accelerate launch examples/train_class_conditional.py --train_data_dir ./imagenet_folder --resolution 256 \
        --preset PixelDiT-B --mixed_precision bf16 --use_ema --output_dir out
"""

import argparse
import sys

import datasets
import pixeldit_train_utils as utils
import torch
from accelerate.logging import get_logger
from diffusers.utils import check_min_version

from diffusers_pixeldit import PixelDiTFlowScheduler, PixelDiTPipeline, PixelDiTTransformer2DModel


check_min_version("0.40.0")

logger = get_logger(__name__, log_level="INFO")

LORA_LAYERS = "to_q,to_k,to_v,to_out.0,ff.net.0.proj,ff.net.2"


def save_model_card(args, repo_id: str, id2label: dict[str, str], grid_path: str | None, repo_folder: str):
    classes = ", ".join(f"{k}: {v}" for k, v in list(id2label.items())[:20]) + (" ..." if len(id2label) > 20 else "")
    model_description = f"""# PixelDiT class-conditional model - {repo_id}

{utils.model_summary(args, f"preset `{args.preset}`")} with `examples/train_class_conditional.py`.
{utils.training_summary(args, f"labels dropped to the null class with probability {args.class_dropout_prob}")}

Classes ({len(id2label)}): {classes}

## Usage

```python
from diffusers_pixeldit import PixelDiTPipeline

{utils.loading_code(args, repo_id, "PixelDiTPipeline")}
image = pipe(class_labels=[0]).images[0]
```

Without other arguments the pipeline samples with the recipe in its config (`default_num_inference_steps`,
`default_guidance_scale`, `default_guidance_interval`); each is also a call argument.
"""
    if grid_path is not None:
        model_description += f"\n## Samples\n\n![samples]({grid_path})\n"
    utils.write_model_card(args, model_description, ["class-conditional", "image-generation"], repo_folder)


def log_validation(pipeline, args, accelerator, step: int, is_final_validation: bool = False):
    """Samples `num_validation_images` per validation class; saves and logs the grid (one row per class)."""
    logger.info(f"Running validation: {args.num_validation_images} images of classes {args.validation_class_labels}.")
    pipeline = pipeline.to(accelerator.device)
    pipeline.set_progress_bar_config(disable=True)
    class_labels = [int(label) if label.isdigit() else label for label in args.validation_class_labels]
    images = pipeline(
        class_labels=class_labels,
        num_images_per_prompt=args.num_validation_images,
        height=args.resolution,
        width=args.resolution,
        num_inference_steps=args.validation_num_inference_steps,
        guidance_scale=args.validation_guidance_scale,
        generator=torch.Generator(device=accelerator.device).manual_seed(args.seed),
    ).images
    phase = "test" if is_final_validation else "validation"
    return utils.log_images(accelerator, args, images, len(class_labels), step, phase)


def class_labels_of(dataset: datasets.Dataset, column: str) -> tuple[list[int], list[str]]:
    """Each row's class id, and the class names (the folder names of an imagefolder)."""
    values = list(dataset[column])
    feature = dataset.features[column]
    if isinstance(feature, datasets.ClassLabel):
        return values, feature.names
    if all(isinstance(value, int) for value in values):
        return values, [str(i) for i in range(max(values) + 1)]
    names = sorted(set(values))
    ids = {name: i for i, name in enumerate(names)}
    return [ids[value] for value in values], names


def parse_args(input_args=None):
    parser = argparse.ArgumentParser(description="Class-conditional PixelDiT training.")
    utils.add_training_arguments(parser, default_preset="PixelDiT-B", lora_layers=LORA_LAYERS)
    parser.add_argument(
        "--label_column",
        type=str,
        default="label",
        help="The class column: a `ClassLabel` (imagefolder class sub-folders), integer ids or class names.",
    )
    parser.add_argument(
        "--class_dropout_prob",
        type=float,
        default=0.1,
        help="Probability to replace a label by the null class (id num_classes), for classifier-free guidance.",
    )
    parser.add_argument(
        "--validation_class_labels",
        type=str,
        nargs="+",
        default=None,
        help="Class ids or names sampled every --validation_steps and at the end.",
    )
    args = parser.parse_args(input_args)
    utils.check_training_arguments(args)
    args.training_command = utils.training_command(__file__, sys.argv[1:] if input_args is None else input_args)
    return args


def main(args):
    accelerator = utils.create_accelerator(args)
    weight_dtype = utils.weight_dtype_of(accelerator)
    if accelerator.is_main_process and args.push_to_hub:
        repo_id = utils.create_hub_repo(args)

    with accelerator.main_process_first():
        dataset = utils.load_image_dataset(args, [args.image_column, args.label_column])
    labels, names = class_labels_of(dataset, args.label_column)

    pipeline_config = None
    id2label = {str(i): name for i, name in enumerate(names)}
    if args.pretrained_model_name_or_path is not None:
        pipeline = PixelDiTPipeline.from_pretrained(
            args.pretrained_model_name_or_path, revision=args.revision, variant=args.variant
        )
        transformer, scheduler = pipeline.transformer, pipeline.scheduler
        pipeline_config = pipeline.config
        id2label = pipeline.config.id2label or id2label
        del pipeline
    else:
        config = {"num_classes": len(names), "sample_size": args.resolution, **utils.transformer_overrides(args)}
        transformer = PixelDiTTransformer2DModel.from_preset(args.preset, **config)
        scheduler = PixelDiTFlowScheduler(shift=args.training_shift)
    pipeline_defaults = utils.sampling_recipe(args, pipeline_config)
    num_classes = transformer.config.num_classes
    if num_classes is None:
        raise ValueError("This is a text-conditional PixelDiT: use train_text_to_image.py.")
    if max(labels) >= num_classes:
        raise ValueError(f"The dataset has class ids up to {max(labels)}; the model has {num_classes} classes.")
    if args.resolution % transformer.config.patch_size:
        raise ValueError(f"--resolution must be a multiple of the patch size {transformer.config.patch_size}.")
    utils.prepare_transformer(args, transformer, weight_dtype)

    size = (args.resolution, args.resolution)
    train_dataset = utils.FlowMatchingDataset(
        dataset, labels, [size] * len(dataset), args, args.class_dropout_prob, transformer.config.in_channels
    )

    def condition_fn(batch):
        return {"class_labels": torch.where(batch["drop"], num_classes, batch["condition"])}

    def validation_fn(model, step):
        log_validation(PixelDiTPipeline(model, scheduler, id2label, **pipeline_defaults), args, accelerator, step)

    transformer = utils.train(
        args,
        accelerator,
        transformer,
        train_dataset,
        [list(range(len(dataset)))],
        condition_fn,
        validation_fn if args.validation_class_labels else None,
    )

    if accelerator.is_main_process:
        if args.rank is not None:
            transformer.save_lora_adapter(args.output_dir)
            pipeline = PixelDiTPipeline(transformer, scheduler, id2label, **pipeline_defaults)
        else:
            PixelDiTPipeline(transformer, scheduler, id2label, **pipeline_defaults).save_pretrained(args.output_dir)
            pipeline = PixelDiTPipeline.from_pretrained(args.output_dir)
        grid_path = None
        if args.validation_class_labels:
            grid_path = log_validation(pipeline, args, accelerator, args.max_train_steps, is_final_validation=True)
        save_model_card(args, repo_id if args.push_to_hub else args.output_dir, id2label, grid_path, args.output_dir)
        if args.push_to_hub:
            utils.upload_output_dir(args, repo_id)
    accelerator.end_training()


if __name__ == "__main__":
    main(parse_args())
