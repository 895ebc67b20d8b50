# Copyright 2026 The diffusers-pixeldit authors. Licensed under the Apache License, Version 2.0.
"""Sample generation for evaluation at scale (`examples/evaluate_class_conditional.py`,
`examples/generate_text_to_image.py`): per-sample seeds, work cut into shards that processes share, atomic shard
files and resuming, the checked merge into the ADM reference-batch layout, and the metrics.

- **Seeds.** Sample `i` of a run (global order: classes or prompts in order, then the samples of each) has its own
  seed, `sample_seeds(seed, N)[i]`, and its own noise `torch.randn((C, H, W), generator=Generator().manual_seed(s))`
  as the official evaluation (a seed in [0, 2³¹] per sample, float32 CPU noise). The seeds are drawn in the global
  order, so they depend on neither the number of processes nor the batch size.
- **Shards.** Shard `j` is the batch of samples `[j·B, (j+1)·B)` (B = `--batch_size`), generated in one pipeline
  call by whichever process gets it, so its bytes depend on neither the number of processes nor the order of work.
  A shard is done when its file `shards/shard-{j:06d}.*` exists; every file is written to a temporary name and
  renamed (`atomic_write`), so a run killed at any point, even with SIGKILL, leaves only complete files, and a
  restarted run generates exactly the missing shards, split anew across its processes.
- **Merge.** The shards are read in order, their sample indices and classes checked against the plan, and written
  as one `.npz` (`arr_0`: uint8 `(N, H, W, 3)`, the ADM evaluation suite's layout; `arr_1`: the class ids, as
  guided-diffusion's sampler writes them), streamed, with fixed zip timestamps: the same samples give the same
  bytes.
- **Metrics.** torchmetrics' `FrechetInceptionDistance` and `InceptionScore` (the Inception network is
  torch-fidelity's port of the TensorFlow one, with its weights from torch-fidelity's cache or a local file), or a
  transformers image encoder's features for FID (e.g. DINOv2, FD_DINOv2); a reference batch (`arr_0`) or a
  statistics file (`mu`, `sigma`).
"""

import json
import logging
import os
import random
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


logger = logging.getLogger(__name__)

SHARDS_FOLDER = "shards"
SHARD_PREFIX = "shard-"
TMP_PREFIX = ".tmp-"
MANIFEST_NAME = "run.json"
# The official evaluation draws each sample's seed uniformly from [0, 2^31].
MAX_SEED = 1 << 31
# Zip entries get this fixed timestamp, so that the same arrays give the same file bytes.
ZIP_DATE_TIME = (1980, 1, 1, 0, 0, 0)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def sample_seeds(seed: int, num_samples: int) -> list[int]:
    """One seed in [0, 2³¹] per sample of a run, in its global order: `random.Random(seed).randint(0, 2**31)` drawn
    in turn (the official evaluation's per-sample seeds, drawn in one fixed order)."""
    rng = random.Random(seed)
    return [rng.randint(0, MAX_SEED) for _ in range(num_samples)]


def sample_generators(seeds: Sequence[int]) -> list[torch.Generator]:
    """A CPU generator per sample; the pipelines draw each sample's float32 noise `(C, H, W)` from its own."""
    return [torch.Generator().manual_seed(int(seed)) for seed in seeds]


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[-1, 1] images `(B, C, H, W)` -> uint8 `(B, H, W, 3)`, as the official evaluation:
    `clip((x + 1)·127.5 + 0.5, 0, 255)` truncated; a single (grey) channel is repeated to three."""
    pixels = ((images.float() + 1) * 127.5 + 0.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
    if pixels.shape[-1] == 1:
        pixels = pixels.expand(-1, -1, -1, 3)
    if pixels.shape[-1] != 3:
        raise ValueError(f"Expected 1 or 3 image channels, got {pixels.shape[-1]}.")
    return np.ascontiguousarray(pixels.cpu().numpy())


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any]):
    """Calls `write(temporary_path)`, then renames the file to `path` (readers see the whole file or none); the
    temporary name `.tmp-<pid>-<name>` is unique to this process."""
    path = Path(path)
    tmp = path.with_name(f"{TMP_PREFIX}{os.getpid()}-{path.name}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | os.PathLike, text: str):
    """Writes a text file atomically."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def save_png(image: np.ndarray, path: str | os.PathLike):
    """Saves a uint8 `(H, W, 3)` image as a PNG, atomically."""
    import PIL.Image

    atomic_write(path, lambda tmp: PIL.Image.fromarray(image).save(tmp, format="PNG"))


def remove_unfinished_files(folders: Iterable[str | os.PathLike]):
    """Deletes the temporary files (`.tmp-*`) that killed runs left in `folders` (not in their sub-folders)."""
    for folder in map(Path, folders):
        for stale in folder.glob(f"{TMP_PREFIX}*") if folder.is_dir() else []:
            logger.info(f"Removing the unfinished file {stale}.")
            stale.unlink()


def plan_shards(num_samples: int, batch_size: int) -> list[range]:
    """The sample indices of each shard: consecutive batches of `batch_size` (the last one may be shorter)."""
    if batch_size < 1:
        raise ValueError(f"The batch size must be positive, got {batch_size}.")
    return [range(start, min(start + batch_size, num_samples)) for start in range(0, num_samples, batch_size)]


class ShardStore:
    """The shard files `folder/shard-{j:06d}{suffix}` of a run; a shard is done when its file exists."""

    def __init__(self, folder: str | os.PathLike, suffix: str):
        self.folder = Path(folder)
        self.suffix = suffix

    def path(self, index: int) -> Path:
        return self.folder / f"{SHARD_PREFIX}{index:06d}{self.suffix}"

    def done(self) -> set[int]:
        """The indices of the finished shards."""
        if not self.folder.is_dir():
            return set()
        names = (name for name in os.listdir(self.folder) if name.startswith(SHARD_PREFIX))
        return {
            int(name[len(SHARD_PREFIX) :].removesuffix(self.suffix)) for name in names if name.endswith(self.suffix)
        }

    def save_arrays(self, index: int, arrays: dict[str, np.ndarray]):
        """Writes shard `index` as an `.npz` of `arrays`, atomically."""
        self.folder.mkdir(parents=True, exist_ok=True)
        write_npz(self.path(index), {key: (value.shape, value.dtype, [value]) for key, value in arrays.items()})

    def save_text(self, index: int, text: str):
        """Writes shard `index` as a text file (e.g. the record of the images a shard wrote elsewhere), atomically."""
        self.folder.mkdir(parents=True, exist_ok=True)
        write_text(self.path(index), text)


def assigned_shards(pending: Sequence[int], process_index: int, num_processes: int) -> list[int]:
    """This process's share of the pending shards (every `num_processes`-th, from its index)."""
    return list(pending)[process_index::num_processes]


def check_manifest(output_dir: str | os.PathLike, manifest: dict[str, Any]):
    """Raises a `ValueError` when `output_dir` holds the samples of another configuration; otherwise records
    `manifest` there (`run.json`). Call on one process."""
    path = Path(output_dir, MANIFEST_NAME)
    if path.exists():
        recorded = json.loads(path.read_text())
        differing = sorted(key for key in manifest.keys() | recorded.keys() if manifest.get(key) != recorded.get(key))
        if differing:
            changes = ", ".join(f"{key}: {recorded.get(key)!r} -> {manifest.get(key)!r}" for key in differing)
            raise ValueError(
                f"{output_dir} holds samples of another configuration ({changes}); pass a new --output_dir to "
                "start another run, or the same arguments to resume this one."
            )
        return
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(manifest, indent=1))


def read_npy_header(file) -> tuple[tuple[int, ...], bool, np.dtype]:
    """Reads the magic string and header of an `.npy` stream: `(shape, fortran_order, dtype)`."""
    version = np.lib.format.read_magic(file)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(file)
    return np.lib.format.read_array_header_2_0(file)


def npz_array_header(path: str | os.PathLike, key: str = "arr_0") -> tuple[tuple[int, ...], np.dtype]:
    """The shape and dtype of array `key` of an `.npz` file, read from its header only."""
    with zipfile.ZipFile(path) as archive:
        if f"{key}.npy" not in archive.namelist():
            names = [name.removesuffix(".npy") for name in archive.namelist()]
            raise ValueError(f"{path} has no array {key!r} (it has {names}).")
        with archive.open(f"{key}.npy") as file:
            shape, fortran_order, dtype = read_npy_header(file)
    if fortran_order:
        raise ValueError(f"Array {key!r} of {path} is stored in Fortran order; C order is expected.")
    return shape, dtype


def iter_npz_array(path: str | os.PathLike, key: str = "arr_0", batch_size: int = 256) -> Iterator[np.ndarray]:
    """Array `key` of an `.npz` file in chunks of `batch_size` rows, streamed (the whole array is never loaded)."""
    shape, dtype = npz_array_header(path, key)
    row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
    with zipfile.ZipFile(path) as archive, archive.open(f"{key}.npy") as file:
        read_npy_header(file)
        for start in range(0, shape[0], batch_size):
            rows = min(batch_size, shape[0] - start)
            yield np.frombuffer(bytearray(file.read(rows * row_bytes)), dtype=dtype).reshape(rows, *shape[1:])


def write_npz(path: str | os.PathLike, arrays: dict[str, tuple[tuple[int, ...], np.dtype, Iterable[np.ndarray]]]):
    """Writes an uncompressed `.npz` (as `np.savez`) from arrays given as `(shape, dtype, chunks along axis 0)`,
    streamed and atomically; the zip entries have a fixed timestamp, so equal arrays give equal bytes."""

    def write(tmp: Path):
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
            for key, (shape, dtype, chunks) in arrays.items():
                dtype, rows = np.dtype(dtype), 0
                info = zipfile.ZipInfo(f"{key}.npy", date_time=ZIP_DATE_TIME)
                with archive.open(info, "w", force_zip64=True) as file:
                    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
                    np.lib.format.write_array_header_2_0(file, header)
                    for chunk in chunks:
                        chunk = np.ascontiguousarray(chunk, dtype=dtype)
                        if chunk.shape[1:] != tuple(shape[1:]):
                            raise ValueError(f"{key}: a chunk of shape {chunk.shape} for an array {shape}.")
                        file.write(chunk.tobytes())
                        rows += len(chunk)
                if rows != shape[0]:
                    raise ValueError(f"{key}: {rows} rows written for an array of {shape[0]}.")

    atomic_write(path, write)


def merge_shards(
    store: ShardStore, shards: Sequence[range], labels: Sequence[int], output_path: str | os.PathLike
) -> tuple[int, ...]:
    """Merges the `.npz` shards of a class-conditional run into `output_path` (`arr_0` uint8 `(N, H, W, 3)`, `arr_1`
    the class ids), after checking that every shard is there and holds the planned samples (indices, classes) and
    that the count is the planned one. Returns the shape of `arr_0`."""
    missing = sorted(set(range(len(shards))) - store.done())
    if missing:
        raise RuntimeError(f"Cannot merge: shards {missing} of {len(shards)} are missing from {store.folder}.")
    labels = np.asarray(labels, dtype=np.int64)
    with np.load(store.path(0)) as first:
        image_shape = first["images"].shape[1:]

    def images():
        for index, samples in enumerate(shards):
            with np.load(store.path(index)) as shard:
                if not np.array_equal(shard["indices"], np.asarray(samples)):
                    raise RuntimeError(
                        f"Shard {index} holds samples {shard['indices'].tolist()}, not {list(samples)}."
                    )
                if not np.array_equal(shard["labels"], labels[samples.start : samples.stop]):
                    raise RuntimeError(f"Shard {index} holds other classes than planned (class order).")
                if shard["images"].shape != (len(samples), *image_shape):
                    raise RuntimeError(f"Shard {index} holds images {shard['images'].shape}, not {image_shape}.")
                yield shard["images"]

    shape = (len(labels), *image_shape)
    write_npz(output_path, {"arr_0": (shape, np.uint8, images()), "arr_1": (labels.shape, np.int64, [labels])})
    return shape


def load_pipeline(pretrained_model_name_or_path: str, pipeline_classes: Sequence[type], **kwargs):
    """A pipeline of one of `pipeline_classes` from a folder or Hub repo (its `model_index.json` names the class;
    `kwargs` go to `from_pretrained`). The one place where evaluation loads models."""
    from diffusers import DiffusionPipeline

    config = DiffusionPipeline.load_config(
        pretrained_model_name_or_path, **{k: v for k, v in kwargs.items() if k in ("revision", "cache_dir")}
    )
    classes = {cls.__name__: cls for cls in pipeline_classes}
    if config["_class_name"] not in classes:
        raise ValueError(
            f"{pretrained_model_name_or_path} is a {config['_class_name']}; expected one of {sorted(classes)}."
        )
    return classes[config["_class_name"]].from_pretrained(pretrained_model_name_or_path, **kwargs)


def read_prompts(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Prompts with their metadata: a GenEval `evaluation_metadata.jsonl` (one JSON object with a `prompt` per line)
    or a text file (one prompt per line, blank lines skipped; metadata `{"prompt": line}`)."""
    path = Path(path)
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if path.suffix != ".jsonl":
        return [{"prompt": line.strip()} for line in lines]
    rows = [json.loads(line) for line in lines]
    bad = [number for number, row in enumerate(rows, 1) if not isinstance(row.get("prompt"), str)]
    if bad:
        raise ValueError(f"{path}: lines {bad[:10]} have no string `prompt`.")
    return rows


class TransformersImageFeatures(nn.Module):
    """Features of a transformers vision encoder (e.g. DINOv2) for the Fréchet distance: uint8 images
    `(B, 3, H, W)` are resized (bicubic) to `resolution`², normalised as ImageNet and encoded; the features are
    the pooled output `(B, D)` (for DINOv2 the normalised class token)."""

    def __init__(self, name_or_path: str, resolution: int = 224):
        from transformers import AutoModel

        super().__init__()
        self.model = AutoModel.from_pretrained(name_or_path).eval().requires_grad_(False)
        self.resolution = resolution
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.num_features = self.model.config.hidden_size

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pixels = images.float() / 255
        pixels = F.interpolate(pixels, size=(self.resolution,) * 2, mode="bicubic", align_corners=False)
        output = self.model(pixel_values=((pixels - self.mean) / self.std).to(self.model.dtype))
        return output.pooler_output.float()


class GenerativeMetrics:
    """FID (and IS with the Inception network) of generated images against a reference, with torchmetrics.

    Args:
        feature_extractor (`str`): `"inception"` (torch-fidelity's InceptionV3, 2048 pool features, as FID) or a
            transformers vision encoder (folder or Hub id) whose pooled features FID uses (IS is not defined then).
        reference (`str`, *optional*): an `.npz` reference batch (`arr_0`, uint8 `(N, H, W, 3)`) or statistics
            (`mu` `(D,)`, `sigma` `(D, D)` of the same feature extractor).
        inception_weights (`str`, *optional*): torch-fidelity's `weights-inception-2015-12-05-6726825d.pth`; default:
            torch-fidelity's cache (downloaded once there).
        inception_score (`bool`): also compute IS (Inception only).
        resolution (`int`): the side generated images have; a reference batch of another size is refused.
    """

    def __init__(
        self,
        feature_extractor: str,
        reference: str | None,
        *,
        resolution: int,
        inception_weights: str | None = None,
        inception_score: bool = False,
        feature_resolution: int = 224,
        batch_size: int = 100,
        device: torch.device | str = "cpu",
    ):
        from torchmetrics.image.fid import FrechetInceptionDistance

        self.reference, self.batch_size, self.device = reference, batch_size, torch.device(device)
        self.reference_kind = check_reference(reference, resolution) if reference is not None else None
        inception = feature_extractor == "inception"
        if inception_score and not inception:
            raise ValueError("The Inception Score needs the Inception network (--feature_extractor inception).")
        if inception:
            feature = 2048
        else:
            feature = TransformersImageFeatures(feature_extractor, feature_resolution)
        kwargs = {"feature_extractor_weights_path": inception_weights} if inception else {}
        self.fid = FrechetInceptionDistance(feature=feature, **kwargs).to(self.device) if reference else None
        self.inception_score = None
        if inception_score:
            from torchmetrics.image.fid import NoTrainInceptionV3
            from torchmetrics.image.inception import InceptionScore

            logits = NoTrainInceptionV3("inception-v3-compat", ["logits_unbiased"], inception_weights)
            self.inception_score = InceptionScore(feature=logits).to(self.device)
        if self.reference_kind == "statistics":
            with np.load(reference) as statistics:
                self._set_reference_statistics(statistics["mu"], statistics["sigma"])

    def _set_reference_statistics(self, mu: np.ndarray, sigma: np.ndarray):
        """Gives the FID metric the reference Gaussian: its states (sums of features and of their outer products,
        count) set to those of two samples with mean `mu` and covariance `sigma` (any count > 1 gives these back)."""
        dimension = self.fid.real_features_sum.shape[0]
        if mu.shape != (dimension,) or sigma.shape != (dimension, dimension):
            raise ValueError(
                f"{self.reference}: statistics of shape mu {mu.shape}, sigma {sigma.shape}; this feature extractor "
                f"gives {dimension} features."
            )
        mu, sigma, count = torch.from_numpy(mu).double(), torch.from_numpy(sigma).double(), 2
        self.fid.real_features_sum = (mu * count).to(self.device)
        self.fid.real_features_cov_sum = (sigma * (count - 1) + count * torch.outer(mu, mu)).to(self.device)
        self.fid.real_features_num_samples = torch.tensor(count, device=self.device)

    def _batches(self, images: Iterable[np.ndarray]) -> Iterator[torch.Tensor]:
        for chunk in images:
            for start in range(0, len(chunk), self.batch_size):
                batch = torch.from_numpy(np.ascontiguousarray(chunk[start : start + self.batch_size]))
                yield batch.permute(0, 3, 1, 2).to(self.device)

    @torch.no_grad()
    def compute(self, generated: Iterable[np.ndarray]) -> dict[str, float]:
        """The metrics of generated uint8 images `(N, H, W, 3)` given in chunks: `fid`, and `inception_score`,
        `inception_score_std` with IS."""
        if self.reference_kind == "batch":
            for batch in self._batches(iter_npz_array(self.reference, "arr_0", self.batch_size)):
                self.fid.update(batch, real=True)
        for batch in self._batches(generated):
            if self.fid is not None:
                self.fid.update(batch, real=False)
            if self.inception_score is not None:
                self.inception_score.update(batch)
        results = {}
        if self.fid is not None:
            results["fid"] = float(self.fid.compute())
        if self.inception_score is not None:
            mean, std = self.inception_score.compute()
            results.update(inception_score=float(mean), inception_score_std=float(std))
        return results


def check_reference(path: str, resolution: int) -> str:
    """`"batch"` for a reference batch (`arr_0` uint8 `(N, resolution, resolution, 3)`), `"statistics"` for a
    statistics file (`mu`, `sigma`); raises a `ValueError` naming what is wrong otherwise."""
    if not os.path.isfile(path):
        raise ValueError(f"The reference {path} does not exist.")
    with zipfile.ZipFile(path) as archive:
        keys = {name.removesuffix(".npy") for name in archive.namelist()}
    if {"mu", "sigma"} <= keys and "arr_0" not in keys:
        return "statistics"
    if "arr_0" not in keys:
        raise ValueError(f"The reference {path} has neither `arr_0` (a batch) nor `mu` and `sigma` (statistics).")
    shape, dtype = npz_array_header(path, "arr_0")
    if dtype != np.uint8 or len(shape) != 4 or shape[3] != 3:
        raise ValueError(f"The reference batch {path} holds {dtype} {shape}; uint8 (N, H, W, 3) is expected.")
    if shape[1:3] != (resolution, resolution):
        raise ValueError(
            f"The reference batch {path} holds {shape[1]}x{shape[2]} images; the samples are "
            f"{resolution}x{resolution}: use the reference batch of this resolution."
        )
    return "batch"
