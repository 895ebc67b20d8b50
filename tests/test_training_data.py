"""diffusers_pixeldit.training.data: the deterministic sampler, the seeded per-sample draws, image reading."""

import datasets
import pytest
import torch
from PIL import Image
from train_fixtures import digits

from diffusers_pixeldit.training import (
    FlowMatchingDataset,
    FlowMatchingObjective,
    StepBatchSampler,
    class_ids,
    group_by_size,
    open_image,
    preprocess_image,
)


# Three size groups (aspect-ratio buckets) of 37, 20 and 3 rows: with global batch 8, 4 + 2 full batches per epoch.
GROUPS = [list(range(0, 37)), list(range(37, 57)), list(range(57, 60))]
STEPS = 12


def global_batches(batch_size, num_processes, accumulation, start_step=0, seed=3):
    """{step: sorted [(position, row)] over all processes and micro-steps}, and each micro-batch's size groups."""
    steps, micro_batch_groups = {}, []
    for rank in range(num_processes):
        sampler = StepBatchSampler(GROUPS, batch_size, num_processes, rank, accumulation, seed, start_step, STEPS)
        for micro_batch in sampler:
            micro_batch_groups.append({next(i for i, g in enumerate(GROUPS) if row in g) for row, _, _ in micro_batch})
            for row, step, position in micro_batch:
                steps.setdefault(step, []).append((position, row))
    return {step: sorted(samples) for step, samples in steps.items()}, micro_batch_groups


def test_global_batches_do_not_depend_on_how_they_are_split():
    reference, _ = global_batches(8, 1, 1)
    split, _ = global_batches(2, 2, 2)  # 2 processes x 2 rows x 2 accumulation steps
    assert len(reference) == STEPS and all(len(samples) == 8 for samples in reference.values())
    assert split == reference


def test_every_micro_batch_comes_from_one_size_group():
    _, groups = global_batches(2, 2, 2)
    assert len(groups) == STEPS * 4 and all(len(g) == 1 for g in groups)


def test_an_epoch_is_whole_batches_and_the_next_one_reshuffles():
    reference, _ = global_batches(8, 1, 1)
    first_epoch = {row for step in range(6) for _, row in reference[step]}
    assert len(first_epoch) == 48 and first_epoch.isdisjoint(GROUPS[2])  # the 3-row group never fills a batch
    assert [reference[s] for s in range(6, 12)] != [reference[s] for s in range(6)]


def test_a_resumed_sampler_yields_the_same_batches():
    reference, _ = global_batches(8, 1, 1)
    resumed, _ = global_batches(8, 1, 1, start_step=5)
    assert resumed == {step: reference[step] for step in range(5, STEPS)}


def test_batches_are_a_function_of_the_seed():
    assert global_batches(8, 1, 1, seed=3)[0] != global_batches(8, 1, 1, seed=4)[0]


def test_sampler_length_counts_the_remaining_micro_steps():
    assert len(StepBatchSampler(GROUPS, 2, 2, 0, 3, 0, 5, STEPS)) == (STEPS - 5) * 3


def test_a_batch_larger_than_every_group_is_refused():
    with pytest.raises(ValueError, match="No size group has a full global batch of 40"):
        StepBatchSampler(GROUPS, 40, 1, 0, 1, 0, 0, STEPS)


@pytest.fixture
def one_image_dataset(tmp_path):
    image, _ = digits(1)[0]
    image.save(tmp_path / "0.png")
    return [{"image": {"path": str(tmp_path / "0.png"), "bytes": None}}]


def flow_dataset(rows, channels=3, drop_probability=0.5, conditions=("a caption",)):
    return FlowMatchingDataset(
        rows, list(conditions), [(12, 12)], seed=5, objective=FlowMatchingObjective(),
        drop_probability=drop_probability, channels=channels, random_flip=True, resample=Image.Resampling.BICUBIC,
    )  # fmt: skip


def test_sample_draws_are_a_function_of_seed_step_and_position(one_image_dataset):
    dataset = flow_dataset(one_image_dataset)
    item, again = dataset[(0, 4, 1)], dataset[(0, 4, 1)]
    assert item["pixel_values"].shape == item["noise"].shape == (3, 12, 12)
    assert (
        all(torch.equal(item[k], again[k]) for k in ["pixel_values", "noise", "u"]) and item["drop"] == again["drop"]
    )
    for other in [dataset[(0, 4, 2)], dataset[(0, 5, 1)]]:
        assert not torch.equal(item["noise"], other["noise"]) and item["u"] != other["u"]


def test_sample_values_are_in_range(one_image_dataset):
    item = flow_dataset(one_image_dataset)[(0, 0, 0)]
    assert -1 <= item["pixel_values"].min() < item["pixel_values"].max() <= 1 and 0 < item["u"] < 1


def test_condition_dropout_follows_its_probability(one_image_dataset):
    dataset = flow_dataset(one_image_dataset, drop_probability=0.25)
    drops = [dataset[(0, step, 0)]["drop"] for step in range(400)]
    assert 0.19 < sum(drops) / len(drops) < 0.31


def test_one_of_several_captions_is_picked_per_draw(one_image_dataset):
    dataset = flow_dataset(one_image_dataset, conditions=[["first", "second", "third"]])
    assert {dataset[(0, step, 0)]["condition"] for step in range(30)} == {"first", "second", "third"}


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_images_are_read_with_the_models_channels(one_image_dataset, channels):
    assert flow_dataset(one_image_dataset, channels=channels)[(0, 0, 0)]["pixel_values"].shape == (channels, 12, 12)


def test_other_channel_counts_are_refused(one_image_dataset):
    with pytest.raises(ValueError, match=r"\[1, 3, 4\] channels, the model takes 2"):
        flow_dataset(one_image_dataset, channels=2)


def test_preprocessing_resizes_to_cover_then_center_crops():
    # A 4-pixel-wide left half black, right half white image, 8 x 4 (width x height), to a 4 x 4 square.
    image = Image.new("L", (8, 4))
    image.paste(255, (4, 0, 8, 4))
    pixels = preprocess_image(
        image, (4, 4), center_crop=True, random_flip=False, resample=Image.Resampling.NEAREST, generator=None
    )
    assert pixels.shape == (1, 4, 4)
    torch.testing.assert_close(pixels[0, 0], torch.tensor([-1.0, -1.0, 1.0, 1.0]))


def test_unreadable_image_error_names_the_file_and_row(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(OSError, match=r"Cannot read training image .*broken\.png \(dataset row 3\)"):
        open_image({"path": str(tmp_path / "broken.png"), "bytes": None}, 3, "RGB")


def image_dataset(tmp_path, sizes):
    for index, size in enumerate(sizes):
        Image.new("L", size).save(tmp_path / f"{index}.png")
    return datasets.Dataset.from_dict({"image": [str(tmp_path / f"{i}.png") for i in range(len(sizes))]}).cast_column(
        "image", datasets.Image(decode=False)
    )


def test_images_go_to_the_bucket_nearest_their_aspect_ratio(tmp_path):
    dataset = image_dataset(tmp_path, [(30, 10), (10, 10), (12, 40), (50, 40)])  # (width, height)
    buckets = [(8, 16), (12, 12), (16, 8)]
    sizes, groups = group_by_size(dataset, "image", 12, 4, buckets)
    assert sizes == [(8, 16), (12, 12), (16, 8), (12, 12)]
    assert groups == [[0], [1, 3], [2]]


def test_without_buckets_every_image_is_square(tmp_path):
    sizes, groups = group_by_size(image_dataset(tmp_path, [(30, 10), (10, 10)]), "image", 8, 4)
    assert sizes == [(8, 8), (8, 8)] and groups == [[0, 1]]


def test_sizes_must_be_multiples_of_the_patch_size(tmp_path):
    with pytest.raises(ValueError, match="multiples of the patch size 4"):
        group_by_size(image_dataset(tmp_path, [(10, 10)]), "image", 10, 4)


@pytest.mark.parametrize(
    "feature, values, expected",
    [
        (datasets.ClassLabel(names=["cat", "dog"]), [1, 0, 1], ([1, 0, 1], ["cat", "dog"])),
        (datasets.Value("int64"), [2, 0], ([2, 0], ["0", "1", "2"])),
        (datasets.Value("string"), ["dog", "cat", "dog"], ([1, 0, 1], ["cat", "dog"])),
    ],
)
def test_class_ids_and_names(feature, values, expected):
    dataset = datasets.Dataset.from_dict({"label": values}, features=datasets.Features({"label": feature}))
    assert class_ids(dataset, "label") == expected
