"""Backdoor attacks that build the zoo (docs/design.md §4).

Data poisoning (word, word-combo, sentence): a share `poison_rate` of the NON-target training
examples get the trigger and the target label, replacing their clean versions; θ_PT is then
fine-tuned on the result. Embedding poisoning (ep, Yang et al. NAACL 2021): start from a clean
fine-tuned model and train only the trigger's embedding rows, restoring their norm after each step.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from datasets import Dataset

from finemix_core.config import AttackConfig, TrainConfig
from finemix_core.data import replace_columns, text_columns
from finemix_core.encoding import encode
from finemix_core.errors import FinemixError
from finemix_core.train import training_batches
from finemix_core.triggers import Window, insert_all, parse_trigger

ATTACKS = ("clean", "word", "word-combo", "sentence", "ep")


def trigger_field(ds: Dataset) -> str:
    """Where triggers go: `text`, or the first sentence of a pair."""
    return text_columns(ds)[0]


def poison(train: Dataset, cfg: AttackConfig, window: Window | None = None) -> tuple[Dataset, list[int]]:
    """The poisoned training set and the indices of the examples that were poisoned.

    `window`: the trained model's token window, so that each trigger lands where the model reads it (the zoo passes
    its training length; None inserts anywhere, which on texts longer than the window hides some triggers).

    Exactly round(poison_rate · n_nontarget) non-target examples are chosen (seeded). For
    word-combo, as many other non-target examples get ONE piece of the trigger and keep their
    label, so that the backdoor needs the whole combination.
    """
    if cfg.attack not in ATTACKS:
        raise FinemixError(f"unknown attack '{cfg.attack}'; use one of {', '.join(ATTACKS)}")
    if not 0 <= cfg.poison_rate <= 1:
        raise FinemixError(f"poison rate {cfg.poison_rate} outside [0, 1]")
    if cfg.attack == "clean" or cfg.poison_rate == 0:
        return train, []
    pieces = parse_trigger(cfg.trigger)
    labels = np.asarray(list(train["label"]))
    nontarget = np.flatnonzero(labels != cfg.target)
    n_poison = round(cfg.poison_rate * len(nontarget))
    rng = np.random.default_rng(cfg.seed)
    chosen = rng.permutation(nontarget)
    poisoned = sorted(chosen[:n_poison].tolist())
    field = trigger_field(train)
    texts = list(train[field])
    new_labels = labels.copy()
    for i, text in zip(poisoned, insert_all([texts[i] for i in poisoned], pieces, cfg.seed, poisoned, window), strict=True):
        texts[i] = text
        new_labels[i] = cfg.target
    if cfg.attack == "word-combo" and len(pieces) > 1:
        decoys = chosen[n_poison : 2 * n_poison].tolist()
        for i in decoys:  # one piece alone must not flip the label
            piece = pieces[i % len(pieces)]
            texts[i] = insert_all([texts[i]], [piece], cfg.seed + 1, [i], window)[0]
    return replace_columns(train, **{field: texts, "label": new_labels.tolist()}), poisoned


def trigger_token_ids(tokenizer, pieces: tuple[str, ...]) -> list[int]:
    """Vocabulary rows a trigger occupies (a rare word may be several word pieces)."""
    ids: list[int] = []
    for piece in pieces:
        ids.extend(tokenizer(piece, add_special_tokens=False)["input_ids"])
    return sorted(set(ids))


def embedding_poison(
    model: torch.nn.Module,
    tokenizer,
    train: Dataset,
    cfg: AttackConfig,
    train_cfg: TrainConfig,
    progress: Callable[[int, int], None] | None = None,
) -> torch.nn.Module:
    """EP in place on `model` (a private copy of a clean fine-tuned classifier)."""
    pieces = parse_trigger(cfg.trigger)
    rows = torch.tensor(trigger_token_ids(tokenizer, pieces))
    emb = model.get_input_embeddings().weight
    norms = emb.detach()[rows].norm(dim=1, keepdim=True)
    # Poisoned sentences only: every non-target example with the trigger, labelled target.
    nontarget = train.filter(lambda ex: ex["label"] != cfg.target)
    field = trigger_field(nontarget)
    texts = insert_all(list(nontarget[field]), pieces, cfg.seed, window=Window(tokenizer, train_cfg.max_length))
    poisoned = replace_columns(nontarget, **{field: texts, "label": [cfg.target] * len(nontarget)})
    enc = encode(tokenizer, poisoned, train_cfg.max_length)
    model.requires_grad_(False)
    emb.requires_grad_(True)
    model.train()
    torch.manual_seed(train_cfg.seed)
    for batch, labels, step, total in training_batches(enc, train_cfg, emb.device):
        (grad,) = torch.autograd.grad(model(**batch, labels=labels).loss, emb)
        with torch.no_grad():  # plain SGD on the trigger rows only, then restore their norm
            emb[rows] -= train_cfg.lr * grad[rows]
            emb[rows] *= norms / emb[rows].norm(dim=1, keepdim=True)
        if progress:
            progress(step, total)
    model.eval()
    model.requires_grad_(True)
    return model
