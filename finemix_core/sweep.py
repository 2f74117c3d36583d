"""The ρ sweep: CACC, ASR and target bias at every ρ of a grid, mix-only and (with fine_tune) after Fine-mixing's
clean fine-tune.

Mix-only points are one scoring pass each and run on the driver. Fine-tuned points are defense runs with a fixed ρ:
they go through the executor seam (executor.py) like the report's runs, are stored one row each (kind "sweep"), and an
identical point stored earlier — by a sweep or by the report's fixed-ρ section — is reused, so a sweep resumes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from finemix_core.defenses import DefenseConfig
from finemix_core.executor import ContextCache, ExecutionStats, Executor, RunSpec, execute, failure_error
from finemix_core.experiment import Context, mixed_scores


def specs(
    model: str,
    rhos: list[float],
    mode: str = "random",
    clean_size: int = 128,
    seed: int = 0,
    eval_limit: int | None = None,
    pretrained: str = "default",
    defense: DefenseConfig | None = None,
    method: str | None = None,
) -> list[RunSpec]:
    """The fine-tuned points at each fixed ρ: `method` (a Fine-mixing method, e.g. the default defense), else the
    paper's Fine-mixing with the mask `mode`."""
    method = method or ("fine-mixing-sorted" if mode == "sorted" else "fine-mixing")
    base = defense or DefenseConfig()
    return [RunSpec(model, replace(base, method=method, rho=rho, seed=seed), clean_size, pretrained, eval_limit) for rho in rhos]


def run(
    ctx: Context,
    model: str,
    rhos: list[float],
    mode: str = "random",
    fine_tune: bool = False,
    clean_size: int = 128,
    seed: int = 0,
    eval_limit: int | None = None,
    pretrained: str = "default",
    executor: Executor | None = None,
    resume: bool = True,
    log: Callable[[str], None] = print,
    progress: bool = False,
    defense: DefenseConfig | None = None,
    method: str | None = None,
) -> tuple[list[dict], ExecutionStats | None]:
    """Rows in ρ order (mix-only, then fine-tuned when asked), and how the fine-tuned points were executed.
    `ctx` is `model` loaded with `pretrained` and `eval_limit` (the driver's copy)."""
    mix = []
    work = ctx.pair.working_copy().to(ctx.device)  # one private copy, re-mixed in place at every ρ
    for rho in rhos:
        s = mixed_scores(ctx, rho, mode, seed, work)
        mix.append({"rho": rho, "mode": mode, "stage": "mix-only", **s.as_dict(), "asr_floor": ctx.floor})
    if not fine_tune:
        return mix, None
    planned = specs(model, rhos, mode, clean_size, seed, eval_limit, pretrained, defense, method)
    contexts = ContextCache(ctx.device)
    contexts.put(planned[0], ctx)
    keys, stored, stats = execute(planned, contexts, executor, "sweep", resume, log, progress)
    if stats.failed:
        raise failure_error(stats)
    rows = []
    for point, spec in zip(mix, planned):
        row = stored[keys[spec]]
        rows += [
            point,
            {
                "rho": point["rho"],
                "mode": mode,
                "stage": "fine-tuned",
                "method": spec.defense.method,
                "cacc": row["cacc"],
                "asr": row["asr"],
                "target_bias": row["target_bias"],
                "n_clean": row["n_clean"],
                "n_nontarget": row["n_nontarget"],
                "asr_floor": ctx.floor,
            },
        ]
    return rows, stats
