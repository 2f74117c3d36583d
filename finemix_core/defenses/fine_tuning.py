"""Fine-tuning (docs/design.md §6): train θ_FT itself on the clean set with the shared budget."""

from __future__ import annotations

from finemix_core.defenses.base import Job, Outcome


def run(job: Job) -> Outcome:
    """fine-tune θ_FT on the clean set"""
    return Outcome(job.train(job.pair.working_copy().to(job.device)))


def keep(job: Job) -> Outcome:
    """θ_FT as it is (the reference row)"""
    return Outcome(job.pair.working_copy().to(job.device))
