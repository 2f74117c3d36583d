"""Fine-purifying on a tiny random BERT: the Fisher scores against a hand computation, and the purified state."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset

from finemix_core.config import TrainConfig
from finemix_core.defenses import REGISTRY, DefenseConfig, defend, defender_data
from finemix_core.defenses.fine_purifying import EPS, fisher_diag, purified_state, scores
from finemix_core.encoding import collate
from finemix_core.models import load_pair

TEXTS = ["a good movie", "awful and dull", "the best acting", "hate this film", "great cast", "a boring script"]


@pytest.fixture()
def pair(tiny_pair_dirs):
    ft, pt = tiny_pair_dirs
    return load_pair(ft, pt)


@pytest.fixture()
def labelled(pair):
    ds = Dataset.from_dict({"text": TEXTS, "label": [1, 0, 1, 0, 1, 0]})
    return defender_data(pair.tokenizer, ds, ds, clean_size=6, dev_size=6, seed=0, max_length=32)


def test_fisher_of_the_head_matches_the_softmax_gradient_by_hand(pair, labelled):
    # for logits = W h + b, ∂ log p(y | x) / ∂W = (e_y − p) hᵀ and ∂/∂b = e_y − p: square, average over the examples
    model = pair.ft_for_inference(torch.device("cpu"))
    fisher = fisher_diag(model, labelled.train)
    w_sq, b_sq = torch.zeros_like(model.classifier.weight), torch.zeros_like(model.classifier.bias)
    with torch.no_grad():
        for i in range(len(labelled.train)):
            out = model.bert(**collate(labelled.train, [i]))
            h = out.pooler_output[0]
            p = torch.softmax(model.classifier(h), -1)
            g = torch.nn.functional.one_hot(torch.tensor(labelled.train.labels[i]), p.numel()).float() - p
            w_sq += torch.outer(g, h) ** 2
            b_sq += g**2
    n = len(labelled.train)
    torch.testing.assert_close(fisher["classifier.weight"], w_sq / n, rtol=1e-4, atol=1e-9)
    torch.testing.assert_close(fisher["classifier.bias"], b_sq / n, rtol=1e-4, atol=1e-9)
    assert not any(p.requires_grad for p in model.parameters())  # the shared inference copy is left as it was


def test_fisher_of_the_encoder_matches_per_example_backward(pair, labelled):
    model = pair.working_copy().eval()
    fisher = fisher_diag(model, labelled.train)
    model.requires_grad_(True)
    key = "bert.encoder.layer.0.attention.self.query.weight"
    total = torch.zeros_like(dict(model.named_parameters())[key])
    for i in range(len(labelled.train)):
        model.zero_grad()
        logp = torch.log_softmax(model(**collate(labelled.train, [i])).logits, -1)[0, labelled.train.labels[i]]
        logp.backward()
        total += dict(model.named_parameters())[key].grad ** 2
    torch.testing.assert_close(fisher[key], total / len(labelled.train), rtol=1e-4, atol=1e-10)
    # an embedding row no clean text uses gets no Fisher: its drift alone ranks it (first to be reset)
    emb = fisher["bert.embeddings.word_embeddings.weight"]
    used = {t for ids in labelled.train.input_ids for t in ids}
    unused = [r for r in range(emb.shape[0]) if r not in used]
    assert unused and (emb[unused] == 0).all() and (emb[sorted(used)].sum(1) > 0).all()


def test_scores_are_drift_squared_over_fisher(pair, labelled):
    fisher = fisher_diag(pair.ft_for_inference(torch.device("cpu")), labelled.train)
    sc = scores(pair, fisher)
    k = "bert.encoder.layer.1.output.dense.weight"
    torch.testing.assert_close(sc[k], pair.delta[k] ** 2 / (fisher[k] + EPS))


def test_purified_state_keeps_the_lowest_scores_and_the_ends_are_exact(pair, labelled):
    sc = scores(pair, fisher_diag(pair.ft_for_inference(torch.device("cpu")), labelled.train))
    ft, pt = pair.ft_state(), pair.pt_state
    one, zero = purified_state(pair, sc, 1.0), purified_state(pair, sc, 0.0)
    assert all(torch.equal(one[k], ft[k]) for k in pt) and all(torch.equal(zero[k], pt[k]) for k in pt)
    assert all(torch.equal(one[k], ft[k]) and torch.equal(zero[k], ft[k]) for k in pair.head_keys)
    half = purified_state(pair, sc, 0.5)
    k = "bert.encoder.layer.0.intermediate.dense.weight"
    kept = half[k] == ft[k]
    changed = pair.delta[k] != 0
    assert abs(int(kept.sum()) - round(0.5 * kept.numel())) <= int((~changed).sum())  # unchanged weights count either way
    assert sc[k][kept & changed].max() <= sc[k][~kept].min()  # every kept weight scores no higher than a reset one


def test_fine_purifying_is_a_registered_defense_searched_on_dev(pair, labelled):
    assert "fine-purifying" in REGISTRY
    cfg = DefenseConfig(method="fine-purifying", delta=1.0, rho_grid=(0.3, 0.6), train=TrainConfig(lr=1e-3, epochs=1.0, batch_size=4))
    res = defend(pair, labelled, cfg)
    assert res.rho == 0.3 and res.rho_auto and [c.value for c in res.search] == [0.3]  # bisection: 0.3 passes first
