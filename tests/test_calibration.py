"""Class-balance matching: exact on hand-made logits and on a tiny BERT's output layer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from finemix_core.calibration import apply_shift, away_from, decision_shift, label_prior, prior_shift, softmax
from finemix_core.encoding import collate, encode
from finemix_core.errors import FinemixError
from finemix_core.models import load_pair


def test_a_constant_lean_is_undone_exactly():
    rng = np.random.default_rng(0)
    teacher = rng.normal(size=(50, 2))
    student = teacher + np.array([1.0, -1.0])  # the same model leaning to class 0 by two logits
    b = prior_shift(student, softmax(teacher).mean(0))
    assert b == pytest.approx([-1.0, 1.0], abs=1e-6) and b.sum() == pytest.approx(0.0, abs=1e-12)


def test_the_matched_prior_equals_the_teachers_for_any_student():
    rng = np.random.default_rng(1)
    teacher, student = rng.normal(size=(200, 3)), rng.normal(size=(200, 3)) * 2 + np.array([0.5, 0.0, -0.7])
    b = prior_shift(student, softmax(teacher).mean(0))
    assert softmax(student + b).mean(0) == pytest.approx(softmax(teacher).mean(0), abs=1e-8)
    assert prior_shift(teacher, softmax(teacher).mean(0)) == pytest.approx([0.0, 0.0, 0.0], abs=1e-12)  # no lean: no change
    assert label_prior([0, 2, 2, 1], 3) == pytest.approx([0.25, 0.25, 0.5])
    balanced = prior_shift(student, label_prior([0, 1, 2], 3))
    assert softmax(student + balanced).mean(0) == pytest.approx([1 / 3] * 3, abs=1e-8)


def test_bad_shapes_are_one_line():
    with pytest.raises(FinemixError, match="class distribution"):
        prior_shift(np.zeros((3, 2)), np.array([0.2, 0.3, 0.5]))


def test_the_shift_moves_exactly_the_output_logits_of_a_copy(tiny_pair_dirs):
    ft, pt = tiny_pair_dirs
    model = load_pair(ft, pt).ft.eval()
    before_bias = model.classifier.bias.detach().clone()
    tok = load_pair(ft, pt).tokenizer
    from datasets import Dataset

    enc = encode(tok, Dataset.from_dict({"text": ["a good movie", "the worst plot"], "label": [1, 0]}), 32)
    batch = collate(enc, [0, 1])
    shifted = apply_shift(model, np.array([0.25, -0.25]))
    with torch.no_grad():
        diff = shifted(**batch).logits - model(**batch).logits
    assert torch.allclose(diff, torch.tensor([[0.25, -0.25], [0.25, -0.25]]), atol=1e-6)
    assert torch.equal(model.classifier.bias, before_bias)  # the input model is untouched


def test_decision_matching_reaches_the_teachers_share_of_class_1_exactly():
    rng = np.random.default_rng(2)
    teacher = rng.normal(size=(101, 2))
    student = teacher * 0.5 + np.array([-0.4, 0.4])  # less sure and leaning to class 1
    goal = float((teacher.argmax(1) == 1).mean())
    b = decision_shift(student, goal)
    assert b.sum() == pytest.approx(0.0, abs=1e-12)
    assert ((student + b).argmax(1) == 1).mean() == pytest.approx(goal)  # the same number of class-1 rows
    assert ((student + b).argmax(1) == teacher.argmax(1)).all()  # here a pure lean: every decision comes back
    assert ((student + decision_shift(student, 0.0)).argmax(1) == 0).all()
    assert ((student + decision_shift(student, 1.0)).argmax(1) == 1).all()
    with pytest.raises(FinemixError, match="decision matching"):
        decision_shift(rng.normal(size=(5, 3)), 0.5)


def test_a_shift_is_kept_only_away_from_the_suspected_class():
    towards_0 = np.array([0.3, -0.3])  # lowers class 1's margin by 0.6
    assert np.array_equal(away_from(towards_0, 1), towards_0)  # away from a suspected class 1: kept
    assert not away_from(towards_0, 0).any()  # towards a suspected class 0: dropped
    assert not away_from(-towards_0, 1).any() and np.array_equal(away_from(-towards_0, 0), -towards_0)
    assert not away_from(towards_0, None).any()  # no suspect, no shift
    assert not away_from(np.zeros(2), 1).any()
    with pytest.raises(FinemixError, match="two-class"):
        away_from(np.zeros(3), 1)
