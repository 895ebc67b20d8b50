"""diffusers' caches on the embedded digits models: wall clock, work skipped, quality and deviation.

    python benchmarks/bench_caches.py --quick            # class-conditional, 2 digits per class, a few caches
    python benchmarks/bench_caches.py                    # both models, 10 digits per class, every cache below
    python benchmarks/bench_caches.py --pixel_pathway    # where the forward time goes, and what reusing each pathway costs

Each configuration samples the model's shipped recipe (steps or `--steps`, sampler, CFG scale and interval) for
`--per_class` digits per class (same seeds everywhere) with one cache enabled (`pipe.transformer.enable_cache`;
"whole step" is `whole_step_cache_config`, TaylorSeer's lite mode, which skips both pathways) and reports: the wall
time of the call, the work done in the patch and pixel blocks (rows through their attention outputs and
feed-forwards, against the uncached call), the accuracy and Fréchet distance of `DigitClassifier` (as
`eval_digits.py`), and the largest pixel deviation (in [0, 1]) from the uncached images. MagCache uses the ratios
shipped beside each model (`mag_ratios.json`).

`--pixel_pathway` times the patch and pixel blocks over an uncached call, then, along the uncached trajectory,
compares each step's velocity with three reuses of the previous step: the patch-level residual (what FirstBlockCache
and MagCache do: the pixel pathway still runs), the whole-model residual (patch and pixel pathways), and the whole
previous output.
"""

import argparse
import statistics
import time

import numpy as np
import torch
from diffusers.hooks import FirstBlockCacheConfig, PyramidAttentionBroadcastConfig, TaylorSeerCacheConfig
from eval_digits import load_pipeline

from diffusers_pixeldit.caching import (
    faster_cache_config,
    mag_cache_config,
    pyramid_attention_broadcast_config,
    whole_step_cache_config,
)
from diffusers_pixeldit.digits import DIGIT_NAMES, DigitClassifier, frechet_distance, load_digit_splits


CACHES = {
    "FirstBlockCache 0.05": lambda pipe, folder: FirstBlockCacheConfig(threshold=0.05),
    "FirstBlockCache 0.1": lambda pipe, folder: FirstBlockCacheConfig(threshold=0.1),
    "FirstBlockCache 0.2": lambda pipe, folder: FirstBlockCacheConfig(threshold=0.2),
    "TaylorSeer interval 2": lambda pipe, folder: TaylorSeerCacheConfig(
        cache_interval=2, disable_cache_before_step=3, taylor_factors_dtype=torch.float32
    ),
    "TaylorSeer interval 3": lambda pipe, folder: TaylorSeerCacheConfig(
        cache_interval=3, disable_cache_before_step=3, taylor_factors_dtype=torch.float32
    ),
    "whole step, interval 2": lambda pipe, folder: whole_step_cache_config(cache_interval=2),
    "whole step, interval 3": lambda pipe, folder: whole_step_cache_config(cache_interval=3),
    "whole step, interval 3, order 2": lambda pipe, folder: whole_step_cache_config(cache_interval=3, max_order=2),
    "MagCache 0.06": lambda pipe, folder: mag_cache_config(folder, threshold=0.06),
    "MagCache 0.12": lambda pipe, folder: mag_cache_config(folder, threshold=0.12),
    "FasterCache": lambda pipe, folder: faster_cache_config(pipe),
    "PAB 2": lambda pipe, folder: pyramid_attention_broadcast_config(pipe),  # the patch blocks' attention
    "PAB 2, pixel blocks too": lambda pipe, folder: pyramid_attention_broadcast_config(
        pipe, spatial_attention_block_identifiers=PyramidAttentionBroadcastConfig().spatial_attention_block_identifiers
    ),
}
QUICK_CACHES = [
    "FirstBlockCache 0.1",
    "TaylorSeer interval 2",
    "whole step, interval 2",
    "MagCache 0.06",
    "FasterCache",
    "PAB 2",
]


def condition(kind: str, per_class: int) -> dict:
    labels = [label for label in range(10) for _ in range(per_class)]
    if kind == "c2i":
        return {"class_labels": labels}
    return {"prompt": [f"a handwritten digit {DIGIT_NAMES[label]}" for label in labels]}


def count_work(transformer) -> tuple[dict, list]:
    """Rows computed by the attention outputs and feed-forwards of the patch and pixel blocks, counted by forward
    hooks on those layers (which caches skip: a block hook still sees a skipped block called); returns the counter and
    the hooks."""
    rows, hooks = {"patch": 0, "pixel": 0}, []
    for group, blocks in (("patch", transformer.transformer_blocks), ("pixel", transformer.pixel_blocks)):
        for block in blocks:
            for layer in (block.attn.to_out[0], block.ff):

                def count(module, args, output, group=group):
                    rows[group] += args[0].shape[0]

                hooks.append(layer.register_forward_hook(count))
    return rows, hooks


def sample(pipe, kind: str, per_class: int, seed: int, num_steps: int | None = None) -> tuple[np.ndarray, float, dict]:
    """(images (N, H, W) in [0, 1], seconds, rows computed per pathway) of one call at the shipped recipe (or at
    `num_steps` steps)."""
    rows, hooks = count_work(pipe.transformer)
    generators = [torch.Generator().manual_seed(seed + i) for i in range(10 * per_class)]
    start = time.perf_counter()
    steps = {"num_inference_steps": num_steps} if num_steps else {}
    images = pipe(**condition(kind, per_class), **steps, generator=generators, output_type="np").images
    seconds = time.perf_counter() - start
    for hook in hooks:
        hook.remove()
    return images[..., 0], seconds, rows


def bench(args):
    classifier = DigitClassifier()
    test_features = classifier.features(load_digit_splits()["test"][0])
    labels = np.repeat(np.arange(10), args.per_class)
    print("| model | cache | s/call | patch work | pixel work | accuracy | FD | max deviation |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for kind in args.models:
        pipe, folder = load_pipeline(kind), pretrained_folder(kind)
        pipe.set_progress_bar_config(disable=True)
        sample(pipe, kind, 1, args.seed)  # warm-up
        reference, seconds, reference_rows = sample(pipe, kind, args.per_class, args.seed, args.steps)
        for name in ["none", *args.caches]:
            if name != "none":
                pipe.transformer.enable_cache(CACHES[name](pipe, folder))
                images, seconds, rows = sample(pipe, kind, args.per_class, args.seed, args.steps)
                pipe.transformer.disable_cache()
            else:
                images, rows = reference, reference_rows
            accuracy = float((classifier.predict(images) == labels).mean())
            distance = frechet_distance(classifier.features(images), test_features)
            deviation = float(np.abs(images - reference).max())
            print(
                f"| {kind} | {name} | {seconds:.2f} | {rows['patch'] / reference_rows['patch']:.0%} | "
                f"{rows['pixel'] / reference_rows['pixel']:.0%} | {accuracy:.0%} | "
                f"{distance:.2f} | {deviation:.3f} |"
            )


def pretrained_folder(kind: str):
    from diffusers_pixeldit.digits import pretrained_digits_path

    return pretrained_digits_path(kind)


def pixel_pathway(args):
    """Time shares of the two pathways, and the error of reusing each across steps (see the module docstring)."""
    for kind in args.models:
        pipe = load_pipeline(kind)
        pipe.set_progress_bar_config(disable=True)
        measure_pathways(pipe, kind, args.per_class, args.seed)


@torch.no_grad()
def measure_pathways(pipe, kind: str, per_class: int, seed: int):
    transformer = pipe.transformer
    seconds = {"patch": 0.0, "pixel": 0.0, "pixel attention": 0.0, "forward": 0.0}
    inputs, hooks = [], []

    def timed(group, module):
        def start(*_):
            module._start = time.perf_counter()

        def stop(*_):
            seconds[group] += time.perf_counter() - module._start

        return [module.register_forward_pre_hook(start), module.register_forward_hook(stop)]

    for block in transformer.transformer_blocks:
        hooks += timed("patch", block)
    for block in transformer.pixel_blocks:
        hooks += timed("pixel", block) + timed("pixel attention", block.attn)
    hooks += timed("forward", transformer)
    hooks.append(transformer.register_forward_pre_hook(lambda m, a, kw: inputs.append(dict(kw)), with_kwargs=True))
    sample(pipe, kind, per_class, seed)
    for hook in hooks:
        hook.remove()
    print(
        f"{kind}: forward {seconds['forward']:.2f} s over {len(inputs)} calls; patch blocks "
        f"{seconds['patch'] / seconds['forward']:.1%}, pixel blocks {seconds['pixel'] / seconds['forward']:.1%} "
        f"(their attention {seconds['pixel attention'] / seconds['forward']:.1%})"
    )

    first, last = transformer.transformer_blocks[0], transformer.transformer_blocks[-1]
    pixel_first, pixel_last = transformer.pixel_blocks[0], transformer.pixel_blocks[-1]

    def image_tokens(output):
        return output[1] if isinstance(output, tuple) else output

    def run(kw, replace=None):
        """The velocity and the pathway ends of one call; `replace` = (previous record, mode) reuses a residual."""
        record, hooks = {}, []
        hooks.append(first.register_forward_hook(lambda m, a, o: record.__setitem__("head", image_tokens(o))))
        hooks.append(last.register_forward_hook(lambda m, a, o: record.__setitem__("tail", image_tokens(o))))
        hooks.append(pixel_first.register_forward_pre_hook(lambda m, a: record.__setitem__("pixel_in", a[0])))
        hooks.append(pixel_last.register_forward_hook(lambda m, a, o: record.__setitem__("pixel_out", o)))
        if replace is not None:
            previous, mode = replace

            def reuse_patch(m, a, o):
                tokens = record["head"] + previous["tail"] - previous["head"]
                return (o[0], tokens) if isinstance(o, tuple) else tokens

            def reuse_pixel(m, a, o):
                return record["pixel_in"] + previous["pixel_out"] - previous["pixel_in"]

            hooks.append((last if mode == "patch" else pixel_last).register_forward_hook(
                reuse_patch if mode == "patch" else reuse_pixel
            ))  # fmt: skip
        record["velocity"] = transformer(**kw)[0]
        for hook in hooks:
            hook.remove()
        return record

    records = [run(kw) for kw in inputs]
    errors = {"patch-level residual (pixel pathway runs)": [], "whole-model residual": [], "previous output": []}
    for i in range(1, len(inputs)):
        if inputs[i]["hidden_states"].shape != inputs[i - 1]["hidden_states"].shape:
            continue  # the batch layout changed (CFG interval)
        reference = records[i]["velocity"]
        norm = reference.norm()
        reuses = (
            run(inputs[i], (records[i - 1], "patch"))["velocity"],
            run(inputs[i], (records[i - 1], "all"))["velocity"],
            records[i - 1]["velocity"],
        )
        for name, velocity in zip(errors, reuses):
            errors[name].append(((velocity - reference).norm() / norm).item())
    for name, values in errors.items():
        print(
            f"  reusing the {name}: relative velocity error mean {statistics.mean(values):.3f}, "
            f"median {statistics.median(values):.3f}, last step {values[-1]:.3f}, max {max(values):.3f} "
            f"({len(values)} steps)"
        )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["c2i", "t2i"], choices=["c2i", "t2i"])
    parser.add_argument("--caches", nargs="+", choices=list(CACHES), help="Default: all (--quick: a few).")
    parser.add_argument("--per_class", type=int, default=10, help="Generated digits per class.")
    parser.add_argument("--steps", type=int, help="Sampling steps (default: the shipped recipe's).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="c2i, 2 digits per class (and a few caches by default).")
    parser.add_argument("--pixel_pathway", action="store_true", help="The pathway time shares and reuse errors.")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.quick:
        args.models, args.per_class = ["c2i"], 2
    args.caches = args.caches or (QUICK_CACHES if args.quick else list(CACHES))
    pixel_pathway(args) if args.pixel_pathway else bench(args)


if __name__ == "__main__":
    main()
