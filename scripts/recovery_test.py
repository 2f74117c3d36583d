"""Score the models `scripts/recovery_round2.py` kept, on the test split with the TRUE trigger — run only after the
default was frozen on dev data (docs/recovery.md says when). Prints CACC and ASR beside θ_FT's and the clean floor.

    .venv/bin/python scripts/recovery_test.py --models /tmp/r2/models --out docs/test-round2.csv

A kept model's folder is named MODEL__CANDIDATE__sSEED; MODEL is a zoo entry or a scan-bench member (its card names the
dataset, trigger and target; the floor is a clean model of the same dataset).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from finemix_core import experiment
from finemix_core.config import finemix_home, zoo_dir
from finemix_core.evaluate import score
from finemix_core.models import load_classifier, read_card

BENCH_CLEAN = {  # the first clean scan-bench member of each dataset (scripts/scan_bench.py population)
    "rt": "rt-clean-0",
    "amazon": "amazon-clean-1",
    "tweets": "tweets-clean-2",
    "sms-spam": "sms-spam-clean-3",
    "bbc": "bbc-clean-4",
}


def source_of(model: str) -> tuple[Path, str | None]:
    """(θ_FT's folder, its clean floor model) for a kept model's MODEL part."""
    bench = finemix_home() / "scan-bench" / "models"
    if (bench / model).is_dir():
        card = read_card(bench / model)
        clean = bench / BENCH_CLEAN[card["dataset"]]
        return bench / model, str(clean) if clean.is_dir() else None  # no clean model built here: no floor, ASR only
    if (zoo_dir() / model).is_dir():
        return zoo_dir() / model, None  # the zoo's own clean entry is the floor
    return Path("/tmp/try") / model, str(zoo_dir() / "clean")  # the hand-made word backdoor on rt (see docs/recovery.md)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", required=True)
    ap.add_argument("--only", default="", help="candidate names ('_' for spaces), '|'-separated")
    ap.add_argument("--trigger", default="cf", help="the hand-made model's trigger (it has no card)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    wanted = {w for w in args.only.split("|") if w}
    rows, contexts = [], {}
    for folder in sorted(Path(args.models).iterdir()):
        model, candidate, seed = folder.name.split("__")
        if wanted and candidate not in wanted:
            continue
        ft, floor = source_of(model)
        if model not in contexts:
            card = read_card(ft)
            trig = tuple(card["trigger"]) if card.get("trigger") else (args.trigger,)
            ctx = experiment.prepare(
                str(ft), data_name=card.get("dataset", "rt"), trigger=trig, target=card.get("target", 1), floor_model=floor
            )
            contexts[model] = (ctx, score(ctx.pair.ft, ctx.eval_set))
        ctx, before = contexts[model]
        defended, _ = load_classifier(folder)
        after = score(defended, ctx.eval_set)
        row = {
            "model": model,
            "candidate": candidate.replace("_", " "),
            "seed": int(seed.removeprefix("s")),
            "data": ctx.data_name,
            "n_test": after.n_clean,
            "n_triggered": after.n_triggered or after.n_nontarget,
            "ft_cacc": round(before.cacc, 4),
            "cacc": round(after.cacc, 4),
            "cacc_change_points": round(100 * (after.cacc - before.cacc), 1),
            "ft_asr": round(before.asr, 4),
            "asr": round(after.asr, 4),
            "floor": round(ctx.floor, 4) if ctx.floor is not None else None,
            "asr_met": ctx.floor is not None and after.asr <= ctx.floor + 0.05,
            "cacc_met_1pt": after.cacc >= before.cacc - 0.01,
            "cacc_met_2pt": after.cacc >= before.cacc - 0.02,
            # the defended model's own errors toward the target on clean non-target text: an ASR near it means the
            # trigger no longer adds anything; the floor is the same measure's trigger-on value for a clean model
            "target_bias": round(after.target_bias, 4) if after.target_bias is not None else None,
        }
        rows.append(row)
        print(
            f"{model:24s} {row['candidate']:32s} CACC {before.cacc:.3f} → {after.cacc:.3f} ({row['cacc_change_points']:+.1f}) "
            f"ASR {before.asr:.3f} → {after.asr:.3f} (floor {row['floor']}, target bias {row['target_bias']})",
            flush=True,
        )
        pd.DataFrame(rows).to_csv(args.out, index=False)


if __name__ == "__main__":
    main()
