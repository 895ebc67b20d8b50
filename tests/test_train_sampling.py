"""The deterministic batching and per-sample randomness of the training examples (examples/pixeldit_train_utils.py)."""

import argparse

import torch
from train_fixtures import digits, example


utils = example("pixeldit_train_utils")


def global_batches(groups, batch_size, num_processes, accumulation, start_step=0, max_steps=12):
    """{step: [(position, row) of every process and micro-step]} and each micro-batch's groups."""
    steps, micro_batch_groups = {}, []
    for rank in range(num_processes):
        sampler = utils.StepBatchSampler(
            groups, batch_size, num_processes, rank, accumulation, seed=3, start_step=start_step, max_steps=max_steps
        )
        for micro_batch in sampler:
            micro_batch_groups.append({next(i for i, g in enumerate(groups) if row in g) for row, _, _ in micro_batch})
            for row, step, position in micro_batch:
                steps.setdefault(step, []).append((position, row))
    return {step: sorted(samples) for step, samples in steps.items()}, micro_batch_groups


def test_global_batches_do_not_depend_on_the_split_and_resume_exactly():
    # Three size groups (aspect-ratio buckets) of 37, 20 and 3 rows; global batch 8.
    groups = [list(range(0, 37)), list(range(37, 57)), list(range(57, 60))]
    reference, reference_groups = global_batches(groups, 8, 1, 1)
    split, split_groups = global_batches(groups, 2, 2, 2)  # 2 processes x 2 rows x 2 accumulation steps
    assert split == reference
    assert all(len(g) == 1 for g in reference_groups + split_groups)  # every micro-batch comes from one bucket
    assert len(reference) == 12 and all(len(samples) == 8 for samples in reference.values())
    # 6 full batches per epoch (4 + 2, the third group is too small): steps 6-11 are a reshuffled second epoch.
    first_epoch = {row for step in range(6) for _, row in reference[step]}
    assert len(first_epoch) == 48 and first_epoch.isdisjoint(range(57, 60))
    assert [reference[s] for s in range(6, 12)] != [reference[s] for s in range(6)]
    resumed, _ = global_batches(groups, 8, 1, 1, start_step=5)
    assert resumed == {step: reference[step] for step in range(5, 12)}


def test_sample_randomness_is_a_function_of_seed_step_and_position(tmp_path):
    image, _ = digits(1)[0]
    image.save(tmp_path / "0.png")
    dataset = [{"image": {"path": str(tmp_path / "0.png"), "bytes": None}}]
    args = argparse.Namespace(
        image_column="image", seed=5, center_crop=False, random_flip=True, image_interpolation_mode="bicubic",
        weighting_scheme="logit_normal", logit_mean=0.0, logit_std=1.0, mode_scale=1.29,
    )  # fmt: skip
    train_dataset = utils.FlowMatchingDataset(dataset, ["a caption"], [(12, 12)], args, drop_probability=0.5)
    item = train_dataset[(0, 4, 1)]
    assert item["pixel_values"].shape == item["noise"].shape == (3, 12, 12)
    assert -1 <= item["pixel_values"].min() and item["pixel_values"].max() <= 1 and 0 < item["u"] < 1
    again = train_dataset[(0, 4, 1)]
    assert (
        all(torch.equal(item[k], again[k]) for k in ["pixel_values", "noise", "u"]) and item["drop"] == again["drop"]
    )
    others = [train_dataset[(0, 4, 2)], train_dataset[(0, 5, 1)]]
    assert all(not torch.equal(item["noise"], other["noise"]) for other in others)
