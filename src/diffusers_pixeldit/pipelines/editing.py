# Copyright 2026 The diffusers-pixeldit authors. Licensed under the Apache License, Version 2.0.
"""Image-to-image and inpainting for every PixelDiT pipeline, on the shared denoising loop.

PixelDiT has no VAE: the image is the model's state, so image-to-image starts from the exact (noised) input and
inpainting keeps the pixels outside the mask bit for bit. What differs from the generation pipelines is written
once here: reading the image and mask (diffusers' `VaeImageProcessor`, `padding_mask_crop`), the starting step
(`strength`, diffusers' `get_timesteps`), the known region restored after each step (the scheduler's `scale_noise`),
and the output, where the input's own pixels are kept outside the mask.
"""

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import PIL.Image
import torch
from diffusers.image_processor import PipelineImageInput, VaeImageProcessor
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import replace_example_docstring

from .class_conditional import ClassConditionalMixin
from .denoising import (
    ModelInputs,
    PixelDiTDenoisingMixin,
    StepEndCallback,
    document_sampling_arguments,
    strength_start_step,
)


# The documentation of the editing arguments, inserted in each `__call__` docstring where it says
# `{editing_arguments}` (see `document_editing_arguments`).
IMAGE_ARGUMENT_DOC = """\
image (`PIL.Image.Image`, `np.ndarray`, `torch.Tensor` or a list of them): the image(s) to edit, in [0, 1] for
    arrays and tensors (`(B, C, H, W)` tensors, `(B, H, W, C)` arrays), read by diffusers' `VaeImageProcessor`
    (PIL images are converted to the model's channels). One image for every condition, or one per condition.
    `height`/`width` default to the image's own size rounded down to a multiple of the patch size (not the
    transformer's `sample_size`); the image is resized to them.
strength (`float` in [0, 1]): how much of the grid runs, diffusers' `get_timesteps`: sampling starts at step
    `int(N − strength·N)` of the `num_inference_steps = N` grid, from the image noised with the scheduler's
    `scale_noise` at that step's σ. 1 starts from the noise alone (the image is ignored, as by the generation
    pipeline with the same noise); 0 returns the image unchanged."""
MASK_ARGUMENT_DOC = """\
mask_image (the same types as `image`): white (1) = repaint, black (0) = keep; the same size as `image`, one mask
    or one per image. Soft masks blend: after every step the state is `(1 − m)·known + m·state`, `known` being the
    image noised at the next step's σ (the image itself after the last step), and the output
    `(1 − m)·image + m·generated` in pixel values; so outside a binary mask the output is the input, exactly.
padding_mask_crop (`int`, *optional*): as diffusers: inpaint only the mask's bounding box grown by this margin
    (and to the `height`/`width` aspect ratio), resized to `height`×`width` (default `sample_size`), then paste
    the result back over the original image (`VaeImageProcessor.apply_overlay`). Needs one PIL image and mask and
    `output_type="pil"`."""
# `latents` is the noise here, as for the generation pipelines.
LATENTS_NOTE = (
    "`latents` are the unit-variance noise mixed with the image (the same noise as the generation pipeline's)."
)


def document_editing_arguments(call: Callable) -> Callable:
    """Inserts the `image`/`strength` (and, with `{mask_arguments}`, the mask) documentation in a docstring."""
    for marker_name, text in (("{image_arguments}", IMAGE_ARGUMENT_DOC), ("{mask_arguments}", MASK_ARGUMENT_DOC)):
        marker = next((line for line in call.__doc__.splitlines() if line.strip() == marker_name), None)
        if marker is not None:
            indent = marker[: len(marker) - len(marker.lstrip())]
            lines = "\n".join(indent + line for line in text.splitlines())
            call.__doc__ = call.__doc__.replace(marker, lines)
    return call


def noise_image(
    scheduler: SchedulerMixin, image: torch.Tensor, noise: torch.Tensor, timestep: torch.Tensor
) -> torch.Tensor:
    """`σ·noise + (1 − σ)·image` at the scheduler's current σ (its begin index before the first step): its
    `scale_noise` (flow-matching schedulers, `PixelDiTFlowScheduler`), or the `add_noise` of the multistep solvers
    with `use_flow_sigmas=True` (the same forward process). `timestep` `(1,)`: an entry of `scheduler.timesteps`."""
    if hasattr(scheduler, "scale_noise"):
        return scheduler.scale_noise(image, timestep, noise)
    return scheduler.add_noise(image, noise, timestep)


def check_scheduler_can_noise(scheduler: SchedulerMixin):
    if not hasattr(scheduler, "scale_noise") and not (
        hasattr(scheduler, "add_noise") and scheduler.config.get("use_flow_sigmas", False)
    ):
        raise ValueError(
            f"{type(scheduler).__name__} cannot noise an image on the flow: image-to-image and inpainting need a "
            "flow scheduler with `scale_noise`, or a multistep solver with `use_flow_sigmas=True`."
        )


def image_size(image: PipelineImageInput, grayscale: bool = False) -> tuple[int, int]:
    """`(height, width)` of an image input (its first image for a list), as `VaeImageProcessor` reads it: tensors
    `(..., H, W)`, arrays `(H, W)`, `(H, W, C)` or `(B, H, W, C)`, and with `grayscale` `(B, H, W)`."""
    first = image[0] if isinstance(image, (list, tuple)) else image
    if isinstance(first, PIL.Image.Image):
        return first.height, first.width
    if isinstance(first, torch.Tensor):
        return tuple(first.shape[-2:])
    if isinstance(first, np.ndarray):
        if first.ndim == 4 or (grayscale and first.ndim == 3 and first.shape[-1] != 1):
            return tuple(first.shape[1:3])
        return tuple(first.shape[:2])
    raise ValueError(f"Images must be PIL images, NumPy arrays or tensors (or lists of them), got {type(first)}.")


def per_sample(tensor: torch.Tensor, num_conditions: int, num_images_per_prompt: int) -> torch.Tensor:
    """`(1 or num_conditions, ...)` -> `(num_conditions · num_images_per_prompt, ...)`, each condition's rows
    together (the order of the conditions' images)."""
    return tensor.expand(num_conditions, *tensor.shape[1:]).repeat_interleave(num_images_per_prompt, dim=0)


@dataclass
class ImageEdit:
    """The input of an image-to-image or inpainting call, as the denoising loop and the output use it.

    Attributes:
        image (`torch.Tensor` of shape `(B, C, H, W)`): the image in [-1, 1] (float32, on the device).
        pixels (`torch.Tensor` of shape `(B, C, H, W)`): the same in [0, 1], as read (the output's kept pixels).
        noise (`torch.Tensor` of shape `(B, C, H, W)`): the noise (times the model's noise scale).
        strength (`float`): the share of the grid that runs.
        mask (`torch.Tensor` of shape `(B, 1, H, W)`, *optional*): inpainting's mask in [0, 1], 1 = repaint.
        overlay (`tuple`, *optional*): with `padding_mask_crop`, `(mask, image, crop box)`: the original PIL mask
            and image the result is pasted onto.
    """

    image: torch.Tensor
    pixels: torch.Tensor
    noise: torch.Tensor
    strength: float
    mask: torch.Tensor | None = None
    overlay: tuple[PIL.Image.Image, PIL.Image.Image, tuple[int, int, int, int]] | None = None

    def initial_latents(self, scheduler: SchedulerMixin, timestep: torch.Tensor) -> torch.Tensor:
        """The state at the first timestep `(1,)`: the image noised at its σ (the noise alone at strength 1)."""
        latents = self.noise if self.strength == 1 else noise_image(scheduler, self.image, self.noise, timestep)
        return self.keep_known_region(scheduler, latents, timestep)

    def keep_known_region(
        self, scheduler: SchedulerMixin, latents: torch.Tensor, timestep: torch.Tensor
    ) -> torch.Tensor:
        """Inpainting: `(1 − m)·known + m·latents`, `known` the image noised at the σ of `timestep` `(1,)`, or the
        image itself for an empty `timestep` (after the last step). Image-to-image: `latents`."""
        if self.mask is None:
            return latents
        known = noise_image(scheduler, self.image, self.noise, timestep) if len(timestep) else self.image
        return (1 - self.mask) * known + self.mask * latents


class ImageEditingMixin(PixelDiTDenoisingMixin):
    """Image-to-image and inpainting calls for a PixelDiT pipeline: a pipeline class inherits this mixin before
    its generation pipeline, whose conditioning it reuses (see `_edit`)."""

    @property
    def pixel_processor(self) -> VaeImageProcessor:
        """Reads images to [0, 1] (not normalised, so that the output can keep the input's own values), with the
        model's channels, resized to a multiple of the patch size."""
        channels = self.transformer.config.in_channels
        return VaeImageProcessor(
            vae_scale_factor=self.transformer.config.patch_size,
            do_normalize=False,
            do_convert_rgb=channels == 3,
            do_convert_grayscale=channels == 1,
        )

    @property
    def mask_processor(self) -> VaeImageProcessor:
        """Reads masks to one channel in [0, 1] (soft masks kept)."""
        return VaeImageProcessor(
            vae_scale_factor=self.transformer.config.patch_size, do_normalize=False, do_convert_grayscale=True
        )

    def check_edit_inputs(
        self, image, mask_image, strength, num_inference_steps, sigmas, padding_mask_crop, output_type
    ):
        """Raises a `ValueError` naming the problem (strength, steps, scheduler, sizes, `padding_mask_crop`)."""
        if image is None:
            raise ValueError("`image` is required.")
        if not 0 <= strength <= 1:
            raise ValueError(f"`strength` must be in [0, 1], got {strength}.")
        num_steps = (
            len(sigmas) if sigmas is not None else num_inference_steps or self.config.default_num_inference_steps
        )
        if strength > 0 and num_steps - strength_start_step(num_steps, strength) < 1:
            raise ValueError(
                f"strength={strength} with {num_steps} inference steps leaves no step to run: raise `strength` or "
                "`num_inference_steps`."
            )
        check_scheduler_can_noise(self.scheduler)
        if mask_image is None:
            return
        image_hw, mask_hw = image_size(image), image_size(mask_image, grayscale=True)
        if image_hw != mask_hw:
            raise ValueError(f"`mask_image` is {mask_hw[0]}x{mask_hw[1]} but `image` is {image_hw[0]}x{image_hw[1]}.")
        if padding_mask_crop is not None:
            if not isinstance(image, PIL.Image.Image) or not isinstance(mask_image, PIL.Image.Image):
                raise ValueError("`padding_mask_crop` needs `image` and `mask_image` to be one PIL image each.")
            if output_type != "pil":
                raise ValueError(f"`padding_mask_crop` needs `output_type='pil'`, got {output_type!r}.")

    def prepare_edit(
        self,
        image,
        mask_image,
        strength: float,
        height: int | None,
        width: int | None,
        padding_mask_crop: int | None,
        num_conditions: int,
        num_images_per_prompt: int,
        device: torch.device,
        generator,
        latents: torch.Tensor | None,
    ) -> ImageEdit:
        """Reads the image (and mask) to the batch of `num_conditions · num_images_per_prompt` and draws the noise."""
        overlay = crops_coords = None
        resize_mode = "default"
        if padding_mask_crop is not None:
            height = height or self.transformer.config.sample_size
            width = width or self.transformer.config.sample_size
            crops_coords = self.mask_processor.get_crop_region(mask_image, width, height, pad=padding_mask_crop)
            overlay, resize_mode = (mask_image, image, crops_coords), "fill"
        pixels = self.pixel_processor.preprocess(
            image, height, width, resize_mode=resize_mode, crops_coords=crops_coords
        )
        self._check_pixels("image", pixels, self.transformer.config.in_channels, num_conditions, "conditions")
        height, width = pixels.shape[-2:]
        mask = None
        if mask_image is not None:
            mask = self.mask_processor.preprocess(mask_image, height, width, resize_mode, crops_coords)
            self._check_pixels("mask_image", mask, 1, pixels.shape[0], "images")
            mask = per_sample(mask.expand(pixels.shape[0], *mask.shape[1:]), num_conditions, num_images_per_prompt)
            mask = mask.to(device, torch.float32)
        pixels = per_sample(pixels, num_conditions, num_images_per_prompt).to(device, torch.float32)
        noise_scale = getattr(self.transformer.config, "noise_scale", 1.0)
        noise = self.prepare_latents(pixels.shape[0], height, width, device, generator, latents, noise_scale)
        return ImageEdit(VaeImageProcessor.normalize(pixels), pixels, noise, strength, mask, overlay)

    @staticmethod
    def _check_pixels(name: str, pixels: torch.Tensor, channels: int, batch_size: int, of: str):
        if pixels.shape[1] != channels:
            raise ValueError(f"`{name}` has {pixels.shape[1]} channels, the model takes {channels}.")
        if pixels.shape[0] not in (1, batch_size):
            raise ValueError(f"{pixels.shape[0]} `{name}` given for {batch_size} {of}: give 1 or {batch_size}.")
        if pixels.min() < 0 or pixels.max() > 1:
            raise ValueError(
                f"`{name}` values must be in [0, 1], got [{pixels.min().item():.3g}, {pixels.max().item():.3g}]."
            )

    def _edit(
        self,
        conditioning: Callable[[torch.device], tuple[dict[str, Any], ModelInputs]],
        num_conditions: int,
        image,
        mask_image,
        strength: float,
        padding_mask_crop: int | None,
        num_images_per_prompt: int,
        height: int | None,
        width: int | None,
        num_inference_steps: int | None,
        sigmas: list[float] | None,
        guidance_scale: float | None,
        guidance_interval: tuple[float, float] | None,
        shift: float | None,
        generator,
        latents: torch.Tensor | None,
        output_type: str,
        return_dict: bool,
        attention_kwargs: dict[str, Any] | None,
        callback_on_step_end: StepEndCallback | None,
        callback_on_step_end_tensor_inputs: list[str],
    ) -> ImagePipelineOutput | tuple:
        """The body of every editing `__call__`: `conditioning(device)` returns the loop's state without latents and
        its `model_inputs` for `num_conditions · num_images_per_prompt` images (called after `_start_call`, as it
        may read `do_classifier_free_guidance`); the pipeline checks the condition before."""
        self.check_edit_inputs(
            image, mask_image, strength, num_inference_steps, sigmas, padding_mask_crop, output_type
        )
        device = self._execution_device
        edit = self.prepare_edit(
            image, mask_image, strength, height, width, padding_mask_crop, num_conditions, num_images_per_prompt,
            device, generator, latents,
        )  # fmt: skip
        height, width, num_inference_steps, guidance_interval = self.sampling_arguments(
            *edit.image.shape[-2:], num_inference_steps, guidance_interval, callback_on_step_end_tensor_inputs
        )
        self._start_call(guidance_scale, attention_kwargs)
        latents = edit.image
        if strength > 0:  # strength 0 keeps the image: nothing to encode or sample
            state, model_inputs = conditioning(device)
            latents = self.denoise(
                state, model_inputs, device, num_inference_steps, guidance_interval, sigmas, shift,
                callback_on_step_end, callback_on_step_end_tensor_inputs, edit=edit,
            )  # fmt: skip
        return self.postprocess_edit(latents, edit, output_type, return_dict)

    def postprocess_edit(
        self, latents: torch.Tensor, edit: ImageEdit, output_type: str, return_dict: bool
    ) -> ImagePipelineOutput | tuple:
        """`latents` ([-1, 1]) as `output_type` images, with the input's own pixels where it is kept (the whole
        image at strength 0, outside the mask when inpainting: `(1 − m)·pixels + m·generated`)."""
        if output_type == "latent":
            images = latents
        else:
            images = self.image_processor.postprocess(latents, output_type="pt")
            if edit.strength == 0:
                images = edit.pixels
            elif edit.mask is not None:
                images = (1 - edit.mask) * edit.pixels + edit.mask * images
            if output_type != "pt":
                images = self.image_processor.pt_to_numpy(images)
            if output_type == "pil":
                images = self.image_processor.numpy_to_pil(images)
            if edit.overlay is not None:
                mask, original, crops_coords = edit.overlay
                images = [
                    self.image_processor.apply_overlay(mask, original, result, crops_coords).convert(result.mode)
                    for result in images
                ]
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)


CLASS_EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> import torch
        >>> from diffusers_pixeldit import PixelDiTImg2ImgPipeline, PixelDiTInpaintPipeline, PixelDiTPipeline
        >>> from diffusers_pixeldit.digits import pretrained_digits_path

        >>> pipe = PixelDiTPipeline.from_pretrained(pretrained_digits_path("c2i"))
        >>> seven = pipe(class_labels=["seven"], generator=torch.Generator().manual_seed(0)).images[0]
        >>> one = PixelDiTImg2ImgPipeline.from_pipe(pipe)(class_labels=["one"], image=seven, strength=0.6).images[0]
        >>> mask = torch.zeros(1, 1, 32, 32)
        >>> mask[..., 16:, :] = 1  # repaint the lower half
        >>> nine = PixelDiTInpaintPipeline.from_pipe(pipe)(class_labels=["nine"], image=seven, mask_image=mask).images[0]
        ```
"""


class ClassConditionalEditingMixin(ImageEditingMixin, ClassConditionalMixin):
    """What the class-conditional image-to-image and inpainting calls share."""

    def _class_edit(self, class_labels, num_images_per_prompt: int, **edit_arguments) -> ImagePipelineOutput | tuple:
        self._check_components()
        class_ids = self.class_ids(class_labels)

        def conditioning(device):
            return {}, self._class_conditioning(class_ids, num_images_per_prompt, device)[1]

        return self._edit(conditioning, len(class_ids), num_images_per_prompt=num_images_per_prompt, **edit_arguments)


class ClassConditionalImg2ImgMixin(ClassConditionalEditingMixin):
    """The image-to-image call of the class-conditional pipelines (PixelDiT, PixelDiT2)."""

    @torch.no_grad()
    @replace_example_docstring(CLASS_EXAMPLE_DOC_STRING)
    @document_editing_arguments
    @document_sampling_arguments
    def __call__(
        self,
        class_labels: int | str | list[int | str] | torch.Tensor,
        image: PipelineImageInput = None,
        strength: float = 0.6,
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
        Turns images into images of the given classes.

        Args:
            class_labels (`int`, `str`, or a list of them): class ids or names (see `get_label_ids`).
            {image_arguments}
            {sampling_arguments}

        Examples:

        Returns:
            [`~pipelines.ImagePipelineOutput`] or `tuple`: the images, `num_images_per_prompt` per class label.
        """
        return self._class_edit(
            class_labels, num_images_per_prompt, image=image, mask_image=None, strength=strength,
            padding_mask_crop=None, height=height, width=width, num_inference_steps=num_inference_steps,
            sigmas=sigmas, guidance_scale=guidance_scale, guidance_interval=guidance_interval, shift=shift,
            generator=generator, latents=latents, output_type=output_type, return_dict=return_dict,
            attention_kwargs=attention_kwargs, callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
        )  # fmt: skip


class ClassConditionalInpaintMixin(ClassConditionalEditingMixin):
    """The inpainting call of the class-conditional pipelines (PixelDiT, PixelDiT2)."""

    @torch.no_grad()
    @replace_example_docstring(CLASS_EXAMPLE_DOC_STRING)
    @document_editing_arguments
    @document_sampling_arguments
    def __call__(
        self,
        class_labels: int | str | list[int | str] | torch.Tensor,
        image: PipelineImageInput = None,
        mask_image: PipelineImageInput = None,
        strength: float = 1.0,
        padding_mask_crop: int | None = None,
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
        Repaints the masked region of images with the given classes; the rest is kept exactly.

        Args:
            class_labels (`int`, `str`, or a list of them): class ids or names (see `get_label_ids`).
            {image_arguments}
            {mask_arguments}
            {sampling_arguments}

        Examples:

        Returns:
            [`~pipelines.ImagePipelineOutput`] or `tuple`: the images, `num_images_per_prompt` per class label.
        """
        if mask_image is None:
            raise ValueError("`mask_image` is required (white = repaint).")
        return self._class_edit(
            class_labels, num_images_per_prompt, image=image, mask_image=mask_image, strength=strength,
            padding_mask_crop=padding_mask_crop, height=height, width=width, num_inference_steps=num_inference_steps,
            sigmas=sigmas, guidance_scale=guidance_scale, guidance_interval=guidance_interval, shift=shift,
            generator=generator, latents=latents, output_type=output_type, return_dict=return_dict,
            attention_kwargs=attention_kwargs, callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
        )  # fmt: skip
