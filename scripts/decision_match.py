"""Round 7: does matching θ_FT's decisions on the clean pool undo the lean the defense adds? (dev data only)

Round 5 found, on the defender's dev split, that the default defense calls more class-0 rows class 1 than θ_FT does
(28–34 % against 21–27 % on the full zoo) while the reverse error barely moves; Round 6 showed the labelled loss is not
its cause. The correction measured here is one bias on the defended model's two output logits, chosen without a
label, a trigger or the test split: the share of clean pool texts the defended model assigns to class 1 is moved to
θ_FT's share on the same texts (`calibration.decision_shift`; θ_FT after E-PUR's reset, the teacher recovery used). θ_FT is clean on clean text, and recovery already aims
at its answers there. Per kept model (folders from `scripts/recovery_round2.py --save`) it prints, before and after:
dev accuracy, each class's dev error beside θ_FT's, and the scan's estimate (the scan's own suspect inserted into
held-aside dev sentences).

    FINEMIX_HOME=/root/fmfull .venv/bin/python scripts/decision_match.py --models /tmp/r7/full --out docs/dev-round7-full.csv
    FINEMIX_HOME=/root/fmhome .venv/bin/python scripts/decision_match.py --models /tmp/r7/csv --out docs/dev-round7-csv.csv

`--goal dev` (Round 8) measures the goal share on the dev texts instead (labels unused), judged by two-fold
cross-fitting; the kept model is then the one fitted on all dev texts.

`--away-from-suspect` (Round 27) keeps a dev-fitted shift only if it lowers the margin of the class the scan's best
candidate pushes to (never towards the suspected target); otherwise the shift is zero. Each cross-fitted half obeys it too.

`--test` also scores both on the test split with the true trigger: run it only after the rule was applied on dev.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from finemix_core import experiment
from finemix_core.calibration import apply_shift, away_from, decision_shift
from finemix_core.defenses import purified_pair
from finemix_core.epur import EpurConfig, flagged_ids, table
from finemix_core.evaluate import predict, score
from finemix_core.models import load_classifier, read_card
from finemix_core.scan import ScanConfig, scan

CSV = {
    "handed": "/tmp/try/my300.csv",
    "amazon-rare-6": "/tmp/try/amazon300.csv",
    "tweets-phrase-7": "/tmp/try/tweets300.csv",
    "sms-spam-phrase-18": "/tmp/try/sms-spam300.csv",
}


def _recovery_test():
    spec = importlib.util.spec_from_file_location("recovery_test", Path(__file__).with_name("recovery_test.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def errors(logits: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(share of class-0 rows called 1, share of class-1 rows called 0)."""
    pred = logits.argmax(1)
    return float((pred[labels == 0] == 1).mean()), float((pred[labels == 1] == 0).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", required=True, help="folder of MODEL__CANDIDATE__sSEED model folders")
    ap.add_argument("--out", required=True)
    ap.add_argument("--goal", choices=("pool", "dev"), default="pool",
                    help="pool: Round 7 (θ_FT's share on the distillation pool); dev: Round 8 (on the dev texts, cross-fitted)")
    ap.add_argument("--away-from-suspect", action="store_true",
                    help="Round 27: keep a dev-fitted shift only if it moves the boundary away from the scan's best candidate's class")
    ap.add_argument("--test", action="store_true", help="also score on the test split (only after the dev rule decided)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    rt = _recovery_test()
    rows = []
    for folder in sorted(Path(args.models).iterdir()):
        model, candidate, seed = folder.name.split("__")
        seed = int(seed.removeprefix("s"))
        ft_path, floor = rt.source_of(model)
        ctx = experiment.prepare_defender(str(ft_path), clean_data=CSV.get(model))
        dd = ctx.defender(128, 256, seed, min_pool=1000)  # the pool the default distilled on
        defended, _ = load_classifier(folder)
        defended.eval()
        # the goal is recovery's own teacher: θ_FT after E-PUR's reset, as the default defense distils from it
        teacher = purified_pair(ctx.pair, flagged_ids(table(ctx.pair, dd.texts + dd.unlabeled_texts, EpurConfig()))).ft
        pool_ft, pool_def = predict(teacher, dd.unlabeled, logits=True), predict(defended, dd.unlabeled, logits=True)
        goal = float((pool_ft.argmax(1) == 1).mean())
        b = decision_shift(pool_def, goal)
        matched = apply_shift(defended, b)
        labels = np.asarray(dd.dev.labels)
        dev_ft, dev_def = predict(ctx.pair.ft, dd.dev, logits=True), predict(defended, dd.dev, logits=True)
        base_dd = ctx.defender(128, 256, seed)
        best = scan(ctx.pair, base_dd, ScanConfig(seed=seed)).best

        def flip(m) -> float | None:
            if best is None:
                return None
            measured = scan(
                dataclasses.replace(ctx.pair, ft=m), base_dd, ScanConfig(epur_rows=0, inversion=False, seed=seed),
                given=((best.trigger, best.target),),
            )
            return round(next(c for c in measured.candidates if c.source == "given").flip, 3)

        (f01, f10), (d01, d10), (m01, m10) = errors(dev_ft, labels), errors(dev_def, labels), errors(dev_def + b, labels)
        row = {
            "model": model,
            "candidate": candidate.replace("_", " "),
            "seed": seed,
            "dev_n": len(labels),
            "pool_n": len(dd.unlabeled),
            "ft_pool_share1": round(goal, 4),
            "pool_share1": round(float((pool_def.argmax(1) == 1).mean()), 4),
            "shift": round(float(b[1] - b[0]), 4),  # added to the class-1 margin
            "ft_dev_acc": round(float((dev_ft.argmax(1) == labels).mean()), 4),
            "dev_acc": round(float((dev_def.argmax(1) == labels).mean()), 4),
            "dev_acc_matched": round(float(((dev_def + b).argmax(1) == labels).mean()), 4),
            "ft_err_0to1": round(f01, 3), "ft_err_1to0": round(f10, 3),
            "err_0to1": round(d01, 3), "err_1to0": round(d10, 3),
            "err_0to1_matched": round(m01, 3), "err_1to0_matched": round(m10, 3),
            "distance": round(abs(d01 - f01) + abs(d10 - f10), 3),  # dev confusion's distance to θ_FT's
            "distance_matched": round(abs(m01 - f01) + abs(m10 - f10), 3),
            "suspect": best.trigger if best else None,
            "suspect_flip": flip(defended),
            "suspect_flip_matched": flip(matched),
        }
        if args.goal == "dev":
            # Round 8: the goal share on held-out text (the dev texts, labels unused), judged by two-fold cross-fitting
            dev_teacher = predict(teacher, dd.dev, logits=True)  # the goal: θ_FT after E-PUR, as recovery's teacher
            halves = [np.arange(len(labels)) % 2 == h for h in (0, 1)]
            crossed = np.empty_like(dev_def)
            for fit, judge in (halves, halves[::-1]):
                b_half = decision_shift(dev_def[fit], float((dev_teacher[fit].argmax(1) == 1).mean()))
                if args.away_from_suspect:
                    b_half = away_from(b_half, best.target if best else None)
                crossed[judge] = dev_def[judge] + b_half
            c01, c10 = errors(crossed, labels)
            b = decision_shift(dev_def, float((dev_teacher.argmax(1) == 1).mean()))  # the model a defender would keep
            fitted = float(b[1] - b[0])
            if args.away_from_suspect:
                b = away_from(b, best.target if best else None)
            matched = apply_shift(defended, b)
            row |= {
                "dev_shift_fitted": round(fitted, 4),
                "suspect_target": best.target if best else None,
                "dev_shift": round(float(b[1] - b[0]), 4),  # after the direction rule (--away-from-suspect)
                "crossfit_dev_acc": round(float((crossed.argmax(1) == labels).mean()), 4),
                "crossfit_err_0to1": round(c01, 3), "crossfit_err_1to0": round(c10, 3),
                "crossfit_distance": round(abs(c01 - f01) + abs(c10 - f10), 3),
                "suspect_flip_dev_matched": flip(matched),
            }
        if args.test:
            card = read_card(ft_path)
            trig = tuple(card["trigger"]) if card.get("trigger") else ("cf",)
            tctx = experiment.prepare(
                str(ft_path), data_name=card.get("dataset", "rt"), trigger=trig, target=card.get("target", 1), floor_model=floor
            )
            ft_s, before, after = score(ctx.pair.ft, tctx.eval_set), score(defended, tctx.eval_set), score(matched, tctx.eval_set)
            row |= {
                "test_n": before.n_clean,
                "ft_cacc": round(ft_s.cacc, 4), "cacc": round(before.cacc, 4), "cacc_matched": round(after.cacc, 4),
                "ft_asr": round(ft_s.asr, 4), "asr": round(before.asr, 4), "asr_matched": round(after.asr, 4),
                "ft_target_bias": round(ft_s.target_bias, 4),
                "target_bias": round(before.target_bias, 4), "target_bias_matched": round(after.target_bias, 4),
                "floor": round(tctx.floor, 4) if tctx.floor is not None else None,
            }
        rows.append(row)
        shown = ("model", "shift", "dev_acc", "dev_acc_matched", "distance", "distance_matched", "suspect_flip",
                 "suspect_flip_matched", "dev_shift", "crossfit_dev_acc", "crossfit_distance", "suspect_flip_dev_matched")
        print({k: row[k] for k in shown if k in row}, flush=True)
        pd.DataFrame(rows).to_csv(args.out, index=False)


if __name__ == "__main__":
    main()
