# Copyright 2026 The diffusers-pixeldit authors. Licensed under the Apache License, Version 2.0.
"""Class-conditional PixelDiT2 pipeline (ImageNet release), grounded at every step by a frozen DINOv3."""

import torch
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from ..models import PixelDiT2Transformer2DModel, encode_grounding
from ..single_file import FromOfficialSingleFileMixin
from .class_conditional import ClassConditionalMixin
from .denoising import ModelInputs
from .lora import PixelDiTLoraLoaderMixin


class PixelDiT2Pipeline(
    DiffusionPipeline, ClassConditionalMixin, PixelDiTLoraLoaderMixin, FromOfficialSingleFileMixin
):
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

    _single_file_kinds = ("pixeldit2",)
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
        self._register_class_config(
            id2label, default_num_inference_steps, default_guidance_scale, default_guidance_interval
        )
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

    def _check_components(self):
        if self.grounding_encoder is None:
            raise ValueError(
                "PixelDiT2 needs its grounding encoder: pass `grounding_encoder=DINOv3ViTModel.from_pretrained(...)` "
                "to the pipeline (e.g. facebook/dinov3-vits16-pretrain-lvd1689m for the 256 px release)."
            )
        self.check_grounding_encoder(self.transformer, self.grounding_encoder)
        self.grounding_encoder.eval()

    def _model_inputs(self, class_labels: torch.Tensor, guided_class_labels: torch.Tensor) -> ModelInputs:
        batch_size = class_labels.shape[0]
        # the unconditional half of a guided batch is not grounded; every row of a conditional batch is. A mask in
        # both cases, so that the transformer takes the same arguments at every step (one graph under torch.compile).
        guided_mask = torch.arange(2 * batch_size, device=class_labels.device) >= batch_size
        conditional_mask = torch.ones(batch_size, dtype=torch.bool, device=class_labels.device)

        def model_inputs(state, guided):
            tokens = self.encode_grounding(state["latents"])  # the current noisy images, conditional half only
            if not guided:
                return {
                    "class_labels": class_labels,
                    "grounding_hidden_states": tokens,
                    "grounding_mask": conditional_mask,
                }
            tokens = torch.cat([torch.zeros_like(tokens), tokens])
            return {
                "class_labels": guided_class_labels,
                "grounding_hidden_states": tokens,
                "grounding_mask": guided_mask,
            }

        return model_inputs
