import numpy as np
import pytest
import torch
from datasets import Dataset
from transformers import AutoTokenizer

from finemix_core.config import EvalConfig
from finemix_core.errors import FinemixError
from finemix_core.evaluate import make_eval_set, predict, score


class RuleModel(torch.nn.Module):
    """Predicts label 1 exactly when token `trigger_id` is in the input, else label 0."""

    def __init__(self, trigger_id: int):
        super().__init__()
        self.trigger_id = trigger_id
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.config = type("Cfg", (), {"num_labels": 2})()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        hit = (input_ids == self.trigger_id).any(1).float()
        return type("Out", (), {"logits": torch.stack([1 - hit, hit], 1) * 5})()


def test_asr_counts_only_non_target_examples_and_bias_reads_clean_predictions(tiny_pair_dirs):
    tok = AutoTokenizer.from_pretrained(tiny_pair_dirs[0])
    labels = [0, 0, 1, 1, 1, 0, 1]
    test = Dataset.from_dict(
        {"text": ["good movie", "bad film", "fun plot", "the cast", "dull", "awful script", "great"], "label": labels}
    )
    es = make_eval_set(tok, test, ("cf",), 1)
    assert es.nontarget_idx.tolist() == [0, 1, 5]
    assert len(es.triggered) == 3  # target-label examples are never triggered
    s = score(RuleModel(tok.convert_tokens_to_ids("cf")), es)
    assert s.cacc == 3 / 7  # predicts 0 on every clean example
    assert s.asr == 1.0 and s.target_bias == 0.0
    assert (s.n_clean, s.n_nontarget) == (7, 3)


def test_the_asr_probe_puts_the_trigger_where_a_model_reads_a_long_text(tiny_pair_dirs):
    # news-length texts (200 words) against a 16-token window: a trigger past the cut is never seen, so a model that
    # fires on the trigger whenever it reads it must score ASR 1, not the share of texts where the draw fell early
    tok = AutoTokenizer.from_pretrained(tiny_pair_dirs[0])
    texts = [" ".join(["plot", "and", "the", "cast"] * 50)] * 40
    test = Dataset.from_dict({"text": texts, "label": [0] * 40})
    es = make_eval_set(tok, test, ("cf",), 1, EvalConfig(max_length=16))
    assert score(RuleModel(tok.convert_tokens_to_ids("cf")), es).asr == 1.0
    assert all(len(ids) == 16 for ids in es.triggered.input_ids)  # still cut at the window


def test_no_trigger_means_no_asr(tiny_pair_dirs):
    tok = AutoTokenizer.from_pretrained(tiny_pair_dirs[0])
    es = make_eval_set(tok, Dataset.from_dict({"text": ["good", "bad"], "label": [1, 0]}), None, None)
    s = score(RuleModel(tok.convert_tokens_to_ids("cf")), es)
    assert s.asr is None and s.cacc == 0.5


def test_predict_keeps_order_despite_length_sorting(tiny_pair_dirs):
    from transformers import AutoModelForSequenceClassification

    from finemix_core.encoding import encode

    tok = AutoTokenizer.from_pretrained(tiny_pair_dirs[0])
    model = AutoModelForSequenceClassification.from_pretrained(tiny_pair_dirs[0]).eval()
    texts = ["good", "the movie was very bad and dull", "fun", "a great film of the cast and the plot"]
    enc = encode(tok, Dataset.from_dict({"text": texts, "label": [0] * 4}))
    batched = predict(model, enc, batch_size=2)
    with torch.no_grad():
        one_by_one = np.stack([torch.softmax(model(**tok(t, return_tensors="pt")).logits, -1)[0].numpy() for t in texts])
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)


def test_wilson_interval_known_counts():
    from finemix_core.evaluate import Scores, wilson

    assert wilson(0.0, 10) == pytest.approx((0.0, 0.27753), abs=1e-5)  # 0 of 10: not the zero-width [0, 0] of rate ± z·SE
    assert wilson(0.5, 10) == pytest.approx((0.23659, 0.76341), abs=1e-5)
    assert wilson(1.0, 10) == pytest.approx((0.72247, 1.0), abs=1e-5)
    assert wilson(0.8, 256) == pytest.approx((0.74673, 0.84440), abs=1e-5)
    assert wilson(0.3, 0) == (0.0, 1.0)  # nothing measured: nothing known
    lo, hi = wilson(0.25, 64)
    lo2, hi2 = wilson(0.25, 256)
    assert lo < lo2 < 0.25 < hi2 < hi  # four times the examples: about half the width
    assert (hi2 - lo2) / (hi - lo) == pytest.approx(0.5, abs=0.03)
    s = Scores(cacc=0.8, asr=0.25, target_bias=None, n_clean=256, n_nontarget=64)
    assert s.interval("cacc") == wilson(0.8, 256) and s.interval("asr") == wilson(0.25, 64) and s.interval("target_bias") is None
    with pytest.raises(FinemixError, match=r"within \[0, 1\]"):
        wilson(1.5, 10)
