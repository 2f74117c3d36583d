"""Defenses on a tiny random BERT: exact behaviour of fine-pruning, E-PUR + X, auto-ρ and purity."""

from __future__ import annotations

import dataclasses
import hashlib
import math

import pytest
import torch
from datasets import Dataset

from finemix_core.config import TrainConfig
from finemix_core.defenses import (
    DefenderData,
    DefenseConfig,
    apply_pruning,
    defend,
    defender_data,
    ffn_activations,
    ffn_layers,
    pick_largest,
    pick_smallest,
    prune_plan,
)
from finemix_core.epur import EpurConfig, embedding_key
from finemix_core.errors import FinemixError
from finemix_core.models import load_pair

FAST = TrainConfig(lr=1e-3, epochs=1.0, batch_size=8)
POS = ["a good movie", "great fun and charming", "the best acting", "love this film", "a charming story", "great cast"]
NEG = ["a bad movie", "awful and dull", "the worst plot", "hate this film", "a boring script", "dull acting"]


def checksum(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(tensors):
        h.update(k.encode())
        h.update(tensors[k].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@pytest.fixture()
def pair(tiny_pair_dirs):
    ft, pt = tiny_pair_dirs
    return load_pair(ft, pt)


@pytest.fixture()
def dd(pair) -> DefenderData:
    texts = POS * 3 + NEG * 3
    labels = [1] * 18 + [0] * 18
    train = Dataset.from_dict({"text": texts, "label": labels})
    dev = Dataset.from_dict({"text": POS + NEG, "label": [1] * 6 + [0] * 6})
    return defender_data(pair.tokenizer, train, dev, clean_size=16, dev_size=12, seed=0, max_length=32)


def cfg(method: str, **kw) -> DefenseConfig:
    kw.setdefault("epur", EpurConfig(k=5))  # the tiny vocabulary has 42 rows
    return DefenseConfig(method=method, train=FAST, **kw)


def test_defender_data_holds_only_clean_train_and_dev():
    # auto-ρ and the prune ratio can only read what DefenderData carries: no test split, no triggered text
    assert {f.name for f in dataclasses.fields(DefenderData)} == {"train", "dev", "texts"}


def test_defender_data_is_stratified_and_sized(dd):
    assert len(dd.train) == 16 and sorted(set(dd.train.labels)) == [0, 1]
    assert abs(sum(dd.train.labels) - 8) <= 1 and len(dd.dev) == 12
    assert len(dd.texts) == 16  # E-PUR's frequency source is the clean training text


@pytest.mark.parametrize("n", [1, 2, 5, 9])
def test_pick_smallest_finds_the_threshold_by_bisection(n):
    grid = [round(0.1 * i, 1) for i in range(1, 10)]
    threshold = grid[n - 1]
    calls = []

    def passes(x):
        calls.append(x)
        return x >= threshold

    assert pick_smallest(grid, passes) == (threshold, True)
    assert len(calls) <= math.ceil(math.log2(len(grid))) + 1


def test_pick_smallest_reports_when_nothing_passes_and_pick_largest():
    assert pick_smallest([0.1, 0.5, 0.9], lambda x: False) == (0.9, False)
    assert pick_largest([0.1, 0.2, 0.3, 0.4], lambda x: x <= 0.3) == 0.3
    assert pick_largest([0.1, 0.2], lambda x: False) == 0.0


def test_prune_plan_takes_the_least_active_neurons():
    acts = [torch.tensor([0.5, -1.0, 2.0, 0.1]), torch.tensor([3.0, 2.0, 1.0, 0.0])]
    plan = prune_plan(acts, 0.5)
    assert [sorted(p.tolist()) for p in plan] == [[1, 3], [2, 3]]
    assert [len(p) for p in prune_plan(acts, 0.0)] == [0, 0]


def test_apply_pruning_zeroes_exactly_the_planned_neurons(pair):
    model = pair.working_copy()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plan = [torch.tensor([0, 5]), torch.tensor([63])]
    apply_pruning(model, plan)
    after = model.state_dict()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed == {f"bert.encoder.layer.{i}.{p}" for i in (0, 1) for p in ("intermediate.dense.weight", "intermediate.dense.bias", "output.dense.weight")}
    for layer, ((_, up, down), idx) in enumerate(zip(ffn_layers(model), plan)):
        keep = torch.ones(up.out_features, dtype=torch.bool)
        keep[idx] = False
        assert (up.weight[idx] == 0).all() and (up.bias[idx] == 0).all() and (down.weight[:, idx] == 0).all()
        assert torch.equal(up.weight[keep], before[f"bert.encoder.layer.{layer}.intermediate.dense.weight"][keep])


def test_ffn_activations_match_a_manual_forward(pair, dd):
    model = pair.working_copy()
    acts = ffn_activations(model, dd.train, batch_size=4)
    assert [a.shape[0] for a in acts] == [64, 64]
    # recompute layer 0 by hand on one unpadded example at a time
    total, tokens = torch.zeros(64, dtype=torch.float64), 0
    grabbed = []
    h = model.bert.encoder.layer[0].intermediate.register_forward_hook(lambda m, i, o: grabbed.append(o))
    with torch.no_grad():
        for ids, types in zip(dd.train.input_ids, dd.train.token_type_ids):
            model(input_ids=torch.tensor([ids]), token_type_ids=torch.tensor([types]))
            total += grabbed[-1][0].double().sum(0)
            tokens += len(ids)
    h.remove()
    torch.testing.assert_close(acts[0], (total / tokens).float(), rtol=1e-4, atol=1e-5)


def test_fine_pruning_keeps_pruned_neurons_at_zero_through_fine_tuning(pair, dd):
    res = defend(pair, dd, cfg("fine-pruning", prune_ratio=0.25))
    assert res.prune_ratio == 0.25
    for _, up, down in ffn_layers(res.model):
        dead = (up.weight == 0).all(dim=1)
        assert int(dead.sum()) == 16  # round(0.25 · 64) per layer, still dead after training
        assert (down.weight[:, dead] == 0).all()


def test_fine_pruning_auto_ratio_is_searched_on_dev(pair, dd):
    res = defend(pair, dd, cfg("fine-pruning", delta=1.0))  # any accuracy passes → the largest grid value
    assert res.prune_ratio == 0.9 and {"prune_ratio", "dev_acc"} == set(res.search[0])


@pytest.mark.parametrize("method", ["fine-mixing", "fine-mixing-sorted", "fine-tuning", "fine-pruning", "epur+fine-mixing"])
def test_defenses_never_modify_the_pair(pair, dd, method):
    ft_sum, pt_sum = checksum(pair.ft_state()), checksum(pair.pt_state)
    res = defend(pair, dd, cfg(method, rho=0.5, prune_ratio=0.2))
    assert checksum(pair.ft_state()) == ft_sum and checksum(pair.pt_state) == pt_sum
    assert checksum(res.model.state_dict()) != ft_sum


def test_fine_mixing_with_fixed_rho_reports_it_and_searches_nothing(pair, dd):
    res = defend(pair, dd, cfg("fine-mixing", rho=0.3))
    assert res.rho == 0.3 and not res.rho_auto and res.search == []


def test_auto_rho_picks_the_smallest_grid_value_within_delta(pair, dd):
    loose = defend(pair, dd, cfg("fine-mixing", delta=1.0, rho_grid=(0.2, 0.5, 0.8)))
    assert loose.rho == 0.2 and loose.rho_auto  # everything passes: the smallest ρ
    strict = defend(pair, dd, cfg("fine-mixing", delta=0.0, rho_grid=(0.2, 0.5, 0.8)))
    tried = {s["rho"]: s["dev_acc"] for s in strict.search}
    passing = [r for r, acc in tried.items() if acc >= strict.ft_dev_acc]
    assert strict.rho == (min(passing) if passing else 0.8)


def test_epur_alone_resets_exactly_k_embedding_rows(pair, dd):
    res = defend(pair, dd, cfg("epur", epur=EpurConfig(k=7)))
    key = embedding_key(pair)
    got, ft, pt = res.model.state_dict()[key], pair.ft_state()[key], pair.pt_state[key]
    reset = [i for i in range(len(got)) if torch.equal(got[i], pt[i]) and not torch.equal(ft[i], pt[i])]
    kept = [i for i in range(len(got)) if torch.equal(got[i], ft[i])]
    assert len(reset) == 7 and len(kept) == len(got) - 7 and len(res.flagged) == 7
    others = {k: v for k, v in res.model.state_dict().items() if k != key}
    assert all(torch.equal(v, pair.ft_state()[k]) for k, v in others.items())


def test_bad_configs_are_refused():
    with pytest.raises(FinemixError, match="unknown method"):
        DefenseConfig(method="magic")
    with pytest.raises(FinemixError, match="outside"):
        DefenseConfig(rho=1.5)
    with pytest.raises(FinemixError, match="prune ratio"):
        DefenseConfig(method="fine-pruning", prune_ratio=1.0)
