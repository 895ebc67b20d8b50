"""End-to-end tests of examples/train_text_to_image.py on captioned scikit-learn digits (CPU, tiny models)."""

import types

import pytest
import torch
from pixeldit_testing import tiny_model, tiny_text_components
from train_fixtures import (
    DIGIT_NAMES,
    TINY_TRANSFORMER,
    caption,
    example,
    lora_fine_tuning,
    record_transformer_inputs,
    run_in_process,
    save_digits_dataset,
    save_tiny_text_encoder,
    scalars,
    write_imagefolder,
)

from diffusers_pixeldit import (
    PIXELDIT_COMPLEX_HUMAN_INSTRUCTION,
    PixelDiTT2IPipeline,
    release_dpm_solver_scheduler,
)


train_text_to_image = example("train_text_to_image")

STEPS = 30
CAPTIONS = [caption(label) for label in range(len(DIGIT_NAMES))]


def tiny_args(data_args, output_dir, steps, *extra):
    return [
        *data_args,
        "--output_dir", str(output_dir), "--cache_dir", str(output_dir.parent / "cache"),
        "--resolution", "16", "--train_batch_size", "8", "--max_train_steps", str(steps),
        "--learning_rate", "3e-3", "--lr_warmup_steps", "0", "--seed", "0", *extra,
    ]  # fmt: skip


def encode(texts, max_sequence_length, instruction):
    """`encode_prompt` of the tiny text components: (len(texts), max_sequence_length, 8), and the "" embedding."""
    tokenizer, text_encoder = tiny_text_components(width=8)
    pipe = PixelDiTT2IPipeline(tokenizer, text_encoder, None, None, complex_human_instruction=instruction)
    with torch.no_grad():
        embeds, _, null_embeds, _ = pipe.encode_prompt(texts, True, "", max_sequence_length=max_sequence_length)
    return embeds, null_embeds[:1]


def assert_rows_are_encodings(text, encodings):
    """Every row of `text` (B, L, D) is one of `encodings` (N, L, D)."""
    assert text.shape[1:] == encodings.shape[1:]
    distance = (text[:, None] - encodings[None]).abs().flatten(2).amax(-1).amin(-1)
    assert distance.max() < 1e-5, distance


@pytest.fixture(scope="module")
def scratch_run(tmp_path_factory):
    """One from-scratch run: MiniLM-like tiny text encoder, precomputed text, aspect-ratio buckets, validation."""
    tmp_path = tmp_path_factory.mktemp("t2i_scratch")
    data = write_imagefolder(tmp_path / "digits", 96, captions=True, aspect_ratios=True)
    out = tmp_path / "out"
    with pytest.MonkeyPatch.context() as monkeypatch:
        seen = record_transformer_inputs(monkeypatch)
        run_in_process(
            train_text_to_image,
            tiny_args(
                ["--train_data_dir", str(data)], out, STEPS,
                "--text_encoder_name_or_path", str(save_tiny_text_encoder(tmp_path / "tiny-gemma2")),
                "--max_sequence_length", "8", "--proportion_empty_prompts", "0", "--learning_rate", "6e-3",
                "--transformer_config", TINY_TRANSFORMER, "--precompute_text_embeddings",
                "--aspect_ratio_buckets", "auto",
                "--validation_prompts", "a handwritten digit seven", "--num_validation_images", "2",
                "--validation_steps", "15", "--validation_num_inference_steps", "2", "--checkpointing_steps", "100",
            ),
        )  # fmt: skip
    return types.SimpleNamespace(out=out, seen=seen)


def test_loss_falls(scratch_run):
    loss = scalars(scratch_run.out, "train_loss")
    assert len(loss) == STEPS
    assert sum(loss[-10:]) / 10 < 0.85 * sum(loss[:5]) / 5, loss


def test_each_batch_is_one_aspect_ratio_bucket(scratch_run):
    # Images padded to 24x16 / 16x24 go to the (height, width) buckets of about 16² pixels.
    assert {record["shape"] for record in scratch_run.seen} == {(3, 16, 16), (3, 20, 12), (3, 12, 20)}


def test_captions_are_encoded_as_the_saved_pipeline_encodes_prompts(scratch_run):
    # From scratch: no instruction prefix, and the transformer takes --max_sequence_length tokens.
    pipe = PixelDiTT2IPipeline.from_pretrained(scratch_run.out)
    assert pipe.config.complex_human_instruction == [] and pipe.transformer.config.max_text_length == 8
    with torch.no_grad():
        saved_encodings = pipe.encode_prompt(CAPTIONS, do_classifier_free_guidance=False)[0]
    for record in scratch_run.seen:
        assert_rows_are_encodings(record["text"], saved_encodings)


def test_saved_pipeline_has_the_text_encoder_as_loaded_and_generates(scratch_run):
    pipe = PixelDiTT2IPipeline.from_pretrained(scratch_run.out)
    _, original = tiny_text_components(width=8)
    assert all(torch.equal(p, q) for p, q in zip(pipe.text_encoder.parameters(), original.parameters()))
    image = pipe("a handwritten digit seven", num_inference_steps=2, output_type="np").images
    assert image.shape == (1, 16, 16, 3)


def test_final_validation_grid_and_model_card(scratch_run):
    assert (scratch_run.out / "validation" / f"test_step_{STEPS}.png").is_file()
    card = (scratch_run.out / "README.md").read_text()
    assert "Text: 8 tokens, with no complex human instruction" in card
    assert "PixelDiTT2IPipeline.from_pretrained(" in card


@pytest.fixture
def pretrained_t2i(tmp_path):
    """A tiny pretrained pipeline (release instruction, 12 text tokens) and a captioned dataset."""
    tokenizer, text_encoder = tiny_text_components(width=8)
    transformer = tiny_model("t2i", text_embed_dim=8, max_text_length=12)
    base = tmp_path / "base"
    PixelDiTT2IPipeline(tokenizer, text_encoder, transformer, release_dpm_solver_scheduler()).save_pretrained(base)
    return base, save_digits_dataset(tmp_path / "digits_dataset", 32)


def one_fine_tuning_step(tmp_path, monkeypatch, pretrained_t2i, *extra) -> tuple[dict, PixelDiTT2IPipeline]:
    """The transformer's inputs during one full fine-tuning step of the pretrained pipeline, and the saved result."""
    base, dataset = pretrained_t2i
    seen = record_transformer_inputs(monkeypatch)
    out = tmp_path / "out"
    argv = ["--pretrained_model_name_or_path", str(base), "--proportion_empty_prompts", "0", "--report_to", "none"]
    run_in_process(train_text_to_image, tiny_args(["--dataset_name", str(dataset)], out, 1, *argv, *extra))
    (record,) = seen
    return record, PixelDiTT2IPipeline.from_pretrained(out)


def test_fine_tuning_keeps_the_pretrained_instruction_and_text_length(tmp_path, monkeypatch, pretrained_t2i):
    record, saved = one_fine_tuning_step(tmp_path, monkeypatch, pretrained_t2i)
    assert_rows_are_encodings(record["text"], encode(CAPTIONS, 12, PIXELDIT_COMPLEX_HUMAN_INSTRUCTION)[0])
    assert saved.config.complex_human_instruction == PIXELDIT_COMPLEX_HUMAN_INSTRUCTION


def test_fine_tuning_can_drop_the_instruction_and_shorten_the_text(tmp_path, monkeypatch, pretrained_t2i):
    extra = ["--complex_human_instruction", "none", "--max_sequence_length", "6"]
    record, saved = one_fine_tuning_step(tmp_path, monkeypatch, pretrained_t2i, *extra)
    assert_rows_are_encodings(record["text"], encode(CAPTIONS, 6, [])[0])
    assert saved.config.complex_human_instruction == []
    assert "sample with `max_sequence_length=6`" in (tmp_path / "out" / "README.md").read_text()


def one_scratch_step_inputs(tmp_path, monkeypatch, *extra) -> dict:
    """The transformer's inputs of a one-step from-scratch run on 8 captioned digits with the release instruction."""
    data = write_imagefolder(tmp_path / "digits", 8, captions=True)
    seen = record_transformer_inputs(monkeypatch)
    run_in_process(
        train_text_to_image,
        tiny_args(
            ["--train_data_dir", str(data)], tmp_path / "out", 1,
            "--text_encoder_name_or_path", str(save_tiny_text_encoder(tmp_path / "tiny-gemma2")),
            "--max_sequence_length", "8", "--transformer_config", TINY_TRANSFORMER,
            "--complex_human_instruction", "release", "--report_to", "none", *extra,
        ),
    )  # fmt: skip
    (record,) = seen
    return record


def test_from_scratch_can_take_the_release_instruction(tmp_path, monkeypatch):
    record = one_scratch_step_inputs(tmp_path, monkeypatch, "--proportion_empty_prompts", "0")
    assert_rows_are_encodings(record["text"], encode(CAPTIONS, 8, PIXELDIT_COMPLEX_HUMAN_INSTRUCTION)[0])


def test_dropped_captions_get_the_empty_prompt_embedding(tmp_path, monkeypatch):
    record = one_scratch_step_inputs(tmp_path, monkeypatch, "--proportion_empty_prompts", "1.0")
    prompt_embeds, null_embeds = encode(["a handwritten digit zero"], 8, PIXELDIT_COMPLEX_HUMAN_INSTRUCTION)
    assert null_embeds.abs().sum() > 0 and not torch.allclose(null_embeds, prompt_embeds)
    torch.testing.assert_close(record["text"], null_embeds.expand(8, -1, -1))


def test_lora_fine_tuning_with_online_text_encoding_gives_a_loadable_adapter(tmp_path, pretrained_t2i):
    base, dataset = pretrained_t2i
    argv = tiny_args(
        ["--dataset_name", str(dataset)], tmp_path / "out", 16,
        "--pretrained_model_name_or_path", str(base), "--rank", "4", "--learning_rate", "1e-2",
        "--checkpointing_steps", "8",
    )  # fmt: skip
    text = torch.randn(2, 12, 8, generator=torch.Generator().manual_seed(1))
    result = lora_fine_tuning(train_text_to_image, argv, base, encoder_hidden_states=text)
    assert sum(result["loss"][-5:]) < sum(result["loss"][:5]), result["loss"]
    # The LoRA covers the image and text projections; it loads onto the base model and changes its output.
    assert result["files"] == ["README.md", "pytorch_lora_weights.safetensors"] and result["change"] > 1e-3
    block = "transformer_blocks.1.attn."
    assert {block + name for name in ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "to_add_out"]} <= result[
        "modules"
    ]
