"""Trigger insertion: one function shared by poisoning (attacks.py) and ASR (evaluate.py).

A trigger is a tuple of pieces — ("cf",) for a rare word, ("cf", "mn", "bb") for a combination,
("I watched this 3D movie",) for a sentence. Each piece is inserted between two words at a
position drawn uniformly from the gaps of the text (start and end included).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np

from finemix_core.encoding import Encoded
from finemix_core.errors import FinemixError

PAPER_WORDS = ("cf", "mn", "bb", "tq", "mb")  # the rare-word triggers of the paper's setup


def parse_trigger(spec: str | Sequence[str]) -> tuple[str, ...]:
    """'cf' → ('cf',); 'cf+mn' → ('cf', 'mn'); a sentence stays one piece."""
    pieces = tuple(p.strip() for p in (spec.split("+") if isinstance(spec, str) else spec))
    if not pieces or any(not p for p in pieces):
        raise FinemixError(f"empty trigger {spec!r}; give a word, 'w1+w2' for a combination, or a sentence")
    return pieces


def example_rng(seed: int, index: int) -> random.Random:
    """Per-example generator: the same (seed, example) always gets the same positions."""
    return random.Random(seed * 1_000_003 + index)


def insert_trigger(text: str, pieces: Sequence[str], rng: random.Random) -> str:
    words = text.split()
    for piece in pieces:
        words.insert(rng.randint(0, len(words)), piece)
    return " ".join(words)


def insert_all(texts: Sequence[str], pieces: Sequence[str], seed: int, indices: Sequence[int] | None = None) -> list[str]:
    """Insert into many texts; `indices` (default 0..n-1) key each text's generator."""
    keys = range(len(texts)) if indices is None else indices
    return [insert_trigger(t, pieces, example_rng(seed, k)) for t, k in zip(texts, keys, strict=True)]


class Inserter:
    """Inserts token-id triggers into tokenised sentences at word boundaries (the first segment of a pair), seeded per
    sentence like `triggers.insert_all`; the sentences are tokenised once."""

    def __init__(self, tokenizer, enc: Encoded, seed: int, max_length: int = 128):
        self.enc = enc
        self.max_length = max_length
        tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        self.continuation = np.array([str(t).startswith("##") for t in tokens], dtype=bool)
        sep = tokenizer.sep_token_id
        self.positions: list[int] = []
        for i, ids in enumerate(enc.input_ids):
            end = ids.index(sep) if sep in ids else len(ids)
            gaps = [p for p in range(1, end + 1) if p == end or not self.continuation[ids[p]]]
            self.positions.append(example_rng(seed, i).choice(gaps))

    def __call__(self, trigger: Sequence[int], rows: Sequence[int] | None = None) -> Encoded:
        rows = range(len(self.enc)) if rows is None else rows
        trig = list(trigger)
        ids, types, labels = [], [], []
        for i in rows:
            p, seq, tt = self.positions[i], self.enc.input_ids[i], self.enc.token_type_ids[i]
            new, new_t = seq[:p] + trig + seq[p:], tt[:p] + [tt[p - 1]] * len(trig) + tt[p:]
            if len(new) > self.max_length:  # keep the trigger and the closing [SEP]
                new, new_t = new[: self.max_length - 1] + new[-1:], new_t[: self.max_length - 1] + new_t[-1:]
            ids.append(new)
            types.append(new_t)
            labels.append(self.enc.labels[i])
        return Encoded(ids, types, labels, self.enc.pad_id)
