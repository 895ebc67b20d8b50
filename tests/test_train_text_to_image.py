"""End-to-end tests of examples/train_text_to_image.py on captioned scikit-learn digits (CPU, tiny models)."""

import torch
from diffusers import DPMSolverMultistepScheduler
from pixeldit_testing import tiny_model, tiny_text_components
from train_fixtures import TINY_TRANSFORMER, example, run_in_process, save_digits_dataset, scalars, write_imagefolder

from diffusers_pixeldit import PIXELDIT_COMPLEX_HUMAN_INSTRUCTION, PixelDiTT2IPipeline, PixelDiTTransformer2DModel


train_text_to_image = example("train_text_to_image")


def save_tiny_text_encoder(path):
    tokenizer, text_encoder = tiny_text_components(width=8)
    tokenizer.save_pretrained(path)
    text_encoder.save_pretrained(path)
    return path


def tiny_args(data_args, output_dir, steps, *extra):
    return [
        *data_args,
        "--output_dir", str(output_dir), "--cache_dir", str(output_dir.parent / "cache"),
        "--resolution", "16", "--train_batch_size", "8", "--max_train_steps", str(steps),
        "--learning_rate", "3e-3", "--lr_warmup_steps", "0", "--seed", "0", *extra,
    ]  # fmt: skip


def record_transformer_inputs(monkeypatch) -> list[dict]:
    """Patches the transformer's forward to record (during training only) its images and text embeddings."""
    seen = []
    forward = PixelDiTTransformer2DModel.forward

    def recording_forward(self, hidden_states, timestep, class_labels=None, encoder_hidden_states=None, **kwargs):
        if torch.is_grad_enabled():
            seen.append(dict(shape=tuple(hidden_states.shape[-2:]), text=encoder_hidden_states.detach().clone()))
        return forward(self, hidden_states, timestep, class_labels, encoder_hidden_states, **kwargs)

    monkeypatch.setattr(PixelDiTTransformer2DModel, "forward", recording_forward)
    return seen


def test_from_scratch_precomputed_text_aspect_ratio_buckets(tmp_path, monkeypatch):
    data = write_imagefolder(tmp_path / "digits", 120, captions=True, aspect_ratios=True)
    text_encoder_path = save_tiny_text_encoder(tmp_path / "tiny-gemma2")
    seen = record_transformer_inputs(monkeypatch)
    out = tmp_path / "out"
    run_in_process(
        train_text_to_image,
        tiny_args(
            ["--train_data_dir", str(data)], out, 40,
            "--text_encoder_name_or_path", str(text_encoder_path), "--max_sequence_length", "8",
            "--transformer_config", TINY_TRANSFORMER, "--precompute_text_embeddings", "--aspect_ratio_buckets", "auto",
            "--validation_prompts", "a handwritten digit seven", "--num_validation_images", "2",
            "--validation_steps", "20", "--validation_num_inference_steps", "3", "--checkpointing_steps", "100",
        ),
    )  # fmt: skip
    loss = scalars(out, "train_loss")
    assert len(loss) == 40
    assert sum(loss[-10:]) / 10 < 0.85 * sum(loss[:5]) / 5, loss

    # Images padded to 24x16 / 16x24 went to the (height, width) buckets of about 16² pixels; a batch is one bucket.
    assert {record["shape"] for record in seen} == {(16, 16), (20, 12), (12, 20)}
    assert all(record["text"].shape == (8, 8, 8) for record in seen)

    # The output is a complete pipeline (the text encoder saved as loaded) that generates from a prompt.
    pipe = PixelDiTT2IPipeline.from_pretrained(out)
    _, original = tiny_text_components(width=8)
    assert all(torch.equal(p, q) for p, q in zip(pipe.text_encoder.parameters(), original.parameters()))
    # trained without the instruction prefix: the saved pipeline encodes prompts the same way, with 8 tokens
    assert pipe.config.complex_human_instruction == [] and pipe.transformer.config.max_text_length == 8
    image = pipe("a handwritten digit seven", num_inference_steps=2, output_type="np").images
    assert image.shape == (1, 16, 16, 3)
    assert (out / "validation" / "test_step_40.png").is_file()
    card = (out / "README.md").read_text()
    assert "no complex human instruction" in card and "PixelDiTT2IPipeline.from_pretrained(" in card


def test_lora_fine_tuning_of_a_pipeline_with_online_text_encoding(tmp_path):
    dataset = save_digits_dataset(tmp_path / "digits_dataset", 64)
    tokenizer, text_encoder = tiny_text_components(width=8)
    scheduler = DPMSolverMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction")
    base = tmp_path / "base"
    transformer = tiny_model("t2i", text_embed_dim=8, max_text_length=12)
    PixelDiTT2IPipeline(tokenizer, text_encoder, transformer, scheduler).save_pretrained(base)
    out = tmp_path / "out"
    run_in_process(
        train_text_to_image,
        tiny_args(
            ["--dataset_name", str(dataset)], out, 20,
            "--pretrained_model_name_or_path", str(base), "--rank", "4", "--learning_rate", "1e-2",
            "--complex_human_instruction", "--max_sequence_length", "12", "--checkpointing_steps", "10",
        ),
    )  # fmt: skip
    loss = scalars(out, "train_loss")
    assert sum(loss[-5:]) / 5 < sum(loss[:5]) / 5, loss

    # The LoRA covers the image and text projections; it loads onto the base model and changes its output.
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == ["README.md", "pytorch_lora_weights.safetensors"]
    transformer = PixelDiTTransformer2DModel.from_pretrained(base, subfolder="transformer")
    inputs = dict(
        hidden_states=torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)),
        timestep=torch.tensor([300.0, 700.0]),
        encoder_hidden_states=torch.randn(2, 12, 8, generator=torch.Generator().manual_seed(1)),
    )
    with torch.no_grad():
        before = transformer(**inputs).sample
        transformer.load_lora_adapter(out, weight_name="pytorch_lora_weights.safetensors", prefix=None)
        after = transformer(**inputs).sample
    lora_modules = {name.rsplit(".lora_", 1)[0] for name, _ in transformer.named_parameters() if ".lora_" in name}
    block = "transformer_blocks.1.attn."
    assert {block + name for name in ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "to_add_out"]} <= lora_modules
    assert (after - before).abs().max() > 1e-3


def test_dropped_captions_get_the_empty_prompt_embedding(tmp_path, monkeypatch):
    data = write_imagefolder(tmp_path / "digits", 8, captions=True)
    text_encoder_path = save_tiny_text_encoder(tmp_path / "tiny-gemma2")
    seen = record_transformer_inputs(monkeypatch)
    run_in_process(
        train_text_to_image,
        tiny_args(
            ["--train_data_dir", str(data)], tmp_path / "out", 1,
            "--text_encoder_name_or_path", str(text_encoder_path), "--max_sequence_length", "8",
            "--transformer_config", TINY_TRANSFORMER, "--complex_human_instruction",
            "--proportion_empty_prompts", "1.0", "--report_to", "none",
        ),
    )  # fmt: skip
    tokenizer, text_encoder = tiny_text_components(width=8)
    pipe = PixelDiTT2IPipeline(tokenizer, text_encoder, None, None)
    with torch.no_grad():
        prompt_embeds, _, null_embeds, _ = pipe.encode_prompt(
            "a handwritten digit zero", True, "", max_sequence_length=8,
            complex_human_instruction=PIXELDIT_COMPLEX_HUMAN_INSTRUCTION,
        )  # fmt: skip
    (record,) = seen
    assert null_embeds.abs().sum() > 0 and not torch.allclose(null_embeds, prompt_embeds)
    torch.testing.assert_close(record["text"], null_embeds.expand(8, -1, -1))
