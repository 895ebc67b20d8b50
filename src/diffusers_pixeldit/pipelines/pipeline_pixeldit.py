# Copyright 2026 The diffusers-pixeldit authors. Licensed under the Apache License, Version 2.0.
"""Class-conditional PixelDiT pipeline (ImageNet release)."""

from typing import Any

import torch
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.pipeline_utils import DiffusionPipeline, ImagePipelineOutput
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import replace_example_docstring

from ..models import PixelDiTTransformer2DModel
from .class_labels import ClassLabelMixin, default_id2label
from .denoising import PixelDiTDenoisingMixin, StepEndCallback, check_guidance_interval, document_sampling_arguments


EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> from diffusers_pixeldit import PixelDiTPipeline

        >>> pipe = PixelDiTPipeline.from_pretrained("path/to/pixeldit-xl-256")  # a converted checkpoint
        >>> image = pipe(class_labels=[207, "golden retriever"], generator=torch.Generator().manual_seed(0)).images[0]
        ```
"""


class PixelDiTPipeline(DiffusionPipeline, PixelDiTDenoisingMixin, ClassLabelMixin):
    r"""
    Class-conditional image generation with PixelDiT, directly in pixel space.

    Args:
        transformer ([`PixelDiTTransformer2DModel`]): a class-conditional PixelDiT.
        scheduler ([`SchedulerMixin`]): a flow-matching scheduler: [`PixelDiTFlowScheduler`] (the official samplers),
            `FlowMatchEulerDiscreteScheduler`, `FlowMatchHeunDiscreteScheduler`, or `DPMSolverMultistepScheduler` /
            `UniPCMultistepScheduler` with `use_flow_sigmas=True, prediction_type="flow_prediction"`.
        id2label (`dict[str, str]`, *optional*): class names, `{"207": "golden retriever", ...}`, comma-separated
            synonyms allowed. Defaults to the ImageNet names for 1000-class models.
        default_num_inference_steps, default_guidance_scale, default_guidance_interval: the sampling recipe used when
            a call does not give them (a converted checkpoint carries its model card's).
    """

    model_cpu_offload_seq = "transformer"
    _callback_tensor_inputs = ["latents"]

    def __init__(
        self,
        transformer: PixelDiTTransformer2DModel,
        scheduler: SchedulerMixin,
        id2label: dict[str, str] | None = None,
        default_num_inference_steps: int = 100,
        default_guidance_scale: float = 1.0,
        default_guidance_interval: tuple[float, float] | list[float] = (0.0, 1.0),
    ):
        super().__init__()
        self.register_modules(transformer=transformer, scheduler=scheduler)
        id2label = default_id2label(id2label, transformer.config.num_classes if transformer is not None else None)
        self.register_to_config(
            id2label=id2label,
            default_num_inference_steps=default_num_inference_steps,
            default_guidance_scale=default_guidance_scale,
            default_guidance_interval=tuple(check_guidance_interval(default_guidance_interval)),
        )
        self._register_labels(id2label)
        self.image_processor = VaeImageProcessor(vae_scale_factor=1)

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
        height, width, num_inference_steps, guidance_interval = self.sampling_arguments(
            height, width, num_inference_steps, guidance_interval, callback_on_step_end_tensor_inputs
        )
        class_ids = self.class_ids(class_labels)
        self._start_call(guidance_scale, attention_kwargs)
        device = self._execution_device

        class_labels = torch.tensor(class_ids, device=device).repeat_interleave(num_images_per_prompt)
        guided_labels = torch.cat([torch.full_like(class_labels, self.transformer.config.num_classes), class_labels])
        latents = self.prepare_latents(class_labels.shape[0], height, width, device, generator, latents)

        def model_inputs(state, guided):
            return {"class_labels": guided_labels if guided else class_labels}

        latents = self.denoise(
            {"latents": latents}, model_inputs, device, num_inference_steps, guidance_interval, sigmas, shift,
            callback_on_step_end, callback_on_step_end_tensor_inputs,
        )  # fmt: skip
        return self.postprocess(latents, output_type, return_dict)
