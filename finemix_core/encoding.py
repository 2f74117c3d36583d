"""Tokenise once, then batch many times: length-sorted batches with dynamic padding.

Training and evaluation both consume `Encoded`; the lab keeps one per evaluation set so a slider
move never re-tokenises.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from datasets import Dataset

from finemix_core.config import MAX_LENGTH
from finemix_core.data import text_columns

TOKENISE_CALLS = 0  # how often `encode` ran; tests assert the lab does not re-tokenise


@dataclass(frozen=True)
class Encoded:
    """Token ids of a set of examples, unpadded, with labels."""

    input_ids: list[list[int]]
    token_type_ids: list[list[int]]
    labels: list[int]
    pad_id: int

    def __len__(self) -> int:
        return len(self.input_ids)

    def subset(self, indices: Sequence[int]) -> Encoded:
        return Encoded(
            [self.input_ids[i] for i in indices],
            [self.token_type_ids[i] for i in indices],
            [self.labels[i] for i in indices],
            self.pad_id,
        )


def encode(tokenizer, ds: Dataset, max_length: int = MAX_LENGTH) -> Encoded:
    """Tokenise `ds` (single sentences or pairs, as pairs) without padding."""
    global TOKENISE_CALLS
    TOKENISE_CALLS += 1
    cols = text_columns(ds)
    texts = [list(ds[c]) for c in cols]
    out = tokenizer(*texts, truncation=True, max_length=max_length, return_token_type_ids=True)
    return Encoded(out["input_ids"], out["token_type_ids"], list(ds["label"]), tokenizer.pad_token_id or 0)


def collate(enc: Encoded, indices: Sequence[int], device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Pad the chosen examples to their longest member."""
    width = max(len(enc.input_ids[i]) for i in indices)
    n = len(indices)
    ids = torch.full((n, width), enc.pad_id, dtype=torch.long)
    types = torch.zeros((n, width), dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    for row, i in enumerate(indices):
        length = len(enc.input_ids[i])
        ids[row, :length] = torch.tensor(enc.input_ids[i])
        types[row, :length] = torch.tensor(enc.token_type_ids[i])
        mask[row, :length] = 1
    batch = {"input_ids": ids, "token_type_ids": types, "attention_mask": mask}
    return {k: v.to(device) for k, v in batch.items()}


def sorted_batches(enc: Encoded, batch_size: int) -> list[list[int]]:
    """Indices grouped by length (inference: least padding)."""
    order = sorted(range(len(enc)), key=lambda i: len(enc.input_ids[i]))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def shuffled_bucket_batches(enc: Encoded, batch_size: int, generator: torch.Generator) -> Iterator[list[int]]:
    """Training order: shuffle, sort within windows of 50 batches, shuffle the batches.

    Keeps batches random enough for SGD while cutting padding several-fold.
    """
    perm = torch.randperm(len(enc), generator=generator).tolist()
    window = batch_size * 50
    batches: list[list[int]] = []
    for start in range(0, len(perm), window):
        chunk = sorted(perm[start : start + window], key=lambda i: len(enc.input_ids[i]))
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    for b in torch.randperm(len(batches), generator=generator).tolist():
        yield batches[b]


def cut(enc: Encoded, max_length: int) -> Encoded:
    """Sentences cut to `max_length` tokens (the closing [SEP] kept): the search needs the gist, not every word."""
    ids = [s if len(s) <= max_length else s[: max_length - 1] + s[-1:] for s in enc.input_ids]
    types = [t if len(t) <= max_length else t[: max_length - 1] + t[-1:] for t in enc.token_type_ids]
    return Encoded(ids, types, list(enc.labels), enc.pad_id)


def concat(parts: Sequence[Encoded]) -> Encoded:
    return Encoded(
        [s for p in parts for s in p.input_ids],
        [s for p in parts for s in p.token_type_ids],
        [s for p in parts for s in p.labels],
        parts[0].pad_id,
    )
