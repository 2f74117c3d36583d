"""Recovery's training arithmetic on this machine: the same recovery fine-tune (the default's, on a zoo entry's real
defender data) in float32 and in bfloat16 autocast, seconds and the ratio measured in one run. It says which one the
default precision "auto" picks here and whether that is the faster one.

    FINEMIX_HOME=… .venv/bin/python scripts/bench_precision.py --model word-cf --steps-share 0.25

Not in CI (minutes of CPU). Run it alone: other jobs on the cores distort both timings.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from finemix_core import experiment, hardware
from finemix_core.config import RecoveryConfig
from finemix_core.defenses import DEFENSE_TRAIN, DefenseConfig, concrete_precision, teacher
from finemix_core.train import fine_tune


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="word-cf", help="a zoo entry (its dataset's splits are the defender's data)")
    ap.add_argument("--steps-share", type=float, default=0.25, help="share of the default recovery's steps to time")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ctx = experiment.prepare_defender(args.model)
    dd = ctx.defender(128, 256, 0)
    device = torch.device("cpu")
    picked = concrete_precision(DefenseConfig(method="fine-mixing+distill"), device).recovery.precision
    print(f"cpu capability {torch.backends.cpu.get_cpu_capability()}; native bf16: {hardware.bf16_supported(device)}; "
          f"'auto' picks {picked}; {args.threads} threads; model {args.model}; seed 0", flush=True)
    seconds = {}
    for precision in ("fp32", "bf16"):
        rec = RecoveryConfig(precision=precision)  # the default's other settings, the feature term included
        distill = teacher(ctx.pair.ft_for_inference(device), dd, rec, list(range(len(dd.unlabeled))))
        model = ctx.pair.working_copy()
        started = time.perf_counter()
        fine_tune(model, dd.train, dataclasses.replace(DEFENSE_TRAIN, seed=0), None, None, distill, args.steps_share)
        seconds[precision] = time.perf_counter() - started
        print(f"{precision}: {seconds[precision]:.1f} s for {args.steps_share:.0%} of one recovery fine-tune", flush=True)
    ratio = seconds["bf16"] / seconds["fp32"]
    faster = "bf16" if ratio < 1 else "fp32"
    print(f"bf16 / fp32 time: {ratio:.2f}×; the faster here: {faster}; 'auto' picks {picked} "
          f"({'right' if picked == faster else 'WRONG'})")


if __name__ == "__main__":
    main()
