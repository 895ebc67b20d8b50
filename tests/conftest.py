import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from diffusers_pixeldit import (
    PixelDiTTransformer2DModel,
    infer_config_from_official_state_dict,
    official_to_diffusers_state_dict,
)


FIXTURES = Path(__file__).parent / "fixtures"

# Tiny configurations used across the tests (random weights).
TINY_C2I = dict(
    sample_size=16,
    patch_size=4,
    num_layers=2,
    num_attention_heads=2,
    attention_head_dim=8,
    num_pixel_layers=2,
    pixel_embed_dim=4,
    num_classes=5,
)
TINY_T2I = dict(
    sample_size=16,
    patch_size=4,
    num_layers=2,
    num_attention_heads=2,
    attention_head_dim=8,
    num_pixel_layers=1,
    pixel_embed_dim=4,
    pixel_num_attention_heads=2,
    pixel_attention_head_dim=12,
    num_classes=None,
    text_embed_dim=6,
    max_text_length=7,
    timestep_input="sigma_x1000",
    negate_output=False,
)


def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Gives every parameter (the zero-initialised AdaLN/output layers included) non-trivial random values."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if param.ndim == 1 and "norm" in name:
                param.copy_(1 + 0.2 * noise)
            elif param.ndim == 1:
                param.copy_(0.1 * noise)
            elif "adaln" in name:
                param.copy_(0.4 * noise / param.shape[-1] ** 0.5)
            else:
                param.copy_(noise / param.shape[-1] ** 0.5)
    return model


def tiny_model(kind: str = "c2i", seed: int = 0, **overrides) -> PixelDiTTransformer2DModel:
    torch.manual_seed(seed)
    config = {**(TINY_C2I if kind == "c2i" else TINY_T2I), **overrides}
    return randomize_(PixelDiTTransformer2DModel(**config), seed).eval()


def tiny_inputs(
    model: PixelDiTTransformer2DModel, batch_size: int = 2, height: int = 16, width: int = 24, seed: int = 0
):
    generator = torch.Generator().manual_seed(seed)
    config = model.config
    inputs = {
        "hidden_states": torch.randn(batch_size, config.in_channels, height, width, generator=generator),
        "timestep": torch.rand(batch_size, generator=generator) * 1000,
    }
    if config.num_classes is not None:
        inputs["class_labels"] = torch.randint(0, config.num_classes + 1, (batch_size,), generator=generator)
    else:
        inputs["encoder_hidden_states"] = torch.randn(batch_size, 5, config.text_embed_dim, generator=generator)
    return inputs


@pytest.fixture(scope="session")
def extra_configs():
    meta = json.loads((FIXTURES / "official_extra_configs.json").read_text())["configs"]
    return meta, load_file(FIXTURES / "official_extra_configs.safetensors")


def load_official_fixture(name: str):
    """(model state dict (EMA for C2I), cases, meta) of a shared official-output fixture."""
    meta = json.loads((FIXTURES / name / "meta.json").read_text())
    checkpoint = torch.load(FIXTURES / name / meta["checkpoint"], map_location="cpu", weights_only=True)
    prefix = "ema_denoiser." if meta["kind"] == "c2i" else "core."
    state_dict = {k[len(prefix) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
    return state_dict, load_file(FIXTURES / name / "cases.safetensors"), meta


def model_from_official(state_dict, **config_overrides) -> PixelDiTTransformer2DModel:
    config = {**infer_config_from_official_state_dict(state_dict), **config_overrides}
    model = PixelDiTTransformer2DModel(**config)
    model.load_state_dict(official_to_diffusers_state_dict(state_dict), strict=True)
    return model.eval()
