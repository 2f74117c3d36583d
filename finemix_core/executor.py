"""Where defense runs execute. The report and the sweep plan a list of typed `RunSpec`s, drop the ones whose
identical run is already in the results database (resumable), and hand the rest to an executor:

- `SequentialExecutor`: in this process, one run after another (the default; no Ray, no server);
- `RayExecutor` (ray_executor.py): one Ray task per run, on a local Ray or a cluster.

Either way every finished row comes back to the driver, which alone writes SQLite: one row per finished run, in one
transaction, so a run that dies half-way leaves nothing behind. A run that raises is reported with its spec and the
others still land; re-running the same command runs only what is missing.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

import torch
from tqdm import tqdm

from finemix_core import store
from finemix_core.defenses import DefenseConfig, concrete_precision
from finemix_core.errors import FinemixError
from finemix_core.experiment import Context, prepare, record, run_defense
from finemix_core.train import Progress

# rows of these kinds are defense runs with a run key and the shared budget: a sweep's fine-tuned point is the same
# experiment as a report's fixed-ρ run of the same method, a Compare-page run the same as the report's, so each can serve
# the others (a `finemix defend` row may come from a user's own clean CSV, which the key does not hold: not reused)
RUN_KINDS = ("report", "sweep", "compare")
# RecoveryConfig fields added after runs were first stored, each with the value that reproduces the behaviour before it
# (a stored row without the field ran that way): every field added to RecoveryConfig from now on goes here.
RECOVERY_ADDED_LATER = {
    "label_weight": 1.0, "match_decisions": False, "augment_copies": 0, "augment_drop": 0.1, "feature_weight": 0.0,
    "match_dev": False,  # Round 27's default: no stored row before it moved the boundary on the dev texts
    "found_rho": None,
    "found_flip_max": 0.10,  # acts only with found_rho, which no row stored before it set
    "found_check": "rescan",  # likewise
    "found_min_flip": 0.0,  # likewise
    "found_pieces": False,  # likewise
    "found_steps": 1.0,  # likewise
    "precision": "fp32",
    "whole_top_layers": 0,
    "found_features": True,  # acts only with feature_weight > 0
    "two_pass_below": 0.0,  # every step was one padded pass before it
}


@dataclass(frozen=True)
class RunSpec:
    """One defense run to make: which model, which defense (method, seed, fixed ρ, δ, budget), how much clean data."""

    model: str  # zoo entry name or θ_FT folder
    defense: DefenseConfig  # method, seed, ρ (None: the method's own dev-only choice), δ, training budget
    clean_size: int = 128  # labelled clean training examples
    pretrained: str = "default"  # θ_PT
    eval_limit: int | None = None  # score on the first N test examples only

    @property
    def label(self) -> str:
        d = self.defense
        rho = "" if d.rho is None else f" ρ {d.rho:g}"
        return f"{self.model} {d.method} seed {d.seed} n {self.clean_size}{rho}" + (
            f" δ {d.delta:g}" if d.delta != DefenseConfig.delta else ""
        )


@dataclass(frozen=True)
class RunOutcome:
    """What came back for one spec: its row, or the one-line error that stopped it."""

    spec: RunSpec
    row: dict | None  # RunRow.as_dict() (None: failed)
    error: str | None = None
    attempts: int = 1  # > 1 when a worker died and the task was retried


@dataclass
class ExecutionStats:
    """How a batch of runs went, for the report header and the CLI."""

    executor: str  # "sequential" or "Ray (…)"
    planned: int = 0  # distinct runs the caller needs
    reused: int = 0  # of them, found in the results database
    ran: int = 0  # run now and stored
    failed: list[RunOutcome] = field(default_factory=list)
    retries: int = 0  # task attempts beyond the first (a worker died mid-run)
    shipped_bytes: int = 0  # model bytes moved through Ray's object store (0: workers read a shared path)
    seconds: float = 0.0  # wall time of the execution

    def describe(self) -> str:
        text = f"{self.executor}: {self.ran} runs now, {self.reused} reused, {len(self.failed)} failed, {self.retries} retries"
        return text + (f", {self.shipped_bytes / 2**20:.1f} MiB of model files shipped" if self.shipped_bytes else "")


class ContextCache:
    """Loaded experiment contexts (model pair, data, test set, clean floor) by model, θ_PT and test limit: each is loaded
    once per process — once on the driver to key the runs, once per Ray worker to run them."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self._contexts: dict[tuple, Context] = {}

    @staticmethod
    def _key(spec: RunSpec) -> tuple:
        return spec.model, spec.pretrained, spec.eval_limit

    def put(self, spec: RunSpec, ctx: Context) -> None:
        self._contexts[self._key(spec)] = ctx

    def get(self, spec: RunSpec) -> Context:
        key = self._key(spec)
        if key not in self._contexts:
            self._contexts[key] = prepare(spec.model, spec.pretrained, eval_limit=spec.eval_limit, device=self.device)
        return self._contexts[key]


def run_key(row: dict) -> str:
    """What makes two runs the same experiment (model, data, test set and its trigger, method, seed, clean size, budget,
    K, fixed ρ, δ): a run scored with another ASR probe (an entered or suspected trigger) is another experiment."""
    fields = (
        "model",
        "trigger",
        "method",
        "seed",
        "clean_size",
        "dev_size",
        "n_clean",
        "data",
        "split_seed",
        "train",
        "epur_k",
        "asr_floor",
        "recovery",
    )
    key = {f: row.get(f) for f in fields}
    if isinstance(key["recovery"], dict):  # recovery fields added later: a row stored before one ran with its old behaviour
        key["recovery"] = {**RECOVERY_ADDED_LATER, **key["recovery"]}
        if key["recovery"].get("found_rho") is None:  # the found_* settings act only with found_rho: no run tells them apart
            key["recovery"] = {k: v for k, v in key["recovery"].items() if not k.startswith("found_")}
        if not key["recovery"].get("feature_weight"):  # found_features acts only with a feature term: likewise
            key["recovery"].pop("found_features", None)
    # a run with a fixed ρ is another experiment than the auto-ρ run of the same method
    key["rho_fixed"] = row.get("rho_fixed", None if row.get("rho_auto", True) else row.get("rho"))
    # rows stored before δ was recorded ran with the default (a runs.csv's empty cell reads back as None)
    key["delta"] = DefenseConfig.delta if row.get("delta") is None else row["delta"]
    return json.dumps(key, sort_keys=True, default=str)


def planned_key(ctx: Context, spec: RunSpec) -> str:
    """The run key a spec's row will have, known before running it."""
    cfg = concrete_precision(spec.defense, ctx.device)  # as run_defense will make it
    parts = ctx.parts(spec.clean_size, 256, check=False)  # the same parts run_defense will take (a CSV's by the one rule)
    return run_key(
        {
            "model": ctx.pair.card.get("name", ctx.pair.ft_source),
            "trigger": ctx.trigger_text,
            "method": cfg.method,
            "seed": cfg.seed,
            "clean_size": parts.labelled,
            "dev_size": parts.dev,
            "n_clean": len(ctx.eval_set.clean),
            "data": ctx.data_name,
            "split_seed": ctx.split_seed,
            "train": json.loads(json.dumps(cfg.train.__dict__)),
            "epur_k": cfg.epur.k if cfg.uses_epur else None,
            "asr_floor": ctx.floor,
            "rho_fixed": cfg.rho,
            "delta": cfg.delta,
            "recovery": json.loads(json.dumps(dataclasses.asdict(cfg.recovery))) if cfg.distills else None,
        }
    )


def stored_runs() -> dict[str, dict]:
    """Every stored defense run of RUN_KINDS by run key; the newest wins."""
    rows = [r for kind in RUN_KINDS for r in store.runs(kind=kind) if "cacc" in r["config"] and "method" in r["config"]]
    return {run_key(r["config"]): r["config"] for r in sorted(rows, key=lambda r: r["id"])}


def run_one(spec: RunSpec, contexts: ContextCache, progress: Progress | None = None) -> dict:
    """Defend and score one spec; its row as a dict. The same code path for every executor."""
    return run_defense(contexts.get(spec), spec.defense, spec.clean_size, progress=progress)[1].as_dict()


# on_done(outcome) as each run ends; on_status(done, running, failed) as often as the executor knows more
OnDone = Callable[[RunOutcome], None]
OnStatus = Callable[[int, int, int], None]


class Executor(Protocol):
    name: str

    def run(self, specs: list[RunSpec], contexts: ContextCache, on_done: OnDone, on_status: OnStatus) -> ExecutionStats:
        """Run every spec, calling on_done on the driver for each; returns the executor's own counts (retries, shipped bytes)."""
        ...


class SequentialExecutor:
    """In this process, one run after another, with the driver's contexts (the embedded default)."""

    name = "sequential (in process)"

    def __init__(self, progress: Progress | None = None):
        self.progress = progress  # per-step progress of the run in hand (the lab's progress bar)

    def run(self, specs: list[RunSpec], contexts: ContextCache, on_done: OnDone, on_status: OnStatus) -> ExecutionStats:
        failed = 0
        for i, spec in enumerate(specs):
            on_status(i, 1, failed)
            try:
                outcome = RunOutcome(spec, run_one(spec, contexts, self.progress))
            except Exception as exc:  # noqa: BLE001 — say which run failed and why, keep going (as a Ray task would)
                outcome = RunOutcome(spec, None, error_line(exc))
                failed += 1
            on_done(outcome)
        on_status(len(specs), 0, failed)
        return ExecutionStats(self.name)


class _Bar:
    """The driver's progress over runs: done / running / failed, with tqdm's rate and ETA (stderr)."""

    def __init__(self, total: int, desc: str, enabled: bool):
        self.bar = tqdm(total=total, desc=desc, unit="run", file=sys.stderr, dynamic_ncols=True) if enabled and total else None

    def status(self, done: int, running: int, failed: int) -> None:
        if self.bar is not None:
            self.bar.n = done
            self.bar.set_postfix_str(f"running {running}, failed {failed}")

    def write(self, log: Callable[[str], None], message: str) -> None:
        if self.bar is not None:
            self.bar.clear()
            log(message)
            self.bar.refresh()
        else:
            log(message)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def execute(
    specs: Iterable[RunSpec],
    contexts: ContextCache,
    executor: Executor | None = None,
    kind: str = "report",
    resume: bool = True,
    log: Callable[[str], None] = print,
    progress: bool = False,
    on_row: Callable[[str, dict], None] | None = None,
) -> tuple[dict[RunSpec, str], dict[str, dict], ExecutionStats]:
    """Key every spec on the driver, reuse stored identical runs (when `resume`), run the rest on `executor`, and store
    each finished row from the driver. Returns (spec → run key, run key → row, stats); failed specs have no row."""
    executor = executor or SequentialExecutor()
    started = time.perf_counter()
    keys: dict[RunSpec, str] = {}
    for spec in specs:
        keys.setdefault(spec, planned_key(contexts.get(spec), spec))
    stored = stored_runs() if resume else {}
    rows: dict[str, dict] = {}
    todo: list[RunSpec] = []
    todo_keys: set[str] = set()
    for spec, key in keys.items():
        if key in rows or key in todo_keys:
            continue  # one run serves every spec with its key (the size study's default-size runs are the main table's)
        if key in stored:
            rows[key] = stored[key]
            how = "stored, imported" if stored[key].get("imported_from") else "stored"
            log(_line(spec, stored[key], how))
            if on_row:
                on_row(key, stored[key])
        else:
            todo.append(spec)
            todo_keys.add(key)
    reused = len(rows)
    bar = _Bar(len(todo), f"runs ({executor.name.split(' ')[0]})", progress)
    failed: list[RunOutcome] = []

    def done(outcome: RunOutcome) -> None:
        key = keys[outcome.spec]
        if outcome.row is None:
            failed.append(outcome)
            bar.write(log, f"FAILED {outcome.spec.label}: {outcome.error}")
            return
        record(kind, outcome.row)  # the driver is the database's one writer
        rows[key] = outcome.row
        retried = f", attempt {outcome.attempts}" if outcome.attempts > 1 else ""
        bar.write(log, _line(outcome.spec, outcome.row, f"{outcome.row['seconds']:.0f}s{retried}"))
        if on_row:
            on_row(key, outcome.row)

    try:
        own = executor.run(todo, contexts, done, bar.status)
    except KeyboardInterrupt:
        bar.close()
        finished = len(rows) - reused
        log(f"interrupted: {finished} of {len(todo)} runs finished and are stored; re-run the same command to resume")
        raise
    finally:
        bar.close()
    stats = dataclasses.replace(
        own,
        planned=len(set(keys.values())),
        reused=reused,
        ran=len(todo) - len(failed),
        failed=failed,
        seconds=time.perf_counter() - started,
    )
    return keys, rows, stats


def error_line(exc: BaseException) -> str:
    """A run's error in one line: our own errors as they are, anything else with its type."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return text if isinstance(exc, FinemixError) else f"{type(exc).__name__}: {text}"


def _line(spec: RunSpec, row: dict, how: str) -> str:
    return (
        f"{spec.model:12s} seed {spec.defense.seed} n {spec.clean_size:4d} {spec.defense.method:20s} CACC {row['cacc']:.3f} "
        f"ASR {row['asr'] if row['asr'] is None else format(row['asr'], '.3f')} ρ {row['rho']} ({how})"
    )


def failure_error(stats: ExecutionStats) -> FinemixError:
    """One line for runs that failed, naming the first one's spec; the finished ones are already stored."""
    first = stats.failed[0]
    return FinemixError(
        f"{len(stats.failed)} of {stats.planned} runs failed (first: {first.spec.label}: {first.error}); "
        "the others are stored — fix the cause and re-run the same command to run only the missing ones"
    )
