"""Editing quality of the embedded digits models: inpainting and image-to-image of held-out real digits.

    python benchmarks/eval_editing_digits.py                 # both models, 10 held-out digits per class
    python benchmarks/eval_editing_digits.py --per_class 2   # a quick look
    python benchmarks/eval_editing_digits.py --other_class_guidance_scales 4 6   # other-class inpainting, higher CFG

For each model (class-conditional and text-to-image, with their shipped recipe: the model card's sampler, steps, CFG
scale and interval), on the first `--per_class` held-out digits of each class (`diffusers_pixeldit.digits`):
- own-class inpainting: the lower half (rows 16–31 of 32) repainted with the digit's own class;
- other-class inpainting: the lower half repainted with another class c (drawn per digit, seeded);
- image-to-image at strength 0.6 to another class c (the same c);
and the classifier (`DigitClassifier`, PCA + RBF SVM, 99.2 % on the held-out digits) judges each result: the
fraction recognised as the requested class. Beside it: how often the result is still read as the original digit,
and that the kept upper half equals the input exactly (the largest uint8 difference there, 0 expected). A reference
without a model says how often the task can succeed at all: the digits with the lower half of a real held-out c
pasted in (a "chimera"), read as c; and an oracle: the share of digits for which at least one of the training
split's c digits, its lower half pasted in, is read as c (the best a single lower half can do).
Writes `editing_digits.json` and `editing_digits.md` to --output_dir (through a temporary file, then renamed).
"""

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from eval_digits import load_pipeline

from diffusers_pixeldit import (
    PixelDiTImg2ImgPipeline,
    PixelDiTInpaintPipeline,
    PixelDiTT2IImg2ImgPipeline,
    PixelDiTT2IInpaintPipeline,
)
from diffusers_pixeldit.digits import DIGIT_NAMES, IMAGE_SIZE, DigitClassifier, load_digit_splits


EDITING = {
    "c2i": (PixelDiTImg2ImgPipeline, PixelDiTInpaintPipeline),
    "t2i": (PixelDiTT2IImg2ImgPipeline, PixelDiTT2IInpaintPipeline),
}
TASKS = {
    "inpaint_own": "lower half inpainted, own class",
    "inpaint_other": "lower half inpainted, another class c",
    "img2img_0.6": "image-to-image, strength 0.6, to another class c",
}


def held_out_digits(per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """The first `per_class` held-out digits of each class: uint8 (N, 32, 32) and their labels."""
    images, labels = load_digit_splits()["test"]
    index = np.concatenate([np.flatnonzero(labels == label)[:per_class] for label in range(10)])
    return images[index], labels[index]


def condition(kind: str, labels) -> dict:
    labels = [int(label) for label in labels]
    if kind == "c2i":
        return {"class_labels": labels}
    return {"prompt": [f"a handwritten digit {DIGIT_NAMES[label]}" for label in labels]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["c2i", "t2i"], choices=["c2i", "t2i"])
    parser.add_argument("--per_class", type=int, default=10, help="Held-out digits per class (100 in all).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--other_class_guidance_scales",
        nargs="+",
        type=float,
        default=[],
        help="Also inpaint another class at these CFG scales (the recipe's interval), one row each.",
    )
    parser.add_argument("--output_dir", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)

    classifier = DigitClassifier()
    originals, labels = held_out_digits(args.per_class)
    rng = np.random.default_rng(args.seed)
    targets = (labels + rng.integers(1, 10, len(labels))) % 10  # another class for each digit
    image = torch.from_numpy(originals).float().div(255).unsqueeze(1)  # (N, 1, 32, 32) in [0, 1]
    mask = torch.zeros(1, 1, IMAGE_SIZE, IMAGE_SIZE)
    mask[..., IMAGE_SIZE // 2 :, :] = 1
    original_accuracy = float((classifier.predict(originals) == labels).mean())
    test_images, test_labels = load_digit_splits()["test"]
    donors = np.stack([test_images[rng.choice(np.flatnonzero(test_labels == target))] for target in targets])
    chimeras = originals.copy()
    chimeras[:, IMAGE_SIZE // 2 :] = donors[:, IMAGE_SIZE // 2 :]
    chimera_accuracy = float((classifier.predict(chimeras) == targets).mean())
    train_images, train_labels = load_digit_splits()["train"]
    oracle = []
    for original, target in zip(originals, targets):
        candidates = np.repeat(original[None], (train_labels == target).sum(), axis=0)
        candidates[:, IMAGE_SIZE // 2 :] = train_images[train_labels == target][:, IMAGE_SIZE // 2 :]
        oracle.append(bool((classifier.predict(candidates) == target).any()))
    oracle_accuracy = float(np.mean(oracle))
    print(f"{len(labels)} held-out digits, classifier {original_accuracy:.1%} on them")
    print(f"reference: upper half kept, the lower half of a real c pasted in: read as c {chimera_accuracy:.1%}")
    print(f"oracle: the best real c lower half of the training split: read as c {oracle_accuracy:.1%}\n")

    rows = []
    print("| model | task | recognised as requested | still read as the original | kept half max diff | s/image |")
    print("|---|---|---:|---:|---:|---:|")
    for kind in args.models:
        base = load_pipeline(kind)
        img2img, inpaint = (cls.from_pipe(base) for cls in EDITING[kind])
        for pipe in (img2img, inpaint):
            pipe.set_progress_bar_config(disable=True)
        calls = {
            "inpaint_own": (inpaint, labels, {"mask_image": mask}),
            "inpaint_other": (inpaint, targets, {"mask_image": mask}),
            "img2img_0.6": (img2img, targets, {"strength": 0.6}),
        }
        for scale in args.other_class_guidance_scales:
            calls[f"inpaint_other_cfg{scale:g}"] = (inpaint, targets, {"mask_image": mask, "guidance_scale": scale})
        for task, (pipe, requested, extra) in calls.items():
            generators = [torch.Generator().manual_seed(args.seed + i) for i in range(len(labels))]
            start = time.perf_counter()
            results = pipe(**condition(kind, requested), image=image, generator=generators, output_type="np",
                           **extra).images[..., 0]  # fmt: skip
            seconds = (time.perf_counter() - start) / len(labels)
            results_uint8 = np.round(results * 255).astype(np.uint8)
            predicted = classifier.predict(results_uint8)
            kept_difference = None
            if "mask_image" in extra:
                upper = slice(0, IMAGE_SIZE // 2)
                kept_difference = int(np.abs(results_uint8[:, upper].astype(int) - originals[:, upper]).max())
            row = dict(
                model=kind, task=task, requested=float((predicted == requested).mean()),
                original=float((predicted == labels).mean()), kept_half_max_uint8_difference=kept_difference,
                seconds_per_image=seconds,
            )  # fmt: skip
            rows.append(row)
            kept = "–" if kept_difference is None else str(kept_difference)
            print(
                f"| {kind} | {task_name(task)} | {row['requested']:.0%} | {row['original']:.0%} | {kept} | {seconds:.3f} |"
            )
        recipe = base.config
        rows[-1]["recipe"] = {
            "scheduler": type(base.scheduler).__name__, "num_inference_steps": recipe.default_num_inference_steps,
            "guidance_scale": recipe.default_guidance_scale, "guidance_interval": list(recipe.default_guidance_interval),
        }  # fmt: skip

    summary = dict(
        digits=len(labels), per_class=args.per_class, classifier_accuracy_on_originals=original_accuracy,
        chimera_read_as_c=chimera_accuracy, oracle_read_as_c=oracle_accuracy, threads=torch.get_num_threads(), rows=rows,
    )  # fmt: skip
    args.output_dir.mkdir(parents=True, exist_ok=True)
    write(args.output_dir / "editing_digits.json", json.dumps(summary, indent=1))
    write(args.output_dir / "editing_digits.md", table(summary))
    print(f"\nwrote editing_digits.json and .md to {args.output_dir}")


def table(summary: dict) -> str:
    text = (
        f"{summary['digits']} held-out digits ({summary['per_class']} per class), each model's shipped recipe, "
        f"{summary['threads']} torch thread{'s' if summary['threads'] > 1 else ''}; the classifier reads {summary['classifier_accuracy_on_originals']:.1%} "
        "of the originals right. Cells: the fraction of results the classifier reads as the requested class; in "
        "brackets, as the original digit; kept half: the largest uint8 difference to the input outside the mask.\n\n"
        "| task | target | class-conditional | text-to-image |\n|---|---:|---:|---:|\n"
    )
    targets = {"inpaint_own": "≥ 90 %", "inpaint_other": "≥ 70 %", "img2img_0.6": "≥ 80 %"}
    other_scales = list(dict.fromkeys(r["task"] for r in summary["rows"] if r["task"] not in TASKS))
    tasks = ["inpaint_own", "inpaint_other", *other_scales, "img2img_0.6"]
    for task in tasks:
        name = task_name(task)
        cells = []
        for kind in ("c2i", "t2i"):
            row = next((r for r in summary["rows"] if (r["model"], r["task"]) == (kind, task)), None)
            if row is None:
                cells.append("–")
                continue
            kept = (
                ""
                if row["kept_half_max_uint8_difference"] is None
                else f", kept half {row['kept_half_max_uint8_difference']}"
            )
            cells.append(f"{100 * row['requested']:.0f} % ({100 * row['original']:.0f} %{kept})")
        text += f"| {name} | {targets.get(task, targets['inpaint_other'])} | " + " | ".join(cells) + " |\n"
        if task == "inpaint_other":
            chimera = f"{100 * summary['chimera_read_as_c']:.0f} %"
            text += f"| reference, no model: the lower half of a real c pasted in | – | {chimera} | {chimera} |\n"
            oracle = f"{100 * summary['oracle_read_as_c']:.0f} %"
            text += (
                "| oracle, no model: the best of the training split's c lower halves (any read as c) | – | "
                f"{oracle} | {oracle} |\n"
            )
    return text


def task_name(task: str) -> str:
    if task.startswith("inpaint_other_cfg"):
        return f"{TASKS['inpaint_other']}, CFG {task.removeprefix('inpaint_other_cfg')}"
    return TASKS[task]


def write(path: Path, text: str):
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


if __name__ == "__main__":
    main()
