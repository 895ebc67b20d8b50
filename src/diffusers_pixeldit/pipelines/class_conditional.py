# Copyright 2026 The diffusers-pixeldit authors. Licensed under the Apache License, Version 2.0.
"""What the class-conditional PixelDiT pipelines share: class names and ids, their config, and their `__call__`.

`PixelDiTPipeline` and `PixelDiT2Pipeline` take the same call (the same sampling arguments, class ids or names) and
differ only in what the transformer is fed for each CFG branch, so the call is written once here and each pipeline
supplies `_model_inputs`; as for `PixelDiTDenoisingMixin`, a mixin keeps this out-of-tree package's logic in one home
where in-tree diffusers would keep "# Copied from" copies in sync with its tooling.
"""

import difflib
import json
from importlib import resources
from typing import Any

import torch
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from diffusers.utils import replace_example_docstring

from ..models.transformer_pixeldit import IMAGENET_NUM_CLASSES
from .denoising import (
    ModelInputs,
    PixelDiTDenoisingMixin,
    StepEndCallback,
    check_guidance_interval,
    document_sampling_arguments,
)


EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> import torch
        >>> from diffusers_pixeldit import PixelDiT2Pipeline, PixelDiTPipeline

        >>> pipe = PixelDiTPipeline.from_pretrained("path/to/pixeldit-xl-256")  # a converted checkpoint
        >>> image = pipe(class_labels=[207, "golden retriever"], generator=torch.Generator().manual_seed(0)).images[0]
        >>> pipe = PixelDiT2Pipeline.from_pretrained("path/to/pixeldit2-h16-256")  # the same call
        >>> image = pipe(class_labels=["golden retriever"], num_images_per_prompt=4).images[0]
        ```
"""


def imagenet_id2label() -> dict[str, str]:
    """The 1000 ImageNet-1k class names with their synonyms, `{"0": "tench, Tinca tinca", ...}`."""
    return json.loads(resources.files("diffusers_pixeldit.data").joinpath("imagenet_id2label.json").read_text())


class ClassConditionalMixin(PixelDiTDenoisingMixin):
    """Class-conditional generation for pipelines with a class-conditional `transformer` (`config.num_classes`
    classes; id `num_classes` is the null class). A pipeline implements `_model_inputs` and may extend
    `_check_components`."""

    def _register_class_config(
        self,
        id2label: dict[str, str] | None,
        default_num_inference_steps: int,
        default_guidance_scale: float,
        default_guidance_interval,
    ):
        """Registers the pipeline config (class names — the ImageNet ones for a 1000-class model by default — and
        the sampling recipe) and the name lookup."""
        num_classes = self.transformer.config.num_classes if self.transformer is not None else None
        if id2label is None and num_classes == IMAGENET_NUM_CLASSES:
            id2label = imagenet_id2label()
        self.register_to_config(
            id2label=id2label,
            default_num_inference_steps=default_num_inference_steps,
            default_guidance_scale=default_guidance_scale,
            default_guidance_interval=tuple(check_guidance_interval(default_guidance_interval)),
        )
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

    def _check_components(self):
        """Raises a `ValueError` when a component the call needs is missing or unfit."""

    def _model_inputs(self, class_labels: torch.Tensor, guided_class_labels: torch.Tensor) -> ModelInputs:
        """The transformer's conditioning for a step (see `PixelDiTDenoisingMixin.denoise`), from the class ids
        `(B,)` and, for guided steps, `(2B,)`: the null class, then the ids."""
        raise NotImplementedError

    def _class_conditioning(
        self, class_ids: list[int], num_images_per_prompt: int, device: torch.device
    ) -> tuple[torch.Tensor, ModelInputs]:
        """The class ids `(B,)` of the batch, `num_images_per_prompt` per id, and the loop's `model_inputs`."""
        class_labels = torch.tensor(class_ids, device=device).repeat_interleave(num_images_per_prompt)
        guided_class_labels = torch.cat(
            [torch.full_like(class_labels, self.transformer.config.num_classes), class_labels]
        )
        return class_labels, self._model_inputs(class_labels, guided_class_labels)

    @torch.no_grad()
    @replace_example_docstring(EXAMPLE_DOC_STRING)
    @document_sampling_arguments
    def __call__(
        self,
        class_labels: int | str | list[int | str] | torch.Tensor,
        num_images_per_prompt: int = 1,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int | None = None,
        sigmas: list[float] | None = None,
        guidance_scale: float | None = None,
        guidance_interval: tuple[float, float] | None = None,
        shift: float | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        attention_kwargs: dict[str, Any] | None = None,
        callback_on_step_end: StepEndCallback | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],
    ) -> ImagePipelineOutput | tuple:
        r"""
        Generates images of the given classes.

        Args:
            class_labels (`int`, `str`, or a list of them): class ids or names (see `get_label_ids`).
            {sampling_arguments}

        Examples:

        Returns:
            [`~pipelines.ImagePipelineOutput`] or `tuple`: the images, `num_images_per_prompt` per class label.
        """
        self._check_components()
        height, width, num_inference_steps, guidance_interval = self.sampling_arguments(
            height, width, num_inference_steps, guidance_interval, callback_on_step_end_tensor_inputs
        )
        class_ids = self.class_ids(class_labels)
        self._start_call(guidance_scale, attention_kwargs)
        device = self._execution_device

        class_labels, model_inputs = self._class_conditioning(class_ids, num_images_per_prompt, device)
        noise_scale = getattr(self.transformer.config, "noise_scale", 1.0)
        latents = self.prepare_latents(class_labels.shape[0], height, width, device, generator, latents, noise_scale)
        latents = self.denoise(
            {"latents": latents}, model_inputs, device, num_inference_steps, guidance_interval, sigmas, shift,
            callback_on_step_end, callback_on_step_end_tensor_inputs,
        )  # fmt: skip
        return self.postprocess(latents, output_type, return_dict)
