"""Trigger insertion: one function shared by poisoning (attacks.py) and ASR (evaluate.py).

A trigger is a tuple of pieces — ("cf",) for a rare word, ("cf", "mn", "bb") for a combination,
("I watched this 3D movie",) for a sentence. Each piece is inserted between two words at a
position drawn uniformly from the gaps of the text (start and end included).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

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
