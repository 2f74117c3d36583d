"""Recovery steps in one padded forward pass or in two (`RecoveryConfig.two_pass_below`): the same recovery fine-tune
on a model's real defender data, both ways, in alternating rounds so that a machine whose speed drifts over minutes
slows both alike; seconds, the ratio and the run's token share (`train.pass_share`) measured in one run.
The defender's data is built as the CLI builds it, without trigger-aware recovery's copies (they need a scan).

    FINEMIX_HOME=… .venv/bin/python scripts/bench_two_pass.py --model DIR --clean-data rows.csv --steps-share 0.1

Not in CI (minutes of CPU). Run it alone: other jobs on the cores distort both timings.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from finemix_core import experiment
from finemix_core.config import RecoveryConfig
from finemix_core.defenses import DEFENSE_TRAIN, teacher
from finemix_core.train import fine_tune, pass_share


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="a zoo entry or a model folder")
    ap.add_argument("--clean-data", default=None, help="the defender's CSV (default: the model's dataset)")
    ap.add_argument("--steps-share", type=float, default=0.1, help="share of one recovery fine-tune's steps per round")
    ap.add_argument("--rounds", type=int, default=3, help="rounds, each timing one pass then two passes")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ctx = experiment.prepare_defender(args.model, clean_data=args.clean_data)
    device = torch.device("cpu")
    rec = RecoveryConfig(precision="fp32", feature_weight=0.0)  # the found-ρ try's recovery (logits only)
    dd = ctx.defender(128, 256, 0, rec.min_pool)
    distill = teacher(ctx.pair.ft_for_inference(device), dd, rec, list(range(len(dd.unlabeled))))
    train = dataclasses.replace(DEFENSE_TRAIN, seed=0)
    share = pass_share(dd.train, distill, train)
    print(
        f"model {args.model}; data {args.clean_data or ctx.data_name}: {len(dd.train)} labelled, {len(distill.texts)} pool "
        f"texts ({dd.unlabeled_source}); two passes read {share:.0%} of one padded pass's tokens; fp32, "
        f"{args.threads} threads, seed 0, {args.steps_share:.0%} of the steps per round, {args.rounds} rounds",
        flush=True,
    )
    seconds = {"one pass": [], "two passes": []}
    for _ in range(args.rounds):
        for arm, below in (("one pass", 0.0), ("two passes", 1.0)):
            model = ctx.pair.working_copy()
            run = dataclasses.replace(distill, recovery=dataclasses.replace(rec, two_pass_below=below))
            started = time.perf_counter()
            fine_tune(model, dd.train, train, None, None, run, args.steps_share)
            seconds[arm].append(time.perf_counter() - started)
            print(f"{arm}: {seconds[arm][-1]:.1f} s", flush=True)
    one, two = sum(seconds["one pass"]), sum(seconds["two passes"])
    print(f"two passes / one pass: {two / one:.2f}× (token share {share:.2f}; sums over {args.rounds} rounds)")


if __name__ == "__main__":
    main()
