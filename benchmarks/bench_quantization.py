# Copyright 2026 The diffusers-pixeldit authors. Licensed under the Apache License, Version 2.0.
"""Weight memory and CPU forward of PixelDiT-B (random weights, zero-initialised layers given small random values)
loaded in fp32, bf16 (`_keep_in_fp32_modules` in fp32) and torchao int8 weight-only (fp32 activations).

    python benchmarks/bench_quantization.py  # writes benchmarks/results/quantization_b.md
"""

import platform
import tempfile
import time
from pathlib import Path

import torch
from diffusers import TorchAoConfig
from torchao.quantization import Int8WeightOnlyConfig

from diffusers_pixeldit import PixelDiTTransformer2DModel


RESULTS = Path(__file__).parent / "results" / "quantization_b.md"


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes the parameters hold (a torchao tensor: its int8 data and scales)."""
    total = 0
    for param in model.parameters():
        names = getattr(param, "tensor_data_names", None)
        total += sum(getattr(param, n).nbytes for n in names) if names else param.nbytes
    return total


def main():
    torch.manual_seed(0)
    model = PixelDiTTransformer2DModel.from_preset("PixelDiT-B", sample_size=64)
    with torch.no_grad():
        for param in model.parameters():
            if not param.abs().sum():
                param.normal_(std=0.02)
    inputs = {
        "hidden_states": torch.randn(1, 3, 64, 64),
        "timestep": torch.tensor([500.0]),
        "class_labels": torch.tensor([207]),
    }
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        del model
        variants = {
            "fp32": {},
            "bf16 (embeddings fp32)": {"dtype": torch.bfloat16},
            "torchao int8 weight-only": {
                "quantization_config": TorchAoConfig(Int8WeightOnlyConfig()),
                "dtype": torch.float32,
            },
        }
        reference = None
        for name, options in variants.items():
            loaded = PixelDiTTransformer2DModel.from_pretrained(folder, **options).eval()
            dtype = torch.bfloat16 if options.get("dtype") == torch.bfloat16 else torch.float32
            call = {**inputs, "hidden_states": inputs["hidden_states"].to(dtype)}
            with torch.no_grad():
                loaded(**call)  # warm-up
                start = time.perf_counter()
                output = loaded(**call).sample.float()
                seconds = time.perf_counter() - start
            reference = output if reference is None else reference
            error = ((output - reference).abs().max() / reference.abs().max()).item()
            rows.append((name, weight_bytes(loaded) / 2**20, seconds, error))
            del loaded
    lines = [
        "# PixelDiT-B weight memory and forward (batch 1, 64², CPU)",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}. Written by `benchmarks/bench_quantization.py`.",
        "",
        "| weights | parameter memory (MiB) | forward (s) | max abs error / max abs fp32 output |",
        "|---|---:|---:|---:|",
        *[f"| {name} | {mib:.1f} | {seconds:.3f} | {error:.2e} |" for name, mib, seconds, error in rows],
        "",
    ]
    RESULTS.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
