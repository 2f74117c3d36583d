"""Class-balance matching: undo a defended model's lean to one class without the trigger or the test split.

Distillation teaches the defended model θ_FT's answers on clean text, but it can end up leaning to a class more often
than θ_FT does (a shift of its output prior). On triggered text that lean reads as attack success although the trigger
itself no longer does anything. The correction is one bias vector b on the output logits, chosen so the model's mean
predicted distribution on some clean texts equals a goal: θ_FT's own mean on the same texts (the teacher), or the class
balance of labelled clean examples. It needs no trigger and no test data.

Measured on the defender's dev data (`scripts/prior_match.py`, docs/recovery.md "Round 3") and NOT part of the default:
neither goal raised clean dev accuracy (the dev-label goal lowered cross-fitted dev accuracy by 0.7 points on average).
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from finemix_core.errors import FinemixError


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def prior_shift(logits: np.ndarray, goal: np.ndarray, iterations: int = 200) -> np.ndarray:
    """b (zero mean) such that the mean of softmax(logits + b) over the rows equals `goal` (a class distribution) —
    the fixed point of b ← b + log(goal) − log(current mean), which converges for a goal with no empty class."""
    goal = np.asarray(goal, dtype=np.float64)
    if logits.ndim != 2 or not len(logits) or goal.shape != (logits.shape[1],) or abs(goal.sum() - 1) > 1e-6:
        raise FinemixError(f"prior matching needs [texts, classes] logits and a class distribution, got {logits.shape} and {goal.shape}")
    goal = np.clip(goal, 1e-6, None)
    b = np.zeros(logits.shape[1])
    for _ in range(iterations):
        now = softmax(logits.astype(np.float64) + b).mean(0)
        step = np.log(goal) - np.log(np.clip(now, 1e-12, None))
        b += step
        if np.abs(step).max() < 1e-9:
            break
    return b - b.mean()


def decision_shift(logits: np.ndarray, goal_share: float) -> np.ndarray:
    """b (zero mean, two classes) such that the share of rows whose argmax of logits + b is class 1 equals `goal_share`
    as nearly as the rows allow: the decision threshold on the margin l1 − l0 moved to the midpoint between the rows
    either side of the goal's quantile. Matches decisions, not mean probabilities (a student less sure than its teacher
    can share its mean and still flip more rows to one class)."""
    if logits.ndim != 2 or logits.shape[1] != 2 or not len(logits) or not 0.0 <= goal_share <= 1.0:
        raise FinemixError(f"decision matching needs [texts, 2] logits and a share in [0, 1], got {logits.shape} and {goal_share}")
    margins = np.sort(logits[:, 1].astype(np.float64) - logits[:, 0])[::-1]  # most class-1 first
    k = int(round(goal_share * len(margins)))  # rows that should land in class 1
    if k == 0:
        threshold = margins[0] + 1e-3
    elif k == len(margins):
        threshold = margins[-1] - 1e-3
    else:
        threshold = (margins[k - 1] + margins[k]) / 2
    return np.array([threshold / 2, -threshold / 2])


def away_from(shift: np.ndarray, target: int | None) -> np.ndarray:
    """`shift` (two classes) if it lowers the margin of class `target` over the other one, else no shift: a correction
    may move the boundary away from a suspected backdoor target, never towards it (None: no suspect, no shift)."""
    if shift.shape != (2,):
        raise FinemixError(f"a two-class shift is needed, got shape {shift.shape}")
    if target is None or shift[target] - shift[1 - target] >= 0:
        return np.zeros_like(shift)
    return shift


def label_prior(labels, n_classes: int) -> np.ndarray:
    """The class distribution of labelled examples."""
    return np.bincount(np.asarray(labels), minlength=n_classes) / len(labels)


def output_layer(model: torch.nn.Module) -> torch.nn.Linear:
    """The classifier's last linear layer (out_features = the number of labels, with a bias)."""
    n = model.config.num_labels
    found = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == n and m.bias is not None]
    if not found:
        raise FinemixError(f"no output layer with {n} outputs and a bias in {type(model).__name__}; prior matching cannot apply")
    return found[-1]


def apply_shift(model: torch.nn.Module, shift: np.ndarray) -> torch.nn.Module:
    """A copy of `model` whose output logits are `shift` higher (the bias of its output layer moved); `model` is untouched."""
    out = copy.deepcopy(model)
    layer = output_layer(out)
    with torch.no_grad():
        layer.bias.add_(torch.as_tensor(shift, dtype=layer.bias.dtype, device=layer.bias.device))
    return out
