"""Writes scikit-learn's handwritten digits as `datasets` datasets for the training examples.

    python scripts/prepare_digits.py --output_dir data/digits

`<output_dir>/train` and `<output_dir>/test` (held out, never trained on) are `datasets.Dataset.save_to_disk` folders
with columns `image` (32×32 grey PIL images, bilinear upsampling of the 8×8 originals), `label` (a `ClassLabel` named
"zero, 0" ... "nine, 9") and `text` (a caption such as "a handwritten digit seven"). See `diffusers_pixeldit.digits`.
"""

import argparse
import shutil
from pathlib import Path

import datasets
import PIL.Image

from diffusers_pixeldit.digits import CLASS_NAMES, IMAGE_SIZE, caption, load_digit_splits


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", type=Path, default=Path("data/digits"))
    parser.add_argument("--resolution", type=int, default=IMAGE_SIZE)
    args = parser.parse_args(argv)

    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASS_NAMES), "text": datasets.Value("string")}
    )
    for split, (images, labels) in load_digit_splits(args.resolution).items():
        rows = {
            "image": [PIL.Image.fromarray(image, mode="L") for image in images],
            "label": labels.tolist(),
            "text": [caption(int(label), index) for index, label in enumerate(labels)],
        }
        target = args.output_dir / split
        partial = target.with_name(f".{split}.partial")
        shutil.rmtree(partial, ignore_errors=True)
        datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(partial))
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)
        print(f"{split}: {len(labels)} digits -> {target}")


if __name__ == "__main__":
    main()
