"""Offloading: model / sequential CPU offload and group offload give the same images; blocks are never split."""

import pytest
import torch
from accelerate import cpu_offload, infer_auto_device_map
from pixeldit_testing import tiny_dinov3, tiny_model, tiny_pixeldit2, tiny_text_components

from diffusers_pixeldit import PixelDiT2Pipeline, PixelDiTFlowScheduler, PixelDiTPipeline, PixelDiTT2IPipeline


def c2i_pipeline():
    return PixelDiTPipeline(tiny_model("c2i"), PixelDiTFlowScheduler(), default_num_inference_steps=3), {
        "class_labels": [1, 3]
    }


def t2i_pipeline():
    tokenizer, text_encoder = tiny_text_components(width=tiny_model("t2i").config.text_embed_dim)
    pipe = PixelDiTT2IPipeline(tokenizer, text_encoder, tiny_model("t2i"), PixelDiTFlowScheduler(),
                               default_num_inference_steps=3, complex_human_instruction=[])  # fmt: skip
    return pipe, {"prompt": "a red cat", "negative_prompt": "", "max_sequence_length": 6}


def pixeldit2_pipeline():
    pipe = PixelDiT2Pipeline(tiny_pixeldit2(), PixelDiTFlowScheduler(solver="heun", time_grid="uniform"),
                             tiny_dinov3(hidden_size=16), default_num_inference_steps=3, default_guidance_scale=2.0)  # fmt: skip
    return pipe, {"class_labels": [0, 4]}


PIPELINES = {"c2i": c2i_pipeline, "t2i": t2i_pipeline, "pixeldit2": pixeldit2_pipeline}


def generate(pipe, call):
    pipe.set_progress_bar_config(disable=True)
    return pipe(generator=torch.Generator().manual_seed(0), output_type="latent", **call).images


@pytest.mark.parametrize("kind", PIPELINES)
def test_model_cpu_offload_gives_the_same_images(kind):
    pipe, call = PIPELINES[kind]()
    expected = generate(pipe, call)
    pipe.enable_model_cpu_offload(device="cpu")
    hooked = {name for name, component in pipe.components.items() if hasattr(component, "_hf_hook")}
    assert hooked == set(pipe.model_cpu_offload_seq.split("->"))  # PixelDiT2's encoder is excluded, runs in place
    assert torch.equal(generate(pipe, call), expected)
    assert torch.equal(generate(pipe, call), expected)


@pytest.mark.parametrize("kind", PIPELINES)
def test_sequential_offload_hooks_give_the_same_images(kind):
    # The hooks of `enable_sequential_cpu_offload` (accelerate's `cpu_offload` on every offloaded component), executing
    # on "cpu": the pipeline method itself names the device "cpu:0", on which accelerate 1.15 fails (see below).
    pipe, call = PIPELINES[kind]()
    expected = generate(pipe, call)
    for name, component in pipe.components.items():
        if isinstance(component, torch.nn.Module) and name not in pipe._exclude_from_cpu_offload:
            cpu_offload(component, torch.device("cpu"), offload_buffers=len(component._parameters) > 0)
    assert pipe.transformer.patch_embed.weight.device.type == "meta"  # weights live in the offload hooks
    assert torch.equal(generate(pipe, call), expected)


@pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="enable_sequential_cpu_offload executes on '<device>:0'; on 'cpu:0' accelerate 1.15's "
    "set_module_tensor_to_device fails for any module (Parameter re-creation), so it needs an accelerator",
)
def test_enable_sequential_cpu_offload_on_cuda():
    pipe, call = c2i_pipeline()
    expected = generate(pipe, call)
    pipe.enable_sequential_cpu_offload(device="cuda")
    torch.testing.assert_close(generate(pipe, call).cpu(), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("offload_type", ["block_level", "leaf_level"])
@pytest.mark.parametrize("kind", PIPELINES)
def test_group_offload_gives_the_same_images(kind, offload_type):
    pipe, call = PIPELINES[kind]()
    expected = generate(pipe, call)
    options = {"num_blocks_per_group": 1} if offload_type == "block_level" else {}
    cpu = torch.device("cpu")
    pipe.transformer.enable_group_offload(onload_device=cpu, offload_device=cpu, offload_type=offload_type, **options)
    assert torch.equal(generate(pipe, call), expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="group offloading with CUDA streams needs a CUDA device")
def test_group_offload_with_streams_on_cuda():
    pipe, call = c2i_pipeline()
    expected = generate(pipe, call)
    pipe.transformer.enable_group_offload(
        onload_device=torch.device("cuda"), offload_device=torch.device("cpu"), offload_type="block_level",
        num_blocks_per_group=1, use_stream=True,
    )  # fmt: skip
    torch.testing.assert_close(generate(pipe, call).cpu(), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["c2i", "t2i", "pixeldit2"])
def test_a_device_map_never_splits_a_block(kind):
    model = tiny_pixeldit2() if kind == "pixeldit2" else tiny_model(kind)
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    device_map = infer_auto_device_map(
        model, max_memory={0: size // 3, 1: size // 3, "cpu": size}, no_split_module_classes=model._no_split_modules
    )
    assert len(set(device_map.values())) > 1  # the model is spread over several devices
    blocks = [name for name, module in model.named_modules() if type(module).__name__ in model._no_split_modules]
    for block in blocks:  # each block is on one device: it, or an ancestor, is one entry of the map
        assert any(block == entry or block.startswith(f"{entry}.") for entry in device_map), block
