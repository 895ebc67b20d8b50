# Copyright 2026 The diffusers-pixeldit authors. Licensed under the Apache License, Version 2.0.
"""Class-conditional PixelDiT pipeline (ImageNet release)."""

import difflib
import json
from importlib import resources
from typing import Any, Callable

import torch
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.pipeline_utils import DiffusionPipeline, ImagePipelineOutput
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import replace_example_docstring
from diffusers.utils.torch_utils import randn_tensor

from ..models import PixelDiTTransformer2DModel
from .sampling import check_guidance_interval, in_guidance_interval, scheduler_with_shift, set_flow_timesteps


EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> from diffusers_pixeldit import PixelDiTPipeline

        >>> pipe = PixelDiTPipeline.from_pretrained("path/to/pixeldit-xl-256")  # a converted checkpoint
        >>> image = pipe(class_labels=[207, "golden retriever"], generator=torch.Generator().manual_seed(0)).images[0]
        ```
"""


def imagenet_id2label() -> dict[str, str]:
    """The 1000 ImageNet-1k class names with their synonyms, `{"0": "tench, Tinca tinca", ...}`."""
    return json.loads(resources.files("diffusers_pixeldit.data").joinpath("imagenet_id2label.json").read_text())


class PixelDiTPipeline(DiffusionPipeline):
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
        if id2label is None and transformer is not None and transformer.config.num_classes == 1000:
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
        self.image_processor = VaeImageProcessor(vae_scale_factor=1)

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

    def _class_ids(self, class_labels) -> list[int]:
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

    def check_inputs(self, height, width, guidance_interval, callback_on_step_end_tensor_inputs):
        patch_size = self.transformer.config.patch_size
        if height % patch_size or width % patch_size:
            raise ValueError(
                f"`height` and `width` must be multiples of the patch size {patch_size}, got {height}x{width}."
            )
        check_guidance_interval(guidance_interval)
        unknown = [k for k in callback_on_step_end_tensor_inputs or [] if k not in self._callback_tensor_inputs]
        if unknown:
            raise ValueError(f"Callback tensor inputs {unknown} are not in {self._callback_tensor_inputs}.")

    def prepare_latents(self, batch_size, height, width, device, generator, latents=None) -> torch.Tensor:
        shape = (batch_size, self.transformer.config.in_channels, height, width)
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(f"{len(generator)} generators were given for a batch of {batch_size} images.")
        if latents is None:
            return randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
        if tuple(latents.shape) != shape:
            raise ValueError(f"`latents` must have shape {shape}, got {tuple(latents.shape)}.")
        return latents.to(device=device, dtype=torch.float32)

    @property
    def guidance_scale(self):
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self):
        return self._guidance_scale > 1

    @property
    def attention_kwargs(self):
        return self._attention_kwargs

    @property
    def num_timesteps(self):
        return self._num_timesteps

    @property
    def interrupt(self):
        return self._interrupt

    @torch.no_grad()
    @replace_example_docstring(EXAMPLE_DOC_STRING)
    def __call__(
        self,
        class_labels: int | str | list[int | str] | torch.Tensor,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int | None = None,
        sigmas: list[float] | None = None,
        guidance_scale: float | None = None,
        guidance_interval: tuple[float, float] | None = None,
        shift: float | None = None,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        attention_kwargs: dict[str, Any] | None = None,
        callback_on_step_end: Callable[[int, int, dict], None]
        | PipelineCallback
        | MultiPipelineCallbacks
        | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],
    ) -> ImagePipelineOutput | tuple:
        r"""
        Generates images of the given classes.

        Args:
            class_labels (`int`, `str`, or a list of them): class ids or names (see `get_label_ids`).
            height (`int`, *optional*), width (`int`, *optional*): image size in pixels, multiples of the patch size;
                default `transformer.config.sample_size`.
            num_inference_steps (`int`, *optional*): number of sampling steps; default from the pipeline config.
            sigmas (`list[float]`, *optional*): custom unshifted noise levels, for schedulers that accept them.
            guidance_scale (`float`, *optional*): classifier-free guidance scale; default from the pipeline config.
            guidance_interval (`tuple[float, float]`, *optional*): `(low, high)` in the model-card time t = 1 − σ
                (0 = noise, 1 = image): guidance applies while `low < t < high` (strict, on the shifted grid);
                outside it the unconditional branch is not computed. Default from the pipeline config.
            shift (`float`, *optional*): timeshift for this call (the scheduler's own is used otherwise).
            num_images_per_prompt (`int`, defaults to 1): images per class label.
            generator (`torch.Generator` or a list, one per image, *optional*): for reproducible noise.
            latents (`torch.Tensor` of shape `(B, C, H, W)`, *optional*): the initial noise.
            output_type (`str`, defaults to `"pil"`): `"pil"`, `"np"` or `"pt"` (in [0, 1]), or `"latent"` (the
                raw [-1, 1] pixels).
            return_dict (`bool`, defaults to True): return an `ImagePipelineOutput` instead of a tuple.
            attention_kwargs (`dict`, *optional*): passed to the transformer (e.g. `{"scale": 0.5}` for LoRA).
            callback_on_step_end (`Callable`, *optional*): called after each step as
                `callback_on_step_end(self, i, t, callback_kwargs)`; tensors it returns replace the pipeline's.
            callback_on_step_end_tensor_inputs (`list[str]`, defaults to `["latents"]`): tensors passed to it.

        Examples:

        Returns:
            [`~pipelines.ImagePipelineOutput`] or `tuple`: the generated images.
        """
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        height = height or self.transformer.config.sample_size
        width = width or self.transformer.config.sample_size
        num_inference_steps = num_inference_steps or self.config.default_num_inference_steps
        guidance_interval = guidance_interval or self.config.default_guidance_interval
        self.check_inputs(height, width, guidance_interval, callback_on_step_end_tensor_inputs)
        class_ids = self._class_ids(class_labels)
        self._guidance_scale = self.config.default_guidance_scale if guidance_scale is None else guidance_scale
        self._attention_kwargs = attention_kwargs
        self._interrupt = False
        device = self._execution_device

        class_labels = torch.tensor(class_ids, device=device).repeat_interleave(num_images_per_prompt)
        null_labels = torch.full_like(class_labels, self.transformer.config.num_classes)
        batch_size = class_labels.shape[0]
        latents = self.prepare_latents(batch_size, height, width, device, generator, latents)

        scheduler = scheduler_with_shift(self.scheduler, shift)
        timesteps, step_sigmas = set_flow_timesteps(scheduler, num_inference_steps, device, sigmas)
        num_warmup_steps = max(len(timesteps) - num_inference_steps * scheduler.order, 0)
        self._num_timesteps = len(timesteps)
        model_dtype = self.transformer.dtype

        with self.progress_bar(total=num_inference_steps) as progress_bar:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue
                sigma = step_sigmas[i]
                guided = self.do_classifier_free_guidance and in_guidance_interval(sigma, guidance_interval)
                model_input = torch.cat([latents, latents]) if guided else latents
                labels = torch.cat([null_labels, class_labels]) if guided else class_labels
                timestep = (sigma * scheduler.config.num_train_timesteps).float().expand(model_input.shape[0])
                velocity = self.transformer(
                    hidden_states=model_input.to(model_dtype),
                    timestep=timestep.to(device),
                    class_labels=labels,
                    attention_kwargs=self.attention_kwargs,
                    return_dict=False,
                )[0].float()
                if guided:
                    velocity_uncond, velocity_cond = velocity.chunk(2)
                    velocity = velocity_uncond + self.guidance_scale * (velocity_cond - velocity_uncond)
                latents = scheduler.step(velocity, t, latents, return_dict=False)[0]

                if callback_on_step_end is not None:
                    callback_kwargs = {}
                    for k in callback_on_step_end_tensor_inputs:
                        callback_kwargs[k] = locals()[k]
                    callback_outputs = callback_on_step_end(self, i, t, callback_kwargs)
                    latents = callback_outputs.pop("latents", latents)

                if i == len(timesteps) - 1 or ((i + 1) > num_warmup_steps and (i + 1) % scheduler.order == 0):
                    progress_bar.update()

        if output_type == "latent":
            image = latents
        else:
            image = self.image_processor.postprocess(latents, output_type=output_type)
        self.maybe_free_model_hooks()

        if not return_dict:
            return (image,)
        return ImagePipelineOutput(images=image)
