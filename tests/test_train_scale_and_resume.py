"""Scale and reliability of the training examples: 2 processes (gloo) x gradient accumulation, and a run killed with
SIGKILL then resumed, both reproduce one uninterrupted single-process run. The runs are forked from this process
(no new imports), the 2-process run with the environment `accelerate launch --multi_gpu` gives its processes."""

import logging
import os
import signal
import time

import torch
from train_fixtures import (
    FORKED_RUN_TIMEOUT_S,
    TINY_TRANSFORMER,
    example,
    fork_script,
    free_port,
    log_tail,
    run_in_process,
    transformer_weights,
    write_imagefolder,
)


train_class_conditional = example("train_class_conditional")

SCRIPT = "train_class_conditional.py"
STEPS = 8
CHECKPOINTING = ["--checkpointing_steps", "2", "--checkpoints_total_limit", "2"]


def test_two_processes_and_a_killed_resumed_run_match_one_uninterrupted_process(tmp_path, caplog):
    data = write_imagefolder(tmp_path / "digits", 32)

    def argv(name, batch_size, *extra):
        return [
            "--train_data_dir", str(data), "--output_dir", str(tmp_path / name), "--cache_dir", str(tmp_path / f"cache-{name}"),
            "--resolution", "16", "--transformer_config", TINY_TRANSFORMER, "--train_batch_size", str(batch_size),
            "--max_train_steps", str(STEPS), "--learning_rate", "2e-3", "--lr_scheduler", "cosine",
            "--lr_warmup_steps", "2", "--use_ema", "--ema_decay", "0.9", "--random_flip", "--seed", "7",
            "--report_to", "none", *extra,
        ]  # fmt: skip

    # B: 1 process x batch 8 with checkpoints, killed once it has one.
    killed = fork_script(SCRIPT, argv("B", 8, *CHECKPOINTING), tmp_path / "B.log")
    deadline = time.monotonic() + FORKED_RUN_TIMEOUT_S
    while not (tmp_path / "B" / "checkpoint-2").is_dir():
        assert killed.is_alive() and time.monotonic() < deadline, log_tail(tmp_path / "B.log")
        time.sleep(0.005)
    os.kill(killed.pid, signal.SIGKILL)
    killed.join()
    assert not (tmp_path / "B" / "model_index.json").exists()
    latest = max(int(p.name.split("-")[1]) for p in (tmp_path / "B").glob("checkpoint-*"))
    assert latest < STEPS
    # As if killed while writing the next checkpoint: a partial temporary folder, which must not be resumed from.
    (tmp_path / "B" / f".tmp-checkpoint-{latest + 2}" / "transformer").mkdir(parents=True)

    # D: 2 processes x batch 2 x 2 accumulation steps, while A (1 process x batch 8) and the resumed B run here.
    port = free_port()
    ranks = [
        fork_script(
            SCRIPT, argv("D", 2, "--gradient_accumulation_steps", "2"), tmp_path / f"D{rank}.log", rank, 2, port
        )
        for rank in range(2)
    ]
    try:
        run_in_process(train_class_conditional, argv("A", 8))
        with caplog.at_level(logging.INFO):
            run_in_process(train_class_conditional, argv("B", 8, *CHECKPOINTING, "--resume_from_checkpoint", "latest"))
        for rank, process in enumerate(ranks):
            process.join(FORKED_RUN_TIMEOUT_S)
            assert process.exitcode == 0, log_tail(tmp_path / f"D{rank}.log")
    finally:
        for process in ranks:
            if process.is_alive():
                process.kill()

    assert f"Resuming from checkpoint {tmp_path / 'B' / f'checkpoint-{latest}'}" in caplog.text
    assert f"Total optimization steps = {STEPS}, starting at step {latest}" in caplog.text
    assert sorted(p.name for p in (tmp_path / "B").glob("*checkpoint-*")) == ["checkpoint-6", "checkpoint-8"]

    reference = transformer_weights(tmp_path / "A" / "transformer")
    for name in ["D", "B"]:
        weights = transformer_weights(tmp_path / name / "transformer")
        assert weights.keys() == reference.keys()
        for key in reference:
            torch.testing.assert_close(weights[key], reference[key], rtol=0, atol=1e-6, msg=f"{name}: {key}")
    # The zero-initialised output layer has trained, so the comparison is not vacuous.
    assert reference["proj_out.weight"].abs().max() > 1e-3
