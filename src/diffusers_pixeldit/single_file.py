# Copyright 2026 The diffusers-pixeldit authors. Licensed under the Apache License, Version 2.0.
"""`from_single_file` for the PixelDiT models and pipelines: an official checkpoint (a local file, a Hub file link or
a repo id with `weight_name`), converted in memory by the converter's rules (`conversion.py`).

diffusers' `FromOriginalModelMixin` / `FromSingleFileMixin` only load classes registered inside diffusers; these two
mixins give ours the same call: `PixelDiTPipeline.from_single_file("https://huggingface.co/<repo>/blob/main/<file>")`.
"""

from pathlib import Path
from typing import Any

import torch
from diffusers import PipelineQuantizationConfig
from diffusers.utils import logging
from huggingface_hub.utils import validate_hf_hub_args


logger = logging.get_logger(__name__)

# Where the checkpoint comes from (see `resolve_checkpoint_file`).
DOWNLOAD_OPTIONS = (
    "weight_name", "subfolder", "cache_dir", "force_download", "proxies", "local_files_only", "token", "revision",
)  # fmt: skip
# How it is read and converted (see `load_official_checkpoint`, `official_components`).
READ_OPTIONS = ("weights", "trust_pickle")
MODEL_OPTIONS = ("preset", "num_attention_heads", "resolution", "in_context_start", "silu_conditioning", "noise_scale")
RECIPE_OPTIONS = ("num_inference_steps", "guidance_scale", "guidance_interval", "shift", "sampler")
KIND_CLASSES = {
    "c2i": ("PixelDiTTransformer2DModel", "PixelDiTPipeline"),
    "t2i": ("PixelDiTTransformer2DModel", "PixelDiTT2IPipeline"),
    "pixeldit2": ("PixelDiT2Transformer2DModel", "PixelDiT2Pipeline"),
}
_DOCUMENTED_OPTIONS = """
            pretrained_model_link_or_path_or_dict (`str`, `os.PathLike` or `dict`): an official checkpoint
                (`.ckpt`, `.pth`, `.bin`, `.safetensors`, or `.gguf` with GGUF-quantized or plain tensors in the
                official layout): a local file, a Hub file link
                (`https://huggingface.co/<repo_id>/blob/main/<file>`), a repo id with `weight_name`, or a checkpoint
                already loaded (a dict).
            weight_name, subfolder, revision, cache_dir, force_download, proxies, local_files_only, token: where and
                how the Hub file is downloaded and cached (`huggingface_hub.hf_hub_download`; `HF_HUB_OFFLINE=1`
                reads the cache only).
            weights (`str`, defaults to `"ema"`): `"ema"` or `"raw"`, the weight set of a checkpoint holding both.
            trust_pickle (`bool`, defaults to False): pickles load with `torch.load(weights_only=True)`; one that
                needs arbitrary unpickling (it can run code) is refused unless True.
            dtype / torch_dtype (`torch.dtype`, *optional*): as in `from_pretrained`: the weights in this dtype,
                `_keep_in_fp32_modules` in float32.
            device (`str` or `torch.device`, *optional*): where the weights go (default CPU).
            quantization_config (*optional*): the transformer's weights quantized as they load, as in
                `from_pretrained`: a diffusers config (`TorchAoConfig`, `BitsAndBytesConfig`,
                `GGUFQuantizationConfig` — which GGUF files need) for the model; a `PipelineQuantizationConfig` for
                a pipeline (its `transformer` entry, and `text_encoder` for a text encoder given as a path or id).
            preset, num_attention_heads: checked against the architecture the tensors give.
            resolution (`int`, *optional*): default image side (`sample_size`); the file name's by default.
            in_context_start, silu_conditioning, noise_scale: PixelDiT2 settings the tensors do not hold (the
                release file names give them)."""


def _cast_like_from_pretrained(model: torch.nn.Module, dtype: torch.dtype | None) -> None:
    """Casts floating-point weights to `dtype` as `from_pretrained(dtype=...)` loads them: the parameters under the
    model's `_keep_in_fp32_modules` (by module name) in float32, the others in `dtype`."""
    if dtype is None:
        return
    keep = getattr(model, "_keep_in_fp32_modules", None) or []
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.is_floating_point():
            tensor.data = tensor.data.to(torch.float32 if any(m in name.split(".") for m in keep) else dtype)


def _pop_options(kwargs: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    return {name: kwargs.pop(name) for name in names if name in kwargs}


def _read_official_checkpoint(
    cls: type, link_or_path_or_dict, kinds: tuple[str, ...], class_index: int, kwargs: dict[str, Any]
) -> tuple[dict[str, torch.Tensor], str, str]:
    """(bare official state dict, kind, file name) of a `from_single_file` source; `kwargs` loses the download and
    read options. Raises a `ValueError` naming the class to use when the checkpoint is of another kind."""
    from .conversion import load_official_checkpoint, official_state_dict_from_checkpoint, resolve_checkpoint_file

    download = _pop_options(kwargs, DOWNLOAD_OPTIONS)
    read = _pop_options(kwargs, READ_OPTIONS)
    if isinstance(link_or_path_or_dict, dict):
        if download:
            raise ValueError(f"{sorted(download)} do not apply to a checkpoint given as a dict.")
        state_dict, kind = official_state_dict_from_checkpoint(
            link_or_path_or_dict, read.get("weights", "ema"), "The checkpoint dict"
        )
        file_name = ""
    else:
        path = resolve_checkpoint_file(link_or_path_or_dict, **download)
        state_dict, kind = load_official_checkpoint(path, read.get("weights", "ema"), read.get("trust_pickle", False))
        file_name = Path(path).name
    if kind not in kinds:
        raise ValueError(
            f"{file_name or 'The checkpoint'} is an official {kind} checkpoint: load it with "
            f"{KIND_CLASSES[kind][class_index]}.from_single_file, not {cls.__name__}."
        )
    return state_dict, kind, file_name


def _check_no_options_left(cls: type, kwargs: dict[str, Any]) -> None:
    if kwargs:
        raise ValueError(
            f"{cls.__name__}.from_single_file got options it does not take: {sorted(kwargs)} (the architecture comes "
            "from the checkpoint's tensors; `config`/`original_config` do not apply)."
        )


def _conversion_options(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The `official_components` keyword arguments among a `from_single_file` call's options (popped)."""
    model = _pop_options(kwargs, MODEL_OPTIONS)
    return {
        "preset": model.pop("preset", None),
        "num_attention_heads": model.pop("num_attention_heads", None),
        "resolution": model.pop("resolution", None),
        "transformer_overrides": model,
        "recipe_overrides": _pop_options(kwargs, RECIPE_OPTIONS),
    }


def _pop_dtype(kwargs: dict[str, Any]) -> torch.dtype | None:
    dtype = kwargs.pop("dtype", None)
    torch_dtype = kwargs.pop("torch_dtype", None)
    dtype = dtype if dtype is not None else torch_dtype
    if dtype is not None and not isinstance(dtype, torch.dtype):
        raise ValueError(f"`dtype` must be a torch.dtype, got {dtype!r}.")
    return dtype


class FromOfficialModelMixin:
    """`from_single_file` for a PixelDiT transformer: an official checkpoint → the model, as
    `scripts/convert_checkpoint.py` followed by `from_pretrained` would give it."""

    # The official checkpoint kinds (`load_official_checkpoint`) this class loads.
    _single_file_kinds: tuple[str, ...] = ()

    @classmethod
    @validate_hf_hub_args
    def from_single_file(cls, pretrained_model_link_or_path_or_dict, **kwargs):
        """Instantiates the transformer (eval mode) from an official checkpoint, converted in memory: the architecture
        is read from the tensors, the EMA weights used by default, training-only tensors (and a PixelDiT2 checkpoint's
        grounding encoder) dropped; the default `sample_size` (and PixelDiT2's `silu_conditioning` / `noise_scale`)
        follow the release's model card for release file names.

        Args:{options}

        Raises:
            FileNotFoundError, OSError: no such file, or the Hub file cannot be had.
            ValueError: one message for an unreadable, unsafe or foreign file, a checkpoint of another model, or
                options that contradict the tensors.

        Example:
            ```py
            >>> from diffusers_pixeldit import PixelDiTTransformer2DModel

            >>> url = "https://huggingface.co/nvidia/PixelDiT-ImageNet/blob/main/imagenet256_pixeldit_xl_epoch320.ckpt"
            >>> transformer = PixelDiTTransformer2DModel.from_single_file(url, dtype=torch.bfloat16)
            ```
        """
        kwargs = dict(kwargs)
        state_dict, kind, file_name = _read_official_checkpoint(
            cls, pretrained_model_link_or_path_or_dict, cls._single_file_kinds, 0, kwargs
        )
        dtype, device = _pop_dtype(kwargs), kwargs.pop("device", None)
        quantization_config = kwargs.pop("quantization_config", None)
        if isinstance(quantization_config, PipelineQuantizationConfig):
            raise ValueError(
                f"{cls.__name__}.from_single_file takes the model's own quantization config (e.g. TorchAoConfig); "
                "a PipelineQuantizationConfig is for pipelines."
            )
        options = _conversion_options(kwargs)
        options.pop("recipe_overrides")
        _check_no_options_left(cls, kwargs)
        transformer = _official_transformer(state_dict, kind, file_name, options, dtype, quantization_config)
        return transformer.to(device) if device is not None else transformer

    from_single_file.__func__.__doc__ = from_single_file.__func__.__doc__.format(options=_DOCUMENTED_OPTIONS)


class FromOfficialSingleFileMixin:
    """`from_single_file` for a PixelDiT pipeline: an official checkpoint → the pipeline, as
    `scripts/convert_checkpoint.py` followed by `from_pretrained` would give it."""

    _single_file_kinds: tuple[str, ...] = ()

    @classmethod
    @validate_hf_hub_args
    def from_single_file(cls, pretrained_model_link_or_path_or_dict, **kwargs):
        """Instantiates the pipeline from an official checkpoint, converted in memory: the transformer as
        `from_single_file` of its model class gives it, the scheduler and defaults of the release model card's
        sampling recipe (chosen from the file name), each entry of which may be overridden.

        Args:{options}
            num_inference_steps, guidance_scale, guidance_interval, shift, sampler: the recipe entries to override
                (`sampler`: `"adams_bashforth"`, `"euler"`, `"heun"` or `"dpmsolver++"`).
            text_encoder, tokenizer (text-to-image): the components, or a transformers folder / Hub id for
                `text_encoder` (its tokenizer comes with it); without them the pipeline takes `prompt_embeds`.
            grounding_encoder (PixelDiT2, when the checkpoint does not hold it): a `transformers.DINOv3ViTModel`, a
                transformers folder / Hub id, or a timm DINOv3 `.safetensors` file; `grounding_encoder_heads` gives
                the heads of timm weights (default width / 64).
            Other keyword arguments (`scheduler`, `id2label`, `complex_human_instruction`, ...) go to the
            pipeline's `__init__`, replacing what the conversion gives.

        Raises:
            FileNotFoundError, OSError, ValueError: as the model's `from_single_file`, and for a missing or
                mismatched grounding encoder or text encoder.

        Example:
            ```py
            >>> from diffusers_pixeldit import PixelDiTPipeline

            >>> pipe = PixelDiTPipeline.from_single_file(
            ...     "https://huggingface.co/nvidia/PixelDiT-ImageNet/blob/main/imagenet256_pixeldit_xl_epoch320.ckpt"
            ... )
            >>> image = pipe(class_labels=[207]).images[0]
            ```
        """
        from .conversion import load_text_components, official_components

        kwargs = dict(kwargs)
        state_dict, kind, file_name = _read_official_checkpoint(
            cls, pretrained_model_link_or_path_or_dict, cls._single_file_kinds, 1, kwargs
        )
        dtype = _pop_dtype(kwargs)
        device = kwargs.pop("device", None)
        quantization_config = kwargs.pop("quantization_config", None)
        if quantization_config is not None and not isinstance(quantization_config, PipelineQuantizationConfig):
            raise ValueError(
                f"{cls.__name__}.from_single_file takes a diffusers PipelineQuantizationConfig (as from_pretrained), "
                f"got {type(quantization_config).__name__}."
            )
        options = _conversion_options(kwargs)
        if kind == "pixeldit2":
            options["grounding_encoder"] = kwargs.pop("grounding_encoder", None)
            options["grounding_encoder_heads"] = kwargs.pop("grounding_encoder_heads", None)
        text_encoder, tokenizer = kwargs.pop("text_encoder", None), kwargs.pop("tokenizer", None)
        if kind != "t2i" and (text_encoder is not None or tokenizer is not None):
            raise ValueError(f"text_encoder / tokenizer are for text-to-image checkpoints; this one is {kind}.")
        init_parameters = set(cls._get_signature_keys(cls)[0]) | set(cls._get_signature_keys(cls)[1])
        _check_no_options_left(cls, {k: v for k, v in kwargs.items() if k not in init_parameters})

        transformer_quantization = text_encoder_quantization = None
        if quantization_config is not None:
            transformer_quantization = quantization_config._resolve_quant_config(True, "transformer")
            text_encoder_quantization = quantization_config._resolve_quant_config(False, "text_encoder")
            if text_encoder_quantization is not None and not isinstance(text_encoder, (str, Path)):
                raise ValueError(
                    "The quantization config names the text encoder, which is quantized as it loads: give "
                    "text_encoder= as a folder or Hub id (or quantize the component you pass yourself)."
                )
        if transformer_quantization is not None:  # the unquantized weights load in `dtype` (else cast below)
            options.update(dtype=dtype, quantization_config=transformer_quantization)
        components = official_components(state_dict, kind, file_name, **options)
        if transformer_quantization is None:
            _cast_like_from_pretrained(components.transformer, dtype)
        components = components._replace(grounding_encoder=_cast(components.grounding_encoder, dtype))
        if isinstance(text_encoder, (str, Path)):
            loaded_tokenizer, text_encoder = load_text_components(
                text_encoder, components.transformer.config.text_embed_dim, dtype, text_encoder_quantization
            )
            tokenizer = tokenizer if tokenizer is not None else loaded_tokenizer
        pipe = official_pipeline(components, cls, tokenizer, _cast(text_encoder, dtype), **kwargs)
        return pipe.to(device) if device is not None else pipe

    from_single_file.__func__.__doc__ = from_single_file.__func__.__doc__.format(options=_DOCUMENTED_OPTIONS)


def _official_transformer(state_dict, kind: str, file_name: str, options: dict, dtype, quantization_config):
    """The converted transformer of `from_single_file`: in `dtype` as `from_pretrained(dtype=)` loads it, or
    quantized by `quantization_config` as it loads."""
    from .conversion import official_transformer

    if quantization_config is not None:
        options = {**options, "dtype": dtype, "quantization_config": quantization_config}
    transformer, _, _ = official_transformer(state_dict, kind, file_name, **options)
    if quantization_config is None:
        _cast_like_from_pretrained(transformer, dtype)
    return transformer


def _cast(module, dtype: torch.dtype | None):
    """A transformers component in `dtype` (None: as it is)."""
    return module if module is None or dtype is None else module.to(dtype)


def official_pipeline(components, pipeline_class: type | None = None, tokenizer=None, text_encoder=None, **kwargs):
    """The pipeline of an `official_components(...)` result: `pipeline_class` (default: its kind's) with the converted
    transformer, the recipe's scheduler and defaults, and the encoders (`tokenizer`/`text_encoder`: text-to-image);
    `kwargs` go to the pipeline's `__init__` and replace those."""
    if pipeline_class is None:
        from . import pipelines

        pipeline_class = getattr(pipelines, KIND_CLASSES[components.kind][1])
    parts = {"transformer": components.transformer, "scheduler": components.scheduler}
    if components.kind == "pixeldit2":
        parts["grounding_encoder"] = components.grounding_encoder
    elif components.kind == "t2i":
        parts.update(tokenizer=tokenizer, text_encoder=text_encoder)
    return pipeline_class(**{**parts, **components.pipeline_defaults, **kwargs})
