# Copyright 2026 The diffusers-pixeldit authors. Licensed under the Apache License, Version 2.0.
"""Image-to-image and inpainting with PixelDiT2 (grounded at every model evaluation, as `PixelDiT2Pipeline`)."""

from .editing import ClassConditionalImg2ImgMixin, ClassConditionalInpaintMixin
from .pipeline_pixeldit2 import PixelDiT2Pipeline


class PixelDiT2Img2ImgPipeline(ClassConditionalImg2ImgMixin, PixelDiT2Pipeline):
    r"""
    Class-conditional image-to-image with PixelDiT2: sampling starts from the input image noised to the σ that
    `strength` chooses; the grounding encoder reads the current state at every evaluation, as in
    [`PixelDiT2Pipeline`], whose components and config it takes (`PixelDiT2Img2ImgPipeline.from_pipe(pipe)`).
    """


class PixelDiT2InpaintPipeline(ClassConditionalInpaintMixin, PixelDiT2Pipeline):
    r"""
    Class-conditional inpainting with PixelDiT2: after every scheduler step (Heun's predictor and corrector alike)
    the region the mask keeps is the input image noised at the next σ, so the grounding encoder sees it there, and
    the output equals the input exactly outside a binary mask. Takes the components and config of
    [`PixelDiT2Pipeline`] (`PixelDiT2InpaintPipeline.from_pipe(pipe)`).
    """
