"""Generates handwritten digits with the embedded class-conditional PixelDiT, on the CPU, in seconds.

    python scripts/demo_digits.py                      # outputs/digits_grid.png and outputs/digits_sampling.gif

Loads `diffusers_pixeldit.digits.pretrained_digits_path("c2i")` with `PixelDiTPipeline.from_pretrained` (or any
other class-conditional pipeline folder given with --model) and samples its model-card recipe: a labelled grid with a
row per class, and a GIF of the sampling process from noise to digits.
"""

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image, ImageDraw

from diffusers_pixeldit import PixelDiTPipeline
from diffusers_pixeldit.digits import pretrained_digits_path


def labelled_grid(images: np.ndarray, names: list[str], columns: int, scale: int) -> Image.Image:
    """(rows·columns, H, W, C) images in [0, 1] -> one picture, a row per class with its name on the left."""
    height, width = images.shape[1] * scale, images.shape[2] * scale
    margin, rows = 70, len(names)
    grid = Image.new("RGB", (margin + columns * (width + 2), rows * (height + 2)), "white")
    draw = ImageDraw.Draw(grid)
    for index, image in enumerate(images):
        row, column = divmod(index, columns)
        pixels = np.round(image * 255).astype(np.uint8)
        tile = Image.fromarray(pixels.squeeze(-1) if pixels.shape[-1] == 1 else pixels).convert("RGB")
        grid.paste(tile.resize((width, height), Image.NEAREST), (margin + column * (width + 2), row * (height + 2)))
    for row, name in enumerate(names):
        draw.text((4, row * (height + 2) + height // 2 - 6), name, fill="black")
    return grid


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=str, default=str(pretrained_digits_path("c2i")), help="A pipeline folder.")
    parser.add_argument("--output_dir", type=Path, default=Path("outputs"))
    parser.add_argument("--images_per_class", type=int, default=6)
    parser.add_argument("--num_inference_steps", type=int, default=None, help="Default: the model card's.")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    start = time.perf_counter()
    pipe = PixelDiTPipeline.from_pretrained(args.model)
    class_ids = sorted(int(i) for i in pipe.config.id2label)
    names = [pipe.config.id2label[str(i)].split(",")[0] for i in class_ids]

    config = pipe.transformer.config
    shape = (len(class_ids) * args.images_per_class, config.in_channels, config.sample_size, config.sample_size)
    noise = randn_tensor(shape, generator=torch.Generator().manual_seed(args.seed))
    frames = [pipe.image_processor.postprocess(noise, output_type="np")]

    def keep_frame(pipe, step, timestep, callback_kwargs):
        frames.append(pipe.image_processor.postprocess(callback_kwargs["latents"], output_type="np"))
        return callback_kwargs

    images = pipe(
        class_labels=class_ids,
        num_images_per_prompt=args.images_per_class,
        num_inference_steps=args.num_inference_steps,
        latents=noise,
        output_type="np",
        callback_on_step_end=keep_frame,
    ).images
    seconds = time.perf_counter() - start

    args.output_dir.mkdir(parents=True, exist_ok=True)
    grid_path, gif_path = args.output_dir / "digits_grid.png", args.output_dir / "digits_sampling.gif"
    labelled_grid(images, names, args.images_per_class, scale=3).save(grid_path)
    gif_frames = [labelled_grid(frame, names, args.images_per_class, scale=3) for frame in frames]
    gif_frames += [gif_frames[-1]] * 8  # hold the result
    gif_frames[0].save(gif_path, save_all=True, append_images=gif_frames[1:], duration=120, loop=0)
    print(f"{len(images)} digits ({len(class_ids)} classes, {len(frames) - 1} steps) in {seconds:.1f} s on the CPU")
    print(f"grid: {grid_path.resolve()}")
    print(f"sampling GIF: {gif_path.resolve()}")


if __name__ == "__main__":
    main()
