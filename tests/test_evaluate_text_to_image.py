"""examples/generate_text_to_image.py on the embedded digits text-to-image model (CPU, MiniLM text encoder): GenEval's
folder layout from its metadata file, 2 processes (gloo) give the same PNG bytes as 1, and an interrupted run
resumes without regenerating finished shards."""

import json
import os
from pathlib import Path

import pytest
from train_fixtures import FORKED_RUN_TIMEOUT_S, example, fork_script, free_port, log_tail, run_in_process

from diffusers_pixeldit import evaluation
from diffusers_pixeldit.digits import minilm_path, pretrained_digits_path


generate_text_to_image = example("generate_text_to_image")

SCRIPT = "generate_text_to_image.py"
METADATA = [
    {"tag": "single_object", "include": [{"class": "digit", "count": 1}], "prompt": "a handwritten digit seven"},
    {"tag": "single_object", "include": [{"class": "digit", "count": 1}], "prompt": "handwritten 2"},
    {"tag": "counting", "include": [{"class": "digit", "count": 1}], "prompt": "the number 0, handwritten"},
]
# 3 prompts x 2 images in batches of 4: 2 shards, the first one spanning two prompts.
NUM_SHARDS = 2


def argv(prompts: Path, output_dir: Path, *extra: str) -> list[str]:
    return [
        "--pretrained_model_name_or_path", str(pretrained_digits_path("t2i")),
        "--text_encoder_name_or_path", str(minilm_path()), "--prompts", str(prompts),
        "--num_images_per_prompt", "2", "--batch_size", "4", "--num_inference_steps", "2", "--seed", "3",
        "--output_dir", str(output_dir), *extra,
    ]  # fmt: skip


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_geneval_layout_two_processes_and_resume(tmp_path):
    prompts = tmp_path / "evaluation_metadata.jsonl"
    prompts.write_text("\n".join(json.dumps(row) for row in METADATA) + "\n")
    port = free_port()
    ranks = [
        fork_script(SCRIPT, argv(prompts, tmp_path / "two"), tmp_path / f"two{rank}.log", rank, 2, port)
        for rank in range(2)
    ]
    try:
        run_in_process(generate_text_to_image, argv(prompts, tmp_path / "one"))
        for rank, process in enumerate(ranks):
            process.join(FORKED_RUN_TIMEOUT_S)
            assert process.exitcode == 0, log_tail(tmp_path / f"two{rank}.log")
    finally:
        for process in ranks:
            if process.is_alive():
                process.kill()

    one = tmp_path / "one"
    images = [f"{i:05d}/samples/{k:05d}.png" for i in range(3) for k in range(2)]
    assert {name for name in files(one) if name.endswith(".png")} == set(images)
    for index, metadata in enumerate(METADATA):
        assert json.loads((one / f"{index:05d}" / "metadata.jsonl").read_text()) == metadata
    assert files(tmp_path / "two") == files(one)

    # Interrupted: shard 1 unfinished (its record gone, one of its images half-written as a temporary file).
    store = evaluation.ShardStore(one / evaluation.SHARDS_FOLDER, ".json")
    expected = files(one)
    os.remove(store.path(1))
    os.remove(one / "00002" / "samples" / "00001.png")
    (one / "00002" / "samples" / ".tmp-1-00001.png").write_bytes(b"partial")
    first_shard = [one / name for name in images[:4]]
    before = [path.stat().st_mtime_ns for path in first_shard]
    run_in_process(generate_text_to_image, argv(prompts, one))
    assert [path.stat().st_mtime_ns for path in first_shard] == before
    assert files(one) == expected


def test_prompt_files(tmp_path):
    (tmp_path / "prompts.txt").write_text("a cat\n\n  a dog on a sofa \n")
    assert evaluation.read_prompts(tmp_path / "prompts.txt") == [{"prompt": "a cat"}, {"prompt": "a dog on a sofa"}]
    (tmp_path / "bad.jsonl").write_text('{"prompt": "a cat"}\n{"tag": "counting"}\n')
    with pytest.raises(ValueError, match="lines \\[2\\] have no string `prompt`"):
        evaluation.read_prompts(tmp_path / "bad.jsonl")
