"""diffusers_pixeldit.training.components and .loop: what a run trains, and the pieces of its loop."""

import json

import pytest
import torch
from accelerate import Accelerator
from pixeldit_testing import TINY_PIXELDIT2, tiny_inputs, tiny_model
from train_fixtures import reset_accelerate_state

from diffusers_pixeldit import (
    PixelDiT2Pipeline,
    PixelDiT2Transformer2DModel,
    PixelDiTFlowScheduler,
    PixelDiTPipeline,
    PixelDiTTransformer2DModel,
)
from diffusers_pixeldit.training import (
    StepMetrics,
    create_ema,
    ema_weights,
    load_or_build_pipeline_parts,
    load_transformer_config,
    prepare_transformer_for_training,
    sampling_recipe,
)


SCRATCH = dict(num_classes=3, sample_size=16, patch_size=4, num_layers=1, num_attention_heads=2)
SCRATCH.update(attention_head_dim=8, num_pixel_layers=1, pixel_embed_dim=4)


def test_from_scratch_a_preset_is_built_with_the_given_scheduler():
    scheduler = PixelDiTFlowScheduler(shift=3.0)
    parts = load_or_build_pipeline_parts(
        PixelDiTPipeline, None, preset="PixelDiT-B", transformer_config=SCRATCH, scheduler=scheduler
    )
    assert parts.scheduler is scheduler and parts.config == {}
    assert parts.transformer.config.num_layers == 1 and parts.transformer.config.num_classes == 3


def zero_initialised(transformer) -> list[str]:
    """Names of the modules whose weight and bias are all zero."""
    return [
        name
        for name, module in transformer.named_modules()
        if isinstance(module, torch.nn.Linear) and not module.weight.any() and not module.bias.any()
    ]


@pytest.mark.parametrize("pipeline_class", [PixelDiTPipeline, PixelDiT2Pipeline])
def test_from_scratch_starts_from_the_official_initialisation(pipeline_class):
    # construction gives PyTorch's default init (an adapter can change the output); from scratch, the official one
    is_pixeldit2 = pipeline_class is PixelDiT2Pipeline
    transformer_class = PixelDiT2Transformer2DModel if is_pixeldit2 else PixelDiTTransformer2DModel
    config = TINY_PIXELDIT2 if is_pixeldit2 else SCRATCH
    torch.manual_seed(0)
    assert zero_initialised(transformer_class(**config)) == []
    parts = load_or_build_pipeline_parts(
        pipeline_class,
        None,
        preset="PixelDiT2-B/16" if is_pixeldit2 else "PixelDiT-B",
        transformer_config=config,
        scheduler=PixelDiTFlowScheduler(),
        transformer_class=transformer_class,
    )
    zeros = zero_initialised(parts.transformer)
    assert "proj_out" in zeros and all(name.split(".")[0] == "proj_out" or "modulation" in name for name in zeros)
    modulations = [n for n, m in parts.transformer.named_modules() if n.endswith("adaln_modulation")]
    assert modulations and set(modulations) <= set(zeros)
    weight = parts.transformer.patch_embed.weight
    bound = (6 / sum(weight.shape)) ** 0.5  # Xavier-uniform
    assert weight.abs().max() <= bound and weight.abs().max() > bound / 2
    assert parts.transformer.class_embed.weight.std().item() == pytest.approx(0.02, rel=0.2)


def test_a_freshly_built_model_does_not_output_zero():
    torch.manual_seed(0)
    model = PixelDiTTransformer2DModel(**SCRATCH).eval()
    with torch.no_grad():
        assert model(**tiny_inputs(model)).sample.abs().min() > 0
        assert not model.initialize_weights()(**tiny_inputs(model)).sample.any()


def test_fine_tuning_loads_the_pretrained_transformer_scheduler_and_config(tmp_path):
    transformer = tiny_model("c2i")
    PixelDiTPipeline(transformer, PixelDiTFlowScheduler(shift=2.0), default_guidance_scale=4.0).save_pretrained(
        tmp_path
    )
    parts = load_or_build_pipeline_parts(
        PixelDiTPipeline, str(tmp_path), preset="PixelDiT-B", transformer_config=SCRATCH, scheduler=None
    )
    assert parts.scheduler.config.shift == 2.0 and parts.config["default_guidance_scale"] == 4.0
    # the pretrained weights, not re-initialised (`tiny_model`'s output projection is non-zero)
    assert all(torch.equal(p, q) for p, q in zip(parts.transformer.parameters(), transformer.parameters()))
    assert parts.transformer.proj_out.weight.any()


def test_the_recipe_is_the_pretrained_one_overridden_by_what_is_given():
    pretrained = dict(default_num_inference_steps=9, default_guidance_scale=3.0, default_guidance_interval=(0.1, 1.0))
    recipe = sampling_recipe(pretrained, guidance_scale=1.5, guidance_interval=(0.2, 0.8))
    assert recipe == dict(
        default_num_inference_steps=9, default_guidance_scale=1.5, default_guidance_interval=(0.2, 0.8)
    )
    assert sampling_recipe({}, num_inference_steps=5) == dict(default_num_inference_steps=5)


def test_transformer_config_from_a_json_string_or_a_saved_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "X", "num_layers": 2}))
    assert load_transformer_config(str(tmp_path / "config.json")) == {"num_layers": 2}
    assert load_transformer_config('{"patch_size": 8}') == {"patch_size": 8} and load_transformer_config(None) == {}


def test_lora_training_freezes_the_base_in_the_weight_dtype_and_trains_fp32_adapters():
    transformer = tiny_model("c2i")
    prepare_transformer_for_training(transformer, weight_dtype=torch.bfloat16, lora_rank=2, lora_layers=[" to_q"])
    trainable = {n: p for n, p in transformer.named_parameters() if p.requires_grad}
    assert trainable and all(".to_q.lora_" in n and p.dtype == torch.float32 for n, p in trainable.items())
    assert transformer.proj_out.weight.dtype == torch.bfloat16 and transformer.training


@pytest.fixture
def accelerator():
    reset_accelerate_state()
    yield Accelerator(cpu=True, gradient_accumulation_steps=2)
    reset_accelerate_state()


def test_step_metrics_average_the_micro_steps(accelerator):
    metrics = StepMetrics(accelerator, global_batch_size=8)
    metrics.add({"train_loss": torch.tensor(1.0), "flow_loss": torch.tensor(0.5)})
    metrics.add({"train_loss": torch.tensor(3.0), "flow_loss": torch.tensor(1.5)})
    logs = metrics.pop()
    assert (logs["train_loss"], logs["flow_loss"]) == (2.0, 1.0) and logs["img_per_sec"] > 0
    metrics.add({"train_loss": torch.tensor(4.0)})
    assert metrics.pop()["train_loss"] == 2.0  # a new step starts from zero


def test_ema_weights_are_swapped_in_and_back(accelerator):
    model = tiny_model("c2i")
    ema = create_ema(model, 0.5, accelerator.device)
    for _ in range(2):
        with torch.no_grad():
            model.proj_out.weight.add_(1.0)
        ema.step(model.parameters())
    raw = [p.detach().clone() for p in model.parameters()]
    with ema_weights(ema, model):
        assert all(torch.equal(p, s) for p, s in zip(model.parameters(), ema.shadow_params))
        assert not torch.equal(
            model.proj_out.weight, raw[list(dict(model.named_parameters())).index("proj_out.weight")]
        )
    assert all(torch.equal(p, r) for p, r in zip(model.parameters(), raw))
