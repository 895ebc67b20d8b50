"""Quantized loading (torchao on CPU; bitsandbytes where a GPU is) and the float32 modules of half-precision loading."""

import importlib.util
import json

import pytest
import torch
from diffusers import BitsAndBytesConfig, PipelineQuantizationConfig, TorchAoConfig
from pixeldit_testing import FIXTURES, tiny_dinov3, tiny_inputs, tiny_model, tiny_pixeldit2, tiny_text_components

from diffusers_pixeldit import (
    PixelDiT2Transformer2DModel,
    PixelDiTFlowScheduler,
    PixelDiTPipeline,
    PixelDiTTransformer2DModel,
)
from diffusers_pixeldit.models.transformer_pixeldit import time_projection


HAS_TORCHAO = importlib.util.find_spec("torchao") is not None
needs_torchao = pytest.mark.skipif(not HAS_TORCHAO, reason="torchao is not installed (pip install torchao)")
# Max |int8 weight-only − fp32| over max |fp32|: int8 per-row weights are within 1/254 of each row's largest weight
# (0.4 %); through the tiny models' 4–6 layers of unit-gain random weights the output moves by 2–3.2 % (measured),
# so 5 % bounds it with room while staying far below the output's scale.
INT8_RELATIVE_TOLERANCE = 0.05


def pixeldit2_inputs(model, batch_size: int = 2, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    config = model.config
    size = 2 * config.patch_size
    return {
        "hidden_states": torch.randn(batch_size, 3, size, size, generator=generator),
        "timestep": torch.rand(batch_size, generator=generator) * 1000,
        "class_labels": torch.randint(0, config.num_classes + 1, (batch_size,), generator=generator),
        "grounding_hidden_states": torch.randn(batch_size, 4, config.grounding_embed_dim, generator=generator),
    }


MODELS = {
    "c2i": (PixelDiTTransformer2DModel, lambda: tiny_model("c2i"), tiny_inputs),
    "t2i": (PixelDiTTransformer2DModel, lambda: tiny_model("t2i"), tiny_inputs),
    "pixeldit2": (PixelDiT2Transformer2DModel, tiny_pixeldit2, pixeldit2_inputs),
}


def kept_in_fp32(model, name: str) -> bool:
    return any(module in name.split(".") for module in model._keep_in_fp32_modules)


# ---------------------------------------------------------------- half precision keeps the embeddings in float32


@pytest.mark.parametrize("kind", MODELS)
def test_bf16_loading_keeps_the_time_and_class_embeddings_in_float32(tmp_path, kind):
    model_class, build, make_inputs = MODELS[kind]
    reference = build()
    reference.save_pretrained(tmp_path)
    loaded = model_class.from_pretrained(tmp_path, dtype=torch.bfloat16)
    dtypes = {name: param.dtype for name, param in loaded.named_parameters()}
    kept = {name for name in dtypes if kept_in_fp32(loaded, name)}
    assert any(".time_embed." in f".{name}" for name in kept)
    assert {dtypes[name] for name in kept} == {torch.float32}
    assert {dtype for name, dtype in dtypes.items() if name not in kept} == {torch.bfloat16}
    assert loaded.dtype == torch.bfloat16

    # the time embedding is the float32 one exactly; all-bf16 weights round it
    time_proj = time_projection(torch.tensor([1.0, 250.0, 999.0]), 3, "one_minus_sigma")
    everything_bf16 = model_class.from_pretrained(tmp_path).to(torch.bfloat16)
    with torch.no_grad():
        expected = reference.time_embed(time_proj)
        assert torch.equal(loaded.time_embed(time_proj), expected)
        assert not torch.equal(everything_bf16.time_embed(time_proj.bfloat16()).float(), expected)

        inputs = make_inputs(reference)
        expected = reference(**inputs).sample
        # PixelDiT takes its input in the compute dtype; PixelDiT2 keeps float32 input (its velocity is float32)
        half = ("hidden_states", "encoder_hidden_states") if kind != "pixeldit2" else ()
        half_inputs = {key: value.bfloat16() if key in half else value for key, value in inputs.items()}
        output = loaded(**half_inputs).sample.float()
    assert (output - expected).abs().max() <= 0.05 * expected.abs().max()


def test_a_bf16_pipeline_samples_with_float32_embeddings(tmp_path):
    pipe = PixelDiTPipeline(tiny_model("c2i"), PixelDiTFlowScheduler(), default_num_inference_steps=3)
    pipe.save_pretrained(tmp_path)
    loaded = PixelDiTPipeline.from_pretrained(tmp_path, dtype=torch.bfloat16)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.transformer.class_embed.weight.dtype == torch.float32
    images = loaded(class_labels=[1, 2], output_type="latent", generator=torch.Generator().manual_seed(0)).images
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(class_labels=[1, 2], output_type="latent", generator=torch.Generator().manual_seed(0)).images
    assert images.dtype == torch.float32 and (images - expected).abs().max() <= 0.05 * expected.abs().max()


# ---------------------------------------------------------------- torchao (CPU)


def int8_weight_only():
    from torchao.quantization import Int8WeightOnlyConfig

    return Int8WeightOnlyConfig()


def quantized_names(model) -> set[str]:
    from torchao.utils import TorchAOBaseTensor

    return {name for name, param in model.named_parameters() if isinstance(param, TorchAOBaseTensor)}


@needs_torchao
@pytest.mark.parametrize("kind", MODELS)
def test_torchao_int8_weight_only_transformer(tmp_path, kind):
    model_class, build, make_inputs = MODELS[kind]
    reference = build()
    reference.save_pretrained(tmp_path)
    # float32 activations: torchao's weight-only int8 runs on any dtype on the CPU (diffusers warns it prefers bf16)
    quantized = model_class.from_pretrained(
        tmp_path, quantization_config=TorchAoConfig(int8_weight_only()), dtype=torch.float32
    )
    names = quantized_names(quantized)
    linears = {f"{name}.weight" for name, module in reference.named_modules() if isinstance(module, torch.nn.Linear)}
    assert names == {name for name in linears if not kept_in_fp32(reference, name)}
    assert quantized.time_embed.linear_1.weight.dtype == torch.float32  # kept out of the quantization

    # exactly the float32 model with int8-rounded weights (the dequantized ones), up to the kernels' arithmetic
    rounded = build()
    with torch.no_grad():
        for name in names:
            module, _, _ = name.rpartition(".")
            rounded.get_submodule(module).weight.copy_(quantized.get_parameter(name).dequantize())
        inputs = make_inputs(reference)
        output = quantized(**inputs).sample
        expected = reference(**inputs).sample
        assert torch.allclose(output, rounded(**inputs).sample, rtol=1e-5, atol=1e-5)
    assert 0 < (output - expected).abs().max() <= INT8_RELATIVE_TOLERANCE * expected.abs().max()


@needs_torchao
def test_torchao_pipeline_quantization_config(tmp_path):
    pipe = PixelDiTPipeline(tiny_model("c2i"), PixelDiTFlowScheduler(), default_num_inference_steps=3)
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(tmp_path)
    config = PipelineQuantizationConfig(quant_mapping={"transformer": TorchAoConfig(int8_weight_only())})
    quantized = PixelDiTPipeline.from_pretrained(tmp_path, quantization_config=config, dtype=torch.float32)
    quantized.set_progress_bar_config(disable=True)
    assert quantized_names(quantized.transformer) and quantized.transformer.is_quantized
    call = {"class_labels": [1, 2], "output_type": "latent"}
    images = quantized(generator=torch.Generator().manual_seed(0), **call).images
    expected = pipe(generator=torch.Generator().manual_seed(0), **call).images
    assert 0 < (images - expected).abs().max() <= INT8_RELATIVE_TOLERANCE * expected.abs().max()
    # the quantized transformer saves and loads again (torchao >= 0.16 serialises to safetensors)
    quantized.transformer.save_pretrained(tmp_path / "int8")
    assert json.loads((tmp_path / "int8" / "config.json").read_text())["quantization_config"]["quant_method"] == (
        "torchao"
    )
    again = PixelDiTTransformer2DModel.from_pretrained(tmp_path / "int8", dtype=torch.float32)
    inputs = tiny_inputs(pipe.transformer)
    with torch.no_grad():
        assert torch.equal(again(**inputs).sample, quantized.transformer(**inputs).sample)


# ---------------------------------------------------------------- bitsandbytes (needs a GPU in diffusers 0.42.1)


@pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="diffusers 0.42.1's bitsandbytes quantizers need a CUDA (or XPU) device: "
    "BnB8BitDiffusersQuantizer.validate_environment raises 'No GPU found' on a CPU-only machine",
)
def test_bitsandbytes_8bit_transformer(tmp_path):
    pytest.importorskip("bitsandbytes", reason="bitsandbytes is not installed (pip install bitsandbytes)")
    reference = tiny_model("c2i").to("cuda")
    reference.save_pretrained(tmp_path)
    quantized = PixelDiTTransformer2DModel.from_pretrained(
        tmp_path, quantization_config=BitsAndBytesConfig(load_in_8bit=True), dtype=torch.float16
    )
    assert quantized.time_embed.linear_1.weight.dtype == torch.float32
    inputs = {k: v.to("cuda") for k, v in tiny_inputs(reference).items()}
    with torch.no_grad():
        expected = reference(**inputs).sample
        output = quantized(**{k: v.half() if v.is_floating_point() else v for k, v in inputs.items()}).sample
    assert (output.float() - expected).abs().max() <= INT8_RELATIVE_TOLERANCE * expected.abs().max()


def test_pixeldit2_pipeline_quantizes_the_transformer_only(tmp_path):
    from diffusers_pixeldit import PixelDiT2Pipeline

    if not HAS_TORCHAO:
        pytest.skip("torchao is not installed (pip install torchao)")
    pipe = PixelDiT2Pipeline(tiny_pixeldit2(), PixelDiTFlowScheduler(solver="heun", time_grid="uniform"),
                             tiny_dinov3(hidden_size=16))  # fmt: skip
    pipe.save_pretrained(tmp_path)
    config = PipelineQuantizationConfig(quant_mapping={"transformer": TorchAoConfig(int8_weight_only())})
    quantized = PixelDiT2Pipeline.from_pretrained(tmp_path, quantization_config=config, dtype=torch.float32)
    assert quantized_names(quantized.transformer) and not quantized_names(quantized.grounding_encoder)
    quantized.set_progress_bar_config(disable=True)
    images = quantized(class_labels=[0], num_inference_steps=2, output_type="latent").images
    assert images.isfinite().all()


# ---------------------------------------------------------------- quantized single files: torchao, GGUF

C2I_CHECKPOINT = FIXTURES / "c2i_tiny" / "official_checkpoint.ckpt"
HAS_GGUF = importlib.util.find_spec("gguf") is not None
needs_gguf = pytest.mark.skipif(not HAS_GGUF, reason="gguf is not installed (pip install gguf)")


def sample_each(pipes, **condition) -> list[torch.Tensor]:
    """The latents each pipeline samples in 3 steps from the same seed."""
    images = []
    for pipe in pipes:
        pipe.set_progress_bar_config(disable=True)
        call = {"num_inference_steps": 3, "output_type": "latent", **condition}
        images.append(pipe(generator=torch.Generator().manual_seed(0), **call).images)
    return images


@needs_torchao
def test_torchao_single_file_equals_quantized_from_pretrained(tmp_path):
    PixelDiTPipeline.from_single_file(C2I_CHECKPOINT).save_pretrained(tmp_path)  # the converter's folder
    model = PixelDiTTransformer2DModel.from_single_file(
        C2I_CHECKPOINT, quantization_config=TorchAoConfig(int8_weight_only()), dtype=torch.float32
    )
    reference = PixelDiTTransformer2DModel.from_pretrained(
        tmp_path / "transformer", quantization_config=TorchAoConfig(int8_weight_only()), dtype=torch.float32
    )
    assert model.is_quantized and quantized_names(model) == quantized_names(reference) != set()
    assert model.time_embed.linear_1.weight.dtype == torch.float32 and not model.training
    inputs = tiny_inputs(model, height=16, width=16)
    with torch.no_grad():
        assert torch.equal(model(**inputs).sample, reference(**inputs).sample)

    def pipeline_config():
        return PipelineQuantizationConfig(quant_mapping={"transformer": TorchAoConfig(int8_weight_only())})

    pipe = PixelDiTPipeline.from_single_file(
        C2I_CHECKPOINT, quantization_config=pipeline_config(), dtype=torch.float32
    )
    expected = PixelDiTPipeline.from_pretrained(tmp_path, quantization_config=pipeline_config(), dtype=torch.float32)
    images = sample_each([pipe, expected], class_labels=[1, 2])
    assert pipe.transformer.is_quantized and torch.equal(*images)
    with pytest.raises(ValueError, match=r"takes a diffusers PipelineQuantizationConfig \(as from_pretrained\)"):
        PixelDiTPipeline.from_single_file(C2I_CHECKPOINT, quantization_config=TorchAoConfig(int8_weight_only()))
    with pytest.raises(ValueError, match=r"takes the model's own quantization config"):
        PixelDiTTransformer2DModel.from_single_file(C2I_CHECKPOINT, quantization_config=pipeline_config())


def write_gguf(state_dict: dict[str, torch.Tensor], path, quant_type_name: str = "Q8_0") -> dict[str, torch.Tensor]:
    """Writes an official state dict as a GGUF file: the 2-D weights whose rows fill whole quantization blocks in
    `quant_type_name`, the rest in float32 (as GGUF files of diffusion models are made); returns what the file
    holds, dequantized as diffusers dequantizes it (in float16, then float32)."""
    import gguf
    from diffusers.quantizers.gguf.utils import GGUFParameter, dequantize_gguf_tensor

    quant_type = gguf.GGMLQuantizationType[quant_type_name]
    block_size, _ = gguf.GGML_QUANT_SIZES[quant_type]
    writer, stored = gguf.GGUFWriter(str(path), arch="pixeldit"), {}
    for name, tensor in state_dict.items():
        array = tensor.float().numpy()
        if array.ndim == 2 and array.shape[1] % block_size == 0:
            quantized = gguf.quants.quantize(array, quant_type)
            writer.add_tensor(name, quantized, raw_dtype=quant_type)
            stored[name] = dequantize_gguf_tensor(GGUFParameter(torch.from_numpy(quantized), quant_type=quant_type))
        else:
            writer.add_tensor(name, array)
            stored[name] = torch.from_numpy(array.copy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return stored


@needs_gguf
def test_gguf_single_file(tmp_path):
    from diffusers import GGUFQuantizationConfig
    from diffusers.quantizers.gguf.utils import GGUFLinear, GGUFParameter
    from safetensors.torch import save_file

    from diffusers_pixeldit.conversion import load_official_checkpoint

    state_dict, _ = load_official_checkpoint(C2I_CHECKPOINT)
    stored = write_gguf(state_dict, tmp_path / "pixeldit-c2i-Q8_0.gguf")
    save_file({name: tensor.float() for name, tensor in stored.items()}, tmp_path / "dequantized.safetensors")
    gguf_config = GGUFQuantizationConfig(compute_dtype=torch.float32)
    model = PixelDiTTransformer2DModel.from_single_file(
        tmp_path / "pixeldit-c2i-Q8_0.gguf", quantization_config=gguf_config
    )
    # the fused q/k/v and SwiGLU tensors of the official layout are split and joined while still quantized
    quantized = {name for name, param in model.named_parameters() if isinstance(param, GGUFParameter)}
    assert {model.get_parameter(name).quant_type.name for name in quantized} == {"Q8_0"}
    assert (
        "transformer_blocks.0.attn.to_q.weight" in quantized
        and "transformer_blocks.0.ff.net.0.proj.weight" in quantized
    )
    assert isinstance(model.transformer_blocks[0].attn.to_q, GGUFLinear) and model.is_quantized
    assert not any(kept_in_fp32(model, name) for name in quantized)  # the time/class embeddings: dequantized, fp32
    assert model.time_embed.linear_1.weight.dtype == torch.float32

    # what the file holds, dequantized, through the unquantized path; and close to the original float32 weights
    dequantized = PixelDiTTransformer2DModel.from_single_file(tmp_path / "dequantized.safetensors")
    original = PixelDiTTransformer2DModel.from_single_file(C2I_CHECKPOINT)
    inputs = tiny_inputs(model, height=16, width=16)
    with torch.no_grad():
        output = model(**inputs).sample
        torch.testing.assert_close(output, dequantized(**inputs).sample, rtol=0, atol=1e-6)
        expected = original(**inputs).sample
    assert 0 < (output - expected).abs().max() <= INT8_RELATIVE_TOLERANCE * expected.abs().max()

    pipe = PixelDiTPipeline.from_single_file(
        tmp_path / "pixeldit-c2i-Q8_0.gguf",
        quantization_config=PipelineQuantizationConfig(quant_mapping={"transformer": gguf_config}),
    )
    reference = PixelDiTPipeline.from_single_file(tmp_path / "dequantized.safetensors")
    images = sample_each([pipe, reference], class_labels=[1, 2])
    assert isinstance(pipe.transformer.transformer_blocks[0].attn.to_q, GGUFLinear)
    torch.testing.assert_close(images[0], images[1], rtol=0, atol=1e-5)


@needs_gguf
def test_gguf_file_without_its_quantization_config_is_refused(tmp_path):
    from diffusers_pixeldit.conversion import load_official_checkpoint

    write_gguf(load_official_checkpoint(C2I_CHECKPOINT)[0], tmp_path / "model.gguf")
    with pytest.raises(ValueError, match=r"holds GGUF-quantized tensors: load it with quantization_config="):
        PixelDiTPipeline.from_single_file(tmp_path / "model.gguf")
    (tmp_path / "truncated.gguf").write_bytes((tmp_path / "model.gguf").read_bytes()[:200])
    with pytest.raises(ValueError, match=r"Cannot read .*truncated.gguf as GGUF"):
        PixelDiTTransformer2DModel.from_single_file(tmp_path / "truncated.gguf")


@needs_torchao
def test_torchao_text_to_image_single_file_quantizes_the_text_encoder_it_loads(tmp_path):
    from transformers import TorchAoConfig as TransformersTorchAoConfig

    from diffusers_pixeldit import PixelDiTT2IPipeline

    tokenizer, text_encoder = tiny_text_components(width=24)
    tokenizer.save_pretrained(tmp_path / "text-encoder")
    text_encoder.save_pretrained(tmp_path / "text-encoder")
    config = PipelineQuantizationConfig(
        quant_mapping={
            "transformer": TorchAoConfig(int8_weight_only()),
            "text_encoder": TransformersTorchAoConfig(int8_weight_only()),
        }
    )
    checkpoint = FIXTURES / "t2i_tiny" / "official_checkpoint.pth"
    pipe = PixelDiTT2IPipeline.from_single_file(
        checkpoint, text_encoder=str(tmp_path / "text-encoder"), quantization_config=config, dtype=torch.float32
    )
    assert quantized_names(pipe.transformer) and quantized_names(pipe.text_encoder)
    reference = PixelDiTT2IPipeline.from_single_file(checkpoint, text_encoder=str(tmp_path / "text-encoder"))
    images = sample_each([pipe, reference], prompt=["a cat"], height=16, width=16)
    assert 0 < (images[0] - images[1]).abs().max() <= INT8_RELATIVE_TOLERANCE * images[1].abs().max()
    with pytest.raises(ValueError, match=r"names the text encoder, which is quantized as it loads"):
        PixelDiTT2IPipeline.from_single_file(checkpoint, quantization_config=config)


@needs_gguf
@pytest.mark.parametrize("checkpoint", ["t2i_tiny/official_checkpoint.pth", "pixeldit2_tiny/official_checkpoint.ckpt"])
def test_gguf_text_to_image_and_pixeldit2_transformers(tmp_path, checkpoint):
    from diffusers import GGUFQuantizationConfig
    from diffusers.quantizers.gguf.utils import GGUFParameter
    from safetensors.torch import save_file

    from diffusers_pixeldit.conversion import load_official_checkpoint

    state_dict, kind = load_official_checkpoint(FIXTURES / checkpoint)
    stored = write_gguf(state_dict, tmp_path / "model.gguf")
    save_file({name: tensor.float() for name, tensor in stored.items()}, tmp_path / "dequantized.safetensors")
    model_class, _, make_inputs = MODELS[kind]
    config = GGUFQuantizationConfig(compute_dtype=torch.float32)
    options = {"in_context_start": 1} if kind == "pixeldit2" else {}  # the fixture's (not in its tensors)
    model = model_class.from_single_file(tmp_path / "model.gguf", quantization_config=config, **options)
    assert any(isinstance(param, GGUFParameter) for param in model.parameters())
    reference = model_class.from_single_file(tmp_path / "dequantized.safetensors", **options)
    inputs = make_inputs(reference) if kind == "pixeldit2" else tiny_inputs(reference, height=16, width=16)
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).sample, reference(**inputs).sample, rtol=0, atol=1e-6)
