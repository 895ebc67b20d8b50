"""`from_single_file`: official checkpoints (local, Hub link, repo id + weight name) give what the converter gives."""

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import pytest
import torch
from pixeldit_testing import FIXTURES, tiny_text_components

from diffusers_pixeldit import (
    PixelDiT2Pipeline,
    PixelDiT2Transformer2DModel,
    PixelDiTPipeline,
    PixelDiTT2IPipeline,
    PixelDiTTransformer2DModel,
)


SCRIPT = Path(__file__).parents[1] / "scripts" / "convert_checkpoint.py"
_spec = importlib.util.spec_from_file_location("convert_checkpoint", SCRIPT)
convert_checkpoint = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(convert_checkpoint)

C2I = FIXTURES / "c2i_tiny" / "official_checkpoint.ckpt"
POSTMOD = FIXTURES / "c2i_postmod_tiny" / "official_checkpoint.ckpt"
T2I = FIXTURES / "t2i_tiny" / "official_checkpoint.pth"
PIXELDIT2 = FIXTURES / "pixeldit2_tiny" / "official_checkpoint.ckpt"
PIXELDIT2_ENCODER = FIXTURES / "pixeldit2_tiny" / "grounding_encoder_timm.safetensors"
PIXELDIT2_WITH_ENCODER = FIXTURES / "pixeldit2_with_encoder" / "official_checkpoint.ckpt"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def converted_folder(tmp_path: Path, checkpoint: Path, *options) -> Path:
    """The converter's output folder for `checkpoint` (the reference of every comparison)."""
    output = tmp_path / "converted"
    assert convert_checkpoint.main(["--checkpoint", str(checkpoint), "--output", str(output), *map(str, options)]) == 0
    return output


# Entries that say where or by what a component was loaded, not what it is.
PROVENANCE = {"transformers_version", "architectures", "dtype", "torch_dtype"}


def public_config(component) -> dict:
    config = component.config
    config = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return {key: value for key, value in config.items() if not key.startswith("_") and key not in PROVENANCE}


def assert_same_model(ours, reference):
    assert type(ours) is type(reference)
    assert public_config(ours) == public_config(reference)
    expected = reference.state_dict()
    state_dict = ours.state_dict()
    assert state_dict.keys() == expected.keys()
    for key, tensor in expected.items():
        assert state_dict[key].dtype == tensor.dtype and torch.equal(state_dict[key], tensor), key
    assert not ours.training


def assert_same_pipeline(ours, reference, **call):
    assert type(ours) is type(reference)
    assert public_config(ours) == public_config(reference)
    for name, component in reference.components.items():
        if isinstance(component, torch.nn.Module):
            assert_same_model(ours.components[name], component)
        elif hasattr(component, "config"):
            assert type(ours.components[name]) is type(component)
            assert public_config(ours.components[name]) == public_config(component), name
    outputs = []
    for pipe in (ours, reference):
        pipe.set_progress_bar_config(disable=True)
        outputs.append(pipe(generator=torch.Generator().manual_seed(0), output_type="latent", **call).images)
    assert torch.equal(*outputs)


def text_encoder_folder(tmp_path: Path) -> Path:
    tokenizer, text_encoder = tiny_text_components(width=24)
    folder = tmp_path / "text-encoder"
    tokenizer.save_pretrained(folder)
    text_encoder.save_pretrained(folder)
    return folder


# ---------------------------------------------------------------- the converter's outputs, exactly


@pytest.mark.parametrize("checkpoint", [C2I, POSTMOD], ids=["c2i_tiny", "c2i_postmod_tiny"])
def test_class_conditional_pipeline_equals_the_converter(tmp_path, checkpoint):
    reference = PixelDiTPipeline.from_pretrained(converted_folder(tmp_path, checkpoint, "--num_inference_steps", 3))
    pipe = PixelDiTPipeline.from_single_file(checkpoint, num_inference_steps=3)
    assert_same_pipeline(pipe, reference, class_labels=[1, 3])
    model = PixelDiTTransformer2DModel.from_single_file(str(checkpoint))
    assert_same_model(model, reference.transformer)


def test_text_to_image_pipeline_equals_the_converter(tmp_path):
    encoder = text_encoder_folder(tmp_path)
    reference = PixelDiTT2IPipeline.from_pretrained(
        converted_folder(tmp_path, T2I, "--text_encoder", encoder, "--num_inference_steps", 2, "--resolution", 32)
    )
    pipe = PixelDiTT2IPipeline.from_single_file(T2I, text_encoder=str(encoder), num_inference_steps=2, resolution=32)
    assert_same_pipeline(pipe, reference, prompt="a red cat", negative_prompt="")
    # components instead of a folder; without them the pipeline takes prompt embeddings
    tokenizer, text_encoder = tiny_text_components(width=24)
    pipe = PixelDiTT2IPipeline.from_single_file(T2I, tokenizer=tokenizer, text_encoder=text_encoder)
    assert pipe.text_encoder is text_encoder and pipe.config.default_num_inference_steps == 50
    assert PixelDiTT2IPipeline.from_single_file(T2I).text_encoder is None


def test_pixeldit2_pipeline_equals_the_converter(tmp_path):
    options = {"grounding_encoder_heads": 2, "in_context_start": 1, "resolution": 64, "num_inference_steps": 3}
    reference = PixelDiT2Pipeline.from_pretrained(
        converted_folder(
            tmp_path, PIXELDIT2, "--grounding_encoder", PIXELDIT2_ENCODER, *[f"--{k}={v}" for k, v in options.items()]
        )  # fmt: skip
    )
    pipe = PixelDiT2Pipeline.from_single_file(PIXELDIT2, grounding_encoder=str(PIXELDIT2_ENCODER), **options)
    assert_same_pipeline(pipe, reference, class_labels=[0, 2])
    # an encoder module works the same
    pipe = PixelDiT2Pipeline.from_single_file(PIXELDIT2, grounding_encoder=reference.grounding_encoder, **options)
    assert_same_pipeline(pipe, reference, class_labels=[0, 2])
    model_options = {k: options[k] for k in ("in_context_start", "resolution")}
    assert_same_model(PixelDiT2Transformer2DModel.from_single_file(PIXELDIT2, **model_options), reference.transformer)


def test_pixeldit2_checkpoint_holding_its_encoder_equals_the_converter(tmp_path):
    options = {"grounding_encoder_heads": 1, "in_context_start": 0, "noise_scale": 2.0, "resolution": 32}
    reference = PixelDiT2Pipeline.from_pretrained(
        converted_folder(
            tmp_path,
            PIXELDIT2_WITH_ENCODER,
            "--silu_conditioning",
            "false",
            *[f"--{k}={v}" for k, v in options.items()],
        )  # fmt: skip
    )
    pipe = PixelDiT2Pipeline.from_single_file(PIXELDIT2_WITH_ENCODER, silu_conditioning=False, **options)
    assert_same_pipeline(pipe, reference, class_labels=[1], num_inference_steps=2)
    raw = PixelDiT2Transformer2DModel.from_single_file(PIXELDIT2_WITH_ENCODER, weights="raw", in_context_start=0)
    assert not torch.equal(raw.patch_embed.weight, pipe.transformer.patch_embed.weight)


def test_release_file_names_give_the_model_card_recipe(tmp_path):
    release = tmp_path / "imagenet256_pixeldit_xl_epoch80.ckpt"
    shutil.copy(C2I, release)
    pipe = PixelDiTPipeline.from_single_file(release)
    assert (pipe.config.default_guidance_scale, tuple(pipe.config.default_guidance_interval)) == (3.25, (0.1, 1.0))
    assert pipe.config.default_num_inference_steps == 100 and pipe.scheduler.config.solver == "adams_bashforth"
    assert pipe.transformer.config.sample_size == 256
    overridden = PixelDiTPipeline.from_single_file(release, guidance_scale=2.0, sampler="euler", resolution=32)
    assert overridden.config.default_guidance_scale == 2.0 and overridden.scheduler.config.solver == "euler"
    assert overridden.transformer.config.sample_size == 32


def test_dtype_is_that_of_from_pretrained(tmp_path):
    folder = converted_folder(tmp_path, C2I)
    for dtype_option in ({"dtype": torch.bfloat16}, {"torch_dtype": torch.bfloat16}):
        reference = PixelDiTPipeline.from_pretrained(folder, **dtype_option)
        pipe = PixelDiTPipeline.from_single_file(C2I, **dtype_option)
        assert pipe.transformer.dtype == torch.bfloat16
        assert_same_pipeline(pipe, reference, class_labels=[1], num_inference_steps=2)
    reference = PixelDiTTransformer2DModel.from_pretrained(folder, subfolder="transformer", dtype=torch.float16)
    assert_same_model(PixelDiTTransformer2DModel.from_single_file(C2I, dtype=torch.float16), reference)


def test_a_checkpoint_dict_converts_too():
    checkpoint = torch.load(C2I, map_location="cpu", weights_only=True)
    model = PixelDiTTransformer2DModel.from_single_file(checkpoint, resolution=32)
    assert_same_model(model, PixelDiTTransformer2DModel.from_single_file(C2I, resolution=32))


# ---------------------------------------------------------------- the Hub, offline


def hub_cache(tmp_path: Path, repo_id: str, files: dict[str, Path]) -> Path:
    """A pre-populated Hugging Face cache (huggingface_hub's layout) holding `files` at `main`."""
    cache = tmp_path / "hub"
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    for name, source in files.items():
        blob = repo / "blobs" / f"{abs(hash(name)):x}"
        blob.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, blob)
        link = repo / "snapshots" / COMMIT / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    return cache


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def test_hub_link_and_repo_id_load_from_the_cache(tmp_path, offline):
    cache = hub_cache(tmp_path, "someone/pixeldit", {"ckpt/imagenet512_pixeldit_xl.ckpt": C2I})
    reference = PixelDiTPipeline.from_single_file(C2I, resolution=512)
    link = "https://huggingface.co/someone/pixeldit/blob/main/ckpt/imagenet512_pixeldit_xl.ckpt"
    pipe = PixelDiTPipeline.from_single_file(link, cache_dir=cache)
    # the cached file's name chooses the recipe: the 512 px model card's
    assert (pipe.config.default_guidance_scale, pipe.scheduler.config.shift) == (3.5, 2.0)
    assert_same_model(pipe.transformer, reference.transformer)
    by_id = PixelDiTTransformer2DModel.from_single_file(
        "someone/pixeldit", weight_name="imagenet512_pixeldit_xl.ckpt", subfolder="ckpt", cache_dir=cache
    )
    assert_same_model(by_id, reference.transformer)
    with pytest.raises(OSError, match="Cannot get other.ckpt of the Hub repository someone/pixeldit"):
        PixelDiTTransformer2DModel.from_single_file("someone/pixeldit", weight_name="other.ckpt", cache_dir=cache)


def test_hf_hub_offline_is_respected_in_a_fresh_process(tmp_path):
    cache = hub_cache(tmp_path, "someone/pixeldit-t2i", {"pixeldit_t2i_v1.pth": T2I})
    script = (
        "from diffusers_pixeldit import PixelDiTT2IPipeline\n"
        "pipe = PixelDiTT2IPipeline.from_single_file("
        "'https://huggingface.co/someone/pixeldit-t2i/blob/main/pixeldit_t2i_v1.pth')\n"
        "assert pipe.scheduler.config.flow_shift == 4.0, pipe.scheduler.config\n"
        "print('sample size', pipe.transformer.config.sample_size)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "sample size 1024" in result.stdout, result.stderr[-3000:]


# ---------------------------------------------------------------- bad input: one clear error


class Payload:
    def __reduce__(self):
        return (print, ("code ran",))


def bad_checkpoint(case: str, folder: Path) -> tuple[str, str]:
    path = folder / f"{case}.ckpt"
    if case == "missing":
        return str(path), r"No checkpoint file .*missing\.ckpt: pass a local file, a Hub file link"
    if case == "not_a_checkpoint":
        path.write_text("hello")
        return str(path), r"not a PyTorch or safetensors checkpoint"
    if case == "wrong_keys":
        torch.save(torch.nn.Linear(2, 2).state_dict(), path)
        return str(path), r"not an official PixelDiT checkpoint: .*\['bias', 'weight'\]"
    if case == "pickle_with_code":
        checkpoint = torch.load(C2I, map_location="cpu", weights_only=True)
        checkpoint["hyper_parameters"] = Payload()
        torch.save(checkpoint, path)
        return str(path), r"needs arbitrary unpickling \(it references print\), which can run code: refused"
    if case == "other_kind":
        return str(PIXELDIT2), r"is an official pixeldit2 checkpoint: load it with PixelDiT2Pipeline\.from_single_file"
    if case == "unknown_option":
        return str(C2I), r"got options it does not take: \['original_config'\]"
    raise ValueError(case)


@pytest.mark.parametrize(
    "case", ["missing", "not_a_checkpoint", "wrong_keys", "pickle_with_code", "other_kind", "unknown_option"]
)
def test_bad_input_is_one_clear_error(tmp_path, capsys, case):
    source, match = bad_checkpoint(case, tmp_path)
    extra = {"original_config": "x.yaml"} if case == "unknown_option" else {}
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        PixelDiTPipeline.from_single_file(source, **extra)
    assert "code ran" not in capsys.readouterr().out


def test_options_that_contradict_the_checkpoint_are_refused():
    with pytest.raises(ValueError, match=r"Preset PixelDiT-XL does not match the checkpoint"):
        PixelDiTTransformer2DModel.from_single_file(C2I, preset="PixelDiT-XL")
    with pytest.raises(ValueError, match=r"noise_scale are for PixelDiT2 checkpoints; this one is c2i"):
        PixelDiTTransformer2DModel.from_single_file(C2I, noise_scale=2.0)
    with pytest.raises(ValueError, match=r"holds no grounding encoder: pass --grounding_encoder"):
        PixelDiT2Pipeline.from_single_file(PIXELDIT2, in_context_start=1)
    with pytest.raises(ValueError, match=r"text_encoder / tokenizer are for text-to-image checkpoints"):
        PixelDiTPipeline.from_single_file(C2I, text_encoder="x")


def test_a_text_encoder_of_the_wrong_width_is_refused(tmp_path):
    tokenizer, text_encoder = tiny_text_components(width=8)
    text_encoder.save_pretrained(tmp_path / "narrow")
    tokenizer.save_pretrained(tmp_path / "narrow")
    with pytest.raises(ValueError, match=r"has hidden size 8; this transformer takes text embeddings of width 24"):
        PixelDiTT2IPipeline.from_single_file(T2I, text_encoder=str(tmp_path / "narrow"))
