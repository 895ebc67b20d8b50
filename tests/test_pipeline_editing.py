"""Image-to-image and inpainting pipelines: the strength start step, the exact known region, inputs and errors."""

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler, UniPCMultistepScheduler
from pixeldit_testing import run_demo_as_first_command, tiny_dinov3, tiny_model, tiny_pixeldit2, tiny_text_components

from diffusers_pixeldit import (
    PixelDiT2Img2ImgPipeline,
    PixelDiT2InpaintPipeline,
    PixelDiT2Pipeline,
    PixelDiTFlowScheduler,
    PixelDiTImg2ImgPipeline,
    PixelDiTInpaintPipeline,
    PixelDiTPipeline,
    PixelDiTT2IImg2ImgPipeline,
    PixelDiTT2IInpaintPipeline,
    PixelDiTT2IPipeline,
    release_dpm_solver_scheduler,
)
from diffusers_pixeldit.pipelines.denoising import strength_start_step


KINDS = ["c2i", "t2i", "pixeldit2"]
EDITING = {
    "c2i": (PixelDiTImg2ImgPipeline, PixelDiTInpaintPipeline),
    "t2i": (PixelDiTT2IImg2ImgPipeline, PixelDiTT2IInpaintPipeline),
    "pixeldit2": (PixelDiT2Img2ImgPipeline, PixelDiT2InpaintPipeline),
}
SCHEDULERS = {
    "ab2": lambda: PixelDiTFlowScheduler(shift=2.0),
    "heun": lambda: PixelDiTFlowScheduler(solver="heun", time_grid="uniform"),
    "euler": lambda: FlowMatchEulerDiscreteScheduler(shift=2.0),
    "diffusers_heun": lambda: FlowMatchHeunDiscreteScheduler(shift=2.0),
    "dpm": lambda: release_dpm_solver_scheduler(2.0),
    "unipc": lambda: UniPCMultistepScheduler(use_flow_sigmas=True, flow_shift=2.0, prediction_type="flow_prediction"),
}


def base_pipeline(kind: str, scheduler=None):
    scheduler = scheduler or PixelDiTFlowScheduler(shift=2.0)
    if kind == "c2i":
        pipe = PixelDiTPipeline(tiny_model("c2i"), scheduler, default_guidance_scale=2.0)
    elif kind == "t2i":
        tokenizer, text_encoder = tiny_text_components(width=8)
        transformer = tiny_model("t2i", text_embed_dim=8, max_text_length=12)
        pipe = PixelDiTT2IPipeline(tokenizer, text_encoder, transformer, scheduler, default_guidance_scale=2.0)
    else:
        pipe = PixelDiT2Pipeline(tiny_pixeldit2(), scheduler, tiny_dinov3(hidden_size=16), default_guidance_scale=2.0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def editing_pipeline(kind: str, inpaint: bool, scheduler=None):
    pipe = EDITING[kind][inpaint].from_pipe(base_pipeline(kind, scheduler))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def condition(pipe, n: int = 2) -> dict:
    if isinstance(pipe, PixelDiTT2IPipeline):
        return {"prompt": ["a cat", "a dog", "a red sign"][:n]}
    return {"class_labels": [1, 3, 4][:n]}


def images_in_unit_range(pipe, batch: int = 2, seed: int = 1) -> torch.Tensor:
    """Images with arbitrary float32 values in [0, 1] (tiny ones included, which a [-1, 1] round trip rounds)."""
    size, channels = pipe.transformer.config.sample_size, pipe.transformer.config.in_channels
    images = torch.rand(batch, channels, size, size, generator=torch.Generator().manual_seed(seed))
    images[:, :, 0, :4] = torch.tensor([0.0, 1e-7, 3e-3, 1.0])
    return images


def lower_half_mask(pipe) -> torch.Tensor:
    size = pipe.transformer.config.sample_size
    mask = torch.zeros(1, 1, size, size)
    mask[..., size // 2 :, :] = 1
    return mask


def noise(pipe, batch: int = 2) -> torch.Tensor:
    size, channels = pipe.transformer.config.sample_size, pipe.transformer.config.in_channels
    return torch.randn(batch, channels, size, size, generator=torch.Generator().manual_seed(0))


# ---------------------------------------------------------------- strength


@pytest.mark.parametrize(
    "kind, scheduler",
    [("c2i", "ab2"), ("c2i", "euler"), ("t2i", "dpm"), ("t2i", "unipc"), ("pixeldit2", "heun")],
)
def test_strength_one_with_the_same_noise_is_the_generation_pipeline(kind, scheduler):
    base = base_pipeline(kind, SCHEDULERS[scheduler]())
    expected = base(**condition(base), num_inference_steps=4, latents=noise(base), output_type="pt").images
    pipe = EDITING[kind][0].from_pipe(base)
    image = images_in_unit_range(pipe)
    result = pipe(**condition(pipe), image=image, strength=1.0, num_inference_steps=4, latents=noise(pipe),
                  output_type="pt").images  # fmt: skip
    torch.testing.assert_close(result, expected, rtol=0, atol=0)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("inpaint", [False, True], ids=["img2img", "inpaint"])
def test_strength_zero_returns_the_input_exactly(kind, inpaint):
    pipe = editing_pipeline(kind, inpaint)
    pipe.transformer.forward = None  # no model call may happen
    image = images_in_unit_range(pipe)
    masks = {"mask_image": lower_half_mask(pipe)} if inpaint else {}
    result = pipe(**condition(pipe), image=image, strength=0.0, output_type="pt", **masks).images
    assert torch.equal(result, image)
    pil = pipe.image_processor.numpy_to_pil(pipe.image_processor.pt_to_numpy(image))
    result = pipe(**condition(pipe), image=pil, strength=0.0, output_type="np", **masks).images
    assert np.array_equal(np.round(result * 255).astype(np.uint8), np.stack([np.asarray(p) for p in pil]))


@pytest.mark.parametrize("strength, steps", [(0.5, 8), (0.3, 10), (0.05, 10), (0.99, 5)])
def test_strength_starts_at_diffusers_get_timesteps_step(strength, steps):
    pipe = editing_pipeline("c2i", False)
    timesteps = []
    pipe(**condition(pipe), image=images_in_unit_range(pipe), strength=strength, num_inference_steps=steps,
         callback_on_step_end=lambda p, i, t, kwargs: timesteps.append(float(t)) or kwargs)  # fmt: skip
    init_timestep = min(steps * strength, steps)  # diffusers' FluxImg2ImgPipeline.get_timesteps
    t_start = int(max(steps - init_timestep, 0))
    assert strength_start_step(steps, strength) == t_start
    assert timesteps == pipe.scheduler.timesteps[t_start:].tolist()
    assert len(timesteps) >= 1


def test_adams_bashforth_started_mid_schedule_takes_an_euler_step_first():
    """The official 2-step sampler keeps the previous velocity: a call starting mid-grid must not reuse one from an
    earlier call, and its first step is Euler, then x -= dt·(1.5 v_i − 0.5 v_{i−1})."""
    pipe = editing_pipeline("c2i", False, PixelDiTFlowScheduler(shift=2.0))
    velocities, inputs = [], []

    def record(module, args, kwargs, output):
        inputs.append(kwargs["hidden_states"].clone())
        velocities.append(output[0].float().clone())

    pipe.transformer.register_forward_hook(record, with_kwargs=True)
    image, eps = images_in_unit_range(pipe, batch=1), noise(pipe, batch=1)
    pipe(class_labels=[2], image=image, strength=1.0, num_inference_steps=8, guidance_scale=1.0)  # leaves state
    velocities.clear(), inputs.clear()
    result = pipe(class_labels=[2], image=image, strength=0.5, num_inference_steps=8, guidance_scale=1.0,
                  latents=eps, output_type="latent").images  # fmt: skip
    sigmas = pipe.scheduler.sigmas.float()
    x = sigmas[4] * eps + (1 - sigmas[4]) * (2 * image - 1)
    assert len(velocities) == 4 and torch.equal(inputs[0], x)
    for step, velocity in enumerate(velocities):
        dt = (1 - sigmas[5 + step]) - (1 - sigmas[4 + step])
        x = x - dt * (velocity if step == 0 else 1.5 * velocity - 0.5 * velocities[step - 1])
    torch.testing.assert_close(result, x, rtol=0, atol=1e-6)


def test_heun_started_mid_schedule_evaluates_predictor_and_corrector_per_remaining_step():
    pipe = editing_pipeline("pixeldit2", False, SCHEDULERS["heun"]())
    calls = []
    pipe.transformer.register_forward_pre_hook(lambda module, args, kwargs: calls.append(kwargs["timestep"][0].item()),
                                               with_kwargs=True)  # fmt: skip
    pipe(**condition(pipe), image=images_in_unit_range(pipe), strength=0.5, num_inference_steps=6, output_type="pt")
    assert len(calls) == 2 * 3 - 1  # 3 steps of 6 remain: Heun's 2 evaluations each, a final Euler step
    torch.testing.assert_close(torch.tensor(calls), pipe.scheduler.timesteps[6:].float())


def test_scale_noise_of_the_official_scheduler_follows_diffusers():
    ours = PixelDiTFlowScheduler(shift=2.0, solver="euler")
    ours.set_timesteps(6)
    theirs = FlowMatchEulerDiscreteScheduler(shift=1.0)
    theirs.set_timesteps(sigmas=ours.sigmas[:-1].float().numpy())  # the same grid
    sample, eps = torch.rand(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    for scheduler in (ours, theirs):
        scheduler.set_begin_index(2)
    torch.testing.assert_close(ours.scale_noise(sample, ours.timesteps[2:3], eps),
                               theirs.scale_noise(sample, theirs.timesteps[2:3], eps))  # fmt: skip
    sigma = float(ours.sigmas[2])
    torch.testing.assert_close(ours.scale_noise(sample, ours.timesteps[2:3], eps), sigma * eps + (1 - sigma) * sample)
    ours.step(torch.zeros_like(sample), ours.timesteps[2], sample)  # after a step: the current index's σ
    sigma = float(ours.sigmas[3])
    torch.testing.assert_close(ours.scale_noise(sample, None, eps), sigma * eps + (1 - sigma) * sample)
    fresh = PixelDiTFlowScheduler(shift=2.0)
    fresh.set_timesteps(6)  # no begin index: the timestep's own σ
    sigma = float(fresh.sigmas[4])
    torch.testing.assert_close(fresh.scale_noise(sample, fresh.timesteps[4], eps), sigma * eps + (1 - sigma) * sample)


def test_image_to_image_changes_the_image_less_at_lower_strength():
    pipe = editing_pipeline("c2i", False)
    image = images_in_unit_range(pipe)
    distances = []
    for strength in (0.25, 0.5, 1.0):
        result = pipe(**condition(pipe), image=image, strength=strength, num_inference_steps=8, latents=noise(pipe),
                      output_type="pt").images  # fmt: skip
        distances.append((result - image).abs().mean().item())
    assert distances[0] < distances[1] < distances[2]


# ---------------------------------------------------------------- inpainting


@pytest.mark.parametrize(
    "kind, scheduler",
    [("c2i", "ab2"), ("c2i", "euler"), ("c2i", "diffusers_heun"), ("t2i", "dpm"), ("t2i", "unipc"),
     ("pixeldit2", "heun")],
)  # fmt: skip
@pytest.mark.parametrize("strength", [1.0, 0.6])
def test_inpainting_keeps_the_input_exactly_outside_a_binary_mask(kind, scheduler, strength):
    pipe = editing_pipeline(kind, True, SCHEDULERS[scheduler]())
    image, mask = images_in_unit_range(pipe), lower_half_mask(pipe)
    keep = mask.expand_as(image) == 0
    arguments = dict(**condition(pipe), image=image, mask_image=mask, strength=strength, num_inference_steps=4)
    result = pipe(**arguments, output_type="pt").images
    assert torch.equal(result[keep], image[keep])
    assert (result[~keep] - image[~keep]).abs().mean() > 0.05  # the masked half is repainted
    latents = pipe(**arguments, output_type="latent").images
    assert torch.equal(latents[keep], (2 * image - 1)[keep])
    pil = pipe.image_processor.numpy_to_pil(pipe.image_processor.pt_to_numpy(image))
    pil_mask = PIL.Image.fromarray((mask[0, 0].numpy() * 255).astype(np.uint8))
    results = pipe(**{**arguments, "image": pil, "mask_image": pil_mask}).images
    upper = pipe.transformer.config.sample_size // 2
    for original, result in zip(pil, results):
        assert result.mode == original.mode and np.array_equal(
            np.asarray(result)[:upper], np.asarray(original)[:upper]
        )


@pytest.mark.parametrize("kind, scheduler", [("c2i", "ab2"), ("t2i", "dpm"), ("pixeldit2", "heun")])
def test_the_kept_region_is_the_image_noised_at_each_steps_sigma(kind, scheduler):
    pipe = editing_pipeline(kind, True, SCHEDULERS[scheduler]())
    image, mask, eps = images_in_unit_range(pipe), lower_half_mask(pipe), noise(pipe)
    keep = mask.expand_as(image) == 0
    states = []
    pipe(**condition(pipe), image=image, mask_image=mask, strength=0.75, num_inference_steps=4, latents=eps,
         callback_on_step_end=lambda p, i, t, kwargs: states.append(kwargs["latents"].clone()) or kwargs)  # fmt: skip
    begin = len(pipe.scheduler.timesteps) - len(states)
    for step, state in enumerate(states):
        sigma = pipe.scheduler.sigmas[begin + step + 1].float()
        expected = sigma * eps + (1 - sigma) * (2 * image - 1)
        torch.testing.assert_close(state[keep], expected[keep], rtol=0, atol=1e-6)
    assert torch.equal(states[-1][keep], (2 * image - 1)[keep])


@pytest.mark.parametrize("scheduler", ["ab2", "euler", "dpm"])
def test_the_kept_region_reads_nothing_back_from_the_device_per_step(scheduler):
    from test_denoising import HostReads

    pipe = editing_pipeline("c2i", True, SCHEDULERS[scheduler]())
    image, mask = images_in_unit_range(pipe), lower_half_mask(pipe)
    mode, forward = HostReads(), pipe.transformer.forward

    def forward_uncounted(*args, **kwargs):
        count = mode.count
        try:
            return forward(*args, **kwargs)
        finally:
            mode.count = count  # the model's own (CPU-only) input checks are not the loop's

    pipe.transformer.forward = forward_uncounted
    reads = []
    for steps in (4, 8):
        mode.count = 0
        with mode:
            pipe(**condition(pipe), image=image, mask_image=mask, strength=0.5, num_inference_steps=steps,
                 output_type="latent")  # fmt: skip
        reads.append(mode.count)
    assert reads[0] == reads[1]  # the input checks only, whatever the number of steps


def test_soft_masks_blend_as_documented():
    pipe = editing_pipeline("c2i", True)
    image = images_in_unit_range(pipe)
    mask = torch.linspace(0, 1, 16).view(1, 1, 16, 1).expand(1, 1, 16, 16).clone()
    arguments = dict(**condition(pipe), image=image, mask_image=mask, num_inference_steps=4)
    latents = pipe(**arguments, generator=torch.Generator().manual_seed(0), output_type="latent").images
    result = pipe(**arguments, generator=torch.Generator().manual_seed(0), output_type="pt").images
    generated = (latents / 2 + 0.5).clamp(0, 1)
    torch.testing.assert_close(result, (1 - mask) * image + mask * generated, rtol=0, atol=1e-6)
    assert torch.equal(result[:, :, 0], image[:, :, 0])  # m = 0 on the first row


def test_one_image_per_condition_and_num_images_per_prompt():
    pipe = editing_pipeline("c2i", True)
    image, mask = images_in_unit_range(pipe, batch=2), lower_half_mask(pipe)
    result = pipe(class_labels=[1, 3], image=image, mask_image=mask, num_images_per_prompt=2, num_inference_steps=2,
                  generator=[torch.Generator().manual_seed(i) for i in range(4)], output_type="pt").images  # fmt: skip
    assert result.shape == (4, 3, 16, 16)
    for row, source in enumerate([0, 0, 1, 1]):
        assert torch.equal(result[row, :, :8], image[source, :, :8])
    assert not torch.equal(result[0], result[1])  # each image its own noise


def test_image_types_and_resizing_follow_diffusers_image_processor():
    pipe = editing_pipeline("c2i", True)
    array = np.random.default_rng(0).random((18, 22, 3)).astype(np.float32)  # (H, W, C), not a patch multiple
    mask = np.zeros((18, 22), dtype=np.float32)
    mask[9:] = 1
    result = pipe(class_labels=1, image=array, mask_image=mask, num_inference_steps=2, output_type="np").images
    assert result.shape == (1, 16, 20, 3)  # rounded down to multiples of the patch size 4, as diffusers does
    result = pipe(class_labels=[1, 2], image=[PIL.Image.fromarray((array * 255).astype(np.uint8))] * 2,
                  mask_image=PIL.Image.fromarray((mask * 255).astype(np.uint8)), height=24, width=12,
                  num_inference_steps=2).images  # fmt: skip
    assert len(result) == 2 and result[0].size == (12, 24)


def test_padding_mask_crop_pastes_the_result_over_the_original():
    pipe = editing_pipeline("c2i", True)
    rng = np.random.default_rng(0)
    original = PIL.Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8))
    mask = np.zeros((40, 48), dtype=np.uint8)
    mask[10:18, 20:30] = 255
    result = pipe(class_labels=2, image=original, mask_image=PIL.Image.fromarray(mask), padding_mask_crop=2,
                  num_inference_steps=2).images[0]  # fmt: skip
    assert result.size == original.size and result.mode == "RGB"
    kept = mask == 0
    assert np.array_equal(np.asarray(result)[kept], np.asarray(original)[kept])
    assert not np.array_equal(np.asarray(result)[~kept], np.asarray(original)[~kept])


# ---------------------------------------------------------------- errors


def test_bad_inputs_get_one_clear_error_before_any_model_call():
    pipe = editing_pipeline("c2i", True)
    pipe.transformer.forward = None
    image, mask = images_in_unit_range(pipe), lower_half_mask(pipe)
    call = dict(class_labels=[1, 3], image=image, mask_image=mask, num_inference_steps=4)
    cases = [
        (dict(mask_image=torch.zeros(1, 1, 16, 12)), "mask_image` is 16x12 but `image` is 16x16"),
        (dict(strength=1.5), r"`strength` must be in \[0, 1\]"),
        (dict(strength=-0.1), r"`strength` must be in \[0, 1\]"),
        (dict(strength=1e-17), "leaves no step"),
        (dict(mask_image=None), "`mask_image` is required"),
        (dict(image=None), "`image` is required"),
        (dict(image=2 * image - 1), r"values must be in \[0, 1\]"),
        (dict(image=image[:, :1]), "has 1 channels, the model takes 3"),
        (dict(image=torch.cat([image, image[:1]])), "3 `image` given for 2 conditions: give 1 or 2"),
        (dict(mask_image=torch.cat([mask] * 3)), "3 `mask_image` given for 2 images"),
        (dict(padding_mask_crop=4), "needs `image` and `mask_image` to be one PIL image each"),
        (dict(class_labels=[9]), "out of range"),
    ]
    for overrides, message in cases:
        with pytest.raises(ValueError, match=message):
            pipe(**{**call, **overrides})
    pil = PIL.Image.new("RGB", (16, 16))
    with pytest.raises(ValueError, match="needs `output_type='pil'`"):
        pipe(class_labels=1, image=pil, mask_image=PIL.Image.new("L", (16, 16), 255), padding_mask_crop=2,
             output_type="pt")  # fmt: skip
    pipe.scheduler = release_dpm_solver_scheduler(2.0)
    pipe.scheduler.register_to_config(use_flow_sigmas=False)
    with pytest.raises(ValueError, match="cannot noise an image on the flow"):
        pipe(**call)


# ---------------------------------------------------------------- the embedded digits model


def test_digits_model_inpaints_and_translates_held_out_digits():
    """Cheap versions of benchmarks/eval_editing_digits.py (one held-out digit per class, 10 steps)."""
    from diffusers_pixeldit.digits import DigitClassifier, load_digit_splits, pretrained_digits_path

    inpaint = PixelDiTInpaintPipeline.from_pretrained(pretrained_digits_path("c2i"))
    img2img = PixelDiTImg2ImgPipeline.from_pretrained(pretrained_digits_path("c2i"), transformer=inpaint.transformer)
    for pipe in (inpaint, img2img):
        pipe.set_progress_bar_config(disable=True)
    images, labels = load_digit_splits()["test"]
    index = [int(np.flatnonzero(labels == label)[0]) for label in range(10)]
    originals, labels = images[index], labels[index]
    image = torch.from_numpy(originals).float().div(255).unsqueeze(1)
    classifier, targets = DigitClassifier(), (labels + 3) % 10
    arguments = dict(image=image, num_inference_steps=10, generator=torch.Generator().manual_seed(0))
    own = inpaint(labels.tolist(), mask_image=lower_half_mask(inpaint), **arguments).images
    assert all(np.array_equal(np.asarray(result)[:16], original[:16]) for result, original in zip(own, originals))
    assert (classifier.predict(np.stack([np.asarray(result) for result in own])) == labels).mean() >= 0.9
    translated = img2img(targets.tolist(), strength=0.6, output_type="np", **arguments).images[..., 0]
    assert (classifier.predict(translated) == targets).mean() >= 0.8


def test_demo_inpaint_mode_writes_originals_masks_and_results_without_warnings(tmp_path):
    result = run_demo_as_first_command(
        "--inpaint", "--output_dir", str(tmp_path), "--num_inference_steps", "2", "--threads", "1"
    )
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert "largest change in the kept upper halves: 0.0" in result.stdout
    picture = PIL.Image.open(tmp_path / "digits_editing.png")
    assert picture.size[1] == 5 * (32 * 3 + 2)  # originals, masks, two inpaintings, image-to-image
