"""examples/evaluate_class_conditional.py on the embedded digits model (CPU): 2 processes (gloo) and a run killed
with SIGKILL then resumed give the same `.npz` bytes as one uninterrupted process; the metrics (digits classifier,
FID with a tiny DINOv2 against a reference batch or statistics); bad arguments fail before any work. Runs are
forked from this process (no new imports), the 2-process run with the environment `accelerate launch --multi_gpu`
gives its processes."""

import importlib.util
import json
import logging
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from train_fixtures import (
    FORKED_RUN_TIMEOUT_S,
    example,
    fork_script,
    free_port,
    log_tail,
    run_in_process,
    save_tiny_dinov2,
)

from diffusers_pixeldit import PixelDiTPipeline, evaluation
from diffusers_pixeldit.digits import load_digit_splits, pretrained_digits_path


evaluate_class_conditional = example("evaluate_class_conditional")

SCRIPT = "evaluate_class_conditional.py"
# 3 classes x 3 samples in batches of 2: 5 shards, the last one shorter.
NUM_SAMPLES, NUM_SHARDS = 9, 5
BASE_ARGS = [
    "--pretrained_model_name_or_path", str(pretrained_digits_path("c2i")), "--class_labels", "0", "three", "7",
    "--num_samples_per_class", "3", "--num_inference_steps", "2", "--batch_size", "2", "--seed", "5",
]  # fmt: skip
SAMPLES_NAME = f"samples_{NUM_SAMPLES}x32x32x3.npz"


def write_reference_batch(path: Path, size: int = 32, count: int = 60) -> Path:
    """Held-out real digits as an ADM reference batch (`arr_0`, uint8 (N, size, size, 3))."""
    images = load_digit_splits(size)["test"][0][:count]
    np.savez(path, arr_0=np.repeat(images[..., None], 3, axis=-1))
    return path


def argv(output_dir: Path, *extra: str) -> list[str]:
    return [*BASE_ARGS, "--output_dir", str(output_dir), *extra]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """One uninterrupted single-process run with PNGs, the digits metrics and FID (tiny DINOv2) against a
    reference batch."""
    tmp_path = tmp_path_factory.mktemp("evaluate_c2i")
    reference, dinov2 = write_reference_batch(tmp_path / "reference.npz"), save_tiny_dinov2(tmp_path / "dinov2")
    out = tmp_path / "one"
    run_in_process(
        evaluate_class_conditional,
        argv(out, "--save_png", "--digits_metrics", "--reference_batch", str(reference),
             "--feature_extractor", str(dinov2), "--feature_resolution", "28"),
    )  # fmt: skip
    return dict(out=out, reference=reference, dinov2=dinov2)


def test_two_processes_and_a_killed_resumed_run_give_the_same_file(reference_run, tmp_path, caplog):
    expected = (reference_run["out"] / SAMPLES_NAME).read_bytes()

    # Killed with SIGKILL once its first shard is written.
    killed = fork_script(SCRIPT, argv(tmp_path / "killed"), tmp_path / "killed.log")
    shards = tmp_path / "killed" / evaluation.SHARDS_FOLDER
    deadline = time.monotonic() + FORKED_RUN_TIMEOUT_S
    while not (shards / "shard-000000.npz").exists():
        assert killed.is_alive() and time.monotonic() < deadline, log_tail(tmp_path / "killed.log")
        time.sleep(0.005)
    os.kill(killed.pid, signal.SIGKILL)
    killed.join()
    finished = sorted(p.name for p in shards.glob("shard-*.npz"))
    assert 1 <= len(finished) < NUM_SHARDS, finished
    assert not (tmp_path / "killed" / SAMPLES_NAME).exists()
    # As if killed while writing a shard: a partial temporary file, which must be ignored and removed.
    (shards / ".tmp-1-shard-000004.npz").write_bytes(b"partial")
    before = {p.name: p.stat().st_mtime_ns for p in shards.glob("shard-*.npz")}

    port = free_port()
    ranks = [
        fork_script(SCRIPT, argv(tmp_path / "two"), tmp_path / f"two{rank}.log", rank, 2, port) for rank in range(2)
    ]
    try:
        with caplog.at_level(logging.INFO):
            run_in_process(evaluate_class_conditional, argv(tmp_path / "killed"))
        for rank, process in enumerate(ranks):
            process.join(FORKED_RUN_TIMEOUT_S)
            assert process.exitcode == 0, log_tail(tmp_path / f"two{rank}.log")
    finally:
        for process in ranks:
            if process.is_alive():
                process.kill()

    assert f"in {NUM_SHARDS} shards: {len(finished)} done, {NUM_SHARDS - len(finished)} to generate" in caplog.text
    # The finished shards were not generated again; no duplicates, gaps or temporary files are left.
    assert {name: (shards / name).stat().st_mtime_ns for name in before} == before
    assert sorted(p.name for p in shards.iterdir()) == [f"shard-{j:06d}.npz" for j in range(NUM_SHARDS)]
    assert (tmp_path / "killed" / SAMPLES_NAME).read_bytes() == expected
    assert (tmp_path / "two" / SAMPLES_NAME).read_bytes() == expected
    # Started again when finished (even with its shards deleted), it generates nothing.
    for shard in shards.iterdir():
        shard.unlink()
    caplog.clear()
    with caplog.at_level(logging.INFO):
        run_in_process(evaluate_class_conditional, argv(tmp_path / "killed"))
    assert f"in {NUM_SHARDS} shards: {NUM_SHARDS} done, 0 to generate" in caplog.text
    assert not any(shards.iterdir()) and (tmp_path / "killed" / SAMPLES_NAME).read_bytes() == expected
    assert "on 2 processes" in log_tail(tmp_path / "two0.log")


def test_samples_follow_the_adm_layout_and_the_official_seeding(reference_run):
    out = reference_run["out"]
    with np.load(out / SAMPLES_NAME) as samples:
        images, labels = samples["arr_0"], samples["arr_1"]
    assert images.shape == (NUM_SAMPLES, 32, 32, 3) and images.dtype == np.uint8
    assert labels.tolist() == [0, 0, 0, 3, 3, 3, 7, 7, 7]
    # The grey model's channel is repeated; the PNGs hold the same pixels.
    assert (images == images[..., :1]).all() and images.std() > 10
    pngs = sorted(p.name for p in (out / "png").iterdir())
    assert pngs == [f"{i:06d}.png" for i in range(NUM_SAMPLES)]
    np.testing.assert_array_equal(np.asarray(Image.open(out / "png" / "000004.png")), images[4])

    # Sample 4 is the pipeline's output for its class from its own seed, whatever its batch.
    pipe = evaluation.load_pipeline(str(pretrained_digits_path("c2i")), (PixelDiTPipeline,))
    pipe.set_progress_bar_config(disable=True)
    seed = evaluation.sample_seeds(5, NUM_SAMPLES)[4]
    alone = pipe(
        class_labels=[3], num_inference_steps=2, generator=torch.Generator().manual_seed(seed), output_type="latent"
    )
    assert np.abs(evaluation.to_uint8(alone.images)[0].astype(int) - images[4]).max() <= 1


def test_metrics_digits_classifier_and_fid(reference_run):
    from diffusers_pixeldit.digits import frechet_distance

    metrics = json.loads((reference_run["out"] / "metrics.json").read_text())
    assert metrics["num_samples"] == NUM_SAMPLES
    # 2 sampling steps already give recognisable digits; the FD is finite and positive.
    assert metrics["digits_accuracy"] >= 0.6, metrics
    assert 0 < metrics["digits_fd"] < 1e3, metrics

    # FID (torchmetrics) equals the Fréchet distance of the tiny DINOv2's features, computed here.
    features = evaluation.TransformersImageFeatures(str(reference_run["dinov2"]), resolution=28)
    with np.load(reference_run["out"] / SAMPLES_NAME) as samples, np.load(reference_run["reference"]) as ref:
        generated, real = (torch.from_numpy(a["arr_0"]).permute(0, 3, 1, 2) for a in (samples, ref))
    generated_features, real_features = features(generated).double().numpy(), features(real).double().numpy()
    expected = frechet_distance(generated_features, real_features)
    assert metrics["fid"] == pytest.approx(expected, rel=1e-4)

    # A statistics file of the same features gives the same FID.
    statistics = reference_run["out"].parent / "statistics.npz"
    np.savez(statistics, mu=real_features.mean(0), sigma=np.cov(real_features, rowvar=False))
    metric = evaluation.GenerativeMetrics(
        str(reference_run["dinov2"]), str(statistics), resolution=32, feature_resolution=28
    )
    assert metric.compute(evaluation.iter_npz_array(reference_run["out"] / SAMPLES_NAME, batch_size=4))[
        "fid"
    ] == pytest.approx(expected, rel=1e-4)


def test_bad_arguments_fail_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="Unknown class names \\['eleven'\\]"):
        run_in_process(evaluate_class_conditional, argv(tmp_path / "a", "--class_labels", "1", "eleven"))
    with pytest.raises(ValueError, match="out of range"):
        run_in_process(evaluate_class_conditional, argv(tmp_path / "b", "--class_labels", "12"))
    small = write_reference_batch(tmp_path / "reference16.npz", size=16, count=4)
    with pytest.raises(ValueError, match="holds 16x16 images; the samples are 32x32"):
        run_in_process(evaluate_class_conditional, argv(tmp_path / "c", "--reference_batch", str(small)))
    with pytest.raises(ValueError, match="--digits_metrics judges 32x32 digits"):
        run_in_process(evaluate_class_conditional, argv(tmp_path / "e", "--digits_metrics", "--resolution", "16"))
    for name in "abce":
        assert not (tmp_path / name).exists()

    # A folder holding another configuration's samples is not mixed with new ones.
    run_in_process(evaluate_class_conditional, argv(tmp_path / "d", "--num_samples_per_class", "1"))
    with pytest.raises(ValueError, match="holds samples of another configuration \\(num_samples_per_class: 1 -> 2"):
        run_in_process(evaluate_class_conditional, argv(tmp_path / "d", "--num_samples_per_class", "2"))


@pytest.mark.skipif(
    importlib.util.find_spec("torch_fidelity") is None,
    reason="the Inception network (torch-fidelity's, which torchmetrics uses) needs torchvision, whose PyPI builds do "
    "not import beside this CPU torch 2.13.0 (and break transformers); its weights cannot be downloaded here",
)
def test_inception_fid_and_inception_score(reference_run):
    weights = os.environ.get("PIXELDIT_INCEPTION_WEIGHTS")  # torch-fidelity's cache otherwise
    metric = evaluation.GenerativeMetrics(
        "inception", str(reference_run["reference"]), resolution=32, inception_weights=weights, inception_score=True
    )
    results = metric.compute(evaluation.iter_npz_array(reference_run["reference"]))
    assert results["fid"] == pytest.approx(0, abs=1e-2)
    assert results["inception_score"] >= 1
