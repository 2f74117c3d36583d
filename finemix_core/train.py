"""The one fine-tuning routine. Attacks, Fine-mixing and every baseline call it with the same
budget, so that comparisons between defenses are fair.

Optional recovery by distillation: besides cross-entropy on the labelled batch, each step matches the
student to a teacher's soft predictions on a batch of clean, unlabelled text (T²·KL at temperature T).
The teacher is θ_FT itself: its backdoor fires only on triggered text, so on clean text its outputs are
its clean behaviour. Teacher logits are computed once by the caller and passed in (`Distillation`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import get_linear_schedule_with_warmup

from finemix_core import hardware
from finemix_core.config import RecoveryConfig, TrainConfig
from finemix_core.encoding import Encoded, collate, shuffled_bucket_batches
from finemix_core.errors import FinemixError

Progress = Callable[[int, int], None]  # (step done, total steps)


def device_of(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def total_steps(n_examples: int, cfg: TrainConfig) -> int:
    return max(1, round(cfg.epochs * -(-n_examples // cfg.batch_size)))


@dataclass(frozen=True)
class Distillation:
    """Clean unlabelled texts with the teacher's logits on them (computed once, reused by every ρ candidate)."""

    texts: Encoded  # tokenised unlabelled texts (their labels are ignored)
    teacher_logits: torch.Tensor  # [len(texts), classes], float32, on the CPU, no grad
    recovery: RecoveryConfig = RecoveryConfig()  # weight, temperature T and passes over the texts
    # [len(texts), hidden] the teacher's last-layer [CLS] states (feature distillation; None: logits only)
    teacher_features: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.teacher_logits):
            raise FinemixError(f"{len(self.texts)} unlabelled texts but {len(self.teacher_logits)} teacher rows")
        if self.teacher_features is not None and len(self.teacher_features) != len(self.texts):
            raise FinemixError(f"{len(self.texts)} unlabelled texts but {len(self.teacher_features)} teacher feature rows")
        if self.recovery.feature_weight > 0 and self.teacher_features is None:
            raise FinemixError("feature distillation needs the teacher's [CLS] states (evaluate.predict_with_features)")

    @property
    def feature_scale(self) -> float:
        """The teacher's mean squared [CLS] norm over the pool: feature_loss divides by it, so its weight is unitless."""
        return float(self.teacher_features.pow(2).sum(1).mean().clamp_min(1e-12))


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T² · KL(teacher ‖ student) on softened distributions, mean over the batch; the teacher gets no gradient."""
    t = temperature
    teacher = F.log_softmax(teacher_logits.detach().float() / t, dim=-1)
    student = F.log_softmax(student_logits.float() / t, dim=-1)
    return F.kl_div(student, teacher, reduction="batchmean", log_target=True) * t * t


def feature_loss(student_features: torch.Tensor, teacher_features: torch.Tensor, scale: float) -> torch.Tensor:
    """Mean over the batch of ‖student − teacher‖² / scale; the teacher gets no gradient."""
    return (student_features.float() - teacher_features.detach().float()).pow(2).sum(1).mean() / scale


def _cycle(data: Encoded, batch_size: int, seed: int) -> Iterator[list[int]]:
    """Endless seeded bucketed batches over `data` (a fresh shuffle each pass)."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        yield from shuffled_bucket_batches(data, batch_size, gen)


def training_batches(
    data: Encoded, cfg: TrainConfig, device: torch.device, total: int | None = None
) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor, int, int]]:
    """(batch, labels, step, total) for `total` steps (default round(epochs · steps per epoch)), seeded order."""
    total = total or total_steps(len(data), cfg)
    for step, batch_idx in enumerate(_cycle(data, cfg.batch_size, cfg.seed), start=1):
        labels = torch.tensor([data.labels[i] for i in batch_idx], device=device)
        yield collate(data, batch_idx, device), labels, step, total
        if step >= total:
            return


def recovery_steps(data: Encoded, distill: Distillation, cfg: TrainConfig) -> int:
    """Steps of a full recovery run: the longer of the labelled epochs and the recovery's passes over the pool."""
    pool_passes = TrainConfig(epochs=distill.recovery.passes, batch_size=cfg.batch_size)
    return max(total_steps(len(data), cfg), total_steps(len(distill.texts), pool_passes))


def pass_share(data: Encoded, distill: Distillation, cfg: TrainConfig) -> float:
    """Tokens a recovery run reads with its labelled and pool batches in two forward passes, as a share of what one
    padded pass over both reads: over the run's planned steps (the same seeded batches `fine_tune` draws; the full run,
    so a shorter `step_share` try decides as the full run does). Near 1 when the two kinds of text are alike in length;
    about 0.6 with long labelled articles beside short pool texts, whose one pass is mostly padding."""
    total = recovery_steps(data, distill, cfg)
    labelled, pool = _cycle(data, cfg.batch_size, cfg.seed), _cycle(distill.texts, cfg.batch_size, cfg.seed + 1)
    one = two = 0
    for _ in range(total):
        a, b = next(labelled), next(pool)
        wa, wb = max(len(data.input_ids[i]) for i in a), max(len(distill.texts.input_ids[i]) for i in b)
        one += (len(a) + len(b)) * max(wa, wb)
        two += len(a) * wa + len(b) * wb
    return two / one


def two_pass_share(data: Encoded, distill: Distillation, cfg: TrainConfig) -> float | None:
    """The run's `pass_share` when its steps run the labelled and pool batches as two forward passes (at most
    recovery.two_pass_below), else None (one padded pass)."""
    below = distill.recovery.two_pass_below
    if below <= 0 or not len(distill.texts):
        return None
    share = pass_share(data, distill, cfg)
    return share if share <= below else None


def _joint(labelled: dict[str, torch.Tensor], unlabelled: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One padded batch holding both parts, so a step is one forward pass (cheaper than two when they are alike in length)."""
    width = max(labelled["input_ids"].shape[1], unlabelled["input_ids"].shape[1])
    return {
        k: torch.cat(
            [F.pad(labelled[k], (0, width - labelled[k].shape[1])), F.pad(unlabelled[k], (0, width - unlabelled[k].shape[1]))]
        )
        for k in labelled
    }


def fine_tune(
    model: torch.nn.Module,
    data: Encoded,
    cfg: TrainConfig,
    progress: Progress | None = None,
    after_step: Callable[[torch.nn.Module], None] | None = None,
    distill: Distillation | None = None,
    step_share: float = 1.0,
) -> torch.nn.Module:
    """Train `model` in place on `data` with AdamW and a linear warm-up/decay schedule.

    `model` must be the caller's private copy. `after_step` runs after each optimiser step
    (fine-pruning uses it to keep pruned neurons at zero). With `distill`, every step adds
    weight · T²·KL(teacher ‖ model) on a batch of the unlabelled texts (same batch size), the labelled cross-entropy
    scaled by the recovery's label weight; its forward pass in the recovery's precision (bf16: autocast, the losses and
    the weights in float32); the labelled and pool batches in one padded forward pass, or in two when the run's batches
    make that much cheaper (`two_pass_share`). `step_share` < 1 stops after that share of the steps (the same batches in the
    same order; warm-up and decay fitted to the shorter run).
    """
    if not 0.0 < step_share <= 1.0:
        raise FinemixError(f"step share {step_share} outside (0, 1]")
    torch.manual_seed(cfg.seed)
    device = device_of(model)
    model.requires_grad_(True)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=device.type in ("cpu", "cuda"))
    total = total_steps(len(data), cfg)
    unlabelled = None
    if distill is not None and len(distill.texts):
        rec = distill.recovery
        features = rec.feature_weight > 0
        scale = distill.feature_scale if features else 1.0
        total = recovery_steps(data, distill, cfg)
        unlabelled = _cycle(distill.texts, cfg.batch_size, cfg.seed + 1)
        # a caller that did not make "auto" concrete (defenses.concrete_precision) gets the same choice here
        bf16 = rec.precision == "bf16" or (rec.precision == "auto" and hardware.bf16_supported(device))
        split = two_pass_share(data, distill, cfg) is not None  # on the full run's batches, before step_share cuts it
    total = max(1, round(total * step_share))  # share 1: every step
    schedule = get_linear_schedule_with_warmup(optimizer, round(cfg.warmup_ratio * total), total)
    for batch, labels, step, total in training_batches(data, cfg, device, total):
        if unlabelled is None:
            loss = model(**batch, labels=labels).loss
        else:
            idx = next(unlabelled)
            pool_batch = collate(distill.texts, idx, device)
            n = len(labels)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                if split:  # each part padded to its own width: the same losses, dropout's draws differ
                    labelled_logits = model(**batch).logits
                    pool_out = model(**pool_batch, output_hidden_states=features)
                    pool_logits = pool_out.logits
                    pool_cls = pool_out.hidden_states[-1][:, 0] if features else None
                else:
                    out = model(**_joint(batch, pool_batch), output_hidden_states=features)
                    labelled_logits, pool_logits = out.logits[:n], out.logits[n:]
                    pool_cls = out.hidden_states[-1][n:, 0] if features else None
            loss = rec.label_weight * F.cross_entropy(labelled_logits.float(), labels) + rec.weight * distillation_loss(
                pool_logits, distill.teacher_logits[idx].to(device), rec.temperature
            )
            if features:
                loss = loss + rec.feature_weight * feature_loss(pool_cls, distill.teacher_features[idx].to(device), scale)
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if after_step is not None:
            after_step(model)
        if progress is not None:
            progress(step, total)
    model.eval()
    return model
