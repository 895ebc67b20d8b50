# Copyright 2026 The diffusers-pixeldit authors. Licensed under the Apache License, Version 2.0.
"""Converts official PixelDiT checkpoints into diffusers pipeline folders, and back.

    python scripts/convert_checkpoint.py --checkpoint imagenet256_pixeldit_xl_epoch320.ckpt --output pixeldit-xl-256
    python scripts/convert_checkpoint.py --checkpoint pixeldit_t2i_v1.pth --text_encoder google/gemma-2-2b-it \\
        --output pixeldit-t2i
    python scripts/convert_checkpoint.py --checkpoint pixeldit2_h16_in256_ep600.ckpt \\
        --grounding_encoder facebook/dinov3-vits16-pretrain-lvd1689m --output pixeldit2-h16-256
    python scripts/convert_checkpoint.py --to-official --checkpoint pixeldit-xl-256 --output pixeldit_xl.ckpt

The kind (class-conditional, text-to-image or PixelDiT2) and the architecture are read from the tensors, the sampling
recipe from the file name (the releases' model cards), with command-line overrides. Checkpoints are untrusted: pickles are
loaded with `torch.load(weights_only=True)`. The output is written next to its destination and renamed into place
once complete, so a failed conversion leaves nothing behind.
"""

import argparse
import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from huggingface_hub import HfApi, ModelCard, ModelCardData

from diffusers_pixeldit import PixelDiT2Transformer2DModel, PixelDiTTransformer2DModel
from diffusers_pixeldit.conversion import (
    DINOV3,
    GEMMA,
    PIXELDIT2_OVERRIDES,
    RECIPE_OVERRIDES,
    SAMPLERS,
    load_official_checkpoint,
    load_text_components,
    official_checkpoint_from_transformer,
    official_components,
)
from diffusers_pixeldit.models import PIXELDIT2_PRESETS, PIXELDIT_PRESETS
from diffusers_pixeldit.single_file import official_pipeline


logger = logging.getLogger("convert_checkpoint")

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Options of the official -> diffusers direction, refused with --to-official.
TO_DIFFUSERS_ONLY = (
    "weights", "preset", "num_attention_heads", "text_encoder", "grounding_encoder", "grounding_encoder_heads",
    "in_context_start", "silu_conditioning", "noise_scale", "resolution", *RECIPE_OVERRIDES, "max_shard_size",
    "push_to_hub", "repo_id", "private", "trust_pickle",
)  # fmt: skip
SAMPLER_DESCRIPTIONS = {
    "adams_bashforth": '`PixelDiTFlowScheduler(solver="adams_bashforth")`: the official "FlowDPMSolver" '
    "(2-step Adams-Bashforth)",
    "euler": '`PixelDiTFlowScheduler(solver="euler")`: the official Euler sampler',
    "heun": '`PixelDiTFlowScheduler(solver="heun", time_grid="uniform")`: the official `GroundedHeunSampler` (Heun '
    "steps and a final Euler step)",
    "dpmsolver++": "`DPMSolverMultistepScheduler`: DPM-Solver++ (2M) with flow sigmas, the release's sampler",
}
RELEASES = {
    "c2i": "nvidia/PixelDiT-ImageNet",
    "t2i": "nvidia/PixelDiT-1300M-1024px",
    "pixeldit2": "nvidia/PixelDiT2-ImageNet",
}


def positive(kind):
    """An argparse type: a positive `kind` (int or float)."""

    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--checkpoint",
        required=True,
        help="official checkpoint (.ckpt, .pth, .bin or .safetensors); with --to-official a diffusers pipeline folder",
    )
    parser.add_argument(
        "--output", required=True, help="pipeline folder to write; with --to-official the official checkpoint file"
    )
    parser.add_argument(
        "--to-official",
        "--to_official",
        dest="to_official",
        action="store_true",
        help="convert a diffusers pipeline folder back to the official layout: class-conditional "
        '{"state_dict": {"ema_denoiser.*", "denoiser.*"}} (both hold the converted, normally EMA, weights), '
        'text-to-image {"state_dict": {"core.*"}}',
    )
    parser.add_argument(
        "--weights",
        choices=["ema", "raw"],
        default="ema",
        help="weight set of a checkpoint holding both (default: ema, as the official sampling)",
    )
    parser.add_argument(
        "--preset",
        choices=sorted(PIXELDIT_PRESETS | PIXELDIT2_PRESETS),
        help="expected architecture; an error if the tensors disagree",
    )
    parser.add_argument("--num_attention_heads", type=positive(int), help="expected head count (read from the shapes)")
    parser.add_argument(
        "--text_encoder",
        metavar="PATH_OR_ID",
        help=f"text-to-image: the text encoder (and its tokenizer) to include, e.g. {GEMMA}",
    )
    pixeldit2 = parser.add_argument_group("PixelDiT2")
    pixeldit2.add_argument(
        "--grounding_encoder",
        metavar="PATH_OR_ID",
        help="the frozen DINOv3 when the checkpoint does not hold it: a transformers DINOv3ViTModel folder or Hub id "
        f"({DINOV3[384]} for the 256 px release, {DINOV3[768]} for 512 px) or a timm DINOv3 .safetensors file",
    )
    pixeldit2.add_argument(
        "--grounding_encoder_heads",
        type=positive(int),
        help="attention heads of a grounding encoder read from timm weights (default: width / 64, as DINOv3)",
    )
    pixeldit2.add_argument(
        "--in_context_start", type=int, help="block the in-context class tokens join at (default: the architecture's)"
    )
    pixeldit2.add_argument(
        "--silu_conditioning",
        choices=["true", "false"],
        help="SiLU on the per-patch conditioning (the 256 px release: true; 512 px: false, its single SiLU)",
    )
    pixeldit2.add_argument("--noise_scale", type=positive(float), help="the trained noise scale (256 px: 1, 512: 2)")
    pixeldit2.add_argument(
        "--include_grounding_encoder",
        action="store_true",
        help="with --to-official: write the grounding encoder into the checkpoint too (the releases hold none)",
    )
    recipe = parser.add_argument_group("sampling recipe (default: the model card's, chosen from the file name)")
    recipe.add_argument("--resolution", type=positive(int), help="image side in pixels (the default sample size)")
    recipe.add_argument("--num_inference_steps", type=positive(int))
    recipe.add_argument("--guidance_scale", type=float)
    recipe.add_argument(
        "--guidance_interval",
        type=float,
        nargs=2,
        metavar=("LOW", "HIGH"),
        help="CFG applies while LOW < t < HIGH, t = 1 - sigma (0 = noise, 1 = image)",
    )
    recipe.add_argument("--shift", type=positive(float), help="timeshift (flow shift)")
    recipe.add_argument("--sampler", choices=SAMPLERS)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="dtype of the saved weights")
    parser.add_argument("--variant", help='diffusers variant of the weight files, e.g. "bf16"')
    parser.add_argument("--max_shard_size", default="5GB", help="largest weight file before sharding (default 5GB)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing non-empty output")
    parser.add_argument(
        "--trust-pickle",
        "--trust_pickle",
        dest="trust_pickle",
        action="store_true",
        help="allow a checkpoint that needs arbitrary unpickling (it can run code): only for trusted files",
    )
    parser.add_argument("--push_to_hub", action="store_true", help="upload the pipeline folder to --repo_id")
    parser.add_argument("--repo_id", help="Hub repository for --push_to_hub, e.g. user/pixeldit-xl-256")
    parser.add_argument("--private", action="store_true", help="create the Hub repository as private")
    return parser


def check_output(output: Path, overwrite: bool):
    if output.exists() and not overwrite and not (output.is_dir() and not any(output.iterdir())):
        raise ValueError(f"{output} exists and is not empty; pass --overwrite to replace it.")


@contextlib.contextmanager
def staged(output: Path):
    """Yields a path in a temporary folder next to `output` for the result, which replaces `output` when the block
    succeeds; the temporary folder is removed in any case."""
    output.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".partial", dir=output.parent))
    try:
        yield work / "new"
        if output.exists() or output.is_symlink():
            os.replace(output, work / "old")
        os.replace(work / "new", output)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def model_card(
    pipe, kind: str, recipe: dict, source: str, location: str, variant: str | None, overridden: list[str]
) -> ModelCard:
    """The README.md of a converted pipeline: source, licence, usage and sampling recipe."""
    transformer = pipe.transformer
    config = transformer.config
    parameters = sum(p.numel() for p in transformer.parameters())
    dtype = str(transformer.dtype).removeprefix("torch.")
    load_options = (f', variant="{variant}"' if variant else "") + (
        f", dtype=torch.{dtype}" if dtype != "float32" else ""
    )
    if kind == "c2i":
        label = 207 if config.num_classes > 207 else 0
        usage = (
            "import torch\nfrom diffusers_pixeldit import PixelDiTPipeline\n\n"
            f'pipe = PixelDiTPipeline.from_pretrained("{location}"{load_options})\n'
            f"image = pipe(class_labels=[{label}], generator=torch.Generator().manual_seed(0)).images[0]"
        )
        what = f"a class-conditional `PixelDiTPipeline` ({config.num_classes} classes)"
        note = ""
    elif kind == "pixeldit2":
        label = 207 if config.num_classes > 207 else 0
        usage = (
            "import torch\nfrom diffusers_pixeldit import PixelDiT2Pipeline\n\n"
            f'pipe = PixelDiT2Pipeline.from_pretrained("{location}"{load_options})\n'
            f"image = pipe(class_labels=[{label}], generator=torch.Generator().manual_seed(0)).images[0]"
        )
        encoder = pipe.grounding_encoder
        what = (
            f"a class-conditional `PixelDiT2Pipeline` ({config.num_classes} classes) with its frozen grounding encoder "
            f"(`{type(encoder).__name__}`, width {encoder.config.hidden_size})"
        )
        note = (
            "\n\nThe grounding encoder is Meta's DINOv3, under the DINOv3 licence (its weights are gated on the Hub: "
            f"accept the licence at [{DINOV3.get(encoder.config.hidden_size, DINOV3[384])}]"
            f"(https://huggingface.co/{DINOV3.get(encoder.config.hidden_size, DINOV3[384])}) before sharing them)."
        )
    elif pipe.text_encoder is not None:
        usage = (
            "import torch\nfrom diffusers_pixeldit import PixelDiTT2IPipeline\n\n"
            f'pipe = PixelDiTT2IPipeline.from_pretrained("{location}"{load_options})\n'
            'image = pipe("a cat holding a sign that says PixelDiT").images[0]'
        )
        what = f"a text-to-image `PixelDiTT2IPipeline` with the text encoder `{type(pipe.text_encoder).__name__}`"
        note = ""
    else:
        usage = (
            "import torch\nfrom transformers import AutoModel, AutoTokenizer\n"
            "from diffusers_pixeldit import PixelDiTT2IPipeline\n\n"
            f'tokenizer = AutoTokenizer.from_pretrained("{GEMMA}", padding_side="right")\n'
            f'text_encoder = AutoModel.from_pretrained("{GEMMA}", dtype=torch.{dtype})  # its Gemma2Model decoder\n'
            "pipe = PixelDiTT2IPipeline.from_pretrained(\n"
            f'    "{location}", tokenizer=tokenizer, text_encoder=text_encoder{load_options}\n'
            ")\n"
            'image = pipe("a cat holding a sign that says PixelDiT").images[0]'
        )
        what = "a text-to-image `PixelDiTT2IPipeline`"
        note = (
            "\n\n**No text encoder is included** (converted without `--text_encoder`): pass a tokenizer and a text "
            f"encoder of hidden size {config.text_embed_dim} when loading, as below (the release uses the "
            "Gemma-2-2B-it decoder), or call the pipeline with precomputed `prompt_embeds`."
        )
    low, high = recipe["guidance_interval"]
    origin = recipe["description"] + (f"; overridden: {', '.join(overridden)}" if overridden else "")
    body = f"""# {"PixelDiT2" if kind == "pixeldit2" else "PixelDiT"} for diffusers

[PixelDiT](https://arxiv.org/abs/2511.20645) (NVIDIA) generates images directly in pixel space, without a VAE{
        "; PixelDiT2 grounds every step on a frozen DINOv3's view of the noisy image" if kind == "pixeldit2" else ""
    }. This
is {what}, converted from {source} (the checkpoint format of the official release
[{RELEASES[kind]}](https://huggingface.co/{
        RELEASES[kind]
    })) with `scripts/convert_checkpoint.py` of diffusers-pixeldit.
Transformer: {parameters / 1e6:.1f}M parameters in {dtype}; default resolution {config.sample_size}x{
        config.sample_size
    }.{note}

## Licence

The official PixelDiT weights are NVIDIA's, released under the NVIDIA Source Code License-NC (NSCLv1):
**non-commercial use only**; converted copies of them stay under that licence. The diffusers-pixeldit code that runs
them is Apache-2.0.

## Usage

```py
{usage}
```

## Sampling recipe

The pipeline's defaults follow the {origin}. Each can be changed per call (`num_inference_steps`,
`guidance_scale`, `guidance_interval`, `shift`) or by swapping the scheduler.

| Setting | Value | Stored in |
|---|---|---|
| Sampler | {SAMPLER_DESCRIPTIONS[recipe["sampler"]]} | `scheduler/scheduler_config.json` |
| Timeshift | {recipe["shift"]} | `scheduler/scheduler_config.json` |
| Steps | {recipe["num_inference_steps"]} | `model_index.json`: `default_num_inference_steps` |
| CFG scale | {recipe["guidance_scale"]} | `model_index.json`: `default_guidance_scale` |
| CFG interval | {low} < t < {
        high
    }, t = 1 - sigma (0 = noise, 1 = image) | `model_index.json`: `default_guidance_interval` |
| Resolution | {config.sample_size} | `transformer/config.json`: `sample_size` |
"""
    if kind == "pixeldit2":
        body += f"| Noise scale | {config.noise_scale} | `transformer/config.json`: `noise_scale` |\n"
    data = ModelCardData(
        license="other",
        license_name="nsclv1",
        license_link=f"https://huggingface.co/{RELEASES[kind]}",
        library_name="diffusers",
        pipeline_tag="text-to-image" if kind == "t2i" else None,
        tags=["pixeldit", "pixel-space", "text-to-image" if kind == "t2i" else "class-conditional"]
        + (["pixeldit2", "dinov3"] if kind == "pixeldit2" else []),
    )
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")


def convert_to_diffusers(args):
    checkpoint, output = Path(args.checkpoint), Path(args.output)
    if checkpoint.is_dir():
        raise ValueError(f"{checkpoint} is a folder; to convert a diffusers pipeline folder back, pass --to-official.")
    check_output(output, args.overwrite)
    logger.info(f"Reading {checkpoint}")
    state_dict, kind = load_official_checkpoint(checkpoint, args.weights, args.trust_pickle)
    dtype = DTYPES[args.dtype]
    if args.text_encoder and kind != "t2i":
        raise ValueError(f"--text_encoder is for text-to-image checkpoints; this one is {kind}.")
    pixeldit2_options = [name for name in ("grounding_encoder", *PIXELDIT2_OVERRIDES) if getattr(args, name)]
    if pixeldit2_options and kind != "pixeldit2":
        raise ValueError(f"--{', --'.join(pixeldit2_options)} are for PixelDiT2 checkpoints; this one is {kind}.")
    silu = None if args.silu_conditioning is None else args.silu_conditioning == "true"
    components = official_components(
        state_dict,
        kind,
        checkpoint.name,
        dtype,
        grounding_encoder=args.grounding_encoder,
        grounding_encoder_heads=args.grounding_encoder_heads,
        preset=args.preset,
        num_attention_heads=args.num_attention_heads,
        resolution=args.resolution,
        recipe_overrides={name: getattr(args, name) for name in RECIPE_OVERRIDES},
        transformer_overrides={
            "in_context_start": args.in_context_start,
            "silu_conditioning": silu,
            "noise_scale": args.noise_scale,
        },
    )
    transformer, recipe, overridden = components.transformer, components.recipe, components.overridden
    config = transformer.config
    blocks = f"{config.num_layers} blocks of width {transformer.inner_dim} ({config.num_attention_heads} heads)"
    if kind != "pixeldit2":
        blocks += f", {config.num_pixel_layers} pixel blocks of width {config.pixel_embed_dim}"
    logger.info(
        f"Architecture: patch {config.patch_size}, {blocks}; {sum(p.numel() for p in transformer.parameters()):,} "
        "parameters"
    )
    logger.info(
        f"Sampling recipe ({recipe['description']}{'; overridden: ' + ', '.join(overridden) if overridden else ''}): "
        f"{recipe['sampler']}, {recipe['num_inference_steps']} steps, CFG {recipe['guidance_scale']} in "
        f"{tuple(recipe['guidance_interval'])}, shift {recipe['shift']}, {recipe['sample_size']} px"
    )
    tokenizer = text_encoder = None
    if args.text_encoder:
        tokenizer, text_encoder = load_text_components(args.text_encoder, config.text_embed_dim, dtype)
    elif kind == "t2i":
        logger.warning(
            "No --text_encoder: writing the pipeline without tokenizer and text encoder (optional components; "
            f"pass them to from_pretrained, e.g. {GEMMA}'s, or use precomputed prompt_embeds)."
        )
    pipe = official_pipeline(components, tokenizer=tokenizer, text_encoder=text_encoder)

    location = args.repo_id or str(output)
    source = f"`{checkpoint.name}`"
    if kind != "t2i":
        source += " (EMA weights)" if args.weights == "ema" else " (raw weights)"
    card = model_card(pipe, kind, recipe, source, location, args.variant, overridden)
    with staged(output) as staging:
        logger.info(f"Saving the pipeline (max shard size {args.max_shard_size})")
        pipe.save_pretrained(
            staging, safe_serialization=True, variant=args.variant, max_shard_size=args.max_shard_size
        )
        card.save(staging / "README.md")
    logger.info(f"Wrote {output}")
    if args.push_to_hub:
        api = HfApi()
        api.create_repo(args.repo_id, private=args.private, exist_ok=True)
        api.upload_folder(
            repo_id=args.repo_id,
            folder_path=output,
            commit_message=f"PixelDiT pipeline converted from {checkpoint.name}",
        )
        logger.info(f"Uploaded {output} to https://huggingface.co/{args.repo_id}")


def convert_to_official(args):
    source, output = Path(args.checkpoint), Path(args.output)
    if not source.is_dir():
        raise ValueError(
            f"--to-official reads a diffusers pipeline (or transformer) folder; {source} is not a folder."
        )
    check_output(output, args.overwrite)
    is_pipeline = (source / "model_index.json").is_file()
    folder = source / "transformer" if is_pipeline else source
    class_name = (
        json.loads((folder / "config.json").read_text()).get("_class_name")
        if (folder / "config.json").is_file()
        else None
    )
    model_class = (
        PixelDiT2Transformer2DModel if class_name == "PixelDiT2Transformer2DModel" else PixelDiTTransformer2DModel
    )
    transformer = model_class.from_pretrained(
        folder, variant=args.variant, dtype=DTYPES[args.dtype], use_safetensors=True
    )
    grounding_encoder = None
    if args.include_grounding_encoder:
        if model_class is not PixelDiT2Transformer2DModel or not (source / "grounding_encoder").is_dir():
            raise ValueError(f"--include_grounding_encoder: {source} is not a PixelDiT2 pipeline with its encoder.")
        from transformers import DINOv3ViTModel

        grounding_encoder = DINOv3ViTModel.from_pretrained(source / "grounding_encoder", dtype=DTYPES[args.dtype])
    checkpoint = official_checkpoint_from_transformer(transformer, grounding_encoder)
    with staged(output) as staging:
        torch.save(checkpoint, staging)
    prefixes = sorted({key.split(".", 1)[0] for key in checkpoint["state_dict"]})
    logger.info(f"Wrote {output}: state_dict with {', '.join(f'{prefix}.*' for prefix in prefixes)}")
    if len(prefixes) > 1:
        logger.info("Both weight sets hold the converted weights (the official sampling reads ema_denoiser.*).")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.to_official:
        refused = [f"--{name}" for name in TO_DIFFUSERS_ONLY if getattr(args, name) != parser.get_default(name)]
        if refused:
            parser.error(f"{', '.join(refused)} cannot be used with --to-official")
    elif args.include_grounding_encoder:
        parser.error("--include_grounding_encoder goes with --to-official")
    if args.push_to_hub and not args.repo_id:
        parser.error("--push_to_hub needs --repo_id")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.to_official:
            convert_to_official(args)
        else:
            convert_to_diffusers(args)
    except (ImportError, OSError, ValueError) as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
