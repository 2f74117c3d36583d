"""Fine-mixing (docs/design.md §2): mix θ_FT with θ_PT keeping a share ρ, then fine-tune the mix on the clean set.

ρ given: one run. ρ auto: the smallest grid ρ whose clean dev accuracy after fine-tuning reaches θ_FT's − δ (the paper
recipe bisects GRID). With recovery the search scans RECOVERY_GRID up from the bottom with a one-standard-error
allowance, and keeps the best dev accuracy when nothing passes; with `recovery.found_rho` and a scan that found evidence,
that ρ is tried first and kept only if it passes on dev and a fresh scan of the result finds no evidence.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from finemix_core.defenses.base import Job, Outcome, first_passing, pick_smallest
from finemix_core.mixing import MixConfig, mix

State = dict[str, torch.Tensor]


def mix_config(job: Job, rho: float, mode: str) -> MixConfig:
    """The mask a run uses at ρ: with recovery, θ_FT's top `whole_top_layers` layers stay whole (below ρ 1 only)."""
    top = job.cfg.recovery.whole_top_layers if job.cfg.distills and rho < 1.0 else 0
    return MixConfig(rho=rho, mode=mode, scope=job.cfg.mix_scope, seed=job.cfg.seed, whole_top_layers=top)


def _run(job: Job, mode: str) -> Outcome:
    return search_rho(job, lambda rho: mix(job.pair, mix_config(job, rho, mode)))


def search_rho(job: Job, state_at: Callable[[float], State]) -> Outcome:
    """Fine-tune the state `state_at(ρ)` at the given ρ, or search ρ on clean dev data (shared with Fine-purifying)."""

    def fine_tuned(rho: float, step_share: float = 1.0, features: bool = True) -> torch.nn.Module:
        return job.train(job.pair.working_copy(state_at(rho)).to(job.device), step_share=step_share, features=features)

    if job.cfg.rho is not None:
        return Outcome(fine_tuned(job.cfg.rho), rho=job.cfg.rho)
    if job.first_rho is not None:  # the scan named the trigger: try keeping more of θ_FT first, checked from clean data
        first = fine_tuned(job.first_rho, job.cfg.recovery.found_steps, job.cfg.recovery.found_features)
        if job.try_value("rho", job.first_rho, first, verify=True):
            return Outcome(first, rho=job.first_rho)
        job.say(f"ρ {job.first_rho:g} not kept; searching {', '.join(f'{r:g}' for r in job.cfg.grid)} as usual")
    trained: dict[float, torch.nn.Module] = {}

    def passes(rho: float) -> bool:
        trained[rho] = fine_tuned(rho)
        return job.try_value("rho", rho, trained[rho])

    search = first_passing if job.cfg.distills else pick_smallest
    rho, found = search(job.cfg.grid, passes)
    if not found and job.cfg.distills:
        grid = [c for c in job.search if c.value in trained]  # never the unverified first try
        best = max(grid, key=lambda c: (c.dev_acc, -c.value))  # with recovery: the better dev accuracy, lower ρ on ties
        rho = best.value
        job.say(f"no ρ on the grid passed; keeping ρ {rho:g}, the best dev accuracy ({best.dev_acc:.3f})")
    elif not found:
        job.say(f"no ρ on the grid reached θ_FT's dev accuracy − {job.cfg.delta}; using the largest, {rho}")
    return Outcome(trained[rho] if rho in trained else fine_tuned(rho), rho=rho)


def run_random(job: Job) -> Outcome:
    """mix θ_FT into θ_PT keeping a random share ρ, then fine-tune"""
    return _run(job, "random")


def run_sorted(job: Job) -> Outcome:
    """mix θ_FT into θ_PT keeping the share ρ with the largest |Δ|, then fine-tune"""
    return _run(job, "sorted")
