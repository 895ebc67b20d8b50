from .class_conditional import imagenet_id2label
from .lora import PixelDiTLoraLoaderMixin
from .pipeline_pixeldit import PixelDiTPipeline
from .pipeline_pixeldit2 import PixelDiT2Pipeline
from .pipeline_pixeldit2_editing import PixelDiT2Img2ImgPipeline, PixelDiT2InpaintPipeline
from .pipeline_pixeldit_editing import PixelDiTImg2ImgPipeline, PixelDiTInpaintPipeline
from .pipeline_pixeldit_t2i import PIXELDIT_COMPLEX_HUMAN_INSTRUCTION, PixelDiTT2IPipeline
from .pipeline_pixeldit_t2i_editing import PixelDiTT2IImg2ImgPipeline, PixelDiTT2IInpaintPipeline


__all__ = [
    "PIXELDIT_COMPLEX_HUMAN_INSTRUCTION",
    "PixelDiT2Img2ImgPipeline",
    "PixelDiT2InpaintPipeline",
    "PixelDiT2Pipeline",
    "PixelDiTImg2ImgPipeline",
    "PixelDiTInpaintPipeline",
    "PixelDiTLoraLoaderMixin",
    "PixelDiTPipeline",
    "PixelDiTT2IImg2ImgPipeline",
    "PixelDiTT2IInpaintPipeline",
    "PixelDiTT2IPipeline",
    "imagenet_id2label",
]
