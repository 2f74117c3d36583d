"""CACC, ASR and the target-bias of a classifier (docs/design.md §5).

An `EvalSet` tokenises once: the clean test examples and the triggered non-target ones. Scoring a
model is then two inference passes over length-sorted, dynamically padded batches:
- CACC: accuracy on the clean examples;
- ASR: share of triggered non-target examples predicted as the target;
- target bias: share of the same non-target examples WITHOUT the trigger predicted as the target
  (read from the clean pass: a model predicting the target everywhere has ASR 1 and no backdoor).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from datasets import Dataset

from finemix_core.attacks import trigger_field
from finemix_core.config import EvalConfig
from finemix_core.data import replace_columns
from finemix_core.hardware import bf16_supported  # noqa: F401 — re-exported (lab, bench)
from finemix_core.encoding import Encoded, collate, encode, sorted_batches
from finemix_core.errors import FinemixError
from finemix_core.train import device_of
from finemix_core.triggers import Window, insert_all


@dataclass(frozen=True)
class EvalSet:
    """A pre-tokenised evaluation set; reuse it across models and slider moves."""

    clean: Encoded
    triggered: Encoded | None  # non-target examples with the trigger (None: no trigger known)
    nontarget_idx: np.ndarray  # positions in `clean` whose true label ≠ target
    trigger: tuple[str, ...] | None
    target: int | None


def make_eval_set(
    tokenizer, test: Dataset, trigger: tuple[str, ...] | None, target: int | None, cfg: EvalConfig | None = None
) -> EvalSet:
    cfg = cfg or EvalConfig()
    if cfg.limit is not None:
        test = test.select(range(min(cfg.limit, len(test))))
    if len(test) == 0:
        raise FinemixError("the evaluation split is empty; use a larger dataset or a larger --limit")
    clean = encode(tokenizer, test, cfg.max_length)
    if trigger is None or target is None:
        return EvalSet(clean, None, np.zeros(0, dtype=int), None, None)
    labels = np.asarray(list(test["label"]))
    nontarget = np.flatnonzero(labels != target)
    field = trigger_field(test)
    sub = test.select(nontarget.tolist())
    # inside the window the model reads: a trigger cut off with the text's tail would count as a miss of the backdoor
    window = Window(tokenizer, cfg.max_length)
    sub = replace_columns(sub, **{field: insert_all(list(sub[field]), trigger, cfg.seed, nontarget.tolist(), window)})
    triggered = encode(tokenizer, sub, cfg.max_length)
    return EvalSet(clean, triggered, nontarget, tuple(trigger), target)


# length-sorted batches of 32 ran ~9% faster than 64 (and 1.5x faster than 128) on 2 CPU cores: less padding, cache-sized GEMMs
INFER_BATCH = EvalConfig().batch_size
Z95 = 1.959963984540054  # the two-sided 95 % normal quantile (Wilson intervals on every rate the lab shows)


@torch.inference_mode()
def predict(model: torch.nn.Module, enc: Encoded, batch_size: int = INFER_BATCH, logits: bool = False) -> np.ndarray:
    """Softmax probabilities (or raw logits), in the original order of `enc`."""
    device = device_of(model)
    was_training = model.training
    model.eval()
    out = np.zeros((len(enc), model.config.num_labels), dtype=np.float32)
    for idx in sorted_batches(enc, batch_size):
        raw = model(**collate(enc, idx, device)).logits.float()
        out[idx] = (raw if logits else torch.softmax(raw, dim=-1)).cpu().numpy()
    model.train(was_training)
    return out


@torch.inference_mode()
def predict_with_features(model: torch.nn.Module, enc: Encoded, batch_size: int = INFER_BATCH) -> tuple[np.ndarray, np.ndarray]:
    """(raw logits, last-layer [CLS] states) in the original order of `enc`: what feature distillation matches."""
    device = device_of(model)
    was_training = model.training
    model.eval()
    logits = np.zeros((len(enc), model.config.num_labels), dtype=np.float32)
    feats = np.zeros((len(enc), model.config.hidden_size), dtype=np.float32)
    for idx in sorted_batches(enc, batch_size):
        out = model(**collate(enc, idx, device), output_hidden_states=True)
        logits[idx] = out.logits.float().cpu().numpy()
        feats[idx] = out.hidden_states[-1][:, 0].float().cpu().numpy()
    model.train(was_training)
    return logits, feats


@dataclass(frozen=True)
class Scores:
    cacc: float
    asr: float | None  # None when no trigger is known
    target_bias: float | None
    n_clean: int
    n_nontarget: int  # non-target clean examples (target bias's denominator)
    n_triggered: int | None = None  # triggered examples (ASR's denominator; None: as many as n_nontarget)

    def as_dict(self) -> dict:
        return asdict(self)

    def interval(self, metric: str, z: float = Z95) -> tuple[float, float] | None:
        """Wilson interval of one rate: CACC over the clean examples, ASR and target bias over the non-target ones."""
        value = getattr(self, metric)
        if value is None:
            return None
        n = {"cacc": self.n_clean, "asr": self.n_triggered or self.n_nontarget}.get(metric, self.n_nontarget)
        return wilson(value, n, z)


def wilson(rate: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a rate measured on n examples (95 % by default). Unlike rate ± z·SE it stays inside
    [0, 1] and is not zero-width at 0 or 1: 0 of 10 gives [0, 0.278], 5 of 10 gives [0.237, 0.763]."""
    if n <= 0:
        return 0.0, 1.0
    if not 0.0 <= rate <= 1.0:
        raise FinemixError(f"a rate must be within [0, 1], got {rate}")
    z2 = z * z
    denom = 1 + z2 / n
    centre = (rate + z2 / (2 * n)) / denom
    half = z * np.sqrt(rate * (1 - rate) / n + z2 / (4 * n * n)) / denom
    # rounded so a rate of exactly 0 or 1 is inside its own interval despite float error
    return max(0.0, round(float(centre - half), 12)), min(1.0, round(float(centre + half), 12))


def score(model: torch.nn.Module, es: EvalSet, batch_size: int = INFER_BATCH) -> Scores:
    clean_pred = predict(model, es.clean, batch_size).argmax(1)
    cacc = float((clean_pred == np.asarray(es.clean.labels)).mean())
    if es.triggered is None:
        return Scores(cacc, None, None, len(es.clean), 0)
    if len(es.nontarget_idx) == 0:
        raise FinemixError(f"no test example has a label other than the target {es.target}; ASR is undefined")
    trig_pred = predict(model, es.triggered, batch_size).argmax(1)
    asr = float((trig_pred == es.target).mean())
    bias = float((clean_pred[es.nontarget_idx] == es.target).mean())
    return Scores(cacc, asr, bias, len(es.clean), len(es.nontarget_idx), len(es.triggered))


def best_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
