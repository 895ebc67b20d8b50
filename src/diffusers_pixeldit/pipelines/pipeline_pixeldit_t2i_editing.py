# Copyright 2026 The diffusers-pixeldit authors. Licensed under the Apache License, Version 2.0.
"""Image-to-image and inpainting with the text-to-image PixelDiT."""

from typing import Any

import torch
from diffusers.image_processor import PipelineImageInput
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from diffusers.utils import replace_example_docstring

from .denoising import StepEndCallback, document_sampling_arguments
from .editing import ImageEditingMixin, document_editing_arguments
from .pipeline_pixeldit_t2i import PixelDiTT2IPipeline


EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> import torch
        >>> from diffusers_pixeldit import PixelDiTT2IImg2ImgPipeline, PixelDiTT2IInpaintPipeline, PixelDiTT2IPipeline

        >>> pipe = PixelDiTT2IPipeline.from_pretrained("path/to/pixeldit-t2i-1024", dtype=torch.bfloat16)
        >>> image = pipe("a red fox in the snow").images[0]
        >>> sketch = PixelDiTT2IImg2ImgPipeline.from_pipe(pipe)("a watercolour fox", image=image, strength=0.6)
        >>> mask = torch.zeros(1, 1, 1024, 1024)
        >>> mask[..., 512:, :] = 1  # repaint the lower half
        >>> edited = PixelDiTT2IInpaintPipeline.from_pipe(pipe)("a fox on green grass", image=image, mask_image=mask)
        ```
"""


class PixelDiTT2IEditingMixin(ImageEditingMixin):
    """What the text-to-image image-to-image and inpainting calls share."""

    def _text_edit(
        self,
        prompt,
        negative_prompt,
        num_images_per_prompt,
        prompt_embeds,
        prompt_attention_mask,
        negative_prompt_embeds,
        negative_prompt_attention_mask,
        max_sequence_length,
        complex_human_instruction,
        **edit_arguments,
    ) -> ImagePipelineOutput | tuple:
        self.check_inputs(
            prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, prompt_attention_mask,
            negative_prompt_attention_mask,
        )  # fmt: skip
        num_prompts = prompt_embeds.shape[0] if prompt is None else 1 if isinstance(prompt, str) else len(prompt)

        def conditioning(device):
            return self._prompt_conditioning(
                prompt, negative_prompt, num_images_per_prompt, device, prompt_embeds, prompt_attention_mask,
                negative_prompt_embeds, negative_prompt_attention_mask, max_sequence_length,
                complex_human_instruction,
            )  # fmt: skip

        return self._edit(conditioning, num_prompts, num_images_per_prompt=num_images_per_prompt, **edit_arguments)


class PixelDiTT2IImg2ImgPipeline(PixelDiTT2IEditingMixin, PixelDiTT2IPipeline):
    r"""
    Text-guided image-to-image with PixelDiT, directly in pixel space: sampling starts from the input image itself,
    noised to the σ that `strength` chooses. Takes the components and config of [`PixelDiTT2IPipeline`]
    (`PixelDiTT2IImg2ImgPipeline.from_pipe(pipe)` shares them).
    """

    @torch.no_grad()
    @replace_example_docstring(EXAMPLE_DOC_STRING)
    @document_editing_arguments
    @document_sampling_arguments
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        image: PipelineImageInput = None,
        strength: float = 0.6,
        negative_prompt: str | list[str] | None = "",
        num_inference_steps: int | None = None,
        sigmas: list[float] | None = None,
        guidance_scale: float | None = None,
        guidance_interval: tuple[float, float] | None = None,
        shift: float | None = None,
        num_images_per_prompt: int = 1,
        height: int | None = None,
        width: int | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        prompt_attention_mask: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        negative_prompt_attention_mask: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        attention_kwargs: dict[str, Any] | None = None,
        callback_on_step_end: StepEndCallback | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],
        max_sequence_length: int | None = None,
        complex_human_instruction: list[str] | None = None,
    ) -> ImagePipelineOutput | tuple:
        r"""
        Turns images into images that match the prompts.

        Args:
            prompt (`str` or `list[str]`, *optional*): the prompts (or pass `prompt_embeds`).
            negative_prompt (`str` or `list[str]`, defaults to `""`): the unconditional branch's prompt.
            prompt_embeds, prompt_attention_mask, negative_prompt_embeds, negative_prompt_attention_mask
                (`torch.Tensor`, *optional*): pre-computed `encode_prompt` outputs.
            max_sequence_length, complex_human_instruction: as for [`PixelDiTT2IPipeline`].
            {image_arguments}
            {sampling_arguments}

        Examples:

        Returns:
            [`~pipelines.ImagePipelineOutput`] or `tuple`: the images, `num_images_per_prompt` per prompt.
        """
        return self._text_edit(
            prompt, negative_prompt, num_images_per_prompt, prompt_embeds, prompt_attention_mask,
            negative_prompt_embeds, negative_prompt_attention_mask, max_sequence_length, complex_human_instruction,
            image=image, mask_image=None, strength=strength, padding_mask_crop=None, height=height, width=width,
            num_inference_steps=num_inference_steps, sigmas=sigmas, guidance_scale=guidance_scale,
            guidance_interval=guidance_interval, shift=shift, generator=generator, latents=latents,
            output_type=output_type, return_dict=return_dict, attention_kwargs=attention_kwargs,
            callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
        )  # fmt: skip


class PixelDiTT2IInpaintPipeline(PixelDiTT2IEditingMixin, PixelDiTT2IPipeline):
    r"""
    Text-guided inpainting with PixelDiT, directly in pixel space: after every step the region the mask keeps is
    the input image noised at the next step's σ, and the output equals the input there exactly (no VAE round
    trip). Takes the components and config of [`PixelDiTT2IPipeline`] (`PixelDiTT2IInpaintPipeline.from_pipe(pipe)`
    shares them).
    """

    @torch.no_grad()
    @replace_example_docstring(EXAMPLE_DOC_STRING)
    @document_editing_arguments
    @document_sampling_arguments
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        image: PipelineImageInput = None,
        mask_image: PipelineImageInput = None,
        strength: float = 1.0,
        padding_mask_crop: int | None = None,
        negative_prompt: str | list[str] | None = "",
        num_inference_steps: int | None = None,
        sigmas: list[float] | None = None,
        guidance_scale: float | None = None,
        guidance_interval: tuple[float, float] | None = None,
        shift: float | None = None,
        num_images_per_prompt: int = 1,
        height: int | None = None,
        width: int | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        prompt_attention_mask: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        negative_prompt_attention_mask: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        attention_kwargs: dict[str, Any] | None = None,
        callback_on_step_end: StepEndCallback | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],
        max_sequence_length: int | None = None,
        complex_human_instruction: list[str] | None = None,
    ) -> ImagePipelineOutput | tuple:
        r"""
        Repaints the masked region of images to match the prompts; the rest is kept exactly.

        Args:
            prompt (`str` or `list[str]`, *optional*): the prompts (or pass `prompt_embeds`).
            negative_prompt (`str` or `list[str]`, defaults to `""`): the unconditional branch's prompt.
            prompt_embeds, prompt_attention_mask, negative_prompt_embeds, negative_prompt_attention_mask
                (`torch.Tensor`, *optional*): pre-computed `encode_prompt` outputs.
            max_sequence_length, complex_human_instruction: as for [`PixelDiTT2IPipeline`].
            {image_arguments}
            {mask_arguments}
            {sampling_arguments}

        Examples:

        Returns:
            [`~pipelines.ImagePipelineOutput`] or `tuple`: the images, `num_images_per_prompt` per prompt.
        """
        if mask_image is None:
            raise ValueError("`mask_image` is required (white = repaint).")
        return self._text_edit(
            prompt, negative_prompt, num_images_per_prompt, prompt_embeds, prompt_attention_mask,
            negative_prompt_embeds, negative_prompt_attention_mask, max_sequence_length, complex_human_instruction,
            image=image, mask_image=mask_image, strength=strength, padding_mask_crop=padding_mask_crop,
            height=height, width=width, num_inference_steps=num_inference_steps, sigmas=sigmas,
            guidance_scale=guidance_scale, guidance_interval=guidance_interval, shift=shift, generator=generator,
            latents=latents, output_type=output_type, return_dict=return_dict, attention_kwargs=attention_kwargs,
            callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
        )  # fmt: skip
