"""diffusers_pixeldit.training.objective: σ sampling, the flow-matching loss, REPA."""

import math

import pytest
import torch
import torch.nn as nn
from pixeldit_testing import tiny_model
from train_fixtures import tiny_dinov2

from diffusers_pixeldit.training import FlowMatchingObjective, REPAAlignment, flow_matching_losses, velocity_predictor


def batch(batch_size=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return {
        "pixel_values": torch.rand(batch_size, 3, 8, 8, generator=generator) * 2 - 1,
        "noise": torch.randn(batch_size, 3, 8, 8, generator=generator),
        "u": torch.rand(batch_size, generator=generator),
    }


def test_timeshift_maps_u_to_sigma():
    u = torch.tensor([0.0, 0.25, 0.5, 1.0])
    torch.testing.assert_close(FlowMatchingObjective(shift=1.0).sigmas(u), u)
    torch.testing.assert_close(FlowMatchingObjective(shift=3.0).sigmas(u), torch.tensor([0.0, 0.5, 0.75, 1.0]))


def test_u_is_drawn_from_the_generator():
    objective = FlowMatchingObjective(logit_mean=0.5)
    draws = [objective.sample_u(torch.Generator().manual_seed(seed)) for seed in (1, 1, 2)]
    assert draws[0] == draws[1] != draws[2] and all(0 < u < 1 for u in draws)


def test_logit_normal_u_has_the_requested_median():
    objective = FlowMatchingObjective(logit_mean=1.0)
    generator = torch.Generator().manual_seed(0)
    u = torch.stack([objective.sample_u(generator) for _ in range(2000)])
    assert abs(u.median().item() - 1 / (1 + math.exp(-1.0))) < 0.02


def test_noise_is_unit_gaussian_unless_an_outlier_share_is_set():
    plain = FlowMatchingObjective().sample_noise((4, 1, 64, 64), torch.Generator().manual_seed(0))
    torch.testing.assert_close(plain, torch.randn(4, 1, 64, 64, generator=torch.Generator().manual_seed(0)))
    objective = FlowMatchingObjective(noise_outlier_prob=0.05, noise_outlier_scale=2.5)
    noise = objective.sample_noise((4, 1, 64, 64), torch.Generator().manual_seed(0))
    scaled = ~torch.isclose(noise, plain)
    torch.testing.assert_close(noise[scaled], plain[scaled] * 2.5)  # the same draws, a share of them scaled
    assert abs(scaled.float().mean().item() - 0.05) < 0.01
    assert (noise.abs() > 4).float().mean() > 10 * (plain.abs() > 4).float().mean()


@pytest.mark.parametrize("prob, scale", [(-0.1, 2.0), (1.5, 2.0), (0.1, 0.0)])
def test_outlier_noise_settings_are_checked(prob, scale):
    with pytest.raises(ValueError, match="noise_outlier_prob"):
        FlowMatchingObjective(noise_outlier_prob=prob, noise_outlier_scale=scale)


def test_the_exact_velocity_has_zero_loss():
    data = batch()
    exact = data["noise"] - data["pixel_values"]
    loss = FlowMatchingObjective(shift=3.0).loss(lambda noisy, sigmas: exact, **data)
    assert loss.item() == 0.0


def test_loss_is_the_mean_squared_velocity_error():
    data = batch()
    loss = FlowMatchingObjective().loss(lambda noisy, sigmas: torch.zeros_like(noisy), **data)
    torch.testing.assert_close(loss, ((data["noise"] - data["pixel_values"]) ** 2).mean())


def test_the_model_sees_the_noisy_images_at_the_shifted_sigmas():
    data, seen = batch(), {}

    def predict(noisy, sigmas):
        seen.update(noisy=noisy, sigmas=sigmas)
        return noisy

    FlowMatchingObjective(shift=2.0).loss(predict, **data)
    sigmas = 2 * data["u"] / (1 + data["u"])
    torch.testing.assert_close(seen["sigmas"], sigmas)
    s = sigmas.view(-1, 1, 1, 1)
    torch.testing.assert_close(seen["noisy"], (1 - s) * data["pixel_values"] + s * data["noise"])


def test_cosmap_weights_the_loss():
    data = batch()
    loss = FlowMatchingObjective(weighting_scheme="cosmap").loss(lambda noisy, s: torch.zeros_like(noisy), **data)
    sigmas = data["u"]
    weights = 2 / (math.pi * (1 - 2 * sigmas + 2 * sigmas**2))
    per_sample = ((data["noise"] - data["pixel_values"]) ** 2).flatten(1).mean(1)
    torch.testing.assert_close(loss, (weights * per_sample).mean())


def test_velocity_predictor_feeds_the_timestep_sigma_times_1000():
    model = tiny_model("c2i")
    inputs = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    labels, sigmas = torch.tensor([1, 3]), torch.tensor([0.25, 0.5])
    with torch.no_grad():
        predicted = velocity_predictor(model, class_labels=labels)(inputs, sigmas)
        expected = model(inputs, timestep=torch.tensor([250.0, 500.0]), class_labels=labels).sample
    torch.testing.assert_close(predicted, expected)


@pytest.fixture
def repa():
    """REPA of the first block of a tiny PixelDiT (patch 4) with a tiny DINOv2 (patch 2)."""
    transformer = tiny_model("c2i")
    return REPAAlignment(tiny_dinov2(patch_size=2), transformer.transformer_blocks[0], 4, 16), transformer


def test_repa_encoder_sees_the_images_at_the_transformer_patch_grid(repa):
    alignment, _ = repa
    sizes = []
    alignment.encoder.register_forward_pre_hook(lambda module, args, kwargs: sizes.append(kwargs["pixel_values"].shape[-2:]), with_kwargs=True)  # fmt: skip
    features = alignment.features(torch.zeros(2, 3, 16, 12))
    # a 16 x 12 image has 4 x 3 patches of 4 pixels: the encoder (patches of 2) sees it at 8 x 6.
    assert sizes == [(8, 6)]
    assert features.shape == (2, 4 * 3, 16)


def test_repa_keeps_the_image_tokens_of_a_joint_block():
    transformer = tiny_model("t2i")
    alignment = REPAAlignment(tiny_dinov2(), transformer.transformer_blocks[0], 4, 16)
    with torch.no_grad():
        transformer(
            torch.zeros(2, 3, 16, 8), timestep=torch.tensor([1.0, 2.0]), encoder_hidden_states=torch.zeros(2, 5, 6)
        )
    assert alignment.tokens.shape == (2, 4 * 2, 16)  # 4 x 2 patches, not the 5 text tokens


def test_repa_loss_is_one_minus_the_mean_cosine(repa):
    alignment, transformer = repa
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        transformer(images, timestep=torch.tensor([1.0, 2.0]), class_labels=torch.tensor([0, 1]))
        tokens = alignment.tokens
        projector = alignment.new_projector()
        loss = alignment.loss(projector, images)
    cosine = nn.functional.cosine_similarity(projector(tokens), alignment.features(images), dim=-1)
    torch.testing.assert_close(loss, 1 - cosine.mean())
    assert alignment.tokens is None  # each forward's tokens are used once


def test_training_loss_adds_the_weighted_repa_loss(repa):
    alignment, transformer = repa
    data = {**batch(2), "pixel_values": torch.zeros(2, 3, 16, 16), "noise": torch.ones(2, 3, 16, 16)}
    predict = velocity_predictor(transformer, class_labels=torch.tensor([0, 1]))
    with torch.no_grad():
        losses = flow_matching_losses(
            FlowMatchingObjective(), predict, data, alignment, alignment.new_projector(), 0.5
        )
    assert set(losses) == {"train_loss", "flow_loss", "repa_loss"} and losses["repa_loss"] > 0
    torch.testing.assert_close(losses["train_loss"], losses["flow_loss"] + 0.5 * losses["repa_loss"])


def test_without_repa_the_training_loss_is_the_flow_loss():
    data = batch()
    losses = flow_matching_losses(FlowMatchingObjective(), lambda noisy, s: noisy, data)
    assert set(losses) == {"train_loss", "flow_loss"} and losses["train_loss"] is losses["flow_loss"]


def test_repa_layer_is_one_based_and_bounded():
    with pytest.raises(ValueError, match="at most the 2 patch-level blocks; got 3"):
        REPAAlignment.from_pretrained("unused", tiny_model("c2i"), 3, torch.device("cpu"), torch.float32)
