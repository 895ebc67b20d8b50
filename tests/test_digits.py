import numpy as np
import PIL.Image
import pytest
import torch
from pixeldit_testing import run_demo_as_first_command
from transformers import AutoModel, AutoTokenizer

from diffusers_pixeldit import PixelDiTPipeline, PixelDiTT2IPipeline
from diffusers_pixeldit.digits import (
    DIGIT_NAMES,
    DigitClassifier,
    frechet_distance,
    load_digit_splits,
    minilm_path,
    pretrained_digits_path,
    speckle_counts,
)


@pytest.fixture(scope="module")
def classifier():
    return DigitClassifier()


def test_data_split_and_classifier(classifier):
    splits = load_digit_splits()
    (train_x, _), (test_x, test_y) = splits["train"], splits["test"]
    assert train_x.shape == (1437, 32, 32) and test_x.shape == (360, 32, 32) and train_x.dtype == np.uint8
    assert np.bincount(test_y).min() >= 35  # stratified
    assert (classifier.predict(test_x) == test_y).mean() > 0.98
    real = frechet_distance(classifier.features(train_x[:360]), classifier.features(test_x))
    noise = frechet_distance(
        classifier.features(np.random.default_rng(0).random((360, 32, 32))), classifier.features(test_x)
    )
    assert real < 3 < 30 < noise


def test_speckle_counts_lone_pixels_not_strokes():
    images = np.zeros((2, 32, 32))
    images[:, :, 14:18] = 1.0  # a stroke 4 pixels wide (its square corners would count), and its edges
    images[1, 3, 3] = 0.6  # a grey speck
    images[1, 0, 31] = 1.0  # a speck in a corner
    images[1, 20, 15] = 0.5  # a dark speck inside the stroke
    assert speckle_counts(images).tolist() == [0, 3]
    assert speckle_counts(np.round(images * 255).astype(np.uint8)[..., None]).tolist() == [0, 3]
    assert speckle_counts(load_digit_splits()["test"][0]).sum() == 0  # real digits have none


def size_mb(folder) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20


def test_shipped_class_conditional_model_draws_recognisable_digits(classifier):
    folder = pretrained_digits_path("c2i")
    assert size_mb(folder) <= 20
    pipe = PixelDiTPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    labels = [label for label in range(10) for _ in range(3)]
    images = pipe(class_labels=labels, generator=torch.Generator().manual_seed(0), output_type="np").images
    assert images.shape == (30, 32, 32, 1)
    assert (classifier.predict(images[..., 0]) == np.array(labels)).mean() >= 0.9
    assert speckle_counts(images).mean() <= 0.1  # clean, as real digits (0.36 before the outlier-noise fine-tune)
    assert pipe.get_label_ids(["seven", "7"]) == [7, 7]


def test_shipped_text_to_image_model_draws_recognisable_digits(classifier):
    folder = pretrained_digits_path("t2i")
    assert size_mb(folder) <= 20
    tokenizer, text_encoder = AutoTokenizer.from_pretrained(minilm_path()), AutoModel.from_pretrained(minilm_path())
    pipe = PixelDiTT2IPipeline.from_pretrained(folder, tokenizer=tokenizer, text_encoder=text_encoder)
    pipe.set_progress_bar_config(disable=True)
    labels = [label for label in range(10) for _ in range(3)]
    prompts = [f"a handwritten digit {DIGIT_NAMES[label]}" for label in labels]
    images = pipe(prompts, generator=torch.Generator().manual_seed(0), output_type="np").images
    assert (classifier.predict(images[..., 0]) == np.array(labels)).mean() >= 0.8
    assert speckle_counts(images).mean() <= 0.1  # 0.76 before the outlier-noise fine-tune


def test_demo_writes_the_grid_and_gif_and_a_benchmark_line_without_warnings(tmp_path):
    result = run_demo_as_first_command(
        "--output_dir", str(tmp_path), "--images_per_class", "1", "--num_inference_steps", "2", "--threads", "1"
    )
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert "benchmark: imports" in result.stdout and "speckle pixels per digit" in result.stdout
    assert PIL.Image.open(tmp_path / "digits_grid.png").size[1] == 10 * (32 * 3 + 2)  # a row per class
    gif = PIL.Image.open(tmp_path / "digits_sampling.gif")
    assert gif.n_frames == 1 + 2  # the noise and each step (Pillow merges the held result into the last frame)
    assert (tmp_path / "digits_sampling.gif").stat().st_size < 2 * 2**20
