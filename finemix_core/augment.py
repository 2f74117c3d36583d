"""Pool augmentation: more distinct in-domain text for recovery, made from the pool itself.

Rounds 7–8 of docs/recovery.md found that a student distilled on ~1,000 texts copies θ_FT on those texts and leans on
new ones — a generalisation gap. Word-dropout copies of the pool give it more distinct in-domain inputs at the same
number of steps: each copy drops every whole word of a text with probability p (special tokens and at least one word
kept), and the teacher (θ_FT, clean on clean text) labels each copy afresh — its answer on the shorter text, not the
original's. The passes over the pool are scaled so that passes × texts, and so the run's length, stay as they were.
Seeded per (copy, text). Word boundaries as in triggers.Inserter: a token not starting with '##' starts a word.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import torch

from finemix_core.encoding import Encoded, concat
from finemix_core.train import Distillation


def word_spans(ids: list[int], continuation: np.ndarray, special: set[int]) -> list[tuple[int, int]]:
    """[start, end) token spans of the whole words of one tokenised text (special tokens are no word)."""
    spans: list[tuple[int, int]] = []
    for p, t in enumerate(ids):
        if t in special:
            continue
        if continuation[t] and spans and spans[-1][1] == p:
            spans[-1] = (spans[-1][0], p + 1)
        else:
            spans.append((p, p + 1))
    return spans


def drop_words(tokenizer, enc: Encoded, p: float, seed: int) -> Encoded:
    """A copy of `enc` with each whole word of each text dropped with probability `p` (seeded per text; at least one word
    and every special token kept); labels kept."""
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    continuation = np.array([str(t).startswith("##") for t in tokens], dtype=bool)
    special = set(tokenizer.all_special_ids)
    ids_out, types_out = [], []
    for i, (ids, types) in enumerate(zip(enc.input_ids, enc.token_type_ids, strict=True)):
        spans = word_spans(ids, continuation, special)
        drop = np.random.default_rng([seed, i]).random(len(spans)) < p
        if spans and drop.all():
            drop[np.random.default_rng([seed, i, 1]).integers(len(spans))] = False
        gone = {q for (a, b), d in zip(spans, drop, strict=True) if d for q in range(a, b)}
        ids_out.append([t for q, t in enumerate(ids) if q not in gone])
        types_out.append([t for q, t in enumerate(types) if q not in gone])
    return Encoded(ids_out, types_out, list(enc.labels), enc.pad_id)


def with_augmented_copies(
    base: Distillation, tokenizer, teacher: Callable[[Encoded], torch.Tensor], copies: int, p: float, seed: int
) -> Distillation:
    """The distillation set plus `copies` word-dropout copies of every pool text, each labelled by `teacher` (logits);
    the passes scaled so that passes × texts is unchanged (no extra steps). No copies: `base` itself."""
    if copies <= 0 or not len(base.texts):
        return base
    parts = [drop_words(tokenizer, base.texts, p, seed * 1000 + c) for c in range(copies)]
    logits = torch.cat([base.teacher_logits, *(teacher(part) for part in parts)])
    n = len(base.texts)
    passes = base.recovery.passes * n / (n * (copies + 1))
    return Distillation(concat([base.texts, *parts]), logits, dataclasses.replace(base.recovery, passes=passes))
