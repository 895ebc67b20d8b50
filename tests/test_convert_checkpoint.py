import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi, ModelCard
from pixeldit_testing import (
    FIXTURES,
    load_official_fixture,
    load_pixeldit2_extra,
    load_pixeldit2_fixture,
    tiny_model,
    tiny_text_components,
    tolerance_check,
)
from safetensors.torch import load_file, save_file

from diffusers_pixeldit import (
    PIXELDIT_PRESETS,
    PixelDiT2Pipeline,
    PixelDiTFlowScheduler,
    PixelDiTPipeline,
    PixelDiTT2IPipeline,
    diffusers_to_official_state_dict,
)
from diffusers_pixeldit.conversion import load_official_checkpoint, official_sampling_recipe


SCRIPT = Path(__file__).parents[1] / "scripts" / "convert_checkpoint.py"
C2I_CHECKPOINT = FIXTURES / "c2i_tiny" / "official_checkpoint.ckpt"
T2I_CHECKPOINT = FIXTURES / "t2i_tiny" / "official_checkpoint.pth"
SAMPLING_TOLERANCE = 1e-4

_spec = importlib.util.spec_from_file_location("convert_checkpoint", SCRIPT)
convert_checkpoint = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(convert_checkpoint)


def convert(*args) -> int:
    """The script's main() in-process (fast); the end-to-end tests run it as a subprocess."""
    return convert_checkpoint.main([str(arg) for arg in args])


def fixture_recipe(name: str) -> list[str]:
    """Recipe options that make a converted fixture's defaults its official sampling run (meta.json)."""
    meta = json.loads((FIXTURES / name / "meta.json").read_text())
    sampler = meta["sampler"]
    if meta["kind"] == "c2i":
        low, high = sampler["guidance_interval"]
        shift = sampler["timeshift"]
    else:  # the T2I release's interval is in sigma units
        low, high = (1 - bound for bound in reversed(sampler["interval_guidance"]))
        shift = sampler["flow_shift"]
    return [
        "--resolution", meta["height"], "--num_inference_steps", sampler["num_steps"],
        "--guidance_scale", sampler["guidance_scale"], "--guidance_interval", low, high, "--shift", shift,
    ]  # fmt: skip


def run_script(*args) -> subprocess.CompletedProcess:
    command = [sys.executable, str(SCRIPT), *map(str, args)]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"}
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    return result


def official_state_dict(path: Path, prefix: str) -> dict[str, torch.Tensor]:
    state_dict = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    return {key[len(prefix) :]: tensor for key, tensor in state_dict.items() if key.startswith(prefix)}


def assert_error(capsys, match: str):
    """A failed run: one `error:` line matching `match`, no traceback."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert re.search(match, lines[0]), lines[0]


def assert_nothing_written(folder: Path, *inputs: Path):
    assert sorted(folder.iterdir()) == sorted(inputs)


# ---------------------------------------------------------------- official parity, end to end


def test_c2i_fixture_converts_and_reproduces_the_official_outputs(tmp_path):
    output = tmp_path / "pixeldit-c2i"
    result = run_script("--checkpoint", C2I_CHECKPOINT, "--output", output, *fixture_recipe("c2i_tiny"))
    assert "Ignoring `denoiser.*`" in result.stderr and "diffusion_trainer.proj.0.0.weight" in result.stderr
    _, cases, meta = load_official_fixture("c2i_tiny")
    pipe = PixelDiTPipeline.from_pretrained(output)
    pipe.set_progress_bar_config(disable=True)

    with torch.no_grad():
        forward = pipe.transformer(
            hidden_states=cases["forward.x"],
            timestep=(1 - cases["forward.t_official"]) * 1000,
            class_labels=cases["forward.class_labels"],
        ).sample
    # ours returns noise - x0, the official C2I model x0 - noise; the EMA weights match, the raw ones would not
    error = (forward + cases["forward.out_official"]).abs().max().item()
    print(f"c2i forward: max |ours - official| = {error:.3g}")
    assert error <= meta["tolerance"]["forward"]

    # The pipeline's defaults are the recipe: no sampling arguments.
    for case, solver in [("flow_dpm_solver", "adams_bashforth"), ("euler", "euler")]:
        pipe.scheduler = PixelDiTFlowScheduler.from_config(pipe.scheduler.config, solver=solver)
        images = pipe(
            class_labels=cases["sample.class_labels"].tolist(), latents=cases["sample.noise"], output_type="latent"
        ).images
        passed, message = tolerance_check(
            images, cases[f"sample.{case}.out_official"], cases[f"sample.{case}.out_official_fp64"], SAMPLING_TOLERANCE
        )
        print(f"c2i sample.{case}: {message}")
        assert passed, message


def test_t2i_fixture_converts_with_a_text_encoder_and_reproduces_the_official_outputs(tmp_path):
    tokenizer, text_encoder = tiny_text_components(width=24)  # the fixture's txt_embed_dim
    tokenizer.save_pretrained(tmp_path / "gemma")
    text_encoder.save_pretrained(tmp_path / "gemma")
    output = tmp_path / "pixeldit-t2i"
    args = ["--checkpoint", T2I_CHECKPOINT, "--text_encoder", tmp_path / "gemma", "--output", output]
    result = run_script(*args, *fixture_recipe("t2i_tiny"))
    assert "_repa_projector.0.weight" in result.stderr
    _, cases, meta = load_official_fixture("t2i_tiny")
    pipe = PixelDiTT2IPipeline.from_pretrained(output)
    pipe.set_progress_bar_config(disable=True)
    assert type(pipe.text_encoder).__name__ == "Gemma2Model" and pipe.tokenizer.padding_side == "right"
    for key, tensor in text_encoder.state_dict().items():
        assert torch.equal(pipe.text_encoder.state_dict()[key], tensor), key
    assert json.loads((output / "scheduler" / "scheduler_config.json").read_text())["_class_name"] == (
        "DPMSolverMultistepScheduler"
    )

    with torch.no_grad():
        forward = pipe.transformer(
            hidden_states=cases["forward.x"],
            timestep=cases["forward.t_input_official"],
            encoder_hidden_states=cases["forward.encoder_hidden_states"],
        ).sample
    error = (forward - cases["forward.out_official"]).abs().max().item()
    print(f"t2i forward: max |ours - official| = {error:.3g}")
    assert error <= meta["tolerance"]["forward"]

    mask = torch.ones(cases["sample.prompt_embeds"].shape[:2], dtype=torch.long)
    images = pipe(
        prompt_embeds=cases["sample.prompt_embeds"], prompt_attention_mask=mask,
        negative_prompt_embeds=cases["sample.negative_prompt_embeds"], negative_prompt_attention_mask=mask,
        negative_prompt=None, latents=cases["sample.noise"], output_type="latent",
    ).images  # fmt: skip
    passed, message = tolerance_check(
        images,
        cases["sample.dpm_solver_order2.out_official"],
        cases["sample.dpm_solver_order2.out_official_fp64"],
        SAMPLING_TOLERANCE,
    )
    print(f"t2i sample.dpm_solver_order2: {message}")
    assert passed, message
    # and the saved text encoder encodes prompts
    assert pipe("a red cat", max_sequence_length=12, num_inference_steps=2, output_type="latent").images.shape == (
        1, 3, 32, 32,
    )  # fmt: skip


# ---------------------------------------------------------------- back to the official layout


@pytest.mark.parametrize("name", ["c2i_tiny", "t2i_tiny"])
def test_round_trip_to_official_is_bit_exact(tmp_path, name):
    meta = json.loads((FIXTURES / name / "meta.json").read_text())
    source = FIXTURES / name / meta["checkpoint"]
    assert convert("--checkpoint", source, "--output", tmp_path / "pipe") == 0
    output = tmp_path / f"back{source.suffix}"
    assert convert("--to-official", "--checkpoint", tmp_path / "pipe", "--output", output) == 0

    checkpoint = torch.load(output, map_location="cpu", weights_only=True)
    assert list(checkpoint) == ["state_dict"]
    prefixes = ["ema_denoiser.", "denoiser."] if meta["kind"] == "c2i" else ["core."]
    original = official_state_dict(source, prefixes[0])  # the EMA weights (C2I), the single set (T2I)
    assert len(checkpoint["state_dict"]) == len(prefixes) * len(original)
    for prefix in prefixes:  # C2I: both sets carry the converted (EMA) weights
        for key, tensor in original.items():
            converted = checkpoint["state_dict"][prefix + key]
            assert converted.dtype == tensor.dtype == torch.float32 and torch.equal(converted, tensor), prefix + key


def test_sharded_bf16_variant_and_back(tmp_path):
    output = tmp_path / "pipe"
    assert convert(
        "--checkpoint", C2I_CHECKPOINT, "--output", output, "--dtype", "bf16", "--variant", "bf16",
        "--max_shard_size", "200KB",
    ) == 0  # fmt: skip
    files = sorted(path.name for path in (output / "transformer").iterdir())
    shards = [name for name in files if re.fullmatch(r"diffusion_pytorch_model\.bf16-\d+-of-\d+\.safetensors", name)]
    assert len(shards) > 2 and "diffusion_pytorch_model.safetensors.index.bf16.json" in files
    assert {tensor.dtype for tensor in load_file(output / "transformer" / shards[0]).values()} == {torch.bfloat16}
    pipe = PixelDiTPipeline.from_pretrained(output, variant="bf16", dtype=torch.bfloat16)
    assert pipe.transformer.dtype == torch.bfloat16
    assert (
        'from_pretrained("' + str(output) + '", variant="bf16", dtype=torch.bfloat16)'
        in (output / "README.md").read_text()
    )

    back = tmp_path / "back.ckpt"
    assert (
        convert("--to-official", "--checkpoint", output, "--output", back, "--variant", "bf16", "--dtype", "bf16") == 0
    )
    state_dict = torch.load(back, weights_only=True)["state_dict"]
    for key, tensor in official_state_dict(C2I_CHECKPOINT, "ema_denoiser.").items():
        assert torch.equal(state_dict[f"ema_denoiser.{key}"], tensor.to(torch.bfloat16)), key


# ---------------------------------------------------------------- reading checkpoints


def test_weight_sets_prefixes_and_training_only_tensors(tmp_path):
    ema, kind = load_official_checkpoint(C2I_CHECKPOINT)
    raw, _ = load_official_checkpoint(C2I_CHECKPOINT, weights="raw")
    assert kind == "c2i" and ema.keys() == raw.keys() == official_state_dict(C2I_CHECKPOINT, "ema_denoiser.").keys()
    for key, tensor in official_state_dict(C2I_CHECKPOINT, "denoiser.").items():
        assert torch.equal(raw[key], tensor)
    assert not all(torch.equal(ema[key], raw[key]) for key in ema)  # the fixture's two sets differ

    # `module.` / `_orig_mod.` anywhere, a stray pos_embed, the REPA projector: pickled and as safetensors
    wrapped = {f"module.ema_denoiser._orig_mod.{key}": tensor for key, tensor in ema.items()}
    wrapped |= {f"module.denoiser.{key}": tensor for key, tensor in raw.items()}
    wrapped |= {"ema_denoiser.pos_embed": torch.zeros(1, 4, 64), "diffusion_trainer.proj.0.0.weight": torch.ones(2, 2)}
    torch.save({"state_dict": wrapped, "epoch": 3}, tmp_path / "wrapped.ckpt")
    save_file(wrapped, tmp_path / "wrapped.safetensors")
    save_file({f"_orig_mod.{key}": tensor for key, tensor in ema.items()}, tmp_path / "bare.safetensors")
    for name in ["wrapped.ckpt", "wrapped.safetensors", "bare.safetensors"]:
        state_dict, kind = load_official_checkpoint(tmp_path / name)
        assert kind == "c2i" and state_dict.keys() == ema.keys(), name
        assert all(torch.equal(state_dict[key], ema[key]) for key in ema), name

    t2i, kind = load_official_checkpoint(T2I_CHECKPOINT, weights="raw")  # a single set: `weights` does not apply
    assert kind == "t2i" and t2i.keys() == official_state_dict(T2I_CHECKPOINT, "core.").keys()
    save_file({f"core.{key}": tensor for key, tensor in t2i.items()}, tmp_path / "core.safetensors")
    assert load_official_checkpoint(tmp_path / "core.safetensors")[0].keys() == t2i.keys()

    torch.save({"state_dict": {f"denoiser.{k}": v for k, v in raw.items()}}, tmp_path / "raw_only.ckpt")
    with pytest.raises(ValueError, match=r"no ema weights \(`ema_denoiser.\*`\); use weights='raw'"):
        load_official_checkpoint(tmp_path / "raw_only.ckpt")


def test_a_safetensors_checkpoint_converts_like_the_pickle(tmp_path):
    ema, _ = load_official_checkpoint(C2I_CHECKPOINT)
    save_file({f"ema_denoiser.{key}": tensor for key, tensor in ema.items()}, tmp_path / "model.safetensors")
    assert convert("--checkpoint", tmp_path / "model.safetensors", "--output", tmp_path / "a") == 0
    assert convert("--checkpoint", C2I_CHECKPOINT, "--output", tmp_path / "b") == 0
    weights = [load_file(tmp_path / name / "transformer" / "diffusion_pytorch_model.safetensors") for name in "ab"]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])


class TrainingConfig:
    """A custom object in a checkpoint's hyper-parameters; unpickling it runs code (it touches `marker`)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __setstate__(self, state):
        self.__dict__.update(state)
        Path(self.marker).touch()


def test_a_pickle_that_runs_code_is_refused_unless_trusted(tmp_path, capsys, caplog):
    checkpoint = torch.load(C2I_CHECKPOINT, map_location="cpu", weights_only=True)
    checkpoint["hyper_parameters"] = {"config": TrainingConfig(tmp_path / "code-ran")}
    torch.save(checkpoint, tmp_path / "custom.ckpt")

    assert convert("--checkpoint", tmp_path / "custom.ckpt", "--output", tmp_path / "out") == 1
    assert_error(
        capsys, r"needs arbitrary unpickling \(it references test_convert_checkpoint\.TrainingConfig\).*--trust-pickle"
    )
    assert_nothing_written(tmp_path, tmp_path / "custom.ckpt")

    assert convert("--checkpoint", tmp_path / "custom.ckpt", "--output", tmp_path / "out", "--trust-pickle") == 0
    assert (tmp_path / "code-ran").exists() and "arbitrary unpickling" in caplog.text
    PixelDiTPipeline.from_pretrained(tmp_path / "out")


# ---------------------------------------------------------------- bad input


def bad_input(case: str, folder: Path) -> tuple[Path, list[str], str]:
    """(checkpoint, extra arguments, expected error) of a bad-input case."""
    path = folder / f"{case}.ckpt"
    if case == "missing":
        return path, [], r"No checkpoint file .*missing.ckpt"
    if case == "truncated":
        path.write_bytes(C2I_CHECKPOINT.read_bytes()[: C2I_CHECKPOINT.stat().st_size // 2])
        return (
            path,
            [],
            r"truncated or corrupted one \(RuntimeError: PytorchStreamReader failed reading zip archive: failed finding central directory\)\.$",
        )
    if case == "corrupted":
        path.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0)).byte().numpy())
        return (
            path,
            [],
            r"Cannot read .*corrupted\.ckpt: not a PyTorch or safetensors checkpoint.* \(UnpicklingError: .+\)\.$",
        )
    if case == "another_model":
        torch.save(torch.nn.TransformerEncoderLayer(8, 2).state_dict(), path)
        return path, [], r"not an official PixelDiT checkpoint: .*\['linear1.bias'"
    if case == "wrong_preset":
        return (
            C2I_CHECKPOINT,
            ["--preset", "PixelDiT-XL"],
            (
                r"Preset PixelDiT-XL does not match the checkpoint: patch_size 16 \(checkpoint: 4\), num_layers 26 "
                r"\(checkpoint: 2\), "
                r"num_attention_heads 16 \(checkpoint: 4\), .*num_classes 1000 \(checkpoint: 10\)"
            ),
        )
    if case == "wrong_heads":
        return C2I_CHECKPOINT, ["--num_attention_heads", "8"], r"num_attention_heads=8 disagrees .* means 4 heads"
    if case == "text_encoder_for_c2i":
        return C2I_CHECKPOINT, ["--text_encoder", "x"], r"--text_encoder is for text-to-image checkpoints"
    checkpoint = torch.load(C2I_CHECKPOINT, map_location="cpu", weights_only=True)
    state_dict = checkpoint["state_dict"]
    if case == "extra_tensor":
        state_dict["ema_denoiser.head.weight"] = torch.ones(2)
        match = r"Not part of an official PixelDiT model \(1 entries\): \['head.weight'\]"
    else:  # missing and mis-shaped tensors
        del state_dict["ema_denoiser.pixel_blocks.1.norm2.weight"]
        state_dict["ema_denoiser.pixel_blocks.1.mlp.fc1.weight"] = torch.ones(16, 8)
        match = (
            r"1 missing: \['pixel_blocks.1.norm2.weight'\]; "
            r"1 mis-shaped: \['pixel_blocks.1.ff.net.0.proj.weight \(16, 8\) \(expected \(32, 8\)\)'\]"
        )
    torch.save(checkpoint, path)
    return path, [], match


@pytest.mark.parametrize(
    "case",
    [
        "missing", "truncated", "corrupted", "another_model", "wrong_preset", "wrong_heads", "text_encoder_for_c2i",
        "extra_tensor", "missing_and_misshaped",
    ],
)  # fmt: skip
def test_bad_input_is_a_one_line_error_and_writes_nothing(tmp_path, capsys, case):
    checkpoint, args, match = bad_input(case, tmp_path)
    assert convert("--checkpoint", checkpoint, "--output", tmp_path / "out" / "pipe", *args) == 1
    assert_error(capsys, match)
    assert_nothing_written(tmp_path, *[path for path in [checkpoint] if path.parent == tmp_path and path.exists()])


def test_existing_output_is_kept_unless_overwrite(tmp_path, capsys):
    output = tmp_path / "pipe"
    output.mkdir()
    (output / "notes.txt").write_text("mine")
    assert convert("--checkpoint", C2I_CHECKPOINT, "--output", output) == 1
    assert_error(capsys, r"exists and is not empty; pass --overwrite")
    assert sorted(tmp_path.iterdir()) == [output] and (output / "notes.txt").read_text() == "mine"

    assert convert("--checkpoint", C2I_CHECKPOINT, "--output", output, "--overwrite") == 0
    assert not (output / "notes.txt").exists() and (output / "model_index.json").exists()
    assert sorted(tmp_path.iterdir()) == [output]  # no temporary folder left
    assert convert("--to-official", "--checkpoint", output, "--output", tmp_path / "back.ckpt") == 0
    assert convert("--to-official", "--checkpoint", output, "--output", tmp_path / "back.ckpt") == 1
    assert_error(capsys, r"back.ckpt exists")
    with pytest.raises(SystemExit):
        convert("--to-official", "--checkpoint", output, "--output", tmp_path / "x.ckpt", "--guidance_scale", "2")


def test_t2i_text_encoder_is_optional_and_must_have_the_right_width(tmp_path, capsys, caplog):
    assert convert("--checkpoint", T2I_CHECKPOINT, "--output", tmp_path / "pipe") == 0
    assert "No --text_encoder" in caplog.text
    pipe = PixelDiTT2IPipeline.from_pretrained(tmp_path / "pipe")
    assert pipe.tokenizer is None and pipe.text_encoder is None
    assert "No text encoder is included" in (tmp_path / "pipe" / "README.md").read_text()

    tokenizer, text_encoder = tiny_text_components(width=8)
    tokenizer.save_pretrained(tmp_path / "narrow")
    text_encoder.save_pretrained(tmp_path / "narrow")
    output = tmp_path / "with-narrow"
    assert convert("--checkpoint", T2I_CHECKPOINT, "--text_encoder", tmp_path / "narrow", "--output", output) == 1
    assert_error(capsys, r"has hidden size 8; this transformer takes text embeddings of width 24")
    assert not output.exists()


def test_a_matching_preset_is_accepted(tmp_path, monkeypatch):
    ema, _ = load_official_checkpoint(C2I_CHECKPOINT)
    tiny = {"num_layers": 2, "num_attention_heads": 4, "attention_head_dim": 16, "num_pixel_layers": 2}
    tiny |= {"pixel_embed_dim": 8, "patch_size": 4, "num_classes": 10, "sample_size": 32}
    monkeypatch.setitem(PIXELDIT_PRESETS, "PixelDiT-tiny", tiny)
    assert convert("--checkpoint", C2I_CHECKPOINT, "--output", tmp_path / "pipe", "--preset", "PixelDiT-tiny") == 0
    assert PixelDiTPipeline.from_pretrained(tmp_path / "pipe").transformer.config.num_layers == 2


# ---------------------------------------------------------------- recipes and model card


def test_release_file_names_choose_the_model_card_recipe():
    recipe = official_sampling_recipe("imagenet256_pixeldit_xl_epoch320.ckpt", "c2i")
    assert recipe | {"description": None} == {
        "sample_size": 256, "num_inference_steps": 100, "guidance_scale": 2.75, "guidance_interval": (0.1, 0.9),
        "shift": 1.0, "sampler": "adams_bashforth", "time_grid": "pixeldit", "transformer": {}, "description": None,
    }  # fmt: skip
    for epoch in (80, 160):
        recipe = official_sampling_recipe(f"imagenet256_pixeldit_xl_epoch{epoch}.ckpt", "c2i")
        assert (recipe["guidance_scale"], recipe["guidance_interval"], recipe["shift"]) == (3.25, (0.1, 1.0), 1.0)
    recipe = official_sampling_recipe("imagenet512_pixeldit_xl.ckpt", "c2i")
    assert (recipe["sample_size"], recipe["guidance_scale"], recipe["guidance_interval"], recipe["shift"]) == (
        512, 3.5, (0.1, 1.0), 2.0,
    )  # fmt: skip
    recipe = official_sampling_recipe("pixeldit_t2i_v1.pth", "t2i")
    assert recipe | {"description": None} == {
        "sample_size": 1024, "num_inference_steps": 50, "guidance_scale": 3.5, "guidance_interval": (0.0, 1.0),
        "shift": 4.0, "sampler": "dpmsolver++", "time_grid": "pixeldit", "transformer": {}, "description": None,
    }  # fmt: skip
    assert official_sampling_recipe("pixeldit_t2i_v1.pth", "t2i", resolution=512)["shift"] == 3.0


def test_pixeldit2_release_file_names_choose_the_model_card_recipe():
    recipe = official_sampling_recipe("pixeldit2_h16_in256_ep600.ckpt", "pixeldit2")
    assert recipe | {"description": None} == {
        "sample_size": 256, "num_inference_steps": 50, "guidance_scale": 2.4, "guidance_interval": (0.125, 0.9),
        "shift": 1.0, "sampler": "heun", "time_grid": "uniform",
        "transformer": {"silu_conditioning": True, "noise_scale": 1.0}, "description": None,
    }  # fmt: skip
    recipe = official_sampling_recipe("pixeldit2_h16_in512_ep680.ckpt", "pixeldit2")
    assert (recipe["sample_size"], recipe["guidance_scale"], recipe["guidance_interval"], recipe["transformer"]) == (
        512, 2.1, (0.1, 0.925), {"silu_conditioning": False, "noise_scale": 2.0},
    )  # fmt: skip


def test_converted_release_samples_its_recipe_with_class_labels_only(tmp_path):
    # A tiny 1000-class model saved as the 320-epoch release file (at 32 px so that 100 steps are quick).
    model = tiny_model("c2i", num_classes=1000)
    official = diffusers_to_official_state_dict(model.state_dict())
    checkpoint = tmp_path / "imagenet256_pixeldit_xl_epoch320.ckpt"
    torch.save({"state_dict": {f"ema_denoiser.{key}": tensor for key, tensor in official.items()}}, checkpoint)
    assert convert("--checkpoint", checkpoint, "--output", tmp_path / "pipe", "--resolution", "32") == 0
    model_index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert model_index["default_num_inference_steps"] == 100 and model_index["default_guidance_scale"] == 2.75
    assert model_index["default_guidance_interval"] == [0.1, 0.9]
    scheduler = json.loads((tmp_path / "pipe" / "scheduler" / "scheduler_config.json").read_text())
    assert (scheduler["_class_name"], scheduler["shift"], scheduler["solver"]) == (
        "PixelDiTFlowScheduler", 1.0, "adams_bashforth",
    )  # fmt: skip

    pipe = PixelDiTPipeline.from_pretrained(tmp_path / "pipe")
    pipe.set_progress_bar_config(disable=True)
    batch_sizes = []
    forward = pipe.transformer.forward
    pipe.transformer.forward = lambda *a, **k: batch_sizes.append(k["hidden_states"].shape[0]) or forward(*a, **k)
    image = pipe(class_labels=[207]).images[0]
    assert image.size == (32, 32) and pipe.labels["golden retriever"] == 207
    assert batch_sizes == [1] * 11 + [2] * 79 + [1] * 10  # the official CFG decisions of 100 steps in (0.1, 0.9)

    card = ModelCard.load(tmp_path / "pipe" / "README.md")
    assert (card.data.license, card.data.license_name, card.data.library_name) == ("other", "nsclv1", "diffusers")
    for text in ["imagenet256_pixeldit_xl_epoch320.ckpt", "(EMA weights)", "NSCLv1", "non-commercial", "Apache-2.0",
                 "ImageNet 256x256 320-epoch model card", "| CFG scale | 2.75 |", "| Steps | 100 |",
                 "0.1 < t < 0.9", "| Timeshift | 1.0 |", "adams_bashforth", "class_labels=[207]",
                 f'PixelDiTPipeline.from_pretrained("{tmp_path / "pipe"}")']:  # fmt: skip
        assert text in card.text, text


def test_recipe_overrides(tmp_path):
    args = ["--checkpoint", T2I_CHECKPOINT, "--output", tmp_path / "pipe", "--resolution", "512"]
    args += [
        "--sampler",
        "euler",
        "--num_inference_steps",
        "12",
        "--guidance_scale",
        "5",
        "--guidance_interval",
        "0.2",
        "0.8",
    ]
    assert convert(*args) == 0
    pipe = PixelDiTT2IPipeline.from_pretrained(tmp_path / "pipe")
    assert pipe.transformer.config.sample_size == 512
    assert isinstance(pipe.scheduler, PixelDiTFlowScheduler)
    assert (pipe.scheduler.config.solver, pipe.scheduler.config.shift) == ("euler", 3.0)  # flow shift at 512 px
    assert (pipe.config.default_num_inference_steps, pipe.config.default_guidance_scale) == (12, 5.0)
    assert list(pipe.config.default_guidance_interval) == [0.2, 0.8]
    assert (
        "; overridden: resolution, num_inference_steps, guidance_scale, guidance_interval, sampler"
        in (tmp_path / "pipe" / "README.md").read_text()
    )


def test_push_to_hub_uploads_the_converted_folder(tmp_path, monkeypatch):
    calls = []

    def create_repo(self, repo_id, **kwargs):
        calls.append(("create_repo", repo_id, kwargs))

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        files = sorted(str(path.relative_to(folder_path)) for path in Path(folder_path).rglob("*") if path.is_file())
        calls.append(("upload_folder", repo_id, Path(folder_path), files))

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    output = tmp_path / "pipe"
    args = ["--checkpoint", C2I_CHECKPOINT, "--output", output, "--push_to_hub", "--repo_id", "someone/pixeldit-tiny"]
    assert convert(*args, "--private") == 0
    assert calls == [
        ("create_repo", "someone/pixeldit-tiny", {"private": True, "exist_ok": True}),
        ("upload_folder", "someone/pixeldit-tiny", output, [
            "README.md", "model_index.json", "scheduler/scheduler_config.json", "transformer/config.json",
            "transformer/diffusion_pytorch_model.safetensors",
        ]),
    ]  # fmt: skip
    assert 'PixelDiTPipeline.from_pretrained("someone/pixeldit-tiny")' in (output / "README.md").read_text()
    PixelDiTPipeline.from_pretrained(output)
    with pytest.raises(SystemExit):
        convert("--checkpoint", C2I_CHECKPOINT, "--output", tmp_path / "other", "--push_to_hub")


# ---------------------------------------------------------------- PixelDiT2

PIXELDIT2_CHECKPOINT = FIXTURES / "pixeldit2_tiny" / "official_checkpoint.ckpt"
PIXELDIT2_ENCODER = FIXTURES / "pixeldit2_tiny" / "grounding_encoder_timm.safetensors"
# what the tiny fixture's tensors do not say: its encoder's head count, where its in-context tokens join
PIXELDIT2_TINY_OPTIONS = ["--grounding_encoder_heads", 2, "--in_context_start", 1, "--resolution", 64]


def test_pixeldit2_fixture_converts_with_a_timm_encoder_and_reproduces_the_official_outputs(tmp_path):
    output = tmp_path / "pixeldit2"
    assert convert("--checkpoint", PIXELDIT2_CHECKPOINT, "--output", output, "--grounding_encoder", PIXELDIT2_ENCODER,
                   *PIXELDIT2_TINY_OPTIONS, "--num_inference_steps", 24) == 0  # fmt: skip
    _, _, cases, meta = load_pixeldit2_fixture()
    pipe = PixelDiT2Pipeline.from_pretrained(output)
    pipe.set_progress_bar_config(disable=True)
    assert json.loads((output / "model_index.json").read_text())["grounding_encoder"][1] == "DINOv3ViTModel"
    tokens = pipe.encode_grounding(cases["forward.x"])
    passed, message = tolerance_check(tokens, cases["forward.grounding_tokens.out_official"],
                                      cases["forward.grounding_tokens.out_official_fp64"], 1e-5)  # fmt: skip
    assert passed, message
    # the model card's recipe (Heun, CFG 2.4 in (0.125, 0.9)) with the fixture's 24 steps: no sampling arguments
    images = pipe(class_labels=cases["sample.class_labels"].tolist(), latents=cases["sample.noise"],
                  output_type="latent").images  # fmt: skip
    passed, message = tolerance_check(
        images, cases["sample.heun.out_official"], cases["sample.heun.out_official_fp64"], SAMPLING_TOLERANCE
    )
    assert passed, message
    card = ModelCard.load(output / "README.md")
    assert "PixelDiT2" in card.text and "DINOv3 licence" in card.text and "Noise scale | 1.0" in card.text


def test_pixeldit2_checkpoint_holding_its_encoder_converts_and_back_bit_exactly(tmp_path):
    checkpoint = FIXTURES / "pixeldit2_with_encoder" / "official_checkpoint.ckpt"
    output = tmp_path / "pixeldit2"
    assert convert("--checkpoint", checkpoint, "--output", output, "--grounding_encoder_heads", 1,
                   "--in_context_start", 0, "--silu_conditioning", "false", "--noise_scale", 2,
                   "--resolution", 32) == 0  # fmt: skip
    pipe = PixelDiT2Pipeline.from_pretrained(output)
    assert pipe.transformer.config.noise_scale == 2.0 and not pipe.transformer.config.silu_conditioning
    # its EMA weights are the `p2_patch8_resize` configuration of the extra fixtures
    _, _, tensors, meta = load_pixeldit2_extra("p2_patch8_resize")
    x, t, labels = tensors["x"], tensors["t_official"], tensors["class_labels"]
    sigma = 1 - t.double()
    with torch.no_grad():
        velocity = pipe.transformer(x, (sigma * 1000).float(), labels,
                                    grounding_hidden_states=pipe.encode_grounding(x)).sample  # fmt: skip
    x0 = x - sigma.clamp(min=0.05).float().view(-1, 1, 1, 1) * velocity
    assert (x0 - tensors["forward.out_official"]).abs().max() <= meta["tolerance"]["forward"]

    back = tmp_path / "back.ckpt"
    assert convert("--to-official", "--checkpoint", output, "--output", back, "--include_grounding_encoder") == 0
    original = official_state_dict(checkpoint, "ema_denoiser.")
    converted = official_state_dict(back, "ema_denoiser.")
    assert converted.keys() == original.keys() and any(k.startswith("dino_conditioner.encoder.") for k in original)
    assert all(torch.equal(converted[k], original[k]) for k in original)


def test_pixeldit2_round_trip_without_the_encoder_is_the_release_layout(tmp_path):
    output, back = tmp_path / "pixeldit2", tmp_path / "back.ckpt"
    convert("--checkpoint", PIXELDIT2_CHECKPOINT, "--output", output, "--grounding_encoder", PIXELDIT2_ENCODER,
            *PIXELDIT2_TINY_OPTIONS)  # fmt: skip
    assert convert("--to-official", "--checkpoint", output, "--output", back) == 0
    original, converted = (
        official_state_dict(PIXELDIT2_CHECKPOINT, "ema_denoiser."),
        official_state_dict(back, "denoiser."),
    )
    assert converted.keys() == original.keys() and all(torch.equal(converted[k], original[k]) for k in original)


def test_pixeldit2_takes_a_transformers_encoder_folder(tmp_path):
    encoder_folder = tmp_path / "dinov3"
    load_pixeldit2_fixture()[1].save_pretrained(encoder_folder)
    output = tmp_path / "pixeldit2"
    assert convert("--checkpoint", PIXELDIT2_CHECKPOINT, "--output", output, "--grounding_encoder", encoder_folder,
                   "--in_context_start", 1) == 0  # fmt: skip
    assert PixelDiT2Pipeline.from_pretrained(output).grounding_encoder.config.num_attention_heads == 2


@pytest.mark.parametrize(
    "options, match",
    [
        ([], r"holds no grounding encoder: pass --grounding_encoder facebook/dinov3-vits16-pretrain-lvd1689m"),
        (["--grounding_encoder", FIXTURES / "pixeldit2_tiny" / "meta.json"], r"must be a \.safetensors file"),
        (["--grounding_encoder_heads", 3, "--grounding_encoder", PIXELDIT2_ENCODER], "heads|divisible"),
    ],
    ids=["no_encoder", "not_safetensors", "wrong_heads"],
)
def test_pixeldit2_bad_encoder_input_is_a_one_line_error(tmp_path, capsys, options, match):
    assert convert("--checkpoint", PIXELDIT2_CHECKPOINT, "--output", tmp_path / "out", "--in_context_start", 1,
                   *options) == 1  # fmt: skip
    assert_error(capsys, match)
    assert not (tmp_path / "out").exists()


def test_pixeldit2_encoder_of_the_wrong_width_is_a_one_line_error(tmp_path, capsys):
    wrong = tmp_path / "encoder.safetensors"  # a 16-wide DINOv3 for a transformer grounded on 32-wide tokens
    _, _, tensors, _ = load_pixeldit2_extra("p2_patch8_resize")
    save_file({k[len("grounding_encoder_timm.") :]: v.contiguous() for k, v in tensors.items()
               if k.startswith("grounding_encoder_timm.")}, wrong)  # fmt: skip
    assert convert("--checkpoint", PIXELDIT2_CHECKPOINT, "--output", tmp_path / "out", "--grounding_encoder", wrong,
                   "--grounding_encoder_heads", 1, "--in_context_start", 1) == 1  # fmt: skip
    assert_error(capsys, r"width 16 is not the transformer's grounding_embed_dim 32")
    assert not (tmp_path / "out").exists()
