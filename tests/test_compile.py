"""`torch.compile` through the pipelines' sampling loop: what compiles when, and no host synchronisation per step.

Compilations are counted by a backend that dynamo calls once per graph it compiles
(`torch._dynamo.testing.CompileCounterWithBackend`). Recompilations and graph breaks are dynamo's decisions, made
before any backend runs, so the graphs run with the cheapest backend, `eager` (`test_transformer.py` compares an
inductor-compiled model with eager, `test_transformer_pixeldit2.py` an `aot_eager` one). `fullgraph=True` turns
any graph break into an error, and with it any host synchronisation inside the forward (`.item()`,
`bool(tensor)`, `.tolist()` break graphs).

What holds, with dynamo's default (automatic) dynamic shapes, through a sampling whose CFG interval switches between
the `[unconditional, conditional]` batch of 2B rows and B rows:
- `torch.compile(transformer, fullgraph=True)`: two compilations, at the first step of each batch size (a graph for
  the first size, then one with a dynamic batch size); afterwards none, whatever the steps, the interval or the
  batch size (of at least 2: dynamo specialises size 1, which gets a graph of its own).
- `torch.compile(transformer, fullgraph=True, dynamic=True)` takes every image size with the one graph (the 2-D RoPE
  positions come from `arange`, not from `linspace`, whose step count would be specialised).
- `transformer.compile_repeated_blocks(fullgraph=True)`: each block class compiles only at the first step of each
  batch size, then never again: a graph per way the model calls it (PixelDiT2: the grounding block, the blocks
  before the in-context tokens join, those after) for the first size, the same with a dynamic batch size at the
  next, and one more where the first block of a stack gets a view (the embedding's output) and the others do not.
"""

from unittest import mock

import pytest
import torch
from pixeldit_testing import (
    compiled_only_at_new_batch_sizes,
    record_compilations,
    tiny_dinov3,
    tiny_inputs,
    tiny_model,
    tiny_pixeldit2,
    tiny_text_components,
)
from torch._dynamo.testing import CompileCounterWithBackend

from diffusers_pixeldit import (
    PixelDiT2Pipeline,
    PixelDiTFlowScheduler,
    PixelDiTPipeline,
    PixelDiTT2IPipeline,
    release_dpm_solver_scheduler,
)


KINDS = ["c2i", "t2i", "pixeldit2"]
# The first call: a few steps, unguided at both ends of the CFG interval and guided inside.
FIRST_CALL = {"num_inference_steps": 6, "guidance_interval": (0.1, 0.6)}
# Tensor methods that wait for the device (on a GPU) to hand a value to the host.
SYNCHRONIZING_TENSOR_METHODS = ("item", "tolist", "numpy", "cpu", "nonzero", "__bool__", "__int__", "__float__", "__index__")  # fmt: skip


def tiny_pipeline(kind: str, **model_config):
    if kind == "c2i":
        transformer = tiny_model("c2i", **model_config)
        pipe = PixelDiTPipeline(transformer, PixelDiTFlowScheduler(shift=2.0), default_guidance_scale=3.0)
    elif kind == "t2i":
        tokenizer, text_encoder = tiny_text_components(width=8)
        transformer = tiny_model("t2i", text_embed_dim=8, max_text_length=12, **model_config)
        pipe = PixelDiTT2IPipeline(tokenizer, text_encoder, transformer, release_dpm_solver_scheduler(3.0))
    else:
        transformer, encoder = tiny_pixeldit2(**model_config), tiny_dinov3(hidden_size=16)
        scheduler = PixelDiTFlowScheduler(solver="heun", time_grid="uniform")
        pipe = PixelDiT2Pipeline(transformer, scheduler, encoder, default_guidance_scale=2.0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe, kind: str, batch_size: int = 2, **kwargs):
    condition = (
        {"prompt": ["a cat", "a red dog", "a dog"][:batch_size], "max_sequence_length": 12}
        if kind == "t2i"
        else {"class_labels": [1, 3, 4][:batch_size]}
    )
    return pipe(**condition, **kwargs, generator=torch.Generator().manual_seed(0), output_type="latent").images


@pytest.fixture(scope="module", params=KINDS)
def compiled(request):
    """A tiny pipeline of each kind with its transformer compiled (`fullgraph=True`) and sampled once."""
    kind = request.param
    torch._dynamo.reset()
    layers = {"num_layers": 2} if kind == "pixeldit2" else {"num_layers": 1, "num_pixel_layers": 1}
    pipe = tiny_pipeline(kind, **layers)  # fewer layers to trace
    counter = CompileCounterWithBackend("eager")
    eager = generate(pipe, kind, **FIRST_CALL)
    pipe.transformer = torch.compile(pipe.transformer, fullgraph=True, backend=counter)
    calls = record_compilations(pipe.transformer, counter)
    first = generate(pipe, kind, **FIRST_CALL)
    yield kind, pipe, counter, calls, eager, first
    torch._dynamo.reset()


def test_compiled_sampling_compiles_once_per_batch_size_then_never(compiled):
    kind, pipe, counter, calls, eager, first = compiled
    torch.testing.assert_close(first, eager, rtol=0, atol=1e-5)
    batch_sizes = [batch_size for batch_size, _ in calls]
    assert batch_sizes[0] == 2 and 4 in batch_sizes and batch_sizes[-1] == 2  # B, then 2B inside the interval, B
    assert compiled_only_at_new_batch_sizes(calls)
    assert counter.frame_count == 2  # B, then a dynamic batch size at the first 2B step
    # Later calls compile nothing: many steps, CFG from the second step on (other step offsets), another batch size.
    steps = 100 if kind == "c2i" else 12
    with torch._dynamo.config.patch(error_on_recompile=True):
        generate(pipe, kind, num_inference_steps=steps, guidance_interval=(0.0, 1.0))
        generate(pipe, kind, batch_size=3, **FIRST_CALL)
    assert counter.frame_count == 2


def test_sampling_loop_does_not_synchronize(compiled):
    # From the first transformer call to the end of the loop — the loop, the scheduler's steps, the pipeline's model
    # inputs, the (compiled, graph-break-free) transformer — no tensor value is read on the host. On the CPU this is
    # checked by catching the tensor methods that would wait for a GPU.
    kind, pipe, counter, calls, _, _ = compiled
    synchronizations, in_loop = [], []
    hook = pipe.transformer.register_forward_pre_hook(lambda *args: in_loop.append(True))

    def catching(name):
        method = getattr(torch.Tensor, name)

        def wrapper(tensor, *args, **kwargs):
            if in_loop:
                synchronizations.append(name)
            return method(tensor, *args, **kwargs)

        return wrapper

    patches = [mock.patch.object(torch.Tensor, name, catching(name)) for name in SYNCHRONIZING_TENSOR_METHODS]
    try:
        for patch in patches:
            patch.start()
        generate(pipe, kind, **FIRST_CALL)
    finally:
        for patch in patches:
            patch.stop()
        hook.remove()
    assert synchronizations == []
    assert in_loop and counter.frame_count == 2


@pytest.mark.parametrize("kind", KINDS)
def test_dynamic_compilation_takes_new_image_sizes_without_recompiling(kind):
    torch._dynamo.reset()
    model = tiny_pixeldit2(num_layers=2) if kind == "pixeldit2" else tiny_model(kind, num_layers=1, num_pixel_layers=1)
    counter = CompileCounterWithBackend("eager")
    compiled = torch.compile(model, fullgraph=True, dynamic=True, backend=counter)
    # Distinct sizes (no duck shapes, as diffusers' `test_compile_on_different_shapes`): grids 2×3, 3×4, 4×2 and 5×5.
    with torch.no_grad(), torch.fx.experimental._config.patch(use_duck_shape=False):
        for height, width in [(16, 24), (24, 32), (32, 16), (40, 40)]:
            if kind == "pixeldit2":
                inputs = {"hidden_states": torch.randn(2, 3, height, width), "timestep": torch.tensor([500.0, 40.0]),
                          "class_labels": torch.tensor([2, 5]),
                          "grounding_hidden_states": torch.randn(2, height * width // 64, 16)}  # fmt: skip
            else:
                inputs = tiny_inputs(model, height=height, width=width)
            with torch._dynamo.config.patch(error_on_recompile=height != 16):
                out = compiled(**inputs).sample
            # The traced RoPE positions may differ from eager `linspace` by one float32 ulp.
            torch.testing.assert_close(out, model(**inputs).sample, rtol=0, atol=1e-5)
    assert counter.frame_count == 1
    torch._dynamo.reset()


def test_pixeldit2_regional_compilation_compiles_only_at_the_first_step_of_each_batch_size():
    # Graphs: the grounding block, the first block (the only one before the in-context tokens join), the blocks with
    # the context (one graph for both); for B, then for a dynamic batch size at 2B. (PixelDiT's blocks are counted in
    # test_pipeline_pixeldit.py, compiled with inductor.)
    torch._dynamo.reset()
    pipe = tiny_pipeline("pixeldit2")
    counter = CompileCounterWithBackend("eager")
    pipe.transformer.compile_repeated_blocks(fullgraph=True, backend=counter)
    calls = record_compilations(pipe.transformer, counter)
    generate(pipe, "pixeldit2", **FIRST_CALL)
    assert compiled_only_at_new_batch_sizes(calls) and counter.frame_count == 6
    with torch._dynamo.config.patch(error_on_recompile=True):
        generate(pipe, "pixeldit2", num_inference_steps=12, guidance_interval=(0.0, 1.0))
        generate(pipe, "pixeldit2", batch_size=3, **FIRST_CALL)
    assert counter.frame_count == 6
    torch._dynamo.reset()
