# Copyright 2026 The diffusers-pixeldit authors. Licensed under the Apache License, Version 2.0.
"""Text-to-image PixelDiT pipeline (PixelDiT-1300M release)."""

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


class PixelDiTT2IPipeline(DiffusionPipeline):
    r"""
    Text-to-image generation with PixelDiT, directly in pixel space.

    Args:
        tokenizer (`PreTrainedTokenizerBase`): tokenizer of the text encoder (padding on the right).
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
        tokens = self.tokenizer(
            texts, max_length=max_length, padding="max_length", truncation=True, return_tensors="pt"
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

        `max_sequence_length` defaults to the transformer's `max_text_length` (300 without a transformer);
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
        return self.transformer.config.max_text_length if self.transformer is not None else 300

    def check_inputs(
        self,
        prompt,
        height,
        width,
        guidance_interval,
        negative_prompt,
        callback_on_step_end_tensor_inputs,
        prompt_embeds,
        negative_prompt_embeds,
        prompt_attention_mask,
        negative_prompt_attention_mask,
    ):
        patch_size = self.transformer.config.patch_size
        if height % patch_size or width % patch_size:
            raise ValueError(
                f"`height` and `width` must be multiples of the patch size {patch_size}, got {height}x{width}."
            )
        check_guidance_interval(guidance_interval)
        unknown = [k for k in callback_on_step_end_tensor_inputs or [] if k not in self._callback_tensor_inputs]
        if unknown:
            raise ValueError(f"Callback tensor inputs {unknown} are not in {self._callback_tensor_inputs}.")
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
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = "",
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
        prompt_embeds: torch.Tensor | None = None,
        prompt_attention_mask: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        negative_prompt_attention_mask: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        attention_kwargs: dict[str, Any] | None = None,
        callback_on_step_end: Callable[[int, int, dict], None]
        | PipelineCallback
        | MultiPipelineCallbacks
        | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],
        max_sequence_length: int | None = None,
        complex_human_instruction: list[str] | None = None,
    ) -> ImagePipelineOutput | tuple:
        r"""
        Generates images from text.

        Args:
            prompt (`str` or `list[str]`, *optional*): the prompts (or pass `prompt_embeds`).
            negative_prompt (`str` or `list[str]`, defaults to `""`): the unconditional branch's prompt.
            height (`int`, *optional*), width (`int`, *optional*): image size in pixels, multiples of the patch size;
                default `transformer.config.sample_size`.
            num_inference_steps (`int`, *optional*): number of sampling steps; default from the pipeline config.
            sigmas (`list[float]`, *optional*): custom unshifted noise levels, for schedulers that accept them.
            guidance_scale (`float`, *optional*): classifier-free guidance scale; default from the pipeline config.
            guidance_interval (`tuple[float, float]`, *optional*): `(low, high)` in the model-card time t = 1 − σ
                (0 = noise, 1 = image): guidance applies while `low < t < high`; outside it only the conditional
                branch runs. Default from the pipeline config.
            shift (`float`, *optional*): timeshift (flow shift) for this call.
            num_images_per_prompt (`int`, defaults to 1): images per prompt.
            generator (`torch.Generator` or a list, one per image, *optional*): for reproducible noise.
            latents (`torch.Tensor` of shape `(B, C, H, W)`, *optional*): the initial noise.
            prompt_embeds, prompt_attention_mask, negative_prompt_embeds, negative_prompt_attention_mask
                (`torch.Tensor`, *optional*): pre-computed `encode_prompt` outputs.
            output_type (`str`, defaults to `"pil"`): `"pil"`, `"np"` or `"pt"` (in [0, 1]), or `"latent"` (the
                raw [-1, 1] pixels).
            return_dict (`bool`, defaults to True): return an `ImagePipelineOutput` instead of a tuple.
            attention_kwargs (`dict`, *optional*): passed to the transformer (e.g. `{"scale": 0.5}` for LoRA).
            callback_on_step_end (`Callable`, *optional*): called after each step as
                `callback_on_step_end(self, i, t, callback_kwargs)`; tensors it returns replace the pipeline's.
            callback_on_step_end_tensor_inputs (`list[str]`, defaults to `["latents"]`): tensors passed to it.
            max_sequence_length (`int`, *optional*): text tokens per prompt; defaults to the transformer's
                `max_text_length` (300 for the release).
            complex_human_instruction (`list[str]`, *optional*): the instruction prefix lines; defaults to the
                pipeline config's (the release's), `[]` disables it.

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
        self.check_inputs(
            prompt, height, width, guidance_interval, negative_prompt, callback_on_step_end_tensor_inputs,
            prompt_embeds, negative_prompt_embeds, prompt_attention_mask, negative_prompt_attention_mask,
        )  # fmt: skip
        self._guidance_scale = self.config.default_guidance_scale if guidance_scale is None else guidance_scale
        self._attention_kwargs = attention_kwargs
        self._interrupt = False
        device = self._execution_device

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
        batch_size = prompt_embeds.shape[0]
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
                context = torch.cat([negative_prompt_embeds, prompt_embeds]) if guided else prompt_embeds
                timestep = (sigma * scheduler.config.num_train_timesteps).float().expand(model_input.shape[0])
                velocity = self.transformer(
                    hidden_states=model_input.to(model_dtype),
                    timestep=timestep.to(device),
                    encoder_hidden_states=context.to(model_dtype),
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
                    prompt_embeds = callback_outputs.pop("prompt_embeds", prompt_embeds)
                    negative_prompt_embeds = callback_outputs.pop("negative_prompt_embeds", negative_prompt_embeds)

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
