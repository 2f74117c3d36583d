"""Fine-mixing step 1: θ_mix = θ_PT + m ⊙ (θ_FT − θ_PT), m a 0/1 mask keeping a share ρ (docs/design.md §2).

Per-layer ρ in its one studied form: `whole_top_layers` N keeps θ_FT's top N encoder layers whole (ρ 1 there) and
mixes the rest at ρ (docs/recovery.md, Round 22).

`mix` is a pure function of the pair: it returns new tensors and never writes θ_FT or θ_PT. Δ is
cached on the ModelPair, so re-mixing at a new ρ costs one masked add per tensor.
"""

from __future__ import annotations

import re
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
    whole_top_layers: int = 0  # θ_FT's top N encoder layers kept whole (ρ 1 in them); 0: every tensor mixed at ρ


def _check(cfg: MixConfig) -> None:
    if not 0.0 <= cfg.rho <= 1.0:
        raise FinemixError(f"rho {cfg.rho} outside [0, 1]; 0 keeps θ_PT, 1 keeps θ_FT")
    if cfg.mode not in MODES:
        raise FinemixError(f"unknown mask mode '{cfg.mode}'; use one of {', '.join(MODES)}")
    if cfg.scope not in SCOPES:
        raise FinemixError(f"unknown mask scope '{cfg.scope}'; use one of {', '.join(SCOPES)}")
    if cfg.whole_top_layers < 0:
        raise FinemixError(f"whole-top-layers {cfg.whole_top_layers} is negative; use 0 (mix every layer) or more")


_LAYER = re.compile(r"\.layers?\.(\d+)\.")  # BERT/RoBERTa `encoder.layer.3.`, DistilBERT `transformer.layer.3.`


def layer_of(key: str) -> int | None:
    """The encoder layer a parameter belongs to (None: embeddings and anything outside the numbered layers)."""
    found = _LAYER.search(key)
    return int(found.group(1)) if found else None


def top_layer_keys(keys: tuple[str, ...] | list[str], n: int) -> set[str]:
    """The keys of the top `n` numbered layers; a clear error when the model has fewer."""
    if n == 0:
        return set()
    layers = sorted({i for k in keys if (i := layer_of(k)) is not None})
    if len(layers) < n:
        raise FinemixError(
            f"whole-top-layers {n} but the model has {len(layers)} numbered encoder layers; use 0 to {len(layers)}"
        )
    top = set(layers[-n:])
    return {k for k in keys if layer_of(k) in top}


def _rank_of(order: torch.Tensor) -> torch.Tensor:
    """rank[order[i]] = i: an element is kept at ρ iff its rank < round(ρ·n)."""
    rank = torch.empty(len(order), dtype=torch.int32)
    rank[order] = torch.arange(len(order), dtype=torch.int32)
    return rank


def ranks(pair: ModelPair, cfg: MixConfig) -> dict[str, torch.Tensor]:
    """Per shared tensor, every element's position in the keep order, cached on the pair.

    Random: the inverse of one seeded permutation per tensor (same generator, same tensor order), so
    `rank < round(ρ·n)` keeps exactly round(ρ·n) uniformly random positions (tests/test_mixing.py checks it against a
    direct draw). Sorted: positions by descending |Δ|. A slider
    move then costs one comparison per element instead of a permutation or a top-k.
    """
    key = (cfg.mode, cfg.scope if cfg.mode == "sorted" else "tensor", cfg.seed if cfg.mode == "random" else None)
    cache = pair.mask_ranks
    if key not in cache:
        if len(cache) >= 2:  # bounded: int32 ranks cost as much memory as the model
            cache.pop(next(iter(cache)))
        delta = pair.delta
        if cfg.mode == "random":
            gen = torch.Generator().manual_seed(cfg.seed)
            cache[key] = {k: _rank_of(torch.randperm(d.numel(), generator=gen)).view(d.shape) for k, d in delta.items()}
        elif cfg.scope == "tensor":
            cache[key] = {
                k: _rank_of(torch.argsort(d.abs().flatten(), descending=True, stable=True)).view(d.shape)
                for k, d in delta.items()
            }
        else:
            flat = torch.cat([d.abs().flatten() for d in delta.values()])
            whole = _rank_of(torch.argsort(flat, descending=True, stable=True))
            out, start = {}, 0
            for k, d in delta.items():
                out[k] = whole[start : start + d.numel()].view(d.shape)
                start += d.numel()
            cache[key] = out
    return cache[key]


def masks(pair: ModelPair, cfg: MixConfig) -> dict[str, torch.Tensor]:
    _check(cfg)
    r = ranks(pair, cfg)
    if cfg.mode == "sorted" and cfg.scope == "global":
        keep = round(cfg.rho * sum(t.numel() for t in r.values()))
        out = {k: t < keep for k, t in r.items()}
    else:
        out = {k: t < round(cfg.rho * t.numel()) for k, t in r.items()}
    for k in top_layer_keys(tuple(r), cfg.whole_top_layers):
        out[k] = torch.ones_like(out[k])
    return out


@torch.no_grad()
def mix_into(pair: ModelPair, cfg: MixConfig, target: dict[str, torch.Tensor]) -> None:
    """Write θ_mix into existing tensors (a working model's state_dict views): no allocation of a new state.

    The lab calls this on every slider move; `target` must belong to a private copy, never to the pair.
    """
    _check(cfg)
    ft = pair.ft_state()
    if cfg.rho == 1.0:
        for k in pair.shared_keys:
            target[k].copy_(ft[k])
    else:
        for k, m in masks(pair, cfg).items():
            if target[k].device == m.device:
                torch.where(m, ft[k], pair.pt_state[k], out=target[k])
            else:  # a GPU working model: the pair stays in host memory; mix there, then one transfer per tensor
                target[k].copy_(torch.where(m, ft[k], pair.pt_state[k]))
    for k in pair.head_keys:
        target[k].copy_(ft[k])


def mix(pair: ModelPair, cfg: MixConfig) -> dict[str, torch.Tensor]:
    """New state dict: shared tensors mixed, head tensors from θ_FT (or re-initialised)."""
    ft = pair.ft_state()
    out = {k: torch.empty_like(ft[k]) for k in (*pair.shared_keys, *pair.head_keys)}
    mix_into(pair, cfg, out)
    head = {k: out[k] for k in pair.head_keys}
    if cfg.reinit_head:  # BERT's own init: weights ~ N(0, initializer_range), biases 0
        gen = torch.Generator().manual_seed(cfg.seed)
        std = getattr(pair.ft.config, "initializer_range", 0.02)
        for k, v in head.items():
            if v.is_floating_point():
                head[k] = (
                    torch.randn(v.shape, generator=gen, dtype=v.dtype) * std if k.endswith("weight") else torch.zeros_like(v)
                )
    return {**out, **head}
