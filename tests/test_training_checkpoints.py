"""diffusers_pixeldit.training.checkpoints: atomic checkpoints, the total limit, resuming, the save/load hooks."""

import json
import os

import pytest
import torch
from accelerate import Accelerator
from pixeldit_testing import tiny_model
from train_fixtures import reset_accelerate_state

from diffusers_pixeldit.training import (
    create_ema,
    find_resume_checkpoint,
    list_checkpoints,
    load_checkpoint,
    prepare_transformer_for_training,
    register_checkpoint_hooks,
    repa_projector,
    run_seed,
    save_checkpoint,
    start_run,
)


@pytest.fixture
def accelerator():
    reset_accelerate_state()
    yield Accelerator(cpu=True)
    reset_accelerate_state()


def make_dirs(root, *names):
    for name in names:
        (root / name).mkdir(parents=True)


def test_a_checkpoint_is_written_under_a_temporary_name_then_renamed(accelerator, tmp_path):
    seen_while_writing = []
    save_state = accelerator.save_state

    def recording_save_state(output_dir):
        save_state(output_dir)
        seen_while_writing.extend(sorted(os.listdir(tmp_path)))

    accelerator.save_state = recording_save_state
    path = save_checkpoint(accelerator, tmp_path, 7, seed=3)
    assert seen_while_writing == [".tmp-checkpoint-7"]
    assert path == str(tmp_path / "checkpoint-7") and sorted(os.listdir(tmp_path)) == ["checkpoint-7"]


def test_the_training_state_holds_the_seed_only(accelerator, tmp_path):
    save_checkpoint(accelerator, tmp_path, 7, seed=3)
    assert json.loads((tmp_path / "checkpoint-7" / "training_state.json").read_text()) == {"seed": 3}


def test_the_total_limit_keeps_the_newest_checkpoints(accelerator, tmp_path):
    for step in (2, 4, 10):
        save_checkpoint(accelerator, tmp_path, step, seed=0, total_limit=2)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-10", "checkpoint-4"]


def test_latest_is_the_newest_complete_checkpoint(tmp_path):
    make_dirs(tmp_path, "checkpoint-9", "checkpoint-10", ".tmp-checkpoint-12", "checkpoint-final")
    assert list_checkpoints(tmp_path) == [str(tmp_path / "checkpoint-9"), str(tmp_path / "checkpoint-10")]
    assert find_resume_checkpoint(tmp_path, "latest") == str(tmp_path / "checkpoint-10")


def test_latest_without_checkpoints_starts_a_new_run(tmp_path):
    assert find_resume_checkpoint(tmp_path / "missing", "latest") is None
    assert find_resume_checkpoint(tmp_path, None) is None


def test_a_checkpoint_name_is_looked_up_in_the_output_dir(tmp_path):
    make_dirs(tmp_path, "checkpoint-4")
    assert find_resume_checkpoint(tmp_path, "elsewhere/checkpoint-4") == str(tmp_path / "checkpoint-4")
    with pytest.raises(ValueError, match="'checkpoint-5' does not exist"):
        find_resume_checkpoint(tmp_path, "checkpoint-5")


def test_starting_removes_unfinished_checkpoints_and_resumes_with_the_stored_seed(accelerator, tmp_path):
    save_checkpoint(accelerator, tmp_path, 4, seed=11)
    make_dirs(tmp_path, ".tmp-checkpoint-8/transformer")
    seed, checkpoint = start_run(accelerator, tmp_path, None, "latest")
    assert (seed, checkpoint) == (11, str(tmp_path / "checkpoint-4"))
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-4"]


def test_a_given_seed_wins_and_a_missing_one_is_drawn(accelerator, tmp_path):
    save_checkpoint(accelerator, tmp_path, 4, seed=11)
    assert run_seed(5, str(tmp_path / "checkpoint-4")) == 5
    drawn = run_seed(None, None)
    assert isinstance(drawn, int) and 0 <= drawn < 2**63 and drawn != run_seed(None, None)


def parameters(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def test_hooks_restore_the_transformer_its_ema_and_the_projector(accelerator, tmp_path):
    transformer, projector = tiny_model("c2i"), repa_projector(16, 8)
    ema = create_ema(transformer, 0.9, accelerator.device)
    register_checkpoint_hooks(accelerator, ema=ema)
    transformer, projector = accelerator.prepare(transformer, projector)
    with torch.no_grad():
        transformer.proj_out.weight.add_(1.0)
    ema.step(transformer.parameters())
    saved_transformer, saved_projector = parameters(transformer), parameters(projector)
    saved_shadow = [p.clone() for p in ema.shadow_params]
    path = save_checkpoint(accelerator, tmp_path, 3, seed=0)
    assert {"transformer", "transformer_ema", "repa_projector.safetensors", "training_state.json"} <= set(
        os.listdir(path)
    )

    with torch.no_grad():
        for p in [*transformer.parameters(), *projector.parameters()]:
            p.zero_()
    ema.step(transformer.parameters())
    assert load_checkpoint(accelerator, path) == 3
    assert all(torch.equal(p, saved_transformer[n]) for n, p in transformer.named_parameters())
    assert all(torch.equal(p, saved_projector[n]) for n, p in projector.named_parameters())
    assert ema.optimization_step == 1
    assert all(torch.equal(p, q) for p, q in zip(ema.shadow_params, saved_shadow))


def test_a_lora_checkpoint_holds_only_the_adapter(accelerator, tmp_path):
    transformer = tiny_model("c2i")
    prepare_transformer_for_training(transformer, weight_dtype=torch.float32, lora_rank=2, lora_layers=["to_q"])
    register_checkpoint_hooks(accelerator, lora=True)
    transformer = accelerator.prepare(transformer)
    lora = {n: p for n, p in transformer.named_parameters() if "lora_" in n}
    with torch.no_grad():
        for p in lora.values():
            p.fill_(0.5)
    path = save_checkpoint(accelerator, tmp_path, 1, seed=0)
    assert "pytorch_lora_weights.safetensors" in os.listdir(path) and "transformer" not in os.listdir(path)

    with torch.no_grad():
        for p in lora.values():
            p.zero_()
    load_checkpoint(accelerator, path)
    assert all(torch.all(p == 0.5) for p in lora.values())
