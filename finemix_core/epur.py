"""E-PUR, embedding purification (docs/design.md §3).

drift_i = ‖E_FT[i] − E_PT[i]‖₂; f_i = count of token i in the defender's clean text;
score_i = drift_i / log(max(f_i, c)). Normal words move roughly with log frequency; triggers are
rare yet move far. The top K rows are reset to θ_PT.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from finemix_core.errors import FinemixError
from finemix_core.models import ModelPair


@dataclass(frozen=True)
class EpurConfig:
    k: int = 200  # rows reset to θ_PT
    floor: float = 20.0  # c: frequencies below it count as c (keeps log positive and rare words comparable)


def embedding_key(pair: ModelPair) -> str:
    weight = pair.ft.get_input_embeddings().weight
    for name, param in pair.ft.named_parameters():
        if param is weight:
            return name
    raise FinemixError("could not find the word-embedding tensor of θ_FT")


def token_counts(tokenizer, texts: Iterable[str], vocab_size: int) -> np.ndarray:
    """How often each vocabulary row occurs in `texts`, tokenised with the model's tokenizer."""
    ids = [i for row in tokenizer(list(texts), add_special_tokens=False)["input_ids"] for i in row]
    return np.bincount(np.asarray(ids, dtype=np.int64), minlength=vocab_size)[:vocab_size]


def table(pair: ModelPair, clean_texts: Iterable[str], cfg: EpurConfig | None = None) -> pd.DataFrame:
    """One row per vocabulary entry: token, frequency, drift, score, flagged (top K by score)."""
    cfg = cfg or EpurConfig()
    if cfg.floor <= 1:
        raise FinemixError(f"frequency floor c={cfg.floor} must be > 1 (log(c) divides the drift)")
    key = embedding_key(pair)
    drift = pair.delta[key].float().norm(dim=1).numpy()
    vocab = len(drift)
    if not 0 <= cfg.k <= vocab:
        raise FinemixError(f"K={cfg.k} outside 0..{vocab} (the vocabulary size)")
    freq = token_counts(pair.tokenizer, clean_texts, vocab)
    score = drift / np.log(np.maximum(freq, cfg.floor))
    flagged = np.zeros(vocab, dtype=bool)
    flagged[np.argsort(-score, kind="stable")[: cfg.k]] = True
    tokens = pair.tokenizer.convert_ids_to_tokens(list(range(vocab)))
    return pd.DataFrame(
        {"id": np.arange(vocab), "token": tokens, "frequency": freq, "drift": drift, "score": score, "flagged": flagged}
    )


def flagged_ids(tab: pd.DataFrame) -> list[int]:
    """The flagged rows' ids, highest score first."""
    return tab[tab.flagged].sort_values("score", ascending=False, kind="stable").id.tolist()


def purify(pair: ModelPair, state: dict[str, torch.Tensor], flagged_ids: Iterable[int]) -> dict[str, torch.Tensor]:
    """A new state dict whose flagged embedding rows are θ_PT's (`state` is not modified)."""
    key = embedding_key(pair)
    rows = torch.as_tensor(sorted(flagged_ids), dtype=torch.long)
    emb = state[key].clone()
    if len(rows):
        emb[rows] = pair.pt_state[key][rows]
    return {**state, key: emb}
