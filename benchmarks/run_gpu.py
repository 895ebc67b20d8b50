"""One GPU, a few minutes: PixelDiT-XL forward per dtype and attention backend, and 100-step sampling speed.

    python benchmarks/run_gpu.py                                         # XL, ≤ 420 s of measurements
    python benchmarks/run_gpu.py --official_repo pixeldit-official       # also the official sampler (4225ca5)
    python benchmarks/run_gpu.py --max_autotune --budget_s 900           # also mode="max-autotune-no-cudagraphs"
    python benchmarks/run_gpu.py --device cpu --quick --preset B --resolutions 64 --steps 2 --dtypes bf16   # smoke test

Random weights (speed does not depend on them), built on the device in the dtype (`build_model` of
`bench_transformer.py`).

- forward: `PixelDiTTransformer2DModel` at batch `--forward_batch` 2 (one CFG step: a class and the null class,
  σ·1000 = 700) for each of `--resolutions` (256 512), `--dtypes` (bf16 fp16) and `--backends`
  (`set_attention_backend(name)`, names of diffusers' `AttentionBackendName`; a backend that raises on setting or on
  its first call is skipped, with the reason printed). Time: `--warmup` calls, then the median of `--repeats` calls
  timed with CUDA events (wall clock on the CPU); peak memory: `torch.cuda.max_memory_allocated` over the timed
  calls (on the CPU: the process's peak resident memory, VmHWM).
- sampling: `PixelDiTPipeline` with `PixelDiTFlowScheduler(solver="adams_bashforth")`, the ImageNet 256 model card's
  recipe (`RECIPE` of `bench_vs_official.py`: `--steps` 100, CFG 3.25 in the interval [0.1, 1.0], shift 1),
  `--batch_size` 8 images, `output_type="latent"`, in `--sampling_dtype` (bf16) with `--sampling_backend` (native):
  "eager"; "FirstBlockCache 0.1" (`enable_cache(FirstBlockCacheConfig(threshold=0.1))`); "compiled"
  (`compile_repeated_blocks(fullgraph=True)`) and with `--max_autotune` also "compiled, max-autotune"
  (`mode="max-autotune-no-cudagraphs"`). One warm-up call first (a 10-step call for the compiled set-ups, which
  compiles both batch sizes, 2B inside the interval and B outside; its time is reported as compile time), then one
  timed call: img/s = images / wall time, peak memory over the timed call.
- `--official_repo`: the official `FlowDPMSolverSampler` on the same weights, noise and recipe, beside our eager
  pipeline (the functions of `bench_vs_official.py`); skipped when not given.

`--budget_s` (420) bounds the time spent measuring: once spent, no new measurement starts, and the tables say what
was skipped. Tables are printed and written to `benchmarks/results/gpu_<device name>.md` (`--output`; `--quick` runs
add `_quick`), after every measurement, so that an interrupted run keeps what it measured.
"""

import argparse
import re
import shlex
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import diffusers
import torch
from bench_pixeldit2_vs_official import source_revision
from bench_transformer import PRESETS, build_model, cpu_model, peak_memory, reset_peak_memory, timed
from bench_vs_official import RECIPE, build_models, load_official_code, official_sample, our_pipeline, our_sample
from diffusers.hooks import FirstBlockCacheConfig
from diffusers.utils import logging as diffusers_logging


RESULTS = Path(__file__).resolve().parent / "results"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
BACKENDS = ["native", "_native_cudnn", "_native_efficient", "_native_flash", "flash", "_flash_3", "sage", "xformers"]
FORWARD_COLUMNS = ["resolution", "dtype", "backend", "ms / forward", "img/s", "peak memory GiB"]
SAMPLING_COLUMNS = ["set-up", "compile s", "sampling s", "s / step", "img/s", "speed-up", "peak memory GiB"]


class Budget:
    """Seconds left of `--budget_s`; `spent(what)` says (and records) when a measurement may no longer start."""

    def __init__(self, seconds: float):
        self.end = time.perf_counter() + seconds
        self.skipped = []

    def spent(self, what: str) -> bool:
        if time.perf_counter() < self.end:
            return False
        print(f"budget spent: skipping {what}", flush=True)
        self.skipped.append(what)
        return True


def gib(num_bytes: int) -> str:
    return f"{num_bytes / 2**30:.2f}"


def median_ms(fn, device: torch.device, warmup: int, repeats: int) -> float:
    """Median milliseconds of `repeats` calls after `warmup` calls; CUDA events on a GPU, wall clock otherwise."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end))
        else:
            times.append(timed(fn, device) * 1000)
    return statistics.median(times)


def table(columns: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|---|---|" + "---:|" * (len(columns) - 2)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def error_line(error: Exception) -> str:
    return f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"[:300]


def measure_forward(args, device, budget, rows, skipped_backends, report):
    generator = torch.Generator(device).manual_seed(0)
    for dtype_name in args.dtypes:
        if budget.spent(f"forward {dtype_name}"):
            continue
        model = build_model(args.preset, device, DTYPES[dtype_name]).eval()
        config = model.config
        labels = torch.tensor([207 % config.num_classes, config.num_classes], device=device)
        labels = labels.repeat(args.forward_batch // 2 + 1)[: args.forward_batch]
        timestep = torch.full((args.forward_batch,), 700.0, device=device)
        for size in args.resolutions:
            images = torch.randn(
                args.forward_batch, config.in_channels, size, size, generator=generator, device=device
            )
            images = images.to(DTYPES[dtype_name])
            for backend in args.backends:
                if budget.spent(f"forward {size}² {dtype_name} {backend}"):
                    continue

                forward = partial(model, images, timestep, class_labels=labels)
                try:
                    model.set_attention_backend(backend)
                    with torch.inference_mode():
                        forward()
                        before = reset_peak_memory(device)
                        ms = median_ms(forward, device, args.warmup, args.repeats)
                        peak = peak_memory(device)
                except Exception as error:  # an unavailable backend, or one that does not take these inputs
                    reason = error_line(error)
                    print(f"skipped backend {backend!r} ({size}², {dtype_name}): {reason}", flush=True)
                    skipped_backends.setdefault(backend, reason)
                    continue
                finally:
                    model.reset_attention_backend()
                peak_cell = gib(peak) if device.type == "cuda" else f"{gib(peak)} (RSS, {gib(before)} before)"
                row = [
                    f"{size}²",
                    dtype_name,
                    backend,
                    f"{ms:.2f}",
                    f"{args.forward_batch * 1000 / ms:.1f}",
                    peak_cell,
                ]
                rows.append(row)
                print("| " + " | ".join(row) + " |", flush=True)
                report()
        model.to("meta")  # frees its memory before the next dtype's model
        if device.type == "cuda":
            torch.cuda.empty_cache()


def sampling_seconds(pipe, noise, class_labels, steps: int, device: torch.device) -> tuple[float, int]:
    """Wall seconds of one sampling call and the peak memory over it."""
    reset_peak_memory(device)
    with torch.inference_mode():
        seconds = timed(lambda: our_sample(pipe, noise, class_labels, steps), device)
    return seconds, peak_memory(device)


def measure_sampling(args, device, budget, rows, report):
    dtype = DTYPES[args.sampling_dtype]
    model = build_model(args.preset, device, dtype).eval()
    model.set_attention_backend(args.sampling_backend)
    config, size = model.config, args.sampling_resolution
    generator = torch.Generator(device).manual_seed(0)
    noise = torch.randn(args.batch_size, config.in_channels, size, size, generator=generator, device=device)
    class_labels = torch.arange(args.batch_size) % config.num_classes
    pipe = our_pipeline(model)
    baseline = {}

    def add_row(name, compile_s, seconds, peak):
        baseline.setdefault("s", seconds)
        row = [name, compile_s, f"{seconds:.2f}", f"{seconds / args.steps:.4f}", f"{args.batch_size / seconds:.2f}"]
        rows.append(row + [f"{baseline['s'] / seconds:.2f}×", gib(peak)])
        print("| " + " | ".join(rows[-1]) + " |", flush=True)
        report()

    def run(name, warmup_steps, prepare=None, cleanup=None):
        if budget.spent(f"sampling {name}"):
            return
        try:
            start = time.perf_counter()
            if prepare:
                prepare()
            with torch.inference_mode():
                our_sample(pipe, noise, class_labels, warmup_steps)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            compile_s = f"{time.perf_counter() - start:.1f}" if "compiled" in name else "–"
            add_row(name, compile_s, *sampling_seconds(pipe, noise, class_labels, args.steps, device))
        except Exception as error:
            print(f"sampling {name} failed: {error_line(error)}", flush=True)
        finally:
            if cleanup:
                cleanup()

    run("eager", 2)
    run(
        f"FirstBlockCache {args.cache_threshold}",
        2,
        prepare=lambda: pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=args.cache_threshold)),
        cleanup=pipe.transformer.disable_cache,
    )
    if not args.no_compile:
        run("compiled", 10, prepare=lambda: pipe.transformer.compile_repeated_blocks(fullgraph=True))
    if args.official_repo and not budget.spent("official sampler"):
        measure_official(args, device, dtype, noise, class_labels, add_row)
    if args.max_autotune and not args.no_compile:

        def autotune():
            torch._dynamo.reset()
            pipe.transformer.compile_repeated_blocks(fullgraph=True, mode="max-autotune-no-cudagraphs")

        run("compiled, max-autotune", 10, prepare=autotune)


def measure_official(args, device, dtype, noise, class_labels, add_row):
    """The official sampler and our eager pipeline on the same weights, noise and recipe."""
    try:
        official = load_official_code(args.official_repo.resolve())
        torch.manual_seed(0)
        official_model, ours = build_models(official, args.preset, None)
        official_model.to(device, dtype)
        ours.to(device, dtype).set_attention_backend(args.sampling_backend)
        labels = class_labels.to(device)
        pipe = our_pipeline(ours)
        for name, sample in {
            "official sampler": lambda steps: official_sample(
                official, official_model, noise.to(dtype), labels, steps
            ),
            "ours, same weights": lambda steps: our_sample(pipe, noise, class_labels, steps),
        }.items():
            with torch.inference_mode():
                sample(2)
                reset_peak_memory(device)
                seconds = timed(lambda: sample(args.steps), device)  # noqa: B023
            add_row(name, "–", seconds, peak_memory(device))
        official_model.to("meta"), ours.to("meta")
    except Exception as error:
        print(f"official sampler failed: {error_line(error)}", flush=True)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help='"cuda" (default), "cuda:1" or "cpu" (smoke test)')
    parser.add_argument("--preset", default="XL", choices=PRESETS[:3])
    parser.add_argument("--resolutions", nargs="+", type=int, default=[256, 512], help="forward resolutions")
    parser.add_argument("--dtypes", nargs="+", default=["bf16", "fp16"], choices=list(DTYPES), help="forward dtypes")
    parser.add_argument("--backends", nargs="+", default=BACKENDS, help="attention backends tried for the forward")
    parser.add_argument("--forward_batch", type=int, default=2, help="forward batch (2: one CFG step)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed forward calls")
    parser.add_argument("--repeats", type=int, default=10, help="timed forward calls (median)")
    parser.add_argument("--steps", type=int, default=100, help="sampling steps; 0 skips sampling")
    parser.add_argument("--batch_size", type=int, default=8, help="images per sampling call")
    parser.add_argument("--sampling_resolution", type=int, default=256)
    parser.add_argument("--sampling_dtype", default="bf16", choices=list(DTYPES))
    parser.add_argument("--sampling_backend", default="native", help="attention backend of the sampling runs")
    parser.add_argument("--cache_threshold", type=float, default=0.1, help="FirstBlockCache threshold")
    parser.add_argument("--no_compile", action="store_true", help="skip the compiled sampling")
    parser.add_argument("--max_autotune", action="store_true", help='also mode="max-autotune-no-cudagraphs"')
    parser.add_argument("--official_repo", type=Path, help="checkout of the official code (4225ca5), optional")
    parser.add_argument("--budget_s", type=float, default=420, help="no new measurement starts after this")
    parser.add_argument("--quick", action="store_true", help="2 timed forwards, ≤ 10 steps, ≤ 2 images, native")
    parser.add_argument("--output", type=Path, help="markdown file (default: results/gpu_<device name>.md)")
    args = parser.parse_args()
    if args.quick:
        args.warmup, args.repeats = 1, 2
        args.steps, args.batch_size = min(args.steps, 10), min(args.batch_size, 2)
        if "--backends" not in sys.argv:
            args.backends = ["native"]
    return args


def main():
    args = parse_args()
    diffusers_logging.set_verbosity_error()
    device = torch.device(args.device)
    budget = Budget(args.budget_s)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        capability = ".".join(map(str, torch.cuda.get_device_capability(device)))
        machine = (
            f"{name} (compute capability {capability}, {gib(torch.cuda.get_device_properties(device).total_memory)}"
            f" GiB), CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}"
        )
    else:
        name = "cpu"
        machine = f"cpu ({cpu_model()}), {torch.get_num_threads()} threads"
    machine += f", torch {torch.__version__}, diffusers {diffusers.__version__}, {source_revision()}"
    print(machine, flush=True)
    stem = "gpu_" + re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") + ("_quick" if args.quick else "")
    output = args.output or RESULTS / f"{stem}.md"
    command = "python benchmarks/run_gpu.py " + shlex.join(
        "pixeldit-official" if argument == str(args.official_repo) else argument for argument in sys.argv[1:]
    )
    forward_rows, sampling_rows, skipped_backends = [], [], {}

    def report() -> str:
        sections = [
            f"### PixelDiT-{args.preset}, forward at batch {args.forward_batch} (one CFG step), median of "
            f"{args.repeats} after {args.warmup} warm-up calls",
            table(FORWARD_COLUMNS, forward_rows),
        ]
        if skipped_backends:
            sections.append(
                "Skipped attention backends:\n\n"
                + "\n".join(f"- `{backend}`: {reason}" for backend, reason in skipped_backends.items())
            )
        if args.steps:
            sections += [
                f"### PixelDiT-{args.preset}, {args.sampling_resolution}², {args.steps}-step AB2 sampling at batch "
                f"{args.batch_size}, CFG {RECIPE['guidance_scale']} in {list(RECIPE['guidance_interval'])}, shift "
                f"{RECIPE['shift']}, {args.sampling_dtype}, attention {args.sampling_backend!r}",
                table(SAMPLING_COLUMNS, sampling_rows),
            ]
        if budget.skipped:
            sections.append("Not measured (budget spent): " + ", ".join(budget.skipped) + ".")
        text = "\n\n".join(sections)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(f"{machine}\n\n`{command}`\n\n{text}\n")
        return text

    print("\n" + "| " + " | ".join(FORWARD_COLUMNS) + " |", flush=True)
    measure_forward(args, device, budget, forward_rows, skipped_backends, report)
    if args.steps:
        print("\n" + "| " + " | ".join(SAMPLING_COLUMNS) + " |", flush=True)
        measure_sampling(args, device, budget, sampling_rows, report)
    print("\n" + report())
    print(f"\nwritten to {output}")


if __name__ == "__main__":
    main()
