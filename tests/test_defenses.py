"""Defenses on a tiny random BERT: exact behaviour of fine-pruning, E-PUR + X, auto-ρ and purity."""

from __future__ import annotations

import dataclasses
import hashlib
import math

import numpy as np
import pytest
import torch
from datasets import Dataset

from finemix_core.config import TrainConfig
from finemix_core.defenses import (
    METHODS,
    RECOVERY_GRID,
    REGISTRY,
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
from finemix_core.defenses import first_passing, guarded_pool
from finemix_core.defenses.base import Job, paired_se
from finemix_core.config import RecoveryConfig
from finemix_core.evaluate import predict, predict_with_features
from finemix_core.encoding import Encoded
from finemix_core.train import (
    Distillation,
    distillation_loss,
    feature_loss,
    fine_tune,
    pass_share,
    total_steps,
    two_pass_share,
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


def test_defender_data_holds_only_clean_train_dev_and_unlabelled_text():
    # auto-ρ, the prune ratio and recovery can only read what DefenderData carries: no test split, no triggered text
    assert {f.name for f in dataclasses.fields(DefenderData)} == {
        "train",
        "dev",
        "texts",
        "unlabeled",
        "unlabeled_texts",
        "unlabeled_source",
    }
    # and a registered defense only receives a Job: the pair, that data, the config and the shared trainer
    assert {f.name for f in dataclasses.fields(Job)} == {
        "pair",
        "dd",
        "cfg",
        "device",
        "target",
        "progress",
        "say",
        "distill",
        "search",
        "ft_correct",
        "extra_train",  # trigger-aware recovery: labelled copies with the scan's suspect inserted (tests/test_consistency.py)
        "first_rho",  # recovery.found_rho: a ρ tried first when the scan found evidence (tests/test_consistency.py)
        "verify",  # ... and the re-scan of that candidate, from the same clean data
    }


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
    assert changed == {
        f"bert.encoder.layer.{i}.{p}"
        for i in (0, 1)
        for p in ("intermediate.dense.weight", "intermediate.dense.bias", "output.dense.weight")
    }
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
    assert res.prune_ratio == 0.9 and res.search[0].knob == "prune_ratio" and all(c.passed for c in res.search)


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
    tried = {c.value: c.dev_acc for c in strict.search}
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


# ---- the registry ----


def test_every_registered_defense_runs_with_and_without_epur_and_recovery(pair, tiny_pool_dd):
    for base in REGISTRY:
        for method in (base, f"epur+{base}" if base != "none" else "epur", *((f"{base}+distill",) if base != "none" else ())):
            res = defend(pair, tiny_pool_dd, cfg(method, rho=0.5, prune_ratio=0.2))
            assert res.method == method and res.model is not None and 0.0 <= res.dev_acc <= 1.0
            assert (res.unlabeled_used > 0) == method.endswith("+distill")
    assert set(METHODS) >= {"epur+fine-mixing+distill", "fine-tuning+distill", "fine-pruning", "none"}


def test_unknown_method_is_one_line_naming_the_choices():
    with pytest.raises(FinemixError, match=r"unknown method 'fine-mixng'; use one of none, fine-tuning") as info:
        DefenseConfig(method="fine-mixng")
    assert "\n" not in str(info.value)
    with pytest.raises(FinemixError, match="unknown method"):
        DefenseConfig(method="none+distill")  # nothing is trained, so there is nothing to recover


def test_distill_without_unlabelled_text_is_refused(pair, dd):
    with pytest.raises(FinemixError, match="needs clean unlabelled texts"):
        defend(pair, dd, cfg("fine-tuning+distill"))


# ---- recovery by distillation ----


@pytest.fixture()
def tiny_pool_dd(pair) -> DefenderData:
    train = Dataset.from_dict({"text": POS * 3 + NEG * 3, "label": [1] * 18 + [0] * 18})
    dev = Dataset.from_dict({"text": POS + NEG, "label": [1] * 6 + [0] * 6})
    pool = Dataset.from_dict(
        {"text": ["a fun film", "cf the best plot", "awful and boring", "the cast was great", "cf dull"], "label": [0] * 5}
    )
    return defender_data(pair.tokenizer, train, dev, 16, 12, 0, 32, unlabeled=pool, unlabeled_source="test pool")


def test_pool_texts_are_kept_apart_from_the_labelled_texts_and_encoded(tiny_pool_dd):
    assert len(tiny_pool_dd.unlabeled) == 5 and tiny_pool_dd.unlabeled_source == "test pool"
    assert len(tiny_pool_dd.texts) == 16 and "cf dull" in tiny_pool_dd.unlabeled_texts  # E-PUR counts the pool only with recovery


def test_guard_drops_exactly_the_texts_holding_flagged_tokens(pair, tiny_pool_dd):
    cf = pair.tokenizer.convert_tokens_to_ids("cf")
    assert guarded_pool(tiny_pool_dd, {cf}) == [0, 2, 3]
    assert guarded_pool(tiny_pool_dd, set()) == [0, 1, 2, 3, 4]


def test_drop_flagged_guard_shrinks_what_is_distilled(pair, tiny_pool_dd):
    logs: list[str] = []
    everything = len(pair.tokenizer)  # every row counts as suspicious: every text holds one, none is left to distil
    res = defend(
        pair, tiny_pool_dd, cfg("fine-tuning+distill", recovery=RecoveryConfig(drop_flagged=everything)), log=logs.append
    )
    assert res.unlabeled_used == 0 and any("guard: 5 of 5" in m for m in logs)
    kept = defend(pair, tiny_pool_dd, cfg("fine-tuning+distill"))
    assert kept.unlabeled_used == 5 and kept.unlabeled_source == "test pool"


def test_distillation_loss_is_zero_when_student_equals_teacher():
    logits = torch.randn(6, 3)
    assert distillation_loss(logits.clone(), logits, 2.0).item() == pytest.approx(0.0, abs=1e-6)
    assert distillation_loss(logits + 1.0, logits, 2.0).item() == pytest.approx(0.0, abs=1e-6)  # a shift is the same distribution


def test_distillation_loss_matches_the_formula_and_only_the_student_gets_gradient():
    student = torch.randn(4, 2, requires_grad=True)
    teacher_logits = torch.randn(4, 2, requires_grad=True)
    loss = distillation_loss(student, teacher_logits, 3.0)
    p = torch.softmax(teacher_logits.detach() / 3, -1)
    q = torch.softmax(student.detach() / 3, -1)
    assert loss.item() == pytest.approx(float((p * (p.log() - q.log())).sum(-1).mean() * 9), rel=1e-5)
    loss.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher_logits.grad is None  # the teacher is a fixed target


def test_distillation_pulls_the_student_towards_the_teacher(pair, tiny_pool_dd):
    # with weight 1 and no labelled signal to speak of, the student's pool predictions approach the teacher's
    model = pair.working_copy()
    pool = tiny_pool_dd.unlabeled
    target = torch.tensor([[4.0, -4.0]] * len(pool))
    before = distillation_loss(torch.from_numpy(predict(model, pool, logits=True)), target, 2.0).item()
    fine_tune(
        model,
        tiny_pool_dd.train,
        TrainConfig(lr=3e-3, epochs=1.0, batch_size=4),
        distill=Distillation(pool, target, RecoveryConfig(weight=10.0, temperature=2.0, passes=8, feature_weight=0.0)),
    )
    after = distillation_loss(torch.from_numpy(predict(model, pool, logits=True)), target, 2.0).item()
    assert after < before * 0.5, (before, after)


def test_label_weight_zero_makes_recovery_blind_to_the_labels(pair, tiny_pool_dd):
    # label weight 0: recovery is pure distillation, so flipping every label changes no weight; weight 1 does change them
    pool = tiny_pool_dd.unlabeled
    target = torch.tensor([[1.0, -1.0]] * len(pool))
    flipped = dataclasses.replace(tiny_pool_dd.train, labels=[1 - y for y in tiny_pool_dd.train.labels])

    def trained(data, label_weight):
        model = pair.working_copy()
        rec = RecoveryConfig(passes=2, label_weight=label_weight, feature_weight=0.0)
        fine_tune(model, data, TrainConfig(lr=1e-3, epochs=1.0, batch_size=4), distill=Distillation(pool, target, rec))
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    assert torch.equal(trained(tiny_pool_dd.train, 0.0), trained(flipped, 0.0))
    assert not torch.equal(trained(tiny_pool_dd.train, 1.0), trained(flipped, 1.0))
    with pytest.raises(FinemixError, match="label weight"):
        RecoveryConfig(label_weight=-1.0)


def test_feature_loss_matches_the_formula_and_only_the_student_gets_gradient():
    student = torch.randn(3, 5, requires_grad=True)
    teacher_feats = torch.randn(3, 5, requires_grad=True)
    loss = feature_loss(student, teacher_feats, 2.5)
    expected = float((student.detach() - teacher_feats.detach()).pow(2).sum(1).mean() / 2.5)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0 and teacher_feats.grad is None
    assert feature_loss(teacher_feats.detach(), teacher_feats, 1.0).item() == 0.0


def test_teacher_features_are_the_last_layer_cls_states(pair, tiny_pool_dd):
    pool = tiny_pool_dd.unlabeled
    logits, feats = predict_with_features(pair.ft, pool)
    np.testing.assert_allclose(logits, predict(pair.ft, pool, logits=True), atol=1e-5)
    one = pool.subset([0])
    with torch.no_grad():
        out = pair.ft(input_ids=torch.tensor([one.input_ids[0]]), output_hidden_states=True)
    np.testing.assert_allclose(feats[0], out.hidden_states[-1][0, 0].numpy(), atol=1e-5)


def test_feature_distillation_pulls_the_students_states_to_the_teachers(pair, tiny_pool_dd):
    # same logits target, same steps: with the feature term the student's [CLS] states end nearer the teacher's
    pool = tiny_pool_dd.unlabeled
    target_logits = torch.tensor([[1.0, -1.0]] * len(pool))
    teacher_feats = torch.from_numpy(predict_with_features(pair.ft, pool)[1]) + 0.5

    def trained(weight):
        model = pair.working_copy()
        rec = RecoveryConfig(passes=4, feature_weight=weight)
        fine_tune(model, tiny_pool_dd.train, TrainConfig(lr=3e-3, epochs=1.0, batch_size=4),
                  distill=Distillation(pool, target_logits, rec, teacher_features=teacher_feats))
        return model

    def gap(model):
        return feature_loss(torch.from_numpy(predict_with_features(model, pool)[1]), teacher_feats, 1.0).item()

    plain, featured = trained(0.0), trained(10.0)
    assert gap(featured) < gap(plain) * 0.7, (gap(plain), gap(featured))
    with pytest.raises(FinemixError, match="feature weight"):
        RecoveryConfig(feature_weight=-1.0)
    with pytest.raises(FinemixError, match="cannot be combined"):
        RecoveryConfig(feature_weight=1.0, augment_copies=1)
    with pytest.raises(FinemixError, match="CLS"):
        Distillation(pool, target_logits, RecoveryConfig(feature_weight=1.0))


def test_decision_matching_gives_the_pool_the_teachers_share_of_class_1(pair, tiny_pool_dd):
    # fine-tuning+distill's teacher is θ_FT itself (no E-PUR), so the goal can be computed here by hand
    rec = RecoveryConfig(passes=2, consistency=False, match_decisions=True)
    res = defend(pair, tiny_pool_dd, cfg("fine-tuning+distill", recovery=rec))
    pool = tiny_pool_dd.unlabeled
    goal = (predict(pair.ft, pool).argmax(1) == 1).mean()
    assert (predict(res.model, pool).argmax(1) == 1).mean() == goal and res.decision_shift is not None
    plain = defend(pair, tiny_pool_dd, cfg("fine-tuning+distill", recovery=dataclasses.replace(rec, match_decisions=False)))
    assert plain.decision_shift is None
    # the shift is the only difference: the same recovered weights, one output bias moved by exactly the reported shift
    diff = (res.model.classifier.bias - plain.model.classifier.bias).detach()
    assert float(diff[1] - diff[0]) == pytest.approx(res.decision_shift, abs=1e-6)
    same = {k: v for k, v in res.model.state_dict().items() if k != "classifier.bias"}
    assert all(torch.equal(v, plain.model.state_dict()[k]) for k, v in same.items())


def test_pool_augmentation_keeps_the_step_count_and_reports_the_real_pool(pair, tiny_pool_dd):
    rec = RecoveryConfig(passes=3, consistency=False, augment_copies=2, feature_weight=0.0)
    logs: list[str] = []
    res = defend(pair, tiny_pool_dd, cfg("fine-tuning+distill", recovery=rec), log=logs.append)
    assert res.unlabeled_used == len(tiny_pool_dd.unlabeled)  # the copies are not counted as the defender's text
    assert any("2 word-dropout copies" in line for line in logs)
    steps: list[int] = []
    defend(pair, tiny_pool_dd, cfg("fine-tuning+distill", recovery=rec), progress=lambda done, total: steps.append(total))
    plain: list[int] = []
    defend(pair, tiny_pool_dd, cfg("fine-tuning+distill", recovery=RecoveryConfig(passes=3, consistency=False)),
           progress=lambda done, total: plain.append(total))
    # the copies take a share of the steps and add none: 3 passes over 5 texts become 1 pass over 15 (batches of 8 round
    # up per pass, hence 2 steps against 3 here; on a real pool of 1,019 texts both are 192)
    assert steps[-1] == total_steps(15, TrainConfig(epochs=1.0, batch_size=8)) and plain[-1] == total_steps(5, TrainConfig(epochs=3.0, batch_size=8))
    assert total_steps(3 * 1019, TrainConfig(epochs=1.0, batch_size=16)) == total_steps(1019, TrainConfig(epochs=3.0, batch_size=16))


def test_recovery_auto_rho_scans_up_from_the_bottom_and_stops_at_the_first_pass(pair, tiny_pool_dd):
    res = defend(pair, tiny_pool_dd, cfg("fine-mixing+distill", delta=1.0))  # everything passes
    assert res.rho == RECOVERY_GRID[0] == 0.0 and [c.value for c in res.search] == [0.0]
    calls = []
    assert first_passing([0.5, 0.1, 0.3], lambda x: calls.append(x) or x >= 0.3) == (0.3, True) and calls == [0.1, 0.3]
    assert first_passing([0.1, 0.2], lambda x: False) == (0.2, False)


def test_paired_standard_error_matches_the_formula():
    ref = np.array([True, True, True, False])
    cand = np.array([True, False, True, True])
    assert paired_se(ref, cand) == pytest.approx(math.sqrt(2 / 16))  # b = c = 1: (b + c)/n² − (b − c)²/n³
    assert paired_se(ref, ref) == 0.0  # the same predictions: no uncertainty about their difference
    assert paired_se(np.ones(100, bool), np.zeros(100, bool)) == 0.0  # always disagreeing the same way: a sure difference


def test_recovery_search_keeps_the_best_dev_accuracy_when_no_rho_passes(pair, tiny_pool_dd, monkeypatch):
    from finemix_core.defenses import fine_mixing
    from finemix_core.defenses.base import Candidate

    accs = {0.0: 0.70, 0.2: 0.74}
    trained: list[str] = []  # one fine-tune per ρ tried, in the order tried (0, then 0.2)
    def fake_train(self, model, after_step=None, step_share=1.0, features=True):
        trained.append(f"model#{len(trained)}")
        return trained[-1]

    monkeypatch.setattr(Job, "train", fake_train)

    def scripted(self, knob, value, model):
        self.search.append(Candidate(knob, value, accs[value], False, 0.9))
        return False

    monkeypatch.setattr(Job, "try_value", scripted)
    job = Job(pair, tiny_pool_dd, cfg("fine-mixing+distill", rho_grid=(0.0, 0.2)), torch.device("cpu"), 0.9, None, lambda m: None)
    out = fine_mixing.run_random(job)
    assert out.rho == 0.2 and out.model == "model#1" and [c.value for c in job.search] == [0.0, 0.2] and len(trained) == 2
    paper = Job(pair, tiny_pool_dd, cfg("fine-mixing", rho_grid=(0.0, 0.2)), torch.device("cpu"), 0.9, None, lambda m: None)
    assert fine_mixing.run_random(paper).rho == 0.2  # the paper recipe: the largest grid value, as before


def test_a_step_share_stops_the_same_run_early(pair, tiny_pool_dd):
    # step_share 0.5: half the steps (rounded), over the same seeded batches; a share outside (0, 1] is refused
    pool = tiny_pool_dd.unlabeled
    target = torch.tensor([[1.0, -1.0]] * len(pool))
    cfg = TrainConfig(lr=1e-3, epochs=1.0, batch_size=4)
    distill = Distillation(pool, target, RecoveryConfig(passes=4, feature_weight=0.0))
    steps: dict[float, list[tuple[int, int]]] = {}
    for share in (1.0, 0.5):
        steps[share] = []
        fine_tune(pair.working_copy(), tiny_pool_dd.train, cfg, lambda s, t, sh=share: steps[sh].append((s, t)), None,
                  distill, step_share=share)
    full = total_steps(len(pool), TrainConfig(epochs=4, batch_size=4))
    assert full > 4 and [t for _, t in steps[1.0]] == [full] * full
    assert steps[0.5] == [(s, round(full * 0.5)) for s in range(1, round(full * 0.5) + 1)]
    for bad in (0.0, 1.5):
        with pytest.raises(FinemixError, match="step share"):
            fine_tune(pair.working_copy(), tiny_pool_dd.train, cfg, distill=distill, step_share=bad)
    with pytest.raises(FinemixError, match="found-steps"):
        RecoveryConfig(found_steps=0.0)


def test_bf16_recovery_runs_its_forward_in_bfloat16_and_keeps_float32_weights(pair, tiny_pool_dd):
    # precision "bf16": the training forward pass under bfloat16 autocast (a Linear's output is bf16), the weights and
    # the returned model float32 and finite; "fp32" computes in float32; an unknown precision is refused by name
    pool = tiny_pool_dd.unlabeled
    target = torch.tensor([[1.0, -1.0]] * len(pool))
    cfg = TrainConfig(lr=1e-3, epochs=1.0, batch_size=4)
    seen: dict[str, set] = {}
    trained: dict[str, torch.nn.Module] = {}
    for precision in ("fp32", "bf16"):
        model = pair.working_copy()
        linear = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
        seen[precision] = set()
        hook = linear.register_forward_hook(lambda _m, _i, out, p=precision: seen[p].add(out.dtype))
        distill = Distillation(pool, target, RecoveryConfig(passes=2, precision=precision, feature_weight=0.0))
        trained[precision] = fine_tune(model, tiny_pool_dd.train, cfg, distill=distill)
        hook.remove()
    assert seen == {"fp32": {torch.float32}, "bf16": {torch.bfloat16}}
    for model in trained.values():
        assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())
    start = dict(pair.working_copy().named_parameters())
    moved = {k: max((p - start[k]).abs().max().item() for k, p in m.named_parameters()) for k, m in trained.items()}
    assert moved["fp32"] > 0 and moved["bf16"] > 0
    a, b = (dict(trained[k].named_parameters()) for k in ("fp32", "bf16"))
    assert any(not torch.equal(a[k], b[k]) for k in a)  # another arithmetic: not the fp32 run
    with pytest.raises(FinemixError, match="precision 'fp16' unknown"):
        RecoveryConfig(precision="fp16")
    assert RecoveryConfig().precision == "auto"  # since 2026-12-05: bf16 only where it runs natively


def test_pass_share_counts_two_passes_against_one_padded_pass():
    # 8 labelled texts of 10 tokens beside 8 pool texts of 4, batches of 4: one pass pads 8 rows to 10 (80 tokens), two
    # passes read 4·10 + 4·4 = 56, at every step: 0.7 exactly; texts alike in length: 1
    def enc(n, length):
        return Encoded([[5] * length] * n, [[0] * length] * n, [0] * n, 0)

    cfg = TrainConfig(batch_size=4)
    short = Distillation(enc(8, 4), torch.zeros(8, 2), RecoveryConfig(passes=2, feature_weight=0.0))
    assert pass_share(enc(8, 10), short, cfg) == pytest.approx(0.7)
    assert pass_share(enc(8, 4), short, cfg) == pytest.approx(1.0)
    assert two_pass_share(enc(8, 10), short, cfg) == pytest.approx(0.7)  # under the default's bar 0.75: two passes
    assert two_pass_share(enc(8, 4), short, cfg) is None
    for below in (0.6, 0.0):
        bar = dataclasses.replace(short, recovery=RecoveryConfig(two_pass_below=below, feature_weight=0.0))
        assert two_pass_share(enc(8, 10), bar, cfg) is None
    with pytest.raises(FinemixError, match="two-pass-below 1.5 outside"):
        RecoveryConfig(two_pass_below=1.5)


def test_two_passes_give_one_padded_pass_gradients_without_dropout(pair, tiny_pool_dd):
    # the same losses, so the same gradients: with dropout off, the first step's gradient (labelled CE + KL + feature
    # term) is one padded pass's up to float rounding; with dropout the draws differ; two passes call the model twice a step
    base = tiny_pool_dd.unlabeled
    ids = [s[:-1] + s[1:-1] * 3 + s[-1:] for s in base.input_ids]  # pool texts 3-4× the labelled ones' length
    pool = Encoded(ids, [[0] * len(s) for s in ids], base.labels, base.pad_id)
    assert min(map(len, ids)) > max(map(len, tiny_pool_dd.train.input_ids))  # every step pads one part
    target = torch.tensor([[1.0, -1.0]] * len(pool))
    feats = torch.from_numpy(predict_with_features(pair.ft, pool)[1]) + 0.5
    cfg = TrainConfig(lr=1e-3, epochs=1.0, batch_size=4)

    def first_step(below: float, dropout: bool) -> tuple[dict[str, torch.Tensor], int]:
        model = pair.working_copy()
        if not dropout:
            for m in model.modules():
                if isinstance(m, torch.nn.Dropout):
                    m.p = 0.0
        model.requires_grad_(True)  # as fine_tune makes it
        calls, grads = [], {}
        hook = model.register_forward_hook(lambda *_: calls.append(1))
        def keep_first(param: torch.Tensor, name: str) -> None:
            if name not in grads:
                grads[name] = param.grad.detach().clone()

        for name, param in model.named_parameters():
            param.register_post_accumulate_grad_hook(lambda p, n=name: keep_first(p, n))
        rec = RecoveryConfig(passes=2, precision="fp32", two_pass_below=below)
        fine_tune(model, tiny_pool_dd.train, cfg, distill=Distillation(pool, target, rec, teacher_features=feats))
        hook.remove()
        return grads, len(calls)

    one, one_calls = first_step(0.0, dropout=False)
    two, two_calls = first_step(1.0, dropout=False)
    steps = total_steps(len(pool), TrainConfig(epochs=2, batch_size=4))
    assert (one_calls, two_calls) == (steps, 2 * steps)
    assert sum(g.abs().sum().item() for g in one.values()) > 0
    for k in one:
        torch.testing.assert_close(two[k], one[k], atol=1e-6, rtol=1e-4)
    one_d, _ = first_step(0.0, dropout=True)
    two_d, _ = first_step(1.0, dropout=True)
    assert any(not torch.allclose(one_d[k], two_d[k], atol=1e-6, rtol=1e-4) for k in one_d)


def test_defend_says_when_recovery_steps_run_in_two_passes(pair):
    # long pool texts beside short labelled ones: the default splits and says so with the share; --two-pass-below 0 does not
    train = Dataset.from_dict({"text": POS * 3 + NEG * 3, "label": [1] * 18 + [0] * 18})
    dev = Dataset.from_dict({"text": POS + NEG, "label": [1] * 6 + [0] * 6})
    pool = Dataset.from_dict({"text": [" ".join(POS + NEG)] * 8, "label": [0] * 8})
    dd = defender_data(pair.tokenizer, train, dev, 16, 12, 0, 32, unlabeled=pool, unlabeled_source="long pool")
    said = {}
    for below in (0.75, 0.0):
        logs: list[str] = []
        rec = RecoveryConfig(consistency=False, two_pass_below=below, feature_weight=0.0)
        defend(pair, dd, cfg("fine-tuning+distill", recovery=rec), log=logs.append)
        said[below] = [line for line in logs if "two forward passes" in line]
    assert len(said[0.75]) == 1 and "of the tokens one padded pass would; --two-pass-below 0.75" in said[0.75][0]
    assert said[0.0] == []


def test_auto_precision_is_made_concrete_for_the_device_before_a_run(pair, tiny_pool_dd, monkeypatch):
    # "auto" → bf16 on a device with native bf16, fp32 on one without (emulated bf16 is several times slower); an explicit
    # value is kept as given; fine_tune reached without the resolution makes the same choice (the CLI's row holding the
    # concrete value: tests/test_cli.py)
    from finemix_core.defenses import concrete_precision

    auto = DefenseConfig(method="fine-mixing+distill", rho=0.5)
    for native, expect in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr("finemix_core.hardware.bf16_supported", lambda device, n=native: n)
        assert concrete_precision(auto, "cpu").recovery.precision == expect
        for given in ("fp32", "bf16"):
            fixed = dataclasses.replace(auto, recovery=RecoveryConfig(precision=given))
            assert concrete_precision(fixed, "cpu") is fixed
        model = pair.working_copy()
        linear = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
        seen: set = set()
        hook = linear.register_forward_hook(lambda _m, _i, out: seen.add(out.dtype))
        pool = tiny_pool_dd.unlabeled
        distill = Distillation(pool, torch.tensor([[1.0, -1.0]] * len(pool)), RecoveryConfig(passes=1, feature_weight=0.0))
        fine_tune(model, tiny_pool_dd.train, TrainConfig(lr=1e-3, epochs=1.0, batch_size=4), distill=distill)
        hook.remove()
        assert seen == {torch.bfloat16 if native else torch.float32}
    # an explicit bf16 on a device without it still gets its one-line warning; the default never needs one
    from finemix_core.experiment import precision_note

    assert "no native bf16" in precision_note(RecoveryConfig(precision="bf16"), torch.device("cpu"))
    assert precision_note(RecoveryConfig(), torch.device("cpu")) is None


def test_recovery_whole_top_layers_start_the_low_rho_tries_from_theta_ft_top_layers(pair, tiny_pool_dd, monkeypatch):
    # per-layer ρ (RecoveryConfig.whole_top_layers): with +distill every try below ρ 1 starts from θ_FT's top layer and
    # the plain mix elsewhere; the paper recipe (no +distill) and a ρ-1 try are untouched by the setting
    from finemix_core.defenses import fine_mixing
    from finemix_core.mixing import layer_of

    started: list[dict[str, torch.Tensor]] = []

    def fake_train(self, model, after_step=None, step_share=1.0, features=True):
        started.append({k: v.clone() for k, v in model.state_dict().items()})
        return model

    monkeypatch.setattr(Job, "train", fake_train)
    rec = RecoveryConfig(whole_top_layers=1, consistency=False)
    ft = pair.ft_state()
    top = [k for k in pair.shared_keys if layer_of(k) == 1]
    below = [k for k in pair.shared_keys if layer_of(k) != 1]
    for method, rho, expect_top in (("fine-mixing+distill", 0.0, True), ("fine-mixing", 0.0, False), ("fine-mixing+distill", 1.0, True)):
        job = Job(pair, tiny_pool_dd, cfg(method, rho=rho, recovery=rec), torch.device("cpu"), 0.9, None, lambda m: None)
        fine_mixing.run_random(job)
        state = started[-1]
        assert all(torch.equal(state[k], ft[k]) for k in top) == expect_top
        assert all(torch.equal(state[k], ft[k] if rho == 1.0 else pair.pt_state[k]) for k in below)
    with pytest.raises(FinemixError, match="whole-top-layers -1 is negative"):
        RecoveryConfig(whole_top_layers=-1)


def test_found_features_false_drops_the_feature_term_from_the_found_rho_try_alone(pair, tiny_pool_dd, monkeypatch):
    # RecoveryConfig.found_features False: the found-ρ try (ρ 1, a share of the steps) trains without the feature term,
    # every low-ρ try with it, and the job's teacher keeps its weight; True: every try with it
    from finemix_core.defenses import base, fine_mixing
    from finemix_core.defenses.base import Candidate

    seen: list[tuple[float, float]] = []

    def fake_fine_tune(model, labelled, train_cfg, progress, after_step, distill, step_share):
        seen.append((step_share, distill.recovery.feature_weight))
        return model

    def scripted(self, knob, value, model, verify=False):
        self.search.append(Candidate(knob, value, 0.5, False, 0.9))
        return False

    monkeypatch.setattr(base, "fine_tune", fake_fine_tune)
    monkeypatch.setattr(Job, "try_value", scripted)
    pool = tiny_pool_dd.unlabeled
    for found_features, found_weight in ((False, 0.0), (True, 5.0)):
        rec = RecoveryConfig(feature_weight=5.0, found_features=found_features, consistency=False)
        job = Job(pair, tiny_pool_dd, cfg("fine-mixing+distill", recovery=rec, rho_grid=(0.0, 0.2)), torch.device("cpu"),
                  0.9, None, lambda m: None)
        job.distill = Distillation(pool, torch.zeros(len(pool), 2), rec, teacher_features=torch.ones(len(pool), 8))
        job.first_rho = 1.0
        seen.clear()
        out = fine_mixing.run_random(job)
        assert [c.value for c in job.search] == [1.0, 0.0, 0.2] and out.rho == 0.0  # ρ 1 not kept; best dev, lower ρ
        assert seen == [(rec.found_steps, found_weight), (1.0, 5.0), (1.0, 5.0)]
        assert job.distill.recovery.feature_weight == 5.0
    # the default since Round 24 (docs/recovery.md): the feature term at weight 5, in the low-ρ search only
    assert (RecoveryConfig().feature_weight, RecoveryConfig().found_features) == (5.0, False)
