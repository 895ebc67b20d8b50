"""Quality of the embedded digits models: classifier accuracy and Fréchet distance, per sampler and step count.

    python benchmarks/eval_digits.py                    # both models, all samplers, 5/10/25/50/100 steps
    python benchmarks/eval_digits.py --quick            # class-conditional only, 2 samplers, 5/25 steps

A classifier fitted on the training split (PCA + RBF SVM, `diffusers_pixeldit.digits.DigitClassifier`) judges
generated digits:
- accuracy: the fraction of generated digits it assigns to the requested class;
- FD: the Fréchet distance between its PCA features of generated digits and of the 360 held-out real digits, with
  the real-vs-real baseline (as many real training digits as generated ones, against the same held-out digits)
  printed alongside;
- speckle: isolated speckle pixels per digit (`diffusers_pixeldit.digits.speckle_counts`), beside the real digits'.
Each configuration generates `--per_class` digits per class (same seeds everywhere), with the model's recipe CFG
scale, with its CFG interval ("interval") and with guidance at every step ("full"). The table is printed (markdown)
and written with a plot of quality against steps to --output_dir.
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import UniPCMultistepScheduler

from diffusers_pixeldit import (
    PixelDiTFlowScheduler,
    PixelDiTPipeline,
    PixelDiTT2IPipeline,
    release_dpm_solver_scheduler,
)
from diffusers_pixeldit.digits import (
    DIGIT_NAMES,
    DigitClassifier,
    digits_quality,
    frechet_distance,
    load_digit_splits,
    minilm_path,
    pretrained_digits_path,
    speckle_counts,
)


SAMPLERS = {
    "official AB2": lambda shift: PixelDiTFlowScheduler(shift=shift, solver="adams_bashforth"),
    "Euler": lambda shift: PixelDiTFlowScheduler(shift=shift, solver="euler"),
    "DPM-Solver++": release_dpm_solver_scheduler,
    "UniPC": lambda shift: UniPCMultistepScheduler(
        use_flow_sigmas=True, flow_shift=shift, prediction_type="flow_prediction"
    ),
}


def load_pipeline(kind: str):
    if kind == "c2i":
        return PixelDiTPipeline.from_pretrained(pretrained_digits_path("c2i"))
    from transformers import AutoModel, AutoTokenizer

    tokenizer, text_encoder = AutoTokenizer.from_pretrained(minilm_path()), AutoModel.from_pretrained(minilm_path())
    return PixelDiTT2IPipeline.from_pretrained(
        pretrained_digits_path("t2i"), tokenizer=tokenizer, text_encoder=text_encoder
    )


def generate(pipe, kind: str, per_class: int, num_steps: int, interval, seed: int) -> tuple[np.ndarray, np.ndarray]:
    labels = [label for label in range(10) for _ in range(per_class)]
    condition = (
        {"class_labels": labels}
        if kind == "c2i"
        else {"prompt": [f"a handwritten digit {DIGIT_NAMES[label]}" for label in labels]}
    )
    generators = [torch.Generator().manual_seed(seed + i) for i in range(len(labels))]
    images = pipe(
        **condition, num_inference_steps=num_steps, guidance_interval=interval, generator=generators, output_type="np"
    ).images
    return images[..., 0], np.array(labels)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["c2i", "t2i"], choices=["c2i", "t2i"])
    parser.add_argument("--samplers", nargs="+", default=list(SAMPLERS), choices=list(SAMPLERS))
    parser.add_argument("--steps", nargs="+", type=int, default=[5, 10, 25, 50, 100])
    parser.add_argument("--per_class", type=int, default=10, help="Generated digits per class (100 in all).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output_dir", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--quick", action="store_true", help="c2i, official AB2 and Euler, 5 and 25 steps.")
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.samplers, args.steps, args.per_class = ["c2i"], ["official AB2", "Euler"], [5, 25], 5

    classifier = DigitClassifier()
    splits = load_digit_splits()
    test_images, test_labels = splits["test"]
    test_features = classifier.features(test_images)
    classifier_accuracy = float((classifier.predict(test_images) == test_labels).mean())
    rng = np.random.default_rng(0)
    # The FD of a finite sample is biased upwards: the baseline uses as many real digits as each generated set.
    num_generated = 10 * args.per_class
    train_sample = splits["train"][0][rng.choice(len(splits["train"][0]), num_generated, replace=False)]
    baseline = frechet_distance(classifier.features(train_sample), test_features)
    print(f"classifier: {classifier_accuracy:.1%} on the {len(test_labels)} held-out digits")
    print(f"FD of {num_generated} real training digits vs the {len(test_images)} held-out ones: {baseline:.2f}")
    real_speckle = float(speckle_counts(test_images).mean())
    print(f"speckle pixels per held-out real digit: {real_speckle:.2f}\n")

    rows = []
    print("| model | sampler | CFG | steps | accuracy | FD | speckle/digit | s/image |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for kind in args.models:
        pipe = load_pipeline(kind)
        pipe.set_progress_bar_config(disable=True)
        config = pipe.config
        shift = pipe.scheduler.config.get("shift", pipe.scheduler.config.get("flow_shift", 1.0))
        for sampler in args.samplers:
            pipe.scheduler = SAMPLERS[sampler](shift)
            for interval_name, interval in (("interval", tuple(config.default_guidance_interval)), ("full", (0, 1))):
                for num_steps in args.steps:
                    start = time.perf_counter()
                    images, labels = generate(pipe, kind, args.per_class, num_steps, interval, args.seed)
                    seconds = (time.perf_counter() - start) / len(images)
                    quality = digits_quality(classifier, images, labels, test_features)
                    accuracy, distance = quality["accuracy"], quality["fd"]
                    speckle = float(speckle_counts(images).mean())
                    cfg = f"{config.default_guidance_scale} {interval_name} {list(interval)}"
                    rows.append(dict(model=kind, sampler=sampler, cfg=interval_name, interval=list(interval),
                                     guidance_scale=config.default_guidance_scale, steps=num_steps, accuracy=accuracy,
                                     fd=distance, speckle=speckle, seconds_per_image=seconds))  # fmt: skip
                    print(
                        f"| {kind} | {sampler} | {cfg} | {num_steps} | {accuracy:.1%} | {distance:.2f} | {speckle:.2f} "
                        f"| {seconds:.3f} |"
                    )

    args.output_dir.mkdir(parents=True, exist_ok=True)
    summary = {"classifier_accuracy": classifier_accuracy, "fd_real_vs_real": baseline, "per_class": args.per_class}
    summary["speckle_real"] = real_speckle
    summary["rows"] = rows
    (args.output_dir / "digits_quality.json").write_text(json.dumps(summary, indent=1))
    plot(rows, baseline, args.output_dir / "digits_quality.png")
    tables = summary_tables(summary)
    (args.output_dir / "digits_quality.md").write_text(tables)
    print(f"\n{tables}\nwrote digits_quality.json, .md and .png to {args.output_dir}")


def summary_tables(summary: dict) -> str:
    """Markdown: per model, a row per sampler and CFG mode, a column per step count, cells "accuracy / FD"."""
    rows = summary["rows"]
    steps = sorted({row["steps"] for row in rows})
    text = (
        f"Classifier accuracy on the held-out digits: {summary['classifier_accuracy']:.1%}. Real-vs-real FD "
        f"({10 * summary['per_class']} training digits vs the held-out ones): {summary['fd_real_vs_real']:.2f}. "
        f"Cells: accuracy / FD of {10 * summary['per_class']} generated digits.\n"
    )
    for kind in sorted({row["model"] for row in rows}):
        text += f"\n**{'class-conditional' if kind == 'c2i' else 'text-to-image'}**\n\n"
        text += "| sampler | CFG | " + " | ".join(f"{n} steps" for n in steps) + " |\n"
        text += "|---|---|" + "---:|" * len(steps) + "\n"
        for sampler, cfg in dict.fromkeys((r["sampler"], r["cfg"]) for r in rows if r["model"] == kind):
            cells = {r["steps"]: r for r in rows if (r["model"], r["sampler"], r["cfg"]) == (kind, sampler, cfg)}
            interval = next(iter(cells.values()))
            label = f"{interval['guidance_scale']}, {cfg} {interval['interval']}"
            text += (
                f"| {sampler} | {label} | "
                + " | ".join(
                    f"{100 * cells[n]['accuracy']:.0f}% / {cells[n]['fd']:.2f}" if n in cells else "–" for n in steps
                )
                + " |\n"
            )
    return text


def plot(rows: list[dict], baseline: float, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({row["model"] for row in rows})
    figure, axes = plt.subplots(2, len(models), figsize=(6 * len(models), 7), squeeze=False)
    for column, kind in enumerate(models):
        for sampler, cfg in sorted({(r["sampler"], r["cfg"]) for r in rows if r["model"] == kind}):
            curve = [r for r in rows if (r["model"], r["sampler"], r["cfg"]) == (kind, sampler, cfg)]
            steps = [r["steps"] for r in curve]
            style = "-" if cfg == "interval" else "--"
            axes[0, column].plot(
                steps, [100 * r["accuracy"] for r in curve], style, marker="o", label=f"{sampler}, {cfg}"
            )
            axes[1, column].plot(steps, [r["fd"] for r in curve], style, marker="o", label=f"{sampler}, {cfg}")
        axes[1, column].axhline(baseline, color="grey", linestyle=":", label="real vs real")
        axes[0, column].set_title({"c2i": "class-conditional", "t2i": "text-to-image"}[kind])
        axes[0, column].set_ylabel("accuracy of generated digits (%)")
        axes[1, column].set_ylabel("Fréchet distance (classifier features)")
        for axis in axes[:, column]:
            axis.set_xscale("log")
            axis.set_xlabel("sampling steps")
            axis.grid(alpha=0.3)
        axes[1, column].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
