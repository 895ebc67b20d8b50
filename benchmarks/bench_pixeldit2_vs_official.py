"""PixelDiT2 side by side with the official code: one CFG forward and the model card's sampling, speed and agreement.

    git clone https://github.com/NVlabs/PixelDiT pixeldit2-official && git -C pixeldit2-official checkout 8f83fa8
    pip install --no-deps --target official-site timm==1.0.25 torchvision==0.28.0     # outside your environment
    python benchmarks/bench_pixeldit2_vs_official.py --official_repo pixeldit2-official --official_site official-site
    python benchmarks/bench_pixeldit2_vs_official.py --official_repo pixeldit2-official --official_site official-site \
        --preset PixelDiT2-B/16 --resolution 64 --dtypes fp32 bf16                           # bf16 accuracy

The official code is not part of this project (NVIDIA non-commercial licence); this script imports it from a
checkout you provide (`pixdit_core/` and `c2i/src/`), with timm and torchvision from `--official_site` (a folder
they were installed into with `pip install --no-deps --target`; a CUDA torchvision wheel works with a CPU torch: its
two op schemas are declared here). Lightning, imported at module level by `c2i/src/utils.py` for training code only,
is replaced by empty stand-ins where it is not installed; that file sets the float32 matmul precision to "medium",
which is set back to "highest".

It builds the official `PixelDiT2` of the preset with a random grounding encoder (timm DINOv3, `pretrained=False`;
its layer scales set to 1 so that its blocks matter), gives the denoiser random non-zero weights (its own
initialisation zeroes every modulation and the output layer), and loads the same weights into
`PixelDiT2Transformer2DModel` (`transformer_from_official_state_dict`) and a `transformers.DINOv3ViTModel`
(`timm_dinov3_to_transformers_state_dict`). Sampling uses the preset's model card recipe: `GroundedHeunSampler`,
`--steps` 50, CFG 2.4 in the interval (0.125, 0.9), noise scale 1 (the 512 px release: 2.1, (0.1, 0.925), 2).

- forward: one CFG step for `--batch_size` B images at official time t = 0.3 (inside the interval). Official: two
  calls, the conditional one grounded, the unconditional one `skip_grounding=True`. Ours, as `PixelDiT2Pipeline`
  runs it: `encode_grounding` on the B images, then one transformer call on the 2B rows `[null class, class]` with
  the grounding tokens for the conditional half (`grounding_mask`). Median wall time of `--repeats` calls taking
  turns after one warm-up call each; ratio = official time over ours (> 1: ours is faster); max |ours − official|
  of the x0 predictions (ours: x0 = x − max(σ, 0.05) · velocity). `--breakdown` adds the call patterns apart (fp32):
  the official model as one batched call (`skip_grounding_mask`), ours as two calls, each one's conditional call
  alone (an evaluation outside the interval; compared with the conditional half).
- sampling: the official `GroundedHeunSampler` (both branches at every evaluation) against `PixelDiT2Pipeline` with
  `PixelDiTFlowScheduler(solver="heun", time_grid="uniform")` (one batched forward per evaluation inside the
  interval, the conditional branch alone outside it), same noise, B images, `output_type="latent"`. Runs taking
  turns (`--sampling_repeats`, median); throughput ratio, denoiser rows evaluated, max |ours − official| on the
  final images.
- bf16: the official path is its CUDA one on the CPU: fp32 weights under `torch.autocast("cpu", torch.bfloat16)`
  around the sampler (its `BaseSampler` autocasts only on CUDA). Ours: "bf16" = transformer and encoder in bf16 (the
  model still returns a float32 velocity and the pipeline keeps the state in float32), and "bf16 storage, fp32
  compute" = `enable_layerwise_casting` (for the encoder `diffusers.hooks.apply_layerwise_casting`); on request
  (`--bf16_variants`) also "autocast" = ours the official way, fp32 weights under the same autocast. The error
  column is the max |x − x_fp32| of each against its own fp32 run (ours: the fp32 eager pipeline).
- denoiser rows: the images the denoiser ran on in one sampling call (calls × batch); Heun with N steps evaluates
  2N − 1 times, the official sampler at batch 2B each time (two calls), ours at 2B inside the interval and B outside.
- CPU util = process CPU time / (wall time × threads) over the timed calls: well under 100 % means that other
  processes took the cores.

Tables are printed and written to `benchmarks/results/pixeldit2_vs_official_<preset>_<resolution>.md` (`--output`).
"""

import argparse
import copy
import importlib
import importlib.util
import platform
import shlex
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

import diffusers
import torch
from bench_transformer import cpu_model
from diffusers.hooks import apply_layerwise_casting
from diffusers.utils import logging as diffusers_logging

import diffusers_pixeldit
from diffusers_pixeldit import (
    PixelDiT2Pipeline,
    PixelDiTFlowScheduler,
    transformer_from_official_state_dict,
)
from diffusers_pixeldit.conversion import dinov3_config_from_timm_state_dict, timm_dinov3_to_transformers_state_dict


RESULTS = Path(__file__).resolve().parent / "results"
OFFICIAL_COMMIT = "8f83fa8"
ENCODER_PREFIX = "dino_conditioner.encoder."
T_EPS = 0.05
FORWARD_TIME = 0.3  # official time of the timed forward (0 = noise, 1 = data); ours takes σ·1000 = (1 − t)·1000
RECIPE_256 = {"guidance": 2.4, "interval": (0.125, 0.9), "noise_scale": 1.0}
# our preset -> the official factory, its constructor settings that the weights do not fix, the model card's recipe
PRESETS = {
    "PixelDiT2-H/16-256": {
        "factory": "PixelDiT2-H/16",
        "official": {"grounding_encoder": "dinov3_vits16", "mlp_hidden_multiple": 0, "single_silu_cond": False,
                     "grounding_proj_heads": 16},
        "recipe": RECIPE_256,
    },
    "PixelDiT2-H/16-512": {
        "factory": "PixelDiT2-H/16",
        "official": {"grounding_encoder": "dinov3_vitb16", "mlp_hidden_multiple": 32, "single_silu_cond": True,
                     "grounding_proj_heads": 16},
        "recipe": {"guidance": 2.1, "interval": (0.1, 0.925), "noise_scale": 2.0},
    },
    "PixelDiT2-B/16": {"factory": "PixelDiT2-B/16", "official": {"grounding_encoder": "dinov3_vits16"}, "recipe": RECIPE_256},
    "PixelDiT2-L/16": {"factory": "PixelDiT2-L/16", "official": {"grounding_encoder": "dinov3_vits16"}, "recipe": RECIPE_256},
}  # fmt: skip
# our bf16 set-ups: bf16 weights and activations; bf16 weights upcast layer by layer; fp32 weights under autocast
BF16_VARIANTS = ["bf16", "bf16 storage, fp32 compute", "autocast"]
FORWARD_COLUMNS = ["dtype", "implementation", "forward s", "speed-up", "max abs diff of x0 vs official",
                   "error vs its fp32", "CPU util"]  # fmt: skip
SAMPLING_COLUMNS = ["dtype", "implementation", "sampling s", "fastest s", "s/step", "speed-up", "denoiser rows",
                    "max abs diff vs official", "error vs its fp32", "CPU util"]  # fmt: skip
_TORCHVISION_LIBRARY = []  # keeps the op-schema library alive


# ---------------------------------------------------------------- the official code


def _declare_torchvision_ops():
    """Declares `torchvision::nms` / `qnms`, which torchvision's Python part registers fake kernels for: a CUDA wheel's
    compiled ops do not load with a CPU torch, and its import fails without the schemas."""
    try:
        _ = torch.ops.torchvision.nms
    except (AttributeError, RuntimeError):
        library = torch.library.Library("torchvision", "DEF")
        library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        library.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _TORCHVISION_LIBRARY.append(library)


def _install_lightning_stand_ins():
    """Empty stand-ins for what `c2i/src/utils.py` imports from Lightning at module level (training code only)."""

    class Callback:
        def __init__(self, *args, **kwargs):
            pass

    class ModelCheckpoint(Callback):
        pass

    class LightningModule(torch.nn.Module):
        pass

    class Trainer:
        pass

    modules = {
        "lightning": {},
        "lightning.pytorch": {"Callback": Callback, "LightningModule": LightningModule, "Trainer": Trainer},
        "lightning.pytorch.loggers": {},
        "lightning.pytorch.loggers.wandb": {"_WANDB_AVAILABLE": False},
        "lightning.pytorch.callbacks": {"ModelCheckpoint": ModelCheckpoint},
        "lightning.pytorch.callbacks.model_checkpoint": {"ModelCheckpoint": ModelCheckpoint},
        "lightning.pytorch.utilities": {},
        "lightning.pytorch.utilities.types": {"STEP_OUTPUT": object},
        "lightning_utilities": {},
        "lightning_utilities.core": {},
        "lightning_utilities.core.rank_zero": {"rank_zero_info": lambda *args, **kwargs: None},
    }
    for name, attributes in modules.items():
        module = types.ModuleType(name)
        module.__dict__.update(attributes)
        sys.modules[name] = module
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, module)


def load_official_code(repo: Path, site: Path) -> types.SimpleNamespace:
    """The official PixelDiT2 factories and grounded samplers from a checkout and a folder holding timm/torchvision."""
    for path in ("pixdit_core/pixeldit2_c2i.py", "pixdit_core/grounding.py", "c2i/src/grounded_diffusion.py"):
        if not (repo / path).is_file():
            raise SystemExit(f"{repo} is not a checkout of NVlabs/PixelDiT ({OFFICIAL_COMMIT}): no {path}.")
    if not (site / "timm").is_dir() or not (site / "torchvision").is_dir():
        raise SystemExit(f"{site} holds no timm and torchvision (pip install --no-deps --target {site} ...).")
    for path in (repo, site):
        sys.path.insert(0, str(path))
    if "torchvision" not in sys.modules:
        _declare_torchvision_ops()
    if importlib.util.find_spec("lightning") is None:
        _install_lightning_stand_ins()
    pixeldit2_c2i = importlib.import_module("pixdit_core.pixeldit2_c2i")
    # c2i/src as a package of its own name (its files import each other relatively)
    package = types.ModuleType("official_pixeldit2_c2i_src")
    package.__path__ = [str(repo / "c2i" / "src")]
    sys.modules[package.__name__] = package
    importlib.import_module(f"{package.__name__}.utils")  # sets the float32 matmul precision to "medium"
    torch.set_float32_matmul_precision("highest")
    grounded_diffusion = importlib.import_module(f"{package.__name__}.grounded_diffusion")
    return types.SimpleNamespace(
        factories=pixeldit2_c2i.PixelDiT2_models, sampler=grounded_diffusion.GroundedHeunSampler
    )


@torch.no_grad()
def randomize_official_(model: torch.nn.Module, seed: int = 0):
    """Random non-zero weights for the official denoiser (its init zeroes every adaLN and the output layer), scaled
    so that activations stay O(1); the grounding encoder keeps timm's random init with its layer scales set to 1."""
    generator = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():
        if name.startswith(ENCODER_PREFIX):
            if name.endswith(("gamma_1", "gamma_2")):
                param.fill_(1.0)
            continue
        noise = torch.randn(param.shape, generator=generator)
        if param.ndim == 1 and "norm" in name:
            param.copy_(1 + 0.1 * noise)
        elif param.ndim == 1:
            param.copy_(0.05 * noise)
        elif "adaLN" in name:
            param.copy_(0.4 * noise / param.shape[-1] ** 0.5)
        elif param.ndim == 2 and "embedding_table" not in name:
            param.copy_(noise / param.shape[-1] ** 0.5)
        else:  # class embeddings, in-context positions
            param.copy_(0.5 * noise)


def build_models(official, preset: str):
    """`(official_model, transformer, grounding_encoder)`, fp32, eval mode, holding the same random weights."""
    spec = PRESETS[preset]
    torch.manual_seed(0)
    official_model = official.factories[spec["factory"]](pretrained_encoder=False, **spec["official"]).eval()
    randomize_official_(official_model)
    state_dict = {k: v.detach().clone() for k, v in official_model.state_dict().items()}
    encoder_state = {k[len(ENCODER_PREFIX) :]: v for k, v in state_dict.items() if k.startswith(ENCODER_PREFIX)}
    denoiser_state = {k: v for k, v in state_dict.items() if not k.startswith(ENCODER_PREFIX)}
    transformer = transformer_from_official_state_dict(
        denoiser_state,
        preset=preset,
        in_context_start=official_model.in_context_start,
        silu_conditioning=not official_model.single_silu_cond,
        noise_scale=spec["recipe"]["noise_scale"],
    ).eval()

    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    encoder = DINOv3ViTModel(DINOv3ViTConfig(**dinov3_config_from_timm_state_dict(encoder_state)))
    encoder.load_state_dict(timm_dinov3_to_transformers_state_dict(encoder_state), strict=True)
    return official_model, transformer, encoder.eval().requires_grad_(False)


# ---------------------------------------------------------------- ours


def autocast(enabled: bool):
    """fp32 weights under bf16 autocast: the official bf16 path (its sampler does this on CUDA only)."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled)


def our_pipeline(transformer, encoder, variant: str) -> PixelDiT2Pipeline:
    """The pipeline on the fp32 models ("eager", "autocast") or on copies of them set up as `variant`."""
    if variant not in ("eager", "autocast"):
        transformer, encoder = copy.deepcopy(transformer), copy.deepcopy(encoder)
    if variant == "bf16":
        transformer.to(torch.bfloat16)
        encoder.to(torch.bfloat16)
    elif variant == "bf16 storage, fp32 compute":
        transformer.enable_layerwise_casting(storage_dtype=torch.bfloat16, compute_dtype=torch.float32)
        apply_layerwise_casting(encoder, storage_dtype=torch.bfloat16, compute_dtype=torch.float32)
    pipe = PixelDiT2Pipeline(transformer, PixelDiTFlowScheduler(solver="heun", time_grid="uniform"), encoder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def our_x0(pipe: PixelDiT2Pipeline, variant: str, images, t, labels) -> torch.Tensor:
    """One CFG evaluation as the pipeline makes it: x0 of `[unconditional, conditional]`, (2B, C, H, W), float32."""
    model, batch = pipe.transformer, images.shape[0]
    with autocast(variant == "autocast"):
        tokens = pipe.encode_grounding(images)
        sigma = (1 - t).repeat(2)
        null = torch.full_like(labels, model.config.num_classes)
        velocity = model(
            hidden_states=torch.cat([images, images]),
            timestep=sigma * 1000,
            class_labels=torch.cat([null, labels]),
            grounding_hidden_states=torch.cat([torch.zeros_like(tokens), tokens]),
            grounding_mask=torch.arange(2 * batch) >= batch,
            return_dict=False,
        )[0].float()
    sigma = sigma.clamp(min=model.config.velocity_clamp_min_sigma).view(-1, 1, 1, 1)
    return torch.cat([images, images]) - sigma * velocity


def our_sample(pipe: PixelDiT2Pipeline, variant: str, noise, labels, steps: int, recipe: dict) -> torch.Tensor:
    with autocast(variant == "autocast"):
        return pipe(
            class_labels=labels.tolist(),
            height=noise.shape[2],
            width=noise.shape[3],
            num_inference_steps=steps,
            guidance_scale=recipe["guidance"],
            guidance_interval=recipe["interval"],
            latents=noise,
            output_type="latent",
        ).images.float()


# ---------------------------------------------------------------- the official calls


def official_x0(model, dtype_name: str, images, t, labels) -> torch.Tensor:
    null = torch.full_like(labels, model.num_classes)
    with autocast(dtype_name == "bf16"):
        conditional = model(images, t, labels)
        unconditional = model(images, t, null, skip_grounding=True)
    return torch.cat([unconditional, conditional]).float()


def official_sample(official, model, dtype_name: str, noise, labels, steps: int, recipe: dict) -> torch.Tensor:
    sampler = official.sampler(
        num_steps=steps,
        guidance=recipe["guidance"],
        guidance_interval_min=recipe["interval"][0],
        guidance_interval_max=recipe["interval"][1],
        noise_scale=recipe["noise_scale"],
        t_eps=T_EPS,
    )
    with autocast(dtype_name == "bf16"):
        return sampler(model, noise, labels, torch.full_like(labels, model.num_classes)).float()


def breakdown_calls(official_model, pipe: PixelDiT2Pipeline, images, t, labels) -> dict:
    """`--breakdown` (fp32): the call patterns apart, `{name: (function, conditional half only)}`. The official model
    as one batched call (`skip_grounding_mask`, its encoder then runs on both halves), ours as two calls (the
    unconditional one without grounding tokens), and each one's conditional call alone (an unguided evaluation)."""
    model, batch = pipe.transformer, images.shape[0]
    null = torch.full_like(labels, model.config.num_classes)
    timestep = (1 - t) * 1000
    sigma = (1 - t).clamp(min=model.config.velocity_clamp_min_sigma).view(-1, 1, 1, 1)

    def official_batched():
        both = torch.cat([images, images])
        mask = torch.arange(2 * batch) < batch  # no grounding for the unconditional half
        return official_model(both, t.repeat(2), torch.cat([null, labels]), skip_grounding_mask=mask).float()

    def ours_conditional():
        tokens = pipe.encode_grounding(images)
        return images - sigma * model(images, timestep, labels, grounding_hidden_states=tokens).sample

    def ours_two_calls():
        conditional = ours_conditional()
        return torch.cat([images - sigma * model(images, timestep, null).sample, conditional])

    return {
        "official, one batched call (skip_grounding_mask)": (official_batched, False),
        "ours, two calls": (ours_two_calls, False),
        "official, conditional call alone": (lambda: official_model(images, t, labels).float(), True),
        "ours, conditional call alone": (ours_conditional, True),
    }


# ---------------------------------------------------------------- timing


def in_turns(functions: dict, repeats: int, warmups: dict) -> tuple[dict, dict, dict, dict]:
    """Calls the functions in turn `repeats` times, after one call each of their `warmups`, so that a slow spell of
    the shared machine does not favour one of them: median and fastest wall time, CPU util and the last output of
    each."""
    times, cpu, outputs = {name: [] for name in functions}, dict.fromkeys(functions, 0.0), {}
    for fn in warmups.values():
        fn()
    for _ in range(repeats):
        for name, fn in functions.items():
            cpu_start, start = time.process_time(), time.perf_counter()
            outputs[name] = fn()
            times[name].append(time.perf_counter() - start)
            cpu[name] += time.process_time() - cpu_start
            print(f"  {name}: {times[name][-1]:.2f} s", flush=True)
    util = {name: cpu[name] / (sum(times[name]) * torch.get_num_threads()) for name in functions}
    medians = {name: statistics.median(values) for name, values in times.items()}
    return medians, {name: min(values) for name, values in times.items()}, util, outputs


def count_rows(model: torch.nn.Module, counter: list, progress_every: int = 40):
    """Adds the batch size of every call of `model` to `counter[0]`, printing the progress every few calls."""
    calls, start = [0], [time.perf_counter()]

    def hook(module, args, kwargs):
        counter[0] += (args[0] if args else kwargs["hidden_states"]).shape[0]
        calls[0] += 1
        if calls[0] % progress_every == 0:
            print(f"    {calls[0]} denoiser calls, {time.perf_counter() - start[0]:.0f} s", flush=True)
        elif calls[0] == 1:
            start[0] = time.perf_counter()

    return model.register_forward_pre_hook(hook, with_kwargs=True)


def source_revision() -> str:
    """The git commit of this checkout, with "+ changes" when its files differ from it."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True)
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--", "src"], cwd=root, capture_output=True, text=True
        )
    except OSError:
        return "commit unknown"
    return f"commit {commit.stdout.strip() or '?'}" + (" + changes in src/" if changed.stdout.strip() else "")


def recorded_arguments(argv: list[str]) -> list[str]:
    """The command-line arguments with the two local folders named as in the module docstring, not by their local paths."""
    names = {"--official_repo": "pixeldit2-official", "--official_site": "official-site"}
    recorded, previous = [], None
    for argument in argv:
        option, equals, _ = argument.partition("=")
        if equals and option in names:
            argument = f"{option}={names[option]}"
        recorded.append(names[previous] if previous in names else argument)
        previous = argument
    return recorded


def max_diff(a: torch.Tensor, b: torch.Tensor) -> str:
    return f"{(a - b).abs().max().item():.1e}"


def ratio(reference: float, value: float) -> str:
    return f"{reference / value:.2f}×"


def table(header: list[str], rows: list[list[str]], numeric_from: int = 2) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * numeric_from + "---:|" * (len(header) - numeric_from)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--official_repo", type=Path, required=True, help=f"checkout of NVlabs/PixelDiT ({OFFICIAL_COMMIT})"
    )
    parser.add_argument(
        "--official_site", type=Path, required=True, help="folder with timm and torchvision (pip --target)"
    )
    parser.add_argument("--preset", default="PixelDiT2-H/16-256", choices=list(PRESETS))
    parser.add_argument("--resolution", type=int, help="image side (default: the preset's sample size, 256)")
    parser.add_argument("--dtypes", nargs="+", default=["fp32"], choices=["fp32", "bf16"])
    parser.add_argument(
        "--bf16_variants", nargs="+", default=BF16_VARIANTS[:2], choices=BF16_VARIANTS, help="our bf16 set-ups"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed forward calls per implementation (median)")
    parser.add_argument("--steps", type=int, default=50, help="Heun steps of the sampling")
    parser.add_argument("--sampling_repeats", type=int, default=1, help="sampling runs per implementation (median)")
    parser.add_argument("--batch_size", type=int, default=1, help="images B: forward on 2B rows, sampling B images")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--skip_sampling", action="store_true")
    parser.add_argument(
        "--breakdown", action="store_true", help="also time the fp32 call patterns apart (batched or not, unguided)"
    )
    parser.add_argument("--output", type=Path, help="markdown file (default: results/pixeldit2_vs_official_<...>.md)")
    args = parser.parse_args()
    if args.dtypes[0] != "fp32":
        parser.error("the bf16 rows are compared with the fp32 run: pass --dtypes fp32 bf16")
    diffusers_logging.set_verbosity_error()
    torch.set_num_threads(args.threads)

    official = load_official_code(args.official_repo.resolve(), args.official_site.resolve())
    start = time.perf_counter()
    official_model, transformer, encoder = build_models(official, args.preset)
    recipe, size, batch = (
        PRESETS[args.preset]["recipe"],
        args.resolution or transformer.config.sample_size,
        args.batch_size,
    )
    machine = (
        f"cpu ({cpu_model()}, {platform.machine()}), {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"diffusers {diffusers.__version__}, diffusers-pixeldit {getattr(diffusers_pixeldit, '__version__', '?')} "
        f"({source_revision()}); official {OFFICIAL_COMMIT}"
    )
    params = sum(p.numel() for p in transformer.parameters()) / 1e6
    encoder_params = sum(p.numel() for p in encoder.parameters()) / 1e6
    print(machine)
    print(f"{args.preset}, {size}², {params:.1f} M parameters + DINOv3 {encoder_params:.1f} M (random weights); "
          f"built in {time.perf_counter() - start:.0f} s", flush=True)  # fmt: skip

    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, transformer.config.in_channels, size, size, generator=generator)
    t = torch.full((batch,), FORWARD_TIME)
    labels = torch.arange(batch) * 97 % transformer.config.num_classes
    noise = torch.randn(batch, transformer.config.in_channels, size, size, generator=generator)

    forward_rows, sampling_rows, fp32_x0, fp32_samples = [], [], {}, {}
    for dtype_name in args.dtypes:
        variants = ["eager"] if dtype_name == "fp32" else args.bf16_variants
        pipes = {f"ours, {v}": (our_pipeline(transformer, encoder, v), v) for v in variants}
        official_name = "official" if dtype_name == "fp32" else "official (autocast)"
        forwards = {official_name: lambda d=dtype_name: official_x0(official_model, d, images, t, labels)}
        forwards |= {name: lambda p=p: our_x0(*p, images, t, labels) for name, p in pipes.items()}
        halves = set()
        if args.breakdown and dtype_name == "fp32":
            for name, (fn, half) in breakdown_calls(
                official_model, pipes["ours, eager"][0], images, t, labels
            ).items():
                forwards[name] = fn
                halves |= {name} if half else set()
        print(
            f"{dtype_name}: forward at batch {2 * batch} (one CFG step), {args.repeats} repeats in turns", flush=True
        )
        with torch.inference_mode():
            forward_s, _, forward_util, x0 = in_turns(forwards, args.repeats, warmups=forwards)
        if dtype_name == "fp32":
            fp32_x0 = {"official": x0[official_name], "ours": x0["ours, eager"]}
        for name in forwards:
            official_x0_rows = x0[official_name][batch:] if name in halves else x0[official_name]
            reference = fp32_x0["official" if name.startswith("official") else "ours"]
            error = "–" if name in halves or x0[name].shape != reference.shape else max_diff(x0[name], reference)
            forward_rows.append([
                dtype_name, name, f"{forward_s[name]:.3f}", ratio(forward_s[official_name], forward_s[name]),
                max_diff(x0[name], official_x0_rows), error, f"{100 * forward_util[name]:.0f}%",
            ])  # fmt: skip
        if args.skip_sampling:
            continue

        samplers, warmups = {}, {}  # warm-up: 2 steps, i.e. an unguided and two guided evaluations
        for steps, functions in ((args.steps, samplers), (2, warmups)):
            functions[official_name] = lambda d=dtype_name, n=steps: official_sample(
                official, official_model, d, noise, labels, n, recipe
            )
            functions |= {
                name: lambda p=p, n=steps: our_sample(*p, noise, labels, n, recipe) for name, p in pipes.items()
            }
        runs = f"{args.sampling_repeats} run(s) in turns"
        print(f"{dtype_name}: {args.steps}-step sampling at batch {batch}, {runs}", flush=True)
        with torch.inference_mode():
            for fn in warmups.values():
                fn()
            rows = {name: [0] for name in forwards}
            hooks = [count_rows(official_model, rows[official_name])]
            hooks += [count_rows(pipe.transformer, rows[name]) for name, (pipe, _) in pipes.items()]
            sampling_s, fastest_s, sampling_util, samples = in_turns(samplers, args.sampling_repeats, warmups={})
        for hook in hooks:
            hook.remove()
        if dtype_name == "fp32":
            fp32_samples = {"official": samples[official_name], "ours": samples["ours, eager"]}
        for name in samplers:
            reference = fp32_samples["official" if name.startswith("official") else "ours"]
            sampling_rows.append([
                dtype_name, name, f"{sampling_s[name]:.1f}", f"{fastest_s[name]:.1f}", f"{sampling_s[name] / args.steps:.2f}",
                ratio(sampling_s[official_name], sampling_s[name]), f"{rows[name][0] // args.sampling_repeats}",
                f"{(samples[name] - samples[official_name]).abs().max().item():.1e}",
                f"{(samples[name] - reference).abs().max().item():.1e}", f"{100 * sampling_util[name]:.0f}%",
            ])  # fmt: skip
        del pipes, samplers, warmups, forwards

    title = f"{args.preset}, {size}², batch {batch}, {torch.get_num_threads()} threads"
    sections = [
        f"### {title}: forward at batch {2 * batch} (one CFG step, t = {FORWARD_TIME}), median of {args.repeats}",
        table(FORWARD_COLUMNS, forward_rows),
    ]
    if sampling_rows:
        interval = recipe["interval"]
        sections += [
            f"### {title}: {args.steps}-step Heun sampling, CFG {recipe['guidance']} in {interval}, noise scale "
            f"{recipe['noise_scale']}" + (f", median of {args.sampling_repeats}" if args.sampling_repeats > 1 else ""),
            table(SAMPLING_COLUMNS, sampling_rows),
        ]
    scale = f"Scale of the compared values (official, fp32): max |x0| {fp32_x0['official'].abs().max().item():.2f}"
    if fp32_samples:
        scale += f", max |final image| {fp32_samples['official'].abs().max().item():.2f}"
    sections.insert(0, scale + ".")
    report = "\n\n".join(sections)
    print("\n" + report)
    command = "python benchmarks/bench_pixeldit2_vs_official.py " + shlex.join(recorded_arguments(sys.argv[1:]))
    output = args.output or RESULTS / (
        f"pixeldit2_vs_official_{args.preset.removeprefix('PixelDiT2-').replace('/', '').lower()}_{size}"
        f"{'_' + '_'.join(args.dtypes) if args.dtypes != ['fp32'] else ''}.md"
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(f"{machine}\n\n`{command}`\n\n{report}\n")
    print(f"\nwritten to {output}")


if __name__ == "__main__":
    main()
