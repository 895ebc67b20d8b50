# Copyright 2026 The diffusers-pixeldit authors. Licensed under the Apache License, Version 2.0.
"""Training data: dataset loading, image reading and preprocessing, size buckets, and the deterministic sampler.

Determinism: the global batch of optimizer step `s` is a pure function of `(seed, s)` (`StepBatchSampler`), and every
per-sample random draw comes from a generator seeded with `(seed, s, position of the sample in the global batch)`
(`FlowMatchingDataset`). So the math does not depend on how a global batch is split over processes and
gradient-accumulation micro-steps, and a resumed run replays exactly what an uninterrupted run does.
"""

import io
import logging
from pathlib import Path
from typing import Any, Sequence

import datasets
import numpy as np
import torch
from accelerate import Accelerator
from diffusers.training_utils import find_nearest_bucket, generate_aspect_ratio_buckets, parse_buckets_string
from PIL import Image

from .objective import FlowMatchingObjective


logger = logging.getLogger(__name__)

# PIL mode of the images, by the model's input channels.
IMAGE_MODES = {1: "L", 3: "RGB", 4: "RGBA"}
# uint8 pixels p map to p / PIXEL_HALF_RANGE - 1, in [-1, 1].
PIXEL_HALF_RANGE = 127.5
FLIP_PROBABILITY = 0.5
# Files written by `save_to_disk`: a `Dataset` folder holds a state.json, a `DatasetDict` folder a dataset_dict.json.
DATASET_STATE_FILE = "state.json"
DATASET_DICT_FILE = "dataset_dict.json"
TRAIN_SPLIT = "train"


def load_image_dataset(
    dataset_name: str | None,
    train_data_dir: str | None,
    columns: Sequence[str],
    *,
    image_column: str = "image",
    dataset_config_name: str | None = None,
    cache_dir: str | None = None,
    max_train_samples: int | None = None,
    seed: int = 0,
) -> datasets.Dataset:
    """The training split, with its images left undecoded (`{"path", "bytes"}`, decoded by `FlowMatchingDataset`).

    `dataset_name` is a Hub dataset, a local dataset folder or a `save_to_disk` folder (`train_data_dir` is then its
    `data_dir`); without it `train_data_dir` is an `imagefolder`. `columns` must exist; `max_train_samples` takes a
    subset shuffled with `seed`.
    """
    if dataset_name is None and train_data_dir is None:
        raise ValueError("Pass a dataset: a dataset name or folder, or an image folder.")
    if dataset_name is not None and Path(dataset_name, DATASET_STATE_FILE).is_file():
        dataset = datasets.load_from_disk(dataset_name)
    elif dataset_name is not None and Path(dataset_name, DATASET_DICT_FILE).is_file():
        dataset = datasets.load_from_disk(dataset_name)[TRAIN_SPLIT]
    elif dataset_name is not None:
        dataset = datasets.load_dataset(
            dataset_name, dataset_config_name, cache_dir=cache_dir, data_dir=train_data_dir
        )[TRAIN_SPLIT]
    else:
        dataset = datasets.load_dataset("imagefolder", data_dir=train_data_dir, cache_dir=cache_dir)[TRAIN_SPLIT]
    for column in columns:
        if column not in dataset.column_names:
            raise ValueError(f"Column {column!r} is not in the dataset; its columns are {dataset.column_names}.")
    if max_train_samples is not None:
        dataset = dataset.shuffle(seed=seed).select(range(min(max_train_samples, len(dataset))))
    return dataset.cast_column(image_column, datasets.Image(decode=False))


def class_ids(dataset: datasets.Dataset, column: str) -> tuple[list[int], list[str]]:
    """Each row's class id and the class names: a `ClassLabel`'s names (the sub-folders of an imagefolder), integer
    ids (named by their number), or names (sorted; ids in that order)."""
    values = list(dataset[column])
    feature = dataset.features[column]
    if isinstance(feature, datasets.ClassLabel):
        return values, feature.names
    if all(isinstance(value, int) for value in values):
        return values, [str(i) for i in range(max(values) + 1)]
    names = sorted(set(values))
    ids = {name: i for i, name in enumerate(names)}
    return [ids[value] for value in values], names


def open_image(value: dict, index: int, mode: str | None) -> Image.Image:
    """Opens an undecoded dataset image (`{"path", "bytes"}`) converted to `mode` (`None`: lazily, not decoded). A
    file that can't be read raises an `OSError` naming it and its dataset row `index`."""
    path = value.get("path")
    try:
        image = Image.open(io.BytesIO(value["bytes"]) if value.get("bytes") else path)
        return image.convert(mode) if mode else image
    except Exception as error:
        raise OSError(
            f"Cannot read training image {path or '<embedded bytes>'} (dataset row {index}): {error}"
        ) from error


def preprocess_image(
    image: Image.Image,
    size: tuple[int, int],
    *,
    center_crop: bool,
    random_flip: bool,
    resample: Image.Resampling,
    generator: torch.Generator,
) -> torch.Tensor:
    """Resizes `image` to cover `size` (height, width) keeping its aspect ratio, crops (centred, or at a random
    offset), flips at random when asked; returns (C, H, W) float32 in [-1, 1]. Random draws: crop top, crop left,
    flip, in that order, from `generator`."""
    height, width = size
    scale = max(height / image.height, width / image.width)
    resized = (max(width, round(image.width * scale)), max(height, round(image.height * scale)))
    if resized != image.size:
        image = image.resize(resized, resample=resample)
    if center_crop:
        top, left = round((resized[1] - height) / 2), round((resized[0] - width) / 2)
    else:
        top = int(torch.randint(resized[1] - height + 1, (), generator=generator))
        left = int(torch.randint(resized[0] - width + 1, (), generator=generator))
    image = image.crop((left, top, left + width, top + height))
    if random_flip and torch.rand((), generator=generator) < FLIP_PROBABILITY:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    pixels = np.asarray(image, dtype=np.float32).reshape(height, width, -1)
    return torch.from_numpy(pixels / PIXEL_HALF_RANGE - 1.0).permute(2, 0, 1).contiguous()


def aspect_ratio_buckets(spec: str, resolution: int, patch_size: int) -> list[tuple[int, int]]:
    """(height, width) buckets: `"auto"` (about `resolution`² pixels, sides multiples of `patch_size`; diffusers'
    `generate_aspect_ratio_buckets`) or `"h1,w1;h2,w2;..."`."""
    if spec == "auto":
        return generate_aspect_ratio_buckets(resolution, divisibility=patch_size)
    return parse_buckets_string(spec)


def group_by_size(
    dataset: datasets.Dataset,
    image_column: str,
    resolution: int,
    patch_size: int,
    buckets: list[tuple[int, int]] | None = None,
) -> tuple[list[tuple[int, int]], list[list[int]]]:
    """Each row's training size (height, width) and the rows of each size (one group per bucket, in bucket order).

    Without `buckets` every image is trained at `resolution`²; with them each image goes to the bucket nearest its
    aspect ratio (image headers are read, not decoded). Sizes must be multiples of `patch_size`.
    """
    candidates = [(resolution, resolution)] if buckets is None else buckets
    if any(side % patch_size for size in candidates for side in size):
        raise ValueError(f"Training sizes must be multiples of the patch size {patch_size}, got {candidates}.")
    if buckets is None:
        return [(resolution, resolution)] * len(dataset), [list(range(len(dataset)))]
    sizes = []
    for index, row in enumerate(dataset.select_columns([image_column])):
        with open_image(row[image_column], index, mode=None) as image:
            sizes.append(buckets[find_nearest_bucket(image.height, image.width, buckets)])
    groups = [[i for i, size in enumerate(sizes) if size == bucket] for bucket in buckets]
    logger.info("Aspect-ratio buckets (height, width): images %s", {b: len(g) for b, g in zip(buckets, groups)})
    return sizes, groups


def sample_seed(seed: int, step: int, position: int) -> int:
    """Seed of the random draws of the sample at `position` of the global batch of optimizer step `step`."""
    return int(np.random.SeedSequence([seed, step, position]).generate_state(1, np.uint64)[0] >> 1)


class FlowMatchingDataset(torch.utils.data.Dataset):
    """Training samples with their random draws, indexed by the `(row, step, position)` keys of `StepBatchSampler`.

    An item holds `pixel_values` (C, H, W) in [-1, 1] (C = `channels`: grey, RGB or RGBA; (H, W) = the row's
    `sizes` entry), the flow-matching `noise` (C, H, W; `objective.sample_noise`), `u` (the σ density sample of
    `objective`, a 0-d tensor), `drop` (classifier-free-guidance dropout of the condition, with `drop_probability`)
    and `condition` (the row's entry of `conditions`, e.g. a class id or a caption; one is picked when a row has
    several). PixelDiT2 adds `drop_grounding` (its grounding dropped, with `grounding_drop_probability`), and a joint
    dropout of both with `joint_drop_probability`. All draws come from a generator seeded with
    `sample_seed(seed, step, position)`, in the order u, drop, [grounding, joint: only when their probabilities are
    set], condition, crop, flip, noise [, outliers: only when `objective.noise_outlier_prob` is set].
    """

    def __init__(
        self,
        dataset: Sequence[dict],
        conditions: Sequence[Any],
        sizes: Sequence[tuple[int, int]],
        *,
        seed: int,
        objective: FlowMatchingObjective,
        drop_probability: float,
        grounding_drop_probability: float = 0.0,
        joint_drop_probability: float = 0.0,
        image_column: str = "image",
        channels: int = 3,
        center_crop: bool = False,
        random_flip: bool = False,
        resample: Image.Resampling = Image.Resampling.LANCZOS,
    ):
        if channels not in IMAGE_MODES:
            raise ValueError(f"Images can be read with {sorted(IMAGE_MODES)} channels, the model takes {channels}.")
        self.dataset = dataset
        self.conditions = conditions
        self.sizes = sizes
        self.seed = seed
        self.objective = objective
        self.drop_probability = drop_probability
        self.grounding_drop_probability = grounding_drop_probability
        self.joint_drop_probability = joint_drop_probability
        self.image_column = image_column
        self.image_mode = IMAGE_MODES[channels]
        self.center_crop = center_crop
        self.random_flip = random_flip
        self.resample = resample

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int, int]) -> dict:
        index, step, position = key
        generator = torch.Generator().manual_seed(sample_seed(self.seed, step, position))
        u = self.objective.sample_u(generator)
        drop = bool(torch.rand((), generator=generator) < self.drop_probability)
        drops = {"drop": drop}
        if self.grounding_drop_probability or self.joint_drop_probability:
            drop_grounding = bool(torch.rand((), generator=generator) < self.grounding_drop_probability)
            joint = bool(torch.rand((), generator=generator) < self.joint_drop_probability)
            drops = {"drop": drop or joint, "drop_grounding": drop_grounding or joint}
        condition = self.conditions[index]
        if isinstance(condition, (list, tuple)):
            condition = condition[int(torch.randint(len(condition), (), generator=generator))]
        image = open_image(self.dataset[index][self.image_column], index, self.image_mode)
        pixel_values = preprocess_image(
            image,
            self.sizes[index],
            center_crop=self.center_crop,
            random_flip=self.random_flip,
            resample=self.resample,
            generator=generator,
        )
        noise = self.objective.sample_noise(pixel_values.shape, generator)
        return {"pixel_values": pixel_values, "noise": noise, "u": u, **drops, "condition": condition}


def steps_per_epoch(groups: Sequence[Sequence[int]], global_batch_size: int) -> int:
    """Optimizer steps per epoch: the full global batches of all size groups."""
    steps = sum(len(group) // global_batch_size for group in groups)
    if steps == 0:
        raise ValueError(
            f"No size group has a full global batch of {global_batch_size} images (group sizes "
            f"{[len(group) for group in groups]}): lower the batch size."
        )
    return steps


class StepBatchSampler(torch.utils.data.Sampler):
    """Deterministic, resumable batches; each global batch comes from one size group (aspect-ratio bucket).

    Epoch `e` shuffles every group with `numpy.random.default_rng([seed, e])`, cuts it into global batches of
    `batch_size × num_processes × accumulation_steps` rows (dropping the remainder) and shuffles the batch order. For
    optimizer steps `start_step … max_steps − 1` this process yields its micro-batches: the sample at `position` p of
    a global batch goes to micro-step `p // (batch_size · num_processes)`, process `(p // batch_size) %
    num_processes`. Each item is the dataset key `(row, step, position)`.
    """

    def __init__(
        self,
        groups: Sequence[Sequence[int]],
        batch_size: int,
        num_processes: int,
        process_index: int,
        accumulation_steps: int,
        seed: int,
        start_step: int,
        max_steps: int,
    ):
        self.groups = [np.asarray(group, dtype=np.int64) for group in groups]
        self.batch_size = batch_size
        self.num_processes = num_processes
        self.process_index = process_index
        self.accumulation_steps = accumulation_steps
        self.seed = seed
        self.start_step = start_step
        self.max_steps = max_steps
        self.global_batch_size = batch_size * num_processes * accumulation_steps
        self.steps_per_epoch = steps_per_epoch(groups, self.global_batch_size)

    def epoch_batches(self, epoch: int) -> list[np.ndarray]:
        """The global batches (arrays of `global_batch_size` rows) of `epoch`, in training order."""
        rng = np.random.default_rng([self.seed, epoch])
        size, batches = self.global_batch_size, []
        for group in self.groups:
            rows = rng.permutation(group)
            batches += [rows[i * size : (i + 1) * size] for i in range(len(rows) // size)]
        return [batches[i] for i in rng.permutation(len(batches))]

    def __iter__(self):
        epoch, batches = None, None
        for step in range(self.start_step, self.max_steps):
            if step // self.steps_per_epoch != epoch:
                epoch = step // self.steps_per_epoch
                batches = self.epoch_batches(epoch)
            rows = batches[step % self.steps_per_epoch]
            for micro_step in range(self.accumulation_steps):
                start = (micro_step * self.num_processes + self.process_index) * self.batch_size
                yield [(int(rows[p]), step, p) for p in range(start, start + self.batch_size)]

    def __len__(self):
        return max(self.max_steps - self.start_step, 0) * self.accumulation_steps

    def describe(self, num_examples: int) -> str:
        """The run's schedule, for the log."""
        epochs = -(-self.max_steps // self.steps_per_epoch)
        return (
            f"***** Running training *****\n  Num examples = {num_examples}\n  Num epochs = {epochs}\n"
            f"  Instantaneous batch size per device = {self.batch_size}\n"
            f"  Total train batch size (w. parallel, distributed & accumulation) = {self.global_batch_size}\n"
            f"  Gradient accumulation steps = {self.accumulation_steps}\n"
            f"  Total optimization steps = {self.max_steps}, starting at step {self.start_step}"
        )


def step_dataloader(
    dataset: FlowMatchingDataset,
    groups: Sequence[Sequence[int]],
    accelerator: Accelerator,
    batch_size: int,
    seed: int,
    start_step: int,
    max_steps: int,
    num_workers: int = 0,
) -> torch.utils.data.DataLoader:
    """The data loader of this process for optimizer steps `start_step … max_steps − 1`: a `StepBatchSampler` over
    `groups` for the accelerator's processes and accumulation steps (`batch_size` per micro-step), `num_workers`
    loading processes. Logs the schedule."""
    sampler = StepBatchSampler(
        groups,
        batch_size,
        accelerator.num_processes,
        accelerator.process_index,
        accelerator.gradient_accumulation_steps,
        seed,
        start_step,
        max_steps,
    )
    logger.info(sampler.describe(len(dataset)))
    pin_memory = accelerator.device.type == "cuda"
    return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, pin_memory=pin_memory)
