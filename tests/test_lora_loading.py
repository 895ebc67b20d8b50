"""Pipeline-level LoRA (`PixelDiTLoraLoaderMixin`) on the three pipelines: load_lora_weights, the call's LoRA scale,
set_adapters, fuse/unfuse, delete_adapters, unload_lora_weights, save_lora_weights; the diffusers and PEFT layouts;
a Hub repo id from a pre-populated cache, offline."""

import copy
import os
import subprocess
import sys

import pytest
import torch
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from pixeldit_testing import TINY_C2I, TINY_PIXELDIT2, tiny_dinov3, tiny_model, tiny_pixeldit2, tiny_text_components
from safetensors import safe_open
from safetensors.torch import save_file

from diffusers_pixeldit import (
    PixelDiT2Pipeline,
    PixelDiT2Transformer2DModel,
    PixelDiTFlowScheduler,
    PixelDiTPipeline,
    PixelDiTT2IPipeline,
    PixelDiTTransformer2DModel,
)


KINDS = ["c2i", "t2i", "pixeldit2"]
WEIGHT_NAME = "pytorch_lora_weights.safetensors"


def tiny_pipeline(kind: str):
    scheduler = PixelDiTFlowScheduler(shift=1.0)
    if kind == "c2i":
        pipe = PixelDiTPipeline(tiny_model("c2i"), scheduler)
    elif kind == "t2i":
        tokenizer, text_encoder = tiny_text_components(width=8)
        pipe = PixelDiTT2IPipeline(
            tokenizer, text_encoder, tiny_model("t2i", text_embed_dim=8, max_text_length=12), scheduler
        )
    else:
        pipe = PixelDiT2Pipeline(tiny_pixeldit2(), scheduler, tiny_dinov3(hidden_size=16))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe, **kwargs) -> torch.Tensor:
    condition = {"prompt": ["a cat", "a dog"]} if isinstance(pipe, PixelDiTT2IPipeline) else {"class_labels": [1, 3]}
    kwargs = {"num_inference_steps": 2, "guidance_scale": 2.0, "output_type": "latent", **condition, **kwargs}
    return pipe(generator=torch.Generator().manual_seed(0), **kwargs).images


def random_lora(transformer, seed: int, target_modules=("to_q", "to_v")) -> tuple[dict, dict]:
    """A rank-2 LoRA of `transformer` with non-zero weights: (PEFT-layout state dict, its LoraConfig as a dict)."""
    adapted = copy.deepcopy(transformer)
    adapted.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=list(target_modules), init_lora_weights=False))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in adapted.named_parameters():
            if ".lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    return get_peft_model_state_dict(adapted), adapted.peft_config["default"].to_dict()


def save_lora(pipe, folder, seed: int, **kwargs) -> str:
    """Saves a random LoRA of `pipe`'s transformer with the pipeline's `save_lora_weights`; returns the folder."""
    state_dict, config = random_lora(pipe.transformer, seed, **kwargs)
    type(pipe).save_lora_weights(
        folder, transformer_lora_layers=state_dict, transformer_lora_adapter_metadata=config, weight_name=WEIGHT_NAME
    )
    return str(folder)


def lora_parameters(transformer) -> list[str]:
    return [name for name, _ in transformer.named_parameters() if ".lora_" in name]


@pytest.mark.parametrize(
    "model_class, config", [(PixelDiTTransformer2DModel, TINY_C2I), (PixelDiT2Transformer2DModel, TINY_PIXELDIT2)]
)
def test_an_adapter_changes_a_freshly_built_model(model_class, config):
    # (with the official zero AdaLN/output initialisation at construction, no adapter could change the output)
    torch.manual_seed(0)
    model = model_class(**config).eval()
    inputs = dict(hidden_states=torch.randn(2, 3, 16, 16), timestep=torch.tensor([300.0, 700.0]))
    inputs["class_labels"] = torch.tensor([0, 1])
    if model_class is PixelDiT2Transformer2DModel:
        inputs["hidden_states"] = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        base = model(**inputs).sample
        state_dict, config = random_lora(model, seed=1)
        model.load_lora_adapter(state_dict, prefix=None, metadata=config)
        assert (model(**inputs).sample - base).abs().max() > 1e-3


@pytest.mark.parametrize("kind", KINDS)
def test_load_scale_and_unload(kind, tmp_path):
    pipe = tiny_pipeline(kind)
    base = generate(pipe)
    pipe.load_lora_weights(save_lora(pipe, tmp_path, seed=1), weight_name=WEIGHT_NAME, adapter_name="style")
    assert pipe.get_list_adapters() == {"transformer": ["style"]} and lora_parameters(pipe.transformer)
    adapted = generate(pipe)
    assert (adapted - base).abs().max() > 1e-3
    # the call's LoRA scale: 0 switches the adapter off, 0.5 is between
    torch.testing.assert_close(generate(pipe, attention_kwargs={"scale": 0.0}), base, rtol=0, atol=1e-6)
    half = generate(pipe, attention_kwargs={"scale": 0.5})
    assert (half - base).abs().max() > 1e-4 and (half - adapted).abs().max() > 1e-4
    assert torch.equal(generate(pipe), adapted)  # the scale was for that call only
    pipe.unload_lora_weights()
    assert lora_parameters(pipe.transformer) == [] and torch.equal(generate(pipe), base)


@pytest.mark.parametrize("kind", KINDS)
def test_fused_output_equals_unfused_and_unfuse_restores(kind, tmp_path):
    pipe = tiny_pipeline(kind)
    base = generate(pipe)
    base_weight = pipe.transformer.transformer_blocks[0].attn.to_q.weight.detach().clone()
    pipe.load_lora_weights(save_lora(pipe, tmp_path, seed=1), adapter_name="style")
    unfused, half = generate(pipe), generate(pipe, attention_kwargs={"scale": 0.5})
    pipe.fuse_lora()
    to_q = pipe.transformer.transformer_blocks[0].attn.to_q
    assert not torch.allclose(to_q.base_layer.weight, base_weight)  # the LoRA is in the base weight now
    # fp32 rounding of W + BA, amplified by PixelDiT2's velocity (÷ σ ≥ 0.05): within 1e-5 of the outputs' size
    torch.testing.assert_close(generate(pipe), unfused, rtol=1e-5, atol=1e-5)
    pipe.unfuse_lora()
    torch.testing.assert_close(to_q.base_layer.weight, base_weight, rtol=0, atol=1e-6)
    torch.testing.assert_close(generate(pipe), unfused, rtol=1e-5, atol=1e-5)
    pipe.fuse_lora(lora_scale=0.5)
    torch.testing.assert_close(generate(pipe), half, rtol=1e-5, atol=1e-5)
    pipe.unfuse_lora()
    pipe.unload_lora_weights()
    torch.testing.assert_close(generate(pipe), base, rtol=1e-5, atol=1e-5)


def test_set_adapters_weighs_and_delete_adapters_removes(tmp_path):
    pipe = tiny_pipeline("c2i")
    base = generate(pipe)
    pipe.load_lora_weights(save_lora(pipe, tmp_path / "a", seed=1), adapter_name="a")
    pipe.load_lora_weights(
        save_lora(pipe, tmp_path / "b", seed=2, target_modules=["to_k", "ff.net.2"]), adapter_name="b"
    )
    pipe.set_adapters("a")
    only_a = generate(pipe)
    pipe.set_adapters(["b"])
    only_b = generate(pipe)
    assert pipe.get_active_adapters() == ["b"]
    pipe.set_adapters(["a", "b"], adapter_weights=[1.0, 0.0])
    torch.testing.assert_close(generate(pipe), only_a, rtol=0, atol=1e-6)
    pipe.set_adapters(["a", "b"], adapter_weights=[0.0, 0.0])
    torch.testing.assert_close(generate(pipe), base, rtol=0, atol=1e-6)
    pipe.set_adapters(["a", "b"], adapter_weights=[0.7, 0.4])
    mixed = generate(pipe)
    assert min((mixed - other).abs().max() for other in (base, only_a, only_b)) > 1e-4
    assert sorted(pipe.get_active_adapters()) == ["a", "b"]
    pipe.delete_adapters("a")
    assert pipe.get_list_adapters() == {"transformer": ["b"]}
    assert not any(".a." in name for name in lora_parameters(pipe.transformer))
    pipe.set_adapters("b")
    torch.testing.assert_close(generate(pipe), only_b, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="a"):
        pipe.set_adapters("a")


def test_save_lora_weights_writes_the_diffusers_layout_with_its_config(tmp_path):
    pipe = tiny_pipeline("c2i")
    save_lora(pipe, tmp_path, seed=1)
    with safe_open(str(tmp_path / WEIGHT_NAME), "pt") as file:
        keys, file_metadata = set(file.keys()), file.metadata()
    assert keys == {f"transformer.{key}" for key in random_lora(pipe.transformer, seed=1)[0]}
    assert '"transformer.r": 2' in file_metadata["lora_adapter_metadata"]


def test_lora_state_dict_reads_the_peft_and_the_diffusers_layouts(tmp_path):
    pipe = tiny_pipeline("c2i")
    state_dict, config = random_lora(pipe.transformer, seed=1)
    # the diffusers layout (save_lora_weights), the PEFT one of `transformer.save_lora_adapter`, and a PeftModel's
    save_lora(pipe, tmp_path / "diffusers", seed=1)
    adapted = copy.deepcopy(pipe.transformer)
    adapted.load_lora_adapter(state_dict, prefix=None, adapter_name="default", metadata=config)
    adapted.save_lora_adapter(tmp_path / "peft", adapter_name="default", weight_name=WEIGHT_NAME)
    peft_model_file = tmp_path / "peft_model" / "adapter_model.safetensors"
    peft_model_file.parent.mkdir()
    save_file({f"base_model.model.{key}": value for key, value in state_dict.items()}, peft_model_file)

    expected = {f"transformer.{key}": value for key, value in state_dict.items()}
    for source, kwargs in [
        (str(tmp_path / "diffusers"), {}),
        (str(tmp_path / "peft"), {}),
        (str(peft_model_file.parent), {"weight_name": "adapter_model.safetensors"}),
        (state_dict, {}),
    ]:
        loaded, metadata = PixelDiTPipeline.lora_state_dict(source, return_lora_metadata=True, **kwargs)
        assert loaded.keys() == expected.keys(), source
        assert all(torch.equal(loaded[key], expected[key]) for key in expected), source
        assert metadata is None or metadata["transformer.r"] == 2
    # each loads to the same adapted output
    outputs = []
    for folder, kwargs in [
        ("diffusers", {}),
        ("peft", {}),
        ("peft_model", {"weight_name": "adapter_model.safetensors"}),
    ]:
        pipe.load_lora_weights(str(tmp_path / folder), adapter_name=folder, **kwargs)
        pipe.set_adapters(folder)
        outputs.append(generate(pipe))
    assert all(torch.equal(output, outputs[0]) for output in outputs[1:])


def test_lora_weights_of_other_components_are_refused(tmp_path):
    pipe = tiny_pipeline("t2i")
    state_dict, _ = random_lora(pipe.transformer, seed=1)
    mixed = {f"transformer.{key}": value for key, value in state_dict.items()}
    mixed["text_encoder.layers.0.q_proj.lora_A.weight"] = torch.zeros(2, 8)
    with pytest.raises(ValueError, match=r"weights for \['text_encoder'\]; PixelDiT pipelines load LoRA into the "):
        pipe.load_lora_weights(mixed)
    assert lora_parameters(pipe.transformer) == []
    with pytest.raises(ValueError, match="Invalid LoRA checkpoint"):
        pipe.load_lora_weights({"transformer.proj_out.weight": torch.zeros(3, 4)})


def test_loads_a_lora_from_a_hub_repo_id_offline(tmp_path):
    # A pre-populated Hugging Face cache holding the base pipeline and the LoRA: models--org--name/{refs, snapshots}
    pipe = tiny_pipeline("c2i")
    commit = "0123456789abcdef0123456789abcdef01234567"
    for repo_id, save in [
        ("pixeldit-org/tiny-c2i", pipe.save_pretrained),
        ("pixeldit-org/tiny-c2i-lora", lambda folder: save_lora(pipe, folder, seed=1)),
    ]:
        repo = tmp_path / "hub" / f"models--{repo_id.replace('/', '--')}"
        save(repo / "snapshots" / commit)
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(commit)
    pipe.load_lora_weights(str(tmp_path / "hub" / "models--pixeldit-org--tiny-c2i-lora" / "snapshots" / commit))
    torch.save(generate(pipe), tmp_path / "expected.pt")
    script = (
        "import torch; from diffusers_pixeldit import PixelDiTPipeline\n"
        "pipe = PixelDiTPipeline.from_pretrained('pixeldit-org/tiny-c2i')\n"
        f"pipe.load_lora_weights('pixeldit-org/tiny-c2i-lora', weight_name={WEIGHT_NAME!r}, adapter_name='hub')\n"
        "assert pipe.get_list_adapters() == {'transformer': ['hub']}\n"
        "pipe.set_progress_bar_config(disable=True)\n"
        "images = pipe(class_labels=[1, 3], num_inference_steps=2, guidance_scale=2.0, output_type='latent',\n"
        "              generator=torch.Generator().manual_seed(0)).images\n"
        f"torch.testing.assert_close(images, torch.load({str(tmp_path / 'expected.pt')!r}), rtol=0, atol=1e-6)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
