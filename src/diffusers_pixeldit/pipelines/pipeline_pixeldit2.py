# Copyright 2026 The diffusers-pixeldit authors. Licensed under the Apache License, Version 2.0.
"""Class-conditional PixelDiT2 pipeline (ImageNet release), grounded at every step by a frozen DINOv3."""

from typing import Any

import torch
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.pipeline_utils import DiffusionPipeline, ImagePipelineOutput
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import replace_example_docstring

from ..models import PixelDiT2Transformer2DModel, encode_grounding
from .class_labels import ClassLabelMixin, default_id2label
from .denoising import PixelDiTDenoisingMixin, StepEndCallback, check_guidance_interval, document_sampling_arguments


EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> import torch
        >>> from diffusers_pixeldit import PixelDiT2Pipeline

        >>> pipe = PixelDiT2Pipeline.from_pretrained("path/to/pixeldit2-h16-256")  # a converted checkpoint
        >>> image = pipe(class_labels=["golden retriever"], generator=torch.Generator().manual_seed(0)).images[0]
        ```
"""


class PixelDiT2Pipeline(DiffusionPipeline, PixelDiTDenoisingMixin, ClassLabelMixin):
    r"""
    Class-conditional image generation with PixelDiT2, directly in pixel space: at every model evaluation the
    grounding encoder (a frozen DINOv3) reads the current noisy image and its tokens condition the transformer.

    Classifier-free guidance follows the official sampler: the conditional branch has the class and the grounding,
    the unconditional one the null class and no grounding; both run in one batched forward (the encoder only for the
    conditional half), and only the conditional one outside the guidance interval. A guidance interval `(0, high)`
    has no lower bound, as in the official sampler.

    Args:
        transformer ([`PixelDiT2Transformer2DModel`]): a PixelDiT2.
        scheduler ([`SchedulerMixin`]): a flow-matching scheduler: [`PixelDiTFlowScheduler`] with
            `solver="heun", time_grid="uniform"` is the official `GroundedHeunSampler` (`solver="euler"`: the
            official Euler sampler); diffusers' flow-matching schedulers run too.
        grounding_encoder (`transformers.DINOv3ViTModel`, *optional*): the frozen grounding encoder (the releases:
            `facebook/dinov3-vits16-pretrain-lvd1689m` at 256 px, `-vitb16-` at 512 px); its width must be the
            transformer's `grounding_embed_dim`. Kept in eval mode. It may be passed at loading time
            (`from_pretrained(..., grounding_encoder=...)`); sampling needs it.
        id2label (`dict[str, str]`, *optional*): class names, comma-separated synonyms allowed; the ImageNet names for
            1000-class models by default.
        default_num_inference_steps, default_guidance_scale, default_guidance_interval: the sampling recipe used when
            a call does not give them (a converted checkpoint carries its model card's).
    """

    model_cpu_offload_seq = "transformer"
    # The encoder runs at every step beside the transformer: offloading one of them would move it at every step.
    _exclude_from_cpu_offload = ["grounding_encoder"]
    _optional_components = ["grounding_encoder"]
    _callback_tensor_inputs = ["latents"]
    _zero_low_is_unbounded = True
    _cast_model_input = False

    def __init__(
        self,
        transformer: PixelDiT2Transformer2DModel,
        scheduler: SchedulerMixin,
        grounding_encoder=None,
        id2label: dict[str, str] | None = None,
        default_num_inference_steps: int = 50,
        default_guidance_scale: float = 1.0,
        default_guidance_interval: tuple[float, float] | list[float] = (0.0, 1.0),
    ):
        super().__init__()
        if grounding_encoder is not None:
            self.check_grounding_encoder(transformer, grounding_encoder)
            grounding_encoder.eval().requires_grad_(False)
        self.register_modules(transformer=transformer, scheduler=scheduler, grounding_encoder=grounding_encoder)
        id2label = default_id2label(id2label, transformer.config.num_classes if transformer is not None else None)
        self.register_to_config(
            id2label=id2label,
            default_num_inference_steps=default_num_inference_steps,
            default_guidance_scale=default_guidance_scale,
            default_guidance_interval=tuple(check_guidance_interval(default_guidance_interval)),
        )
        self._register_labels(id2label)
        self.image_processor = VaeImageProcessor(vae_scale_factor=1)

    @staticmethod
    def check_grounding_encoder(transformer: PixelDiT2Transformer2DModel | None, grounding_encoder):
        """Raises a `ValueError` when the encoder cannot ground the transformer (width, or not a DINOv3-like ViT)."""
        config = getattr(grounding_encoder, "config", None)
        missing = [k for k in ("hidden_size", "patch_size", "num_register_tokens") if not hasattr(config, k)]
        if missing:
            raise ValueError(
                f"The grounding encoder must be a ViT with CLS and register tokens such as transformers' "
                f"DINOv3ViTModel; {type(grounding_encoder).__name__} has no config {missing}."
            )
        if transformer is not None and config.hidden_size != transformer.config.grounding_embed_dim:
            raise ValueError(
                f"The grounding encoder's width {config.hidden_size} is not the transformer's grounding_embed_dim "
                f"{transformer.config.grounding_embed_dim} (the 256 px release takes DINOv3 ViT-S/16, 384; "
                "the 512 px one ViT-B/16, 768)."
            )

    def encode_grounding(self, latents: torch.Tensor) -> torch.Tensor:
        """The grounding tokens `(B, H/p · W/p, C_enc)` of the current noisy images `latents` `(B, C, H, W)`."""
        return encode_grounding(self.grounding_encoder, latents, self.transformer.config.patch_size)

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
        if self.grounding_encoder is None:
            raise ValueError(
                "PixelDiT2 needs its grounding encoder: pass `grounding_encoder=DINOv3ViTModel.from_pretrained(...)` "
                "to the pipeline (e.g. facebook/dinov3-vits16-pretrain-lvd1689m for the 256 px release)."
            )
        self.check_grounding_encoder(self.transformer, self.grounding_encoder)
        self.grounding_encoder.eval()
        height, width, num_inference_steps, guidance_interval = self.sampling_arguments(
            height, width, num_inference_steps, guidance_interval, callback_on_step_end_tensor_inputs
        )
        class_ids = self.class_ids(class_labels)
        self._start_call(guidance_scale, attention_kwargs)
        device = self._execution_device

        class_labels = torch.tensor(class_ids, device=device).repeat_interleave(num_images_per_prompt)
        batch_size = class_labels.shape[0]
        guided_labels = torch.cat([torch.full_like(class_labels, self.transformer.config.num_classes), class_labels])
        # the unconditional half of a guided batch has no grounding
        guided_mask = torch.arange(2 * batch_size, device=device) >= batch_size
        noise_scale = self.transformer.config.noise_scale
        latents = self.prepare_latents(batch_size, height, width, device, generator, latents, noise_scale)

        def model_inputs(state, guided):
            tokens = self.encode_grounding(state["latents"])
            if not guided:
                return {"class_labels": class_labels, "grounding_hidden_states": tokens}
            tokens = torch.cat([torch.zeros_like(tokens), tokens])
            return {"class_labels": guided_labels, "grounding_hidden_states": tokens, "grounding_mask": guided_mask}

        latents = self.denoise(
            {"latents": latents}, model_inputs, device, num_inference_steps, guidance_interval, sigmas, shift,
            callback_on_step_end, callback_on_step_end_tensor_inputs,
        )  # fmt: skip
        return self.postprocess(latents, output_type, return_dict)
