"""Speed, FLOP/s and peak-memory benchmark of `PixelDiTTransformer2DModel`.

Usage:
    python benchmarks/bench_transformer.py --quick                      # smoke run: PixelDiT-B fp32, 1 repeat
    python benchmarks/bench_transformer.py                              # B, L, XL at 256², fp32 + bf16, forward
    python benchmarks/bench_transformer.py --presets B XL --dtypes fp32 --train --json train.json

For each device, preset, dtype and mode, in a fresh subprocess (so that peaks do not carry over):
- mode "fwd": eval mode, one forward under `torch.inference_mode`; "train" (with `--train`): a training step,
  i.e. train mode, forward, MSE loss to a random target, backward and an AdamW step (no REPA); "train+ckpt": the
  same with `enable_gradient_checkpointing()`. Inputs: random images (in the model's dtype), timesteps in
  [0, 1000] (float32), class ids (or random text states for the text-to-image preset).
- time: median wall-clock seconds over `--repeats` iterations (CUDA synchronised), after one FLOP-counting pass and
  `--warmup` plain iterations; img/s = batch / time.
- GFLOP/img: matmul and attention FLOPs (multiply-add = 2) counted by `torch.utils.flop_counter.FlopCounterMode`
  on the FLOP-counting pass, backward included for the train modes; elementwise ops, norms and activations are not counted.
- % of GEMM peak: achieved GFLOP/s over the best GFLOP/s of a square `torch.matmul` in the same dtype on the same
  device, measured at the start of the run.
- linear GEMMs s (fwd only): the model's linear layers alone: every (rows, in, out) shape that one forward runs,
  timed by itself with `F.linear` on random inputs (median of `--repeats`, weights warm in cache) and summed over its
  calls. Time minus this is all that any implementation using the same GEMMs can save (attention, element-wise
  work, copies, allocation); the column after it is the forward's share in those GEMMs.
- peak memory: CUDA: `torch.cuda.max_memory_allocated` (live tensors). CPU (Linux): the process's resident-set
  high-water mark VmHWM, with glibc told to map every allocation of 64 KiB or more (`MALLOC_MMAP_THRESHOLD_`) so
  that freed memory leaves the resident set; it includes the Python/torch runtime. The peak is reset after the
  warm-up, when weights, inputs and (train modes) gradients and AdamW states are in place; Δ = peak minus the
  memory in use then, up to the end of the backward pass: the activations and workspace of one iteration (what
  gradient checkpointing cuts); the peak includes the optimiser step (AdamW's temporaries).
  Memory is measured on its own pass (one more fresh process per measurement) so that the mmap setting does not
  slow the timed runs.
- CPU util: process CPU time / (wall time x threads) over the timed iterations (and the GEMM-peak measurement); on
  CPU, well under 100% means other processes took cores and the timings are unreliable.
Weights are random N(0, 0.02) rather than the preset's initialisation (faster to build; speed does not depend on
the values).
"""

import argparse
import json
import multiprocessing
import os
import statistics
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from functools import partial

import diffusers
import torch
import torch.nn.functional as F
from diffusers.utils import logging as diffusers_logging
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from diffusers_pixeldit import PIXELDIT_PRESETS, PixelDiTTransformer2DModel


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
PRESETS = [name.removeprefix("PixelDiT-") for name in PIXELDIT_PRESETS]


def _cpu_sdpa_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def _cpu_sdpa_backward_flops(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


# FlopCounterMode has no formulas for the flash-attention kernels that SDPA dispatches to on CPU.
CPU_SDPA_FLOP_FORMULAS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward_flops,
}


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo."""
    with open("/proc/cpuinfo") as f:
        return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "unknown")


def timed(fn, device: torch.device) -> float:
    """Wall-clock seconds of one call of `fn`, synchronising CUDA."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


# (a, b) -> product: the three layouts of a square GEMM. On CPUs without native bf16, PyTorch's bf16 GEMM speed
# depends strongly on the layout (nn.Linear's forward is a @ b.T, its input gradient a @ b).
GEMM_LAYOUTS = {"a@b": lambda a, b: a @ b, "a@b.T": lambda a, b: a @ b.T, "a.T@b": lambda a, b: a.T @ b}


def gemm_gflops(device: torch.device, dtype: torch.dtype, max_size: int, repeats: int) -> dict:
    """GFLOP/s of a square `torch.matmul` per layout, with the size (side) it was measured at, and the CPU util.

    The size doubles from 512 until one call takes 0.2 s or `max_size` is reached (slow layouts stay small); the
    fastest of that call and up to `repeats` more (within 2 s) counts.
    """
    layouts, cpu_start, wall_start = {}, time.process_time(), time.perf_counter()
    for name, product in GEMM_LAYOUTS.items():
        size, times = 256, [0.0]
        while times[0] < 0.2 and size < max_size:
            size *= 2
            a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
            times = [timed(partial(product, a, b), device)]
        while len(times) <= repeats and sum(times) < 2.0:
            times.append(timed(partial(product, a, b), device))
        layouts[name] = {"size": size, "gflop_per_s": 2 * size**3 / min(times) / 1e9}
    wall = time.perf_counter() - wall_start
    return {
        "peak_gflop_per_s": max(layout["gflop_per_s"] for layout in layouts.values()),
        "layouts": layouts,
        "cpu_util": (time.process_time() - cpu_start) / (wall * torch.get_num_threads()),
    }


def proc_status_bytes(field: str) -> int:
    """A memory field (VmRSS, VmHWM) of /proc/self/status, in bytes."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))


def reset_peak_memory(device: torch.device) -> int:
    """Restarts the peak-memory measurement; returns the bytes in use now."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current VmRSS
    return proc_status_bytes("VmRSS")


def peak_memory(device: torch.device) -> int:
    """Peak bytes since `reset_peak_memory`."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return proc_status_bytes("VmHWM")


def build_model(preset: str, device: torch.device, dtype: torch.dtype) -> PixelDiTTransformer2DModel:
    """The preset's architecture with random N(0, 0.02) weights, built directly on `device` in `dtype`."""
    with torch.device("meta"):
        model = PixelDiTTransformer2DModel.from_preset(f"PixelDiT-{preset}").to(dtype)
    model.to_empty(device=device)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.02)
    return model


def measure(job: dict) -> dict:
    """Runs one measurement (meant for a fresh process): timings, or the memory peak when `job["pass"] == "memory"`."""
    device, dtype, batch, size = torch.device(job["device"]), DTYPES[job["dtype"]], job["batch"], job["resolution"]
    diffusers_logging.set_verbosity_error()  # `.to(bfloat16)` warns about an empty list of fp32 modules
    torch.manual_seed(0)
    model = build_model(job["preset"], device, dtype)
    images = torch.randn(batch, 3, size, size, device=device, dtype=dtype)
    timestep = torch.rand(batch, device=device) * 1000
    if model.is_text_conditioned:
        text_shape = (batch, model.config.max_text_length, model.config.text_embed_dim)
        condition = {"encoder_hidden_states": torch.randn(text_shape, device=device, dtype=dtype)}
    else:
        condition = {"class_labels": torch.randint(0, model.config.num_classes, (batch,), device=device)}

    if job["mode"] == "fwd":
        model.eval()

        def forward_backward():
            with torch.inference_mode():
                model(images, timestep, **condition)

        def optimizer_step():
            pass
    else:
        model.train()
        if job["mode"] == "train+ckpt":
            model.enable_gradient_checkpointing()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        target = torch.randn_like(images, dtype=torch.float32)

        def forward_backward():
            F.mse_loss(model(images, timestep, **condition).sample.float(), target).backward()

        def optimizer_step():
            optimizer.step()
            optimizer.zero_grad(set_to_none=False)

    def step():
        forward_backward()
        optimizer_step()

    if job["pass"] == "memory":
        for _ in range(max(job["warmup"], 1)):
            step()
        in_use = reset_peak_memory(device)
        forward_backward()
        activations = peak_memory(device) - in_use
        optimizer_step()
        return {**job, "peak_mib": peak_memory(device) / 2**20, "delta_mib": activations / 2**20}

    linear_shapes = Counter()  # (rows, in, out, bias) of every linear call in the forward

    def record_linear_shape(module, args, output):
        rows = args[0].numel() // module.in_features
        linear_shapes[(rows, module.in_features, module.out_features, module.bias is not None)] += 1

    linear_layers = [module for module in model.modules() if isinstance(module, torch.nn.Linear)]
    hooks = (
        [layer.register_forward_hook(record_linear_shape) for layer in linear_layers] if job["mode"] == "fwd" else []
    )
    with FlopCounterMode(display=False, custom_mapping=CPU_SDPA_FLOP_FORMULAS) as counter:
        step()
    for hook in hooks:
        hook.remove()
    for _ in range(job["warmup"]):
        step()
    cpu_start = time.process_time()
    times = [timed(step, device) for _ in range(job["repeats"])]
    cpu_util = (time.process_time() - cpu_start) / (sum(times) * torch.get_num_threads())
    result = {
        **job,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "times_s": times,
        "time_s": statistics.median(times),
        "gflop_per_image": counter.get_total_flops() / batch / 1e9,
        "cpu_util": cpu_util,
    }
    if job["mode"] == "fwd":
        result["linear_gemm_s"] = linear_gemm_seconds(linear_shapes, device, dtype, job["repeats"])
    return result


def linear_gemm_seconds(shapes: Counter, device: torch.device, dtype: torch.dtype, repeats: int) -> float:
    """Summed median time of `F.linear` alone on random inputs, over the `(rows, in, out, bias)` calls of `shapes`."""
    total = 0.0
    with torch.inference_mode():
        for (rows, in_features, out_features, bias), count in shapes.items():
            inputs = torch.randn(rows, in_features, device=device, dtype=dtype)
            weight = torch.randn(out_features, in_features, device=device, dtype=dtype)
            bias = torch.randn(out_features, device=device, dtype=dtype) if bias else None
            F.linear(inputs, weight, bias)
            total += count * statistics.median(
                timed(partial(F.linear, inputs, weight, bias), device) for _ in range(repeats)
            )
    return total


def run_in_fresh_process(job: dict, env: dict[str, str] | None = None) -> dict:
    """`measure(job)` in a new spawned process, with `env` added to its environment."""
    saved = dict(os.environ)
    os.environ.update(env or {})
    try:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
            return pool.submit(measure, job).result()
    finally:
        os.environ.clear()
        os.environ.update(saved)


COLUMNS = ["device", "preset", "dtype", "batch", "mode", "params M", "time s", "img/s", "GFLOP/img", "GFLOP/s"]
COLUMNS += ["% of GEMM peak", "linear GEMMs s", "% in linear GEMMs", "peak MiB", "Δ MiB", "CPU util"]


def table_row(cells) -> str:
    """A markdown table row."""
    return "| " + " | ".join(str(cell) for cell in cells) + " |"


def result_row(result: dict) -> str:
    """The table row of a measurement."""
    return table_row(
        [result["device"], f"PixelDiT-{result['preset']}", result["dtype"], result["batch"], result["mode"]]
        + [f"{result['params_m']:.1f}", f"{result['time_s']:.3f}", f"{result['batch'] / result['time_s']:.2f}"]
        + [f"{result['gflop_per_image']:.1f}", f"{result['gflop_per_s']:.1f}", f"{result['gemm_peak_pct']:.0f}%"]
        + (
            [f"{result['linear_gemm_s']:.3f}", f"{100 * result['linear_gemm_s'] / result['time_s']:.0f}%"]
            if "linear_gemm_s" in result
            else ["–", "–"]
        )
        + [f"{result['peak_mib']:,.0f}", f"{result['delta_mib']:,.0f}", f"{100 * result['cpu_util']:.0f}%"]
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", nargs="+", choices=PRESETS, default=["B", "L", "XL"])
    parser.add_argument("--resolution", type=int, default=256, help="image side in pixels")
    parser.add_argument("--batch-size", type=int, default=2, help="default 2: one classifier-free-guidance step")
    parser.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=["fp32", "bf16"])
    parser.add_argument("--device", nargs="+", choices=["cpu", "cuda"], help="default: cpu, and cuda if available")
    parser.add_argument("--repeats", type=int, default=5, help="timed iterations (the median is reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed iterations after the FLOP-counting pass")
    parser.add_argument(
        "--train", action="store_true", help="also measure training steps, without and with gradient checkpointing"
    )
    parser.add_argument("--gemm-size", type=int, help="largest side of the GEMM-peak matmul (cpu 4096, cuda 8192)")
    parser.add_argument("--gemm-repeats", type=int, default=5)
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: PixelDiT-B, fp32, forward and train modes, 1 repeat"
    )
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()
    if args.quick:
        args.presets, args.dtypes, args.repeats, args.warmup, args.train = ["B"], ["fp32"], 1, 0, True
    args.device = args.device or ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]
    return args


def main():
    args = parse_args()
    env = {
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "threads": torch.get_num_threads(),
        "cpu": cpu_model(),
        "load_avg_1min": os.getloadavg()[0],  # other processes on the machine distort the timings
        **({"gpu": torch.cuda.get_device_name()} if "cuda" in args.device else {}),
    }
    print("# PixelDiT transformer benchmark\n")
    print(", ".join(f"{key}: {value}" for key, value in env.items()))
    print(
        f"{args.resolution}x{args.resolution}, batch {args.batch_size}; time = median of {args.repeats} after a "
        f"FLOP-counting pass and {args.warmup} warm-up iteration(s)"
    )

    gemm = {}
    for device in args.device:
        max_size = args.gemm_size or {"cpu": 4096, "cuda": 8192}[device]
        for dtype in args.dtypes:
            peak = gemm[f"{device}/{dtype}"] = gemm_gflops(
                torch.device(device), DTYPES[dtype], max_size, args.gemm_repeats
            )
            details = ", ".join(
                f"{name} {v['gflop_per_s']:,.1f} at {v['size']}" for name, v in peak["layouts"].items()
            )
            print(
                f"GEMM peak {device}/{dtype}: {peak['peak_gflop_per_s']:,.1f} GFLOP/s, best torch.matmul layout "
                f"({details}; CPU util {100 * peak['cpu_util']:.0f}%)"
            )
    print(
        "peak memory: cuda = torch.cuda.max_memory_allocated; cpu = process peak RSS (VmHWM, includes the runtime); "
        "Δ = peak through forward and backward - memory in use before (weights, inputs, gradients, optimiser "
        "states): activations and workspace"
    )
    print(
        "CPU util = process CPU time / (wall time x threads) while timing: well under 100% on cpu means other "
        "processes took cores and the timings (and GEMM fractions) are unreliable\n"
    )
    print(table_row(COLUMNS))
    print(table_row(["---"] * len(COLUMNS)))

    modes = ["fwd", "train", "train+ckpt"] if args.train else ["fwd"]
    jobs = [
        {"device": device, "preset": preset, "dtype": dtype, "batch": args.batch_size, "mode": mode}
        | {"resolution": args.resolution, "warmup": args.warmup, "repeats": args.repeats}
        for device in args.device
        for preset in args.presets
        for dtype in args.dtypes
        for mode in modes
    ]
    results = []
    for job in jobs:
        # One fresh process per pass, so that each has its own memory high-water mark.
        result = run_in_fresh_process(job | {"pass": "time"})
        memory_env = {"MALLOC_MMAP_THRESHOLD_": "65536"} if job["device"] == "cpu" else None
        memory = run_in_fresh_process(job | {"pass": "memory"}, memory_env)
        result |= {"peak_mib": memory["peak_mib"], "delta_mib": memory["delta_mib"]}
        result["gflop_per_s"] = result["gflop_per_image"] * result["batch"] / result["time_s"]
        result["gemm_peak_pct"] = (
            100 * result["gflop_per_s"] / gemm[f"{job['device']}/{job['dtype']}"]["peak_gflop_per_s"]
        )
        results.append(result)
        print(result_row(result), flush=True)

    if args.json:
        with open(args.json, "w") as f:
            json.dump({"env": env, "gemm": gemm, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
