"""diffusers-pixeldit: PixelDiT (pixel-space diffusion transformers) for Hugging Face diffusers."""

from .conversion import (
    diffusers_to_official_state_dict,
    infer_config_from_official_state_dict,
    official_to_diffusers_state_dict,
)
from .models import PIXELDIT_PRESETS, PixelDiTAttention, PixelDiTAttnProcessor, PixelDiTTransformer2DModel


__version__ = "0.1.0"

__all__ = [
    "PIXELDIT_PRESETS",
    "PixelDiTAttention",
    "PixelDiTAttnProcessor",
    "PixelDiTTransformer2DModel",
    "diffusers_to_official_state_dict",
    "infer_config_from_official_state_dict",
    "official_to_diffusers_state_dict",
]
