# Copyright 2026 The diffusers-pixeldit authors. Licensed under the Apache License, Version 2.0.
"""Weights of the official PixelDiT code <-> `PixelDiTTransformer2DModel`.

The official model state dicts (`PixDiT` of the ImageNet release, `PixDiT_T2I` of the text-to-image release) map to
ours by renaming modules, splitting each fused `qkv` projection into `to_q`/`to_k`/`to_v`, and merging a SwiGLU's
`w1` (gate) and `w3` (up) into diffusers' `ff.net.0.proj` (`[w3; w1]`). Both directions only move and concatenate
tensors, so the round trip is bit-exact. `infer_config_from_official_state_dict` reads the architecture from the
tensor shapes.
"""

import math
import re
from typing import Any, NamedTuple

import torch


class _Rule(NamedTuple):
    """Official module paths <-> our module paths ("#" = block index); 1:1 rename, 1:3 qkv split or 2:1 SwiGLU."""

    official: tuple[str, ...]
    ours: tuple[str, ...]


def _rename(official: str, ours: str) -> _Rule:
    return _Rule((official,), (ours,))


_COMMON_RULES = [
    _rename("s_embedder.proj", "patch_embed"),
    _rename("t_embedder.mlp.0", "time_embed.linear_1"),
    _rename("t_embedder.mlp.2", "time_embed.linear_2"),
    _rename("pixel_embedder.proj", "pixel_embed"),
    _rename("final_layer.norm", "norm_out"),
    _rename("final_layer.linear", "proj_out"),
    _rename("pixel_blocks.#.adaLN_modulation.0", "pixel_blocks.#.adaln_modulation"),
    _rename("pixel_blocks.#.norm1", "pixel_blocks.#.norm1"),
    _rename("pixel_blocks.#.norm2", "pixel_blocks.#.norm2"),
    _rename("pixel_blocks.#.compress_to_attn", "pixel_blocks.#.compact"),
    _rename("pixel_blocks.#.expand_from_attn", "pixel_blocks.#.expand"),
    _Rule(("pixel_blocks.#.attn.qkv",), tuple(f"pixel_blocks.#.attn.to_{x}" for x in "qkv")),
    _rename("pixel_blocks.#.attn.q_norm", "pixel_blocks.#.attn.norm_q"),
    _rename("pixel_blocks.#.attn.k_norm", "pixel_blocks.#.attn.norm_k"),
    _rename("pixel_blocks.#.attn.proj", "pixel_blocks.#.attn.to_out.0"),
    _rename("pixel_blocks.#.mlp.fc1", "pixel_blocks.#.ff.net.0.proj"),
    _rename("pixel_blocks.#.mlp.fc2", "pixel_blocks.#.ff.net.2"),
]
_CLASS_CONDITIONAL_RULES = [
    _rename("y_embedder.embedding_table", "class_embed"),
    _rename("patch_blocks.#.adaLN_modulation.0", "transformer_blocks.#.adaln_modulation"),
    _rename("patch_blocks.#.norm1", "transformer_blocks.#.norm1"),
    _rename("patch_blocks.#.norm2", "transformer_blocks.#.norm2"),
    _Rule(("patch_blocks.#.attn.qkv",), tuple(f"transformer_blocks.#.attn.to_{x}" for x in "qkv")),
    _rename("patch_blocks.#.attn.q_norm", "transformer_blocks.#.attn.norm_q"),
    _rename("patch_blocks.#.attn.k_norm", "transformer_blocks.#.attn.norm_k"),
    _rename("patch_blocks.#.attn.proj", "transformer_blocks.#.attn.to_out.0"),
    _Rule(("patch_blocks.#.mlp.w1", "patch_blocks.#.mlp.w3"), ("transformer_blocks.#.ff.net.0.proj",)),
    _rename("patch_blocks.#.mlp.w2", "transformer_blocks.#.ff.net.2"),
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
    _Rule(("patch_blocks.#.mlp_x.w1", "patch_blocks.#.mlp_x.w3"), ("transformer_blocks.#.ff.net.0.proj",)),
    _rename("patch_blocks.#.mlp_x.w2", "transformer_blocks.#.ff.net.2"),
    _Rule(("patch_blocks.#.mlp_y.w1", "patch_blocks.#.mlp_y.w3"), ("transformer_blocks.#.ff_context.net.0.proj",)),
    _rename("patch_blocks.#.mlp_y.w2", "transformer_blocks.#.ff_context.net.2"),
]
# Parameters that sit directly on the model (no module path).
_TOP_LEVEL_PARAMETERS = {"y_pos_embedding": "context_pos_embed"}


def _rules(text_conditioned: bool) -> list[_Rule]:
    return _COMMON_RULES + (_TEXT_CONDITIONAL_RULES if text_conditioned else _CLASS_CONDITIONAL_RULES)


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
    """Maps a bare official model state dict (`PixDiT` or `PixDiT_T2I`, no `ema_denoiser.`/`core.` prefix) to
    `PixelDiTTransformer2DModel` names.

    Raises:
        ValueError: listing every key that is not part of an official PixelDiT model.
    """
    text_conditioned = "y_embedder.proj.weight" in state_dict
    return _convert(state_dict, _rules(text_conditioned), _TOP_LEVEL_PARAMETERS, "an official PixelDiT model", False)


def diffusers_to_official_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of `official_to_diffusers_state_dict`; the round trip is bit-exact.

    Raises:
        ValueError: listing every key that is not part of a `PixelDiTTransformer2DModel`.
    """
    text_conditioned = "context_embedder.weight" in state_dict
    top_level = {ours: official for official, ours in _TOP_LEVEL_PARAMETERS.items()}
    return _convert(state_dict, _rules(text_conditioned), top_level, "a PixelDiTTransformer2DModel", True)


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
    if swiglu_width != int(2 * int(inner_dim * 4.0) / 3):
        raise ValueError(f"SwiGLU width {swiglu_width} does not match mlp_ratio 4 for width {inner_dim}.")

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
