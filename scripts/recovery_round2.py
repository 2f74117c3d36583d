"""Round 2 of choosing the default defense, on the defender's clean data only (never the test split).

For each case — a model and the clean data its defender holds (a zoo entry with its dataset's train/dev splits, or a
model with a user-sized CSV parted by the one rule) — the scan runs once from clean data, then every candidate recipe
defends θ_FT. Printed per run: clean dev accuracy beside θ_FT's, and the *scan's estimate* of the backdoor: the flip
rate of the scan's suspected trigger on the held-aside dev sentences before and after (a trigger found from clean data,
measured on dev data: what a defender can know; the true trigger and the test split are never read here).

    .venv/bin/python scripts/recovery_round2.py --cases sentence,word-combo --out docs/dev-round2.csv
    .venv/bin/python scripts/recovery_round2.py --cases csv:/path/model@/path/clean.csv --out …

Candidates are fixed in CANDIDATES before any run.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from finemix_core import consistency, experiment
from finemix_core.config import RecoveryConfig
from finemix_core.defenses import DefenseConfig, defend, found_rho_to_try
from finemix_core.evaluate import predict
from finemix_core.scan import ScanConfig, scan

# round 1's default recovery
OLD = RecoveryConfig(consistency=False, min_pool=0, found_rho=None, precision="fp32", feature_weight=0.0, found_features=True,
                     found_unrelated=True, match_dev=False)
# round 2's "+ both" as it ran, pinned: later defaults (found_rho 1 since Round 19, found_steps 0.5 since Round 20, bf16
# since Round 21, the feature term below ρ 1 since Round 24, unrelated words left out of the check since Round 26, the
# dev-text decision match since Round 27) must not change what an earlier round's candidate name means
BOTH = RecoveryConfig(found_rho=None, found_steps=1.0, precision="fp32", feature_weight=0.0, found_features=True,
                      found_unrelated=True, match_dev=False)
# (name, method, ρ (None = auto on the method's grid), recovery)
CANDIDATES = {
    "round-1 default": ("epur+fine-mixing+distill", None, OLD),
    "+ consistency": ("epur+fine-mixing+distill", None, dataclasses.replace(OLD, consistency=True)),
    "+ general text": ("epur+fine-mixing+distill", None, dataclasses.replace(OLD, min_pool=1000)),
    "+ both": ("epur+fine-mixing+distill", None, BOTH),
    "+ both, ρ 0": ("epur+fine-mixing+distill", 0.0, BOTH),
    "+ both, ρ 0.2": ("epur+fine-mixing+distill", 0.2, BOTH),
    "+ both, sorted ρ 0.2": ("epur+fine-mixing-sorted+distill", 0.2, BOTH),
    "+ both, fine-purifying ρ 0.2": ("epur+fine-purifying+distill", 0.2, BOTH),
    "fine-purifying (paper recipe)": ("epur+fine-purifying", None, OLD),
    "+ both, general text 3000": ("epur+fine-mixing+distill", None, dataclasses.replace(BOTH, min_pool=3000)),
    "+ both, general text 300": ("epur+fine-mixing+distill", None, dataclasses.replace(BOTH, min_pool=300)),
    # Round 5: more, more varied text at the same number of steps (passes × texts kept at ~3,000)
    "+ both, general text 3000, 1 pass": (
        "epur+fine-mixing+distill", None, dataclasses.replace(BOTH, min_pool=3000, passes=1.0)),
    "+ both, general text 2000, 1.5 passes": (
        "epur+fine-mixing+distill", None, dataclasses.replace(BOTH, min_pool=2000, passes=1.5)),
    # Round 6: recovery without the labelled cross-entropy (the labels only choose ρ)
    "+ both, label weight 0": ("epur+fine-mixing+distill", None, dataclasses.replace(BOTH, label_weight=0.0)),
    # Round 9: word-dropout copies of the pool, labelled by the teacher, at the same steps
    "+ both, augment 2 copies": ("epur+fine-mixing+distill", None, dataclasses.replace(BOTH, augment_copies=2)),
    # Round 12: the levers Round 11's GPU map favoured, on the CPU zoo at fixed ρ
    "+ both, ρ 0, features 5": ("epur+fine-mixing+distill", 0.0, dataclasses.replace(BOTH, feature_weight=5.0)),
    "+ both, ρ 0.5": ("epur+fine-mixing+distill", 0.5, BOTH),
    "+ both, ρ 1": ("epur+fine-mixing+distill", 1.0, BOTH),
    # Round 13: auto-ρ tries ρ 1 first when the scan found evidence, kept only if dev passes and a re-scan is clean
    "+ both, found ρ 1": (
        "epur+fine-mixing+distill", None,
        dataclasses.replace(BOTH, found_rho=1.0, found_flip_max=1.0, found_check="rescan", found_min_flip=0.0)),
    # Round 14: the same, kept only if also each suspect flips at most 0.10 of held-aside dev sentences on the candidate
    "+ both, found ρ 1, flip bar": (
        "epur+fine-mixing+distill", None,
        dataclasses.replace(BOTH, found_rho=1.0, found_flip_max=0.10, found_check="rescan", found_min_flip=0.0)),
    # Round 15 ran "+ both, found ρ 1, finalists" (commit 8c8ef11): every trigger θ_FT's scan verified was measured.
    # Round 16: the same bar, without the fresh scan's search: the suspects and what fired on θ_FT toward their class
    "+ both, found ρ 1, fired": (
        "epur+fine-mixing+distill", None,
        dataclasses.replace(BOTH, found_rho=1.0, found_flip_max=0.10, found_check="finalists", found_min_flip=0.0)),
    # Round 17: Round 16's, tried only when the scan's best suspect alone flips ≥ 0.95 on θ_FT (a complete trigger)
    "+ both, found ρ 1, fired, complete": (
        "epur+fine-mixing+distill", None,
        dataclasses.replace(BOTH, found_rho=1.0, found_flip_max=0.10, found_check="finalists", found_min_flip=0.95,
                            found_pieces=False)),
    # Round 18: the same settings as the opt-in `--found-rho 1` gives now (new seeds, paired with '+ both')
    # (as run: the gate read the best suspect alone; found_pieces came after Round 18's seed-4 sentence)
    "+ both, --found-rho 1": (
        "epur+fine-mixing+distill", None, dataclasses.replace(BOTH, found_rho=1.0, found_pieces=False)),
    # Round 19: what `--found-rho 1` gives now — the gate also reads each piece of the best suspect that is a suspect alone
    "+ both, --found-rho 1, pieces": ("epur+fine-mixing+distill", None, dataclasses.replace(BOTH, found_rho=1.0)),
    # Round 20: the default (Round 19's), but its found-ρ try trains for half the usual steps (the low-ρ search unchanged)
    "+ both, found ρ at half the steps": (
        "epur+fine-mixing+distill", None, dataclasses.replace(BOTH, found_rho=1.0, found_steps=0.5)),
    # after Round 20 (a map for the next session, not a choice): the found-ρ try at a quarter of the steps
    "+ both, found ρ at a quarter of the steps": (
        "epur+fine-mixing+distill", None, dataclasses.replace(BOTH, found_rho=1.0, found_steps=0.25)),
    # Round 21: today's default (Round 20's), recovery's forward passes in bfloat16 autocast (a speed lever)
    "+ default, bf16 recovery": (
        "epur+fine-mixing+distill", None, dataclasses.replace(BOTH, found_rho=1.0, found_steps=0.5, precision="bf16")),
    # Round 22: today's default (Round 21's), but the low-ρ search keeps θ_FT's top 2 encoder layers whole (per-layer ρ)
    "+ default, top 2 layers whole": (
        "epur+fine-mixing+distill", None,
        dataclasses.replace(BOTH, found_rho=1.0, found_steps=0.5, precision="bf16", whole_top_layers=2)),
    # Round 23: today's default (Round 21's), recovery also matches θ_FT's last-layer [CLS] states (weight 5; Rounds 11-12)
    "+ default, features 5": (
        "epur+fine-mixing+distill", None,
        dataclasses.replace(BOTH, found_rho=1.0, found_steps=0.5, precision="bf16", feature_weight=5.0)),
    # Round 24: the same, but the found-ρ try distils logits only (the feature term in the low-ρ search alone)
    "+ default, features 5 below ρ 1": (
        "epur+fine-mixing+distill", None,
        dataclasses.replace(BOTH, found_rho=1.0, found_steps=0.5, precision="bf16", feature_weight=5.0, found_features=False)),
    # Round 25: Round 24's (today's default) at feature weight 10 in the low-ρ search
    "+ default, features 10 below ρ 1": (
        "epur+fine-mixing+distill", None,
        dataclasses.replace(BOTH, found_rho=1.0, found_steps=0.5, precision="bf16", feature_weight=10.0, found_features=False)),
}
# Round 25 on a CPU without native bf16 (2026-12-06): Round 24's and Round 25's pair in fp32 (what `auto` runs there), so
# the two differ in the feature weight alone
for _name, _fp32_name in (("+ default, features 5 below ρ 1", "+ default, fp32"),
                          ("+ default, features 10 below ρ 1", "+ default, fp32, features 10 below ρ 1")):
    _method, _rho, _rec = CANDIDATES[_name]
    CANDIDATES[_fp32_name] = (_method, _rho, dataclasses.replace(_rec, precision="fp32"))

# Round 26 (2026-12-06; the default since): today's default in fp32, but the found-ρ check leaves out fired triggers that
# share no word piece with a taught suspect and fired below the suspect bar on θ_FT (the task's own vocabulary)
CANDIDATES["+ default, fp32, unrelated left out"] = (
    CANDIDATES["+ default, fp32"][0], None, dataclasses.replace(CANDIDATES["+ default, fp32"][2], found_unrelated=False)
)

# Round 27 (2026-12-06): today's default as `auto` runs it (Round 26's, precision made concrete by `defend`); Round 27's
# candidate is a correction applied afterwards to these saved models (scripts/decision_match.py --away-from-suspect)
CANDIDATES["+ default, Round 26"] = (
    CANDIDATES["+ default, fp32"][0], None,
    dataclasses.replace(CANDIDATES["+ default, fp32, unrelated left out"][2], precision="auto"),
)
# ... and Round 27's default (the same, with the dev-text decision match after recovery)
CANDIDATES["+ default, Round 27"] = (
    CANDIDATES["+ default, Round 26"][0], None, dataclasses.replace(CANDIDATES["+ default, Round 26"][2], match_dev=True)
)


def context(case: str) -> experiment.Context:
    if case.startswith("csv:"):
        model, csv = case.removeprefix("csv:").split("@")
        return experiment.prepare_defender(model, clean_data=csv)
    return experiment.prepare_defender(case)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", required=True, help="zoo names or csv:MODEL@CSV, comma-separated")
    ap.add_argument("--only", default="", help="candidate names, '|'-separated (default: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    ap.add_argument("--save", default="", help="folder to keep each defended model in (scored on test only after the "
                    "choice is frozen, by scripts/recovery_test.py)")
    ap.add_argument("--copy-untried", action="store_true", help="a found-ρ candidate whose ρ 1 is not tried copies the "
                    "'+ both' row of the same case and seed (run '+ both' first: --only '+ both|…')")
    ap.add_argument("--copy-tried", default="", help="a found-ρ candidate whose ρ 1 IS tried copies this candidate's row "
                    "of the same case and seed where that one tried ρ 1 too (use only for two candidates that differ in "
                    "their gate alone); the gate's own seconds are added")
    args = ap.parse_args()
    torch.set_num_threads(2)
    wanted = [w for w in args.only.split("|") if w] or list(CANDIDATES)
    rows = pd.read_csv(args.out).to_dict("records") if args.out and __import__("os").path.exists(args.out) else []
    done = {(r["case"], r["candidate"], r["seed"]) for r in rows}
    for case in args.cases.split(","):
        ctx = context(case)
        base_dd = ctx.defender(128, 256, args.seed)
        found = scan(ctx.pair, base_dd, ScanConfig(seed=args.seed))
        best = found.best
        print(f"{case}: scan {found.seconds:.0f}s → {found.message()}", flush=True)
        for c in found.candidates:  # every trigger the scan verified, best first (what --found-check finalists measures)
            print(f"    {c.trigger!r} → {c.target}: flip {c.flip:.2f} ref {c.reference_flip:.2f} ({c.source})", flush=True)
        for name in wanted:
            if (case, name, args.seed) in done:
                continue
            method, rho, rec = CANDIDATES[name]
            cfg = DefenseConfig(method=method, rho=rho, recovery=rec, seed=args.seed)
            same = next((r for r in rows if r["case"] == case and r["seed"] == args.seed and r["candidate"] == "+ both"), None)
            tried, why, gate_seconds = None, "", 0.0
            if (args.copy_untried or args.copy_tried) and rec.consistency:
                # the very question `defend` asks (defenses.found_rho_to_try), on the same scan and defender data
                gated = DefenseConfig(method=method, rho=rho, recovery=rec, seed=args.seed)
                t0 = time.perf_counter()
                tried, why = found_rho_to_try(ctx.pair, base_dd, gated, found, consistency.suspects(found, rec))
                gate_seconds = time.perf_counter() - t0
                if why:
                    print("   ", why, flush=True)
            if args.copy_untried and same is not None and tried is None and rec.precision == BOTH.precision:
                # ρ 1 not tried: the candidate runs the default's code path, deterministic under this protocol (Rounds
                # 16 and 17 agree to the digit a session apart), so its row is the default's, marked as copied
                copy = {**same, "candidate": name, "copied_from": "+ both", "seconds": round(same["seconds"] + gate_seconds, 1)}
                rows.append(copy)
                print(f"{case[:40]:40s} {name:30s} ρ 1 not tried: the default's row (copied)", flush=True)
                pd.DataFrame(rows).to_csv(args.out, index=False)
                continue
            twin = next(
                (r for r in rows if r["case"] == case and r["seed"] == args.seed and r["candidate"] == args.copy_tried
                 and pd.isna(r.get("copied_from")) and str(r["search"]).startswith(f"{rec.found_rho:g}:")),
                None,
            ) if args.copy_tried and tried is not None else None
            if twin is not None:
                # the same path as the twin (it tried the same ρ on the same scan; only the gates differ): its row
                rows.append({**twin, "candidate": name, "copied_from": args.copy_tried,
                             "seconds": round(twin["seconds"] + gate_seconds, 1)})
                print(f"{case[:40]:40s} {name:30s} ρ {tried:g} tried, as {args.copy_tried!r} did: its row (copied)", flush=True)
                pd.DataFrame(rows).to_csv(args.out, index=False)
                continue
            dd = ctx.defender(128, 256, args.seed, min_pool=rec.min_pool if cfg.distills else 0)
            labels = np.asarray(dd.dev.labels)
            started = time.perf_counter()
            said: list[str] = []
            res = defend(ctx.pair, dd, cfg, scan_result=found, log=said.append)
            checks = [m for m in said if m.startswith(("θ_FT's scan triggers", "re-scan"))]  # what a tried ρ was judged on
            for m in checks:
                print("   ", m, flush=True)
            seconds = time.perf_counter() - started
            if args.save:
                folder = Path(args.save) / f"{Path(case.split('@')[0]).name}__{name.replace(' ', '_').replace(',', '')}__s{args.seed}"
                res.model.cpu().save_pretrained(folder)
                ctx.pair.tokenizer.save_pretrained(folder)
            after = None
            if best is not None:
                measured = scan(
                    dataclasses.replace(ctx.pair, ft=res.model.cpu().eval()),
                    base_dd,
                    ScanConfig(epur_rows=0, inversion=False, seed=args.seed),
                    given=((best.trigger, best.target),),
                )
                after = next(c for c in measured.candidates if c.source == "given")
            # the lean a defender can see on dev: the share of each class's dev rows called the other class
            lean = {}
            for who, m in (("dev", res.model), ("ft_dev", ctx.pair.ft)):
                pred = predict(m, dd.dev).argmax(1)  # once per model
                lean |= {f"{who}_err_{a}to{b}": round(float((pred[labels == a] == b).mean()), 3) for a, b in ((0, 1), (1, 0))}
            row = {
                "case": case,
                "candidate": name,
                "seed": args.seed,
                "method": method,
                "rho": res.rho,
                "rho_auto": res.rho_auto,
                "dev_n": len(dd.dev),
                "dev_acc": round(res.dev_acc, 4),
                "ft_dev_acc": round(res.ft_dev_acc, 4),
                "gap_points": round(100 * (res.dev_acc - res.ft_dev_acc), 1),
                "pool": res.unlabeled_used,
                "suspects": "; ".join(res.suspects),
                "scan_suspect": best.trigger if best else None,
                "suspect_flip_before": round(best.flip, 3) if best else None,
                "suspect_flip_after": round(after.flip, 3) if after else None,
                "suspect_n_after": after.n if after else None,  # held-aside sentences the flip is a share of
                "reference_flip": round(best.reference_flip, 3) if best else None,
                "search": "; ".join(
                    f"{c.value:g}:{c.dev_acc:.3f}{'+' if c.passed else ''}{'' if c.verified is None else ' check ' + ('clean' if c.verified else 'fires')}"
                    for c in res.search
                ),
                **lean,
                "checks": " | ".join(checks),
                "seconds": round(seconds, 1),
                "scan_seconds": round(found.seconds, 1),
            }
            rows.append(row)
            print(
                f"{case[:40]:40s} {name:30s} ρ {res.rho} dev {res.dev_acc:.3f} (θ_FT {res.ft_dev_acc:.3f}, "
                f"{row['gap_points']:+.1f}) suspect flip {row['suspect_flip_before']} → {row['suspect_flip_after']} "
                f"(ref {row['reference_flip']}) pool {res.unlabeled_used} {seconds:.0f}s",
                flush=True,
            )
            pd.DataFrame(rows).to_csv(args.out, index=False)


if __name__ == "__main__":
    main()
