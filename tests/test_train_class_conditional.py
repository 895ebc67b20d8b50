"""End-to-end tests of examples/train_class_conditional.py on scikit-learn's digits (CPU, tiny models)."""

import json
import types
from pathlib import Path

import pytest
import torch
from huggingface_hub.utils import filter_repo_objects
from pixeldit_testing import tiny_model
from train_fixtures import (
    DIGIT_NAMES,
    TINY_TRANSFORMER,
    example,
    run_in_process,
    save_digits_dataset,
    save_tiny_dinov2,
    scalars,
    transformer_weights,
    write_imagefolder,
)

from diffusers_pixeldit import PixelDiTFlowScheduler, PixelDiTPipeline, PixelDiTTransformer2DModel


train_class_conditional = example("train_class_conditional")


def tiny_args(data_args, output_dir, steps, *extra):
    return [
        *data_args,
        "--output_dir", str(output_dir), "--cache_dir", str(output_dir.parent / "cache"),
        "--resolution", "16", "--transformer_config", TINY_TRANSFORMER, "--train_batch_size", "8",
        "--max_train_steps", str(steps), "--learning_rate", "3e-3", "--lr_warmup_steps", "0", "--seed", "0",
        "--report_to", "tensorboard", *extra,
    ]  # fmt: skip


def test_imagefolder_from_scratch_ema_repa_validation_push_to_hub(tmp_path, monkeypatch):
    data = write_imagefolder(tmp_path / "digits", 160)
    uploads = []

    def fake_create_repo(repo_id, exist_ok, token):
        return types.SimpleNamespace(repo_id=repo_id)

    def fake_upload_folder(repo_id, folder_path, commit_message, ignore_patterns, token):
        folder_path = Path(folder_path)
        files = sorted(str(p.relative_to(folder_path)) for p in folder_path.rglob("*") if p.is_file())
        uploaded = list(filter_repo_objects(files, ignore_patterns=ignore_patterns))
        remote = tmp_path / "remote" / repo_id
        for file in uploaded:
            (remote / file).parent.mkdir(parents=True, exist_ok=True)
            (remote / file).write_bytes((folder_path / file).read_bytes())
        uploads.append(dict(repo_id=repo_id, token=token, files=uploaded, remote=remote))

    monkeypatch.setattr(train_class_conditional.utils, "create_repo", fake_create_repo)
    monkeypatch.setattr(train_class_conditional.utils, "upload_folder", fake_upload_folder)
    out = tmp_path / "out"
    run_in_process(
        train_class_conditional,
        tiny_args(
            ["--train_data_dir", str(data)], out, 40,
            "--use_ema", "--ema_decay", "0.9", "--random_flip", "--gradient_checkpointing",
            "--repa_encoder", str(save_tiny_dinov2(tmp_path / "dinov2")), "--repa_layer", "1",
            "--checkpointing_steps", "20", "--checkpoints_total_limit", "1",
            "--validation_steps", "20", "--validation_class_labels", "7", "zero", "--num_validation_images", "2",
            "--validation_num_inference_steps", "3",
            "--recipe_num_inference_steps", "7", "--recipe_guidance_scale", "2.5", "--recipe_guidance_interval", "0.1", "0.9",
            "--push_to_hub", "--hub_model_id", "me/pixeldit-digits", "--hub_token", "hf_secret",
        ),
    )  # fmt: skip

    # The loss falls (flow and REPA terms), logged to TensorBoard.
    loss, flow_loss, repa_loss = (scalars(out, tag) for tag in ["train_loss", "flow_loss", "repa_loss"])
    assert len(loss) == 40
    assert sum(loss[-10:]) / 10 < 0.85 * sum(loss[:5]) / 5, loss
    assert sum(flow_loss[-10:]) / 10 < 0.9 * sum(flow_loss[:5]) / 5, flow_loss
    assert sum(repa_loss[-10:]) / 10 < 0.5 * sum(repa_loss[:5]) / 5, repa_loss

    # Checkpoints: only the newest one is kept; the final pipeline holds the EMA weights, without the REPA projector.
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-40"]
    assert (out / "checkpoint-40" / "repa_projector.safetensors").is_file()
    final = transformer_weights(out / "transformer")
    ema = transformer_weights(out / "checkpoint-40" / "transformer_ema")
    raw = transformer_weights(out / "checkpoint-40" / "transformer")
    assert final.keys() == raw.keys()
    assert all(torch.equal(final[k], ema[k]) for k in final)
    assert not all(torch.equal(final[k], raw[k]) for k in final)

    # Validation grids (2 classes x 2 images) saved every 20 steps and at the end.
    for name in ["validation_step_20", "validation_step_40", "test_step_40"]:
        assert (out / "validation" / f"{name}.png").is_file()

    # The model card has the training command, without the token.
    card = (out / "README.md").read_text()
    assert "accelerate launch examples/train_class_conditional.py --train_data_dir" in card
    assert "hf_secret" not in card and "--hub_token '***'" in card

    # What is uploaded: the pipeline and its card, not the checkpoints; it loads, with the folder names as labels.
    (upload,) = uploads
    assert upload["repo_id"] == "me/pixeldit-digits" and upload["token"] == "hf_secret"
    assert {"model_index.json", "README.md", "transformer/config.json", "scheduler/scheduler_config.json"} <= set(
        upload["files"]
    )
    assert not any(f.startswith("checkpoint-") for f in upload["files"])
    pipe = PixelDiTPipeline.from_pretrained(upload["remote"])
    assert pipe.config.id2label == {str(i): name for i, name in enumerate(sorted(DIGIT_NAMES))}
    # the sampling recipe given on the command line is the pipeline's default
    recipe = [
        pipe.config[k] for k in ("default_num_inference_steps", "default_guidance_scale", "default_guidance_interval")
    ]
    assert recipe[:2] == [7, 2.5] and list(recipe[2]) == [0.1, 0.9]
    assert all(torch.equal(pipe.transformer.state_dict()[k], final[k]) for k in final)
    image = pipe(class_labels=["seven"], num_inference_steps=2, output_type="np").images
    assert image.shape == (1, 16, 16, 3)


def test_saved_dataset_lora_fine_tuning_bf16_accumulation(tmp_path):
    dataset = save_digits_dataset(tmp_path / "digits_dataset", 96)
    base = tmp_path / "base"
    PixelDiTPipeline(
        tiny_model("c2i", num_classes=10), PixelDiTFlowScheduler(), id2label=dict(enumerate(DIGIT_NAMES))
    ).save_pretrained(base)
    out = tmp_path / "out"
    run_in_process(
        train_class_conditional,
        tiny_args(
            ["--dataset_name", str(dataset)], out, 20,
            "--pretrained_model_name_or_path", str(base), "--rank", "4", "--learning_rate", "1e-2",
            "--train_batch_size", "4", "--gradient_accumulation_steps", "2", "--mixed_precision", "bf16",
            "--checkpointing_steps", "10",
        ),
    )  # fmt: skip
    loss = scalars(out, "train_loss")
    assert sum(loss[-5:]) / 5 < sum(loss[:5]) / 5, loss

    # Only LoRA weights are written; they load onto the base model and change its output.
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == ["README.md", "pytorch_lora_weights.safetensors"]
    transformer = PixelDiTTransformer2DModel.from_pretrained(base, subfolder="transformer")
    inputs = dict(
        hidden_states=torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)),
        timestep=torch.tensor([300.0, 700.0]),
        class_labels=torch.tensor([3, 10]),
    )
    with torch.no_grad():
        before = transformer(**inputs).sample
        transformer.load_lora_adapter(out, weight_name="pytorch_lora_weights.safetensors", prefix=None)
        after = transformer(**inputs).sample
    lora_modules = {name.rsplit(".lora_", 1)[0] for name, _ in transformer.named_parameters() if ".lora_" in name}
    assert {"transformer_blocks.0.attn.to_q", "transformer_blocks.0.ff.net.0.proj", "pixel_blocks.0.ff.net.2"} <= (
        lora_modules
    )
    assert (after - before).abs().max() > 1e-3
    assert "load_lora_adapter" in (out / "README.md").read_text()


def test_labels_dropped_to_the_null_class_and_grey_images_for_one_channel(tmp_path, monkeypatch):
    data = write_imagefolder(tmp_path / "digits", 16)
    seen = []
    forward = PixelDiTTransformer2DModel.forward

    def recording_forward(self, hidden_states, timestep, class_labels=None, **kwargs):
        if torch.is_grad_enabled():
            seen.append((class_labels.clone(), hidden_states.shape))
        return forward(self, hidden_states, timestep, class_labels=class_labels, **kwargs)

    monkeypatch.setattr(PixelDiTTransformer2DModel, "forward", recording_forward)
    out = tmp_path / "out"
    run_in_process(
        train_class_conditional,
        tiny_args(
            ["--train_data_dir", str(data)], out, 2, "--class_dropout_prob", "1.0", "--report_to", "none",
            "--transformer_config", json.dumps({**json.loads(TINY_TRANSFORMER), "in_channels": 1}),
        ),
    )  # fmt: skip
    assert len(seen) == 2 and all(torch.equal(labels, torch.full((8,), 10)) for labels, _ in seen)
    assert {shape for _, shape in seen} == {(8, 1, 16, 16)}  # the RGB PNGs are read as grey for a 1-channel model


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
