"""Pool augmentation: whole words dropped exactly, seeded, specials kept; the teacher labels every copy; same steps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from datasets import Dataset

from finemix_core.augment import drop_words, with_augmented_copies, word_spans
from finemix_core.config import RecoveryConfig
from finemix_core.encoding import encode
from finemix_core.errors import FinemixError
from finemix_core.train import Distillation
from tests.conftest import make_tokenizer


@pytest.fixture()
def tok(tmp_path):
    return make_tokenizer(tmp_path / "tok", extra=("##s", "##y"))


def test_word_spans_join_continuations_and_skip_specials(tok):
    ids = tok("good movies and fun plots")["input_ids"]  # [CLS] good movie ##s and fun plot ##s [SEP]
    tokens = tok.convert_ids_to_tokens(list(range(len(tok))))
    continuation = np.array([t.startswith("##") for t in tokens])
    assert word_spans(ids, continuation, set(tok.all_special_ids)) == [(1, 2), (2, 4), (4, 5), (5, 6), (6, 8)]


def test_drop_words_removes_whole_words_only_and_is_seeded(tok):
    enc = encode(tok, Dataset.from_dict({"text": ["good movies and fun plots"] * 40, "label": [1] * 40}), 32)
    assert drop_words(tok, enc, 0.0, 0).input_ids == enc.input_ids  # p 0: nothing changes
    out = drop_words(tok, enc, 0.5, 7)
    assert out.input_ids == drop_words(tok, enc, 0.5, 7).input_ids and out.labels == enc.labels  # the same seed, the same copy
    assert out.input_ids != drop_words(tok, enc, 0.5, 8).input_ids
    words = {"good", "movies", "and", "fun", "plots"}
    for ids, types in zip(out.input_ids, out.token_type_ids, strict=True):
        assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id and len(types) == len(ids)
        kept = tok.decode(ids[1:-1]).split()
        assert kept and set(kept) <= words  # whole words only: never a bare 'movie' without its '##s'
    assert any(len(ids) < len(enc.input_ids[0]) for ids in out.input_ids)
    nearly_all = drop_words(tok, enc, 0.99, 1)
    assert all(len(ids) >= 3 for ids in nearly_all.input_ids)  # at least one word is always kept


def test_copies_are_labelled_by_the_teacher_and_keep_the_run_length(tok):
    enc = encode(tok, Dataset.from_dict({"text": ["good movies", "awful plot and dull acting"], "label": [0, 0]}), 32)
    base = Distillation(enc, torch.tensor([[1.0, 0.0], [0.0, 1.0]]), RecoveryConfig(passes=3.0, feature_weight=0.0))
    seen = []

    def teacher(part):
        seen.append(part.input_ids)
        return torch.full((len(part), 2), float(len(seen)))

    out = with_augmented_copies(base, tok, teacher, copies=2, p=0.5, seed=0)
    assert len(out.texts) == 6 and out.recovery.passes * len(out.texts) == pytest.approx(3.0 * 2)
    assert torch.equal(out.teacher_logits[:2], base.teacher_logits)  # the originals keep their logits
    assert torch.equal(out.teacher_logits[2:4], torch.full((2, 2), 1.0)) and torch.equal(out.teacher_logits[4:], torch.full((2, 2), 2.0))
    assert out.texts.input_ids[2:4] == seen[0] and out.texts.input_ids[4:] == seen[1]
    assert with_augmented_copies(base, tok, teacher, copies=0, p=0.5, seed=0) is base
    with pytest.raises(FinemixError, match="word-drop"):
        RecoveryConfig(augment_drop=1.0)
