"""Fine-purifying (Zhang, Lyu, Wang, Ma, Sun, Findings of ACL 2023): reset the fine-tuned weights whose drift is large
relative to what the clean task explains, then fine-tune on the clean set.

Fine-mixing keeps a random (or largest-|Δ|) share ρ of θ_FT's updates. Fine-purifying ranks them instead by a
Fisher-relative drift: an update Δ_i = θ_FT,i − θ_PT,i is suspicious when it is large but the clean task barely needs
that weight, i.e. when the diagonal (empirical) Fisher information F_i of θ_FT on clean labelled data is small:

    score_i = Δ_i² / (F_i + ε),   F_i = mean over clean examples (x, y) of (∂ log p_θFT(y | x) / ∂θ_i)²

Per tensor, the share ρ with the *lowest* score keeps θ_FT's value, the rest is reset to θ_PT (the classifier head is
θ_FT's, as in Fine-mixing); then the shared fine-tune, with recovery when asked, and the same dev-only ρ search.
This is our reading of the paper's "relative" indicator (its reference code was not available offline); the Fisher is
estimated on the defender's labelled clean set only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from finemix_core.defenses.base import Job, Outcome
from finemix_core.defenses.fine_mixing import search_rho
from finemix_core.encoding import Encoded, collate
from finemix_core.models import ModelPair

EPS = 1e-12  # keeps a weight the clean data never touches (F = 0) finite: ranked by its drift alone, first to reset


def fisher_diag(model: torch.nn.Module, enc: Encoded, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Diagonal empirical Fisher of `model` on labelled `enc`: per parameter, the mean over examples of the squared
    gradient of log p(true label | x) (one example per backward pass; dropout off). Returns CPU float32 tensors."""
    was_training = model.training
    model.eval()
    names = [n for n, p in model.named_parameters()]
    params = [p for _, p in model.named_parameters()]
    needs = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
    total = [torch.zeros_like(p, dtype=torch.float32) for p in params]
    try:
        for i in range(len(enc)):
            logits = model(**collate(enc, [i], device)).logits
            logp = F.log_softmax(logits.float(), dim=-1)[0, enc.labels[i]]
            grads = torch.autograd.grad(logp, params, allow_unused=True)
            for acc, g in zip(total, grads):
                if g is not None:
                    acc.add_(g.float() ** 2)
    finally:
        for p, n in zip(params, needs):
            p.requires_grad_(n)
        model.train(was_training)
    n = max(len(enc), 1)
    return {name: (acc / n).cpu() for name, acc in zip(names, total)}


def scores(pair: ModelPair, fisher: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per shared tensor, Δ² / (F + ε); a tensor without Fisher (a buffer) is ranked by Δ² alone."""
    return {k: d.float() ** 2 / (fisher[k] + EPS) if k in fisher else d.float() ** 2 for k, d in pair.delta.items()}


def purified_state(pair: ModelPair, score: dict[str, torch.Tensor], rho: float) -> dict[str, torch.Tensor]:
    """θ_PT + m ⊙ Δ with m keeping, per tensor, the round(ρ·n) entries of lowest score; the head from θ_FT."""
    ft = pair.ft_state()
    out = {}
    for k, pt in pair.pt_state.items():
        s = score[k].flatten()
        keep = torch.zeros(s.numel(), dtype=torch.bool)
        keep[torch.argsort(s, stable=True)[: round(rho * s.numel())]] = True
        out[k] = torch.where(keep.view(pt.shape), ft[k], pt)
    return out | {k: ft[k].clone() for k in pair.head_keys}


def run(job: Job) -> Outcome:
    """reset the weights with the largest Fisher-relative drift to θ_PT, keeping a share ρ, then fine-tune"""
    ft = job.pair.ft_for_inference(job.device)
    score = scores(job.pair, fisher_diag(ft, job.dd.train, job.device))
    job.say(f"Fine-purifying: diagonal Fisher of θ_FT on {len(job.dd.train)} clean labelled examples")
    return search_rho(job, lambda rho: purified_state(job.pair, score, rho))
