import json
import os
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import (
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
    FlowMatchHeunDiscreteScheduler,
    UniPCMultistepScheduler,
)
from peft import LoraConfig
from pixeldit_testing import (
    FIXTURES,
    compiled_only_at_new_batch_sizes,
    load_official_fixture,
    model_from_official,
    record_compilations,
    tiny_model,
    tolerance_check,
)
from safetensors.torch import load_file
from torch._dynamo.testing import CompileCounterWithBackend

from diffusers_pixeldit import PixelDiTFlowScheduler, PixelDiTPipeline, PixelDiTTransformer2DModel


SAMPLING_TOLERANCE = 1e-4
ID2LABEL = {"0": "zero, nought", "1": "one", "2": "two", "3": "three", "4": "four"}


def tiny_pipeline(scheduler=None, **kwargs) -> PixelDiTPipeline:
    pipe = PixelDiTPipeline(
        tiny_model("c2i"), scheduler or PixelDiTFlowScheduler(shift=2.0), id2label=ID2LABEL,
        default_num_inference_steps=6, default_guidance_scale=3.0, default_guidance_interval=(0.1, 0.9), **kwargs,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe, seed=0, **kwargs):
    kwargs = {"class_labels": [1, 3], "output_type": "latent", **kwargs}
    return pipe(generator=torch.Generator().manual_seed(seed), **kwargs).images


# ---------------------------------------------------------------- official parity


def check_official_sampling_fixture(model: PixelDiTTransformer2DModel, solver: str, case: str):
    _, cases, meta = load_official_fixture("c2i_tiny")
    sampler = meta["sampler"]
    pipe = PixelDiTPipeline(model, PixelDiTFlowScheduler(shift=sampler["timeshift"], solver=solver))
    pipe.set_progress_bar_config(disable=True)
    images = pipe(
        class_labels=cases["sample.class_labels"].tolist(),
        num_inference_steps=sampler["num_steps"],
        guidance_scale=sampler["guidance_scale"],
        guidance_interval=sampler["guidance_interval"],
        latents=cases["sample.noise"],
        output_type="latent",
    ).images
    passed, message = tolerance_check(
        images, cases[f"sample.{case}.out_official"], cases[f"sample.{case}.out_official_fp64"], SAMPLING_TOLERANCE
    )
    assert passed, message


@pytest.mark.parametrize("solver, case", [("adams_bashforth", "flow_dpm_solver"), ("euler", "euler")])
def test_official_sampling_fixture(solver, case):
    state_dict, _, _ = load_official_fixture("c2i_tiny")
    check_official_sampling_fixture(model_from_official(state_dict, sample_size=32), solver, case)


def test_fused_and_compiled_transformer_keeps_official_parity():
    # The fast set-up: fused q/k/v projections and compiled repeated blocks (inductor), without graph breaks, at
    # batch 2 (outside the CFG interval: the fixture's first two steps) and 4 (inside it). The blocks compile at the
    # first step of each batch size only — per block class a graph for batch 2, then, with a dynamic batch size, one
    # for the first block (its input is a view, of the embedding's output) and one for the others — and a second
    # sampling compiles nothing.
    state_dict, _, _ = load_official_fixture("c2i_tiny")
    model = model_from_official(state_dict, sample_size=32)
    model.fuse_qkv_projections()
    counter = CompileCounterWithBackend("inductor")
    model.compile_repeated_blocks(fullgraph=True, backend=counter)
    torch.compiler.reset()
    try:
        calls = record_compilations(model, counter)
        check_official_sampling_fixture(model, "adams_bashforth", "flow_dpm_solver")
        assert {batch_size for batch_size, _ in calls} == {2, 4}
        assert compiled_only_at_new_batch_sizes(calls) and counter.frame_count == 2 * 3
        with torch._dynamo.config.patch(error_on_recompile=True):
            check_official_sampling_fixture(model, "adams_bashforth", "flow_dpm_solver")
        assert counter.frame_count == 2 * 3
    finally:
        torch.compiler.reset()


def test_official_euler_fixture_with_diffusers_flow_match_euler():
    state_dict, cases, meta = load_official_fixture("c2i_tiny")
    sampler = meta["sampler"]
    pipe = PixelDiTPipeline(
        model_from_official(state_dict, sample_size=32), FlowMatchEulerDiscreteScheduler(shift=sampler["timeshift"])
    )
    pipe.set_progress_bar_config(disable=True)
    images = pipe(
        class_labels=cases["sample.class_labels"].tolist(), num_inference_steps=sampler["num_steps"],
        guidance_scale=sampler["guidance_scale"], guidance_interval=sampler["guidance_interval"],
        latents=cases["sample.noise"], output_type="latent",
    ).images  # fmt: skip
    assert (images - cases["sample.euler.out_official"]).abs().max() <= SAMPLING_TOLERANCE


@pytest.mark.parametrize("run", ["c2i_p2_nonsquare.ab2_n10", "c2i_p2_nonsquare.euler_n20", "c2i_p8_wide.ab2_shift3"])
def test_official_sampling_other_configurations(extra_configs, run):
    meta, tensors = extra_configs
    spec = json.loads((FIXTURES / "official_extra_sampling.json").read_text())["runs"][run]
    runs = load_file(FIXTURES / "official_extra_sampling.safetensors")
    name = spec["model"]
    prefix = f"{name}.official_state_dict."
    model = model_from_official({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})
    solver = "adams_bashforth" if spec["sampler"] == "flow_dpm_solver" else "euler"
    pipe = PixelDiTPipeline(model, PixelDiTFlowScheduler(shift=spec["timeshift"], solver=solver))
    pipe.set_progress_bar_config(disable=True)
    images = pipe(
        class_labels=spec["class_labels"], height=meta[name]["height"], width=meta[name]["width"],
        num_inference_steps=spec["num_steps"], guidance_scale=spec["guidance_scale"],
        guidance_interval=spec["guidance_interval"], latents=runs[f"{run}.noise"], output_type="latent",
    ).images  # fmt: skip
    passed, message = tolerance_check(
        images, runs[f"{run}.out_official"], runs[f"{run}.out_official_fp64"], SAMPLING_TOLERANCE
    )
    assert passed, message


# ---------------------------------------------------------------- CFG interval and guidance


def count_batches(pipe):
    sizes = []
    forward = pipe.transformer.forward

    def counting_forward(*args, **kwargs):
        sizes.append(kwargs["hidden_states"].shape[0])
        return forward(*args, **kwargs)

    pipe.transformer.forward = counting_forward
    return sizes


def test_unconditional_branch_is_skipped_outside_the_interval():
    pipe = tiny_pipeline(PixelDiTFlowScheduler(shift=1.0))
    sizes = count_batches(pipe)
    generate(pipe, class_labels=[0, 2], num_inference_steps=10, guidance_interval=(0.1, 0.9))
    # the official decisions for 10 steps, shift 1, [0.1, 0.9]: steps 2..8 guided (test_scheduler.py)
    assert sizes == [2, 2] + [4] * 7 + [2]
    sizes.clear()
    generate(pipe, class_labels=[0, 2], num_inference_steps=10, guidance_scale=1.0)
    assert sizes == [2] * 10


def test_guidance_interval_changes_only_what_it_should():
    pipe = tiny_pipeline()
    full = generate(pipe, guidance_interval=(0.0, 1.0))
    assert not torch.allclose(full, generate(pipe, guidance_interval=(0.5, 1.0)))
    # an empty interval is plain conditional sampling
    torch.testing.assert_close(generate(pipe, guidance_interval=(0.5, 0.5)), generate(pipe, guidance_scale=1.0))


def test_callback_changes_guidance_mid_run():
    pipe = tiny_pipeline()
    reference = generate(pipe, guidance_interval=(0.0, 1.0))

    def increase_guidance(pipe, i, t, callback_kwargs):
        pipe._guidance_scale += 1.0
        return callback_kwargs

    changed = generate(pipe, guidance_interval=(0.0, 1.0), callback_on_step_end=increase_guidance)
    assert pipe.guidance_scale == 3.0 + pipe.num_timesteps
    assert not torch.allclose(changed, reference)


def test_callback_outputs_are_used():
    pipe = tiny_pipeline()
    seen = []

    def zero_at_last_step(pipe, i, t, callback_kwargs):
        seen.append(set(callback_kwargs))
        if i == pipe.num_timesteps - 1:
            callback_kwargs["latents"] = torch.zeros_like(callback_kwargs["latents"])
        return callback_kwargs

    images = generate(pipe, callback_on_step_end=zero_at_last_step, callback_on_step_end_tensor_inputs=["latents"])
    assert images.abs().sum() == 0 and seen == [{"latents"}] * 6
    with pytest.raises(ValueError, match="not in \\['latents'\\]"):
        generate(pipe, callback_on_step_end=zero_at_last_step, callback_on_step_end_tensor_inputs=["prompt_embeds"])


# ---------------------------------------------------------------- timeshift


def test_shift_per_call_and_on_the_scheduler():
    pipe = tiny_pipeline(PixelDiTFlowScheduler(shift=1.0))
    unshifted = generate(pipe)
    per_call = generate(pipe, shift=3.0)
    assert not torch.allclose(per_call, unshifted)
    assert pipe.scheduler.shift == 1.0  # a per-call shift leaves the pipeline's scheduler alone
    pipe.scheduler.set_shift(3.0)
    assert torch.equal(generate(pipe), per_call)
    pipe.scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0)
    euler_unshifted = generate(pipe)
    assert not torch.allclose(generate(pipe, shift=3.0), euler_unshifted)
    assert pipe.scheduler.shift == 1.0


# ---------------------------------------------------------------- schedulers


@pytest.fixture(scope="module")
def accurate_solution():
    """The unguided sampling ODE of `tiny_pipeline`, solved with 200 Heun steps (second order)."""
    pipe = tiny_pipeline(FlowMatchHeunDiscreteScheduler(shift=2.0))
    return generate(pipe, num_inference_steps=200, guidance_scale=1.0)


@pytest.mark.parametrize(
    "scheduler, order",
    [
        (FlowMatchEulerDiscreteScheduler(shift=2.0), 1),
        (PixelDiTFlowScheduler(shift=2.0, solver="euler"), 1),
        (FlowMatchHeunDiscreteScheduler(shift=2.0), 2),
        (DPMSolverMultistepScheduler(use_flow_sigmas=True, flow_shift=2.0, prediction_type="flow_prediction"), 2),
        (UniPCMultistepScheduler(use_flow_sigmas=True, flow_shift=2.0, prediction_type="flow_prediction"), 2),
        (PixelDiTFlowScheduler(shift=2.0, solver="adams_bashforth"), 2),
    ],
    ids=["euler", "pixeldit_euler", "heun", "dpm_solver", "unipc", "pixeldit_ab2"],
)
def test_schedulers_converge_to_the_ode_solution_at_their_order(accurate_solution, scheduler, order):
    # 4x the steps divides a first-order solver's error by about 4, a second-order one's by about 16
    # (measured: 0.24 for Euler, 0.04-0.15 for the second-order solvers).
    pipe = tiny_pipeline(scheduler)
    errors = [
        (generate(pipe, num_inference_steps=n, guidance_scale=1.0) - accurate_solution).abs().max() for n in (8, 32)
    ]
    ratio = errors[1] / errors[0]
    assert (0.15 < ratio < 0.35) if order == 1 else ratio < 0.16, ratio
    assert errors[1] < 0.01 * accurate_solution.abs().max()


def test_custom_sigmas():
    pipe = tiny_pipeline(FlowMatchEulerDiscreteScheduler(shift=1.0))
    default = generate(pipe, num_inference_steps=6)
    assert torch.equal(generate(pipe, sigmas=np.linspace(1.0, 1 / 6, 6).tolist()), default)
    pipe.scheduler = DPMSolverMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction")
    with pytest.raises(ValueError, match="does not accept custom `sigmas`"):
        generate(pipe, sigmas=[1.0, 0.5])


# ---------------------------------------------------------------- standard pipeline behaviour


def test_same_generator_same_images_and_batch_equals_items():
    pipe = tiny_pipeline()
    assert torch.equal(generate(pipe, seed=3), generate(pipe, seed=3))
    assert not torch.allclose(generate(pipe, seed=3), generate(pipe, seed=4))
    generators = [torch.Generator().manual_seed(s) for s in (10, 11, 12)]
    batch = pipe(class_labels=[0, 4, 2], generator=generators, output_type="latent").images
    for label, seed, image in zip([0, 4, 2], (10, 11, 12), batch):
        single = generate(pipe, seed=seed, class_labels=[label])
        torch.testing.assert_close(image[None], single, rtol=0, atol=1e-5)


def test_latents_pass_through():
    pipe = tiny_pipeline()
    noise = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert torch.equal(generate(pipe, latents=noise), generate(pipe, seed=0))
    with pytest.raises(ValueError, match="`latents` must have shape"):
        generate(pipe, latents=torch.randn(2, 3, 8, 8))


def test_num_images_per_prompt_and_output_types():
    pipe = tiny_pipeline()
    raw = generate(pipe, num_images_per_prompt=3, height=8, width=24)
    assert raw.shape == (6, 3, 8, 24)
    pt = generate(pipe, output_type="pt")
    assert pt.shape == (2, 3, 16, 16) and 0 <= pt.min() and pt.max() <= 1
    torch.testing.assert_close(pt, (generate(pipe) / 2 + 0.5).clamp(0, 1))
    np_images = generate(pipe, output_type="np")
    assert np_images.shape == (2, 16, 16, 3) and np.allclose(np_images, pt.permute(0, 2, 3, 1).numpy())
    pil = generate(pipe, output_type="pil")
    assert len(pil) == 2 and isinstance(pil[0], PIL.Image.Image) and pil[0].size == (16, 16)
    assert np.array_equal(np.asarray(pil[0]), (np_images[0] * 255).round().astype(np.uint8))
    (images,) = pipe(class_labels=[1], return_dict=False, output_type="latent")
    assert images.shape == (1, 3, 16, 16)


def test_class_labels_by_name_and_validation():
    pipe = tiny_pipeline()
    assert pipe.get_label_ids(["nought", "three"]) == [0, 3]
    assert torch.equal(generate(pipe, class_labels=["one", 3]), generate(pipe, class_labels=[1, 3]))
    with pytest.raises(ValueError, match=r"Unknown class names \['tree'\].*three"):
        generate(pipe, class_labels=["tree"])
    with pytest.raises(ValueError, match=r"Class ids \[5, -1\] are out of range.*0 to 4"):
        generate(pipe, class_labels=[1, 5, -1])
    with pytest.raises(ValueError, match="multiples of the patch size 4, got 18x16"):
        generate(pipe, height=18)
    with pytest.raises(ValueError, match="low <= high"):
        generate(pipe, guidance_interval=(0.8, 0.2))
    with pytest.raises(ValueError, match="3 generators were given for a batch of 2"):
        pipe(class_labels=[0, 1], generator=[torch.Generator()] * 3)


def test_imagenet_labels_by_default():
    with torch.device("meta"):
        transformer = PixelDiTTransformer2DModel(num_layers=1, num_pixel_layers=1)
    pipe = PixelDiTPipeline(transformer, PixelDiTFlowScheduler())
    assert len(pipe.config.id2label) == 1000 and pipe.get_label_ids(["golden retriever", "tench"]) == [207, 0]


def test_defaults_come_from_the_config():
    pipe = tiny_pipeline()
    explicit = generate(pipe, num_inference_steps=6, guidance_scale=3.0, guidance_interval=(0.1, 0.9))
    assert torch.equal(generate(pipe), explicit)
    sizes = count_batches(pipe)
    generate(pipe)
    assert len(sizes) == 6


def test_save_load_round_trip(tmp_path):
    pipe = tiny_pipeline()
    expected = generate(pipe)
    pipe.save_pretrained(tmp_path)
    model_index = json.loads((tmp_path / "model_index.json").read_text())
    assert model_index["transformer"] == ["diffusers_pixeldit", "PixelDiTTransformer2DModel"]
    assert model_index["scheduler"] == ["diffusers_pixeldit", "PixelDiTFlowScheduler"]
    assert model_index["id2label"] == ID2LABEL and model_index["default_guidance_interval"] == [0.1, 0.9]
    loaded = PixelDiTPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.config.id2label == ID2LABEL and loaded.labels == pipe.labels
    torch.testing.assert_close(generate(loaded), expected, rtol=0, atol=1e-5)
    bf16 = PixelDiTPipeline.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert bf16.transformer.dtype == torch.bfloat16


def test_loads_from_a_hub_repo_id_offline(tmp_path):
    pipe = tiny_pipeline()
    expected = generate(pipe)
    # A pre-populated Hugging Face cache: models--org--name/{refs/main, snapshots/<commit>/...}
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--pixeldit-org--tiny-c2i"
    pipe.save_pretrained(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    torch.save(expected, tmp_path / "expected.pt")
    script = (
        "import torch; from diffusers_pixeldit import PixelDiTPipeline\n"
        "pipe = PixelDiTPipeline.from_pretrained('pixeldit-org/tiny-c2i')\n"
        "pipe.set_progress_bar_config(disable=True)\n"
        "images = pipe(class_labels=[1, 3], generator=torch.Generator().manual_seed(0), output_type='latent').images\n"
        f"torch.testing.assert_close(images, torch.load({str(tmp_path / 'expected.pt')!r}), rtol=0, atol=1e-5)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def test_model_cpu_offload():
    pipe = tiny_pipeline()
    expected = generate(pipe)
    pipe.enable_model_cpu_offload(device="cpu")
    assert torch.equal(generate(pipe), expected)
    assert torch.equal(generate(pipe), expected)  # hooks survive a second call


def test_half_precision_transformer_keeps_the_state_in_float32():
    pipe = tiny_pipeline()
    reference = generate(pipe)
    pipe.transformer.to(torch.bfloat16)
    dtypes = []

    def record(pipe, i, t, callback_kwargs):
        dtypes.append((callback_kwargs["latents"].dtype, t.dtype))
        return callback_kwargs

    images = generate(pipe, callback_on_step_end=record)
    assert set(dtypes) == {(torch.float32, torch.float32)} and images.dtype == torch.float32
    assert (images - reference).abs().max() < 0.1 * reference.abs().max()


def test_lora_scale_reaches_the_transformer():
    pipe = tiny_pipeline()
    base = generate(pipe)
    pipe.transformer.add_adapter(LoraConfig(r=2, target_modules=["to_q", "to_v"], init_lora_weights="gaussian"))
    with torch.no_grad():
        for name, param in pipe.transformer.named_parameters():
            if "lora_B" in name:
                param.normal_()
    assert not torch.allclose(generate(pipe), base)
    torch.testing.assert_close(generate(pipe, attention_kwargs={"scale": 0.0}), base, rtol=0, atol=1e-5)


def test_components_and_call_signature():
    pipe = tiny_pipeline()
    assert set(pipe.components) == {"transformer", "scheduler"}
    import inspect

    parameters = inspect.signature(pipe.__call__).parameters
    for name in ["num_inference_steps", "num_images_per_prompt", "generator", "latents", "output_type", "return_dict"]:
        assert parameters[name].default is not inspect.Parameter.empty, name


def test_bf16_weights_with_float32_compute_beat_a_pure_bf16_transformer():
    # On CPUs without native bf16 (AVX2) bf16 GEMMs are emulated; storing bf16 and computing in fp32 with diffusers'
    # layerwise casting is the fast bf16 path, and more accurate.
    pipe = tiny_pipeline()
    reference = generate(pipe)
    pipe.transformer.enable_layerwise_casting(storage_dtype=torch.bfloat16, compute_dtype=torch.float32)
    assert pipe.transformer.transformer_blocks[0].attn.to_q.weight.dtype == torch.bfloat16
    assert pipe.transformer.dtype == torch.float32  # what the pipeline casts its inputs to
    casting_error = (generate(pipe) - reference).abs().max()
    pure = tiny_pipeline()
    pure.transformer.to(torch.bfloat16)
    pure_error = (generate(pure) - reference).abs().max()
    assert casting_error < pure_error < 0.1 * reference.abs().max()


def test_official_sampling_with_post_modulation_pixel_blocks():
    spec = json.loads((FIXTURES / "postmod_extra.json").read_text())["runs"]["postmod_nonsquare_p8.ab2_n8"]
    tensors = load_file(FIXTURES / "postmod_extra.safetensors")
    prefix = "postmod_nonsquare_p8.official_state_dict."
    model = model_from_official({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})
    pipe = PixelDiTPipeline(model, PixelDiTFlowScheduler(shift=spec["timeshift"]))
    pipe.set_progress_bar_config(disable=True)
    images = pipe(
        class_labels=spec["class_labels"], height=32, width=48, num_inference_steps=spec["num_steps"],
        guidance_scale=spec["guidance_scale"], guidance_interval=spec["guidance_interval"],
        latents=tensors["postmod_nonsquare_p8.ab2_n8.noise"], output_type="latent",
    ).images  # fmt: skip
    passed, message = tolerance_check(
        images,
        tensors["postmod_nonsquare_p8.ab2_n8.out_official"],
        tensors["postmod_nonsquare_p8.ab2_n8.out_official_fp64"],
        SAMPLING_TOLERANCE,
    )
    assert passed, message
