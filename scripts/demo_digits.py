"""Generates handwritten digits with the embedded class-conditional PixelDiT, on the CPU, in seconds.

    python scripts/demo_digits.py                      # outputs/digits_grid.png and outputs/digits_sampling.gif

Loads `diffusers_pixeldit.digits.pretrained_digits_path("c2i")` with `PixelDiTPipeline.from_pretrained` (or any
other class-conditional pipeline folder given with --model) and samples 3 digits per class with the model card's
sampler, CFG scale and interval at 10 steps (the card says 25; on this model 10 steps give as accurate digits, a
lower Fréchet distance and fewer speckles, see benchmarks/README.md, "First command"): a labelled grid with a row per
class, and a GIF of the sampling process from noise to digits. It ends with a benchmark line: the seconds of each
phase (imports, loading, sampling, writing) and in all, the GIF's size, and the speckle pixels per digit
(`diffusers_pixeldit.digits.speckle_counts`; real digits have none).
"""

# ruff: noqa: E402  (the imports come after the start of the clock)
import gc
import time


START = time.perf_counter()  # the benchmark line counts the imports
# torch and diffusers create some 400,000 long-lived objects on import: collecting while they are made, and
# walking them all again when the process exits, cost about 2 s of a run here. So the collector waits for the
# imports, then leaves what they made alone (`gc.freeze`).
gc.disable()

import argparse
import os
from pathlib import Path

import numpy as np
import torch
from diffusers.utils import is_accelerate_available
from diffusers.utils import logging as diffusers_logging
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image, ImageDraw

from diffusers_pixeldit import PixelDiTPipeline
from diffusers_pixeldit.digits import pretrained_digits_path, speckle_counts


gc.freeze()
gc.enable()


def labelled_grid(images: np.ndarray, names: list[str], columns: int, scale: int) -> Image.Image:
    """(rows·columns, H, W, C) images in [0, 1] -> one greyscale picture, a row per class with its name on the
    left (colour images are shown by their luminance)."""
    height, width = images.shape[1] * scale, images.shape[2] * scale
    margin = 70
    grid = Image.new("L", (margin + columns * (width + 2), len(names) * (height + 2)), 255)
    draw = ImageDraw.Draw(grid)
    for index, image in enumerate(images):
        row, column = divmod(index, columns)
        pixels = np.round(image * 255).astype(np.uint8)
        tile = Image.fromarray(pixels.squeeze(-1) if pixels.shape[-1] == 1 else pixels).convert("L")
        grid.paste(tile.resize((width, height), Image.NEAREST), (margin + column * (width + 2), row * (height + 2)))
    for row, name in enumerate(names):
        draw.text((4, row * (height + 2) + height // 2 - 6), name, fill=0)
    return grid


def idle_threads() -> int:
    """Torch threads for this run: the cores the other processes leave idle (1-minute load average), at least one.
    On a shared machine, more OpenMP threads than idle cores spin-wait on busy ones: measured on 2 cores with two
    other processes running, a 2-thread forward of this model took 2–30× the time of a 1-thread one."""
    threads = torch.get_num_threads()
    if not hasattr(os, "getloadavg"):  # Windows
        return threads
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()  # macOS: no affinity
    return max(1, min(threads, round(cores - os.getloadavg()[0])))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=str, default=str(pretrained_digits_path("c2i")), help="A pipeline folder.")
    parser.add_argument("--output_dir", type=Path, default=Path("outputs"))
    parser.add_argument("--images_per_class", type=int, default=3)
    parser.add_argument("--num_inference_steps", type=int, default=10, help="0: the model card's.")
    parser.add_argument("--threads", type=int, default=0, help="Torch threads; 0: the idle cores.")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    threads = args.threads or idle_threads()
    torch.set_num_threads(threads)
    seconds = {"imports": time.perf_counter() - START}

    start = time.perf_counter()
    diffusers_logging.disable_progress_bar()
    # Without accelerate (the main-job install does not bring it) diffusers loads with low_cpu_mem_usage=False
    # anyway, after a warning; ask for that directly. For a 16 MB model the two paths cost the same.
    pipe = PixelDiTPipeline.from_pretrained(args.model, low_cpu_mem_usage=is_accelerate_available())
    pipe.set_progress_bar_config(disable=True)  # the benchmark line says how long it took
    class_ids = sorted(int(i) for i in pipe.config.id2label)
    names = [pipe.config.id2label[str(i)].split(",")[0] for i in class_ids]
    seconds["loading"] = time.perf_counter() - start

    start = time.perf_counter()
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
        num_inference_steps=args.num_inference_steps or None,
        latents=noise,
        output_type="np",
        callback_on_step_end=keep_frame,
    ).images
    seconds["sampling"] = time.perf_counter() - start

    start = time.perf_counter()
    args.output_dir.mkdir(parents=True, exist_ok=True)
    grid_path, gif_path = args.output_dir / "digits_grid.png", args.output_dir / "digits_sampling.gif"
    labelled_grid(images, names, args.images_per_class, scale=3).save(grid_path)
    gif_frames = [labelled_grid(frame, names, args.images_per_class, scale=2) for frame in frames]
    gif_frames += [gif_frames[-1]] * 8  # hold the result
    gif_frames[0].save(gif_path, save_all=True, append_images=gif_frames[1:], duration=150, loop=0)
    seconds["writing"] = time.perf_counter() - start

    total = time.perf_counter() - START
    speckles = speckle_counts(images).mean()
    print(f"{len(images)} digits ({len(class_ids)} classes, {len(frames) - 1} steps) on the CPU")
    print(f"grid: {grid_path.resolve()}")
    print(f"sampling GIF: {gif_path.resolve()}")
    phases = ", ".join(f"{name} {value:.1f} s" for name, value in seconds.items())
    print(
        f"benchmark: {phases}; total {total:.1f} s ({threads} torch thread{'s' if threads > 1 else ''}); "
        f"GIF {gif_path.stat().st_size / 2**20:.2f} MiB; {speckles:.2f} speckle pixels per digit"
    )


if __name__ == "__main__":
    main()
