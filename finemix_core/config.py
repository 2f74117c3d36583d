"""Typed configuration objects and paths shared by every module.

Every default here is ours unless docs/design.md cites the paper; each is configurable and documented.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from finemix_core.errors import FinemixError

# Nothing in this project should wait on a network it cannot reach; users who are online can
# override this by exporting HF_HUB_OFFLINE=0 before starting.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

DEFAULT_DATASET = "rt"
DEFAULT_TARGET = 1  # the attacker's target label (1 = positive for the sentiment sets)
MAX_LENGTH = 128  # tokens; Rotten Tomatoes sentences average ~25 word pieces
# labelled clean examples the defender fine-tunes on (the paper's budget); a user's CSV whose train part holds fewer rows
# gets all of them when this default is asked for (experiment.Context.labelled_size); an explicit larger number is refused
DEFAULT_CLEAN_SIZE = 128


def finemix_home() -> Path:
    """Where the zoo, defended models and the results database live ($FINEMIX_HOME)."""
    env = os.environ.get("FINEMIX_HOME")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "finemix"


def zoo_dir() -> Path:
    return finemix_home() / "zoo"


@dataclass(frozen=True)
class TrainConfig:
    """The one fine-tuning routine's settings (attacks and defenses share it)."""

    lr: float = 2e-5  # AdamW learning rate
    epochs: float = 1.0  # passes over the data; fractional values stop early
    batch_size: int = 32  # examples per optimisation step
    weight_decay: float = 0.01  # AdamW decoupled weight decay
    warmup_ratio: float = 0.06  # share of steps with a linear warm-up, then linear decay
    max_length: int = MAX_LENGTH  # truncation length in tokens
    seed: int = 0  # controls shuffling and dropout


PRECISIONS = ("auto", "fp32", "bf16")  # recovery's training arithmetic (RecoveryConfig.precision)


@dataclass(frozen=True)
class RecoveryConfig:
    """Recovery by distillation from θ_FT on clean unlabelled text (train.Distillation); defaults chosen on dev data
    (docs/recovery.md)."""

    weight: float = 1.0  # KL term beside cross-entropy
    temperature: float = 2.0  # T of the softened distributions
    passes: float = 3.0  # passes over the unlabelled pool (the run lasts the longer of this and the labelled epochs)
    # drop unlabelled texts holding any of E-PUR's top-N tokens (0: keep all; a guard against a poisoned pool)
    drop_flagged: int = 0
    # trigger-aware recovery (finemix_core/consistency.py): the scan's suspects, from clean data alone, taught to mean nothing
    consistency: bool = True  # scan θ_FT first and add consistency + labelled copies for its suspects
    consistency_share: float = 0.5  # share of the pool and of the labelled set that get a triggered copy
    min_excess: float = 0.5  # a suspect's excess flip over the clean reference needed to be used
    max_suspects: int = 3  # suspects used at most (best first)
    min_pool: int = 1000  # a pool smaller than this is topped up with offline general text (0: never)
    # cross-entropy on the labelled batch beside the KL term (0: the labels only choose ρ; recovery is pure distillation)
    label_weight: float = 1.0
    # after recovery, one output bias so the defended model puts as many pool texts in class 1 as its teacher does
    # (calibration.decision_shift; two-class models only): undoes the lean a distilled student gains near the boundary
    match_decisions: bool = False
    # ... or the same share measured on the defender's dev texts (labels unused): text the student was not distilled on,
    # where its lean shows (Round 8), kept only if it moves the boundary away from the class the scan's best candidate
    # pushes to, never towards a suspected target (two-class models with a scan only). The default since Round 27:
    # +0.30 cross-fitted dev points on the full zoo, +0.25 rows on the CSV cases, no suspect firing more; on the test
    # split every zoo entry's CACC rose (+0.03 to +0.36 points) and its ASR fell to within its bar (docs/recovery.md)
    match_dev: bool = True
    augment_copies: int = 0  # word-dropout copies of every pool text, each labelled by the teacher (augment.py; 0: none)
    augment_drop: float = 0.1  # the chance each whole word is dropped from a copy
    # weight of feature distillation beside the KL term: the student's last-layer [CLS] state matches θ_FT's on the same
    # (clean) text, squared error relative to the teacher's mean squared norm (0: logits only). 5 since Round 24, in the
    # low-ρ search only (below): it gives back about a point of clean accuracy where θ_PT's encoder is distilled
    # (docs/recovery.md, Rounds 11, 12, 23, 24)
    feature_weight: float = 5.0
    # ... in the found-ρ try too (False: that try distils logits only, the feature term acts in the low-ρ search alone).
    # Round 23: with the term in the ρ-1 try, that try passed the check on a phrase trigger whose pieces the scan found
    # (tweets) and the phrase still fired on test; keeping more of θ_FT must not also make the check easier to pass
    found_features: bool = False
    # auto-ρ only: when θ_FT's scan finds backdoor evidence, try this ρ first (the trigger is known and taught away, so
    # more of θ_FT's clean skill can stay); kept only if its dev accuracy passes and the check below finds nothing still
    # firing, else the low-ρ search runs as without it (None: never). The default since Round 19 (docs/recovery.md):
    # ungated (Round 16) it left the sentence backdoor firing on test; gated to complete triggers, pieces included, it
    # gave +1.04 dev points on new seeds at the same time, and on the test split no zoo backdoor fired more than under
    # the low-ρ default (the two CSV cases that kept ρ 1: +0.005 and +0.028 ASR, within the 0.05 fixed beforehand)
    found_rho: float | None = 1.0
    # ... and only if each of the scan's suspects flips at most this share of held-aside dev sentences on it: the
    # re-scan's verdict bar (0.81) is for finding a backdoor, far too lax for calling one gone
    found_flip_max: float = 0.10
    # how a tried found_rho is checked: "rescan" = a fresh scan of the candidate (its own search, 60–90 s on 2 cores),
    # then the suspects; "finalists" = no new search: the suspects and every other trigger θ_FT's scan verified that
    # fired on θ_FT (toward a suspect's class, excess over the reference above the bar) are measured on the candidate
    # (suspects' flip against the bar, the others' excess over the clean reference against it)
    found_check: str = "finalists"  # the cheaper one, as good on dev (Round 16)
    # ... and tried only if the scan's best suspect alone flips at least this share of held-aside sentences on θ_FT: a
    # found trigger that fires less is likely a piece of a longer one (a sentence, a combination), whose whole the check
    # cannot measure, and ρ 1 keeps θ_FT's encoder with it (Round 16's sentence entry, Round 17; 0: no such gate)
    found_min_flip: float = 0.95
    # ... and the gate reads each shorter run of the best suspect's words that is a suspect by itself too (its flip
    # measured alone on θ_FT): a grown phrase around a piece of a sentence trigger fires more than the piece (Round 18)
    found_pieces: bool = True
    # ... and the "finalists" check also measures fired triggers that share no word piece with any suspect recovery
    # taught away and fired on θ_FT below the suspect bar (min_excess). False since Round 26: those are left out as the
    # task's own vocabulary ('refreshing': θ_FT, a better sentiment model than a 128-example reference, reacts to it
    # more, and so does any student that keeps its clean skill); phrases holding a suspect's piece ('softness cf',
    # '3d durable refreshing worth') and strong second triggers are still measured. +2.4 dev points where it changed the
    # decision (word-cf 1, 2, ep-cf 5), the test checks fixed beforehand passed (docs/recovery.md). True: Rounds 16–25
    found_unrelated: bool = False
    # ... and the found-ρ try trains for this share of the usual steps (the same batches in the same order, stopped
    # early, the schedule fitted to the shorter run): at ρ 1 the student starts as θ_FT, so recovery has less to do.
    # 0.5 since Round 20: a ρ-1 try costs ~60 s instead of ~120 s, +0.33 dev points on the full zoo, −0.42 (one row) on
    # the CSV cases, 0.77× / 0.82× the time, and the test split's checks fixed beforehand passed (docs/recovery.md)
    found_steps: float = 0.5
    # the arithmetic recovery's training steps run in: "fp32", or "bf16" = bfloat16 autocast of the forward pass (weights,
    # optimiser state and the exported model stay float32; 1.6× faster per step on a CPU with avx512_bf16, but emulated
    # and several times SLOWER on an AVX2-only CPU), or "auto" = bf16 where the device runs it natively (a GPU with bf16,
    # a CPU with avx512_bf16 / AMX), fp32 elsewhere, made concrete before a run (defenses.concrete_precision) so every
    # row, card and key holds the arithmetic that ran. Results differ from fp32 in the last digits. bf16 was adopted in
    # Round 21 (+0.07 dev points, 0.72× / 0.66× the time, the test checks passed: a CPU with avx512_bf16); "auto" since
    # 2026-12-05, when an AVX2-only machine ran bf16 recovery 10.4× slower than fp32 (scripts/bench_precision.py)
    precision: str = "auto"
    # per-layer ρ in one form: the low-ρ search keeps θ_FT's top N encoder layers whole (ρ 1 there, the grid's ρ below),
    # so the layers nearest the head keep θ_FT's clean skill while E-PUR's reset embeddings and θ_PT's lower layers
    # carry no learned trigger; the found-ρ try (ρ 1) is unchanged (0: every layer at the grid's ρ). Opt-in: Round 22
    # (N 2) passed its dev rule (+0.56 dev points where the low-ρ search ran) but raised the sentence backdoor's test ASR
    # by 0.06 — θ_FT's top layers carry part of it (docs/recovery.md)
    whole_top_layers: int = 0
    # a recovery step reads a labelled batch and a pool batch; one padded forward pass over both is cheapest when the two
    # are alike in length, but long labelled articles beside short pool texts make it mostly padding. Two passes (each
    # part padded to its own width: the same losses, dropout's draws differ) when, over the run's planned batches, they
    # read at most this share of one pass's tokens (train.pass_share; 0: always one pass). 0.75: two passes only where
    # they save a quarter or more (bbc's articles beside general text 0.59–0.60, the sms-spam CSV 0.72; the amazon,
    # tweets and rt CSVs came out over 0.75); rt's own pool gives 0.78–0.82 on seeds 0–8, so the zoo keeps the one-pass
    # step its report measured. Steps took 0.75× (sms-spam) and 0.59× (bbc) in a paired bench; the accuracy checks fixed
    # beforehand passed, the time check against stored runs did not (docs/recovery.md, "Two passes for long texts",
    # says why and that 0.75 was kept anyway)
    two_pass_below: float = 0.75

    def __post_init__(self) -> None:
        if self.temperature <= 0 or self.weight < 0 or self.passes <= 0 or self.drop_flagged < 0:
            raise FinemixError("recovery needs temperature > 0, weight ≥ 0, passes > 0 and drop-flagged ≥ 0")
        if self.label_weight < 0:
            raise FinemixError("recovery needs a label weight ≥ 0 (0: pure distillation)")
        if self.feature_weight < 0:
            raise FinemixError("recovery needs a feature weight ≥ 0 (0: match the teacher's logits only)")
        if self.found_rho is not None and not 0.0 <= self.found_rho <= 1.0:
            raise FinemixError(f"found-rho {self.found_rho} outside [0, 1]; 1 keeps all of θ_FT after E-PUR")
        if self.whole_top_layers < 0:
            raise FinemixError(f"whole-top-layers {self.whole_top_layers} is negative; use 0 (mix every layer) or more")
        if not 0.0 <= self.two_pass_below <= 1.0:
            raise FinemixError(f"two-pass-below {self.two_pass_below} outside [0, 1]; 0 keeps one pass, 1 splits whenever cheaper")
        if self.precision not in PRECISIONS:
            raise FinemixError(f"precision {self.precision!r} unknown; use 'auto', 'fp32' or 'bf16'")
        if not 0.0 < self.found_steps <= 1.0:
            raise FinemixError(f"found-steps {self.found_steps} outside (0, 1]; it is the share of the usual steps")
        if self.found_check not in ("rescan", "finalists"):
            raise FinemixError(f"found-check {self.found_check!r} unknown; use 'rescan' or 'finalists'")
        if not 0.0 <= self.found_flip_max <= 1.0:
            raise FinemixError(f"found-flip-max {self.found_flip_max} outside [0, 1]; 0.1 allows one flipped sentence in ten")
        if not 0.0 <= self.found_min_flip <= 1.0:
            raise FinemixError(f"found-min-flip {self.found_min_flip} outside [0, 1]; 0.95 asks the suspect to fire alone")
        if self.augment_copies < 0 or not 0 <= self.augment_drop < 1:
            raise FinemixError("recovery needs augment copies ≥ 0 and a word-drop chance in [0, 1)")
        if self.feature_weight > 0 and self.augment_copies:
            raise FinemixError(
                "feature distillation and augmented copies cannot be combined; pass --feature-weight 0 with --augment-copies"
            )
        if not 0 <= self.consistency_share <= 1 or self.max_suspects < 0 or self.min_pool < 0:
            raise FinemixError("recovery needs a consistency share in [0, 1], max suspects ≥ 0 and a min pool ≥ 0")


@dataclass(frozen=True)
class AttackConfig:
    """How a backdoored model is built (docs/design.md §4)."""

    attack: str = "word"  # clean | word | word-combo | sentence | ep
    trigger: tuple[str, ...] = ("cf",)  # pieces; each is inserted at its own random position
    poison_rate: float = 0.1  # share of NON-target training examples poisoned
    target: int = DEFAULT_TARGET  # label the backdoor flips to
    seed: int = 0  # which examples are poisoned and where the trigger goes


@dataclass(frozen=True)
class EvalConfig:
    """How CACC and ASR are measured (docs/design.md §5)."""

    batch_size: int = 32  # inference batch (length-sorted, dynamic padding)
    max_length: int = MAX_LENGTH
    seed: int = 1234  # trigger positions for ASR; differs from attack seeds on purpose
    limit: int | None = None  # evaluate on the first N test examples only (quick looks)


@dataclass(frozen=True)
class ZooEntrySpec:
    """One entry of the zoo: which attack, on which data, trained how."""

    name: str
    attack: AttackConfig
    dataset: str = DEFAULT_DATASET
    split_seed: int = 0
    train_size: int | None = None  # None = the whole train split
    train: TrainConfig = field(default_factory=TrainConfig)
    base: str | None = None  # ep starts from another (clean) zoo entry
