"""diffusers_pixeldit.training.outputs: the model card, the launch command, the final save and upload."""

import types

import pytest
import torch
from huggingface_hub import ModelCard
from pixeldit_testing import tiny_model

from diffusers_pixeldit import PixelDiTFlowScheduler, PixelDiTPipeline
from diffusers_pixeldit.training import (
    FlowMatchingObjective,
    ModelCardText,
    create_hub_repo,
    finish_training,
    launch_command,
    outputs,
    training_description,
    write_model_card,
)


def card_text(base_model=None):
    return ModelCardText(
        title="A title",
        description="What it is.",
        pipeline_class="PixelDiTPipeline",
        example_call="image = pipe(class_labels=[0]).images[0]",
        base_model=base_model,
        training_command="accelerate launch examples/train_class_conditional.py --seed 0",
        tags=["class-conditional"],
    )


def test_the_hub_repo_is_named_after_the_output_folder_by_default(monkeypatch):
    created = []

    def create_repo(repo_id, exist_ok, token):
        created.append((repo_id, token))
        return types.SimpleNamespace(repo_id=f"me/{repo_id}")  # the Hub adds the user's namespace

    monkeypatch.setattr(outputs, "create_repo", create_repo)
    assert create_hub_repo("runs/pixeldit-out") == "me/pixeldit-out"
    create_hub_repo("runs/pixeldit-out", "name", "hf_x")
    assert created == [("pixeldit-out", None), ("name", "hf_x")]


def test_launch_command_redacts_the_hub_token():
    command = launch_command("/somewhere/train_x.py", ["--hub_token", "hf_a", "--hub_token=hf_b", "--seed", "0"])
    assert command == "accelerate launch examples/train_x.py --hub_token '***' '--hub_token=***' --seed 0"


def test_model_card_of_a_pipeline_loads_the_repo_and_shows_the_samples(tmp_path):
    path = write_model_card(str(tmp_path), card_text(), repo_id="me/model", lora=False, grid_path="validation/x.png")
    card = ModelCard.load(path)
    assert 'pipe = PixelDiTPipeline.from_pretrained("me/model")\nimage = pipe(class_labels=[0])' in card.text
    assert "![samples](validation/x.png)" in card.text
    assert "```bash\naccelerate launch examples/train_class_conditional.py --seed 0\n```" in card.text
    assert card.data.tags == ["pixeldit", "class-conditional", "diffusers-training", "diffusers"]
    assert card.data.library_name == "diffusers" and card.data.base_model is None


def test_model_card_of_a_lora_loads_the_base_pipeline_then_the_adapter(tmp_path):
    path = write_model_card(str(tmp_path), card_text("org/base"), repo_id="me/lora", lora=True)
    card = ModelCard.load(path)
    assert 'PixelDiTPipeline.from_pretrained("org/base")\npipe.load_lora_weights("me/lora"' in card.text
    assert "lora" in card.data.tags and card.data.base_model == "org/base"
    assert "## Samples" not in card.text


def test_training_description_of_a_fine_tuned_lora_and_of_a_scratch_model():
    common = dict(
        script="train_x.py", scratch_details="preset `B`", dataset="digits", resolution=16, steps=5,
        objective=FlowMatchingObjective(shift=4.0), dropout="labels dropped",
    )  # fmt: skip
    lora = training_description(base_model="org/base", lora_rank=8, ema_decay=None, **common)
    scratch = training_description(base_model=None, lora_rank=None, ema_decay=0.99, repa="REPA with `d`", **common)
    assert lora.startswith("A rank-8 LoRA for a pixel-space PixelDiT (no VAE) fine-tuned from `org/base`")
    assert "Weights: raw (no EMA)." in lora and "REPA" not in lora
    assert scratch.startswith("A pixel-space PixelDiT (no VAE) trained from scratch (preset `B`) with")
    assert "training shift 4.0), labels dropped. REPA with `d`. Weights: EMA (decay 0.99)." in scratch
    common["objective"] = FlowMatchingObjective(shift=4.0, noise_outlier_prob=0.03, noise_outlier_scale=3.5)
    outliers = training_description(base_model="org/base", lora_rank=None, ema_decay=0.99, **common)
    assert "training shift 4.0, 3% of the noise elements scaled by 3.5), labels dropped." in outliers


@pytest.fixture
def pipeline():
    return PixelDiTPipeline(tiny_model("c2i"), PixelDiTFlowScheduler())


def test_finishing_a_full_run_saves_the_pipeline_and_validates_the_saved_one(tmp_path, pipeline):
    validated = []
    reloaded = finish_training(
        pipeline, str(tmp_path), card_text(), validate=lambda pipe: validated.append(pipe) or "validation/g.png"
    )
    assert validated == [reloaded] and reloaded is not pipeline
    assert {"model_index.json", "transformer", "scheduler", "README.md"} <= {p.name for p in tmp_path.iterdir()}
    assert all(torch.equal(p, q) for p, q in zip(reloaded.transformer.parameters(), pipeline.transformer.parameters()))
    assert "![samples](validation/g.png)" in (tmp_path / "README.md").read_text()


def test_finishing_a_lora_run_saves_the_adapter_only(tmp_path, pipeline):
    from peft import LoraConfig

    pipeline.transformer.add_adapter(LoraConfig(r=2, target_modules=["to_q"]))
    finish_training(pipeline, str(tmp_path), card_text("org/base"), lora=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "pytorch_lora_weights.safetensors"]


def test_finishing_uploads_the_folder_without_checkpoints(tmp_path, pipeline, monkeypatch):
    calls = []
    monkeypatch.setattr(outputs, "upload_folder", lambda **kwargs: calls.append(kwargs))
    finish_training(pipeline, str(tmp_path), card_text(), repo_id="me/model", hub_token="hf_x")
    assert calls == [
        dict(
            repo_id="me/model", folder_path=str(tmp_path), commit_message="End of training",
            ignore_patterns=["checkpoint-*"], token="hf_x",
        )
    ]  # fmt: skip
    assert 'from_pretrained("me/model")' in (tmp_path / "README.md").read_text()
