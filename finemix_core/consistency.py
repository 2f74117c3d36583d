"""Trigger-aware recovery: teach the student that the scan's suspected trigger means nothing.

Recovery by distillation (train.Distillation) matches the student to θ_FT on clean text, where θ_FT's backdoor is
silent; nothing in it tells the student what to do when the trigger appears, so a backdoor that survives the reset
(a common-word sentence trigger, an encoder-level word trigger) can survive recovery too. When `finemix scan` finds a
suspect from clean data alone, two kinds of copies join recovery:

- **consistency copies** of pool texts with the suspect inserted, whose teacher is θ_FT on the same text *without* it:
  the loss T²·KL(θ_FT(x) ‖ student(x ⊕ t)) is the distillation loss on the pair, so it is zero when the trigger changes
  nothing and its gradient reaches only the student (the teacher's logits are fixed numbers);
- **labelled copies** of the clean labelled set with the suspect inserted, keeping their true labels.

The suspects come only from a `ScanResult` (the scan drops the model's card on entry): nothing the model's maker wrote
reaches recovery (tests/test_consistency.py). Insertion is on token ids at word boundaries, seeded (scan.Inserter).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch

from finemix_core.config import RecoveryConfig
from finemix_core.encoding import Encoded, concat
from finemix_core.train import Distillation, distillation_loss
from finemix_core.triggers import Inserter


def suspects(found, rec: RecoveryConfig) -> list:
    """The scan's candidates recovery treats as triggers: up to `rec.max_suspects`, best first, each with an excess flip
    over the clean reference of at least `rec.min_excess` (weaker ones are likely ordinary words of the task)."""
    if found is None:
        return []
    return [s for s in found.candidates if s.excess >= rec.min_excess and s.token_ids][: rec.max_suspects]


def chosen_rows(n: int, share: float, seed: int) -> list[int]:
    """A seeded share of the rows 0..n-1 (at least one when n > 0 and share > 0), in ascending order."""
    k = min(n, max(1, round(share * n))) if n and share > 0 else 0
    return sorted(np.random.default_rng(seed).choice(n, size=k, replace=False).tolist())


def triggered_copies(
    tokenizer, enc: Encoded, triggers: Sequence[tuple[int, ...]], share: float, seed: int
) -> tuple[list[int], Encoded]:
    """(rows, copies): a seeded share of `enc`'s rows with a trigger inserted at a word boundary (the triggers taken in
    turn), labels kept, no copy longer than `enc`'s longest text (its cut fits the model). No triggers or share: none."""
    rows = chosen_rows(len(enc), share, seed) if triggers else []
    if not rows:
        return [], enc.subset([])
    insert = Inserter(tokenizer, enc, seed, max(len(ids) for ids in enc.input_ids))
    parts = [insert(triggers[j % len(triggers)], [r]) for j, r in enumerate(rows)]
    return rows, concat(parts)


def with_consistency(
    base: Distillation, tokenizer, triggers: Sequence[tuple[int, ...]], share: float, seed: int
) -> tuple[Distillation, int]:
    """The distillation set plus consistency copies: pool texts with a suspect inserted, taught θ_FT's logits on the
    same text without it. Returns (the larger set, copies added).

    The run keeps its length: the passes are scaled so that passes × texts stays what it was (the copies take a share
    of the steps instead of adding steps; a defense with them costs the same time as one without)."""
    rows, copies = triggered_copies(tokenizer, base.texts, triggers, share, seed)
    if not rows:
        return base, 0
    logits = torch.cat([base.teacher_logits, base.teacher_logits[rows]])
    feats = None if base.teacher_features is None else torch.cat([base.teacher_features, base.teacher_features[rows]])
    n = len(base.texts)
    passes = base.recovery.passes * n / (n + len(rows))
    rec = dataclasses.replace(base.recovery, passes=passes)
    return Distillation(concat([base.texts, copies]), logits, rec, teacher_features=feats), len(rows)


def consistency_loss(
    student: torch.nn.Module, triggered: dict[str, torch.Tensor], teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """T²·KL(teacher on the clean text ‖ student on the triggered text): what one consistency copy adds to a step."""
    return distillation_loss(student(**triggered).logits, teacher_logits, temperature)
