#!/usr/bin/env bash
# Rebuilds the embedded digits models from scratch, exactly as they ship (about 27 + 28 min on 2 CPU cores).
set -euo pipefail
cd "$(dirname "$0")/.."
MINILM=$(python -c "from diffusers_pixeldit.digits import minilm_path; print(minilm_path())")

python scripts/prepare_digits.py --output_dir data/digits

accelerate launch --num_processes 1 --cpu --mixed_precision no examples/train_class_conditional.py \
  --dataset_name data/digits/train --resolution 32 --preset PixelDiT-B --transformer_config examples/configs/digits_c2i.json \
  --train_batch_size 64 --max_train_steps 3600 --learning_rate 5e-4 --lr_scheduler constant_with_warmup --lr_warmup_steps 50 \
  --use_ema --ema_decay 0.999 --class_dropout_prob 0.1 --training_shift 4 --dataloader_num_workers 1 --seed 0 \
  --checkpointing_steps 600 --checkpoints_total_limit 1 \
  --recipe_num_inference_steps 25 --recipe_guidance_scale 2.0 --recipe_guidance_interval 0.1 1.0 \
  --report_to tensorboard --output_dir runs/pixeldit-digits-c2i
python scripts/export_digits_model.py runs/pixeldit-digits-c2i --kind c2i

# The shipped text-to-image weights were trained with the release's complex human instruction before captions.
accelerate launch --num_processes 1 --cpu --mixed_precision no examples/train_text_to_image.py \
  --dataset_name data/digits/train --caption_column text --resolution 32 --preset PixelDiT-T2I \
  --transformer_config examples/configs/digits_t2i.json --text_encoder_name_or_path "$MINILM" \
  --max_sequence_length 16 --complex_human_instruction release --precompute_text_embeddings \
  --train_batch_size 64 --max_train_steps 3600 --learning_rate 5e-4 --lr_scheduler constant_with_warmup --lr_warmup_steps 50 \
  --use_ema --ema_decay 0.999 --proportion_empty_prompts 0.1 --training_shift 4 --dataloader_num_workers 1 --seed 0 \
  --checkpointing_steps 600 --checkpoints_total_limit 1 \
  --recipe_num_inference_steps 25 --recipe_guidance_scale 2.0 --recipe_guidance_interval 0.1 1.0 \
  --report_to tensorboard --output_dir runs/pixeldit-digits-t2i
python scripts/export_digits_model.py runs/pixeldit-digits-t2i --kind t2i
