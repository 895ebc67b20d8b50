"""diffusers' context parallelism (`enable_parallelism`, `_cp_plan`) on PixelDiT, in 2 CPU processes over gloo.

Ulysses attention (an all-to-all over the heads) is what CPU processes can run: diffusers' ring attention needs the
attention's log-sum-exp, which its native (PyTorch SDPA) backend does not return. diffusers 0.42 places each rank on
`rank % torch.accelerator.device_count()`, which is 0 without an accelerator, so the workers report one device.
"""

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from diffusers import ContextParallelConfig
from pixeldit_testing import tiny_inputs, tiny_model

from diffusers_pixeldit import PixelDiTFlowScheduler, PixelDiTPipeline


WORLD_SIZE = 2


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def parallel_worker(rank: int, port: int):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE)
    try:
        if torch.accelerator.device_count() == 0:
            torch.accelerator.device_count = lambda: 1
        check_forward("c2i")
        check_forward("t2i")
        check_pipeline()
    finally:
        dist.destroy_process_group()


def check_forward(kind: str):
    model = tiny_model(kind)
    inputs = tiny_inputs(model, height=16, width=24)  # a 4 x 6 patch grid
    if kind == "t2i":  # a text length the degree divides
        generator = torch.Generator().manual_seed(1)
        inputs["encoder_hidden_states"] = torch.randn(2, 6, model.config.text_embed_dim, generator=generator)
    with torch.no_grad():
        expected = model(**inputs, return_dict=False)[0]
        model.enable_parallelism(config=ContextParallelConfig(ulysses_degree=WORLD_SIZE))
        sharded_calls = []
        model.pixel_blocks[0].register_forward_hook(lambda module, args, output: sharded_calls.append(output.shape[1]))
        output = model(**inputs, return_dict=False)[0]
    assert sharded_calls == [24 // WORLD_SIZE]  # each rank ran its half of the patches
    torch.testing.assert_close(output, expected, atol=1e-5, rtol=1e-5)


def check_pipeline():
    def sample():
        return pipe(
            class_labels=[1, 3],
            num_inference_steps=3,
            guidance_scale=2.0,
            height=16,
            width=16,
            generator=torch.Generator().manual_seed(0),
            output_type="pt",
        ).images

    pipe = PixelDiTPipeline(tiny_model("c2i"), PixelDiTFlowScheduler(shift=2.0))
    pipe.set_progress_bar_config(disable=True)
    expected = sample()
    pipe.transformer.enable_parallelism(config=ContextParallelConfig(ulysses_degree=WORLD_SIZE))
    torch.testing.assert_close(sample(), expected, atol=1e-5, rtol=1e-5)


def test_ulysses_context_parallelism_matches_one_process():
    """Both variants' forward and a class-conditional sampling with CFG (one pair of processes: they import torch)."""
    mp.spawn(parallel_worker, args=(free_port(),), nprocs=WORLD_SIZE)


def test_the_plan_splits_along_the_patch_grid():
    c2i, t2i = tiny_model("c2i"), tiny_model("t2i")
    assert {"patch_embed", "rope", "pixel_rope", "pixel_blocks.0", "proj_out"} <= set(c2i._cp_plan)
    assert set(t2i._cp_plan) - set(c2i._cp_plan) == {"text_rope", "transformer_blocks.0"}
    assert not any(name.startswith(("rope", "pixel_rope", "text_rope")) for name in t2i.state_dict())
