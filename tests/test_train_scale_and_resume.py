"""Scale and reliability of the training examples, in subprocesses: 2 processes (gloo) x gradient accumulation, and a
run killed with SIGKILL then resumed, both reproduce one uninterrupted single-process run."""

import os
import signal
import socket
import time

import torch
from train_fixtures import TINY_TRANSFORMER, script_command, start, transformer_weights, write_imagefolder


STEPS = 24


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_and_a_killed_resumed_run_match_one_uninterrupted_process(tmp_path):
    data = write_imagefolder(tmp_path / "digits", 64)

    def argv(name, batch_size, *extra):
        return [
            "--train_data_dir", str(data), "--output_dir", str(tmp_path / name), "--cache_dir", str(tmp_path / f"cache-{name}"),
            "--resolution", "16", "--transformer_config", TINY_TRANSFORMER, "--train_batch_size", str(batch_size),
            "--max_train_steps", str(STEPS), "--learning_rate", "2e-3", "--lr_scheduler", "cosine",
            "--lr_warmup_steps", "4", "--use_ema", "--ema_decay", "0.9", "--random_flip", "--seed", "7",
            "--report_to", "none", *extra,
        ]  # fmt: skip

    checkpointing = ["--checkpointing_steps", "4", "--checkpoints_total_limit", "2"]
    # A: 1 process x batch 8. D: 2 processes x batch 2 x 2 accumulation steps. B: A with checkpoints, killed.
    run_a = start(script_command("train_class_conditional.py", argv("A", 8)), tmp_path / "A.log")
    run_d = start(
        script_command(
            "train_class_conditional.py", argv("D", 2, "--gradient_accumulation_steps", "2"), 2, free_port()
        ),
        tmp_path / "D.log",
        cpu=True,
    )
    run_b = start(script_command("train_class_conditional.py", argv("B", 8, *checkpointing)), tmp_path / "B1.log")
    deadline = time.monotonic() + 300
    while not (tmp_path / "B" / "checkpoint-4").is_dir():
        assert run_b.poll() is None and time.monotonic() < deadline, (tmp_path / "B1.log").read_text()[-3000:]
        time.sleep(0.01)
    os.kill(run_b.pid, signal.SIGKILL)
    run_b.wait()
    assert not (tmp_path / "B" / "model_index.json").exists()
    latest = max(int(p.name.split("-")[1]) for p in (tmp_path / "B").glob("checkpoint-*"))
    assert latest < STEPS
    # As if killed while writing the next checkpoint: a partial temporary folder, which must not be resumed from.
    (tmp_path / "B" / f".tmp-checkpoint-{latest + 4}" / "transformer").mkdir(parents=True)

    resumed = start(
        script_command(
            "train_class_conditional.py", argv("B", 8, *checkpointing, "--resume_from_checkpoint", "latest")
        ),
        tmp_path / "B2.log",
    )
    for name, run in [("A", run_a), ("D", run_d), ("B2", resumed)]:
        assert run.wait(timeout=300) == 0, (tmp_path / f"{name}.log").read_text()[-3000:]

    log = (tmp_path / "B2.log").read_text()
    assert f"Resuming from checkpoint {tmp_path / 'B' / f'checkpoint-{latest}'}" in log
    assert f"Total optimization steps = {STEPS}, starting at step {latest}" in log
    assert all(field in log for field in ["loss=", "lr=", "img_s="])  # the progress bar
    assert sorted(p.name for p in (tmp_path / "B").glob("*checkpoint-*")) == ["checkpoint-20", "checkpoint-24"]

    reference = transformer_weights(tmp_path / "A" / "transformer")
    for name in ["D", "B"]:
        weights = transformer_weights(tmp_path / name / "transformer")
        assert weights.keys() == reference.keys()
        for key in reference:
            torch.testing.assert_close(weights[key], reference[key], rtol=0, atol=1e-6, msg=f"{name}: {key}")
    # The zero-initialised output layer has trained, so the comparison is not vacuous.
    assert reference["proj_out.weight"].abs().max() > 1e-3
