import json

import pytest
import torch
from diffusers import attention_backend
from peft import LoraConfig
from pixeldit_testing import FIXTURES, load_official_fixture, model_from_official, tiny_inputs, tiny_model
from safetensors.torch import load_file

from diffusers_pixeldit import (
    PIXELDIT_PRESETS,
    PixelDiTAttnProcessor,
    PixelDiTTransformer2DModel,
    diffusers_to_official_state_dict,
    infer_config_from_official_state_dict,
    official_to_diffusers_state_dict,
)


FORWARD_TOLERANCE = 1e-5  # fixtures/OFFICIAL_FIXTURES.md


def run(model, **inputs):
    with torch.no_grad():
        return model(**inputs).sample


# ---------------------------------------------------------------- parity with the official implementation


@pytest.mark.parametrize("fixture", ["c2i_tiny", "c2i_postmod_tiny"])
def test_official_fixture_c2i_forward(fixture):
    state_dict, cases, meta = load_official_fixture(fixture)
    model = model_from_official(state_dict)
    # the post-modulation pixel blocks are read from the modulation width
    assert model.config.pixel_post_modulation == meta["official_config"].get("pit_adaln_post_modulation", False)
    t_official = cases["forward.t_official"]  # C2I time, t = 0 is noise
    out = run(
        model,
        hidden_states=cases["forward.x"],
        timestep=(1 - t_official) * 1000,
        class_labels=cases["forward.class_labels"],
    )
    # ours returns noise - x0; the official C2I model returns x0 - noise
    error = (out + cases["forward.out_official"]).abs().max().item()
    assert error <= FORWARD_TOLERANCE == meta["tolerance"]["forward"]
    assert cases["forward.class_labels"][-1] == model.config.num_classes  # the null class is exercised


def test_official_fixture_t2i_forward():
    state_dict, cases, meta = load_official_fixture("t2i_tiny")
    model = model_from_official(state_dict)
    out = run(
        model,
        hidden_states=cases["forward.x"],
        timestep=cases["forward.t_input_official"],
        encoder_hidden_states=cases["forward.encoder_hidden_states"],
    )
    assert (out - cases["forward.out_official"]).abs().max().item() <= meta["tolerance"]["forward"]


@pytest.mark.parametrize(
    "name",
    ["c2i_p2_nonsquare", "c2i_p8_wide", "c2i_1channel", "t2i_long_text", "t2i_short_text_p2", "t2i_no_text_rope"],
)
def test_official_parity_other_configurations(extra_configs, name):
    meta, tensors = extra_configs
    prefix = f"{name}.official_state_dict."
    state_dict = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    official_config = meta[name]["official_config"]
    model = model_from_official(state_dict, use_text_rope=official_config.get("use_text_rope", True))
    x = tensors[f"{name}.x"]
    assert x.shape[-2:] == (meta[name]["height"], meta[name]["width"])
    if meta[name]["kind"] == "c2i":
        out = -run(
            model,
            hidden_states=x,
            timestep=(1 - tensors[f"{name}.t_official"]) * 1000,
            class_labels=tensors[f"{name}.class_labels"],
        )
    else:
        out = run(
            model,
            hidden_states=x,
            timestep=tensors[f"{name}.t_input_official"],
            encoder_hidden_states=tensors[f"{name}.encoder_hidden_states"],
        )
    reference = tensors[f"{name}.out_official"]
    assert reference.abs().max() > 1  # outputs are far from zero: the comparison is meaningful
    assert (out - reference).abs().max().item() <= FORWARD_TOLERANCE


@pytest.mark.parametrize("name", ["c2i_tiny", "t2i_tiny"])
def test_state_dict_conversion_round_trip_is_bit_exact(name):
    state_dict, _, _ = load_official_fixture(name)
    converted = official_to_diffusers_state_dict(state_dict)
    back = diffusers_to_official_state_dict(converted)
    assert back.keys() == state_dict.keys()
    assert all(torch.equal(back[key], state_dict[key]) for key in state_dict)
    ours = PixelDiTTransformer2DModel(**infer_config_from_official_state_dict(state_dict))
    assert converted.keys() == ours.state_dict().keys()


def test_conversion_rejects_foreign_keys():
    state_dict, _, _ = load_official_fixture("c2i_tiny")
    with pytest.raises(ValueError, match="vae.encoder.weight"):
        official_to_diffusers_state_dict({**state_dict, "vae.encoder.weight": torch.zeros(1)})
    incomplete = {k: v for k, v in state_dict.items() if k != "patch_blocks.1.mlp.w3.weight"}
    with pytest.raises(ValueError, match="patch_blocks.1.mlp.w3"):
        official_to_diffusers_state_dict(incomplete)
    with pytest.raises(ValueError, match="not part of a PixelDiTTransformer2DModel|Not part of a PixelDiT"):
        diffusers_to_official_state_dict({"unet.conv_in.weight": torch.zeros(1)})


def test_infer_config_reads_heads_from_shapes():
    state_dict, _, meta = load_official_fixture("c2i_tiny")
    config = infer_config_from_official_state_dict(state_dict)
    official = meta["official_config"]
    assert config["num_attention_heads"] == official["num_groups"]
    assert config["num_attention_heads"] * config["attention_head_dim"] == official["hidden_size"]
    assert (config["num_layers"], config["num_pixel_layers"]) == (official["patch_depth"], official["pixel_depth"])
    assert (config["patch_size"], config["num_classes"]) == (official["patch_size"], official["num_classes"])
    assert infer_config_from_official_state_dict(state_dict, num_attention_heads=official["num_groups"]) == config
    with pytest.raises(ValueError, match="num_attention_heads=8 disagrees"):
        infer_config_from_official_state_dict(state_dict, num_attention_heads=8)
    with pytest.raises(ValueError, match="Not an official PixelDiT state dict"):
        infer_config_from_official_state_dict({"conv.weight": torch.zeros(1)})


# ---------------------------------------------------------------- presets and configuration


def test_preset_parameter_counts():
    # Counted with the official constructors: XL 797,383,203 (paper 797M). T2I is 1,302,470,787 without the
    # training-only REPA projector (8,921,856 more make the 1311M of the release).
    expected = {
        "PixelDiT-B": 184_749_155,
        "PixelDiT-L": 569_648_963,
        "PixelDiT-XL": 797_383_203,
        "PixelDiT-T2I": 1_302_470_787,
    }
    assert set(expected) == set(PIXELDIT_PRESETS)
    with torch.device("meta"):
        for name, count in expected.items():
            model = PixelDiTTransformer2DModel.from_preset(name)
            assert sum(p.numel() for p in model.parameters()) == count, name


def test_preset_unknown_name_raises():
    with pytest.raises(ValueError, match="Unknown PixelDiTTransformer2DModel preset 'PixelDiT-XXL'"):
        PixelDiTTransformer2DModel.from_preset("PixelDiT-XXL")


def test_config_validation():
    with pytest.raises(ValueError, match="not both"):
        PixelDiTTransformer2DModel(num_classes=10, text_embed_dim=8, num_layers=1, num_pixel_layers=1)
    with pytest.raises(ValueError, match="multiple of 4"):
        PixelDiTTransformer2DModel(attention_head_dim=6, num_attention_heads=2, num_layers=1, num_pixel_layers=1)
    with pytest.raises(ValueError, match="timestep_input"):
        PixelDiTTransformer2DModel(timestep_input="t", num_layers=1, num_pixel_layers=1)


def test_either_variant_builds_without_spelling_out_the_other(tmp_path):
    with torch.device("meta"):
        class_conditional = PixelDiTTransformer2DModel(num_layers=1, num_pixel_layers=1)
        text_conditional = PixelDiTTransformer2DModel(text_embed_dim=8, num_layers=1, num_pixel_layers=1)
    assert class_conditional.config.num_classes == 1000 and class_conditional.class_embed.num_embeddings == 1001
    assert text_conditional.config.num_classes is None and text_conditional.is_text_conditioned
    # a saved config names its classes, so older configs (with the entry spelled out) load as they were
    tiny_model("c2i").save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["num_classes"] == 5
    assert PixelDiTTransformer2DModel.from_pretrained(tmp_path).class_embed.num_embeddings == 6


def test_conventions_are_visible_in_config_json(tmp_path):
    tiny_model("c2i").save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["timestep_input"] == "one_minus_sigma" and config["negate_output"] is True
    assert config["_class_name"] == "PixelDiTTransformer2DModel"


def test_timestep_conventions():
    c2i = tiny_model("c2i")
    inputs = tiny_inputs(c2i)
    flipped = tiny_model("c2i", negate_output=False)
    assert torch.equal(run(flipped, **inputs), -run(c2i, **inputs))
    # "one_minus_sigma" feeds t = 1 - timestep / 1000 to the time embedding: equivalent to "sigma_x1000" at that t
    sigma_input = tiny_model("c2i", timestep_input="sigma_x1000")
    t = 1 - inputs["timestep"] / 1000
    torch.testing.assert_close(run(sigma_input, **{**inputs, "timestep": t}), run(c2i, **inputs), rtol=0, atol=1e-6)


# ---------------------------------------------------------------- inputs


@pytest.mark.parametrize("kind", ["c2i", "t2i"])
@pytest.mark.parametrize("size", [(4, 4), (8, 24), (28, 12)])
def test_any_multiple_of_patch_size(kind, size):
    model = tiny_model(kind)
    inputs = tiny_inputs(model, height=size[0], width=size[1])
    assert run(model, **inputs).shape == inputs["hidden_states"].shape


@pytest.mark.parametrize("size", [(18, 16), (16, 10)])
def test_size_not_divisible_by_patch_size_raises(size):
    model = tiny_model("c2i")
    inputs = tiny_inputs(model, height=16, width=16)
    inputs["hidden_states"] = torch.randn(2, 3, *size)
    with pytest.raises(ValueError, match=f"Image size {size[0]}x{size[1]} .* patch size 4"):
        model(**inputs)


def test_invalid_class_labels_raise():
    model = tiny_model("c2i")
    inputs = tiny_inputs(model)
    for bad in ([-1, 2], [0, 6]):
        with pytest.raises(ValueError, match=rf"\[0, 5\].*{bad[0] if bad[0] < 0 else bad[1]}"):
            model(**{**inputs, "class_labels": torch.tensor(bad)})
    with pytest.raises(ValueError, match="integer ids"):
        model(**{**inputs, "class_labels": torch.tensor([0.0, 1.0])})
    with pytest.raises(ValueError, match="needs `class_labels`"):
        model(**{**inputs, "class_labels": None})
    with pytest.raises(ValueError, match="not `encoder_hidden_states`"):
        model(**inputs, encoder_hidden_states=torch.randn(2, 3, 6))
    # the null class (= num_classes) is a valid id with an embedding of its own
    null = run(model, **{**inputs, "class_labels": torch.tensor([5, 5])})
    assert not torch.allclose(null, run(model, **{**inputs, "class_labels": torch.tensor([4, 4])}))


@pytest.mark.parametrize("kind", ["c2i", "t2i"])
def test_forward_makes_no_data_dependent_host_sync(kind):
    # On the meta device any read of tensor values (`.item()`, `bool(tensor)`, `.tolist()`) raises: a forward that
    # runs there does no device-to-host synchronisation, whatever the accelerator.
    model = tiny_model(kind).to("meta")
    inputs = {key: value.to("meta") for key, value in tiny_inputs(model).items()}
    assert run(model, **inputs).shape == (2, 3, 16, 24)


def test_position_tables_are_cached_and_serve_training():
    from diffusers_pixeldit.models.transformer_pixeldit import _cached_constant_table

    model = tiny_model("t2i")
    inputs = tiny_inputs(model, height=20, width=28)
    _cached_constant_table.cache_clear()
    with torch.inference_mode():
        reference = run(model, **inputs)
    built = _cached_constant_table.cache_info().misses  # image RoPE x2 head dims, text RoPE, pixel sin-cos
    assert built == 4
    # the tables built under inference mode are reused by a training step, and its gradients flow
    model.train()
    loss = model(**inputs).sample.square().mean()
    loss.backward()
    info = _cached_constant_table.cache_info()
    assert (info.misses, info.hits) == (built, built)
    assert model.patch_embed.weight.grad.abs().sum() > 0
    torch.testing.assert_close(model.eval()(**inputs).sample, reference, rtol=0, atol=0)


def test_invalid_text_inputs_raise():
    model = tiny_model("t2i")
    inputs = tiny_inputs(model)
    with pytest.raises(ValueError, match=r"\(batch, length, 6\), got \(2, 5, 7\)"):
        model(**{**inputs, "encoder_hidden_states": torch.randn(2, 5, 7)})
    with pytest.raises(ValueError, match="needs `encoder_hidden_states`"):
        model(**{**inputs, "encoder_hidden_states": None})
    with pytest.raises(ValueError, match="not `class_labels`"):
        model(**inputs, class_labels=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"channels|\(batch, 3, height, width\)"):
        model(**{**inputs, "hidden_states": torch.randn(2, 4, 16, 16)})


def test_text_beyond_max_length_is_cut_and_padding_is_attended():
    model = tiny_model("t2i")
    inputs = tiny_inputs(model)
    text = torch.randn(2, 10, 6)
    cut = run(model, **{**inputs, "encoder_hidden_states": text[:, :7]})
    assert torch.equal(run(model, **{**inputs, "encoder_hidden_states": text}), cut)
    # no attention mask: every token within the length limit changes the output, as in the official model
    assert not torch.allclose(run(model, **{**inputs, "encoder_hidden_states": text[:, :6]}), cut)


def test_scalar_timestep_broadcasts_and_output_is_deterministic():
    model = tiny_model("c2i")
    inputs = tiny_inputs(model)
    scalar = run(model, **{**inputs, "timestep": torch.tensor(321.5)})
    vector = run(model, **{**inputs, "timestep": torch.full((2,), 321.5)})
    assert torch.equal(scalar, vector)
    assert torch.equal(run(model, **inputs), run(model, **inputs))
    (tuple_out,) = model(**inputs, return_dict=False)
    assert torch.equal(tuple_out, run(model, **inputs))


def test_batch_items_are_independent():
    model = tiny_model("t2i")
    inputs = tiny_inputs(model, batch_size=3)
    batched = run(model, **inputs)
    for i in range(3):
        single = run(model, **{k: v[i : i + 1] for k, v in inputs.items()})
        torch.testing.assert_close(single, batched[i : i + 1], rtol=0, atol=1e-5)


# ---------------------------------------------------------------- diffusers integration


@pytest.mark.parametrize("kind", ["c2i", "t2i"])
def test_attention_processor_and_backends(kind):
    model = tiny_model(kind)
    inputs = tiny_inputs(model)
    reference = run(model, **inputs)
    processors = model.attn_processors
    assert len(processors) == model.config.num_layers + model.config.num_pixel_layers
    assert all(isinstance(p, PixelDiTAttnProcessor) for p in processors.values())

    model.set_attn_processor({name: PixelDiTAttnProcessor() for name in processors})
    assert torch.equal(run(model, **inputs), reference)
    with pytest.raises(ValueError, match="does not match the number of attention layers"):
        model.set_attn_processor({"transformer_blocks.0.attn.processor": PixelDiTAttnProcessor()})

    model.set_attention_backend("_native_math")
    math_backend = run(model, **inputs)
    model.reset_attention_backend()
    with attention_backend("_native_math"):
        context_manager = run(model, **inputs)
    torch.testing.assert_close(math_backend, reference, rtol=0, atol=1e-5)
    torch.testing.assert_close(context_manager, math_backend, rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", ["c2i", "t2i"])
def test_fused_qkv_projections(kind):
    model = tiny_model(kind)
    inputs = tiny_inputs(model)
    reference = run(model, **inputs)
    model.fuse_qkv_projections()
    assert all(m.fused_projections for m in model.modules() if hasattr(m, "fused_projections"))
    torch.testing.assert_close(run(model, **inputs), reference, rtol=0, atol=1e-6)
    model.unfuse_qkv_projections()
    assert torch.equal(run(model, **inputs), reference)


def counted(function, calls: list):
    def wrapper(*args, **kwargs):
        calls.append(1)
        return function(*args, **kwargs)

    return wrapper


@pytest.mark.parametrize("kind", ["c2i", "t2i"])
def test_gradient_checkpointing_gives_the_same_gradients(kind):
    inputs = tiny_inputs(tiny_model(kind))

    def gradients(checkpointing: bool):
        model = tiny_model(kind).train()
        if checkpointing:
            model.enable_gradient_checkpointing()
        calls = []
        for block in [*model.transformer_blocks, *model.pixel_blocks]:
            block.forward = counted(block.forward, calls)
        model(**inputs).sample.square().mean().backward()
        return {n: p.grad for n, p in model.named_parameters()}, len(calls), model.is_gradient_checkpointing

    plain, plain_calls, plain_flag = gradients(False)
    checkpointed, checkpointed_calls, flag = gradients(True)
    assert flag and not plain_flag
    assert checkpointed_calls == 2 * plain_calls  # every block recomputed in the backward pass
    no_gradient = {name for name, grad in plain.items() if grad is None}
    assert no_gradient == {name for name, grad in checkpointed.items() if grad is None}
    # only the last joint block's text-stream outputs are unused (as in the official model)
    last = f"transformer_blocks.{len(tiny_model(kind).transformer_blocks) - 1}."
    assert all(n.startswith(last) and ("context" in n or "add_out" in n) for n in no_gradient)
    for name in plain.keys() - no_gradient:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=0, atol=1e-6, msg=name)


def test_model_class_attributes():
    cls = PixelDiTTransformer2DModel
    assert cls._supports_gradient_checkpointing
    assert (
        set(cls._no_split_modules)
        == set(cls._repeated_blocks)
        == {"PixelDiTTransformerBlock", "PixelDiTJointTransformerBlock", "PixelDiTPixelBlock"}
    )
    block_names = {type(m).__name__ for m in [*tiny_model("c2i").modules(), *tiny_model("t2i").modules()]}
    assert set(cls._repeated_blocks) <= block_names
    assert "norm" in cls._skip_layerwise_casting_patterns


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kind", ["c2i", "t2i"])
def test_half_precision_is_finite_and_close(kind, dtype):
    model = tiny_model(kind)
    inputs = tiny_inputs(model)
    reference = run(model, **inputs)
    model.to(dtype)
    half_inputs = {k: v.to(dtype) if v.is_floating_point() and k != "timestep" else v for k, v in inputs.items()}
    out = run(model, **half_inputs)
    assert out.dtype == dtype
    assert (out.float() - reference).abs().max() < 0.1 * reference.abs().max()


# The whole-model graph of each variant, traced with aot_eager (dynamo and AOTAutograd, the parts a graph break or a
# recompile comes from); inductor's code is compared with the official outputs in test_pipeline_pixeldit.py (regional
# compilation), the one inductor test: on a fresh machine each process that compiles with inductor pays ~40 s first.
@pytest.mark.parametrize("kind", ["c2i", "t2i"])
def test_torch_compile_fullgraph_matches_eager(kind):
    torch._dynamo.reset()
    model = tiny_model(kind)
    inputs = tiny_inputs(model)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        out = compiled(**inputs).sample
    torch.testing.assert_close(out, run(model, **inputs), rtol=0, atol=1e-5)


def test_lora_trains_saves_and_reloads(tmp_path):
    model = tiny_model("c2i")
    inputs = tiny_inputs(model)
    base = run(model, **inputs)
    targets = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "ff.net.0.proj", "ff.net.2", "compact", "expand"]
    model.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=targets, init_lora_weights="gaussian"))
    trainable = [p for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora" in n for n, p in model.named_parameters() if p.requires_grad)
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    target = torch.zeros_like(base)
    losses = []
    model.train()
    for _ in range(10):
        loss = (model(**inputs).sample - target).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    assert losses[-1] < 0.9 * losses[0]
    tuned = run(model, **inputs)
    assert not torch.allclose(tuned, base)
    torch.testing.assert_close(run(model, **inputs, attention_kwargs={"scale": 0.0}), base, rtol=0, atol=1e-6)

    model.save_lora_adapter(tmp_path)
    fresh = tiny_model("c2i")
    fresh.load_lora_adapter(tmp_path, prefix=None, weight_name="pytorch_lora_weights.safetensors")
    torch.testing.assert_close(run(fresh, **inputs), tuned, rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", ["c2i", "t2i"])
def test_save_load_round_trip(tmp_path, kind):
    model = tiny_model(kind)
    inputs = tiny_inputs(model)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    loaded = PixelDiTTransformer2DModel.from_pretrained(tmp_path)
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
    assert public(loaded.config) == public(model.config)
    torch.testing.assert_close(run(loaded, **inputs), run(model, **inputs), rtol=0, atol=1e-6)
    bf16 = PixelDiTTransformer2DModel.from_pretrained(tmp_path, dtype=torch.bfloat16)
    kept = lambda name: any(m in name.split(".") for m in bf16._keep_in_fp32_modules)  # noqa: E731
    # `_keep_in_fp32_modules` (time and class embeddings) stay float32, as `from_pretrained` loads them
    assert all(p.dtype == (torch.float32 if kept(n) else torch.bfloat16) for n, p in bf16.named_parameters())


def test_sharded_save_load(tmp_path):
    model = tiny_model("c2i")
    model.save_pretrained(tmp_path, max_shard_size="50KB")
    assert (tmp_path / "diffusion_pytorch_model.safetensors.index.json").is_file()
    inputs = tiny_inputs(model)
    loaded = PixelDiTTransformer2DModel.from_pretrained(tmp_path)
    torch.testing.assert_close(run(loaded, **inputs), run(model, **inputs), rtol=0, atol=1e-6)


def test_layerwise_casting_runs():
    model = tiny_model("c2i")
    inputs = tiny_inputs(model)
    reference = run(model, **inputs)
    model.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.float32)
    assert model.patch_embed.weight.dtype == torch.float32  # skipped pattern
    assert model.transformer_blocks[0].attn.to_q.weight.dtype == torch.float8_e4m3fn
    # fp8 storage, fp32 compute: the output of a model whose cast weights are rounded through fp8
    rounded = tiny_model("c2i")
    with torch.no_grad():
        for name, param in rounded.named_parameters():
            if param.dtype != dict(model.named_parameters())[name].dtype:
                param.copy_(param.to(torch.float8_e4m3fn).float())
    assert not torch.equal(run(rounded, **inputs), reference)
    torch.testing.assert_close(run(model, **inputs), run(rounded, **inputs), rtol=0, atol=0)


def test_official_post_modulation_on_another_configuration():
    # non-square, patch 8: the post-modulation pixel blocks of `postmod_extra`
    tensors = load_file(FIXTURES / "postmod_extra.safetensors")
    prefix = "postmod_nonsquare_p8.official_state_dict."
    model = model_from_official({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})
    assert model.config.pixel_post_modulation
    out = -run(
        model,
        hidden_states=tensors["postmod_nonsquare_p8.x"],
        timestep=(1 - tensors["postmod_nonsquare_p8.t_official"]) * 1000,
        class_labels=tensors["postmod_nonsquare_p8.class_labels"],
    )
    assert (out - tensors["postmod_nonsquare_p8.out_official"]).abs().max().item() <= FORWARD_TOLERANCE
