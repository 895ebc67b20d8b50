"""End-to-end tests of examples/train_class_conditional.py on scikit-learn's digits (CPU, tiny models)."""

import fnmatch
import json
import types

import pytest
import torch
from pixeldit_testing import tiny_model
from train_fixtures import (
    DIGIT_NAMES,
    TINY_TRANSFORMER,
    example,
    fake_hub,
    lora_fine_tuning,
    record_transformer_inputs,
    run_in_process,
    save_digits_dataset,
    save_tiny_dinov2,
    scalars,
    transformer_weights,
    write_imagefolder,
)

from diffusers_pixeldit import PixelDiTFlowScheduler, PixelDiTPipeline


train_class_conditional = example("train_class_conditional")

STEPS = 30
RECIPE_KEYS = ("default_num_inference_steps", "default_guidance_scale", "default_guidance_interval")


def tiny_args(data_args, output_dir, steps, *extra):
    return [
        *data_args,
        "--output_dir", str(output_dir), "--cache_dir", str(output_dir.parent / "cache"),
        "--resolution", "16", "--transformer_config", TINY_TRANSFORMER, "--train_batch_size", "8",
        "--max_train_steps", str(steps), "--learning_rate", "3e-3", "--lr_warmup_steps", "0", "--seed", "0",
        "--report_to", "tensorboard", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def scratch_run(tmp_path_factory):
    """One from-scratch run on an image folder: EMA, REPA, validation, checkpoints, push to a faked Hub."""
    tmp_path = tmp_path_factory.mktemp("c2i_scratch")
    data = write_imagefolder(tmp_path / "digits", 120)
    out = tmp_path / "out"
    with pytest.MonkeyPatch.context() as monkeypatch:
        uploads = fake_hub(monkeypatch, tmp_path / "remote")
        run_in_process(
            train_class_conditional,
            tiny_args(
                ["--train_data_dir", str(data)], out, STEPS,
                "--use_ema", "--ema_decay", "0.9", "--random_flip", "--gradient_checkpointing",
                "--repa_encoder", str(save_tiny_dinov2(tmp_path / "dinov2")), "--repa_layer", "1",
                "--checkpointing_steps", "15", "--checkpoints_total_limit", "1",
                "--validation_steps", "15", "--validation_class_labels", "7", "zero", "--num_validation_images", "2",
                "--validation_num_inference_steps", "2",
                "--recipe_num_inference_steps", "7", "--recipe_guidance_scale", "2.5",
                "--recipe_guidance_interval", "0.1", "0.9",
                "--push_to_hub", "--hub_model_id", "me/pixeldit-digits", "--hub_token", "hf_secret",
            ),
        )  # fmt: skip
    (upload,) = uploads
    return types.SimpleNamespace(out=out, upload=upload)


def mean(values):
    return sum(values) / len(values)


def test_flow_and_repa_losses_fall(scratch_run):
    loss, flow_loss, repa_loss = (scalars(scratch_run.out, tag) for tag in ["train_loss", "flow_loss", "repa_loss"])
    assert len(loss) == len(flow_loss) == len(repa_loss) == STEPS
    assert mean(loss[-10:]) < 0.85 * mean(loss[:5]), loss
    assert mean(flow_loss[-10:]) < 0.9 * mean(flow_loss[:5]), flow_loss
    assert mean(repa_loss[-10:]) < 0.5 * mean(repa_loss[:5]), repa_loss


def test_only_the_newest_checkpoint_is_kept_with_the_repa_projector(scratch_run):
    assert sorted(p.name for p in scratch_run.out.glob("*checkpoint-*")) == [f"checkpoint-{STEPS}"]
    assert (scratch_run.out / f"checkpoint-{STEPS}" / "repa_projector.safetensors").is_file()
    assert not (scratch_run.out / "repa_projector.safetensors").exists()


def test_final_pipeline_holds_the_ema_weights(scratch_run):
    final = transformer_weights(scratch_run.out / "transformer")
    ema = transformer_weights(scratch_run.out / f"checkpoint-{STEPS}" / "transformer_ema")
    raw = transformer_weights(scratch_run.out / f"checkpoint-{STEPS}" / "transformer")
    assert final.keys() == raw.keys() == ema.keys()
    assert all(torch.equal(final[k], ema[k]) for k in final)
    assert not all(torch.equal(final[k], raw[k]) for k in final)


def test_validation_grids_at_every_validation_step_and_at_the_end(scratch_run):
    grids = sorted(p.name for p in (scratch_run.out / "validation").iterdir())
    assert grids == ["test_step_30.png", "validation_step_15.png", "validation_step_30.png"]


def test_model_card_has_the_training_command_without_the_token(scratch_run):
    card = (scratch_run.out / "README.md").read_text()
    assert "accelerate launch examples/train_class_conditional.py --train_data_dir" in card
    assert "hf_secret" not in card and "--hub_token '***'" in card
    assert "![samples](validation/test_step_30.png)" in card


def test_upload_is_the_loadable_pipeline_with_its_labels_and_recipe(scratch_run):
    upload = scratch_run.upload
    assert upload["repo_id"] == "me/pixeldit-digits" and upload["token"] == "hf_secret"
    assert {"model_index.json", "README.md", "transformer/config.json", "scheduler/scheduler_config.json"} <= set(
        upload["files"]
    )
    pipe = PixelDiTPipeline.from_pretrained(upload["remote"])
    assert pipe.config.id2label == {str(i): name for i, name in enumerate(sorted(DIGIT_NAMES))}
    recipe = [pipe.config[k] for k in RECIPE_KEYS]
    assert recipe[:2] == [7, 2.5] and list(recipe[2]) == [0.1, 0.9]
    image = pipe(class_labels=["seven"], num_inference_steps=2, output_type="np").images
    assert image.shape == (1, 16, 16, 3)


def test_every_upload_ignore_pattern_leaves_out_a_file_the_run_wrote(scratch_run):
    upload = scratch_run.upload
    for pattern in upload["patterns"]:
        assert any(fnmatch.fnmatch(path, pattern) for path in upload["all_files"]), pattern
    assert not any(path.startswith("checkpoint-") for path in upload["files"])


def test_lora_fine_tuning_with_accumulation_in_bf16_gives_a_loadable_adapter(tmp_path):
    dataset = save_digits_dataset(tmp_path / "digits_dataset", 64)
    base = tmp_path / "base"
    PixelDiTPipeline(
        tiny_model("c2i", num_classes=10), PixelDiTFlowScheduler(), id2label=dict(enumerate(DIGIT_NAMES))
    ).save_pretrained(base)
    argv = tiny_args(
        ["--dataset_name", str(dataset)], tmp_path / "out", 16,
        "--pretrained_model_name_or_path", str(base), "--rank", "4", "--learning_rate", "1e-2",
        "--train_batch_size", "4", "--gradient_accumulation_steps", "2", "--mixed_precision", "bf16",
        "--checkpointing_steps", "8",
    )  # fmt: skip
    result = lora_fine_tuning(train_class_conditional, argv, base, class_labels=torch.tensor([3, 10]))
    assert mean(result["loss"][-5:]) < mean(result["loss"][:5]), result["loss"]
    # Only LoRA weights are written; they load onto the base model and change its output.
    assert result["files"] == ["README.md", "pytorch_lora_weights.safetensors"] and result["change"] > 1e-3
    lora_modules = {"transformer_blocks.0.attn.to_q", "transformer_blocks.0.ff.net.0.proj", "pixel_blocks.0.ff.net.2"}
    assert lora_modules <= result["modules"]


def test_fine_tuning_keeps_the_pretrained_sampling_recipe_and_labels(tmp_path):
    data = write_imagefolder(tmp_path / "digits", 8)
    base = tmp_path / "base"
    id2label = {str(i): f"class {i}" for i in range(10)}
    recipe = dict(default_num_inference_steps=9, default_guidance_scale=3.0, default_guidance_interval=(0.2, 0.8))
    PixelDiTPipeline(tiny_model("c2i", num_classes=10), PixelDiTFlowScheduler(), id2label, **recipe).save_pretrained(
        base
    )
    out = tmp_path / "out"
    run_in_process(
        train_class_conditional,
        tiny_args(
            ["--train_data_dir", str(data)], out, 1, "--pretrained_model_name_or_path", str(base),
            "--recipe_guidance_scale", "1.5", "--report_to", "none",
        ),
    )  # fmt: skip
    config = PixelDiTPipeline.from_pretrained(out).config
    assert config.id2label == id2label
    assert [config[k] for k in RECIPE_KEYS[:2]] == [9, 1.5] and list(config.default_guidance_interval) == [0.2, 0.8]


def grey_run_inputs(tmp_path, monkeypatch) -> list[dict]:
    data = write_imagefolder(tmp_path / "digits", 16)
    seen = record_transformer_inputs(monkeypatch)
    run_in_process(
        train_class_conditional,
        tiny_args(
            ["--train_data_dir", str(data)], tmp_path / "out", 2, "--class_dropout_prob", "1.0", "--report_to", "none",
            "--transformer_config", json.dumps({**json.loads(TINY_TRANSFORMER), "in_channels": 1}),
        ),
    )  # fmt: skip
    return seen


def test_dropped_labels_become_the_null_class(tmp_path, monkeypatch):
    seen = grey_run_inputs(tmp_path, monkeypatch)
    assert len(seen) == 2 and all(torch.equal(record["labels"], torch.full((8,), 10)) for record in seen)


def test_rgb_images_are_read_as_grey_for_a_one_channel_model(tmp_path, monkeypatch):
    seen = grey_run_inputs(tmp_path, monkeypatch)
    assert {record["shape"] for record in seen} == {(1, 16, 16)}


def test_unreadable_image_is_reported_with_its_path(tmp_path):
    data = write_imagefolder(tmp_path / "digits", 7)
    # A truncated PNG: its header reads fine, decoding fails (PIL's own error does not name the file).
    png = (data / "zero" / "0.png").read_bytes()
    (data / "zero" / "broken.png").write_bytes(png[: len(png) // 2])
    with pytest.raises(OSError, match=r"Cannot read training image .*zero/broken\.png \(dataset row \d\)"):
        run_in_process(
            train_class_conditional,
            tiny_args(["--train_data_dir", str(data)], tmp_path / "out", 1, "--report_to", "none"),
        )


def test_post_modulation_pixel_blocks_train_from_scratch(tmp_path):
    # the official `pit_adaln_post_modulation` variant is a config entry the example trains like any other
    data = write_imagefolder(tmp_path / "digits", 16)
    config = json.dumps({**json.loads(TINY_TRANSFORMER), "pixel_post_modulation": True})
    out = tmp_path / "out"
    # (the later --transformer_config wins)
    run_in_process(
        train_class_conditional, tiny_args(["--train_data_dir", str(data)], out, 3, "--transformer_config", config)
    )
    pipe = PixelDiTPipeline.from_pretrained(out)
    assert pipe.transformer.config.pixel_post_modulation
    # the zero-initialised output layer has moved
    assert transformer_weights(out / "transformer")["proj_out.weight"].abs().max() > 0
