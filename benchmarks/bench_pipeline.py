"""Sampling speed of `PixelDiTPipeline`: s/step and images/s, with and without CFG-interval skipping.

    python benchmarks/bench_pipeline.py --quick                   # PixelDiT-B, fp32, 4 steps
    python benchmarks/bench_pipeline.py                           # B, L, XL at 256², fp32 and bf16, 10 steps
    python benchmarks/bench_pipeline.py --presets XL --steps 100 --compile

Each run samples `--batch_size` images of class-conditional random-weight presets with the official AB2 sampler
(`PixelDiTFlowScheduler`), CFG 2.75, in two ways:
- "interval": the model card's CFG interval [0.1, 0.9]: the unconditional branch runs only inside it (ours);
- "every step": guidance at every step, i.e. both branches at every step: the model work of the official sampler,
  which always computes both and discards one outside the interval.
s/step is the wall time of the whole call (after one warm-up call) divided by the steps; the speed-up column is
"every step" time over "interval" time. `--compile` compiles the repeated blocks (`compile_repeated_blocks`) first.
"""

import argparse
import time

import torch
from bench_transformer import DTYPES, PRESETS, build_model, cpu_model

from diffusers_pixeldit import PixelDiTFlowScheduler, PixelDiTPipeline


MODES = {"interval": (0.1, 0.9), "every step": (0.0, 1.0)}


def sample_seconds(pipe, batch_size: int, steps: int, interval) -> float:
    start = time.perf_counter()
    pipe(
        class_labels=list(range(batch_size)), num_inference_steps=steps, guidance_scale=2.75,
        guidance_interval=interval, generator=torch.Generator().manual_seed(0), output_type="latent",
    )  # fmt: skip
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["B", "L", "XL"], choices=PRESETS[:3])
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=list(DTYPES))
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch_size", type=int, default=1)
    parser.add_argument("--compile", action="store_true", help="compile_repeated_blocks(fullgraph=True) first.")
    parser.add_argument("--quick", action="store_true", help="PixelDiT-B, fp32, 4 steps.")
    args = parser.parse_args()
    if args.quick:
        args.presets, args.dtypes, args.steps = ["B"], ["fp32"], 4
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    print(f"{device} ({cpu_model() if device.type == 'cpu' else torch.cuda.get_device_name()}), "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, {args.resolution}², batch "
          f"{args.batch_size}, {args.steps} steps, AB2, CFG 2.75{', compiled' if args.compile else ''}\n")  # fmt: skip
    print("| preset | dtype | mode | unconditional passes | s/step | images/s | speed-up |")
    print("|---|---|---|---:|---:|---:|---:|")
    for preset in args.presets:
        for dtype_name in args.dtypes:
            model = build_model(preset, device, DTYPES[dtype_name]).eval()
            if args.compile:
                model.compile_repeated_blocks(fullgraph=True)
            pipe = PixelDiTPipeline(model, PixelDiTFlowScheduler(), default_num_inference_steps=args.steps)
            pipe.set_progress_bar_config(disable=True)
            pipe.scheduler.set_timesteps(args.steps)
            seconds = {}
            for mode, interval in MODES.items():
                sample_seconds(pipe, args.batch_size, 2, interval)  # warm-up (and compilation)
                seconds[mode] = sample_seconds(pipe, args.batch_size, args.steps, interval)
                guided = sum(0.1 < 1 - s < 0.9 for s in pipe.scheduler.sigmas[:-1].tolist())
                passes = guided if mode == "interval" else args.steps
                speedup = seconds["every step"] / seconds["interval"] if mode == "every step" else 1.0
                print(f"| {preset} | {dtype_name} | {mode} | {passes}/{args.steps} | {seconds[mode] / args.steps:.3f} "
                      f"| {args.batch_size / seconds[mode]:.3f} | {speedup:.2f}× |")  # fmt: skip


if __name__ == "__main__":
    main()
