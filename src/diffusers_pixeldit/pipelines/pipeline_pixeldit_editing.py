# Copyright 2026 The diffusers-pixeldit authors. Licensed under the Apache License, Version 2.0.
"""Image-to-image and inpainting with the class-conditional PixelDiT."""

from .editing import ClassConditionalImg2ImgMixin, ClassConditionalInpaintMixin
from .pipeline_pixeldit import PixelDiTPipeline


class PixelDiTImg2ImgPipeline(ClassConditionalImg2ImgMixin, PixelDiTPipeline):
    r"""
    Class-conditional image-to-image with PixelDiT, directly in pixel space: sampling starts from the input image
    itself, noised to the σ that `strength` chooses. Takes the components and config of [`PixelDiTPipeline`]
    (`PixelDiTImg2ImgPipeline.from_pipe(pipe)` shares them).
    """


class PixelDiTInpaintPipeline(ClassConditionalInpaintMixin, PixelDiTPipeline):
    r"""
    Class-conditional inpainting with PixelDiT, directly in pixel space: after every step the region the mask
    keeps is the input image noised at the next step's σ, and the output equals the input there exactly (no VAE
    round trip). Takes the components and config of [`PixelDiTPipeline`] (`PixelDiTInpaintPipeline.from_pipe(pipe)`
    shares them).
    """
