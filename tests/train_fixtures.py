"""Small real training data and helpers for the tests of the training examples (`examples/`)."""

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from diffusers_pixeldit.digits import DIGIT_NAMES


EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
if str(EXAMPLES) not in sys.path:
    sys.path.insert(0, str(EXAMPLES))

# A tiny from-scratch transformer (on top of the script's default preset), for 16x16 images.
TINY_TRANSFORMER = json.dumps(
    dict(
        patch_size=4,
        num_layers=2,
        num_attention_heads=2,
        attention_head_dim=8,
        num_pixel_layers=1,
        pixel_embed_dim=4,
    )
)
SUBPROCESS_ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def example(name: str):
    """Imports a training script of examples/ as a module."""
    return importlib.import_module(name)


def digits(count: int, size: int = 16) -> list[tuple[Image.Image, int]]:
    """The first `count` scikit-learn digits (8x8, 17 grey levels), upsampled to `size` x `size`."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = (data.images[:count] * (255 / 16)).astype(np.uint8)
    return [
        (Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR), int(label))
        for image, label in zip(images, data.target[:count])
    ]


def caption(label: int) -> str:
    return f"a handwritten digit {DIGIT_NAMES[label]}"


def pad_to_aspect_ratio(image: Image.Image, index: int) -> Image.Image:
    """Every third image stays square, the others are padded to 24x16 or 16x24 (width x height)."""
    if index % 3 == 0:
        return image
    canvas = Image.new(image.mode, (24, 16) if index % 3 == 1 else (16, 24))
    canvas.paste(image, (4, 0) if index % 3 == 1 else (0, 4))
    return canvas


def write_imagefolder(root: Path, count: int, captions: bool = False, aspect_ratios: bool = False) -> Path:
    """Digits as an `imagefolder`: class sub-folders named after the digits, plus a metadata.jsonl with captions."""
    metadata = []
    for index, (image, label) in enumerate(digits(count)):
        file_name = f"{DIGIT_NAMES[label]}/{index}.png"
        (root / DIGIT_NAMES[label]).mkdir(parents=True, exist_ok=True)
        (pad_to_aspect_ratio(image, index) if aspect_ratios else image).save(root / file_name)
        metadata.append({"file_name": file_name, "text": caption(label)})
    if captions:
        (root / "metadata.jsonl").write_text("\n".join(json.dumps(row) for row in metadata))
    return root


def save_digits_dataset(path: Path, count: int) -> Path:
    """Digits as a `datasets.Dataset` saved with `save_to_disk` (columns image, label (ClassLabel), text)."""
    import datasets

    samples = digits(count)
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=DIGIT_NAMES), "text": datasets.Value("string")}
    )
    data = {
        "image": [image for image, _ in samples],
        "label": [label for _, label in samples],
        "text": [caption(label) for _, label in samples],
    }
    datasets.Dataset.from_dict(data, features=features).save_to_disk(str(path))
    return path


def save_tiny_dinov2(path: Path) -> Path:
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    config = Dinov2Config(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, mlp_ratio=2, patch_size=2, image_size=14
    )
    Dinov2Model(config).save_pretrained(path)
    return path


def run_in_process(module, argv: list[str]):
    """Runs a training script's `main(parse_args(argv))` in this process (one thread, fresh accelerate state)."""
    from accelerate.state import AcceleratorState, GradientState

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    try:
        args = module.parse_args(argv)
        module.main(args)
        return args
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
        torch.set_num_threads(threads)


def script_command(script: str, argv: list[str], num_processes: int = 1, port: int | None = None) -> list[str]:
    """The command running a training script: plain python for one process; two CPU processes (gloo) through
    `accelerate launch --multi_gpu` with ACCELERATE_USE_CPU=1 (see `SUBPROCESS_ENV`; accelerate's `--cpu` flag
    launches several processes through MPI only)."""
    path = str(EXAMPLES / script)
    if num_processes == 1:
        return [sys.executable, path, *argv]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(num_processes)]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    return [*launch, "--main_process_port", str(port), path, *argv]


def start(command: list[str], log: Path, cpu: bool = False) -> subprocess.Popen:
    env = {**SUBPROCESS_ENV, "ACCELERATE_USE_CPU": "1"} if cpu else SUBPROCESS_ENV
    return subprocess.Popen(command, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)


def scalars(output_dir: Path, tag: str) -> list[float]:
    """The values of a scalar logged to TensorBoard under `output_dir/logs`, by step."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (run,) = Path(output_dir, "logs").glob("*")
    events = EventAccumulator(str(run))
    events.Reload()
    return [event.value for event in sorted(events.Scalars(tag), key=lambda event: event.step)]


def transformer_weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(Path(folder, "diffusion_pytorch_model.safetensors"))
