"""Side by side with the official PixelDiT code: forward and model-card sampling, speed and agreement.

    git clone https://github.com/Bili-Sakura/PixelDiT-diffusers pixeldit-official
    git -C pixeldit-official checkout 4225ca5
    python benchmarks/bench_vs_official.py --official_repo pixeldit-official                   # XL 256², fp32
    python benchmarks/bench_vs_official.py --official_repo pixeldit-official --preset B --resolution 64 \
        --dtypes fp32 bf16 --steps 100                                                          # bf16 accuracy
    python benchmarks/bench_vs_official.py --official_repo pixeldit-official --variants eager \
        --caches "whole step, interval 2" "whole step, interval 3"                             # caches at XL

The official code is not part of this project (NVIDIA non-commercial licence); this script imports it from a
checkout you provide, builds its class-conditional `PixDiT` for the preset with random weights, and gives the same
weights to `PixelDiTTransformer2DModel` through `diffusers_to_official_state_dict` (or loads `--checkpoint`, an
official `.ckpt`, into both). Sampling uses the model card's recipe for the ImageNet release unless told otherwise:
FlowDPMSolver (2-step Adams–Bashforth) with `--steps` 100, CFG 3.25, shift 1, CFG interval [0.1, 1.0].

- forward: median wall time of `--repeats` calls at batch 2 (one CFG step), taking turns with the other set-ups after
  one warm-up call each; ratio = official time
  over ours (> 1: ours is faster); max |ours − official| on the velocity (ours is negated: the release predicts
  x0 − noise).
- sampling: the official `FlowDPMSolverSampler` (both CFG branches at every step) against `PixelDiTPipeline` with
  `PixelDiTFlowScheduler` (the unconditional branch only inside the CFG interval), same noise, `--batch_size` images;
  throughput ratio and max |ours − official| on the final pixels.
- bf16: both models' weights in bf16. The official sampler then runs entirely in bf16 (state, time grid, CFG
  arithmetic), ours keeps the state, the time and the CFG arithmetic in fp32; the error column is the max |x − x_fp32|
  of each against its own fp32 run.
Our set-ups (`--variants`): "eager" (the model as loaded), "fused qkv + compiled" (`fuse_qkv_projections()` and
`compile_repeated_blocks(fullgraph=True)`) and, for bf16, "bf16 storage, fp32 compute" (`enable_layerwise_casting`:
bf16 weights, upcast layer by layer; for CPUs without native bf16 matrix units, where bf16 GEMMs are emulated). On
request also "fused qkv + compiled, frozen": the whole model compiled with inductor freezing
(`compile(dynamic=False, options={"freezing": True})`; inference only, the weights become pre-packed constants of one
static graph per batch size). Compilation happens before the timings, in forward calls and a short sampling call at
both batch sizes, and is reported apart.

`--caches`: our eager model samples again with each diffusers cache enabled (fp32 only); each row gives the sampling
time, the throughput ratio to the official sampler, and the max |x − x_uncached| against our uncached samples (also
relative to max |x_uncached|). "whole step" is `whole_step_cache_config` (TaylorSeer lite: both pathways skipped,
the output projection extrapolated), FirstBlockCache skips the patch blocks only.

The official sampler module imports Lightning, timm and torchvision for its training code only; where they are not
installed, empty stand-in modules take their place (sampling uses none of them).
"""

import argparse
import copy
import importlib.util
import statistics
import sys
import time
import types
from functools import partial
from pathlib import Path

import torch
from bench_transformer import DTYPES, build_model, cpu_model
from diffusers.hooks import FirstBlockCacheConfig
from diffusers.utils import logging as diffusers_logging

from diffusers_pixeldit import (
    PixelDiTFlowScheduler,
    PixelDiTPipeline,
    diffusers_to_official_state_dict,
    load_official_checkpoint,
    transformer_from_official_state_dict,
    whole_step_cache_config,
)


VARIANTS = {
    "eager": "the model as loaded",
    "fused qkv + compiled": "`fuse_qkv_projections()` and `compile_repeated_blocks(fullgraph=True)`",
    "bf16 storage, fp32 compute": "bf16 weights upcast layer by layer (`enable_layerwise_casting`), bf16 rows only",
    "fused qkv + compiled, frozen": '`fuse_qkv_projections()` and `compile(dynamic=False, options={"freezing": True})`',
}
DEFAULT_VARIANTS = ["eager", "fused qkv + compiled", "bf16 storage, fp32 compute"]
CACHES = {
    "whole step, interval 2": lambda: whole_step_cache_config(cache_interval=2),
    "whole step, interval 3": lambda: whole_step_cache_config(cache_interval=3),
    "whole step, interval 3, order 2": lambda: whole_step_cache_config(cache_interval=3, max_order=2),
    "FirstBlockCache 0.1": lambda: FirstBlockCacheConfig(threshold=0.1),
    "FirstBlockCache 0.2": lambda: FirstBlockCacheConfig(threshold=0.2),
}
RECIPE = {"guidance_scale": 3.25, "shift": 1.0, "guidance_interval": (0.1, 1.0)}
TRAINING_ONLY_IMPORTS = {
    "torchvision": {},
    "torchvision.transforms": {"Normalize": None},
    "timm": {},
    "timm.data": {},
    "timm.data.constants": {"IMAGENET_DEFAULT_MEAN": None, "IMAGENET_DEFAULT_STD": None},
}


def load_official_code(repo: Path) -> types.SimpleNamespace:
    """The official class-conditional model class and sampler from a checkout of the official repository."""
    if not (repo / "pixdit_core" / "pixeldit_c2i.py").is_file():
        raise SystemExit(f"{repo} is not a checkout of the official PixelDiT code (no pixdit_core/pixeldit_c2i.py).")
    sys.path.insert(0, str(repo))
    from pixdit_core.pixeldit_c2i import PixDiT

    missing = {
        name.split(".")[0] for name in TRAINING_ONLY_IMPORTS if importlib.util.find_spec(name.split(".")[0]) is None
    }
    for name, attributes in TRAINING_ONLY_IMPORTS.items():
        if name.split(".")[0] in missing:
            sys.modules[name] = types.SimpleNamespace(**attributes)
    package = types.ModuleType("official_c2i_src")
    package.__path__ = [str(repo / "c2i" / "src")]
    sys.modules[package.__name__] = package
    utils = types.ModuleType("official_c2i_src.utils")  # Lightning callbacks; the samplers need none of it
    utils.no_grad = None
    sys.modules[utils.__name__] = utils
    spec = importlib.util.spec_from_file_location("official_c2i_src.diffusion", repo / "c2i" / "src" / "diffusion.py")
    diffusion = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(diffusion)
    return types.SimpleNamespace(model_class=PixDiT, diffusion=diffusion)


def build_models(official, preset: str, checkpoint: str | None, fan_in_init: bool = False):
    """`(official_model, ours)` in fp32 eval mode, holding the same weights (see `--fan_in_init`)."""
    if checkpoint:
        state_dict, kind = load_official_checkpoint(checkpoint)
        if kind != "c2i":
            raise SystemExit(
                f"{checkpoint} is a {kind} checkpoint; this benchmark samples the class-conditional model."
            )
        ours = transformer_from_official_state_dict(state_dict)
    else:
        ours = build_model(preset, torch.device("cpu"), torch.float32)
        if fan_in_init:
            with torch.no_grad():
                for param in ours.parameters():
                    if param.ndim == 2:
                        param.normal_(0.0, param.shape[1] ** -0.5)
        state_dict = diffusers_to_official_state_dict(ours.state_dict())
    config = ours.config
    official_model = official.model_class(
        in_channels=config.in_channels,
        num_groups=config.num_attention_heads,
        hidden_size=config.num_attention_heads * config.attention_head_dim,
        pixel_hidden_size=config.pixel_embed_dim,
        patch_depth=config.num_layers,
        pixel_depth=config.num_pixel_layers,
        patch_size=config.patch_size,
        num_classes=config.num_classes,
    )
    official_model.load_state_dict(state_dict, strict=True)
    return official_model.eval(), ours.eval()


def prepare_ours(model, variant: str, dtype: torch.dtype):
    """A copy of our fp32 `model` set up as `variant` (see `VARIANTS`) in `dtype`."""
    model = copy.deepcopy(model)
    if variant == "bf16 storage, fp32 compute":
        model.enable_layerwise_casting(storage_dtype=torch.bfloat16, compute_dtype=torch.float32)
        return model
    model.to(dtype)
    if variant == "fused qkv + compiled":
        model.fuse_qkv_projections()
        model.compile_repeated_blocks(fullgraph=True)
    elif variant == "fused qkv + compiled, frozen":
        model.fuse_qkv_projections()
        model.compile(dynamic=False, options={"freezing": True})
    return model


def input_dtype(name: str, dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if name == "bf16 storage, fp32 compute" else dtype


def velocity(model, official: bool, images: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The velocity `noise - x0` at official time `t` (0 = noise), in float32; ours takes σ·1000 = (1 - t)·1000."""
    if official:
        return -model(images, t.to(images.dtype), labels).float()
    return model(images, (1 - t) * 1000, class_labels=labels).sample.float()


def interleaved_median_seconds(functions: dict, repeats: int) -> dict:
    """Median wall time of each function, calling them in turn `repeats` times (after one warm-up call each), so
    that a slow spell of the machine does not favour one of them."""
    times = {name: [] for name in functions}
    for fn in functions.values():
        fn()
    for _ in range(repeats):
        for name, fn in functions.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def official_sample(official, model, noise, class_labels, steps: int):
    sampler = official.diffusion.FlowDPMSolverSampler(
        scheduler=official.diffusion.LinearScheduler(),
        guidance_fn=official.diffusion.simple_guidance_fn,
        num_steps=steps,
        guidance=RECIPE["guidance_scale"],
        timeshift=RECIPE["shift"],
        guidance_interval_min=RECIPE["guidance_interval"][0],
        guidance_interval_max=RECIPE["guidance_interval"][1],
    )
    null_labels = torch.full_like(class_labels, model.num_classes)
    return sampler(model, noise, class_labels, null_labels)


def our_pipeline(model) -> PixelDiTPipeline:
    pipe = PixelDiTPipeline(model, PixelDiTFlowScheduler(solver="adams_bashforth"))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def our_sample(pipe, noise, class_labels, steps: int):
    return pipe(
        class_labels=class_labels.tolist(),
        height=noise.shape[2],
        width=noise.shape[3],
        num_inference_steps=steps,
        guidance_scale=RECIPE["guidance_scale"],
        guidance_interval=RECIPE["guidance_interval"],
        shift=RECIPE["shift"],
        latents=noise,
        output_type="latent",
    ).images


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official_repo", type=Path, required=True, help="checkout of the official code (4225ca5)")
    parser.add_argument("--preset", default="XL", choices=["B", "L", "XL"])
    parser.add_argument("--checkpoint", help="an official class-conditional .ckpt instead of random weights")
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--dtypes", nargs="+", default=["fp32"], choices=list(DTYPES))
    parser.add_argument("--repeats", type=int, default=3, help="timed forward calls (median)")
    parser.add_argument("--steps", type=int, default=100, help="sampling steps; 0 skips sampling")
    parser.add_argument("--batch_size", type=int, default=1, help="images per sampling call")
    parser.add_argument(
        "--variants", nargs="+", default=DEFAULT_VARIANTS, choices=list(VARIANTS), help="our set-ups to measure"
    )
    parser.add_argument(
        "--fan_in_init",
        action="store_true",
        help="random matrices N(0, 1/fan_in) instead of N(0, 0.02²): the velocity then depends on the image and the "
        "time (with N(0, 0.02²) it is nearly constant in both, so that every cache looks exact)",
    )
    parser.add_argument(
        "--caches", nargs="*", default=[], choices=list(CACHES), help="caches on our eager fp32 model (sampling)"
    )
    args = parser.parse_args()
    if args.caches and ("eager" not in args.variants or "fp32" not in args.dtypes):
        parser.error("--caches runs on the eager fp32 model: keep 'eager' in --variants and 'fp32' in --dtypes.")
    diffusers_logging.set_verbosity_error()

    official = load_official_code(args.official_repo.resolve())
    torch.manual_seed(0)
    official_model, ours = build_models(official, args.preset, args.checkpoint, args.fan_in_init)
    size = args.resolution
    print(f"cpu ({cpu_model()}), {torch.get_num_threads()} threads, torch {torch.__version__}")
    weights = args.checkpoint or ("random weights, N(0, 1/fan_in)" if args.fan_in_init else "random weights")
    print(f"PixelDiT-{args.preset} ({weights}), {size}²")

    generator = torch.Generator().manual_seed(0)
    images = torch.randn(2, ours.config.in_channels, size, size, generator=generator)
    t = torch.tensor([0.3, 0.3])  # official time (0 = noise); ours takes σ·1000 = (1 - t)·1000
    labels = torch.tensor([207, ours.config.num_classes]) % (ours.config.num_classes + 1)
    noise = torch.randn(args.batch_size, ours.config.in_channels, size, size, generator=generator)
    class_labels = torch.arange(args.batch_size) % ours.config.num_classes

    rows, cache_rows, fp32_samples = [], [], {}
    for dtype_name in args.dtypes:
        dtype = DTYPES[dtype_name]
        variants = [v for v in args.variants if v != "bf16 storage, fp32 compute" or dtype == torch.bfloat16]
        official_model.to(dtype)
        models = {"official": official_model}
        for variant in variants:
            start = time.perf_counter()
            models[variant] = prepare_ours(ours, variant, dtype)
            with torch.inference_mode():  # batch 2 (guided steps) and 1 (unguided): compiled for both
                for batch in (2, 1):
                    velocity(
                        models[variant],
                        False,
                        images[:batch].to(input_dtype(variant, dtype)),
                        t[:batch],
                        labels[:batch],
                    )
                if "compiled" in variant and args.steps:  # the pipeline's own calls, both batch sizes
                    our_sample(our_pipeline(models[variant]), noise, class_labels, 10)
            if "compiled" in variant:
                print(
                    f"{dtype_name} {variant}: set-up, compilation and first call {time.perf_counter() - start:.1f} s"
                )

        calls = {
            name: partial(velocity, model, name == "official", images.to(input_dtype(name, dtype)), t, labels)
            for name, model in models.items()
        }
        with torch.inference_mode():
            outputs = {name: call() for name, call in calls.items()}
            forward_s = interleaved_median_seconds(calls, args.repeats)

        samples, sampling_s = {}, {}
        if args.steps:
            for name, model in models.items():
                start = time.perf_counter()
                with torch.inference_mode():
                    if name == "official":
                        samples[name] = official_sample(official, model, noise.to(dtype), class_labels, args.steps)
                    else:
                        samples[name] = our_sample(our_pipeline(model), noise, class_labels, args.steps)
                sampling_s[name] = time.perf_counter() - start
                samples[name] = samples[name].float()
                print(f"{dtype_name} {name}: {args.steps}-step sampling {sampling_s[name]:.1f} s", flush=True)
            if dtype == torch.float32:
                fp32_samples = {"official": samples["official"], "ours": samples[variants[0]]}

        for name in models:
            row = [dtype_name, name, f"{forward_s[name]:.3f}", f"{forward_s['official'] / forward_s[name]:.2f}×"]
            row.append(f"{(outputs[name] - outputs['official']).abs().max().item():.1e}")
            if args.steps:
                reference = fp32_samples.get("official" if name == "official" else "ours")
                error = "–" if reference is None else f"{(samples[name] - reference).abs().max().item():.1e}"
                row += [f"{sampling_s[name]:.1f}", f"{sampling_s['official'] / sampling_s[name]:.2f}×"]
                row += [f"{(samples[name] - samples['official']).abs().max().item():.1e}", error]
            rows.append("| " + " | ".join(row) + " |")
        if dtype == torch.float32 and args.steps and args.caches:
            cache_rows += cached_sampling_rows(models, samples, sampling_s, noise, class_labels, args)
        official_model.float()

    print(f"\n### PixelDiT-{args.preset}, {size}², forward at batch 2 (one CFG step)", end="")
    print(f"; sampling {args.steps} steps at batch {args.batch_size}, model-card recipe\n" if args.steps else "\n")
    header = ["dtype", "implementation", "forward s", "speed-up", "max abs diff vs official"]
    if args.steps:
        header += ["sampling s", "speed-up", "max abs diff vs official", "error vs its fp32"]
    print("| " + " | ".join(header) + " |")
    print("|---|---|" + "---:|" * (len(header) - 2))
    print("\n".join(rows))
    if cache_rows:
        print(f"\n### Caches: PixelDiT-{args.preset}, {size}², fp32, {args.steps} steps at batch {args.batch_size}\n")
        print("| set-up | sampling s | speed-up vs official | max abs diff vs uncached | relative |")
        print("|---|---:|---:|---:|---:|")
        print("\n".join(cache_rows))


def cached_sampling_rows(models, samples, sampling_s, noise, class_labels, args) -> list[str]:
    """Sampling with each of `args.caches` on the eager model: a table row each (see `--caches`)."""
    model, uncached = models["eager"], samples["eager"]
    rows = [f"| uncached | {sampling_s['eager']:.1f} | {sampling_s['official'] / sampling_s['eager']:.2f}× | 0 | 0 |"]
    for name in args.caches:
        model.enable_cache(CACHES[name]())
        start = time.perf_counter()
        with torch.inference_mode():
            images = our_sample(our_pipeline(model), noise, class_labels, args.steps).float()
        seconds = time.perf_counter() - start
        model.disable_cache()
        deviation = (images - uncached).abs().max().item()
        print(f"fp32 eager, {name}: {args.steps}-step sampling {seconds:.1f} s", flush=True)
        rows.append(
            f"| {name} | {seconds:.1f} | {sampling_s['official'] / seconds:.2f}× | {deviation:.1e} "
            f"| {deviation / uncached.abs().max().item():.1e} |"
        )
    return rows


if __name__ == "__main__":
    main()
