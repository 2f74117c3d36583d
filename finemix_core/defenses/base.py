"""What every defense shares: its config, the defender's data, the job it receives, what it returns,
and the dev-only searches (ρ, prune ratio).

The defender's data is a `DefenderData`: a small labelled clean training set, a labelled clean dev set
and a pool of clean unlabelled texts. Nothing here ever sees test data or triggered inputs — every
choice a defense makes (ρ, prune ratio) reads clean dev accuracy alone, by construction.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from finemix_core import hardware
from finemix_core.config import RecoveryConfig, TrainConfig
from finemix_core.defender import DefenderData, defender_data
from finemix_core.encoding import Encoded, concat
from finemix_core.epur import EpurConfig
from finemix_core.errors import FinemixError
from finemix_core.evaluate import predict
from finemix_core.models import ModelPair
from finemix_core.train import Distillation, Progress, fine_tune

GRID = tuple(round(0.1 * i, 1) for i in range(1, 10))  # the paper recipe's ρ and prune-ratio candidates
# With recovery, dev accuracy is nearly flat in ρ (the teacher pulls every mix towards θ_FT's clean behaviour), so the
# search tries the low end only: ρ 0 (θ_PT with θ_FT's head, distilled), then 0.2, stopping at the first that passes;
# when neither passes it keeps the one with the better dev accuracy. At most two fine-tunes (~75 s each on 2 cores).
# Chosen on the zoo's dev splits only (docs/recovery.md).
RECOVERY_GRID = (0.0, 0.2)

# The paper recipe's budget. docs/design.md §10 measured lr 2e-5 × 5 epochs too weak to wash out a rare-word backdoor on
# this θ_PT and lr 1e-4 × 10 epochs clearly better; we adopt the latter as is (never tuned on test data).
DEFENSE_TRAIN = TrainConfig(lr=1e-4, epochs=10.0, batch_size=16)


@dataclass(frozen=True)
class DefenseConfig:
    """One defense run. `method` is [epur+]BASE[+distill], BASE a registered defense (see defenses.METHODS)."""

    method: str = "fine-mixing"
    rho: float | None = None  # reserve ratio; None = auto (smallest grid ρ within `delta` of θ_FT's dev accuracy)
    # auto-ρ candidates (None: GRID by bisection, RECOVERY_GRID from the bottom with +distill)
    rho_grid: tuple[float, ...] | None = None
    delta: float = 0.02  # allowed clean dev-accuracy drop for auto-ρ and the prune ratio
    mix_scope: str = "tensor"  # sorted masks: rank per tensor or globally
    epur: EpurConfig = field(default_factory=EpurConfig)  # K and the frequency floor c
    prune_ratio: float | None = None  # fine-pruning share of FFN neurons per layer; None = largest grid value within delta
    train: TrainConfig = DEFENSE_TRAIN  # the same budget for every method
    recovery: RecoveryConfig = field(default_factory=RecoveryConfig)  # used by +distill methods only
    seed: int = 0  # masks, fine-tuning order and dropout

    def __post_init__(self) -> None:
        from finemix_core.defenses import parse_method  # the registry lives in the package

        parse_method(self.method)
        if self.rho is not None and not 0.0 <= self.rho <= 1.0:
            raise FinemixError(f"rho {self.rho} outside [0, 1]; 0 keeps θ_PT, 1 keeps θ_FT (or use auto)")
        if self.prune_ratio is not None and not 0.0 <= self.prune_ratio < 1.0:
            raise FinemixError(f"prune ratio {self.prune_ratio} outside [0, 1)")
        if self.rho_grid is not None and (not self.rho_grid or any(not 0.0 <= r <= 1.0 for r in self.rho_grid)):
            raise FinemixError("rho grid must be non-empty values in [0, 1]")
        if self.delta < 0:
            raise FinemixError(f"delta {self.delta} must be ≥ 0")

    @property
    def uses_epur(self) -> bool:
        return self.method.startswith("epur")

    @property
    def distills(self) -> bool:
        return self.method.endswith("+distill")

    @property
    def base(self) -> str:
        """The registered defense after E-PUR and before recovery ('none' for plain epur)."""
        from finemix_core.defenses import parse_method

        return parse_method(self.method)[1]

    @property
    def grid(self) -> tuple[float, ...]:
        return self.rho_grid or (RECOVERY_GRID if self.distills else GRID)


def concrete_precision(cfg: DefenseConfig, device: torch.device | str) -> DefenseConfig:
    """`cfg` with recovery's "auto" precision made concrete for `device`: bf16 where it runs natively there (a GPU with
    bf16, a CPU with avx512_bf16 / AMX), fp32 elsewhere — emulated bf16 is several times slower than fp32. Every run
    resolves it before it starts, so its row, card and run key hold the arithmetic that ran."""
    if cfg.recovery.precision != "auto":
        return cfg
    precision = "bf16" if hardware.bf16_supported(torch.device(device)) else "fp32"
    return dataclasses.replace(cfg, recovery=dataclasses.replace(cfg.recovery, precision=precision))


@dataclass(frozen=True)
class Candidate:
    """One value a dev-only search tried, with the clean dev accuracy it reached."""

    knob: str  # "rho" | "prune_ratio"
    value: float
    dev_acc: float
    passed: bool
    threshold: float  # the dev accuracy it needed
    verified: bool | None = None  # the check from clean data (found_rho) passed: nothing still fires (None: not checked)


def search_text(search: list[dict]) -> str:
    """A dev-only search in one line, saying when nothing passed and the defense fell back."""
    if not search:
        return ""
    checked = {None: "", True: " (check: clean)", False: " (check: still fires)"}
    text = "; ".join(
        f"{c['knob'].replace('_', ' ')} {c['value']:g} → dev {c['dev_acc']:.3f}{checked[c.get('verified')]}"
        f"{' ✓' if c['passed'] else ''}"
        for c in search
    )
    return text if any(c["passed"] for c in search) else text + " (none within tolerance: fell back)"


def paired_se(ref_correct: np.ndarray, cand_correct: np.ndarray) -> float:
    """Standard error of the difference of two accuracies measured on the same examples (paired, McNemar-style)."""
    n = len(ref_correct)
    if n == 0:
        return 0.0
    b = float(np.sum(ref_correct & ~cand_correct))  # the reference right, the candidate wrong
    c = float(np.sum(~ref_correct & cand_correct))
    return float(np.sqrt(max((b + c) / n**2 - (b - c) ** 2 / n**3, 0.0)))


@dataclass
class Job:
    """What a registered defense receives: the (possibly purified) pair, the defender's data and the shared trainer."""

    pair: ModelPair
    dd: DefenderData
    cfg: DefenseConfig
    device: torch.device
    target: float  # the dev accuracy a candidate must reach (θ_FT's − δ)
    progress: Progress | None
    say: Callable[[str], None]
    distill: Distillation | None = None  # set for +distill methods: the teacher's logits on the pool, computed once
    search: list[Candidate] = field(default_factory=list)
    ft_correct: np.ndarray | None = None  # θ_FT right or wrong on each dev example (for the one-standard-error rule)
    extra_train: Encoded | None = None  # trigger-aware recovery: labelled examples with a suspect inserted, true labels
    # recovery.found_rho when θ_FT's scan found evidence: the ρ tried before the grid, and the check it must pass
    first_rho: float | None = None
    verify: Callable[[torch.nn.Module], bool] | None = None

    def labelled(self) -> Encoded:
        """The labelled set every fine-tune reads: the clean examples, plus their triggered copies with true labels."""
        if self.extra_train is not None and len(self.extra_train):
            return concat([self.dd.train, self.extra_train])
        return self.dd.train

    def train_config(self) -> TrainConfig:
        return dataclasses.replace(self.cfg.train, seed=self.cfg.seed)

    def train(
        self,
        model: torch.nn.Module,
        after_step: Callable[[torch.nn.Module], None] | None = None,
        step_share: float = 1.0,
        features: bool = True,
    ) -> torch.nn.Module:
        """The one fine-tuning routine with the shared budget (and recovery when asked); `step_share` of its steps;
        `features` False drops recovery's feature term (recovery.feature_weight) from this run alone."""
        labelled = self.labelled()
        distill = self.distill
        if not features and distill is not None and distill.recovery.feature_weight > 0:
            distill = dataclasses.replace(distill, recovery=dataclasses.replace(distill.recovery, feature_weight=0.0))
        return fine_tune(
            model,
            labelled,
            self.train_config(),
            self.progress,
            after_step,
            distill,
            step_share,
        )

    def try_value(self, knob: str, value: float, model: torch.nn.Module, verify: bool = False) -> bool:
        """Score a candidate on clean dev data, record it, and say whether it reaches the target.

        With recovery the target is lowered by one standard error of the paired dev difference to θ_FT (the
        one-standard-error rule of model selection): a small dev set cannot tell a δ-point drop from noise, and the
        lower ρ is the safer model. The paper recipe keeps the plain target.
        """
        correct = correct_on(model, self.dd.dev)
        acc = float(correct.mean())
        need = self.target
        if self.cfg.distills and self.ft_correct is not None:
            need -= paired_se(self.ft_correct, correct)
        ok = acc >= need
        verified = None
        if verify and ok and self.verify is not None:  # the check only for a candidate the dev data would keep
            verified = self.verify(model)
            ok = verified
        self.search.append(Candidate(knob, value, acc, ok, need, verified))
        # 4 decimals and the row count: on a 60-row dev part a miss by a fraction of a row must not read as a tie
        self.say(
            f"{knob} {value:.2f}: dev accuracy {acc:.4f} ({int(correct.sum())} of {len(correct)} rows; need ≥ {need:.4f}) "
            f"{'' if verified is None else ', check ' + ('clean' if verified else 'still fires')} → {'pass' if ok else 'fail'}"
        )
        return ok


@dataclass
class Outcome:
    """What a registered defense returns."""

    model: torch.nn.Module
    rho: float | None = None
    prune_ratio: float | None = None


Defense = Callable[[Job], Outcome]  # the one signature of every registered defense


def correct_on(model: torch.nn.Module, enc: Encoded) -> np.ndarray:
    """Per example: does the model predict the label?"""
    return predict(model, enc).argmax(1) == np.asarray(enc.labels)


def accuracy(model: torch.nn.Module, enc: Encoded) -> float:
    return float(correct_on(model, enc).mean())


def pick_smallest(grid: Sequence[float], passes: Callable[[float], bool]) -> tuple[float, bool]:
    """Smallest grid value that passes, by bisection over the sorted grid (assumes passing is monotone).

    Returns (value, found); when nothing passes, the largest value and False.
    """
    values = sorted(grid)
    lo, hi = 0, len(values) - 1
    best = None
    while lo <= hi:
        mid = (lo + hi) // 2
        if passes(values[mid]):
            best, hi = mid, mid - 1
        else:
            lo = mid + 1
    return (values[best], True) if best is not None else (values[-1], False)


def first_passing(grid: Sequence[float], passes: Callable[[float], bool]) -> tuple[float, bool]:
    """Smallest grid value that passes, scanning up from the bottom and stopping at the first pass.

    Cheaper than bisection when low values usually pass (recovery); (largest, False) when none does.
    """
    values = sorted(grid)
    for v in values:
        if passes(v):
            return v, True
    return values[-1], False


def pick_largest(grid: Sequence[float], passes: Callable[[float], bool]) -> float:
    """Largest grid value that passes by bisection; 0 when none does."""
    values = sorted(grid)
    lo, hi = 0, len(values) - 1
    best = 0.0
    while lo <= hi:
        mid = (lo + hi) // 2
        if passes(values[mid]):
            best, lo = values[mid], mid + 1
        else:
            hi = mid - 1
    return best
