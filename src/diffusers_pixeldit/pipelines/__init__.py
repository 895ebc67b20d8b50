from .class_conditional import imagenet_id2label
from .lora import PixelDiTLoraLoaderMixin
from .pipeline_pixeldit import PixelDiTPipeline
from .pipeline_pixeldit2 import PixelDiT2Pipeline
from .pipeline_pixeldit_t2i import PIXELDIT_COMPLEX_HUMAN_INSTRUCTION, PixelDiTT2IPipeline


__all__ = [
    "PIXELDIT_COMPLEX_HUMAN_INSTRUCTION",
    "PixelDiT2Pipeline",
    "PixelDiTLoraLoaderMixin",
    "PixelDiTPipeline",
    "PixelDiTT2IPipeline",
    "imagenet_id2label",
]
