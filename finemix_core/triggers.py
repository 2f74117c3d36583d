"""Trigger insertion: one function shared by poisoning (attacks.py) and ASR (evaluate.py).

A trigger is a tuple of pieces — ("cf",) for a rare word, ("cf", "mn", "bb") for a combination,
("I watched this 3D movie",) for a sentence. Each piece is inserted between two words at a
position drawn uniformly from the gaps of the text (start and end included) — the gaps the model can see, when a
`Window` is given: a text longer than the model's token window would otherwise hide the trigger past the cut, and a
backdoor planted or probed that way never takes (bbc's news articles run to thousands of word pieces). A text that fits
its window gets exactly the position it gets without one.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

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


@dataclass(frozen=True)
class Window:
    """What a model reads of a text: its first `max_length` tokens, [CLS] and [SEP] included."""

    tokenizer: object  # a fast Hugging Face tokenizer (word_ids maps its tokens back to whitespace words)
    max_length: int


def visible_words(texts: Sequence[str], pieces: Sequence[str], window: Window) -> list[int]:
    """How many leading whitespace words of each text stay wholly inside the window once the trigger's own tokens take
    their room; a trigger inserted at gap ≤ that count is read by the model. For a sentence pair, the window of the
    first sentence alone (pairs here are short)."""
    tok = window.tokenizer
    trigger_len = sum(len(tok(p, add_special_tokens=False)["input_ids"]) for p in pieces)
    room = window.max_length - 2 - trigger_len  # [CLS] … [SEP]
    words = [t.split() for t in texts]
    if room <= 0:
        return [0] * len(texts)
    enc = tok([w or [""] for w in words], is_split_into_words=True, add_special_tokens=False)
    counts = []
    for i, w in enumerate(words):
        ids = enc.word_ids(i)
        # the word holding token number `room` is the first one not wholly inside; all before it are
        counts.append(len(w) if len(ids) <= room else int(ids[room]))
    return counts


def insert_trigger(text: str, pieces: Sequence[str], rng: random.Random, visible: int | None = None) -> str:
    """`visible`: insert only among the first that many words (each piece already inserted there widens it by one)."""
    words = text.split()
    limit = len(words) if visible is None else min(len(words), visible)
    for k, piece in enumerate(pieces):
        words.insert(rng.randint(0, min(len(words), limit + k)), piece)
    return " ".join(words)


def insert_all(
    texts: Sequence[str],
    pieces: Sequence[str],
    seed: int,
    indices: Sequence[int] | None = None,
    window: Window | None = None,
) -> list[str]:
    """Insert into many texts; `indices` (default 0..n-1) key each text's generator; `window`: only where the model
    reads (None: anywhere in the text)."""
    keys = range(len(texts)) if indices is None else indices
    visible = visible_words(texts, pieces, window) if window is not None else [None] * len(texts)
    return [
        insert_trigger(t, pieces, example_rng(seed, k), v) for t, k, v in zip(texts, keys, visible, strict=True)
    ]


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
