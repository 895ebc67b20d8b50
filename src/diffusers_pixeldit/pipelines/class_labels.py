# Copyright 2026 The diffusers-pixeldit authors. Licensed under the Apache License, Version 2.0.
"""Class names and ids of the class-conditional PixelDiT pipelines."""

import difflib
import json
from importlib import resources

import torch

from ..models.transformer_pixeldit import IMAGENET_NUM_CLASSES


def imagenet_id2label() -> dict[str, str]:
    """The 1000 ImageNet-1k class names with their synonyms, `{"0": "tench, Tinca tinca", ...}`."""
    return json.loads(resources.files("diffusers_pixeldit.data").joinpath("imagenet_id2label.json").read_text())


def default_id2label(id2label: dict[str, str] | None, num_classes: int | None) -> dict[str, str] | None:
    """`id2label`, or the ImageNet names for a model with the ImageNet class count."""
    if id2label is None and num_classes == IMAGENET_NUM_CLASSES:
        return imagenet_id2label()
    return id2label


class ClassLabelMixin:
    """Class ids from ids or names of `id2label` (comma-separated synonyms), for pipelines with a class-conditional
    `transformer` (`config.num_classes` classes; id `num_classes` is the null class)."""

    def _register_labels(self, id2label: dict[str, str] | None):
        self.labels = {}
        for class_id, names in sorted((id2label or {}).items(), key=lambda item: int(item[0])):
            for name in names.split(","):
                self.labels[name.strip()] = int(class_id)

    def get_label_ids(self, label: str | list[str]) -> list[int]:
        """Class ids of class names (any synonym of `id2label`), e.g. `get_label_ids(["golden retriever"])`."""
        labels = [label] if isinstance(label, str) else list(label)
        unknown = [name for name in labels if name not in self.labels]
        if unknown:
            hints = {name: difflib.get_close_matches(name, self.labels, n=3) for name in unknown}
            raise ValueError(
                f"Unknown class names {unknown} (close matches: {hints}); see `pipe.labels` for the "
                f"{len(self.labels)} known names."
            )
        return [self.labels[name] for name in labels]

    def class_ids(self, class_labels) -> list[int]:
        """Ids of `class_labels` (an id, a name, or a list / 1-D tensor of them), checked against the model."""
        if isinstance(class_labels, (int, str)) or (torch.is_tensor(class_labels) and class_labels.ndim == 0):
            class_labels = [class_labels]
        ids = [self.get_label_ids(label)[0] if isinstance(label, str) else int(label) for label in class_labels]
        num_classes = self.transformer.config.num_classes
        invalid = [class_id for class_id in ids if not 0 <= class_id < num_classes]
        if invalid:
            raise ValueError(f"Class ids {invalid} are out of range: this model has classes 0 to {num_classes - 1}.")
        if not ids:
            raise ValueError("`class_labels` is empty.")
        return ids
