from .transformer_pixeldit import (
    PIXELDIT_PRESETS,
    PixelDiTAttention,
    PixelDiTAttnProcessor,
    PixelDiTTransformer2DModel,
)
from .transformer_pixeldit2 import PIXELDIT2_PRESETS, PixelDiT2Transformer2DModel, encode_grounding


__all__ = [
    "PIXELDIT2_PRESETS",
    "PIXELDIT_PRESETS",
    "PixelDiT2Transformer2DModel",
    "PixelDiTAttention",
    "PixelDiTAttnProcessor",
    "PixelDiTTransformer2DModel",
    "encode_grounding",
]
