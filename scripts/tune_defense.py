"""Choose the defense budget on the DEV split (never test): Fine-mixing and fine-tuning at several
learning rates / epochs / ρ on every backdoored zoo entry, scored on clean and triggered dev data.

    python scripts/tune_defense.py --out tune.csv [--lrs 5e-5,1e-4] [--epochs 5,10] [--rhos 0.1,0.2,0.3,0.4,0.5]
"""

from __future__ import annotations

import argparse
import time

import pandas as pd

from finemix_core import data, zoo
from finemix_core.config import EvalConfig, TrainConfig
from finemix_core.defenses import DefenseConfig, defend, defender_data
from finemix_core.epur import EpurConfig
from finemix_core.evaluate import best_device, make_eval_set, score
from finemix_core.models import load_pair


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--lrs", default="5e-5,1e-4")
    ap.add_argument("--epochs", default="5,10")
    ap.add_argument("--rhos", default="0.1,0.2,0.3,0.4,0.5")
    ap.add_argument("--entries", default="word-cf,word-combo,sentence,ep-cf")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    device = best_device()
    cards = {c["name"]: c for c in zoo.read_entries()}
    rows = []
    for name in args.entries.split(","):
        pair = load_pair(cards[name]["path"])
        dsd = data.load(cards[name]["dataset"], cards[name]["split_seed"])
        # the dev split is both the defender's dev set and, with triggers, the tuning target: test is never read
        dd = defender_data(pair.tokenizer, dsd["train"], dsd["dev"], 128, 256, args.seed)
        dev_eval = make_eval_set(pair.tokenizer, dsd["dev"], tuple(cards[name]["trigger"]), cards[name]["target"], EvalConfig())
        base = score(pair.working_copy().to(device), dev_eval)
        rows.append({"entry": name, "method": "none", "lr": None, "epochs": None, "rho": 1.0, "dev_cacc": base.cacc, "dev_asr": base.asr})
        for lr in map(float, args.lrs.split(",")):
            for ep in map(float, args.epochs.split(",")):
                train = TrainConfig(lr=lr, epochs=ep, batch_size=16)
                variants = [("fine-tuning", None)] + [(m, r) for m in ("fine-mixing", "epur+fine-mixing") for r in map(float, args.rhos.split(","))]
                for method, rho in variants:
                    t = time.perf_counter()
                    cfg = DefenseConfig(method=method, rho=rho, train=train, seed=args.seed, epur=EpurConfig())
                    res = defend(pair, dd, cfg, device)
                    s = score(res.model, dev_eval)
                    rows.append({"entry": name, "method": method, "lr": lr, "epochs": ep, "rho": rho, "dev_cacc": s.cacc,
                                 "dev_asr": s.asr, "seconds": round(time.perf_counter() - t, 2)})
                    print(rows[-1], flush=True)
        pd.DataFrame(rows).to_csv(args.out, index=False)
    pd.DataFrame(rows).to_csv(args.out, index=False)


if __name__ == "__main__":
    main()
