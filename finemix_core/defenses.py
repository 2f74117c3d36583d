"""Defenses (DESIGN.md §2, §3, §6): fine-tuning, fine-pruning, Fine-mixing, E-PUR and E-PUR + X.

Every method fine-tunes with the same `train.fine_tune` routine and the same budget, so that the
comparison is fair. The defender's data is a `DefenderData`: a small clean training set and a clean
dev set. Nothing here ever sees test data or triggered inputs — the choice of ρ (`auto`) and of the
prune ratio are made on clean dev accuracy alone, by construction (DefenderData holds nothing else).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from datasets import Dataset

from finemix_core import data
from finemix_core.config import TrainConfig
from finemix_core.encoding import Encoded, collate, encode, sorted_batches
from finemix_core.epur import EpurConfig, purify, table
from finemix_core.errors import FinemixError
from finemix_core.evaluate import predict
from finemix_core.mixing import MixConfig, mix
from finemix_core.models import ModelPair
from finemix_core.train import Progress, device_of, fine_tune

BASE_METHODS = ("none", "fine-tuning", "fine-pruning", "fine-mixing", "fine-mixing-sorted")
METHODS = (*BASE_METHODS, "epur", *(f"epur+{m}" for m in BASE_METHODS[1:]))
GRID = tuple(round(0.1 * i, 1) for i in range(1, 10))  # ρ and prune-ratio candidates

# The defense budget. DESIGN.md §10 measured lr 2e-5 × 5 epochs too weak to wash out a rare-word backdoor on
# this θ_PT and lr 1e-4 × 10 epochs clearly better; we adopt the latter as is, not grid-searched here (and never
# on test data). Its cost shows in assets/report/report.md: plain fine-tuning loses ~2 CACC points with it.
DEFENSE_TRAIN = TrainConfig(lr=1e-4, epochs=10.0, batch_size=16)


@dataclass(frozen=True)
class DefenseConfig:
    """One defense run."""

    method: str = "fine-mixing"  # one of METHODS
    rho: float | None = None  # reserve ratio; None = auto (smallest grid ρ within `delta` of θ_FT's dev accuracy)
    rho_grid: tuple[float, ...] = GRID  # candidates for auto-ρ, searched by bisection (dev accuracy grows with ρ)
    delta: float = 0.02  # allowed clean dev-accuracy drop for auto-ρ and the prune ratio
    mix_scope: str = "tensor"  # sorted masks: rank per tensor or globally
    epur: EpurConfig = field(default_factory=EpurConfig)  # K and the frequency floor c
    prune_ratio: float | None = None  # fine-pruning share of FFN neurons per layer; None = largest grid value within delta
    train: TrainConfig = DEFENSE_TRAIN  # the same budget for every method
    seed: int = 0  # masks, fine-tuning order and dropout

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise FinemixError(f"unknown method '{self.method}'; use one of {', '.join(METHODS)}")
        if self.rho is not None and not 0.0 <= self.rho <= 1.0:
            raise FinemixError(f"rho {self.rho} outside [0, 1]; 0 keeps θ_PT, 1 keeps θ_FT (or use auto)")
        if self.prune_ratio is not None and not 0.0 <= self.prune_ratio < 1.0:
            raise FinemixError(f"prune ratio {self.prune_ratio} outside [0, 1)")
        if not self.rho_grid or any(not 0.0 <= r <= 1.0 for r in self.rho_grid):
            raise FinemixError("rho grid must be non-empty values in [0, 1]")
        if self.delta < 0:
            raise FinemixError(f"delta {self.delta} must be ≥ 0")

    @property
    def uses_epur(self) -> bool:
        return self.method.startswith("epur")

    @property
    def base(self) -> str:
        """The method after E-PUR ('none' for plain epur)."""
        return self.method.removeprefix("epur+") if self.method != "epur" else "none"


@dataclass(frozen=True)
class DefenderData:
    """All the defender has: a small clean train set, a clean dev set and the clean texts (E-PUR's frequencies)."""

    train: Encoded
    dev: Encoded
    texts: tuple[str, ...]


def defender_data(
    tokenizer, train: Dataset, dev: Dataset, clean_size: int = 128, dev_size: int = 256, seed: int = 0, max_length: int = 128
) -> DefenderData:
    """Draw the clean set (stratified, seeded) from `train` and up to `dev_size` examples from `dev`."""
    small = data.clean_subset(train, clean_size, seed)
    if len(dev) == 0:
        raise FinemixError("the dev split is empty; provide more clean data (auto-ρ needs held-out examples)")
    dev = dev.select(range(min(dev_size, len(dev))))
    texts = tuple(t for col in data.text_columns(small) for t in small[col])
    return DefenderData(encode(tokenizer, small, max_length), encode(tokenizer, dev, max_length), texts)


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
    search: list[dict]  # every candidate tried: {"rho"|"prune_ratio": x, "dev_acc": y}
    seconds: float

    def summary(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "model"} | {"seconds": round(self.seconds, 2)}


def accuracy(model: torch.nn.Module, enc: Encoded) -> float:
    return float((predict(model, enc).argmax(1) == np.asarray(enc.labels)).mean())


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


# ---- fine-pruning (Liu et al. 2018): remove the FFN neurons least active on clean data ----


def ffn_layers(model: torch.nn.Module) -> list[tuple[torch.nn.Module, torch.nn.Linear, torch.nn.Linear]]:
    """(intermediate module, its up-projection, the down-projection) per transformer layer (BERT family)."""
    layers = []
    for name, module in model.named_modules():
        if name.endswith(".intermediate") and isinstance(getattr(module, "dense", None), torch.nn.Linear):
            parent = model.get_submodule(name.rsplit(".", 1)[0])
            down = getattr(getattr(parent, "output", None), "dense", None)
            if isinstance(down, torch.nn.Linear):
                layers.append((module, module.dense, down))
    if not layers:
        raise FinemixError("fine-pruning supports BERT-style encoders (layer.intermediate / layer.output); this model has none")
    return layers


@torch.inference_mode()
def ffn_activations(model: torch.nn.Module, enc: Encoded, batch_size: int = 64) -> list[torch.Tensor]:
    """Mean post-activation value of every FFN neuron over the real (non-padding) tokens of `enc`."""
    layers = ffn_layers(model)
    sums = [torch.zeros(up.out_features, dtype=torch.float64) for _, up, _ in layers]
    mask_box: list[torch.Tensor] = []

    def hook(i: int):
        def record(_module, _inputs, output):
            m = mask_box[0].unsqueeze(-1).to(output.dtype)
            sums[i] += (output * m).sum(dim=(0, 1)).double().cpu()
        return record

    handles = [inter.register_forward_hook(hook(i)) for i, (inter, _, _) in enumerate(layers)]
    device = device_of(model)
    was_training = model.training
    model.eval()
    tokens = 0
    try:
        for idx in sorted_batches(enc, batch_size):
            batch = collate(enc, idx, device)
            mask_box[:] = [batch["attention_mask"]]
            tokens += int(batch["attention_mask"].sum())
            model(**batch)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return [(s / max(tokens, 1)).float() for s in sums]


def prune_plan(activations: list[torch.Tensor], ratio: float) -> list[torch.Tensor]:
    """Per layer, the indices of the round(ratio · n) least active neurons."""
    return [torch.argsort(a, stable=True)[: round(ratio * len(a))] for a in activations]


@torch.no_grad()
def apply_pruning(model: torch.nn.Module, plan: list[torch.Tensor]) -> None:
    """Zero the planned neurons: their input rows, biases and output columns (in place, on a private copy)."""
    for (_, up, down), idx in zip(ffn_layers(model), plan, strict=True):
        if len(idx) == 0:
            continue
        idx = idx.to(up.weight.device)
        up.weight[idx] = 0
        if up.bias is not None:
            up.bias[idx] = 0
        down.weight[:, idx] = 0


# ---- the methods ----


def _train(model: torch.nn.Module, dd: DefenderData, cfg: DefenseConfig, progress: Progress | None,
           after_step: Callable[[torch.nn.Module], None] | None = None) -> torch.nn.Module:
    return fine_tune(model, dd.train, dataclasses.replace(cfg.train, seed=cfg.seed), progress, after_step)


def purified_pair(pair: ModelPair, flagged_ids: Sequence[int]) -> ModelPair:
    """A new pair whose θ_FT has the flagged embedding rows reset to θ_PT (the input pair is untouched)."""
    ft = pair.working_copy(purify(pair, pair.ft_state(), flagged_ids))
    ft.requires_grad_(False)
    return dataclasses.replace(pair, ft=ft)  # a fresh dataclass: Δ is recomputed for the purified θ_FT


def fine_mix(pair: ModelPair, dd: DefenderData, rho: float, cfg: DefenseConfig, device: torch.device,
             progress: Progress | None = None) -> torch.nn.Module:
    """Fine-mixing at a given ρ: mix, then fine-tune the mix on the clean set."""
    mode = "sorted" if cfg.base == "fine-mixing-sorted" else "random"
    state = mix(pair, MixConfig(rho=rho, mode=mode, scope=cfg.mix_scope, seed=cfg.seed))
    model = pair.working_copy(state).to(device)
    return _train(model, dd, cfg, progress)


def defend(
    pair: ModelPair,
    dd: DefenderData,
    cfg: DefenseConfig,
    device: torch.device | str = "cpu",
    progress: Progress | None = None,
    log: Callable[[str], None] | None = None,
) -> DefenseResult:
    """Run one defense on a private copy of θ_FT; `pair` is never modified."""
    started = time.perf_counter()
    device = torch.device(device)
    say = log or (lambda _msg: None)
    ft_model = pair.working_copy().to(device)
    ft_dev = accuracy(ft_model, dd.dev)
    target = ft_dev - cfg.delta
    flagged: list[str] = []
    if cfg.uses_epur:
        tab = table(pair, dd.texts, cfg.epur)
        top = tab[tab.flagged].sort_values("score", ascending=False)
        flagged = top.token.tolist()
        pair = purified_pair(pair, top.id.tolist())
        say(f"E-PUR reset {len(flagged)} embedding rows (top: {', '.join(flagged[:5])})")
    rho = prune = None
    search: list[dict] = []
    base = cfg.base

    if base == "none":
        model = pair.working_copy().to(device)
    elif base == "fine-tuning":
        model = _train(pair.working_copy().to(device), dd, cfg, progress)
    elif base == "fine-pruning":
        model = pair.working_copy().to(device)
        acts = ffn_activations(model, dd.train)

        def pruned_ok(ratio: float) -> bool:
            trial = pair.working_copy().to(device)
            apply_pruning(trial, prune_plan(acts, ratio))
            acc = accuracy(trial, dd.dev)
            search.append({"prune_ratio": ratio, "dev_acc": acc})
            say(f"prune ratio {ratio:.2f}: dev accuracy {acc:.3f} (need ≥ {target:.3f})")
            return acc >= target

        prune = cfg.prune_ratio if cfg.prune_ratio is not None else pick_largest(GRID, pruned_ok)
        plan = prune_plan(acts, prune)
        apply_pruning(model, plan)
        model = _train(model, dd, cfg, progress, after_step=lambda m: apply_pruning(m, plan))
    else:  # fine-mixing (random or sorted)
        if cfg.rho is not None:
            rho = cfg.rho
            model = fine_mix(pair, dd, rho, cfg, device, progress)
        else:
            trained: dict[float, torch.nn.Module] = {}

            def mixed_ok(r: float) -> bool:
                trained[r] = fine_mix(pair, dd, r, cfg, device, progress)
                acc = accuracy(trained[r], dd.dev)
                search.append({"rho": r, "dev_acc": acc})
                say(f"ρ {r:.2f}: dev accuracy after fine-tuning {acc:.3f} (need ≥ {target:.3f})")
                return acc >= target

            rho, found = pick_smallest(cfg.rho_grid, mixed_ok)
            if not found:
                say(f"no ρ on the grid reached θ_FT's dev accuracy − {cfg.delta}; using the largest, {rho}")
            model = trained[rho] if rho in trained else fine_mix(pair, dd, rho, cfg, device, progress)
    model.eval()
    return DefenseResult(
        model=model, method=cfg.method, rho=rho, rho_auto=cfg.rho is None and rho is not None, prune_ratio=prune,
        flagged=flagged, dev_acc=accuracy(model, dd.dev), ft_dev_acc=ft_dev, search=search,
        seconds=time.perf_counter() - started,
    )
