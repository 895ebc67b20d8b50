"""Helpers shared by the tests: tiny models and inputs, the official-output fixtures and their tolerance rule,
counting torch.compile's compilations."""

import json
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from diffusers_pixeldit import (
    PixelDiTTransformer2DModel,
    infer_config_from_official_state_dict,
    official_to_diffusers_state_dict,
)


FIXTURES = Path(__file__).parent / "fixtures"
DEMO = Path(__file__).parents[1] / "scripts" / "demo_digits.py"
# Installed for the tests (quantization) but not by README's main-job command, and imported by diffusers whenever it
# is installed: torchao 0.18 then prints the load failures of its CUDA kernels on a CPU machine.
NOT_IN_THE_MAIN_INSTALL = ("torchao", "gguf", "transformers", "peft", "datasets", "torchmetrics")

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
    """Gives every parameter non-trivial random values of a trained-like spread (AdaLN layers smaller, norms near 1)."""
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


def tolerance_check(ours: torch.Tensor, official: torch.Tensor, official_fp64: torch.Tensor | None, tolerance: float):
    """The fixtures' rule: within `tolerance` of the official fp32 output, or at least as accurate as the official
    fp32 code against the same algorithm run in float64. Returns (passed, message)."""
    error = (ours.double() - official.double()).abs().max().item()
    if error <= tolerance:
        return True, f"|ours - official| = {error:.3g} <= {tolerance}"
    if official_fp64 is None:
        return False, f"|ours - official| = {error:.3g} > {tolerance} (no float64 reference)"
    official_error = (official.double() - official_fp64).abs().max().item()
    bound = max(tolerance, 2 * official_error)
    error64 = (ours.double() - official_fp64).abs().max().item()
    message = f"|ours - official| = {error:.3g}; |ours - fp64| = {error64:.3g} vs bound {bound:.3g}"
    return error64 <= bound, message


def tiny_text_components(width: int = 8, seed: int = 0):
    """A word-level tokenizer (BOS prepended, right padding) and a tiny Gemma-2 encoder, built offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import Gemma2Config, Gemma2Model, PreTrainedTokenizerFast

    from diffusers_pixeldit import PIXELDIT_COMPLEX_HUMAN_INSTRUCTION

    words = " ".join(PIXELDIT_COMPLEX_HUMAN_INSTRUCTION).split() + "a A cat Cat dog digit seven sign red".split()
    vocab = {"<pad>": 0, "<bos>": 1, "<unk>": 2}
    for word in words:
        vocab.setdefault(word, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<bos>", unk_token="<unk>", padding_side="right"
    )
    torch.manual_seed(seed)
    config = Gemma2Config(
        hidden_size=width,
        head_dim=16,
        intermediate_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        vocab_size=len(vocab),
        max_position_embeddings=512,
    )
    return tokenizer, Gemma2Model(config).eval()


def dinov3_from_timm(transformers_config: dict, timm_state_dict: dict):
    """The transformers DINOv3ViTModel (eval mode) of a fixture's timm DINOv3 weights."""
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    from diffusers_pixeldit.conversion import timm_dinov3_to_transformers_state_dict

    encoder = DINOv3ViTModel(DINOv3ViTConfig(**transformers_config)).eval()
    encoder.load_state_dict(timm_dinov3_to_transformers_state_dict(timm_state_dict), strict=True)
    return encoder


def load_pixeldit2_fixture(name: str = "pixeldit2_tiny"):
    """(model state dict (EMA), grounding encoder (a transformers DINOv3ViTModel), cases, meta) of a PixelDiT2
    official-output fixture folder."""
    meta = json.loads((FIXTURES / name / "meta.json").read_text())
    checkpoint = torch.load(FIXTURES / name / meta["checkpoint"], map_location="cpu", weights_only=True)
    prefix = "ema_denoiser."
    state_dict = {k[len(prefix) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
    encoder_config = json.loads((FIXTURES / name / "grounding_encoder_config.json").read_text())
    timm_weights = load_file(FIXTURES / name / "grounding_encoder_timm.safetensors")
    encoder = dinov3_from_timm(encoder_config["transformers_DINOv3ViTConfig"], timm_weights)
    return state_dict, encoder, load_file(FIXTURES / name / "cases.safetensors"), meta


def load_pixeldit2_extra(name: str):
    """(model, grounding encoder, tensors (without the `<name>.` prefix), meta) of a `pixeldit2_extra` configuration."""
    meta = json.loads((FIXTURES / "pixeldit2_extra.json").read_text())["configs"][name]
    tensors = {k[len(name) + 1 :]: v for k, v in load_file(FIXTURES / "pixeldit2_extra.safetensors").items()
               if k.startswith(f"{name}.")}  # fmt: skip

    def part(prefix):
        return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}

    model = pixeldit2_from_official(part("official_state_dict."), meta["official_config"])
    encoder = dinov3_from_timm(
        meta["grounding_encoder"]["transformers_DINOv3ViTConfig"], part("grounding_encoder_timm.")
    )
    return model, encoder, tensors, meta


def pixeldit2_settings(official_config: dict) -> dict:
    """Our config entries for the official PixelDiT2 constructor arguments the tensors do not determine."""
    return {
        "in_context_start": official_config["in_context_start"],
        "silu_conditioning": not official_config["single_silu_cond"],
    }


def pixeldit2_from_official(state_dict, official_config: dict, **overrides):
    from diffusers_pixeldit import transformer_from_official_state_dict

    model = transformer_from_official_state_dict(state_dict, **pixeldit2_settings(official_config), **overrides)
    return model.eval()


def tiny_dinov3(hidden_size: int = 16, seed: int = 0, **config):
    """A tiny random DINOv3 ViT (patch 16, 4 register tokens) built offline."""
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    torch.manual_seed(seed)
    config = {"hidden_size": hidden_size, "intermediate_size": 2 * hidden_size, "num_hidden_layers": 1,
              "num_attention_heads": 2, "num_register_tokens": 4, **config}  # fmt: skip
    return DINOv3ViTModel(DINOv3ViTConfig(**config)).eval()


TINY_PIXELDIT2 = dict(
    sample_size=32,
    patch_size=8,
    num_layers=3,
    num_attention_heads=2,
    attention_head_dim=8,
    num_classes=5,
    in_context_length=2,
    in_context_start=1,
    grounding_embed_dim=16,
    grounding_num_attention_heads=2,
)


def tiny_pixeldit2(seed: int = 0, **overrides):
    from diffusers_pixeldit import PixelDiT2Transformer2DModel

    torch.manual_seed(seed)
    return randomize_(PixelDiT2Transformer2DModel(**{**TINY_PIXELDIT2, **overrides}), seed).eval()


def record_compilations(transformer: torch.nn.Module, counter) -> list[tuple[int, int]]:
    """`(batch size, graphs compiled so far)` after each call of `transformer` (called with `hidden_states=`), appended
    as they happen; `counter` is a `torch._dynamo.testing.CompileCounterWithBackend`."""
    calls = []
    transformer.register_forward_hook(
        lambda module, args, kwargs, output: calls.append((kwargs["hidden_states"].shape[0], counter.frame_count)),
        with_kwargs=True,
    )
    return calls


def compiled_only_at_new_batch_sizes(calls: list[tuple[int, int]]) -> bool:
    """Whether graphs were compiled only by calls with a batch size no earlier call had."""
    seen, compiled_before = set(), 0
    for batch_size, compiled in calls:
        if compiled > compiled_before and batch_size in seen:
            return False
        seen.add(batch_size)
        compiled_before = compiled
    return True


def run_demo_as_first_command(*args: str) -> subprocess.CompletedProcess:
    """`python scripts/demo_digits.py *args` in a fresh process that sees the packages of README's main-job install
    only: those of `NOT_IN_THE_MAIN_INSTALL` are hidden (`sys.modules[name] = None`: `find_spec` returns None and
    importing them fails), as on the machine of a new user."""
    hide = f"import runpy, sys; sys.modules.update(dict.fromkeys({NOT_IN_THE_MAIN_INSTALL!r}))"
    run = f"sys.argv = {[str(DEMO), *args]!r}; runpy.run_path({str(DEMO)!r}, run_name='__main__')"
    return subprocess.run([sys.executable, "-c", f"{hide}; {run}"], capture_output=True, text=True)
