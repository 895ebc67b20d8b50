from .transformer_pixeldit import (
    PIXELDIT_PRESETS,
    PixelDiTAttention,
    PixelDiTAttnProcessor,
    PixelDiTTransformer2DModel,
)


__all__ = ["PIXELDIT_PRESETS", "PixelDiTAttention", "PixelDiTAttnProcessor", "PixelDiTTransformer2DModel"]
