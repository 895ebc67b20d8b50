"""The training examples' FSDP path (FSDP2 `fully_shard` through accelerate's FSDP plugin, sharded checkpoints) on 2
CPU processes over gloo: a run with a checkpoint, a run resumed from it, and one process without FSDP give the same
weights.

PyTorch shards on CPU, but accelerate (1.15) keeps CPU processes `DistributedType.MULTI_CPU` even when FSDP is asked
for (examples/README.md, "Why FSDP is not tested here" says where), so each forked process here sets the distributed
type accelerate gives GPUs, FSDP, once accelerate has chosen; everything else (wrapping with `fully_shard`, sharded
`save_state` / `load_state`, `get_state_dict` for the final save) is accelerate's and the scripts' own code."""

import multiprocessing
import shutil

import torch
from train_fixtures import (
    FORKED_RUN_TIMEOUT_S,
    OFFLINE_ENV,
    TINY_TRANSFORMER,
    _forked_main,
    example,
    free_port,
    log_tail,
    run_in_process,
    save_digits_dataset,
    transformer_weights,
)


train_class_conditional = example("train_class_conditional")

SCRIPT = "train_class_conditional.py"
STEPS = 2
# The accelerate FSDP config of examples/README.md, as the environment `accelerate launch` gives its processes.
FSDP_ENV = {
    "ACCELERATE_USE_FSDP": "true",
    "FSDP_VERSION": "2",
    "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP",
    "FSDP_TRANSFORMER_CLS_TO_WRAP": "PixelDiTTransformerBlock,PixelDiTPixelBlock",
    "FSDP_STATE_DICT_TYPE": "SHARDED_STATE_DICT",
    "FSDP_RESHARD_AFTER_FORWARD": "true",
}


def use_fsdp_on_cpu():
    """Once accelerate has set up its state, the distributed type FSDP instead of MULTI_CPU when FSDP was asked for."""
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    init = AcceleratorState.__init__

    def __init__(self, *args, fsdp_plugin=None, **kwargs):
        init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            PartialState._shared_state["distributed_type"] = self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = fsdp_plugin

    AcceleratorState.__init__ = __init__


def _fsdp_main(argv, env, log):
    use_fsdp_on_cpu()
    _forked_main(SCRIPT, argv, env, log)


def start_fsdp(argv, logs):
    """Starts the script as 2 FSDP processes (gloo), forked, output to `logs`."""
    port = free_port()
    processes = []
    for rank, log in enumerate(logs):
        env = dict(OFFLINE_ENV, **FSDP_ENV, ACCELERATE_USE_CPU="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2")
        process = multiprocessing.get_context("fork").Process(target=_fsdp_main, args=(argv, env, str(log)))
        process.start()
        processes.append(process)
    return processes


def join(processes, logs):
    try:
        for process, log in zip(processes, logs):
            process.join(FORKED_RUN_TIMEOUT_S)
            assert process.exitcode == 0, log_tail(log)
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()


def test_fsdp_checkpoint_and_resume_match_one_process(tmp_path):
    data = save_digits_dataset(tmp_path / "digits", 32)

    def argv(name, batch_size, *extra):
        return [
            "--dataset_name", str(data), "--output_dir", str(tmp_path / name), "--cache_dir", str(tmp_path / "cache"),
            "--resolution", "16", "--transformer_config", TINY_TRANSFORMER, "--train_batch_size", str(batch_size),
            "--max_train_steps", str(STEPS), "--learning_rate", "2e-3", "--lr_warmup_steps", "0", "--seed", "7",
            "--report_to", "none", *extra,
        ]  # fmt: skip

    # A: FSDP, 2 processes x batch 4, a sharded checkpoint every step, while C (one process x batch 8, without
    # FSDP) runs here.
    logs = [tmp_path / "A0.log", tmp_path / "A1.log"]
    processes = start_fsdp(argv("A", 4, "--checkpointing_steps", "1"), logs)
    try:
        run_in_process(train_class_conditional, argv("C", 8))
    finally:
        join(processes, logs)
    assert "Distributed environment: DistributedType.FSDP" in logs[0].read_text()
    checkpoint = tmp_path / "A" / "checkpoint-1"
    # accelerate's sharded model and optimizer states, not the DDP hooks' `transformer/` folder
    assert {"pytorch_model_fsdp_0", "optimizer_0"} <= {p.name for p in checkpoint.iterdir()}
    assert not (checkpoint / "transformer").exists()

    # B: FSDP, resumed from A's step-1 checkpoint.
    (tmp_path / "B").mkdir()
    shutil.copytree(checkpoint, tmp_path / "B" / "checkpoint-1")
    logs = [tmp_path / "B0.log", tmp_path / "B1.log"]
    join(start_fsdp(argv("B", 4, "--checkpointing_steps", "100", "--resume_from_checkpoint", "latest"), logs), logs)
    assert "starting at step 1" in logs[0].read_text()

    reference = transformer_weights(tmp_path / "A" / "transformer")
    assert reference["proj_out.weight"].abs().max() > 1e-3  # trained, so the comparison is not vacuous
    for name in ["B", "C"]:
        weights = transformer_weights(tmp_path / name / "transformer")
        assert weights.keys() == reference.keys()
        for key in reference:
            torch.testing.assert_close(weights[key], reference[key], rtol=0, atol=1e-6, msg=f"{name}: {key}")
