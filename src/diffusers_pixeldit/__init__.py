"""diffusers-pixeldit: PixelDiT (pixel-space diffusion transformers) for Hugging Face diffusers."""

# diffusers' loader looks these base-class names up on the library a component comes from.
from diffusers import DiffusionPipeline, ModelMixin, SchedulerMixin  # noqa: F401
from diffusers.pipelines import pipeline_loading_utils

from .caching import (
    calibrate_mag_ratios,
    faster_cache_config,
    mag_cache_config,
    pyramid_attention_broadcast_config,
    whole_step_cache_config,
)
from .conversion import (
    diffusers_to_official_state_dict,
    infer_config_from_official_state_dict,
    load_official_checkpoint,
    official_checkpoint_from_transformer,
    official_to_diffusers_state_dict,
    transformer_from_official_state_dict,
)
from .models import (
    PIXELDIT2_PRESETS,
    PIXELDIT_PRESETS,
    PixelDiT2Transformer2DModel,
    PixelDiTAttention,
    PixelDiTAttnProcessor,
    PixelDiTTransformer2DModel,
    encode_grounding,
)
from .pipelines import (
    PIXELDIT_COMPLEX_HUMAN_INSTRUCTION,
    PixelDiT2Img2ImgPipeline,
    PixelDiT2InpaintPipeline,
    PixelDiT2Pipeline,
    PixelDiTImg2ImgPipeline,
    PixelDiTInpaintPipeline,
    PixelDiTLoraLoaderMixin,
    PixelDiTPipeline,
    PixelDiTT2IImg2ImgPipeline,
    PixelDiTT2IInpaintPipeline,
    PixelDiTT2IPipeline,
    imagenet_id2label,
)
from .schedulers import T2I_RELEASE_DPM_SOLVER_CONFIG, PixelDiTFlowScheduler, release_dpm_solver_scheduler


__version__ = "0.1.0"

# Register this package as a library diffusers loads components from. `save_pretrained` then records our
# components as ["diffusers_pixeldit", "<Class>"], and loading them works for local folders and Hub repo ids alike
# (without it, diffusers 0.42 rejects Hub repos whose model_index.json names a third-party module).
pipeline_loading_utils.LOADABLE_CLASSES.setdefault(
    "diffusers_pixeldit",
    {
        "ModelMixin": ["save_pretrained", "from_pretrained"],
        "SchedulerMixin": ["save_pretrained", "from_pretrained"],
    },
)

__all__ = [
    "PIXELDIT2_PRESETS",
    "PIXELDIT_COMPLEX_HUMAN_INSTRUCTION",
    "PIXELDIT_PRESETS",
    "PixelDiT2Img2ImgPipeline",
    "PixelDiT2InpaintPipeline",
    "PixelDiT2Pipeline",
    "PixelDiT2Transformer2DModel",
    "PixelDiTAttention",
    "PixelDiTAttnProcessor",
    "PixelDiTFlowScheduler",
    "PixelDiTImg2ImgPipeline",
    "PixelDiTInpaintPipeline",
    "PixelDiTLoraLoaderMixin",
    "PixelDiTPipeline",
    "PixelDiTT2IImg2ImgPipeline",
    "PixelDiTT2IInpaintPipeline",
    "PixelDiTT2IPipeline",
    "PixelDiTTransformer2DModel",
    "T2I_RELEASE_DPM_SOLVER_CONFIG",
    "calibrate_mag_ratios",
    "diffusers_to_official_state_dict",
    "encode_grounding",
    "faster_cache_config",
    "imagenet_id2label",
    "infer_config_from_official_state_dict",
    "load_official_checkpoint",
    "mag_cache_config",
    "official_checkpoint_from_transformer",
    "official_to_diffusers_state_dict",
    "pyramid_attention_broadcast_config",
    "release_dpm_solver_scheduler",
    "transformer_from_official_state_dict",
    "whole_step_cache_config",
]
