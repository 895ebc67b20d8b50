# Copyright 2026 The diffusers-pixeldit authors. Licensed under the Apache License, Version 2.0.
"""Text-to-image PixelDiT pipeline (PixelDiT-1300M release)."""

from typing import Any

import torch
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.pipeline_utils import DiffusionPipeline, ImagePipelineOutput
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import replace_example_docstring

from ..models import PixelDiTTransformer2DModel
from ..models.transformer_pixeldit import RELEASE_MAX_TEXT_LENGTH
from ..single_file import FromOfficialSingleFileMixin
from .denoising import (
    ModelInputs,
    PixelDiTDenoisingMixin,
    StepEndCallback,
    check_guidance_interval,
    document_sampling_arguments,
)
from .lora import PixelDiTLoraLoaderMixin


EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> import torch
        >>> from diffusers_pixeldit import PixelDiTT2IPipeline

        >>> pipe = PixelDiTT2IPipeline.from_pretrained("path/to/pixeldit-t2i-1024", dtype=torch.bfloat16)
        >>> image = pipe("a cat holding a sign that says PixelDiT", negative_prompt="").images[0]
        ```
"""

# The complex human instruction of the release config (`text_encoder.chi_prompt`). It differs from diffusers'
# SanaPipeline default: the first line quotes "Enhanced prompt" with double quotes.
PIXELDIT_COMPLEX_HUMAN_INSTRUCTION = [
    'Given a user prompt, generate an "Enhanced prompt" that provides detailed visual descriptions suitable for image '
    "generation. Evaluate the level of detail in the user prompt:",
    "- If the prompt is simple, focus on adding specifics about colors, shapes, sizes, textures, and spatial "
    "relationships to create vivid and concrete scenes.",
    "- If the prompt is already detailed, refine and enhance the existing details slightly without overcomplicating.",
    "Here are examples of how to transform or refine prompts:",
    "- User Prompt: A cat sleeping -> Enhanced: A small, fluffy white cat curled up in a round shape, sleeping "
    "peacefully on a warm sunny windowsill, surrounded by pots of blooming red flowers.",
    "- User Prompt: A busy city street -> Enhanced: A bustling city street scene at dusk, featuring glowing street "
    "lamps, a diverse crowd of people in colorful clothing, and a double-decker bus passing by towering glass "
    "skyscrapers.",
    "Please generate only the enhanced description for the prompt below and avoid including any additional "
    "commentary or evaluations:",
    "User Prompt: ",
]


def clean_prompt(prompt: str) -> str:
    """As the release's inference: text from a `--aspect_ratio`, `--ar` or `--hw` size hint on is cut off, and the
    prompt is stripped (not lowercased)."""
    for hint in ("--aspect_ratio", "--ar", "--hw"):
        prompt = prompt.split(hint)[0]
    return prompt.strip()


class PixelDiTT2IPipeline(
    DiffusionPipeline, PixelDiTDenoisingMixin, PixelDiTLoraLoaderMixin, FromOfficialSingleFileMixin
):
    r"""
    Text-to-image generation with PixelDiT, directly in pixel space.

    Args:
        tokenizer (`PreTrainedTokenizerBase`): tokenizer of the text encoder (prompts are always padded on the
            right, as the release encodes them, whatever the tokenizer's own `padding_side`).
        text_encoder (`PreTrainedModel`): a transformers text encoder whose output width is the transformer's
            `text_embed_dim` (the release uses the Gemma-2-2B-it decoder); its last hidden states are used.
        transformer ([`PixelDiTTransformer2DModel`]): a text-conditional PixelDiT.
        scheduler ([`SchedulerMixin`]): a flow-matching scheduler; the release's sampler is
            `release_dpm_solver_scheduler(flow_shift)` (`DPMSolverMultistepScheduler` with
            `T2I_RELEASE_DPM_SOLVER_CONFIG`).
        default_num_inference_steps, default_guidance_scale, default_guidance_interval: the sampling recipe used when
            a call does not give them.
        complex_human_instruction (`list[str]`, *optional*): the instruction lines prefixed to every prompt, as the
            model was trained (the release's by default; `None` or `[]` for none).
    """

    _single_file_kinds = ("t2i",)
    model_cpu_offload_seq = "text_encoder->transformer"
    _optional_components = ["tokenizer", "text_encoder"]
    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds"]

    def __init__(
        self,
        tokenizer,
        text_encoder,
        transformer: PixelDiTTransformer2DModel,
        scheduler: SchedulerMixin,
        default_num_inference_steps: int = 50,
        default_guidance_scale: float = 3.5,
        default_guidance_interval: tuple[float, float] | list[float] = (0.0, 1.0),
        complex_human_instruction: list[str] | None = PIXELDIT_COMPLEX_HUMAN_INSTRUCTION,
    ):
        super().__init__()
        self.register_modules(
            tokenizer=tokenizer, text_encoder=text_encoder, transformer=transformer, scheduler=scheduler
        )
        self.register_to_config(
            default_num_inference_steps=default_num_inference_steps,
            default_guidance_scale=default_guidance_scale,
            default_guidance_interval=tuple(check_guidance_interval(default_guidance_interval)),
            complex_human_instruction=list(complex_human_instruction or []),
        )
        self.image_processor = VaeImageProcessor(vae_scale_factor=1)

    def _encode_text(self, texts: list[str], max_length: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        # Right padding: the release keeps token 0 and the last tokens of each prompt (see `encode_prompt`).
        tokens = self.tokenizer(
            texts,
            max_length=max_length,
            padding="max_length",
            padding_side="right",
            truncation=True,
            return_tensors="pt",
        ).to(device)
        embeds = self.text_encoder(tokens.input_ids, attention_mask=tokens.attention_mask)[0]
        return embeds, tokens.attention_mask

    def encode_prompt(
        self,
        prompt: str | list[str] | None,
        do_classifier_free_guidance: bool = True,
        negative_prompt: str | list[str] | None = "",
        num_images_per_prompt: int = 1,
        device: torch.device | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        prompt_attention_mask: torch.Tensor | None = None,
        negative_prompt_attention_mask: torch.Tensor | None = None,
        max_sequence_length: int | None = None,
        complex_human_instruction: list[str] | None = None,
    ):
        r"""
        Encodes prompts as the release does.

        The prompt (cleaned by `clean_prompt`) is prefixed with the complex human instruction (CHI) lines joined by
        "\n", tokenised to `len(tokenizer.encode(chi)) + max_sequence_length − 2` tokens (right padding, truncation),
        encoded, and token 0 plus the last `max_sequence_length − 1` tokens are kept. The negative prompt is encoded
        without the CHI, to `max_sequence_length` tokens. The attention masks are returned for completeness; the
        PixelDiT transformer attends to every token, as the official model.

        `max_sequence_length` defaults to the transformer's `max_text_length` (the release's 300 without a
        transformer);
        `complex_human_instruction` to the pipeline config's (pass `[]` for none).

        Returns:
            `prompt_embeds` (B·n, max_sequence_length, width), `prompt_attention_mask`, `negative_prompt_embeds`,
            `negative_prompt_attention_mask` (None without classifier-free guidance).
        """
        device = device or self._execution_device
        max_sequence_length = max_sequence_length or self._default_max_sequence_length
        if complex_human_instruction is None:
            complex_human_instruction = self.config.complex_human_instruction
        needs_text_encoder = prompt_embeds is None or (do_classifier_free_guidance and negative_prompt_embeds is None)
        if needs_text_encoder and (self.tokenizer is None or self.text_encoder is None):
            raise ValueError(
                "This pipeline has no tokenizer/text encoder: pass `prompt_embeds` (and the negative ones)."
            )
        if prompt_embeds is None:
            prompts = [clean_prompt(p) for p in ([prompt] if isinstance(prompt, str) else prompt)]
            max_length = max_sequence_length
            if complex_human_instruction:
                instruction = "\n".join(complex_human_instruction)
                prompts = [instruction + p for p in prompts]
                max_length = len(self.tokenizer.encode(instruction)) + max_sequence_length - 2
            embeds, mask = self._encode_text(prompts, max_length, device)
            select_index = [0] + list(range(-max_sequence_length + 1, 0))
            prompt_embeds, prompt_attention_mask = embeds[:, select_index], mask[:, select_index]
        batch_size = prompt_embeds.shape[0]
        prompt_embeds = prompt_embeds.repeat_interleave(num_images_per_prompt, dim=0)
        prompt_attention_mask = prompt_attention_mask.repeat_interleave(num_images_per_prompt, dim=0)

        if do_classifier_free_guidance and negative_prompt_embeds is None:
            negative_prompt = negative_prompt or ""
            negative_prompts = [negative_prompt] * batch_size if isinstance(negative_prompt, str) else negative_prompt
            if len(negative_prompts) != batch_size:
                raise ValueError(f"{len(negative_prompts)} negative prompts were given for {batch_size} prompts.")
            negative_prompt_embeds, negative_prompt_attention_mask = self._encode_text(
                negative_prompts, max_sequence_length, device
            )
        if do_classifier_free_guidance:
            negative_prompt_embeds = negative_prompt_embeds.repeat_interleave(num_images_per_prompt, dim=0)
            negative_prompt_attention_mask = negative_prompt_attention_mask.repeat_interleave(
                num_images_per_prompt, dim=0
            )
        else:
            negative_prompt_embeds = negative_prompt_attention_mask = None
        return prompt_embeds, prompt_attention_mask, negative_prompt_embeds, negative_prompt_attention_mask

    @property
    def _default_max_sequence_length(self) -> int:
        return self.transformer.config.max_text_length if self.transformer is not None else RELEASE_MAX_TEXT_LENGTH

    def check_inputs(
        self,
        prompt,
        negative_prompt,
        prompt_embeds,
        negative_prompt_embeds,
        prompt_attention_mask,
        negative_prompt_attention_mask,
    ):
        if (prompt is None) == (prompt_embeds is None):
            raise ValueError("Pass exactly one of `prompt` and `prompt_embeds`.")
        if prompt is not None and not isinstance(prompt, (str, list)):
            raise ValueError(f"`prompt` must be a string or a list of strings, got {type(prompt)}.")
        if negative_prompt_embeds is not None and (prompt is not None or negative_prompt is not None):
            raise ValueError("`negative_prompt_embeds` goes with `prompt_embeds`, and with `negative_prompt=None`.")
        if prompt_embeds is not None and prompt_attention_mask is None:
            raise ValueError("`prompt_embeds` needs its `prompt_attention_mask`.")
        if negative_prompt_embeds is not None and negative_prompt_attention_mask is None:
            raise ValueError("`negative_prompt_embeds` needs its `negative_prompt_attention_mask`.")
        if prompt_embeds is not None and negative_prompt_embeds is not None:
            if prompt_embeds.shape != negative_prompt_embeds.shape:
                raise ValueError(
                    f"`prompt_embeds` {tuple(prompt_embeds.shape)} and `negative_prompt_embeds` "
                    f"{tuple(negative_prompt_embeds.shape)} must have the same shape."
                )
            if prompt_attention_mask.shape != negative_prompt_attention_mask.shape:
                raise ValueError(
                    "`prompt_attention_mask` and `negative_prompt_attention_mask` must have the same shape."
                )

    def _prompt_conditioning(
        self,
        prompt,
        negative_prompt,
        num_images_per_prompt,
        device,
        prompt_embeds,
        prompt_attention_mask,
        negative_prompt_embeds,
        negative_prompt_attention_mask,
        max_sequence_length,
        complex_human_instruction,
    ) -> tuple[dict[str, torch.Tensor], ModelInputs]:
        """The loop's state (the prompt embeddings, `num_images_per_prompt` per prompt, without latents) and its
        `model_inputs`, from `encode_prompt`."""
        prompt_embeds, prompt_attention_mask, negative_prompt_embeds, negative_prompt_attention_mask = (
            self.encode_prompt(
                prompt,
                self.do_classifier_free_guidance,
                negative_prompt=negative_prompt,
                num_images_per_prompt=num_images_per_prompt,
                device=device,
                prompt_embeds=prompt_embeds,
                negative_prompt_embeds=negative_prompt_embeds,
                prompt_attention_mask=prompt_attention_mask,
                negative_prompt_attention_mask=negative_prompt_attention_mask,
                max_sequence_length=max_sequence_length,
                complex_human_instruction=complex_human_instruction,
            )
        )
        model_dtype = self.transformer.dtype

        def model_inputs(state, guided):
            embeds = state["prompt_embeds"]
            if guided:
                embeds = torch.cat([state["negative_prompt_embeds"], embeds])
            return {"encoder_hidden_states": embeds.to(model_dtype)}

        return {"prompt_embeds": prompt_embeds, "negative_prompt_embeds": negative_prompt_embeds}, model_inputs

    @torch.no_grad()
    @replace_example_docstring(EXAMPLE_DOC_STRING)
    @document_sampling_arguments
    def __call__(
        self,
        prompt: str | list[str] | None = None,
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
        Generates images from text.

        Args:
            prompt (`str` or `list[str]`, *optional*): the prompts (or pass `prompt_embeds`).
            negative_prompt (`str` or `list[str]`, defaults to `""`): the unconditional branch's prompt.
            prompt_embeds, prompt_attention_mask, negative_prompt_embeds, negative_prompt_attention_mask
                (`torch.Tensor`, *optional*): pre-computed `encode_prompt` outputs.
            max_sequence_length (`int`, *optional*): text tokens per prompt; defaults to the transformer's
                `max_text_length` (300 for the release).
            complex_human_instruction (`list[str]`, *optional*): the instruction prefix lines; defaults to the
                pipeline config's (the release's), `[]` disables it.
            {sampling_arguments}

        Examples:

        Returns:
            [`~pipelines.ImagePipelineOutput`] or `tuple`: the images, `num_images_per_prompt` per prompt.
        """
        height, width, num_inference_steps, guidance_interval = self.sampling_arguments(
            height, width, num_inference_steps, guidance_interval, callback_on_step_end_tensor_inputs
        )
        self.check_inputs(
            prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, prompt_attention_mask,
            negative_prompt_attention_mask,
        )  # fmt: skip
        self._start_call(guidance_scale, attention_kwargs)
        device = self._execution_device

        state, model_inputs = self._prompt_conditioning(
            prompt, negative_prompt, num_images_per_prompt, device, prompt_embeds, prompt_attention_mask,
            negative_prompt_embeds, negative_prompt_attention_mask, max_sequence_length, complex_human_instruction,
        )  # fmt: skip
        state["latents"] = self.prepare_latents(
            state["prompt_embeds"].shape[0], height, width, device, generator, latents
        )
        latents = self.denoise(
            state, model_inputs, device, num_inference_steps, guidance_interval, sigmas, shift,
            callback_on_step_end, callback_on_step_end_tensor_inputs,
        )  # fmt: skip
        return self.postprocess(latents, output_type, return_dict)
