# Copyright 2026 The diffusers-pixeldit authors. Licensed under the Apache License, Version 2.0.
"""PixelDiT2: a single-stream pixel-space DiT grounded at every step by a frozen DINOv3 that sees the noisy image."""

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.hooks._helpers import TransformerBlockMetadata, TransformerBlockRegistry
from diffusers.loaders import PeftAdapterMixin
from diffusers.models.attention import AttentionMixin
from diffusers.models.cache_utils import CacheMixin
from diffusers.models.embeddings import TimestepEmbedding
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.normalization import RMSNorm
from diffusers.utils import apply_lora_scale
from diffusers.utils.torch_utils import maybe_allow_in_graph

from ..single_file import FromOfficialModelMixin
from .transformer_pixeldit import (
    IMAGENET_NUM_CLASSES,
    NORM_EPS,
    TIME_PROJ_DIM,
    TIMESTEP_SCALE,
    PixelDiTAttention,
    check_class_labels,
    check_image_inputs,
    constant_table,
    image_rotary_emb,
    model_from_preset,
    patchify,
    swiglu_feed_forward,
    time_projection,
    unpatchify,
)


# The official sampler's clamp of the velocity `(x̂ − x_t) / max(1 − t, t_eps)` near the data end.
VELOCITY_CLAMP_MIN_SIGMA = 0.05
# The grounding encoder's input normalisation (DINOv3's, ImageNet's).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_H16 = {
    "num_layers": 32,
    "num_attention_heads": 16,
    "attention_head_dim": 80,
    "in_context_length": 32,
    "in_context_start": 8,
    "grounding_num_attention_heads": 16,
    "dropout": 0.2,
}
PIXELDIT2_PRESETS: dict[str, dict[str, Any]] = {
    # the released models (`nvidia/PixelDiT2-ImageNet`): DINOv3 ViT-S/16 and ViT-B/16 grounding
    "PixelDiT2-H/16-256": {**_H16, "sample_size": 256, "grounding_embed_dim": 384},
    "PixelDiT2-H/16-512": {
        **_H16,
        "sample_size": 512,
        "mlp_hidden_multiple": 32,
        "grounding_embed_dim": 768,
        "silu_conditioning": False,
        "noise_scale": 2.0,
    },
    # architecture definitions of the official code (no released weights)
    "PixelDiT2-B/16": {
        "num_layers": 12,
        "num_attention_heads": 12,
        "attention_head_dim": 64,
        "in_context_start": 4,
        "grounding_num_attention_heads": 12,
    },
    "PixelDiT2-L/16": {"num_layers": 24, "num_attention_heads": 16, "attention_head_dim": 64, "in_context_start": 8},
}


def imagenet_normalization(device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """ImageNet's `(mean, std)`, each of shape `(1, 3, 1, 1)`, on `device` in `dtype`."""
    return tuple(
        torch.tensor(values, device=device).view(1, 3, 1, 1).to(dtype) for values in (IMAGENET_MEAN, IMAGENET_STD)
    )


def grounding_encoder_input(hidden_states: torch.Tensor, patch_size: int, encoder_patch_size: int) -> torch.Tensor:
    """The grounding encoder's input for `hidden_states` `(B, 3, H, W)` in [-1, 1] (noisy, any scale): mapped to
    [0, 1] and ImageNet-normalised in its own dtype, unclamped, then — only when the sizes differ — resized (bicubic) to
    `(H/p · q, W/p · q)` (q = the encoder's patch size), so that the encoder's token grid is the model's patch grid."""
    height, width = hidden_states.shape[-2:]
    size = (height // patch_size * encoder_patch_size, width // patch_size * encoder_patch_size)
    # cached: a host-to-device copy at every sampling step would wait for the device
    mean, std = constant_table(imagenet_normalization, hidden_states.device, hidden_states.dtype)
    pixel_values = ((hidden_states + 1.0) * 0.5 - mean) / std
    if size != (height, width):
        pixel_values = F.interpolate(pixel_values, size=size, mode="bicubic", align_corners=False)
    return pixel_values


@torch.no_grad()
def encode_grounding(encoder: nn.Module, hidden_states: torch.Tensor, patch_size: int) -> torch.Tensor:
    """The grounding tokens of `hidden_states` `(B, 3, H, W)`: a frozen DINOv3 (`transformers.DINOv3ViTModel`, in
    eval mode)'s last hidden states after the final norm, without the CLS and register tokens, `(B, H/p · W/p, C_enc)`.
    """
    config = encoder.config
    pixel_values = grounding_encoder_input(hidden_states, patch_size, config.patch_size)
    dtype = next(encoder.parameters()).dtype
    tokens = encoder(pixel_values=pixel_values.to(dtype)).last_hidden_state
    # contiguous, as the CFG batch built from them is: the transformer then sees the same strides at every step
    return tokens[:, 1 + config.num_register_tokens :].contiguous()


@maybe_allow_in_graph
class PixelDiT2TransformerBlock(nn.Module):
    """DiT block with pre-RMSNorm and adaLN-Zero from a per-token conditioning (SiLU inside the modulation).

    In the main stack the in-context class tokens travel beside the patch tokens as `encoder_hidden_states`: a block
    with `attends_context` runs on `[context, patches]` joined (the official single stream), the blocks before
    `in_context_start` pass the context through untouched. Keeping the two apart, with the same shapes at every
    block, is what diffusers' block caches need (they carry residuals of one shape from the first block to the last).
    """

    def __init__(
        self,
        dim: int,
        num_attention_heads: int,
        attention_head_dim: int,
        mlp_ratio: float = 4.0,
        mlp_hidden_multiple: int = 0,
        dropout: float = 0.0,
        attends_context: bool = False,
    ):
        super().__init__()
        self.attends_context = attends_context
        self.norm1 = RMSNorm(dim, eps=NORM_EPS)
        self.attn = PixelDiTAttention(dim, num_attention_heads, attention_head_dim, dropout=dropout)
        self.norm2 = RMSNorm(dim, eps=NORM_EPS)
        self.ff = swiglu_feed_forward(dim, mlp_ratio, mlp_hidden_multiple, dropout)
        self.adaln_modulation = nn.Linear(dim, 6 * dim)

    def _block(self, hidden_states: torch.Tensor, temb: torch.Tensor, rotary_emb) -> torch.Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaln_modulation(F.silu(temb)).chunk(
            6, dim=-1
        )
        norm_hidden_states = self.norm1(hidden_states) * (1 + scale_msa) + shift_msa
        hidden_states = hidden_states + gate_msa * self.attn(norm_hidden_states, rotary_emb=rotary_emb)
        norm_hidden_states = self.norm2(hidden_states) * (1 + scale_mlp) + shift_mlp
        return hidden_states + gate_mlp * self.ff(norm_hidden_states)

    def forward(
        self,
        hidden_states: torch.Tensor,
        temb: torch.Tensor,
        rotary_emb: tuple[torch.Tensor, torch.Tensor],
        encoder_hidden_states: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """hidden_states: (B, N, D); temb: (B, N, D) or (B, 1, D) conditioning; encoder_hidden_states: (B, T, D)
        in-context tokens, or None (the block alone). With `attends_context`, `temb` and `rotary_emb` cover the T + N
        joined tokens. Returns (B, N, D), or `(context, patches)` when given `encoder_hidden_states`."""
        if encoder_hidden_states is None:
            return self._block(hidden_states, temb, rotary_emb)
        if not self.attends_context:
            return encoder_hidden_states, self._block(hidden_states, temb, rotary_emb)
        num_context = encoder_hidden_states.shape[1]
        hidden_states = self._block(torch.cat([encoder_hidden_states, hidden_states], dim=1), temb, rotary_emb)
        # Contiguous, as the first such block's inputs are: under `compile_repeated_blocks` every block attending the
        # context then runs one compiled graph (slices of other strides would each need a graph of their own).
        return hidden_states[:, :num_context].contiguous(), hidden_states[:, num_context:].contiguous()


# diffusers' block caches (FirstBlockCache, MagCache) look each block of `transformer_blocks` up in
# `TransformerBlockRegistry`, which lists only diffusers' own classes: out-of-tree blocks must register themselves,
# here at import. The main stack's blocks return `(context, patches)`.
TransformerBlockRegistry.register(
    PixelDiT2TransformerBlock,
    TransformerBlockMetadata(return_hidden_states_index=1, return_encoder_hidden_states_index=0),
)


@maybe_allow_in_graph
class PixelDiT2GroundingBlock(PixelDiT2TransformerBlock):
    """A block of the grounding projection: the same DiT block on the grounding tokens alone, modulated by one
    vector per image. A class of its own so that `compile_repeated_blocks` compiles it apart from the main stack's
    blocks (its inputs have other shapes: together they would outgrow dynamo's recompile limit)."""

    def forward(
        self, hidden_states: torch.Tensor, temb: torch.Tensor, rotary_emb: tuple[torch.Tensor, torch.Tensor]
    ) -> torch.Tensor:
        """hidden_states: (B, N, D); temb: (B, 1, D); returns (B, N, D)."""
        return self._block(hidden_states, temb, rotary_emb)


class PixelDiT2GroundingProjection(nn.Module):
    """P_g: the grounding encoder's patch tokens -> one conditioning vector per patch, through transformer blocks
    modulated by a time embedding of their own."""

    def __init__(self, in_dim: int, dim: int, num_layers: int, num_attention_heads: int):
        super().__init__()
        self.proj_in = nn.Linear(in_dim, dim)
        self.time_embed = TimestepEmbedding(TIME_PROJ_DIM, dim)
        self.blocks = nn.ModuleList(
            [PixelDiT2GroundingBlock(dim, num_attention_heads, dim // num_attention_heads) for _ in range(num_layers)]
        )
        self.proj_out = nn.Linear(dim, dim)

    def forward(self, grounding_hidden_states, time_proj, rotary_emb) -> torch.Tensor:
        """grounding_hidden_states: (B, N, C_enc) in the compute dtype; time_proj: (B, 256); returns (B, N, D)."""
        hidden_states = self.proj_in(grounding_hidden_states)
        time_embed_dtype = self.time_embed.linear_1.weight.dtype  # float32 under `_keep_in_fp32_modules`
        temb = self.time_embed(time_proj.to(time_embed_dtype)).to(hidden_states.dtype).unsqueeze(1)
        for block in self.blocks:
            hidden_states = block(hidden_states, temb, rotary_emb)
        return self.proj_out(hidden_states)


class PixelDiT2Transformer2DModel(
    ModelMixin, ConfigMixin, PeftAdapterMixin, CacheMixin, AttentionMixin, FromOfficialModelMixin
):
    r"""
    PixelDiT2 ("Representation-Grounded Pixel Diffusion Transformers", NVIDIA): a patch-level DiT in pixel space whose
    every block is modulated per patch by the features a frozen DINOv3 extracts from the noisy input itself, with
    in-context class tokens. No VAE, no pixel-level blocks.

    Interface (diffusers' flow matching, as `PixelDiTTransformer2DModel`): `x_σ = (1 − σ) x0 + σ · noise` with
    `noise ~ N(0, noise_scale²)`; `timestep` = σ·1000; the model returns the velocity `noise − x0`. The network
    itself predicts the clean image x̂ (it sees the data time t = 1 − σ); the velocity is
    `(x_σ − x̂) / max(σ, velocity_clamp_min_sigma)`, the official sampler's clamped velocity with its sign flipped to
    diffusers' direction, computed in float32 from the float32 input. So `x̂ = x_σ − max(σ, 0.05) · velocity`.

    The grounding tokens come from the pipeline's `grounding_encoder` (see `encode_grounding`). Rows without them —
    all rows when `grounding_hidden_states` is None, or those where `grounding_mask` is False — take the official
    null conditioning (time and class only), as the unconditional CFG branch does.

    Args:
        sample_size (`int`, defaults to 256): default image side in pixels.
        patch_size (`int`, defaults to 16), in_channels (`int`, defaults to 3): patches and image channels.
        num_layers (`int`, defaults to 32), num_attention_heads (`int`, defaults to 16), attention_head_dim (`int`,
            defaults to 80): the transformer (width D = heads · head dim; head dim a multiple of 4 for the 2-D RoPE).
        mlp_ratio (`float`, defaults to 4.0), mlp_hidden_multiple (`int`, defaults to 0): SwiGLU width 2/3 of D·ratio,
            rounded up to this multiple when positive (the 512 release: 32).
        num_classes (`int`, defaults to 1000): classes; id `num_classes` is the null class.
        in_context_length (`int`, defaults to 32), in_context_start (`int`, defaults to 8): class tokens (class
            embedding + learned positions, no RoPE) joined to the sequence before block `in_context_start`; 0 tokens
            disables them.
        grounding_embed_dim (`int`, defaults to 384): width of the grounding encoder's tokens (DINOv3 S/16: 384,
            B/16: 768).
        grounding_num_layers (`int`, defaults to 1), grounding_num_attention_heads (`int`, *optional*): P_g's blocks
            (heads default to `num_attention_heads`).
        silu_conditioning (`bool`, defaults to True): SiLU of the per-patch conditioning before the blocks (so twice,
            with the blocks' own; the 256 release), or not (`single_silu_cond` of the 512 release).
        dropout (`float`, defaults to 0.0): dropout on the attention output and the SwiGLU hidden of the middle half
            of the blocks (training only).
        noise_scale (`float`, defaults to 1.0): the noise's standard deviation the model was trained with (2.0 for the
            512 release); the pipelines and training start from `noise_scale · N(0, I)`.
        velocity_clamp_min_sigma (`float`, defaults to 0.05): the clamp of σ in the velocity (official `t_eps`).
        rope_theta (`float`, defaults to 10000.0), rope_grid_extent (`float`, defaults to 16.0): the 2-D RoPE.
    """

    _supports_gradient_checkpointing = True
    _no_split_modules = ["PixelDiT2TransformerBlock", "PixelDiT2GroundingBlock"]
    _repeated_blocks = ["PixelDiT2TransformerBlock", "PixelDiT2GroundingBlock"]
    _skip_layerwise_casting_patterns = ["patch_embed", "time_embed", "class_embed", "norm"]
    # Loaded in float32 whatever the dtype (see `PixelDiTTransformer2DModel`; P_g's time embedding included).
    _keep_in_fp32_modules = ["time_embed", "class_embed"]
    _single_file_kinds = ("pixeldit2",)

    @register_to_config
    def __init__(
        self,
        sample_size: int = 256,
        patch_size: int = 16,
        in_channels: int = 3,
        num_layers: int = 32,
        num_attention_heads: int = 16,
        attention_head_dim: int = 80,
        mlp_ratio: float = 4.0,
        mlp_hidden_multiple: int = 0,
        num_classes: int = IMAGENET_NUM_CLASSES,
        in_context_length: int = 32,
        in_context_start: int = 8,
        grounding_embed_dim: int = 384,
        grounding_num_layers: int = 1,
        grounding_num_attention_heads: int | None = None,
        silu_conditioning: bool = True,
        dropout: float = 0.0,
        noise_scale: float = 1.0,
        velocity_clamp_min_sigma: float = VELOCITY_CLAMP_MIN_SIGMA,
        rope_theta: float = 10000.0,
        rope_grid_extent: float = 16.0,
    ):
        super().__init__()
        if not 0 <= in_context_start < num_layers:
            raise ValueError(f"`in_context_start` must be in [0, {num_layers - 1}], got {in_context_start}.")
        grounding_num_attention_heads = grounding_num_attention_heads or num_attention_heads
        dim = num_attention_heads * attention_head_dim
        for name, head_dim in (
            ("attention_head_dim", attention_head_dim),
            ("grounding head dim (inner dim / grounding_num_attention_heads)", dim // grounding_num_attention_heads),
        ):
            if head_dim % 4:
                raise ValueError(f"The {name} must be a multiple of 4 for the 2-D RoPE, got {head_dim}.")
        if dim % grounding_num_attention_heads:
            raise ValueError(f"The width {dim} is not divisible by {grounding_num_attention_heads} grounding heads.")
        self.inner_dim = dim

        self.patch_embed = nn.Linear(in_channels * patch_size * patch_size, dim)
        self.time_embed = TimestepEmbedding(TIME_PROJ_DIM, dim)
        self.class_embed = nn.Embedding(num_classes + 1, dim)
        self.in_context_pos_embed = nn.Parameter(torch.zeros(1, in_context_length, dim)) if in_context_length else None
        self.grounding_proj = PixelDiT2GroundingProjection(
            grounding_embed_dim, dim, grounding_num_layers, grounding_num_attention_heads
        )
        dropout_blocks = range(num_layers // 4, num_layers // 4 * 3)  # the official middle half
        self.transformer_blocks = nn.ModuleList(
            [
                PixelDiT2TransformerBlock(
                    dim,
                    num_attention_heads,
                    attention_head_dim,
                    mlp_ratio,
                    mlp_hidden_multiple,
                    dropout if index in dropout_blocks else 0.0,
                    attends_context=bool(in_context_length) and index >= in_context_start,
                )
                for index in range(num_layers)
            ]
        )
        self.norm_out = RMSNorm(dim, eps=NORM_EPS)
        self.norm_out_modulation = nn.Linear(dim, 2 * dim)
        self.proj_out = nn.Linear(dim, patch_size * patch_size * in_channels)

        self.gradient_checkpointing = False

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "PixelDiT2Transformer2DModel":
        """Builds a randomly initialised model from a preset of `PIXELDIT2_PRESETS` (overrides win)."""
        return model_from_preset(cls, PIXELDIT2_PRESETS, name, overrides)

    def initialize_weights(self) -> "PixelDiT2Transformer2DModel":
        """The official initialisation for training from scratch, in place: Xavier-uniform patch embedding,
        N(0, 0.02) class, time and in-context position embeddings, zero adaLN modulations (the grounding blocks' and
        the output's too) and output projection (so the model starts by predicting the clean image 0). Construction
        keeps PyTorch's default initialisation, as diffusers models do; returns `self`.
        """
        nn.init.xavier_uniform_(self.patch_embed.weight)
        nn.init.zeros_(self.patch_embed.bias)
        nn.init.normal_(self.class_embed.weight, std=0.02)
        nn.init.normal_(self.time_embed.linear_1.weight, std=0.02)
        nn.init.normal_(self.time_embed.linear_2.weight, std=0.02)
        if self.in_context_pos_embed is not None:
            nn.init.normal_(self.in_context_pos_embed, std=0.02)
        for module in [
            *(block.adaln_modulation for block in [*self.transformer_blocks, *self.grounding_proj.blocks]),
            self.norm_out_modulation,
            self.proj_out,
        ]:
            nn.init.zeros_(module.weight)
            nn.init.zeros_(module.bias)
        return self

    def _run_block(self, block, hidden_states, temb, rotary_emb, encoder_hidden_states):
        if torch.is_grad_enabled() and self.gradient_checkpointing:
            return self._gradient_checkpointing_func(block, hidden_states, temb, rotary_emb, encoder_hidden_states)
        return block(hidden_states, temb, rotary_emb, encoder_hidden_states)

    @apply_lora_scale("attention_kwargs")
    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        class_labels: torch.LongTensor,
        grounding_hidden_states: torch.Tensor | None = None,
        grounding_mask: torch.BoolTensor | None = None,
        attention_kwargs: dict[str, Any] | None = None,
        return_dict: bool = True,
    ) -> Transformer2DModelOutput | tuple[torch.Tensor]:
        """
        Args:
            hidden_states (`torch.Tensor` of shape `(B, C, H, W)`): noisy images `x_σ` (float32 is kept for the
                velocity even when the model runs in half precision); H and W multiples of `patch_size`.
            timestep (`torch.Tensor` of shape `(B,)` or scalar): σ·1000 (float), 1000 = pure noise.
            class_labels (`torch.LongTensor` of shape `(B,)`): class ids in [0, num_classes]; `num_classes` is null.
            grounding_hidden_states (`torch.Tensor` of shape `(B, H/p · W/p, grounding_embed_dim)`, *optional*): the
                grounding encoder's patch tokens of `hidden_states` (`encode_grounding`).
            grounding_mask (`torch.BoolTensor` of shape `(B,)`, *optional*): rows that use their grounding tokens;
                the others take the null conditioning (CFG's unconditional branch, grounding dropout in training).
            attention_kwargs (`dict`, *optional*): `{"scale": s}` scales LoRA layers.
            return_dict (`bool`, defaults to True): return a `Transformer2DModelOutput` rather than a tuple.

        Returns:
            The velocity `noise − x0`, `(B, C, H, W)`, float32 for float32 `hidden_states`.
        """
        if not torch.is_tensor(timestep):
            timestep = torch.tensor(timestep, device=hidden_states.device)
        config = self.config
        check_image_inputs(hidden_states, timestep, config.in_channels, config.patch_size)
        batch_size, _, height, width = hidden_states.shape
        check_class_labels(class_labels, batch_size, config.num_classes)
        grid_height, grid_width = height // config.patch_size, width // config.patch_size
        num_patches = grid_height * grid_width
        if grounding_hidden_states is not None and grounding_hidden_states.shape != (
            batch_size,
            num_patches,
            config.grounding_embed_dim,
        ):
            raise ValueError(
                f"`grounding_hidden_states` must be (batch, patches, grounding_embed_dim) = ({batch_size}, "
                f"{num_patches}, {config.grounding_embed_dim}), got {tuple(grounding_hidden_states.shape)}."
            )
        if grounding_mask is not None and (grounding_hidden_states is None or grounding_mask.shape != (batch_size,)):
            raise ValueError(f"`grounding_mask` must be ({batch_size},) booleans, with `grounding_hidden_states`.")
        device, dtype = hidden_states.device, self.dtype  # the compute dtype (quantized weights: not theirs)
        head_dim = config.attention_head_dim

        time_proj = time_projection(timestep, batch_size, "one_minus_sigma")
        # The conditioning is summed in the embeddings' dtype (float32 under `_keep_in_fp32_modules`), then cast.
        temb = self.time_embed(time_proj.to(self.time_embed.linear_1.weight.dtype))  # (B, D)
        class_emb = self.class_embed(class_labels).unsqueeze(1).to(temb.dtype)  # (B, 1, D)
        cond = (temb.unsqueeze(1) + class_emb).expand(-1, num_patches, -1)  # null conditioning, (B, N, D)
        if grounding_hidden_states is not None:
            grounding_head_dim = self.inner_dim // (config.grounding_num_attention_heads or config.num_attention_heads)
            grounding_rotary_emb = image_rotary_emb(config, grounding_head_dim, grid_height, grid_width, device)
            # the encoder's tokens in the compute dtype (its own may differ)
            grounding = self.grounding_proj(grounding_hidden_states.to(dtype), time_proj, grounding_rotary_emb)
            grounded_cond = grounding + temb.unsqueeze(1) + class_emb
            cond = (
                grounded_cond
                if grounding_mask is None
                else torch.where(grounding_mask.view(-1, 1, 1), grounded_cond, cond)
            )
        if config.silu_conditioning:
            cond = F.silu(cond)
        cond, class_emb = cond.to(dtype), class_emb.to(dtype)

        patch_tokens = self.patch_embed(patchify(hidden_states.to(dtype), config.patch_size))  # (B, N, D)
        rotary_emb = image_rotary_emb(config, head_dim, grid_height, grid_width, device)
        # The class tokens (class embedding + learned positions, no RoPE) join the attention at block
        # `in_context_start`, modulated by the mean of the per-patch conditioning; before it they wait untouched.
        num_context = config.in_context_length
        context = patch_tokens.new_zeros(batch_size, 0, self.inner_dim)
        if num_context:
            context = class_emb.expand(-1, num_context, -1) + self.in_context_pos_embed.to(patch_tokens.dtype)
            cond_with_context = torch.cat([cond.mean(dim=1, keepdim=True).expand(-1, num_context, -1), cond], 1)
            rotary_with_context = image_rotary_emb(config, head_dim, grid_height, grid_width, device, num_context)
        for block in self.transformer_blocks:
            if block.attends_context:
                context, patch_tokens = self._run_block(
                    block, patch_tokens, cond_with_context, rotary_with_context, context
                )
            else:
                context, patch_tokens = self._run_block(block, patch_tokens, cond, rotary_emb, context)

        shift, scale = self.norm_out_modulation(F.silu(cond)).chunk(2, dim=-1)
        sample = self.proj_out(self.norm_out(patch_tokens) * (1 + scale) + shift)  # (B, N, p²·C)
        sample = unpatchify(sample, config.patch_size, height, width)

        sigma = (timestep.float().expand(batch_size) / TIMESTEP_SCALE).clamp(min=config.velocity_clamp_min_sigma)
        velocity = (hidden_states.float() - sample.float()) / sigma.view(-1, 1, 1, 1)
        velocity = velocity.to(hidden_states.dtype)
        if not return_dict:
            return (velocity,)
        return Transformer2DModelOutput(sample=velocity)
