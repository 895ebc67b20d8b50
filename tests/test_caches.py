"""diffusers' caches (`transformer.enable_cache`) on every PixelDiT model, through the pipelines' denoising loop.

Every sampling call here batches two conditions with `num_images_per_prompt=2`, has a callback that changes the
latents, and a CFG interval that switches the batch size twice (conditional only, then `[uncond, cond]`, then
conditional only). The work a call does is counted as rows through the patch blocks' attention outputs and
feed-forwards (a forward hook on a block would also see the blocks a cache skips: they are still called).
"""

import ast
import contextlib
import io
from typing import Callable, NamedTuple

import pytest
import torch
from diffusers.hooks import FirstBlockCacheConfig, MagCacheConfig, TaylorSeerCacheConfig
from pixeldit_testing import tiny_dinov3, tiny_model, tiny_pixeldit2, tiny_text_components

from diffusers_pixeldit import PixelDiT2Pipeline, PixelDiTFlowScheduler, PixelDiTPipeline, PixelDiTT2IPipeline
from diffusers_pixeldit.caching import (
    calibrate_mag_ratios,
    faster_cache_config,
    mag_cache_config,
    num_model_evaluations,
    pyramid_attention_broadcast_config,
    whole_step_cache_config,
)
from diffusers_pixeldit.digits import pretrained_digits_path


NUM_STEPS = 6
# t = 1 − σ on the 6-step grid is 0, 1/6, ..., 5/6: guided at steps 2 and 3 only.
GUIDANCE_INTERVAL = (0.25, 0.6)
BATCH = 4  # 2 conditions x 2 images
LAYOUT = [BATCH, BATCH, 2 * BATCH, 2 * BATCH, BATCH, BATCH]  # rows per step without a cache
KINDS = ["c2i", "t2i", "pixeldit2"]


def make_pipeline(kind: str):
    if kind == "c2i":
        pipe = PixelDiTPipeline(tiny_model("c2i"), PixelDiTFlowScheduler())
    elif kind == "t2i":
        tokenizer, text_encoder = tiny_text_components(width=8)
        pipe = PixelDiTT2IPipeline(
            tokenizer, text_encoder, tiny_model("t2i", text_embed_dim=8, max_text_length=12), PixelDiTFlowScheduler()
        )
    else:
        pipe = PixelDiT2Pipeline(tiny_pixeldit2(), PixelDiTFlowScheduler(), tiny_dinov3(hidden_size=16))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def damp_latents(pipe, i, t, callback_kwargs):
    if i == 1:
        callback_kwargs["latents"] = 0.9 * callback_kwargs["latents"]
    return callback_kwargs


def generate(pipe, **kwargs):
    condition = {"prompt": ["a cat", "a dog"]} if isinstance(pipe, PixelDiTT2IPipeline) else {"class_labels": [1, 3]}
    kwargs = {
        **condition,
        "num_images_per_prompt": 2,
        "num_inference_steps": NUM_STEPS,
        "guidance_scale": 3.0,
        "guidance_interval": GUIDANCE_INTERVAL,
        "callback_on_step_end": damp_latents,
        "output_type": "latent",
        **kwargs,
    }
    return pipe(generator=torch.Generator().manual_seed(0), **kwargs).images


def generate_counting(pipe, **kwargs) -> tuple[torch.Tensor, dict]:
    """The images and the rows computed by the patch blocks' attention outputs ("attn") and feed-forwards ("ff")."""
    rows, hooks = {"attn": 0, "ff": 0}, []
    for block in pipe.transformer.transformer_blocks:
        for name, layer in (("attn", block.attn.to_out[0]), ("ff", block.ff)):

            def count(module, args, output, name=name):
                rows[name] += args[0].shape[0]

            hooks.append(layer.register_forward_hook(count))
    try:
        return generate(pipe, **kwargs), rows
    finally:
        for hook in hooks:
            hook.remove()


@pytest.fixture(scope="module", params=KINDS)
def kind_pipeline(request):
    """(pipeline, its never-cached images and work)."""
    pipe = make_pipeline(request.param)
    images, rows = generate_counting(pipe)
    num_blocks = len(pipe.transformer.transformer_blocks)
    assert rows == {"attn": num_blocks * sum(LAYOUT), "ff": num_blocks * sum(LAYOUT)}
    return pipe, images, rows


def segment_steps(layout: list[int]) -> list[int]:
    """Each step's index inside its run of equal batch sizes."""
    steps = []
    for i, rows in enumerate(layout):
        steps.append(steps[-1] + 1 if i and rows == layout[i - 1] else 0)
    return steps


class CacheCase(NamedTuple):
    """A cache at a setting that skips nothing, at one that skips, and the rows the latter computes in all the patch
    blocks, `[attention, feed-forward]`, given the number of blocks. The caches that keep the CFG batch at every step
    of a guided call (MagCache, FasterCache) see 2·BATCH rows at every step (FULL); the others follow LAYOUT and
    start afresh at each change of batch size."""

    no_skip: Callable
    skipping: Callable
    expected_rows: Callable


FULL = [2 * BATCH] * NUM_STEPS
CACHES = {
    "FirstBlockCache": CacheCase(
        lambda pipe: FirstBlockCacheConfig(threshold=0.0),
        lambda pipe: FirstBlockCacheConfig(threshold=1e9),  # the tail blocks run at the first step of each run only
        lambda num_blocks: (
            [sum(rows * (num_blocks if s == 0 else 1) for rows, s in zip(LAYOUT, segment_steps(LAYOUT)))] * 2
        ),
    ),
    "TaylorSeer": CacheCase(
        lambda pipe: TaylorSeerCacheConfig(cache_interval=1, disable_cache_before_step=1),
        lambda pipe: TaylorSeerCacheConfig(cache_interval=2, disable_cache_before_step=1),  # attention: even steps
        lambda num_blocks: [
            num_blocks * sum(rows for rows, s in zip(LAYOUT, segment_steps(LAYOUT)) if s % 2 == 0),
            num_blocks * sum(LAYOUT),
        ],
    ),
    "MagCache": CacheCase(
        lambda pipe: MagCacheConfig(mag_ratios=[1.0] * NUM_STEPS, num_inference_steps=NUM_STEPS, max_skip_steps=0),
        lambda pipe: MagCacheConfig(
            mag_ratios=[1.0] * NUM_STEPS,
            num_inference_steps=NUM_STEPS,
            threshold=1.0,
            max_skip_steps=2,
            retention_ratio=0.0,
        ),  # every block runs at steps 0 and 3
        lambda num_blocks: [num_blocks * 2 * FULL[0]] * 2,
    ),
    "FasterCache": CacheCase(
        lambda pipe: faster_cache_config(pipe, spatial_attention_block_skip_range=1, unconditional_batch_skip_range=1),
        lambda pipe: faster_cache_config(
            pipe,
            spatial_attention_timestep_skip_range=(-1, 1001),
            unconditional_batch_timestep_skip_range=(-1, 1001),
            unconditional_batch_skip_range=2,
        ),  # odd steps: conditional rows only, attention approximated
        lambda num_blocks: [num_blocks * 3 * FULL[0], num_blocks * 3 * (FULL[0] + BATCH)],
    ),
    "PyramidAttentionBroadcast": CacheCase(
        lambda pipe: pyramid_attention_broadcast_config(pipe, spatial_attention_block_skip_range=1),
        lambda pipe: pyramid_attention_broadcast_config(pipe, spatial_attention_timestep_skip_range=(-1, 1001)),
        lambda num_blocks: [
            num_blocks * sum(rows for rows, s in zip(LAYOUT, segment_steps(LAYOUT)) if s % 2 == 0),
            num_blocks * sum(LAYOUT),
        ],
    ),
}
# Caches whose state is dropped where the batch size changes (so their calls keep LAYOUT).
RESETTABLE = {"FirstBlockCache", "TaylorSeer", "PyramidAttentionBroadcast"}


@contextlib.contextmanager
def cache(pipe, config):
    pipe.transformer.enable_cache(config)
    try:
        yield
    finally:
        pipe.transformer.disable_cache()


@pytest.mark.parametrize("name", list(CACHES))
def test_a_cache_that_skips_nothing_reproduces_the_uncached_sampling(kind_pipeline, name):
    pipe, reference, reference_rows = kind_pipeline
    with cache(pipe, CACHES[name].no_skip(pipe)):
        images, rows = generate_counting(pipe)
    num_blocks = len(pipe.transformer.transformer_blocks)
    if name in RESETTABLE:
        assert rows == reference_rows
        assert torch.equal(images, reference)
    else:  # the CFG batch at every step: only the batch composition of the conditional-only steps differs
        assert rows == {"attn": num_blocks * sum(FULL), "ff": num_blocks * sum(FULL)}
        torch.testing.assert_close(images, reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", list(CACHES))
def test_a_cache_skips_work_and_disable_cache_restores_the_exact_output(kind_pipeline, name):
    pipe, reference, reference_rows = kind_pipeline
    num_blocks = len(pipe.transformer.transformer_blocks)
    with cache(pipe, CACHES[name].skipping(pipe)):
        images, rows = generate_counting(pipe)
    assert [rows["attn"], rows["ff"]] == CACHES[name].expected_rows(num_blocks)
    assert rows["attn"] < reference_rows["attn"]
    assert not torch.equal(images, reference)
    assert images.shape == reference.shape and (images - reference).abs().max() < 10 * reference.abs().max()
    assert torch.equal(generate(pipe), reference)


@pytest.mark.parametrize("name", ["FirstBlockCache", "TaylorSeer", "MagCache"])
def test_the_cache_state_is_reset_between_calls(kind_pipeline, name):
    pipe, _, _ = kind_pipeline
    with cache(pipe, CACHES[name].skipping(pipe)):
        first, second = generate(pipe), generate(pipe)
    assert torch.equal(first, second)


@pytest.mark.parametrize("kind", KINDS)
def test_the_whole_step_cache_skips_both_pathways_and_extrapolates_the_output_projection(kind):
    """TaylorSeer's lite mode: at a cached step no block of either pathway computes, and the output projection (the
    velocity of PixelDiT, the clean image of PixelDiT2) is the order-1 Taylor extrapolation of the last two computed
    ones. Unguided, so that the batch never changes."""
    pipe = make_pipeline(kind)
    blocks = {"patch": pipe.transformer.transformer_blocks, "pixel": getattr(pipe.transformer, "pixel_blocks", [])}

    def sample_counting(**kwargs):
        rows, projections, hooks = {"patch": 0, "pixel": 0}, [], []
        for group, group_blocks in blocks.items():
            for block in group_blocks:

                def count(module, args, output, group=group):
                    rows[group] += args[0].shape[0]

                hooks.append(block.ff.register_forward_hook(count))
        hooks.append(pipe.transformer.proj_out.register_forward_hook(lambda m, a, output: projections.append(output)))
        try:
            return generate(pipe, guidance_scale=1.0, **kwargs), rows, projections
        finally:
            for hook in hooks:
                hook.remove()

    reference, reference_rows, _ = sample_counting()
    with cache(pipe, whole_step_cache_config(disable_cache_before_step=1)):
        images, rows, p = sample_counting()
    # evaluations 0, 2, 4 computed; 1, 3, 5 predicted (1 from evaluation 0 alone, order 0)
    assert rows == {group: count // 2 for group, count in reference_rows.items()}
    assert rows["patch"] > 0 and (rows["pixel"] > 0) == (kind != "pixeldit2")
    assert len(p) == NUM_STEPS and torch.equal(p[1], p[0])
    torch.testing.assert_close(p[3], p[2] + (p[2] - p[0]) / 2, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(p[5], p[4] + (p[4] - p[2]) / 2, rtol=1e-5, atol=1e-5)
    assert not torch.equal(images, reference)
    assert torch.equal(sample_counting()[0], reference)


def test_caches_see_the_current_timestep_as_a_decreasing_float(kind_pipeline):
    pipe, _, _ = kind_pipeline
    seen = []
    config = pyramid_attention_broadcast_config(pipe)
    callback = config.current_timestep_callback
    config.current_timestep_callback = lambda: seen.append(callback()) or seen[-1]
    with cache(pipe, config):
        generate(pipe, callback_on_step_end=None)
    steps = list(dict.fromkeys(seen))
    assert all(type(t) is float for t in steps)
    assert steps == pipe.scheduler.timesteps.tolist() and steps[0] == 1000.0
    assert all(earlier > later for earlier, later in zip(steps, steps[1:]))


def test_faster_cache_needs_cfg_unless_guidance_distilled():
    pipe = make_pipeline("c2i")
    with cache(pipe, faster_cache_config(pipe)), pytest.raises(ValueError, match="is_guidance_distilled"):
        generate(pipe, guidance_scale=1.0)
    _, reference_rows = generate_counting(pipe, guidance_scale=1.0)
    with cache(pipe, faster_cache_config(pipe, is_guidance_distilled=True)):
        _, rows = generate_counting(pipe, guidance_scale=1.0)
    num_blocks = len(pipe.transformer.transformer_blocks)
    # conditional rows only; the attention is approximated at the odd steps inside the default timestep range
    # (-1, 681): steps 3 and 5 (timesteps 500 and 166.7)
    assert reference_rows == {"attn": num_blocks * NUM_STEPS * BATCH, "ff": num_blocks * NUM_STEPS * BATCH}
    assert rows == {"attn": num_blocks * 4 * BATCH, "ff": num_blocks * NUM_STEPS * BATCH}


@pytest.mark.parametrize("kind", KINDS)
def test_calibrated_mag_ratios_are_those_of_diffusers_calibration_mode(kind):
    pipe = make_pipeline(kind)
    ratios = calibrate_mag_ratios(pipe, **calibration_call(pipe))
    printed = io.StringIO()
    with cache(pipe, MagCacheConfig(calibrate=True, num_inference_steps=NUM_STEPS)):
        with contextlib.redirect_stdout(printed):
            pipe(**calibration_call(pipe))
    assert len(ratios) == NUM_STEPS and ratios[0] == 1.0 and len(set(ratios)) > 2
    assert ratios == ast.literal_eval(printed.getvalue().strip().splitlines()[-1])


def calibration_call(pipe) -> dict:
    condition = {"prompt": ["a cat", "a dog"]} if isinstance(pipe, PixelDiTT2IPipeline) else {"class_labels": [1, 3]}
    return {
        **condition,
        "num_inference_steps": NUM_STEPS,
        "guidance_scale": 3.0,
        "guidance_interval": GUIDANCE_INTERVAL,
        "generator": torch.Generator().manual_seed(0),
        "output_type": "latent",
    }


@pytest.mark.parametrize("kind", ["c2i", "t2i"])
def test_shipped_mag_ratios_fit_the_digits_models(kind):
    folder = pretrained_digits_path(kind)
    pipeline_class = PixelDiTPipeline if kind == "c2i" else PixelDiTT2IPipeline
    pipe = pipeline_class.from_pretrained(folder)
    config = mag_cache_config(folder)
    assert len(config.mag_ratios) == config.num_inference_steps == num_model_evaluations(pipe)
    assert config.mag_ratios[0] == 1.0 and 0.8 < min(config.mag_ratios) and max(config.mag_ratios) < 1.5
    if kind == "t2i":
        return
    pipe.set_progress_bar_config(disable=True)
    calls = []
    pipe.transformer.transformer_blocks[-1].ff.register_forward_hook(lambda *_: calls.append(1))
    generator = torch.Generator().manual_seed(0)
    reference = pipe(class_labels=[7], generator=generator, output_type="np").images
    uncached_calls = len(calls)
    with cache(pipe, config):
        images = pipe(class_labels=[7], generator=torch.Generator().manual_seed(0), output_type="np").images
    assert len(calls) - uncached_calls < 0.8 * uncached_calls
    assert abs(images - reference).max() < 0.2
