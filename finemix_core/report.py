"""The reproduction report: every backdoored zoo entry × every defense, mean ± std over seeds, plus a
clean-set-size study (Fine-mixing vs fine-tuning). Markdown + CSV, written atomically.

Each cell says what it was measured on: model, data, split seed, test size, clean-set size, seeds.
The verdict lines compare against the efficacy bar (README, "Against the bar") and say plainly where we miss.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import pandas as pd
import torch

from finemix_core import zoo
from finemix_core.defenses import DEFAULT_METHOD, RECOVERY_GRID, DefenseConfig
from finemix_core.errors import FinemixError
from finemix_core.executor import ContextCache, ExecutionStats, Executor, RunSpec, execute, failure_error, run_key, stored_runs
from finemix_core.experiment import record
from finemix_core.atomic import check_new, save_dir, write_csv

# the references, the paper's recipe exactly as the baseline report ran it, the new default, and recovery given to fine-tuning
REPORT_METHODS = (
    "none",
    "fine-tuning",
    "fine-pruning",
    "fine-mixing",
    "epur+fine-mixing",
    DEFAULT_METHOD,
    "fine-tuning+distill",
    "epur+fine-purifying",
    "epur+fine-purifying+distill",
)


@dataclass(frozen=True)
class ReportConfig:
    entries: tuple[str, ...] | None = None  # zoo entries to defend (None: every backdoored one)
    methods: tuple[str, ...] = REPORT_METHODS  # defenses compared (docs/design.md §6 + Fine-mixing variants)
    seeds: tuple[int, ...] = (0, 1, 2)  # defense seeds: clean-set draw, masks, training order
    clean_size: int = 128  # the defender's clean training examples
    sizes: tuple[int, ...] = (32, 64, 128, 512)  # clean-set-size study (empty: skip it)
    size_entries: tuple[str, ...] = ("word-cf", "sentence")  # entries of the size study
    size_methods: tuple[str, ...] = ("fine-tuning", DEFAULT_METHOD)
    # ρ-sensitivity section at the first seed (empty: skip); never used for verdicts
    fixed_rhos: tuple[float, ...] = (0.1, 0.3, 0.5)
    # auto-ρ again with this looser dev tolerance, every seed (None: skip); never used for verdicts
    loose_delta: float | None = 0.05
    eval_limit: int | None = None  # score on the first N test examples only (quick looks)
    pretrained: str = "default"  # θ_PT of every entry
    resume: bool = True  # reuse identical runs already stored in the results database (an interrupted report continues)
    checkpoint: Path | None = None  # a CSV of every run so far, rewritten (atomically) after each one; resume with import_runs
    # budget, grids and K of every run (method, seed, ρ and δ are set per run)
    defense: DefenseConfig = field(default_factory=DefenseConfig)


def _entries(cfg: ReportConfig) -> list[str]:
    cards = {c["name"]: c for c in zoo.read_entries()}
    if not cards:
        raise FinemixError("the zoo is empty; run 'finemix zoo build' first")
    names = list(cfg.entries) if cfg.entries else [n for n, c in cards.items() if c["attack"] != "clean"]
    missing = [n for n in names if n not in cards]
    if missing:
        raise FinemixError(f"zoo entry '{missing[0]}' is not built; run 'finemix zoo build --only {missing[0]}'")
    if not names:
        raise FinemixError("the zoo has no backdoored entry; run 'finemix zoo build'")
    return names


@dataclass
class ReportRuns:
    """Every run of a report, one row each, by section."""

    main: pd.DataFrame  # entry × method × seed
    sizes: pd.DataFrame  # clean-set-size study
    fixed: pd.DataFrame  # ρ sensitivity at fixed ρ
    loose: pd.DataFrame  # auto-ρ with the looser tolerance
    used: dict[str, dict]  # every distinct run of the report by its run_key (one run can serve two sections)
    reused: int  # how many of them came from the results database instead of being run
    execution: ExecutionStats  # which executor ran the rest, retries, bytes shipped


def import_runs(path: Path) -> int:
    """Store the rows of an earlier report's runs.csv as report runs, so identical runs are reused instead of re-run.

    Only rows whose run_key matches a planned run are ever used, and the key holds the model, data, test size, seed,
    budget and the clean floor measured on this machine's zoo: a rebuilt zoo that differs gets its runs re-run.
    Returns how many rows were new to the database.
    """
    import ast

    path = Path(path)
    if not path.is_file():
        raise FinemixError(f"runs file not found: {path}; give the runs.csv of an earlier report")
    frame = pd.read_csv(path, float_precision="round_trip")
    missing = {"model", "method", "seed", "cacc", "asr", "train"} - set(frame.columns)
    if missing:
        raise FinemixError(f"{path}: not a report's runs.csv (no column {sorted(missing)[0]})")
    stored = set(stored_runs())
    new = 0
    for rec in frame.to_dict(orient="records"):
        row = {k: (None if isinstance(v, float) and pd.isna(v) else v) for k, v in rec.items()}
        for col in ("train", "flagged_top", "search", "recovery"):
            if isinstance(row.get(col), str) and row[col][:1] in "[{":
                row[col] = ast.literal_eval(row[col])
        for col in ("seed", "clean_size", "dev_size", "n_clean", "n_nontarget", "split_seed", "epur_k"):
            if isinstance(row.get(col), float) and row[col].is_integer():
                row[col] = int(row[col])  # a CSV column with gaps reads as float; the run key compares 200, not 200.0
        row["imported_from"] = str(path)
        if run_key(row) not in stored:
            record("report", row)
            stored.add(run_key(row))
            new += 1
    return new


def plan(cfg: ReportConfig) -> dict[str, list[RunSpec]]:
    """Every run each section needs, in table order (a run needed by two sections appears in both)."""
    entries = _entries(cfg)

    def spec(name: str, method: str, seed: int, size: int, rho: float | None = None, delta: float | None = None) -> RunSpec:
        defense = replace(cfg.defense, method=method, seed=seed, rho=rho, delta=cfg.defense.delta if delta is None else delta)
        return RunSpec(name, defense, size, cfg.pretrained, cfg.eval_limit)

    return {
        "main": [spec(name, method, seed, cfg.clean_size) for name in entries for seed in cfg.seeds for method in cfg.methods],
        "sizes": [
            spec(name, method, cfg.seeds[0], size)
            for name in cfg.size_entries
            for size in cfg.sizes
            for method in cfg.size_methods
        ],
        "fixed": [spec(name, DEFAULT_METHOD, cfg.seeds[0], cfg.clean_size, rho) for name in entries for rho in cfg.fixed_rhos],
        "loose": []
        if cfg.loose_delta is None
        else [spec(name, DEFAULT_METHOD, seed, cfg.clean_size, delta=cfg.loose_delta) for name in entries for seed in cfg.seeds],
    }


def run(
    cfg: ReportConfig,
    device: torch.device | str = "cpu",
    log: Callable[[str], None] = print,
    executor: Executor | None = None,
    progress: bool = False,
) -> ReportRuns:
    """All runs of the report, on `executor` (default: in this process). Stored identical runs are reused when `resume`.
    Runs that fail are reported together at the end, after every other run is stored."""
    sections = plan(cfg)
    used: dict[str, dict] = {}

    def checkpoint(key: str, row: dict) -> None:
        used[key] = row
        if cfg.checkpoint is not None:
            write_csv(pd.DataFrame(list(used.values())), Path(cfg.checkpoint))

    keys, rows, stats = execute(
        [s for specs in sections.values() for s in specs],
        ContextCache(device),
        executor,
        "report",
        cfg.resume,
        log,
        progress,
        checkpoint,
    )
    if stats.failed:
        raise failure_error(stats)
    frames = {name: pd.DataFrame([rows[keys[s]] for s in specs]) for name, specs in sections.items()}
    return ReportRuns(
        frames["main"],
        frames["sizes"],
        frames["fixed"],
        frames["loose"],
        {k: rows[k] for k in dict.fromkeys(keys.values())},
        stats.reused,
        stats,
    )


def _pm(values: pd.Series) -> str:
    values = values.dropna()
    if values.empty:
        return "—"
    return f"{values.mean():.3f} ± {values.std(ddof=0):.3f}" if len(values) > 1 else f"{values.mean():.3f}"


def summarise(rows: pd.DataFrame, by: tuple[str, ...] = ("model", "method")) -> pd.DataFrame:
    """Mean ± std of CACC, ASR and target bias per group, with the ρ values chosen and the floor."""
    out = []
    for keys, grp in rows.groupby(list(by), sort=False):
        keys = keys if isinstance(keys, tuple) else (keys,)
        rhos = sorted({r for r in grp["rho"].dropna()})
        out.append(
            {
                **dict(zip(by, keys)),
                "attack": grp["attack"].iloc[0],
                "trigger": grp["trigger"].iloc[0],
                "CACC": _pm(grp["cacc"]),
                "ASR": _pm(grp["asr"]),
                "target bias": _pm(grp["target_bias"]),
                "ASR floor": _pm(grp["asr_floor"]),
                "ρ chosen": ", ".join(f"{r:g}" for r in rhos) or "—",
                "seconds": f"{grp['seconds'].mean():.0f}" if "seconds" in grp else "—",
                "seeds": ",".join(str(s) for s in sorted(grp["seed"].unique())),
                "clean n": int(grp["clean_size"].iloc[0]),
                "cacc_mean": grp["cacc"].mean(),
                "asr_mean": grp["asr"].mean(),
                "floor": grp["asr_floor"].mean(),
            }
        )
    return pd.DataFrame(out)


def verdicts(summary: pd.DataFrame) -> list[str]:
    """The efficacy bar, per attack, for the default defense: ASR ≤ floor + 0.05, CACC ≥ θ_FT's − 0.02, and ASR
    clearly (≥ 0.10) below fine-tuning's and fine-pruning's under the same budget. Said plainly where missed."""
    lines = []
    for model, grp in summary.groupby("model", sort=False):
        by = grp.set_index("method")
        ours = DEFAULT_METHOD  # one recipe for every attack: a defender does not know the attack
        if not {"none", ours}.issubset(by.index):
            continue
        o, base = by.loc[ours], by.loc["none"]
        floor = o["floor"]
        asr_ok = pd.notna(floor) and o["asr_mean"] <= floor + 0.05
        cacc_ok = o["cacc_mean"] >= base["cacc_mean"] - 0.02
        others = []
        for ref in ("fine-tuning", "fine-pruning"):
            if ref in by.index:
                clear = by.loc[ref, "asr_mean"] >= o["asr_mean"] + 0.1
                others.append(
                    f"{ref} leaves ASR {by.loc[ref, 'asr_mean']:.3f} ({'clearly higher' if clear else 'NOT clearly higher'})"
                )
        floor_text = "unknown" if pd.isna(floor) else f"{floor:.3f}"
        lines.append(
            f"- **{model}** ({ours}): ASR {o['asr_mean']:.3f} vs floor {floor_text} → "
            f"{'MET' if asr_ok else 'MISSED'} (≤ floor + 0.05); CACC {o['cacc_mean']:.3f} vs backdoored "
            f"{base['cacc_mean']:.3f} → "
            f"{'MET' if cacc_ok else 'MISSED'} (≥ backdoored − 0.02)" + (f"; {'; '.join(others)}" if others else "") + "."
        )
    return lines


def _imported_text(runs: ReportRuns) -> str:
    srcs = sorted({r["imported_from"] for r in runs.used.values() if r.get("imported_from")})
    n = sum(1 for r in runs.used.values() if r.get("imported_from"))
    return (
        ""
        if not n
        else (
            f" ({n} of them imported from {', '.join(srcs)}: the earlier report's identical runs — same model files, "
            "data, seeds, budget and clean floor — reused, not re-run; their seconds are the earlier run's)"
        )
    )


def _found_rho_text(rec) -> str:
    """The report header's sentence on keeping θ_FT when the scan found a complete trigger ("" when off)."""
    if rec.found_rho is None:
        return ""
    pieces = ", and so does each piece of it that is a suspect alone" if rec.found_pieces else ""
    share = f" (trained for {rec.found_steps:.0%} of the usual steps)" if rec.found_steps < 1.0 else ""
    return (
        f"Before that, when θ_FT's scan reached its verdict and its best suspect alone flips ≥ {rec.found_min_flip:.0%} of "
        f"held-aside dev sentences{pieces}, ρ {rec.found_rho:g} is tried first{share} and kept only if its dev accuracy passes "
        f"and nothing the scan saw firing flips more than {rec.found_flip_max:.0%} on it"
        + (
            "" if rec.found_unrelated else
            " (words that share no piece with a suspect and fired below the suspect bar on θ_FT are left out: the task's "
            "own vocabulary)"
        )
        + ". "
    )


def _recovery_text(pool: pd.DataFrame) -> str:
    if pool.empty:
        return "not run"
    rec = pool["recovery"].iloc[0]
    rec = rec if isinstance(rec, dict) else {}
    text = (
        f"CE on the labelled batch + {rec.get('weight', '?'):g} · T²·KL(θ_FT ‖ student) at T = "
        f"{rec.get('temperature', '?'):g} on a "
        f"batch of clean unlabelled texts, {rec.get('passes', '?'):g} passes over the {pool['unlabeled_source'].iloc[0]}"
    )
    if rec.get("augment_copies"):  # round 9: word-dropout copies of the pool, labelled by the teacher, same steps
        text += (
            f" plus {rec['augment_copies']} word-dropout copies of each (each word dropped with chance "
            f"{rec.get('augment_drop', 0.1):g}, labelled by θ_FT; passes scaled so the steps stay the same)"
        )
    if rec.get("consistency"):  # round 2: the scan's suspects (never the card's) taught to mean nothing
        suspects = sorted({s for row in pool.get("suspects", pd.Series(dtype=object)).dropna() for s in row})
        text += (
            f"; trigger-aware: the scan's suspects with excess flip ≥ {rec.get('min_excess', '?'):g} (up to "
            f"{rec.get('max_suspects', '?')}) inserted into {rec.get('consistency_share', 0):.0%} of the pool (taught θ_FT's "
            f"answer without them) and of the labelled set (true labels); suspects used: "
            + (", ".join(f"'{s}'" for s in suspects) or "none")
        )
    if rec.get("precision") == "bf16":  # round 21: the training forward passes under bfloat16 autocast
        text += "; its training forward passes in bfloat16 autocast (weights, optimiser state and the model float32)"
    if rec.get("feature_weight"):  # round 11: feature distillation ([CLS] states); round 23: optionally below ρ 1 only
        where = "" if rec.get("found_features", True) else " (in the low-ρ search only, not in the found-ρ try)"
        text += f"; the student also matches θ_FT's last-layer [CLS] states on the pool, weight {rec['feature_weight']:g}{where}"
    if rec.get("whole_top_layers"):  # round 22: per-layer ρ, the top layers kept whole below ρ 1
        text += f"; below ρ 1 θ_FT's top {rec['whole_top_layers']} encoder layers are kept whole (ρ 1 there, the grid's ρ below)"
    if rec.get("two_pass_below"):  # 2026-12-05: long labelled texts beside short pool texts, two forward passes a step
        text += (
            f"; a step's labelled and pool batches in two forward passes where, over the run's batches, that reads at most "
            f"{rec['two_pass_below']:.0%} of one padded pass's tokens (else one pass)"
        )
    return text


def markdown(runs: ReportRuns, cfg: ReportConfig, command: str, seconds: float, device: str) -> str:
    main, sizes, fixed, loose = runs.main, runs.sizes, runs.fixed, runs.loose
    order = {m: i for i, m in enumerate(cfg.methods)}
    summary = summarise(main)
    summary = summary.sort_values(["model", "method"], key=lambda c: c.map(order) if c.name == "method" else c, kind="stable")
    first = main.iloc[0]
    pool = main[main["method"].str.endswith("+distill")] if "method" in main else main.iloc[:0]
    compute = sum(row["seconds"] for row in runs.used.values())
    cols = ["model", "attack", "method", "CACC", "ASR", "target bias", "ASR floor", "ρ chosen", "seconds"]
    parts = [
        "# finemix reproduction report",
        "",
        (
            f"Made by `{command}` on {time.strftime('%Y-%m-%d', time.gmtime())}, {device} "
            f"({platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads). The "
            f"{len(runs.used)} runs took "
            f"{compute / 60:.0f} minutes of compute in all; this invocation took {seconds / 60:.1f} minutes and reused "
            f"{runs.reused} stored runs from the results database{_imported_text(runs)}. Executor: {runs.execution.describe()}."
        ),
        "",
        (
            f"- θ_PT: all-MiniLM-L6-v2 (6 layers, hidden 384; the paper used bert-base-uncased). Data: `{first['data']}`, "
            f"split seed {first['split_seed']}, test examples {int(first['n_clean'])} (ASR over "
            f"{int(first['n_nontarget'])} non-target)."
        ),
        (
            f"- Defender: {cfg.clean_size} clean training examples (stratified from train), up to 256 dev examples "
            f"for auto-ρ and the prune "
            f"ratio; seeds {', '.join(map(str, cfg.seeds))} (mean ± population std). Budget for every method: AdamW "
            f"lr {cfg.defense.train.lr:g}, "
            f"{cfg.defense.train.epochs:g} epochs, batch {cfg.defense.train.batch_size}; the paper recipe's ρ auto: "
            f"smallest grid ρ "
            "(0.1…0.9, bisection) within 2 dev points of θ_FT; "
            "E-PUR K=200, c=20. Test data and triggered data are used for scoring only."
        ),
        (
            f"- Recovery (`+distill` rows): {_recovery_text(pool)}. With recovery, auto-ρ tries ρ ∈ "
            f"{{{', '.join(f'{r:g}' for r in RECOVERY_GRID)}}} from the bottom and keeps the first whose dev accuracy "
            f"is within 2 points "
            "plus one standard error (paired, on the same dev examples) of θ_FT's, else the better dev accuracy. "
            f"{_found_rho_text(cfg.defense.recovery)}"
            + (
                "After recovery, one output bias makes the defended model put as many dev texts (labels unused) in each "
                "class as its teacher, kept only if it moves the boundary away from the scan's suspected class. "
                if cfg.defense.recovery.match_dev else ""
            )
            + "Defaults chosen on the zoo's dev splits only (docs/recovery.md), frozen before this run. Seconds: the defense "
            "itself, selection included, scoring excluded (mean over seeds; rows imported from the baseline report "
            "keep its seconds)."
        ),
        (
            "- ASR floor: the zoo's clean model on the same triggered test set. Target bias: non-target examples without the "
            "trigger predicted as the target."
        ),
        "",
        summary[cols].to_markdown(index=False),
        "",
        "## Against the targets",
        "",
        *(verdicts(summary) or [f"- (no backdoored entry with both `none` and `{DEFAULT_METHOD}` rows)"]),
    ]
    if not sizes.empty:
        s = summarise(sizes, by=("model", "clean_size", "method"))
        parts += [
            "",
            f"## Clean-set size (seed {cfg.seeds[0]})",
            "",
            s[["model", "clean_size", "method", "CACC", "ASR", "ASR floor", "ρ chosen"]]
            .rename(columns={"clean_size": "clean n"})
            .to_markdown(index=False),
        ]
    if not fixed.empty:
        f = fixed.rename(columns={"rho": "ρ", "cacc": "CACC", "asr": "ASR", "asr_floor": "ASR floor"})
        parts += [
            "",
            f"## ρ sensitivity (fixed ρ, seed {cfg.seeds[0]}, {cfg.clean_size} clean examples)",
            "",
            (
                "What Fine-mixing gives when ρ is set by hand instead of by auto-ρ. These ρ values were fixed before the run "
                "(around the ρ = 0.2–0.3 that docs/design.md §10 measured), shown to expose the trade-off, and are "
                "never used for "
                "the verdicts above: picking the best one here would be tuning on test data."
            ),
            "",
            f[["model", "method", "ρ", "CACC", "ASR", "ASR floor"]].round(3).to_markdown(index=False),
        ]
    if not loose.empty:
        points = f"{cfg.loose_delta * 100:g}"
        pairs = set(zip(loose.model, loose.method))
        strict = main[[pair in pairs for pair in zip(main.model, main.method)]]
        both = pd.concat([summarise(strict).assign(δ="2"), summarise(loose).assign(δ=points)])
        parts += [
            "",
            f"## Auto-ρ with a looser tolerance (δ = {points} dev points, seeds {', '.join(map(str, cfg.seeds))})",
            "",
            (
                f"The defender's own knob: auto-ρ accepting a clean dev accuracy up to {points} points below θ_FT's "
                f"instead of 2. "
                "Still chosen on dev data only, fixed before the run, and not used for the verdicts above."
            ),
            "",
            both.sort_values(["model", "δ"])[["model", "method", "δ", "CACC", "ASR", "ASR floor", "ρ chosen"]].to_markdown(
                index=False
            ),
        ]
    return "\n".join(parts) + "\n"


def write(
    out: Path,
    cfg: ReportConfig,
    command: str,
    device: torch.device | str = "cpu",
    overwrite: bool = False,
    log: Callable[[str], None] = print,
    executor: Executor | None = None,
    progress: bool = False,
) -> Path:
    """Run everything (on `executor`; default in this process), then write report.md, runs.csv and sizes.csv into `out`
    (atomically)."""
    out = Path(out)
    check_new(out, overwrite)  # fail before an hour of work, not after it
    started = time.perf_counter()
    runs = run(cfg, device, log, executor, progress)
    text = markdown(runs, cfg, command, time.perf_counter() - started, torch.device(device).type)

    def write_files(tmp: Path) -> None:
        (tmp / "report.md").write_text(text)
        runs.main.to_csv(tmp / "runs.csv", index=False)
        for name, frame in (("sizes.csv", runs.sizes), ("fixed_rho.csv", runs.fixed), ("loose_delta.csv", runs.loose)):
            if not frame.empty:
                frame.to_csv(tmp / name, index=False)
        (tmp / "config.json").write_text(json.dumps(asdict(replace(cfg)), indent=2, default=str))

    return save_dir(out, write_files, overwrite)
