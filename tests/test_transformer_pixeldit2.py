"""PixelDiT2Transformer2DModel: official parity, conventions, grounding, presets and the diffusers model features."""

import pytest
import torch
from peft import LoraConfig
from pixeldit_testing import (
    load_pixeldit2_extra,
    load_pixeldit2_fixture,
    pixeldit2_from_official,
    tiny_dinov3,
    tiny_pixeldit2,
    tolerance_check,
)

from diffusers_pixeldit import (
    PIXELDIT2_PRESETS,
    PixelDiT2Transformer2DModel,
    diffusers_to_official_state_dict,
    encode_grounding,
    official_to_diffusers_state_dict,
)
from diffusers_pixeldit.conversion import (
    timm_dinov3_to_transformers_state_dict,
    transformers_dinov3_to_timm_state_dict,
)
from diffusers_pixeldit.models.transformer_pixeldit import image_rotary_emb, unpatchify
from diffusers_pixeldit.models.transformer_pixeldit2 import grounding_encoder_input


FORWARD_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def official():
    state_dict, encoder, cases, meta = load_pixeldit2_fixture()
    return pixeldit2_from_official(state_dict, meta["official_config"]), encoder, cases, meta


def x0_prediction(model, x, t_official, class_labels, **kwargs):
    """The official output (an x0-prediction) from ours (a velocity), in the official time t = 1 − σ."""
    sigma = 1 - t_official.double()
    with torch.no_grad():
        velocity = model(x, (sigma * 1000).float(), class_labels, **kwargs).sample
    return x - sigma.clamp(min=model.config.velocity_clamp_min_sigma).float().view(-1, 1, 1, 1) * velocity


def check(ours, cases, name, meta):
    passed, message = tolerance_check(
        ours, cases[f"{name}.out_official"], cases[f"{name}.out_official_fp64"], meta["tolerance"][name]
    )
    assert passed, message


# ---------------------------------------------------------------- official parity


def test_grounding_tokens_of_the_official_fixture(official):
    model, encoder, cases, meta = official
    tokens = encode_grounding(encoder, cases["forward.x"], model.config.patch_size)
    check(tokens, cases, "forward.grounding_tokens", meta)


def test_grounding_projection_of_the_official_fixture(official):
    model, encoder, cases, meta = official
    from diffusers_pixeldit.models.transformer_pixeldit import time_projection

    tokens = encode_grounding(encoder, cases["forward.x"], model.config.patch_size)
    time_proj = time_projection((1 - cases["forward.t_official"].double()) * 1000, 2, "one_minus_sigma")
    grid = cases["forward.x"].shape[-1] // model.config.patch_size
    head_dim = model.inner_dim // model.config.grounding_num_attention_heads
    rotary = image_rotary_emb(model.config, head_dim, grid, grid, "cpu")
    with torch.no_grad():
        projection = model.grounding_proj(tokens, time_proj, rotary)
    check(projection, cases, "forward.grounding_projection", meta)


def test_grounded_forward_of_the_official_fixture(official):
    model, encoder, cases, meta = official
    x, labels = cases["forward.x"], cases["forward.class_labels"]
    assert labels[-1] == model.config.num_classes  # the null class is exercised
    tokens = encode_grounding(encoder, x, model.config.patch_size)
    check(x0_prediction(model, x, cases["forward.t_official"], labels, grounding_hidden_states=tokens), cases,
          "forward", meta)  # fmt: skip


def test_null_forward_of_the_official_fixture(official):
    # no grounding tokens: the official `skip_grounding=True`, the unconditional CFG branch
    model, _, cases, meta = official
    check(x0_prediction(model, cases["forward.x"], cases["forward.t_official"], cases["forward.class_labels"]), cases,
          "forward_null", meta)  # fmt: skip


def test_grounding_mask_selects_per_row(official):
    model, encoder, cases, _ = official
    x, t, labels = cases["forward.x"], (1 - cases["forward.t_official"]) * 1000, cases["forward.class_labels"]
    tokens = encode_grounding(encoder, x, model.config.patch_size)
    with torch.no_grad():
        grounded = model(x, t, labels, grounding_hidden_states=tokens).sample
        null = model(x, t, labels).sample
        mixed = model(x, t, labels, grounding_hidden_states=tokens, grounding_mask=torch.tensor([False, True])).sample
    assert not torch.allclose(grounded, null)
    torch.testing.assert_close(mixed, torch.stack([null[0], grounded[1]]), rtol=0, atol=1e-6)


# ---------------------------------------------------------------- conventions


def test_velocity_is_the_clamped_x_prediction_velocity():
    # velocity = (x − x̂) / max(σ, 0.05), x̂ being the network's output (read at its output projection)
    model = tiny_pixeldit2()
    predictions = []
    model.proj_out.register_forward_hook(lambda module, inputs, output: predictions.append(output))
    x = torch.randn(3, 3, 16, 16)
    sigma = torch.tensor([1.0, 0.3, 0.01])  # the last one below the clamp
    with torch.no_grad():
        velocity = model(x, sigma * 1000, torch.tensor([0, 1, 2])).sample
    x0 = unpatchify(predictions[0], 8, 16, 16)
    assert model.config.velocity_clamp_min_sigma == 0.05
    expected = (x - x0) / torch.tensor([1.0, 0.3, 0.05]).view(-1, 1, 1, 1)
    torch.testing.assert_close(velocity, expected, rtol=1e-6, atol=1e-6)


def test_half_precision_model_keeps_the_velocity_in_float32():
    model = tiny_pixeldit2()
    x, t, labels = torch.randn(2, 3, 16, 16), torch.tensor([500.0, 20.0]), torch.tensor([0, 5])
    with torch.no_grad():
        reference = model(x, t, labels).sample
        model.to(torch.bfloat16)
        half = model(x, t, labels).sample
    assert half.dtype == torch.float32
    assert (half - reference).abs().max() < 0.05 * reference.abs().max()


def test_bf16_storage_with_float32_compute():
    # layerwise casting: bf16 weights upcast layer by layer; the same as a model with its weights rounded to bf16
    model, rounded = tiny_pixeldit2(), tiny_pixeldit2()
    inputs = (torch.randn(2, 3, 16, 16), torch.tensor([500.0, 20.0]), torch.tensor([0, 5]))
    tokens = torch.randn(2, 4, 16)
    model.enable_layerwise_casting(storage_dtype=torch.bfloat16, compute_dtype=torch.float32)
    with torch.no_grad():
        for name, param in rounded.named_parameters():
            if dict(model.named_parameters())[name].dtype == torch.bfloat16:
                param.copy_(param.to(torch.bfloat16).float())
        out = model(*inputs, grounding_hidden_states=tokens).sample
        expected = rounded(*inputs, grounding_hidden_states=tokens).sample
    assert model.transformer_blocks[0].attn.to_q.weight.dtype == torch.bfloat16
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_non_square_and_patch_multiples():
    model = tiny_pixeldit2()
    for height, width in [(8, 8), (16, 40), (24, 8)]:
        out = model(torch.randn(1, 3, height, width), torch.tensor([300.0]), torch.tensor([1])).sample
        assert out.shape == (1, 3, height, width)


def test_in_context_start_zero_and_no_in_context_tokens():
    for overrides in ({"in_context_start": 0}, {"in_context_length": 0}):
        model = tiny_pixeldit2(**overrides)
        assert (model.in_context_pos_embed is None) == (overrides.get("in_context_length") == 0)
        labels = torch.tensor([0, 3])
        x = torch.randn(2, 3, 16, 16)
        out = model(x, torch.tensor([300.0]), labels).sample
        assert out.shape == x.shape
        assert not torch.allclose(out, model(x, torch.tensor([300.0]), torch.tensor([1, 3])).sample)


def test_grounding_encoder_input_resizes_only_when_needed():
    x = torch.rand(1, 3, 32, 48) * 2 - 1
    same = grounding_encoder_input(x, 16, 16)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(same, ((x + 1) / 2 - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1))
    resized = grounding_encoder_input(x, 8, 16)  # patch 8: (32/8·16) x (48/8·16)
    assert resized.shape == (1, 3, 64, 96)
    tokens = encode_grounding(tiny_dinov3(hidden_size=16), x, 8)
    assert tokens.shape == (1, 4 * 6, 16)


# ---------------------------------------------------------------- bad input


def test_invalid_inputs_raise():
    model = tiny_pixeldit2()
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([300.0, 300.0])
    with pytest.raises(ValueError, match="not divisible by the patch size 8"):
        model(torch.randn(2, 3, 16, 12), t, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"Class ids must be in \[0, 5\].*\[6\]"):
        model(x, t, torch.tensor([0, 6]))
    with pytest.raises(ValueError, match=r"\(2, 4, 16\), got \(2, 4, 8\)"):
        model(x, t, torch.tensor([0, 1]), grounding_hidden_states=torch.randn(2, 4, 8))
    with pytest.raises(ValueError, match="`grounding_mask`"):
        model(x, t, torch.tensor([0, 1]), grounding_mask=torch.tensor([True, False]))
    with pytest.raises(ValueError, match="in_context_start"):
        PixelDiT2Transformer2DModel(num_layers=2, in_context_start=2)
    with pytest.raises(ValueError, match="multiple of 4"):
        PixelDiT2Transformer2DModel(num_layers=2, in_context_start=0, num_attention_heads=2, attention_head_dim=6)


# ---------------------------------------------------------------- presets and conversion


# Parameter counts of the official classes (the frozen DINOv3 excluded), and the README's totals with it.
PRESET_PARAMETERS = {
    "PixelDiT2-H/16-256": (986_193_568, "1007.8M"),
    "PixelDiT2-H/16-512": (988_036_768, "1073.7M"),
    "PixelDiT2-B/16": (143_729_024, "165.3M"),
    "PixelDiT2-L/16": (480_843_648, "502.4M"),
}
# The released grounding encoders as transformers configs (DINOv3 ViT-S/16, ViT-B/16).
DINOV3_CONFIGS = {384: {"hidden_size": 384, "intermediate_size": 1536, "num_hidden_layers": 12,
                        "num_attention_heads": 6},
                  768: {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                        "num_attention_heads": 12}}  # fmt: skip


def test_preset_parameter_counts():
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    assert set(PRESET_PARAMETERS) == set(PIXELDIT2_PRESETS)
    with torch.device("meta"):
        for name, (count, total) in PRESET_PARAMETERS.items():
            model = PixelDiT2Transformer2DModel.from_preset(name)
            assert sum(p.numel() for p in model.parameters()) == count, name
            encoder = DINOv3ViTModel(DINOv3ViTConfig(**DINOV3_CONFIGS[model.config.grounding_embed_dim]))
            # transformers' DINOv3 has one token more than timm's (its unused mask token)
            encoder_count = sum(p.numel() for p in encoder.parameters()) - encoder.config.hidden_size
            assert f"{(count + encoder_count) / 1e6:.1f}M" == total, name


def test_state_dict_conversion_round_trip_is_bit_exact():
    state_dict, _, _, _ = load_pixeldit2_fixture()
    converted = official_to_diffusers_state_dict(state_dict)
    assert "grounding_proj.blocks.0.ff.net.0.proj.weight" in converted
    back = diffusers_to_official_state_dict(converted)
    assert back.keys() == state_dict.keys() and all(torch.equal(back[k], state_dict[k]) for k in state_dict)


def test_dinov3_timm_transformers_round_trip_is_bit_exact():
    from pixeldit_testing import FIXTURES
    from safetensors.torch import load_file

    timm = load_file(FIXTURES / "pixeldit2_tiny" / "grounding_encoder_timm.safetensors")
    back = transformers_dinov3_to_timm_state_dict(timm_dinov3_to_transformers_state_dict(timm))
    assert back.keys() == timm.keys() and all(torch.equal(back[k], timm[k]) for k in timm)
    with pytest.raises(ValueError, match="timm DINOv3"):
        timm_dinov3_to_transformers_state_dict({"blocks.0.foo": torch.zeros(1), "cls_token": torch.zeros(1)})


# ---------------------------------------------------------------- diffusers features


def test_forward_makes_no_data_dependent_host_sync():
    model = tiny_pixeldit2().to("meta")
    x = torch.empty(2, 3, 16, 16, device="meta")
    tokens = torch.empty(2, 4, 16, device="meta")
    labels = torch.zeros(2, dtype=torch.long, device="meta")
    mask = torch.zeros(2, dtype=torch.bool, device="meta")
    out = model(x, torch.empty(2, device="meta"), labels, grounding_hidden_states=tokens, grounding_mask=mask)
    assert out.sample.shape == x.shape


def test_gradient_checkpointing_gives_the_same_gradients():
    inputs = (torch.randn(2, 3, 16, 16), torch.tensor([600.0, 100.0]), torch.tensor([1, 4]))
    tokens = torch.randn(2, 4, 16)
    gradients = []
    for checkpointing in (False, True):
        model = tiny_pixeldit2().train()
        if checkpointing:
            model.enable_gradient_checkpointing()
        model(*inputs, grounding_hidden_states=tokens).sample.square().mean().backward()
        gradients.append({n: p.grad for n, p in model.named_parameters()})
    for name, grad in gradients[0].items():
        torch.testing.assert_close(gradients[1][name], grad, rtol=0, atol=1e-6, msg=name)


def test_dropout_acts_in_the_middle_half_of_the_blocks_only_in_training():
    model = tiny_pixeldit2(num_layers=8, dropout=0.5)
    rates = [block.attn.to_out[1].p for block in model.transformer_blocks]
    assert rates == [0.0, 0.0, 0.5, 0.5, 0.5, 0.5, 0.0, 0.0]
    inputs = (torch.randn(1, 3, 16, 16), torch.tensor([500.0]), torch.tensor([2]))
    assert torch.equal(model(*inputs).sample, model(*inputs).sample)  # eval: deterministic
    model.train()
    assert not torch.equal(model(*inputs).sample, model(*inputs).sample)


def test_save_load_and_lora(tmp_path):
    model = tiny_pixeldit2()
    inputs = (torch.randn(1, 3, 16, 16), torch.tensor([500.0]), torch.tensor([2]))
    base = model(*inputs).sample
    model.save_pretrained(tmp_path / "model")
    loaded = PixelDiT2Transformer2DModel.from_pretrained(tmp_path / "model")
    assert torch.equal(loaded(*inputs).sample, base)
    model.add_adapter(LoraConfig(r=2, target_modules=["to_q", "to_v"], init_lora_weights="gaussian"))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_()
    assert not torch.allclose(model(*inputs).sample, base)
    torch.testing.assert_close(model(*inputs, attention_kwargs={"scale": 0.0}).sample, base, rtol=0, atol=1e-6)


def test_model_class_attributes():
    cls = PixelDiT2Transformer2DModel
    # the main stack's blocks and the grounding projection's, apart (compile_repeated_blocks: a cache of graphs each)
    assert (
        set(cls._no_split_modules)
        == set(cls._repeated_blocks)
        == {"PixelDiT2TransformerBlock", "PixelDiT2GroundingBlock"}
    )
    model = tiny_pixeldit2()
    assert {type(block).__name__ for block in model.transformer_blocks} == {"PixelDiT2TransformerBlock"}
    assert {type(block).__name__ for block in model.grounding_proj.blocks} == {"PixelDiT2GroundingBlock"}


def test_torch_compile_fullgraph_matches_eager():
    model = tiny_pixeldit2()
    inputs = (torch.randn(2, 3, 16, 16), torch.tensor([500.0, 40.0]), torch.tensor([2, 5]))
    tokens = torch.randn(2, 4, 16)
    with torch.no_grad():
        eager = model(*inputs, grounding_hidden_states=tokens).sample
        torch._dynamo.reset()
        compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
        torch.testing.assert_close(compiled(*inputs, grounding_hidden_states=tokens).sample, eager)
    torch._dynamo.reset()


# ---------------------------------------------------------------- more official configurations


EXTRA_CONFIGS = ["p2_nonsquare", "p2_patch8_resize", "p2_no_in_context"]


@pytest.fixture(scope="module", params=EXTRA_CONFIGS)
def extra(request):
    return load_pixeldit2_extra(request.param)


def extra_check(ours, tensors, meta, name):
    passed, message = tolerance_check(
        ours, tensors[f"{name}.out_official"], tensors[f"{name}.out_official_fp64"], meta["tolerance"][name]
    )
    assert passed, f"{name}: {message}"


def test_official_forwards_of_more_configurations(extra):
    # non-square, patch 8 with the encoder's bicubic resize, in-context start 0, no in-context tokens, single SiLU,
    # the rounded SwiGLU width, 2 grounding-projection blocks
    model, encoder, tensors, meta = extra
    x, t, labels = tensors["x"], tensors["t_official"], tensors["class_labels"]
    tokens = encode_grounding(encoder, x, model.config.patch_size)
    extra_check(tokens, tensors, meta, "grounding_tokens")
    extra_check(x0_prediction(model, x, t, labels, grounding_hidden_states=tokens), tensors, meta, "forward")
    extra_check(x0_prediction(model, x, t, labels), tensors, meta, "forward_null")
    assert model.config.mlp_hidden_multiple == meta["official_config"]["mlp_hidden_multiple"]
