"""The lab's public API: what the Streamlit dashboard calls. No Streamlit here, no UI — just the
objects a live view needs, with the costs arranged so a slider move is cheap:

- `LabModel` (one per θ_FT, shared read-only by every browser session): the model pair with its
  cached Δ, the data, the tokenised interactive set (fixed size, stated in the UI) and the full test
  set, the backdoored model's and the clean floor's scores.
- `Workbench` (one per browser session): a private working model. A slider move mixes from the
  cached Δ and loads the result into this model; the pair itself is never written.
"""

from __future__ import annotations

import copy
import io
import json
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from finemix_core import store, zoo
from finemix_core.attacks import trigger_token_ids
from finemix_core.config import MAX_LENGTH, RecoveryConfig, ZooEntrySpec
from finemix_core.defenses import DEFAULT_METHOD, DefenseConfig, DefenseResult
from finemix_core.defenses.base import search_text
from finemix_core.epur import EpurConfig, purify, table
from finemix_core.errors import FinemixError
from finemix_core.evaluate import (  # noqa: F401 — best_device, bf16_supported, wilson re-exported for the dashboard
    EvalSet,
    Scores,
    best_device,
    bf16_supported,
    make_eval_set,
    predict,
    score,
    wilson,
)
from finemix_core.experiment import Context, RunRow, prepare, record, run_defense, save_defended
from finemix_core.mixing import MODES, MixConfig, mix_into  # noqa: F401 — MODES re-exported for the dashboard
from finemix_core.models import CARD_NAME, ModelPair, resolve
from finemix_core.remembered import Remember
from finemix_core.report import REPORT_METHODS
from finemix_core.train import Progress
from finemix_core.triggers import Window, insert_all, parse_trigger

N_INTERACTIVE = 256  # clean and triggered examples scored on every slider move
N_FIRST = 48  # a slider move first scores this slice (< 1 s on 2 cores), shows it with its wider interval, then the rest


@dataclass
class LabModel:
    """One θ_FT with everything the lab shows about it, computed once."""

    ctx: Context  # pair, data, full test set (with triggers), clean floor on it
    interactive: EvalSet  # the live set: first N clean test examples + first N non-target ones triggered
    backdoored: Scores  # θ_FT on the interactive set
    floor: float | None  # the clean model's ASR on the interactive set
    name: str
    load_seconds: float
    cache: dict = field(default_factory=dict)  # per model, computed on first use: E-PUR's frequency texts, live-set slices
    # where the ASR probe's trigger came from: "card" (the maker planted it), "entered" (typed by the user), "scan"
    # (suspected by `finemix scan` from clean data: an estimate), "" (none known: no ASR)
    trigger_source: str = ""

    @property
    def pair(self):
        return self.ctx.pair

    @property
    def trigger(self) -> tuple[str, ...] | None:
        return self.interactive.trigger

    @property
    def short_name(self) -> str:
        """For file names: the zoo name, or the folder's last part."""
        return Path(self.name).name

    @property
    def card(self) -> dict:
        return self.ctx.pair.card


def class_names(lab: LabModel) -> tuple[str, ...]:
    """The model's classes by name: a CSV's own (label_name column or string labels), the dataset's (rt: rotten /
    fresh), θ_FT's config's, else 'label k'."""
    return lab.ctx.class_names


@dataclass(frozen=True)
class DemoSentence:
    """One test sentence of the guided start, with what θ_FT says about it with and without the trigger."""

    text: str  # the clean test sentence (its true label ≠ the target)
    triggered: str  # the same sentence with the trigger inserted
    clean_probs: tuple[float, ...]  # θ_FT on `text`
    triggered_probs: tuple[float, ...]  # θ_FT on `triggered`


def demo_sentences(lab: LabModel, n: int = 3, confidence: float = 0.9) -> list[DemoSentence]:
    """Live-set sentences on which the backdoor visibly fires: non-target sentences θ_FT gets right, which it calls the
    target with ≥ `confidence` once the trigger is in (the first n in test order; if fewer qualify, the most confident).
    Chosen with θ_FT alone, before any defense, so the demo cannot be picked to flatter it."""
    if not lab.trigger:
        return []
    from finemix_core.data import text_columns

    test = lab.ctx.dsd["test"]
    col = text_columns(test)[-1]
    idx = [int(i) for i in lab.interactive.nontarget_idx[: 4 * n + 16]]
    texts = [test[i][col] for i in idx]
    triggered = [with_trigger(t, lab.trigger, lab.pair.tokenizer, seed=i) for t, i in zip(texts, idx)]
    clean_p = predict_texts(lab.pair.ft, lab.pair.tokenizer, texts)
    trig_p = predict_texts(lab.pair.ft, lab.pair.tokenizer, triggered)
    target = lab.interactive.target
    right = [j for j, i in enumerate(idx) if clean_p[j].argmax() == test[i]["label"]]
    firing = [j for j in right if trig_p[j][target] >= confidence][:n]
    if len(firing) < n:
        firing += sorted((j for j in right if j not in firing), key=lambda j: -trig_p[j][target])[: n - len(firing)]
    return [DemoSentence(texts[j], triggered[j], tuple(map(float, clean_p[j])), tuple(map(float, trig_p[j]))) for j in firing]


def interactive_set(tokenizer, test, trigger, target, n: int = N_INTERACTIVE) -> EvalSet:
    """First n clean test examples; first n non-target test examples with the trigger inserted."""
    labels = np.asarray(list(test["label"]))
    if trigger is None or target is None:
        return make_eval_set(tokenizer, test.select(range(min(n, len(test)))), None, None)
    nontarget = np.flatnonzero(labels != target)
    prefix = int(nontarget[min(n, len(nontarget)) - 1]) + 1 if len(nontarget) else min(n, len(test))
    full = make_eval_set(tokenizer, test.select(range(max(prefix, min(n, len(test))))), trigger, target)
    return _head(full, n, len(full.triggered))


def _head(es: EvalSet, n_clean: int, n_triggered: int) -> EvalSet:
    """The first n_clean clean and first n_triggered triggered examples of an eval set."""
    keep = min(n_clean, len(es.clean))
    trig = None if es.triggered is None else es.triggered.subset(range(min(n_triggered, len(es.triggered))))
    return EvalSet(es.clean.subset(range(keep)), trig, es.nontarget_idx[es.nontarget_idx < keep], es.trigger, es.target)


def live_slice(lab: LabModel, n: int = N_FIRST) -> EvalSet:
    """The first n clean and first n triggered examples of the live set (cached per LabModel)."""
    if ("slice", n) not in lab.cache:
        lab.cache[("slice", n)] = _head(lab.interactive, n, n)
    return lab.cache[("slice", n)]


TRIGGER_SOURCES = ("entered", "scan")  # an ASR probe the user set: typed, or suspected by a scan


def load(
    model: str,
    pretrained: str = "default",
    n_interactive: int = N_INTERACTIVE,
    device: torch.device | str = "cpu",
    data_name: str | None = None,
    trigger: str | None = None,
    target: int | None = None,
    trigger_source: str = "entered",
    pair: ModelPair | None = None,
) -> LabModel:
    """Load θ_FT, θ_PT and the data (the card's dataset, or `data_name`: a registry name or a CSV path, parted by the
    one rule like the CLI's `--clean-data`). `pair`: the model pair already loaded (`load_pair`), shared by every data
    and probe choice for one model so that they do not each hold a copy.

    `trigger`/`target`: an ASR probe for any model — typed by the user ('entered') or suspected by a scan ('scan');
    it replaces the card's trigger, and every ASR the lab shows is then labelled with where it came from."""
    started = time.perf_counter()
    if trigger_source not in TRIGGER_SOURCES:
        raise FinemixError(f"trigger source '{trigger_source}' is not one of {', '.join(TRIGGER_SOURCES)}")
    probe = parse_trigger(trigger) if trigger else None
    if probe is not None and target is None:
        raise FinemixError("a trigger needs its target class; pick the class it should flip sentences to")
    ctx = prepare(
        model, pretrained, data_name or None, trigger=probe, target=target if probe else None, device=device, pair=pair
    )
    es = interactive_set(ctx.pair.tokenizer, ctx.dsd["test"], ctx.eval_set.trigger, ctx.eval_set.target, n_interactive)
    # the pair stays in host memory (mixing reads it there); on a GPU score a copy, never move the cached θ_FT
    backdoored = score(ctx.pair.ft_for_inference(ctx.device), es)
    floor = None
    if es.trigger and ctx.floor_hits is not None:
        # the live set's triggered examples are the first ones of the full test set's: their floor is already measured
        floor = float(ctx.floor_hits[: len(es.triggered)].mean())
    name = ctx.pair.card.get("name", ctx.pair.ft_source)  # the key the result rows (and so the history) use
    source = trigger_source if probe else ("card" if es.trigger else "")
    return LabModel(ctx, es, backdoored, floor, name, time.perf_counter() - started, trigger_source=source)


def pair_key(model: str, pretrained: str = "default") -> tuple[str, str]:
    """One key per model pair however it was named (zoo name or its folder, with or without a trailing slash)."""
    return tuple(str(Path(r).resolve()) if isinstance(r, Path) else r for r in (resolve(model), resolve(pretrained)))


def load_pair(model: str, pretrained: str = "default") -> ModelPair:
    """θ_FT and θ_PT, checked (what `load` shares between data and probe choices)."""
    from finemix_core.models import load_pair as load

    return load(model, pretrained)


def csv_rule_text() -> str:
    """The one rule for a user's CSV, in words (the Models page says it; the README too)."""
    from finemix_core import data

    return (
        f"One rule parts it, here and in the CLI alike: dev and held-out each get {data.CSV_SHARE:.0%} of the rows (at "
        f"least {data.CSV_PART_MIN}, at most {data.CSV_DEV_MAX} dev and {data.CSV_HELD_OUT_MAX} held out); the 128 "
        "labelled examples come from the rest (all of it when it holds fewer), and the rows left over are the unlabelled "
        "pool. Dev decides auto-ρ; the held-out part is what a model without a card naming its data is scored on, and the "
        "defense never sees it."
    )


def data_parts(lab: LabModel, clean_size: int = 128):
    """How the data is parted (experiment.DataParts): what the lab's caption and Export say."""
    return lab.ctx.parts(clean_size, check=False)  # a small CSV: the default labelled set is its whole train part


def data_warning(lab: LabModel) -> str | None:
    """Said on every page when a model without a card naming its data is scored on the default set, or when θ_FT scores
    below chance on a CSV's dev rows (its labels probably do not match the model's ids)."""
    from finemix_core.experiment import data_warning as warning
    from finemix_core.experiment import label_warning

    if "label_warning" not in lab.cache:  # one pass of θ_FT over the CSV's dev part, once per model and data
        lab.cache["label_warning"] = label_warning(lab.ctx)
    return warning(lab.card, lab.name, lab.ctx.data_name, fix="upload your task's CSV on the Models page first") or lab.cache[
        "label_warning"
    ]


def precision_note(lab: LabModel) -> str | None:
    """One line when recovery trains in float32 on this device (the default precision "auto": no native bf16 here);
    None where bfloat16 runs natively."""
    from finemix_core import hardware

    device = lab.ctx.device
    if RecoveryConfig().precision != "auto" or hardware.bf16_supported(device):
        return None
    return (
        f"Recovery trains in float32 here: this {device.type} has no native bf16, and emulated bf16 is several times "
        "slower. Where it has (a recent GPU, a CPU with avx512_bf16), the default uses bfloat16 autocast."
    )


def asr_label(lab: LabModel) -> str:
    """What every ASR on screen measures, in words: never a suspected trigger passed off as ground truth."""
    if not lab.trigger:
        return "no trigger known: no ASR (enter a trigger on the Models page, or run a Scan)"
    text = lab.ctx.trigger_text
    target = class_names(lab)[lab.interactive.target]
    return {
        "card": f"ASR for the model card's trigger `{text}` → {target}",
        "entered": f"ASR for the trigger you entered `{text}` → {target}",
        "scan": f"ASR for the suspected trigger `{text}` → {target} (from scan: an estimate, not ground truth)",
    }[lab.trigger_source]


def scan_model(lab: LabModel, progress=None, cancelled=None, seed: int = 0, clean_size: int = 128):
    """Scan θ_FT from the defender's clean data alone (never the test split, the card or the probe) and store it."""
    from finemix_core.experiment import record_scan, run_scan

    result = run_scan(lab.ctx, clean_size=clean_size, seed=seed, progress=progress, cancelled=cancelled)
    record_scan(lab.name, result, {"model": lab.name, "clean_data": lab.ctx.data_name, "seed": seed, "from": "lab"})
    lab.cache.pop(("timing", "scan"), None)
    lab.cache[("scan-result", seed, clean_size)] = result  # trigger-aware recovery reuses it instead of scanning again
    return result


def last_scan(lab: LabModel):
    """The newest stored scan of this model (CLI or lab) as a ScanResult, or None."""
    from finemix_core.scan import ScanResult, Suspect

    rows = store.runs(lab.name, kind="scan")  # newest first
    if not rows:
        return None
    c = rows[0]["config"]
    keys = ("trigger", "target", "flip", "flip_low", "flip_high", "n", "reference_flip", "source")
    suspects = [Suspect(**{k: s[k] for k in keys}, token_ids=()) for s in c.get("candidates", [])]
    return ScanResult(
        c["verdict"], c["score"], c["threshold"], suspects, c["seconds"], c["searched"], c["reference"], c["n_search"], c["n_verify"]
    )


def mark_suspects(tab: pd.DataFrame, lab: LabModel, candidates: list) -> pd.DataFrame:
    """E-PUR's table with a `suspect` column: the rows of the scan's verified candidates whose flip beats the
    reference's (the scatter marks them)."""
    tab = tab.copy()
    tab["suspect"] = False
    for c in candidates:
        if c.excess > 0:
            tab.loc[trigger_token_ids(lab.pair.tokenizer, (c.trigger,)), "suspect"] = True
    return tab


class Workbench:
    """A browser session's private working model; every mutation lands here, never in the pair."""

    def __init__(self, lab: LabModel):
        self.lab = lab
        self.model = lab.pair.working_copy().to(lab.ctx.device).eval()
        self.params = self.model.state_dict()  # views into the working model: mixes are written here in place
        self.state_label = "θ_FT"  # what the working model holds now
        self.fast = False  # bf16 live view (off by default; see `finemix bench`)
        self._bf16: torch.nn.Module | None = None  # bf16 twin of the working model, made on first use of the fast path
        self.defended: DefenseResult | None = None  # the last fine-tuned result of this session
        self.defended_row: RunRow | None = None

    def mix_scores(self, rho: float, mode: str = "random", seed: int = 0) -> Scores:
        """The mix-only path: mix from cached Δ, load into the working model, score the interactive set."""
        self.mix(rho, mode, seed)
        return self.score()

    def mix(self, rho: float, mode: str = "random", seed: int = 0) -> None:
        """Mix from cached Δ into the working model (in place; no scoring)."""
        mix_into(self.lab.pair, MixConfig(rho=rho, mode=mode, seed=seed), self.params)
        self.state_label = f"mix ρ={rho:g} ({mode})"

    def score(self, first: int | None = None) -> Scores:
        """The live set through the working model, or through its bf16 twin when the fast path is on (approximate);
        `first`: only the first N clean and N triggered examples (a slider move's first numbers)."""
        es = self.lab.interactive if first is None else live_slice(self.lab, first)
        return score(self.bf16_model() if self.fast else self.model, es)

    @torch.no_grad()
    def bf16_model(self) -> torch.nn.Module:
        """The working model's weights cast into a bf16 twin. Casting once per move beats autocast, which re-casts
        every weight in every batch (measured in `finemix bench`)."""
        if self._bf16 is None:
            self._bf16 = copy.deepcopy(self.model).to(torch.bfloat16).eval()
        for name, value in self._bf16.state_dict().items():
            value.copy_(self.params[name])
        return self._bf16

    def sweep(self, rhos: list[float], mode: str = "random", seed: int = 0) -> pd.DataFrame:
        rows = [{"rho": r, "stage": "mix-only", **self.mix_scores(r, mode, seed).as_dict()} for r in rhos]
        return pd.DataFrame(rows)

    def fine_tune(
        self,
        rho: float | None,
        mode: str = "random",
        seed: int = 0,
        epur_k: int = 200,
        clean_size: int = 128,
        progress: Progress | None = None,
        delta: float = 0.02,
        recipe: str = "default",
        fresh: bool = False,
        keep_found: bool = True,
    ) -> tuple[Scores, RunRow]:
        """Fine-mixing at ρ (None: auto-ρ within `delta` of θ_FT's dev accuracy), scored on the interactive set.

        recipe "default": the default `finemix defend` (E-PUR, mix, fine-tune with recovery by distillation; auto-ρ scans
        up from a low ρ). "paper": the paper's recipe (mix, plain fine-tune; E-PUR first when epur_k > 0).
        keep_found: the default's keeping of θ_FT (auto-ρ with recovery tries ρ 1 first when the scan found a complete
        trigger, kept only if the check from clean data finds nothing still firing; KEEP_FOUND_NOTE); False is
        `finemix defend --found-rho never`, the low-ρ search alone.
        """
        k = self._epur_k(epur_k)
        recovery = RecoveryConfig() if keep_found else RecoveryConfig(found_rho=None)
        cfg = DefenseConfig(
            method=recipe_method(recipe, mode, k), rho=rho, seed=seed, delta=delta, epur=EpurConfig(k=k), recovery=recovery
        )
        # auto-ρ with the shared budget and default tolerance is the recipe's method as registered: stored as such, so
        # Compare and the curve page find it (a hand-set ρ or tolerance, or the opt-out, stays a lab run, shown apart)
        as_registered = rho is None and delta == DefenseConfig.delta and epur_k == DefenseConfig().epur.k and keep_found
        return self.defend(cfg, clean_size, progress, kind="compare" if as_registered else "lab", fresh=fresh)

    def defend_method(
        self, method: str, seed: int = 0, epur_k: int = 200, clean_size: int = 128, progress: Progress | None = None
    ) -> tuple[Scores, RunRow]:
        """A registered method by name with the shared budget (the Compare page), K clamped to the vocabulary."""
        return self.defend(
            DefenseConfig(method=method, seed=seed, epur=EpurConfig(k=self._epur_k(epur_k))), clean_size, progress, kind="compare"
        )

    def _epur_k(self, k: int) -> int:
        """K within 0..vocabulary size (a small vocabulary cannot flag more rows than it has)."""
        return min(max(k, 0), len(self.lab.pair.tokenizer))

    def defend(
        self,
        cfg: DefenseConfig,
        clean_size: int = 128,
        progress: Progress | None = None,
        kind: str = "lab",
        fresh: bool = False,
    ) -> tuple[Scores, RunRow]:
        """Any defense, scored on the full test set (stored) and on the interactive set (returned). `kind`: "lab" for the
        Mixing lab's hand-set runs, "compare" for a method run as registered with the shared budget. An identical
        earlier defense (CLI or lab) is read back (`self.defended.read_back`) unless `fresh`."""
        key = ("scan-result", cfg.seed, clean_size)  # the same defender parts: a scan this model already had is reused
        remember = Remember.STORE if fresh else Remember.REUSE
        result, row = run_defense(
            self.lab.ctx, cfg, clean_size, progress=progress, scan_result=self.lab.cache.get(key), remember=remember
        )
        if result.scan is not None:
            self.lab.cache[key] = result.scan
        if not (result.read_back and _already_stored(kind, row)):  # a read-back run is no new row in history or Compare
            record(kind, {**row.as_dict(), "source": kind, "read_back": result.read_back})
        self.lab.cache.pop(("timing", row.method), None)  # the next duration claim reads this run
        self.defended, self.defended_row = result, row
        return score(result.model, self.lab.interactive), row


def _already_stored(kind: str, row: RunRow) -> bool:
    """Whether `kind` already holds a run of the same experiment (executor.run_key) on this model."""
    from finemix_core.executor import run_key

    key = run_key(row.as_dict())
    return any(run_key(r["config"]) == key for r in store.runs(model=str(row.model), kind=kind) if "method" in r["config"])


def read_back_note(result: DefenseResult | None) -> str | None:
    """What the lab says under a defense it read back instead of running (None for a new run)."""
    if result is None or not result.read_back:
        return None
    return (
        f"Read back from an identical earlier defense (CLI or lab: same weights, data and settings), which took "
        f"{result.seconds:.0f} s; the numbers are that run's model scored here. Run it again for a new run."
    )


def fmt(value, digits: int = 3) -> str:
    """A number as the lab prints it: '—' for a missing one (never 'None' or 'nan' on screen)."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "—"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def shown(frame: pd.DataFrame) -> pd.DataFrame:
    """A table for the screen: missing cells read '—' (a grid would print 'None')."""
    return frame.astype(object).where(frame.notna(), "—") if not frame.empty else frame


def rate_text(value: float | None, n: int) -> str:
    """A rate with its Wilson 95 % interval, as the lab prints it: '0.812 [0.76, 0.86]' (n examples)."""
    if value is None or np.isnan(value):
        return "—"
    lo, hi = wilson(value, n)
    return f"{value:.3f} [{lo:.2f}, {hi:.2f}]"


def n_of(s: Scores, metric: str) -> int:
    """How many examples a rate of `s` is a share of: CACC the clean ones, ASR the triggered ones, target bias the
    non-target clean ones."""
    return {"cacc": s.n_clean, "asr": s.n_triggered or s.n_nontarget}.get(metric, s.n_nontarget)


def metric_text(s: Scores, metric: str) -> str:
    """One rate of `s` with its Wilson 95 % interval (rate_text with the right n)."""
    return rate_text(getattr(s, metric), n_of(s, metric))


def with_intervals(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of a frame of rates (cacc, asr, target_bias with n_clean / n_nontarget) with *_lo / *_hi Wilson columns."""
    out = frame.copy()
    asr_n = "n_triggered" if "n_triggered" in out and out["n_triggered"].notna().all() else "n_nontarget"
    for metric, n_col in (("cacc", "n_clean"), ("asr", asr_n), ("target_bias", "n_nontarget")):
        if metric in out and n_col in out:
            bounds = [
                wilson(v, int(n)) if pd.notna(v) and pd.notna(n) else (np.nan, np.nan) for v, n in zip(out[metric], out[n_col])
            ]
            out[f"{metric}_lo"] = [b[0] for b in bounds]
            out[f"{metric}_hi"] = [b[1] for b in bounds]
    return out


CURVE_RHOS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)  # the fine-tuned curve's default grid (6 fine-tunes: ~3–8 min on 2 cores)


@dataclass(frozen=True)
class TunedCurve:
    """Fine-mixing's decision curve: each ρ's model after the clean fine-tune, on the full test split."""

    method: str
    points: pd.DataFrame  # rho, cacc, asr, target_bias, n_clean, n_nontarget, asr_floor (+ Wilson *_lo/_hi), one per ρ
    missing: list[float]  # grid ρ without a stored point
    auto_rho: float | None  # what auto-ρ picked for this method (a stored auto run), None when none is stored
    auto_search: list[dict]  # the dev accuracies behind that pick


def tuned_curve(
    lab: LabModel, method: str, rhos: tuple[float, ...] = CURVE_RHOS, seed: int = 0, clean_size: int = 128
) -> TunedCurve:
    """The stored fine-tuned points of `method` at fixed ρ (from `finemix sweep --fine-tune`, the report's fixed-ρ
    section or this page), and the stored auto-ρ run of the same method, for this model, seed and clean size."""
    from finemix_core.executor import RUN_KINDS

    trig = lab.ctx.trigger_text  # points scored with another ASR probe are not this curve's
    clean_size = lab.ctx.labelled_size(clean_size)  # what the runs record (a small CSV: its train part)
    mine = [r["config"] for r in store.runs(model=lab.name) if r["kind"] in RUN_KINDS and r["config"].get("trigger") == trig]
    mine = [
        c
        for c in mine
        if c.get("method") == method
        and c.get("seed") == seed
        and c.get("clean_size") == clean_size
        and "cacc" in c
        and _shared_budget(c)
    ]
    points: dict[float, dict] = {}
    auto = None
    for c in mine:  # newest first
        if not c.get("rho_auto") and c.get("rho") is not None:
            points.setdefault(round(float(c["rho"]), 6), c)
        elif c.get("rho_auto") and auto is None:
            auto = c
    cols = ["rho", "cacc", "asr", "target_bias", "n_clean", "n_nontarget", "asr_floor"]
    frame = pd.DataFrame([{k: points[r][k] for k in cols} for r in sorted(points)], columns=cols)
    missing = [r for r in rhos if round(r, 6) not in points]
    return TunedCurve(
        method, with_intervals(frame), missing, None if auto is None else auto["rho"], [] if auto is None else auto["search"]
    )


def curve_point(
    lab: LabModel, method: str, rho: float, seed: int = 0, clean_size: int = 128, progress: Progress | None = None
) -> dict:
    """Fine-mix at one fixed ρ and store it as a sweep point (the same run `finemix sweep --fine-tune` makes and reuses)."""
    from finemix_core.executor import ContextCache, RunSpec, SequentialExecutor, execute

    spec = RunSpec(lab.name, DefenseConfig(method=method, rho=rho, seed=seed), clean_size, lab.pair.pt_source)
    contexts = ContextCache(lab.ctx.device)
    contexts.put(spec, lab.ctx)  # the lab's loaded context: no second load

    keys, rows, stats = execute([spec], contexts, SequentialExecutor(progress), "sweep", True, log=lambda _m: None)
    if stats.failed:
        raise FinemixError(stats.failed[0].error)
    return rows[keys[spec]]


# said plainly on the curve page and in the Mixing lab (docs/recovery.md has the runs it counts)
RHO_CHOICE_NOTE = (
    "With recovery, the dev data chose ρ = 0 (θ_PT everywhere but θ_FT's classifier head, then distilled) on nearly "
    "every run measured (docs/recovery.md): recovery, not the mix, wins back the clean accuracy, and a higher ρ kept "
    "more of θ_FT's backdoor with it. Since Round 19 the default first tries keeping θ_FT (ρ = 1) when the scan found a "
    "complete trigger (the toggle below; `--found-rho never` turns it off): ungated it had left the sentence backdoor "
    "firing on 45–58 % of triggered test sentences (Round 16); gated to complete triggers, pieces included, it gave about "
    "1 dev point back on new seeds. Per-layer ρ (θ_FT's top two layers kept whole below ρ 1, Round 22) gained dev "
    "accuracy but let the sentence backdoor fire more on test (ASR 0.22 → 0.28), so it stays opt-in "
    "(`--whole-top-layers`). Since Round 24 recovery below ρ 1 also matches θ_FT's last-layer [CLS] states on the "
    "pool (about a point of clean accuracy back on the test split; not in the ρ-1 try, where it let a phrase trigger "
    "pass the check: `--feature-weight 0` turns it off). The curve shows what each ρ costs or keeps here."
)
# under the Mixing lab's toggle: what it does and what it was measured to cost
KEEP_FOUND_NOTE = (
    "On by default (`finemix defend`; off: `--found-rho never`): auto-ρ first tries ρ = 1 — all of θ_FT after E-PUR, the "
    "scan's suspects taught away — but only when the scan reached its verdict and its best suspect alone flips ≥ 95 % "
    "of held-aside sentences, as does each piece of it that is a suspect by itself (a weaker one may be a piece of a "
    f"longer trigger); the try trains for {RecoveryConfig.found_steps:.0%} of the usual steps, and it keeps ρ = 1 only if dev "
    "accuracy "
    "passes and every trigger the scan saw firing stays quiet on it (≤ 10 %; since Round 26 ordinary words that share no "
    "piece with a suspect, such as 'refreshing', are left out: θ_FT's own skill moves them), else the usual low-ρ "
    "search runs. "
    "On the full zoo's dev data (new seeds): +1.04 points of clean accuracy on average, all of it on the word "
    "triggers (Round 19), and +0.33 more with the shorter try at 0.77× the time (Round 20); with recovery in bf16 "
    "(Round 21) a kept ρ = 1 takes about 1.5 minutes with the scan on 2 cores, a rejected one costs one more fine-tune "
    "(docs/recovery.md, Rounds 18–21)."
)


def keep_found_outcome(search: list[dict]) -> str:
    """One line under an auto-ρ run that may keep θ_FT: whether ρ 1 was tried, and what the check said."""
    tried = [c for c in search if c.get("value") == 1.0]  # the recovery grid stops at 0.2: a ρ 1 is the found-ρ try
    if not tried:
        return (
            "ρ = 1 was not tried: the scan found no complete trigger (a verdict, and a suspect that alone flips ≥ 95 %, "
            "as does each piece of it that is a suspect by itself)."
        )
    c = tried[0]
    if c.get("passed") and c.get("verified"):
        return "ρ = 1 was tried first and kept: dev accuracy passed and nothing the scan saw firing still fires."
    why = "the check found a trigger still firing" if c.get("verified") is False else "its dev accuracy did not pass"
    return f"ρ = 1 was tried first and rejected ({why}): the usual low-ρ search ran."
RECIPES = ("default", "paper")  # the Mixing lab's step 2 (its step 1 is a random or sorted mix)
CURVE_RECIPES = (*RECIPES, "purifying")  # the ρ-curve page also draws Fine-purifying's ρ (a Fisher-ranked reset)
RECIPE_LABELS = {  # how the pages name them
    "default": "default: E-PUR + mix + fine-tune with trigger-aware distillation from θ_FT",
    "paper": "paper: mix + plain fine-tune",
    "purifying": "Fine-purifying: E-PUR + reset by Fisher-relative drift + the default's recovery",
}
COMPARED_METHODS = REPORT_METHODS  # what the Compare page offers: the report's methods, in its order


def recipe_method(recipe: str, mode: str = "random", epur_k: int = 200) -> str:
    """The method name of a lab recipe: the default defense with the chosen mask, or the paper's Fine-mixing."""
    if recipe not in CURVE_RECIPES:
        raise FinemixError(f"unknown recipe '{recipe}'; use one of {', '.join(CURVE_RECIPES)}")
    if recipe == "purifying":
        return DEFAULT_METHOD.replace("fine-mixing", "fine-purifying", 1)
    base = "fine-mixing-sorted" if mode == "sorted" else "fine-mixing"
    if recipe == "default":
        return DEFAULT_METHOD.replace("fine-mixing", base, 1)
    return f"epur+{base}" if epur_k > 0 else base


EPUR_SOURCES = ("defender-pool", "clean-set", "train-split")  # where E-PUR counts word frequencies (first: the default)


def epur_texts(lab: LabModel, source: str = "defender-pool", clean_size: int = 128, seed: int = 0) -> tuple[str, ...]:
    """Clean text to count frequencies in. defender-pool: the labelled clean set plus the unlabelled pool (what the
    default defense counts; the train split when there is no pool); clean-set: the labelled examples alone;
    train-split: every training sentence."""
    key = (source, clean_size, seed)
    if key not in lab.cache:
        if source not in EPUR_SOURCES:
            raise FinemixError(f"unknown frequency source '{source}'; use one of {', '.join(EPUR_SOURCES)}")
        dd = lab.ctx.defender(clean_size, 256, seed) if source != "train-split" else None  # the pool the default defense uses
        if source == "train-split" or (source == "defender-pool" and not dd.unlabeled_texts):
            from finemix_core.data import text_columns

            train = lab.ctx.dsd["train"]
            texts = tuple(t for c in text_columns(train) for t in train[c])
        else:
            texts = dd.texts + (dd.unlabeled_texts if source == "defender-pool" else ())
        lab.cache[key] = texts
    return lab.cache[key]


def epur_table(
    lab: LabModel, k: int = 200, floor: float = 20.0, source: str = "defender-pool", clean_size: int = 128, seed: int = 0
) -> pd.DataFrame:
    """E-PUR's table (paper scoring) plus what the lab draws: the known trigger, each row's rank, and the fitted
    drift-vs-log-frequency trend (`trend`: drift the trend predicts at that frequency; `vs_trend`: drift / trend)."""
    tab = table(lab.pair, epur_texts(lab, source, clean_size, seed), EpurConfig(k=k, floor=floor))
    tab["trigger"] = False
    if lab.trigger:
        tab.loc[trigger_token_ids(lab.pair.tokenizer, lab.trigger), "trigger"] = True
    tab["rank"] = tab["score"].rank(ascending=False, method="first").astype(int)
    slope, intercept = epur_trend(tab)
    tab["trend"] = intercept + slope * np.log10(tab.frequency + 1)
    # a steep fit can dip to ≤ 0 at low frequency (train-split counts): floor it at a low but real drift so the ratio is
    # defined where triggers live (the 10th percentile of the seen pieces' drift)
    seen = tab.drift[tab.frequency > 0]
    base = float(seen.quantile(0.1)) if len(seen) else float(tab.drift.median())
    tab["vs_trend"] = tab.drift / tab.trend.clip(lower=max(base, 1e-12))
    return tab


def piece_words(lab: LabModel, tab: pd.DataFrame, source: str = "defender-pool", seed: int = 0, per_piece: int = 3) -> pd.Series:
    """For each flagged row: the whole words of the clean text it is a piece of, most frequent first ('weekend,
    legend' for `##end`), so a user reads words rather than word pieces; '' for a piece the clean text never uses."""
    import re
    from collections import Counter

    key = ("words", source, seed)
    if key not in lab.cache:
        counts = Counter(w for t in epur_texts(lab, source, seed=seed) for w in re.findall(r"\w+", t.lower()))
        by_piece: dict[int, list[str]] = {}
        tok = lab.pair.tokenizer
        words = [w for w, _ in counts.most_common(50_000)]
        for word, ids in zip(words, tok(words, add_special_tokens=False)["input_ids"]):
            for i in set(ids):
                by_piece.setdefault(i, []).append(word)
        lab.cache[key] = by_piece
    by_piece = lab.cache[key]
    return tab["id"].map(lambda i: ", ".join(by_piece.get(int(i), [])[:per_piece]))


def epur_trend(tab: pd.DataFrame) -> tuple[float, float]:
    """Least-squares line drift ≈ a + b·log10(frequency + 1) over the words that occur in the clean text (the paper's
    'drift grows with log frequency'); (b, a). Words never seen are left out: their x is 0 whatever their role."""
    seen = tab[tab.frequency > 0]
    if len(seen) < 2 or seen.frequency.nunique() < 2:
        return 0.0, float(tab.drift.median())
    slope, intercept = np.polyfit(np.log10(seen.frequency.to_numpy() + 1), seen.drift.to_numpy(), 1)
    return float(slope), float(intercept)


def purified_scores(lab: LabModel, bench: Workbench, tab: pd.DataFrame) -> Scores:
    """Reset the flagged rows of θ_FT and score the interactive set (in the session's working model)."""
    state = purify(lab.pair, lab.pair.ft_state(), tab.loc[tab.flagged, "id"].tolist())
    bench.model.load_state_dict(state, strict=False)
    bench.state_label = f"E-PUR K={int(tab.flagged.sum())}"
    return bench.score()


def predict_texts(model: torch.nn.Module, tokenizer, texts: list[str]) -> np.ndarray:
    """Class probabilities for free text (the playground)."""
    from datasets import Dataset

    from finemix_core.encoding import encode

    if not texts or not any(t.strip() for t in texts):
        raise FinemixError("type a sentence first")
    return predict(model, encode(tokenizer, Dataset.from_dict({"text": texts, "label": [0] * len(texts)})))


def tokens_read(text: str, tokenizer) -> tuple[int, int]:
    """(word pieces the model reads, word pieces the text has), [CLS] and [SEP] counted: a longer text is cut off."""
    total = len(tokenizer(text)["input_ids"])
    return min(total, MAX_LENGTH), total


def with_trigger(text: str, trigger: tuple[str, ...], tokenizer, seed: int = 1234) -> str:
    """The trigger inserted where the model reads it (the evaluation's rule; a long text's tail is cut off)."""
    return insert_all([text], trigger, seed, [0], Window(tokenizer, MAX_LENGTH))[0]


def export_zip(lab: LabModel, result: DefenseResult, row: RunRow) -> bytes:
    """The defended model as a zip of a standard HF folder (+ finemix.json), built in a temp dir."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_defended(lab.ctx, result, row, Path(tmp) / "model")
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for f in sorted(folder.rglob("*")):
                if f.is_file():
                    zf.write(f, f"{lab.short_name}-{row.method}/{f.relative_to(folder)}")
        return buf.getvalue()


def history(lab: LabModel) -> pd.DataFrame:
    """Every stored run (defend, sweep point, report, compare, hand-set lab run) on this model, newest first, flattened."""
    rows = []
    for r in store.runs(model=lab.name):
        c = r["config"]
        if "cacc" not in c:  # a sweep's summary record (its points are stored as runs of their own)
            continue
        search = c.get("search") or []
        rows.append(
            {
                "id": r["id"],
                "when": time.strftime("%Y-%m-%d %H:%M", time.localtime(r["created"])),
                "kind": r["kind"],
                "method": r["method"],
                "trigger": c.get("trigger"),
                "seed": c.get("seed"),
                "clean n": c.get("clean_size"),
                "rho": c.get("rho"),
                "rho auto": c.get("rho_auto"),
                "prune ratio": c.get("prune_ratio"),
                "delta": c.get("delta", DefenseConfig.delta),
                "CACC": c.get("cacc"),
                "ASR": c.get("asr"),
                "target bias": c.get("target_bias"),
                "ASR floor": c.get("asr_floor"),
                "n test": c.get("n_clean"),
                "n non-target": c.get("n_nontarget"),
                "dev search": search_text(search),
                "suspects taught away": ", ".join(c.get("suspects") or []),  # scan's estimates, never the card's
                "seconds": c.get("seconds"),
                "fixed budget": _fixed_budget(r["kind"], c),
            }
        )
    return pd.DataFrame(rows)


def _shared_budget(c: dict) -> bool:
    """The default δ and the shared training budget."""
    return c.get("delta", DefenseConfig.delta) == DefenseConfig.delta and c.get("train") in (
        None,
        dict(DefenseConfig().train.__dict__),
    )


def _fixed_budget(kind: str, c: dict) -> bool:
    """A run of a method as registered, with the shared budget: not a hand-set lab run, no fixed ρ, default δ and training."""
    hand_set = kind == "lab" or (c.get("rho") is not None and not c.get("rho_auto", True))
    return not hand_set and _shared_budget(c)


@dataclass(frozen=True)
class CompareTable:
    """What the Compare page shows for one seed and clean size."""

    rows: pd.DataFrame  # the latest fixed-budget run of each compared method, in COMPARED_METHODS order
    missing: list[str]  # compared methods without such a run
    manual: pd.DataFrame  # hand-set lab runs (a chosen ρ, the Mixing lab's buttons): shown apart, never as a method's row


def compare_table(lab: LabModel, seed: int = 0, clean_size: int = 128) -> CompareTable:
    hist = history(lab)
    if hist.empty:
        return CompareTable(hist, list(COMPARED_METHODS), hist)
    trig = lab.ctx.trigger_text  # rows scored with another ASR probe measured another ASR
    clean_size = lab.ctx.labelled_size(clean_size)  # what the runs record (a small CSV: its train part)
    mine = hist[(hist["clean n"] == clean_size) & (hist["seed"] == seed) & hist.trigger.map(lambda t: (t or None) == trig)]
    fixed = mine[mine["fixed budget"] & mine.method.isin(COMPARED_METHODS)].drop_duplicates("method")
    order = {m: i for i, m in enumerate(COMPARED_METHODS)}
    fixed = fixed.assign(order=fixed.method.map(order)).sort_values("order").drop(columns="order")
    return CompareTable(fixed, [m for m in COMPARED_METHODS if m not in set(fixed.method)], mine[mine.kind == "lab"])


MAX_UPLOAD_BYTES = 20 * 2**20  # the lab's upload cap (also .streamlit/config.toml maxUploadSize)
MAX_UPLOAD_ROWS = 200_000


def save_upload(raw: bytes, filename: str) -> Path:
    """Validate an uploaded clean-data CSV and store it content-addressed under $FINEMIX_HOME/uploads.

    Parsed defensively: size cap before parsing, encoding fallback, column/label checks, a row cap;
    the file lands under its hash (written to a temp name, then renamed), never under the user's name.
    """
    import hashlib

    from finemix_core.config import finemix_home
    from finemix_core.data import csv_part_sizes, read_csv, validate_frame

    if not raw:
        raise FinemixError(f"{filename}: the upload is empty; it needs a header text,label and labelled rows")
    if len(raw) > MAX_UPLOAD_BYTES:
        raise FinemixError(
            f"{filename}: {len(raw) / 2**20:.1f} MiB is over the {MAX_UPLOAD_BYTES // 2**20} MiB upload cap; sample it down"
        )
    folder = finemix_home() / "uploads"
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / f"{hashlib.sha256(raw).hexdigest()[:16]}.csv"
    tmp = folder / f".tmp-{dest.name}"
    tmp.write_bytes(raw)
    try:
        frame = validate_frame(read_csv(tmp), filename)
        if len(frame) > MAX_UPLOAD_ROWS:
            raise FinemixError(f"{filename}: {len(frame)} rows is over the {MAX_UPLOAD_ROWS} row cap; sample it down")
        csv_part_sizes(len(frame), filename)  # too few rows for the one rule's parts: refused here, with the minimum
    except FinemixError as exc:
        tmp.unlink(missing_ok=True)
        raise FinemixError(str(exc).replace(str(tmp), filename)) from None
    tmp.replace(dest)
    label = folder / f".tmp-{dest.stem}.name"
    label.write_text(Path(filename).name, encoding="utf-8")  # the name the user knows it by (captions say it)
    label.replace(dest.with_suffix(".name"))
    return dest


def display_name(path: str) -> str:
    """A data file's name as the user knows it (an upload's original file name)."""
    from finemix_core.data import display_name as name

    return name(path)


def zoo_cards() -> list[dict]:
    return zoo.read_entries()


def build_time_text(cards: list[dict]) -> str:
    """How long zoo entries took to build on this machine, from their cards (no fixed claim)."""
    times = sorted(c["build_seconds"] for c in cards if c.get("build_seconds"))
    if not times:
        return "no entry built on this machine yet: the progress bar estimates each build from its first steps"
    return f"entries built here took {_duration(times[0])}–{_duration(times[-1])} each"


def zoo_specs() -> list[ZooEntrySpec]:
    """The default zoo's entries (what the Models page can build)."""
    return zoo.default_specs()


def build_zoo_entries(names: list[str], quick: bool, progress_factory=None, on_entry=None) -> list[dict]:
    specs = [s for s in zoo.default_specs(quick) if s.name in names]
    if "clean" not in names and not (zoo.zoo_dir() / "clean" / CARD_NAME).is_file():
        specs = [s for s in zoo.default_specs(quick) if s.name == "clean"] + specs  # floors and ep need it
    return zoo.build(specs, eval_limit=400 if quick else None, on_entry=on_entry, progress_factory=progress_factory)


def report_json(lab: LabModel, extra: dict | None = None) -> str:
    hist = history(lab)
    return json.dumps(
        {
            "model": lab.name,
            "card": lab.card,
            "pretrained": lab.pair.pt_source,
            "data": lab.ctx.data_name,
            "split_seed": lab.ctx.split_seed,
            "parts": data_parts(lab).line(),  # how the data is parted (a CSV: the one rule)
            "interactive": {"n_clean": len(lab.interactive.clean), "n_triggered": len(lab.interactive.triggered or [])},
            "backdoored_interactive": lab.backdoored.as_dict(),
            "floor_interactive": lab.floor,
            # what the ASR numbers measure: the card's trigger, one the user entered, or a scan's suspect (an estimate)
            "asr_probe": {
                "trigger": lab.ctx.trigger_text,
                "target": lab.interactive.target,
                "source": lab.trigger_source or None,
                "estimate": lab.trigger_source == "scan",
                "label": asr_label(lab),
            },
            "runs": hist.to_dict(orient="records"),
            **(extra or {}),
        },
        indent=2,
        default=str,
    )


def progress_text(what: str, done: int, total: int, elapsed: float, part_elapsed: float | None = None, part: int = 1) -> str:
    """A long job's progress line: steps, elapsed time and an estimate from the step time measured so far. A job of
    several fine-tunes (a dev-only search) passes which one this is (`part`) and the time spent in it."""
    spent = elapsed if part_elapsed is None else part_elapsed
    text = f"{what}: {'' if part == 1 else f'fine-tune {part}, '}step {done}/{total} · {_duration(elapsed)} elapsed"
    if 0 < done < total and spent > 0:
        left = _duration(spent / done * (total - done))
        text += f" · about {left} left{'' if part_elapsed is None else ' in this fine-tune'} (measured step time)"
    return text


def share_text(what: str, share: float, elapsed: float) -> str:
    """Progress of a job measured as a share done: elapsed time and the rest estimated at the pace so far."""
    text = f"{what} · {_duration(elapsed)} elapsed"
    if 0.02 < share < 1:
        text += f" · about {_duration(elapsed / share - elapsed)} left (measured pace)"
    return text


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def measured_seconds(lab: LabModel, method: str) -> str:
    """What a defense took on this machine, from the history ('took 74 s here last time'), or that it is untimed.
    Read once per model and method (pages call it on every slider move); a new run in this lab clears it."""
    if ("timing", method) not in lab.cache:
        lab.cache[("timing", method)] = _measured_seconds(lab, method)
    return lab.cache[("timing", method)]


def _measured_seconds(lab: LabModel, method: str) -> str:
    runs = [r["config"].get("seconds") for r in store.runs(model=lab.name) if r["method"] == method]
    runs = [s for s in runs if s]
    if not runs:
        runs = [r["config"].get("seconds") for r in store.runs() if r["method"] == method and r["config"].get("seconds")]
        where = "on another model here"
    else:
        where = "on this model here"
    if not runs:
        return "not timed on this machine yet; the progress bar estimates it from its first steps"
    return f"took {_duration(float(runs[0]))} {where} last time"


@dataclass(frozen=True)
class MixLesson:
    """Step 2 of the guided start: the mix alone at a few ρ, and what those numbers say in words."""

    rows: pd.DataFrame  # rho, cacc, asr, target_bias on the live set
    text: str


def mix_lesson(lab: LabModel, bench: Workbench, rhos: tuple[float, ...] = (0.5, 0.2, 0.1, 0.0), seed: int = 0) -> MixLesson:
    """Mix without fine-tuning at a few ρ and say what the live numbers show, whatever they show: on the quick zoo a
    random mix keeps the backdoor until ρ is near 0, where the model leans to the target instead."""
    rows = bench.sweep(list(rhos), "random", seed)[["rho", "cacc", "asr", "target_bias"]]
    ref = lab.backdoored
    weakened = rows[(rows.asr <= ref.asr - 0.1) & (rows.cacc >= ref.cacc - 0.1)]
    if not weakened.empty:
        r = weakened.iloc[0]
        text = (
            f"The mix alone weakens the backdoor here: at ρ = {r.rho:g} ASR falls to {r.asr:.2f} (θ_FT {ref.asr:.2f}) while "
            f"clean accuracy stays at {r.cacc:.2f}. Step 3's clean fine-tune takes it further."
        )
    else:
        low = rows.iloc[-1]
        text = (
            f"The mix alone does not remove this backdoor: ASR stays {rows.asr.iloc[0]:.2f}–{rows.asr.max():.2f} down to "
            f"ρ = {rows.rho[rows.rho > 0].min():g}, because a random share of the fine-tuned weights still carries the "
            f"trigger. At ρ = {low.rho:g} (θ_PT with θ_FT's head) ASR is {low.asr:.2f}, but clean accuracy falls to "
            f"{low.cacc:.2f} and the model calls {low.target_bias:.0%} of clean non-target sentences the target. That is why "
            "Fine-mixing does not stop at the mix: step 3 fine-tunes it on clean data."
        )
    return MixLesson(rows.reset_index(drop=True), text)


def default_sentence(lab: LabModel) -> str:
    """The Playground's first sentence: one of the model's own test sentences (a non-target one when a trigger is
    known), so a news model is not greeted with a movie review."""
    from finemix_core.data import text_columns

    test = lab.ctx.dsd["test"]
    idx = int(lab.interactive.nontarget_idx[0]) if len(lab.interactive.nontarget_idx) else 0
    return str(test[idx][text_columns(test)[-1]])[:2000] if len(test) else ""
