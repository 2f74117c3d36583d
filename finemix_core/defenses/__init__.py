"""Defenses (docs/design.md §2, §3, §6) behind one registry.

A method name is `[epur+]BASE[+distill]`:
- BASE is a registered defense: one module, one `run(job) -> Outcome` function, one entry in REGISTRY
  (adding a defense = adding a module and a line here; the CLI, report and lab read METHODS).
- `epur+` first resets the embedding rows E-PUR flags (docs/design.md §3), then runs BASE on the purified model.
- `+distill` adds recovery to the shared fine-tuning routine: distillation from θ_FT's own predictions on
  the defender's clean unlabelled texts (train.Distillation), and makes auto-ρ scan up from a low ρ. Recovery is
  trigger-aware by default (consistency.py): the suspects of a scan of θ_FT from clean data — never the card's
  trigger — are inserted into pool and labelled copies and taught to change nothing.

Every method fine-tunes with the same routine and budget; every choice is made on clean dev data only.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from finemix_core import augment, consistency, remembered
from finemix_core.calibration import apply_shift, away_from, decision_shift
from finemix_core.defenses import fine_mixing, fine_pruning, fine_purifying, fine_tuning
from finemix_core.defenses.base import (
    DEFENSE_TRAIN,
    GRID,
    RECOVERY_GRID,
    Candidate,
    DefenderData,
    DefenseConfig,
    Defense,
    Job,
    RecoveryConfig,
    accuracy,
    concrete_precision,
    correct_on,
    defender_data,
    first_passing,
    pick_largest,
    pick_smallest,
)
from finemix_core.defenses.fine_pruning import apply_pruning, ffn_activations, ffn_layers, prune_plan
from finemix_core.encoding import Encoded
from finemix_core.epur import flagged_ids, purify, table
from finemix_core.errors import FinemixError
from finemix_core.evaluate import predict, predict_with_features
from finemix_core.mixing import top_layer_keys
from finemix_core.models import ModelPair
from finemix_core.remembered import Remember
from finemix_core.train import Distillation, Progress, device_of, two_pass_share

REGISTRY: dict[str, Defense] = {
    "none": fine_tuning.keep,
    "fine-tuning": fine_tuning.run,
    "fine-pruning": fine_pruning.run,
    "fine-mixing": fine_mixing.run_random,
    "fine-mixing-sorted": fine_mixing.run_sorted,
    "fine-purifying": fine_purifying.run,
}
TRAINED = tuple(b for b in REGISTRY if b != "none")  # bases that fine-tune (so can take +distill)
METHODS = (
    *REGISTRY,
    "epur",
    *(f"epur+{b}" for b in TRAINED),
    *(f"{b}+distill" for b in TRAINED),
    *(f"epur+{b}+distill" for b in TRAINED),
)
# The default `finemix defend` (chosen on the zoo's dev splits only; docs/recovery.md): E-PUR, Fine-mixing at the
# smallest ρ whose dev accuracy after recovery stays within δ of θ_FT's, recovery by distillation.
DEFAULT_METHOD = "epur+fine-mixing+distill"

__all__ = [
    "DEFAULT_METHOD",
    "DEFENSE_TRAIN",
    "GRID",
    "METHODS",
    "RECOVERY_GRID",
    "REGISTRY",
    "Candidate",
    "DefenderData",
    "DefenseConfig",
    "DefenseResult",
    "RecoveryConfig",
    "accuracy",
    "apply_pruning",
    "defend",
    "defender_data",
    "ffn_activations",
    "ffn_layers",
    "first_passing",
    "parse_method",
    "pick_largest",
    "pick_smallest",
    "prune_plan",
]


def describe(method: str) -> str:
    """One line on what a method does, from its parts (the registered module's first docstring line)."""
    epur, base, distill = parse_method(method)
    fn = REGISTRY[base]
    text = (fn.__doc__ or base).strip().splitlines()[0]
    return (
        ("reset E-PUR's flagged embeddings; " if epur else "")
        + text
        + (", distilling θ_FT on clean unlabelled text" if distill else "")
    )


def parse_method(method: str) -> tuple[bool, str, bool]:
    """'epur+fine-mixing+distill' → (E-PUR first, 'fine-mixing', distill); unknown names get the one-line error."""
    if method not in METHODS:
        raise FinemixError(f"unknown method '{method}'; use one of {', '.join(METHODS)}")
    epur = method.startswith("epur")
    base = method.removeprefix("epur").removeprefix("+").removesuffix("+distill") or "none"
    return epur, base, method.endswith("+distill")


@dataclass
class DefenseResult:
    """The defended model and how it was made."""

    model: torch.nn.Module
    method: str
    rho: float | None  # the ρ used (auto's choice when auto)
    rho_auto: bool
    prune_ratio: float | None
    flagged: list[str]  # E-PUR's flagged tokens, highest score first
    dev_acc: float  # clean dev accuracy of the defended model
    ft_dev_acc: float  # clean dev accuracy of θ_FT (the reference for δ)
    search: list[Candidate]  # every candidate a dev-only search tried, in order
    unlabeled_used: int  # unlabelled texts distilled on (0 without +distill)
    unlabeled_source: str  # where they came from
    seconds: float
    suspects: list[str] = dataclasses.field(default_factory=list)  # scan's suspected triggers recovery taught away
    consistency_copies: int = 0  # triggered pool copies (consistency) + triggered labelled copies
    scan: object | None = None  # the ScanResult recovery read its suspects from (None: no scan ran or was given)
    read_back: bool = False  # an identical earlier run's stored result (finemix_core.remembered), not a new run
    decision_shift: float | None = None  # added to the class-1 margin by decision matching (None: not applied)

    def summary(self) -> dict:
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("model", "scan")}
        return fields | {"search": [dataclasses.asdict(c) for c in self.search], "seconds": round(self.seconds, 2)}


def purified_pair(pair: ModelPair, ids: Sequence[int]) -> ModelPair:
    """A new pair whose θ_FT has the flagged embedding rows reset to θ_PT (the input pair is untouched)."""
    ft = pair.working_copy(purify(pair, pair.ft_state(), ids))
    ft.requires_grad_(False)
    return dataclasses.replace(pair, ft=ft)  # a fresh dataclass: Δ is recomputed for the purified θ_FT


def guarded_pool(dd: DefenderData, flagged_token_ids: set[int]) -> list[int]:
    """Positions of the unlabelled texts that hold none of the flagged token ids."""
    if dd.unlabeled is None:
        return []
    return [i for i, ids in enumerate(dd.unlabeled.input_ids) if not flagged_token_ids.intersection(ids)]


def teacher(model: torch.nn.Module, dd: DefenderData, rec: RecoveryConfig, keep: Sequence[int]) -> Distillation | None:
    """The teacher's logits on the kept unlabelled texts, computed once for every candidate of the run."""
    if dd.unlabeled is None or not keep:
        return None
    texts = dd.unlabeled.subset(keep)
    if rec.feature_weight > 0:
        logits, feats = predict_with_features(model, texts)
        return Distillation(texts, torch.from_numpy(logits).float(), rec, teacher_features=torch.from_numpy(feats).float())
    logits = torch.from_numpy(predict(model, texts, logits=True)).float()
    return Distillation(texts, logits, rec)


def matched_decisions(model: torch.nn.Module, distill: Distillation, n_texts: int) -> tuple[torch.nn.Module, float]:
    """(a copy of `model` with one output bias added, the shift on the class-1 margin) such that it assigns as many of
    the first `n_texts` pool texts (the teacher-labelled originals, not consistency copies) to class 1 as the teacher."""
    texts = distill.texts.subset(range(n_texts))
    goal = float((distill.teacher_logits[:n_texts].argmax(1) == 1).float().mean())
    b = decision_shift(predict(model, texts, logits=True), goal)
    return apply_shift(model, b).eval(), float(b[1] - b[0])


def dev_matched_decisions(
    model: torch.nn.Module, teacher_model: torch.nn.Module, dev: Encoded, target: int | None
) -> tuple[torch.nn.Module, float, float]:
    """(the model, the shift kept, the shift fitted), shifts on the class-1 margin: the fitted one makes `model` assign
    as many dev texts (labels unused) to class 1 as the teacher does; it is kept (on a copy) only if it lowers the margin
    of `target`, the class the scan's best candidate pushes to; otherwise `model` itself is returned and 0 kept."""
    goal = float((predict(teacher_model, dev).argmax(1) == 1).mean())
    fitted = decision_shift(predict(model, dev, logits=True), goal)
    b = away_from(fitted, target)
    kept = apply_shift(model, b).eval() if b.any() else model
    return kept, float(b[1] - b[0]), float(fitted[1] - fitted[0])


def scan_for_recovery(pair: ModelPair, dd: DefenderData, cfg: DefenseConfig, say: Callable[[str], None]):
    """θ_FT scanned from the defender's clean data alone (the scan drops the pair's card on entry)."""
    from finemix_core.scan import ScanConfig, scan

    found = scan(pair, dd, ScanConfig(seed=cfg.seed), log=say)
    say(f"scan for trigger-aware recovery ({found.seconds:.0f} s): {found.message()}")
    return found


def verifier(
    pair: ModelPair,
    dd: DefenderData,
    cfg: DefenseConfig,
    say: Callable[[str], None],
    suspects: Sequence = (),
    finalists: Sequence = (),
):
    """A check for a candidate model, from the same clean data. `recovery.found_check` "rescan": a fresh scan of it
    finds no backdoor evidence, and each of θ_FT's scan suspects (`suspects`) flips at most `recovery.found_flip_max` of
    the held-aside dev sentences on it. "finalists": no fresh search; the suspects as above, and every other trigger
    θ_FT's scan verified (`finalists`) that fired on θ_FT — toward a suspect's class, more than the bar over the clean
    reference — flips at most that much more than the reference on the candidate. (Words pushing to the other classes
    are the task's own vocabulary: a model that keeps θ_FT's clean skill reacts to them, as θ_FT did; so, unless
    `recovery.found_unrelated`, are words toward it that share no word piece with a suspect and fired under the suspect
    bar on θ_FT.)"""
    from finemix_core.scan import ScanConfig, scan

    rec = cfg.recovery
    bar = rec.found_flip_max
    named = {(s.trigger, s.target) for s in suspects}
    aimed = {s.target for s in suspects}
    fired = [c for c in finalists if c.target in aimed and c.excess > bar]
    taught = {t for s in suspects for t in s.token_ids}
    # without found_unrelated: a fired trigger that shares no word piece with a suspect and fired below the suspect bar
    # on θ_FT is the task's own vocabulary, which a student keeping θ_FT's clean skill reacts to as θ_FT did
    finalists_check = rec.found_check == "finalists"
    unrelated = [
        c for c in fired if not rec.found_unrelated and not taught & set(c.token_ids) and c.excess < rec.min_excess
    ] if finalists_check else []
    measured_too = [c for c in fired if c not in unrelated] if finalists_check else ()
    given = tuple(dict.fromkeys((c.trigger, c.target) for c in [*suspects, *measured_too]))  # each once, suspects first

    def verify(model: torch.nn.Module) -> bool:
        on_cpu = model if device_of(model).type == "cpu" else copy.deepcopy(model).cpu()
        candidate = dataclasses.replace(pair, ft=on_cpu.eval())
        if rec.found_check == "rescan":
            found = scan(candidate, dd, ScanConfig(seed=cfg.seed))
            say(f"re-scan of the candidate ({found.seconds:.0f} s): {found.message()}")
            if found.verdict == "backdoor":
                return False
        if not given:
            return True
        # the triggers θ_FT's scan named, measured alone on the candidate (no search: a few forward passes)
        measured = scan(candidate, dd, ScanConfig(epur_rows=0, inversion=False, seed=cfg.seed), given=given)
        flips = [c for c in measured.candidates if c.source == "given"]
        over = [c for c in flips if (c.flip if (c.trigger, c.target) in named else c.excess) > bar]
        say(
            "θ_FT's scan triggers on the candidate: "
            + ", ".join(
                f"{c.trigger!r} flips {c.flip:.0%} of {c.n}"
                + ("" if (c.trigger, c.target) in named else f" (reference {c.reference_flip:.0%})")
                for c in flips
            )
            + f" (bar {bar:.0%}) → {'clean' if not over else 'still fires'}"
            + (f"; not measured, sharing no word piece with a suspect: {', '.join(repr(c.trigger) for c in unrelated)}"
               if unrelated else "")
        )
        return not over

    return verify


def gate_pieces(trigger: str) -> list[str]:
    """Every run of whole words shorter than `trigger` itself ('a b c' → 'a', 'b', 'c', 'a b', 'b c'), shortest first."""
    words = trigger.split()
    return [" ".join(words[i : i + n]) for n in range(1, len(words)) for i in range(len(words) - n + 1)]


def found_rho_to_try(
    pair: ModelPair, dd: DefenderData, cfg: DefenseConfig, scan_result, suspected: Sequence
) -> tuple[float | None, str]:
    """(the ρ auto-ρ tries first because the scan found the trigger, or None; why not, in words — "" when the question
    does not arise). Asked only with `recovery.found_rho`, no fixed ρ, a 'backdoor' verdict and suspects to teach away.
    The gate (`found_min_flip`): the best suspect must fire on (nearly) every held-aside sentence alone, and so must
    each piece of it that is a suspect by itself (`found_pieces`): growth adds words of the target class, which lift a
    piece of a longer trigger toward a full flip ('worth 3d' 0.97, its '3d' 0.87: Round 18, seed 4's sentence)."""
    rec = cfg.recovery
    if cfg.rho is not None or rec.found_rho is None or not suspected or scan_result is None or scan_result.verdict != "backdoor":
        return None, ""
    best = scan_result.best
    weakest = (best.trigger, best.flip)
    # pieces are measured only when the best suspect itself passes: the weakest flip decides, and it already fails
    gated = rec.found_pieces and 0 < rec.found_min_flip <= best.flip
    pieces = gate_pieces(best.trigger) if gated else []
    if pieces:
        from finemix_core.scan import ScanConfig, scan

        # the pieces measured alone on θ_FT, on the scan's held-aside sentences (no search: a few forward passes)
        given = tuple((p, best.target) for p in pieces)
        measured = scan(pair, dd, ScanConfig(epur_rows=0, inversion=False, seed=cfg.seed), given=given)
        alone = [c for c in measured.candidates if c.source == "given" and c.excess >= rec.min_excess]
        weakest = min([weakest, *((c.trigger, c.flip) for c in alone)], key=lambda tf: tf[1])
    if weakest[1] < rec.found_min_flip:
        what = f"the scan's best suspect {best.trigger!r}" + (
            "" if weakest[0] == best.trigger else f" holds {weakest[0]!r}, a suspect by itself, which"
        )
        return None, (
            f"{what} flips {weakest[1]:.0%} of held-aside sentences alone, under {rec.found_min_flip:.0%}: it may be a "
            f"piece of a longer trigger, so ρ {rec.found_rho:g} is not tried"
        )
    return rec.found_rho, ""


def defend(
    pair: ModelPair,
    dd: DefenderData,
    cfg: DefenseConfig,
    device: torch.device | str = "cpu",
    progress: Progress | None = None,
    log: Callable[[str], None] | None = None,
    scan_result=None,
    remember: Remember = Remember.OFF,
) -> DefenseResult:
    """Run one defense on a private copy of θ_FT; `pair` is never modified.

    With trigger-aware recovery (`+distill`, `recovery.consistency`), the suspects come from `scan_result` (a scan the
    caller already ran on the same defender data) or from a scan run here; never from the pair's card.
    `remember`: store the result for an identical later defense, and/or read back an identical earlier one.
    """
    started = time.perf_counter()
    device = torch.device(device)
    cfg = concrete_precision(cfg, device)  # "auto" → the arithmetic this device runs fast, before any key is made
    say = log or (lambda _msg: None)
    use_epur, base, distill = parse_method(cfg.method)
    if distill:
        top_layer_keys(pair.shared_keys, cfg.recovery.whole_top_layers)  # too many layers: refused before any work
    suspected = []
    if distill and cfg.recovery.consistency and dd.unlabeled is not None:
        if scan_result is None:
            scan_result = scan_for_recovery(pair, dd, cfg, say)  # an identical earlier scan is read back at once
        suspected = consistency.suspects(scan_result, cfg.recovery)
    key = None
    if remember is not Remember.OFF:
        # keyed on the suspects recovery uses, whether the caller handed the scan in or it ran here
        key = remembered.defense_key(pair, dd, cfg, device, [[list(s.token_ids), s.target] for s in suspected])
        stored = stored_result(key, pair, device) if remember is Remember.REUSE else None
        if stored is not None:
            say(f"read back an identical earlier defense (same weights, data and settings; it took {stored.seconds:.0f} s)")
            return stored
    scanned = pair  # θ_FT as the scan saw it (before E-PUR): the gate measures pieces of its suspect on it
    ft_correct = correct_on(pair.ft_for_inference(device), dd.dev)
    ft_dev = float(ft_correct.mean())
    flagged: list[str] = []
    ranked: list[int] = []  # E-PUR's flagged rows, best first
    suspicious: list[int] = []  # the guard's top rows by the same score (its own count, independent of K)
    if use_epur or (distill and cfg.recovery.drop_flagged):
        # with recovery the defender's whole clean text counts; without, the labelled set (the paper recipe, unchanged)
        tab = table(pair, dd.texts + dd.unlabeled_texts if distill else dd.texts, cfg.epur)
        ranked = flagged_ids(tab)
        if cfg.recovery.drop_flagged:
            suspicious = tab.nlargest(cfg.recovery.drop_flagged, "score", keep="first").id.tolist()
    if use_epur:
        flagged = pair.tokenizer.convert_ids_to_tokens(ranked)
        pair = purified_pair(pair, ranked)
        say(f"E-PUR reset {len(flagged)} embedding rows (top: {', '.join(flagged[:5])})")
    job = Job(pair, dd, cfg, device, ft_dev - cfg.delta, progress, say, ft_correct=ft_correct)
    found_rho, why = found_rho_to_try(scanned, dd, cfg, scan_result, suspected) if distill else (None, "")
    if why:
        say(why)
    if found_rho is not None:
        job.first_rho, job.verify = found_rho, verifier(pair, dd, cfg, say, suspected, scan_result.candidates)
        how = "a re-scan is clean and " if cfg.recovery.found_check == "rescan" else "every trigger that fired on θ_FT is quiet and "
        say(f"the scan found the trigger: trying ρ {found_rho:g} first, kept only if dev accuracy passes, {how}the suspects "
            f"flip ≤ {cfg.recovery.found_flip_max:.0%} of held-aside sentences")
    copies, keep = 0, []
    if distill:
        if dd.unlabeled is None:
            raise FinemixError(f"{cfg.method} needs clean unlabelled texts; pass --unlabeled PATH or use data with a dev split")
        keep = guarded_pool(dd, set(suspicious)) if cfg.recovery.drop_flagged else list(range(len(dd.unlabeled)))
        if cfg.recovery.drop_flagged:
            say(
                f"guard: {len(dd.unlabeled) - len(keep)} of {len(dd.unlabeled)} unlabelled texts hold one of E-PUR's top "
                f"{cfg.recovery.drop_flagged} tokens and are dropped"
            )
        # the teacher is the model the defense starts from (after E-PUR when asked): θ_FT's clean behaviour
        ft = pair.ft_for_inference(device)  # one copy on an accelerator, shared by the teacher and the augmentation
        job.distill = teacher(ft, dd, cfg.recovery, keep)
        say(f"recovery: distilling θ_FT on {len(keep)} clean unlabelled texts ({dd.unlabeled_source})")
        rec = cfg.recovery
        if rec.augment_copies and job.distill is not None:
            job.distill = augment.with_augmented_copies(
                job.distill, pair.tokenizer, lambda enc: torch.from_numpy(predict(ft, enc, logits=True)).float(),
                rec.augment_copies, rec.augment_drop, cfg.seed,
            )
            say(f"pool augmentation: {rec.augment_copies} word-dropout copies of each text (p {rec.augment_drop:g}), same steps")
        if suspected and job.distill is not None:
            triggers = [s.token_ids for s in suspected]
            share, seed = cfg.recovery.consistency_share, cfg.seed
            job.distill, n_pool = consistency.with_consistency(job.distill, pair.tokenizer, triggers, share, seed)
            _, job.extra_train = consistency.triggered_copies(pair.tokenizer, dd.train, triggers, share, seed + 1)
            copies = n_pool + len(job.extra_train)
            say(
                f"trigger-aware recovery: {', '.join(repr(s.trigger) for s in suspected)} (scan's suspects) inserted into "
                f"{n_pool} pool texts (taught θ_FT's answer without it) and {len(job.extra_train)} labelled examples"
            )
    if job.distill is not None and (share := two_pass_share(job.labelled(), job.distill, job.train_config())) is not None:
        say(
            f"recovery steps: the labelled and pool batches in two forward passes (they read {share:.0%} of the tokens "
            f"one padded pass would; --two-pass-below {cfg.recovery.two_pass_below:g})"
        )
    out = REGISTRY[base](job)
    out.model.eval()
    shift = None
    if job.distill is not None and cfg.recovery.match_decisions and pair.num_labels == 2:
        out.model, shift = matched_decisions(out.model, job.distill, len(keep))
        say(f"decisions matched to the teacher's on the pool: {shift:+.3f} added to the class-1 margin")
    if job.distill is not None and cfg.recovery.match_dev and pair.num_labels == 2 and scan_result is not None:
        target = scan_result.best.target if scan_result.best is not None else None
        out.model, shift, fitted = dev_matched_decisions(out.model, ft, dd.dev, target)
        say(
            f"decisions matched to the teacher's on the {len(dd.dev)} dev texts: {shift:+.3f} added to the class-1 margin"
            if shift else
            f"decisions on the {len(dd.dev)} dev texts left as they are: the shift that matches the teacher's "
            f"({fitted:+.3f} on the class-1 margin) would not move the boundary away from the scan's suspected class {target}"
        )
    result = DefenseResult(
        model=out.model,
        method=cfg.method,
        rho=out.rho,
        rho_auto=cfg.rho is None and out.rho is not None,
        prune_ratio=out.prune_ratio,
        flagged=flagged,
        dev_acc=accuracy(out.model, dd.dev),
        ft_dev_acc=ft_dev,
        search=job.search,
        unlabeled_used=len(keep) if job.distill else 0,
        unlabeled_source=dd.unlabeled_source if job.distill else "none",
        seconds=time.perf_counter() - started,
        suspects=[s.trigger for s in suspected] if copies else [],
        consistency_copies=copies,
        scan=scan_result,
        decision_shift=shift,
    )
    if key is not None:
        raw = {f.name: getattr(result, f.name) for f in dataclasses.fields(result) if f.name not in ("model", "read_back")}
        raw["search"] = [dataclasses.asdict(c) for c in result.search]
        raw["scan"] = dataclasses.asdict(result.scan) if result.scan is not None else None
        remembered.write(key, raw, result.model)
    return result


def stored_result(key: str, pair: ModelPair, device: torch.device) -> DefenseResult | None:
    """A remembered defense as a DefenseResult (its model a fresh copy of θ_FT with the stored weights, on `device`),
    or None."""
    from finemix_core.scan import result_from_json

    found = remembered.read(key)
    if found is None:
        return None
    raw, state = found
    model = pair.working_copy()
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
        raw["search"] = [Candidate(**c) for c in raw["search"]]
        raw["scan"] = result_from_json(raw["scan"]) if raw.get("scan") else None
        result = DefenseResult(model=model.to(device).eval(), **raw, read_back=True)
    except (RuntimeError, KeyError, TypeError, ValueError):
        return None  # a damaged entry is run again
    return None if missing or unexpected else result
