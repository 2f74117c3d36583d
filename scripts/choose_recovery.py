"""Choose the recovery defaults on the zoo's clean dev splits only (never test data, never triggered text).

For each zoo entry and each candidate recipe, run the defense with a fixed low ρ and print the clean dev accuracy
it reaches, beside θ_FT's. The criterion is the one auto-ρ uses: the higher the dev accuracy at a low ρ, the lower
the ρ auto-ρ can afford. This script never builds a test set or a triggered input: it loads the pair and the
defender's data (train and dev splits) only.

    .venv/bin/python scripts/choose_recovery.py --entries word-cf,sentence --out docs/recovery-dev.csv
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import pandas as pd
import torch

from finemix_core import data
from finemix_core.config import RecoveryConfig, TrainConfig
from finemix_core.defenses import DefenseConfig, defend, defender_data
from finemix_core.defenses.base import DEFENSE_TRAIN
from finemix_core.models import load_pair

# (name, method, ρ, recovery, train budget): candidates fixed before the run
CANDIDATES = [
    ("paper: fine-mixing ρ 0.1", "epur+fine-mixing", 0.1, RecoveryConfig(), DEFENSE_TRAIN),
    ("distill w1 T2 p3", "epur+fine-mixing+distill", 0.1, RecoveryConfig(1.0, 2.0, 3.0), DEFENSE_TRAIN),
    ("distill w1 T2 p2", "epur+fine-mixing+distill", 0.1, RecoveryConfig(1.0, 2.0, 2.0), DEFENSE_TRAIN),
    ("distill w1 T2 p5", "epur+fine-mixing+distill", 0.1, RecoveryConfig(1.0, 2.0, 5.0), DEFENSE_TRAIN),
    ("distill w2 T2 p3", "epur+fine-mixing+distill", 0.1, RecoveryConfig(2.0, 2.0, 3.0), DEFENSE_TRAIN),
    ("distill w1 T4 p3", "epur+fine-mixing+distill", 0.1, RecoveryConfig(1.0, 4.0, 3.0), DEFENSE_TRAIN),
    ("distill w1 T1 p3", "epur+fine-mixing+distill", 0.1, RecoveryConfig(1.0, 1.0, 3.0), DEFENSE_TRAIN),
    ("distill w1 T2 p3 lr 5e-5", "epur+fine-mixing+distill", 0.1, RecoveryConfig(1.0, 2.0, 3.0), TrainConfig(5e-5, 10.0, 16)),
    ("distill w1 T2 p3 lr 2e-4", "epur+fine-mixing+distill", 0.1, RecoveryConfig(1.0, 2.0, 3.0), TrainConfig(2e-4, 10.0, 16)),
    ("distill w1 T2 p3 ρ 0", "epur+fine-mixing+distill", 0.0, RecoveryConfig(1.0, 2.0, 3.0), DEFENSE_TRAIN),
    ("distill w1 T2 p3 ρ 0.2", "epur+fine-mixing+distill", 0.2, RecoveryConfig(1.0, 2.0, 3.0), DEFENSE_TRAIN),
    ("distill w1 T2 p2 ρ 0", "epur+fine-mixing+distill", 0.0, RecoveryConfig(1.0, 2.0, 2.0), DEFENSE_TRAIN),
    ("distill w1 T2 p3 sorted", "epur+fine-mixing-sorted+distill", 0.1, RecoveryConfig(1.0, 2.0, 3.0), DEFENSE_TRAIN),
    ("distill w1 T2 p3 no E-PUR", "fine-mixing+distill", 0.1, RecoveryConfig(1.0, 2.0, 3.0), DEFENSE_TRAIN),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", default="word-cf,sentence")
    ap.add_argument("--only", default="", help="comma-separated candidate names (default: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(2)
    rows = []
    wanted = {w.strip() for w in args.only.split(",") if w.strip()}
    for entry in args.entries.split(","):
        pair = load_pair(entry)
        dsd = data.load(pair.card["dataset"], pair.card["split_seed"])
        dev = dsd["dev"]
        pool = dev.select(range(256, len(dev)))  # the same pool the defense uses: the dev split beyond its first 256
        dd = defender_data(
            pair.tokenizer, dsd["train"], dev, 128, 256, args.seed, unlabeled=pool, unlabeled_source="dev beyond 256"
        )
        for name, method, rho, rec, train in CANDIDATES:
            if wanted and name not in wanted:
                continue
            cfg = DefenseConfig(method=method, rho=rho, recovery=rec, train=train, seed=args.seed)
            started = time.perf_counter()
            res = defend(pair, dd, cfg)
            row = {
                "entry": entry,
                "candidate": name,
                "rho": rho,
                "seed": args.seed,
                "dev_acc": res.dev_acc,
                "ft_dev_acc": res.ft_dev_acc,
                "gap": res.dev_acc - res.ft_dev_acc,
                "seconds": time.perf_counter() - started,
                "recovery": dataclasses.asdict(rec) if method.endswith("+distill") else None,
                "lr": train.lr,
            }
            rows.append(row)
            print(
                f"{entry:10s} {name:28s} dev {res.dev_acc:.3f} (θ_FT {res.ft_dev_acc:.3f}, gap {row['gap']:+.3f}) "
                f"{row['seconds']:.0f}s",
                flush=True,
            )
            pd.DataFrame(rows).to_csv(args.out, index=False)


if __name__ == "__main__":
    main()
