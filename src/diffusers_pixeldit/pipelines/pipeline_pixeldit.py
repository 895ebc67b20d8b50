# Copyright 2026 The diffusers-pixeldit authors. Licensed under the Apache License, Version 2.0.
"""Class-conditional PixelDiT pipeline (ImageNet release)."""

import torch
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from ..models import PixelDiTTransformer2DModel
from ..single_file import FromOfficialSingleFileMixin
from .class_conditional import ClassConditionalMixin
from .denoising import ModelInputs
from .lora import PixelDiTLoraLoaderMixin


class PixelDiTPipeline(DiffusionPipeline, ClassConditionalMixin, PixelDiTLoraLoaderMixin, FromOfficialSingleFileMixin):
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

    _single_file_kinds = ("c2i",)
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
        self._register_class_config(
            id2label, default_num_inference_steps, default_guidance_scale, default_guidance_interval
        )
        self.image_processor = VaeImageProcessor(vae_scale_factor=1)

    def _model_inputs(self, class_labels: torch.Tensor, guided_class_labels: torch.Tensor) -> ModelInputs:
        return lambda state, guided: {"class_labels": guided_class_labels if guided else class_labels}
