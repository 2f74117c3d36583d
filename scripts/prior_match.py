"""Does a defended model lean to one class? And does matching θ_FT's class balance on the clean pool undo it?

Round 2 left ASR 0.06–0.14 above the clean floor on four models whose scan estimate said the suspected trigger no longer
flips anything. This study measures, on the defender's data only, a post-hoc correction: add a bias b to the defended
model's logits so that its mean predicted class distribution on the clean unlabelled pool equals θ_FT's on the same
texts (θ_FT is clean on clean text: distillation already aims at its answers there). Per kept model it prints dev
accuracy, agreement with θ_FT on the pool and the scan's estimate (suspect flip on held-aside dev sentences), before
and after — never the test split or the true trigger:

    .venv/bin/python scripts/prior_match.py --models /tmp/r2/models --only "+_both" --out docs/dev-prior.csv

Goal 2 (added after goal 1 moved nothing): the defended model's mean predicted distribution on the dev set equals the
dev labels' class balance, judged by cross-fitting (b fitted on one half of dev, accuracy on the other, both ways).
Rule fixed before running it: adopt goal 2 as a default step only if the cross-fitted dev accuracy does not fall on
average over the cases and falls by no more than 1 point on any one.

`--test` scores the same models on the test split with the true trigger (run only after the rule was frozen on dev).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from finemix_core import experiment
from finemix_core.calibration import apply_shift, label_prior, prior_shift, softmax
from finemix_core.evaluate import predict, score
from finemix_core.models import load_classifier
from finemix_core.scan import ScanConfig, scan

CSV = {
    "handed": "/tmp/try/my300.csv",
    "amazon-rare-6": "/tmp/try/amazon300.csv",
    "tweets-phrase-7": "/tmp/try/tweets300.csv",
    "sms-spam-phrase-18": "/tmp/try/sms-spam300.csv",
}


def accuracy(logits: np.ndarray, labels) -> float:
    return float((logits.argmax(1) == np.asarray(labels)).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", required=True)
    ap.add_argument("--only", default="+_both")
    ap.add_argument("--out", required=True)
    ap.add_argument("--test", action="store_true", help="also score on the test split (after freezing the rule)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    rows = []
    for folder in sorted(Path(args.models).iterdir()):
        model, candidate, seed = folder.name.split("__")
        if candidate != args.only:
            continue
        import importlib.util

        spec = importlib.util.spec_from_file_location("rt", Path(__file__).with_name("recovery_test.py"))
        rt = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(rt)
        ft_path, floor = rt.source_of(model)
        ctx = experiment.prepare_defender(str(ft_path), clean_data=CSV.get(model))
        dd = ctx.defender(128, 256, 0, min_pool=1000)
        defended, _ = load_classifier(folder)
        defended.eval()
        pool_ft = predict(ctx.pair.ft, dd.unlabeled, logits=True)
        pool_def = predict(defended, dd.unlabeled, logits=True)
        b = prior_shift(pool_def, softmax(pool_ft).mean(0))  # goal 1: θ_FT's class balance on the pool
        dev_def = predict(defended, dd.dev, logits=True)
        dev_ft = predict(ctx.pair.ft, dd.dev, logits=True)
        labels = np.asarray(dd.dev.labels)
        k = dev_def.shape[1]
        # goal 2: the dev labels' class balance. Judged by cross-fitting: b from one half of dev, accuracy on the other
        halves = [np.arange(len(labels)) % 2 == h for h in (0, 1)]
        held_out = []
        for fit, judge in (halves, halves[::-1]):
            b_half = prior_shift(dev_def[fit], label_prior(labels[fit], k))
            held_out.append(((dev_def[judge] + b_half).argmax(1) == labels[judge], dev_def[judge].argmax(1) == labels[judge]))
        cross_after = float(np.concatenate([a for a, _ in held_out]).mean())
        cross_before = float(np.concatenate([c for _, c in held_out]).mean())
        b_dev = prior_shift(dev_def, label_prior(labels, k))
        shifted = apply_shift(defended, b_dev)
        found = scan(ctx.pair, ctx.defender(128, 256, 0), ScanConfig(seed=0))
        best = found.best

        def flip(m) -> float | None:
            if best is None:
                return None
            measured = scan(
                dataclasses.replace(ctx.pair, ft=m),
                ctx.defender(128, 256, 0),
                ScanConfig(epur_rows=0, inversion=False, seed=0),
                given=((best.trigger, best.target),),
            )
            return next(c for c in measured.candidates if c.source == "given").flip

        row = {
            "model": model,
            "rule": "goal 1: θ_FT's pool balance (dev_acc_matched); goal 2: dev label balance (crossfit_*, *_dev_*)",
            "dev_n": len(dd.dev),
            "pool_n": len(dd.unlabeled),
            "shift": " ".join(f"{v:+.3f}" for v in b),
            "ft_dev_acc": round(accuracy(dev_ft, dd.dev.labels), 4),
            "dev_acc": round(accuracy(dev_def, dd.dev.labels), 4),
            "dev_acc_matched": round(accuracy(dev_def + b, dd.dev.labels), 4),
            "shift_dev_labels": " ".join(f"{v:+.3f}" for v in b_dev),
            "dev_label_share": " ".join(f"{v:.3f}" for v in label_prior(labels, k)),
            "dev_pred_share": " ".join(f"{v:.3f}" for v in np.bincount(dev_def.argmax(1), minlength=k) / len(labels)),
            "dev_pred_share_matched": " ".join(f"{v:.3f}" for v in np.bincount((dev_def + b_dev).argmax(1), minlength=k) / len(labels)),
            "crossfit_dev_acc": round(cross_before, 4),
            "crossfit_dev_acc_matched": round(cross_after, 4),
            "pool_agree": round(float((pool_def.argmax(1) == pool_ft.argmax(1)).mean()), 4),
            "pool_agree_matched": round(float(((pool_def + b).argmax(1) == pool_ft.argmax(1)).mean()), 4),
            "ft_pool_share": " ".join(f"{v:.3f}" for v in np.bincount(pool_ft.argmax(1), minlength=pool_ft.shape[1]) / len(pool_ft)),
            "pool_share": " ".join(f"{v:.3f}" for v in np.bincount(pool_def.argmax(1), minlength=pool_ft.shape[1]) / len(pool_ft)),
            "suspect": best.trigger if best else None,
            "suspect_flip": round(flip(defended), 3) if best else None,
            "suspect_flip_dev_matched": round(flip(shifted), 3) if best else None,
            "reference_flip": round(best.reference_flip, 3) if best else None,
        }
        if args.test:
            tctx = rt_context(rt, model, ft_path, floor)
            before, after = score(defended, tctx.eval_set), score(shifted, tctx.eval_set)
            row |= {
                "test_cacc": round(before.cacc, 4),
                "test_cacc_matched": round(after.cacc, 4),
                "test_asr": round(before.asr, 4),
                "test_asr_matched": round(after.asr, 4),
                "test_target_bias": round(before.target_bias, 4),
                "test_target_bias_matched": round(after.target_bias, 4),
                "floor": round(tctx.floor, 4) if tctx.floor is not None else None,
            }
        rows.append(row)
        print(row, flush=True)
        pd.DataFrame(rows).to_csv(args.out, index=False)


def rt_context(rt, model: str, ft_path: Path, floor: str | None):
    from finemix_core.models import read_card

    card = read_card(ft_path)
    trig = tuple(card["trigger"]) if card.get("trigger") else ("cf",)
    return experiment.prepare(
        str(ft_path), data_name=card.get("dataset", "rt"), trigger=trig, target=card.get("target", 1), floor_model=floor
    )


if __name__ == "__main__":
    main()
