#!/usr/bin/env bash
# Rebuilds the embedded digits models from scratch, exactly as they ship (on 2 CPU cores: c2i 27 + 3 min, t2i 28 + 3 min).
# Each model is trained from scratch, then fine-tuned 300 steps with outlier noise (a share of the noise elements
# scaled), which teaches it to cancel the extreme noise values sampling draws: without it, those pixels survive as
# isolated specks (benchmarks/README.md, "The digits models' grain").
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
# fine-tune (c2i)
accelerate launch --num_processes 1 --cpu --mixed_precision no examples/train_class_conditional.py \
  --pretrained_model_name_or_path runs/pixeldit-digits-c2i --dataset_name data/digits/train --resolution 32 \
  --train_batch_size 64 --max_train_steps 300 --learning_rate 2e-4 --lr_scheduler constant_with_warmup --lr_warmup_steps 20 \
  --use_ema --ema_decay 0.99 --class_dropout_prob 0.1 --training_shift 4 --noise_outlier_prob 0.03 --noise_outlier_scale 3.5 \
  --dataloader_num_workers 1 --seed 0 --checkpointing_steps 300 --checkpoints_total_limit 1 \
  --recipe_num_inference_steps 25 --recipe_guidance_scale 1.5 --recipe_guidance_interval 0.1 1.0 \
  --report_to tensorboard --output_dir runs/pixeldit-digits-c2i-outliers
# end (c2i)
python scripts/export_digits_model.py runs/pixeldit-digits-c2i-outliers --kind c2i

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
# fine-tune (t2i)
accelerate launch --num_processes 1 --cpu --mixed_precision no examples/train_text_to_image.py \
  --pretrained_model_name_or_path runs/pixeldit-digits-t2i --dataset_name data/digits/train --caption_column text \
  --resolution 32 --text_encoder_name_or_path "$MINILM" \
  --max_sequence_length 16 --complex_human_instruction release --precompute_text_embeddings \
  --train_batch_size 64 --max_train_steps 300 --learning_rate 5e-4 --lr_scheduler constant_with_warmup --lr_warmup_steps 20 \
  --use_ema --ema_decay 0.99 --proportion_empty_prompts 0.1 --training_shift 4 --noise_outlier_prob 0.05 --noise_outlier_scale 4 \
  --dataloader_num_workers 1 --seed 0 --checkpointing_steps 300 --checkpoints_total_limit 1 \
  --recipe_num_inference_steps 25 --recipe_guidance_scale 1.5 --recipe_guidance_interval 0.1 1.0 \
  --report_to tensorboard --output_dir runs/pixeldit-digits-t2i-outliers
# end (t2i)
python scripts/export_digits_model.py runs/pixeldit-digits-t2i-outliers --kind t2i
