"""Small real training data and helpers for the tests of the training examples (`examples/`) and of
`diffusers_pixeldit.training`."""

import importlib
import json
import logging
import multiprocessing
import os
import socket
import sys
import types
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pixeldit_testing import TINY_T2I, tiny_text_components

from diffusers_pixeldit.digits import DIGIT_NAMES


EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
if str(EXAMPLES) not in sys.path:
    sys.path.insert(0, str(EXAMPLES))

# A tiny from-scratch transformer (--transformer_config on top of the script's default preset), for 16x16 images:
# the architecture of the tests' tiny text-to-image model.
TINY_ARCHITECTURE_KEYS = [
    "patch_size",
    "num_layers",
    "num_attention_heads",
    "attention_head_dim",
    "num_pixel_layers",
    "pixel_embed_dim",
]
TINY_TRANSFORMER = json.dumps({key: TINY_T2I[key] for key in TINY_ARCHITECTURE_KEYS})
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


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


def tiny_dinov2(patch_size: int = 2):
    """A tiny random `Dinov2Model` (width 16, one layer)."""
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    config = Dinov2Config(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, mlp_ratio=2, patch_size=patch_size, image_size=14
    )
    return Dinov2Model(config).eval()


def save_tiny_dinov2(path: Path) -> Path:
    tiny_dinov2().save_pretrained(path)
    return path


def save_tiny_text_encoder(path: Path, width: int = 8) -> Path:
    """The tokenizer and tiny Gemma-2 of `pixeldit_testing.tiny_text_components`, saved together."""
    tokenizer, text_encoder = tiny_text_components(width=width)
    tokenizer.save_pretrained(path)
    text_encoder.save_pretrained(path)
    return path


def reset_accelerate_state():
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def run_in_process(module, argv: list[str]):
    """Runs a training script's `main(parse_args(argv))` in this process (one thread, fresh accelerate state)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    reset_accelerate_state()
    try:
        args = module.parse_args(argv)
        module.main(args)
        return args
    finally:
        reset_accelerate_state()
        torch.set_num_threads(threads)


def _forked_main(script: str, argv: list[str], env: dict[str, str], log: str):
    # Everything the child writes (prints, logs, tracebacks) goes to `log`, not to the parent's captures.
    sys.stdout = sys.stderr = open(log, "w", buffering=1)
    os.dup2(sys.stdout.fileno(), 1)
    os.dup2(sys.stdout.fileno(), 2)
    logging.root.handlers = [logging.StreamHandler(sys.stderr)]
    os.environ.update(env)
    run_in_process(example(Path(script).stem), argv)


# How long a forked training run may take in the tests.
FORKED_RUN_TIMEOUT_S = 120


def free_port() -> int:
    """A free TCP port on localhost (for a process group's rendezvous)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def log_tail(path: Path) -> str:
    return path.read_text()[-3000:] if path.exists() else "(no log)"


def fork_script(script: str, argv: list[str], log: Path, rank: int = 0, world_size: int = 1, port: int = 0):
    """Starts `main(parse_args(argv))` of a training script in a forked child process (no new imports: fast),
    output to `log`. With `world_size` > 1 it is rank `rank` of a CPU process group (gloo), with the environment
    `accelerate launch --multi_gpu` (torchrun) gives each process."""
    env = dict(OFFLINE_ENV)
    if world_size > 1:
        env.update(
            ACCELERATE_USE_CPU="1",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE=str(world_size),
            LOCAL_WORLD_SIZE=str(world_size),
        )
    process = multiprocessing.get_context("fork").Process(target=_forked_main, args=(script, argv, env, str(log)))
    process.start()
    return process


def fake_hub(monkeypatch, remote_root: Path) -> list[dict]:
    """Intercepts the package's `create_repo` and `upload_folder`: uploads are copied to
    `remote_root/<repo_id>` (with `upload_folder`'s filtering) and recorded in the returned list."""
    from huggingface_hub.utils import filter_repo_objects

    from diffusers_pixeldit.training import outputs

    uploads = []

    def create_repo(repo_id, exist_ok, token):
        return types.SimpleNamespace(repo_id=repo_id)

    def upload_folder(repo_id, folder_path, commit_message, ignore_patterns, token):
        folder_path = Path(folder_path)
        files = sorted(str(p.relative_to(folder_path)) for p in folder_path.rglob("*") if p.is_file())
        uploaded = list(filter_repo_objects(files, ignore_patterns=ignore_patterns))
        remote = remote_root / repo_id
        for file in uploaded:
            (remote / file).parent.mkdir(parents=True, exist_ok=True)
            (remote / file).write_bytes((folder_path / file).read_bytes())
        uploads.append(
            dict(
                repo_id=repo_id, token=token, files=uploaded, all_files=files, patterns=ignore_patterns, remote=remote
            )
        )

    monkeypatch.setattr(outputs, "create_repo", create_repo)
    monkeypatch.setattr(outputs, "upload_folder", upload_folder)
    return uploads


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


def record_transformer_inputs(monkeypatch) -> list[dict]:
    """Patches the transformer's forward to record, during training only, its input size, class labels and text
    embeddings."""
    from diffusers_pixeldit import PixelDiTTransformer2DModel

    seen = []
    forward = PixelDiTTransformer2DModel.forward

    def recording_forward(self, hidden_states, timestep, class_labels=None, encoder_hidden_states=None, **kwargs):
        if torch.is_grad_enabled():
            text = None if encoder_hidden_states is None else encoder_hidden_states.detach().clone()
            labels = None if class_labels is None else class_labels.clone()
            seen.append(dict(shape=tuple(hidden_states.shape[1:]), labels=labels, text=text))
        return forward(self, hidden_states, timestep, class_labels, encoder_hidden_states, **kwargs)

    monkeypatch.setattr(PixelDiTTransformer2DModel, "forward", recording_forward)
    return seen


def lora_fine_tuning(module, argv: list[str], base: Path, **conditions) -> dict:
    """Runs a LoRA fine-tuning of the pipeline folder `base` (`--output_dir` of `argv`); returns its logged losses,
    the files it wrote, and the LoRA loaded onto the base transformer: the modules it adapts and the largest change
    of the output for 2 random 16x16 images at σ = 0.3, 0.7 with `conditions` (the LoRA loaded by the pipeline's
    `load_lora_weights`)."""
    import diffusers_pixeldit
    from diffusers_pixeldit.training import pretrained_pipeline_class_name

    args = run_in_process(module, argv)
    out = Path(args.output_dir)
    pipe = getattr(diffusers_pixeldit, pretrained_pipeline_class_name(str(base))).from_pretrained(base)
    transformer = pipe.transformer
    inputs = dict(
        hidden_states=torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)),
        timestep=torch.tensor([300.0, 700.0]),
        **conditions,
    )
    with torch.no_grad():
        before = transformer(**inputs).sample
        pipe.load_lora_weights(out)
        after = transformer(**inputs).sample
    return dict(
        loss=scalars(out, "train_loss"),
        files=sorted(p.name for p in out.iterdir() if p.is_file()),
        modules={name.rsplit(".lora_", 1)[0] for name, _ in transformer.named_parameters() if ".lora_" in name},
        change=(after - before).abs().max().item(),
    )
