"""Runs every benchmark: `python benchmarks/run_all.py --quick` (a few minutes on a CPU) or the full set.

Quick: the transformer (PixelDiT-B fp32 forward and training steps), the pipeline (PixelDiT-B, 4 steps, with and
without CFG-interval skipping) and the digits quality (class-conditional model, 2 samplers, 5/25 steps, written to
benchmarks/results/quick/). Full: `bench_transformer.py --train`, `bench_pipeline.py` and `eval_digits.py` with their
default (complete) settings. `bench_vs_official.py` and `bench_pixeldit2_vs_official.py` need a checkout of the
official code and are not run here. See benchmarks/README.md.
"""

import argparse
import subprocess
import sys
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent  # the scripts run from here, with paths relative to it
BENCHMARKS = {
    "bench_transformer.py": (["--quick"], ["--train"]),
    "bench_pipeline.py": (["--quick"], []),
    "eval_digits.py": (["--quick", "--output_dir", "benchmarks/results/quick"], []),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    failed = []
    for script, (quick, full) in BENCHMARKS.items():
        print(f"\n==== {script} {' '.join(quick if args.quick else full)}", flush=True)
        start = time.perf_counter()
        command = [sys.executable, f"benchmarks/{script}", *(quick if args.quick else full)]
        result = subprocess.run(command, cwd=ROOT)
        print(f"==== {script}: {time.perf_counter() - start:.0f} s, exit code {result.returncode}", flush=True)
        if result.returncode:
            failed.append(script)
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
