# Copyright 2026 The diffusers-pixeldit authors. Licensed under the Apache License, Version 2.0.
"""Weights of the official PixelDiT code <-> `PixelDiTTransformer2DModel`.

The official model state dicts (`PixDiT` of the ImageNet release, `PixDiT_T2I` of the text-to-image release) map to
ours by renaming modules, splitting each fused `qkv` projection into `to_q`/`to_k`/`to_v`, and merging a SwiGLU's
`w1` (gate) and `w3` (up) into diffusers' `ff.net.0.proj` (`[w3; w1]`). Both directions only move and concatenate
tensors, so the round trip is bit-exact. `infer_config_from_official_state_dict` reads the architecture from the
tensor shapes.

Checkpoint files (`scripts/convert_checkpoint.py` builds on these): `load_official_checkpoint` reads an official
checkpoint safely and returns the bare model state dict, `transformer_from_official_state_dict` loads it strictly into
a `PixelDiTTransformer2DModel`, `official_checkpoint_from_transformer` goes back to the official layout, and
`official_sampling_recipe` / `sampling_scheduler` give the release model cards' sampling recipes.
"""

import inspect
import math
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, NamedTuple

import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import logging
from safetensors.torch import load_file

from .models import PIXELDIT2_PRESETS, PIXELDIT_PRESETS, PixelDiT2Transformer2DModel, PixelDiTTransformer2DModel
from .models.transformer_pixeldit import swiglu_hidden_dim
from .schedulers import PixelDiTFlowScheduler, release_dpm_solver_scheduler


logger = logging.get_logger(__name__)


class _Rule(NamedTuple):
    """Official module paths <-> our module paths ("#" = block index); 1:1 rename, 1:3 qkv split or 2:1 SwiGLU."""

    official: tuple[str, ...]
    ours: tuple[str, ...]


def _rename(official: str, ours: str) -> _Rule:
    return _Rule((official,), (ours,))


def _attention_rules(official: str, ours: str) -> list[_Rule]:
    """A fused-qkv rotary attention (`official` = e.g. "pixel_blocks.#.attn")."""
    return [
        _Rule((f"{official}.qkv",), tuple(f"{ours}.to_{x}" for x in "qkv")),
        _rename(f"{official}.q_norm", f"{ours}.norm_q"),
        _rename(f"{official}.k_norm", f"{ours}.norm_k"),
        _rename(f"{official}.proj", f"{ours}.to_out.0"),
    ]


def _swiglu_rules(official: str, ours: str) -> list[_Rule]:
    """An official SwiGLU (`w1` gate, `w3` up, `w2` down) <-> diffusers' `FeedForward("swiglu")`."""
    return [
        _Rule((f"{official}.w1", f"{official}.w3"), (f"{ours}.net.0.proj",)),
        _rename(f"{official}.w2", f"{ours}.net.2"),
    ]


def _dit_block_rules(official: str, ours: str, modulation: str) -> list[_Rule]:
    """An adaLN DiT block with RMSNorms, rotary attention and a SwiGLU; `modulation` is the adaLN linear's name."""
    return [
        _rename(f"{official}.{modulation}", f"{ours}.adaln_modulation"),
        _rename(f"{official}.norm1", f"{ours}.norm1"),
        _rename(f"{official}.norm2", f"{ours}.norm2"),
        *_attention_rules(f"{official}.attn", f"{ours}.attn"),
        *_swiglu_rules(f"{official}.mlp", f"{ours}.ff"),
    ]


_TIME_EMBED_RULES = [
    _rename("t_embedder.mlp.0", "time_embed.linear_1"),
    _rename("t_embedder.mlp.2", "time_embed.linear_2"),
]
_COMMON_RULES = [
    _rename("s_embedder.proj", "patch_embed"),
    *_TIME_EMBED_RULES,
    _rename("pixel_embedder.proj", "pixel_embed"),
    _rename("final_layer.norm", "norm_out"),
    _rename("final_layer.linear", "proj_out"),
    _rename("pixel_blocks.#.adaLN_modulation.0", "pixel_blocks.#.adaln_modulation"),
    _rename("pixel_blocks.#.norm1", "pixel_blocks.#.norm1"),
    _rename("pixel_blocks.#.norm2", "pixel_blocks.#.norm2"),
    _rename("pixel_blocks.#.compress_to_attn", "pixel_blocks.#.compact"),
    _rename("pixel_blocks.#.expand_from_attn", "pixel_blocks.#.expand"),
    *_attention_rules("pixel_blocks.#.attn", "pixel_blocks.#.attn"),
    _rename("pixel_blocks.#.mlp.fc1", "pixel_blocks.#.ff.net.0.proj"),
    _rename("pixel_blocks.#.mlp.fc2", "pixel_blocks.#.ff.net.2"),
]
_CLASS_CONDITIONAL_RULES = [
    _rename("y_embedder.embedding_table", "class_embed"),
    *_dit_block_rules("patch_blocks.#", "transformer_blocks.#", "adaLN_modulation.0"),
]
_TEXT_CONDITIONAL_RULES = [
    _rename("y_embedder.proj", "context_embedder"),
    _rename("y_embedder.norm", "context_norm"),
    _rename("patch_blocks.#.adaLN_modulation_img.0", "transformer_blocks.#.adaln_modulation"),
    _rename("patch_blocks.#.adaLN_modulation_txt.0", "transformer_blocks.#.adaln_modulation_context"),
    _rename("patch_blocks.#.norm_x1", "transformer_blocks.#.norm1"),
    _rename("patch_blocks.#.norm_y1", "transformer_blocks.#.norm1_context"),
    _rename("patch_blocks.#.norm_x2", "transformer_blocks.#.norm2"),
    _rename("patch_blocks.#.norm_y2", "transformer_blocks.#.norm2_context"),
    _Rule(("patch_blocks.#.attn.qkv_x",), tuple(f"transformer_blocks.#.attn.to_{x}" for x in "qkv")),
    _Rule(("patch_blocks.#.attn.qkv_y",), tuple(f"transformer_blocks.#.attn.add_{x}_proj" for x in "qkv")),
    _rename("patch_blocks.#.attn.q_norm_x", "transformer_blocks.#.attn.norm_q"),
    _rename("patch_blocks.#.attn.k_norm_x", "transformer_blocks.#.attn.norm_k"),
    _rename("patch_blocks.#.attn.q_norm_y", "transformer_blocks.#.attn.norm_added_q"),
    _rename("patch_blocks.#.attn.k_norm_y", "transformer_blocks.#.attn.norm_added_k"),
    _rename("patch_blocks.#.attn.proj_x", "transformer_blocks.#.attn.to_out.0"),
    _rename("patch_blocks.#.attn.proj_y", "transformer_blocks.#.attn.to_add_out"),
    *_swiglu_rules("patch_blocks.#.mlp_x", "transformer_blocks.#.ff"),
    *_swiglu_rules("patch_blocks.#.mlp_y", "transformer_blocks.#.ff_context"),
]
_GROUNDING_PROJECTION = "dino_conditioner.dino_proj"
_PIXELDIT2_RULES = [
    _rename("s_embedder.proj", "patch_embed"),
    *_TIME_EMBED_RULES,
    _rename("y_embedder.embedding_table", "class_embed"),
    *_dit_block_rules("patch_blocks.#", "transformer_blocks.#", "adaLN_modulation.1"),
    _rename("final_layer.norm", "norm_out"),
    _rename("final_layer.adaLN_modulation.1", "norm_out_modulation"),
    _rename("final_layer.linear", "proj_out"),
    _rename(f"{_GROUNDING_PROJECTION}.input_proj", "grounding_proj.proj_in"),
    _rename(f"{_GROUNDING_PROJECTION}.t_embedder.mlp.0", "grounding_proj.time_embed.linear_1"),
    _rename(f"{_GROUNDING_PROJECTION}.t_embedder.mlp.2", "grounding_proj.time_embed.linear_2"),
    *_dit_block_rules(f"{_GROUNDING_PROJECTION}.blocks.#", "grounding_proj.blocks.#", "adaLN_modulation.1"),
    _rename(f"{_GROUNDING_PROJECTION}.output_proj", "grounding_proj.proj_out"),
]


class _Layout(NamedTuple):
    """An official model family's key rules, its parameters without a module path, and a key only it has (official
    name, ours); `names` says what a state dict of each side is, for errors."""

    names: tuple[str, str]
    rules: list[_Rule]
    top_level: dict[str, str]
    marker: tuple[str, str]


_LAYOUTS = [
    _Layout(
        ("an official PixelDiT2 model", "a PixelDiT2Transformer2DModel"),
        _PIXELDIT2_RULES,
        {"in_context_posemb": "in_context_pos_embed"},
        (f"{_GROUNDING_PROJECTION}.input_proj.weight", "grounding_proj.proj_in.weight"),
    ),
    _Layout(
        ("an official PixelDiT model", "a PixelDiTTransformer2DModel"),
        _COMMON_RULES + _TEXT_CONDITIONAL_RULES,
        {"y_pos_embedding": "context_pos_embed"},
        ("y_embedder.proj.weight", "context_embedder.weight"),
    ),
    _Layout(
        ("an official PixelDiT model", "a PixelDiTTransformer2DModel"),
        _COMMON_RULES + _CLASS_CONDITIONAL_RULES,
        {},
        ("", ""),
    ),
]


_PIXELDIT2_LAYOUT = _LAYOUTS[0]


def _layout(state_dict: dict[str, torch.Tensor], ours: bool) -> _Layout:
    """The layout a state dict (official names, or ours) has; the class-conditional PixelDiT one by default."""
    return next(layout for layout in _LAYOUTS if layout.marker[ours] in state_dict or not layout.marker[ours])


def _match(template: str, module: str) -> str | None:
    """The block index if `module` matches `template` ("" for templates without one), else None."""
    found = re.fullmatch(re.escape(template).replace("\\#", r"(\d+)"), module)
    if found is None:
        return None
    return found.group(1) if found.groups() else ""


def _convert(
    state_dict: dict[str, torch.Tensor], rules: list[_Rule], top_level: dict[str, str], source: str, reverse: bool
) -> dict[str, torch.Tensor]:
    converted, groups, unknown = {}, {}, []
    for key, tensor in state_dict.items():
        if key in top_level:
            converted[top_level[key]] = tensor
            continue
        module, _, parameter = key.rpartition(".")
        for rule_index, rule in enumerate(rules):
            sources = rule.ours if reverse else rule.official
            position, index = next(
                ((i, idx) for i, t in enumerate(sources) if (idx := _match(t, module)) is not None), (None, None)
            )
            if position is not None:
                groups.setdefault((rule_index, index, parameter), {})[position] = tensor
                break
        else:
            unknown.append(key)

    for (rule_index, index, parameter), found in groups.items():
        rule = rules[rule_index]
        sources, targets = (rule.ours, rule.official) if reverse else (rule.official, rule.ours)
        if len(found) != len(sources):
            missing = [t.replace("#", index) for i, t in enumerate(sources) if i not in found]
            unknown.append(f"{parameter} of {missing} is missing for its fused counterpart")
            continue
        tensors = [found[i] for i in range(len(sources))]
        if len(sources) == len(targets):
            outputs = tensors
        elif len(targets) == 3:  # fused qkv -> q, k, v
            outputs = [part.clone() for part in tensors[0].chunk(3, dim=0)]
        elif len(sources) == 3:  # q, k, v -> fused qkv
            outputs = [torch.cat(tensors, dim=0)]
        elif len(sources) == 2:  # official SwiGLU (w1 gate, w3 up) -> [up; gate]
            outputs = [torch.cat([tensors[1], tensors[0]], dim=0)]
        else:  # [up; gate] -> (w1 gate, w3 up)
            up, gate = tensors[0].chunk(2, dim=0)
            outputs = [gate.clone(), up.clone()]
        for template, tensor in zip(targets, outputs):
            converted[f"{template.replace('#', index)}.{parameter}".lstrip(".")] = tensor
    if unknown:
        raise ValueError(f"Not part of {source} ({len(unknown)} entries): {sorted(unknown)}")
    return converted


def official_to_diffusers_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Maps a bare official model state dict (`PixDiT`, `PixDiT_T2I` or `PixelDiT2` without its grounding encoder; no
    `ema_denoiser.`/`core.` prefix) to `PixelDiTTransformer2DModel` / `PixelDiT2Transformer2DModel` names.

    Raises:
        ValueError: listing every key that is not part of an official model of the layout.
    """
    layout = _layout(state_dict, ours=False)
    return _convert(state_dict, layout.rules, layout.top_level, layout.names[0], False)


def diffusers_to_official_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of `official_to_diffusers_state_dict`; the round trip is bit-exact.

    Raises:
        ValueError: listing every key that is not part of the model.
    """
    layout = _layout(state_dict, ours=True)
    top_level = {ours: official for official, ours in layout.top_level.items()}
    return _convert(state_dict, layout.rules, top_level, layout.names[1], True)


# ---------------------------------------------------------------- DINOv3: timm (the official code) <-> transformers

_DINOV3_TOP_LEVEL = {
    "cls_token": "embeddings.cls_token",
    "reg_token": "embeddings.register_tokens",
    "patch_embed.proj.weight": "embeddings.patch_embeddings.weight",
    "patch_embed.proj.bias": "embeddings.patch_embeddings.bias",
    "norm.weight": "norm.weight",
    "norm.bias": "norm.bias",
}
_DINOV3_BLOCK = {
    "norm1.weight": "norm1.weight",
    "norm1.bias": "norm1.bias",
    "norm2.weight": "norm2.weight",
    "norm2.bias": "norm2.bias",
    "attn.q_bias": "attention.q_proj.bias",
    "attn.v_bias": "attention.v_proj.bias",
    "attn.proj.weight": "attention.o_proj.weight",
    "attn.proj.bias": "attention.o_proj.bias",
    "gamma_1": "layer_scale1.lambda1",
    "gamma_2": "layer_scale2.lambda1",
    "mlp.fc1.weight": "mlp.up_proj.weight",
    "mlp.fc1.bias": "mlp.up_proj.bias",
    "mlp.fc2.weight": "mlp.down_proj.weight",
    "mlp.fc2.bias": "mlp.down_proj.bias",
}
_DINOV3_QKV = ("attn.qkv.weight", tuple(f"attention.{x}_proj.weight" for x in "qkv"))
# transformers-only: the masked-image-modelling token (unused by PixelDiT2; zeros when converted from timm).
_DINOV3_MASK_TOKEN = "embeddings.mask_token"


def timm_dinov3_to_transformers_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A timm DINOv3 ViT state dict (`vit_*_patch16_dinov3_qkvb`, the official PixelDiT2 grounding encoder) in
    `transformers.DINOv3ViTModel` names: renames, the fused qkv split into q/k/v, and a zero `mask_token`.

    Raises:
        ValueError: listing every key that is not part of a timm DINOv3 ViT.
    """
    converted, unknown = {}, []
    for key, tensor in state_dict.items():
        found = re.fullmatch(r"blocks\.(\d+)\.(.+)", key)
        if found is None:
            if key in _DINOV3_TOP_LEVEL:
                converted[_DINOV3_TOP_LEVEL[key]] = tensor
            else:
                unknown.append(key)
            continue
        index, name = found.groups()
        prefix = f"model.layer.{index}."
        if name == _DINOV3_QKV[0]:
            for target, part in zip(_DINOV3_QKV[1], tensor.chunk(3, dim=0)):
                converted[prefix + target] = part.clone()
        elif name in _DINOV3_BLOCK:
            converted[prefix + _DINOV3_BLOCK[name]] = tensor
        else:
            unknown.append(key)
    if unknown or "cls_token" not in state_dict:
        raise ValueError(f"Not a timm DINOv3 ViT state dict ({len(unknown)} foreign entries): {sorted(unknown)[:8]}")
    converted[_DINOV3_MASK_TOKEN] = torch.zeros_like(state_dict["cls_token"])
    return converted


def transformers_dinov3_to_timm_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of `timm_dinov3_to_transformers_state_dict` (the `mask_token` is dropped); bit-exact."""
    top_level = {ours: timm for timm, ours in _DINOV3_TOP_LEVEL.items()}
    block = {ours: timm for timm, ours in _DINOV3_BLOCK.items()}
    converted, qkv, unknown = {}, {}, []
    for key, tensor in state_dict.items():
        found = re.fullmatch(r"model\.layer\.(\d+)\.(.+)", key)
        if found is None:
            if key in top_level:
                converted[top_level[key]] = tensor
            elif key != _DINOV3_MASK_TOKEN:
                unknown.append(key)
            continue
        index, name = found.groups()
        if name in _DINOV3_QKV[1]:
            qkv.setdefault(index, {})[name] = tensor
        elif name in block:
            converted[f"blocks.{index}.{block[name]}"] = tensor
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"Not a transformers DINOv3ViTModel state dict: {sorted(unknown)[:8]}")
    for index, parts in qkv.items():
        converted[f"blocks.{index}.{_DINOV3_QKV[0]}"] = torch.cat([parts[name] for name in _DINOV3_QKV[1]])
    return converted


def _block_count(state_dict: dict[str, torch.Tensor], prefix: str) -> int:
    indices = {int(m.group(1)) for key in state_dict if (m := re.match(rf"{prefix}\.(\d+)\.", key))}
    if indices != set(range(len(indices))):
        raise ValueError(f"`{prefix}` block indices are not contiguous: {sorted(indices)}")
    return len(indices)


def infer_config_from_official_state_dict(
    state_dict: dict[str, torch.Tensor], num_attention_heads: int | None = None
) -> dict[str, Any]:
    """Reads the `PixelDiTTransformer2DModel` config of an official model state dict from its tensor shapes.

    Widths, depths, patch size, class count / text width and text length come from the shapes; the head counts come
    from the q/k-norm widths (the head dimension), so `num_attention_heads`, when given, must agree. The time and
    velocity conventions are those of the release the layout belongs to.

    Raises:
        ValueError: if the state dict is not an official PixelDiT layout or `num_attention_heads` disagrees.
    """
    try:
        pixel_in = state_dict["pixel_embedder.proj.weight"]  # (d, C)
        patch_in = state_dict["s_embedder.proj.weight"]  # (D, C·p²)
        text_conditioned = "y_embedder.proj.weight" in state_dict
        suffix = "_x" if text_conditioned else ""
        head_dim = state_dict[f"patch_blocks.0.attn.q_norm{suffix}.weight"].shape[0]
        swiglu_width = state_dict[f"patch_blocks.0.mlp{suffix}.w1.weight"].shape[0]
        pixel_attention_dim = state_dict["pixel_blocks.0.compress_to_attn.weight"].shape[0]
        pixel_head_dim = state_dict["pixel_blocks.0.attn.q_norm.weight"].shape[0]
        pixel_mlp_width = state_dict["pixel_blocks.0.mlp.fc1.weight"].shape[0]
        pixel_modulation_width = state_dict["pixel_blocks.0.adaLN_modulation.0.weight"].shape[0]
    except KeyError as error:
        raise ValueError(f"Not an official PixelDiT state dict: no tensor {error}.") from None

    pixel_embed_dim, in_channels = pixel_in.shape
    inner_dim = patch_in.shape[0]
    patch_size = math.isqrt(patch_in.shape[1] // in_channels)
    if patch_size * patch_size * in_channels != patch_in.shape[1]:
        raise ValueError(f"Patch embedding input width {patch_in.shape[1]} is not {in_channels}·p² for any p.")
    if inner_dim % head_dim or pixel_attention_dim % pixel_head_dim:
        raise ValueError(
            f"Widths {inner_dim}/{pixel_attention_dim} are not multiples of head dims {head_dim}/{pixel_head_dim}."
        )
    heads = inner_dim // head_dim
    if num_attention_heads is not None and num_attention_heads != heads:
        raise ValueError(
            f"num_attention_heads={num_attention_heads} disagrees with the checkpoint: width {inner_dim} with q/k-norm "
            f"width {head_dim} means {heads} heads."
        )
    if swiglu_width != swiglu_hidden_dim(inner_dim):
        raise ValueError(f"SwiGLU width {swiglu_width} does not match mlp_ratio 4 for width {inner_dim}.")
    # Pixel-block modulations: 6 per pixel (pre-modulation, the releases) or 4 (official pit_adaln_post_modulation).
    modulations, remainder = divmod(pixel_modulation_width, pixel_embed_dim * patch_size * patch_size)
    if remainder or modulations not in (4, 6):
        raise ValueError(f"Pixel-block modulation width {pixel_modulation_width} is neither 4 nor 6 per pixel.")

    config = {
        "patch_size": patch_size,
        "in_channels": in_channels,
        "num_layers": _block_count(state_dict, "patch_blocks"),
        "num_attention_heads": heads,
        "attention_head_dim": head_dim,
        "num_pixel_layers": _block_count(state_dict, "pixel_blocks"),
        "pixel_embed_dim": pixel_embed_dim,
        "pixel_num_attention_heads": pixel_attention_dim // pixel_head_dim,
        "pixel_attention_head_dim": pixel_head_dim,
        "pixel_mlp_ratio": pixel_mlp_width / pixel_embed_dim,
        "pixel_post_modulation": modulations == 4,
    }
    if text_conditioned:
        config.update(
            num_classes=None,
            text_embed_dim=state_dict["y_embedder.proj.weight"].shape[1],
            max_text_length=state_dict["y_pos_embedding"].shape[1],
            timestep_input="sigma_x1000",
            negate_output=False,
        )
    else:
        config.update(
            num_classes=state_dict["y_embedder.embedding_table.weight"].shape[0] - 1,
            timestep_input="one_minus_sigma",
            negate_output=True,
        )
    return config


def _swiglu_multiple(width: int, dim: int) -> int:
    """A `mlp_hidden_multiple` giving SwiGLU width `width` for model width `dim` (0: the unrounded width)."""
    if width == swiglu_hidden_dim(dim):
        return 0
    for multiple in (256, 128, 64, 32, 16, 8, 4, 2):  # the largest power of two that builds this width
        if swiglu_hidden_dim(dim, multiple_of=multiple) == width:
            return multiple
    raise ValueError(f"SwiGLU width {width} is not 2/3 of 4 x {dim}, rounded up to any power-of-two multiple.")


def infer_pixeldit2_config_from_official_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The `PixelDiT2Transformer2DModel` config an official PixelDiT2 state dict (without its grounding encoder)
    determines: widths, depths, heads (from the q/k-norm widths), patch size, SwiGLU rounding, classes, in-context
    length and grounding width.

    `in_context_start`, `silu_conditioning` and `noise_scale` are not in the tensors: they come from the release's
    recipe (`official_sampling_recipe`), a preset, or the caller.

    Raises:
        ValueError: if the state dict is not an official PixelDiT2 layout.
    """
    try:
        patch_in = state_dict["s_embedder.proj.weight"]  # (D, 3·p²)
        head_dim = state_dict["patch_blocks.0.attn.q_norm.weight"].shape[0]
        swiglu_width = state_dict["patch_blocks.0.mlp.w1.weight"].shape[0]
        grounding_in = state_dict[f"{_GROUNDING_PROJECTION}.input_proj.weight"]  # (D, C_enc)
        grounding_head_dim = state_dict[f"{_GROUNDING_PROJECTION}.blocks.0.attn.q_norm.weight"].shape[0]
        num_classes = state_dict["y_embedder.embedding_table.weight"].shape[0] - 1
    except KeyError as error:
        raise ValueError(f"Not an official PixelDiT2 state dict: no tensor {error}.") from None
    inner_dim = patch_in.shape[0]
    in_channels = 3  # RGB: the grounding encoder's ImageNet normalisation is per RGB channel
    patch_size = math.isqrt(patch_in.shape[1] // in_channels)
    if patch_size * patch_size * in_channels != patch_in.shape[1]:
        raise ValueError(f"Patch embedding input width {patch_in.shape[1]} is not 3·p² for any p.")
    if inner_dim % head_dim or inner_dim % grounding_head_dim:
        raise ValueError(f"Width {inner_dim} is not a multiple of the head dims {head_dim}/{grounding_head_dim}.")
    context = state_dict.get("in_context_posemb")
    return {
        "patch_size": patch_size,
        "in_channels": in_channels,
        "num_layers": _block_count(state_dict, "patch_blocks"),
        "num_attention_heads": inner_dim // head_dim,
        "attention_head_dim": head_dim,
        "mlp_hidden_multiple": _swiglu_multiple(swiglu_width, inner_dim),
        "num_classes": num_classes,
        "in_context_length": 0 if context is None else context.shape[1],
        "grounding_embed_dim": grounding_in.shape[1],
        "grounding_num_layers": _block_count(state_dict, f"{_GROUNDING_PROJECTION}.blocks"),
        "grounding_num_attention_heads": inner_dim // grounding_head_dim,
    }


def _pixeldit2_in_context_start(config: dict[str, Any]) -> int:
    """The block the in-context tokens join at, which the tensors do not say: that of the official architecture with
    this width and depth (8 for the released H/16 models), else the official default, 8."""
    architecture = ("num_layers", "num_attention_heads", "attention_head_dim")
    default = inspect.signature(PixelDiT2Transformer2DModel.__init__).parameters["in_context_start"].default
    for preset in PIXELDIT2_PRESETS.values():
        if all(preset.get(key) == config[key] for key in architecture):
            return preset.get("in_context_start", default)
    logger.warning(
        f"The PixelDiT2 architecture {[config[key] for key in architecture]} is none of the official ones: the "
        f"in-context tokens are assumed to join at block {default} (set `in_context_start` if not)."
    )
    return default


# ---------------------------------------------------------------- checkpoint files

# Top-level prefixes of the official checkpoints: the two C2I weight sets (Lightning), the single T2I set, and the
# training-only REPA projectors.
_WEIGHT_SETS = {"ema": "ema_denoiser", "raw": "denoiser"}
_SINGLE_SET = "core"
_TRAINING_ONLY = ("diffusion_trainer", "_repa_projector")
# Wrapper modules that prefix parameter names: DDP/FSDP (`module.`) and `torch.compile` (`_orig_mod.`).
_WRAPPERS = {"module", "_orig_mod"}
_KIND_NAMES = {"c2i": "class-conditional", "t2i": "text-to-image", "pixeldit2": "PixelDiT2 class-conditional"}
# Where the official PixelDiT2 keeps its frozen grounding encoder (timm names below it).
GROUNDING_ENCODER_PREFIX = "dino_conditioner.encoder."


def _is_safetensors(path: Path) -> bool:
    """Whether the file starts like a safetensors file: a little-endian u64 header length, then a JSON object."""
    with open(path, "rb") as file:
        head = file.read(9)
    return len(head) == 9 and head[8:] == b"{" and int.from_bytes(head[:8], "little") < path.stat().st_size


def _is_gguf(path: Path) -> bool:
    with open(path, "rb") as file:
        return file.read(4) == b"GGUF"


def _read_checkpoint(path: Path, trust_pickle: bool) -> Any:
    if _is_gguf(path):
        from diffusers.models.model_loading_utils import load_gguf_checkpoint

        try:  # quantized tensors come as diffusers' `GGUFParameter`s, the F32/F16 ones as plain tensors
            return load_gguf_checkpoint(path)
        except ImportError:
            raise
        except Exception as error:
            raise ValueError(
                f"Cannot read {path} as GGUF (truncated or corrupted?): {_error_summary(error)}"
            ) from None
    if _is_safetensors(path):
        try:
            return load_file(path)
        except Exception as error:
            raise ValueError(f"Cannot read {path} as safetensors (truncated or corrupted?): {error}") from None
    try:
        # A zip archive (torch.save's format) is memory-mapped: the optimizer states of a training checkpoint are
        # never read.
        return torch.load(path, map_location="cpu", weights_only=not trust_pickle, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as error:
        unsafe = sorted(set(re.findall(r"Unsupported global: GLOBAL (\S+)", str(error))))
        if unsafe:
            raise ValueError(
                f"{path} needs arbitrary unpickling (it references {', '.join(unsafe)}), which can run code: refused. "
                "Load it with trust_pickle=True (--trust-pickle) only if you trust its source."
            ) from None
        detail = _error_summary(error)
    except Exception as error:
        detail = _error_summary(error)
    raise ValueError(
        f"Cannot read {path}: not a PyTorch or safetensors checkpoint, or a truncated or corrupted one ({detail})."
    )


def _error_summary(error: Exception) -> str:
    """`Type: first sentence` of an error, or of the unpickler's own message inside torch's weights_only error."""
    text = str(error)
    found = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    sentence = (found.group(1) if found else text).strip().split("\n")[0].split(". ")[0].rstrip(".")
    return f"{type(error).__name__}: {sentence}" if sentence else type(error).__name__


def load_official_checkpoint(
    path: str | Path, weights: str = "ema", trust_pickle: bool = False
) -> tuple[dict[str, torch.Tensor], str]:
    """Reads an official PixelDiT checkpoint (an untrusted file) and returns its bare model state dict and kind.

    Accepts the ImageNet release's Lightning `.ckpt` (`ema_denoiser.*` EMA and `denoiser.*` raw weights), the
    text-to-image release's `.pth` (`core.*`), and bare state dicts, pickled or as safetensors (bare or with those
    prefixes). `module.` and `_orig_mod.` wrapper prefixes are removed wherever they appear; training-only tensors (the
    REPA projectors `diffusion_trainer.*` / `_repa_projector.*`) and a stray `pos_embed` are dropped.

    Args:
        path: the checkpoint file.
        weights (`str`, defaults to `"ema"`): `"ema"` or `"raw"`, the weight set of a checkpoint holding both (the
            official sampling uses the EMA weights); checkpoints with a single set ignore it.
        trust_pickle (`bool`, defaults to False): pickles load with `torch.load(weights_only=True)`; a file that needs
            arbitrary unpickling (which can run code) is refused unless this is True.

    Returns:
        `(state_dict, kind)`, kind `"c2i"` (class-conditional), `"t2i"` (text-to-image) or `"pixeldit2"`, read
        from the tensors. A PixelDiT2 state dict keeps its grounding encoder's tensors when the file has them (see
        `split_grounding_encoder`).

    Raises:
        FileNotFoundError: if there is no such file.
        ValueError: for an unreadable, unsafe or foreign file, or a missing weight set.
    """
    path = Path(path)
    if weights not in _WEIGHT_SETS:
        raise ValueError(f"`weights` must be one of {sorted(_WEIGHT_SETS)}, got {weights!r}.")
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint file {path}.")
    if trust_pickle:
        logger.warning(f"Loading {path} with arbitrary unpickling (trust_pickle=True): it can run code.")
    return official_state_dict_from_checkpoint(_read_checkpoint(path, trust_pickle), weights, str(path))


def official_state_dict_from_checkpoint(
    checkpoint: Any, weights: str = "ema", path: str = "The checkpoint"
) -> tuple[dict[str, torch.Tensor], str]:
    """`load_official_checkpoint` for a checkpoint already in memory (what `torch.load` or `load_file` returned);
    `path` names it in errors."""
    if weights not in _WEIGHT_SETS:
        raise ValueError(f"`weights` must be one of {sorted(_WEIGHT_SETS)}, got {weights!r}.")
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{path} holds a {type(checkpoint).__name__}, not a state dict.")
    not_tensors = sorted(str(key) for key, value in checkpoint.items() if not isinstance(value, torch.Tensor))
    if not_tensors:
        raise ValueError(f"{path} is not a state dict: {len(not_tensors)} entries are not tensors: {not_tensors[:8]}.")

    sets, bare, dropped = {}, {}, []
    for key, tensor in checkpoint.items():
        name = ".".join(part for part in key.split(".") if part not in _WRAPPERS)
        head, _, rest = name.partition(".")
        in_set = head in (*_WEIGHT_SETS.values(), _SINGLE_SET) and rest
        if head in _TRAINING_ONLY or (rest if in_set else name) == "pos_embed":
            dropped.append(name)
            continue
        group, short_name = (sets.setdefault(head, {}), rest) if in_set else (bare, name)
        if short_name in group:
            raise ValueError(f"{path} holds {name!r} twice (with and without a `module.`/`_orig_mod.` prefix).")
        group[short_name] = tensor

    if sets and bare:
        raise ValueError(f"Unexpected tensors beside the {sorted(sets)} weights of {path}: {sorted(bare)}.")
    if _SINGLE_SET in sets and len(sets) > 1:
        raise ValueError(f"{path} mixes the text-to-image (`core.`) and class-conditional layouts: {sorted(sets)}.")
    if not sets or _SINGLE_SET in sets:
        state_dict, source = (sets[_SINGLE_SET], f"`{_SINGLE_SET}.*`") if sets else (bare, "the bare state dict")
        if weights != "ema":
            logger.info(f"{path} holds a single weight set: `weights={weights!r}` does not apply.")
    else:
        prefix = _WEIGHT_SETS[weights]
        if prefix not in sets:
            other = next(name for name, prefix_ in _WEIGHT_SETS.items() if prefix_ != prefix)
            raise ValueError(
                f"{path} has no {weights} weights (`{prefix}.*`); use weights={other!r} (--weights {other})."
            )
        state_dict, source = sets[prefix], f"the {weights} weights `{prefix}.*`"
        ignored = [f"`{name}.*` ({len(sets[name])} tensors)" for name in sets if name != prefix]
        if ignored:
            logger.info(f"Ignoring {', '.join(ignored)}.")
    if dropped:
        logger.info(
            f"Dropped {len(dropped)} tensors inference does not use (REPA projector, pos_embed): {sorted(dropped)}."
        )

    if _PIXELDIT2_LAYOUT.marker[0] in state_dict:
        kind = "pixeldit2"
    elif "y_embedder.proj.weight" in state_dict:
        kind = "t2i"
    elif "y_embedder.embedding_table.weight" in state_dict:
        kind = "c2i"
    else:
        raise ValueError(
            f"{path} is not an official PixelDiT checkpoint: it has no class embedding (`y_embedder.embedding_table`) "
            f"or text projection (`y_embedder.proj`); its tensors start with {sorted(state_dict)[:5]}."
        )
    logger.info(f"Read {len(state_dict)} tensors of {source}: a {_KIND_NAMES[kind]} model.")
    return state_dict, kind


def _preset_config(model_class: type, presets: dict, name: str, inferred: dict[str, Any]) -> dict[str, Any]:
    """The full config of preset `name`, after checking that it agrees with the config read from the tensors."""
    if name not in presets:
        raise ValueError(f"Unknown preset {name!r}; choose one of {sorted(presets)}.")
    parameters = inspect.signature(model_class.__init__).parameters.values()
    config = {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}
    config.update(presets[name])
    # entries that default to another one
    for entry, default in (
        ("pixel_num_attention_heads", "num_attention_heads"),
        ("pixel_attention_head_dim", "attention_head_dim"),
        ("grounding_num_attention_heads", "num_attention_heads"),
    ):
        if entry in config:
            config[entry] = config[entry] or config[default]
    mismatches = [
        f"{key} {config[key]!r} (checkpoint: {value!r})" for key, value in inferred.items() if config[key] != value
    ]
    if mismatches:
        raise ValueError(f"Preset {name} does not match the checkpoint: {', '.join(mismatches)}.")
    return config


def _logical_shapes(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state_dict` with each GGUF-quantized tensor (stored as bytes) replaced by a meta tensor of the shape it
    stands for, for reading the architecture."""
    return {
        key: torch.empty(tensor.quant_shape, device="meta") if hasattr(tensor, "quant_shape") else tensor
        for key, tensor in state_dict.items()
    }


def _quantized_model(
    model_class: type,
    config: dict[str, Any],
    state_dict: dict[str, torch.Tensor],
    quantization_config,
    dtype,
    pre_quantized: bool,
):
    """`model_class(**config)` holding `state_dict` (diffusers names), quantized by `quantization_config` as
    diffusers' `from_pretrained` / `from_single_file` quantize: the quantizer's modules replace the layers on the meta
    device, then `load_model_dict_into_meta` quantizes each weight as it is loaded (on the CPU);
    `_keep_in_fp32_modules` stay in float32 where the quantizer allows it. `pre_quantized`: the tensors come
    quantized (GGUF); otherwise the official weights are quantized here."""
    from accelerate import init_empty_weights
    from diffusers.models.model_loading_utils import load_model_dict_into_meta
    from diffusers.quantizers import DiffusersAutoQuantizer

    quantizer = DiffusersAutoQuantizer.from_config(quantization_config, pre_quantized=pre_quantized)
    quantizer.validate_environment()
    dtype = quantizer.update_torch_dtype(dtype)
    state_dict = quantizer.maybe_update_state_dict(state_dict)
    keep = list(model_class._keep_in_fp32_modules or []) if quantizer.use_keep_in_fp32_modules else []
    with init_empty_weights():
        model = model_class.from_config(config)
    quantizer.preprocess_model(model=model, device_map=None, state_dict=state_dict, keep_in_fp32_modules=keep)
    load_model_dict_into_meta(
        model,
        state_dict,
        dtype=dtype,
        device_map={"": torch.device("cpu")},
        hf_quantizer=quantizer,
        keep_in_fp32_modules=keep,
        unexpected_keys=[],
    )
    quantizer.postprocess_model(model)
    model.hf_quantizer = quantizer
    return model.eval()


def transformer_from_official_state_dict(
    state_dict: dict[str, torch.Tensor],
    preset: str | None = None,
    num_attention_heads: int | None = None,
    quantization_config=None,
    dtype: torch.dtype | None = None,
    **config_overrides,
) -> PixelDiTTransformer2DModel | PixelDiT2Transformer2DModel:
    """The model (`PixelDiTTransformer2DModel`, or `PixelDiT2Transformer2DModel` for a PixelDiT2 layout) holding the
    weights of a bare official state dict, loaded strictly.

    The config is read from the tensor shapes (`infer_config_from_official_state_dict` /
    `infer_pixeldit2_config_from_official_state_dict`); a `preset` of `PIXELDIT_PRESETS` / `PIXELDIT2_PRESETS` must
    agree with it. The model is built on the meta device and takes the converted tensors as they are (no copy, no
    random initialisation).

    Args:
        state_dict: a bare official model state dict (see `load_official_checkpoint`; PixelDiT2: without its
            grounding encoder, see `split_grounding_encoder`).
        preset (`str`, *optional*): e.g. `"PixelDiT-XL"`; an error names every setting the tensors contradict.
        num_attention_heads (`int`, *optional*): checked against the head count the tensors imply.
        quantization_config (*optional*): a diffusers quantization config (`TorchAoConfig`, `BitsAndBytesConfig`,
            `GGUFQuantizationConfig`, ...): the weights are quantized as they load (see `_quantized_model`). GGUF
            files (their quantized tensors) need `GGUFQuantizationConfig`.
        dtype (`torch.dtype`, *optional*): with `quantization_config`, the dtype of the weights left unquantized
            (default: the quantizer's; without it the tensors are taken as they are).
        config_overrides: settings the tensors do not determine, e.g. `sample_size` (PixelDiT2: also
            `in_context_start`, `silu_conditioning`, `noise_scale`).

    Raises:
        ValueError: if the preset or head count disagrees, or any tensor is unexpected, missing or mis-shaped (all are
            listed), or GGUF-quantized tensors come without a GGUF quantization config.
    """
    gguf_quantized = any(hasattr(tensor, "quant_type") for tensor in state_dict.values())
    method = getattr(quantization_config, "quant_method", None)
    if gguf_quantized and getattr(method, "value", method) != "gguf":
        raise ValueError(
            "The checkpoint holds GGUF-quantized tensors: load it with "
            "quantization_config=diffusers.GGUFQuantizationConfig(compute_dtype=...)."
        )
    shapes = _logical_shapes(state_dict)
    if _layout(state_dict, ours=False) is _PIXELDIT2_LAYOUT:
        model_class, presets = PixelDiT2Transformer2DModel, PIXELDIT2_PRESETS
        config = infer_pixeldit2_config_from_official_state_dict(shapes)
        if num_attention_heads is not None and num_attention_heads != config["num_attention_heads"]:
            raise ValueError(
                f"num_attention_heads={num_attention_heads} disagrees with the checkpoint's "
                f"{config['num_attention_heads']} heads (from its q/k-norm width)."
            )
        if preset is None and "in_context_start" not in config_overrides and config["in_context_length"]:
            config["in_context_start"] = _pixeldit2_in_context_start(config)
    else:
        model_class, presets = PixelDiTTransformer2DModel, PIXELDIT_PRESETS
        config = infer_config_from_official_state_dict(shapes, num_attention_heads)
    if preset is not None:
        config = _preset_config(model_class, presets, preset, config)
    config.update(config_overrides)
    converted = official_to_diffusers_state_dict(state_dict)
    converted_shapes = _logical_shapes(converted)
    with torch.device("meta"):
        model = model_class(**config)
    expected = model.state_dict()
    problems = {
        "unexpected": sorted(converted.keys() - expected.keys()),
        "missing": sorted(expected.keys() - converted.keys()),
        "mis-shaped": [
            f"{key} {tuple(converted_shapes[key].shape)} (expected {tuple(expected[key].shape)})"
            for key in sorted(converted.keys() & expected.keys())
            if converted_shapes[key].shape != expected[key].shape
        ],
    }
    if any(problems.values()):
        listed = "; ".join(f"{len(keys)} {name}: {keys}" for name, keys in problems.items() if keys)
        raise ValueError(f"The checkpoint's tensors do not fit the model they describe (diffusers names): {listed}.")
    if quantization_config is not None:
        return _quantized_model(model_class, model.config, converted, quantization_config, dtype, gguf_quantized)
    model.load_state_dict(converted, strict=True, assign=True)
    return model.eval()


def split_grounding_encoder(
    state_dict: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
    """`(denoiser, encoder)`: an official PixelDiT2 state dict without its grounding encoder, and the encoder's timm
    state dict (None when the checkpoint does not hold it, as the releases' README says they don't)."""
    encoder = {
        k[len(GROUNDING_ENCODER_PREFIX) :]: v for k, v in state_dict.items() if k.startswith(GROUNDING_ENCODER_PREFIX)
    }
    denoiser = {k: v for k, v in state_dict.items() if not k.startswith(GROUNDING_ENCODER_PREFIX)}
    return denoiser, encoder or None


# DINOv3's fixed settings (timm `vit_*_patch16_dinov3_qkvb`, transformers `DINOv3ViTConfig`); its head dim is 64.
_DINOV3_SETTINGS = {
    "rope_theta": 100.0,
    "layer_norm_eps": 1e-5,
    "hidden_act": "gelu",
    "query_bias": True,
    "key_bias": False,
    "value_bias": True,
    "proj_bias": True,
    "mlp_bias": True,
    "use_gated_mlp": False,
}
DINOV3_HEAD_DIM = 64


def dinov3_config_from_timm_state_dict(
    state_dict: dict[str, torch.Tensor], num_attention_heads: int | None = None
) -> dict[str, Any]:
    """The `transformers.DINOv3ViTConfig` entries of a timm DINOv3 state dict: sizes from the shapes, heads from
    DINOv3's head dim of 64 unless `num_attention_heads` is given (the shapes do not say)."""
    try:
        hidden_size = state_dict["cls_token"].shape[-1]
        patch_embed = state_dict["patch_embed.proj.weight"]  # (C, 3, p, p)
        intermediate_size = state_dict["blocks.0.mlp.fc1.weight"].shape[0]
        num_register_tokens = state_dict["reg_token"].shape[1] if "reg_token" in state_dict else 0
    except KeyError as error:
        raise ValueError(f"Not a timm DINOv3 ViT state dict: no tensor {error}.") from None
    if num_attention_heads is None:
        if hidden_size % DINOV3_HEAD_DIM:
            raise ValueError(
                f"The grounding encoder's width {hidden_size} is not a multiple of DINOv3's head dim "
                f"{DINOV3_HEAD_DIM}: give its head count."
            )
        num_attention_heads = hidden_size // DINOV3_HEAD_DIM
    if hidden_size % num_attention_heads:
        raise ValueError(
            f"The grounding encoder's width {hidden_size} is not divisible by {num_attention_heads} heads."
        )
    return {
        **_DINOV3_SETTINGS,
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size,
        "num_hidden_layers": _block_count(state_dict, "blocks"),
        "num_attention_heads": num_attention_heads,
        "patch_size": patch_embed.shape[-1],
        "num_channels": patch_embed.shape[1],
        "num_register_tokens": num_register_tokens,
        "layerscale_value": 1.0,  # initial value only: the checkpoint's layer scales replace it
    }


def dinov3_from_timm_state_dict(state_dict: dict[str, torch.Tensor], num_attention_heads: int | None = None):
    """A `transformers.DINOv3ViTModel` (eval mode, frozen) holding a timm DINOv3 state dict."""
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    encoder = DINOv3ViTModel(DINOv3ViTConfig(**dinov3_config_from_timm_state_dict(state_dict, num_attention_heads)))
    encoder.load_state_dict(timm_dinov3_to_transformers_state_dict(state_dict), strict=True)
    return encoder.to(next(iter(state_dict.values())).dtype).eval().requires_grad_(False)


def official_checkpoint_from_transformer(
    transformer: PixelDiTTransformer2DModel | PixelDiT2Transformer2DModel, grounding_encoder=None
) -> dict[str, dict[str, torch.Tensor]]:
    """The official checkpoint layout of `transformer`'s weights, for `torch.save` (loadable with `weights_only=True`).

    Class-conditional (PixelDiT, PixelDiT2): `{"state_dict": {"ema_denoiser.<k>": ..., "denoiser.<k>": ...}}`, both
    sets holding these (the converted, normally EMA) weights, as the official Lightning code loads either; a PixelDiT2
    `grounding_encoder` (a transformers DINOv3ViTModel) is included under both, in timm names, when given (the
    releases do not hold it). Text-to-image: `{"state_dict": {"core.<k>": ...}}`.
    """
    state_dict = diffusers_to_official_state_dict(transformer.state_dict())
    if grounding_encoder is not None:
        encoder = transformers_dinov3_to_timm_state_dict(grounding_encoder.state_dict())
        state_dict.update({f"{GROUNDING_ENCODER_PREFIX}{key}": tensor for key, tensor in encoder.items()})
    if getattr(transformer.config, "text_embed_dim", None) is not None:
        prefixes = [_SINGLE_SET]
    else:
        prefixes = [_WEIGHT_SETS["ema"], _WEIGHT_SETS["raw"]]
    return {"state_dict": {f"{prefix}.{key}": tensor for prefix in prefixes for key, tensor in state_dict.items()}}


# ---------------------------------------------------------------- sampling recipes of the releases' model cards

SAMPLERS = ("adams_bashforth", "euler", "heun", "dpmsolver++")


def official_sampling_recipe(filename: str | Path, kind: str, resolution: int | None = None) -> dict[str, Any]:
    """The model card's sampling recipe for an official checkpoint, chosen from its file name.

    Class-conditional (ImageNet): 512 px (`imagenet512_*`) → CFG 3.5, interval [0.1, 1.0], shift 2.0; 256 px
    `*epoch80*` / `*epoch160*` → CFG 3.25, [0.1, 1.0], shift 1.0; `*epoch320*` (and any other name, with a warning)
    → CFG 2.75, [0.1, 0.9], shift 1.0; all 100 steps of the official 2-step Adams–Bashforth sampler ("FlowDPMSolver").
    Text-to-image: DPM-Solver++ (2M, flow), 50 steps, CFG 3.5, no interval, flow shift 4.0 at 1024 px (3.0 at
    512 px and below). PixelDiT2 (`pixeldit2_h16_in256_ep600.ckpt` / `pixeldit2_h16_in512_ep680.ckpt`): Heun on the
    uniform grid, 50 steps, no shift; 256 px CFG 2.4 in (0.125, 0.9), noise scale 1 and double SiLU conditioning;
    512 px CFG 2.1 in (0.1, 0.925), noise scale 2 and single SiLU. Intervals are in the model-card time t = 1 − σ.

    Args:
        filename: the checkpoint's file name (or path).
        kind (`str`): `"c2i"`, `"t2i"` or `"pixeldit2"`.
        resolution (`int`, *optional*): the image side; read from the file name (256, 512 or 1024) if not given,
            else 256 (class-conditional) or 1024 (text-to-image).

    Returns:
        A dict with `sample_size`, `num_inference_steps`, `guidance_scale`, `guidance_interval`, `shift`, `sampler`
        (one of `SAMPLERS`), `time_grid` (of `PixelDiTFlowScheduler`), `transformer` (the model settings the
        tensors do not hold: PixelDiT2's `silu_conditioning` and `noise_scale`) and `description` (where the
        recipe comes from).
    """
    if kind not in _KIND_NAMES:
        raise ValueError(f"`kind` must be one of {sorted(_KIND_NAMES)}, got {kind!r}.")
    name = Path(filename).name.lower()
    if resolution is None:
        found = re.search(r"(?<!\d)(256|512|1024)(?!\d)", name)
        resolution = int(found.group(1)) if found else {"c2i": 256, "t2i": 1024, "pixeldit2": 256}[kind]
    if kind == "t2i":
        return {
            "sample_size": resolution,
            "num_inference_steps": 50,
            "guidance_scale": 3.5,
            "guidance_interval": (0.0, 1.0),
            "shift": 3.0 if resolution <= 512 else 4.0,
            "sampler": "dpmsolver++",
            "time_grid": "pixeldit",
            "transformer": {},
            "description": f"PixelDiT-1300M release defaults at {resolution} px",
        }
    if kind == "pixeldit2":
        release = 512 if resolution >= 512 else 256
        if not re.fullmatch(rf"pixeldit2_h16_in{release}_ep\d+\.(ckpt|pth|safetensors)", name):
            logger.warning(f"{name!r} names no PixelDiT2 release: using the {release} px model card's recipe.")
        return {
            "sample_size": resolution,
            "num_inference_steps": 50,
            "guidance_scale": 2.1 if release == 512 else 2.4,
            "guidance_interval": (0.1, 0.925) if release == 512 else (0.125, 0.9),
            "shift": 1.0,
            "sampler": "heun",
            "time_grid": "uniform",
            "transformer": {"silu_conditioning": release == 256, "noise_scale": 2.0 if release == 512 else 1.0},
            "description": f"PixelDiT2 ImageNet {release}x{release} model card",
        }
    recipe = {
        "sample_size": resolution,
        "num_inference_steps": 100,
        "sampler": "adams_bashforth",
        "shift": 1.0,
        "time_grid": "pixeldit",
        "transformer": {},
    }
    epoch = re.search(r"epoch[_=-]?(\d+)", name)
    if resolution == 512:
        recipe.update(guidance_scale=3.5, guidance_interval=(0.1, 1.0), shift=2.0)
        recipe["description"] = "ImageNet 512x512 model card"
    elif epoch and epoch.group(1) in ("80", "160"):
        recipe.update(guidance_scale=3.25, guidance_interval=(0.1, 1.0))
        recipe["description"] = f"ImageNet 256x256 {epoch.group(1)}-epoch model card"
    else:
        recipe.update(guidance_scale=2.75, guidance_interval=(0.1, 0.9))
        recipe["description"] = "ImageNet 256x256 320-epoch model card"
        if not (epoch and epoch.group(1) == "320"):
            logger.warning(f"{name!r} names no release (epoch80/160/320, 512): using the 320-epoch 256px recipe.")
            recipe["description"] += ", the default for file names that name no release"
    return recipe


def sampling_scheduler(sampler: str, shift: float, time_grid: str = "pixeldit") -> SchedulerMixin:
    """The scheduler of a recipe: `PixelDiTFlowScheduler` on `time_grid` for `"adams_bashforth"` / `"euler"` /
    `"heun"` (the official C2I samplers), the release's `DPMSolverMultistepScheduler` configuration for
    `"dpmsolver++"`."""
    if sampler not in SAMPLERS:
        raise ValueError(f"`sampler` must be one of {SAMPLERS}, got {sampler!r}.")
    if shift <= 0:
        raise ValueError(f"`shift` must be positive, got {shift}.")
    if sampler == "dpmsolver++":
        return release_dpm_solver_scheduler(shift)
    return PixelDiTFlowScheduler(shift=shift, solver=sampler, time_grid=time_grid)


# ---------------------------------------------------------------- a checkpoint file -> pipeline components

# The released PixelDiT2 models' grounding encoders, by width, and the T2I release's text encoder.
DINOV3 = {384: "facebook/dinov3-vits16-pretrain-lvd1689m", 768: "facebook/dinov3-vitb16-pretrain-lvd1689m"}
GEMMA = "google/gemma-2-2b-it"
# Sampling-recipe entries a caller may override, and PixelDiT2 settings the tensors do not hold.
RECIPE_OVERRIDES = ("num_inference_steps", "guidance_scale", "guidance_interval", "shift", "sampler")
PIXELDIT2_OVERRIDES = ("in_context_start", "silu_conditioning", "noise_scale")


def resolve_checkpoint_file(
    link_or_path: str | Path,
    weight_name: str | None = None,
    subfolder: str | None = None,
    cache_dir: str | Path | None = None,
    force_download: bool = False,
    proxies: dict | None = None,
    local_files_only: bool | None = None,
    token: str | bool | None = None,
    revision: str | None = None,
) -> Path:
    """The local path of a checkpoint: a local file as it is; a Hub file link
    (`https://huggingface.co/<repo_id>/blob/main/<file>`), or a repo id with `weight_name`, downloaded into (or found
    in, offline: `HF_HUB_OFFLINE=1` or `local_files_only=True`) the Hugging Face cache.

    Raises:
        FileNotFoundError: for a path that is neither a file, a Hub link nor a repo id with `weight_name`.
        OSError: when the Hub file cannot be found or downloaded (offline: not in the cache).
    """
    from diffusers.loaders.single_file_utils import _extract_repo_id_and_weights_name, is_valid_url
    from huggingface_hub import hf_hub_download

    text = str(link_or_path)
    if weight_name is None and Path(text).is_file():
        return Path(text)
    if weight_name is not None:
        repo_id = text
    elif is_valid_url(text):
        repo_id, weight_name = _extract_repo_id_and_weights_name(text)
        if weight_name is None:
            raise FileNotFoundError(
                f"{text} is not a Hub file link (https://huggingface.co/<repo_id>/blob/main/<file>)."
            )
    else:
        raise FileNotFoundError(
            f"No checkpoint file {text}: pass a local file, a Hub file link "
            "(https://huggingface.co/<repo_id>/blob/main/<file>) or a repo id with `weight_name`."
        )
    try:
        return Path(
            hf_hub_download(
                repo_id,
                weight_name,
                subfolder=subfolder,
                revision=revision,
                cache_dir=cache_dir,
                force_download=force_download,
                proxies=proxies,
                token=token,
                local_files_only=bool(local_files_only),
                library_name="diffusers_pixeldit",
            )
        )
    except Exception as error:  # huggingface_hub's errors: not found, offline and not cached, gated, no network
        raise OSError(
            f"Cannot get {weight_name} of the Hub repository {repo_id}: {' '.join(str(error).split())[:400]}"
        ) from error


def load_text_components(
    name_or_path: str | Path, text_embed_dim: int, dtype: torch.dtype | None = None, quantization_config=None
):
    """`(tokenizer, text_encoder)`: the tokenizer (right padding) and base model (e.g. `Gemma2Model`, the decoder of a
    causal LM) of a transformers text encoder folder or Hub id, whose hidden size must be `text_embed_dim`;
    `quantization_config`: a transformers one, applied as it loads."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    width = getattr(AutoConfig.from_pretrained(name_or_path).get_text_config(), "hidden_size", None)
    if width != text_embed_dim:
        raise ValueError(
            f"The text encoder {name_or_path} has hidden size {width}; this transformer takes text embeddings of "
            f"width {text_embed_dim}."
        )
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, padding_side="right")
    text_encoder = AutoModel.from_pretrained(name_or_path, dtype=dtype, quantization_config=quantization_config).eval()
    logger.info(f"Text encoder: {type(text_encoder).__name__} from {name_or_path}")
    return tokenizer, text_encoder


def load_grounding_encoder(
    name_or_path: str | Path, num_attention_heads: int | None = None, dtype: torch.dtype | None = None
):
    """A PixelDiT2 grounding encoder (`transformers.DINOv3ViTModel`, eval mode): from a timm DINOv3 `.safetensors`
    file (the official code's names), else a transformers DINOv3 folder or Hub id."""
    path = Path(name_or_path)
    if path.is_file():
        if path.suffix != ".safetensors":
            raise ValueError(f"Grounding encoder {path}: a timm DINOv3 state dict must be a .safetensors file.")
        encoder = dinov3_from_timm_state_dict(load_file(path), num_attention_heads)
        return encoder if dtype is None else encoder.to(dtype)
    from transformers import DINOv3ViTModel

    return DINOv3ViTModel.from_pretrained(name_or_path, dtype=dtype).eval()


class OfficialComponents(NamedTuple):
    """What an official checkpoint converts to: the `kind` ("c2i", "t2i" or "pixeldit2"), the transformer, the
    recipe's scheduler and pipeline defaults, the recipe itself (`official_sampling_recipe` with the overrides), the
    names of the overridden entries, and PixelDiT2's grounding encoder (None otherwise)."""

    kind: str
    transformer: PixelDiTTransformer2DModel | PixelDiT2Transformer2DModel
    scheduler: SchedulerMixin
    pipeline_defaults: dict[str, Any]
    recipe: dict[str, Any]
    overridden: list[str]
    grounding_encoder: Any = None


def official_transformer(
    state_dict: dict[str, torch.Tensor],
    kind: str,
    file_name: str | Path,
    dtype: torch.dtype | None = None,
    preset: str | None = None,
    num_attention_heads: int | None = None,
    resolution: int | None = None,
    recipe_overrides: dict[str, Any] | None = None,
    transformer_overrides: dict[str, Any] | None = None,
    quantization_config=None,
) -> tuple[PixelDiTTransformer2DModel | PixelDiT2Transformer2DModel, dict[str, Any], list[str]]:
    """`(transformer, recipe, overridden)` of a bare official state dict (`load_official_checkpoint`): the
    architecture from the tensors (a PixelDiT2 grounding encoder's tensors are left aside), the sampling recipe from
    the release file name (`official_sampling_recipe`) with the overrides, and the names of the overridden entries.

    Args:
        state_dict, kind: as `load_official_checkpoint` returns them.
        file_name: the checkpoint's file name, which chooses the model card's recipe.
        dtype (`torch.dtype`, *optional*): every weight cast to it (default: the checkpoint's).
        preset, num_attention_heads: checked against the tensors (see `transformer_from_official_state_dict`).
        resolution (`int`, *optional*): the default image side (else the file name's, or the release's; PixelDiT2
            grounded on a 768-wide DINOv3 without one in its name: 512).
        recipe_overrides (`dict`, *optional*): entries of `RECIPE_OVERRIDES` that replace the recipe's.
        transformer_overrides (`dict`, *optional*): PixelDiT2 settings the tensors do not hold
            (`PIXELDIT2_OVERRIDES`).
        quantization_config (*optional*): a diffusers quantization config the weights are quantized with as they
            load (`dtype`: the unquantized weights'); see `transformer_from_official_state_dict`.

    Raises:
        ValueError: for options that do not fit the checkpoint, and the errors of
            `transformer_from_official_state_dict`.
    """
    recipe_overrides = {k: v for k, v in (recipe_overrides or {}).items() if v is not None}
    transformer_overrides = {k: v for k, v in (transformer_overrides or {}).items() if v is not None}
    unknown = sorted(recipe_overrides.keys() - set(RECIPE_OVERRIDES)) + sorted(
        transformer_overrides.keys() - set(PIXELDIT2_OVERRIDES)
    )
    if unknown:
        raise ValueError(f"Unknown conversion options {unknown}.")
    if transformer_overrides and kind != "pixeldit2":
        raise ValueError(f"{', '.join(transformer_overrides)} are for PixelDiT2 checkpoints; this one is {kind}.")
    user_resolution = resolution
    if kind == "pixeldit2":
        state_dict, _ = split_grounding_encoder(state_dict)
        width = infer_pixeldit2_config_from_official_state_dict(_logical_shapes(state_dict))["grounding_embed_dim"]
        # the 512 px release grounds with the 768-wide DINOv3 ViT-B/16
        if resolution is None and not re.search(r"(?<!\d)(256|512)(?!\d)", Path(file_name).name):
            resolution = 512 if width == 768 else None
    recipe = official_sampling_recipe(file_name, kind, resolution)
    recipe.update(recipe_overrides)
    overridden = (["resolution"] if user_resolution is not None else []) + [
        name for name in (*RECIPE_OVERRIDES, *PIXELDIT2_OVERRIDES) if name in recipe_overrides | transformer_overrides
    ]
    if dtype is not None and quantization_config is None:
        state_dict = {key: tensor.to(dtype) for key, tensor in state_dict.items()}
    transformer = transformer_from_official_state_dict(
        state_dict,
        preset,
        num_attention_heads,
        quantization_config,
        dtype,
        sample_size=recipe["sample_size"],
        **{**recipe["transformer"], **transformer_overrides},
    )
    config = transformer.config
    if config.sample_size % config.patch_size:
        raise ValueError(
            f"The resolution {config.sample_size} is not a multiple of the patch size {config.patch_size}."
        )
    return transformer, recipe, overridden


def official_components(
    state_dict: dict[str, torch.Tensor],
    kind: str,
    file_name: str | Path,
    dtype: torch.dtype | None = None,
    grounding_encoder=None,
    grounding_encoder_heads: int | None = None,
    **options,
) -> OfficialComponents:
    """Converts a bare official state dict (`load_official_checkpoint`) into its pipeline's components: the
    transformer and recipe of `official_transformer` (`options` are its arguments), the recipe's scheduler and
    pipeline defaults, and PixelDiT2's grounding encoder. `scripts/convert_checkpoint.py` and `from_single_file`
    both build on it.

    Args:
        grounding_encoder (*optional*): PixelDiT2 without its encoder in the checkpoint: a `DINOv3ViTModel`, or a
            path / Hub id for `load_grounding_encoder`.
        grounding_encoder_heads (`int`, *optional*): heads of an encoder read from timm weights (default width / 64).

    Raises:
        ValueError: for a missing or superfluous grounding encoder, and the errors of `official_transformer`.
    """
    if grounding_encoder is not None and kind != "pixeldit2":
        raise ValueError(f"grounding_encoder is for PixelDiT2 checkpoints; this one is {kind}.")
    encoder = None
    if kind == "pixeldit2":
        denoiser, encoder_weights = split_grounding_encoder(state_dict)
        width = infer_pixeldit2_config_from_official_state_dict(_logical_shapes(denoiser))["grounding_embed_dim"]
        if encoder_weights is not None and grounding_encoder is not None:
            raise ValueError(
                "The checkpoint holds its grounding encoder: drop --grounding_encoder (grounding_encoder=)."
            )
        if encoder_weights is None and grounding_encoder is None:
            raise ValueError(
                f"This PixelDiT2 checkpoint holds no grounding encoder: pass --grounding_encoder "
                f"{DINOV3.get(width, DINOV3[384])} (grounding_encoder= of from_single_file; or a local transformers "
                f"DINOv3 folder, or a timm DINOv3 .safetensors file), a DINOv3 of width {width}."
            )
        if encoder_weights is not None:
            logger.info(f"Grounding encoder: the checkpoint's DINOv3 ({len(encoder_weights)} tensors, timm names)")
            encoder = dinov3_from_timm_state_dict(encoder_weights, grounding_encoder_heads)
        elif isinstance(grounding_encoder, (str, Path)):
            logger.info(f"Grounding encoder: {grounding_encoder}")
            encoder = load_grounding_encoder(grounding_encoder, grounding_encoder_heads)
        else:
            encoder = grounding_encoder
        if dtype is not None:
            encoder = encoder.to(dtype)
    transformer, recipe, overridden = official_transformer(state_dict, kind, file_name, dtype, **options)
    scheduler = sampling_scheduler(recipe["sampler"], recipe["shift"], recipe["time_grid"])
    defaults = {
        "default_num_inference_steps": recipe["num_inference_steps"],
        "default_guidance_scale": recipe["guidance_scale"],
        "default_guidance_interval": tuple(recipe["guidance_interval"]),
    }
    return OfficialComponents(kind, transformer, scheduler, defaults, recipe, overridden, encoder)
