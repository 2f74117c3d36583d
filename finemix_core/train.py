"""The one fine-tuning routine. Attacks, Fine-mixing and every baseline call it with the same
budget, so that comparisons between defenses are fair.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from transformers import get_linear_schedule_with_warmup

from finemix_core.config import TrainConfig
from finemix_core.encoding import Encoded, collate, shuffled_bucket_batches

Progress = Callable[[int, int], None]  # (step done, total steps)


def device_of(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def total_steps(n_examples: int, cfg: TrainConfig) -> int:
    return max(1, round(cfg.epochs * -(-n_examples // cfg.batch_size)))


def training_batches(
    data: Encoded, cfg: TrainConfig, device: torch.device
) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor, int, int]]:
    """(batch, labels, step, total) for round(epochs · steps per epoch) steps, seeded order."""
    gen = torch.Generator().manual_seed(cfg.seed)
    total = total_steps(len(data), cfg)
    step = 0
    while True:
        for batch_idx in shuffled_bucket_batches(data, cfg.batch_size, gen):
            step += 1
            labels = torch.tensor([data.labels[i] for i in batch_idx], device=device)
            yield collate(data, batch_idx, device), labels, step, total
            if step >= total:
                return


def fine_tune(
    model: torch.nn.Module,
    data: Encoded,
    cfg: TrainConfig,
    progress: Progress | None = None,
    after_step: Callable[[torch.nn.Module], None] | None = None,
) -> torch.nn.Module:
    """Train `model` in place on `data` with AdamW and a linear warm-up/decay schedule.

    `model` must be the caller's private copy. `after_step` runs after each optimiser step
    (fine-pruning uses it to keep pruned neurons at zero).
    """
    torch.manual_seed(cfg.seed)
    device = device_of(model)
    model.requires_grad_(True)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=device.type in ("cpu", "cuda")
    )
    total = total_steps(len(data), cfg)
    schedule = get_linear_schedule_with_warmup(optimizer, round(cfg.warmup_ratio * total), total)
    for batch, labels, step, total in training_batches(data, cfg, device):
        model(**batch, labels=labels).loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if after_step is not None:
            after_step(model)
        if progress is not None:
            progress(step, total)
    model.eval()
    return model
