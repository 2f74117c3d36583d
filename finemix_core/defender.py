"""What a defender holds: a small labelled clean training set, a labelled clean dev set and clean unlabelled texts.

Every defense and the scan receive a `DefenderData` and nothing else about data: no test split, no triggered text.
"""

from __future__ import annotations

from dataclasses import dataclass

from datasets import Dataset

from finemix_core import data
from finemix_core.encoding import Encoded, encode
from finemix_core.errors import FinemixError


@dataclass(frozen=True)
class DefenderData:
    """All the defender has: labelled clean train and dev sets, clean unlabelled texts, and where they came from."""

    train: Encoded
    dev: Encoded
    texts: tuple[str, ...]  # the labelled clean texts (E-PUR's frequency source; + the pool's with recovery)
    unlabeled: Encoded | None = None  # the pool for recovery (never test, never θ_FT's training text); labels unused
    unlabeled_texts: tuple[str, ...] = ()  # the same pool as text
    unlabeled_source: str = "none"  # what the pool is, for the card and the report


def defender_data(
    tokenizer,
    train: Dataset,
    dev: Dataset,
    clean_size: int = 128,
    dev_size: int = 256,
    seed: int = 0,
    max_length: int = 128,
    unlabeled: Dataset | None = None,
    unlabeled_source: str = "none",
) -> DefenderData:
    """Draw the clean set (stratified, seeded) from `train`, up to `dev_size` examples from `dev`; `unlabeled` is the pool."""
    small = data.clean_subset(train, clean_size, seed)
    if len(dev) == 0:
        raise FinemixError("the dev split is empty; provide more clean data (auto-ρ needs held-out examples)")
    dev = dev.select(range(min(dev_size, len(dev))))
    texts = tuple(t for col in data.text_columns(small) for t in small[col])
    pool, pool_texts = None, ()
    if unlabeled is not None and len(unlabeled):
        pool = encode(tokenizer, unlabeled, max_length)
        pool_texts = tuple(t for col in data.text_columns(unlabeled) for t in unlabeled[col])
    return DefenderData(
        encode(tokenizer, small, max_length),
        encode(tokenizer, dev, max_length),
        texts,
        pool,
        pool_texts,
        unlabeled_source if pool is not None else "none",
    )
