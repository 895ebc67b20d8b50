"""Generates handwritten digits with the embedded class-conditional PixelDiT, on the CPU, in seconds.

    python scripts/demo_digits.py                      # outputs/digits_grid.png and outputs/digits_sampling.gif
    python scripts/demo_digits.py --inpaint            # outputs/digits_editing.png (needs scikit-learn)

Loads `diffusers_pixeldit.digits.pretrained_digits_path("c2i")` with `PixelDiTPipeline.from_pretrained` (or any
other class-conditional pipeline folder given with --model) and samples 3 digits per class with the model card's
sampler, CFG scale and interval at 10 steps (the card says 25; on this model 10 steps give as accurate digits, a
lower Fréchet distance and fewer speckles, see benchmarks/README.md, "First command"): a labelled grid with a row per
class, and a GIF of the sampling process from noise to digits. It ends with a benchmark line: the seconds of each
phase (imports, loading, sampling, writing) and in all, the GIF's size, and the speckle pixels per digit
(`diffusers_pixeldit.digits.speckle_counts`; real digits have none).

`--inpaint` edits one held-out real digit per class instead (`diffusers_pixeldit.digits.load_digit_splits`, which
needs scikit-learn: `pip install diffusers-pixeldit[digits]`) with `PixelDiTInpaintPipeline` and
`PixelDiTImg2ImgPipeline`, and writes a picture with a row each: the originals, the mask (grey over them: the lower
half is repainted), the lower half inpainted with the digit's own class, inpainted with the next class (digit + 1,
mod 10), and image-to-image at strength 0.6 to that class. The inpainted rows keep the upper halves exactly.
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
from diffusers.utils import logging as diffusers_logging
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image, ImageDraw

from diffusers_pixeldit import PixelDiTImg2ImgPipeline, PixelDiTInpaintPipeline, PixelDiTPipeline
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
    parser.add_argument("--inpaint", action="store_true", help="Edit held-out digits instead (see above).")
    args = parser.parse_args(argv)
    threads = args.threads or idle_threads()
    torch.set_num_threads(threads)
    seconds = {"imports": time.perf_counter() - START}
    if args.inpaint:
        return editing_demo(args, threads, seconds)

    start = time.perf_counter()
    diffusers_logging.disable_progress_bar()
    pipe = PixelDiTPipeline.from_pretrained(args.model)
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


def editing_demo(args, threads: int, seconds: dict):
    """The `--inpaint` mode: originals, masks, inpainting (own class, next class) and image-to-image."""
    from diffusers_pixeldit.digits import load_digit_splits

    start = time.perf_counter()
    diffusers_logging.disable_progress_bar()
    inpaint = PixelDiTInpaintPipeline.from_pretrained(args.model)
    img2img = PixelDiTImg2ImgPipeline.from_pretrained(args.model, transformer=inpaint.transformer)
    for pipe in (inpaint, img2img):
        pipe.set_progress_bar_config(disable=True)
    test_images, test_labels = load_digit_splits()["test"]
    first_of_each = [int(np.flatnonzero(test_labels == label)[0]) for label in range(10)]
    originals = torch.from_numpy(test_images[first_of_each]).float().div(255).unsqueeze(1)  # (10, 1, 32, 32)
    mask = torch.zeros(1, 1, *originals.shape[-2:])
    mask[..., originals.shape[-2] // 2 :, :] = 1
    seconds["loading"] = time.perf_counter() - start

    start = time.perf_counter()
    own, following = list(range(10)), [(label + 1) % 10 for label in range(10)]
    steps = {"num_inference_steps": args.num_inference_steps or None, "output_type": "np"}

    def generator():
        return torch.Generator().manual_seed(args.seed)

    rows = {
        "original": originals.permute(0, 2, 3, 1).numpy(),
        "mask (grey)": torch.where(mask == 1, 0.5, originals).permute(0, 2, 3, 1).numpy(),
        "same class": inpaint(own, image=originals, mask_image=mask, generator=generator(), **steps).images,
        "digit + 1": inpaint(following, image=originals, mask_image=mask, generator=generator(), **steps).images,
        "img2img +1": img2img(following, image=originals, strength=0.6, generator=generator(), **steps).images,
    }
    seconds["editing"] = time.perf_counter() - start

    start = time.perf_counter()
    args.output_dir.mkdir(parents=True, exist_ok=True)
    path = args.output_dir / "digits_editing.png"
    labelled_grid(np.concatenate(list(rows.values())), list(rows), 10, scale=3).save(path)
    seconds["writing"] = time.perf_counter() - start
    upper = originals.shape[-2] // 2
    kept = max(
        np.abs(rows[name][:, :upper] - rows["original"][:, :upper]).max() for name in ("same class", "digit + 1")
    )
    phases = ", ".join(f"{name} {value:.1f} s" for name, value in seconds.items())
    print(f"editing: {path.resolve()} (rows: {', '.join(rows)})")
    print(f"largest change in the kept upper halves: {kept}")
    print(f"benchmark: {phases}; total {time.perf_counter() - START:.1f} s ({threads} torch threads)")


if __name__ == "__main__":
    main()
