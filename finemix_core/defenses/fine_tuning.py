"""Fine-tuning (DESIGN.md §6): train θ_FT itself on the clean set with the shared budget."""

from __future__ import annotations

from finemix_core.defenses.base import Job, Outcome


def run(job: Job) -> Outcome:
    return Outcome(job.train(job.pair.working_copy().to(job.device)))


def keep(job: Job) -> Outcome:
    """No defense: θ_FT as it is (after E-PUR when asked) — the reference row."""
    return Outcome(job.pair.working_copy().to(job.device))
