"""The sampling loop every PixelDiT pipeline shares (`PixelDiTDenoisingMixin`), checked through each pipeline."""

import pytest
import torch
from pixeldit_testing import tiny_model, tiny_text_components
from torch.overrides import TorchFunctionMode

from diffusers_pixeldit import (
    PixelDiTFlowScheduler,
    PixelDiTPipeline,
    PixelDiTT2IPipeline,
    release_dpm_solver_scheduler,
)
from diffusers_pixeldit.pipelines.denoising import in_guidance_interval


def tiny_pipeline(kind: str, scheduler=None):
    if kind == "c2i":
        pipe = PixelDiTPipeline(tiny_model("c2i"), scheduler or PixelDiTFlowScheduler(shift=1.0))
    else:
        tokenizer, text_encoder = tiny_text_components(width=8)
        transformer = tiny_model("t2i", text_embed_dim=8, max_text_length=12)
        pipe = PixelDiTT2IPipeline(tokenizer, text_encoder, transformer, scheduler or PixelDiTFlowScheduler(shift=1.0))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe, **kwargs):
    condition = {"class_labels": [1, 3]} if isinstance(pipe, PixelDiTPipeline) else {"prompt": ["a cat", "a dog"]}
    kwargs = {"num_inference_steps": 6, "guidance_scale": 3.0, "output_type": "latent", **condition, **kwargs}
    return pipe(generator=torch.Generator().manual_seed(0), **kwargs).images


class HostReads(TorchFunctionMode):
    """Counts reads of tensor values on the host (each one a device synchronisation on an accelerator)."""

    READS = {"item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__", "__index__", "nonzero"}

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", None) in self.READS:
            self.count += 1
        return func(*args, **(kwargs or {}))


def count_host_reads_outside_the_transformer(pipe, **kwargs) -> int:
    mode, forward = HostReads(), pipe.transformer.forward

    def forward_uncounted(*args, **kw):
        count = mode.count
        try:
            return forward(*args, **kw)
        finally:
            mode.count = count  # the model's own (CPU-only) input checks are not the loop's

    pipe.transformer.forward = forward_uncounted
    try:
        with mode:
            generate(pipe, **kwargs)
    finally:
        del pipe.transformer.forward
    return mode.count


@pytest.mark.parametrize("kind", ["c2i", "t2i"])
@pytest.mark.parametrize(
    "scheduler",
    [lambda: PixelDiTFlowScheduler(shift=2.0), lambda: release_dpm_solver_scheduler(2.0)],
    ids=["ab2", "dpm"],
)
def test_the_loop_reads_nothing_back_from_the_device_per_step(kind, scheduler):
    # Guidance decisions and model times are settled once, before the loop: the host reads of a call do not grow
    # with its step count (interval bounds inside the grid, so the batch size switches during the run).
    pipe = tiny_pipeline(kind, scheduler())
    reads = [
        count_host_reads_outside_the_transformer(pipe, num_inference_steps=n, guidance_interval=(0.3, 0.8))
        for n in (3, 9)
    ]
    assert reads[0] == reads[1]


@pytest.mark.parametrize("kind", ["c2i", "t2i"])
def test_per_call_shift_steps_the_pipeline_scheduler_and_is_undone(kind):
    pipe = tiny_pipeline(kind, PixelDiTFlowScheduler(shift=1.0))
    seen = []

    def record(pipe, i, t, callback_kwargs):
        seen.append((pipe.scheduler.shift, pipe.scheduler.step_index, float(pipe.scheduler.sigmas[1])))
        return callback_kwargs

    shifted = generate(pipe, shift=3.0, callback_on_step_end=record)
    reference = PixelDiTFlowScheduler(shift=3.0)
    reference.set_timesteps(6)
    # the scheduler callbacks see is the one stepping, with this call's shift
    assert seen == [(3.0, i + 1, float(reference.sigmas[1])) for i in range(6)]
    assert pipe.scheduler.shift == 1.0
    pipe.scheduler.set_shift(3.0)
    assert torch.equal(generate(pipe), shifted)


def test_per_call_flow_shift_of_a_config_scheduler_is_undone():
    pipe = tiny_pipeline("t2i", release_dpm_solver_scheduler(2.0))
    seen = []

    def record(pipe, i, t, callback_kwargs):
        seen.append(pipe.scheduler.config.flow_shift)
        return callback_kwargs

    shifted = generate(pipe, shift=4.0, callback_on_step_end=record)
    assert seen == [4.0] * 6 and pipe.scheduler.config.flow_shift == 2.0
    pipe.scheduler = release_dpm_solver_scheduler(4.0)
    assert torch.equal(generate(pipe), shifted)


def test_per_call_shift_is_undone_when_the_call_fails():
    pipe = tiny_pipeline("c2i", PixelDiTFlowScheduler(shift=1.0))

    def fail(pipe, i, t, callback_kwargs):
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        generate(pipe, shift=3.0, callback_on_step_end=fail)
    assert pipe.scheduler.shift == 1.0


@pytest.mark.parametrize("kind", ["c2i", "t2i"])
def test_interrupt_stops_the_model_calls(kind):
    pipe = tiny_pipeline(kind)
    calls = []
    forward = pipe.transformer.forward
    pipe.transformer.forward = lambda *args, **kwargs: calls.append(1) or forward(*args, **kwargs)

    def interrupt_after_two(pipe, i, t, callback_kwargs):
        pipe._interrupt = i == 1
        return callback_kwargs

    generate(pipe, callback_on_step_end=interrupt_after_two)
    assert len(calls) == 2 and pipe.interrupt


@pytest.mark.parametrize("kind", ["c2i", "t2i"])
def test_call_properties(kind):
    pipe = tiny_pipeline(kind)
    seen = []

    def record(pipe, i, t, callback_kwargs):
        seen.append((pipe.current_timestep, pipe.guidance_scale, pipe.attention_kwargs, pipe.num_timesteps))
        return callback_kwargs

    generate(pipe, guidance_scale=2.5, attention_kwargs={"scale": 1.0}, callback_on_step_end=record)
    assert [timestep for timestep, *_ in seen] == list(pipe.scheduler.timesteps)
    assert all(tuple(rest) == (2.5, {"scale": 1.0}, 6) for _, *rest in seen)
    assert pipe.current_timestep is None  # after the call


def test_zero_lower_bound_rule():
    # PixelDiT-1: strict `low < t`, so t = 0 (σ = 1) is never guided; PixelDiT2: low = 0 means no lower bound.
    assert not in_guidance_interval(1.0, (0.0, 0.5))
    assert in_guidance_interval(1.0, (0.0, 0.5), zero_low_is_unbounded=True)
    assert not in_guidance_interval(1.0, (0.1, 0.5), zero_low_is_unbounded=True)
    assert not in_guidance_interval(0.5, (0.0, 0.5), zero_low_is_unbounded=True)  # t = 0.5 is not < 0.5
