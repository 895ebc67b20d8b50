# Copyright 2026 The diffusers-pixeldit authors. Licensed under the Apache License, Version 2.0.
"""PixelDiT: a dual-level (patch + pixel) diffusion transformer that works directly in pixel space."""

import functools
import math
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.hooks._helpers import TransformerBlockMetadata, TransformerBlockRegistry
from diffusers.loaders import PeftAdapterMixin
from diffusers.models._modeling_parallel import ContextParallelInput, ContextParallelOutput
from diffusers.models.attention import AttentionMixin, AttentionModuleMixin, FeedForward
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.cache_utils import CacheMixin
from diffusers.models.embeddings import (
    TimestepEmbedding,
    apply_rotary_emb,
    get_1d_rotary_pos_embed,
    get_1d_sincos_pos_embed_from_grid,
    get_timestep_embedding,
)
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.normalization import RMSNorm
from diffusers.utils import apply_lora_scale, logging
from diffusers.utils.torch_utils import maybe_adjust_dtype_for_device, maybe_allow_in_graph

from ..single_file import FromOfficialModelMixin


logger = logging.get_logger(__name__)

TIMESTEP_INPUTS = ("sigma_x1000", "one_minus_sigma")
# diffusers' flow-matching time scale: the model's `timestep` input is σ · TIMESTEP_SCALE.
TIMESTEP_SCALE = 1000
# The official time embedding: 256 sinusoidal frequencies of the raw time with a maximum period of 10 (not 10000).
TIME_PROJ_DIM = 256
TIME_EMBED_MAX_PERIOD = 10
NORM_EPS = 1e-6
IMAGENET_NUM_CLASSES = 1000
# The text-to-image release's learned text positions (also its prompt length in tokens).
RELEASE_MAX_TEXT_LENGTH = 300
# Position tables (RoPE, pixel sin-cos) kept per (kind, sizes, device, dtype); a few resolutions at a time.
CONSTANT_TABLE_CACHE_SIZE = 32

# Architectures of the paper / official release. The class-conditional ones use the ImageNet release's time and
# velocity conventions, the text-to-image one those of the T2I release (see `PixelDiTTransformer2DModel`).
_C2I_RELEASE = {"timestep_input": "one_minus_sigma", "negate_output": True, "num_classes": IMAGENET_NUM_CLASSES}
PIXELDIT_PRESETS: dict[str, dict[str, Any]] = {
    "PixelDiT-B": {
        **_C2I_RELEASE,
        "sample_size": 256,
        "num_layers": 12,
        "num_attention_heads": 12,
        "attention_head_dim": 64,
        "num_pixel_layers": 2,
    },
    "PixelDiT-L": {
        **_C2I_RELEASE,
        "sample_size": 256,
        "num_layers": 22,
        "num_attention_heads": 16,
        "attention_head_dim": 64,
        "num_pixel_layers": 4,
    },
    "PixelDiT-XL": {
        **_C2I_RELEASE,
        "sample_size": 256,
        "num_layers": 26,
        "num_attention_heads": 16,
        "attention_head_dim": 72,
        "num_pixel_layers": 4,
    },
    "PixelDiT-T2I": {
        "timestep_input": "sigma_x1000",
        "negate_output": False,
        "sample_size": 1024,
        "num_layers": 14,
        "num_attention_heads": 24,
        "attention_head_dim": 64,
        "num_pixel_layers": 2,
        "pixel_num_attention_heads": 16,
        "pixel_attention_head_dim": 72,
        "num_classes": None,
        "text_embed_dim": 2304,
        "max_text_length": RELEASE_MAX_TEXT_LENGTH,
    },
}


def _grid_positions(extent: float, size: int, device: torch.device | None) -> torch.Tensor:
    """`torch.linspace(0, extent, size)` in float32. Under `torch.compile` it is computed as compiled `linspace` computes
    it (`torch._refs.linspace`: the first half counted up from 0, the rest down from `extent`) but from `arange`, so
    that `size` stays a dynamic dimension instead of being specialised; it can differ from eager `linspace` by one
    float32 ulp."""
    if not torch.compiler.is_compiling() or size == 1:
        return torch.linspace(0, extent, size, device=device)
    index = torch.arange(size, device=device, dtype=torch.float32)
    step = extent / (size - 1)
    return torch.where(index < size / 2, step * index, extent - step * (size - 1 - index))


def get_2d_interleaved_rotary_pos_embed(
    head_dim: int,
    grid_height: int,
    grid_width: int,
    grid_extent: float = 16.0,
    theta: float = 10000.0,
    device: torch.device | None = None,
    num_prefix: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """2-D RoPE on a patch grid, as PixelDiT defines it.

    Positions are `linspace(0, grid_extent, n)` along each axis (whatever the grid size); each rotated channel pair
    `(2j, 2j + 1)` takes the x angle for even `j` and the y angle for odd `j`, with frequencies
    `theta ** (-4i / head_dim)`. Computed in float32. `num_prefix` identity rows (cos 1, sin 0) come first, for tokens
    that carry no rotary position (PixelDiT2's in-context class tokens).

    Returns:
        `(cos, sin)`, each of shape `(num_prefix + grid_height * grid_width, head_dim)`, for
        `apply_rotary_emb(use_real=True)`.
    """
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 4, device=device)[: head_dim // 4].float() / head_dim))
    pos_y, pos_x = torch.meshgrid(
        _grid_positions(grid_extent, grid_height, device),
        _grid_positions(grid_extent, grid_width, device),
        indexing="ij",
    )
    angles = torch.stack([torch.outer(pos_x.reshape(-1), freqs), torch.outer(pos_y.reshape(-1), freqs)], dim=-1)
    angles = torch.cat([angles.new_zeros(num_prefix, head_dim // 2), angles.flatten(1)])  # x0, y0, x1, y1, ...
    return angles.cos().repeat_interleave(2, dim=-1), angles.sin().repeat_interleave(2, dim=-1)


def get_pixel_sincos_pos_embed(
    embed_dim: int, height: int, width: int, device: torch.device, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed 2-D sin-cos embedding of the pixels, as its two 1-D factors.

    MAE-style: the embedding of the pixel in row r, column c is `cat([columns[c], rows[r]])` — the column index fills
    the first half. Computed in float64 where the device supports it, returned in `dtype`.

    Returns:
        `(columns, rows)` of shapes `(width, embed_dim / 2)` and `(height, embed_dim / 2)`.
    """
    float_dtype = maybe_adjust_dtype_for_device(torch.float64, device)
    columns, rows = (
        get_1d_sincos_pos_embed_from_grid(embed_dim // 2, torch.arange(size, device=device, dtype=float_dtype))
        for size in (width, height)
    )
    return columns.to(dtype), rows.to(dtype)


def get_text_rotary_pos_embed(
    head_dim: int, length: int, theta: float, use_rope: bool, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """1-D RoPE over text positions `0 … length − 1` (identity rotations when `use_rope` is False); `(cos, sin)`,
    each `(length, head_dim)`."""
    if not use_rope:
        ones = torch.ones(length, head_dim, device=device)
        return ones, torch.zeros_like(ones)
    positions = torch.arange(length, device=device, dtype=torch.float32)
    return get_1d_rotary_pos_embed(head_dim, positions, theta=theta, use_real=True)


@functools.lru_cache(maxsize=CONSTANT_TABLE_CACHE_SIZE)
def _cached_constant_table(make_table: Callable, *args):
    # Built outside any inference-mode / autograd context, so that a table made while sampling can serve training.
    with torch.inference_mode(False), torch.no_grad():
        return make_table(*args)


def model_from_preset(model_class: type, presets: dict[str, dict[str, Any]], name: str, overrides: dict):
    """A randomly initialised `model_class` built from preset `name` of `presets` (overrides win)."""
    if name not in presets:
        raise ValueError(f"Unknown {model_class.__name__} preset {name!r}; choose one of {sorted(presets)}.")
    return model_class(**{**presets[name], **overrides})


def image_rotary_emb(config, head_dim: int, grid_height: int, grid_width: int, device, num_prefix: int = 0):
    """The patch-grid RoPE `(cos, sin)` of a `config` (its `rope_grid_extent` and `rope_theta`), from the
    constant-table cache; see `get_2d_interleaved_rotary_pos_embed`."""
    return constant_table(
        get_2d_interleaved_rotary_pos_embed,
        *(head_dim, grid_height, grid_width, config.rope_grid_extent, config.rope_theta, device, num_prefix),
    )


def constant_table(make_table: Callable, *args):
    """`make_table(*args)` for the tensors that depend only on sizes, device and dtype (position, RoPE and
    normalisation tables), from a small bounded cache in eager mode; computed in the graph under `torch.compile`
    (which then needs no guards on the cache). The tables are shared: never modify them in place."""
    if torch.compiler.is_compiling():
        return make_table(*args)
    return _cached_constant_table(make_table, *args)


class PixelDiTRotaryPosEmbed(nn.Module):
    """The 2-D RoPE of a patch grid (`get_2d_interleaved_rotary_pos_embed`, from the constant-table cache), as a
    module without weights: context parallelism splits its tables where they are made (`_cp_plan`)."""

    def __init__(self, head_dim: int, grid_extent: float, theta: float):
        super().__init__()
        # named as the model config's fields, which `image_rotary_emb` reads
        self.head_dim, self.rope_grid_extent, self.rope_theta = head_dim, grid_extent, theta

    def forward(self, grid_height: int, grid_width: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """`(cos, sin)`, each `(grid_height * grid_width, head_dim)`."""
        return image_rotary_emb(self, self.head_dim, grid_height, grid_width, device)


class PixelDiTTextRotaryPosEmbed(nn.Module):
    """The 1-D RoPE of the text tokens (`get_text_rotary_pos_embed`, cached), as a module for `_cp_plan`."""

    def __init__(self, head_dim: int, theta: float, use_rope: bool):
        super().__init__()
        self.head_dim, self.theta, self.use_rope = head_dim, theta, use_rope

    def forward(self, length: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """`(cos, sin)`, each `(length, head_dim)`."""
        return constant_table(get_text_rotary_pos_embed, self.head_dim, length, self.theta, self.use_rope, device)


def check_image_inputs(hidden_states: torch.Tensor, timestep: torch.Tensor, in_channels: int, patch_size: int):
    """Shapes of a PixelDiT model's image and time inputs; raises a `ValueError` naming the problem."""
    if hidden_states.ndim != 4 or hidden_states.shape[1] != in_channels:
        raise ValueError(
            f"`hidden_states` must be (batch, {in_channels}, height, width), got {tuple(hidden_states.shape)}."
        )
    batch_size, _, height, width = hidden_states.shape
    if height % patch_size or width % patch_size:
        raise ValueError(
            f"Image size {height}x{width} (height x width) is not divisible by the patch size {patch_size}."
        )
    if timestep.ndim > 1 or (timestep.ndim == 1 and timestep.shape[0] not in (1, batch_size)):
        raise ValueError(f"`timestep` must be a scalar or have shape ({batch_size},), got {tuple(timestep.shape)}.")


def check_class_labels(class_labels: torch.Tensor | None, batch_size: int, num_classes: int):
    """Class ids `(B,)` in [0, num_classes] (`num_classes` is the null class). The range is checked only where that
    costs no device synchronisation (on the CPU, eagerly); the pipelines check the ids they are given first."""
    if class_labels is None:
        raise ValueError("This class-conditional PixelDiT needs `class_labels`.")
    if class_labels.shape != (batch_size,) or class_labels.is_floating_point():
        raise ValueError(
            f"`class_labels` must be integer ids of shape ({batch_size},), got {class_labels.dtype} "
            f"{tuple(class_labels.shape)}."
        )
    if class_labels.device.type == "cpu" and not torch.compiler.is_compiling():
        invalid = (class_labels < 0) | (class_labels > num_classes)
        if invalid.any():
            raise ValueError(
                f"Class ids must be in [0, {num_classes}] ({num_classes} is the null class); "
                f"got {class_labels[invalid].tolist()}."
            )


def time_projection(timestep: torch.Tensor, batch_size: int, timestep_input: str) -> torch.Tensor:
    """The official sinusoidal time features `(B, TIME_PROJ_DIM)` (float32) of diffusers' `timestep` = σ·1000, fed as
    given (`"sigma_x1000"`) or as the data time t = 1 − σ (`"one_minus_sigma"`)."""
    timestep = timestep.float().expand(batch_size)
    if timestep_input == "one_minus_sigma":
        timestep = 1 - timestep / TIMESTEP_SCALE
    return get_timestep_embedding(
        timestep, TIME_PROJ_DIM, flip_sin_to_cos=True, downscale_freq_shift=0, max_period=TIME_EMBED_MAX_PERIOD
    )


def patchify(hidden_states: torch.Tensor, patch_size: int) -> torch.Tensor:
    """`(B, C, H, W)` -> `(B, L, C·p²)` patches in raster order, channel-major inside a patch (`F.unfold`'s layout)."""
    batch_size, channels, height, width = hidden_states.shape
    patches = hidden_states.reshape(
        batch_size, channels, height // patch_size, patch_size, width // patch_size, patch_size
    )
    return patches.permute(0, 2, 4, 1, 3, 5).flatten(3).flatten(1, 2)


def unpatchify(tokens: torch.Tensor, patch_size: int, height: int, width: int) -> torch.Tensor:
    """`(B, L, p², C)` or `(B, L, p²·C)` per-patch pixels, pixel-major with the channel last -> `(B, C, H, W)`."""
    batch_size, grid_height, grid_width = tokens.shape[0], height // patch_size, width // patch_size
    tokens = tokens.reshape(batch_size, grid_height, grid_width, patch_size, patch_size, -1)
    return tokens.permute(0, 5, 1, 3, 2, 4).reshape(batch_size, -1, height, width)


class PixelDiTAttnProcessor:
    """Attention with q/k RMSNorm and rotary embeddings; joint `[text, image]` attention when context is given."""

    _attention_backend = None
    _parallel_config = None

    def __call__(
        self,
        attn: "PixelDiTAttention",
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if attn.fused_projections:
            query, key, value = attn.to_qkv(hidden_states).chunk(3, dim=-1)
        else:
            query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        query = attn.norm_q(query.unflatten(-1, (-1, attn.head_dim)))
        key = attn.norm_k(key.unflatten(-1, (-1, attn.head_dim)))
        value = value.unflatten(-1, (-1, attn.head_dim))

        if encoder_hidden_states is not None:
            if attn.fused_projections:
                context_query, context_key, context_value = attn.to_added_qkv(encoder_hidden_states).chunk(3, dim=-1)
            else:
                context_query = attn.add_q_proj(encoder_hidden_states)
                context_key = attn.add_k_proj(encoder_hidden_states)
                context_value = attn.add_v_proj(encoder_hidden_states)
            context_query = attn.norm_added_q(context_query.unflatten(-1, (-1, attn.head_dim)))
            context_key = attn.norm_added_k(context_key.unflatten(-1, (-1, attn.head_dim)))
            context_value = context_value.unflatten(-1, (-1, attn.head_dim))
            query = torch.cat([context_query, query], dim=1)
            key = torch.cat([context_key, key], dim=1)
            value = torch.cat([context_value, value], dim=1)

        if rotary_emb is not None:
            query = apply_rotary_emb(query, rotary_emb, sequence_dim=1)
            key = apply_rotary_emb(key, rotary_emb, sequence_dim=1)

        hidden_states = dispatch_attention_fn(
            query, key, value, backend=self._attention_backend, parallel_config=self._parallel_config
        )
        hidden_states = hidden_states.flatten(2, 3).to(query.dtype)

        if encoder_hidden_states is None:
            return attn.to_out[1](attn.to_out[0](hidden_states))
        context_length = encoder_hidden_states.shape[1]
        encoder_hidden_states, hidden_states = hidden_states.split_with_sizes(
            [context_length, hidden_states.shape[1] - context_length], dim=1
        )
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states.contiguous()))
        encoder_hidden_states = attn.to_add_out(encoder_hidden_states.contiguous())
        return hidden_states, encoder_hidden_states


class PixelDiTAttention(nn.Module, AttentionModuleMixin):
    """Multi-head attention (no qkv bias, RMSNorm on q and k), optionally joint with a text stream (MM-DiT)."""

    _default_processor_cls = PixelDiTAttnProcessor
    _available_processors = [PixelDiTAttnProcessor]

    def __init__(
        self,
        dim: int,
        heads: int,
        dim_head: int,
        added_kv_proj_dim: int | None = None,
        eps: float = NORM_EPS,
        dropout: float = 0.0,
        processor=None,
    ):
        super().__init__()
        self.heads = heads
        self.head_dim = dim_head
        self.inner_dim = heads * dim_head
        self.use_bias = False
        self.added_proj_bias = False
        self.added_kv_proj_dim = added_kv_proj_dim

        self.to_q = nn.Linear(dim, self.inner_dim, bias=False)
        self.to_k = nn.Linear(dim, self.inner_dim, bias=False)
        self.to_v = nn.Linear(dim, self.inner_dim, bias=False)
        self.norm_q = RMSNorm(dim_head, eps=eps)
        self.norm_k = RMSNorm(dim_head, eps=eps)
        self.to_out = nn.ModuleList([nn.Linear(self.inner_dim, dim), nn.Dropout(dropout)])

        if added_kv_proj_dim is not None:
            self.add_q_proj = nn.Linear(added_kv_proj_dim, self.inner_dim, bias=False)
            self.add_k_proj = nn.Linear(added_kv_proj_dim, self.inner_dim, bias=False)
            self.add_v_proj = nn.Linear(added_kv_proj_dim, self.inner_dim, bias=False)
            self.norm_added_q = RMSNorm(dim_head, eps=eps)
            self.norm_added_k = RMSNorm(dim_head, eps=eps)
            self.to_add_out = nn.Linear(self.inner_dim, added_kv_proj_dim)

        self.set_processor(processor or self._default_processor_cls())

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        return self.processor(self, hidden_states, encoder_hidden_states, rotary_emb)


def swiglu_hidden_dim(dim: int, mlp_ratio: float = 4.0, multiple_of: int = 0) -> int:
    """Llama-style SwiGLU width: two thirds of the nominal `dim * mlp_ratio` (3072 for dim 1152), rounded up to a
    multiple of `multiple_of` when it is positive (3413 → 3424 for dim 1280 and multiple 32)."""
    hidden_dim = int(2 * int(dim * mlp_ratio) / 3)
    if multiple_of > 0:
        hidden_dim = math.ceil(hidden_dim / multiple_of) * multiple_of
    return hidden_dim


def swiglu_feed_forward(dim: int, mlp_ratio: float = 4.0, multiple_of: int = 0, dropout: float = 0.0) -> FeedForward:
    """The bias-free SwiGLU feed-forward of the patch-level blocks, `w2(dropout(silu(w1 x) · w3 x))`."""
    inner_dim = swiglu_hidden_dim(dim, mlp_ratio, multiple_of)
    return FeedForward(dim, inner_dim=inner_dim, activation_fn="swiglu", bias=False, dropout=dropout)


@maybe_allow_in_graph
class PixelDiTTransformerBlock(nn.Module):
    """Patch-level DiT block (class-conditional release): RMSNorm + AdaLN from one vector per image."""

    def __init__(self, dim: int, num_attention_heads: int, attention_head_dim: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = RMSNorm(dim, eps=NORM_EPS)
        self.attn = PixelDiTAttention(dim, num_attention_heads, attention_head_dim)
        self.norm2 = RMSNorm(dim, eps=NORM_EPS)
        self.ff = swiglu_feed_forward(dim, mlp_ratio)
        self.adaln_modulation = nn.Linear(dim, 6 * dim)

    def forward(
        self, hidden_states: torch.Tensor, temb: torch.Tensor, rotary_emb: tuple[torch.Tensor, torch.Tensor]
    ) -> torch.Tensor:
        """hidden_states: (B, L, D) patch tokens; temb: (B, D) conditioning; returns (B, L, D)."""
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
            self.adaln_modulation(temb).unsqueeze(1).chunk(6, dim=-1)
        )
        norm_hidden_states = self.norm1(hidden_states) * (1 + scale_msa) + shift_msa
        hidden_states = hidden_states + gate_msa * self.attn(norm_hidden_states, rotary_emb=rotary_emb)
        norm_hidden_states = self.norm2(hidden_states) * (1 + scale_mlp) + shift_mlp
        return hidden_states + gate_mlp * self.ff(norm_hidden_states)


@maybe_allow_in_graph
class PixelDiTJointTransformerBlock(nn.Module):
    """Patch-level MM-DiT block (text-to-image release): separate image/text weights, joint attention."""

    def __init__(self, dim: int, num_attention_heads: int, attention_head_dim: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = RMSNorm(dim, eps=NORM_EPS)
        self.norm1_context = RMSNorm(dim, eps=NORM_EPS)
        self.attn = PixelDiTAttention(dim, num_attention_heads, attention_head_dim, added_kv_proj_dim=dim)
        self.norm2 = RMSNorm(dim, eps=NORM_EPS)
        self.norm2_context = RMSNorm(dim, eps=NORM_EPS)
        self.ff = swiglu_feed_forward(dim, mlp_ratio)
        self.ff_context = swiglu_feed_forward(dim, mlp_ratio)
        self.adaln_modulation = nn.Linear(dim, 6 * dim)
        self.adaln_modulation_context = nn.Linear(dim, 6 * dim)

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        temb: torch.Tensor,
        rotary_emb: tuple[torch.Tensor, torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """hidden_states: (B, L, D); encoder_hidden_states: (B, T, D); temb: (B, D); returns (text, image) tokens."""
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
            self.adaln_modulation(temb).unsqueeze(1).chunk(6, dim=-1)
        )
        c_shift_msa, c_scale_msa, c_gate_msa, c_shift_mlp, c_scale_mlp, c_gate_mlp = (
            self.adaln_modulation_context(temb).unsqueeze(1).chunk(6, dim=-1)
        )
        attn_output, context_attn_output = self.attn(
            self.norm1(hidden_states) * (1 + scale_msa) + shift_msa,
            encoder_hidden_states=self.norm1_context(encoder_hidden_states) * (1 + c_scale_msa) + c_shift_msa,
            rotary_emb=rotary_emb,
        )
        hidden_states = hidden_states + gate_msa * attn_output
        encoder_hidden_states = encoder_hidden_states + c_gate_msa * context_attn_output

        hidden_states = hidden_states + gate_mlp * self.ff(self.norm2(hidden_states) * (1 + scale_mlp) + shift_mlp)
        encoder_hidden_states = encoder_hidden_states + c_gate_mlp * self.ff_context(
            self.norm2_context(encoder_hidden_states) * (1 + c_scale_mlp) + c_shift_mlp
        )
        return encoder_hidden_states, hidden_states


@maybe_allow_in_graph
class PixelDiTPixelBlock(nn.Module):
    """Pixel-level (PiT) block: pixel-wise AdaLN, pixel token compaction -> attention -> expansion, GELU MLP.

    Every one of the p² pixels of a patch gets its own modulation from that patch's conditioning vector. For
    attention, the p² pixel tokens of a patch are compacted into one token of width `heads * head_dim`, attend over
    the patch grid (2-D RoPE) and are expanded back.

    Pre-modulation (the releases): `x += gate · f(norm(x) · (1 + scale) + shift)` for attention and MLP, six
    modulations per pixel. Post-modulation (official `pit_adaln_post_modulation`): `x += f(norm(x)) · (1 + scale) +
    shift`, no gate, four modulations per pixel in the order (scale, shift) for attention, then for the MLP.
    """

    def __init__(
        self,
        pixel_dim: int,
        cond_dim: int,
        patch_size: int,
        num_attention_heads: int,
        attention_head_dim: int,
        mlp_ratio: float = 4.0,
        post_modulation: bool = False,
    ):
        super().__init__()
        self.post_modulation = post_modulation
        pixels_per_patch = patch_size * patch_size
        attention_dim = num_attention_heads * attention_head_dim
        self.norm1 = RMSNorm(pixel_dim, eps=NORM_EPS)
        self.compact = nn.Linear(pixels_per_patch * pixel_dim, attention_dim)
        self.attn = PixelDiTAttention(attention_dim, num_attention_heads, attention_head_dim)
        self.expand = nn.Linear(attention_dim, pixels_per_patch * pixel_dim)
        self.norm2 = RMSNorm(pixel_dim, eps=NORM_EPS)
        self.ff = FeedForward(pixel_dim, inner_dim=int(pixel_dim * mlp_ratio), activation_fn="gelu")
        self.num_modulations = 4 if post_modulation else 6
        self.adaln_modulation = nn.Linear(cond_dim, self.num_modulations * pixels_per_patch * pixel_dim)

    def _attention(self, norm_hidden_states: torch.Tensor, rotary_emb) -> torch.Tensor:
        pixels_per_patch, pixel_dim = norm_hidden_states.shape[-2:]
        attn_output = self.attn(self.compact(norm_hidden_states.flatten(2)), rotary_emb=rotary_emb)
        return self.expand(attn_output).unflatten(-1, (pixels_per_patch, pixel_dim))

    def forward(
        self, hidden_states: torch.Tensor, temb: torch.Tensor, rotary_emb: tuple[torch.Tensor, torch.Tensor]
    ) -> torch.Tensor:
        """hidden_states: (B, L, p², d) pixel tokens per patch; temb: (B, L, D) per-patch conditioning."""
        pixels_per_patch, pixel_dim = hidden_states.shape[-2:]
        modulation = self.adaln_modulation(temb).unflatten(-1, (pixels_per_patch, self.num_modulations * pixel_dim))
        if self.post_modulation:
            scale_msa, shift_msa, scale_mlp, shift_mlp = modulation.chunk(4, dim=-1)
            hidden_states = hidden_states + self._attention(self.norm1(hidden_states), rotary_emb) * (1 + scale_msa)
            hidden_states = hidden_states + shift_msa
            hidden_states = hidden_states + self.ff(self.norm2(hidden_states)) * (1 + scale_mlp)
            return hidden_states + shift_mlp
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = modulation.chunk(6, dim=-1)

        norm_hidden_states = self.norm1(hidden_states) * (1 + scale_msa) + shift_msa
        hidden_states = hidden_states + gate_msa * self._attention(norm_hidden_states, rotary_emb)
        norm_hidden_states = self.norm2(hidden_states) * (1 + scale_mlp) + shift_mlp
        return hidden_states + gate_mlp * self.ff(norm_hidden_states)


# diffusers' block caches (FirstBlockCache, MagCache) look each block of `transformer_blocks` up in
# `TransformerBlockRegistry`, which lists only diffusers' own classes: out-of-tree blocks must register themselves,
# here at import, with the positions of the image (and text) tokens in what `forward` returns.
# The pixel blocks take no part in the caches: a cached step reuses the patch-level (semantic) pathway and still runs
# the pixel pathway on the current pixels. They cannot join the block caches (diffusers chains the blocks of one
# `transformer_blocks` list and carries one residual from the first to the last, and pixel tokens `(B, L, p², d)`
# have another shape than patch tokens `(B, L, D)`), and they are not worth an attention cache (their attention is
# 4.7 % of the forward on the class-conditional digits model, 3.4 % in a PixelDiT-XL 256 px forward). What this
# costs, measured with `benchmarks/bench_caches.py --pixel_pathway` on the digits models at their recipe: the pixel
# blocks take 61 % (class-conditional) and 37 % (text-to-image) of the forward time (32 % of an XL 256 px forward),
# which a cached step still spends; and the patch-level reuse deviates more than reusing the whole step would (mean
# relative velocity error 5.2 % and 6.8 %, against 3.0 % and 4.9 % for the whole-model residual).
TransformerBlockRegistry.register(PixelDiTTransformerBlock, TransformerBlockMetadata(return_hidden_states_index=0))
TransformerBlockRegistry.register(  # returns (text, image) tokens, as Flux's double-stream block
    PixelDiTJointTransformerBlock,
    TransformerBlockMetadata(return_hidden_states_index=1, return_encoder_hidden_states_index=0),
)


class PixelDiTTransformer2DModel(
    ModelMixin, ConfigMixin, PeftAdapterMixin, CacheMixin, AttentionMixin, FromOfficialModelMixin
):
    r"""
    PixelDiT (Yu et al., "PixelDiT: Pixel Diffusion Transformers for Image Generation", arXiv 2511.20645): a
    patch-level transformer for global semantics followed by a pixel-level pathway (pixel-wise AdaLN, pixel token
    compaction) that predicts the flow velocity for every pixel. No VAE.

    Interface (diffusers' flow-matching convention): `x_t = (1 - σ) x0 + σ noise`, σ = 1 is pure noise; `timestep` is
    σ·1000 (float) and the model returns the velocity `noise - x0`. Images are in [-1, 1].

    The official releases feed the network different time inputs and train opposite velocity signs; two config
    entries make either set of weights exact under the one interface above:
    - `timestep_input="sigma_x1000"` (T2I release): the time embedding sees `timestep` as given;
      `"one_minus_sigma"` (ImageNet release): it sees `t = 1 - timestep / 1000` (t = 0 is noise).
    - `negate_output=True` (ImageNet release): the network's raw output is `x0 - noise` and is negated.

    Args:
        sample_size (`int`, defaults to 256): default image side in pixels (the pipelines' default height/width).
        patch_size (`int`, defaults to 16): side of a patch; height and width must be multiples of it.
        in_channels (`int`, defaults to 3): image channels (also the output channels).
        num_layers (`int`, defaults to 26): number of patch-level blocks (N).
        num_attention_heads (`int`, defaults to 16), attention_head_dim (`int`, defaults to 72): the patch-level
            width is their product (D); `attention_head_dim` must be a multiple of 4 (2-D RoPE).
        mlp_ratio (`float`, defaults to 4.0): nominal MLP ratio of the SwiGLU feed-forward (width 2/3 of D·ratio).
        num_pixel_layers (`int`, defaults to 4): number of pixel-level blocks (M).
        pixel_embed_dim (`int`, defaults to 16): width of a pixel token (d).
        pixel_num_attention_heads (`int`, *optional*), pixel_attention_head_dim (`int`, *optional*): the compacted
            pixel attention; default to the patch-level values.
        pixel_mlp_ratio (`float`, defaults to 4.0): MLP ratio of the pixel-level GELU feed-forward.
        pixel_post_modulation (`bool`, defaults to False): pixel blocks modulate their attention and MLP outputs
            (four modulations per pixel, no gates) instead of their inputs (official `pit_adaln_post_modulation`).
        num_classes (`int`, *optional*): class-conditional model with `num_classes + 1` class embeddings, the last
            one being the null (unconditional) class; 1000 (ImageNet) when neither it nor `text_embed_dim` is given.
        text_embed_dim (`int`, *optional*): text-conditional (MM-DiT) model taking text-encoder states of this width;
            excludes `num_classes`.
        max_text_length (`int`, defaults to 300): learned text positions; longer text is cut to this length.
        use_text_rope (`bool`, defaults to True): 1-D RoPE on the text tokens.
        rope_theta (`float`, defaults to 10000.0): RoPE base (image and text).
        rope_grid_extent (`float`, defaults to 16.0): 2-D RoPE positions span `[0, rope_grid_extent]` on each axis.
        timestep_input (`str`, defaults to `"one_minus_sigma"`), negate_output (`bool`, defaults to True): see above.
    """

    _supports_gradient_checkpointing = True
    _no_split_modules = ["PixelDiTTransformerBlock", "PixelDiTJointTransformerBlock", "PixelDiTPixelBlock"]
    _repeated_blocks = ["PixelDiTTransformerBlock", "PixelDiTJointTransformerBlock", "PixelDiTPixelBlock"]
    _skip_layerwise_casting_patterns = ["patch_embed", "pixel_embed", "pos_embed", "time_embed", "class_embed", "norm"]
    # Loaded in float32 whatever the dtype: the embeddings of time (sinusoids of period down to 10/2π) and class, whose
    # sum conditions every block. Not the RMSNorms: diffusers' RMSNorm returns float32 for a float32 weight, which
    # would feed float32 activations into the half-precision layers after it (it already reduces in float32).
    _keep_in_fp32_modules = ["time_embed", "class_embed"]
    _single_file_kinds = ("c2i", "t2i")

    @register_to_config
    def __init__(
        self,
        sample_size: int = 256,
        patch_size: int = 16,
        in_channels: int = 3,
        num_layers: int = 26,
        num_attention_heads: int = 16,
        attention_head_dim: int = 72,
        mlp_ratio: float = 4.0,
        num_pixel_layers: int = 4,
        pixel_embed_dim: int = 16,
        pixel_num_attention_heads: int | None = None,
        pixel_attention_head_dim: int | None = None,
        pixel_mlp_ratio: float = 4.0,
        pixel_post_modulation: bool = False,
        num_classes: int | None = None,
        text_embed_dim: int | None = None,
        max_text_length: int = RELEASE_MAX_TEXT_LENGTH,
        use_text_rope: bool = True,
        rope_theta: float = 10000.0,
        rope_grid_extent: float = 16.0,
        timestep_input: str = "one_minus_sigma",
        negate_output: bool = True,
    ):
        super().__init__()
        if num_classes is not None and text_embed_dim is not None:
            raise ValueError(
                "Set one of `num_classes` (class-conditional) and `text_embed_dim` (text-conditional), not both; got "
                f"num_classes={num_classes}, text_embed_dim={text_embed_dim}."
            )
        if num_classes is None and text_embed_dim is None:
            num_classes = IMAGENET_NUM_CLASSES
            self.register_to_config(num_classes=num_classes)
        if timestep_input not in TIMESTEP_INPUTS:
            raise ValueError(f"`timestep_input` must be one of {TIMESTEP_INPUTS}, got {timestep_input!r}.")
        pixel_num_attention_heads = pixel_num_attention_heads or num_attention_heads
        pixel_attention_head_dim = pixel_attention_head_dim or attention_head_dim
        for name, head_dim in (
            ("attention_head_dim", attention_head_dim),
            ("pixel_attention_head_dim", pixel_attention_head_dim),
        ):
            if head_dim % 4:
                raise ValueError(f"`{name}` must be a multiple of 4 for the 2-D RoPE, got {head_dim}.")

        self.inner_dim = num_attention_heads * attention_head_dim
        self.is_text_conditioned = text_embed_dim is not None

        self.patch_embed = nn.Linear(in_channels * patch_size * patch_size, self.inner_dim)
        self.time_embed = TimestepEmbedding(TIME_PROJ_DIM, self.inner_dim)
        if self.is_text_conditioned:
            self.context_embedder = nn.Linear(text_embed_dim, self.inner_dim)
            self.context_norm = RMSNorm(self.inner_dim, eps=NORM_EPS)
            self.context_pos_embed = nn.Parameter(torch.randn(1, max_text_length, self.inner_dim))
            block_cls = PixelDiTJointTransformerBlock
        else:
            self.class_embed = nn.Embedding(num_classes + 1, self.inner_dim)
            block_cls = PixelDiTTransformerBlock
        self.transformer_blocks = nn.ModuleList(
            [block_cls(self.inner_dim, num_attention_heads, attention_head_dim, mlp_ratio) for _ in range(num_layers)]
        )

        self.pixel_embed = nn.Linear(in_channels, pixel_embed_dim)
        self.pixel_blocks = nn.ModuleList(
            [
                PixelDiTPixelBlock(
                    pixel_embed_dim,
                    self.inner_dim,
                    patch_size,
                    pixel_num_attention_heads,
                    pixel_attention_head_dim,
                    pixel_mlp_ratio,
                    pixel_post_modulation,
                )
                for _ in range(num_pixel_layers)
            ]
        )
        self.norm_out = RMSNorm(pixel_embed_dim, eps=NORM_EPS)
        self.proj_out = nn.Linear(pixel_embed_dim, in_channels)
        self.rope = PixelDiTRotaryPosEmbed(attention_head_dim, rope_grid_extent, rope_theta)
        self.pixel_rope = PixelDiTRotaryPosEmbed(pixel_attention_head_dim, rope_grid_extent, rope_theta)
        if self.is_text_conditioned:
            self.text_rope = PixelDiTTextRotaryPosEmbed(attention_head_dim, rope_theta, use_text_rope)
        self._cp_plan = self._context_parallel_plan()

        self.gradient_checkpointing = False

    def _context_parallel_plan(self) -> dict:
        """diffusers' context parallelism (`enable_parallelism`): the patch sequence is split where it is made (the
        patch embedding, the RoPE tables), the text and pixel tokens as the first block of their pathway takes them,
        and the pixel outputs `(B, L, p², C)` are gathered after `proj_out`. Every split is along the patch grid, so
        the pixel tokens of a patch stay with its patch token; the sequence and the text length must divide by the
        degree."""
        split_tables = {i: ContextParallelInput(split_dim=0, expected_dims=2, split_output=True) for i in (0, 1)}
        plan = {
            "patch_embed": {0: ContextParallelInput(split_dim=1, expected_dims=3, split_output=True)},
            "rope": split_tables,
            "pixel_rope": split_tables,
            "pixel_blocks.0": {"hidden_states": ContextParallelInput(split_dim=1, expected_dims=4)},
            "proj_out": ContextParallelOutput(gather_dim=1, expected_dims=4),
        }
        if self.is_text_conditioned:
            plan["text_rope"] = split_tables
            plan["transformer_blocks.0"] = {
                "encoder_hidden_states": ContextParallelInput(split_dim=1, expected_dims=3)
            }
        return plan

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "PixelDiTTransformer2DModel":
        """Builds a randomly initialised model from a preset of `PIXELDIT_PRESETS` (overrides win)."""
        return model_from_preset(cls, PIXELDIT_PRESETS, name, overrides)

    def initialize_weights(self) -> "PixelDiTTransformer2DModel":
        """The official initialisation for training from scratch, in place: Xavier-uniform patch embedding,
        N(0, 0.02) time and class embeddings, zero AdaLN modulations and output projection (so the model starts by
        predicting 0). Construction keeps PyTorch's default initialisation, as diffusers models do; returns `self`.
        """
        nn.init.xavier_uniform_(self.patch_embed.weight)
        nn.init.zeros_(self.patch_embed.bias)
        nn.init.normal_(self.time_embed.linear_1.weight, std=0.02)
        nn.init.normal_(self.time_embed.linear_2.weight, std=0.02)
        if not self.is_text_conditioned:
            nn.init.normal_(self.class_embed.weight, std=0.02)
        for block in [*self.transformer_blocks, *self.pixel_blocks]:
            for name, module in block.named_children():
                if name.startswith("adaln_modulation"):
                    nn.init.zeros_(module.weight)
                    nn.init.zeros_(module.bias)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)
        return self

    def _check_inputs(self, hidden_states, timestep, class_labels, encoder_hidden_states):
        config = self.config
        check_image_inputs(hidden_states, timestep, config.in_channels, config.patch_size)
        batch_size = hidden_states.shape[0]

        if self.is_text_conditioned:
            if class_labels is not None:
                raise ValueError(
                    "This is a text-conditional PixelDiT: pass `encoder_hidden_states`, not `class_labels`."
                )
            if encoder_hidden_states is None:
                raise ValueError("This text-conditional PixelDiT needs `encoder_hidden_states`.")
            if encoder_hidden_states.ndim != 3 or encoder_hidden_states.shape[-1] != config.text_embed_dim:
                raise ValueError(
                    f"`encoder_hidden_states` must be (batch, length, {config.text_embed_dim}), "
                    f"got {tuple(encoder_hidden_states.shape)}."
                )
            if encoder_hidden_states.shape[0] != batch_size:
                raise ValueError(
                    f"`encoder_hidden_states` has batch {encoder_hidden_states.shape[0]}, images have {batch_size}."
                )
            return
        if encoder_hidden_states is not None:
            raise ValueError("This is a class-conditional PixelDiT: pass `class_labels`, not `encoder_hidden_states`.")
        check_class_labels(class_labels, batch_size, config.num_classes)

    @apply_lora_scale("attention_kwargs")
    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        class_labels: torch.LongTensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_kwargs: dict[str, Any] | None = None,
        return_dict: bool = True,
    ) -> Transformer2DModelOutput | tuple[torch.Tensor]:
        """
        Args:
            hidden_states (`torch.Tensor` of shape `(B, C, H, W)`): noisy images `x_t` in [-1, 1]; H and W multiples
                of `patch_size`.
            timestep (`torch.Tensor` of shape `(B,)` or scalar): σ·1000 (float), 1000 = pure noise.
            class_labels (`torch.LongTensor` of shape `(B,)`): class ids in [0, num_classes]; `num_classes` is the
                null class (class-conditional models).
            encoder_hidden_states (`torch.Tensor` of shape `(B, T, text_embed_dim)`): text-encoder states
                (text-conditional models). Every token is attended to, padding included, as in the official model;
                there is no attention mask.
            attention_kwargs (`dict`, *optional*): `{"scale": s}` scales LoRA layers.
            return_dict (`bool`, defaults to True): return a `Transformer2DModelOutput` rather than a tuple.

        Returns:
            The velocity `noise - x0`, `(B, C, H, W)`.
        """
        if not torch.is_tensor(timestep):
            timestep = torch.tensor(timestep, device=hidden_states.device)
        self._check_inputs(hidden_states, timestep, class_labels, encoder_hidden_states)
        batch_size, _, height, width = hidden_states.shape
        patch_size = self.config.patch_size
        grid_height, grid_width = height // patch_size, width // patch_size
        device = hidden_states.device

        dtype = hidden_states.dtype
        time_proj = time_projection(timestep, batch_size, self.config.timestep_input)
        # (B, D), in the embedding's dtype (float32 under `_keep_in_fp32_modules`) until the blocks take it
        temb = self.time_embed(time_proj.to(self.time_embed.linear_1.weight.dtype))

        patch_tokens = self.patch_embed(patchify(hidden_states, patch_size))  # (B, L, D)
        rotary_emb = self.rope(grid_height, grid_width, device)

        if self.is_text_conditioned:
            text = encoder_hidden_states[:, : self.config.max_text_length]
            text_length = text.shape[1]
            text_tokens = self.context_norm(self.context_embedder(text))
            text_tokens = text_tokens + self.context_pos_embed[:, :text_length].to(text_tokens.dtype)
            text_rotary_emb = self.text_rope(text_length, device)
            joint_rotary_emb = tuple(torch.cat([t, i]) for t, i in zip(text_rotary_emb, rotary_emb))
            block_cond = F.silu(temb).to(dtype)
            for block in self.transformer_blocks:
                if torch.is_grad_enabled() and self.gradient_checkpointing:
                    text_tokens, patch_tokens = self._gradient_checkpointing_func(
                        block, patch_tokens, text_tokens, block_cond, joint_rotary_emb
                    )
                else:
                    text_tokens, patch_tokens = block(patch_tokens, text_tokens, block_cond, joint_rotary_emb)
        else:
            block_cond = F.silu(temb + self.class_embed(class_labels).to(temb.dtype)).to(dtype)
            for block in self.transformer_blocks:
                if torch.is_grad_enabled() and self.gradient_checkpointing:
                    patch_tokens = self._gradient_checkpointing_func(block, patch_tokens, block_cond, rotary_emb)
                else:
                    patch_tokens = block(patch_tokens, block_cond, rotary_emb)
        pixel_cond = F.silu(temb.to(dtype).unsqueeze(1) + patch_tokens)  # (B, L, D): one conditioning vector per patch

        # Pixel level: (B, C, H, W) -> (B, L, p², d) with pixels in raster order inside each patch.
        pixel_tokens = self.pixel_embed(hidden_states.permute(0, 2, 3, 1))
        columns, rows = constant_table(
            get_pixel_sincos_pos_embed, self.config.pixel_embed_dim, height, width, device, pixel_tokens.dtype
        )
        pos_embed = torch.cat([columns.expand(height, -1, -1), rows[:, None].expand(-1, width, -1)], dim=-1)
        pixel_tokens = pixel_tokens + pos_embed
        pixel_tokens = pixel_tokens.unflatten(1, (grid_height, patch_size)).unflatten(3, (grid_width, patch_size))
        pixel_tokens = pixel_tokens.transpose(2, 3).flatten(3, 4).flatten(1, 2)
        pixel_rotary_emb = self.pixel_rope(grid_height, grid_width, device)
        for block in self.pixel_blocks:
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                pixel_tokens = self._gradient_checkpointing_func(block, pixel_tokens, pixel_cond, pixel_rotary_emb)
            else:
                pixel_tokens = block(pixel_tokens, pixel_cond, pixel_rotary_emb)

        output = unpatchify(self.proj_out(self.norm_out(pixel_tokens)), patch_size, height, width)
        if self.config.negate_output:
            output = -output

        if not return_dict:
            return (output,)
        return Transformer2DModelOutput(sample=output)
