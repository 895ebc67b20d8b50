# Copyright 2026 The diffusers-pixeldit authors. Licensed under the Apache License, Version 2.0.
"""Pipeline-level LoRA for the PixelDiT pipelines: diffusers' transformer-only LoRA loader (as Sana's), reading both
the diffusers layout (`transformer.`-prefixed keys, as `save_lora_weights` writes) and the PEFT one (the
transformer's own module names, as `transformer.save_lora_adapter` and PEFT's `get_peft_model_state_dict` write)."""

import torch
from diffusers.loaders.lora_pipeline import TRANSFORMER_NAME, SanaLoraLoaderMixin


# The key prefix of a `peft.PeftModel`'s saved adapter (`adapter_model.safetensors`).
PEFT_MODEL_PREFIX = "base_model.model."


def to_pipeline_lora_layout(
    state_dict: dict[str, torch.Tensor], metadata: dict | None
) -> tuple[dict[str, torch.Tensor], dict | None]:
    """A LoRA state dict (and its adapter metadata) in the diffusers pipeline layout, keys prefixed `transformer.`: a
    PEFT-layout one gets the prefix (after dropping a `PeftModel`'s `base_model.model.`). Raises a `ValueError` for
    keys of other components (the PixelDiT pipelines load LoRA into the transformer only)."""
    prefix = f"{TRANSFORMER_NAME}."
    prefixed = [key for key in state_dict if key.startswith(prefix)]
    if not prefixed:
        state_dict = {prefix + key.removeprefix(PEFT_MODEL_PREFIX): value for key, value in state_dict.items()}
        metadata = {prefix + key: value for key, value in metadata.items()} if metadata else metadata
    elif len(prefixed) < len(state_dict):
        others = sorted({key.split(".")[0] for key in state_dict if not key.startswith(prefix)})
        raise ValueError(
            f"This LoRA also has weights for {others}; PixelDiT pipelines load LoRA into the transformer only."
        )
    return state_dict, metadata


class PixelDiTLoraLoaderMixin(SanaLoraLoaderMixin):
    r"""
    LoRA for the transformer of [`PixelDiTPipeline`], [`PixelDiTT2IPipeline`] and [`PixelDiT2Pipeline`]:
    `load_lora_weights`, `set_adapters`, `fuse_lora`/`unfuse_lora`, `delete_adapters`, `unload_lora_weights` and
    `save_lora_weights`, as diffusers' transformer-only loaders; the scale of a call is `attention_kwargs={"scale": s}`.
    A checkpoint may be in the diffusers layout (`transformer.`-prefixed keys) or the PEFT one (unprefixed).
    """

    @classmethod
    def lora_state_dict(cls, pretrained_model_name_or_path_or_dict: str | dict[str, torch.Tensor], **kwargs):
        r"""
        The LoRA state dict of a file, folder, Hub repo or dict (see
        [`~loaders.StableDiffusionLoraLoaderMixin.lora_state_dict`] for the loading arguments), in the diffusers
        layout: keys prefixed `transformer.`. With `return_lora_metadata=True`, `(state_dict, metadata)`.
        """
        return_lora_metadata = kwargs.pop("return_lora_metadata", False)
        state_dict, metadata = super().lora_state_dict(
            pretrained_model_name_or_path_or_dict, return_lora_metadata=True, **kwargs
        )
        state_dict, metadata = to_pipeline_lora_layout(state_dict, metadata)
        return (state_dict, metadata) if return_lora_metadata else state_dict
