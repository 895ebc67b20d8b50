# Copyright 2026 The diffusers-pixeldit authors. Licensed under the Apache License, Version 2.0.
"""The training objective: rectified flow (σ sampling, timeshift, loss weighting) and REPA representation alignment.

Flow matching in diffusers' convention: `x_t = (1 − σ)·x0 + σ·s·ε` (σ = 1 is noise, s the noise scale, 1 but for
PixelDiT2 at 512 px) and the target is the velocity `s·ε − x0`. The loss takes the model's velocity prediction through
one function, `predict_velocity(x_t, σ)`, so that models with another parametrisation only need their own such
function. PixelDiT2 (an x-prediction x̂ returned as the clamped velocity `(x_t − x̂) / max(σ, c)`) is trained as the
official code does, on the clamped velocity: its target is `(x_t − x0) / max(σ, c)`, the same `s·ε − x0` for σ ≥ c.
"""

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.training_utils import compute_density_for_timestep_sampling, compute_loss_weighting_for_sd3

from ..models.transformer_pixeldit import TIMESTEP_SCALE
from ..models.transformer_pixeldit2 import encode_grounding, grounding_encoder_input


VelocityPredictor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class FlowMatchingObjective:
    """σ sampling and loss weighting of rectified-flow training.

    Per sample, `u` comes from diffusers' `compute_density_for_timestep_sampling(weighting_scheme, ...)`
    (`sigmoid(N(logit_mean, logit_std))` for `logit_normal`, the SD3 `mode` density with `mode_scale`, else uniform),
    then `σ = shift·u / (1 + (shift − 1)·u)` (continuous: not snapped to a scheduler grid). The loss is weighted by
    `compute_loss_weighting_for_sd3(weighting_scheme, σ)` (`sigma_sqrt`, `cosmap`; the other schemes are unweighted).
    `noise_scale` scales the noise, `velocity_clamp_min_sigma` (c > 0 for PixelDiT2) clamps the target's σ.

    `noise_outlier_prob` > 0 scales that share of the noise elements by `noise_outlier_scale` (`sample_noise`). Sampling
    draws extreme values in every image (|ε| > 3 for 0.27 % of the elements), and a PixelDiT's velocity is bounded per
    pixel (`proj_out` of an RMS-normalised pixel token), so a model trained on unit noise alone learns to cancel
    them only partly and leaves isolated specks; the outlier share shows it such values more often.
    """

    weighting_scheme: str = "logit_normal"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    mode_scale: float = 1.29
    shift: float = 1.0
    noise_scale: float = 1.0
    velocity_clamp_min_sigma: float = 0.0
    noise_outlier_prob: float = 0.0
    noise_outlier_scale: float = 1.0

    def __post_init__(self):
        if not 0 <= self.noise_outlier_prob <= 1 or self.noise_outlier_scale <= 0:
            raise ValueError(
                "`noise_outlier_prob` must be in [0, 1] and `noise_outlier_scale` positive, got "
                f"{self.noise_outlier_prob} and {self.noise_outlier_scale}."
            )

    def sample_noise(self, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
        """ε of `shape`: unit Gaussian noise, its elements scaled by `noise_outlier_scale` with probability
        `noise_outlier_prob` (drawn after the noise, only when that probability is set)."""
        noise = torch.randn(shape, generator=generator)
        if self.noise_outlier_prob > 0:
            outliers = torch.rand(shape, generator=generator) < self.noise_outlier_prob
            noise = torch.where(outliers, noise * self.noise_outlier_scale, noise)
        return noise

    def sample_u(self, generator: torch.Generator) -> torch.Tensor:
        """One density sample u in (0, 1), a 0-d tensor."""
        return compute_density_for_timestep_sampling(
            weighting_scheme=self.weighting_scheme,
            batch_size=1,
            logit_mean=self.logit_mean,
            logit_std=self.logit_std,
            mode_scale=self.mode_scale,
            generator=generator,
        )[0]

    def sigmas(self, u: torch.Tensor) -> torch.Tensor:
        """σ = shift·u / (1 + (shift − 1)·u), i.e. σ = u for shift 1; same shape as `u`."""
        return self.shift * u / (1 + (self.shift - 1) * u)

    def loss(
        self, predict_velocity: VelocityPredictor, pixel_values: torch.Tensor, noise: torch.Tensor, u: torch.Tensor
    ) -> torch.Tensor:
        """The flow-matching loss of a batch: the mean over samples of the mean over pixels of
        `weight(σ)·(predict_velocity(x_t, σ) − target)²`, target = `(s·ε − x0)·σ / max(σ, c)`, in float32.

        Args:
            predict_velocity: `(x_t (B, C, H, W), σ (B,)) -> velocity (B, C, H, W)`.
            pixel_values: clean images x0 (B, C, H, W) in [-1, 1].
            noise: ε (B, C, H, W), unit variance.
            u: the density samples (B,) (`sample_u`).
        """
        sigmas = self.sigmas(u)
        sigmas_4d = sigmas.view(-1, 1, 1, 1)
        noise = noise * self.noise_scale
        noisy = (1 - sigmas_4d) * pixel_values + sigmas_4d * noise
        prediction = predict_velocity(noisy, sigmas)
        target = (noise - pixel_values).float()
        if self.velocity_clamp_min_sigma > 0:  # (x_t − x0) / max(σ, c)
            target = target * (sigmas_4d / sigmas_4d.clamp(min=self.velocity_clamp_min_sigma)).float()
        weighting = compute_loss_weighting_for_sd3(self.weighting_scheme, sigmas).view(-1, 1, 1, 1)
        squared_error = weighting.float() * (prediction.float() - target) ** 2
        return squared_error.flatten(1).mean(1).mean()


def velocity_predictor(transformer: nn.Module, **conditions) -> VelocityPredictor:
    """A PixelDiT's velocity prediction as a function of (x_t, σ): the transformer is fed `timestep = σ·1000` and the
    `conditions` (`class_labels` (B,) or `encoder_hidden_states` (B, L, D)) and returns ε − x0."""

    def predict(noisy: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
        return transformer(noisy, timestep=sigmas * TIMESTEP_SCALE, **conditions, return_dict=False)[0]

    return predict


def grounded_velocity_predictor(
    transformer: nn.Module,
    grounding_encoder: nn.Module,
    patch_size: int,
    class_labels: torch.Tensor,
    grounding_mask: torch.Tensor | None = None,
) -> VelocityPredictor:
    """PixelDiT2's velocity prediction as a function of (x_t, σ): the frozen grounding encoder reads x_t
    (`encode_grounding`, for the transformer's `patch_size`) and the transformer (possibly wrapped, e.g. by DDP) is
    fed `timestep = σ·1000`, `class_labels` (B,) and the grounding tokens, used where `grounding_mask` (B,) is True
    (the other rows take the null conditioning: grounding dropout)."""

    def predict(noisy: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
        tokens = encode_grounding(grounding_encoder, noisy, patch_size)
        return transformer(
            noisy,
            timestep=sigmas * TIMESTEP_SCALE,
            class_labels=class_labels,
            grounding_hidden_states=tokens,
            grounding_mask=grounding_mask,
            return_dict=False,
        )[0]

    return predict


def repa_projector(dim: int, out_dim: int) -> nn.Sequential:
    """REPA's projector `Linear(D, D)–SiLU–Linear(D, D)–SiLU–Linear(D, C)`: (B, N, D) → (B, N, C)."""
    return nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, out_dim))


class REPAAlignment:
    """REPA representation alignment of a transformer block's tokens with a frozen vision encoder's patch features.

    A forward hook keeps the output tokens of `block` (the image tokens of a joint text-image block, or of a PixelDiT2
    block beside its in-context class tokens); `loss` maps them through the projector and returns `mean(1 − cos)` (token-wise) against the encoder's patch features of the
    clean images. The images are ImageNet-normalised and resized (bicubic) so that the encoder's token grid is the
    transformer's patch grid, as PixelDiT2's grounding encoder sees them (`grounding_encoder_input`): an H × W image
    becomes `(H // patch_size)·p × (W // patch_size)·p` for an encoder with patches of p pixels (224 × 224 for a 256²
    image, patch 16, and DINOv2's patch 14). The patch features are the last tokens of `last_hidden_state` (after the
    class and any register tokens).

    Args:
        encoder: a frozen transformers ViT encoder with `config.patch_size` and `config.hidden_size`, e.g.
            `Dinov2Model`, on the training device.
        block: the transformer block whose output is aligned.
        patch_size: the transformer's patch size.
        token_dim: the width of the block's tokens.
    """

    def __init__(self, encoder: nn.Module, block: nn.Module, patch_size: int, token_dim: int):
        self.encoder = encoder
        self.patch_size = patch_size
        self.token_dim = token_dim
        self.encoder_patch_size = encoder.config.patch_size
        self.tokens = None
        self.hook = block.register_forward_hook(self._keep_tokens)

    @classmethod
    def from_pretrained(
        cls, encoder_name_or_path: str, transformer: nn.Module, layer: int, device: torch.device, dtype: torch.dtype
    ) -> "REPAAlignment":
        """Loads the encoder (frozen, on `device` in `dtype`) and hooks the 1-based patch-level block `layer`."""
        from transformers import AutoModel

        blocks = transformer.transformer_blocks
        if not 1 <= layer <= len(blocks):
            raise ValueError(f"The REPA layer is 1-based, at most the {len(blocks)} patch-level blocks; got {layer}.")
        encoder = AutoModel.from_pretrained(encoder_name_or_path).eval().requires_grad_(False)
        config = transformer.config
        token_dim = config.num_attention_heads * config.attention_head_dim
        return cls(encoder.to(device, dtype=dtype), blocks[layer - 1], config.patch_size, token_dim)

    @property
    def feature_dim(self) -> int:
        return self.encoder.config.hidden_size

    def new_projector(self) -> nn.Sequential:
        """A freshly initialised projector from the block's tokens to the encoder's features (`repa_projector`)."""
        return repa_projector(self.token_dim, self.feature_dim)

    def _keep_tokens(self, module, inputs, output):
        # Joint (text-to-image) and PixelDiT2 blocks return (text or class tokens, image tokens).
        self.tokens = output[1] if isinstance(output, tuple) else output

    @torch.no_grad()
    def features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Encoder patch features (B, (H // patch_size)·(W // patch_size), C) of images (B, 3 or 1, H, W) in [-1, 1]
        (a grey channel is used as RGB)."""
        images = grounding_encoder_input(pixel_values.float(), self.patch_size, self.encoder_patch_size)
        grid = (images.shape[-2] // self.encoder_patch_size) * (images.shape[-1] // self.encoder_patch_size)
        hidden_states = self.encoder(pixel_values=images.to(self.encoder.dtype)).last_hidden_state
        return hidden_states[:, -grid:].float()

    def loss(self, projector: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
        """`mean(1 − cos)` between the projected tokens kept by the last forward and the features of `pixel_values`."""
        tokens, self.tokens = self.tokens, None
        features = self.features(pixel_values)
        projected = projector(tokens[:, -features.shape[1] :]).float()  # the patch tokens (the last ones)
        return (1 - F.cosine_similarity(projected, features, dim=-1)).mean()

    def remove(self):
        """Removes the forward hook."""
        self.hook.remove()


def flow_matching_losses(
    objective: FlowMatchingObjective,
    predict_velocity: VelocityPredictor,
    batch: dict,
    repa: REPAAlignment | None = None,
    projector: nn.Module | None = None,
    repa_weight: float = 0.0,
) -> dict[str, torch.Tensor]:
    """The losses of a `FlowMatchingDataset` batch (on the model's device): `flow_loss` (`objective.loss`), with REPA
    `repa_loss` (`repa.loss(projector, ...)`, after the forward), and `train_loss` = flow_loss + repa_weight·repa_loss,
    the one to minimise. 0-d float32 tensors."""
    pixel_values = batch["pixel_values"]
    flow_loss = objective.loss(predict_velocity, pixel_values, batch["noise"], batch["u"])
    if repa is None:
        return {"train_loss": flow_loss, "flow_loss": flow_loss}
    repa_loss = repa.loss(projector, pixel_values)
    return {"train_loss": flow_loss + repa_weight * repa_loss, "flow_loss": flow_loss, "repa_loss": repa_loss}
