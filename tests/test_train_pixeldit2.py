"""End-to-end tests of examples/train_class_conditional.py training a PixelDiT2 on scikit-learn's digits (CPU, tiny
models, a tiny DINOv3 grounding encoder)."""

import json
import types

import pytest
import torch
from pixeldit_testing import tiny_dinov3
from train_fixtures import (
    FORKED_RUN_TIMEOUT_S,
    digits,
    example,
    fork_script,
    free_port,
    log_tail,
    run_in_process,
    save_tiny_dinov2,
    scalars,
    transformer_weights,
    write_imagefolder,
)

from diffusers_pixeldit import PixelDiT2Pipeline, PixelDiT2Transformer2DModel, training


train_class_conditional = example("train_class_conditional")

STEPS = 24
# A tiny PixelDiT2 for 16x16 digits (patch 4: the DINOv3 sees a 64x64 resize of each noisy image).
TINY_PIXELDIT2 = json.dumps(
    dict(
        patch_size=4,
        num_layers=2,
        num_attention_heads=2,
        attention_head_dim=8,
        in_context_length=2,
        in_context_start=1,
        grounding_embed_dim=16,
        grounding_num_attention_heads=2,
    )  # fmt: skip
)


def record_training_inputs(monkeypatch) -> list[dict]:
    """Records the class labels, grounding tokens and grounding mask of every training forward of a PixelDiT2."""
    seen, forward = [], PixelDiT2Transformer2DModel.forward

    def recording_forward(self, hidden_states, timestep, class_labels, **kwargs):
        if torch.is_grad_enabled():
            seen.append(
                {
                    "class_labels": class_labels.clone(),
                    **{k: v.clone() for k, v in kwargs.items() if torch.is_tensor(v)},
                }
            )
        return forward(self, hidden_states, timestep, class_labels, **kwargs)

    monkeypatch.setattr(PixelDiT2Transformer2DModel, "forward", recording_forward)
    return seen


def pixeldit2_args(data, output_dir, steps, *extra):
    return [
        "--train_data_dir", str(data), "--output_dir", str(output_dir), "--cache_dir", str(output_dir.parent / "cache"),
        "--resolution", "16", "--train_batch_size", "8", "--max_train_steps", str(steps), "--learning_rate", "3e-3",
        "--lr_warmup_steps", "0", "--seed", "0", "--report_to", "tensorboard", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def scratch_run(tmp_path_factory):
    """A PixelDiT2 trained from scratch: EMA, REPA on block 2 (after the in-context tokens joined), checkpoints."""
    tmp_path = tmp_path_factory.mktemp("pixeldit2_scratch")
    data = write_imagefolder(tmp_path / "digits", 96)
    encoder = tmp_path / "dinov3"
    tiny_dinov3(hidden_size=16).save_pretrained(encoder)
    out = tmp_path / "out"
    with pytest.MonkeyPatch.context() as monkeypatch:
        inputs = record_training_inputs(monkeypatch)
        args = run_in_process(
            train_class_conditional,
            pixeldit2_args(
                data, out, STEPS,
                "--preset", "PixelDiT2-B/16", "--transformer_config", TINY_PIXELDIT2, "--grounding_encoder", str(encoder),
                "--grounding_dropout_prob", "0.25", "--joint_dropout_prob", "0.1", "--use_ema", "--ema_decay", "0.9",
                "--repa_encoder", str(save_tiny_dinov2(tmp_path / "dinov2")), "--repa_layer", "2",
                "--checkpointing_steps", "12", "--recipe_num_inference_steps", "4",
            ),
        )  # fmt: skip
    return types.SimpleNamespace(out=out, args=args, inputs=inputs, data=data, encoder=encoder)


def test_the_official_time_density_is_the_pixeldit2_default(scratch_run):
    # t ~ sigmoid(N(−0.8, 0.8)) in the official time, i.e. σ ~ sigmoid(N(0.8, 0.8))
    assert (scratch_run.args.logit_mean, scratch_run.args.logit_std) == (0.8, 0.8)


def test_flow_and_repa_losses_fall(scratch_run):
    flow_loss, repa_loss = scalars(scratch_run.out, "flow_loss"), scalars(scratch_run.out, "repa_loss")
    assert len(flow_loss) == len(repa_loss) == STEPS
    assert sum(flow_loss[-8:]) / 8 < 0.9 * sum(flow_loss[:4]) / 4, flow_loss
    assert sum(repa_loss[-8:]) / 8 < 0.7 * sum(repa_loss[:4]) / 4, repa_loss


def test_every_step_is_grounded_with_per_sample_dropout(scratch_run):
    # each training forward gets the grounding tokens of its noisy input and a per-sample mask; the masked rows
    # are the grounding-dropped ones (25 %, and 10 % jointly with the label)
    forwards = scratch_run.inputs
    assert len(forwards) == STEPS
    assert forwards[0]["grounding_hidden_states"].shape == (8, 16, 16)  # 4x4 patches, the DINOv3's width
    masks = torch.cat([call["grounding_mask"] for call in forwards])
    assert 0.15 < (~masks).float().mean() < 0.5
    dropped_labels = torch.cat([call["class_labels"] for call in forwards]) == 10
    assert dropped_labels.any() and (~masks[dropped_labels]).any()


def test_the_result_is_a_pixeldit2_pipeline_with_its_encoder_and_sampler(scratch_run):
    pipe = PixelDiT2Pipeline.from_pretrained(scratch_run.out)
    assert pipe.scheduler.config.solver == "heun" and pipe.scheduler.config.time_grid == "uniform"
    assert pipe.grounding_encoder.config.hidden_size == 16
    assert pipe.config.default_num_inference_steps == 4
    final = transformer_weights(scratch_run.out / "transformer")
    ema = transformer_weights(scratch_run.out / f"checkpoint-{STEPS}" / "transformer_ema")
    assert all(torch.equal(final[k], ema[k]) for k in final)
    images = pipe(class_labels=["seven", "zero"], output_type="np").images
    assert images.shape == (2, 16, 16, 3)
    assert "PixelDiT2 class-conditional model" in (scratch_run.out / "README.md").read_text()


def test_a_killed_run_resumes_to_the_same_weights(scratch_run, tmp_path):
    # resuming from the step-12 checkpoint of a second run gives the uninterrupted run's weights
    out = tmp_path / "resumed"
    common = pixeldit2_args(
        scratch_run.data, out, STEPS, "--preset", "PixelDiT2-B/16", "--transformer_config", TINY_PIXELDIT2,
        "--grounding_encoder", str(scratch_run.encoder), "--grounding_dropout_prob", "0.25",
        "--joint_dropout_prob", "0.1", "--use_ema", "--ema_decay", "0.9", "--repa_encoder",
        str(scratch_run.out.parent / "dinov2"), "--repa_layer", "2", "--checkpointing_steps", "12",
        "--recipe_num_inference_steps", "4",
    )  # fmt: skip
    run_in_process(train_class_conditional, [*common[:common.index("--max_train_steps") + 1], "12",
                                             *common[common.index("--max_train_steps") + 2 :]])  # fmt: skip
    run_in_process(train_class_conditional, [*common, "--resume_from_checkpoint", "latest"])
    resumed, uninterrupted = (
        transformer_weights(out / "transformer"),
        transformer_weights(scratch_run.out / "transformer"),
    )
    for key in uninterrupted:
        torch.testing.assert_close(resumed[key], uninterrupted[key], rtol=0, atol=1e-6)


def test_lora_fine_tuning_of_the_trained_pipeline(scratch_run, tmp_path):
    out = tmp_path / "lora"
    run_in_process(
        train_class_conditional,
        pixeldit2_args(
            scratch_run.data,
            out,
            6,
            "--pretrained_model_name_or_path",
            str(scratch_run.out),
            "--rank",
            "2",
            "--learning_rate",
            "1e-2",
        ),  # fmt: skip
    )
    assert (out / "pytorch_lora_weights.safetensors").is_file() and not (out / "transformer").exists()
    pipe = PixelDiT2Pipeline.from_pretrained(scratch_run.out)
    pipe.set_progress_bar_config(disable=True)

    def sample():
        return pipe(class_labels=[7], num_inference_steps=2, output_type="latent", generator=torch.manual_seed(0))

    base = sample().images
    pipe.load_lora_weights(out)
    assert not torch.allclose(sample().images, base)


def test_a_pixeldit_pipeline_is_refused_a_grounding_encoder(tmp_path):
    with pytest.raises(ValueError, match="--grounding_encoder is for PixelDiT2"):
        train_class_conditional.parse_args(pixeldit2_args(tmp_path, tmp_path / "out", 1, "--grounding_encoder", "x"))
    with pytest.raises(ValueError, match="needs its --grounding_encoder"):
        train_class_conditional.parse_args(pixeldit2_args(tmp_path, tmp_path / "out", 1, "--preset", "PixelDiT2-B/16"))


def test_grounding_dropout_draws_leave_pixeldit_runs_unchanged(tmp_path):
    # the grounding draws are made only for PixelDiT2 (after the label's): a PixelDiT run's random stream, and so
    # its samples, stay what they were
    image, _ = digits(1)[0]
    image.save(tmp_path / "0.png")
    rows = [{"image": {"path": str(tmp_path / "0.png"), "bytes": None}}]

    def dataset(**probabilities):
        return training.FlowMatchingDataset(rows, [0], [(16, 16)], seed=1, objective=training.FlowMatchingObjective(),
                                            drop_probability=0.5, **probabilities)  # fmt: skip

    plain, grounded = dataset()[(0, 3, 1)], dataset(grounding_drop_probability=0.5)[(0, 3, 1)]
    assert "drop_grounding" not in plain and isinstance(grounded["drop_grounding"], bool)
    assert grounded["u"] == plain["u"] and grounded["drop"] == plain["drop"]
    drops = [dataset(grounding_drop_probability=0.5)[(0, step, 0)]["drop_grounding"] for step in range(40)]
    assert 10 < sum(drops) < 30


def test_the_objective_is_the_official_clamped_velocity_loss_with_the_noise_scale():
    # x_t = (1 − σ)·x0 + σ·s·ε; the target is (x_t − x0) / max(σ, 0.05), the official velocity's negative
    objective = training.FlowMatchingObjective(noise_scale=2.0, velocity_clamp_min_sigma=0.05)
    x0, noise = torch.randn(3, 3, 4, 4), torch.randn(3, 3, 4, 4)
    u = torch.tensor([0.9, 0.3, 0.01])  # shift 1: σ = u, the last one below the clamp
    seen = {}

    def official_target(noisy, sigmas):
        seen["noisy"], seen["sigmas"] = noisy, sigmas
        return (noisy - x0) / sigmas.clamp(min=0.05).view(-1, 1, 1, 1)

    assert objective.loss(official_target, x0, noise, u) < 1e-10
    sigma = u.view(-1, 1, 1, 1)
    torch.testing.assert_close(seen["noisy"], (1 - sigma) * x0 + sigma * 2.0 * noise)
    assert objective.loss(lambda noisy, sigmas: 2.0 * noise - x0, x0, noise, u) > 0.1  # unclamped: differs at σ < c


def test_two_processes_match_one(scratch_run, tmp_path):
    # 2 processes (gloo) x batch 4 give the weights of 1 process x batch 8, grounding dropout and REPA included
    def argv(name, batch_size):
        return pixeldit2_args(
            scratch_run.data, tmp_path / name, 6, "--preset", "PixelDiT2-B/16", "--transformer_config",
            TINY_PIXELDIT2, "--grounding_encoder", str(scratch_run.encoder), "--grounding_dropout_prob", "0.25",
            "--repa_encoder", str(scratch_run.out.parent / "dinov2"), "--repa_layer", "2", "--report_to", "none",
            "--train_batch_size", str(batch_size),
        )  # fmt: skip

    port = free_port()
    ranks = [
        fork_script("train_class_conditional.py", argv("two", 4), tmp_path / f"{r}.log", r, 2, port) for r in (0, 1)
    ]
    try:
        run_in_process(train_class_conditional, argv("one", 8))
        for rank, process in enumerate(ranks):
            process.join(FORKED_RUN_TIMEOUT_S)
            assert process.exitcode == 0, log_tail(tmp_path / f"{rank}.log")
    finally:
        for process in ranks:
            if process.is_alive():
                process.kill()
    one, two = (
        transformer_weights(tmp_path / "one" / "transformer"),
        transformer_weights(tmp_path / "two" / "transformer"),
    )
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=0, atol=1e-6, msg=key)
    assert one["proj_out.weight"].abs().max() > 1e-3
