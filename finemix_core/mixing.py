"""Fine-mixing step 1: θ_mix = θ_PT + m ⊙ (θ_FT − θ_PT), m a 0/1 mask keeping a share ρ (DESIGN.md §2).

`mix` is a pure function of the pair: it returns new tensors and never writes θ_FT or θ_PT. Δ is
cached on the ModelPair, so re-mixing at a new ρ costs one masked add per tensor.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from finemix_core.errors import FinemixError
from finemix_core.models import ModelPair

MODES = ("random", "sorted")
SCOPES = ("tensor", "global")


@dataclass(frozen=True)
class MixConfig:
    rho: float = 0.3  # reserve ratio: share of fine-tuned weights kept (1 = θ_FT, 0 = θ_PT)
    mode: str = "random"  # random: uniform positions; sorted: largest |Δ| kept
    scope: str = "tensor"  # sorted masks rank per tensor, or over all shared weights at once
    seed: int = 0  # random masks: same seed, same mask
    reinit_head: bool = False  # re-initialise the classifier head instead of keeping θ_FT's


def _check(cfg: MixConfig) -> None:
    if not 0.0 <= cfg.rho <= 1.0:
        raise FinemixError(f"rho {cfg.rho} outside [0, 1]; 0 keeps θ_PT, 1 keeps θ_FT")
    if cfg.mode not in MODES:
        raise FinemixError(f"unknown mask mode '{cfg.mode}'; use one of {', '.join(MODES)}")
    if cfg.scope not in SCOPES:
        raise FinemixError(f"unknown mask scope '{cfg.scope}'; use one of {', '.join(SCOPES)}")


def random_mask(shape: torch.Size, rho: float, generator: torch.Generator) -> torch.Tensor:
    """Exactly round(ρ·n) ones at uniformly random positions."""
    n = shape.numel()
    keep = round(rho * n)
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.randperm(n, generator=generator)[:keep]] = True
    return mask.view(shape)


def sorted_mask(delta: torch.Tensor, rho: float) -> torch.Tensor:
    """Keep the round(ρ·n) entries with the largest |Δ| (ties broken by position)."""
    n = delta.numel()
    keep = round(rho * n)
    mask = torch.zeros(n, dtype=torch.bool)
    if keep:
        mask[torch.topk(delta.abs().flatten(), keep, sorted=False).indices] = True
    return mask.view(delta.shape)


def masks(pair: ModelPair, cfg: MixConfig) -> dict[str, torch.Tensor]:
    _check(cfg)
    delta = pair.delta
    if cfg.mode == "random":
        gen = torch.Generator().manual_seed(cfg.seed)
        return {k: random_mask(d.shape, cfg.rho, gen) for k, d in delta.items()}
    if cfg.scope == "tensor":
        return {k: sorted_mask(d, cfg.rho) for k, d in delta.items()}
    flat = torch.cat([d.abs().flatten() for d in delta.values()])
    whole = sorted_mask(flat, cfg.rho)
    out, start = {}, 0
    for k, d in delta.items():
        out[k] = whole[start : start + d.numel()].view(d.shape)
        start += d.numel()
    return out


def mix(pair: ModelPair, cfg: MixConfig) -> dict[str, torch.Tensor]:
    """New state dict: shared tensors mixed, head tensors from θ_FT (or re-initialised)."""
    _check(cfg)
    ft = pair.ft_state()
    if cfg.rho == 1.0:
        mixed = {k: ft[k].clone() for k in pair.shared_keys}
    else:
        m = masks(pair, cfg)
        mixed = {k: torch.where(m[k], ft[k], pt) for k, pt in pair.pt_state.items()}
    head = {k: ft[k].clone() for k in pair.head_keys}
    if cfg.reinit_head:  # BERT's own init: weights ~ N(0, initializer_range), biases 0
        gen = torch.Generator().manual_seed(cfg.seed)
        std = getattr(pair.ft.config, "initializer_range", 0.02)
        for k, v in head.items():
            if v.is_floating_point():
                head[k] = torch.randn(v.shape, generator=gen, dtype=v.dtype) * std if k.endswith("weight") else torch.zeros_like(v)
    return {**mixed, **head}
