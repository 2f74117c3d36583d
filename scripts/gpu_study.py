"""Round 11: a wide dev-only map of recovery levers, run once on a lent GPU (clean dev data only; never test).

The 2-core CPU affords one recovery recipe per 2–4 minutes; a GPU runs the same code ~20× faster, so one call maps
many levers on several seeds. The zoo is rebuilt on the GPU from the same θ_PT (carried as fp16, restored to fp32),
so its models are *siblings* of the CPU zoo, not the same weights: a lever this map favours must still pass its own
pre-registered rule on the CPU zoo before it can become the default (docs/recovery.md, Round 11).

Per (seed, zoo entry): the scan from the defender's clean data, then every candidate at a fixed ρ (no auto-ρ, so
each row measures the lever itself). Printed and written per row: dev accuracy against θ_FT's and the scan's own
suspect's flip rate on held-aside dev sentences after the defense. Rows are written after each run, and the study
stops starting new runs at --budget seconds, so a call cut short still returns what it measured.

    python scripts/gpu_study.py --out $OUT/rows.csv --budget 470
"""

from __future__ import annotations

import argparse
import dataclasses
import time
import traceback

import pandas as pd
import torch

from finemix_core import experiment, zoo
from finemix_core.config import RecoveryConfig
from finemix_core.defenses import DefenseConfig, defend
from finemix_core.scan import ScanConfig, scan

D = RecoveryConfig()
METHOD = "epur+fine-mixing+distill"
# (name, ρ, recovery) — fixed before the run
CANDIDATES = [
    ("ρ 0 (default recovery)", 0.0, D),
    ("ρ 0, features 1", 0.0, dataclasses.replace(D, feature_weight=1.0)),
    ("ρ 0, features 5", 0.0, dataclasses.replace(D, feature_weight=5.0)),
    ("ρ 0, passes 6", 0.0, dataclasses.replace(D, passes=6.0)),
    ("ρ 0.5", 0.5, D),
    ("ρ 1", 1.0, D),
    ("ρ 0, passes 12", 0.0, dataclasses.replace(D, passes=12.0)),
    ("ρ 0, general text to 3000", 0.0, dataclasses.replace(D, min_pool=3000)),
    ("ρ 0, features 1, passes 6", 0.0, dataclasses.replace(D, feature_weight=1.0, passes=6.0)),
]
CASES = ("ep-cf", "sentence", "word-cf", "word-combo")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--budget", type=float, default=470.0, help="seconds after which no new run starts")
    ap.add_argument("--quick", action="store_true", help="the quick zoo and two candidates (a dry run of the script)")
    args = ap.parse_args()
    started = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = False  # the CPU's fp32 numbers, not TF32's
    specs = zoo.default_specs(quick=args.quick)
    zoo.build(specs, eval_limit=200 if args.quick else None)
    print(f"zoo built in {time.perf_counter() - started:.0f} s on {device}", flush=True)
    candidates = CANDIDATES[:2] if args.quick else CANDIDATES
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        for case in CASES:
            ctx = experiment.prepare_defender(case)
            pair = ctx.pair  # θ_FT stays on the CPU (Δ is taken there); defend() copies it to the GPU
            dd = ctx.defender(128, 256, seed)
            t0 = time.perf_counter()
            found = scan(pair, dd, ScanConfig(seed=seed))
            best = found.best
            print(f"seed {seed} {case}: scan {time.perf_counter() - t0:.0f}s → {found.message()}", flush=True)
            for name, rho, rec in candidates:
                if time.perf_counter() - started > args.budget:
                    print("budget reached: no new run", flush=True)
                    return
                try:
                    cfg = DefenseConfig(method=METHOD, rho=rho, recovery=rec, seed=seed)
                    ddr = ctx.defender(128, 256, seed, min_pool=rec.min_pool)
                    t1 = time.perf_counter()
                    res = defend(pair, ddr, cfg, device=device, scan_result=found)
                    seconds = time.perf_counter() - t1
                    after = None
                    if best is not None:
                        measured = scan(
                            dataclasses.replace(pair, ft=res.model.cpu().eval()), dd,
                            ScanConfig(epur_rows=0, inversion=False, seed=seed), given=((best.trigger, best.target),),
                        )
                        after = next(c for c in measured.candidates if c.source == "given")
                except Exception:  # one failing lever must not cost the others their rows
                    traceback.print_exc()
                    continue
                rows.append({
                    "case": case, "candidate": name, "seed": seed, "rho": rho, "dev_n": len(ddr.dev),
                    "dev_acc": round(res.dev_acc, 4), "ft_dev_acc": round(res.ft_dev_acc, 4),
                    "gap_points": round(100 * (res.dev_acc - res.ft_dev_acc), 1), "pool": res.unlabeled_used,
                    "suspects": "; ".join(res.suspects), "scan_suspect": best.trigger if best else None,
                    "suspect_flip_before": round(best.flip, 3) if best else None,
                    "suspect_flip_after": round(after.flip, 3) if after else None,
                    "reference_flip": round(best.reference_flip, 3) if best else None,
                    "seconds": round(seconds, 1), "device": device.type,
                })
                r = rows[-1]
                print(f"s{seed} {case:10s} {name:28s} dev {r['dev_acc']:.3f} ({r['gap_points']:+.1f}) suspect "
                      f"{r['suspect_flip_before']} → {r['suspect_flip_after']} {seconds:.1f}s", flush=True)
                pd.DataFrame(rows).to_csv(args.out, index=False)


if __name__ == "__main__":
    main()
