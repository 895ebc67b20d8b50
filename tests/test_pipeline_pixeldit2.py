"""PixelDiT2Pipeline: the official grounded samplers, batched CFG, grounding, and the standard pipeline behaviour."""

import json

import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler
from pixeldit_testing import (
    load_pixeldit2_extra,
    load_pixeldit2_fixture,
    pixeldit2_from_official,
    tiny_dinov3,
    tiny_pixeldit2,
    tolerance_check,
)

from diffusers_pixeldit import PixelDiT2Pipeline, PixelDiTFlowScheduler


SAMPLING_TOLERANCE = 1e-4
ID2LABEL = {"0": "zero", "1": "one", "2": "two", "3": "three", "4": "four"}


def official_scheduler(solver: str = "heun") -> PixelDiTFlowScheduler:
    return PixelDiTFlowScheduler(solver=solver, time_grid="uniform")


@pytest.fixture(scope="module")
def official():
    state_dict, encoder, cases, meta = load_pixeldit2_fixture()
    model = pixeldit2_from_official(state_dict, meta["official_config"], sample_size=64)
    return model, encoder, cases, meta


def tiny_pipeline(scheduler=None, **kwargs) -> PixelDiT2Pipeline:
    pipe = PixelDiT2Pipeline(
        tiny_pixeldit2(), scheduler or official_scheduler(), tiny_dinov3(hidden_size=16), id2label=ID2LABEL,
        default_num_inference_steps=4, default_guidance_scale=2.0, default_guidance_interval=(0.1, 0.9), **kwargs,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe, seed=0, **kwargs):
    kwargs = {"class_labels": [1, 3], "output_type": "latent", **kwargs}
    return pipe(generator=torch.Generator().manual_seed(seed), **kwargs).images


def record_calls(pipe):
    """Batch sizes of the transformer's and the grounding encoder's calls."""
    calls = {"transformer": [], "encoder": []}
    for name, module in (("transformer", pipe.transformer), ("encoder", pipe.grounding_encoder)):
        module.register_forward_pre_hook(
            lambda module, args, kwargs, name=name: calls[name].append(
                (args[0] if args else next(iter(kwargs.values()))).shape[0]
            ),
            with_kwargs=True,
        )
    return calls


# ---------------------------------------------------------------- official parity


@pytest.mark.parametrize("solver", ["heun", "euler"])
def test_official_grounded_samplers(official, solver):
    model, encoder, cases, meta = official
    sampler = meta["sampler"]
    pipe = PixelDiT2Pipeline(model, official_scheduler(solver), encoder)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(
        class_labels=cases["sample.class_labels"].tolist(), num_inference_steps=sampler["num_steps"],
        guidance_scale=sampler["guidance_scale"], guidance_interval=sampler["guidance_interval"],
        latents=cases["sample.noise"], output_type="latent",
    ).images  # fmt: skip
    passed, message = tolerance_check(
        images, cases[f"sample.{solver}.out_official"], cases[f"sample.{solver}.out_official_fp64"], SAMPLING_TOLERANCE
    )
    assert passed, message


def test_one_batched_forward_per_evaluation_and_the_encoder_on_the_conditional_half_only(official):
    model, encoder, cases, meta = official
    pipe = PixelDiT2Pipeline(model, official_scheduler(), encoder)
    pipe.set_progress_bar_config(disable=True)
    calls = record_calls(pipe)
    sampler = meta["sampler"]
    pipe(class_labels=[1, 2], num_inference_steps=sampler["num_steps"], guidance_scale=sampler["guidance_scale"],
         guidance_interval=sampler["guidance_interval"], output_type="latent")  # fmt: skip
    # Heun: 2N − 1 evaluations, each one forward; batch 4 (uncond + cond) where t is a guided grid point
    grid = meta["time_grid"]
    points = [grid[0]] + [t for t in grid[1:-1] for _ in (0, 1)]
    guided = set(meta["guided_grid_points"])
    assert calls["transformer"] == [4 if t in guided else 2 for t in points]
    assert calls["encoder"] == [2] * len(points)


def test_zero_lower_bound_guides_from_pure_noise():
    pipe = tiny_pipeline(official_scheduler("euler"))
    calls = record_calls(pipe)
    generate(pipe, num_inference_steps=4, guidance_interval=(0.0, 0.6))
    # t = 0, 0.25, 0.5 guided (no lower bound), 0.75 not (t < 0.6 fails)
    assert calls["transformer"] == [4, 4, 4, 2]


def test_noise_scale_of_the_model_scales_the_starting_noise():
    pipe = tiny_pipeline()
    starts = []
    pipe.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: starts.append(kwargs["hidden_states"]), with_kwargs=True
    )
    noise = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    generate(pipe, latents=noise, num_inference_steps=1)
    pipe.transformer.register_to_config(noise_scale=2.0)
    generate(pipe, latents=noise, num_inference_steps=1)
    assert torch.equal(starts[0], noise) and torch.equal(starts[1], 2 * noise)
    assert starts[0].dtype == torch.float32  # the transformer gets the float32 state


# ---------------------------------------------------------------- components


def test_grounding_encoder_is_required_and_checked():
    pipe = tiny_pipeline()
    with pytest.raises(ValueError, match="width 32 is not the transformer's grounding_embed_dim 16"):
        PixelDiT2Pipeline(pipe.transformer, pipe.scheduler, tiny_dinov3(hidden_size=32))
    without = PixelDiT2Pipeline(pipe.transformer, pipe.scheduler)
    with pytest.raises(ValueError, match="needs its grounding encoder"):
        without(class_labels=[0])
    with pytest.raises(ValueError, match="DINOv3ViTModel"):
        PixelDiT2Pipeline(pipe.transformer, pipe.scheduler, torch.nn.Linear(2, 2))


def test_grounding_encoder_stays_in_eval_mode():
    pipe = tiny_pipeline()
    assert not pipe.grounding_encoder.training
    expected = generate(pipe)
    pipe.grounding_encoder.train()  # e.g. by a training loop
    assert torch.equal(generate(pipe), expected) and not pipe.grounding_encoder.training


def test_save_load_round_trip_with_and_without_the_encoder(tmp_path):
    pipe = tiny_pipeline()
    expected = generate(pipe)
    pipe.save_pretrained(tmp_path / "full")
    model_index = json.loads((tmp_path / "full" / "model_index.json").read_text())
    assert model_index["grounding_encoder"] == ["transformers", "DINOv3ViTModel"]
    assert model_index["transformer"] == ["diffusers_pixeldit", "PixelDiT2Transformer2DModel"]
    loaded = PixelDiT2Pipeline.from_pretrained(tmp_path / "full")
    loaded.set_progress_bar_config(disable=True)
    torch.testing.assert_close(generate(loaded), expected, rtol=0, atol=1e-5)
    # a folder without the (licence-gated) encoder, which is passed at loading time
    PixelDiT2Pipeline(pipe.transformer, pipe.scheduler, id2label=ID2LABEL, default_num_inference_steps=4,
                      default_guidance_scale=2.0, default_guidance_interval=(0.1, 0.9)).save_pretrained(tmp_path / "bare")  # fmt: skip
    bare = PixelDiT2Pipeline.from_pretrained(tmp_path / "bare", grounding_encoder=pipe.grounding_encoder)
    bare.set_progress_bar_config(disable=True)
    torch.testing.assert_close(generate(bare), expected, rtol=0, atol=1e-5)


# ---------------------------------------------------------------- standard behaviour


def test_diffusers_flow_match_euler_is_the_official_euler_sampler(official):
    model, encoder, cases, meta = official
    sampler = meta["sampler"]
    pipe = PixelDiT2Pipeline(model, FlowMatchEulerDiscreteScheduler(shift=1.0), encoder)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(
        class_labels=cases["sample.class_labels"].tolist(), num_inference_steps=sampler["num_steps"],
        guidance_scale=sampler["guidance_scale"], guidance_interval=sampler["guidance_interval"],
        latents=cases["sample.noise"], output_type="latent",
    ).images  # fmt: skip
    assert (images - cases["sample.euler.out_official"]).abs().max() <= SAMPLING_TOLERANCE


@pytest.mark.parametrize(
    "scheduler",
    [
        DPMSolverMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction"),
        UniPCMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction"),
    ],
    ids=["dpm_solver", "unipc"],
)
def test_diffusers_multistep_schedulers_converge_to_the_official_heun_solution(scheduler):
    # unguided; the clamped velocity is stiff near the image end, so all solvers converge slowly there
    # (measured: 1/8 of the 12-step error at 48 steps for Heun, 1/6 for DPM-Solver++ and UniPC)
    pipe = tiny_pipeline()
    reference = generate(pipe, num_inference_steps=96, guidance_scale=1.0)
    pipe.scheduler = scheduler
    errors = [(generate(pipe, num_inference_steps=n, guidance_scale=1.0) - reference).abs().max() for n in (12, 48)]
    assert errors[1] < 0.3 * errors[0] and errors[1] < 0.1 * reference.abs().max()


def test_class_names_batches_and_outputs():
    pipe = tiny_pipeline()
    assert torch.equal(generate(pipe, class_labels=["one", 3]), generate(pipe, class_labels=[1, 3]))
    assert generate(pipe, num_images_per_prompt=2, height=16, width=24).shape == (4, 3, 16, 24)
    pil = generate(pipe, output_type="pil")
    assert len(pil) == 2 and pil[0].size == (32, 32)
    with pytest.raises(ValueError, match="Unknown class names"):
        generate(pipe, class_labels=["tree"])
    with pytest.raises(ValueError, match=r"Class ids \[5\] are out of range"):
        generate(pipe, class_labels=[5])
    with pytest.raises(ValueError, match="multiples of the patch size 8"):
        generate(pipe, height=20)


@pytest.mark.parametrize(
    "config, run",
    [("p2_nonsquare", "heun_n8"), ("p2_nonsquare", "euler_n10_lo0"), ("p2_patch8_resize", "heun_n6_noise2"),
     ("p2_patch8_resize", "heun_n24_noise2_clamp"), ("p2_no_in_context", "heun_n5")],
)  # fmt: skip
def test_official_samplers_on_more_configurations(config, run):
    # non-square, a lower bound of 0, noise scale 2 with the clamp acting, the encoder resize, no in-context tokens
    model, encoder, tensors, meta = load_pixeldit2_extra(config)
    spec = meta["runs"][run]
    model.register_to_config(noise_scale=spec["noise_scale"])
    pipe = PixelDiT2Pipeline(model, official_scheduler(spec["sampler"]), encoder)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(
        class_labels=spec["class_labels"], height=meta["height"], width=meta["width"],
        num_inference_steps=spec["num_steps"], guidance_scale=spec["guidance_scale"],
        guidance_interval=spec["guidance_interval"], latents=tensors[f"{run}.noise"], output_type="latent",
    ).images  # fmt: skip
    passed, message = tolerance_check(
        images, tensors[f"{run}.out_official"], tensors[f"{run}.out_official_fp64"], meta["tolerance"][run]
    )
    assert passed, message
